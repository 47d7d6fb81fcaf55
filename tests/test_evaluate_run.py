"""`vl evaluate --run`: a trained demo run predicted, scored and written on its val split,
and on a test split without answers."""
from __future__ import annotations

import json

import pytest

from test_train_loop import read_metrics, vl_train, write_config
from vl.shared.cli import cli
from vl.shared.manifest import DatasetManifest, ManifestMeta, write_manifest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def vl(*args):
    from click.testing import CliRunner

    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="vl")


@pytest.fixture(scope="module")
def run(world, tmp_path_factory):
    run = tmp_path_factory.mktemp("eval") / "run"
    result = vl_train("-c", str(write_config(world, run)), "--set", "epochs=2", "--set", "optim.lr=3e-3")
    assert result.exit_code == 0, result.output
    return run


def test_val_scores_equal_the_last_validation_and_files_are_written(run):
    result = vl("evaluate", "--run", run, "--split", "val", "--checkpoint", "last", "--quiet")
    assert result.exit_code == 0, result.output
    last = read_metrics(run)[-1]
    for task in ("vqa", "gqa"):
        scores = json.loads((run / f"eval/val/{task}.json").read_text())
        assert scores["checkpoint"] == "last" and scores["epoch"] == 2 == last["epoch"]
        assert scores["scores"]["overall"] == pytest.approx(last[f"{task}_score"])  # the same model, same examples
        assert set(scores["digests"]) == {"run_json", "checkpoint", "manifest", "feature_store"}
        assert scores["digests"]["feature_store"] == json.loads((run / "run.json").read_text())["feature_stores"][
            str(world_store(run))]["sha256"]  # the store the run trained on, unchanged
        assert f"| {task} | val |" in result.output
    vqa = json.loads((run / "eval/val/vqa_val_predictions.json").read_text())
    assert len(vqa) == 36 and set(vqa[0]) == {"question_id", "answer"} and isinstance(vqa[0]["question_id"], int)
    gqa = json.loads((run / "eval/val/gqa_val_predictions.json").read_text())
    assert len(gqa) == 25 and set(gqa[0]) == {"questionId", "prediction"}


def world_store(run):
    (store,) = {t["store"] for t in json.loads((run / "config.json").read_text())["tasks"]}
    return store


def test_a_store_re_extracted_with_another_encoder_is_refused_naming_the_field(world, tmp_path):
    """Same width, other weights: scores would be silently wrong, so evaluation stops as resume does."""
    import shutil

    store = tmp_path / "coco.h5"
    shutil.copy(world / "features/coco.h5", store)
    shutil.copy(world / "features/coco.h5.json", tmp_path / "coco.h5.json")
    run = tmp_path / "run"
    cfg = json.loads(write_config(world, run).read_text())
    for t in cfg["tasks"]:
        t["store"] = str(store)
    (tmp_path / "run.yaml").write_text(json.dumps(cfg))
    assert vl_train("-c", tmp_path / "run.yaml", "--set", "epochs=1").exit_code == 0
    again = vl("extract", "images", "--manifest", world / "manifests/vqa2_train.jsonl", "--out", store,
               "--model-config", world / "tiny-rn.json", "--pretrained", "none", "--seed", "7", "--overwrite",
               "--workers", "0", "-q")
    assert again.exit_code == 0, again.output
    result = vl("evaluate", "--run", run, "--split", "val", "--quiet")
    assert result.exit_code == 1
    assert f"feature store {store}: encoder.weights.seed was 0 when the run started, now 7" in result.output
    assert "Traceback" not in result.output and not (run / "eval/val").exists()  # nothing scored


def test_a_test_split_without_answers_gets_predictions_and_no_score(run, world, tmp_path):
    src = DatasetManifest.read(world / "manifests/gqa_train.jsonl")
    examples = [{k: v for k, v in ex.items() if k not in ("answers", "full_answer")} | {"split": "test"}
                for ex in src.examples]
    meta = ManifestMeta(**{**src.meta.__dict__, "has_answers": False, "counts": {"gqa/test": len(examples)}})
    test_manifest = tmp_path / "gqa_test.jsonl"
    write_manifest(test_manifest, examples, meta)
    result = vl("evaluate", "--run", run, "--split", "test", "--tasks", "gqa", "--manifest", f"gqa={test_manifest}",
                "--quiet")
    assert result.exit_code == 0, result.output
    scores = json.loads((run / "eval/test/gqa.json").read_text())
    assert scores["scores"] is None and "no score claimed" in scores["note"]
    assert len(json.loads((run / "eval/test/gqa_test_predictions.json").read_text())) == len(examples)
    assert "no answers" in result.output


