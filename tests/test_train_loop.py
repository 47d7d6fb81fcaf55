"""`vl train` end to end on the demo world: VQA + GQA at once with a tiny random T5,
overfitting, resume after a kill, config errors, NaN stops."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from vl.shared.cli import cli
from vl.shared.config import load_config
from vl.shared.errors import VLError
from vl.shared.run_dir import read_metrics
from vl.train import build, loop
from vl.train.config import TrainConfig


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_config(world: Path, run_dir: Path, batch_size: int = 8, **top) -> Path:
    m, store = world / "manifests", str(world / "features/coco.h5")
    cfg = {
        "run_dir": str(run_dir), "epochs": 2, "seed": 3, "backbone": "tiny-t5", "init": "random",
        "tokenizer_vocab_size": 400, "optim": {"lr": 1e-3, "warmup_ratio": 0.1},
        "tasks": [  # validation on the train split: a placeholder metric on a tiny world
            {"name": "vqa", "train_manifest": str(m / "vqa2_train.jsonl"), "store": store,
             "batch_size": batch_size, "val_manifest": str(m / "vqa2_train.jsonl"), "val_split": "train"},
            {"name": "gqa", "train_manifest": str(m / "gqa_train.jsonl"), "store": store,
             "batch_size": batch_size, "val_manifest": str(m / "gqa_train.jsonl"), "val_split": "train"},
        ],
        **top,
    }
    path = run_dir.parent / f"{run_dir.name}.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def vl_train(*args: str):
    return CliRunner().invoke(cli, ["train", *args], prog_name="vl")


def trainable_tensors(run_dir: Path, name: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / name / "model.safetensors"))


def test_a_config_without_a_backbone_is_warned_of_the_test_model(world, tmp_path):
    from vl.shared.config import load_config_with_sources
    from vl.train.cli import start_line
    from vl.train.config import TrainConfig

    path = write_config(world, tmp_path / "run")
    settings = json.loads(path.read_text())
    del settings["backbone"]
    path.write_text(json.dumps(settings))
    cfg, sources = load_config_with_sources(TrainConfig, path)
    assert "names no backbone, so this run uses tiny-t5" in start_line(cfg, sources, resume=False)
    cfg, sources = load_config_with_sources(TrainConfig, path, ["backbone=tiny-t5"])  # named: no warning
    assert "warning" not in start_line(cfg, sources, resume=False)


def test_vqa_and_gqa_at_once_through_the_cli(world, tmp_path):
    run = tmp_path / "run"
    result = vl_train("-c", str(write_config(world, run)), "--set", "optim.lr=2e-3")
    assert result.exit_code == 0, result.output
    # a short line of what trains, not the whole config (config.json has it); the config names its backbone
    assert f"training {run}: method full on tiny-t5 (random), tasks vqa, gqa, 2 epochs" in result.output
    assert "names no backbone" not in result.output and "lr: 0.002" not in result.output
    assert json.loads((run / "config.json").read_text())["optim"]["lr"] == 2e-3
    run_json = json.loads((run / "run.json").read_text())
    assert run_json["budget"]["percent"] == 100.0 and len(run_json["manifests"]) == 2
    records = read_metrics(run)
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[-1]["step"] == 2 * records[0]["step"] > 0  # 36 vqa + 25 gqa items, batch 8: 5 + 4 steps an epoch
    for r in records:
        assert {"train_loss", "vqa_train_loss", "gqa_train_loss", "vqa_score", "gqa_score",
                "mean_score", "lr", "samples_per_s"} <= set(r)
    assert records[1]["train_loss"] < records[0]["train_loss"]
    evals = json.loads((run / "eval/epoch_2.json").read_text())
    assert len(evals["tasks"]["vqa"]["predictions"]) == 36 and len(evals["tasks"]["gqa"]["predictions"]) == 25
    for task in ("vqa", "gqa"):  # the official metric's main score, with its breakdowns beside it
        scores = evals["tasks"][task]["scores"]
        assert records[-1][f"{task}_score"] == scores["overall"] and 0 <= scores["overall"] <= 100
    assert "per_answer_type" in evals["tasks"]["vqa"]["scores"]
    assert records[-1]["mean_score"] == pytest.approx((records[-1]["vqa_score"] + records[-1]["gqa_score"]) / 2)
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "curves.svg").read_text().lstrip().startswith("<?xml")
    assert (run / "eval/epoch_1.json").is_file() and (run / "checkpoints/best/model.safetensors").is_file()
    # only trainable tensors, each once (T5 ties the LM head to the shared embedding)
    saved = trainable_tensors(run)
    meta = json.loads((run / "checkpoints/last/meta.json").read_text())
    assert sorted(saved) == meta["trainable_names"] and meta["trainable_parameters"] == run_json["budget"]["trainable"]
    assert any(k.startswith("visual_embedding.") for k in saved) and (run / "tokenizer/tokenizer.json").is_file()
    # a fresh start into a used run dir is refused, naming --resume
    again = vl_train("-c", str(write_config(world, run)))
    assert again.exit_code == 1 and f"vl train --resume {run}" in again.output


def test_full_fine_tuning_overfits_eight_examples(world, tmp_path):
    run = tmp_path / "overfit"
    m, store = world / "manifests", str(world / "features/coco.h5")
    cfg = load_config(TrainConfig, write_config(world, run), [
        f"tasks=[{{name: gqa, train_manifest: {m / 'gqa8.jsonl'}, store: {store}, batch_size: 8}}]",
        "epochs=120", "optim.lr=1e-2", "optim.warmup_ratio=0"])
    loop.train(cfg)
    records = read_metrics(run)
    assert len(records) == 120 and records[-1]["step"] == 120  # one step an epoch
    assert records[0]["train_loss"] > 3.0 and records[-1]["train_loss"] < 0.5, records[-1]


def train_until_killed(cfg: TrainConfig, checkpoint: str) -> None:
    """loop.train(cfg), killed (KeyboardInterrupt) right after it first saves `checkpoint`."""
    real_save = loop.save_checkpoint

    def save_then_die(run_dir, name, *args, **kwargs):
        out = real_save(run_dir, name, *args, **kwargs)
        if name == checkpoint:
            raise KeyboardInterrupt
        return out

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "save_checkpoint", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            loop.train(cfg, progress=False)


def test_resume_after_a_kill_ends_with_the_weights_of_an_uninterrupted_run(world, tmp_path, monkeypatch):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert vl_train("-c", str(write_config(world, whole))).exit_code == 0

    train_until_killed(load_config(TrainConfig, write_config(world, killed)), "last")  # after epoch 1's
    assert [r["epoch"] for r in read_metrics(killed)] == [1]

    result = vl_train("--resume", str(killed))
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output and [r["epoch"] for r in read_metrics(killed)] == [1, 2]
    a, b = trainable_tensors(whole), trainable_tensors(killed)
    assert sorted(a) == sorted(b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    assert read_metrics(killed)[1]["train_loss"] == pytest.approx(read_metrics(whole)[1]["train_loss"], abs=1e-6)


def test_gradient_accumulation_takes_one_optimizer_step_per_group(world, tmp_path):
    run = tmp_path / "accum"
    cfg = load_config(TrainConfig, write_config(world, run), ["optim.grad_accum=2", "epochs=1"])
    cfg.tasks[0].val_manifest = None  # validate gqa only
    loop.train(cfg)
    (record,) = read_metrics(run)
    assert record["step"] == 5  # 9 micro-batches (5 vqa + 4 gqa): 4 pairs and the last one alone
    assert "vqa_score" not in record and record["gqa_score"] >= 0


def test_unknown_config_key_names_the_closest(world, tmp_path):
    result = vl_train("-c", str(write_config(world, tmp_path / "r")), "--set", "optim.weight_decy=0.1")
    assert result.exit_code == 1
    assert "optim.weight_decy: no such setting; did you mean optim.weight_decay?" in result.output
    result = vl_train("-c", str(write_config(world, tmp_path / "r", epoch=3)))
    assert result.exit_code == 1 and "did you mean epochs?" in result.output
    assert not (tmp_path / "r").exists()


def test_missing_files_are_named_before_anything_is_built(world, tmp_path):
    cfg = load_config(TrainConfig, write_config(world, tmp_path / "r"),
                      ["tasks=[{name: vqa, train_manifest: nope.jsonl, store: nope.h5}]"])
    with pytest.raises(VLError) as e:
        loop.train(cfg)
    assert "train_manifest nope.jsonl not found" in str(e.value) and "store nope.h5 not found" in str(e.value)


def test_nan_loss_stops_naming_step_and_task_and_keeps_last(world, tmp_path):
    run = tmp_path / "nan"
    result = vl_train("-c", str(write_config(world, run)), "--set", "optim.lr=1e30", "--set", "optim.grad_clip=null",
                      "--set", "optim.warmup_ratio=0")
    assert result.exit_code == 1
    assert re.search(r"loss is (nan|inf|-inf) at step \d+ \(epoch 1\) on a batch of task (vqa|gqa)", result.output)
    assert (run / "checkpoints/last/model.safetensors").is_file()
    resumed = vl_train("--resume", str(run))
    assert resumed.exit_code == 1 and "start a new run" in resumed.output


def test_weight_decay_by_module_type_not_by_name():
    from vl.train.model import build_vl_model

    model = build_vl_model("tiny-t5", 16, init="random")
    cfg = TrainConfig()
    build.set_trainable(model, cfg, [])
    decayed, plain = (g["params"] for g in loop.build_optimizer(model, cfg).param_groups)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in plain} >= {"visual_embedding.proj.bias", "visual_embedding.norm.weight"}
    assert all("norm" in names[id(p)] or names[id(p)].endswith("bias") for p in plain)
    assert {names[id(p)] for p in decayed} >= {"visual_embedding.proj.weight", "backbone.shared.weight"}
    assert len(decayed) + len(plain) == len(list(model.parameters()))


def test_weighted_loss_is_each_examples_token_mean_times_its_weight():
    logits = torch.randn(2, 3, 5)
    labels = torch.tensor([[1, 2, -100], [3, -100, -100]])
    per = [torch.nn.functional.cross_entropy(logits[0, :2], labels[0, :2]),
           torch.nn.functional.cross_entropy(logits[1, :1], labels[1, :1])]
    got = loop.weighted_sequence_loss(logits, labels, torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(got, (0.5 * per[0] + per[1]) / 2)


def test_two_process_ddp_reaches_the_loss_curve_of_one_process(world, tmp_path):
    """torchrun --nproc-per-node 2 (gloo) with batch 5 per rank == one process with batch 10:
    the same global batches, so the same losses and weights (dropout off: ranks draw their own masks).
    GQA's 25 items end with a step of 5, split 3 + 2 across ranks: the loss scaling must hold.
    Both ranks validate: val_batch_size 16 deals VQA's 3 batches 2 + 1, GQA's 2 batches 1 + 1."""
    from test_extract_distributed import torchrun

    one, two = tmp_path / "one", tmp_path / "two"
    common = ["dropout=0.0", "epochs=2", "val_every=2", "optim.grad_clip=1.0", "device=cpu", "val_batch_size=16"]
    assert vl_train("-c", str(write_config(world, one, batch_size=10)),
                    *sum((["--set", x] for x in common), [])).exit_code == 0
    args = ["train", "-c", write_config(world, two, batch_size=5), *sum((["--set", x] for x in common), [])]
    proc = torchrun(args)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, (out[-2000:], err[-3000:])
    assert "torchrun: 2 ranks (gloo)" in out
    a, b = read_metrics(one), read_metrics(two)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("train_loss", "vqa_train_loss", "gqa_train_loss"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-6), key
    wa, wb = trainable_tensors(one), trainable_tensors(two)
    assert sorted(wa) == sorted(wb)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5, msg=k)
    assert b[-1]["mean_score"] == pytest.approx(a[-1]["mean_score"])


def test_features_in_memory_train_the_same_weights(world, tmp_path):
    disk, memory = tmp_path / "disk", tmp_path / "memory"
    assert vl_train("-c", str(write_config(world, disk)), "--set", "epochs=1").exit_code == 0
    result = vl_train("-c", str(write_config(world, memory)), "--set", "epochs=1", "--features-in-memory",
                      "--set", "workers=1")
    assert result.exit_code == 0, result.output
    assert "features in memory:" in result.output
    a, b = trainable_tensors(disk), trainable_tensors(memory)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)


def test_a_store_made_otherwise_than_the_config_names_is_refused_naming_the_field(world, tmp_path):
    path = write_config(world, tmp_path / "run")
    cfg = json.loads(path.read_text())
    for t in cfg["tasks"]:
        t["store_settings"] = {"encoder": {"model": "RN101"}, "features": {"layer": "grid"}}
    path.write_text(json.dumps(cfg))
    result = vl_train("-c", str(path))
    assert result.exit_code == 1
    assert "encoder.model is 'tiny-rn', the config asks for 'RN101'" in result.output
    assert "features.layer" not in result.output  # that one matches
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resume_refuses_a_store_that_changed_since_the_run_started(world, tmp_path):
    run = tmp_path / "run"
    assert vl_train("-c", str(write_config(world, run)), "--set", "epochs=1").exit_code == 0
    run_json = json.loads((run / "run.json").read_text())
    (store_path, info), = run_json["feature_stores"].items()
    info["settings"]["encoder"]["model"] = "RN50"  # as if the run had started on other features
    (run / "run.json").write_text(json.dumps(run_json))
    result = vl_train("--resume", str(run), "--set", "epochs=2")
    assert result.exit_code == 1
    assert f"feature store {store_path}: encoder.model was 'RN50' when the run started, now 'tiny-rn'" in result.output


def test_val_every_zero_trains_without_validating(world, tmp_path):
    run = tmp_path / "run"
    assert vl_train("-c", str(write_config(world, run)), "--set", "epochs=1", "--set", "val_every=0").exit_code == 0
    (record,) = read_metrics(run)
    assert "mean_score" not in record and not (run / "eval").exists()
    assert (run / "checkpoints/last").is_dir() and not (run / "checkpoints/best").exists()


@pytest.mark.parametrize("backbone", ["tiny-t5", "tiny-bart"])
def test_reference_visual_inputs_train_and_reload(world, tmp_path, backbone):
    """visual_inputs=reference end to end: trains, and the reloaded run rebuilds the same inputs
    (object-order tokens from its tokenizer) and so the same logits."""
    from vl.train.build import load_trained

    run = tmp_path / "run"
    cfg = load_config(TrainConfig, write_config(world, run, epochs=1, backbone=backbone, visual_inputs="reference",
                                                extra_tokens=40, data={"visual_pool": 2}, val_every=0))
    loop.train(cfg)
    trained = load_trained(run, "last")
    model = trained.model
    assert model.visual_inputs == "reference" and model.visual_boxes == "zero"
    vocab = trained.tokenizer.get_vocab()
    assert model.object_order_ids.tolist() == [vocab[f"<vis_extra_id_{k}>"] for k in range(20)]
    again = load_trained(run, "last").model
    batch = dict(input_ids=torch.tensor([[5, 6, 7]]), attention_mask=torch.ones(1, 3, dtype=torch.long),
                 visual_feats=torch.randn(1, 4, model.visual_embedding.feat_dim),
                 visual_mask=torch.ones(1, 4, dtype=torch.bool), labels=torch.tensor([[5, 6]]))
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, again(**batch).logits)


def test_reference_visual_inputs_need_enough_vis_tokens(world, tmp_path):
    cfg = load_config(TrainConfig, write_config(world, tmp_path / "run", visual_inputs="reference", extra_tokens=4))
    with pytest.raises(VLError, match=r"set extra_tokens to at least \d+, or lower data.visual_pool"):
        loop.train(cfg)
    with pytest.raises(VLError, match=r"set extra_tokens \(200 as VL-BART"):
        load_config(TrainConfig, write_config(world, tmp_path / "run2", visual_inputs="reference"))
