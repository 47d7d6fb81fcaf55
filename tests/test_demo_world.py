"""The shapes world: same seed -> same bytes, media that decode, annotation files in the
release formats whose media all exist, and answers that agree with what was drawn."""
from __future__ import annotations

import json
import re
import shlex
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from vl.data_manifests.demo import convert_commands, write_demo_world
from vl.data_manifests.demo.scenes import COLORS, SHAPES
from vl.data_manifests.demo.videos import _yuv420p, write_video
from vl.data_manifests.demo.world import plan_world
from vl.shared.errors import VLError
from vl.shared.media import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, index_media_files

SMALL = {"images": 24, "videos": 6}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "world"
    return write_demo_world(root, seed=0, **SMALL)


@pytest.fixture(scope="module")
def truth(world) -> dict:
    return json.loads((world.root / "ground_truth.json").read_text())


def read_json(world, rel):
    return json.loads((world.root / rel).read_text())


def read_jsonl(world, rel):
    return [json.loads(line) for line in (world.root / rel).read_text().splitlines() if line.strip()]


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_another_seed_differs(world, tmp_path):
    first = tree(world.root)
    again = tree(write_demo_world(tmp_path / "again", seed=0, **SMALL).root)
    assert sorted(first) == sorted(again)
    assert [name for name in first if first[name] != again[name]] == []
    assert any(name.endswith(".mp4") for name in first), "the byte comparison covers the videos"
    assert not [name for name in first if Path(name).name.startswith(".")], "no temporary file left behind"

    other = tree(write_demo_world(tmp_path / "other", seed=1, **SMALL).root)
    assert first["annotations/vqa2/v2_mscoco_train2014_annotations.json"] != \
        other["annotations/vqa2/v2_mscoco_train2014_annotations.json"]
    videos = lambda t: sorted(v for k, v in t.items() if k.endswith(".mp4"))  # noqa: E731
    assert videos(first) != videos(other)


def test_video_bytes_do_not_depend_on_what_was_encoded_before(tmp_path):
    # libx264's SIMD code once gave other bytes for the same frames after encodes of other
    # sizes (it read memory it never wrote); three rounds over nine clips of three sizes
    # caught that every time, while two whole worlds in a row caught it only now and then.
    plan = plan_world(8, 9, 1)
    specs = [spec for kind, spec in plan.media.values() if kind == "MP4"]
    assert len({(v.width, v.height) for v in specs}) > 1
    written: dict[int, set[bytes]] = {}
    for round_ in range(3):
        for k, v in enumerate(specs):
            write_video(tmp_path / f"{round_}-{k}.mp4", v)
            written.setdefault(k, set()).add((tmp_path / f"{round_}-{k}.mp4").read_bytes())
    assert [k for k, versions in written.items() if len(versions) > 1] == []


def test_rewriting_a_folder_replaces_the_demo_and_removes_stale_files(world, tmp_path):
    target = tmp_path / "reused"
    write_demo_world(target, seed=0, **SMALL)
    (target / "mine.txt").write_text("the user's own file")
    write_demo_world(target, seed=1, images=12, videos=6)
    fresh = tree(write_demo_world(tmp_path / "fresh", seed=1, images=12, videos=6).root)
    assert tree(target) == {**fresh, "mine.txt": b"the user's own file"}


