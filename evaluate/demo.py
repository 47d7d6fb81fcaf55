"""`vl demo`: the whole pipeline end to end on the synthetic shapes world, offline.

Every step is an ordinary `vl` command, printed before it runs, so any step can be rerun
by hand and later pointed at real data and real weights:

    vl data demo            the shapes world (images, MP4 videos, official-format annotations)
    vl data convert ...     its train and val splits into dataset manifests (16 commands)
    vl extract images/videos  features from a small CLIP-architecture encoder with random
                            weights (an open_clip model JSON written beside the runs)
    vl train -c pretrain    a small T5 (`demo-t5`, random weights) pre-trained on the
                            world's train captions with their images, with VL-T5's span
                            prediction (vl_lm), image-text matching (itm) and captioning, and
                            on its VQA and GQA train questions: the demo's stand-in for
                            VL-T5's V&L pre-training
    vl train -c pretrain-text-only   the same random T5 on the same caption texts with every
                            visual token blanked (a store of zeros; vl_lm and caption): the
                            stand-in for text-only T5/BART, which meets visual features only
                            in fine-tuning
    vl train -c ...         full fine-tuning, single adapter, single LoRA and single prompt
                            on the four image tasks, and a single adapter on the four video
                            tasks, each starting from the V&L pre-trained run (init_from); and
                            a short single adapter from each pre-training, to show what V&L
                            pre-training gives the adapter on VQA and GQA (the paper's analysis)
    vl evaluate --run ...   each run on the val split
    vl report ...           the table and the score-vs-budget plot

Finished steps are reused when the demo runs again (the world and manifests exist, the
stores hold every media id, a run with its last epoch and an evaluation file is done).
Nothing is downloaded, so the numbers show the pipeline working, not the paper's results.
"""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import click

from vl.shared.atomic import atomic_path, write_text_atomic
from vl.shared.errors import VLError
from vl.shared.progress import bars_off
from vl.shared.run_dir import LAST, eval_scores_path, has_checkpoint, metrics_path, read_metrics, tokenizer_dir

IMAGE_TASKS = (("vqa", "vqa2"), ("gqa", "gqa"), ("nlvr2", "nlvr2"), ("caption", "coco_caption"))
VIDEO_TASKS = (("tvqa", "tvqa"), ("how2qa", "how2qa"), ("tvc", "tvc"), ("yc2c", "yc2c"))


@dataclass(frozen=True)
class Recipe:
    """Sizes and settings of one demo flavour (quick or full)."""

    images: int
    videos: int
    encoder: dict  # open_clip model JSON of the image/video encoder (random weights)
    image_extract: tuple[str, ...]  # extra `vl extract images` options
    video_extract: tuple[str, ...]
    train: dict  # settings shared by every run (data, optim, ...)
    # epochs of each pre-training: the V&L one (vl_lm + itm + caption + vqa + gqa) and the text-only
    # one (vl_lm + caption, images blanked), so that each passes over the captions as often. The full
    # demo's 3: after 750 steps (1.4 epochs) the V&L pre-training had not yet learned to read the
    # images for GQA (val 36.6, where answering each question with its most frequent train answer
    # scores 41.1), after 3 epochs it had (46.6).
    pretrain_epochs: int
    epochs: dict[str, int]  # run name -> epochs
    runs: tuple[tuple[str, str, str], ...]  # (run name, method, "image" | "video")
    extra: dict = field(default_factory=dict)  # per-run overrides: run name -> settings


# A small ViT CLIP with random weights: 96 px in, 16 px patches -> a 6x6 grid of 64-wide tokens
# (pooled to 3x3 = 9 visual tokens a picture). Random features still keep colour and layout.
ENCODER = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 96, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}
VL_PRETRAIN, TEXT_PRETRAIN = "pretrain", "pretrain-text-only"  # the two pre-trainings (run names)
RUNS = (("image-full", "full", "image"), ("image-adapter", "adapter", "image"), ("image-lora", "lora", "image"),
        ("image-prompt", "prompt", "image"), ("video-adapter", "adapter", "video"),
        ("image-adapter-short", "adapter", "image"), ("image-adapter-short-text-only", "adapter", "image"))
