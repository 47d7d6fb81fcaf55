"""`vl train`'s logging and training controls on the demo world (issue #15, items 3 and 4):
per-step records in metrics.jsonl, TensorBoard and W&B (offline), progress bars off with
--quiet or TQDM_DISABLE, max_steps, early stopping, step-N checkpoints resumed exactly,
keep_last_n."""
from __future__ import annotations


import pytest
import torch
from click.testing import CliRunner

from vl.shared.cli import cli
from vl.shared.config import load_config
from vl.shared.errors import VLError
from vl.shared.run_dir import latest_checkpoint, read_checkpoint_meta, read_metrics, step_checkpoints
from vl.train import loop
from vl.train.config import TrainConfig

from test_train_loop import trainable_tensors, train_until_killed, vl_train, write_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")
STEPS_PER_EPOCH = 9  # 36 vqa + 25 gqa items, batch 8: 5 + 4 steps


def bar_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(("epoch 1/", "epoch 2/", "predict "))]


def test_step_records_go_to_metrics_jsonl_tensorboard_and_wandb(world, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="the tensorboard tracker needs pip install 'vl[tensorboard]'")
    pytest.importorskip("wandb", reason="the wandb tracker needs pip install 'vl[wandb]'")
    monkeypatch.setenv("WANDB_MODE", "offline")  # no account, no network: files only
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    run = tmp_path / "logged"
    result = vl_train("-c", str(write_config(world, run)), "--quiet", "--set", "logging.every_n_steps=2",
                      "--set", "logging.report_to=[jsonl, tensorboard, wandb]")
    assert result.exit_code == 0, result.output
    assert bar_lines(result.output) == []  # --quiet: no epoch or validation bars

    # metrics.jsonl: the epoch records as before (what vl report and the curves read), the step records beside
    epochs = read_metrics(run)
    assert [r["epoch"] for r in epochs] == [1, 2] and all(r["kind"] == "epoch" for r in epochs)
    steps = read_metrics(run, kind="step")
    assert [r["step"] for r in steps] == list(range(2, 2 * STEPS_PER_EPOCH + 1, 2))
    for r in steps:
        assert r["kind"] == "step" and r["loss"] > 0 and r["grad_norm"] > 0 and r["samples_per_s"] > 0
        assert 0 <= r["lr"] <= 1e-3 and r["epoch"] == (1 if r["step"] <= STEPS_PER_EPOCH else 2)
    assert steps[-1]["lr"] < steps[0]["lr"]  # the linear decay
    assert len(read_metrics(run, kind=None)) == len(epochs) + len(steps)
    report = CliRunner().invoke(cli, ["report", str(run), "--out", str(tmp_path / "report")], prog_name="vl")
    assert report.exit_code == 0, report.output  # a reader of metrics.jsonl that meets step records

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"step/loss", "step/lr", "step/grad_norm", "step/samples_per_s", "epoch/train_loss",
            "epoch/mean_score"} <= set(tags)
    assert [e.step for e in events.Scalars("step/loss")] == [r["step"] for r in steps]
    assert [e.value for e in events.Scalars("step/loss")] == pytest.approx([r["loss"] for r in steps], rel=1e-6)
    assert [e.step for e in events.Scalars("epoch/mean_score")] == [r["step"] for r in epochs]

    run_id = (run / "wandb_run_id.txt").read_text().strip()
    (offline,) = (tmp_path / "wandb" / "wandb").glob(f"offline-run-*-{run_id}")
    (log,) = offline.glob(f"run-{run_id}.wandb")
    assert log.stat().st_size > 1000  # the run's records, written for `wandb sync`


