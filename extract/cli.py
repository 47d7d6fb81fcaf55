"""`vl extract`: stage 1. Thin click layer; torch is imported inside the commands."""
from __future__ import annotations

import functools
import os
import sys
import typing
from pathlib import Path

import click

from vl.shared.devices import Precision
from vl.shared.errors import VLError
from vl.shared.stopping import keep, stop_on_signals

IMAGES_EXAMPLE = """\b
Example (the paper's setting, on a GPU):
  vl extract images --images /data/coco/val2014 --model RN101 --pretrained openai \\
      --layer grid --pool 6 --batch-size 256 --workers 8 --device cuda \\
      --precision fp16 --out features/coco_val2014_rn101.h5
\b
webdataset tar shards ({key}.jpg members; the keys are the ids):
  vl extract images --input-format webdataset --images 'shards/{00000..00009}.tar' \\
      --model RN101 --pool 6 --out features/laion_rn101.h5
\b
A list of http(s) URLs (`url` or `id<TAB>url` lines), downloaded as it goes:
  vl extract images --list urls.txt --timeout 10 --retries 2 --out features/web.h5
\b
On several GPUs or machines, the same command under torchrun:
  torchrun --nproc-per-node 8 -m vl.shared.cli extract images ...
"""
VIDEOS_EXAMPLE = """\b
Example (VALUE's setting: CLIP ViT-B/32, one frame every 1.5 s, at most 64):
  vl extract videos --videos /data/tvqa/videos --model ViT-B-32 --pretrained openai \\
      --fps 0.667 --max-frames 64 --device cuda --precision fp16 \\
      --out features/tv_vitb32.h5
\b
On several GPUs or machines, the same command under torchrun:
  torchrun --nproc-per-node 8 -m vl.shared.cli extract videos ...
"""


@click.group()
def extract() -> None:
    """Stage 1: turn images and video frames into CLIP features, stored once in an HDF5
    feature store that every later experiment reuses (`from vl.shared import FeatureStore`).

    Every command resumes where it stopped and records how its features were made;
    `images` and `videos` scale out under torchrun (each rank on its own GPU, rank 0
    joins); `import` reads features someone else released (VALUE's video .npz files)."""


def _input_options(kind: str):
    """--images/--videos DIR, --list, --manifest, --media-root, --id-from."""
    what = "images" if kind == "images" else "videos"
    decorators = [
        click.option(f"--{what}", "media_dir", type=click.Path(path_type=Path),
                     help=f"Folder of {what}, searched recursively"
                          + (" (with --input-format webdataset: tar shards)." if what == "images" else ".")),
        click.option("--list", "list_file", type=click.Path(path_type=Path),
                     help="Text file with one path per line (relative to the file), or `id<TAB>path`"
                          + ("; lines may be http(s) URLs, or `id<TAB>url`." if what == "images" else ".")),
        click.option("--manifest", type=click.Path(path_type=Path),
                     help="Dataset manifest (.jsonl): extract the media ids it uses, found under --media-root."),
        click.option("--media-root", type=click.Path(path_type=Path),
                     help=f"Where the manifest's {what} are (default: the root its meta file records)."),
        click.option("--id-from", type=click.Choice(["stem", "relpath"]), default="stem", show_default=True,
                     help="Store each file under its name without extension (as COCO, GQA, NLVR2 and VALUE name "
                          "them), or its path relative to the folder without extension."),
    ]
    return lambda f: functools.reduce(lambda g, d: d(g), reversed(decorators), f)


