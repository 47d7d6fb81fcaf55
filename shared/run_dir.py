"""The run directory, the file format that links training to evaluation and reports:
its file names, and the reading and appending that needs no torch.

    <run>/config.json                      the resolved TrainConfig (`vl train --resume` reads it back)
    <run>/run.json                         resolved config, input digests, budget, method name, versions, git
    <run>/metrics.jsonl                    one JSON record per line, appended as training goes: one an
                                           epoch ("kind": "epoch") and, every logging.every_n_steps
                                           optimizer steps, a "kind": "step" one (loss, lr, grad_norm)
    <run>/curves.png, curves.svg           training loss and validation scores by epoch
    <run>/tokenizer/                       the tokenizer trained for the run (when the config names none)
    <run>/checkpoints/<name>/model.safetensors   the trainable tensors only (<name>: last, best, step-N)
    <run>/checkpoints/<name>/state.pt      optimizer, scheduler, RNG states and the caller's `extra`
    <run>/checkpoints/<name>/meta.json     step, trainable names and count, sha256 of model.safetensors
    <run>/eval/epoch_<N>.json              the validation of epoch N: metrics, predictions
    <run>/eval/<split>/<task>.json         `vl evaluate`'s scores, beside the predictions files
    <run>/tensorboard/, wandb_run_id.txt   the trackers of logging.report_to (vl.train.trackers)
    <run>/bundle.json                      only in a bundle (`vl export --format bundle`): the config
                                           settings that name folders inside it, relative to it

`vl train` writes the directory (the tensors through vl.train.run_dir); `vl evaluate`
and `vl report` read it here, so a report imports no torch.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from vl.shared.atomic import write_text_atomic
from vl.shared.disk_full import DISK_FULL_ERRNOS, DiskFullError
from vl.shared.errors import VLError

CONFIG_FILE = "config.json"
RUN_JSON = "run.json"
METRICS = "metrics.jsonl"
CURVES = "curves.png"
TOKENIZER_DIR = "tokenizer"
CHECKPOINTS = "checkpoints"
MODEL_FILE, STATE_FILE, META_FILE = "model.safetensors", "state.pt", "meta.json"
EVAL_DIR = "eval"
BUNDLE_JSON = "bundle.json"
LAST, BEST = "last", "best"  # the loop's checkpoints: after every epoch, at the best validation score
STEP_PREFIX = "step-"  # step-N: every save_every_n_steps optimizer steps (resumable mid-epoch)
EPOCH_RECORD, STEP_RECORD = "epoch", "step"  # a metrics.jsonl record's "kind" (no kind: an epoch record)
CHECKPOINT_KIND, RUN_KIND, SCHEMA_VERSION = "vl.checkpoint", "vl.run", 1


# -- names ----------------------------------------------------------------------------------

def config_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CONFIG_FILE


def run_json_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / RUN_JSON


def metrics_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / METRICS


def curves_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CURVES


def tokenizer_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / TOKENIZER_DIR


def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINTS


def checkpoint_name(name: str) -> str:
    """`name`, if it is a plain folder name; else a VLError."""
    if not name or name.startswith(".") or "/" in name or "\\" in name or name != name.strip():
        raise VLError(f"checkpoint name {name!r} must be a plain folder name (e.g. 'last', 'best', 'step-1000')")
    return name


def checkpoint_dir(run_dir: str | os.PathLike, name: str) -> Path:
    return checkpoints_dir(run_dir) / checkpoint_name(name)


def has_checkpoint(run_dir: str | os.PathLike, name: str) -> bool:
    return checkpoint_dir(run_dir, name).is_dir()


def step_checkpoint_name(step: int) -> str:
    return f"{STEP_PREFIX}{step}"


def step_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, str]]:
    """The run's step-N checkpoints as (N, name), oldest first."""
    root = checkpoints_dir(run_dir)
    found = []
    for p in root.glob(f"{STEP_PREFIX}*") if root.is_dir() else []:
        number = p.name[len(STEP_PREFIX):]
        if p.is_dir() and number.isdigit():
            found.append((int(number), p.name))
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> str | None:
    """The checkpoint a resume continues from: of `last` and the step-N ones, the one saved
    at the latest optimizer step (`last` on a tie: it also holds the epoch's validation);
    None when the run has none."""
    steps = step_checkpoints(run_dir)
    if not has_checkpoint(run_dir, LAST):
        return steps[-1][1] if steps else None
    if steps and steps[-1][0] > (read_checkpoint_meta(run_dir, LAST).get("step") or 0):
        return steps[-1][1]
    return LAST


