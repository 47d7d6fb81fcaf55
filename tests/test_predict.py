"""`vl predict` and `vl.load_run(...).predict`: a trained run answers about new media, with
its CLIP encoder rebuilt from run.json's provenance; the answers equal what the run
predicts from its own feature store, and an encoder that cannot be rebuilt is refused."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

import vl
from vl.shared.cli import cli
from vl.shared.errors import VLError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def vl_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="vl")


def store_predictions(run_dir, task, manifest):
    """What the run predicts for `task` on `manifest` from the run's own feature store (as
    `vl evaluate` and validation do)."""
    from vl.shared.feature_store import FeatureStore
    from vl.train.build import load_trained
    from vl.train.data import TaskData, TaskDataset
    from vl.train.predict import generate_predictions
    from contextlib import nullcontext

    trained = load_trained(run_dir)
    spec = next(t for t in trained.cfg.tasks if t.name == task)
    data = TaskData(task, "val", manifest, FeatureStore(spec.store), trained.cfg.data, spec)
    ds = TaskDataset(data, trained.tokenizer, seed=trained.cfg.seed, predict=True)
    return generate_predictions(trained.model, ds, trained.tokenizer, trained.model.backbone.device, 4, nullcontext)


@pytest.mark.parametrize("run_name, task, stem", [("image-adapter", "vqa", "vqa2"), ("image-adapter", "nlvr2", "nlvr2"),
                                                  ("video-adapter", "tvqa", "tvqa"), ("video-adapter", "tvc", "tvc")])
def test_manifest_predictions_without_a_store_equal_the_stores(tiny_demo, run_name, task, stem):
    out, _ = tiny_demo
    manifest = out / f"world/manifests/{stem}_val.jsonl"
    run = vl.load_run(out / "runs" / run_name)
    got = run.predict_manifest(manifest, tasks=[task])
    want = store_predictions(out / "runs" / run_name, task, manifest)
    assert got and {i: r["prediction"] for i, r in got.items()} == want
    assert all(r["task"] == task for r in got.values())


def test_one_image_question_through_the_cli_and_python(tiny_demo):
    out, _ = tiny_demo
    example = json.loads((out / "world/manifests/vqa2_val.jsonl").read_text().splitlines()[0])
    image = next((out / "world/images").rglob(example["media"][0] + ".jpg"))
    run_dir = out / "runs/image-adapter"
    want = store_predictions(run_dir, "vqa", out / "world/manifests/vqa2_val.jsonl")[example["id"]]
    assert vl.load_run(run_dir).predict(image=image, question=example["question"], task="vqa") == want
    result = vl_cli("predict", "--run", run_dir, "--image", image, "--question", example["question"], "--task", "vqa",
                    "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output.strip().splitlines()[-1])
    assert answer["answer"] == want and answer["task"] == "vqa" and answer["checkpoint"] in ("best", "last")
    # the run has vqa and gqa: both read an image and a question, so the task must be named
    result = vl_cli("predict", "--run", run_dir, "--image", image, "--question", "what?")
    assert result.exit_code == 1 and "several tasks" in result.output and "vqa" in result.output


def test_a_video_question_with_choices_answers_one_of_them(tiny_demo):
    out, _ = tiny_demo
    manifest = out / "world/manifests/tvqa_val.jsonl"
    example = json.loads(manifest.read_text().splitlines()[0])
    video = next((out / "world/videos").glob(example["media"][0] + ".*"))
    run_dir = out / "runs/video-adapter"
    want = store_predictions(run_dir, "tvqa", manifest)[example["id"]]  # an index, as the metric takes it
    subtitles = out / "subs.json"
    subtitles.write_text(json.dumps(example["subtitles"]))
    args = ["predict", "--run", run_dir, "--video", video, "--task", "tvqa", "--question", example["question"],
            "--subtitles", subtitles, *[a for c in example["choices"] for a in ("--choice", c)]]
    if example["ts"]:
        args += ["--span", *example["ts"]]
    result = vl_cli(*args)
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == example["choices"][want]


def test_manifest_mode_writes_jsonl_and_names_failed_media(tiny_demo, tmp_path):
    out, _ = tiny_demo
    lines = (out / "world/manifests/vqa2_val.jsonl").read_text().splitlines()[:3]
    media_root = tmp_path / "media"
    shutil.copytree(out / "world/images", media_root)
    broken = json.loads(lines[2])
    broken_id = "COCO_val2014_broken"
    (media_root / f"{broken_id}.jpg").write_bytes(b"not a jpeg")
    lines[2] = json.dumps({**broken, "id": "b1", "media": [broken_id]})
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    result = vl_cli("predict", "--run", out / "runs/image-adapter", "--manifest", manifest, "--media-root", media_root,
                    "--out", tmp_path / "answers.jsonl")
    assert result.exit_code == 1 and "1 example(s) have no prediction" in result.output
    rows = [json.loads(x) for x in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [json.loads(lines[0])["id"], json.loads(lines[1])["id"], "b1"]
    assert "prediction" in rows[0] and broken_id in rows[2]["error"]


def tampered_run(tiny_demo, tmp_path, change):
    """A copy of the demo's image-adapter run whose run.json records other store settings."""
    out, _ = tiny_demo
    run = tmp_path / "run"
    shutil.copytree(out / "runs/image-adapter", run)
    facts = json.loads((run / "run.json").read_text())
    for entry in facts["feature_stores"].values():
        change(entry["settings"])
    (run / "run.json").write_text(json.dumps(facts))
    return run


