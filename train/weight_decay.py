"""Which trainable parameters AdamW decays (`optim.decay`), by what each parameter is.

    standard   (default) the `weight` of every nn.Linear and nn.Embedding; never biases,
               norms (LayerNorm, T5LayerNorm) or bare tensors (PHM factors and rules,
               Hyperformer task embeddings)
    reference  what the reference decayed: every trainable parameter except the biases,
               with the exceptions its parameter names made (below)

The reference split parameters by name (`trainer_base.py` L418-420, L474-483): no decay
for a name containing "bias" or "LayerNorm.weight". BART's and T5's norms are called
`*layer_norm` and `layernorm_embedding`, so the second entry matched none of them, and in
effect it decayed LayerNorm weights, PHM factors, task embeddings, prompt embeddings and
LoRA matrices alike. `reference` says the same by module type and attribute (never by
searching our names, which differ from its), including where its names made exceptions:

- a PHM layer's bias was called `b` there (`adapters/hypercomplex/layers.py`): decayed;
- the Hyperformer's bias generators (`*_sampler_hyper_net.bias_generator`,
  `adapters/adapter_hypernetwork.py`): not decayed, weights included;
- the Hyperformer hypernet's LayerNorm, an attribute called `LayerNorm` there: not
  decayed, the one norm the "LayerNorm.weight" entry matched;
- T5's relative position bias table (`relative_attention_bias.weight`): not decayed.

tests/test_weight_decay.py checks that `reference` selects exactly what the reference's
name rule selects, over our parameter names mapped to its.
"""
from __future__ import annotations

import typing
from typing import Literal

from torch import nn
from transformers.models.t5.modeling_t5 import T5Attention

from vl.train.peft.compacter import PHMLinear
from vl.train.peft.hyperformer import AdapterGenerator, StackHyperNet

DecayRule = Literal["standard", "reference"]
DECAY_RULES = typing.get_args(DecayRule)
DECAYED_MODULES = (nn.Linear, nn.Embedding)  # standard: their `weight` decays, nothing else


def _reference_not_decayed(model: nn.Module) -> set[int]:
    """ids of the parameters the reference's name rule kept from decay (module docstring)."""
    kept: set[int] = set()
    for module in model.modules():
        if not isinstance(module, PHMLinear):  # its bias was `b`: decayed
            kept |= {id(p) for attr, p in module.named_parameters(recurse=False) if attr == "bias"}
        if isinstance(module, AdapterGenerator):  # the bias generators, weights and biases
            kept |= {id(p) for p in (*module.down_bias.parameters(), *module.up_bias.parameters())}
        if isinstance(module, StackHyperNet):  # its closing LayerNorm(projected_dim)
            kept |= {id(p) for p in module.task_hypernet[-1].parameters()}
        if isinstance(module, T5Attention) and module.has_relative_attention_bias:
            kept.add(id(module.relative_attention_bias.weight))
    return kept


def decay_groups(model: nn.Module, rule: DecayRule) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decayed, not decayed): the trainable parameters of `model`, each once (a tied weight
    is listed once, where it first appears), in `model.modules()` order."""
    assert rule in DECAY_RULES, rule  # the config loader names the setting
    kept = _reference_not_decayed(model) if rule == "reference" else set()
    decay, plain, seen = [], [], set()
    for module in model.modules():
        for attr, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if rule == "reference":
                decayed = id(p) not in kept
            else:
                decayed = isinstance(module, DECAYED_MODULES) and attr == "weight"
            (decay if decayed else plain).append(p)
    return decay, plain
