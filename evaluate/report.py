"""`vl report`: training runs side by side, as the paper's Table 1 and teaser figure.

For each run folder (made by `vl train`) one row: the method as the paper names it, the
trainable share of parameters (run.json's budget), each task's main score and
their average. A task's score comes from `vl evaluate` when it has run
(`eval/<split>/<task>.json`, "scores.overall"), else from the validation epoch with the
best `mean_score` in metrics.jsonl; the row's source column says which.

The average is the paper's: the plain mean of the run's tasks' main scores (image: VQA,
GQA, NLVR2 accuracy and COCO CIDEr; video: TVQA, How2QA accuracy and TVC, YC2C CIDEr),
given only when every task of the run has a score from one and the same source (a test
score is not averaged with a validation one).

Written into the output folder: report.md and report.csv (the table),
score_vs_params.png (average against trainable share, log x) and curves.png (training
loss and validation mean score by epoch, one line per run), each figure also as .svg.

The run folders are read through vl.shared.run_dir, so a report imports no torch;
`vl.shared.figures` (numpy, matplotlib) is imported inside the functions that need it.
The method's name is the one `vl train` recorded in run.json (from the method registry,
vl.train.peft.registry); only for a run made before run.json recorded it is the name
worked out from its config through the registry, which imports torch.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import click

from vl.shared.errors import VLError, collect_or_raise
from vl.shared.run_dir import (
    CONFIG_FILE,
    RUN_JSON,
    config_path,
    eval_scores_path,
    is_run_dir,
    read_metrics,
    read_run_json,
)

# The paper's column order (image tasks, then video tasks); a task outside it goes last.
TASK_ORDER = ("vqa", "gqa", "nlvr2", "caption", "tvqa", "how2qa", "tvc", "yc2c")
DEFAULT_SPLITS = ("test", "val")  # split=None: a task's test result, else its val result
MISSING = "-"
FILES = {"markdown": "report.md", "csv": "report.csv",
         "score_vs_params": "score_vs_params.png", "curves": "curves.png"}

# -- the method as the paper names it -----------------------------------------------------

def method_name(config: dict, run: dict | None = None) -> str:
    """"single adapter", "multiple adapters", "half-shared adapters", "single LoRA",
    "full fine-tuning", ...: the name run.json (`run`) records, else the method registry's
    name for the config's `method` and its sections' `sharing`; an unknown method keeps
    its own name."""
    recorded = (run or {}).get("method")
    if isinstance(recorded, dict) and isinstance(recorded.get("display"), str):
        return recorded["display"]
    from vl.train.peft.methods import display_name  # imports torch: only for runs that predate the record

    return display_name(str(config.get("method", "full")), config)


# -- one row per run -----------------------------------------------------------------------

@dataclass
class RunRow:
    """One run's line of the report."""

    label: str  # the folder name (with its parent's when two runs share a name)
    path: Path
    method: str  # as the paper names it: "single adapter", "full fine-tuning", ...
    trainable_percent: float | None  # run.json budget: trainable / total parameters, in %
    tasks: list[str]  # the run's tasks, in TASK_ORDER
    scores: dict[str, float]  # task -> main score (accuracy in %, CIDEr x 100); a task without one is absent
    sources: dict[str, str]  # task -> where its score came from: "test (best checkpoint)", "val (best epoch 3)"
    average: float | None  # the paper's average, see paper_average
    source: str  # the sources in one phrase, or why there are no scores
    metrics: list[dict] = field(default_factory=list, repr=False)  # metrics.jsonl, one record per epoch


def task_order(names: Iterable[str]) -> list[str]:
    names = set(names)
    return [t for t in TASK_ORDER if t in names] + sorted(names - set(TASK_ORDER))


def paper_average(tasks: Sequence[str], scores: dict[str, float], sources: dict[str, str]) -> float | None:
    """The mean of the tasks' main scores, when each task has one and all come from one source."""
    if not tasks or any(t not in scores for t in tasks) or len({sources[t] for t in tasks}) > 1:
        return None
    return sum(scores[t] for t in tasks) / len(tasks)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _by_epoch(records: list[dict]) -> list[dict]:
    """One record per epoch, the last one written (a run killed between writing an epoch's
    metrics and its checkpoint repeats that epoch when resumed), in epoch order."""
    latest = {r["epoch"]: r for r in records if isinstance(r.get("epoch"), int)}
    return [latest[e] for e in sorted(latest)]


def _best_epoch(records: list[dict]) -> dict | None:
    """The record of the best validation mean_score; the first of equals, as the loop keeps it."""
    best = None
    for r in records:
        if _finite(r.get("mean_score")) and (best is None or r["mean_score"] > best["mean_score"]):
            best = r
    return best


