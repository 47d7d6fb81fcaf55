"""The paper-fidelity switches measured on the demo world (issue #13, docs/fidelity.md).

Each variant is a set of settings applied to both the demo's pre-trainings and the compared
run (a run starts from pre-trainings made the same way); every variant starts from the same
world and feature stores, trains the same epochs with the same seed, and is scored on val by
`vl evaluate`, as `vl demo` does. Scores only compare variants with each other: the demo's
random encoder and small T5 are not the paper's models.

    python bench/fidelity_demo.py --demo vl_demo [--variants image-packed,image-reference] [--json out.json]

`--demo` is a folder a full `vl demo --out DIR` made (its world and feature stores are reused).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cli_run import machine, write_results

# name -> (run kind, method, settings for the pre-training and the run, video features). The
# baseline of each kind is the demo's own recipe (packed inputs, span-cropped video clips read as
# a 3x3 grid a frame). Video features: "grid" is the demo's store; "pooled" is one pooled vector
# a frame (what the reference's video features were, and all its video mode reads), extracted
# from the same world by the same encoder into --out on first use.
REFERENCE = {"visual_inputs": "reference", "extra_tokens": 200}
VARIANTS: dict[str, tuple[str, str, dict, str | None]] = {
    "image-packed": ("image", "adapter", {}, None),
    "image-reference": ("image", "adapter", REFERENCE, None),
    "image-reference-grid-boxes": ("image", "adapter", {**REFERENCE, "visual_boxes": "grid"}, None),
    "image-packed-zero-boxes": ("image", "adapter", {"visual_boxes": "zero"}, None),
    "video-packed-span": ("video", "adapter", {}, "grid"),
    "video-packed-span-pooled": ("video", "adapter", {}, "pooled"),
    "video-reference": ("video", "adapter", {**REFERENCE, "data": {"video_inputs": "reference"}}, "pooled"),
}
POOLED_VIDEO = ("--layer", "pooled", "--fps", "1")  # as the demo's VIDEO_GRID, one vector a frame
SCORES = {"image": ("vqa", "gqa", "nlvr2", "caption"), "video": ("tvqa", "how2qa", "tvc", "yc2c")}


def pooled_video_store(demo: Path, out: Path) -> Path:
    """The demo world's clips as one pooled vector a frame, by the demo's encoder (made once)."""
    from vl.evaluate.demo import RECIPES, VIDEO_TASKS, run_vl

    store, world = out / "features" / "demo_videos_pooled.h5", demo / "world"
    max_frames = RECIPES["full"].video_extract[RECIPES["full"].video_extract.index("--max-frames") + 1]
    model = ["--model-config", str(demo / "models" / "demo-clip.json"), "--pretrained", "none", "--seed", "0"]
    for _, stem in VIDEO_TASKS:
        for split in ("train", "val"):  # `vl extract` skips what the store already holds
            run_vl(["extract", "videos", "--manifest", str(world / "manifests" / f"{stem}_{split}.jsonl"),
                    "--out", str(store), *model, *POOLED_VIDEO, "--max-frames", max_frames])
    return store


def run_variant(demo: Path, out: Path, name: str) -> dict:
    from vl.evaluate.demo import RECIPES, merged, pretrain_both, run_vl, task_entries, train_once, write_config
    from vl.shared.run_dir import eval_scores_path

    kind, method, settings, video_features = VARIANTS[name]
    recipe = RECIPES["full"]
    world, features = demo / "world", demo / "features"
    image_store, video_store = features / "demo_images.h5", features / "demo_videos.h5"
    if not (world / "manifests").is_dir() or not image_store.is_file() or not video_store.is_file():
        raise SystemExit(f"{demo} is not a full `vl demo --out` folder (world/manifests, features/*.h5)")
    if video_features == "pooled":
        video_store = pooled_video_store(demo, out)
    runs, configs = out / name, out / name / "configs"
    started = time.perf_counter()
    pretrain, _ = pretrain_both(recipe, world, image_store, runs, configs, print, settings)
    run_name = f"{kind}-{method}"
    epochs = recipe.epochs[run_name]
    store = image_store if kind == "image" else video_store
    run_settings = {k: v for k, v in settings.items() if k != "extra_tokens"}  # extra_tokens come from init_from
    cfg = merged({**recipe.train, "init_from": str(pretrain), "run_dir": str(runs / run_name), "method": method,
                  "epochs": epochs, "tasks": task_entries(kind, world, store, 32), **recipe.extra.get(run_name, {})},
                 run_settings)
    train_once(runs / run_name, write_config(configs / f"{run_name}.yaml", cfg), epochs)
    first = SCORES[kind][0]
    if not eval_scores_path(runs / run_name, "val", first).is_file():
        run_vl(["evaluate", "--run", str(runs / run_name), "--split", "val", "--checkpoint", "last"])
    scores = {task: json.loads(eval_scores_path(runs / run_name, "val", task).read_text())["scores"]["overall"]
              for task in SCORES[kind]}
    return {"variant": name, "settings": settings, "video_features": video_features, "seconds": round(time.perf_counter() - started, 1), **scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, required=True, help="a folder made by `vl demo --out DIR` (full)")
    parser.add_argument("--out", type=Path, default=Path("bench_out/fidelity"), help="where the variants' runs go")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    rows = [run_variant(args.demo.resolve(), args.out.resolve(), name) for name in names]
    print(machine())
    for kind in ("image", "video"):
        these = [r for r in rows if VARIANTS[r["variant"]][0] == kind]
        if these:
            print(f"| variant | {' | '.join(SCORES[kind])} | seconds |\n|---|{'---|' * len(SCORES[kind])}---|")
            for r in these:
                print(f"| {r['variant']} | {' | '.join(f'{r[t]:.2f}' for t in SCORES[kind])} | {r['seconds']:.0f} |")
    if args.json:
        write_results(args.json, " ".join(sys.argv), machine(), args, {"rows": rows})
    sys.stdout.flush()


if __name__ == "__main__":
    main()
