"""`vl.train(...)`: one training run from Python, as `vl train` runs it from the shell."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from vl.shared.errors import VLError
from vl.train.config import TrainConfig

ConfigSource = str | os.PathLike | TrainConfig | Sequence[str | os.PathLike]


def train(config: ConfigSource | None = None, *, overrides: Sequence[str] = (),
          resume: str | os.PathLike | None = None, resume_from: str | None = None, progress: bool = True) -> Path:
    """Train one run and return its folder.

    config: a YAML file, several (merged left to right, as repeated `-c`), or a TrainConfig;
    overrides: `KEY=VALUE` strings, as `--set`; resume: a run folder to continue (its saved
    config.json; overrides still apply), instead of config; resume_from: which checkpoint
    (`last`, `step-N`; default the newest); progress: the bars (TQDM_DISABLE also silences
    them). Under torchrun every rank calls it, as `vl train` does. Errors are VLError, with
    the message the command would print."""
    from vl.shared import distributed
    from vl.shared.config import load_config
    from vl.shared.run_dir import config_path
    from vl.train.build import inherit_from_run
    from vl.train.loop import train as run_training

    if (config is None) == (resume is None):
        raise VLError("give either config (a YAML file or a TrainConfig: a new run) or resume (a run folder), not "
                      "both or neither")
    if resume is not None:
        saved = config_path(resume)
        if not saved.is_file():
            raise VLError(f"{saved} not found: {resume} is not a vl run directory (or it never started)")
        cfg = load_config(TrainConfig, saved, [f"run_dir={resume}", *overrides])
    elif isinstance(config, TrainConfig):
        cfg = config if not overrides else _with_overrides(config, overrides)
    else:
        paths = [config] if isinstance(config, (str, os.PathLike)) else list(config)
        cfg = load_config(TrainConfig, [Path(p) for p in paths], list(overrides))
    cfg = inherit_from_run(cfg)
    import torch

    backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
    ranks = distributed.ranks_from_env(backend)
    try:
        return run_training(cfg, resume=resume is not None, ranks=ranks, progress=progress, resume_from=resume_from)
    finally:
        distributed.close()


def _with_overrides(cfg: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
    """A TrainConfig with `KEY=VALUE` overrides applied through the config loader (checked
    as a file's settings are)."""
    import tempfile

    from vl.shared.config import load_config, save_config

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        save_config(cfg, path)
        return load_config(TrainConfig, path, list(overrides))

