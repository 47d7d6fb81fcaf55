"""Benchmark one training step of each kind of method on a `bart-base`-shaped VL-BART:
full fine-tuning against a single adapter, single LoRA and a single prompt, at the same batch.

For each method, in a fresh subprocess (`bench/train_step.py --part step`, so each peak
is its own): the method applied with its paper settings (adapter reduction 8, LoRA rank 128
on q/v + biases, prompt 40 with an 800-wide MLP; random weights, nothing downloaded), the
median time of a training step (forward, loss, backward, AdamW) on the demo world's VQA
batches with RN101-shaped grids, and the peak memory (peak RSS on the CPU, peak allocation
on a GPU). The table gives each against full fine-tuning; the target is an adapter step
clearly cheaper in memory than full fine-tuning.

Run from the repository root:
    .venv/bin/python bench/peft_step.py                   # CPU, fp32, batch 8
    python bench/peft_step.py --device cuda --precision bf16
"""
from __future__ import annotations

import argparse
import shlex
import sys

from cli_run import machine, markdown_table, write_results
from train_step import add_shared_args, bench_step, default_precision, make_inputs

METHODS = ("full", "adapter", "lora", "prompt")


def report(r: dict, args) -> str:
    full = r["full"]
    mem_key = "peak_gpu_mib" if "peak_gpu_mib" in full else "peak_rss_mib"
    rows = []
    for m in METHODS:
        x = r[m]
        share = 100 * x["trainable"] / x["parameters"]
        rows.append((f"{m}: step time", f"{x['median_step_s'] * 1000:.1f} ms",
                     f"{x['trainable']:,} trainable ({share:.2f}%); x{x['median_step_s'] / full['median_step_s']:.2f} "
                     "of full", ""))
        memory = x[mem_key] - (0 if mem_key == "peak_gpu_mib" else x["rss_after_build_mib"])
        full_memory = full[mem_key] - (0 if mem_key == "peak_gpu_mib" else full["rss_after_build_mib"])
        what = "peak GPU allocation" if mem_key == "peak_gpu_mib" else "peak RSS above the built model"
        ok = ""
        if m == "adapter":
            ok = "PASS" if memory <= 0.8 * full_memory else "FAIL"
        rows.append((f"{m}: {what}", f"{memory:.0f} MiB", f"x{memory / full_memory:.2f} of full"
                     + ("; target <= x0.80" if m == "adapter" else ""), ok))
    return markdown_table(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--step-model", default="bart-base", help="backbone shape (default bart-base)")
    ap.add_argument("--step-batch-size", type=int, default=8, help="batch size (default 8)")
    ap.add_argument("--step-steps", type=int, default=6, help="timed steps per method (default 6)")
    add_shared_args(ap)
    args = ap.parse_args()
    args.precision = default_precision(args)
    make_inputs(args.out_dir / f"train_world_{args.images}", args.images, args.seed)  # once, before the runs
    command = shlex.join([sys.executable, *sys.argv])
    print(f"command: {command}\nmachine: {machine()}\n", flush=True)
    r = {}
    for m in METHODS:  # the fastest of `repeat` runs of each
        print(f"running ({m}) ...", file=sys.stderr, flush=True)
        r[m] = min((bench_step(args, m) for _ in range(args.repeat)), key=lambda x: x["median_step_s"])
    print(report(r, args))
    if args.json:
        write_results(args.json, command, machine(), args, r)


if __name__ == "__main__":
    main()
