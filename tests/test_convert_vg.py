"""Visual Genome converters (vg-caption, vg-qa) and leaving downstream images out of
pre-training data (--exclude-images on them and on coco-caption; `vl data check --against`).
Official-format JSON written here -> the exact manifest lines; each bad record -> one
message naming the file and the record's index, and nothing written."""
from __future__ import annotations

import json

import pytest

from conftest import run_vl
from test_convert_images import KARPATHY, convert_fails, lines, write_json
from vl.data_manifests.registry import ConvertRequest, convert_dataset
from vl.shared import DatasetManifest

# image 1 is no COCO image; image 2 is COCO 391895 (a Karpathy test image in KARPATHY); image 3 is COCO 522418
IMAGE_DATA = [
    {"image_id": 1, "url": "https://cs.stanford.edu/people/rak248/VG_100K_2/1.jpg", "width": 800, "height": 600,
     "coco_id": None, "flickr_id": None},
    {"image_id": 2, "url": "https://cs.stanford.edu/people/rak248/VG_100K/2.jpg", "width": 800, "height": 600,
     "coco_id": 391895, "flickr_id": 1},
    {"id": 3, "url": "https://cs.stanford.edu/people/rak248/VG_100K/3.jpg", "width": 640, "height": 480,
     "coco_id": 522418, "flickr_id": None},  # v1.0 spells the id "id"
]


def region(rid, image_id, phrase):
    return {"region_id": rid, "image_id": image_id, "phrase": phrase, "x": 1, "y": 2, "width": 30, "height": 40}


REGIONS = [
    {"id": 1, "regions": [region(11, 1, "the clock is green in colour"), region(12, 1, "shade"),  # 1 word: dropped
                          region(13, 1, "  a  white   street sign "), region(14, 1, "the clock is green in colour"),
                          region(15, 1, "")]},
    {"id": 2, "regions": [region(21, 2, "a man riding a moped")]},
    {"id": 3, "regions": [region(31, 3, "two words")]},  # nothing of 3+ words: no example
]

QAS = [
    {"id": 1, "qas": [{"qa_id": 101, "image_id": 1, "question": "What color is the clock?", "answer": "Green.",
                       "q_objects": [], "a_objects": []},
                      {"qa_id": 102, "image_id": 1, "question": "How many signs?", "answer": "Two",
                       "q_objects": [], "a_objects": []}]},
    {"id": 2, "qas": [{"qa_id": 201, "image_id": 2, "question": "Who rides the moped?", "answer": "A man.",
                       "q_objects": [], "a_objects": []},
                      {"qa_id": 202, "image_id": 2, "question": "What is it?", "answer": " ",
                       "q_objects": [], "a_objects": []}]},
]


@pytest.fixture
def vg(tmp_path):
    return {"image_data": write_json(tmp_path / "image_data.json", IMAGE_DATA),
            "regions": write_json(tmp_path / "region_descriptions.json", REGIONS),
            "qas": write_json(tmp_path / "question_answers.json", QAS)}


def test_vg_caption_one_example_per_image_with_its_cleaned_phrases(tmp_path, vg):
    out = tmp_path / "vg_caption.jsonl"
    m = convert_dataset("vg-caption", ConvertRequest(split="train", annotations=[vg["regions"]],
                                                     image_data=vg["image_data"]), out)
    assert lines(out) == [
        {"id": "vg-1", "task": "caption", "split": "train", "media": ["1"], "image_id": 1,
         "targets": ["the clock is green in colour", "a white street sign"]},
        {"id": "vg-2", "task": "caption", "split": "train", "media": ["2"], "image_id": 2, "coco_id": 391895,
         "targets": ["a man riding a moped"]},
    ]
    assert m.meta.extra["skipped"] == {"empty_phrases": 1, "images_without_phrases": 1, "repeated_phrases": 1,
                                       "short_phrases": 2}
    assert {s.path for s in m.meta.sources} == {str(vg["regions"].resolve()), str(vg["image_data"].resolve())}