def test_a_tracker_whose_package_is_missing_names_the_pip_extra(world, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    run = tmp_path / "no-wandb"
    result = vl_train("-c", str(write_config(world, run)), "--set", "logging.report_to=[wandb]")
    assert result.exit_code == 1 and "pip install 'vl[wandb]'" in result.output
    assert not (run / "run.json").exists()  # refused before anything was built


def test_max_steps_ends_inside_an_epoch_with_validation_and_checkpoints(world, tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    run = tmp_path / "max"
    result = vl_train("-c", str(write_config(world, run, epochs=1)), "--set", "max_steps=5",
                      "--set", "logging.every_n_steps=1")
    assert result.exit_code == 0, result.output
    assert bar_lines(result.output) == [] and "stopped at max_steps=5" in result.output
    (record,) = read_metrics(run)
    assert record["step"] == 5 and record["batches"] == f"5/{STEPS_PER_EPOCH}" and "mean_score" in record
    assert record["lr"] == 0.0  # the schedule decays to 0 at max_steps, not at the end of the epochs
    assert read_checkpoint_meta(run, "last")["step"] == 5 and (run / "checkpoints/best").is_dir()
    assert [r["step"] for r in read_metrics(run, kind="step")] == [1, 2, 3, 4, 5]

    again = vl_train("--resume", str(run))
    assert again.exit_code == 0 and "reached max_steps=5" in again.output and len(read_metrics(run)) == 1
    # on from inside the same epoch, and past `epochs`: max_steps replaces it
    more = vl_train("--resume", str(run), "--set", "max_steps=12")
    assert more.exit_code == 0, more.output
    assert "inside epoch 1, after 5 of its 9 batches" in more.output
    assert [(r["epoch"], r["step"]) for r in read_metrics(run)] == [(1, 5), (1, 9), (2, 12)]
    assert "batches" not in read_metrics(run)[1] and read_metrics(run)[2]["batches"] == f"3/{STEPS_PER_EPOCH}"


def test_early_stopping_stops_and_resume_does_not_continue_past_it(world, tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    run = tmp_path / "early"
    # lr so small that the scores cannot change: every validation after the first fails to beat it
    config = write_config(world, run, epochs=6, optim={"lr": 1e-12, "warmup_ratio": 0})
    result = vl_train("-c", str(config), "--set", "early_stopping.patience=2")
    assert result.exit_code == 0, result.output
    assert "early stopping after epoch 3" in result.output and "mean_score has not beaten its best" in result.output
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2, 3]

    again = vl_train("--resume", str(run))
    assert again.exit_code == 0 and "stopped early" in again.output and "early_stopping.patience=N" in again.output
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2, 3]
    asked = vl_train("--resume", str(run), "--set", "early_stopping.patience=3")  # asked to go on: one more
    assert asked.exit_code == 0, asked.output
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2, 3, 4] and "early stopping after epoch 4" in asked.output


def test_early_stopping_needs_a_validation_metric(world, tmp_path):
    cfg = load_config(TrainConfig, write_config(world, tmp_path / "x"), ["early_stopping.patience=1"])
    cfg.early_stopping.metric = "nlvr2_score"
    assert any("early_stopping.metric 'nlvr2_score'" in p for p in cfg.check())
    cfg.early_stopping.metric, cfg.val_every = None, 0
    assert any("early_stopping needs validation" in p for p in cfg.check())


