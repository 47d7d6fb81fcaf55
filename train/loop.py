"""The training loop: `train(cfg)` runs one `TrainConfig` from start to the last epoch.

One explicit loop, readable top to bottom (nanoGPT's train.py, minGPT's trainer):

    checks (cheap) -> tokenizer -> datasets -> model -> freeze all, apply method, unfreeze
    -> AdamW + warmup/linear decay -> [resume from `last` or a `step-N`] -> epochs:
         steps: forward, per-example weighted loss, NaN check, backward, clip, accumulate, step
                -> every logging.every_n_steps a step record (trackers), every
                   save_every_n_steps a `step-N` checkpoint; max_steps ends the run here
         validate -> metrics.jsonl -> checkpoints `last` (and `best` when it improved)
                  -> early stopping

The loop never asks which method trains: a method only answers "which parameters"
(vl.train.peft.methods), and the checkpoints hold exactly those. The model comes from
vl.train.build (new, or started from another run), the validation's predictions from
vl.train.predict.

Reproducibility: the batch order comes from (seed, epoch) alone (MultiTaskSampler) and
every checkpoint holds the optimizer, scheduler and RNG states and where in the epoch it
was saved (a step-N checkpoint: the batches done, and the epoch's running loss sums), so
on the CPU in fp32 a run killed after epoch k, or after step N, and resumed with
`train(cfg, resume=True)` ends with the same weights as an uninterrupted one; a run
stopped during an epoch's validation (its last epoch's, or at max_steps, included) resumes
by running that validation and writing what the uninterrupted run wrote after it.

Under `torchrun` (`Ranks` from vl.shared.distributed) the model is wrapped in DDP: every
rank builds the same plan of global steps (MultiTaskSampler) and takes its share of each
step's batch; the loss is scaled so that DDP's gradient mean equals the gradient of the
whole global batch's mean loss, whatever the split; every rank validates its share of the
batches (vl.train.predict) and rank 0 scores them, then writes the run dir and checkpoints
while the others wait at a barrier. One process needs no launcher.
"""
from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vl.shared.atomic import write_json_atomic
from vl.shared.config import save_config
from vl.shared.devices import amp_dtype, autocast, pick_device
from vl.shared.distributed import Ranks, gather_to_main
from vl.shared.errors import VLError, collect_or_raise
from vl.shared.feature_store import FeatureStore, check_store_matches, mixed_origin_problems
from vl.shared.locks import run_dir_lock
from vl.shared.progress import progress_bar
from vl.shared.stopping import Stopped, check_stop, stop_requested
from vl.shared.manifest import DatasetManifest
from vl.shared.run_dir import (
    BEST,
    LAST,
    append_metrics,
    EPOCH_RECORD,
    STEP_RECORD,
    checkpoints_dir,
    config_path,
    drop_metrics_after,
    epoch_eval_path,
    find_checkpoint,
    latest_checkpoint,
    run_json_path,
    step_checkpoint_name,
    store_changes,
    tokenizer_dir,
)
from vl.train.config import METRIC_SUFFIX, TaskSpec, TrainConfig
from vl.train.build import build_model, inherit_from_run
from vl.train.data import Collator, MultiTaskDataset, MultiTaskSampler, TaskData, TaskDataset, make_loader
from vl.train.model import BACKBONE_SHAPES, VLModel, count_parameters
from vl.train.peft.methods import display_name, uses_every_parameter_each_step
from vl.train.predict import MODEL_INPUTS, generate_predictions, to_device
from vl.train.run_dir import load_checkpoint, plot_curves, prune_step_checkpoints, save_checkpoint, write_run_json
from vl.train.trackers import Trackers, check_trackers
from vl.train.tokenizer import add_extra_tokens, load_tokenizer, manifest_texts, train_tokenizer, vis_token_ids
from vl.train.weight_decay import decay_groups


# Drawing curves.png takes about half a second; runs of many short epochs redraw it at most
# this often (and after their last epoch), so plotting never costs more than ~2 % of a run.
PLOT_EVERY_S = 30.0


# -- optimizer and schedule --------------------------------------------------------------

def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; which of them decay: `optim.decay` (vl.train.weight_decay)."""
    decay, no_decay = decay_groups(model, cfg.optim.decay)
    groups = [{"params": decay, "weight_decay": cfg.optim.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                             eps=cfg.optim.eps, **({"fused": True} if cfg.optim.fused else {}))


def warmup_linear(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """The lr factor at optimizer step s: 0 -> 1 over the warmup, then 1 -> 0 at the end."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return factor