def test_vg_qa_one_vqa_example_per_question(tmp_path, vg):
    out = tmp_path / "vg_qa.jsonl"
    m = convert_dataset("vg-qa", ConvertRequest(split="train", questions=[vg["qas"]], image_data=vg["image_data"]), out)
    assert lines(out) == [
        {"id": "vgqa-101", "task": "vqa", "split": "train", "media": ["1"], "image_id": 1,
         "question": "What color is the clock?", "answers": ["Green."], "labels": {"green": 1.0}},
        {"id": "vgqa-102", "task": "vqa", "split": "train", "media": ["1"], "image_id": 1,
         "question": "How many signs?", "answers": ["Two"], "labels": {"2": 1.0}},
        {"id": "vgqa-201", "task": "vqa", "split": "train", "media": ["2"], "image_id": 2, "coco_id": 391895,
         "question": "Who rides the moped?", "answers": ["A man."], "labels": {"man": 1.0}},
    ]
    assert m.meta.extra["skipped"] == {"empty_answers": 1}
    assert m.meta.extra["task"] == "vqa"


def test_vg_qa_trains_as_vqa(tmp_path, vg):
    """The VQA task reads the examples: one item each, its target the normalised answer."""
    from vl.train.tasks import get_task

    out = tmp_path / "vg_qa.jsonl"
    convert_dataset("vg-qa", ConvertRequest(split="train", questions=[vg["qas"]], image_data=vg["image_data"]), out)
    items = get_task("vqa").expand(DatasetManifest.read(out).examples)
    assert [(i.media, i.targets) for i in items] == [(["1"], [("green", 1.0)]), (["1"], [("2", 1.0)]),
                                                    (["2"], [("man", 1.0)])]


@pytest.mark.parametrize("name, field", [("vg-caption", "annotations"), ("vg-qa", "questions")])
def test_vg_needs_image_data(tmp_path, vg, name, field):
    main = vg["regions"] if name == "vg-caption" else vg["qas"]
    convert_fails(name, ConvertRequest(split="train", **{field: [main]}), tmp_path / "o.jsonl",
                  f"{name} needs --image-data")


REGION_PROBLEMS = [
    (lambda r: r[1].pop("id"), "region_descriptions.json: [1]: needs an integer 'id'"),
    (lambda r: r[1].update(id=9), "region_descriptions.json: [1]: image 9 is not in the --image-data file"),
    (lambda r: r[1].update(id=1), "region_descriptions.json: [1] (image 1): duplicate id '1' (first at"),
    (lambda r: r[0].pop("regions"), "region_descriptions.json: [0] (image 1): missing required field 'regions'"),
    (lambda r: r[0]["regions"][2].pop("phrase"), "region_descriptions.json: [0] (image 1) regions[2]: missing "
                                                 "required field 'phrase'"),
    (lambda r: r[2]["regions"][0].update(phrase=7), "[2] (image 3) regions[0]: field 'phrase'"),
    (lambda r: r.__setitem__(0, "x"), "region_descriptions.json: [0]: needs an integer 'id'"),
]
QA_PROBLEMS = [
    (lambda q: q[0]["qas"][1].pop("answer"), "question_answers.json: [0] (image 1) qas[1]: missing required field "
                                             "'answer'"),
    (lambda q: q[1]["qas"][0].update(qa_id=101), "question_answers.json: [1] (image 2) qas[0]: duplicate id 'vgqa-101'"),
    (lambda q: q[0]["qas"].append(None), "[0] (image 1) qas[2]: must be a JSON object"),
    (lambda q: q[1].update(qas={}), "question_answers.json: [1] (image 2): field 'qas'"),
]


@pytest.mark.parametrize("name, change, fragment", [("vg-caption", *p) for p in REGION_PROBLEMS]
                         + [("vg-qa", *p) for p in QA_PROBLEMS])
def test_vg_bad_records(tmp_path, vg, name, change, fragment):
    records = json.loads(json.dumps(REGIONS if name == "vg-caption" else QAS))
    change(records)
    path = write_json(tmp_path / ("region_descriptions.json" if name == "vg-caption" else "question_answers.json"),
                      records)
    convert_fails(name, ConvertRequest(split="train", annotations=[path], image_data=vg["image_data"]),
                  tmp_path / "out.jsonl", fragment)


