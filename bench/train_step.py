"""Benchmark `vl train`'s step: its data path against batches already in memory, and the
step time and peak memory of a `bart-base`-shaped VL-BART.

Measures, in one run, on the demo world's VQA examples (`vl data demo`, converted) with a
feature store of random RN101-shaped grids (49 x 2048, float16; written directly, no CLIP):
  (loader)  training samples/s of the real data path, as `vl train` builds it: TaskData /
            TaskDataset reading the HDF5 store, MultiTaskSampler, DataLoader with W workers,
            Collator; each batch moved to the device and put through a full training step;
  (memory)  the same model and steps on the same batches, collated beforehand and held in
            a list: the data path's cost removed;
  (step)    for a `bart-base`-shaped model with random weights at batch 8 (36 pooled visual
            tokens, VQA text): the median step time (forward, weighted loss, backward, AdamW)
            and the peak memory: the process's peak RSS on the CPU (measured in a fresh
            subprocess), torch's peak allocation on a GPU.
The target is loader / memory >= 0.9 with workers: reading and collating in worker processes
must hide behind the step. The model defaults to bart-base for all three (the paper's
backbone); `--model t5-small` shows a lighter step, where the data path matters more.

With `--part mfu` instead: the model FLOPs per sample (torch.utils.flop_counter on one step's
forward and backward) and the achieved share of the GPU's dense bf16 peak (MFU) of full
fine-tuning and the single adapter (configs/paper/image/full.yaml, single_adapter.yaml) at the
paper's per-task batch sizes (VQA 500, GQA 833, NLVR2 166, captions 416), each in the run's
precision; at VQA's batch also fp32 and, with --fused / --compile, fused AdamW and
torch.compile of the backbone (the `optim.fused` and `compile` settings), each against eager.

Run from the repository root (bench_out/ is git-ignored):
    .venv/bin/python bench/train_step.py                      # CPU, bart-base, batch 8, workers 1
    .venv/bin/python bench/train_step.py --device cuda --precision bf16 --workers 4
    python bench/train_step.py --part mfu --device cuda --compile --fused      # bf16, the paper's batches
    .venv/bin/python bench/train_step.py --part mfu --mfu-batch 8 --flops-only   # CPU: FLOPs/sample only
On a shared machine, --repeat 3 keeps the fastest of three runs of each measurement.
"""
from __future__ import annotations

import argparse
import json
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from cli_run import machine, markdown_table, write_results

TARGETS = {"ratio": 0.9}
GRID = (49, 2048)  # CLIP RN101's 7x7 grid, pooled to 6x6 = 36 tokens as the paper
PAPER_VOCAB = 50265 + 200  # bart-base plus the reference's 200 added tokens


# -- inputs -----------------------------------------------------------------------------------
def make_inputs(root: Path, images: int, seed: int) -> tuple[Path, Path]:
    """The demo world's VQA train manifest and a store of random grids for its images (cached)."""
    from vl.data_manifests.demo import write_demo_world
    from vl.data_manifests.registry import ConvertRequest, convert_dataset
    from vl.extract.store_builder import StoreBuilder
    from vl.shared.manifest import DatasetManifest

    manifest, store = root / "manifests/vqa2_train.jsonl", root / "features/grid_rn101.h5"
    if manifest.is_file() and store.is_file():
        return manifest, store
    write_demo_world(root, images=images, videos=6, seed=seed)
    ann = root / "annotations/vqa2"
    convert_dataset("vqa2", ConvertRequest(split="train", questions=ann / "v2_OpenEnded_mscoco_train2014_questions.json",
                                           annotations=ann / "v2_mscoco_train2014_annotations.json",
                                           images=root / "images"), manifest)
    ids = sorted({m for ex in DatasetManifest.read(manifest).examples for m in ex["media"]})
    rng = np.random.default_rng(seed)
    provenance = {"encoder": {"model": "random RN101-shaped grids (bench)"}, "features": {"layer": "grid"}}
    with StoreBuilder(store, provenance, {"grid": GRID}, "float16", overwrite=True) as b:
        for s in range(0, len(ids), 64):
            chunk = ids[s:s + 64]
            b.add(chunk, {"grid": rng.standard_normal((len(chunk), *GRID)).astype(np.float16)})
        b.finish({"extracted": len(ids)}, retried_ids=set(ids))
    return manifest, store