# the pre-training each run starts from (init_from), when not the V&L one
STARTS = {"image-adapter-short-text-only": TEXT_PRETRAIN}
# The paper's analysis of V&L pre-training: the same single adapter from each start, on these tasks,
# after a short fine-tuning (SHORT_EPOCHS). On this small world the V&L start is a head start that
# the text-only start makes up in a few epochs of adapter fine-tuning (the visual projection trains
# in every method); after one epoch the two are apart (docs/benchmarks.md).
PRETRAIN_EFFECT = ("image-adapter-short", "image-adapter-short-text-only", ("vqa", "gqa"))
SHORT_EPOCHS = {"image-adapter-short": 1, "image-adapter-short-text-only": 1}
COMMON = {  # every run: 4 tasks at once (one for the pre-training), scored afterwards by `vl evaluate`
    "seed": 0, "workers": 0, "device": "auto", "dropout": 0.0, "val_every": 0,
    "data": {"visual_pool": 3, "max_text_tokens": 160}, "optim": {"lr": 1e-3, "warmup_ratio": 0.05},
    "lora": {"rank": 16}, "prompt": {"length": 10, "mid_dim": 128},
}
# prompt tuning wants larger steps than the rest (Lester et al. 2021 tuned prompts at lr 0.3); the
# video adapter's 12 short epochs (42 steps each) learn the multiple choice at lr 2e-3: TVQA / How2QA
# val 37.3 / 49.5 against 31.4 / 33.3 at 1e-3 on the same world and pre-training (docs/benchmarks.md)
EXTRA = {"image-prompt": {"optim": {**COMMON["optim"], "lr": 1e-2}},
         "video-adapter": {"optim": {**COMMON["optim"], "lr": 2e-3}}}
# 20 extra tokens: 10 <extra_id_k> sentinels for vl_lm's spans (a demo caption has at most 3) and
# 10 <vis_extra_id_k> (unused by packed visual inputs); VL-BART adds 200
PRETRAIN = {"backbone": "demo-t5", "init": "random", "method": "full", "extra_tokens": 20}
IMAGE_EXTRACT = ("--layer", "grid")
# Video frames as grids pooled to 3x3 (9 tokens a frame, like a picture): one pooled vector a
# frame of this random encoder keeps little of a small moving shape (a linear probe tells its
# direction 41% of the time, its grid 100%).
VIDEO_GRID = ("--layer", "grid", "--pool", "3", "--fps", "1")
# Per task, beyond the defaults: NLVR2 decided between true and false as the reference did; the
# multiple-choice answer written as the choice's text and ranked among the choices (the paper's
# label "a2" asks the small T5 to point from a label to a choice, which it does not learn here:
# 21.6 / 27.3 on TVQA / How2QA val with labels, 47.6 / 47.5 with texts; docs/benchmarks.md).
TASK_OPTIONS = {"nlvr2": {"decision": "rank"}, "tvqa": {"answer": "text", "decision": "rank"},
                "how2qa": {"answer": "text", "decision": "rank"}}
RECIPES = {
    "full": Recipe(images=1000, videos=600, encoder=ENCODER, image_extract=IMAGE_EXTRACT,
                   video_extract=(*VIDEO_GRID, "--max-frames", "16"), train=COMMON,
                   pretrain_epochs=3, runs=RUNS, extra=EXTRA,
                   epochs={name: SHORT_EPOCHS.get(name, 12 if kind == "video" else 2) for name, _, kind in RUNS}),
    "quick": Recipe(images=48, videos=6, encoder=ENCODER, image_extract=IMAGE_EXTRACT,
                    video_extract=(*VIDEO_GRID, "--max-frames", "8"),
                    train=COMMON, pretrain_epochs=1, epochs={name: 1 for name, _, _ in RUNS}, runs=RUNS, extra=EXTRA),
    # the smallest world there is, for the end-to-end test (hidden option --size tiny)
    "tiny": Recipe(images=8, videos=6, encoder=ENCODER, image_extract=IMAGE_EXTRACT,
                   video_extract=(*VIDEO_GRID, "--max-frames", "4"),
                   train=COMMON, pretrain_epochs=1, epochs={name: 1 for name, _, _ in RUNS}, runs=RUNS, extra=EXTRA),
}


