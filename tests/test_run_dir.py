"""vl.train.run_dir: checkpoints of exactly the trainable tensors, run.json."""
from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import vl.train.run_dir as run_dir_mod
from test_feature_store import build_store
from vl.shared import VLError, sha256_file
from vl.shared.run_dir import read_run_json
from conftest import tiny_vl_model
from vl.train.model import build_vl_model
from vl.train.run_dir import RunManifest, load_checkpoint, save_checkpoint, trainable_state, write_run_json

TRAINABLE_NORM = "backbone.encoder.final_layer_norm.weight"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_model(seed: int = 0, norm: str = TRAINABLE_NORM):
    """Frozen tiny VL-T5 with the visual embedding and one layer norm trainable."""
    model = tiny_vl_model("tiny-t5", 8, seed)
    model.requires_grad_(False)
    model.visual_embedding.requires_grad_(True)
    dict(model.named_parameters())[norm].requires_grad_(True)
    return model


def expected_trainable(model) -> set[str]:
    return {f"visual_embedding.{n}" for n, _ in model.visual_embedding.named_parameters()} | {TRAINABLE_NORM}


def train_steps(model, opt, steps: int = 2):
    for _ in range(steps):
        feats = torch.randn(2, 3, 8)
        ids = torch.randint(0, 100, (2, 4))
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), visual_feats=feats,
                     visual_mask=torch.ones(2, 3, dtype=torch.bool), labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()


def test_trainable_state_is_exactly_requires_grad():
    model = tiny_model()
    state = trainable_state(model)
    assert set(state) == expected_trainable(model)
    assert all(p.requires_grad for p in state.values())


def test_checkpoint_round_trip_restores_trainable_and_optimizer(tmp_path):
    model = tiny_model(0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    train_steps(model, opt)
    sched.step()
    folder = save_checkpoint(tmp_path, "last", model, opt, sched, extra={"step": 2, "epoch": 0, "best": 0.5,
                                                                         "sampler": {"seen": [1, 2]}})
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "model.safetensors", "state.pt"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last"]  # no leftovers

    saved = load_file(str(folder / "model.safetensors"))
    assert set(saved) == expected_trainable(model)  # only the trainable tensors
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["step"] == 2 and meta["trainable_names"] == sorted(saved)
    assert meta["trainable_parameters"] == sum(t.numel() for t in saved.values())
    assert meta["model_sha256"] == sha256_file(folder / "model.safetensors")

    other = tiny_model(1)  # different weights everywhere
    other_opt = torch.optim.AdamW([p for p in other.parameters() if p.requires_grad], lr=1e-2)
    other_sched = torch.optim.lr_scheduler.StepLR(other_opt, step_size=1, gamma=0.5)
    frozen_before = {n: p.clone() for n, p in other.named_parameters() if not p.requires_grad}
    extra = load_checkpoint(tmp_path, "last", other, other_opt, other_sched)
    assert extra == {"step": 2, "epoch": 0, "best": 0.5, "sampler": {"seen": [1, 2]}}
    for name, p in trainable_state(other).items():
        assert torch.equal(p, trainable_state(model)[name]), name
    for name, p in other.named_parameters():  # frozen weights untouched
        if not p.requires_grad:
            assert torch.equal(p, frozen_before[name]), name
    a, b = opt.state_dict(), other_opt.state_dict()
    assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        assert float(b["state"][i]["step"]) == 2
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(a["state"][i][key], b["state"][i][key])
    assert other_sched.state_dict() == sched.state_dict()


def test_load_refuses_a_different_trainable_set(tmp_path):
    save_checkpoint(tmp_path, "last", tiny_model(), None, extra={"step": 1})
    other = tiny_model(norm="backbone.decoder.final_layer_norm.weight")
    before = {n: p.clone() for n, p in trainable_state(other).items()}
    with pytest.raises(VLError) as e:
        load_checkpoint(tmp_path, "last", other)
    msg = str(e.value)
    assert f"unexpected key {TRAINABLE_NORM}" in msg and "frozen in this model" in msg
    assert "missing key backbone.decoder.final_layer_norm.weight" in msg
    for n, p in trainable_state(other).items():  # nothing half-loaded
        assert torch.equal(p, before[n])
    with pytest.raises(VLError, match="checkpoint .*best not found; this run has: last"):
        load_checkpoint(tmp_path, "best", other)


def test_full_fine_tuning_saves_tied_weights_once(tmp_path):
    torch.manual_seed(0)
    model = build_vl_model("tiny-t5", feat_dim=8, init="random")  # everything trainable
    assert model.backbone.lm_head.weight is model.backbone.shared.weight
    folder = save_checkpoint(tmp_path, "full", model, None)
    saved = load_file(str(folder / "model.safetensors"))
    assert "backbone.shared.weight" in saved and "backbone.lm_head.weight" not in saved
    assert len(saved) == len(list(model.parameters()))
    torch.manual_seed(1)
    other = build_vl_model("tiny-t5", feat_dim=8, init="random")
    load_checkpoint(tmp_path, "full", other)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters()))
    assert other.backbone.lm_head.weight is other.backbone.shared.weight  # still tied