def _read_json(path: Path, problems: list[str], fix: str) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        problems.append(f"{path} cannot be read ({e}); {fix}")
        return None
    if not isinstance(value, dict):
        problems.append(f"{path} holds a {type(value).__name__}, not a JSON object; {fix}")
        return None
    return value


def _eval_score(run_dir: Path, task: str, splits: Sequence[str],
                problems: list[str]) -> tuple[tuple[float, str] | None, list[str]]:
    """((score, source) from the first of `splits` whose `eval/<split>/<task>.json` has a
    score, or None; the splits passed over because their file holds predictions only)."""
    unscored = []
    for split in splits:
        path = eval_scores_path(run_dir, split, task)
        if not path.is_file():
            continue
        fix = f"score it again: `vl evaluate --run {run_dir} --split {split}`"
        result = _read_json(path, problems, fix)
        if result is None:
            return None, unscored
        scores = result.get("scores")
        if result.get("task", task) != task:
            problems.append(f"{path} holds the scores of task {result.get('task')!r}, not {task!r}; {fix}")
        elif scores is None:  # a split without answers (VQA test-std, ...): predictions to submit, no score
            unscored.append(split)
            continue
        elif not (isinstance(scores, dict) and _finite(scores.get("overall"))):
            problems.append(f"{path} has no number at scores.overall; {fix}")
        else:
            made_by = ", ".join(x for x in (f"{result['checkpoint']} checkpoint" if result.get("checkpoint") else "",
                                            f"epoch {result['epoch']}" if result.get("epoch") is not None else "") if x)
            return (float(scores["overall"]), f"{split} ({made_by})" if made_by else split), unscored
        return None, unscored
    return None, unscored


def _not_a_run_dir(path: Path) -> str | None:
    """Why `path` is not a run folder, with the fix; None when it is one."""
    if not path.exists():
        return f"{path} not found; check the path (a run folder is the run_dir `vl train` wrote)"
    if not path.is_dir():
        return f"{path} is a file, not a run folder; pass the folder `vl train` wrote (its run_dir)"
    if is_run_dir(path):
        return None
    if config_path(path).is_file():
        return (f"{path} has {CONFIG_FILE} but no {RUN_JSON}: its training never got past building the model; "
                f"start it again (`vl train --resume {path}`) or leave it out")
    inner = sorted(p.name for p in path.iterdir() if is_run_dir(p))
    if inner:
        shown = ", ".join(inner[:5]) + (", ..." if len(inner) > 5 else "")
        return (f"{path} is not a run folder but holds {len(inner)} ({shown}); pass those instead, "
                f"e.g. `vl report {path}/*`")
    return (f"{path} is not a run folder (no {CONFIG_FILE} and {RUN_JSON}); pass the folder `vl train` wrote "
            "(the run_dir of its config)")


