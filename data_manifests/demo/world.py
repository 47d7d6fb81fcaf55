"""The shapes world: a small synthetic stand-in for the eight datasets, written in their
official release formats, so the real converters, the image and video decoders and the
whole pipeline run offline, and a tiny model can learn the tasks from the pixels.

    world = write_demo_world(Path("demo"), images=160, videos=24, seed=0)
    # demo/convert.sh runs the eight `vl data convert` commands (world.commands)

Layout under OUT:

    images/{train2014,val2014}/COCO_{subtype}_{id:012d}.jpg     VQA v2, GQA, COCO captions
    vg/VG_100K/{vg id}.jpg                                       Visual Genome: a copy of every image above
    nlvr2/images/train/{directory}/train-{set}-{pair}-img{0,1}.png, nlvr2/images/dev/...
    videos/{vid_name}.mp4                                        TVQA, How2QA, TVC, YC2C
    annotations/{vqa2,gqa,nlvr2,coco,vg,value}/...               the official file names
    ground_truth.json                                            every scene, for tests and debugging
    convert.sh, convert_val.sh                                   the eight convert commands of each split

Every answer follows from what is drawn: six well-separated colours, three shapes, two
sizes, 1-4 shapes per image; "left"/"right" is asked only where the gap is clear, and an
object is named only by a description that fits it alone. Videos show one shape moving
left/right/up/down, sometimes turning another colour half-way, sometimes beside a still
shape of another kind. Each item draws from its own random stream ([seed, purpose,
index]), so the same seed gives byte-identical files (x264 runs its plain C code on one
thread, see X264_OPTIONS, and the MP4 muxer is bitexact). Every file is written under a temporary name and renamed into
place; files an earlier run recorded in ground_truth.json and this run no longer writes
are removed.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from vl.data_manifests.demo.language import gqa_for_image, make_captions, caption_tokens, nlvr2_sentences, vqa_for_image
from vl.data_manifests.demo.scenes import (
    CAPTION_STREAM, COLORS, DEMO_KIND, IDS_STREAM, MIN_IMAGES, MIN_VIDEOS, PAIR_STREAM, SCENE_STREAM, SHOW_NAME,
    VIDEO_STREAM, VIDEO_TEXT_STREAM, Scene, item_rng, pick, random_scene, render_scene,
)
from vl.data_manifests.demo.videos import (
    clip_descs, clip_span, make_choices, make_subtitles, random_video, train_count, video_names, video_questions,
    write_video,
)
from vl.data_manifests.demo.visual_genome import vg_image_path, vg_records
from vl.shared.atomic import atomic_path, write_json_atomic, write_text_atomic
from vl.shared.errors import VLError


@dataclass
class DemoWorld:
    root: Path
    images: int  # COCO-style JPEGs (train2014 + val2014), shared by VQA v2, GQA and COCO captions
    nlvr2_pairs: int  # NLVR2 image pairs, two PNGs each
    videos: int
    counts: dict[str, int]  # records per annotation file and split, e.g. {"vqa2/train": 480}
    commands: list[list[str]]  # the eight `vl data convert ...` commands (after "vl"), paths relative to root

    def summary(self) -> str:
        """One line: what was drawn and how many records each dataset has (train/val)."""
        c = self.counts
        splits = {"vqa2": (c["vqa2/train"], c["vqa2/val"]), "gqa": (c["gqa/train"], c["gqa/val"]),
                  "nlvr2": (c["nlvr2/train"], c["nlvr2/dev"]),
                  "coco": (c["coco/train"] + c["coco/restval"], c["coco/val"] + c["coco/test"])}
        for name in ("tvqa", "how2qa", "tvc", "yc2c"):
            splits[name] = (c[f"value/{name}_train"], c[f"value/{name}_val"])
        return (f"{self.images} images, {self.nlvr2_pairs} NLVR2 pairs, {self.videos} videos; records train/val: "
                + ", ".join(f"{name} {train}/{val}" for name, (train, val) in splits.items()))




# --------------------------------------------------------------------------- the plan

@dataclass
class _Plan:
    """Everything to write, decided before any file is touched (planning is fast and pure)."""

    seed: int
    # path -> ("JPEG" | "PNG" | "MP4", Scene | VideoSpec), or ("COPY", the path of a file written before it)
    media: dict[str, tuple[str, object]] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)  # path -> file contents
    truth: dict = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


def _jsonl(records: Iterable[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def plan_world(images: int, videos: int, seed: int) -> _Plan:
    plan = _Plan(seed, truth={"kind": DEMO_KIND, "seed": seed, "palette": {c: list(v) for c, v in COLORS.items()},
                              "images": {}, "nlvr2": {}, "videos": {}})
    _plan_coco_images(plan, images)
    _plan_nlvr2(plan, max(4, images // 4))
    _plan_videos(plan, videos)
    for name, split in (("convert.sh", "train"), ("convert_val.sh", "val")):
        plan.texts[name] = "".join(
            [f"#!/bin/sh\n# The shapes world's {split} splits -> manifests/ (written by `vl data demo`).\n",
             "set -e\ncd \"$(dirname \"$0\")\"\n"] + [f"vl {shlex.join(c)}\n" for c in convert_commands(split)])
    return plan


def _plan_coco_images(plan: _Plan, images: int) -> None:
    """COCO-style JPEGs and the three annotation sets that share them: VQA v2, GQA, Karpathy captions."""
    seed, media, texts, counts, truth = plan.seed, plan.media, plan.texts, plan.counts, plan.truth
    ids = [int(i) + 1 for i in item_rng(seed, IDS_STREAM).choice(581_929, size=images, replace=False)]
    n_train = train_count(images)
    vqa = {sub: ([], []) for sub in ("train2014", "val2014")}
    gqa: dict[str, dict] = {"train": {}, "val": {}}
    karpathy, sent_id = [], 0
    vg: tuple[list, list, list] = ([], [], [])  # image_data, region_descriptions, question_answers
    n_val_images = images - n_train
    for i, image_id in enumerate(ids):
        sub = "train2014" if i < n_train else "val2014"
        stem = f"COCO_{sub}_{image_id:012d}"
        scene = random_scene(item_rng(seed, SCENE_STREAM, i))
        rel = f"images/{sub}/{stem}.jpg"
        media[rel] = ("JPEG", scene)
        media[vg_image_path(i)] = ("COPY", rel)
        for records, record in zip(vg, vg_records(seed, i, image_id, scene)):
            records.append(record)
        truth["images"][stem] = {"split": sub, "file": rel, "image_id": image_id, **asdict(scene)}
        for question, annotation in vqa_for_image(seed, i, image_id, scene):
            vqa[sub][0].append(question)
            vqa[sub][1].append(annotation)
        gqa["train" if sub == "train2014" else "val"].update(gqa_for_image(seed, i, image_id, stem, scene))
        rng = item_rng(seed, CAPTION_STREAM, i)
        if sub == "train2014":
            split = "restval" if rng.random() < 0.2 else "train"
        else:  # val2014: the first half val, the rest test (both present when there are two)
            split = "val" if (i - n_train) < max(1, n_val_images // 2) else "test"
        sentences = []
        for raw in make_captions(rng, scene):
            sentences.append({"tokens": caption_tokens(raw), "raw": raw, "imgid": i, "sentid": sent_id})
            sent_id += 1
        karpathy.append({"filepath": sub, "sentids": [s["sentid"] for s in sentences], "filename": f"{stem}.jpg",
                         "imgid": i, "split": split, "sentences": sentences, "cocoid": image_id})

    info = {"description": "Shapes world: a synthetic stand-in in the VQA v2 release format (vl demo_world).",
            "url": "https://visualqa.org", "version": "2.0", "year": 2017, "contributor": "vl",
            "date_created": "2017-04-26 17:00:00"}
    license_ = {"url": "http://creativecommons.org/licenses/by/4.0/",
                "name": "Creative Commons Attribution 4.0 International License"}
    for sub, (questions, answers) in vqa.items():
        texts[f"annotations/vqa2/v2_OpenEnded_mscoco_{sub}_questions.json"] = json.dumps(
            {"info": info, "task_type": "Open-Ended", "data_type": "mscoco", "license": license_,
             "data_subtype": sub, "questions": questions})
        texts[f"annotations/vqa2/v2_mscoco_{sub}_annotations.json"] = json.dumps(
            {"info": info, "license": license_, "data_subtype": sub, "annotations": answers})
        counts[f"vqa2/{sub[:-4]}"] = len(questions)
    for split, questions in gqa.items():
        texts[f"annotations/gqa/{split}_balanced_questions.json"] = json.dumps(questions)
        counts[f"gqa/{split}"] = len(questions)
    texts["annotations/coco/dataset_coco.json"] = json.dumps({"images": karpathy, "dataset": "coco"})
    for name, records in zip(VG_FILES, vg):
        texts[f"annotations/vg/{name}"] = json.dumps(records)
    counts["vg/images"], counts["vg/questions"] = len(vg[0]), sum(len(r["qas"]) for r in vg[2])
    for split in ("train", "restval", "val", "test"):
        counts[f"coco/{split}"] = sum(im["split"] == split for im in karpathy)


def _plan_nlvr2(plan: _Plan, pairs: int) -> None:
    """Pairs of PNGs in sets of two, two sentences each (one true, one false)."""
    seed = plan.seed
    n_train_pairs = train_count(pairs)
    set_ids = [int(i) + 10 for i in item_rng(seed, IDS_STREAM, 1).choice(9_990, size=(pairs + 1) // 2 + 1, replace=False)]
    nlvr2: dict[str, list[dict]] = {"train": [], "dev": []}
    for p in range(pairs):
        rng = item_rng(seed, PAIR_STREAM, p)
        split = "train" if p < n_train_pairs else "dev"
        j = p if split == "train" else p - n_train_pairs  # sets of two pairs, numbered per split
        set_id = set_ids[j // 2] if split == "train" else set_ids[-1 - j // 2]
        stem = f"{split}-{set_id}-{j % 2}"
        directory = int(rng.integers(0, 4))
        folder = f"nlvr2/images/train/{directory}" if split == "train" else "nlvr2/images/dev"
        left, right = random_scene(rng), random_scene(rng)
        for side, scene in (("img0", left), ("img1", right)):
            rel = f"{folder}/{stem}-{side}.png"
            plan.media[rel] = ("PNG", scene)
            plan.truth["nlvr2"][f"{stem}-{side}"] = {"split": split, "file": rel, **asdict(scene)}
        for k, (sentence, label) in enumerate(nlvr2_sentences(rng, left.objects, right.objects)):
            record = {"validation": {}, "sentence": sentence, "left_url": f"https://shapes.invalid/{stem}-img0.png",
                      "writer": f"demo{int(rng.integers(1, 9))}", "label": str(label),
                      "right_url": f"https://shapes.invalid/{stem}-img1.png", "synset": "n00027807",
                      "query": f"shapes {set_id}", "identifier": f"{stem}-{k}", "extra_validations": {}}
            if split == "train":
                record["directory"] = directory
            nlvr2[split].append(record)
    for split, records in nlvr2.items():
        plan.texts[f"annotations/nlvr2/{split}.json"] = _jsonl(records)
        plan.counts[f"nlvr2/{split}"] = len(records)


def _plan_videos(plan: _Plan, videos: int) -> None:
    """MP4s and the VALUE files: TVQA + TVC share the TV-style clips; How2QA and YC2C have their own."""
    seed = plan.seed
    names = video_names(seed, videos)
    per_family = Counter(f for _, f in names)
    seen_in_family: Counter = Counter()
    specs = []
    for i, (name, family) in enumerate(names):
        split = "train" if seen_in_family[family] < train_count(per_family[family]) else "val"
        seen_in_family[family] += 1
        v = random_video(item_rng(seed, VIDEO_STREAM, i), name, family, split)
        specs.append(v)
        plan.media[f"videos/{name}.mp4"] = ("MP4", v)
        plan.truth["videos"][name] = {"file": f"videos/{name}.mp4", "duration": v.duration, **asdict(v)}
    value: dict[str, list[dict]] = {}
    qid, clip_id, desc_id = 1000, 5000, 90000
    for i, v in enumerate(specs):
        rng = item_rng(seed, VIDEO_TEXT_STREAM, i)
        value.setdefault(f"{v.family}_subtitles.jsonl", []).append({"vid_name": v.vid_name, "sub": make_subtitles(rng, v)})
        if v.family in ("tv", "how2"):
            n_choices, file = (5, f"tvqa_{v.split}.jsonl") if v.family == "tv" else (4, f"how2qa_{v.split}_release.jsonl")
            for question, correct, must, others, part in video_questions(rng, v):
                choices, answer_idx = make_choices(rng, correct, must, others, n_choices)
                st, ed = clip_span(v, part)
                record = {f"a{k}": c for k, c in enumerate(choices)}
                record.update(answer_idx=answer_idx, q=question, qid=qid, ts=f"{st:.2f}-{ed:.2f}", vid_name=v.vid_name)
                if v.family == "tv":
                    record["show_name"] = SHOW_NAME
                value.setdefault(file, []).append(record)
                qid += 1
        if v.family in ("tv", "yc2"):
            file = f"{'tvc' if v.family == 'tv' else 'yc2c'}_{v.split}_release.jsonl"
            parts = ["whole"] + ([pick(rng, ("first", "second"))] if v.change_frame is not None else [])
            for part in parts:
                descs = []
                for text in clip_descs(rng, v, part, 2 if v.split == "train" else 4):
                    descs.append({"desc": text, "desc_id": desc_id, "type": "v", "from_retrieval": False})
                    desc_id += 1
                st, ed = clip_span(v, part)
                value.setdefault(file, []).append({"vid_name": v.vid_name, "duration": round(v.duration, 2),
                                                   "ts": [round(st, 2), round(ed, 2)], "descs": descs,
                                                   "clip_id": clip_id})
                clip_id += 1
    for file in sorted(value):
        plan.texts[f"annotations/value/{file}"] = _jsonl(value[file])
        plan.counts["value/" + file.removesuffix(".jsonl").removesuffix("_release")] = len(value[file])


VG_FILES = ("image_data.json", "region_descriptions.json", "question_answers.json")


def pretraining_commands() -> list[list[str]]:
    """`vl data convert vg-caption` and `vg-qa` on the world's Visual Genome files, leaving out
    the images of the val manifests that convert_val.sh writes (run it first): the VG images
    that are the world's val2014 images go, matched by COCO id."""
    a = "annotations/vg"
    exclude = [arg for stem in ("vqa2", "coco_caption") for arg in ("--exclude-images", f"manifests/{stem}_val.jsonl")]
    return [["data", "convert", name, "--split", "train", main, f"{a}/{file}", "--image-data", f"{a}/image_data.json",
             *exclude, "--images", "vg", "--out", f"manifests/{stem}_train.jsonl"]
            for name, main, file, stem in (("vg-caption", "--annotations", "region_descriptions.json", "vg_caption"),
                                           ("vg-qa", "--questions", "question_answers.json", "vg_qa"))]