def test_rng_restore_repeats_the_next_draws(tmp_path):
    model = tiny_model()
    save_checkpoint(tmp_path, "last", model, None)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.rand(5), random.random(), np.random.rand()  # move on
    load_checkpoint(tmp_path, "last", model)
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


@pytest.mark.parametrize("fail_on", ["file", "folder"])
def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, fail_on):
    model = tiny_model()
    save_checkpoint(tmp_path, "last", model, None, extra={"step": 1})
    old_bytes = (tmp_path / "checkpoints/last/model.safetensors").read_bytes()
    with torch.no_grad():
        model.visual_embedding.proj.weight.add_(1.0)
    real_replace = os.replace

    def failing_replace(src, dst):
        src = str(src)
        # "file": state.pt, the second file of the new checkpoint; "folder": the finished folder
        hit = os.path.basename(src).startswith(".state.pt.tmp-") if fail_on == "file" \
            else src.endswith(f".last.tmp-{os.getpid()}")
        if hit:
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, "last", model, None, extra={"step": 2})
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last"]  # nothing partial, hidden or not
    assert (tmp_path / "checkpoints/last/model.safetensors").read_bytes() == old_bytes
    assert load_checkpoint(tmp_path, "last", tiny_model()) == {"step": 1}
    # and a later save replaces it
    save_checkpoint(tmp_path, "last", model, None, extra={"step": 3})
    assert load_checkpoint(tmp_path, "last", tiny_model()) == {"step": 3}


def test_run_json_records_digests_budget_versions_git(tmp_path):
    store = build_store(tmp_path / "coco.h5")
    manifest = tmp_path / "vqa_val.jsonl"
    manifest.write_text('{"id": "1"}\n')
    meta = tmp_path / "vqa_val.meta.json"
    meta.write_text("{}\n")
    model = tiny_model()
    config = {"train": {"lr": 1e-3, "method": "adapter"}, "data": {"tasks": ["vqa"]}}
    written = write_run_json(tmp_path / "run", config, model, manifests=[manifest], stores=[store.path])
    assert isinstance(written, RunManifest)
    run = read_run_json(tmp_path / "run")
    assert run == json.loads(json.dumps(written.to_dict()))
    assert run["config"] == config and run["kind"] == "vl.run"
    assert run["manifests"][str(manifest)] == {"sha256": sha256_file(manifest), "meta_sha256": sha256_file(meta)}
    entry = run["feature_stores"][str(store.path)]
    assert entry["sha256"] == sha256_file(store.path)
    assert entry["settings"]["encoder"]["model"] == "toy-RN50" and set(entry["settings"]) == {
        "encoder", "preprocess", "features"}
    trainable = sum(p.numel() for p in trainable_state(model).values())
    total = sum(p.numel() for p in model.parameters())
    assert run["budget"] == {"trainable": trainable, "total": total, "percent": round(100 * trainable / total, 4)}
    assert set(run["versions"]) >= {"torch", "transformers", "vl"}
    assert "git_revision" in run and (run["git_revision"] is None or len(run["git_revision"]) == 40)
    assert run["created"]
    assert not list((tmp_path / "run").glob(".*"))  # the atomic write left no temporary file


def test_git_revision_is_null_outside_a_checkout(tmp_path, monkeypatch):
    assert run_dir_mod._git_state(tmp_path) == (None, None)
    monkeypatch.setenv("PATH", str(tmp_path))  # no git at all
    assert run_dir_mod._git_state(tmp_path) == (None, None)


class NotPlainData:  # what a replaced state.pt could hold: pickled objects that run code on load
    pass


@pytest.mark.parametrize("damage, message", [("truncate", "is damaged or truncated"),
                                             ("pickle", "holds objects other than tensors and plain containers")])
def test_a_damaged_or_unsafe_state_file_is_one_line(tmp_path, damage, message):
    model = tiny_model()
    folder = save_checkpoint(tmp_path, "last", model, None, extra={"step": 1})
    state = folder / "state.pt"
    if damage == "truncate":
        state.write_bytes(state.read_bytes()[:100])
    else:
        torch.save({"extra": NotPlainData()}, state)
    with pytest.raises(VLError, match=message) as e:
        load_checkpoint(tmp_path, "last", tiny_model())
    assert str(state) in str(e.value) and "\n" not in e.value.problems[0]


def test_an_unsafe_clip_checkpoint_is_one_line(tmp_path, tiny_models, photos):
    from click.testing import CliRunner

    from vl.shared.cli import cli

    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": NotPlainData()}, evil)
    result = CliRunner().invoke(cli, ["extract", "images", "--images", str(photos), "--out", str(tmp_path / "f.h5"),
                                      "--model-config", str(tiny_models["tiny-rn"]["config"]), "--pretrained",
                                      str(evil), "--workers", "0"], prog_name="vl")
    assert result.exit_code == 1 and "not a checkpoint vl loads safely" in result.output, result.output
    assert "Traceback" not in result.output
