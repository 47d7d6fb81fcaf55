"""`vl demo` end to end through the CLI on the smallest world: every artifact of every stage."""
from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner
from PIL import Image

from vl.shared import FeatureStore
from vl.shared.cli import cli
from vl.shared.manifest import DatasetManifest
from vl.shared.run_dir import read_metrics

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TASKS = {"image": ("vqa", "gqa", "nlvr2", "caption"), "video": ("tvqa", "how2qa", "tvc", "yc2c")}


def test_the_demo_runs_every_stage_and_a_rerun_reuses_them(tiny_demo):
    out, text = tiny_demo
    assert not re.search(r"^(epoch \d+/\d+|predict \w+|extract): ", text, re.M)  # --quiet: no progress bars
    assert "$ vl data demo" in text and "$ (cd " in text and "$ vl extract images" in text  # the commands, printed
    assert "not the paper" in text and "majority baseline (always answering" in text and "VQA val accuracy:" in text
    assert "$ vl train -c " + str(out / "configs/pretrain.yaml") in text and "Pre-training" in text

    for stem in ("vqa2", "gqa", "nlvr2", "coco_caption", "tvqa", "how2qa", "tvc", "yc2c"):
        for split in ("train", "val"):
            assert DatasetManifest.read(out / f"world/manifests/{stem}_{split}.jsonl").examples
    images, videos = FeatureStore(out / "features/demo_images.h5"), FeatureStore(out / "features/demo_videos.h5")
    assert images.layout == "fixed" and videos.layout == "frames"
    assert images.provenance["encoder"]["weights"] == {"seed": 0, "source": "random"} == videos.provenance["encoder"]["weights"]
    assert json.loads((out / "models/demo-clip.json").read_text())["vision_cfg"]

    pretrain, text_pretrain = out / "runs/pretrain", out / "runs/pretrain-text-only"
    # the V&L pre-training trains the tokenizer on every task's texts; every run after it shares it
    assert json.loads((pretrain / "config.json").read_text())["tokenizer_manifests"]
    tokenizer = str(pretrain / "tokenizer")
    for name, kind, start in (("image-full", "image", pretrain), ("image-adapter", "image", pretrain),
                              ("image-lora", "image", pretrain), ("image-prompt", "image", pretrain),
                              ("video-adapter", "video", pretrain), ("image-adapter-short", "image", pretrain),
                              ("image-adapter-short-text-only", "image", text_pretrain)):
        run = out / "runs" / name
        meta = json.loads((run / "checkpoints/last/meta.json").read_text())
        budget = json.loads((run / "run.json").read_text())["budget"]
        assert meta["trainable_parameters"] == budget["trainable"]
        config = json.loads((run / "config.json").read_text())  # every compared run starts from a pre-training
        assert config["init_from"] == str(start) and config["tokenizer"] == tokenizer
        assert (budget["percent"] == 100.0) == (name == "image-full")  # PEFT checkpoints hold only what trains
        for task in TASKS[kind]:
            scores = json.loads((run / f"eval/val/{task}.json").read_text())
            assert 0 <= scores["scores"]["overall"] and scores["split"] == "val"
    report = (out / "report/report.md").read_text()
    assert "## The effect of V&L pre-training on the single adapter (val)" in report
    assert re.search(r"^V&L pre-training vs text-only, .*: VQA \d+\.\d\d vs \d+\.\d\d \([+-]\d+\.\d\d\), GQA ", text, re.M)
    for method in ("full fine-tuning", "single adapter", "single LoRA", "single prompt"):
        assert method in report
    for png in ("score_vs_params.png", "curves.png"):
        assert Image.open(out / "report" / png).size[0] > 100

    assert report.count("single adapter |") == 4  # image-adapter, its two short runs, video-adapter

    again = CliRunner().invoke(cli, ["demo", "--out", str(out), "--size", "tiny"], prog_name="vl")
    assert again.exit_code == 0, again.output[-3000:]
    assert "$ vl train" not in again.output and "$ vl data demo" not in again.output  # finished steps reused


def test_the_text_only_pretraining_learns_the_same_texts_with_blank_visual_inputs(tiny_demo):
    """The paper's text-only start, on the demo: the V&L pre-training's caption texts and tokenizer,
    but a store that holds every image of the real one as zeros, so no image reaches the model."""
    out, _ = tiny_demo
    real, blank = FeatureStore(out / "features/demo_images.h5"), FeatureStore(out / "features/demo_images_blank.h5")
    assert blank.ids == real.ids and blank.item_shape() == real.item_shape() and blank.dtype() == real.dtype()
    assert not blank.get_many(blank.ids).any() and real.get_many(real.ids).any()
    assert blank.provenance["features"]["blank"] and "blank" not in real.provenance["features"]

    vl_cfg, text_cfg = (json.loads((out / f"runs/{run}/config.json").read_text())
                        for run in ("pretrain", "pretrain-text-only"))
    assert vl_cfg["init_from"] is None is text_cfg["init_from"]  # both from the same random weights
    assert text_cfg["tokenizer"] == str(out / "runs/pretrain/tokenizer")  # one vocabulary for both starts
    vl_tasks, text_tasks = ({t["name"]: t for t in cfg["tasks"]} for cfg in (vl_cfg, text_cfg))
    assert list(vl_tasks) == ["vl_lm", "itm", "caption", "vqa", "gqa"]  # VL-T5's tasks that grid features allow
    assert list(text_tasks) == ["vl_lm", "caption"]  # what a text model learns from the captions (no ITM blind)
    assert vl_cfg["extra_tokens"] == text_cfg["extra_tokens"] > 0  # the sentinels of vl_lm
    # as many epochs each, so each reads the captions as often; both trained to the end
    assert vl_cfg["epochs"] == text_cfg["epochs"] and vl_cfg["max_steps"] is None is text_cfg["max_steps"]
    for run in ("pretrain", "pretrain-text-only"):
        assert read_metrics(out / "runs" / run)[-1]["epoch"] == vl_cfg["epochs"]
    for name, task in text_tasks.items():  # the same caption texts, only the store differs
        assert task["train_manifest"] == vl_tasks[name]["train_manifest"]
        assert task["store"] == str(out / "features/demo_images_blank.h5") != vl_tasks[name]["store"]
    for run in ("pretrain", "pretrain-text-only"):
        assert json.loads((out / f"runs/{run}/run.json").read_text())["model"]["vocab_size"] == json.loads(
            (out / "runs/image-adapter-short-text-only/run.json").read_text())["model"]["vocab_size"]