def test_resume_from_a_step_checkpoint_ends_with_the_weights_of_an_uninterrupted_run(world, tmp_path, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    sets = ["--set", "save_every_n_steps=3", "--set", "keep_last_n=3", "--set", "logging.every_n_steps=2"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    result = vl_train("-c", str(write_config(world, whole)), *sets)
    assert result.exit_code == 0, result.output
    lines = bar_lines(result.output)  # no terminal here: a bar is a few whole lines, not a line per refresh
    assert 0 < len([x for x in lines if x.startswith("epoch 1/2")]) <= 10
    # steps 3, 6, 9 (epoch 1's end, beside last), 12, 15, 18: the newest 3 are kept, never last or best
    assert [name for _, name in step_checkpoints(whole)] == ["step-12", "step-15", "step-18"]
    assert (whole / "checkpoints/last").is_dir() and (whole / "checkpoints/best").is_dir()

    overrides = [a for a in sets if a != "--set"]
    # killed inside epoch 2, just after step 12's checkpoint
    train_until_killed(load_config(TrainConfig, write_config(world, killed), overrides), "step-12")
    # killed between step 12's save and the pruning after it
    assert [name for _, name in step_checkpoints(killed)] == ["step-3", "step-6", "step-9", "step-12"]
    assert latest_checkpoint(killed) == "step-12"  # newer than last (step 9)

    # An explicit older checkpoint: what the killed run logged after step 6 is dropped and made again.
    resumed = vl_train("--resume", str(killed), "--resume-from", "step-6", "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert "from checkpoint step-6 inside epoch 1, after 6 of its 9 batches" in resumed.output
    a, b = trainable_tensors(whole), trainable_tensors(killed)
    assert sorted(a) == sorted(b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    for kind in ("epoch", "step"):
        got, want = read_metrics(killed, kind=kind), read_metrics(whole, kind=kind)
        assert [r["step"] for r in got] == [r["step"] for r in want]
        key = "train_loss" if kind == "epoch" else "loss"
        assert [r[key] for r in got] == pytest.approx([r[key] for r in want], abs=1e-6)

    # The latest checkpoint by default: step-12 here, resumed to the same end again.
    killed_again = tmp_path / "killed-again"
    train_until_killed(load_config(TrainConfig, write_config(world, killed_again), overrides), "step-12")
    latest = vl_train("--resume", str(killed_again), "--quiet")
    assert latest.exit_code == 0 and "from checkpoint step-12 inside epoch 2, after 3 of its 9 batches" in latest.output
    c = trainable_tensors(killed_again)
    for k in a:
        torch.testing.assert_close(c[k], a[k], rtol=0, atol=1e-6, msg=k)


def test_resume_from_names_the_checkpoints_a_run_has(world, tmp_path):
    run = tmp_path / "one"
    assert vl_train("-c", str(write_config(world, run, epochs=1))).exit_code == 0
    result = vl_train("--resume", str(run), "--resume-from", "step-5")
    assert result.exit_code == 1 and "this run has: best, last" in result.output
    with pytest.raises(VLError, match="no checkpoints"):
        loop.train(load_config(TrainConfig, write_config(world, tmp_path / "empty")), resume=True)


def test_metrics_readers_tell_epoch_records_from_step_records(tmp_path):
    from vl.shared.run_dir import append_metrics, drop_metrics_after

    for record in ({"epoch": 1, "step": 4, "train_loss": 2.0},  # written before records had a kind
                   {"kind": "step", "step": 6, "loss": 1.5}, {"kind": "epoch", "epoch": 2, "step": 8},
                   {"kind": "step", "step": 10, "loss": 1.0}):
        append_metrics(tmp_path, record)
    assert [r["step"] for r in read_metrics(tmp_path)] == [4, 8]
    assert [r["step"] for r in read_metrics(tmp_path, kind="step")] == [6, 10]
    assert drop_metrics_after(tmp_path, 6) == 2 and [r["step"] for r in read_metrics(tmp_path, kind=None)] == [4, 6]
    assert drop_metrics_after(tmp_path, 6) == 0


def test_the_sampler_starts_an_epoch_where_a_step_checkpoint_left_it():
    from vl.train.data import MultiTaskSampler

    sampler = MultiTaskSampler({"vqa": 36, "gqa": 25}, 8, seed=3)
    sampler.set_epoch(1)
    whole = list(sampler)
    sampler.set_epoch(1, start=4)
    assert list(sampler) == whole[4:] and len(sampler) == len(whole) == STEPS_PER_EPOCH
    sampler.set_epoch(2)
    assert list(sampler) != whole and len(list(sampler)) == STEPS_PER_EPOCH  # a new epoch starts at 0 again
