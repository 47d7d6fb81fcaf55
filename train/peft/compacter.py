"""Compacter / PHM adapters (Mahabadi et al. 2021): bottleneck adapters whose down and up
projections are parameterised hypercomplex multiplication (PHM) layers (reference
`--use_compacter`, `adapters/hypercomplex/layers.py`).

A PHMLinear(in -> out) with n "rules" computes y = x H + b with

    H = sum_i A_i ⊗ W_i        A_i: n x n (the rule),  W_i: in/n x out/n
                               (low_rank: W_i = left_i · right_i, in/n x rank times rank x out/n)

so it holds about in·out/n weights instead of in·out. Placement and sharing over tasks are
those of vl.train.peft.adapter (single, multiple). shared_rule: one set of A_i for every
PHM layer (all sites, down and up, all tasks), registered once as `compacter.phm_rule`.

The reference's scripts turn both Compacter ingredients off (`--shared_phm_rule False
--factorized_phm False`, n=2), which are this config's defaults: the paper's 2.70% (single)
and 7.05% (multiple, 4 tasks) on bart-base image.

Initialisation (`init`): W_i (or left_i, right_i) glorot-uniform with gain sqrt(2), rules
N(0, 0.01) and biases zero, as the reference (`--phm_init_range 0.01`, c_init normal);
  zero-up    (default) except the up layer's W_i (its right_i when low_rank), which start
             at zero, so the model starts as the frozen one
  normal     none zeroed
  reference  the same as normal on BART and T5: the reference's BART init_weights
             re-initialised nn.Linear and nn.Embedding only, and a PHM layer is neither
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vl.shared.config import literal_problems
from vl.shared.errors import VLError, collect_or_raise
from vl.train.model import VLModel
from vl.train.peft.adapter import BottleneckAdapter, adapterhub_name, bottleneck_problems
from vl.train.peft import reference_reinit, task_name_problems
from vl.train.peft.registry import group_under, register_method
from vl.train.peft.sites import (ADAPTERHUB_PLACEMENT, attach, check_free, find_sites, per_site, trainable_names,
                                 write_adapterhub)



@dataclass
class CompacterConfig:
    n: int = 2  # number of rules / Kronecker factors; divides d_model and the bottleneck
    shared_rule: bool = False  # one set of A_i for all PHM layers
    low_rank: bool = False  # W_i = left_i · right_i of rank `rank` (LPHM)
    rank: int = 1
    reduction_factor: int = 8
    sharing: Literal["single", "multiple"] = "single"
    init: Literal["zero-up", "normal", "reference"] = "zero-up"
    train_layer_norms: bool = True

    def check(self) -> list[str]:
        return literal_problems(self) + [f"compacter {name} must be >= 1 (got {getattr(self, name)})"
                for name in ("n", "rank", "reduction_factor") if getattr(self, name) < 1]


def _glorot(t: torch.Tensor) -> None:
    """Glorot-uniform (gain sqrt 2) on each (rows, cols) matrix of a (n, rows, cols) stack."""
    for matrix in t:
        nn.init.xavier_uniform_(matrix, gain=math.sqrt(2))


class PHMRule(nn.Module):
    """The rules A_1..A_n, (n, n, n): a module so that PHM layers can share one."""

    def __init__(self, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, n, n).normal_(std=0.01))


class PHMLinear(nn.Module):
    """y = x H + b, H = sum_i rule_i ⊗ W_i (in, out). Its own rule (`rule.weight`) unless
    given a shared PHMRule, which it keeps a plain reference to (registered by its owner)."""

    def __init__(self, in_features: int, out_features: int, n: int, low_rank: bool = False, rank: int = 1,
                 zero: bool = False, shared_rule: PHMRule | None = None):
        super().__init__()
        self.in_features, self.out_features, self.n, self.low_rank = in_features, out_features, n, low_rank
        p, q = in_features // n, out_features // n
        self.rule = PHMRule(n) if shared_rule is None else None
        self._shared_rule = (shared_rule,)  # a tuple: not registered here, so named once
        if low_rank:
            self.left = nn.Parameter(torch.empty(n, p, rank))
            self.right = nn.Parameter(torch.empty(n, rank, q))
            _glorot(self.left.data)
            _glorot(self.right.data)
            if zero:
                nn.init.zeros_(self.right)
        else:
            self.W = nn.Parameter(torch.empty(n, p, q))
            _glorot(self.W.data)
            if zero:
                nn.init.zeros_(self.W)
        self.bias = nn.Parameter(torch.zeros(out_features))

    def rules(self) -> torch.Tensor:  # (n, n, n)
        return (self.rule if self.rule is not None else self._shared_rule[0]).weight

    def weight(self) -> torch.Tensor:
        """H, (in, out)."""
        W = self.left @ self.right if self.low_rank else self.W  # (n, in/n, out/n)
        # kron(A_i, W_i)[a*p + c, b*q + d] = A_i[a, b] W_i[c, d]
        return torch.einsum("iab,icd->acbd", self.rules(), W).reshape(self.in_features, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        # F.linear, not x @ H + b: under autocast it casts the bias too, so the output keeps the autocast dtype
        return F.linear(x, self.weight().t(), self.bias)


def apply_compacter(model: VLModel, cfg: CompacterConfig, tasks: list[str]) -> list[str]:
    """Add PHM adapters at every site as `model.compacter`
    (`compacter.<encoder|decoder>.<layer>.<kind>.<down|up>[.<task>].{W|left,right,rule.weight,bias}`,
    plus `compacter.phm_rule.weight` when shared_rule); return the names of every parameter that trains."""
    d = model.config.d_model
    problems = cfg.check() + bottleneck_problems(d, cfg.reduction_factor)
    if cfg.n >= 1 and cfg.reduction_factor >= 1 and not problems:
        bottleneck = d // cfg.reduction_factor
        problems += [f"compacter n={cfg.n} must divide d_model {d} and the bottleneck {bottleneck} "
                     f"(d_model / reduction_factor): choose another n or reduction_factor"
                     ] if d % cfg.n or bottleneck % cfg.n else []
    if cfg.sharing == "multiple":
        problems += task_name_problems(list(tasks))
    collect_or_raise(problems)
    check_free(model)
    bottleneck = d // cfg.reduction_factor
    per_task = list(tasks) if cfg.sharing == "multiple" else None
    shared = PHMRule(cfg.n) if cfg.shared_rule else None

    def phm(d_in: int, d_out: int, zero: bool = False) -> PHMLinear:
        return PHMLinear(d_in, d_out, cfg.n, cfg.low_rank, cfg.rank, zero=zero, shared_rule=shared)

    sites = find_sites(model)
    modules = per_site(sites, lambda s: BottleneckAdapter(
        lambda: phm(d, bottleneck), lambda: phm(bottleneck, d, zero=cfg.init == "zero-up"),
        "gelu_new", model.task_state, per_task, per_task))
    if shared is not None:
        modules["phm_rule"] = shared
    if cfg.init == "reference":
        reference_reinit(modules, model)  # touches no PHM layer; stated so that a Linear added here would follow
    attach(model, "compacter", modules, sites, lambda s: modules[s.stack][s.layer][s.kind])
    return trainable_names(model, "compacter", cfg.train_layer_norms)


def export_adapterhub(model: VLModel, cfg: CompacterConfig, out: Path, task: str | None = None) -> list[str]:
    """Write the single Compacter as an AdapterHub Compacter (CompacterConfig's PHM layers with
    phm_dim n, one rule per layer, full W_i: the same H = sum_i A_i ⊗ W_i, y = x H + b), placed
    as vl's adapters (vl.train.peft.sites); returns the vl names written. A shared rule or
    low-rank W_i is stored otherwise by AdapterHub and is refused, as one Compacter per task."""
    why = [f"sharing={cfg.sharing} keeps one per task"] if cfg.sharing != "single" else []
    why += ["shared_rule=true keeps one rule for all layers"] if cfg.shared_rule else []
    why += ["low_rank=true factorises W"] if cfg.low_rank else []
    if why:
        raise VLError(f"this Compacter ({'; '.join(why)}) has no exact AdapterHub form: vl writes Compacters with "
                      "sharing=single, shared_rule=false and low_rank=false")
    if task is not None:
        raise VLError("this run has one Compacter shared by all tasks; give no --task")
    config = dict(ADAPTERHUB_PLACEMENT, reduction_factor=cfg.reduction_factor, non_linearity="gelu_new",
                  phm_layer=True, phm_dim=cfg.n, shared_phm_rule=False, factorized_phm_W=False, shared_W_phm=False,
                  factorized_phm_rule=False, phm_rank=cfg.rank, phm_bias=True, learn_phm=True, phm_c_init="normal",
                  phm_init_range=0.01, hypercomplex_nonlinearity="glorot-uniform")
    return write_adapterhub(model, "compacter", out, config,
                            lambda name: adapterhub_name(name, {"rule.weight": "phm_rule", "bias": "b"}))


apply = apply_compacter
register_method("compacter", "PHM adapters, LayerNorms, visual projection", config=CompacterConfig,
                apply=apply_compacter, display=("compacter", "compacters"),
                groups=group_under("compacter", "compacter", per_site=True), exports={"adapters": export_adapterhub})
