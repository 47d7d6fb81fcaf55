"""`vl report`: run folders written by hand with known numbers, read back into the table,
the CSV, the two figures and the command's output."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from vl.evaluate.report import (
    collect_runs, method_name, paper_average, report, report_csv, report_table, write_report,
)
from vl.shared.errors import VLError

IMAGE_TASKS = ("vqa", "gqa", "nlvr2", "caption")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def epoch(n: int, loss: float, **scores: float) -> dict:
    """A metrics.jsonl record as the loop writes it; scores by task, mean_score their mean."""
    record = {"epoch": n, "step": 10 * n, "train_loss": loss, "lr": 1e-4,
              **{f"{t}_train_loss": loss for t in IMAGE_TASKS}}
    if scores:
        record.update({f"{t}_score": v for t, v in scores.items()})
        record["mean_score"] = sum(scores.values()) / len(scores)
    return record


def make_run(root: Path, name: str, *, method: str = "adapter", sharing: dict | None = None,
             tasks: tuple[str, ...] = IMAGE_TASKS, percent: float | None = 4.18, metrics: list[dict] = (),
             evals: dict[str, dict[str, float | None]] | None = None, checkpoint: str = "best",
             eval_epoch: int | None = None, display: str | None = None) -> Path:
    """A run folder as `vl train` leaves it (config.json, run.json, metrics.jsonl) and, for
    `evals` {split: {task: score, or None for a split without answers}}, the files `vl
    evaluate` writes. `display`: the method's name as run.json records it (None: a run
    from before run.json recorded it)."""
    run = root / name
    run.mkdir(parents=True)
    config = {"method": method, "backbone": "tiny-t5",
              "tasks": [{"name": t, "train_manifest": f"m/{t}.jsonl", "store": "f.h5"} for t in tasks]}
    for section in ("adapter", "lora", "prompt", "compacter"):
        config[section] = {"sharing": (sharing or {}).get(section, "single")}
    config["hyperformer"] = {"reduction_factor": 8}
    (run / "config.json").write_text(json.dumps(config))
    budget = {"trainable": 418, "total": 10000, "percent": percent} if percent is not None else {}
    recorded = {"method": {"name": method, "display": display}} if display is not None else {}
    (run / "run.json").write_text(json.dumps({"budget": budget, "model": {}, "versions": {}, "created": "now",
                                              **recorded}))
    if metrics:
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    for split, scores in (evals or {}).items():
        for task, score in scores.items():
            path = run / "eval" / split / f"{task}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            result = {"task": task, "split": split, "checkpoint": checkpoint,
                      "scores": None if score is None else {"overall": score, "other": 1.0}}
            if eval_epoch is not None:
                result["epoch"] = eval_epoch
            path.write_text(json.dumps(result))
    return run


# Two validated epochs: epoch 2 has the best mean score.
VALIDATED = [epoch(1, 3.0, vqa=60.0, gqa=50.0, nlvr2=55.0, caption=90.0),
             epoch(2, 2.0, vqa=70.0, gqa=60.0, nlvr2=75.0, caption=110.0),
             epoch(3, 1.5, vqa=69.0, gqa=59.0, nlvr2=74.0, caption=100.0)]


def table_rows(text: str) -> dict[str, list[str]]:
    """{run label: its cells} of a Markdown table."""
    lines = text.strip().splitlines()
    assert lines[1].startswith("| ---")
    return {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split(" | ")] for line in lines[2:])}


def test_table_has_a_row_per_run_with_the_best_validation_epoch(tmp_path):
    a = make_run(tmp_path, "adapter", metrics=VALIDATED)
    b = make_run(tmp_path, "full", method="full", percent=100.0, metrics=VALIDATED[:1])
    table = report_table(collect_runs([a, b]))
    header = table.splitlines()[0]
    assert header == "| run | method | trainable % | vqa | gqa | nlvr2 | caption | average | source |"
    rows = table_rows(table)
    assert rows["adapter"] == ["adapter", "single adapter", "4.18", "70.00", "60.00", "75.00", "110.00",
                               "78.75", "val (best epoch 2)"]
    assert rows["full"] == ["full", "full fine-tuning", "100.00", "60.00", "50.00", "55.00", "90.00",
                            "63.75", "val (best epoch 1)"]
    assert list(rows) == ["adapter", "full"]  # the order given


def test_average_needs_every_task_of_the_run(tmp_path):
    missing_gqa = [epoch(1, 2.0, vqa=70.0, nlvr2=75.0, caption=110.0)]
    run = make_run(tmp_path, "no-gqa", metrics=missing_gqa)
    [row] = collect_runs([run])
    assert row.scores == {"vqa": 70.0, "nlvr2": 75.0, "caption": 110.0}
    assert row.average is None
    cells = table_rows(report_table([row]))["no-gqa"]
    assert cells[3:9] == ["70.00", "-", "75.00", "110.00", "-", "val (best epoch 1)"]

    assert paper_average(["vqa", "gqa"], {"vqa": 70.0, "gqa": 60.0}, {"vqa": "s", "gqa": "s"}) == 65.0
    assert paper_average(["vqa", "gqa"], {"vqa": 70.0}, {"vqa": "s"}) is None
    assert paper_average(["vqa", "gqa"], {"vqa": 70.0, "gqa": 60.0}, {"vqa": "test", "gqa": "val"}) is None


def test_video_runs_average_their_own_tasks_and_columns_follow_the_paper(tmp_path):
    video = ("tvc", "tvqa", "yc2c", "how2qa")  # config order is not the column order
    record = {"epoch": 1, "train_loss": 1.0, "tvqa_score": 40.0, "how2qa_score": 50.0, "tvc_score": 30.0,
              "yc2c_score": 100.0, "mean_score": 55.0}
    v = make_run(tmp_path, "video", tasks=video, metrics=[record])
    i = make_run(tmp_path, "image", metrics=VALIDATED)
    rows = collect_runs([v, i])
    assert rows[0].tasks == ["tvqa", "how2qa", "tvc", "yc2c"]
    assert rows[0].average == 55.0
    table = report_table(rows)
    assert table.splitlines()[0] == ("| run | method | trainable % | vqa | gqa | nlvr2 | caption | tvqa | how2qa "
                                     "| tvc | yc2c | average | source |")
    assert table_rows(table)["video"][3:12] == ["-"] * 4 + ["40.00", "50.00", "30.00", "100.00", "55.00"]


def test_evaluate_results_win_over_validation(tmp_path):
    test_scores = {"vqa": 71.5, "gqa": 58.25, "nlvr2": 73.0, "caption": 115.0}
    run = make_run(tmp_path, "evaluated", metrics=VALIDATED, eval_epoch=2,
                   evals={"test": test_scores, "val": dict.fromkeys(IMAGE_TASKS, 1.0)})
    [row] = collect_runs([run])  # default: test first
    assert row.scores == test_scores
    assert row.average == pytest.approx(sum(test_scores.values()) / 4)
    assert row.source == "test (best checkpoint, epoch 2)"
    [val] = collect_runs([run], split="val")
    assert val.scores == dict.fromkeys(IMAGE_TASKS, 1.0) and val.source == "val (best checkpoint, epoch 2)"


def test_a_split_without_answers_passes_to_the_next_source(tmp_path):
    # `vl evaluate` on a split without answers writes predictions and "scores": null
    run = make_run(tmp_path, "test-std", metrics=VALIDATED,
                   evals={"test": {"vqa": None, "gqa": 58.0, "nlvr2": 73.0, "caption": 115.0},
                          "val": {"vqa": 69.0}})
    [row] = collect_runs([run])
    assert row.scores["vqa"] == 69.0 and row.sources["vqa"] == "val (best checkpoint)"
    assert row.source == ("val (best checkpoint): vqa; test (best checkpoint): gqa, nlvr2, caption; "
                          "test has no answers for vqa (predictions only)")  # groups in column order
    assert row.average is None
    [only_test] = collect_runs([run], split="test")
    assert only_test.sources["vqa"] == "val (best epoch 2)" and only_test.scores["vqa"] == 70.0


def test_a_partly_evaluated_run_says_where_each_score_is_from_and_has_no_average(tmp_path):
    run = make_run(tmp_path, "partly", metrics=VALIDATED, evals={"test": {"vqa": 71.5}}, checkpoint="last")
    [row] = collect_runs([run], split="test")
    assert row.scores == {"vqa": 71.5, "gqa": 60.0, "nlvr2": 75.0, "caption": 110.0}
    assert row.sources["vqa"] == "test (last checkpoint)" and row.sources["gqa"] == "val (best epoch 2)"
    assert row.source == "test (last checkpoint): vqa; val (best epoch 2): gqa, nlvr2, caption"
    assert row.average is None  # a test score is not averaged with validation ones


def test_best_epoch_is_the_first_of_equals_and_a_repeated_epoch_counts_once(tmp_path):
    records = [epoch(1, 3.0, vqa=50.0), epoch(2, 2.5, vqa=40.0),  # killed before epoch 2's checkpoint,
               epoch(2, 2.0, vqa=80.0), epoch(3, 1.0, vqa=80.0)]  # so resumed: epoch 2 again, the later holds
    run = make_run(tmp_path, "resumed", tasks=("vqa",), metrics=records)
    [row] = collect_runs([run])
    assert row.scores == {"vqa": 80.0} and row.source == "val (best epoch 2)"
    assert [m["epoch"] for m in row.metrics] == [1, 2, 3]
    assert row.metrics[1]["train_loss"] == 2.0


@pytest.mark.parametrize("method, sharing, name", [
    ("full", {}, "full fine-tuning"),
    ("visual-only", {}, "visual-only"),
    ("adapter", {}, "single adapter"),
    ("adapter", {"adapter": "multiple"}, "multiple adapters"),
    ("adapter", {"adapter": "half-shared"}, "half-shared adapters"),
    ("hyperformer", {}, "hyperformer"),
    ("compacter", {}, "single compacter"),
    ("compacter", {"compacter": "multiple"}, "multiple compacters"),
    ("lora", {}, "single LoRA"),
    ("lora", {"lora": "multiple"}, "multiple LoRA"),
    ("prompt", {}, "single prompt"),
    ("prompt", {"prompt": "multiple"}, "multiple prompts"),
    ("adapter+prompt", {"prompt": "multiple"}, "single adapter + multiple prompts"),
    ("something-new", {}, "something-new"),
])
def test_methods_are_named_as_the_paper_names_them(tmp_path, method, sharing, name):
    run = make_run(tmp_path, "r", method=method, sharing=sharing, metrics=VALIDATED)
    assert collect_runs([run])[0].method == name
    assert method_name({"method": method, **{s: {"sharing": v} for s, v in sharing.items()}}) == name


def test_csv_reads_back_to_the_same_numbers(tmp_path):
    test_scores = {"vqa": 71.123456789, "gqa": 58.25, "nlvr2": 73.0, "caption": 115.5}
    a = make_run(tmp_path, "a", percent=0.0123, evals={"test": test_scores})
    b = make_run(tmp_path, "b, with comma", metrics=[epoch(1, 2.0, vqa=70.0)], percent=None)
    rows = collect_runs([a, b])
    parsed = list(csv.DictReader(io.StringIO(report_csv(rows))))
    assert list(parsed[0]) == ["run", "method", "trainable_percent", *IMAGE_TASKS, "average", "source"]
    assert parsed[0]["run"] == "a" and float(parsed[0]["trainable_percent"]) == 0.0123
    assert {t: float(parsed[0][t]) for t in IMAGE_TASKS} == test_scores  # full precision
    assert float(parsed[0]["average"]) == rows[0].average
    assert parsed[1]["run"] == "b, with comma"
    assert (parsed[1]["trainable_percent"], parsed[1]["gqa"], parsed[1]["average"]) == ("", "", "")
    assert float(parsed[1]["vqa"]) == 70.0
    assert table_rows(report_table(rows))["a"][2] == "0.0123"


def _png_size(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as im:
        im.load()  # decodes every pixel: a damaged file fails here
        return im.size


def _svg_texts(path: Path) -> set[str]:
    root = ET.parse(path).getroot()  # fails on a file that is not XML
    return {"".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")}


def test_write_report_writes_the_table_and_both_figures(tmp_path):
    a = make_run(tmp_path / "runs", "adapter", metrics=VALIDATED)
    b = make_run(tmp_path / "runs", "full", method="full", percent=100.0, metrics=VALIDATED[:2])
    c = make_run(tmp_path / "runs", "untrained", metrics=[])
    paths = write_report([a, b, c], tmp_path / "out")
    assert list(paths) == ["markdown", "csv", "score_vs_params", "score_vs_params_svg", "curves", "curves_svg"]
    assert all(p.parent == tmp_path / "out" for p in paths.values())
    assert _png_size(paths["score_vs_params"]) == (800, 500)
    assert _png_size(paths["curves"]) == (1600, 500)  # two panels: loss, validation
    teaser = _svg_texts(paths["score_vs_params_svg"])
    assert {"trainable parameters (%, log scale)", "average score", "adapter", "full"} <= teaser
    assert "untrained" not in teaser
    assert {"training loss", "validation mean score", "epoch", "adapter", "full"} <= _svg_texts(paths["curves_svg"])
    md = paths["markdown"].read_text()
    assert report_table(collect_runs([a, b, c])) in md
    assert "leaves out the runs without an average: untrained" in md
    assert paths["csv"].read_text() == report_csv(collect_runs([a, b, c]))


def test_no_average_no_teaser_figure_and_an_old_one_is_removed(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "score_vs_params.png").write_bytes(b"from an earlier report")
    (out / "score_vs_params.svg").write_bytes(b"from an earlier report")
    run = make_run(tmp_path, "loss-only", metrics=[epoch(1, 3.0), epoch(2, 2.0)])
    paths = write_report([run], out)
    assert "score_vs_params" not in paths and "score_vs_params_svg" not in paths
    assert not (out / "score_vs_params.png").exists() and not (out / "score_vs_params.svg").exists()
    assert _png_size(paths["curves"]) == (800, 500)  # the loss panel only
    md = paths["markdown"].read_text()
    assert "score_vs_params.png not drawn: no run has an average score" in md
    assert "curves.png shows the training loss only" in md
    assert collect_runs([run])[0].source == "not validated yet (2 epochs trained)"


def test_scores_from_vl_evaluate_are_not_called_missing_when_no_epoch_validated(tmp_path):
    """As in the demo: val_every 0, so metrics.jsonl has losses only, and `vl evaluate` scored val."""
    run = make_run(tmp_path, "evaluated", metrics=[epoch(1, 3.0), epoch(2, 2.0)],
                   evals={"val": {t: 50.0 for t in IMAGE_TASKS}})
    md = write_report([run], tmp_path / "out", split="val")["markdown"].read_text()
    assert "no run has validation scores" not in md
    assert "no run validated during training (val_every: 0); the table's scores are `vl evaluate`'s" in md
    assert "| 50.00 |" in md


def test_a_run_without_metrics_is_a_row_not_a_crash(tmp_path):
    run = make_run(tmp_path, "just-started")
    paths = write_report([run], tmp_path / "out")
    assert set(paths) == {"markdown", "csv"} and sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "report.csv", "report.md"]
    cells = table_rows(paths["markdown"].read_text().split("\n\n")[1])["just-started"]
    assert cells[3:] == ["-"] * 5 + ["no metrics yet (no epoch finished)"]
    assert "curves.png not drawn: no run has finished an epoch yet" in paths["markdown"].read_text()


def test_command_prints_the_table_and_where_the_files_went(tmp_path):
    a = make_run(tmp_path, "adapter", metrics=VALIDATED)
    b = make_run(tmp_path, "lora", method="lora", percent=7.5, metrics=VALIDATED[:1])
    out = tmp_path / "reports"
    result = CliRunner().invoke(report, [str(a), str(b), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert report_table(collect_runs([a, b])) in result.output
    assert f"wrote {out / 'report.md'}, {out / 'report.csv'}" in result.output
    assert {p.name for p in out.iterdir()} == {"report.md", "report.csv", "score_vs_params.png", "score_vs_params.svg",
                                               "curves.png", "curves.svg"}

    result = CliRunner().invoke(report, [str(a), "--split", "test", "--out", str(out)])
    assert result.exit_code == 0 and "val (best epoch 2)" in result.output  # no test results: validation


def test_command_help_and_usage_errors(tmp_path):
    result = CliRunner().invoke(report, ["--help"])
    assert result.exit_code == 0
    for text in ("RUN_DIR", "--out", "--split", "Examples:", "vl report runs/"):
        assert text in result.output
    result = CliRunner().invoke(report, [])
    assert result.exit_code == 2 and "give at least one run folder" in result.output
    result = CliRunner().invoke(report, [str(tmp_path), "--split", "train"])
    assert result.exit_code == 2


def test_folders_that_are_not_runs_are_named_in_one_error(tmp_path):
    good = make_run(tmp_path / "runs", "good", metrics=VALIDATED)
    (tmp_path / "empty").mkdir()
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.json").write_text("{}")
    with pytest.raises(VLError) as err:
        collect_runs([good, tmp_path / "empty", tmp_path / "nowhere", half, tmp_path / "runs"])
    problems = err.value.problems
    assert len(problems) == 4
    assert f"{tmp_path / 'empty'} is not a run folder (no config.json and run.json)" in problems[0]
    assert f"{tmp_path / 'nowhere'} not found" in problems[1]
    assert "no run.json" in problems[2] and f"vl train --resume {half}" in problems[2]
    assert "holds 1 (good)" in problems[3] and f"vl report {tmp_path / 'runs'}/*" in problems[3]

    result = CliRunner().invoke(report, [str(tmp_path / "empty"), "--out", str(tmp_path / "out")])
    assert isinstance(result.exception, VLError)  # `vl` prints it as one error line, no traceback
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_damaged_files_are_named_with_their_fix(tmp_path):
    run = make_run(tmp_path, "damaged", metrics=VALIDATED, evals={"test": {"vqa": 70.0}})
    (run / "eval" / "test" / "gqa.json").write_text('{"task": "gqa", "scores": {}}')
    (run / "eval" / "test" / "nlvr2.json").write_text("{not json")
    with pytest.raises(VLError) as err:
        collect_runs([run])
    text = str(err.value)
    assert "gqa.json has no number at scores.overall" in text and "nlvr2.json cannot be read" in text
    assert f"vl evaluate --run {run} --split test" in text


def test_same_folder_names_get_their_parent_and_a_repeat_counts_once(tmp_path):
    a = make_run(tmp_path / "image", "adapter", metrics=VALIDATED)
    b = make_run(tmp_path / "video", "adapter", metrics=VALIDATED)
    rows = collect_runs([a, b, a])
    assert [r.label for r in rows] == ["image/adapter", "video/adapter"]


def test_importing_the_command_does_not_import_torch():
    code = "import sys, vl.evaluate.report; assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_name_recorded_in_run_json_is_the_one_printed(tmp_path):
    run = make_run(tmp_path, "r", method="lora", sharing={"lora": "multiple"}, display="my LoRA", metrics=VALIDATED)
    assert collect_runs([run])[0].method == "my LoRA"


def test_a_whole_report_imports_no_torch(tmp_path):
    a = make_run(tmp_path, "adapter", metrics=VALIDATED, evals={"val": {"vqa": 70.0}}, display="single adapter")
    b = make_run(tmp_path, "lora", method="lora", percent=7.5, metrics=VALIDATED[:1], display="single LoRA")
    out = tmp_path / "reports"
    code = ("import sys; from click.testing import CliRunner; from vl.shared.cli import cli; "
            f"result = CliRunner().invoke(cli, ['report', {str(a)!r}, {str(b)!r}, '--out', {str(out)!r}]); "
            "assert result.exit_code == 0, result.output; print(sorted(m for m in ('torch', 'h5py') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert (out / "report.md").is_file() and (out / "curves.png").is_file()