def test_bad_requests_are_named(run, tmp_path):
    no_test = vl("evaluate", "--run", run, "--split", "test")
    assert no_test.exit_code == 1 and "--manifest vqa=PATH" in no_test.output
    unknown = vl("evaluate", "--run", run, "--tasks", "nlvr2")
    assert unknown.exit_code == 1 and "not one of this run's tasks" in unknown.output
    (tmp_path / "empty").mkdir()
    not_a_run = vl("evaluate", "--run", tmp_path / "empty")
    assert not_a_run.exit_code == 1 and "not a vl run directory" in not_a_run.output
    assert vl("evaluate").exit_code == 2
    fresh = tmp_path / "fresh"  # a run that never finished an epoch
    fresh.mkdir()
    for name in ("config.json", "run.json"):
        (fresh / name).write_bytes((run / name).read_bytes())
    no_checkpoint = vl("evaluate", "--run", fresh)
    assert no_checkpoint.exit_code == 1 and "has no checkpoints yet" in no_checkpoint.output
    assert f"vl train --resume {fresh}" in no_checkpoint.output


def test_the_runs_eval_checkpoint_decides_what_is_scored(run, tmp_path):
    """`eval_checkpoint` (the paper presets: last, as the reference tested its last epoch)
    picks the checkpoint unless --checkpoint is given; a config from before the setting
    scores best, as then."""
    import shutil

    from vl.shared.config import load_config
    from vl.shared.errors import VLError
    from vl.train.config import TrainConfig

    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("eval"))
    config = json.loads((copy / "config.json").read_text())
    assert config["eval_checkpoint"] == "best"  # the default, saved with every run

    def scored(*args):
        result = vl("evaluate", "--run", copy, "--tasks", "gqa", "--quiet", *args)
        assert result.exit_code == 0, result.output
        return json.loads((copy / "eval/val/gqa.json").read_text())["checkpoint"], result.output

    del config["eval_checkpoint"]
    (copy / "config.json").write_text(json.dumps(config))
    name, output = scored()
    assert name == "best" and "checkpoint: best (the run's eval_checkpoint)" in output
    (copy / "config.json").write_text(json.dumps({**config, "eval_checkpoint": "last"}))
    name, output = scored()
    assert name == "last" and "checkpoint: last (the run's eval_checkpoint)" in output
    name, output = scored("--checkpoint", "best")  # the command line wins
    assert name == "best" and "checkpoint: best\n" in output
    with pytest.raises(VLError, match="eval_checkpoint"):
        load_config(TrainConfig, copy / "config.json", ["eval_checkpoint=first"])


def test_a_run_in_use_is_refused_to_a_second_writer_naming_the_holder(run, tmp_path):
    """While one process trains (here: holds the run's lock), `vl train --resume` and `vl
    evaluate` into the same run are refused with its pid; the lock dies with its holder."""
    import subprocess
    import sys

    code = ("import sys, time; from vl.shared.locks import run_dir_lock\n"
            f"with run_dir_lock({str(run)!r}, 'vl train'):\n    print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        metrics = (run / "metrics.jsonl").read_bytes()
        for result in (vl_train("--resume", run, "--set", "epochs=3"),
                       vl("evaluate", "--run", run, "--split", "val", "--quiet")):
            assert result.exit_code == 1
            assert f"run dir {run} is in use by pid {holder.pid} (vl train)" in result.output, result.output
        assert (run / "metrics.jsonl").read_bytes() == metrics
    finally:
        holder.kill()
        holder.wait()
    result = vl("evaluate", "--run", run, "--split", "val", "--quiet", "--tasks", "gqa")  # the kernel released it
    assert result.exit_code == 0, result.output
