"""Score an official submission file against a dataset manifest, with the task's own
metric, and say exactly which files the score comes from.

`score_file` reads the manifest, keeps the task's examples of one split, reads the
submission (`vl.evaluate.formats`), scores it (`vl.evaluate.metrics`) and returns the
metric's dict ("overall" and its breakdowns) with "task", "split",
"predictions_file", "predictions_sha256", "manifest" and "manifest_sha256" beside it.
A split without gold answers (a test split) cannot be scored here: that is what the
official servers are for.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vl.evaluate.formats import get_format, read_submission
from vl.evaluate.metrics import score
from vl.shared.atomic import write_json_atomic
from vl.shared.digests import sha256_file
from vl.shared.errors import VLError
from vl.shared.manifest import DatasetManifest
from vl.train.tasks import get_task

# Task.metric -> the manifest field its score_examples reads the gold from
GOLD_FIELD = {"vqa_accuracy": "answers", "gqa_accuracy": "answers", "nlvr2_accuracy": "answers",
              "mc_accuracy": "answer_idx", "caption": "targets"}


def task_examples(manifest: DatasetManifest, task: str, split: str | None) -> tuple[list[dict], str]:
    """The manifest's examples of `task` and `split`, and the split; `split` may be None
    when the task has examples of one split only."""
    examples = [ex for ex in manifest.examples if ex["task"] == task]
    if not examples:
        present = sorted({ex["task"] for ex in manifest.examples})
        raise VLError(f"{manifest.path} has no {task} examples (its tasks: {', '.join(present)}); "
                      "pass the manifest converted for this task")
    splits = sorted({ex["split"] for ex in examples})
    if split is None:
        if len(splits) > 1:
            raise VLError(f"{manifest.path} holds {task} examples of {len(splits)} splits ({', '.join(splits)}); "
                          "name the one the predictions answer (split=..., `--split` on the command line)")
        return examples, splits[0]
    chosen = [ex for ex in examples if ex["split"] == split]
    if not chosen:
        raise VLError(f"{manifest.path} has no {task} examples of split {split!r}; its splits: {', '.join(splits)}")
    return chosen, split


def score_file(task: str, predictions_path: str | os.PathLike, manifest_path: str | os.PathLike, *,
               split: str | None = None, allow_missing: bool = False) -> dict[str, Any]:
    """The official score of the submission file at `predictions_path` (`task`'s official
    format) against the examples of `task` (and `split`) in the manifest. With
    `allow_missing`, examples without a prediction score as wrong; otherwise they are
    an error, as are repeated and unknown ids."""
    metric = get_task(task).metric
    get_format(task)  # an unknown format fails before any file is read
    predictions_path, manifest_path = Path(predictions_path), Path(manifest_path)
    if not predictions_path.is_file():
        raise VLError(f"{predictions_path}: no such predictions file")
    manifest = DatasetManifest.read(manifest_path)
    examples, split = task_examples(manifest, task, split)

    gold = GOLD_FIELD[metric]
    without = [ex["id"] for ex in examples if ex.get(gold) is None]
    other_gold = [f for f in get_task(task).gold if f != gold]  # VQA's soft `labels`: the metric explains
    if len(without) == len(examples) and not any(ex.get(f) is not None for ex in examples for f in other_gold):
        raise VLError(f"{manifest_path}: the {len(examples)} {task} examples of split {split!r} have no gold "
                      f"'{gold}' (a test split); no score can be claimed without answers. Submit "
                      f"{predictions_path} to the benchmark's official evaluation server instead.")

    pairs = read_submission(task, predictions_path, examples)
    try:
        result = score(metric, pairs, examples, allow_missing=allow_missing)
    except VLError as e:  # name the file the problems are in
        raise VLError([f"{predictions_path}: {p}" for p in e.problems], hint=e.hint, total=e.total) from None
    return {**result, "task": task, "split": split,
            "predictions_file": str(predictions_path), "predictions_sha256": sha256_file(predictions_path),
            "manifest": str(manifest_path), "manifest_sha256": sha256_file(manifest_path)}


def write_scores(result: dict[str, Any], out_path: str | os.PathLike) -> Path:
    """`score_file`'s result as sorted-key JSON, written atomically."""
    out_path = Path(out_path)
    write_json_atomic(out_path, result)
    return out_path
