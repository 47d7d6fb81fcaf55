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

    pretrain = out / "runs/pretrain"
    assert json.loads((pretrain / "config.json").read_text())["tokenizer_manifests"]  # learns every task's texts
    for name, kind in (("image-full", "image"), ("image-adapter", "image"), ("image-lora", "image"),
                       ("image-prompt", "image"), ("video-adapter", "video")):
        run = out / "runs" / name
        meta = json.loads((run / "checkpoints/last/meta.json").read_text())
        budget = json.loads((run / "run.json").read_text())["budget"]
        assert meta["trainable_parameters"] == budget["trainable"]
        config = json.loads((run / "config.json").read_text())  # every compared run starts from the pre-training
        assert config["init_from"] == str(pretrain) and config["tokenizer"] == str(pretrain / "tokenizer")
        assert (budget["percent"] == 100.0) == (name == "image-full")  # PEFT checkpoints hold only what trains
        for task in TASKS[kind]:
            scores = json.loads((run / f"eval/val/{task}.json").read_text())
            assert 0 <= scores["scores"]["overall"] and scores["split"] == "val"
    report = (out / "report/report.md").read_text()
    for method in ("full fine-tuning", "single adapter", "single LoRA", "single prompt"):
        assert method in report
    for png in ("score_vs_params.png", "curves.png"):
        assert Image.open(out / "report" / png).size[0] > 100

    again = CliRunner().invoke(cli, ["demo", "--out", str(out), "--size", "tiny"], prog_name="vl")
    assert again.exit_code == 0, again.output[-3000:]
    assert "$ vl train" not in again.output and "$ vl data demo" not in again.output  # finished steps reused
