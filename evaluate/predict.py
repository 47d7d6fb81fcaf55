"""`vl evaluate --run RUN_DIR --split val|test`: a trained run's predictions on a split,
scored with each task's official metric, and written in each benchmark's submission format.

For every task of the run (or those asked for): the split's manifest (the task's
`val_manifest` / `test_manifest` from the run's config, or one given with
`--manifest TASK=PATH`), one prediction per example generated in batches with the task's
decoding settings (greedy for short answers, beam search for captions), then

    eval/<split>/<task>.json             scores (main score under "overall", breakdowns),
                                         the digests of the run, checkpoint and manifest
    eval/<split>/<task>_<split>_predictions.*   the predictions in the benchmark's official
                                         format (VALUE's file names)

A split without answers (a test split) gets its predictions written and no score.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from vl.shared.atomic import write_json_atomic
from vl.shared.devices import amp_dtype, autocast, pick_device
from vl.shared.digests import sha256_file
from vl.shared.errors import VLError, collect_or_raise
from vl.shared.locks import run_dir_lock
from vl.shared.run_dir import eval_dir, eval_scores_path, read_checkpoint_meta, run_json_path, store_changes

SPLITS = ("val", "test")


@dataclass
class TaskResult:
    task: str
    split: str
    examples: int
    scores: dict | None  # None: the split has no answers
    scores_file: Path
    predictions_file: Path
    checkpoint: str = "best"  # the checkpoint scored


def has_gold(task: Any, examples: Sequence[dict]) -> bool:
    """Whether every example carries what the task's metric scores against."""
    return all(any(ex.get(f) is not None for f in task.gold) for ex in examples)


def evaluate_run(run_dir: str | os.PathLike, split: str = "val", tasks: Sequence[str] | None = None,
                 checkpoint: str | None = None, device: str = "auto", manifests: dict[str, str] | None = None,
                 batch_size: int | None = None, precision: str | None = None,
                 progress: bool = True) -> list[TaskResult]:
    """Predict, score and write every chosen task of `run_dir` on `split` (see the module docstring).
    `checkpoint` None scores the one the run's config names (`eval_checkpoint`)."""
    from vl.evaluate.formats import official_file_name, write_submission
    from vl.evaluate.metrics import score
    from vl.shared.feature_store import FeatureStore
    from vl.train.data import TaskData, TaskDataset
    from vl.train.build import load_trained
    from vl.train.predict import generate_predictions

    run_dir = Path(run_dir)
    if split not in SPLITS:
        raise VLError(f"split must be one of {', '.join(SPLITS)} (got {split!r})")
    trained = load_trained(run_dir, checkpoint, pick_device(device))
    cfg, model, tokenizer = trained.cfg, trained.model, trained.tokenizer
    specs = {t.name: t for t in cfg.tasks}
    manifests = dict(manifests or {})
    chosen = list(tasks) if tasks else list(specs)
    problems = [f"task {t!r} is not one of this run's tasks ({', '.join(specs)})" for t in chosen if t not in specs]
    problems += [f"--manifest {t}=...: {t!r} is not one of this run's tasks ({', '.join(specs)})"
                 for t in manifests if t not in specs]
    for name in chosen:
        spec = specs.get(name)
        if spec is not None and name not in manifests:
            path = spec.val_manifest if split == "val" else spec.test_manifest
            if path is None:
                problems.append(f"the run's config names no {split}_manifest for task {name}: give one with "
                                f"--manifest {name}=PATH")
            else:
                manifests[name] = str(path)
    collect_or_raise(problems)

    on_gpu = model.backbone.device.type == "cuda"  # the CPU predicts in fp32 whatever the run trained in
    dtype = amp_dtype(precision or cfg.precision) if on_gpu else None

    def autocast_step():
        return autocast(model.backbone.device, dtype)

    # The stores must hold features made as when the run trained (as resume checks): another
    # extraction into the same path would be scored silently, or fail deep in the model.
    stores = {str(specs[name].store): FeatureStore(specs[name].store) for name in chosen}
    collect_or_raise(store_changes(run_dir, stores), hint="Evaluate with the stores the run trained on (re-extract "
                                                          "them with the settings run.json records).")
    store_digests = {path: sha256_file(path) for path in stores}
    run_digest = sha256_file(run_json_path(run_dir))
    checkpoint_meta = read_checkpoint_meta(run_dir, trained.checkpoint)
    out_dir = eval_dir(run_dir, split)
    with run_dir_lock(run_dir, "vl evaluate"):  # not while a `vl train` writes into the run
        results = []
        for name in chosen:
            spec = specs[name]
            split_name = spec.val_split if split == "val" else spec.test_split
            store = stores[str(spec.store)]
            data = TaskData(name, split_name, manifests[name], store, cfg.data, spec)
            data.check_media(skip_missing=False)
            ds = TaskDataset(data, tokenizer, seed=cfg.seed, predict=True)
            predictions = generate_predictions(model, ds, tokenizer, model.backbone.device,
                                               batch_size or cfg.val_batch_size, autocast_step, progress=progress)
            scored = ds.scored_examples()  # vl_lm, itm: the gold their items drew
            scores = score(data.task.metric, predictions, scored) if has_gold(data.task, data.examples) else None
            predictions_file = write_submission(name, predictions, data.examples,
                                                out_dir / official_file_name(name, split))
            scores_file = eval_scores_path(run_dir, split, name)
            write_json_atomic(scores_file, {
                "task": name, "split": split, "manifest_split": split_name, "checkpoint": trained.checkpoint,
                "epoch": trained.extra["epoch"] + 1 if "epoch" in trained.extra else None,  # 1-based, as metrics.jsonl
                "examples": len(data.examples), "scores": scores,
                "note": None if scores else "this split has no answers: predictions written, no score claimed",
                "predictions_file": predictions_file.name,
                "digests": {"run_json": run_digest, "checkpoint": checkpoint_meta.get("model_sha256"),
                            "manifest": sha256_file(manifests[name]), "feature_store": store_digests[str(spec.store)]},
            })
            results.append(TaskResult(name, split, len(data.examples), scores, scores_file, Path(predictions_file),
                                      trained.checkpoint))
    return results


def results_table(results: Sequence[TaskResult]) -> str:
    """A Markdown table of the main scores (and what was written)."""
    lines = ["| task | split | examples | score | written |", "|---|---|---|---|---|"]
    for r in results:
        main = f"{r.scores['overall']:.2f}" if r.scores else "- (no answers)"
        lines.append(f"| {r.task} | {r.split} | {r.examples} | {main} | {r.scores_file.name}, "
                     f"{r.predictions_file.name} |")
    return "\n".join(lines)
