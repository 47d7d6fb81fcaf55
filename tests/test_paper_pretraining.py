"""The paper's pre-training comparison as the README runs it, on the official-format files of
the demo world: the pre-training manifests (COCO captions + Visual Genome, downstream val images
left out, merged), one store, `vl train -c configs/paper/pretrain/vl_bart.yaml`, then a
fine-tuning preset (`configs/paper/image/from_pretrain/single_adapter.yaml`) started from it.
Offline, so the backbone is the tests' tiny BART and the encoder a tiny random CLIP; every
other setting is the presets' own, their tasks included (the fine-tuning run narrowed to VQA)."""
from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from conftest import REPO, TINY_RN
from vl.data_manifests.demo.world import convert_commands, pretraining_commands
from vl.shared.cli import cli
from vl.shared.manifest import DatasetManifest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OFFLINE = ["--set", "backbone=tiny-bart", "--set", "init=random", "--set", "feat_dim=null",
           "--set", "data.visual_pool=null", "--set", "precision=fp32", "--set", "workers=0", "--set", "epochs=1"]


def vl(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], prog_name="vl")
    assert result.exit_code == 0, (args, result.output[-3000:])
    return result


def test_pretrain_then_fine_tune_with_the_paper_presets(tmp_path, monkeypatch):
    from vl.data_manifests.demo import write_demo_world

    root = tmp_path / "world"
    write_demo_world(root, images=40, videos=6)  # enough val images for ITM to draw other images' captions
    (root / "tiny-rn.json").write_text(json.dumps(TINY_RN))
    monkeypatch.chdir(root)
    wanted = ("vqa2_", "gqa_", "coco_caption_")
    for split in ("train", "val"):
        for command in convert_commands(split):
            if command[-1].startswith(tuple(f"manifests/{w}" for w in wanted)) and not (root / command[-1]).exists():
                vl(*command)
    for command in pretraining_commands():  # VG, without the val manifests' images
        vl(*command)
    vl("data", "merge", "manifests/coco_caption_train.jsonl", "manifests/vg_caption_train.jsonl",
       "--out", "manifests/pretrain_captions.jsonl")
    vl("data", "merge", "manifests/vqa2_train.jsonl", "manifests/vg_qa_train.jsonl", "--out", "manifests/pretrain_vqa.jsonl")
    for have, preset_name in (("vqa2_val", "vqa2_karpathy_val"), ("gqa_train", "gqa_trainval")):
        shutil.copy(f"manifests/{have}.jsonl", f"manifests/{preset_name}.jsonl")
        shutil.copy(f"manifests/{have}.meta.json", f"manifests/{preset_name}.meta.json")
    for stem in ("coco_caption_train", "coco_caption_val", "vqa2_train", "vqa2_val", "vg_caption_train", "vg_qa_train",
                 "gqa_train"):
        vl("extract", "images", "--manifest", f"manifests/{stem}.jsonl", "--out", "features/pretrain_rn101.h5",
           "--model-config", root / "tiny-rn.json", "--pretrained", "none", "--workers", "0", "-q")
    excluded = {m for ex in DatasetManifest.read("manifests/vqa2_val.jsonl").examples for m in ex["media"]}
    assert excluded and not excluded & set(DatasetManifest.read("manifests/pretrain_captions.jsonl").media_ids())

    vl("train", "-c", REPO / "configs/paper/pretrain/vl_bart.yaml", *OFFLINE, "--set", "tokenizer=null",
       "--set", "tokenizer_vocab_size=600", "--quiet")
    pretrain = root / "runs/paper-pretrain-vl-bart"
    record = json.loads((pretrain / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"vl_lm_score", "itm_score", "vqa_score"} <= set(record)  # each objective validated

    tasks = ("tasks=[{name: vqa, train_manifest: manifests/vqa2_train.jsonl, val_manifest: manifests/vqa2_val.jsonl, "
             "store: features/pretrain_rn101.h5, batch_size: 8}]")
    vl("train", "-c", REPO / "configs/paper/image/from_pretrain/single_adapter.yaml", *OFFLINE,
       "--set", "tokenizer=runs/paper-pretrain-vl-bart/tokenizer", "--set", tasks, "--quiet")
    run = root / "runs/paper-image-from-pretrain-single-adapter"
    config = json.loads((run / "config.json").read_text())
    assert config["init_from"] == "runs/paper-pretrain-vl-bart" and config["method"] == "adapter"
    assert (run / "checkpoints/last/model.safetensors").is_file()
