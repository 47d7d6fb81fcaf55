"""Hyperformer (Mahabadi et al. 2021): adapters whose weights a hypernetwork generates from a
task embedding and a layer embedding (reference `--use_hyperformer --unique_hyper_net
--projected_task_embedding_dim 8`, `adapters/adapter_hypernetwork.py`).

    task embedding (per task, 512; shared by encoder and decoder)
    layer embedding (per stack: Embedding(num_layers, 512))
      -> concat (1024) -> Linear(->128) -> ReLU -> Linear(->8) -> LayerNorm(8) = z    (per stack)
    z -> per site kind (self_attn, ffn; + cross_attn in the decoder) x {down, up}:
         Linear(8 -> weight numel) and Linear(8 -> bias numel)                         (per stack)
    site output h -> h + W_up gelu_new(W_down h + b_down) + b_up   (no adapter LayerNorms)

On bart-base with 4 tasks that is 6,947,088 parameters; with every LayerNorm and the visual
projection the paper's 8.58M trainable of 148.10M (5.79%).

Initialisation (`init`). Task embeddings are always randn(512) and the hypernet's
LayerNorm(8) starts at (1, 0), as the reference (neither was re-initialised there).
  zero-up    (default) the generator Linears and the hypernet's N(0, 0.01) with zero bias,
             as the hyperformer code builds them, layer embeddings N(0, 1) (nn.Embedding's
             default), except the two up generators (weight and bias), which start at
             zero: every generated up-projection is zero and the model starts as the
             frozen one, at no cost in parameters. The first step then trains only the up
             generators (the rest get zero gradient until the up-projection is non-zero),
             as LoRA's zero B does.
  normal     the same without the zeros: what the reference's VL-T5 ran (its
             `_init_weights` leaves these modules as built)
  reference  as the reference, by backbone: on BART its init_weights re-initialised
             every Linear (generators, hypernet) and Embedding (layer embeddings) to
             N(0, 0.02) with zero bias (vl.train.peft.reference_reinit); on T5 = normal
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from vl.shared.config import literal_problems
from vl.shared.errors import collect_or_raise
from vl.train.model import TaskState, VLModel
from vl.train.peft.adapter import bottleneck_problems
from vl.train.peft import for_task, linear, reference_reinit, task_name_problems
from vl.train.peft.registry import group_under, register_method
from vl.train.peft.sites import STACKS, attach, check_free, find_sites, trainable_names



@dataclass
class HyperformerConfig:
    task_embedding_dim: int = 512
    hidden_dim: int = 128  # the task hypernet's hidden layer
    projected_dim: int = 8  # z, the generators' input (the scripts' --projected_task_embedding_dim 8)
    reduction_factor: int = 8  # generated bottleneck = d_model / r
    init: Literal["zero-up", "normal", "reference"] = "zero-up"  # zero-up: the model starts as the frozen one
    train_layer_norms: bool = True

    def check(self) -> list[str]:
        return literal_problems(self) + [f"hyperformer {name} must be >= 1 (got {getattr(self, name)})"
                for name in ("task_embedding_dim", "hidden_dim", "projected_dim", "reduction_factor")
                if getattr(self, name) < 1]


def _linear(d_in: int, d_out: int, zero: bool = False) -> nn.Linear:
    """The hypernetworks' layers: weights N(0, 0.01) (or zero), zero bias."""
    return linear(d_in, d_out, "zero" if zero else "normal", std=0.01)


