"""The typed settings of one training run (`vl train -c run.yaml --set optim.lr=3e-4`).

Each dataclass owns one part; `TrainConfig` nests them. Defaults live here, a YAML file
and `--set` overrides change them (vl.shared.config), and every `check()` is cheap: no
file reads, no torch. Missing files and mismatched stores are found by the loop's own
checks, all before the model is built.

A minimal config:

    run_dir: runs/vqa-gqa
    tasks:
      - {name: vqa, train_manifest: manifests/vqa2_train.jsonl, store: features/coco_rn101.h5}
      - {name: gqa, train_manifest: manifests/gqa_train.jsonl, store: features/coco_rn101.h5}
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vl.shared.config import literal_problems
from vl.shared.devices import Precision
from vl.train.data import DataSettings, Sampling, TaskOptions
from vl.train.model import BackboneInit, VisualBoxes, VisualInputs
from vl.train.peft.methods import METHODS, method_sections
from vl.train.tasks import TASKS
from vl.train.weight_decay import DecayRule

Tracker = Literal["jsonl", "tensorboard", "wandb"]  # where training metrics go (vl.train.trackers)
Checkpoint = Literal["best", "last"]  # which checkpoint `vl evaluate --run` scores (vl.train.build.load_trained)
METRIC_SUFFIX = "score"  # <task>_score: the task's official main score, 0-100 (see vl.train.loop.validate)


@dataclass
class TaskSpec(TaskOptions):
    """One task trained in the run: where its examples and features are, and (the fields
    of TaskOptions, vl.train.data: prefix, max_text_tokens, truncate, max_target_tokens,
    num_beams, max_new_tokens, decision, answer; vl_lm's mask_rate, mean_span_length,
    masking, objective) how it is read and answered."""

    name: str  # a registered task: vqa, gqa, nlvr2, caption, tvqa, how2qa, tvc, yc2c; pre-training vl_lm, itm
    train_manifest: Path
    store: Path  # the feature store made by `vl extract images|videos` for these manifests
    val_manifest: Path | None = None  # None: no validation for this task
    train_split: str = "train"
    val_split: str = "val"
    test_manifest: Path | None = None  # for `vl evaluate --split test` (answers optional)
    test_split: str = "test"
    # what the store must have been made with, checked before training, e.g.
    # {encoder: {model: RN101, weights: {pretrained: openai}}, features: {pool: 6}} (its provenance keys)
    store_settings: dict[str, Any] | None = None
    batch_size: int = 32

    def check(self) -> list[str]:
        problems = super().check()
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1 (got {self.batch_size})")
        if self.name in TASKS:  # an unknown name is reported when the task is looked up, naming the choices
            problems += self.task_problems(TASKS[self.name])
        return problems


@dataclass
class OptimConfig:
    """AdamW with linear warmup then linear decay to 0 over the whole run."""

    lr: float = 1e-4
    weight_decay: float = 0.01
    # which parameters decay (vl.train.weight_decay): standard = Linear and Embedding weights only, never
    # biases or norms; reference = every trainable parameter but the biases, as the reference's AdamW did
    decay: DecayRule = "standard"
    warmup_ratio: float = 0.05  # a share of the run's optimizer steps
    grad_clip: float | None = 5.0  # max global grad norm; None: no clipping
    grad_accum: int = 1  # micro-batches per optimizer step
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6
    fused: bool = False  # torch's fused AdamW kernel (one kernel for all tensors; bench/train_step.py --fused)

    def check(self) -> list[str]:
        problems = literal_problems(self)
        if not self.lr > 0:
            problems.append(f"lr must be > 0 (got {self.lr})")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must be >= 0 (got {self.weight_decay})")
        if not 0 <= self.warmup_ratio < 1:
            problems.append(f"warmup_ratio must be in [0, 1) (got {self.warmup_ratio})")
        if self.grad_clip is not None and not self.grad_clip > 0:
            problems.append(f"grad_clip must be > 0 or null (got {self.grad_clip})")
        if self.grad_accum < 1:
            problems.append(f"grad_accum must be >= 1 (got {self.grad_accum})")
        if not all(0 <= b < 1 for b in self.betas):
            problems.append(f"betas must lie in [0, 1) (got {list(self.betas)})")
        return problems


@dataclass
class LoggingConfig:
    """Where the training metrics go and how often. Epoch records (train loss, validation
    scores) always go to metrics.jsonl (`vl report` and the curves read them); per-step
    records (loss, lr, grad norm, samples/s) every `every_n_steps` optimizer steps go to
    each tracker of `report_to`: jsonl (metrics.jsonl, as `"kind": "step"` lines),
    tensorboard (<run_dir>/tensorboard; pip install 'vl[tensorboard]'), wandb (pip install
    'vl[wandb]'; WANDB_MODE=offline works without an account)."""

    report_to: list[Tracker] = field(default_factory=lambda: ["jsonl"])
    every_n_steps: int = 50  # 0: no per-step records (epoch records only)
    wandb_project: str = "vl"  # the W&B project; the run is named after run_dir's folder

    def check(self) -> list[str]:
        problems = literal_problems(self)
        if self.every_n_steps < 0:
            problems.append(f"every_n_steps must be >= 1, or 0 for no per-step records (got {self.every_n_steps})")
        problems += [f"report_to names {t!r} twice" for t in sorted(set(self.report_to))
                     if self.report_to.count(t) > 1]
        return problems


@dataclass
class EarlyStopping:
    """Stop when `metric` has not beaten its best for `patience` validations in a row."""

    metric: str | None = None  # a validation metric (mean_score, <task>_score); None: best_metric
    patience: int = 0  # 0: never stop early

    def check(self) -> list[str]:
        return [f"patience must be >= 0, 0 for no early stopping (got {self.patience})"] if self.patience < 0 else []


@dataclass
@method_sections  # after `method`: one section per registered method with settings (adapter:, lora:, ...)
class TrainConfig:
    """A whole run. `vl train -c this.yaml` reads it; the resolved copy is saved as
    `<run_dir>/config.json` and `vl train --resume <run_dir>` reads that back.

    Besides the fields below it has a field per PEFT method with settings, named as the
    method and typed by its config dataclass (`adapter: AdapterConfig`, `hyperformer`,
    `compacter`, `lora`, `prompt`), right after `method`: vl.train.peft.registry."""

    run_dir: Path = Path("runs/vl")
    tasks: list[TaskSpec] = field(default_factory=list)
    backbone: str = "tiny-t5"  # t5-small, t5-base, bart-base, bart-large, tiny-t5/tiny-bart (tests), or a folder
    init: BackboneInit = "random"
    # a finished run whose weights (backbone and visual embedding, its best checkpoint) this run
    # starts from, with its backbone, init, tokenizer and extra_tokens: V&L pre-training, then this
    init_from: Path | None = None
    tokenizer: str | None = None  # a folder or hub id; None: train one on the train manifests (saved in run_dir)
    tokenizer_vocab_size: int = 1000  # when training one
    # when training one: more manifests whose texts it learns besides the tasks' train manifests
    # (e.g. the tasks of later runs that start from this one with init_from)
    tokenizer_manifests: list[Path] = field(default_factory=list)
    method: str = "full"  # what trains: a registered method (`vl list methods`, vl.train.peft.registry); its
    #                       settings are in the section of that name
    # how visual tokens enter the encoder (vl.train.model): "reference" as the paper's code (the
    # presets), "packed" our own layout (positions and norm over all tokens, real boxes)
    visual_inputs: VisualInputs = "packed"
    visual_boxes: VisualBoxes | None = None  # None: the mode's own (reference zero, packed grid)
    feat_dim: int | None = None  # the stores' feature width; None: read from the stores (--dry-run needs one of the two)
    extra_tokens: int = 0  # special tokens added to the tokenizer and the embedding (VL-BART: 200, see presets)
    data: DataSettings = field(default_factory=DataSettings)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sampling: Sampling = "proportional"
    temperature: float = 1.0  # sampling=temperature: task shares ∝ size^(1/T)
    epochs: int = 20
    # train this many optimizer steps instead of `epochs` epochs (as many epochs as that takes, the last
    # one stopped inside, then validated and saved); the lr schedule decays to 0 at this step
    max_steps: int | None = None
    seed: int = 0
    precision: Precision = "fp32"  # bf16/fp16: autocast on the GPU
    # torch.compile the backbone's teacher-forced pass (training steps; generation stays eager): the first
    # steps take a minute or more to compile; gain measured by bench/train_step.py --compile (docs/benchmarks.md)
    compile: bool = False
    device: str = "auto"  # auto: cuda when available, else cpu
    workers: int = 0  # DataLoader worker processes (each reads the stores itself)
    features_in_memory: bool = False  # read the train tasks' features into memory once (if they fit)
    skip_missing: bool = False  # drop examples whose media are not in the store (else an error)
    dropout: float | None = None  # every dropout of the backbone; None keeps its config's (0.1 for T5/BART)
    val_every: int = 1  # validate every N epochs (and after the last); 0: never (`vl evaluate` scores later)
    val_batch_size: int = 64
    best_metric: str = "mean_score"  # mean_score (the tasks' average) or <task>_score; higher is better
    # the checkpoint `vl evaluate --run` scores unless --checkpoint says otherwise: best (by best_metric)
    # or last; the reference tested the model of its last epoch (the paper presets say last)
    eval_checkpoint: Checkpoint = "best"
    early_stopping: EarlyStopping = field(default_factory=EarlyStopping)
    # also checkpoint every N optimizer steps as checkpoints/step-N (resumable mid-epoch); None: never
    save_every_n_steps: int | None = None
    keep_last_n: int | None = None  # keep only the newest N step-N checkpoints (never best or last); None: all
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def metric_names(self) -> list[str]:
        return [f"mean_{METRIC_SUFFIX}"] + [f"{t.name}_{METRIC_SUFFIX}" for t in self.tasks]

    def check(self) -> list[str]:
        problems = literal_problems(self)
        if not self.tasks:
            problems.append("tasks is empty: name at least one task (name, train_manifest, store)")
        names = [t.name for t in self.tasks]
        problems += [f"task {n!r} is listed twice" for n in sorted(set(names)) if names.count(n) > 1]
        if self.epochs < 1:
            problems.append(f"epochs must be >= 1 (got {self.epochs})")
        for name in ("max_steps", "save_every_n_steps", "keep_last_n"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"{name} must be >= 1 or null (got {value})")
        if self.val_every < 0:
            problems.append(f"val_every must be >= 1, or 0 for no validation (got {self.val_every})")
        if self.val_batch_size < 1:
            problems.append(f"val_batch_size must be >= 1 (got {self.val_batch_size})")
        if self.workers < 0:
            problems.append(f"workers must be >= 0 (got {self.workers})")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            problems.append(f"dropout must be in [0, 1) or null (got {self.dropout})")
        if self.method not in METHODS:  # each section's own check() runs with the config's
            problems.append(f"method must be one of: {', '.join(METHODS)} (got {self.method!r})")
        if self.visual_inputs == "reference" and self.extra_tokens < 2 and self.init_from is None:
            problems.append("visual_inputs=reference embeds visual token k with the word embedding of <vis_extra_id_k>: "
                            "set extra_tokens (200 as VL-BART: 100 <extra_id_k> and 100 <vis_extra_id_k>)")
        if self.feat_dim is not None and self.feat_dim < 1:
            problems.append(f"feat_dim must be >= 1 or null (got {self.feat_dim})")
        if self.extra_tokens < 0 or self.extra_tokens % 2:
            problems.append(f"extra_tokens must be an even number >= 0: half <extra_id_k>, half <vis_extra_id_k> "
                            f"(got {self.extra_tokens})")
        if not self.temperature > 0:
            problems.append(f"temperature must be > 0 (got {self.temperature})")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            problems.append(f"device must be auto, cpu, cuda or cuda:N (got {self.device!r})")
        if self.init == "pretrained" and self.tokenizer is None and self.init_from is None:
            problems.append("init=pretrained needs the backbone's own tokenizer: set tokenizer "
                            "(a hub id such as google-t5/t5-base, or a folder)")
        if self.tasks and any(t.val_manifest for t in self.tasks) and self.best_metric not in self.metric_names():
            problems.append(f"best_metric {self.best_metric!r} is not a validation metric of this run; "
                            f"choose one of: {', '.join(self.metric_names())}")
        if self.early_stopping.patience:
            if not self.tasks or not any(t.val_manifest for t in self.tasks) or not self.val_every:
                problems.append("early_stopping needs validation: give a task a val_manifest and keep val_every >= 1 "
                                "(or set early_stopping.patience=0)")
            elif self.early_stopping_metric() not in self.metric_names():
                problems.append(f"early_stopping.metric {self.early_stopping.metric!r} is not a validation metric of "
                                f"this run; choose one of: {', '.join(self.metric_names())}")
        return problems

    def early_stopping_metric(self) -> str:
        return self.early_stopping.metric or self.best_metric