# -- the loss ------------------------------------------------------------------------------

def weighted_sequence_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """mean_b(weight_b * mean over b's target tokens of the cross-entropy), as VL-T5's VQA loss:
    each example's own token mean, so a VQA answer's soft score scales exactly its example.
    logits (B, T, V), labels (B, T) with -100 ignored, weights (B,)."""
    token_loss = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100,
                                 reduction="none")  # (B, T)
    counted = (labels != -100).float()  # (B, T)
    per_example = (token_loss * counted).sum(1) / counted.sum(1).clamp(min=1)  # (B,)
    return (per_example * weights).mean()


# -- validation ----------------------------------------------------------------------------

def validate(model: VLModel, val_sets: dict[str, TaskDataset], tokenizer: Any, device: torch.device,
             batch_size: int, autocast: Any, progress: bool = False,
             ranks: Ranks = Ranks()) -> tuple[dict[str, float], dict[str, Any]]:
    """Each validation task's official metric (vl.evaluate.metrics, the task's `metric`):
    `<task>_score` its main score (0-100: VQA accuracy, CIDEr-D, ...), `mean_score` the
    tasks' average. Returns the metrics and, per task, the predictions with the whole
    score breakdown. Under torchrun every rank calls it and predicts its share of the
    batches; rank 0 gets the metrics, the others ({}, {})."""
    from vl.evaluate.metrics import score

    model.eval()
    metrics, details = {}, {}
    for name, ds in val_sets.items():
        predictions = generate_predictions(model, ds, tokenizer, device, batch_size, autocast, progress=progress,
                                           ranks=ranks)
        if predictions is None:  # another rank's share: rank 0 scores
            continue
        by_id = {ex["id"]: ex for ex in ds.scored_examples()}  # vl_lm, itm: the gold their items drew
        scores = score(ds.data.task.metric, predictions, [by_id[i] for i in predictions])
        metrics[f"{name}_{METRIC_SUFFIX}"] = scores["overall"]
        details[name] = {"scores": scores, "predictions": predictions}
    if metrics:
        metrics[f"mean_{METRIC_SUFFIX}"] = sum(metrics.values()) / len(metrics)
    for name, ds in val_sets.items():  # pre-training: the loss on the held-out captions too (not in the mean)
        if ds.data.task.draws:
            loss = validation_loss(model, ds, tokenizer, device, batch_size, autocast, ranks)
            if loss is not None:
                metrics[f"{name}_val_loss"] = loss
    model.train()
    return metrics, details


@torch.no_grad()
def validation_loss(model: VLModel, ds: TaskDataset, tokenizer: Any, device: torch.device, batch_size: int,
                    autocast: Any, ranks: Ranks = Ranks()) -> float | None:
    """The training loss (weighted_sequence_loss) over every item of `ds` as epoch 0 draws it
    (the validation's fixed masks and negatives), averaged over items. Under torchrun each
    rank takes every world_size-th batch and rank 0 adds the batches' sums in batch order
    (as one process does); the other ranks get None."""
    collator = Collator(tokenizer, ds.data.max_target_tokens, ds.data.token_cut)
    starts = list(range(0, len(ds), batch_size))

    def my_sums() -> dict[int, float]:
        sums = {}
        for start in ranks.slice(starts):
            check_stop()  # SIGINT/SIGTERM: every rank learns of it in gather_to_main
            batch = to_device(collator([ds.item(i, 0) for i in range(start, min(start + batch_size, len(ds)))]),
                              device)
            with autocast():
                decoder_input_ids = model.backbone.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
                out = model(**{k: batch[k] for k in MODEL_INPUTS}, decoder_input_ids=decoder_input_ids,
                            task=batch["task"])
            loss = weighted_sequence_loss(out.logits, batch["labels"], batch["weights"])
            sums[start] = loss.item() * len(batch["ids"])
        return sums

    parts = gather_to_main(my_sums, ranks, f"computing the validation loss of {ds.data.name}")
    if parts is None:
        return None
    by_start = {start: value for part in parts for start, value in part.items()}
    return sum(by_start[start] for start in starts) / len(ds)