@pytest.mark.parametrize("change, fragment", [
    (lambda d: d[0].pop("image_id"), "image_data.json: [0]: needs an integer 'image_id' (or 'id')"),
    (lambda d: d[1].update(coco_id="391895"), "image_data.json: [1] (image 2): field 'coco_id' must be an integer"),
    (lambda d: d[2].update(id=1), "image_data.json: [2] (image 1): duplicate id '1'"),
])
def test_vg_bad_image_data(tmp_path, vg, change, fragment):
    records = json.loads(json.dumps(IMAGE_DATA))
    change(records)
    path = write_json(tmp_path / "image_data.json", records)
    convert_fails("vg-caption", ConvertRequest(split="train", annotations=[vg["regions"]], image_data=path),
                  tmp_path / "out.jsonl", fragment)


def test_vg_not_a_list(tmp_path, vg):
    path = write_json(tmp_path / "region_descriptions.json", {"regions": []})
    convert_fails("vg-caption", ConvertRequest(split="train", annotations=[path], image_data=vg["image_data"]),
                  tmp_path / "out.jsonl", "region_descriptions.json: must be a JSON list of images")


# ---------------------------------------------------------------- --exclude-images

@pytest.fixture
def coco_test(tmp_path):
    """The downstream Karpathy test manifest: COCO 391895 (VG image 2)."""
    k = write_json(tmp_path / "dataset_coco.json", KARPATHY)
    out = tmp_path / "coco_test.jsonl"
    convert_dataset("coco-caption", ConvertRequest(split="test", karpathy=k), out)
    return out


def test_vg_caption_excludes_coco_images_by_coco_id(tmp_path, vg, coco_test):
    out = tmp_path / "vg_caption.jsonl"
    m = convert_dataset("vg-caption", ConvertRequest(split="train", annotations=[vg["regions"]],
                                                     image_data=vg["image_data"], exclude_images=[coco_test]), out)
    assert [ex["media"] for ex in lines(out)] == [["1"]]
    x = m.meta.extra["excluded_images"]
    assert x == {"manifests": [{"path": str(coco_test.resolve()), "images": 1, "coco_images": 1}],
                 "dropped_images": 1, "dropped_examples": 1, "matched_by": {"media_id": 0, "coco_id": 1},
                 "first_dropped": ["2"]}
    assert str(coco_test.resolve()) in {s.path for s in m.meta.sources}  # its sha256 recorded


def test_vg_qa_excludes_by_media_id(tmp_path, vg):
    """A VG (or GQA) manifest names VG images by their id: matched by media id."""
    held_out = tmp_path / "held_out.jsonl"
    convert_dataset("vg-caption", ConvertRequest(split="val", annotations=[vg["regions"]], image_data=vg["image_data"]),
                    held_out)  # images 1 and 2
    req = ConvertRequest(split="train", questions=[vg["qas"]], image_data=vg["image_data"], exclude_images=[held_out])
    convert_fails("vg-qa", req, tmp_path / "out.jsonl", "every example of split 'train' looks at an image of the "
                                                        "--exclude-images manifests")


def test_coco_caption_excludes_images(tmp_path, vg):
    """Pre-training captions (Karpathy train) without the images of a VG manifest's COCO images."""
    k = write_json(tmp_path / "dataset_coco.json", KARPATHY)
    vg_manifest = tmp_path / "vg.jsonl"
    regions = REGIONS + [{"id": 3, "regions": [region(32, 3, "a woman cutting a cake")]}]
    regions = [regions[0], regions[1], regions[3]]
    convert_dataset("vg-caption", ConvertRequest(split="val", annotations=[write_json(tmp_path / "r.json", regions)],
                                                 image_data=vg["image_data"]), vg_manifest)
    out = tmp_path / "coco_train.jsonl"
    m = convert_dataset("coco-caption", ConvertRequest(split="train", karpathy=k, restval_into_train=True,
                                                       exclude_images=[vg_manifest]), out)
    assert [ex["image_id"] for ex in lines(out)] == [184613]  # 522418 is VG image 3
    assert m.meta.extra["excluded_images"]["matched_by"] == {"media_id": 0, "coco_id": 1}