def convert_commands(split: str = "train") -> list[list[str]]:
    """The eight `vl data convert` commands of one split ("train" or "val"), paths relative
    to the world's root; manifests go to manifests/<dataset>_<split>.jsonl."""
    if split not in ("train", "val"):
        raise ValueError(f"the demo world has train and val splits, not {split!r}")
    a, val = "annotations", split == "val"
    vqa_sub = "val2014" if val else "train2014"
    rows = [
        ("vqa2", ["--questions", f"{a}/vqa2/v2_OpenEnded_mscoco_{vqa_sub}_questions.json",
                  "--annotations", f"{a}/vqa2/v2_mscoco_{vqa_sub}_annotations.json", "--images", "images"], "vqa2"),
        ("gqa", ["--questions", f"{a}/gqa/{split}_balanced_questions.json", "--images", "images"], "gqa"),
        ("nlvr2", ["--annotations", f"{a}/nlvr2/{'dev' if val else 'train'}.json", "--images", "nlvr2/images"],
         "nlvr2"),
        ("coco-caption", [*([] if val else ["--restval-into-train"]), "--karpathy", f"{a}/coco/dataset_coco.json",
                          "--images", "images"], "coco_caption"),
        ("tvqa", ["--annotations", f"{a}/value/tvqa_{split}.jsonl", "--subtitles", f"{a}/value/tv_subtitles.jsonl",
                  "--videos", "videos"], "tvqa"),
        ("how2qa", ["--annotations", f"{a}/value/how2qa_{split}_release.jsonl",
                    "--subtitles", f"{a}/value/how2_subtitles.jsonl", "--videos", "videos"], "how2qa"),
        ("tvc", ["--annotations", f"{a}/value/tvc_{split}_release.jsonl", "--subtitles", f"{a}/value/tv_subtitles.jsonl",
                 "--videos", "videos"], "tvc"),
        ("yc2c", ["--annotations", f"{a}/value/yc2c_{split}_release.jsonl",
                  "--subtitles", f"{a}/value/yc2_subtitles.jsonl", "--videos", "videos"], "yc2c"),
    ]
    return [["data", "convert", name, "--split", split, *args, "--out", f"manifests/{stem}_{split}.jsonl"]
            for name, args, stem in rows]


