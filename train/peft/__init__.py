"""Parameter-efficient methods: what trains, and the modules some of them add.

One module per method (`adapter.py`, `hyperformer.py`, `compacter.py`, `lora.py`,
`prompt.py`), each with a config dataclass and one function

    apply(model: VLModel, cfg: <its config>, tasks: list[str]) -> list[str]

that adds its modules to `model` (from outside: hooks and wrappers around the unmodified
`transformers` layers, never a copy of their code) and returns the names (as in
`model.named_parameters()`) of every parameter that trains under the method: its own
modules plus what its freezing rule unfreezes (the visual projection, LayerNorms,
biases). The loop freezes everything, applies the method, then unfreezes exactly those
names. Per-task modules read the batch's task from `model.task_state.current()`.

Each module registers itself (vl.train.peft.registry: `register_method`), and
vl.train.peft.methods imports them all. The helpers below name the parameter groups that
freezing rules are made of, by module type (never by searching parameter names for
substrings); the methods that add no modules (full, visual-only, visual+ln) are
registered here, from those groups alone.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from transformers.models.t5.modeling_t5 import T5LayerNorm

from vl.shared.errors import VLError
from vl.train.model import TaskState, VLModel
from vl.train.peft.registry import register_method

LAYER_NORMS = (nn.LayerNorm, T5LayerNorm)


def visual_projection_names(model: nn.Module) -> list[str]:
    """The visual embedding (projection, its norm, image-order and position embeddings):
    trains under every method, as in the paper."""
    return [f"visual_embedding.{n}" for n, _ in model.visual_embedding.named_parameters()]


def layer_norm_names(model: nn.Module) -> list[str]:
    """Every parameter of every LayerNorm / T5LayerNorm in the model (backbone and visual
    embedding), weights and biases: what `--unfreeze_layer_norms` trained in the reference."""
    return [f"{m}.{p}" if m else p for m, module in model.named_modules() if isinstance(module, LAYER_NORMS)
            for p, _ in module.named_parameters(recurse=False)]


def bias_names(model: nn.Module) -> list[str]:
    """The `bias` of every Linear and LayerNorm of the backbone (BitFit's set; the reference's
    LoRA runs trained these too)."""
    return [f"{m}.bias" for m, module in model.named_modules()
            if isinstance(module, (nn.Linear, *LAYER_NORMS)) and getattr(module, "bias", None) is not None]


def all_parameter_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_parameters()]


def visual_and_layer_norm_names(model: nn.Module) -> list[str]:
    return list(dict.fromkeys(visual_projection_names(model) + layer_norm_names(model)))


# The methods that add no modules: the paper's baseline and its ablations. Registered before
# any method module is imported (this package's __init__ runs first), so they list first.
register_method("full", "every parameter", base=all_parameter_names, display="full fine-tuning")
register_method("visual-only", "the visual projection", base=visual_projection_names, display="visual-only")
register_method("visual+ln", "the visual projection and every LayerNorm", base=visual_and_layer_norm_names,
                display="visual + LayerNorms")


def linear(d_in: int, d_out: int, init: Literal["zero", "normal", "default"], std: float = 0.02) -> nn.Linear:
    """An nn.Linear for a method's added modules: `default` keeps PyTorch's own init (what the
    reference's adapters were built with); `normal` draws the weight from N(0, std) and
    `zero` zeroes it, both with a zero bias."""
    layer = nn.Linear(d_in, d_out)
    if init != "default":
        nn.init.zeros_(layer.bias)
        if init == "zero":
            nn.init.zeros_(layer.weight)
        else:
            nn.init.normal_(layer.weight, std=std)
    return layer


def reference_reinit(modules: nn.Module, model: VLModel) -> None:
    """What the reference did to a method's added modules once they were built (`init: reference`).

    Its VL-BART built them inside the model, whose `init_weights()` (transformers 4.2.1,
    HF BartPretrainedModel._init_weights, `my_transformers/modeling_bart.py` L747-756) then
    drew every nn.Linear weight and nn.Embedding from N(0, init_std = 0.02) and zeroed the
    Linear biases; `from_pretrained` overwrote only the backbone's keys. Nothing else was
    touched: LayerNorms, bare Parameters (Hyperformer's task embeddings) and PHM layers
    kept their own init. Its VL-T5's `_init_weights` (`modeling_t5.py` L774-814) knows
    only T5's own module types, so there the added modules keep the init they were built
    with: a no-op here for T5."""
    if model.config.model_type != "bart":
        return
    std = getattr(model.config, "init_std", 0.02)
    with torch.no_grad():
        for module in modules.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.zero_()
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()


def task_name_problems(tasks: list[str]) -> list[str]:
    """Task names key ModuleDicts/ParameterDicts: non-empty, unique, no '.', no Module attribute."""
    problems = []
    if not tasks:
        problems.append("per-task modules need the list of tasks; got none")
    problems += [f"task {t!r} is listed twice" for t in sorted(set(tasks)) if tasks.count(t) > 1]
    probe = nn.ModuleDict()
    problems += [f"task name {t!r} cannot name a module (empty, contains '.', or a Module attribute): rename the task"
                 for t in dict.fromkeys(tasks) if not t or "." in t or hasattr(probe, t)]
    return problems


def for_task(choices: nn.ModuleDict | nn.ParameterDict, task_state: TaskState) -> nn.Module | nn.Parameter:
    """The entry of the batch's task; `task_state.current()` raises when the call gave no task."""
    task = task_state.current()
    if task not in choices:
        raise VLError(f"this model has no modules for task {task!r}; "
                      f"it was built for: {', '.join(sorted(choices.keys()))}")
    return choices[task]
