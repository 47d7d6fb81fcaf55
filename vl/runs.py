"""A trained run answering questions about new images and videos, and the extraction
functions for notebooks.

    run = vl.load_run("runs/adapter")
    run.predict(image="cat.jpg", question="what color is the cat?")          # vqa, if the run has it
    run.predict(image=["left.png", "right.png"], question="one of them is red.", task="nlvr2")
    run.predict(video="clip.mp4", question="Where is she?", choices=["home", "work"])   # tvqa / how2qa
    run.predict_manifest("new.jsonl", media_root="media/")     # {example id: prediction}

No feature store is needed: the media are encoded with the CLIP encoder the run's
features came from, rebuilt from the provenance that run.json recorded for the task's
store (model, weights, preprocessing, layer, pooling, frame sampling). The new features
go through `vl extract`'s own pipeline into a temporary store, and their provenance must
equal the recorded one field for field (the compute precision aside, on a CPU where the
run's fp16 cannot run), so a prediction never reads features of another encoder. The
examples then take the path `vl evaluate` takes (TaskData, TaskDataset, the task's
decoding or ranking).
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from vl.shared.errors import VLError, collect_or_raise
from vl.shared.media import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

PathLike = str | os.PathLike


# -- the encoder a run's features came from ----------------------------------------------------

@dataclass
class EncoderRecipe:
    """How to make features like a task's store: the encoder, the stored dtype, and (videos)
    the frame sampling; `settings` is what run.json recorded, to compare with."""

    spec: Any  # vl.extract.encoder.EncoderSpec
    dtype: str
    sampling: Any | None  # vl.extract.video_decode.SamplingPolicy for videos
    settings: dict
    notes: list[str]  # what differs on purpose (e.g. fp32 on a CPU for a store made in fp16)


def encoder_recipe(settings: dict, store: str, device: str, model_config: PathLike | None = None,
                   pretrained: PathLike | None = None) -> EncoderRecipe:
    """The EncoderSpec (and store dtype, frame sampling) that makes features as recorded in
    `settings` (a store's {encoder, preprocess, features} from run.json); `store` names it in
    errors. `model_config` / `pretrained`: a custom architecture JSON or a checkpoint file
    the provenance names but that is not at its recorded place any more."""
    from vl.extract.encoder import EncoderSpec
    from vl.extract.video_decode import SamplingPolicy
    from vl.shared.devices import pick_device

    enc, pre, feat = settings.get("encoder") or {}, settings.get("preprocess") or {}, settings.get("features") or {}
    if enc.get("library") != "open_clip":
        raise VLError(f"the run's features for store {store} were not made by `vl extract` from an open_clip model "
                      f"(encoder: {json.dumps(enc, sort_keys=True)[:200]}), so vl cannot make features like them for "
                      "new media", hint="Predict on media of that store with `vl evaluate --run RUN --manifest "
                                        "TASK=M.jsonl`, or train a run on features made by `vl extract`.")
    weights, notes = enc.get("weights") or {}, []
    source = weights.get("source")
    seed = 0
    if source == "tag":
        chosen = weights["tag"]
    elif source == "file":
        chosen = str(pretrained) if pretrained is not None else weights.get("path")
        if not chosen or not Path(chosen).is_file():
            raise VLError(f"the CLIP checkpoint the run's features for store {store} came from, {weights.get('path')} "
                          f"(sha256 {str(weights.get('sha256'))[:12]}...), is not there",
                          hint="Pass that file with --pretrained FILE (Python: load_run(..., pretrained=FILE)).")
    elif source == "random":
        chosen, seed = None, int(weights.get("seed", 0))
    elif source in ("hf-hub", "local-dir"):
        chosen = None
    else:
        raise VLError(f"store {store}: the recorded encoder weights {weights!r} name no source vl can load again")
    config_file = None
    if enc.get("model_config_sha256"):  # a custom architecture file named the model
        if model_config is not None:
            config_file = str(model_config)
        elif enc.get("architecture"):
            config_file = _architecture_file(enc["model"], enc["architecture"])
        else:
            raise VLError(f"the run's features for store {store} were made with a custom open_clip architecture file "
                          f"({enc['model']}.json, sha256 {enc['model_config_sha256'][:12]}...) that the provenance does "
                          "not hold", hint="Pass that file with --model-config FILE (Python: load_run(..., "
                                           "model_config=FILE)).")
    precision = feat.get("precision", "fp32")
    if precision == "fp16" and pick_device(device).type == "cpu":
        notes.append("the run's features were computed in fp16 on a GPU; on this CPU they are computed in fp32 "
                     "(the same weights, differences at fp16 rounding)")
        precision = "fp32"
    spec = EncoderSpec(model=enc["model"], pretrained=chosen, model_config=config_file, layer=feat.get("layer", "grid"),
                       pool=feat.get("pool"), resize=pre.get("resize_mode", "model"), precision=precision,
                       device=device, seed=seed)
    sampling = None
    if "sampling" in pre:
        s = pre["sampling"]
        sampling = SamplingPolicy(fps=s.get("fps") if s.get("mode") == "fps" else None, frames=s.get("frames"),
                                  max_frames=s.get("max_frames", 64))
    return EncoderRecipe(spec, feat.get("dtype", "float16"), sampling, settings, notes)


_ARCH_DIR: tempfile.TemporaryDirectory | None = None


def _architecture_file(model: str, architecture: dict) -> str:
    """The recorded architecture as `<model>.json` in a folder that lives as long as the
    process (open_clip names the model after the file)."""
    global _ARCH_DIR
    if _ARCH_DIR is None:
        _ARCH_DIR = tempfile.TemporaryDirectory(prefix="vl-arch-")
    path = Path(_ARCH_DIR.name) / f"{model}.json"
    path.write_text(json.dumps(architecture), encoding="utf-8")
    return str(path)


def provenance_differences(have: dict, recorded: dict, recipe: EncoderRecipe) -> list[str]:
    """Fields where features just made (`have`, a store's settings) differ from the run's
    (`recorded`), as sentences; allowed on purpose: the precision a CPU substitutes, and the
    file path / file digest of a checkpoint or architecture file whose content digest matches."""
    from vl.extract.store_builder import NOT_COMPARED
    from vl.shared.feature_store import settings_differences

    allowed = set(NOT_COMPARED) | ({"features.precision"} if recipe.notes else set())  # a moved checkpoint: sha256 decides
    enc_have, enc_rec = have.get("encoder") or {}, recorded.get("encoder") or {}
    if enc_have.get("architecture_digest") == enc_rec.get("architecture_digest"):
        allowed |= {"encoder.model_config_sha256", "encoder.architecture"}
    return [f"{field}: the run's features have {old!r}, these would have {new!r}"
            for field, new, old in settings_differences(have, recorded) if field not in allowed]


# -- a run, loaded once, answering again and again ------------------------------------------------

MEDIA_KIND_EXTENSIONS = {"image": IMAGE_EXTENSIONS, "video": VIDEO_EXTENSIONS}


class Run:
    """A trained run in memory (model, tokenizer, config) that predicts on new media; made by
    `vl.load_run`. The CLIP encoder of each task's store is built on first use and kept."""

    def __init__(self, run_dir: PathLike, checkpoint: str | None = None, device: str = "auto",
                 model_config: PathLike | None = None, pretrained: PathLike | None = None, progress: bool = False):
        from vl.shared.devices import pick_device
        from vl.shared.run_dir import read_run_json
        from vl.train.build import load_trained

        self.trained = load_trained(run_dir, checkpoint, pick_device(device))
        self.run_dir, self.cfg = self.trained.run_dir, self.trained.cfg
        self.device = str(self.trained.model.backbone.device)
        self.model_config, self.pretrained, self.progress = model_config, pretrained, progress
        self.stores = read_run_json(self.run_dir).get("feature_stores") or {}
        self._encoders: dict[str, Any] = {}  # recipe key -> LoadedEncoder
        self.notes: list[str] = []

    def __repr__(self) -> str:
        return (f"vl.Run({str(self.run_dir)!r}, method={self.cfg.method!r}, tasks={self.tasks}, "
                f"checkpoint={self.trained.checkpoint!r})")

    @property
    def tasks(self) -> list[str]:
        return [t.name for t in self.cfg.tasks]

    # -- which task --

    def choose_task(self, task: str | None, media_kind: str, has_choices: bool = False,
                    two_images: bool = False) -> str:
        """`task`, checked against the run; None: the run's only task that takes this input."""
        from vl.train.tasks import MultipleChoiceQA, get_task

        if task is not None:
            if task not in self.tasks:
                raise VLError(f"task {task!r} is not one of this run's tasks ({', '.join(self.tasks)})")
            if get_task(task).media_kind != media_kind:
                raise VLError(f"task {task} reads {get_task(task).media_kind}s, but {media_kind} input was given")
            return task
        fits = [t for t in self.tasks if get_task(t).media_kind == media_kind
                and (not has_choices or isinstance(get_task(t), MultipleChoiceQA))
                and (not two_images or t == "nlvr2")]
        if len(fits) == 1:
            return fits[0]
        if not fits:
            raise VLError(f"this run ({', '.join(self.tasks)}) has no task that reads {media_kind}s"
                          + (" with choices" if has_choices else ""))
        raise VLError(f"this run has several tasks that take this input ({', '.join(fits)}): say which with "
                      f"--task (Python: task=...)")

    # -- features --

    def recipe(self, task: str) -> EncoderRecipe:
        from vl.shared.run_dir import recorded_store
        from vl.train.tasks import get_task

        store = str(next(t for t in self.cfg.tasks if t.name == task).store)
        entry = recorded_store(self.run_dir, store, get_task(task).media_kind == "video")
        if entry is None:
            raise VLError(f"{self.run_dir}/run.json records no feature store {store} for task {task} (it records: "
                          f"{', '.join(self.stores) or 'none'}), so the encoder to rebuild is unknown")
        return encoder_recipe(entry.get("settings") or {}, store, self.device, self.model_config, self.pretrained)

    def _encoder(self, recipe: EncoderRecipe):
        from vl.extract.encoder import load_encoder

        key = json.dumps([recipe.settings, recipe.spec.precision], sort_keys=True)
        if key not in self._encoders:
            self._encoders[key] = load_encoder(recipe.spec)
        return self._encoders[key]

    def features(self, task: str, inputs: Sequence[Any], out: Path):
        """Encode `inputs` (MediaInput) for `task` into the store `out`, as the run's store was
        made; refuses when the provenance would differ. Returns the FeatureStore."""
        from vl.extract.images import extract_images
        from vl.extract.pipeline import ExtractOptions
        from vl.extract.videos import extract_videos
        from vl.shared.feature_store import FeatureStore, store_settings

        recipe = self.recipe(task)
        encoder = self._encoder(recipe)
        opts = ExtractOptions(out=out, workers=0, dtype=recipe.dtype, progress=self.progress)
        if recipe.sampling is not None:
            extract_videos(list(inputs), recipe.spec, opts, recipe.sampling, encoder=encoder)
        else:
            extract_images(list(inputs), recipe.spec, opts, encoder=encoder)
        store = FeatureStore(out)
        problems = provenance_differences(store_settings(store.provenance), recipe.settings, recipe)
        collect_or_raise(problems, hint="The run's encoder could not be rebuilt as it was: pass the files it used "
                                        "(--model-config, --pretrained), or use the vl version that made the store.")
        for note in recipe.notes:
            if note not in self.notes:
                self.notes.append(note)
        return store

    # -- predictions --

    def predict_examples(self, task: str, examples: list[dict], inputs: Sequence[Any],
                         batch_size: int | None = None) -> tuple[dict[str, Any], list[dict]]:
        """({example id: prediction as the metric takes it}, failed media) for `examples` of
        `task` whose media are `inputs`; examples whose media failed are left out."""
        from vl.shared.devices import amp_dtype, autocast
        from vl.shared.manifest import DatasetManifest
        from vl.train.data import TaskData, TaskDataset
        from vl.train.predict import generate_predictions

        spec = next(t for t in self.cfg.tasks if t.name == task)
        with tempfile.TemporaryDirectory(prefix="vl-predict-") as tmp:
            store = self.features(task, inputs, Path(tmp) / "features.h5")
            failed = {f["id"]: f for f in store.failures}
            keep = [ex for ex in examples if not failed.keys() & set(ex["media"])]
            if not keep:
                return {}, list(failed.values())
            examples_done = [_with_duration(ex, store) for ex in keep]
            manifest = DatasetManifest(path=Path(tmp) / "predict.jsonl", examples=examples_done, meta=None)
            data = TaskData(task, examples_done[0]["split"], manifest, store, self.cfg.data, spec)
            data.check_media(skip_missing=False)
            ds = TaskDataset(data, self.trained.tokenizer, seed=self.cfg.seed, predict=True)
            model = self.trained.model
            on_gpu = model.backbone.device.type == "cuda"
            dtype = amp_dtype(self.cfg.precision) if on_gpu else None
            predictions = generate_predictions(model, ds, self.trained.tokenizer, model.backbone.device,
                                               batch_size or self.cfg.val_batch_size,
                                               lambda: autocast(model.backbone.device, dtype), progress=self.progress)
            store.close()
        return predictions, list(failed.values())

    def predict(self, image: PathLike | Sequence[PathLike] | None = None, *, video: PathLike | None = None,
                question: str | None = None, choices: Sequence[str] | None = None,
                subtitles: Sequence[dict] | None = None, span: tuple[float, float] | None = None,
                task: str | None = None) -> Any:
        """The run's answer for one image (two for NLVR2) or one video.

        question: the question (VQA, GQA, TVQA, How2QA) or the statement (NLVR2); none for
        captions. choices: a multiple-choice question's answers (TVQA, How2QA); the result is
        then the chosen choice's text. subtitles: [{start, end, text}] of the video; span:
        the (start, end) seconds the question is about (default: the whole video). task:
        which of the run's tasks; by default the only one that takes this input."""
        from vl.train.tasks import MultipleChoiceQA, get_task

        if (image is None) == (video is None):
            raise VLError("give an image (or two, for NLVR2) or a video")
        media = [video] if video is not None else ([image] if isinstance(image, (str, os.PathLike)) else list(image))
        kind = "video" if video is not None else "image"
        task = self.choose_task(task, kind, has_choices=bool(choices), two_images=len(media) == 2)
        inputs = _media_inputs(kind, [Path(m) for m in media])
        example = query_example(task, [x.id for x in inputs], question, choices, subtitles, span)
        predictions, failed = self.predict_examples(task, [example], inputs, batch_size=1)
        if failed:
            f = failed[0]
            raise VLError(f"{f.get('path', f['id'])}: {f['reason']}", hint=f"Give a readable {kind} file.")
        value = predictions[example["id"]]
        if isinstance(get_task(task), MultipleChoiceQA):
            return example["choices"][value] if isinstance(value, int) and 0 <= value < len(choices) else value
        return value

    def predict_manifest(self, manifest: PathLike, media_root: PathLike | None = None,
                         tasks: Sequence[str] | None = None, batch_size: int | None = None) -> dict[str, dict]:
        """Every example of `manifest` (of the run's tasks, or those in `tasks`), its media found
        under `media_root` (default: the root the manifest's meta records):
        {example id: {"task", "prediction"} or {"task", "error"} when its media failed}."""
        from vl.extract.inputs import from_manifest
        from vl.shared.manifest import DatasetManifest
        from vl.train.tasks import get_task

        data = DatasetManifest.read(manifest)
        chosen = list(tasks) if tasks else self.tasks
        collect_or_raise([f"task {t!r} is not one of this run's tasks ({', '.join(self.tasks)})"
                          for t in chosen if t not in self.tasks])
        by_task: dict[str, list[dict]] = {}
        for ex in data.examples:
            if ex["task"] in chosen:
                by_task.setdefault(ex["task"], []).append(ex)
        if not by_task:
            raise VLError(f"manifest {manifest} has no examples of {', '.join(chosen)} (it holds: "
                          f"{', '.join(sorted(data.counts()))})")
        out: dict[str, dict] = {}
        for task, examples in by_task.items():
            kind = get_task(task).media_kind
            wanted = {m for ex in examples for m in ex["media"]}
            extensions = MEDIA_KIND_EXTENSIONS[kind]
            inputs = [x for x in from_manifest(manifest, media_root, extensions) if x.id in wanted]
            predictions, failed = self.predict_examples(task, examples, inputs, batch_size)
            reasons = {f["id"]: f["reason"] for f in failed}
            for ex in examples:
                if ex["id"] in predictions:
                    out[ex["id"]] = {"task": task, "prediction": predictions[ex["id"]]}
                else:
                    bad = next(m for m in ex["media"] if m in reasons)
                    out[ex["id"]] = {"task": task, "error": f"media {bad}: {reasons[bad]}"}
        return out


def load_run(run_dir: PathLike, checkpoint: str | None = None, device: str = "auto",
             model_config: PathLike | None = None, pretrained: PathLike | None = None,
             progress: bool = False) -> Run:
    """A trained run, ready to `predict` on new media (see `Run`). checkpoint: best or last
    (default: the run's eval_checkpoint); model_config / pretrained: the encoder's files, when
    the run's features came from a custom architecture or checkpoint file that has moved."""
    return Run(run_dir, checkpoint, device, model_config, pretrained, progress)


# -- one question as a manifest example -----------------------------------------------------------

def query_example(task: str, media: list[str], question: str | None, choices: Sequence[str] | None,
                  subtitles: Sequence[dict] | None, span: tuple[float, float] | None) -> dict:
    """The manifest example (docs/manifests.md) of one question about `media` (media ids)."""
    from vl.shared.manifest import validate_example
    from vl.train.tasks import MultipleChoiceQA, get_task

    t = get_task(task)
    ex: dict[str, Any] = {"id": "query", "task": task, "split": "predict", "media": media}
    needs_question = "question" in t.inputs or "sentence" in t.inputs
    problems = []
    if needs_question and not question:
        problems.append(f"task {task} needs a question" + (" (NLVR2: the statement about the two images)"
                                                            if task == "nlvr2" else ""))
    if not needs_question and question:
        problems.append(f"task {task} takes no question (it describes the {t.media_kind})")
    if isinstance(t, MultipleChoiceQA) and not choices:
        problems.append(f"task {task} is multiple choice: give the choices (--choice A --choice B ...)")
    if choices and not isinstance(t, MultipleChoiceQA):
        problems.append(f"task {task} is not multiple choice: drop the choices")
    if task == "nlvr2" and len(media) != 2:
        problems.append(f"task nlvr2 reads two images (left, right); got {len(media)}")
    elif task != "nlvr2" and len(media) != 1:
        problems.append(f"task {task} reads one {t.media_kind}; got {len(media)}")
    collect_or_raise(problems)
    if "sentence" in t.inputs:
        ex["sentence"] = question
    elif needs_question:
        ex["question"] = question
    if isinstance(t, MultipleChoiceQA):
        ex["choices"] = list(choices)
    if t.media_kind == "video":
        ex["ts"] = list(span) if span else None
        ex["subtitles"] = [dict(s) for s in subtitles or []]
        if not isinstance(t, MultipleChoiceQA):
            ex["duration"] = None
    collect_or_raise(validate_example(ex, where="the question", has_answers=False)
                     + t.problems(ex, need_gold=False))
    return ex


def _with_duration(example: dict, store) -> dict:
    """A video caption example without a span gets the whole video, [0, duration]."""
    if example.get("task") in ("tvc", "yc2c") and not example.get("ts") and store.layout == "frames":
        duration = float(store.duration(example["media"][0]))
        return {**example, "ts": [0.0, duration], "duration": duration}
    return example


def _media_inputs(kind: str, paths: Sequence[Path]) -> list[Any]:
    """MediaInput for the files of one question, named `image1`, `image2` (or `video1`)."""
    from vl.extract.inputs import MediaInput

    collect_or_raise([f"{p}: no such file" for p in paths if not p.is_file()])
    return [MediaInput(f"{kind}{i}", str(p)) for i, p in enumerate(paths, 1)]


# -- extraction from Python ----------------------------------------------------------------------

def _inputs(kind: str, media: PathLike | Sequence[PathLike] | None, list_file: PathLike | None,
            manifest: PathLike | None, media_root: PathLike | None, id_from: str, input_format: str,
            timeout: float, retries: int) -> tuple[list[Any], dict]:
    """As the command reads them (vl.extract.collect), plus a Python list of files (ids: their
    names without extension)."""
    from vl.extract import inputs as inp
    from vl.extract.collect import collect_inputs

    if media is not None and not isinstance(media, (str, os.PathLike)):
        if list_file is not None or manifest is not None:
            raise VLError(f"give exactly one of {kind} (a folder or a list of files), list_file or manifest")
        files = [Path(m) for m in media]
        items = inp.check_unique([inp.MediaInput(p.stem, str(p)) for p in files], id_from="stem")
        return items, {kind: [str(p) for p in files], "input_format": "files"}
    return collect_inputs(kind, media, list_file, manifest, media_root, id_from, input_format, timeout, retries)


def _extract(kind: str, media, out: PathLike, *, list_file, manifest, media_root, id_from, model, pretrained,
             model_config, layer, pool, resize, precision, device, dtype, batch_size, workers, overwrite, seed,
             progress, sampling=None, input_format="files", timeout=10.0, retries=2):
    from vl.extract.decode import DEFAULT_MAX_PIXELS
    from vl.extract.encoder import EncoderSpec
    from vl.extract.images import extract_images as run_images
    from vl.extract.pipeline import ExtractOptions
    from vl.extract.sources import FetchSettings
    from vl.extract.videos import extract_videos as run_videos

    items, source = _inputs(kind, media, list_file, manifest, media_root, id_from, input_format, timeout, retries)
    spec = EncoderSpec(model=model or (Path(model_config).stem if model_config else None),
                       pretrained=None if pretrained is None or str(pretrained).lower() == "none" else str(pretrained),
                       model_config=str(model_config) if model_config else None, layer=layer, pool=pool,
                       resize=resize, precision=precision, device=device, seed=seed)
    opts = ExtractOptions(out=Path(out), batch_size=batch_size, workers=workers, dtype=dtype,
                          max_pixels=DEFAULT_MAX_PIXELS, overwrite=overwrite, progress=progress,
                          fetch=FetchSettings(timeout, retries))
    if kind == "images":
        return run_images(items, spec, opts, source)
    return run_videos(items, spec, opts, sampling, source=source)


def extract_images(images: PathLike | Sequence[PathLike] | None = None, *, out: PathLike,
                   list_file: PathLike | None = None, manifest: PathLike | None = None,
                   media_root: PathLike | None = None, id_from: str = "stem", model: str = "RN101",
                   pretrained: PathLike | None = "openai", model_config: PathLike | None = None, layer: str = "grid",
                   pool: int | None = None, resize: str = "model", precision: str = "fp32", device: str = "auto",
                   dtype: str = "float16", batch_size: int = 0, workers: int | None = None,
                   overwrite: bool = False, seed: int = 0, progress: bool = True, input_format: str = "files",
                   timeout: float = 10.0, retries: int = 2):
    """`vl extract images` from Python: CLIP features of `images` (a folder, a list of files:
    ids are their names without extension, or with input_format="webdataset" tar shards:
    a file, folder or 'shards/{00000..00009}.tar'), a `list_file` (paths or http(s) URLs,
    fetched with `timeout` and `retries`) or a `manifest`, into the store `out`; resumable
    like the command. The options are the command's (`vl extract images --help`); returns
    the ExtractSummary (counts, failures, seconds)."""
    return _extract("images", images, out, list_file=list_file, manifest=manifest, media_root=media_root,
                    id_from=id_from, model=model if model_config is None else None, pretrained=pretrained,
                    model_config=model_config, layer=layer, pool=pool, resize=resize, precision=precision,
                    device=device, dtype=dtype, batch_size=batch_size, workers=workers, overwrite=overwrite,
                    seed=seed, progress=progress, input_format=input_format, timeout=timeout, retries=retries)


def extract_videos(videos: PathLike | Sequence[PathLike] | None = None, *, out: PathLike,
                   list_file: PathLike | None = None, manifest: PathLike | None = None,
                   media_root: PathLike | None = None, id_from: str = "stem", model: str = "ViT-B-32",
                   pretrained: PathLike | None = "openai", model_config: PathLike | None = None,
                   layer: str = "pooled", pool: int | None = None, resize: str = "model", precision: str = "fp32",
                   device: str = "auto", dtype: str = "float16", batch_size: int = 0, workers: int | None = None,
                   overwrite: bool = False, seed: int = 0, fps: float | None = None, frames: int | None = None,
                   max_frames: int = 64, progress: bool = True):
    """`vl extract videos` from Python: frame features of sampled video frames (one every
    1/fps seconds, default 1.5 s as VALUE, or `frames` spread uniformly, at most
    `max_frames`) into the store `out`. Inputs and options as `extract_images`."""
    from vl.extract.video_decode import SamplingPolicy

    if fps is not None and frames is not None:
        raise VLError("give fps or frames, not both")
    sampling = SamplingPolicy(fps=None if frames else (fps or 2 / 3), frames=frames, max_frames=max_frames)
    return _extract("videos", videos, out, list_file=list_file, manifest=manifest, media_root=media_root,
                    id_from=id_from, model=model if model_config is None else None, pretrained=pretrained,
                    model_config=model_config, layer=layer, pool=pool, resize=resize, precision=precision,
                    device=device, dtype=dtype, batch_size=batch_size, workers=workers, overwrite=overwrite,
                    seed=seed, progress=progress, sampling=sampling)


__all__ = ["Run", "load_run", "extract_images", "extract_videos", "encoder_recipe", "query_example"]
