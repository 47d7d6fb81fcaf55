"""Benchmark `vl evaluate`'s generation: examples/s of greedy and beam-5 decoding on a
`bart-base`-shaped VL-BART with random weights (nothing downloaded) at the evaluation
batch size, with and without length bucketing.

Measures, in one run, on the first N of the demo world's VQA questions (`vl data demo`,
converted) with bench/train_step.py's store of random RN101-shaped grids (pooled to 6 x 6
= 36 visual tokens, as the paper):
  (greedy)  `generate_predictions` as `vl evaluate` runs it: the encoder once per batch,
            transformers' `generate` with its key/value cache, VQA's settings
            (max_new_tokens 10, 1 beam);
  (beam-5)  the same with num_beams=5 (the captioning tasks' search);
each with batches bucketed by input length (`vl evaluate`'s default) and without (batches
in manifest order, as before issue #18), and the share of each arm's text positions that
are padding. Random weights seldom emit the end token early, so most examples decode all
max_new_tokens tokens; both arms decode the same examples with the same model, and the
predictions are checked to be equal.

Run from the repository root (bench_out/ is git-ignored):
    .venv/bin/python bench/generate.py --n 128                          # CPU, fp32, batch 64
    .venv/bin/python bench/generate.py --device cuda --precision bf16 --n 4096 --images 1400
On a shared machine, --repeat 3 keeps the fastest of three runs of each measurement.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from cli_run import machine, markdown_table, write_results
from train_step import GRID, PAPER_VOCAB, add_shared_args, default_precision, make_inputs

DECODES = {"greedy": 1, "beam-5": 5}  # name -> num_beams


class Setup:
    """The model, tokenizer and dataset of the first N questions, as `vl evaluate` builds them."""

    def __init__(self, args, manifest: Path, store: Path):
        import torch

        from vl.shared.devices import amp_dtype
        from vl.shared.manifest import DatasetManifest
        from vl.train.data import DataSettings, TaskData, TaskDataset, TaskOptions
        from vl.train.loop import tokenizer_kind
        from vl.train.model import build_vl_model
        from vl.train.tokenizer import manifest_texts, train_tokenizer

        torch.manual_seed(args.seed)
        self.device = torch.device(args.device)
        full = DatasetManifest.read(manifest)
        if len(full.examples) < args.n:
            sys.exit(f"the demo world has {len(full.examples)} questions; raise --images (3 questions an image) "
                     f"to have --n {args.n}")
        subset = DatasetManifest(path=manifest, examples=full.examples[:args.n], meta=full.meta)
        self.tokenizer = train_tokenizer(manifest_texts([full]), 2000, tokenizer_kind(args.model))
        self.tokenizer.padding_side = "right"
        self.datasets = {}
        for name, beams in DECODES.items():
            data = TaskData("vqa", "train", subset, store, DataSettings(visual_pool=6), TaskOptions(num_beams=beams))
            self.datasets[name] = TaskDataset(data, self.tokenizer, seed=args.seed, predict=True)
        self.model = build_vl_model(args.model, GRID[1], init="random",
                                    vocab_size=PAPER_VOCAB if args.model.startswith("bart") else len(self.tokenizer))
        self.model.to(self.device).eval()
        self.amp = amp_dtype(args.precision)

    def autocast(self):
        from vl.shared.devices import autocast

        return autocast(self.device, self.amp)  # as `vl evaluate` runs it

    def predict(self, decode: str, batch_size: int, bucket: bool) -> dict:
        import torch

        from vl.train.predict import generate_predictions

        t0 = time.perf_counter()
        predictions = generate_predictions(self.model, self.datasets[decode], self.tokenizer, self.device, batch_size,
                                           self.autocast, bucket=bucket)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        return {"examples_per_s": len(predictions) / seconds, "seconds": seconds, "predictions": predictions}


def padding_share(setup: Setup, batch_size: int, bucket: bool) -> float:
    """Padded text positions / all text positions over the batches (each padded to its longest)."""
    from vl.train.predict import input_lengths, prediction_batches

    ds = setup.datasets["greedy"]
    padded = total = 0
    for batch in prediction_batches(ds, batch_size, bucket):
        lengths = input_lengths(ds, batch)
        total += max(lengths) * len(lengths)
        padded += max(lengths) * len(lengths) - sum(lengths)
    return padded / total


def bench(setup: Setup, args) -> dict:
    arms = [(decode, bucket) for decode in DECODES for bucket in (True, False)]
    setup.predict("greedy", args.batch_size, True)  # untimed: the allocator and kernels meet the shapes once
    runs: dict[tuple[str, bool], list[dict]] = {arm: [] for arm in arms}
    for round_ in range(args.repeat):  # interleaved rounds: a slow spell of a shared machine hits every arm
        for decode, bucket in arms:
            runs[decode, bucket].append(setup.predict(decode, args.batch_size, bucket))
            print(f"  round {round_ + 1}, {decode}, {'bucketed' if bucket else 'manifest order'}: "
                  f"{runs[decode, bucket][-1]['examples_per_s']:.2f} examples/s", file=sys.stderr, flush=True)
    best = {arm: max(rs, key=lambda x: x["examples_per_s"]) for arm, rs in runs.items()}
    for decode in DECODES:  # bucketing regroups the examples; it must not change a prediction
        if best[decode, True]["predictions"] != best[decode, False]["predictions"]:
            sys.exit(f"{decode}: length bucketing changed predictions")
    return {f"{decode}/{'bucketed' if bucket else 'unbucketed'}": {k: v for k, v in r.items() if k != "predictions"}
            for (decode, bucket), r in best.items()} | {
        "padding_share": {"bucketed": padding_share(setup, args.batch_size, True),
                          "unbucketed": padding_share(setup, args.batch_size, False)}}


def report(r: dict, args) -> str:
    s = f"{args.model}, batch {args.batch_size}, {args.precision}, {args.device}, N={args.n}"
    rows = []
    for decode in DECODES:
        with_, without = r[f"{decode}/bucketed"]["examples_per_s"], r[f"{decode}/unbucketed"]["examples_per_s"]
        rows += [(f"({decode}) length-bucketed", f"{with_:.2f} examples/s", s, ""),
                 (f"({decode}) manifest order", f"{without:.2f} examples/s", s, ""),
                 (f"({decode}) bucketed / manifest order", f"{with_ / without:.3f}", "(information)", "")]
    pad = r["padding_share"]
    rows.append(("text padding, bucketed / manifest order", f"{pad['bucketed']:.1%} / {pad['unbucketed']:.1%}",
                 "padded text positions of all text positions", ""))
    return markdown_table(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bart-base", help="backbone shape (default bart-base)")
    ap.add_argument("--n", type=int, default=128, help="questions predicted by each measurement (default 128)")
    ap.add_argument("--batch-size", type=int, default=64, help="examples per batch (default 64: val_batch_size's)")
    add_shared_args(ap)
    args = ap.parse_args()
    args.precision = default_precision(args)
    manifest, store = make_inputs(args.out_dir / f"train_world_{args.images}", args.images, args.seed)

    command = shlex.join([sys.executable, *sys.argv])
    print(f"command: {command}\nmachine: {machine()}\n", flush=True)
    r = bench(Setup(args, manifest, store), args)
    print(report(r, args))
    if args.json:
        write_results(args.json, command, machine(), args, r)


if __name__ == "__main__":
    main()