class AdapterGenerator(nn.Module):
    """z -> one adapter's weights, applied to a site's output: h + up(gelu_new(down(h)))."""

    def __init__(self, projected_dim: int, d_model: int, bottleneck: int, zero_up: bool):
        super().__init__()
        self.d_model, self.bottleneck = d_model, bottleneck
        self.down_weight = _linear(projected_dim, bottleneck * d_model)
        self.down_bias = _linear(projected_dim, bottleneck)
        self.up_weight = _linear(projected_dim, d_model * bottleneck, zero=zero_up)
        self.up_bias = _linear(projected_dim, d_model, zero=zero_up)
        self.act = ACT2FN["gelu_new"]

    def forward(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:  # h (..., d), z (p,)
        down = self.down_weight(z).view(self.bottleneck, self.d_model)  # (b, d)
        up = self.up_weight(z).view(self.d_model, self.bottleneck)  # (d, b)
        return h + F.linear(self.act(F.linear(h, down, self.down_bias(z))), up, self.up_bias(z))


class StackHyperNet(nn.Module):
    """The encoder's or the decoder's hypernetwork (reference AdapterLayersHyperNetController)."""

    def __init__(self, num_layers: int, kinds: list[str], d_model: int, bottleneck: int, cfg: HyperformerConfig):
        super().__init__()
        self.layer_embedding = nn.Embedding(num_layers, cfg.task_embedding_dim)
        self.task_hypernet = nn.Sequential(
            _linear(2 * cfg.task_embedding_dim, cfg.hidden_dim), nn.ReLU(),
            _linear(cfg.hidden_dim, cfg.projected_dim), nn.LayerNorm(cfg.projected_dim))
        self.generators = nn.ModuleDict({k: AdapterGenerator(cfg.projected_dim, d_model, bottleneck,
                                                             zero_up=cfg.init == "zero-up") for k in kinds})

    def forward(self, h: torch.Tensor, task_embedding: torch.Tensor, layer: int, kind: str) -> torch.Tensor:
        z = self.task_hypernet(torch.cat([task_embedding, self.layer_embedding.weight[layer]]))  # (p,)
        return self.generators[kind](h, z)


class Hyperformer(nn.Module):
    """Everything the method adds: `task_embeddings.<task>`, `encoder`, `decoder` (StackHyperNet)."""

    def __init__(self, tasks: list[str], stacks: dict[str, tuple[int, list[str]]], d_model: int,
                 cfg: HyperformerConfig, task_state: TaskState):
        super().__init__()
        self.task_embeddings = nn.ParameterDict({t: nn.Parameter(torch.randn(cfg.task_embedding_dim)) for t in tasks})
        bottleneck = d_model // cfg.reduction_factor
        for stack, (num_layers, kinds) in stacks.items():
            self.add_module(stack, StackHyperNet(num_layers, kinds, d_model, bottleneck, cfg))
        self.task_state = task_state  # the model's TaskState (a plain reference)

    def forward(self, h: torch.Tensor, stack: str, layer: int, kind: str) -> torch.Tensor:
        task_embedding = for_task(self.task_embeddings, self.task_state)
        return getattr(self, stack)(h, task_embedding, layer, kind)


def apply_hyperformer(model: VLModel, cfg: HyperformerConfig, tasks: list[str]) -> list[str]:
    """Add the hypernetworks as `model.hyperformer` and hook every adapter site; return the
    names of every parameter that trains."""
    problems = cfg.check() + bottleneck_problems(model.config.d_model, cfg.reduction_factor)
    collect_or_raise(problems + task_name_problems(list(tasks)))
    check_free(model)
    sites = find_sites(model)
    stacks = {stack: (1 + max(s.layer for s in found), list(dict.fromkeys(s.kind for s in found)))
              for stack in STACKS if (found := [s for s in sites if s.stack == stack])}  # (layers, kinds)
    modules = Hyperformer(list(tasks), stacks, model.config.d_model, cfg, model.task_state)
    if cfg.init == "reference":
        reference_reinit(modules, model)  # BART: Linears and layer embeddings N(0, 0.02); T5: as built
    attach(model, "hyperformer", modules, sites,
           lambda s: functools.partial(modules, stack=s.stack, layer=s.layer, kind=s.kind))
    return trainable_names(model, "hyperformer", cfg.train_layer_norms)


apply = apply_hyperformer
register_method("hyperformer", "task/layer embeddings and hypernetworks, LayerNorms, visual projection",
                config=HyperformerConfig, apply=apply_hyperformer, display="hyperformer",
                groups=group_under("hyperformer", "hyperformer"),
                every_parameter_each_step=lambda cfg: False)  # a step trains its own task's embedding only