# -- setup helpers ---------------------------------------------------------------------------

def global_batch(loss: torch.Tensor, n: int, ranks: Ranks) -> tuple[float, int]:
    """(mean loss over the step's whole global batch, its size): one all-reduce of
    [loss * n, n] across ranks; this rank's own values in one process."""
    if ranks.world_size == 1:
        return loss.item(), n
    import torch.distributed as dist

    both = torch.stack([loss.detach().float() * n, torch.tensor(float(n), device=loss.device)])
    dist.all_reduce(both)
    return (both[0] / both[1]).item(), int(both[1].item())


def agree(flag: bool, ranks: Ranks) -> bool:
    """Rank 0's `flag` on every rank (a decision only rank 0 can make, e.g. early stopping)."""
    if ranks.world_size == 1:
        return flag
    import torch.distributed as dist

    box = [flag]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def any_rank(flag: bool, ranks: Ranks, device: torch.device) -> bool:
    """Whether `flag` holds on any rank (a stop signal may reach one rank a step before the
    others): one all-reduce, so that every rank stops at the same step."""
    if ranks.world_size == 1:
        return flag
    import torch.distributed as dist

    box = torch.tensor([float(flag)], device=device)
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return bool(box.item())


def grad_norm(params: list[nn.Parameter], clip: float | None) -> torch.Tensor:
    """The global L2 norm of the gradients, clipped to `clip` when set (the norm before clipping)."""
    if clip is not None:
        return torch.nn.utils.clip_grad_norm_(params, clip)
    grads = [p.grad for p in params if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())


def check_files(cfg: TrainConfig) -> None:
    """Every manifest and store the config names exists: one error listing all that do not."""
    problems = []
    for t in cfg.tasks:
        for what, path in (("train_manifest", t.train_manifest), ("val_manifest", t.val_manifest),
                           ("store", t.store)):
            if path is not None and not Path(path).is_file():
                fix = "run `vl extract images|videos --manifest ... --out` to make it" if what == "store" else (
                    "run `vl data convert ...` to make it")
                problems.append(f"task {t.name}: {what} {path} not found; {fix}")
    problems += [f"tokenizer_manifests: {path} not found; run `vl data convert ...` to make it"
                 for path in cfg.tokenizer_manifests if not Path(path).is_file()]
    collect_or_raise(problems)


def tokenizer_kind(backbone: str) -> str:
    shape = BACKBONE_SHAPES.get(backbone)
    if shape is not None:
        return shape.model_type
    raise VLError(f"cannot tell which tokenizer style backbone {backbone!r} uses; set tokenizer to its tokenizer "
                  "(a folder or hub id)")


def task_data(cfg: TrainConfig, split_of: Callable[[TaskSpec], tuple[str, Path | None]],
              stores: dict[Path, FeatureStore]) -> dict[str, TaskData]:
    """Each task's TaskData for one side (train or val); all problems in one error."""
    out, problems = {}, []
    for t in cfg.tasks:
        split, manifest = split_of(t)
        if manifest is None:
            continue
        try:
            store = stores.setdefault(Path(t.store), FeatureStore(t.store))
            if t.store_settings:
                check_store_matches(store, t.store_settings)
            data = TaskData(t.name, split, manifest, store, cfg.data, t)
            data.check_media(skip_missing=cfg.skip_missing)
            out[t.name] = data
        except VLError as e:
            problems += e.problems + ([e.hint] if e.hint else [])
    collect_or_raise(problems)
    return out


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_visual_tokens(cfg: TrainConfig, data: list[TaskData], object_order_ids: list[int]) -> None:
    """visual_inputs=reference: every image's (or video's) visual tokens need a <vis_extra_id_k> each."""
    if cfg.visual_inputs != "reference":
        return
    collect_or_raise([f"task {d.name}: {d.tokens_per_image} visual tokens an {d.task.media_kind}, but the tokenizer has "
                      f"{len(object_order_ids)} <vis_extra_id_k> tokens to embed their order (visual_inputs=reference); "
                      f"set extra_tokens to at least {2 * d.tokens_per_image}, or lower data.visual_pool / "
                      f"data.max_frames" for d in data if d.tokens_per_image > len(object_order_ids)])


# -- the loop --------------------------------------------------------------------------------

