"""A finished (or stopped) run back in memory: its config, tokenizer, and model with the
method applied and a checkpoint loaded, as `vl evaluate` and the tests use it.

Checkpoints hold only the trainable tensors, so the rest is rebuilt: the backbone from its
hub id or folder (init=pretrained), or from the run's seed (init=random); run.json keeps
a digest of those frozen weights, and a rebuild that does not match it is refused.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vl.shared.config import load_config
from vl.shared.errors import VLError
from vl.train.config import Checkpoint, TrainConfig
from vl.train.loop import CONFIG_FILE, TOKENIZER_DIR, build_model
from vl.train.model import VLModel
from vl.train.peft.methods import METHODS
from vl.train.run_dir import frozen_sha256, load_checkpoint, read_run_json
from vl.train.tokenizer import add_extra_tokens, load_tokenizer, vis_token_ids

CHECKPOINTS = typing.get_args(Checkpoint)


@dataclass
class TrainedRun:
    run_dir: Path
    cfg: TrainConfig
    model: VLModel  # in eval mode, on the device asked for
    tokenizer: Any
    checkpoint: str  # which one was loaded
    extra: dict  # the checkpoint's state: epoch, step, best, ...


def load_trained(run_dir: str | os.PathLike, checkpoint: str | None = None, device: str = "cpu") -> TrainedRun:
    """Rebuild the model of `run_dir` and load `checkpoints/<checkpoint>` into it; None: the
    run's `eval_checkpoint` ("best" falls back to "last" when the run never validated)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise VLError(f"{run_dir} is not a vl run directory (no {CONFIG_FILE}): give a folder `vl train` made")
    if checkpoint is not None and checkpoint not in CHECKPOINTS:
        raise VLError(f"checkpoint must be one of {', '.join(CHECKPOINTS)} (got {checkpoint!r})")
    have = [c for c in CHECKPOINTS if (run_dir / "checkpoints" / c).is_dir()]
    if not have:
        raise VLError(f"{run_dir} has no checkpoints yet (training stopped before its first epoch ended): "
                      f"continue it with `vl train --resume {run_dir}`")
    cfg = load_config(TrainConfig, run_dir / CONFIG_FILE, [f"run_dir={run_dir}"])
    checkpoint = checkpoint or cfg.eval_checkpoint
    name = checkpoint if checkpoint in have else "last" if checkpoint == "best" and "last" in have else None
    if name is None:
        raise VLError(f"{run_dir} has no '{checkpoint}' checkpoint; it has: {', '.join(have)}")
    facts = read_run_json(run_dir).get("model") or {}
    if not facts.get("feat_dim") or not facts.get("vocab_size"):
        raise VLError(f"{run_dir}/run.json records no model facts (feat_dim, vocab_size): it was made by an older "
                      "vl; train the run again with this version")
    tokenizer = load_tokenizer(cfg.tokenizer if cfg.tokenizer is not None else str(run_dir / TOKENIZER_DIR))
    add_extra_tokens(tokenizer, cfg.extra_tokens)
    tokenizer.padding_side = "right"
    model, _ = build_model(cfg, facts["feat_dim"], facts["vocab_size"], [t.name for t in cfg.tasks],
                           vis_token_ids(tokenizer))
    if frozen_sha256(model) != facts.get("frozen_sha256"):
        raise VLError(f"the frozen weights rebuilt for {run_dir} differ from the run's (run.json frozen_sha256): "
                      f"backbone {cfg.backbone!r} ({cfg.init}) changed since training, or another torch version draws "
                      "other random weights", hint="Evaluate with the backbone files (and torch version) it was "
                                                   "trained with.")
    extra = load_checkpoint(run_dir, name, model, restore_rng=False)
    model.to(torch.device(device)).eval()
    return TrainedRun(run_dir, cfg, model, tokenizer, name, extra)


# -- starting a run from another (init_from) -----------------------------------------------

INHERITED = ("backbone", "init", "tokenizer", "extra_tokens")  # what a run takes from the run it starts from


def _source_config(source: Path) -> TrainConfig:
    if not (source / CONFIG_FILE).is_file():
        raise VLError(f"init_from {source} is not a vl run directory (no {CONFIG_FILE}): give a folder `vl train` "
                      "made, e.g. a pre-training run")
    return load_config(TrainConfig, source / CONFIG_FILE, [f"run_dir={source}"])


def inherit_from_run(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with the backbone, init, tokenizer and extra_tokens of the run it starts from
    (cfg.init_from; unchanged without one). That run's tokenizer is reused: its trained one
    (`<run>/tokenizer`) or the folder / hub id it named. Setting one of these to something
    else is refused: the weights only fit their own backbone and vocabulary."""
    if cfg.init_from is None:
        return cfg
    source = Path(cfg.init_from)
    src = _source_config(source)
    wanted = {"backbone": src.backbone, "init": src.init, "extra_tokens": src.extra_tokens,
              "tokenizer": src.tokenizer if src.tokenizer is not None else str(source / TOKENIZER_DIR)}
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name in INHERITED}
    clashes = [f"{key}: {getattr(cfg, key)!r} here, {wanted[key]!r} in {source}" for key in INHERITED
               if getattr(cfg, key) not in (defaults[key], wanted[key])]
    if clashes:
        raise VLError(f"this run starts from {source} (init_from) and so uses its {', '.join(INHERITED)}; "
                      f"but the config sets: {'; '.join(clashes)}",
                      hint="Leave these settings out (they come from that run), or drop init_from.")
    return dataclasses.replace(cfg, **wanted)


def starting_model(cfg: TrainConfig, feat_dim: int, vocab_size: int) -> VLModel:
    """The weights of cfg.init_from's best checkpoint (else its last) as a plain VLModel: a
    run whose method adds no modules as it is, a single LoRA merged into its base weights."""
    source = Path(cfg.init_from)
    src = load_trained(source, "best")
    facts = read_run_json(source)["model"]
    if facts["feat_dim"] != feat_dim:
        raise VLError(f"{source} (init_from) was trained on features {facts['feat_dim']} wide, but this run's stores "
                      f"hold {feat_dim}-wide ones", hint="Extract this run's media with the encoder that run used.")
    if facts["vocab_size"] != vocab_size:
        raise VLError(f"{source} (init_from) has a {facts['vocab_size']}-token vocabulary but this run's tokenizer "
                      f"has {vocab_size}: the tokenizer must be that run's (leave tokenizer and extra_tokens unset)")
    if cfg.dropout is not None and cfg.dropout != src.cfg.dropout:
        raise VLError(f"dropout comes from {source} (init_from), which built its model with dropout "
                      f"{src.cfg.dropout}; this config sets {cfg.dropout}", hint="Leave dropout unset.")
    if src.cfg.method == "lora" and src.cfg.lora.sharing == "single":
        from vl.train.peft.lora import merge_lora

        merge_lora(src.model)
    elif METHODS[src.cfg.method].sections:
        raise VLError(f"{source} (init_from) trained with method {src.cfg.method}, whose added modules do not carry "
                      "over to another run", hint="Start from a run with method full, visual-only, visual+ln or a "
                                                  "single LoRA (merged into the weights).")
    return src.model
