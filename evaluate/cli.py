"""`vl evaluate`: score a trained run on a split (`--run`), or a predictions file alone (`score`).

Thin on purpose: the work is in vl.evaluate.predict (a run's predictions) and
vl.evaluate.scoring (a file in a benchmark's official format); torch loads inside the
commands, so `vl --help` stays instant.
"""
from __future__ import annotations

from pathlib import Path

import click

EXAMPLE = """\b
Examples:
  vl evaluate --run runs/vqa-gqa --split val              # every task, the checkpoint the run's config names
  vl evaluate --run runs/vqa-gqa --split test --tasks vqa --manifest vqa=manifests/vqa2_test.jsonl
  vl evaluate score --task vqa --predictions my_vqa.json --manifest manifests/vqa2_val.jsonl

\b
Writes RUN/eval/<split>/<task>.json (scores: the main score under "overall", 0-100, with
its breakdowns; the digests of the run, checkpoint and manifest) and
RUN/eval/<split>/<task>_<split>_predictions.* in the benchmark's submission format: VQA
[{question_id, answer}], GQA [{questionId, prediction}], NLVR2 CSV, COCO
[{image_id, caption}], VALUE's JSON / JSONL. A split without answers gets predictions, no score."""


def _manifest_overrides(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for value in values:
        task, sep, path = value.partition("=")
        if not sep or not task or not path:
            raise click.BadParameter(f"{value!r}: give TASK=PATH, e.g. vqa=manifests/vqa2_test.jsonl",
                                     param_hint="--manifest")
        out[task] = path
    return out


@click.group("evaluate", invoke_without_command=True, epilog=EXAMPLE,
             context_settings={"max_content_width": 100})
@click.option("--run", "run_dir", type=click.Path(file_okay=False, path_type=Path),
              help="A run directory made by `vl train`.")
@click.option("--split", type=click.Choice(["val", "test"]), default="val", show_default=True,
              help="Which manifests to predict: each task's val_manifest or test_manifest in the run's config.")
@click.option("--tasks", default=None, metavar="T1,T2", help="Only these tasks of the run (default: all).")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default=None,
              help="best: the best validation epoch (last when the run never validated); last: the last epoch, as "
                   "the paper tested. Default: the run's eval_checkpoint setting (best unless its config says last).")
@click.option("--manifest", "manifests", multiple=True, metavar="TASK=PATH",
              help="The manifest of a task for this split, instead of the config's (repeatable).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Examples per generation batch (default: the run's val_batch_size).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def evaluate(ctx: click.Context, run_dir: Path | None, split: str, tasks: str | None, checkpoint: str | None,
             manifests: tuple[str, ...], device: str, batch_size: int | None, quiet: bool) -> None:
    """Stage 3: each task's official metric on a trained run's predictions.

    With --run: load the run's model and checkpoint, generate a prediction for every
    example of the split, score it (when the split has answers), and write the scores
    and the benchmark's submission file under RUN/eval/<split>/. Prints a table.
    """
    if ctx.invoked_subcommand is not None:
        return
    if run_dir is None:
        raise click.UsageError("give a run to evaluate (--run RUN_DIR), or score a file: vl evaluate score --help")
    from vl.evaluate.predict import evaluate_run, results_table

    chosen = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None
    results = evaluate_run(run_dir, split, chosen, checkpoint, device, _manifest_overrides(manifests), batch_size,
                           progress=not quiet)
    click.echo(results_table(results))
    used = sorted({r.checkpoint for r in results})
    click.echo(f"checkpoint: {', '.join(used)}" + ("" if checkpoint else " (the run's eval_checkpoint)"))
    click.echo(f"written to {run_dir / 'eval' / split}")


@evaluate.command("score", epilog="""\b
Example:
  vl evaluate score --task gqa --predictions gqa_testdev_predictions.json \\
      --manifest manifests/gqa_testdev.jsonl --out scores/gqa_testdev.json""",
                  context_settings={"max_content_width": 100})
@click.option("--task", required=True,
              type=click.Choice(["vqa", "gqa", "nlvr2", "caption", "tvqa", "how2qa", "tvc", "yc2c"]),
              help="The task whose metric and submission format to use.")
@click.option("--predictions", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Predictions in the benchmark's official submission format (from any model).")
@click.option("--manifest", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The dataset manifest with the answers (from `vl data convert`).")
@click.option("--split", default=None, help="The manifest split to score, when the manifest holds several.")
@click.option("--allow-missing", is_flag=True, help="Score examples without a prediction as wrong (else an error).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the scores as JSON (main score under 'overall', breakdowns beside it).")
def score(task: str, predictions: Path, manifest: Path, split: str | None, allow_missing: bool,
          out: Path | None) -> None:
    """Score a predictions file alone against a manifest's answers."""
    from vl.evaluate.scoring import score_file, write_scores
    from vl.shared.atomic import refuse_overwriting_inputs

    if out is not None:
        refuse_overwriting_inputs(out, [("--predictions", predictions), ("--manifest", manifest)])
    result = score_file(task, predictions, manifest, split=split, allow_missing=allow_missing)
    click.echo(f"{task}: {result['overall']:.2f} ({result['count']} examples"
               + (f", {result['missing']} without a prediction, scored as wrong" if result.get("missing") else "")
               + ")")
    if out is not None:
        write_scores(result, out)
        click.echo(f"written to {out}")


@click.command("metrics")
def list_metrics() -> None:
    """The official metrics (vl.evaluate.metrics), with the tasks scored by each."""
    from vl.evaluate.metrics import METRICS
    from vl.shared.cli import print_rows
    from vl.train.tasks import TASKS

    print_rows([(metric, f"vl.evaluate.metrics.{module}; tasks: "
                 f"{', '.join(name for name, task in TASKS.items() if task.metric == metric) or 'none'}")
                for metric, module in METRICS.items()])