def _model_options(default_model: str, default_layer: str, unit: str):
    decorators = [
        click.option("--out", type=click.Path(path_type=Path), required=True,
                     help="The HDF5 feature store to write or extend."),
        click.option("--model", default=None,
                     help=f"open_clip model name (default {default_model}; also RN50, RN101, ViT-B-32, "
                          "ViT-B-16-quickgelu, ...), or hf-hub:ORG/REPO / local-dir:PATH."),
        click.option("--pretrained", default="openai", show_default=True,
                     help="open_clip pretrained tag (openai, laion2b_s34b_b79k, ...), a local checkpoint file, "
                          "or `none` for random weights (seeded by --seed)."),
        click.option("--model-config", type=click.Path(path_type=Path),
                     help="open_clip model JSON for a custom architecture; its file name (without .json) is "
                          "the model name."),
        click.option("--layer", type=click.Choice(["grid", "pooled", "both"]), default=default_layer,
                     show_default=True,
                     help="grid: spatial map before the pooling head (RN101 at 224 px: 7x7x2048; ViT: patch "
                          "tokens); pooled: the image embedding; both: store both."),
        click.option("--pool", type=click.IntRange(min=1), default=None,
                     help="Adaptive-max-pool the grid to NxN tokens (the paper uses 6: 36 tokens per image)."),
        click.option("--resize", type=click.Choice(["model", "shortest", "longest", "squash"]), default="model",
                     show_default=True,
                     help="Preprocessing: the model's own (resize shortest side + center crop for CLIP), or "
                          "`squash` for VL-Adapter's non-aspect-preserving bicubic resize to the input size."),
        click.option("--batch-size", type=click.IntRange(min=1), default=None,
                     help=f"{unit} per forward pass (default: 256 on a GPU, 8 on the CPU, where larger batches "
                          "are slower)."),
        click.option("--workers", type=click.IntRange(min=0), default=None,
                     help="DataLoader processes decoding and resizing; 0 decodes in the main process "
                          "(default: CPU count up to 8 with a GPU; on the CPU none on <= 4 cores, else a quarter "
                          "of them, since the forward pass needs the cores more)."),
        click.option("--device", default="auto", show_default=True,
                     help="auto, cpu, cuda or cuda:N (under torchrun: cuda:LOCAL_RANK)."),
        click.option("--precision", type=click.Choice(typing.get_args(Precision)), default="fp32", show_default=True,
                     help="Compute precision (autocast). fp16 is for GPUs; on CPUs with AVX512-BF16/AMX, bf16 is "
                          "2-3.5x faster than fp32 (docs/benchmarks.md). Part of the provenance: a store keeps "
                          "one precision."),
        click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
                     help="How features are stored (float16 halves the disk size)."),
        click.option("--max-pixels", type=click.IntRange(min=1), default=None,
                     help="Skip (and record) inputs with more pixels than this a frame, a decompression-bomb "
                          "guard (default: Pillow's limit, about 89.5 million)."),
        click.option("--shard-size", type=click.IntRange(min=1), default=1024, show_default=True,
                     help="Items per crash-safe shard; a killed run loses at most one open shard "
                          "(also closed every 60 s)."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seed for random weights (--pretrained none)."),
        click.option("--overwrite", is_flag=True,
                     help="Replace an existing store made with other settings (the old one stays until the new "
                          "one is complete)."),
        click.option("--retry-failed", is_flag=True,
                     help="Try again inputs that failed in an earlier run (by default only those whose file "
                          "changed)."),
        click.option("--strict", is_flag=True, help="Exit non-zero if any input failed."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary."),
    ]
    return lambda f: functools.reduce(lambda g, d: d(g), reversed(decorators), f)


@extract.command("images", epilog=IMAGES_EXAMPLE)
@_input_options("images")
@click.option("--input-format", type=click.Choice(["files", "webdataset"]), default="files", show_default=True,
              help="webdataset: --images names tar shards (a .tar file, a folder of them, or a pattern such as "
                   "'shards/{00000..00009}.tar'); each {key}.jpg|jpeg|png|webp member is stored under its key.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Seconds to wait on a URL (per attempt) before it counts as failed.")
@click.option("--decode", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True,
              help="Where JPEGs are decoded and resized: gpu (nvJPEG, batched; other formats and JPEGs it "
                   "refuses go the CPU path, counted in the summary), cpu (PIL in the --workers), auto "
                   "(gpu on CUDA devices). The resized pixels agree with PIL's within one 8-bit level.")
@click.option("--retries", type=click.IntRange(min=0), default=2, show_default=True,
              help="More attempts for a URL after a timeout, connection error or HTTP 408/429/5xx "
                   "(waiting 1, 2, 4, ... s); other HTTP errors are final.")
@_model_options("RN101", "grid", "Images")
def images(**kw) -> None:
    """Extract CLIP features of images into one HDF5 feature store.

    Give the images as a folder (--images), a list file of paths or http(s) URLs
    (--list), a dataset manifest (--manifest), or webdataset tar shards
    (--input-format webdataset --images SHARDS). Running the same command again skips images already
    in the store, finishes an interrupted run, and adds new images; a store made
    with other settings is refused unless --overwrite. Images that cannot be read
    are recorded (with the reason) in the store and in OUT.json, and the run goes on.
    """
    from vl.extract.images import extract_images

    _run("images", kw, "RN101", lambda items, spec, opts, source: extract_images(items, spec, opts, source))


@extract.command("videos", epilog=VIDEOS_EXAMPLE)
@_input_options("videos")
@click.option("--fps", type=float, default=None,
              help="Frames to sample per second of video (default 0.667: one every 1.5 s, as VALUE).")
@click.option("--frames", type=click.IntRange(min=1), default=None,
              help="Instead of --fps: this many frames spread uniformly over each video.")
@click.option("--max-frames", type=click.IntRange(min=1), default=64, show_default=True,
              help="At most this many frames a video; longer videos are subsampled uniformly.")
@click.option("--video-timeout", type=click.FloatRange(min=1), default=300.0, show_default=True,
              help="Seconds one video may take to decode before it is recorded as failed.")
@_model_options("ViT-B-32", "pooled", "Frames")
def videos(fps, frames, max_frames, video_timeout, **kw) -> None:
    """Extract CLIP features of sampled video frames into one HDF5 feature store.

    Frames are sampled by presentation time (variable frame rates come out right):
    one every 1/--fps seconds, or --frames N spread uniformly, at most --max-frames.
    The store keeps each video's frame features (n x D), their timestamps in seconds
    and the video's duration, so later stages can cut clips by time span and mask
    padding. Frames of several videos share each forward pass. Resuming, refusal of
    other settings, and failure records work as for `vl extract images`.
    """
    if fps is not None and frames is not None:
        raise VLError("give --fps or --frames, not both")
    if fps is not None and fps <= 0:
        raise VLError(f"--fps must be positive (got {fps})")
    from vl.extract.video_decode import SamplingPolicy
    from vl.extract.videos import extract_videos

    policy = SamplingPolicy(fps=None if frames else (fps or 2 / 3), frames=frames, max_frames=max_frames)
    _run("videos", kw, "ViT-B-32",
         lambda items, spec, opts, source: extract_videos(items, spec, opts, policy, video_timeout, source))


def _run(kind: str, kw: dict, default_model: str, extract_fn) -> None:
    """What both commands do around the extraction: inputs, settings, summary, exit code."""
    from vl.extract.collect import collect_inputs
    from vl.shared.atomic import refuse_overwriting_inputs
    from vl.shared.feature_store import sidecar_path

    named = [("--list", kw["list_file"]), ("--manifest", kw["manifest"])]
    refuse_overwriting_inputs(kw["out"], named)
    refuse_overwriting_inputs(sidecar_path(kw["out"]), named, flag="--out's sidecar")
    items, source = collect_inputs(kind, kw["media_dir"], kw["list_file"], kw["manifest"], kw["media_root"],
                                   kw["id_from"], kw.get("input_format") or "files", kw.get("timeout", 10.0),
                                   kw.get("retries", 2))

    from vl.extract.decode import DEFAULT_MAX_PIXELS
    from vl.extract.encoder import EncoderSpec
    from vl.extract.pipeline import ExtractOptions
    from vl.extract.sources import FetchSettings

    model_config, pretrained, out = kw["model_config"], kw["pretrained"], kw["out"]
    model = kw["model"] or (model_config.stem if model_config else default_model)
    spec = EncoderSpec(model=model, pretrained=None if pretrained.lower() == "none" else pretrained,
                       model_config=str(model_config) if model_config else None, layer=kw["layer"],
                       pool=kw["pool"], resize=kw["resize"], precision=kw["precision"], device=kw["device"],
                       seed=kw["seed"])
    opts = ExtractOptions(out=out, batch_size=kw["batch_size"] or 0, workers=kw["workers"], dtype=kw["dtype"],
                          max_pixels=kw["max_pixels"] or DEFAULT_MAX_PIXELS, overwrite=kw["overwrite"],
                          shard_rows=kw["shard_size"], progress=not kw["quiet"], retry_failed=kw["retry_failed"],
                          fetch=FetchSettings(kw.get("timeout", 10.0), kw.get("retries", 2)),
                          decode=kw.get("decode", "auto"))
    with stop_on_signals(_kept_message(out)):  # SIGINT/SIGTERM: stop between batches, exit 130/143
        summary = extract_fn(items, spec, opts, source)
        keep(f"the extraction had finished: {out} is complete")
        if os.environ.get("RANK", "0") != "0":
            return  # under torchrun, rank 0 reports for all ranks
        if not kw["quiet"]:
            _print_summary(summary, kind)
    if summary.failures:
        click.secho(f"warning: {len(summary.failures)} input(s) failed; they are listed with reasons in {out}.json",
                    fg="yellow", err=True)
        if kw["strict"]:
            sys.exit(1)


def _kept_message(out: Path) -> str:
    """What a stop during `vl extract` leaves behind (the store builder commits its open shard)."""
    from vl.shared.feature_store import parts_dir

    return f"finished work is kept in {parts_dir(out)}; run the same command again to continue"


def _print_summary(s, kind: str) -> None:
    echo = lambda m: click.echo(m, err=True)  # noqa: E731
    unit = "img" if kind == "images" else "videos"
    earlier = sum(1 for f in s.failures if f.get("earlier"))
    failed = f"{len(s.failures)} failed" + (f" ({earlier} in an earlier run, file unchanged since)" if earlier else "")
    echo(f"done: {s.extracted} extracted, {s.already_done} already in store (skipped), "
         f"{failed}, in {s.seconds:.1f} s ({s.throughput:.1f} {unit}/s)")
    if s.notes.get("decoded"):
        from vl.extract.gpu_decode import describe_counts

        echo(f"decoded: {describe_counts(s.notes['decoded'], 'the GPU')}")
    echo(f"store: {s.out} holds {s.store_count} items (provenance in {s.out}.json)")
    if s.discarded_shards:
        echo(f"note: {len(s.discarded_shards)} damaged shard(s) from an earlier run were redone")
    for f in s.failures[:10]:
        echo(f"  failed {f['id']}: {f['reason']} ({f['path']})")
    if len(s.failures) > 10:
        echo(f"  ... and {len(s.failures) - 10} more")


IMPORT_EXAMPLE = """\b
Example (VALUE's released CLIP ViT-B/32 features of the TV shows, for TVQA and TVC):
  vl extract import --format value-npz --src /data/value/tv/clip-vit --out features/tv_vitb32.h5 \\
      --manifest manifests/tvqa_train.jsonl --manifest manifests/tvc_train.jsonl
\b
A folder of <id>.npy arrays (frames x width), one feature a second:
  vl extract import --format npy-dir --src feats/ --fps 1 --model ViT-B-32 --pretrained openai --out f.h5
"""


@extract.command("import", epilog=IMPORT_EXAMPLE)
@click.option("--format", "fmt", type=click.Choice(["value-npz", "npy-dir"]), required=True,
              help="value-npz: VALUE's release (<vid_name>.npz holding `features`, frames x 512, one every 1.5 s); "
                   "npy-dir: <id>.npy arrays (frames x width), with --fps.")
@click.option("--src", type=click.Path(path_type=Path), required=True,
              help="Folder of feature files, searched recursively; each file's id is its name without extension.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The HDF5 feature store to write or extend.")
@click.option("--fps", type=float, default=None,
              help="Features per second of video (value-npz: 0.667, one every 1.5 s; npy-dir: required).")
@click.option("--model", default=None,
              help="The encoder the features are claimed to come from, recorded as claimed, not verified "
                   "(value-npz: ViT-B-32).")
@click.option("--pretrained", default=None, help="Its claimed pretrained weights tag (value-npz: openai).")
@click.option("--manifest", "manifests", type=click.Path(path_type=Path), multiple=True,
              help="Dataset manifest (.jsonl) whose media ids the store must cover; missing ids are listed (repeatable).")
@click.option("--id-from", type=click.Choice(["stem", "relpath"]), default="stem", show_default=True,
              help="Id of each file: its name without extension (as VALUE names them by vid_name), or its path "
                   "relative to --src without extension.")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
              help="How features are stored (VALUE's are float16: nothing is lost).")
