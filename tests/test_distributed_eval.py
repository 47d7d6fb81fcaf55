"""Distributed evaluation and length bucketing (issue #18 items 1 and 2): `vl evaluate --run`
under `torchrun --nproc-per-node 2` (gloo, CPU) writes the same scores and submission files
as one process, shards of uneven size included; bucketing batches by input length keeps
the predictions and their example order; a rank that fails stops both ranks with its message."""
from __future__ import annotations

import json
import shutil
from contextlib import nullcontext

import pytest

from test_evaluate_run import vl
from test_train_loop import vl_train, write_config
from vl.train.predict import TEST_FAIL_RANK_ENV

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BATCH = 4  # VQA's 36 examples: 9 batches, 5 on rank 0 and 4 on rank 1; GQA's 25: 7 batches (4 + 3), the last of 1


@pytest.fixture(scope="module")
def run(world, tmp_path_factory):
    """A run whose near-random weights give answers that vary with the input (a trained tiny
    model answers "" to every demo question), so equal predictions mean something."""
    run = tmp_path_factory.mktemp("dist-eval") / "run"
    result = vl_train("-c", str(write_config(world, run)), "--set", "epochs=1", "--set", "optim.lr=1e-6")
    assert result.exit_code == 0, result.output
    return run


def _dataset(run, task):
    from vl.shared.feature_store import FeatureStore
    from vl.train.build import load_trained
    from vl.train.data import TaskData, TaskDataset

    trained = load_trained(run, "last")
    spec = next(t for t in trained.cfg.tasks if t.name == task)
    data = TaskData(task, spec.val_split, spec.val_manifest, FeatureStore(spec.store), trained.cfg.data, spec)
    return trained, TaskDataset(data, trained.tokenizer, seed=trained.cfg.seed, predict=True)


