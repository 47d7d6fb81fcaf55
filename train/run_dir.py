"""The run directory's torch side: checkpoints of the trainable tensors with optimizer and
RNG states, run.json's record of a model, the training curves. The file names, and the
reading that needs no torch (run.json, metrics.jsonl), are vl.shared.run_dir's.

    <run>/checkpoints/<name>/model.safetensors   the trainable tensors only
    <run>/checkpoints/<name>/state.pt      optimizer, scheduler, RNG states and the caller's `extra`
    <run>/checkpoints/<name>/meta.json     step, trainable names and count, sha256 of model.safetensors

A checkpoint is built in a hidden `checkpoints/.<name>.tmp-PID/` folder and renamed into
place only when complete, so a kill never leaves a visible half checkpoint.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import math
import os
import platform
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from vl.shared.atomic import atomic_path, fsync_path, write_json_atomic
from vl.shared.digests import sha256_file
from vl.shared.disk_full import DiskFullError
from vl.shared.errors import VLError, collect_or_raise
from vl.shared.feature_store import FeatureStore, store_settings
from vl.shared.manifest import meta_path_for
from vl.shared.run_dir import (
    CHECKPOINT_KIND,
    META_FILE,
    MODEL_FILE,
    RUN_KIND,
    SCHEMA_VERSION,
    STATE_FILE,
    checkpoint_name,
    checkpoints_dir,
    curves_path,
    find_checkpoint,
    read_metrics,
    step_checkpoints,
    run_json_path,
)
from vl.shared.version import __version__
from vl.train.model import count_parameters


# -- checkpoints -------------------------------------------------------------------------

def load_state(path: Path) -> dict:
    """A checkpoint's state.pt (optimizer, scheduler, RNG states, `extra`), loaded without
    running any pickled code (weights_only): a damaged or truncated file, or one holding
    objects other than tensors and plain containers, is one error naming it."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise VLError(f"{path} not found: the checkpoint is incomplete; use another checkpoint") from None
    except pickle.UnpicklingError as e:
        raise VLError(f"{path} holds objects other than tensors and plain containers, which vl does not load "
                      f"(weights_only): {str(e).splitlines()[0][:200]}",
                      hint="A vl checkpoint never holds them: the file was replaced; use another checkpoint.") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise VLError(f"{path} is damaged or truncated ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                      "use another checkpoint, or resume from an earlier one (--resume-from)") from None


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Exactly the parameters with requires_grad, by name (a tied parameter appears once,
    under its first name): the method declared them trainable, nothing here guesses."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _rng_state() -> dict:
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        # plain ints, so state.pt loads with weights_only=True (no pickled numpy arrays)
        "numpy": {**np_state, "state": {"key": np_state["state"]["key"].tolist(), "pos": int(np_state["state"]["pos"])}},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np_state = dict(state["numpy"])
    np_state["state"] = {"key": np.asarray(np_state["state"]["key"], dtype=np.uint32), "pos": np_state["state"]["pos"]}
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # resumed on another number of GPUs: restore what lines up
            for i, s in enumerate(cuda[:torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)


_PLAIN = (str, int, float, bool, type(None), torch.Tensor)


def _check_plain(value: Any, where: str) -> None:
    """`extra` must load with torch.load(weights_only=True): containers, numbers, strings, tensors."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_plain(k, f"{where} key")
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
    elif not isinstance(value, _PLAIN):
        raise TypeError(f"checkpoint {where} is a {type(value).__name__}; keep `extra` to dicts, lists, "
                        "numbers, strings and tensors (convert numpy values with .tolist())")


def save_checkpoint(run_dir: str | os.PathLike, name: str, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None, scheduler: Any = None,
                    extra: dict | None = None) -> Path:
    """Write `checkpoints/<name>/` (model.safetensors, state.pt, meta.json) and return it.

    The folder is assembled under a hidden temporary name and renamed into place only
    when every file is written; an older checkpoint of the same name is replaced, and is
    kept if anything fails. `extra` (step, epoch, sampler state, best metric, ...) comes
    back from `load_checkpoint`.
    """
    from safetensors.torch import save_file

    name = checkpoint_name(name)
    extra = dict(extra or {})
    _check_plain(extra, "extra")
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    tmp = root / f".{name}.tmp-{os.getpid()}"
    old = root / f".{name}.old-{os.getpid()}"
    for leftover in (tmp, old):  # from an earlier failed save of this same process id
        shutil.rmtree(leftover, ignore_errors=True)
    # Copies on the CPU: safetensors refuses tensors that share memory, and the file is device-free.
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in trainable_state(model).items()}
    try:
        tmp.mkdir()
        with atomic_path(tmp / MODEL_FILE, needed=tensor_bytes(tensors)) as t:
            save_file(tensors, str(t), metadata={"format": "pt", "kind": CHECKPOINT_KIND})
        state = {
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": _rng_state(),
            "extra": extra,
        }
        with atomic_path(tmp / STATE_FILE, needed=tensor_bytes(state)) as t, open(t, "wb") as f:
            torch.save(state, f)  # to a Python file: a full disk surfaces as its OSError (a path gives torch's own)
        write_json_atomic(tmp / META_FILE, {
            "kind": CHECKPOINT_KIND, "schema_version": SCHEMA_VERSION, "step": extra.get("step"),
            "trainable_names": sorted(tensors), "trainable_tensors": len(tensors),
            "trainable_parameters": sum(t.numel() for t in tensors.values()),
            "model_sha256": sha256_file(tmp / MODEL_FILE),
        })
        # Swap: the old checkpoint steps aside, the new one moves in, the old one goes.
        if final.exists():
            os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:
            if old.exists() and not final.exists():
                os.replace(old, final)
            raise
        with contextlib.suppress(OSError):
            fsync_path(root)
    except DiskFullError as e:  # named as the user will look for it, not by its temporary folder
        raise e.retold(final / Path(e.path).name) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return final


def tensor_bytes(value: Any) -> int:
    """The bytes of the tensors in `value` (nested dicts, lists): about what saving it takes."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def load_checkpoint(run_dir: str | os.PathLike, name: str, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                    restore_rng: bool = True) -> dict:
    """Load `checkpoints/<name>/` into `model` (and the optimizer, scheduler, RNGs); return `extra`.

    Strict: every saved tensor must be a trainable parameter of `model` with the same
    shape, and every trainable parameter must be in the checkpoint; otherwise nothing is
    loaded and one VLError lists the names.
    """
    from safetensors.torch import load_file

    folder = find_checkpoint(run_dir, name)
    missing_files = [f for f in (MODEL_FILE, STATE_FILE, META_FILE) if not (folder / f).is_file()]
    collect_or_raise([f"{folder} has no {f}" for f in missing_files],
                     hint="the checkpoint was not written by vl's save_checkpoint; save it again")
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    if sha256_file(folder / MODEL_FILE) != meta.get("model_sha256"):
        raise VLError(f"{folder / MODEL_FILE} does not match the sha256 in its meta.json: the file changed or is "
                      "damaged; use another checkpoint")
    saved = load_file(str(folder / MODEL_FILE), device="cpu")
    trainable = trainable_state(model)
    every = dict(model.named_parameters(remove_duplicate=False))
    problems = []
    for key in sorted(set(saved) - set(trainable)):
        if key not in every:
            why = "not a parameter of this model"
        else:
            why = "frozen in this model" if not every[key].requires_grad else "another name of a tied parameter here"
        problems.append(f"unexpected key {key} in the checkpoint: {why}")
    for key in sorted(set(trainable) - set(saved)):
        problems.append(f"missing key {key}: trainable in this model but not in the checkpoint")
    for key in sorted(set(saved) & set(trainable)):
        if tuple(saved[key].shape) != tuple(trainable[key].shape):
            problems.append(f"{key} has shape {tuple(saved[key].shape)} in the checkpoint, "
                            f"{tuple(trainable[key].shape)} in this model")
    collect_or_raise(problems, limit=40, hint=(
        f"{folder} was saved from a model with another trainable set: build the model with the same "
        "backbone and PEFT method settings as the run that saved it (see its run.json)"))

    state = load_state(folder / STATE_FILE)
    with torch.no_grad():
        for key, param in trainable.items():
            param.copy_(saved[key])
    if optimizer is not None:
        if state["optimizer"] is None:
            raise VLError(f"{folder} holds no optimizer state (it was saved without an optimizer)")
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        if state["scheduler"] is None:
            raise VLError(f"{folder} holds no scheduler state (it was saved without a scheduler)")
        scheduler.load_state_dict(state["scheduler"])
    if restore_rng:
        _set_rng_state(state["rng"])
    return state["extra"]


def prune_step_checkpoints(run_dir: str | os.PathLike, keep: int) -> list[str]:
    """Remove all but the newest `keep` step-N checkpoints (never `last` or `best`); returns
    the names removed. Each is renamed aside before it is deleted, so a kill never leaves a
    half-deleted checkpoint under its own name."""
    removed = []
    for _, name in step_checkpoints(run_dir)[:-keep]:
        folder = checkpoints_dir(run_dir) / name
        aside = folder.with_name(f".{name}.old-{os.getpid()}")
        os.replace(folder, aside)
        shutil.rmtree(aside, ignore_errors=True)
        removed.append(name)
    return removed


# -- run.json ---------------------------------------------------------------------------

def _git_state(where: Path) -> tuple[str | None, bool | None]:
    """(HEAD revision, working tree has changes) of the checkout holding `where`; (None, None)
    when it is not in one or git is missing. Never raises."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout if out.returncode == 0 else None

    rev = git("rev-parse", "HEAD")
    if rev is None:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return rev.strip(), (None if status is None else bool(status.strip()))


def library_versions() -> dict[str, str]:
    import transformers

    return {"vl": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "numpy": np.__version__}


@dataclasses.dataclass
class RunManifest:
    """What `run.json` records: enough to tell what a run was made from and to repeat it."""

    config: dict
    manifests: dict[str, dict]  # path -> {"sha256"; "meta_sha256" of its *.meta.json, if any}
    feature_stores: dict[str, dict]  # path -> {"sha256", "settings": {encoder, preprocess, features}}
    budget: dict  # {"trainable", "total", "percent"}
    model: dict  # {"feat_dim", "vocab_size", "frozen_sha256"}: what rebuilding the model needs and checks
    versions: dict[str, str]
    git_revision: str | None
    git_dirty: bool | None
    created: str
    # {"name": the config's method, "display": its name in `vl report`} (vl.train.peft.registry), so
    # that a report needs no method registry (no torch)
    method: dict = dataclasses.field(default_factory=dict)
    kind: str = RUN_KIND
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def collect(cls, config: Any, model: nn.Module, manifests: Iterable[str | os.PathLike] = (),
                stores: Iterable[str | os.PathLike | FeatureStore] = (), method: dict | None = None) -> "RunManifest":
        """Gather everything: digests the files (a large store takes seconds per GB to hash)."""
        if dataclasses.is_dataclass(config) and not isinstance(config, type):
            from vl.shared.config import config_to_dict

            config = config_to_dict(config)
        config = json.loads(json.dumps(config))  # a JSON-able copy; fails here, not half-way through writing
        manifest_paths = [Path(p) for p in manifests]
        store_objs = [s if isinstance(s, FeatureStore) else FeatureStore(s) for s in stores]
        problems = [f"manifest {p} not found" for p in manifest_paths if not p.is_file()]
        collect_or_raise(problems, hint="check the manifest paths in the config")
        manifest_info = {}
        for p in manifest_paths:
            info = {"sha256": sha256_file(p)}
            meta = meta_path_for(p)
            if meta.is_file():
                info["meta_sha256"] = sha256_file(meta)
            manifest_info[str(p)] = info
        store_info = {str(s.path): {"sha256": sha256_file(s.path), "settings": store_settings(s.provenance)}
                      for s in store_objs}
        trainable, total = count_parameters(model)
        revision, dirty = _git_state(Path(__file__).resolve().parent)
        return cls(
            config=config, manifests=manifest_info, feature_stores=store_info,
            budget={"trainable": trainable, "total": total,
                    "percent": round(100.0 * trainable / total, 4) if total else 0.0},
            model=model_facts(model),
            versions=library_versions(), git_revision=revision, git_dirty=dirty,
            created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            method=dict(method or {}),
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def write(self, run_dir: str | os.PathLike) -> Path:
        path = run_json_path(run_dir)
        write_json_atomic(path, self.to_dict())
        return path


def frozen_sha256(model: nn.Module) -> str:
    """A digest of every frozen parameter (names and values): checkpoints hold only what
    trains, so a run's model is rebuilt from its backbone (or, for init=random, from its
    seed) and this says whether the rebuilt frozen weights are the run's."""
    digest = hashlib.sha256()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            digest.update(name.encode())
            digest.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def model_facts(model: nn.Module) -> dict:
    embed = getattr(model, "backbone", None)
    return {"feat_dim": getattr(getattr(model, "visual_embedding", None), "feat_dim", None),
            "vocab_size": embed.get_input_embeddings().num_embeddings if embed is not None else None,
            "frozen_sha256": frozen_sha256(model)}


def write_run_json(run_dir: str | os.PathLike, config: Any, model: nn.Module,
                   manifests: Iterable[str | os.PathLike] = (),
                   stores: Iterable[str | os.PathLike | FeatureStore] = (), method: dict | None = None) -> RunManifest:
    """Collect a RunManifest and write it to `<run_dir>/run.json` atomically."""
    manifest = RunManifest.collect(config, model, manifests, stores, method)
    manifest.write(run_dir)
    return manifest


def plot_curves(run_dir: str | os.PathLike) -> Path | None:
    """`<run_dir>/curves.png` (and curves.svg beside it) from metrics.jsonl: the training
    loss (overall and per task) and, where the run validates, the validation scores, by
    epoch. None when there is nothing to plot yet."""
    from vl.shared.figures import Panel, Series, line_chart

    # the latest record of each epoch (a run stopped inside an epoch by max_steps and resumed has two)
    records = list({r["epoch"]: r for r in read_metrics(run_dir)}.values())
    if not records:
        return None
    epochs = [r["epoch"] for r in records]

    def series(suffix: str, overall: str, overall_label: str) -> list[Series]:
        """The overall key first, then one line per task (label: the task), where any value is there."""
        keys = [overall] + sorted({k for r in records for k in r if k.endswith(suffix) and k != overall})
        return [Series(overall_label if k == overall else k[:-len(suffix)], epochs, [r.get(k) for r in records])
                for k in keys if any(isinstance(r.get(k), (int, float)) and math.isfinite(r[k]) for r in records)]

    panels = [Panel("training loss", series("_train_loss", "train_loss", "all tasks"), "epoch", "loss")]
    scores = series("_score", "mean_score", "mean")
    if scores:
        panels.append(Panel("validation (official metrics, 0-100)", scores, "epoch", "score"))
    out = curves_path(run_dir)
    line_chart(panels, out)
    return out