@click.option("--shard-size", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Videos per crash-safe shard; a killed run loses at most one open shard.")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing store made with other settings (the old one stays until the new one is complete).")
@click.option("--strict", is_flag=True, help="Exit non-zero if any file failed or a --manifest id is missing.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
def import_(fmt, src, out, fps, model, pretrained, manifests, id_from, dtype, shard_size, overwrite, strict,
            quiet) -> None:
    """Import released per-video features (VALUE's .npz, or .npy arrays) into a feature store.

    The store has the frames layout of `vl extract videos`: each video's features, each
    frame's time (k / fps: the release stores none) and its duration (frames / fps), so
    `vl train` reads it like an extracted store (clip spans, reference inputs). Its
    provenance says imported, with the format, the source folder and a sha256 of its
    files, and the encoder the features are claimed to come from; `vl train` refuses to
    mix imported and extracted stores in one run.

    A file that cannot be used (unreadable, no `features` array, not 2-D, no frames, a
    width other than most files', NaN) is recorded with its reason in the store and in
    OUT.json, and the rest are imported, as `vl extract videos` records a broken video:
    one bad file of a large release should not stop the import, and `vl train` names
    the ids it lacks. Running the command again skips ids already in the store and tries
    failed files again; an interrupted run continues. A rerun opens only new or changed
    files (OUT.sources.json keeps each file's sha256 by path, size and mtime), and warns
    when a file whose id is in the store changed since it was imported (--overwrite
    imports it again).
    """
    from vl.extract.import_features import ImportOptions, import_features
    from vl.shared.atomic import refuse_overwriting_inputs

    refuse_overwriting_inputs(out, [("--manifest", m) for m in manifests])
    opts = ImportOptions(format=fmt, src=src, out=out, fps=fps, model=model, pretrained=pretrained,
                         manifests=tuple(manifests), id_from=id_from, dtype=dtype, overwrite=overwrite,
                         shard_rows=shard_size, progress=not quiet)
    with stop_on_signals(_kept_message(out)):
        s = import_features(opts)
        keep(f"the import had finished: {out} is complete")
    echo = lambda m: click.echo(m, err=True)  # noqa: E731
    if not quiet:
        echo(f"done: {s.imported} imported, {s.already_done} already in store (skipped), {len(s.failures)} failed; "
             f"{s.width} wide, {s.fps:g} frames a second")
        echo(f"store: {s.out} holds {s.store_count} videos (provenance in {s.out}.json; source sha256 "
             f"{s.source_sha256[:16]}...)")
        for f in s.failures[:10]:
            echo(f"  failed {f['id']}: {f['reason']} ({f['path']})")
        if len(s.failures) > 10:
            echo(f"  ... and {len(s.failures) - 10} more")
    for manifest, (total, missing) in s.coverage.items():  # worded as `vl data check` words missing media
        if missing:
            shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
            click.secho(f"{manifest}: media: {len(missing)} of {total} MISSING from {s.out}: {shown}",
                        fg="yellow", err=True)
        elif not quiet:
            echo(f"{manifest}: media: all {total} in {s.out}")
    if s.failures:
        click.secho(f"warning: {len(s.failures)} file(s) failed; they are listed with reasons in {out}.json",
                    fg="yellow", err=True)
    if s.changed:
        shown = ", ".join(s.changed[:3]) + (f" and {len(s.changed) - 3} more" if len(s.changed) > 3 else "")
        click.secho(f"warning: {len(s.changed)} source file(s) changed since their features were imported, and "
                    f"{out} keeps the old features: {shown}; rerun with --overwrite to import them again",
                    fg="yellow", err=True)
    if strict and (s.failures or any(missing for _, missing in s.coverage.values())):
        sys.exit(1)