class Setup:
    """Tokenizer, dataset, sampler and model, as `vl.train.loop.train` builds them."""

    def __init__(self, args, manifest: Path, store: Path, cfg=None):
        import torch

        from vl.shared.manifest import DatasetManifest
        from vl.train.data import DataSettings, MultiTaskDataset, MultiTaskSampler, TaskData, TaskDataset
        from vl.shared.devices import amp_dtype
        from vl.train.build import set_trainable
        from vl.train.loop import build_optimizer, tokenizer_kind
        from vl.train.config import TrainConfig
        from vl.train.model import build_vl_model
        from vl.train.tokenizer import manifest_texts, train_tokenizer

        torch.manual_seed(args.seed)
        self.seed = args.seed
        self.device = torch.device(args.device)
        self.tokenizer = train_tokenizer(manifest_texts([DatasetManifest.read(manifest)]), 2000,
                                         tokenizer_kind(args.model))
        self.tokenizer.padding_side = "right"
        data = TaskData("vqa", "train", manifest, store, DataSettings(visual_pool=6))
        self.dataset = MultiTaskDataset({"vqa": TaskDataset(data, self.tokenizer, seed=args.seed)})
        self.sampler = MultiTaskSampler(self.dataset.sizes, {"vqa": args.batch_size}, seed=args.seed)
        self.model = build_vl_model(args.model, GRID[1], init="random",
                                    vocab_size=PAPER_VOCAB if args.model.startswith("bart") else None)
        cfg = cfg or TrainConfig(method=getattr(args, "method", "full"))  # each method with its paper settings
        cfg.optim.fused = getattr(args, "fused", False)
        set_trainable(self.model, cfg, ["vqa"])
        self.model.to(self.device).train()
        if getattr(args, "compile", False):
            self.model.compile_backbone()  # as `compile: true` in a run
        self.optimizer = build_optimizer(self.model, cfg)
        self.amp = amp_dtype(args.precision)

    def loader(self, workers: int):
        from vl.train.data import make_loader

        return make_loader(self.dataset, self.sampler, self.tokenizer, workers, self.seed,
                           pin_memory=self.device.type == "cuda")

    def step(self, batch: dict) -> None:
        import torch

        self.forward_backward(batch)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize()


    def forward_backward(self, batch: dict) -> None:
        """The step's forward (weighted loss, as the loop's) and backward, not the optimizer."""
        import torch

        from vl.train.loop import weighted_sequence_loss
        from vl.train.predict import MODEL_INPUTS, to_device

        batch = to_device(batch, self.device)
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            decoder_input_ids = self.model.backbone.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
            out = self.model(**{k: batch[k] for k in MODEL_INPUTS}, decoder_input_ids=decoder_input_ids,
                             task=batch["task"])
        loss = weighted_sequence_loss(out.logits, batch["labels"], batch["weights"])
        loss.backward()

    def batch_of(self, size: int) -> dict:
        """One VQA batch of `size` examples (the world's examples in turn, repeated as needed)."""
        vqa = self.dataset.datasets["vqa"]
        return self.dataset.collator(self.tokenizer)([vqa.item(i % len(vqa), 0) for i in range(size)])


def samples_per_s(setup: Setup, batches, steps: int) -> dict:
    """Run `steps` training steps on what `batches` yields (after one untimed warm-up step)."""
    it = iter(batches)
    setup.step(next(it))
    t0, seen = time.perf_counter(), 0
    for _ in range(steps):
        batch = next(it)
        setup.step(batch)
        seen += len(batch["ids"])
    seconds = time.perf_counter() - t0
    return {"samples_per_s": seen / seconds, "seconds": seconds, "steps": steps}


