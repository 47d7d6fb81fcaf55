"""Benchmark `vl extract videos` against its two halves: decoding alone and the model forward alone.

Measures, in one run, on N generated 640x360 25 fps H.264 videos of 20-40 s (cached in OUT_DIR/videos_N/):
  (decode)   the data side alone, in sampled frames/s: `decode_video(path, SamplingPolicy(fps, max_frames))`
             and the model's `encoder.transform` on every frame, stacked as the pipeline does, on the main
             thread; for information also spread over W DataLoader worker processes (`VideoDataset`,
             batch_size=None, as the pipeline), and on the main thread at VALUE's default fps 0.667;
  (model)    the model forward alone (`load_encoder(...).encode`) on the same frames, already transformed,
             packed into batches of the pipeline's batch size, outputs copied to float16 numpy; for
             information also with the torch threads the pipeline leaves the forward when it has workers;
  (pipeline) `vl extract videos` run as a subprocess of the real CLI, with the default workers and with
             each explicit --workers setting; frames/s = stored frames (from the store) / loop seconds
             (from the store's sidecar JSON), and the peak RSS of its process tree.
Prints a Markdown table with the ratio pipeline / min(decode, model) per pipeline run and the target
(>= 0.8 with workers: decoding in workers should overlap the forward; with 0 workers the two run one
after the other, so the serial bound d*m/(d+m) is shown instead). The model has random weights
(--pretrained none), so nothing is downloaded.

Run from the repository root (bench_out/ is git-ignored):
    .venv/bin/python bench/extract_videos.py                  # ViT-B-32, N=12, fps 2, bf16, batch 8
    .venv/bin/python bench/extract_videos.py --n 3 --fps 0.667 --json bench_out/videos_value.json
    .venv/bin/python bench/extract_videos.py --device cuda    # fp16, batch 256 by default
On a shared machine, --repeat 3 keeps the fastest of three runs of each measurement.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import cli_run
from cli_run import best_of, markdown_table, run_extract, write_results

TARGETS = {"ratio": 0.8}
VALUE_FPS = 2 / 3  # the CLI's default: one frame every 1.5 s, as VALUE
WIDTH, HEIGHT, RATE, GOP_S = 640, 360, 25, 2
X264_OPTIONS = {"preset": "medium", "crf": "23", "threads": "1",  # one thread per video, videos in parallel
                "x264-params": f"keyint={GOP_S * RATE}:min-keyint={GOP_S * RATE}:scenecut=0"}
INPUTS_VERSION = 1  # bump when the generated videos change, so cached ones are remade


# -- inputs -----------------------------------------------------------------------------------
def video_frames(rng: np.random.Generator, n: int, w: int = WIDTH, h: int = HEIGHT):
    """RGB frames (h, w, 3) uint8: scenes of 4-10 s, each a four-corner colour gradient with fixed
    texture noise that the camera pans over, 2-6 shapes moving across it, and per-frame grain."""
    pad = 80
    y, x = np.mgrid[0:1:complex(0, h + 2 * pad), 0:1:complex(0, w + 2 * pad)]
    x, y = x[..., None], y[..., None]
    grain = [rng.integers(-6, 7, size=(h, w, 3), dtype=np.int16) for _ in range(6)]
    scene_end = 0
    for f in range(n):
        if f == scene_end:
            start, scene_end = f, f + int(rng.integers(4 * RATE, 10 * RATE + 1))
            c = rng.uniform(0, 255, size=(4, 3))
            canvas = (c[0] * (1 - x) * (1 - y) + c[1] * x * (1 - y) + c[2] * (1 - x) * y + c[3] * x * y
                      + rng.normal(0, 4.0, size=x.shape[:2] + (3,)))
            canvas = np.clip(canvas, 0, 255).astype(np.uint8)
            pan = rng.uniform(-1.5, 1.5, size=2)  # pixels a frame, back and forth within the padding
            shapes = [(rng.uniform(0, w), rng.uniform(0, h), rng.uniform(-4, 4), rng.uniform(-3, 3),
                       rng.uniform(20, 90), tuple(int(v) for v in rng.integers(0, 256, size=3)), int(rng.integers(3)))
                      for _ in range(int(rng.integers(2, 7)))]
        k = f - start
        ox, oy = (int(pad + pad * np.sin(2 * k * p / pad)) for p in pan)
        im = Image.fromarray(canvas[oy:oy + h, ox:ox + w])
        draw = ImageDraw.Draw(im)
        for sx, sy, vx, vy, r, colour, kind in shapes:
            cx, cy = (sx + vx * k) % w, (sy + vy * k) % h
            if kind == 0:
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
            elif kind == 1:
                draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
            else:
                draw.polygon([(cx - r, cy + r), (cx, cy - r), (cx + r, cy + r)], fill=colour)
        arr = np.asarray(im).astype(np.int16)
        arr += grain[int(rng.integers(len(grain)))]
        yield np.clip(arr, 0, 255).astype(np.uint8)


def write_video(path: Path, seed: int, i: int) -> None:
    """Video i: 20-40 s, depends only on (seed, i); H.264 yuv420p, a keyframe every GOP_S seconds."""
    import av

    rng = np.random.default_rng([seed, i])
    n = round(rng.uniform(20, 40) * RATE)
    tmp = path.with_name(path.name + ".part")
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=RATE, options=dict(X264_OPTIONS))
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for arr in video_frames(rng, n):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")))
        container.mux(stream.encode(None))
    tmp.replace(path)


def make_videos(root: Path, n: int, seed: int) -> list[str]:
    """N MP4s in root, made on all cores (not timed); reused when already complete."""
    marker = root / ".complete"
    paths = [root / f"{i:06d}.mp4" for i in range(n)]
    stamp = f"n={n} seed={seed} {WIDTH}x{HEIGHT} {RATE}fps {X264_OPTIONS} v{INPUTS_VERSION}"
    if marker.is_file() and marker.read_text() == stamp and all(p.is_file() for p in paths):
        return [str(p) for p in paths]
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    print(f"generating {n} videos in {root} (not timed) ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, min(n, os.cpu_count() or 1))) as pool:
        list(pool.map(write_video, paths, [seed] * n, range(n)))
    print(f"  {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    marker.write_text(stamp)
    return [str(p) for p in paths]


# -- (pipeline) the CLI, with the peak RSS of its process tree ---------------------------------
def bench_cli(videos_dir: Path, out: Path, args, workers: int | None) -> dict:
    from vl.shared.feature_store import FeatureStore

    cmd = ["extract", "videos", "--videos", str(videos_dir), "--model", args.model, "--pretrained", args.pretrained,
           "--seed", str(args.seed), "--fps", f"{args.fps:g}", "--max-frames", str(args.max_frames),
           "--layer", args.layer, "--precision", args.precision, "--batch-size", str(args.batch_size),
           "--device", args.device, "--quiet"]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    run = run_extract(cmd, out)
    with FeatureStore(out) as store:
        frames = sum(store.num_frames(i) for i in store.ids)
    return {"frames_per_s": frames / run["seconds"], "frames": frames, "videos": run["extracted"],
            "loop_s": run["seconds"], "wall_s": run["wall_s"], "peak_rss_mib": run["peak_rss_mib"],
            "command": run["command"]}


def load_vl_encoder(args):
    from vl.extract.encoder import EncoderSpec, load_encoder

    return load_encoder(EncoderSpec(model=args.model, pretrained=None if args.pretrained == "none" else args.pretrained,
                                    layer=args.layer, precision=args.precision, device=args.device, seed=args.seed))


def bench_decode(paths: list[str], transform, fps: float, args, keep: bool = False) -> dict:
    """Main thread, one video after another, as the pipeline with --workers 0."""
    import torch

    from vl.extract.video_decode import SamplingPolicy, decode_video

    policy = SamplingPolicy(fps=fps, max_frames=args.max_frames)
    torch.stack([transform(im) for im in decode_video(paths[0], policy).frames])  # warm-up, not timed
    kept, frames, durations = [], 0, []
    t0 = time.perf_counter()
    for path in paths:
        video = decode_video(path, policy)
        tensors = torch.stack([transform(im) for im in video.frames])
        frames += len(tensors)
        durations.append(video.duration)
        if keep:
            kept.append(tensors)
    seconds = time.perf_counter() - t0
    out = {"frames_per_s": frames / seconds, "frames": frames, "seconds": seconds, "durations": durations}
    if keep:
        out["tensors"] = kept  # dropped from the results before they are printed or written
    return out


def bench_decode_workers(paths: list[str], transform, args, workers: int) -> dict:
    """The same in DataLoader workers, built as run_video_batches builds it; the main process only
    receives the frames. Worker start-up counts, as it does in the pipeline's loop."""
    import torch

    from vl.extract.decode import DEFAULT_MAX_PIXELS
    from vl.extract.inputs import MediaInput
    from vl.extract.video_decode import SamplingPolicy
    from vl.extract.videos import VideoDataset, _one

    dataset = VideoDataset([MediaInput(Path(p).stem, p) for p in paths], transform,
                           SamplingPolicy(fps=args.fps, max_frames=args.max_frames), 300.0, DEFAULT_MAX_PIXELS)
    frames = 0
    t0 = time.perf_counter()
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers, collate_fn=_one,
                                         prefetch_factor=2 if workers > 0 else None, timeout=600 if workers else 0)
    for index, tensors, timestamps, duration, reason in loader:
        if reason is not None:
            sys.exit(f"{paths[index]}: {reason}")
        frames += len(tensors)
    seconds = time.perf_counter() - t0
    return {"frames_per_s": frames / seconds, "frames": frames, "seconds": seconds, "workers": workers}


