"""`vl extract`: stage 1. Thin click layer; torch is imported inside the command."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from vl.shared.errors import VLError

EXAMPLE = """\b
Example (the paper's setting, on a GPU):
  vl extract images --images /data/coco/val2014 --model RN101 --pretrained openai \\
      --layer grid --pool 6 --batch-size 256 --workers 8 --device cuda \\
      --precision fp16 --out features/coco_val2014_rn101.h5
"""


@click.group()
def extract() -> None:
    """Stage 1: turn images into CLIP features, stored once in an HDF5 feature store
    that every later experiment reuses (`from vl.shared import FeatureStore`)."""


@extract.command("images", epilog=EXAMPLE)
@click.option("--images", "images_dir", type=click.Path(path_type=Path),
              help="Folder of images, searched recursively (jpg, png, bmp, gif, webp, tif).")
@click.option("--list", "list_file", type=click.Path(path_type=Path),
              help="Text file with one image path per line (relative to the file), or `id<TAB>path`.")
@click.option("--manifest", type=click.Path(path_type=Path),
              help="Dataset manifest (.jsonl): extract the media ids it uses, found under --media-root.")
@click.option("--media-root", type=click.Path(path_type=Path),
              help="Where the manifest's images are (default: the root its meta file records).")
@click.option("--id-from", type=click.Choice(["stem", "relpath"]), default="stem", show_default=True,
              help="Store each image under its file name without extension (COCO/GQA/NLVR2 style), "
                   "or its path relative to the folder without extension.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="The HDF5 feature store to write or extend, e.g. features/coco_val2014_rn101.h5.")
@click.option("--model", default=None,
              help="open_clip model name (default RN101; also RN50, ViT-B-32, ViT-B-16-quickgelu, ...), "
                   "or hf-hub:ORG/REPO / local-dir:PATH.")
@click.option("--pretrained", default="openai", show_default=True,
              help="open_clip pretrained tag (openai, laion2b_s34b_b79k, ...), a local checkpoint file, "
                   "or `none` for random weights (seeded by --seed).")
@click.option("--model-config", type=click.Path(path_type=Path),
              help="open_clip model JSON for a custom architecture; its file name (without .json) is the model name.")
@click.option("--layer", type=click.Choice(["grid", "pooled", "both"]), default="grid", show_default=True,
              help="grid: spatial map before the pooling head (RN101 at 224 px: 7x7x2048; ViT: patch tokens); "
                   "pooled: the image embedding; both: store both.")
@click.option("--pool", type=click.IntRange(min=1), default=None,
              help="Adaptive-max-pool the grid to NxN tokens (the paper uses 6: 36 tokens per image).")
@click.option("--resize", type=click.Choice(["model", "shortest", "longest", "squash"]), default="model",
              show_default=True,
              help="Preprocessing: the model's own (resize shortest side + center crop for CLIP), or "
                   "`squash` for VL-Adapter's non-aspect-preserving bicubic resize to the input size.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per forward pass (default: 256 on a GPU, 8 on the CPU, where larger batches are slower).")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="DataLoader processes decoding and resizing images; 0 decodes in the main process "
                   "(default: CPU count up to 8 with a GPU; on the CPU none on <= 4 cores, else a quarter "
                   "of them, since the forward pass needs the cores more).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="Compute precision (autocast). fp16 is for GPUs; bf16 is about 2x faster on CPUs with "
                   "AVX512-BF16/AMX. Part of the provenance: a store keeps one precision.")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
              help="How features are stored (float16 halves the disk size).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None,
              help="Skip (and record) images with more pixels than this, a decompression-bomb guard "
                   "(default: Pillow's limit, about 89.5 million).")
@click.option("--shard-size", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Items per crash-safe shard; a killed run loses at most one open shard "
                   "(also closed every 60 s).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random weights (--pretrained none).")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing store made with other settings (the old one stays until the new one is complete).")
@click.option("--retry-failed", is_flag=True,
              help="Try again images that failed in an earlier run (by default only those whose file changed).")
@click.option("--strict", is_flag=True, help="Exit non-zero if any image failed.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
def images(images_dir, list_file, manifest, media_root, id_from, out, model, pretrained, model_config, layer, pool,
           resize, batch_size, workers, device, precision, dtype, max_pixels, shard_size, seed, overwrite,
           retry_failed, strict, quiet) -> None:
    """Extract CLIP features of images into one HDF5 feature store.

    Give the images as a folder (--images), a list file (--list) or a dataset
    manifest (--manifest). Running the same command again skips images already
    in the store, finishes an interrupted run, and adds new images; a store made
    with other settings is refused unless --overwrite. Images that cannot be read
    are recorded (with the reason) in the store and in OUT.json, and the run goes on.
    """
    sources = [s for s in (images_dir, list_file, manifest) if s is not None]
    if len(sources) != 1:
        raise VLError("give exactly one of --images DIR, --list FILE or --manifest M.jsonl")
    if media_root is not None and manifest is None:
        raise VLError("--media-root goes with --manifest")

    from vl.extract import inputs as inp

    if images_dir is not None:
        items = inp.find_images(images_dir, id_from)
        source = {"images": str(images_dir.resolve()), "id_from": id_from}
    elif list_file is not None:
        items = inp.read_list(list_file, id_from)
        source = {"list": str(list_file.resolve()), "id_from": id_from}
    else:
        items = inp.from_manifest(manifest, media_root)
        source = {"manifest": str(manifest.resolve()), "media_root": str(media_root) if media_root else None}

    from vl.extract.decode import DEFAULT_MAX_PIXELS
    from vl.extract.encoder import EncoderSpec
    from vl.extract.images import extract_images
    from vl.extract.pipeline import ExtractOptions

    if model is None:
        model = model_config.stem if model_config else "RN101"
    spec = EncoderSpec(model=model,
                       pretrained=None if pretrained.lower() == "none" else pretrained,
                       model_config=str(model_config) if model_config else None, layer=layer, pool=pool,
                       resize=resize, precision=precision, device=device, seed=seed)
    opts = ExtractOptions(out=out, batch_size=batch_size or 0, workers=workers,
                          dtype=dtype, max_pixels=max_pixels or DEFAULT_MAX_PIXELS, overwrite=overwrite,
                          shard_rows=shard_size, progress=not quiet,
                          retry_failed=retry_failed)
    try:
        summary = extract_images(items, spec, opts, source)
    except KeyboardInterrupt:
        click.secho(f"\ninterrupted: finished work is kept in {out}.parts; run the same command again to continue.",
                    fg="yellow", err=True)
        sys.exit(130)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun, rank 0 reports for all ranks
    if not quiet:
        _print_summary(summary)
    if summary.failures:
        click.secho(f"warning: {len(summary.failures)} image(s) failed; they are listed with reasons in {out}.json",
                    fg="yellow", err=True)
        if strict:
            sys.exit(1)


def _print_summary(s) -> None:
    echo = lambda m: click.echo(m, err=True)  # noqa: E731
    earlier = sum(1 for f in s.failures if f.get("earlier"))
    failed = f"{len(s.failures)} failed" + (f" ({earlier} in an earlier run, file unchanged since)" if earlier else "")
    echo(f"done: {s.extracted} extracted, {s.already_done} already in store (skipped), "
         f"{failed}, in {s.seconds:.1f} s ({s.throughput:.1f} img/s)")
    echo(f"store: {s.out} holds {s.store_count} items (provenance in {s.out}.json)")
    if s.discarded_shards:
        echo(f"note: {len(s.discarded_shards)} damaged shard(s) from an earlier run were redone")
    for f in s.failures[:10]:
        echo(f"  failed {f['id']}: {f['reason']} ({f['path']})")
    if len(s.failures) > 10:
        echo(f"  ... and {len(s.failures) - 10} more")
