"""What the benchmark scripts share: running `vl ...` as a subprocess while sampling the
peak resident memory of its whole process tree, and describing the machine."""
from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def tree_pids(pid: int) -> list[int]:
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                pids += tree_pids(int(child))
    return pids


def rss_mib(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run_measured(cmd: list[str]) -> tuple[float, float, str]:
    """Run `cmd`; return its wall time (s), the peak RSS of its process tree (MiB, sampled
    every 50 ms) and its output (stdout and stderr). Exits on any failure."""
    peak = 0.0
    with tempfile.TemporaryFile() as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            peak = max(peak, sum(rss_mib(p) for p in tree_pids(proc.pid)))
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        log.seek(0)
        output = log.read().decode(errors="replace")
    if proc.returncode != 0:
        sys.exit(f"`{shlex.join(cmd)}` failed ({proc.returncode}):\n{output[-5000:]}")
    return wall, peak, output


def run_extract(args: list[str], out: Path) -> dict:
    """Run `vl extract ... --out OUT` on a fresh store; return its run record (from the
    sidecar) with the process wall time, the peak RSS of the process tree (CLI plus any
    DataLoader workers, sampled every 50 ms) and the command. Exits on any failure."""
    for p in (out, out.with_name(out.name + ".json"), out.with_name(f".{out.name}.lock")):
        p.unlink(missing_ok=True)
    shutil.rmtree(out.with_name(out.name + ".parts"), ignore_errors=True)
    cmd = [sys.executable, "-m", "vl.shared.cli", *args, "--out", str(out)]
    wall, peak, _ = run_measured(cmd)
    run = json.loads(out.with_name(out.name + ".json").read_text())["provenance"]["runs"][-1]
    if run["failed"] or run["extracted"] != run["inputs"]:
        sys.exit(f"`{shlex.join(cmd)}` extracted {run['extracted']} of {run['inputs']} inputs")
    return {**run, "wall_s": wall, "peak_rss_mib": peak, "command": shlex.join(cmd)}


def cpu_model() -> str:
    return next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), platform.processor() or "unknown CPU")


@functools.cache
def load_average() -> str:
    """The 1-minute load average when first asked (each script asks before it measures), so
    the JSON written at the end states the load the run started under, as its printout."""
    return f"load average {os.getloadavg()[0]:.2f} at start"


def machine(libraries: str = "") -> str:
    """One line: CPU, cores, torch (and its threads), any `libraries` text, Python, load, GPU."""
    import torch

    text = (f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"{libraries + ', ' if libraries else ''}Python {platform.python_version()}, {load_average()}")
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def markdown_table(rows: list[tuple[str, str, str, str]]) -> str:
    lines = ["| measurement | value | notes / target | result |", "|---|---|---|---|"]
    lines += [f"| {m} | {v} | {t} | {ok} |" for m, v, t, ok in rows]
    return "\n".join(lines)


def best_of(name: str, measure, repeat: int, rate: str, unit: str) -> dict:
    """Run `measure` `repeat` times, one at a time, and keep the fastest by `rate`."""
    print(f"running ({name}) ...", file=sys.stderr, flush=True)
    runs = [measure() for _ in range(repeat)]
    print("  " + ", ".join(f"{x[rate]:.2f}" for x in runs) + f" {unit}", file=sys.stderr, flush=True)
    return max(runs, key=lambda x: x[rate])


def write_results(path: Path, command: str, machine: str, args, results: dict) -> None:
    """The numbers of one benchmark run as JSON (for docs/benchmarks.md and comparisons)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    path.write_text(json.dumps({"command": command, "machine": machine, "settings": settings,
                                "results": results}, indent=2))