# -- (model) the forward alone ----------------------------------------------------------------
def bench_model(tensors: list, enc, args, threads: int) -> dict:
    """Frames of consecutive videos packed into full batches (as FramePacker), outputs to float16 numpy."""
    import torch

    batches = list(torch.split(torch.cat(tensors), args.batch_size))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        enc.encode(batches[0])  # warm-up, a full batch
        t0 = time.perf_counter()
        for batch in batches:
            arrays = {k: v.to(torch.float16).cpu().numpy() for k, v in enc.encode(batch).items()}
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(previous)
    frames = sum(len(b) for b in batches)
    assert all(a.dtype == np.float16 for a in arrays.values())
    return {"frames_per_s": frames / seconds, "frames": frames, "seconds": seconds, "threads": threads}


# -- report -----------------------------------------------------------------------------------
def machine() -> str:
    import av

    codec = ".".join(map(str, av.library_versions.get("libavcodec", ())))
    return cli_run.machine(f"PyAV {av.__version__}, FFmpeg {getattr(av, 'ffmpeg_version_info', '?')} "
                           f"(libavcodec {codec})")


def report(r: dict, args) -> str:
    d, m = r["decode"]["frames_per_s"], r["model"]["frames_per_s"]
    bound, serial = min(d, m), d * m / (d + m)
    limit = "decode" if d < m else "model"
    verdict = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
    s = f"{args.precision}, batch {args.batch_size}"
    dec, total_s = r["decode"], sum(r["decode"]["durations"])
    rows = [
        ("inputs", f"{args.n} videos, {total_s:.0f} s", f"{WIDTH}x{HEIGHT} {RATE} fps H.264, keyframe every {GOP_S} s; "
         f"fps {args.fps:g} samples {dec['frames']} frames (max {args.max_frames} a video), "
         f"VALUE's fps 0.667 would sample {r['decode_value']['frames']}", ""),
        ("(decode) main thread", f"{d:.1f} frames/s",
         f"decode_video + transform, one video warmed up first; {dec['frames']} frames in {dec['seconds']:.1f} s", ""),
    ]
    for w, x in r["decode_workers"].items():
        rows.append((f"(decode) {w} worker(s)", f"{x['frames_per_s']:.1f} frames/s",
                     f"VideoDataset in a DataLoader, start-up included; {x['seconds']:.1f} s (information)", ""))
    dv = r["decode_value"]
    rows.append(("(decode) main thread, fps 0.667", f"{dv['frames_per_s']:.1f} frames/s",
                 f"VALUE's default; {dv['frames']} frames in {dv['seconds']:.1f} s (information)", ""))
    rows.append(("(model) forward alone", f"{m:.1f} frames/s",
                 f"{s}, {r['model']['threads']} torch threads, pre-decoded tensors", ""))
    for t, x in r["model_threads"].items():
        rows.append((f"(model) forward, {t} thread(s)", f"{x['frames_per_s']:.1f} frames/s",
                     "what the pipeline leaves the forward with workers (information)", ""))
    rows.append(("bound min(decode, model)", f"{bound:.1f} frames/s",
                 f"{limit}-limited; serial bound d*m/(d+m) = {serial:.1f} frames/s (0 workers)", ""))
    r["ratios"] = {}
    for key, x in r["pipeline"].items():
        w = x["workers"]
        name = f"(pipeline) {'default' if key == 'default' else '--workers ' + key} ({w} worker{'s' * (w != 1)})"
        rows.append((name, f"{x['frames_per_s']:.1f} frames/s",
                     f"{s}; {x['frames']} frames, loop {x['loop_s']:.1f} s, process wall {x['wall_s']:.1f} s, "
                     f"peak RSS {x['peak_rss_mib']:.0f} MiB", ""))
    cpus = os.cpu_count() or 1
    for key, x in r["pipeline"].items():
        w, ratio = x["workers"], x["frames_per_s"] / bound
        r["ratios"][key] = {"pipeline/bound": ratio, "pipeline/serial": x["frames_per_s"] / serial, "workers": w}
        name = f"pipeline {'default' if key == 'default' else '--workers ' + key} / bound"
        if w > 0:
            t = max(1, min(r["model"]["threads"], cpus - w)) if args.device == "cpu" else r["model"]["threads"]
            left = r["model"] if t == r["model"]["threads"] else r["model_threads"].get(t)
            note = ""
            if left is not None:  # the forward with the threads the pipeline left it
                r["ratios"][key]["pipeline/model_threads_left"] = x["frames_per_s"] / left["frames_per_s"]
                note = (f" (to the forward at the {left['threads']} thread(s) left it: "
                        f"{r['ratios'][key]['pipeline/model_threads_left']:.3f})")
            rows.append((name, f"{ratio:.3f}", f">= {TARGETS['ratio']} with workers{note}",
                         verdict(ratio >= TARGETS["ratio"])))
        else:
            rows.append((name, f"{ratio:.3f}", f"no workers: no target (to the serial bound: "
                         f"{r['ratios'][key]['pipeline/serial']:.3f})", "n/a"))
    return markdown_table(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=12, help="generated videos, 20-40 s each (default 12)")
    ap.add_argument("--model", default="ViT-B-32", help="open_clip model (default ViT-B-32, the CLI's default)")
    ap.add_argument("--pretrained", default="none", help="open_clip tag or checkpoint, or none for random weights")
    ap.add_argument("--layer", choices=["grid", "pooled", "both"], default="pooled",
                    help="features to extract (default pooled, the CLI's default for videos)")
    ap.add_argument("--fps", type=float, default=2.0,
                    help=f"frames sampled per second (default 2; the CLI's default is {VALUE_FPS:.3f}, also measured)")
    ap.add_argument("--max-frames", type=int, default=64, help="at most this many frames a video (default 64)")
    ap.add_argument("--precision", choices=["fp32", "fp16", "bf16"], help="default bf16 on cpu, fp16 on cuda")
    ap.add_argument("--batch-size", type=int, help="frames per forward (default: the CLI's, 8 on cpu, 256 on cuda)")
    ap.add_argument("--workers", default="1,2",
                    help="explicit --workers settings for the pipeline and (decode) with workers, comma-separated; "
                         "the CLI's default is always run too (default 1,2)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--out-dir", type=Path, default=Path("bench_out"), help="videos and stores (default bench_out)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the videos and the random weights")
    ap.add_argument("--repeat", type=int, default=1, help="run each measurement R times, keep the fastest (default 1)")
    ap.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = ap.parse_args()
    from vl.extract.pipeline import DEFAULT_BATCH, default_workers

    device_type = "cuda" if args.device.startswith("cuda") else "cpu"
    args.precision = args.precision or ("fp16" if device_type == "cuda" else "bf16")
    args.batch_size = args.batch_size or DEFAULT_BATCH[device_type]
    explicit = sorted({int(w) for w in args.workers.split(",") if w.strip()})
    command = shlex.join([sys.executable, *sys.argv])
    print(f"command: {command}\nmachine: {machine()}\n", flush=True)

    videos_dir = args.out_dir / f"videos_{args.n}"
    paths = make_videos(videos_dir, args.n, args.seed)
    stores = args.out_dir / "stores"

    def best(name: str, measure) -> dict:
        return best_of(name, measure, args.repeat, "frames_per_s", "frames/s")

    r: dict = {"pipeline": {}}
    for w in [None, *explicit]:
        key = "default" if w is None else str(w)
        r["pipeline"][key] = best(f"pipeline, {'default' if w is None else w} workers",
                                  lambda: bench_cli(videos_dir, stores / f"videos_{args.n}_w{key}.h5", args, w))
        r["pipeline"][key]["workers"] = default_workers(device_type) if w is None else w
    enc = load_vl_encoder(args)
    r["decode"] = best("decode, main thread", lambda: bench_decode(paths, enc.transform, args.fps, args, keep=True))
    tensors = r["decode"].pop("tensors")
    r["decode_workers"] = {w: best(f"decode, {w} workers", lambda: bench_decode_workers(paths, enc.transform, args, w))
                           for w in explicit if w > 0}
    r["decode_value"] = best("decode, main thread, fps 0.667",
                             lambda: bench_decode(paths, enc.transform, VALUE_FPS, args))
    for key, x in r["pipeline"].items():
        if x["frames"] != r["decode"]["frames"]:
            sys.exit(f"the pipeline ({key} workers) stored {x['frames']} frames, decoding alone gave {r['decode']['frames']}")
    import torch

    threads = torch.get_num_threads()
    r["model"] = best("model", lambda: bench_model(tensors, enc, args, threads))
    # What _cores_left_for_forward leaves the forward on the CPU with workers (the pipeline's own rule).
    cpus = os.cpu_count() or 1
    left = sorted({min(threads, cpus - w) for w in explicit if w > 0 and cpus - w >= 2} - {threads}
                  if device_type == "cpu" else set())
    r["model_threads"] = {t: best(f"model, {t} threads", lambda: bench_model(tensors, enc, args, t)) for t in left}
    print(f"(pipeline) ran: {r['pipeline']['default']['command']}\n")
    print(report(r, args))
    if args.json:
        write_results(args.json, command, machine(), args, r)


if __name__ == "__main__":
    main()