def endless(setup: Setup, workers: int):
    """Batches epoch after epoch from one loader, as the training loop draws them."""
    loader, epoch = setup.loader(workers), 0
    while True:
        setup.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def bench_loader_vs_memory(setup: Setup, args) -> dict:
    held = []  # the same batches, in the same order, collated beforehand (pinned, as the loader's on a GPU)
    for batch in endless(setup, 0):
        held.append({k: v.pin_memory() if setup.device.type == "cuda" and hasattr(v, "pin_memory") else v
                     for k, v in batch.items()})
        if len(held) == args.steps + 1:
            break
    samples_per_s(setup, held, args.steps)  # untimed: the allocator and kernels meet every batch shape once
    # Rounds of every measurement, interleaved (memory, loader w..., memory, ...), the best of each
    # kept: a slow spell of a shared machine then hits all of them, not one.
    measures = {"memory": lambda: samples_per_s(setup, held, args.steps)}
    measures.update({f"loader_w{w}": (lambda w=w: samples_per_s(setup, endless(setup, w), args.steps))
                     for w in args.workers})
    runs: dict[str, list[dict]] = {name: [] for name in measures}
    for round_ in range(args.repeat):
        for name, measure in measures.items():
            runs[name].append(measure())
            print(f"  round {round_ + 1}, {name}: {runs[name][-1]['samples_per_s']:.2f} samples/s", file=sys.stderr,
                  flush=True)
    return {name: max(rs, key=lambda x: x["samples_per_s"]) for name, rs in runs.items()}