def test_an_interrupted_run_leaves_no_half_file_and_a_rerun_completes_it(world, tmp_path, monkeypatch):
    target, real_save, calls = tmp_path / "interrupted", Image.Image.save, []

    def save_then_die(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 10:  # half a file on disk, then the process "dies"
            Path(fp).write_bytes(b"\xff\xd8 half")
            raise KeyboardInterrupt
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        write_demo_world(target, seed=0, **SMALL)
    monkeypatch.undo()
    left = tree(target)
    assert [n for n in left if Path(n).name.startswith(".")] == []
    for name in left:  # whatever is there is complete
        if name.endswith((".jpg", ".png")):
            Image.open(target / name).load()
    write_demo_world(target, seed=0, **SMALL)
    assert tree(target) == tree(world.root)


def test_sizes_too_small_are_refused(tmp_path):
    with pytest.raises(VLError, match="at least") as error:
        write_demo_world(tmp_path / "w", images=3, videos=2)
    assert "--images 3" in str(error.value) and "--videos 2" in str(error.value)
    assert not (tmp_path / "w").exists()
    (tmp_path / "f").write_text("")
    with pytest.raises(VLError, match="is a file"):
        write_demo_world(tmp_path / "f", **SMALL)


def test_frames_go_to_the_encoder_as_bt601_yuv420p():
    """The planes given to x264, against BT.601 limited range computed here in float64:
    Y per pixel, U and V as the mean of each 2x2 block, rows of U then V stacked below Y."""
    rgb = np.random.default_rng(0).integers(0, 256, (8, 6, 3)).astype(np.uint8)  # heights a multiple of 4
    x = rgb.astype(np.float64)
    y = 16 + x @ np.array([65.481, 128.553, 24.966]) / 255
    blocks = x.reshape(4, 2, 3, 2, 3).mean(axis=(1, 3))  # (4, 3, 3): the 2x2 blocks' mean RGB
    u = 128 + blocks @ np.array([-37.797, -74.203, 112.0]) / 255
    v = 128 + blocks @ np.array([112.0, -93.786, -18.214]) / 255
    planes = _yuv420p(rgb)
    assert planes.shape == (12, 6) and planes.dtype == np.uint8
    assert np.abs(planes[:8] - y).max() <= 0.5 + 1e-4
    assert np.abs(planes[8:].astype(float).reshape(2, 4, 3) - np.stack([u, v])).max() <= 0.5 + 1e-4


def test_images_decode_in_varied_sizes_as_jpeg_and_png(world, truth):
    sizes, formats = set(), Counter()
    for stem, gt in {**truth["images"], **truth["nlvr2"]}.items():
        with Image.open(world.root / gt["file"]) as im:
            im.load()
            formats[im.format] += 1
            assert im.size == (gt["width"], gt["height"]) and im.mode == "RGB"
            sizes.add(im.size)
    assert formats["JPEG"] == world.images == SMALL["images"]
    assert formats["PNG"] == 2 * world.nlvr2_pairs
    assert len(sizes) > 10 and any(w != h for w, h in sizes)
    assert all(160 <= s <= 320 for size in sizes for s in size)


def nearest_color(rgb) -> str:
    return min(COLORS, key=lambda c: sum((int(a) - b) ** 2 for a, b in zip(rgb, COLORS[c])))


def test_every_drawn_shape_shows_its_colour_in_the_pixels(world, truth):
    for gt in [*truth["images"].values(), *truth["nlvr2"].values()]:
        pixels = np.asarray(Image.open(world.root / gt["file"]).convert("RGB"))
        for o in gt["objects"]:
            assert nearest_color(pixels[o["y"], o["x"]]) == o["color"], (gt["file"], o)


def test_videos_decode_with_the_expected_frames_size_and_motion(world, truth):
    assert len(truth["videos"]) == SMALL["videos"]
    for name, gt in truth["videos"].items():
        with av.open(str(world.root / gt["file"])) as container:
            stream = container.streams.video[0]
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
            duration = container.duration / av.time_base
        assert len(frames) == gt["frames"] and 20 <= gt["frames"] <= 50
        assert frames[0].shape == (gt["height"], gt["width"], 3)
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert duration == pytest.approx(gt["frames"] / 10, abs=0.05) == pytest.approx(gt["duration"])
        m = gt["mover"]
        # The mover's colour at its start on the first frame, its (maybe new) colour at its end on the last.
        assert nearest_color(frames[0][m["y"], m["x"]]) == m["color"]
        assert nearest_color(frames[-1][gt["end"][1], gt["end"][0]]) == gt["color_after"]
        dx, dy = gt["end"][0] - m["x"], gt["end"][1] - m["y"]
        assert {"left": dx < 0, "right": dx > 0, "up": dy < 0, "down": dy > 0}[gt["direction"]]
        if gt["still"]:
            s = gt["still"]
            assert nearest_color(frames[-1][s["y"], s["x"]]) == s["color"]


def test_every_media_file_named_by_the_annotations_exists(world):
    images = index_media_files(world.root / "images", IMAGE_EXTENSIONS)
    pairs = index_media_files(world.root / "nlvr2" / "images", IMAGE_EXTENSIONS)
    videos = index_media_files(world.root / "videos", VIDEO_EXTENSIONS)
    wanted: list[tuple[dict, str]] = []  # (index, media id) as docs/manifests.md maps each record
    for sub in ("train2014", "val2014"):
        for q in read_json(world, f"annotations/vqa2/v2_OpenEnded_mscoco_{sub}_questions.json")["questions"]:
            wanted.append((images, f"COCO_{sub}_{q['image_id']:012d}"))
    for split in ("train", "val"):
        wanted += [(images, q["imageId"]) for q in read_json(world, f"annotations/gqa/{split}_balanced_questions.json").values()]
    for im in read_json(world, "annotations/coco/dataset_coco.json")["images"]:
        wanted.append((images, Path(im["filename"]).stem))
    for split in ("train", "dev"):
        for r in read_jsonl(world, f"annotations/nlvr2/{split}.json"):
            base = r["identifier"].rsplit("-", 1)[0]
            wanted += [(pairs, f"{base}-img0"), (pairs, f"{base}-img1")]
            if split == "train":
                assert (world.root / f"nlvr2/images/train/{r['directory']}/{base}-img0.png").is_file()
            else:
                assert "directory" not in r
    value = sorted((world.root / "annotations/value").glob("*.jsonl"))
    assert len(value) == 3 + 4 * 2  # three subtitle files, four datasets x (train, val)
    for path in value:
        wanted += [(videos, r["vid_name"]) for r in read_jsonl(world, path.relative_to(world.root))]
    missing = [media_id for index, media_id in wanted if len(index.get(media_id, [])) != 1]
    assert missing == [] and len(wanted) > 200


def test_every_video_has_subtitles_inside_it_and_belongs_to_one_family(world, truth):
    families = {"tv": "tv_subtitles", "how2": "how2_subtitles", "yc2": "yc2_subtitles"}
    for family, file in families.items():
        lines = {r["vid_name"]: r["sub"] for r in read_jsonl(world, f"annotations/value/{file}.jsonl")}
        assert set(lines) == {n for n, gt in truth["videos"].items() if gt["family"] == family}
        for name, subs in lines.items():
            assert subs and all(0 <= s["start"] < s["end"] <= truth["videos"][name]["duration"] for s in subs)
    assert all(n.startswith(("demo_s", "how2_", "yc2_")) for n in truth["videos"])


def test_vqa_has_ten_answers_with_some_disagreement(world, truth):
    answers_seen, yes_no = [], Counter()
    for sub in ("train2014", "val2014"):
        questions = read_json(world, f"annotations/vqa2/v2_OpenEnded_mscoco_{sub}_questions.json")
        annotations = read_json(world, f"annotations/vqa2/v2_mscoco_{sub}_annotations.json")
        assert (questions["task_type"], questions["data_type"], questions["data_subtype"]) == ("Open-Ended", "mscoco", sub)
        assert [q["question_id"] for q in questions["questions"]] == [a["question_id"] for a in annotations["annotations"]]
        for q, a in zip(questions["questions"], annotations["annotations"]):
            assert q["question_id"] // 1000 == q["image_id"] == a["image_id"]
            assert truth["images"][f"COCO_{sub}_{q['image_id']:012d}"]["split"] == sub
            assert [x["answer_id"] for x in a["answers"]] == list(range(1, 11))
            given = [x["answer"] for x in a["answers"]]
            assert Counter(given).most_common(1)[0][0] == a["multiple_choice_answer"]
            assert a["answer_type"] in ("yes/no", "number", "other")
            answers_seen.append(given)
            if a["answer_type"] == "yes/no":
                yes_no[a["multiple_choice_answer"]] += 1
    assert any(len(set(g)) > 1 for g in answers_seen), "soft scores would all be 1.0"
    assert any(len(set(g)) == 1 for g in answers_seen)
    assert 0.3 < yes_no["yes"] / sum(yes_no.values()) < 0.7


def resolve(ref: str, objects: list[dict]) -> dict:
    """The one object a description like 'large red circle' or 'purple object' names."""
    keys = {**{c: "color" for c in COLORS}, **{s: "shape" for s in SHAPES}, "small": "size", "large": "size"}
    words = [w for w in ref.split() if w not in ("shape", "object")]
    hits = [o for o in objects if all(o[keys[w]] == w for w in words)]
    assert len(hits) == 1, (ref, objects)
    return hits[0]


def test_vqa_answers_agree_with_the_ground_truth(world, truth):
    checked = Counter()
    for sub in ("train2014", "val2014"):
        questions = read_json(world, f"annotations/vqa2/v2_OpenEnded_mscoco_{sub}_questions.json")["questions"]
        annotations = read_json(world, f"annotations/vqa2/v2_mscoco_{sub}_annotations.json")["annotations"]
        for q, a in zip(questions, annotations):
            gt = truth["images"][f"COCO_{sub}_{q['image_id']:012d}"]
            objs, text, answer = gt["objects"], q["question"], a["multiple_choice_answer"]
            if m := re.fullmatch(r"How many (\w+?)s? (?:are|can).*\?", text):
                word = m.group(1)
                n = sum(word in (o["shape"], o["color"]) for o in objs) if word not in ("shape", "object") else len(objs)
                if m2 := re.fullmatch(r"How many (\w+) (?:shapes|objects) .*", text):
                    n = sum(o["color"] == m2.group(1) for o in objs) if m2.group(1) in COLORS else n
                assert answer == str(n), (text, objs)
                checked["count"] += 1
            elif m := re.fullmatch(r"(?:What color is the|What is the color of the) (.+)\?", text):
                assert answer == resolve(m.group(1), objs)["color"]
                checked["color"] += 1
            elif m := re.fullmatch(r"What (?:kind of )?shape is the (.+)\?", text):
                assert answer == resolve(m.group(1), objs)["shape"]
                checked["shape"] += 1
            elif m := re.fullmatch(r"(?:Is there|Do you see) an? (\w+) (\w+)(?: in the picture)?\?", text):
                there = any((o["color"], o["shape"]) == m.groups() for o in objs)
                assert answer == ("yes" if there else "no"), (text, objs)
                checked["exists"] += 1
            elif m := re.fullmatch(r"Which side of the picture is the (.+) on\?", text):
                o = resolve(m.group(1), objs)
                assert answer == ("left" if o["x"] < gt["width"] / 2 else "right")
                checked["side"] += 1
    assert len(checked) == 5 and sum(checked.values()) > 40, checked


def test_gqa_answers_agree_with_the_ground_truth(world, truth):
    checked = Counter()
    for split in ("train", "val"):
        for qid, q in read_json(world, f"annotations/gqa/{split}_balanced_questions.json").items():
            gt = truth["images"][q["imageId"]]
            assert gt["split"] == {"train": "train2014", "val": "val2014"}[split]
            assert q["isBalanced"] is True and set(q["types"]) == {"structural", "semantic", "detailed"}
            objs, text, answer, detailed = gt["objects"], q["question"], q["answer"], q["types"]["detailed"]
            patterns = {  # detailed type -> how its questions name the object
                "queryAttr": r"(?:What color is the|Which color is the|The) (.+?)(?: is what color)?\?",
                "chooseAttr": r"Is the (.+) \w+ or \w+\?", "verifyAttr": r"Is the (.+) \w+\?",
                "categoryAttr": r"What shape is the (.+)\?",
                "positionQuery": r"(?:On which side is the (.+)|Which side is the (.+) on)\?"}
            if detailed in patterns:
                m = re.fullmatch(patterns[detailed], text)
                o = resolve(m.group(1) or m.group(2), objs)
                expected = {"queryAttr": o["color"], "chooseAttr": o["color"], "categoryAttr": o["shape"],
                            "positionQuery": "left" if o["x"] < gt["width"] / 2 else "right",
                            "verifyAttr": "yes" if text.endswith(f" {o['color']}?") else "no"}[detailed]
                assert answer == expected, (text, objs)
                checked[detailed] += 1
            elif detailed == "relVerify":
                a, rel, b = re.fullmatch(r"Is the (.+) to the (left|right) of the (.+)\?", text).groups()
                xa, xb = resolve(a, objs)["x"], resolve(b, objs)["x"]
                assert answer == ("yes" if (xa < xb) == (rel == "left") else "no"), (text, objs)
                checked[detailed] += 1
    assert len(checked) >= 5, checked


def test_nlvr2_is_balanced_and_its_counts_agree_with_the_ground_truth(world, truth):
    labels, checked = Counter(), 0
    for split in ("train", "dev"):
        records = read_jsonl(world, f"annotations/nlvr2/{split}.json")
        assert len({r["identifier"] for r in records}) == len(records)
        for r in records:
            assert r["identifier"].startswith(f"{split}-") and r["label"] in ("True", "False")
            labels[r["label"]] += 1
            base = r["identifier"].rsplit("-", 1)[0]
            left, right = truth["nlvr2"][f"{base}-img0"]["objects"], truth["nlvr2"][f"{base}-img1"]["objects"]
            if m := re.fullmatch(r"There are exactly (\w+) shapes? in total\.", r["sentence"]):
                words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight"]
                assert (words.index(m.group(1)) == len(left) + len(right)) == (r["label"] == "True")
                checked += 1
            elif m := re.fullmatch(r"Both images contain an? (\w+) shape\.", r["sentence"]):
                both = all(any(o["color"] == m.group(1) for o in side) for side in (left, right))
                assert both == (r["label"] == "True")
                checked += 1
    assert labels["True"] == labels["False"] and checked > 0


def test_karpathy_captions_have_five_sentences_and_coco_splits(world, truth):
    data = read_json(world, "annotations/coco/dataset_coco.json")
    assert data["dataset"] == "coco" and len(data["images"]) == world.images
    splits, sent_ids = Counter(), []
    for k, im in enumerate(data["images"]):
        assert im["imgid"] == k and len(im["sentences"]) == 5 and len({s["raw"] for s in im["sentences"]}) == 5
        assert im["split"] in ({"train", "restval"} if im["filepath"] == "train2014" else {"val", "test"})
        assert im["filename"] == f"COCO_{im['filepath']}_{im['cocoid']:012d}.jpg"
        for s in im["sentences"]:
            assert s["imgid"] == k and s["tokens"] == re.findall(r"[a-z0-9]+", s["raw"].lower())
            gt_colors = {o["color"] for o in truth["images"][Path(im["filename"]).stem]["objects"]}
            assert {t for t in s["tokens"] if t in COLORS} <= gt_colors, s["raw"]
        assert im["sentids"] == [s["sentid"] for s in im["sentences"]]
        sent_ids += im["sentids"]
        splits[im["split"]] += 1
    assert set(splits) == {"train", "restval", "val", "test"} and len(set(sent_ids)) == len(sent_ids)


def test_video_qa_and_captions_follow_the_release_formats_and_the_ground_truth(world, truth):
    videos = truth["videos"]
    moves = {"left": "It moves to the left.", "right": "It moves to the right.", "up": "It moves up.", "down": "It moves down."}
    checked = 0
    for name, n_choices in (("tvqa_{}.jsonl", 5), ("how2qa_{}_release.jsonl", 4)):
        for split in ("train", "val"):
            records = read_jsonl(world, "annotations/value/" + name.format(split))
            assert records
            for r in records:
                gt = videos[r["vid_name"]]
                assert gt["split"] == split and gt["family"] == ("tv" if n_choices == 5 else "how2")
                choices = [r[f"a{k}"] for k in range(n_choices)]
                assert f"a{n_choices}" not in r and len(set(choices)) == n_choices
                assert ("show_name" in r) == (n_choices == 5)
                st, ed = map(float, r["ts"].split("-"))
                assert 0 <= st < ed <= gt["duration"] + 1e-6
                correct = choices[r["answer_idx"]]
                if re.fullmatch(r"(?:Which way|In which direction) does the .+ move\?|Where is the .+ going\?", r["q"]):
                    assert correct == moves[gt["direction"]]
                    checked += 1
                elif "at the end" in r["q"] or "when the clip ends" in r["q"]:
                    assert correct == gt["color_after"].capitalize()
                    checked += 1
                elif "at the beginning" in r["q"]:
                    assert correct == gt["mover"]["color"].capitalize()
                    checked += 1
    assert checked > 0
    clip_ids, desc_ids = [], []
    for name in ("tvc_{}_release.jsonl", "yc2c_{}_release.jsonl"):
        for split in ("train", "val"):
            for r in read_jsonl(world, "annotations/value/" + name.format(split)):
                gt = videos[r["vid_name"]]
                assert gt["split"] == split and r["duration"] == pytest.approx(gt["duration"])
                assert 0 <= r["ts"][0] < r["ts"][1] <= gt["duration"] + 1e-6
                assert len(r["descs"]) == (2 if split == "train" else 4)
                assert all(d["type"] == "v" and d["from_retrieval"] is False for d in r["descs"])
                assert all(gt["mover"]["shape"] in d["desc"] for d in r["descs"])
                clip_ids.append(r["clip_id"])
                desc_ids += [d["desc_id"] for d in r["descs"]]
    assert len(set(clip_ids)) == len(clip_ids) and len(set(desc_ids)) == len(desc_ids)


def test_summary_counts_every_dataset(world):
    summary = world.summary()
    for name in ("vqa2", "gqa", "nlvr2", "coco", "tvqa", "how2qa", "tvc", "yc2c"):
        assert re.search(rf"\b{name} [1-9]\d*/[1-9]\d*\b", summary), (name, summary)
    assert summary.startswith(f"{SMALL['images']} images, {world.nlvr2_pairs} NLVR2 pairs, {SMALL['videos']} videos")


def test_convert_script_and_commands_name_existing_files(world):
    assert world.commands == convert_commands() and len(world.commands) == 8
    script = (world.root / "convert.sh").read_text()
    assert script.startswith("#!/bin/sh") and 'cd "$(dirname "$0")"' in script
    assert (world.root / "convert.sh").stat().st_mode & 0o111
    assert [line for line in script.splitlines() if line.startswith("vl ")] == ["vl " + shlex.join(c) for c in world.commands]
    names = []
    for cmd in world.commands:
        assert cmd[:5] == ["data", "convert", cmd[2], "--split", "train"]
        names.append(cmd[2])
        flags = dict(zip(cmd[5::2], cmd[6::2])) if "--restval-into-train" not in cmd else \
            dict(zip([c for c in cmd[5:] if c != "--restval-into-train"][::2],
                     [c for c in cmd[5:] if c != "--restval-into-train"][1::2]))
        for flag, value in flags.items():
            if flag == "--out":
                assert value.startswith("manifests/")
            elif flag in ("--images", "--videos"):
                assert (world.root / value).is_dir()
            else:
                assert (world.root / value).is_file(), (cmd, flag)
    assert names == ["vqa2", "gqa", "nlvr2", "coco-caption", "tvqa", "how2qa", "tvc", "yc2c"]
