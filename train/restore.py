"""A finished (or stopped) run back in memory: its config, tokenizer, and model with the
method applied and a checkpoint loaded, as `vl evaluate` and the tests use it.

Checkpoints hold only the trainable tensors, so the rest is rebuilt: the backbone from its
hub id or folder (init=pretrained), or from the run's seed (init=random); run.json keeps
a digest of those frozen weights, and a rebuild that does not match it is refused.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vl.shared.config import load_config
from vl.shared.errors import VLError
from vl.train.config import TrainConfig
from vl.train.loop import CONFIG_FILE, TOKENIZER_DIR, build_model
from vl.train.model import VLModel
from vl.train.run_dir import frozen_sha256, load_checkpoint, read_run_json
from vl.train.tokenizer import add_extra_tokens, load_tokenizer

CHECKPOINTS = ("best", "last")


@dataclass
class TrainedRun:
    run_dir: Path
    cfg: TrainConfig
    model: VLModel  # in eval mode, on the device asked for
    tokenizer: Any
    checkpoint: str  # which one was loaded
    extra: dict  # the checkpoint's state: epoch, step, best, ...


def load_trained(run_dir: str | os.PathLike, checkpoint: str = "best", device: str = "cpu") -> TrainedRun:
    """Rebuild the model of `run_dir` and load `checkpoints/<checkpoint>` into it
    ("best" falls back to "last" when the run never validated)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise VLError(f"{run_dir} is not a vl run directory (no {CONFIG_FILE}): give a folder `vl train` made")
    if checkpoint not in CHECKPOINTS:
        raise VLError(f"checkpoint must be one of {', '.join(CHECKPOINTS)} (got {checkpoint!r})")
    have = [c for c in CHECKPOINTS if (run_dir / "checkpoints" / c).is_dir()]
    if not have:
        raise VLError(f"{run_dir} has no checkpoints yet (training stopped before its first epoch ended): "
                      f"continue it with `vl train --resume {run_dir}`")
    name = checkpoint if checkpoint in have else "last" if checkpoint == "best" and "last" in have else None
    if name is None:
        raise VLError(f"{run_dir} has no '{checkpoint}' checkpoint; it has: {', '.join(have)}")
    cfg = load_config(TrainConfig, run_dir / CONFIG_FILE, [f"run_dir={run_dir}"])
    facts = read_run_json(run_dir).get("model") or {}
    if not facts.get("feat_dim") or not facts.get("vocab_size"):
        raise VLError(f"{run_dir}/run.json records no model facts (feat_dim, vocab_size): it was made by an older "
                      "vl; train the run again with this version")
    tokenizer = load_tokenizer(cfg.tokenizer if cfg.tokenizer is not None else str(run_dir / TOKENIZER_DIR))
    add_extra_tokens(tokenizer, cfg.extra_tokens)
    tokenizer.padding_side = "right"
    model, _ = build_model(cfg, facts["feat_dim"], facts["vocab_size"], [t.name for t in cfg.tasks])
    if frozen_sha256(model) != facts.get("frozen_sha256"):
        raise VLError(f"the frozen weights rebuilt for {run_dir} differ from the run's (run.json frozen_sha256): "
                      f"backbone {cfg.backbone!r} ({cfg.init}) changed since training, or another torch version draws "
                      "other random weights", hint="Evaluate with the backbone files (and torch version) it was "
                                                   "trained with.")
    extra = load_checkpoint(run_dir, name, model, restore_rng=False)
    model.to(torch.device(device)).eval()
    return TrainedRun(run_dir, cfg, model, tokenizer, name, extra)