def test_an_encoder_that_differs_from_the_runs_is_refused_naming_the_field(tiny_demo, tmp_path):
    out, _ = tiny_demo
    run = tampered_run(tiny_demo, tmp_path, lambda s: s["preprocess"].update(mean=[0.5, 0.5, 0.5]))
    image = next((out / "world/images").rglob("*.jpg"))
    with pytest.raises(VLError, match=r"preprocess\.mean"):
        vl.load_run(run).predict(image=image, question="what?", task="vqa")


def test_imported_features_cannot_be_rebuilt(tiny_demo, tmp_path):
    out, _ = tiny_demo
    run = tampered_run(tiny_demo, tmp_path, lambda s: s["encoder"].update(library="imported"))
    image = next((out / "world/images").rglob("*.jpg"))
    result = vl_cli("predict", "--run", run, "--image", image, "--question", "what?", "--task", "vqa")
    assert result.exit_code == 1 and "not made by `vl extract`" in result.output


def test_bad_requests_get_one_line(tiny_demo, tmp_path):
    out, _ = tiny_demo
    run = out / "runs/image-adapter"
    image = next((out / "world/images").rglob("*.jpg"))
    cases = [
        (["--image", tmp_path / "nope.jpg", "--question", "q", "--task", "vqa"], "no such file"),
        (["--image", image, "--task", "vqa"], "task vqa needs a question"),
        (["--image", image, "--task", "nlvr2", "--question", "two dogs."], "nlvr2 reads two images"),
        (["--image", image, "--task", "tvqa", "--question", "q"], "not one of this run's tasks"),
        (["--image", image, "--task", "caption", "--question", "q"], "takes no question"),
    ]
    for args, message in cases:
        result = vl_cli("predict", "--run", run, *args)
        assert result.exit_code == 1 and message in result.output, (args, result.output)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    result = vl_cli("predict", "--run", run, "--image", bad, "--question", "q", "--task", "vqa")
    assert result.exit_code == 1 and str(bad) in result.output


def test_the_custom_architecture_comes_from_the_provenance(tiny_demo):
    """The demo's encoder is an architecture file; the run rebuilds it without that file."""
    from vl.runs import encoder_recipe
    from vl.shared.run_dir import read_run_json

    out, _ = tiny_demo
    (settings,) = {json.dumps(e["settings"], sort_keys=True) for e in
                   read_run_json(out / "runs/image-adapter")["feature_stores"].values()}
    recipe = encoder_recipe(json.loads(settings), "store", "cpu")
    assert recipe.spec.model_config != str(out / "models/demo-clip.json")
    assert json.loads(open(recipe.spec.model_config).read()) == json.loads((out / "models/demo-clip.json").read_text())


def test_import_vl_is_light_and_names_its_api():
    code = ("import sys, vl; print(sorted(vl.__all__)); print('torch' in sys.modules); "
            "print(callable(vl.train), callable(vl.evaluate), vl.load_run.__module__)")
    lines = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert lines[0] == str(sorted(["Run", "evaluate", "extract_images", "extract_videos", "load_run", "train"]))
    assert lines[1] == "False"  # nothing heavy until a name is used
    assert lines[2] == "True True vl.runs"
    with pytest.raises(AttributeError, match="public names"):
        vl.no_such_thing  # noqa: B018


def test_notebook_callables_run_the_stages(world, tmp_path):
    """vl.extract_images, vl.train and vl.evaluate from Python, as the commands."""
    from test_train_loop import write_config

    summary = vl.extract_images(world / "images", out=tmp_path / "f.h5", model_config=world / "tiny-rn.json",
                                pretrained=None, workers=0, progress=False)
    assert summary.extracted == summary.store_count > 0
    from vl.shared.feature_store import FeatureStore

    ours, theirs = FeatureStore(tmp_path / "f.h5"), FeatureStore(world / "features/coco.h5")
    some = theirs.ids[0]
    assert (ours.get(some) == theirs.get(some)).all()  # the same features as `vl extract images`
    run_dir = vl.train(write_config(world, tmp_path / "run"), overrides=["epochs=1"])
    assert (run_dir / "checkpoints/last").is_dir()
    results = vl.evaluate(run_dir, split="val", tasks=["gqa"], manifests={"gqa": str(world / "manifests/gqa8.jsonl")},
                          progress=False)
    assert results[0].task == "gqa" and results[0].scores is not None


def test_a_moved_bundle_answers_as_its_run(tiny_demo, tmp_path):
    """`vl export --format bundle`, moved: `vl predict` accepts it and answers as the run does."""
    out, _ = tiny_demo
    example = json.loads((out / "world/manifests/gqa_val.jsonl").read_text().splitlines()[0])
    image = next((out / "world/images").rglob(example["media"][0] + ".jpg"))
    result = vl_cli("export", out / "runs/image-adapter", "--format", "bundle", "--out", tmp_path / "bundle")
    assert result.exit_code == 0, result.output
    moved = shutil.move(tmp_path / "bundle", tmp_path / "elsewhere")
    want = vl.load_run(out / "runs/image-adapter").predict(image=image, question=example["question"], task="gqa")
    result = vl_cli("predict", "--run", moved, "--image", image, "--question", example["question"], "--task", "gqa")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == want  # the last line as printed: a barely trained model may answer ""