def run_vl(args: list[str], cwd: Path | None = None) -> None:
    """Print `vl ARGS` (as a shell line) and run it in this process; a failure stops the demo."""
    from vl.shared.cli import cli

    where = f"(cd {shlex.quote(str(cwd))} && " if cwd else ""
    click.secho(f"\n$ {where}vl {shlex.join(args)}{')' if cwd else ''}", fg="cyan")
    started = time.perf_counter()
    old = Path.cwd()
    try:
        if cwd:
            os.chdir(cwd)
        try:
            code = cli.main(args=args, prog_name="vl", standalone_mode=False)  # an error returns 1, said above
        except click.ClickException as e:
            raise VLError(f"the demo stopped: `vl {shlex.join(args)}`: {e.format_message()}") from None
        if code in (130, 143):  # stopped by SIGINT / SIGTERM: the command said what it kept
            raise SystemExit(code)
        if code not in (0, None):
            raise VLError(f"the demo stopped: `vl {shlex.join(args)}` failed (exit {code}); fix what it said and "
                          "rerun the demo (finished steps are reused)")
        click.secho(f"  ({time.perf_counter() - started:.1f} s)", dim=True)
    finally:
        os.chdir(old)


def majority_baseline(train_manifest: Path, val_manifest: Path) -> tuple[str, float]:
    """The VQA accuracy (0-100) on val of always answering the most frequent train answer."""
    from vl.evaluate.metrics import score
    from vl.shared.answers import normalize_vqa_answer
    from vl.shared.manifest import DatasetManifest

    train = DatasetManifest.read(train_manifest).examples
    counts = Counter(normalize_vqa_answer(a) for ex in train for a in ex["answers"])
    answer = counts.most_common(1)[0][0]
    val = DatasetManifest.read(val_manifest).examples
    return answer, score("vqa_accuracy", {ex["id"]: answer for ex in val}, val)["overall"]


# VL-T5's pre-training tasks that grid features allow: on the world's train captions span prediction
# (vl_lm), image-text matching (itm) and captioning, and its QA tasks on the VQA and GQA train
# questions (VL-T5 pre-trained on both train sets). Text-only keeps what a language model can learn
# from the caption texts alone: vl_lm and caption with the image blank (no itm: no text decides it).
VL_PRETRAIN_TASKS, TEXT_PRETRAIN_TASKS = ("vl_lm", "itm", "caption", "vqa", "gqa"), ("vl_lm", "caption")


def pretrain_tasks(world: Path, store: Path, text_only: bool) -> list[dict]:
    """The pre-training's tasks on train manifests (no validation: the runs after it are scored).
    V&L: with their images. Text-only: read from a store whose every feature is zero, so that the
    model learns the caption texts and nothing from the images."""
    stem = dict(IMAGE_TASKS)
    manifests = world / "manifests"
    return [{"name": name, "train_manifest": str(manifests / f"{stem.get(name, stem['caption'])}_train.jsonl"),
             "val_manifest": None, "store": str(store), "batch_size": 32}
            for name in (TEXT_PRETRAIN_TASKS if text_only else VL_PRETRAIN_TASKS)]


def pretrain_config(recipe: Recipe, world: Path, store: Path, run_dir: Path, text_only: bool = False,
                    tokenizer: Path | None = None) -> dict:
    """The settings of a pre-training run, from random weights. Without `tokenizer` (a run whose
    tokenizer to use) it trains one on every task's train texts, so that every run after it can
    share it (init_from needs one vocabulary)."""
    vocab = ({"tokenizer": str(tokenizer_dir(tokenizer))} if tokenizer else {
        "tokenizer_vocab_size": 1000,
        "tokenizer_manifests": [str(world / "manifests" / f"{stem}_train.jsonl") for _, stem in IMAGE_TASKS + VIDEO_TASKS]})
    return {**recipe.train, **PRETRAIN, **vocab, "run_dir": str(run_dir), "epochs": recipe.pretrain_epochs,
            "tasks": pretrain_tasks(world, store, text_only)}


