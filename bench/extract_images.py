"""Benchmark `vl extract images` against the bare model forward and VL-Adapter's original pattern.

Measures, in one run, on N generated photo-like 640x480 JPEGs (cached in OUT_DIR/images_N/):
  (a)      `vl extract images --layer grid --pool 6` run as a subprocess of the real CLI; items/s from
           the store's sidecar JSON (extracted / loop seconds), and the peak RSS of its process tree
           (CLI plus DataLoader workers, VmRSS summed, sampled every ~50 ms); on cuda once with
           `--decode gpu` (JPEGs decoded and resized on the GPU, against the target) and once with
           `--decode cpu` (PIL in the workers), for comparison;
  (b)      the model forward alone (`load_encoder(...).encode`) on the same images, preprocessed up
           front, same batch size and precision, outputs copied to float16 numpy;
  (c)      the original VL-Adapter script's pattern (feature_extraction/coco_CLIP.py): batch size 1,
           PIL decode on the main thread, plain open_clip vision tower in fp32, one HDF5 file per image;
  (c-bf16) the same as (c) with the forward under bf16 autocast (what precision alone gives);
  (d)      peak RSS of (a) at N and at 4N images, and its growth.
Prints a Markdown table with the ratios a/b, a/c and the targets (a/b >= 0.85, a/c >= 2.5,
memory growth <= 10 %). The model has random weights (--pretrained none), so nothing is downloaded.

Run from the repository root (bench_out/ is git-ignored):
    .venv/bin/python bench/extract_images.py                  # RN50, N=192, bf16, batch 8, default workers
    .venv/bin/python bench/extract_images.py --n 24 --model RN101 --json bench_out/rn101.json
    .venv/bin/python bench/extract_images.py --device cuda    # fp16, batch 256 by default
    python bench/extract_images.py --device cuda --n 4096 --model ViT-B-32 --skip reference,4n   # issue #18's target
On a shared machine, --repeat 3 keeps the fastest of three runs of each measurement.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import shlex
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from cli_run import best_of, machine, markdown_table, run_extract, write_results

TARGETS = {"a/b": 0.85, "a/c": 2.5, "growth_pct": 10.0}


# -- inputs -----------------------------------------------------------------------------------
def photo_like(rng: np.random.Generator, w: int = 640, h: int = 480) -> Image.Image:
    """Smooth four-corner colour gradient, a few soft shapes, mild sensor-like noise."""
    corners = rng.uniform(0, 255, size=(4, 3))
    y, x = np.mgrid[0:1:complex(0, h), 0:1:complex(0, w)]
    x, y = x[..., None], y[..., None]
    base = (corners[0] * (1 - x) * (1 - y) + corners[1] * x * (1 - y)
            + corners[2] * (1 - x) * y + corners[3] * x * y)
    im = Image.fromarray(base.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(3, 8))):
        x0, y0 = rng.uniform(-50, w), rng.uniform(-50, h)
        box = [x0, y0, x0 + rng.uniform(30, 300), y0 + rng.uniform(30, 250)]
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        kind = rng.integers(3)
        if kind == 0:
            draw.ellipse(box, fill=colour)
        elif kind == 1:
            draw.rectangle(box, fill=colour)
        else:
            draw.polygon([tuple(p) for p in rng.uniform([box[0], box[1]], [box[2], box[3]], size=(5, 2))], fill=colour)
    arr = np.asarray(im.filter(ImageFilter.GaussianBlur(1.5)), dtype=np.float32)
    arr += rng.normal(0, 6.0, size=arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _write_image(job: tuple[int, int, str]) -> None:
    seed, i, path = job
    photo_like(np.random.default_rng([seed, i])).save(path, "JPEG", quality=90)


def make_images(root: Path, n: int, seed: int) -> list[str]:
    """N JPEGs in root (image i depends only on (seed, i)); reused when already complete."""
    marker = root / ".complete"
    paths = [root / f"{i:06d}.jpg" for i in range(n)]
    if marker.is_file() and marker.read_text() == f"n={n} seed={seed}" and all(p.is_file() for p in paths):
        return [str(p) for p in paths]
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    with ProcessPoolExecutor() as pool:  # 4,096 images take a minute on one core
        list(pool.map(_write_image, [(seed, i, str(p)) for i, p in enumerate(paths)], chunksize=64))
    marker.write_text(f"n={n} seed={seed}")
    return [str(p) for p in paths]


# -- (a) the CLI, with the peak RSS of its process tree ---------------------------------------
def bench_cli(images_dir: Path, out: Path, args, decode: str = "auto") -> dict:
    cmd = ["extract", "images", "--images", str(images_dir), "--model", args.model, "--pretrained", args.pretrained,
           "--seed", str(args.seed), "--layer", "grid", "--pool", "6", "--precision", args.precision,
           "--batch-size", str(args.batch_size), "--device", args.device, "--decode", decode, "--quiet"]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    run = run_extract(cmd, out)
    return {"items_per_s": run["extracted"] / run["seconds"], "extracted": run["extracted"],
            "loop_s": run["seconds"], "wall_s": run["wall_s"], "peak_rss_mib": run["peak_rss_mib"],
            "command": run["command"], "decode": run.get("decode"), "decoded": run.get("decoded")}


# -- (b) the forward alone --------------------------------------------------------------------
def load_vl_encoder(args):
    from vl.extract.encoder import EncoderSpec, load_encoder

    return load_encoder(EncoderSpec(model=args.model, pretrained=None if args.pretrained == "none" else args.pretrained,
                                    layer="grid", pool=6, precision=args.precision, device=args.device, seed=args.seed))


def bench_forward(paths: list[str], enc, args) -> dict:
    import torch

    tensors = [enc.transform(Image.open(p).convert("RGB")) for p in paths]  # decoded up front, not timed
    batches = [torch.stack(tensors[i:i + args.batch_size]) for i in range(0, len(tensors), args.batch_size)]
    enc.encode(batches[0][:1])  # warm-up
    t0 = time.perf_counter()
    for batch in batches:
        arrays = {k: v.to(torch.float16).cpu().numpy() for k, v in enc.encode(batch).items()}
    seconds = time.perf_counter() - t0
    assert arrays["grid"].shape[1] == 36
    return {"items_per_s": len(paths) / seconds, "seconds": seconds}


# -- (c) VL-Adapter's original pattern --------------------------------------------------------
def bench_reference(paths: list[str], transform, out_dir: Path, args, bf16: bool) -> dict:
    import h5py
    import open_clip
    import torch

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    logging.getLogger().setLevel(logging.ERROR)  # open_clip warns about deliberate random weights
    visual = open_clip.create_model(args.model, pretrained=None if args.pretrained == "none" else args.pretrained)
    visual = visual.visual.eval().to(device)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)

    def features(path: str) -> np.ndarray:
        x = transform(Image.open(path).convert("RGB")).unsqueeze(0).to(device)
        amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with torch.no_grad(), amp:
            grid = visual.forward_intermediates(x, indices=1, intermediates_only=True)["image_intermediates"][-1]
        return grid[0].flatten(1).t().to(torch.float16).cpu().numpy()  # (1, C, 7, 7) -> (49, C)

    features(paths[0])  # warm-up
    t0 = time.perf_counter()
    for path in paths:
        img_id = Path(path).stem
        feats = features(path)
        with h5py.File(out_dir / f"{img_id}.h5", "w") as f:
            f.create_group(img_id).create_dataset("features", data=feats)
    seconds = time.perf_counter() - t0
    assert feats.shape == (49, feats.shape[1]) and feats.dtype == np.float16
    return {"items_per_s": len(paths) / seconds, "seconds": seconds}


# -- report -----------------------------------------------------------------------------------
def report(r: dict, args) -> str:
    a, b = r["a"]["items_per_s"], r["b"]["items_per_s"]
    r["ratios"] = {"a/b": a / b}
    verdict = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
    n, s = args.n, f"{args.precision}, batch {args.batch_size}"
    workers = "default" if args.workers is None else args.workers
    rows = []
    for key, decode in [("a", args.decode[0]), *((f"a_{d}", d) for d in args.decode[1:])]:
        x = r[key]
        counts = ", ".join(f"{v} {k}" for k, v in (x.get("decoded") or {}).items())
        rows.append((f"(a) `vl extract images --decode {decode}`", f"{x['items_per_s']:.2f} items/s",
                     f"{s}, {workers} worker(s); loop {x['loop_s']:.1f} s, process wall {x['wall_s']:.1f} s"
                     + (f"; decoded: {counts}" if counts else ""), ""))
    rows.append(("(b) forward alone", f"{b:.2f} items/s", f"{s}, preprocessed tensors", ""))
    for key, decode in [("a", args.decode[0]), *((f"a_{d}", d) for d in args.decode[1:])]:
        ratio = r[key]["items_per_s"] / b
        r["ratios"][f"{key}/b"] = ratio
        rows.append((f"a/b, --decode {decode}", f"{ratio:.3f}", f">= {TARGETS['a/b']}" if key == "a" else "(comparison)",
                     verdict(ratio >= TARGETS["a/b"]) if key == "a" else ""))
    if "c" in r:
        c, cb = r["c"]["items_per_s"], r["c_bf16"]["items_per_s"]
        r["ratios"].update({"a/c": a / c, "a/c-bf16": a / cb})
        rows += [("(c) VL-Adapter pattern", f"{c:.2f} items/s", "fp32, batch 1, PIL on main thread, one .h5 per image", ""),
                 ("(c-bf16) same, bf16 autocast", f"{cb:.2f} items/s", "bf16, batch 1", ""),
                 ("a/c", f"{a / c:.2f}", f">= {TARGETS['a/c']}", verdict(a / c >= TARGETS["a/c"])),
                 ("a/c-bf16", f"{a / cb:.2f}", "(information)", "")]
    if "a_4n" in r:
        p1, p4 = r["a"]["peak_rss_mib"], r["a_4n"]["peak_rss_mib"]
        r["ratios"]["growth_pct"] = growth = 100 * (p4 - p1) / p1
        rows += [(f"(d) peak RSS of (a), N={n}", f"{p1:.0f} MiB", "CLI + workers, VmRSS summed", ""),
                 (f"(d) peak RSS of (a), 4N={4 * n}", f"{p4:.0f} MiB", f"(a) at 4N: {r['a_4n']['items_per_s']:.2f} items/s", ""),
                 ("(d) memory growth N -> 4N", f"{growth:+.1f} %", f"<= {TARGETS['growth_pct']:.0f} %",
                  verdict(growth <= TARGETS["growth_pct"]))]
    return markdown_table(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=192, help="images for (a)-(c); (d) also uses 4N (default 192)")
    ap.add_argument("--model", default="RN50", help="open_clip model, e.g. RN50, RN101, ViT-B-32 (default RN50)")
    ap.add_argument("--pretrained", default="none", help="open_clip tag or checkpoint, or none for random weights")
    ap.add_argument("--precision", choices=["fp32", "fp16", "bf16"], help="(a), (b): default bf16 on cpu, fp16 on cuda")
    ap.add_argument("--batch-size", type=int, help="(a), (b): default 8 on cpu, 256 on cuda")
    ap.add_argument("--workers", type=int, default=None,
                    help="(a): DataLoader workers (default: the CLI's own default for the device)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--out-dir", type=Path, default=Path("bench_out"), help="images and stores (default bench_out)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the images and the random weights")
    ap.add_argument("--repeat", type=int, default=1, help="run each measurement R times, keep the fastest (default 1)")
    ap.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    ap.add_argument("--decode", default=None,
                    help="(a)'s --decode paths, comma-separated, the first against the target (default: gpu,cpu on "
                         "cuda, cpu on cpu)")
    ap.add_argument("--skip", default="", help="parts to leave out, comma-separated: reference (c), 4n (d)")
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    args.decode = (args.decode or ("gpu,cpu" if cuda else "cpu")).split(",")
    args.skip = [x for x in args.skip.split(",") if x]
    args.precision = args.precision or ("fp16" if cuda else "bf16")
    args.batch_size = args.batch_size or (256 if cuda else 8)
    command = shlex.join([sys.executable, *sys.argv])
    print(f"command: {command}\nmachine: {machine()}\n", flush=True)

    dir_n, dir_4n = args.out_dir / f"images_{args.n}", args.out_dir / f"images_{4 * args.n}"
    paths = make_images(dir_n, args.n, args.seed)
    if "4n" not in args.skip:
        make_images(dir_4n, 4 * args.n, args.seed)
    stores = args.out_dir / "stores"

    def best(name: str, measure) -> dict:
        return best_of(name, measure, args.repeat, "items_per_s", "items/s")

    first = args.decode[0]
    r = {"a": best(f"a, --decode {first}", lambda: bench_cli(dir_n, stores / f"a_{args.n}.h5", args, first))}
    for decode in args.decode[1:]:
        r[f"a_{decode}"] = best(f"a, --decode {decode}",
                                lambda: bench_cli(dir_n, stores / f"a_{args.n}_{decode}.h5", args, decode))
    if "4n" not in args.skip:
        r["a_4n"] = best("a, 4N", lambda: bench_cli(dir_4n, stores / f"a_{4 * args.n}.h5", args, first))
    encoder = load_vl_encoder(args)
    r["b"] = best("b", lambda: bench_forward(paths, encoder, args))
    transform = encoder.transform
    if "reference" not in args.skip:
        r["c"] = best("c", lambda: bench_reference(paths, transform, args.out_dir / "ref_fp32", args, bf16=False))
        r["c_bf16"] = best("c-bf16",
                           lambda: bench_reference(paths, transform, args.out_dir / "ref_bf16", args, bf16=True))
    print(f"(a) ran: {r['a']['command']}\n")
    print(report(r, args))
    if args.json:
        write_results(args.json, command, machine(), args, r)


if __name__ == "__main__":
    main()