# -- (step): one model at batch 8, in a fresh process so that its peak memory is its own ------
def step_only(args, manifest: Path, store: Path) -> dict:
    import torch

    rss_mib = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # noqa: E731 (peak so far, KiB)
    setup = Setup(args, manifest, store)
    built = rss_mib()
    batches = [b for b, _ in zip(endless(setup, 0), range(args.steps + 2))]
    if setup.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    setup.step(batches[0])  # warm-up (and the optimizer's state)
    times = []
    for batch in batches[1:]:
        t0 = time.perf_counter()
        setup.step(batch)
        times.append(time.perf_counter() - t0)
    total = sum(p.numel() for p in setup.model.parameters())
    trainable = sum(p.numel() for p in setup.model.parameters() if p.requires_grad)
    out = {"median_step_s": float(np.median(times)), "steps": len(times), "parameters": total,
           "trainable": trainable, "method": args.method,
           "peak_rss_mib": rss_mib(), "rss_after_build_mib": built}
    if setup.device.type == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def bench_step(args, method: str = "full") -> dict:
    """`step_only` in a fresh subprocess (its peak memory is its own), for `method`."""
    cmd = [sys.executable, __file__, "--part", "step", "--method", method, "--model", args.step_model,
           "--batch-size", str(getattr(args, "step_batch_size", 8)),  # (step) is always at batch 8 unless set
           "--device", args.device, "--precision", args.precision, "--steps", str(args.step_steps),
           "--out-dir", str(args.out_dir), "--images", str(args.images), "--seed", str(args.seed)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"`{shlex.join(cmd)}` failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- (mfu): FLOPs per sample and the share of the GPU's peak, at the paper's batch sizes -------
REPO = Path(__file__).resolve().parents[1]
PRESETS = {"full": "configs/paper/image/full.yaml", "adapter": "configs/paper/image/single_adapter.yaml"}
# dense bf16 tensor-core peaks (no sparsity), TFLOP/s, from the vendors' data sheets; the longest
# matching name wins (an "H100 PCIe" is not an SXM H100)
PEAK_BF16_TFLOPS = {"H100": 989.0, "H100 PCIe": 756.0, "H200": 989.0, "A100": 312.0}


def peak_tflops(device: str, override: float | None) -> float | None:
    """The GPU's dense bf16 peak by its name (None on a CPU or an unknown GPU: MFU n/a)."""
    import torch

    if override:
        return override
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    known = [k for k in PEAK_BF16_TFLOPS if k in name]
    return PEAK_BF16_TFLOPS[max(known, key=len)] if known else None


def paper_settings() -> dict:
    """method -> (its paper preset's TrainConfig, {task: per-task batch size}) for full
    fine-tuning and the single adapter (configs/paper/image/)."""
    from vl.shared.config import load_config
    from vl.train.config import TrainConfig

    out = {}
    for method, preset in PRESETS.items():
        cfg = load_config(TrainConfig, REPO / preset)
        out[method] = (cfg, {t.name: t.batch_size for t in cfg.tasks})
    return out


def step_flops(setup: Setup, batch: dict) -> float:
    """FLOPs of one training step's forward and backward as torch runs them (FlopCounterMode:
    matmuls and attention; a frozen weight's gradient is not computed, so not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        setup.forward_backward(batch)
    setup.optimizer.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def mfu_variants(args, task: str) -> list[tuple[str, str, bool, bool]]:
    """(name, precision, compile, fused): every task's batch eagerly in the run's precision;
    at VQA's batch also fp32 (the presets' precision) and each speed-up tried."""
    out = [("eager", args.precision, False, False)]
    if task == "vqa":
        if args.precision != "fp32":
            out.append(("eager fp32", "fp32", False, False))
        if args.fused:
            out.append(("fused AdamW", args.precision, False, True))
        if args.compile:
            out.append(("compile + fused AdamW", args.precision, True, True))
    return out


def bench_mfu(args, manifest: Path, store: Path) -> dict:
    import argparse as ap

    import torch

    peak = peak_tflops(args.device, args.peak_tflops)
    results = {"peak_tflops": peak, "rows": []}
    for method, (cfg, batch_sizes) in paper_settings().items():
        # --flops-only: one batch per method (VQA-shaped inputs give every task's batch the same count per sample)
        for task, paper_batch in list(batch_sizes.items())[:1 if args.flops_only else None]:
            size = args.mfu_batch or paper_batch
            flops = None
            for name, precision, compiled, fused in mfu_variants(args, task):
                run_args = ap.Namespace(**{**vars(args), "precision": precision, "compile": compiled, "fused": fused,
                                           "model": args.step_model})
                setup = Setup(run_args, manifest, store, cfg=cfg)
                batch = setup.batch_of(size)
                if flops is None:  # the same arithmetic for every variant of this method and batch
                    flops = step_flops(setup, batch)
                if args.flops_only:  # a CPU's record: the count does not depend on the machine
                    results["rows"].append({"method": method, "task": task, "batch": size, "paper_batch": paper_batch,
                                            "variant": name, "precision": precision, "flops_per_sample": flops / size,
                                            "text_tokens": int(batch["input_ids"].shape[1]),
                                            "target_tokens": int(batch["labels"].shape[1]),
                                            "trainable": sum(p.numel() for p in setup.model.parameters()
                                                             if p.requires_grad)})
                    print(f"  {method} {task} b{size}: {flops / size / 1e9:.2f} GFLOP/sample", file=sys.stderr)
                    break
                for _ in range(2 if not compiled else 3):  # warm-up (compiling, the optimizer's state)
                    setup.step(batch)
                times = []
                for _ in range(args.mfu_steps):
                    t0 = time.perf_counter()
                    setup.step(batch)
                    times.append(time.perf_counter() - t0)
                step_s = float(np.median(times))
                row = {"method": method, "task": task, "batch": size, "paper_batch": paper_batch, "variant": name,
                       "precision": precision, "flops_per_sample": flops / size, "step_s": step_s,
                       "samples_per_s": size / step_s, "tflops": flops / step_s / 1e12,
                       "mfu": flops / step_s / (peak * 1e12) if peak else None,
                       "trainable": sum(p.numel() for p in setup.model.parameters() if p.requires_grad),
                       "text_tokens": int(batch["input_ids"].shape[1]), "target_tokens": int(batch["labels"].shape[1])}
                results["rows"].append(row)
                mfu = "n/a" if row["mfu"] is None else f"{100 * row['mfu']:.1f} %"
                print(f"  {method} {task} b{size} {name}: {row['step_s'] * 1000:.1f} ms, "
                      f"{row['flops_per_sample'] / 1e9:.2f} GFLOP/sample, MFU {mfu}", file=sys.stderr, flush=True)
                del setup
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
    return results


def report_mfu(r: dict, args) -> str:
    peak = r["peak_tflops"]
    peak_text = f"{peak:g} TFLOP/s dense bf16" if peak else "n/a (a CPU or an unknown GPU: --peak-tflops)"
    lines = [f"{args.step_model}, {args.device}; peak {peak_text}; "
             "VQA-shaped inputs (36 visual tokens, the demo world's questions and answers) at each task's batch size",
             "", "| method | task (batch) | variant | GFLOP/sample | step | samples/s | TFLOP/s | MFU | vs eager |",
             "|---|---|---|---|---|---|---|---|---|"]
    if all("step_s" not in x for x in r["rows"]):  # --flops-only
        lines = lines[:2] + ["| method | task (batch) | trainable | GFLOP/sample (forward + backward) | text / target "
                             "tokens |", "|---|---|---|---|---|"]
        lines += [f"| {x['method']} | {x['task']} ({x['batch']}, paper: {x['paper_batch']}) | {x['trainable']:,} | "
                  f"{x['flops_per_sample'] / 1e9:.2f} | {x['text_tokens']} / {x['target_tokens']} |" for x in r["rows"]]
        return "\n".join(lines)
    eager = {(x["method"], x["task"]): x["step_s"] for x in r["rows"] if x["variant"] == "eager"}
    for x in r["rows"]:
        gain = eager[(x["method"], x["task"])] / x["step_s"]
        mfu = "n/a" if x["mfu"] is None else f"{100 * x['mfu']:.1f} %"
        batch = f"{x['batch']}" + ("" if x["batch"] == x["paper_batch"] else f" (paper: {x['paper_batch']})")
        lines.append(f"| {x['method']} | {x['task']} ({batch}) | {x['variant']} ({x['precision']}) | "
                     f"{x['flops_per_sample'] / 1e9:.2f} | {x['step_s'] * 1000:.1f} ms | {x['samples_per_s']:.1f} | "
                     f"{x['tflops']:.2f} | {mfu} | x{gain:.2f} |")
    return "\n".join(lines)


# -- report -----------------------------------------------------------------------------------
def report(r: dict, args) -> str:
    mem = r["memory"]["samples_per_s"]
    s = f"{args.model}, batch {args.batch_size}, {args.precision}, {args.device}"
    rows = [("(memory) batches held in memory", f"{mem:.2f} samples/s", s, "")]
    for w in args.workers:
        have = r[f"loader_w{w}"]["samples_per_s"]
        ratio = have / mem
        r.setdefault("ratios", {})[f"loader_w{w}/memory"] = ratio
        target = f">= {TARGETS['ratio']}" if w > 0 else "(information: no workers)"
        rows += [(f"(loader) HDF5 store, {w} workers", f"{have:.2f} samples/s", s, ""),
                 (f"loader w{w} / memory", f"{ratio:.3f}", target,
                  ("PASS" if ratio >= TARGETS["ratio"] else "FAIL") if w > 0 else "")]
    st = r["step"]
    where = f"{args.step_model}, batch 8, {args.precision}, {args.device}, {st['parameters']:,} parameters"
    rows.append(("(step) median step time", f"{st['median_step_s'] * 1000:.1f} ms", where, ""))
    if "peak_gpu_mib" in st:
        rows.append(("(step) peak GPU memory", f"{st['peak_gpu_mib']:.0f} MiB", "torch.cuda.max_memory_allocated", ""))
    rows.append(("(step) peak RSS", f"{st['peak_rss_mib']:.0f} MiB",
                 f"after building the model: {st['rss_after_build_mib']:.0f} MiB", ""))
    return markdown_table(rows)


def add_shared_args(ap: argparse.ArgumentParser) -> None:
    """The options this benchmark shares with bench/peft_step.py and bench/generate.py: device,
    precision, the demo-world inputs, repeats and the JSON output."""
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="default fp32 on cpu, bf16 on cuda")
    ap.add_argument("--images", type=int, default=64, help="demo-world images (3 VQA questions each; default 64)")
    ap.add_argument("--out-dir", type=Path, default=Path("bench_out"), help="inputs (default bench_out)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="run each measurement R times, keep the fastest (default 1)")
    ap.add_argument("--json", type=Path, help="also write the numbers to this JSON file")


def default_precision(args: argparse.Namespace) -> str:
    """--precision, or its default: bf16 on CUDA, fp32 on the CPU."""
    return args.precision or ("bf16" if args.device.startswith("cuda") else "fp32")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bart-base", help="backbone shape of (loader)/(memory) (default bart-base)")
    ap.add_argument("--step-model", default="bart-base", help="backbone shape of (step) (default bart-base)")
    ap.add_argument("--batch-size", type=int, default=8, help="(loader)/(memory) batch size (default 8)")
    ap.add_argument("--workers", default="0,1", help="DataLoader workers of (loader), comma-separated (default 0,1)")
    ap.add_argument("--steps", type=int, default=12, help="timed steps of each measurement (default 12)")
    ap.add_argument("--step-steps", type=int, default=8, help="timed steps of (step) (default 8)")
    add_shared_args(ap)
    ap.add_argument("--method", default="full", help=argparse.SUPPRESS)  # of --part step (bench/peft_step.py)
    ap.add_argument("--part", choices=["all", "step", "mfu"], default="all",
                    help="all: (loader), (memory), (step); mfu: FLOPs per sample and MFU of full fine-tuning and "
                         "the single adapter at the paper's per-task batch sizes (--step-model's shape)")
    ap.add_argument("--compile", action="store_true", help="mfu: also time torch.compile of the backbone "
                                                           "(compile: true) with fused AdamW, at VQA's batch")
    ap.add_argument("--fused", action="store_true", help="mfu: also time fused AdamW (optim.fused: true)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="mfu: the GPU's dense bf16 peak in TFLOP/s (default: by name, H100/H200 989, A100 312)")
    ap.add_argument("--mfu-batch", type=int, default=None,
                    help="mfu: one batch size for every task instead of the paper's (a CPU cannot take 833)")
    ap.add_argument("--mfu-steps", type=int, default=10, help="mfu: timed steps of each row (default 10)")
    ap.add_argument("--flops-only", action="store_true",
                    help="mfu: count the FLOPs per sample, time nothing (what a shared CPU can record)")
    args = ap.parse_args()
    args.precision = default_precision(args)
    args.workers = [int(w) for w in str(args.workers).split(",")]
    manifest, store = make_inputs(args.out_dir / f"train_world_{args.images}", args.images, args.seed)
    if args.part == "step":
        print(json.dumps(step_only(args, manifest, store)))
        return
    if args.part == "mfu":
        command = shlex.join([sys.executable, *sys.argv])
        print(f"command: {command}\nmachine: {machine()}\n", flush=True)
        r = bench_mfu(args, manifest, store)
        print(report_mfu(r, args))
        if args.json:
            write_results(args.json, command, machine(), args, r)
        return

    command = shlex.join([sys.executable, *sys.argv])
    print(f"command: {command}\nmachine: {machine()}\n", flush=True)
    r = {"step": bench_step(args)}
    r.update(bench_loader_vs_memory(Setup(args, manifest, store), args))
    print(report(r, args))
    if args.json:
        write_results(args.json, command, machine(), args, r)


if __name__ == "__main__":
    main()
