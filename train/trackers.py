"""Where training metrics go besides the epoch lines of metrics.jsonl: `logging.report_to`.

    jsonl        per-step records in <run_dir>/metrics.jsonl, `"kind": "step"` (no extra package)
    tensorboard  <run_dir>/tensorboard/ via torch.utils.tensorboard (pip install 'vl[tensorboard]')
    wandb        a Weights & Biases run named after the run dir, files in <run_dir>/wandb/ unless
                 WANDB_DIR says otherwise (pip install 'vl[wandb]'; WANDB_MODE=offline needs no account)

A tracker takes every record the loop makes, step records (`kind: step`: loss, lr,
grad_norm, samples_per_s) and epoch records (`kind: epoch`: train losses, validation
scores), keyed by the optimizer step. Each package is imported only when chosen; a
missing one is an error naming the pip extra, raised before training starts. Only rank 0
makes trackers (vl.train.loop).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Protocol

from vl.shared.errors import VLError, collect_or_raise
from vl.shared.registry import Registry
from vl.shared.run_dir import append_metrics

TENSORBOARD_DIR, WANDB_DIR, WANDB_ID_FILE = "tensorboard", "wandb", "wandb_run_id.txt"


class Tracker(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


TrackerFactory = Callable[[Path, Any], Tracker]  # (run_dir, the run's TrainConfig) -> Tracker
TRACKERS: Registry[TrackerFactory] = Registry("tracker")


def tracker(name: str) -> Callable[[TrackerFactory], TrackerFactory]:
    def register(factory: TrackerFactory) -> TrackerFactory:
        return TRACKERS.add(name, factory)
    return register


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The record's finite numbers as `<kind>/<key>` (step/loss, epoch/mean_score, ...),
    without the step counter itself (the x axis)."""
    kind = record.get("kind", "epoch")
    return {f"{kind}/{k}": float(v) for k, v in sorted(record.items())
            if k not in ("kind", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)}


PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}  # tracker -> the module it needs (its pip extra)


def check_trackers(names: list[str]) -> None:
    """Each chosen tracker is registered and its package installed, checked without importing it."""
    import importlib.util

    problems = []
    for name in names:
        if name not in TRACKERS:
            problems.append(f"logging.report_to: unknown tracker {name!r}; choose one of: {', '.join(TRACKERS)}")
        elif name in PACKAGES and importlib.util.find_spec(PACKAGES[name]) is None:
            problems.append(f"logging.report_to names {name}, but the {PACKAGES[name]} package is not installed: "
                            f"pip install 'vl[{name}]' (or drop {name} from logging.report_to)")
    collect_or_raise(problems)


def _require(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise VLError(f"logging.report_to names {extra}, but {module} cannot be imported ({e})",
                      hint=f"pip install 'vl[{extra}]' (or drop {extra} from logging.report_to)") from None


@tracker("jsonl")
class JsonlTracker:
    """Per-step records as lines of metrics.jsonl; epoch records are written there by the
    loop whatever report_to says, so this takes the step records only."""

    def __init__(self, run_dir: Path, cfg: Any):
        self.run_dir = run_dir

    def log(self, record: dict[str, Any]) -> None:
        if record.get("kind") == "step":
            append_metrics(self.run_dir, record)

    def close(self) -> None:
        pass


@tracker("tensorboard")
class TensorBoardTracker:
    def __init__(self, run_dir: Path, cfg: Any):
        _require("tensorboard", "tensorboard")  # torch.utils.tensorboard needs it; its own error is vaguer
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR))

    def log(self, record: dict[str, Any]) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(key, value, global_step=record["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


@tracker("wandb")
class WandbTracker:
    """One W&B run per run dir: its id is kept in <run_dir>/wandb_run_id.txt, so
    `vl train --resume` continues the same W&B run."""

    def __init__(self, run_dir: Path, cfg: Any):
        import os

        wandb = _require("wandb", "wandb")
        id_file = run_dir / WANDB_ID_FILE
        if id_file.is_file():
            run_id = id_file.read_text(encoding="utf-8").strip()
        else:
            from vl.shared.atomic import write_text_atomic

            import secrets

            run_id = secrets.token_hex(4)  # lower-case letters and digits, as W&B run ids
            write_text_atomic(id_file, run_id + "\n")
        folder = Path(os.environ.get("WANDB_DIR") or run_dir)
        folder.mkdir(parents=True, exist_ok=True)
        from vl.shared.config import config_to_dict

        self.run = wandb.init(project=cfg.logging.wandb_project, name=run_dir.resolve().name, id=run_id,
                              resume="allow", dir=str(folder), config=config_to_dict(cfg))

    def log(self, record: dict[str, Any]) -> None:
        self.run.log(scalars(record), step=record["step"])

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """The chosen trackers as one: `log(record)` to each, `close()` all."""

    def __init__(self, run_dir: Path, cfg: Any):
        self.trackers: list[Tracker] = []
        try:
            for name in cfg.logging.report_to:
                self.trackers.append(TRACKERS.lookup(name)(run_dir, cfg))
        except BaseException:
            self.close()
            raise

    def log(self, record: dict[str, Any]) -> None:
        for t in self.trackers:
            t.log(record)

    def close(self) -> None:
        for t in self.trackers:
            t.close()
        self.trackers = []