def merged(base: dict, extra: dict) -> dict:
    """base with extra laid over it, nested dicts merged key by key."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def pretrain_both(recipe: Recipe, world: Path, image_store: Path, runs: Path, configs: Path,
                  echo: Callable[[str], Any], settings: dict | None = None) -> tuple[Path, Path]:
    """The two pre-trainings of the same random T5 on one tokenizer: V&L (it trains the tokenizer),
    then text-only on a blank copy of the image store. `settings`: laid over both configs
    (bench/fidelity_demo.py's variants). Returns (V&L run, text-only run)."""
    settings = settings or {}
    vl_run, text_run = runs / VL_PRETRAIN, runs / TEXT_PRETRAIN
    config = merged(pretrain_config(recipe, world, image_store, vl_run), settings)
    train_once(vl_run, write_config(configs / f"{VL_PRETRAIN}.yaml", config), recipe.pretrain_epochs)
    blank_store = image_store.with_name(f"{image_store.stem}_blank{image_store.suffix}")
    write_blank_store(image_store, blank_store, echo)
    config = merged(pretrain_config(recipe, world, blank_store, text_run, text_only=True, tokenizer=vl_run), settings)
    train_once(text_run, write_config(configs / f"{TEXT_PRETRAIN}.yaml", config), recipe.pretrain_epochs)
    return vl_run, text_run


def write_blank_store(store: Path, out: Path, echo: Callable[[str], Any]) -> None:
    """`out`: a copy of the image store `store` with every feature zero (same ids, shapes and
    dtype), for the text-only pre-training; its provenance is the store's, marked blank in its
    `features` section, so that it never passes for real features. Kept while it covers `store`.
    (A copy, not a `vl.extract` store builder: vl.evaluate does not import the extraction stage.)"""
    import shutil

    import h5py

    from vl.shared import FeatureStore

    with FeatureStore(store) as src:
        if out.is_file() and set(FeatureStore(out).ids) >= set(src.ids):
            return
    echo(f"\nThe text-only pre-training's visual input: {out}, the items of {store.name} with every value zero")
    with atomic_path(out) as tmp:
        shutil.copyfile(store, tmp)
        with h5py.File(tmp, "r+") as f:
            for features in f["features"].values():
                features[...] = 0
            provenance = json.loads(f.attrs["provenance"])
            provenance["features"] = {**provenance.get("features", {}), "blank": "every value zero (text-only)"}
            f.attrs["provenance"] = json.dumps(provenance, sort_keys=True)


def pretrain_effect(runs: Path) -> dict[str, tuple[float, float]]:
    """{task: (val score of the adapter from the V&L pre-training, from the text-only one)}."""
    vl_run, text_run, tasks = PRETRAIN_EFFECT
    def score(run: str, task: str) -> float:
        return json.loads(eval_scores_path(runs / run, "val", task).read_text())["scores"]["overall"]

    return {task: (score(vl_run, task), score(text_run, task)) for task in tasks}


def append_effect_section(report_md: Path, effect: dict[str, tuple[float, float]]) -> None:
    """Add the V&L-vs-text-only comparison to the report `vl report` wrote (rewritten each demo run)."""
    vl_run, text_run, _ = PRETRAIN_EFFECT
    rows = [f"| {task} | {vl:.2f} | {text:.2f} | {vl - text:+.2f} |" for task, (vl, text) in effect.items()]
    section = ("\n## The effect of V&L pre-training on the single adapter (val)\n\n"
               f"`{vl_run}` starts from the pre-training on the train captions and questions with their images "
               f"(`{VL_PRETRAIN}`), `{text_run}` from the one on the same captions, as many passes over them, "
               f"with blank visual inputs (`{TEXT_PRETRAIN}`: what a text-only model learns from those texts); "
               "both then train the same single adapter on the same tasks for as many epochs.\n\n"
               f"| task | from V&L pre-training | from text-only | difference |\n|---|---:|---:|---:|\n"
               + "\n".join(rows) + "\n")
    write_text_atomic(report_md, report_md.read_text(encoding="utf-8").rstrip("\n") + "\n" + section)


def task_entries(kind: str, world: Path, store: Path, batch_size: int) -> list[dict]:
    tasks = IMAGE_TASKS if kind == "image" else VIDEO_TASKS
    return [{"name": name, "train_manifest": str(world / "manifests" / f"{stem}_train.jsonl"),
             "val_manifest": str(world / "manifests" / f"{stem}_val.jsonl"), "store": str(store),
             "batch_size": batch_size, **TASK_OPTIONS.get(name, {})} for name, stem in tasks]


def write_config(path: Path, settings: dict) -> Path:
    write_text_atomic(path, json.dumps(settings, indent=2) + "\n")  # JSON is YAML
    return path


def train_once(run_dir: Path, config: Path, epochs: int) -> None:
    """`vl train -c config`, or `--resume` a stopped run, or nothing for a finished one."""
    if run_done(run_dir, epochs):
        return
    if has_checkpoint(run_dir, LAST):
        run_vl(["train", "--resume", str(run_dir)])
    elif not run_dir.exists() or not any(run_dir.iterdir()):
        run_vl(["train", "-c", str(config)])
    else:
        raise VLError(f"{run_dir} holds an unfinished run without a checkpoint: remove it and rerun the demo")


def run_done(run_dir: Path, epochs: int) -> bool:
    if not has_checkpoint(run_dir, LAST) or not metrics_path(run_dir).is_file():
        return False
    records = read_metrics(run_dir)
    return bool(records) and records[-1].get("epoch") == epochs


def run_demo(out: Path, size: str = "full", echo: Callable[[str], Any] = click.echo) -> Path:
    """Run every step into `out` with the recipe `size` (full, quick, tiny); returns the report folder."""
    recipe, quick = RECIPES[size], size != "full"
    out = out.resolve()
    world, features, runs, configs = out / "world", out / "features", out / "runs", out / "configs"
    started = time.perf_counter()
    echo(f"vl demo{' --quick' if quick else ''}: the whole pipeline on the synthetic shapes world, in {out}\n"
         "Nothing is downloaded: the encoder and the T5 start from random weights (the T5 is pre-trained on the "
         "world's captions and questions first, and once more blind, for comparison), so the scores show the "
         "pipeline working, not the paper's results.\n")

    # 1. the world and its manifests
    if not (world / "ground_truth.json").is_file():
        run_vl(["data", "demo", "--out", str(world), "--images", str(recipe.images), "--videos", str(recipe.videos)])
    for script in ("convert.sh", "convert_val.sh"):  # the world's own scripts: one `vl data convert` a line
        for line in (world / script).read_text(encoding="utf-8").splitlines():
            if line.startswith("vl "):
                command = shlex.split(line)[1:]
                if not (world / command[-1]).is_file():
                    run_vl(command, cwd=world)

    # 2. features: one store for all images, one for all videos, from one small random CLIP encoder
    encoder = out / "models" / "demo-clip.json"
    if not encoder.is_file():
        write_text_atomic(encoder, json.dumps(recipe.encoder, indent=2) + "\n")
    model_args = ["--model-config", str(encoder), "--pretrained", "none", "--seed", "0"]
    image_store, video_store = features / "demo_images.h5", features / "demo_videos.h5"
    for kind, tasks, store, extra in (("images", IMAGE_TASKS, image_store, recipe.image_extract),
                                      ("videos", VIDEO_TASKS, video_store, recipe.video_extract)):
        for _, stem in tasks:
            for split in ("train", "val"):
                run_vl(["extract", kind, "--manifest", str(world / "manifests" / f"{stem}_{split}.jsonl"),
                        "--out", str(store), *model_args, *extra])

    # 3. two pre-trainings of the same random T5 on one tokenizer: V&L (the train captions and
    #    questions with their images, as VL-T5 was pre-trained before the paper's methods were
    #    compared on it) and text-only (the captions with every visual token blanked, as T5/BART)
    echo("\nPre-training: the small T5 starts from random weights and first learns the world's train captions "
         "with their images and its VQA and GQA train questions (span prediction, image-text matching, "
         "captioning, QA: a stand-in for VL-T5's V&L pre-training); every run below starts from it (init_from). "
         "A second pre-training sees the same caption texts, as often, with blank visual inputs (span prediction "
         "and captioning: a stand-in for text-only T5/BART); a short single adapter from each of the two shows "
         "what V&L pre-training gives the adapter.")
    pretrain_both(recipe, world, image_store, runs, configs, echo)

    # 4. the compared runs, each evaluated on val
    for name, method, kind in recipe.runs:
        store = image_store if kind == "image" else video_store
        cfg = {**recipe.train, "init_from": str(runs / STARTS.get(name, VL_PRETRAIN)), "run_dir": str(runs / name),
               "method": method, "epochs": recipe.epochs[name], "tasks": task_entries(kind, world, store, 32),
               **recipe.extra.get(name, {})}
        train_once(runs / name, write_config(configs / f"{name}.yaml", cfg), recipe.epochs[name])
        first_task = (IMAGE_TASKS if kind == "image" else VIDEO_TASKS)[0][0]
        if not eval_scores_path(runs / name, "val", first_task).is_file():
            run_vl(["evaluate", "--run", str(runs / name), "--split", "val", "--checkpoint", "last"])

    # 5. the report, with the majority baseline beside it
    report = out / "report"
    run_vl(["report", *[str(runs / name) for name, _, _ in recipe.runs], "--out", str(report), "--split", "val"])
    answer, baseline = majority_baseline(world / "manifests" / "vqa2_train.jsonl", world / "manifests" / "vqa2_val.jsonl")
    vqa = {name: json.loads(eval_scores_path(runs / name, "val", "vqa").read_text())["scores"]["overall"]
           for name, _, kind in recipe.runs if kind == "image"}
    echo(f"\nVQA val accuracy: {', '.join(f'{name} {score:.2f}' for name, score in vqa.items())}; "
         f"majority baseline (always answering {answer!r}): {baseline:.2f}")
    effect = pretrain_effect(runs)
    echo(f"V&L pre-training vs text-only, the single adapter on val ({PRETRAIN_EFFECT[0]} vs {PRETRAIN_EFFECT[1]}): "
         + ", ".join(f"{task.upper()} {vl:.2f} vs {text:.2f} ({vl - text:+.2f})" for task, (vl, text) in effect.items()))
    append_effect_section(report / "report.md", effect)
    if quick:
        echo("(--quick trains one short epoch on a small world, too little to learn: expect scores near zero, "
             "and no telling the two pre-trainings apart. The full demo, `vl demo`, shows the methods learning "
             "and the V&L start ahead.)")
    echo(f"done in {time.perf_counter() - started:.0f} s. Everything is in {out}:\n"
         f"  world/       the shapes world and its manifests (world/manifests/)\n"
         f"  features/    the feature stores (reused by every run)\n"
         f"  configs/     the training configs; runs/ the run directories (eval/val/ holds the scores)\n"
         f"  report/      report.md, report.csv, score_vs_params.png, curves.png (and .svg of both)")
    return report


@click.command("demo", epilog="""\b
Examples:
  vl demo --quick               # about 35 s on 2 CPU cores: the pipeline, tiny and short
  vl demo --out my_demo         # the full demo (about 10 minutes): shows the methods learning""",
               context_settings={"max_content_width": 100})
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("vl_demo"), show_default=True,
              help="Folder for everything the demo makes; rerunning reuses finished steps.")
@click.option("--quick", is_flag=True, help="A small world and one epoch a run: checks the whole pipeline fast.")
@click.option("--size", type=click.Choice(sorted(RECIPES)), default=None, hidden=True)  # tiny: the tests
@click.option("-q", "--quiet", is_flag=True, help="No progress bars (extraction, training, evaluation).")
def demo(out: Path, quick: bool, size: str | None, quiet: bool) -> None:
    """Run the whole pipeline offline on the synthetic shapes world: write the world,
    convert it, extract features, train full fine-tuning and PEFT methods, evaluate
    every run and report. Each step is printed as the `vl` command it runs."""
    # Every bar goes through vl.shared.progress, which TQDM_DISABLE turns off, whichever command draws it.
    with bars_off() if quiet else contextlib.nullcontext():
        run_demo(out, size or ("quick" if quick else "full"))