class EveryToken:
    """The tokenizer, except that decoding keeps every generated token but padding (which
    depends on the batch), so a prediction shows all that the model generated."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def __call__(self, *args, **kwargs):
        return self.tokenizer(*args, **kwargs)

    def batch_decode(self, ids, **_):
        pad = self.tokenizer.pad_token_id
        return [" ".join(self.tokenizer.convert_ids_to_tokens([int(i) for i in row if i != pad])) for row in ids]


@pytest.mark.parametrize("task", ["vqa", "gqa"])
def test_length_buckets_give_the_same_predictions_in_example_order(run, task):
    import torch

    from vl.train.predict import generate_predictions, input_lengths, prediction_batches

    trained, ds = _dataset(run, task)
    bucketed, plain = prediction_batches(ds, BATCH), prediction_batches(ds, BATCH, bucket=False)
    assert bucketed != plain  # the demo questions differ in length: bucketing regroups them
    assert sorted(sum(bucketed, [])) == sum(plain, [])  # every example once
    lengths = input_lengths(ds, sum(bucketed, []))
    assert lengths == sorted(lengths, reverse=True) and lengths[0] > lengths[-1]  # longest first

    def predict(bucket):  # every generated token compared, special ones too (<vis_extra_id_k>, ...)
        return generate_predictions(trained.model, ds, EveryToken(trained.tokenizer), torch.device("cpu"), BATCH,
                                    nullcontext, bucket=bucket)

    with_buckets, without = predict(True), predict(False)
    assert list(with_buckets.items()) == list(without.items())  # equal, and in the same order
    assert list(with_buckets) == [ex["id"] for ex in ds.data.examples]  # the manifest's order
    assert len(set(with_buckets.values())) > 1  # answers that vary with the input


def test_torchrun_evaluation_equals_one_process(run, tmp_path):
    from test_extract_distributed import torchrun

    one, two = tmp_path / "one", tmp_path / "two"
    for copy in (one, two):
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("eval"))
    result = vl("evaluate", "--run", one, "--checkpoint", "last", "--batch-size", BATCH, "--quiet")
    assert result.exit_code == 0, result.output

    proc = torchrun(["evaluate", "--run-dir", two, "--checkpoint", "last", "--batch-size", BATCH, "--quiet"])
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, (out[-2000:], err[-3000:])
    assert "torchrun: 2 ranks predicted, rank 0 scored" in out and out.count("| vqa | val |") == 1  # rank 0 reports
    files = sorted(p.name for p in (one / "eval/val").iterdir())
    assert files == sorted(p.name for p in (two / "eval/val").iterdir())
    assert files == ["gqa.json", "gqa_val_predictions.json", "vqa.json", "vqa_val_predictions.json"]
    for name in files:  # scores, digests and submissions: byte for byte
        assert (two / "eval/val" / name).read_bytes() == (one / "eval/val" / name).read_bytes(), name
    vqa = json.loads((two / "eval/val/vqa_val_predictions.json").read_text())
    assert len(vqa) == 36 and len({p["answer"] for p in vqa}) > 1


def test_a_failing_rank_stops_every_rank_with_its_message(run, tmp_path):
    from test_extract_distributed import torchrun

    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("eval"))
    proc = torchrun(["--", "evaluate", "--run", copy, "--tasks", "gqa", "--batch-size", BATCH, "--quiet"],
                    env={TEST_FAIL_RANK_ENV: "1"})
    out, err = proc.communicate(timeout=300)  # no hang: rank 0 learns of rank 1's failure
    assert proc.returncode == 1, (out[-2000:], err[-3000:])
    message = f"error: rank 1 of 2 failed predicting gqa: RuntimeError: injected failure ({TEST_FAIL_RANK_ENV}=1)"
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert lines == [message, message], err[-3000:]  # each rank: the failing rank's message, one line
    assert "| gqa |" not in out and not (copy / "eval/val/gqa.json").exists()  # nothing scored or written


def test_the_run_option_reaches_the_command_under_torchrun():
    """torchrun's argparse takes `--run` for an ambiguous abbreviation of its own --run-path and
    stops; after `--`, or spelled `--run-dir` (the same option), it reaches `vl evaluate` untouched."""
    from torch.distributed.run import get_args_parser

    from vl.evaluate.cli import evaluate

    launch, rest = ["--nproc-per-node", "2", "-m", "vl.shared.cli"], ["--split", "val", "--batch-size", "8"]
    for command in (["--", "evaluate", "--run", "runs/x"], ["evaluate", "--run-dir", "runs/x"]):
        args = get_args_parser().parse_args([*launch, *command, *rest])
        assert args.training_script_args == [*[c for c in command if c != "--"], *rest]

    (run_option,) = [p for p in evaluate.params if p.name == "run_dir"]
    assert {"--run", "--run-dir"} <= set(run_option.opts)


@pytest.mark.parametrize("backbone", ["tiny-t5", "tiny-bart"])
@pytest.mark.parametrize("beams", [1, 3])
def test_generation_runs_the_encoder_once_a_batch_and_decodes_through_the_cache(backbone, beams):
    """Greedy and beam search: one encoder pass per batch, then one new decoder token per step
    (transformers' key/value cache), with the same tokens as decoding without the cache."""
    import torch

    from conftest import tiny_vl_model

    model = tiny_vl_model(backbone).eval()
    encoder_calls, decoder_widths = [], []
    model.backbone.get_encoder().register_forward_hook(lambda *_: encoder_calls.append(1))
    model.backbone.get_decoder().register_forward_pre_hook(
        lambda _, args, kwargs: decoder_widths.append((kwargs.get("input_ids") if args == () else args[0]).shape),
        with_kwargs=True)
    g = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.randint(5, 90, (3, 7), generator=g),
              "attention_mask": torch.ones(3, 7, dtype=torch.long),
              "visual_feats": torch.randn(3, 4, 8, generator=g), "visual_mask": torch.ones(3, 4, dtype=torch.bool)}
    inputs["attention_mask"][0, 5:] = 0  # a shorter row, right-padded
    out = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, num_beams=beams)
    assert encoder_calls == [1]
    assert decoder_widths == [torch.Size([3 * beams, 1])] * 6  # one token a step for every row and beam
    assert torch.equal(out, model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, num_beams=beams,
                                           use_cache=False))