def train(cfg: TrainConfig, resume: bool = False, ranks: Ranks = Ranks(), progress: bool = True,
          resume_from: str | None = None) -> Path:
    """Run `cfg` (or continue the run in cfg.run_dir from its latest checkpoint, `last` or
    a `step-N`, or from `resume_from`, a checkpoint name); returns the run dir.
    `ranks`: this process's place under torchrun (its process group already joined).
    `progress`: progress bars (rank 0's; TQDM_DISABLE turns them off too). Rank 0 holds the
    run dir's lock (vl.shared.locks) from its first write to the end: a second `vl train
    --resume` (or `vl evaluate`) into the same folder is refused, naming this process."""
    with contextlib.ExitStack() as locks:
        return _train(cfg, resume, ranks, progress, resume_from, locks)


def _train(cfg: TrainConfig, resume: bool, ranks: Ranks, progress: bool, resume_from: str | None,
           locks: contextlib.ExitStack) -> Path:
    cfg = inherit_from_run(cfg)  # init_from: that run's backbone and tokenizer (a no-op when done already)
    run_dir = Path(cfg.run_dir)
    main = ranks.is_main
    # 1. Cheap checks first: files exist, the run dir is fresh (or resumable), the device works.
    check_files(cfg)
    check_trackers(cfg.logging.report_to)
    restart = False  # resumed before its first checkpoint (a full disk, a kill): it starts again from step 0
    if resume:
        resume_from = resume_from or latest_checkpoint(run_dir)
        if resume_from is None and config_path(run_dir).is_file():
            resume, restart = False, True
        elif resume_from is None:
            raise VLError(f"nothing to resume in {run_dir}: it has no checkpoints (start it without --resume)")
        else:
            find_checkpoint(run_dir, resume_from)  # a missing one names those the run has
    elif run_json_path(run_dir).exists() or checkpoints_dir(run_dir).exists():
        raise VLError(f"run dir {run_dir} already holds a run: continue it with `vl train --resume {run_dir}`, "
                      "or set run_dir to a new folder")
    device = pick_device(cfg.device, ranks, option="device")
    if cfg.precision != "fp32" and device.type != "cuda":
        raise VLError(f"precision {cfg.precision} needs a GPU (autocast); on the CPU use precision=fp32")
    dtype = amp_dtype(cfg.precision)

    def autocast_step():
        return autocast(device, dtype)

    set_seed(cfg.seed)  # CPU kernels are deterministic; the batch order comes from (seed, epoch) alone

    # 2. Data: stores and manifests are read (and media checked) before the tokenizer or model.
    stores: dict[Path, FeatureStore] = {}
    train_data = task_data(cfg, lambda t: (t.train_split, t.train_manifest), stores)
    val_data = task_data(cfg, lambda t: (t.val_split, t.val_manifest), stores)
    collect_or_raise(mixed_origin_problems(stores.values()))
    if any(d.task.metric == "caption" for d in val_data.values()):  # before hours of training, not after
        from vl.evaluate.metrics.captions import require_java

        require_java()
    feat_dims = {d.feat_dim for d in [*train_data.values(), *val_data.values()]}
    if len(feat_dims) != 1:
        raise VLError(f"the tasks' feature stores hold features of different widths ({sorted(feat_dims)}); one model "
                      "reads one CLIP encoder's features: extract every task's media with the same encoder")
    (feat_dim,) = feat_dims
    if cfg.features_in_memory:  # before the DataLoader forks its workers, which then share the arrays
        held = {(d.store.path, d.feature): d.store.hold_in_memory(d.feature) for d in train_data.values()}
        if main:
            print(f"features in memory: {sum(held.values()) / 2**20:.1f} MiB from {len(held)} store(s)", flush=True)
    tok_dir = tokenizer_dir(run_dir)
    saved_tokenizer = tok_dir.is_dir()  # asked before rank 0 writes one: every rank takes the same branch below
    ranks.barrier()  # every rank has checked the run dir before rank 0 writes into it
    if main:
        locks.enter_context(run_dir_lock(run_dir, "vl train"))  # makes the folder

    # 3. Tokenizer: the configured one, or one trained on the train manifests and kept in the run dir.
    if cfg.tokenizer is not None:
        tokenizer = load_tokenizer(cfg.tokenizer)
    elif resume or saved_tokenizer:
        tokenizer = load_tokenizer(str(tok_dir))
    else:  # rank 0 trains it; the others load what it saved
        if main:
            paths = dict.fromkeys([*(t.train_manifest for t in cfg.tasks), *cfg.tokenizer_manifests])
            manifests = [DatasetManifest.read(p) for p in paths]
            layouts = {name: d.layout for name, d in train_data.items()}  # the texts as this run writes them
            tokenizer = train_tokenizer(manifest_texts(manifests, layouts), cfg.tokenizer_vocab_size,
                                        tokenizer_kind(cfg.backbone), out_dir=tok_dir)
        ranks.barrier()
        if not main:
            tokenizer = load_tokenizer(str(tok_dir))
    add_extra_tokens(tokenizer, cfg.extra_tokens)
    tokenizer.padding_side = "right"
    train_sets = {name: TaskDataset(d, tokenizer, seed=cfg.seed) for name, d in train_data.items()}
    val_sets = {name: TaskDataset(d, tokenizer, seed=cfg.seed) for name, d in val_data.items()}
    dataset = MultiTaskDataset(train_sets)
    sampler = MultiTaskSampler(dataset.sizes, {t.name: t.batch_size for t in cfg.tasks}, sampling=cfg.sampling,
                               temperature=cfg.temperature, seed=cfg.seed, rank=ranks.rank,
                               world_size=ranks.world_size)
    loader = make_loader(dataset, sampler, tokenizer, cfg.workers, cfg.seed, pin_memory=device.type == "cuda")

    # 4. Model: feature width from the stores, the method applied.
    object_order_ids = vis_token_ids(tokenizer)
    check_visual_tokens(cfg, [*train_data.values(), *val_data.values()], object_order_ids)
    model, trainable_names = build_model(cfg, feat_dim, len(tokenizer), list(train_sets), object_order_ids)
    model.to(device).train()
    if cfg.compile:
        model.compile_backbone()
    trainable, total = count_parameters(model)
    if main:
        print(f"method {cfg.method}: {len(trainable_names)} tensors train, {trainable:,} of {total:,} parameters "
              f"({100.0 * trainable / total:.2f}%)", flush=True)
    net: nn.Module = model  # what the steps call: the model, or DDP around it
    if ranks.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        # Per-task modules leave the other tasks' parameters without gradients at a step.
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=not uses_every_parameter_each_step(cfg.method, cfg))

    # 5. Optimizer and schedule over the whole run's optimizer steps.
    accum = cfg.optim.grad_accum
    steps_per_epoch = math.ceil(len(sampler) / accum)
    # max_steps, when set, replaces epochs (as in HF's Trainer): as many epochs as it takes, the last one cut short
    epochs = cfg.epochs if cfg.max_steps is None else math.ceil(cfg.max_steps / steps_per_epoch)
    total_steps = cfg.max_steps or steps_per_epoch * epochs
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_linear(total_steps, int(cfg.optim.warmup_ratio * total_steps)))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")

    # 6. Start or resume.
    start_epoch, start_micro, step, best = 0, 0, 0, None
    sums: dict[str, Any] | None = None  # a checkpoint's running sums of the epoch it was saved in
    stopping = cfg.early_stopping
    stop_metric, stop_best, stale = cfg.early_stopping_metric(), None, 0  # validations without a new best
    if resume:
        collect_or_raise(store_changes(run_dir, stores),
                         hint="Resume with the stores the run started with (or start a new run).")
        extra = load_checkpoint(run_dir, resume_from, model, optimizer, scheduler, restore_rng=True)
        if extra.get("stopped"):
            raise VLError(f"{run_dir} stopped with: {extra['stopped']}; resuming would repeat it: start a new run "
                          "(e.g. with a lower optim.lr)")
        step, best = extra["step"], extra.get("best")
        # Whether the checkpoint's epoch had ended (its metrics.jsonl line, validation and `last` written): no
        # when a stop came inside it or during its validation. (Before the key: `last` is saved after the end.)
        ended = extra.get("ended", extra.get("micro") is None or resume_from == LAST)
        if extra.get("micro") is None:  # saved at the end of its epoch
            start_epoch = extra["epoch"] + 1
            where = f"after epoch {extra['epoch'] + 1}"
        else:  # inside its epoch: that epoch again, from the next batch, with its sums so far
            start_epoch, start_micro, sums = extra["epoch"], extra["micro"], extra["sums"]
            where = f"inside epoch {extra['epoch'] + 1}, after {start_micro} of its {len(sampler)} batches"
        early = extra.get("early_stop") or {}
        if early.get("metric") == stop_metric:
            stop_best, stale = early.get("best"), early.get("stale", 0)
        if early.get("stopped") and early.get("metric") == stop_metric and 0 < stopping.patience <= early["patience"]:
            print(f"{run_dir} stopped early: {early['stopped']}. Nothing to resume; to train on, raise the patience "
                  f"(`vl train --resume {run_dir} --set early_stopping.patience=N`, 0: no early stopping)", flush=True)
            return run_dir
        if cfg.max_steps is not None and step >= cfg.max_steps:
            if ended:
                print(f"{run_dir} has reached max_steps={cfg.max_steps} (step {step}); nothing to resume "
                      f"(raise it with --set max_steps=N to train on)", flush=True)
                return run_dir
        if main and drop_metrics_after(run_dir, step, ended=ended):
            print(f"metrics.jsonl: dropped the records after step {step}, which this resume makes again", flush=True)
        print(f"resuming {run_dir} from checkpoint {resume_from} {where} (step {step})", flush=True)
        if cfg.max_steps is not None and step >= cfg.max_steps:
            print(f"max_steps={cfg.max_steps} was reached there: what is left is the end of that epoch (its "
                  "validation, metrics.jsonl record and checkpoints)", flush=True)
    elif main:
        if restart:
            drop_metrics_after(run_dir, 0)
            print(f"{run_dir} stopped before its first checkpoint: starting it again from the beginning", flush=True)
        save_config(cfg, config_path(run_dir))
        write_run_json(run_dir, cfg, model, manifests=dict.fromkeys(
            p for t in cfg.tasks for p in (t.train_manifest, t.val_manifest) if p is not None),
            stores=list(stores.values()), method={"name": cfg.method, "display": display_name(cfg.method, cfg)})

    def extra_state(epoch: int, stopped: str | None = None, micro: int | None = None, early: str | None = None,
                    ended: bool = False) -> dict:
        """What a checkpoint keeps besides tensors. `micro`: the batches done in `epoch` when
        saved inside it (None: at its end), with the epoch's running sums; `early`: why
        early stopping ended the run; `ended`: saved after the epoch's end was written (its
        metrics.jsonl line, validation, `last`), which a resume from a checkpoint saved
        before it (a stop during the validation) writes first."""
        return {"epoch": epoch, "step": step, "best": best, "best_metric": cfg.best_metric, "ended": ended,
                "sampler": {"seed": cfg.seed, "epoch": epoch, "start": micro or 0}, "stopped": stopped,
                "micro": micro, "sums": None if micro is None else epoch_sums,
                "early_stop": {"metric": stop_metric, "patience": stopping.patience, "best": stop_best,
                               "stale": stale, "stopped": early}}

    def stop_at(epoch: int, micro: int) -> Stopped:
        """A stop asked for by SIGINT/SIGTERM (vl.shared.stopping): the state after `step`,
        `micro` batches into `epoch`, saved as a step-N checkpoint as save_every_n_steps saves
        it, so `vl train --resume` goes on exactly from here (at micro == the epoch's length,
        or at max_steps, it only validates the epoch and writes its end, as the uninterrupted
        run would)."""
        name = step_checkpoint_name(step)
        if main:
            epoch_sums["seconds"] = time.perf_counter() - t0
            save_checkpoint(run_dir, name, model, optimizer, scheduler, extra_state(epoch, micro=micro))
            if cfg.keep_last_n:
                prune_step_checkpoints(run_dir, cfg.keep_last_n)
        return Stopped(stop_requested() or signal.SIGTERM,  # (SIGTERM: another rank's signal)
                       f"checkpoint {name} holds the run after step {step} (epoch {epoch + 1}, {micro} of its "
                       f"{len(sampler)} batches); continue with `vl train --resume {run_dir}`")

    # 7. Epochs.
    trackers = Trackers(run_dir, cfg) if main else None
    every = cfg.logging.every_n_steps
    trainable_params = [p for p in model.parameters() if p.requires_grad]
    plotted_at = -math.inf  # curves.png is redrawn after an epoch at most every PLOT_EVERY_S, and at the end
    try:
        for epoch in range(start_epoch, epochs):
            first = start_micro if epoch == start_epoch else 0
            sampler.set_epoch(epoch, start=first)
            model.train()
            # The epoch's running sums (a step-N checkpoint keeps them, so a resumed epoch's line is the whole epoch's).
            epoch_sums = sums if first else {"seen": 0, "loss_sum": 0.0, "task_loss": {}, "seconds": 0.0}
            # True here only when resumed from a stop at max_steps (during the validation): that is all that is left
            ended_by_max = cfg.max_steps is not None and step >= cfg.max_steps
            t0, micro = time.perf_counter() - epoch_sums["seconds"], first
            window = {"seen": 0, "loss_sum": 0.0, "t0": time.perf_counter()}  # since the last step record
            bar = progress_bar(total=len(sampler), initial=first, desc=f"epoch {epoch + 1}/{epochs}",
                               unit="batch", enabled=main and progress)
            for batch in () if ended_by_max else loader:
                batch = to_device(batch, device)
                n = len(batch["ids"])
                # An optimizer step averages its micro-batches; the epoch's last step takes what is left.
                group = min(accum, len(sampler) - (micro // accum) * accum)
                boundary = (micro + 1) % accum == 0 or micro + 1 == len(sampler)
                # Between optimizer steps DDP need not reduce gradients: they accumulate locally.
                sync = contextlib.nullcontext() if boundary or net is model else net.no_sync()
                with sync:
                    with autocast_step():
                        decoder_input_ids = model.backbone.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
                        out = net(**{k: batch[k] for k in MODEL_INPUTS}, decoder_input_ids=decoder_input_ids,
                                  task=batch["task"])
                    loss = weighted_sequence_loss(out.logits, batch["labels"], batch["weights"])
                    step_loss, step_n = global_batch(loss, n, ranks)  # the same on every rank
                    if not math.isfinite(step_loss):
                        what = (f"loss is {step_loss} at step {step + 1} (epoch {epoch + 1}) on a batch of task "
                                f"{batch['task']} (examples {', '.join(map(str, batch['ids'][:3]))})")
                        if main:
                            save_checkpoint(run_dir, LAST, model, optimizer, scheduler,
                                            extra_state(epoch, stopped=what))
                        raise VLError(f"{what}; stopped, the weights before this step are in "
                                      f"{run_dir}/checkpoints/last", hint="Lower optim.lr, set optim.grad_clip, or "
                                      "use precision=fp32/bf16 instead of fp16.")
                    # DDP averages gradients over ranks: scaling by n * world / global n makes that
                    # average the gradient of the global batch's mean loss, even when ranks got
                    # batches of different sizes (a task's last step).
                    share = n * ranks.world_size / step_n
                    scaler.scale(loss * share / group).backward()
                micro += 1
                epoch_sums["seen"] += step_n
                epoch_sums["loss_sum"] += step_loss * step_n
                epoch_sums["task_loss"].setdefault(batch["task"], []).append(step_loss)
                window["seen"] += step_n
                window["loss_sum"] += step_loss * step_n
                bar.set_postfix(loss=f"{step_loss:.4f}", task=batch["task"], refresh=False)
                bar.update(1)  # (by hand: a bar iterating the loader would not count a batch left by `break`)
                if not boundary:
                    continue
                log_step = every > 0 and (step + 1) % every == 0
                norm = None
                if cfg.optim.grad_clip is not None or log_step:  # the norm costs a pass over the grads
                    scaler.unscale_(optimizer)
                    norm = grad_norm(trainable_params, cfg.optim.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                if log_step and main:
                    now = time.perf_counter()
                    trackers.log({"kind": STEP_RECORD, "step": step, "epoch": epoch + 1,
                                  "loss": window["loss_sum"] / max(1, window["seen"]),
                                  "lr": scheduler.get_last_lr()[0], "grad_norm": norm.item(),
                                  "samples_per_s": round(window["seen"] / max(now - window["t0"], 1e-9), 2)})
                    window = {"seen": 0, "loss_sum": 0.0, "t0": now}
                ended_by_max = cfg.max_steps is not None and step >= cfg.max_steps
                if cfg.save_every_n_steps and step % cfg.save_every_n_steps == 0 and micro < len(sampler):
                    # (at the epoch's end it is saved after the validation, beside `last`)
                    if main:
                        epoch_sums["seconds"] = time.perf_counter() - t0
                        save_checkpoint(run_dir, step_checkpoint_name(step), model, optimizer, scheduler,
                                        extra_state(epoch, micro=micro))
                        if cfg.keep_last_n:
                            prune_step_checkpoints(run_dir, cfg.keep_last_n)
                    ranks.barrier()
                if not ended_by_max and any_rank(stop_requested() is not None, ranks, device):
                    stopped = stop_at(epoch, micro)  # every rank at this step
                    ranks.barrier()
                    raise stopped
                if ended_by_max:
                    break
            bar.close()
            seconds = time.perf_counter() - t0
            seen, task_loss = epoch_sums["seen"], epoch_sums["task_loss"]
            record = {"kind": EPOCH_RECORD, "epoch": epoch + 1, "step": step,
                      "train_loss": epoch_sums["loss_sum"] / max(1, seen),
                      "lr": scheduler.get_last_lr()[0], "seconds": round(seconds, 3),
                      "samples_per_s": round(seen / max(seconds, 1e-9), 2),
                      **{f"{t}_train_loss": sum(v) / len(v) for t, v in sorted(task_loss.items())}}
            inside = micro if micro < len(sampler) else None  # max_steps ended the run inside the epoch
            last_epoch = epoch + 1 == epochs or ended_by_max
            if inside is not None:
                record["batches"] = f"{micro}/{len(sampler)}"
                epoch_sums["seconds"] = seconds

            # Validation every val_every epochs and at the end; the best checkpoint by best_metric.
            improved, early = False, None
            validating = bool(val_sets) and bool(cfg.val_every) and ((epoch + 1) % cfg.val_every == 0 or last_epoch)
            if validating:  # every rank predicts its share of the batches; rank 0 scores
                try:
                    metrics, details = validate(model, val_sets, tokenizer, device, cfg.val_batch_size,
                                                autocast_step, progress=progress, ranks=ranks)
                except Stopped:  # the epoch's steps are kept; the resumed run validates it again
                    raise stop_at(epoch, micro) from None
            if main:
                if validating:
                    write_json_atomic(epoch_eval_path(run_dir, epoch + 1),
                                      {"epoch": epoch + 1, "step": step, "metrics": metrics, "tasks": details})
                    record.update(metrics)
                    value = metrics.get(cfg.best_metric)
                    if value is not None and (best is None or value > best):
                        best, improved = value, True
                    watched = metrics.get(stop_metric)
                    if stopping.patience and watched is not None:
                        if stop_best is None or watched > stop_best:
                            stop_best, stale = watched, 0
                        else:
                            stale += 1
                        if stale >= stopping.patience and not last_epoch:
                            early = (f"{stop_metric} has not beaten its best, {stop_best:.4g}, in {stale} "
                                     f"validation{'s' * (stale != 1)} (early_stopping.patience={stopping.patience})")
                append_metrics(run_dir, record)
                trackers.log(record)
                if last_epoch or early or ended_by_max or time.monotonic() - plotted_at >= PLOT_EVERY_S:
                    plot_curves(run_dir)
                    plotted_at = time.monotonic()
                print(json.dumps(record, sort_keys=True), flush=True)
                if improved:  # before `last`: a resume from the `last` before this one saves it again
                    save_checkpoint(run_dir, BEST, model, None, None, extra_state(epoch, micro=inside, ended=True))
                state = extra_state(epoch, micro=inside, early=early, ended=True)
                save_checkpoint(run_dir, LAST, model, optimizer, scheduler, state)
                if cfg.save_every_n_steps and step % cfg.save_every_n_steps == 0:  # the same state as `last`
                    save_checkpoint(run_dir, step_checkpoint_name(step), model, optimizer, scheduler, state)
                    if cfg.keep_last_n:
                        prune_step_checkpoints(run_dir, cfg.keep_last_n)
                if early:
                    print(f"early stopping after epoch {epoch + 1} (step {step}): {early}", flush=True)
                elif ended_by_max:
                    print(f"stopped at max_steps={cfg.max_steps} (epoch {epoch + 1}, {micro} of its "
                          f"{len(sampler)} batches)", flush=True)
            ranks.barrier()  # rank 0 writes; the others wait for it
            if agree(early is not None, ranks) or ended_by_max:
                break
    finally:
        if trackers is not None:
            trackers.close()
    return run_dir