def eval_dir(run_dir: str | os.PathLike, split: str) -> Path:
    """Where `vl evaluate --split <split>` writes each task's scores and predictions."""
    return Path(run_dir) / EVAL_DIR / split


def eval_scores_path(run_dir: str | os.PathLike, split: str, task: str) -> Path:
    return eval_dir(run_dir, split) / f"{task}.json"


def epoch_eval_path(run_dir: str | os.PathLike, epoch: int) -> Path:
    """The validation the loop wrote after `epoch` (1-based, as metrics.jsonl counts)."""
    return Path(run_dir) / EVAL_DIR / f"epoch_{epoch}.json"


def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether `path` holds a run that got past building its model (config.json and run.json)."""
    return config_path(path).is_file() and run_json_path(path).is_file()


# -- checkpoints ------------------------------------------------------------------------------

def find_checkpoint(run_dir: str | os.PathLike, name: str) -> Path:
    """`checkpoints/<name>/`, or a VLError that says what the run has (or where a killed
    save left the previous one)."""
    root = checkpoints_dir(run_dir)
    folder = checkpoint_dir(run_dir, name)
    if folder.is_dir():
        return folder
    stranded = sorted(root.glob(f".{name}.old-*")) if root.is_dir() else []
    if stranded:
        raise VLError(f"checkpoint {folder} not found, but a save that was killed while replacing it left the "
                      f"previous one at {stranded[-1]}: rename that folder to {folder} to use it")
    have = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    raise VLError(f"checkpoint {folder} not found; this run has: {', '.join(have) or 'no checkpoints'}")


def read_checkpoint_meta(run_dir: str | os.PathLike, name: str) -> dict:
    """`checkpoints/<name>/meta.json`: step, trainable names and count, model_sha256."""
    return json.loads((find_checkpoint(run_dir, name) / META_FILE).read_text(encoding="utf-8"))


def bundle_relative(run_dir: str | os.PathLike) -> list[str]:
    """The config settings that a bundle names relative to itself (bundle.json); [] for a run."""
    path = Path(run_dir) / BUNDLE_JSON
    return list(json.loads(path.read_text(encoding="utf-8")).get("relative", [])) if path.is_file() else []


# -- run.json -----------------------------------------------------------------------------------

def read_run_json(run_dir: str | os.PathLike) -> dict:
    path = run_json_path(run_dir)
    if not path.is_file():
        raise VLError(f"{path} not found: {run_dir} is not a vl run directory (or its run has not started)")
    return json.loads(path.read_text(encoding="utf-8"))


def recorded_store(run_dir: str | os.PathLike, store_path: str | os.PathLike, video: bool) -> dict | None:
    """run.json's record of a feature store the run used ({"sha256", "settings"}), by its path
    as the run's config names it; for a run whose paths were rewritten (a moved bundle), the
    one recorded store of the same kind (video stores record a frame sampling). None when
    the run recorded none that fits."""
    stores = read_run_json(run_dir).get("feature_stores") or {}
    if str(store_path) in stores:
        return stores[str(store_path)]
    kind = {json.dumps(e.get("settings"), sort_keys=True): e for e in stores.values()
            if ("sampling" in ((e.get("settings") or {}).get("preprocess") or {})) == video}
    return next(iter(kind.values())) if len(kind) == 1 else None


def store_changes(run_dir: str | os.PathLike, stores: dict) -> list[str]:
    """For each {path: FeatureStore} the run reads (resume, evaluation), every provenance
    field that differs from what run.json recorded when the run started: features made
    another way would be mixed in silently (or, at another width, fail deep inside the model)."""
    from vl.shared.feature_store import settings_differences, store_settings

    problems = []
    for path, store in stores.items():
        before = (recorded_store(run_dir, path, store.layout == "frames") or {}).get("settings")
        if before is not None:
            problems += [f"feature store {path}: {field} was {old!r} when the run started, now {new!r}"
                         for field, new, old in settings_differences(store_settings(store.provenance), before)]
    return problems


# -- metrics.jsonl --------------------------------------------------------------------------------

def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # tensors and numpy values
        return value.tolist()
    raise TypeError(f"metrics value {value!r} ({type(value).__name__}) is not JSON-able")


def _parse_record(line: bytes | str) -> dict | None:
    try:
        value = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _repair_tail(path: Path) -> None:
    """A kill can leave the last line without its newline: end it if it is a whole record,
    cut it if it is a partial one, so the next record starts on its own line."""
    with open(path, "rb+") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return
        pos, tail = end, b""
        while pos > 0:  # back to the last newline (records are short; this reads one block)
            step = min(pos, 1 << 16)
            pos -= step
            f.seek(pos)
            tail = f.read(step) + tail
            nl = tail.rfind(b"\n")
            if nl >= 0:
                pos, tail = pos + nl + 1, tail[nl + 1:]
                break
        if _parse_record(tail) is not None:
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
        else:
            f.truncate(pos)


def _metrics_line(record: dict) -> str:
    return json.dumps(record, sort_keys=True, default=_json_default, ensure_ascii=False) + "\n"


def append_metrics(run_dir: str | os.PathLike, record: dict) -> None:
    """Append `record` as one JSON line to `<run_dir>/metrics.jsonl` and flush it. A full
    disk leaves the file as it was (cut back to its old end) and is one DiskFullError."""
    line = _metrics_line(record).encode("utf-8")
    path = metrics_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        _repair_tail(path)
    with open(path, "ab", buffering=0) as f:  # unbuffered: nothing left to write when it closes
        end = f.seek(0, os.SEEK_END)
        try:
            done = 0
            while done < len(line):
                done += f.write(line[done:])
        except OSError as e:
            if e.errno not in DISK_FULL_ERRNOS:
                raise
            with contextlib.suppress(OSError):
                os.truncate(path, end)  # no half record; cutting back needs no space
            raise DiskFullError(path, e.errno, len(line), "for one more record") from None


def record_kind(record: dict) -> str:
    """EPOCH_RECORD or STEP_RECORD (records written before there were step records have no kind)."""
    return record.get("kind", EPOCH_RECORD)


def read_metrics(run_dir: str | os.PathLike, kind: str | None = EPOCH_RECORD) -> list[dict]:
    """The records of `<run_dir>/metrics.jsonl` of this `kind` (epoch records unless told;
    None: all, in file order); a last line cut short by a kill is skipped, a damaged line
    elsewhere is an error."""
    records = _read_all_metrics(run_dir)
    return records if kind is None else [r for r in records if record_kind(r) == kind]


def drop_metrics_after(run_dir: str | os.PathLike, step: int, ended: bool = True) -> int:
    """Remove the records of optimizer steps after `step` (what a killed run logged past the
    checkpoint it resumes from, which the resumed run logs again); returns how many went.
    `ended=False`: the checkpoint was saved before its epoch's end was written, so an epoch
    record at `step` goes too (a kill between writing it and saving `last`). The file is
    rewritten atomically."""
    def logged_after(r: dict) -> bool:
        if not isinstance(r.get("step"), int):
            return False
        return r["step"] > step or (not ended and r["step"] == step and record_kind(r) == EPOCH_RECORD)

    records = _read_all_metrics(run_dir)
    kept = [r for r in records if not logged_after(r)]
    if len(kept) < len(records):
        write_text_atomic(metrics_path(run_dir), "".join(map(_metrics_line, kept)))
    return len(records) - len(kept)


def _read_all_metrics(run_dir: str | os.PathLike) -> list[dict]:
    path = metrics_path(run_dir)
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    partial = lines.pop()  # "" when the file ends with a newline; else a cut-short record
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise VLError(f"{path} line {i} is not JSON ({e}); the file was edited or damaged") from None
    last = _parse_record(partial) if partial.strip() else None
    if last is not None:
        records.append(last)  # complete but for the newline
    return records