def test_exclude_images_bad_requests(tmp_path, vg, coco_test):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "task": "vqa"}\n')
    req = ConvertRequest(split="train", annotations=[vg["regions"]], image_data=vg["image_data"], exclude_images=[bad])
    convert_fails("vg-caption", req, tmp_path / "o.jsonl", "bad.jsonl:1")
    req = ConvertRequest(split="train", annotations=[vg["regions"]], image_data=vg["image_data"],
                         exclude_images=[coco_test, coco_test])
    convert_fails("vg-caption", req, tmp_path / "o.jsonl", "given twice as --exclude-images")
    req = ConvertRequest(split="train", questions=[tmp_path / "dataset_coco.json"], exclude_images=[coco_test])
    convert_fails("gqa", req, tmp_path / "o.jsonl", "gqa does not read --exclude-images")


def test_cli_convert_lists_what_was_excluded(tmp_path, vg, coco_test):
    out = tmp_path / "vg.jsonl"
    result = run_vl(["data", "convert", "vg-caption", "--split", "train", "--annotations", vg["regions"],
                     "--image-data", vg["image_data"], "--exclude-images", coco_test, "--out", out])
    assert "excluded: 1 images (0 by media id, 1 by COCO id), 1 examples (first: 2)" in result.stdout
    assert str(coco_test.resolve()) in result.stdout


def test_check_against_refuses_an_overlapping_pretraining_manifest(tmp_path, vg, coco_test):
    """Overlap is an error unless the manifest was converted with --exclude-images (the consent)."""
    unfiltered = tmp_path / "vg_all.jsonl"
    convert_dataset("vg-caption", ConvertRequest(split="train", annotations=[vg["regions"]],
                                                 image_data=vg["image_data"]), unfiltered)
    result = run_vl(["data", "check", unfiltered, "--against", coco_test], expect=1)
    assert (f"{unfiltered}: 1 of its 2 images are images of {coco_test} (2); convert it again with "
            f"--exclude-images {coco_test}") in result.stderr
    filtered = tmp_path / "vg_train.jsonl"
    convert_dataset("vg-caption", ConvertRequest(split="train", annotations=[vg["regions"]],
                                                 image_data=vg["image_data"], exclude_images=[coco_test]), filtered)
    result = run_vl(["data", "check", filtered, "--against", coco_test])
    assert "valid, 1 examples" in result.stdout


def test_vg_converters_are_listed():
    result = run_vl(["list", "converters"])
    assert "vg-caption    caption (image): Visual Genome region_descriptions.json" in result.stdout
    assert "vg-qa         vqa (image): Visual Genome question_answers.json" in result.stdout


# ---------------------------------------------------------------- vl data merge

def test_merge_coco_and_vg_captions_into_one_pretraining_manifest(tmp_path, vg, coco_test):
    k = write_json(tmp_path / "dataset_coco.json", KARPATHY)
    coco = tmp_path / "coco_train.jsonl"
    convert_dataset("coco-caption", ConvertRequest(split="train", karpathy=k, restval_into_train=True), coco)
    vg_caption = tmp_path / "vg_caption.jsonl"
    convert_dataset("vg-caption", ConvertRequest(split="train", annotations=[vg["regions"]],
                                                 image_data=vg["image_data"], exclude_images=[coco_test]), vg_caption)
    out = tmp_path / "pretrain_captions.jsonl"
    result = run_vl(["data", "merge", coco, vg_caption, "--out", out])
    assert "(3 caption examples: 2 from coco_train.jsonl, 1 from vg_caption.jsonl; 3 media ids)" in result.stdout
    merged = DatasetManifest.read(out)
    assert [ex["id"] for ex in merged.examples] == ["522418", "184613", "vg-1"]
    assert lines(out) == lines(coco) + lines(vg_caption)
    assert merged.meta.dataset == "merge" and merged.meta.extra["task"] == "caption"
    assert [s.path for s in merged.meta.sources] == [str(coco.resolve()), str(vg_caption.resolve())]
    assert [m["examples"] for m in merged.meta.extra["merged"]] == [2, 1]


