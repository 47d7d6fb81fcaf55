"""Bottleneck adapters (Houlsby et al. 2019; VL-Adapter's "Single", "Multiple", "Half-shared").

At every site (vl.train.peft.sites: after each attention and feed-forward sub-layer, 30 on
bart-base, 60 on t5-base) the sub-layer output h becomes

    h + up(act(down(h)))        down: Linear(d -> d/r), up: Linear(d/r -> d), act gelu_new

Sharing over tasks (reference `adapter_controller.py` L41-86):
  single       one adapter per site for all tasks (the paper's 4.18% on bart-base image)
  multiple     one per site and task (12.22%)
  half-shared  up shared, down one per task (8.36%: the paper's number matches a shared
               up-sampler, not a shared down-sampler)

Initialisation (`init`, biases always start at zero except where said):
  zero-up    (default) down ~ N(0, 0.02), up = 0: the adapted model computes exactly the
             frozen model at step 0
  normal     down and up ~ N(0, 0.02), on any backbone
  reference  as the reference, which differs by backbone: on BART its init_weights
             re-initialised both to N(0, 0.02) (HF `_init_weights`, see
             vl.train.peft.reference_reinit), the same as "normal"; on T5 its
             `_init_weights` ignored nn.Linear, so both keep PyTorch's default
             (Kaiming-uniform weights, uniform biases in +-1/sqrt(fan_in))

Trains: the adapters, the visual projection and (train_layer_norms) every LayerNorm, as
the reference's scripts (`--unfreeze_layer_norms`).
"""
from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch
from torch import nn
from transformers.activations import ACT2FN

from vl.shared.config import literal_problems
from vl.shared.errors import VLError, collect_or_raise
from vl.train.model import TaskState, VLModel
from vl.train.peft import for_task, linear, reference_reinit, task_name_problems
from vl.train.peft.registry import group_under, register_method
from vl.train.peft.sites import (ADAPTERHUB_PLACEMENT, attach, check_free, find_sites, per_site, trainable_names,
                                 write_adapterhub)

# Names of transformers.activations.ACT2FN accepted here (written out so the config needs no torch).
Activation = Literal["gelu_new", "gelu", "gelu_fast", "gelu_pytorch_tanh", "quick_gelu", "relu", "silu", "swish", "tanh"]
ACTIVATIONS = typing.get_args(Activation)


@dataclass
class AdapterConfig:
    reduction_factor: int = 8  # bottleneck = d_model / r; every reference script uses 8 (96 on bart-base)
    sharing: Literal["single", "multiple", "half-shared"] = "single"
    activation: Activation = "gelu_new"
    init: Literal["zero-up", "normal", "reference"] = "zero-up"  # zero-up: the adapted model starts as the frozen one
    train_layer_norms: bool = True

    def check(self) -> list[str]:
        problems = literal_problems(self)
        if self.reduction_factor < 1:
            problems.append(f"adapter reduction_factor must be >= 1 (got {self.reduction_factor})")
        return problems


def bottleneck_problems(d_model: int, reduction_factor: int) -> list[str]:
    if reduction_factor >= 1 and d_model % reduction_factor:
        return [f"the backbone's d_model {d_model} is not divisible by reduction_factor {reduction_factor}: "
                "choose a divisor of d_model"]
    return []


class BottleneckAdapter(nn.Module):
    """x + up(act(down(x))) at one site. `down` / `up` are one module, or a ModuleDict with
    one per task routed by `task_state.current()`. Compacter reuses it with PHM layers."""

    def __init__(self, make_down: Callable[[], nn.Module], make_up: Callable[[], nn.Module], activation: str,
                 task_state: TaskState, down_tasks: list[str] | None = None, up_tasks: list[str] | None = None):
        super().__init__()
        self.down = nn.ModuleDict({t: make_down() for t in down_tasks}) if down_tasks else make_down()
        self.up = nn.ModuleDict({t: make_up() for t in up_tasks}) if up_tasks else make_up()
        self.act = ACT2FN[activation]
        self.task_state = task_state  # the model's TaskState (not a module: a plain reference)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., d) -> (..., d)
        down = for_task(self.down, self.task_state) if isinstance(self.down, nn.ModuleDict) else self.down
        up = for_task(self.up, self.task_state) if isinstance(self.up, nn.ModuleDict) else self.up
        return x + up(self.act(down(x)))


def apply_adapters(model: VLModel, cfg: AdapterConfig, tasks: list[str]) -> list[str]:
    """Add bottleneck adapters at every site of `model` as `model.adapters`
    (names `adapters.<encoder|decoder>.<layer>.<self_attn|cross_attn|ffn>.<down|up>[.<task>].weight`);
    return the names of every parameter that trains."""
    d = model.config.d_model
    problems = cfg.check() + bottleneck_problems(d, cfg.reduction_factor)
    if cfg.sharing != "single":
        problems += task_name_problems(list(tasks))
    collect_or_raise(problems)
    check_free(model)
    bottleneck = d // cfg.reduction_factor
    down_tasks = list(tasks) if cfg.sharing in ("multiple", "half-shared") else None
    up_tasks = list(tasks) if cfg.sharing == "multiple" else None
    down_init, up_init = {"zero-up": ("normal", "zero"), "normal": ("normal", "normal"),
                          "reference": ("default", "default")}[cfg.init]

    sites = find_sites(model)
    modules = per_site(sites, lambda s: BottleneckAdapter(
        lambda: linear(d, bottleneck, down_init), lambda: linear(bottleneck, d, up_init),
        cfg.activation, model.task_state, down_tasks, up_tasks))
    if cfg.init == "reference":
        reference_reinit(modules, model)  # BART: N(0, 0.02); T5: PyTorch's default stays
    attach(model, "adapters", modules, sites, lambda s: modules[s.stack][s.layer][s.kind])
    return trainable_names(model, "adapters", cfg.train_layer_norms)


def export_adapterhub(model: VLModel, cfg: AdapterConfig, out: Path, task: str | None = None) -> list[str]:
    """Write the single adapter as an AdapterHub bottleneck adapter (Houlsby's placement plus the
    cross-attention site: vl.train.peft.sites); returns the vl names written. One per task
    (multiple, half-shared) has no AdapterHub form: refused."""
    if cfg.sharing != "single":
        raise VLError(f"adapter with sharing={cfg.sharing} keeps adapters per task, which an AdapterHub bottleneck "
                      "adapter cannot hold (it has one per site)")
    if task is not None:
        raise VLError("this run has one adapter shared by all tasks; give no --task")
    config = dict(ADAPTERHUB_PLACEMENT, reduction_factor=cfg.reduction_factor, non_linearity=cfg.activation,
                  phm_layer=False)
    return write_adapterhub(model, "adapters", out, config, lambda name: adapterhub_name(name, {}))


def adapterhub_name(name: str, params: dict[str, str]) -> str:
    """A BottleneckAdapter's parameter name (`down.weight`, `up.W`) in AdapterHub's adapter module:
    its down projection is `adapter_down.0` (then the activation), its up one `adapter_up`;
    `params` renames the projection's own parameters (Compacter's PHM layers)."""
    part, _, param = name.partition(".")
    return f"{ {'down': 'adapter_down.0', 'up': 'adapter_up'}[part]}.{params.get(param, param)}"


apply = apply_adapters
register_method("adapter", "adapters, LayerNorms, visual projection", config=AdapterConfig, apply=apply_adapters,
                display=("adapter", "adapters"), groups=group_under("adapters", "adapters", per_site=True),
                exports={"adapters": export_adapterhub})
