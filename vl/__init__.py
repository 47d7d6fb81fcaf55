"""vl: parameter-efficient transfer learning for vision-and-language tasks, from Python.

The same stages as the `vl` command, for notebooks and scripts:

    import vl

    vl.extract_images("images/", out="features/mine.h5", model="RN101", pool=6)   # stage 1
    run_dir = vl.train("configs/paper/image/single_adapter.yaml",                # stage 2
                       overrides=["run_dir=runs/adapter"])
    results = vl.evaluate(run_dir, split="val")                                  # stage 3

    run = vl.load_run(run_dir)                       # a trained run, ready to answer
    run.predict(image="cat.jpg", question="what color is the cat?")            # -> "black"
    run.predict(video="clip.mp4", question="Where is she?", choices=["home", "work", "bar"])

`vl.train` and `vl.evaluate` are the stage packages themselves, callable (their
submodules stay importable: `vl.train.loop`, `vl.evaluate.metrics`). Nothing heavy is
imported until a name is used, so `import vl` is instant and torch-free.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Run", "evaluate", "extract_images", "extract_videos", "load_run", "train"]

# name -> "module:attribute" (or "module" for the callable stage packages)
_LAZY = {
    "Run": "vl.runs:Run",
    "load_run": "vl.runs:load_run",
    "extract_images": "vl.runs:extract_images",
    "extract_videos": "vl.runs:extract_videos",
    "train": "vl.train",
    "evaluate": "vl.evaluate",
}


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'vl' has no attribute {name!r}; the public names are: {', '.join(__all__)}")
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
