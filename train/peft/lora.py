"""LoRA (Hu et al. 2021) on the attention projections of VL-T5 / VL-BART.

Each target `nn.Linear` of every attention (encoder self, decoder self, decoder cross)
is replaced in its parent by `LoRALinear`, which keeps the original layer as `base` and
adds a low-rank update (eq. 3 of the paper, with dropout on the input as the reference):

    y = base(x) + B A dropout(x) * alpha / r        A: (r, in), B: (out, r), B = 0 at init

so the model is unchanged until B trains. sharing="multiple" keeps one (A, B) per task,
chosen by `model.task_state.current()`; "single" one set for all tasks.

What trains (reference §2.4): A and B, the visual projection, and with train_biases (the
default) every Linear and LayerNorm bias of the backbone: the reference's LoRA runs
trained everything named "*bias*", i.e. LoRA + BitFit, which the paper's 5.93% / 17.71%
shares count. LayerNorm weights stay frozen. T5 has no biases, so there it is plain LoRA.

`merge_lora` folds one set into the base weights for inference (no wrappers left);
`export_peft` writes the backbone's update in the `peft` library's LoRA format.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers.models.bart.modeling_bart import BartAttention
from transformers.models.t5.modeling_t5 import T5Attention

from vl.shared.config import literal_problems
from vl.shared.errors import VLError, collect_or_raise
from vl.train.model import TaskState, VLModel
from vl.train.peft import LAYER_NORMS, bias_names, task_name_problems, visual_projection_names
from vl.train.peft.registry import register_method

SHARED = "shared"  # the one key of sharing="single"
ATTENTIONS = (BartAttention, T5Attention)
# Projection roles -> the attribute names of each backbone's attention module. A target
# is a role or a backbone's own name (q_proj for BART, q for T5, ...).
PROJECTIONS = {
    "query": {"bart": "q_proj", "t5": "q"},
    "key": {"bart": "k_proj", "t5": "k"},
    "value": {"bart": "v_proj", "t5": "v"},
    "output": {"bart": "out_proj", "t5": "o"},
}
PEFT_PREFIX = "base_model.model."  # export_peft's keys: peft.PeftModel -> LoraModel -> the transformers model
KNOWN_TARGETS = [*PROJECTIONS, *(name for names in PROJECTIONS.values() for name in names.values())]


@dataclass
class LoRAConfig:
    rank: int = 128  # the reference's scripts (--lora_dim 128)
    alpha: float = 32.0  # scaling alpha / rank = 0.25
    dropout: float = 0.1  # on the LoRA branch's input only
    targets: tuple[str, ...] = ("query", "value")  # roles or backbone names, in every attention
    sharing: Literal["single", "multiple"] = "single"
    train_biases: bool = True  # LoRA + BitFit, as the reference's runs (see the module docstring)

    def check(self) -> list[str]:
        problems = literal_problems(self)
        if not isinstance(self.rank, int) or self.rank < 1:
            problems.append(f"lora rank must be an integer >= 1 (got {self.rank!r})")
        if not self.alpha > 0:
            problems.append(f"lora alpha must be > 0 (got {self.alpha})")
        if not 0 <= self.dropout < 1:
            problems.append(f"lora dropout must be in [0, 1) (got {self.dropout})")
        if isinstance(self.targets, str):
            problems.append(f"lora targets must be a list of names, e.g. [query, value] (got {self.targets!r})")
        elif not self.targets:
            problems.append(f"lora targets is empty: name attention projections, e.g. {', '.join(PROJECTIONS)}")
        own = "; ".join(f"{b}: {', '.join(n[b] for n in PROJECTIONS.values())}" for b in ("bart", "t5"))
        problems += [f"LoRA target {t!r} is not an attention projection; choose from: {', '.join(PROJECTIONS)} "
                     f"(or a backbone's own names, {own})"
                     for t in ([] if isinstance(self.targets, str) else self.targets) if t not in KNOWN_TARGETS]
        return problems


class LoRALinear(nn.Module):
    """`base` (the original nn.Linear, not trained by LoRA) plus one low-rank update per key.

    lora_A[key]: nn.Linear(in, rank), weight (rank, in), Kaiming-uniform as nn.Linear;
    lora_B[key]: nn.Linear(rank, out), weight (out, rank), zeros; no biases. Plain Linear
    modules, so the loop's weight-decay-by-module-type rule decays them as the reference
    did. task_state None: the single key SHARED."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float, keys: list[str],
                 task_state: TaskState | None = None):
        super().__init__()
        self.base = base
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        self.dropout = nn.Dropout(dropout)
        like = dict(bias=False, device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.ModuleDict({k: nn.Linear(base.in_features, rank, **like) for k in keys})
        self.lora_B = nn.ModuleDict({k: nn.Linear(rank, base.out_features, **like) for k in keys})
        for a, b in zip(self.lora_A.values(), self.lora_B.values()):
            nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
            nn.init.zeros_(b.weight)
        self.task_state = task_state

    # Read by code that inspects the layer it replaced (dtype checks and the like).
    @property
    def weight(self) -> nn.Parameter:
        return self.base.weight

    @property
    def bias(self) -> nn.Parameter | None:
        return self.base.bias

    def key(self) -> str:
        key = SHARED if self.task_state is None else self.task_state.current()
        if key not in self.lora_A:
            raise VLError(f"no LoRA weights for task '{key}'; "
                          f"this model has them for: {', '.join(sorted(self.lora_A))}")
        return key

    def delta_weight(self, key: str) -> torch.Tensor:
        return (self.lora_B[key].weight @ self.lora_A[key].weight) * self.scaling  # (out, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = self.key()
        return self.base(x) + self.lora_B[key](self.lora_A[key](self.dropout(x))) * self.scaling


def lora_layers(module: nn.Module) -> dict[str, LoRALinear]:
    """{path within `module`: LoRALinear} for every wrapped projection."""
    return {path: m for path, m in module.named_modules() if isinstance(m, LoRALinear)}


def resolve_targets(model: VLModel, targets: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(attribute names to wrap in each attention of this backbone, problems). Names that
    no backbone has are left to LoRAConfig.check()."""
    model_type = model.config.model_type
    own = [names[model_type] for names in PROJECTIONS.values()]
    names, problems = [], []
    for target in targets:
        name = PROJECTIONS[target][model_type] if target in PROJECTIONS else target
        if name not in own and target in KNOWN_TARGETS:
            problems.append(f"LoRA target '{target}' is not an attention projection of this {model_type} backbone; "
                            f"choose from: {', '.join(PROJECTIONS)} (or {model_type}'s names: {', '.join(own)})")
        elif name in own and name not in names:
            names.append(name)
    return names, problems


def apply_lora(model: VLModel, cfg: LoRAConfig, tasks: list[str]) -> list[str]:
    """Wrap the target projections of every attention with LoRALinear (see the module
    docstring); returns the names of the parameters that train. Records `cfg` as
    `model.lora_config` (export_peft reads it)."""
    problems = cfg.check() + (task_name_problems(list(tasks)) if cfg.sharing == "multiple" else [])
    names: list[str] = []
    if not isinstance(cfg.targets, str):  # a string is check()'s complaint
        names, found = resolve_targets(model, tuple(cfg.targets))
        problems += found
    if lora_layers(model):
        problems.append("LoRA is already applied to this model (apply it once; merge_lora removes it)")
    collect_or_raise(problems)

    keys = [SHARED] if cfg.sharing == "single" else list(tasks)
    task_state = None if cfg.sharing == "single" else model.task_state
    attentions = [m for m in model.backbone.modules() if isinstance(m, ATTENTIONS)]
    if not attentions:
        raise VLError(f"no attention modules ({', '.join(a.__name__ for a in ATTENTIONS)}) found in the backbone")
    for attention in attentions:
        for name in names:
            base = getattr(attention, name)
            assert isinstance(base, nn.Linear), f"{type(attention).__name__}.{name} is a {type(base).__name__}"
            layer = LoRALinear(base, cfg.rank, cfg.alpha, cfg.dropout, keys, task_state)
            setattr(attention, name, layer.train(base.training))  # a new module is in training mode
    model.lora_config = cfg

    trainable = [f"{path}.{part}.{key}.weight" for path in lora_layers(model)
                 for part in ("lora_A", "lora_B") for key in keys]
    trainable += visual_projection_names(model)
    if cfg.train_biases:
        trainable += bias_names(model)
    trainable = list(dict.fromkeys(trainable))  # the visual projection's biases come twice
    assert set(trainable) <= dict(model.named_parameters()).keys()
    return trainable


def _chosen_key(model: VLModel, task: str | None, what: str) -> str:
    layers = lora_layers(model)
    if not layers:
        raise VLError(f"{what}: this model has no LoRA layers (apply_lora first; a merged model has none)")
    keys = list(next(iter(layers.values())).lora_A)
    if keys == [SHARED]:
        if task is not None:
            raise VLError(f"{what}: this model has one LoRA shared by all tasks; give no task")
        return SHARED
    if task not in keys:
        raise VLError(f"{what}: this model has one LoRA per task; "
                      f"choose task= one of: {', '.join(sorted(keys))}")
    return task


@torch.no_grad()
def merge_lora(model: VLModel, task: str | None = None) -> list[str]:
    """Fold the single LoRA (or `task`'s, under sharing="multiple") into the base weights,
    W <- W + B A alpha/r, and put the base nn.Linear layers back: a plain transformers
    backbone, as fast as the original, for inference. The other tasks' LoRAs are dropped.
    Returns the paths of the merged layers."""
    key = _chosen_key(model, task, "merge_lora")
    layers = lora_layers(model)
    for path, layer in layers.items():
        layer.base.weight += layer.delta_weight(key).to(layer.base.weight.dtype)
        parent_path, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent_path), name, layer.base)
    model.lora_config = None
    return list(layers)


@torch.no_grad()
def export_peft(model: VLModel, out_dir: str | Path, task: str | None = None) -> Path:
    """Write the backbone's LoRA (the single one, or `task`'s) as a `peft` checkpoint:
    adapter_config.json + adapter_model.safetensors, so that
    `peft.PeftModel.from_pretrained(<the base backbone>, out_dir)` computes what
    `model.backbone` does. With train_biases the backbone's biases go too (bias="all").
    The visual embedding is not part of the backbone: `vl export` (vl.train.export) writes it
    beside, with the base backbone's name and the tokenizer."""
    from safetensors.torch import save_file

    key = _chosen_key(model, task, "export_peft")
    cfg: LoRAConfig | None = getattr(model, "lora_config", None)
    assert cfg is not None, "apply_lora records its config on the model"
    layers = lora_layers(model.backbone)
    tensors = {}
    for path, layer in layers.items():
        tensors[f"{PEFT_PREFIX}{path}.lora_A.weight"] = layer.lora_A[key].weight
        tensors[f"{PEFT_PREFIX}{path}.lora_B.weight"] = layer.lora_B[key].weight
    if cfg.train_biases:  # peft calls a wrapped layer's original `base_layer`
        bases = {id(layer.base) for layer in layers.values()}
        for path, m in model.backbone.named_modules():
            if isinstance(m, LoRALinear) and m.base.bias is not None:
                tensors[f"{PEFT_PREFIX}{path}.base_layer.bias"] = m.base.bias
            elif (isinstance(m, (nn.Linear, *LAYER_NORMS)) and id(m) not in bases
                  and getattr(m, "bias", None) is not None):
                tensors[f"{PEFT_PREFIX}{path}.bias"] = m.bias
    has_biases = any(k.endswith(".bias") for k in tensors)
    first = next(iter(layers.values()))
    config = {
        "peft_type": "LORA",
        "task_type": "SEQ_2_SEQ_LM",
        "base_model_name_or_path": getattr(model.config, "_name_or_path", None) or None,
        "r": first.rank,
        "lora_alpha": first.alpha,
        "lora_dropout": first.dropout.p,
        "target_modules": sorted({path.rpartition(".")[2] for path in layers}),
        "bias": "all" if has_biases else "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "inference_mode": True,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out


def _export_peft(model: VLModel, cfg: LoRAConfig, out: Path, task: str | None = None) -> list[str]:
    """The registry's writer of the `peft` format (export_peft); every trainable tensor of the
    backbone (A, B and with train_biases its biases) is in it."""
    export_peft(model, out, task)
    return [name for name, p in model.named_parameters() if p.requires_grad and name.startswith("backbone.")]


def _lora_group(module_name: str, module: nn.Module, attr: str) -> str | None:
    """The dry-run group of the A and B matrices (`....q.lora_A.<key>.weight`)."""
    return "LoRA" if attr.startswith("lora_") or ".lora_" in module_name else None


def _merged(model: VLModel, cfg: LoRAConfig) -> bool:
    """A single LoRA merges into its base weights (a run can start from it); one per task does not."""
    if cfg.sharing != "single":
        return False
    merge_lora(model)
    return True


register_method("lora", "LoRA matrices, every bias, visual projection", config=LoRAConfig, apply=apply_lora,
                display=("LoRA", "LoRA"), groups=_lora_group, to_plain_model=_merged,
                plain_model_when="a single LoRA merges into its base weights", exports={"peft": _export_peft})