def _labels(paths: list[Path]) -> list[str]:
    """Folder names; parent/name for the names that two runs share."""
    full = [p.resolve() for p in paths]  # "." and "runs/a/" name their folders too
    names = [p.name for p in full]
    return [f"{p.parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(full, names)]


def collect_runs(run_dirs: Iterable[str | os.PathLike], split: str | None = None) -> list[RunRow]:
    """One RunRow per run folder, in the order given (a folder given twice counts once).

    `split` ("test", "val"): take each task's score from `eval/<split>/<task>.json`; None:
    from eval/test, else eval/val. A task with no such file falls back to the epoch of
    the best validation mean_score. Raises one VLError naming every folder that is not
    a run folder, or every damaged file."""
    paths: list[Path] = []
    for p in map(Path, run_dirs):
        if all(p.resolve() != q.resolve() for q in paths):
            paths.append(p)
    collect_or_raise([why for why in map(_not_a_run_dir, paths) if why],
                     hint=f"every RUN_DIR must be a folder made by `vl train` (it holds {CONFIG_FILE} and {RUN_JSON})")
    splits = DEFAULT_SPLITS if split is None else (split,)
    rows, problems = [], []
    for path, label in zip(paths, _labels(paths)):
        config = _read_json(config_path(path), problems, "it is written by `vl train`; restore it or rerun")
        if config is None:
            continue
        try:
            run = read_run_json(path)
            budget = run.get("budget") or {}
            metrics = _by_epoch(read_metrics(path))
        except (VLError, json.JSONDecodeError, UnicodeDecodeError) as e:
            problems.append(f"{path}: {e}")
            continue
        tasks = task_order(t["name"] for t in config.get("tasks", []) if isinstance(t, dict) and "name" in t)
        best = _best_epoch(metrics)
        scores, sources, unscored = {}, {}, {}
        for task in tasks:
            found, passed_over = _eval_score(path, task, splits, problems)
            for passed in passed_over:
                unscored.setdefault(passed, []).append(task)
            if found is None and best is not None and _finite(best.get(f"{task}_score")):
                found = float(best[f"{task}_score"]), f"val (best epoch {best['epoch']})"
            if found is not None:
                scores[task], sources[task] = found
        percent = budget.get("percent")
        rows.append(RunRow(
            label=label, path=path, method=method_name(config, run),
            trainable_percent=float(percent) if _finite(percent) else None,
            tasks=tasks, scores=scores, sources=sources, average=paper_average(tasks, scores, sources),
            source=_source_phrase(tasks, sources, metrics, unscored), metrics=metrics))
    collect_or_raise(problems)
    return rows


def _source_phrase(tasks: list[str], sources: dict[str, str], metrics: list[dict],
                   unscored: dict[str, list[str]]) -> str:
    """Where the row's scores come from, in one phrase; the tasks named where they differ."""
    if not sources:
        phrase = (f"not validated yet ({len(metrics)} epoch{'s' * (len(metrics) != 1)} trained)" if metrics
                  else "no metrics yet (no epoch finished)")
    else:
        groups: dict[str, list[str]] = {}
        for task in tasks:
            if task in sources:
                groups.setdefault(sources[task], []).append(task)
        if len(groups) == 1:  # the tasks without a score show "-"
            phrase = next(iter(groups))
        else:
            phrase = "; ".join(f"{src}: {', '.join(ts)}" for src, ts in groups.items())
    notes = [f"{split} has no answers for {', '.join(ts)} (predictions only)" for split, ts in unscored.items()]
    return "; ".join([phrase, *notes])


# -- the table ----------------------------------------------------------------------------

def _columns(rows: Sequence[RunRow]) -> list[str]:
    return task_order(t for r in rows for t in r.tasks)


def _percent_text(value: float | None) -> str:
    if value is None:
        return MISSING
    return f"{value:.2f}" if value >= 0.1 else f"{value:.3g}"  # visual-only is a few hundredths of a percent


def _score_text(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def report_table(rows: Sequence[RunRow]) -> str:
    """A Markdown table: run, method, trainable %, one column per task, average, source."""
    tasks = _columns(rows)
    header = ["run", "method", "trainable %", *tasks, "average", "source"]
    align = ["---", "---", "---:", *["---:"] * len(tasks), "---:", "---"]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    for r in rows:
        cells = [r.label, r.method, _percent_text(r.trainable_percent),
                 *[_score_text(r.scores.get(t)) for t in tasks], _score_text(r.average), r.source]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def report_csv(rows: Sequence[RunRow]) -> str:
    """The table's columns as CSV, numbers at full precision, an empty cell where one is missing."""
    tasks = _columns(rows)

    def number(value: float | None) -> str:
        return "" if value is None else repr(float(value))

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["run", "method", "trainable_percent", *tasks, "average", "source"])
    for r in rows:
        writer.writerow([r.label, r.method, number(r.trainable_percent),
                         *[number(r.scores.get(t)) for t in tasks], number(r.average), r.source])
    return buf.getvalue()


# -- the files ----------------------------------------------------------------------------

def _score_vs_params(rows: Sequence[RunRow], path: Path) -> tuple[bool, str | None]:
    """Draw the teaser figure; return (drawn, a note on what it leaves out)."""
    from vl.shared.figures import Point, scatter_chart

    placed = [r for r in rows if r.average is not None and r.trainable_percent and r.trainable_percent > 0]
    if not placed:
        return False, ("score_vs_params.png not drawn: no run has an average score "
                       "(every task of a run needs a score, all from the same source)")
    task_sets = {tuple(r.tasks) for r in placed}
    title = (f"{', '.join(placed[0].tasks)}: average vs trainable share" if len(task_sets) == 1
             else "average score vs trainable share (runs differ in tasks)")
    scatter_chart([Point(r.label, r.trainable_percent, r.average) for r in placed], path, title=title,
                  x_label="trainable parameters (%, log scale)", y_label="average score", log_x=True)
    left_out = [r.label for r in rows if all(r is not q for q in placed)]
    return True, (f"score_vs_params.png leaves out the runs without an average: {', '.join(left_out)}"
                  if left_out else None)


def _curves(rows: Sequence[RunRow], path: Path) -> tuple[bool, str | None]:
    """Draw training loss and validation mean_score by epoch; return (drawn, a note on what is missing)."""
    from vl.shared.figures import Panel, Series, line_chart

    def series(key: str) -> list[Series]:
        return [Series(r.label, [m["epoch"] for m in r.metrics], [m.get(key) if _finite(m.get(key)) else None
                                                                    for m in r.metrics])
                for r in rows if any(_finite(m.get(key)) for m in r.metrics)]

    loss, val = series("train_loss"), series("mean_score")
    if not loss and not val:
        return False, "curves.png not drawn: no run has finished an epoch yet"
    panels = [Panel("training loss", loss, "epoch", "loss")] if loss else []
    if val:
        panels.append(Panel("validation mean score", val, "epoch", "mean score"))
    line_chart(panels, path)
    if val:
        return True, None
    if any(r.scores for r in rows):  # the table's scores came from `vl evaluate`, not from epochs
        return True, ("curves.png shows the training loss only: no run validated during training "
                      "(val_every: 0); the table's scores are `vl evaluate`'s")
    return True, "curves.png shows the training loss only: no run has validation scores yet"


def _write_files(rows: Sequence[RunRow], out_dir: str | os.PathLike) -> tuple[dict[str, Path], list[str]]:
    """Write the table and the figures (those that can be drawn); return their paths and the notes."""
    from vl.shared.atomic import write_text_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths, notes = {}, []
    for key, draw in (("score_vs_params", _score_vs_params), ("curves", _curves)):
        target = out / FILES[key]
        drawn, note = draw(rows, target)
        svg = target.with_suffix(".svg")  # vl.shared.figures writes one beside each PNG
        if drawn:
            paths[key], paths[f"{key}_svg"] = target, svg
        else:  # a figure left by an earlier report here would no longer match the table
            target.unlink(missing_ok=True)
            svg.unlink(missing_ok=True)
        if note:
            notes.append(note)
    text = ("# Runs compared\n\n" + report_table(rows)
            + "\nScores: each task's official main score (accuracy in %; CIDEr x 100 for captioning, which can "
              "pass 100). average: their mean over the run's tasks, as the paper computes it.\n")
    if notes:
        text += "\n" + "".join(f"- {n}\n" for n in notes)
    write_text_atomic(out / FILES["markdown"], text)
    write_text_atomic(out / FILES["csv"], report_csv(rows))
    ordered = {"markdown": out / FILES["markdown"], "csv": out / FILES["csv"]}
    ordered.update(paths)
    return ordered, notes


def write_report(run_dirs: Iterable[str | os.PathLike], out_dir: str | os.PathLike,
                 split: str | None = None) -> dict[str, Path]:
    """Write report.md, report.csv, score_vs_params.png and curves.png (each figure with
    an .svg beside it) into `out_dir` and return {"markdown", "csv", "score_vs_params",
    "score_vs_params_svg", "curves", "curves_svg"} -> path; a figure with nothing to draw
    is left out (and report.md says why)."""
    return _write_files(collect_runs(run_dirs, split), out_dir)[0]


# -- the command --------------------------------------------------------------------------

EXAMPLE = """\b
Examples:
  vl report runs/paper-image-*                 # scores of each run's best validation epoch
  vl evaluate --run runs/adapter --split test  # then the table shows test scores for that run
  vl report runs/adapter runs/lora runs/full --split test --out reports/test

\b
Writes into --out: report.md and report.csv (the table printed here),
score_vs_params.png (average score against the trainable share of parameters, log x,
as the paper's teaser figure) and curves.png (training loss and validation mean score
by epoch, one line per run); each figure also as .svg, for papers."""


@click.command("report", epilog=EXAMPLE, context_settings={"max_content_width": 100})
@click.argument("run_dirs", nargs=-1, metavar="RUN_DIR [RUN_DIR ...]", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", default=Path("reports"), show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Folder for the report files (made if needed).")
@click.option("--split", type=click.Choice(["test", "val"]), default=None,
              help="Take each task's score from `vl evaluate --split SPLIT` (eval/SPLIT/<task>.json); a task "
                   "without that file falls back to its best validation epoch. Default: test results where "
                   "there are any, else val results, else the best validation epoch.")
def report(run_dirs: tuple[Path, ...], out_dir: Path, split: str | None) -> None:
    """Compare training runs in one table, as the paper's Table 1.

    Each RUN_DIR is a folder `vl train` wrote. A row shows the method, the share of
    parameters that trains, each task's main score (accuracy in %, CIDEr x 100), the paper's average over the
    run's tasks and where the scores come from: `vl evaluate` results, or the
    validation epoch with the best mean score. Runs still training are fine: they show
    their best epoch so far.
    """
    if not run_dirs:
        raise click.UsageError("give at least one run folder (made by `vl train`), e.g. `vl report runs/*`")
    rows = collect_runs(run_dirs, split)
    paths, notes = _write_files(rows, out_dir)
    click.echo(report_table(rows), nl=False)
    click.echo()
    for note in notes:
        click.echo(f"note: {note}")
    click.echo("wrote " + ", ".join(str(p) for p in paths.values()))