# --------------------------------------------------------------------------- writing

def _recorded_files(out: Path) -> set[str]:
    """Files an earlier run listed in its ground_truth.json (only if it is ours, only inside `out`)."""
    try:
        truth = json.loads((out / "ground_truth.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    if not isinstance(truth, dict) or truth.get("kind") != DEMO_KIND or not isinstance(truth.get("files"), list):
        return set()
    return {f for f in truth["files"] if isinstance(f, str) and not os.path.isabs(f) and ".." not in Path(f).parts}


def _write_image(path: Path, scene: Scene, fmt: str) -> None:
    img = render_scene(scene)
    with atomic_path(path) as tmp:
        img.save(tmp, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))


def write_demo_world(out: Path, *, images: int = 160, videos: int = 24, seed: int = 0,
                     progress: bool = False) -> DemoWorld:
    """Write the shapes world under `out` (see the module docstring for the layout)."""
    problems = []
    if images < MIN_IMAGES:
        problems.append(f"--images {images}: the demo world needs at least {MIN_IMAGES} (a train and a val part)")
    if videos < MIN_VIDEOS:
        problems.append(f"--videos {videos}: the demo world needs at least {MIN_VIDEOS} "
                        "(two each for TV, How2 and YouCook2 style clips)")
    if seed < 0:
        problems.append(f"--seed {seed}: use a seed >= 0")
    out = Path(out)
    if out.exists() and not out.is_dir():
        problems.append(f"{out} is a file; give a folder (new or holding an earlier demo world)")
    if problems:
        raise VLError(problems)
    plan = plan_world(images, videos, seed)
    files = sorted([*plan.media, *plan.texts])
    previous = _recorded_files(out)
    # Record every file that may be ours before writing any, so an interrupted run is cleaned up next time.
    write_json_atomic(out / "ground_truth.json", {**plan.truth, "files": sorted(previous | set(files))})
    say = (lambda msg: print(f"demo world: {msg}", file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    done = 0
    for rel, (fmt, spec) in plan.media.items():
        if fmt == "MP4":
            write_video(out / rel, spec)
        elif fmt == "COPY":
            with atomic_path(out / rel) as tmp:
                shutil.copyfile(out / spec, tmp)
        else:
            _write_image(out / rel, spec, fmt)
        done += 1
        if done % 50 == 0 or done == len(plan.media):
            say(f"{done}/{len(plan.media)} images and videos")
    for rel, text in plan.texts.items():
        if rel.endswith(".sh"):
            with atomic_path(out / rel) as tmp:
                tmp.write_text(text, encoding="utf-8")
                tmp.chmod(0o755)
        else:
            write_text_atomic(out / rel, text)
    write_json_atomic(out / "ground_truth.json", {**plan.truth, "files": files})
    for rel in sorted(previous - set(files)):  # left by an earlier, different run
        (out / rel).unlink(missing_ok=True)
        for parent in (out / rel).parents:
            if parent == out or not parent.is_relative_to(out):
                break
            try:
                parent.rmdir()  # only if now empty
            except OSError:
                break
    say(f"wrote {len(files) + 1} files under {out}")
    pairs = sum(1 for rel in plan.media if rel.endswith("-img0.png"))
    return DemoWorld(out, images, pairs, videos, plan.counts, convert_commands())

