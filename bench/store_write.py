"""Benchmark the feature store's write path: HDF5 through `GuardedFile` (h5py's `fileobj`
driver, which keeps a full disk from HDF5: vl.shared.disk_full) against HDF5's own POSIX
driver, on the same shard writer.

Measures, in one run, with interleaved rounds (a slow spell of a shared machine hits both
arms): `vl.extract.store_builder`'s shard writer appending N items of one feature shape in
batches, then closing and committing the shard, as `vl extract` does,
  (guarded) as shipped: every HDF5 write a Python call into GuardedFile;
  (native)  the same writer with HDF5 opening the file itself (sec2 driver);
and reports MiB/s and items/s of each and their ratio. The shard goes to --dir (default a temporary
folder under bench_out/), so the page cache takes most writes: what is measured is the
path's overhead per byte, the part the driver can change.

Target: (guarded) >= 0.90 of (native) for RN101 grids (7 x 7 x 2048 float16 a row,
196 KiB) and ViT-B/32 pooled features (512 float16, 1 KiB: the most calls per byte).

Run from the repository root:
    .venv/bin/python bench/store_write.py                      # both shapes, N=4096, batch 256
    .venv/bin/python bench/store_write.py --n 8192 --repeat 5 --json bench_out/store_write.json
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from cli_run import machine, markdown_table, write_results

SHAPES = {"rn101-grid": (49, 2048), "vitb32-pooled": (512,)}  # per item, float16
TARGET = 0.90


class NativeFile(os.PathLike):
    """Stands where GuardedFile does, but h5py opens the path with HDF5's own driver."""

    def __init__(self, path, **_):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def close(self) -> None:
        pass

    def raise_if_full(self) -> None:
        pass


def write_shard(folder: Path, shape: tuple[int, ...], n: int, batch: int, native: bool) -> float:
    """Seconds to write and commit one shard of `n` items of `shape` through the store's writer."""
    from vl.extract import store_builder

    rng = np.random.default_rng(0)
    block = rng.standard_normal((batch, *shape)).astype(np.float16)  # the same bytes every batch: no RNG in the timing
    guarded = store_builder.GuardedFile
    if native:
        store_builder.GuardedFile = NativeFile
    try:
        tmp, final = folder / ".shard.h5.tmp", folder / "shard.h5"
        final.unlink(missing_ok=True)
        start = time.perf_counter()
        shard = store_builder._OpenShard(tmp, final, {"grid": shape}, np.dtype(np.float16), frames=False)
        for at in range(0, n, batch):
            k = min(batch, n - at)
            shard.append([f"item-{at + i}" for i in range(k)], {"grid": block[:k]}, None)
        shard.close_and_commit()
        seconds = time.perf_counter() - start
    finally:
        store_builder.GuardedFile = guarded
    assert final.stat().st_size >= n * block[0].nbytes, "the shard is smaller than its features"
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096, help="items per shard (default 4096)")
    ap.add_argument("--batch", type=int, default=256, help="items per append (default 256: the GPU batch)")
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds; the fastest of each arm is kept")
    ap.add_argument("--dir", type=Path, help="where the shards are written (default a temporary folder in bench_out/)")
    ap.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = ap.parse_args()
    shapes = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        sys.exit(f"unknown shape {unknown[0]!r}: choose from {', '.join(SHAPES)}")
    command = shlex.join([sys.executable, *sys.argv])
    print(f"command: {command}\nmachine: {machine(f'h5py {h5py.__version__}')}\n", flush=True)

    Path("bench_out").mkdir(exist_ok=True)
    folder = args.dir or Path(tempfile.mkdtemp(prefix="store_write-", dir="bench_out"))
    folder.mkdir(parents=True, exist_ok=True)
    results, rows = {}, []
    try:
        for name in shapes:
            shape = SHAPES[name]
            mib = args.n * int(np.prod(shape)) * 2 / 2**20
            best = {"guarded": float("inf"), "native": float("inf")}
            for round_ in range(args.repeat):
                for arm in (("guarded", "native") if round_ % 2 == 0 else ("native", "guarded")):
                    s = write_shard(folder, shape, args.n, args.batch, native=arm == "native")
                    best[arm] = min(best[arm], s)
                    print(f"  round {round_ + 1}, {name}, {arm}: {mib / s:.0f} MiB/s", file=sys.stderr, flush=True)
            ratio = best["native"] / best["guarded"]
            results[name] = {"mib": mib, "guarded_s": best["guarded"], "native_s": best["native"], "ratio": ratio}
            note = f"N={args.n}, batch {args.batch}, {' x '.join(map(str, shape))} float16"
            rows += [(f"({name}) guarded (GuardedFile)", f"{mib / best['guarded']:.0f} MiB/s",
                      f"{args.n / best['guarded']:,.0f} items/s; {note}", ""),
                     (f"({name}) native (sec2)", f"{mib / best['native']:.0f} MiB/s",
                      f"{args.n / best['native']:,.0f} items/s; {note}", ""),
                     (f"({name}) guarded / native", f"{ratio:.3f}", f">= {TARGET:.2f}",
                      "PASS" if ratio >= TARGET else "FAIL")]
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    print(markdown_table(rows))
    if args.json:
        write_results(args.json, command, machine(), args, results)


if __name__ == "__main__":
    main()