def test_merge_refuses_other_tasks_shared_ids_and_its_input_as_output(tmp_path, vg, coco_test):
    qa = tmp_path / "vg_qa.jsonl"
    convert_dataset("vg-qa", ConvertRequest(split="train", questions=[vg["qas"]], image_data=vg["image_data"]), qa)
    result = run_vl(["data", "merge", coco_test, qa, "--out", tmp_path / "m.jsonl"], expect=1)
    assert f"these hold several ({coco_test}: caption; {qa}: vqa)" in result.stderr
    copy = tmp_path / "copy.jsonl"
    copy.write_text(coco_test.read_text())
    result = run_vl(["data", "merge", coco_test, copy, "--out", tmp_path / "m.jsonl"], expect=1)
    assert f"{copy}:1: duplicate id '391895' (first at {coco_test}:1)" in result.stderr
    result = run_vl(["data", "merge", coco_test, copy, "--out", copy], expect=1)
    assert "is one of the inputs" in result.stderr
    assert not (tmp_path / "m.jsonl").exists()


# ---------------------------------------------------------------- the demo world's Visual Genome files

@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    """A small shapes world with its val manifests converted (what --exclude-images names)."""
    import os

    from vl.data_manifests.demo import write_demo_world
    from vl.data_manifests.demo.world import convert_commands

    world = write_demo_world(tmp_path_factory.mktemp("vgworld") / "world", images=10, videos=6)
    cwd = os.getcwd()
    os.chdir(world.root)  # the commands' paths are relative to the world's root, as in convert_val.sh
    try:
        for cmd in convert_commands("val"):
            if cmd[2] in ("vqa2", "coco-caption"):
                run_vl(cmd)
    finally:
        os.chdir(cwd)
    return world


def test_the_demo_world_converts_to_vg_pretraining_manifests_without_its_val_images(small_world):
    import os

    from vl.data_manifests.demo.world import pretraining_commands
    from vl.shared.media import IMAGE_EXTENSIONS, index_media_files

    world = small_world
    truth = json.loads((world.root / "ground_truth.json").read_text())
    coco_of = {im["image_id"]: im["split"] for im in truth["images"].values()}
    cwd = os.getcwd()
    os.chdir(world.root)
    try:
        outputs = [run_vl(cmd).stdout for cmd in pretraining_commands()]
    finally:
        os.chdir(cwd)
    captions = DatasetManifest.read(world.root / "manifests/vg_caption_train.jsonl")
    questions = DatasetManifest.read(world.root / "manifests/vg_qa_train.jsonl")
    for manifest in (captions, questions):
        # exactly the VG twins of the train2014 images: the val2014 ones went by COCO id
        assert {ex["coco_id"] for ex in manifest.examples} == {i for i, s in coco_of.items() if s == "train2014"}
        assert manifest.meta.extra["excluded_images"]["matched_by"] == {
            "media_id": 0, "coco_id": sum(s == "val2014" for s in coco_of.values())}
    assert all("by COCO id" in out for out in outputs)
    files = index_media_files(world.root / "vg", IMAGE_EXTENSIONS)
    assert set(captions.media_ids()) <= set(files)
    by_coco = {im["image_id"]: im for im in truth["images"].values()}
    for ex in captions.examples:  # every described shape is drawn; the two-word phrases were dropped
        scene = by_coco[ex["coco_id"]]
        drawn = {f"{o['size']} {o['color']} {o['shape']}" for o in scene["objects"]}
        assert {t.split(" ", 1)[1] for t in ex["targets"][:-1]} <= drawn
        assert min(len(t.split()) for t in ex["targets"]) >= 3
        (path,) = files[ex["media"][0]]
        assert path.read_bytes() == (world.root / scene["file"]).read_bytes()
    for ex in questions.examples:
        if ex["question"] == "How many shapes are there?":
            scene = by_coco[ex["coco_id"]]
            assert ex["labels"] == {str(len(scene["objects"])): 1.0}
