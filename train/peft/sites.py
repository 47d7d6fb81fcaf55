"""Where the adapter family (adapter, hyperformer, compacter) acts, and the hooks that put it there.

A *site* is a sub-layer output of the unmodified `transformers` model, before dropout and
the residual (VL-Adapter's placement, reference `my_transformers/modeling_{bart,t5}.py`):

    BART  encoder layer: self_attn, fc2           decoder layer: self_attn, encoder_attn, fc2
    T5    encoder block: SelfAttention,           decoder block: SelfAttention, EncDecAttention,
                         DenseReluDense                          DenseReluDense

Each site gets a forward hook that replaces the module's output `h` (the first element
when the module returns a tuple, as attention modules do) by `adapter(h)`. The method's
modules live on the model as one attribute (`model.adapters`, `model.hyperformer` or
`model.compacter`, the `attr` given to `attach`), so `named_parameters`, `state_dict`,
`.to()` and DDP see them; the hook handles are kept on that module (which is how
`check_free` and `detach` find it), and `detach` removes both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import nn
from transformers.models.bart.modeling_bart import BartDecoderLayer, BartEncoderLayer
from transformers.models.t5.modeling_t5 import T5Block

from vl.shared.errors import VLError
from vl.train.model import VLModel
from vl.train.peft import layer_norm_names, visual_projection_names

STACKS = ("encoder", "decoder")
SITE_KINDS = ("self_attn", "cross_attn", "ffn")


@dataclass(frozen=True)
class Site:
    stack: Literal["encoder", "decoder"]
    layer: int  # index within its stack
    kind: Literal["self_attn", "cross_attn", "ffn"]
    module: nn.Module  # the transformers submodule whose output is hooked


def _layer_sites(layer: nn.Module) -> dict[str, nn.Module]:
    if isinstance(layer, BartEncoderLayer):
        return {"self_attn": layer.self_attn, "ffn": layer.fc2}
    if isinstance(layer, BartDecoderLayer):
        return {"self_attn": layer.self_attn, "cross_attn": layer.encoder_attn, "ffn": layer.fc2}
    if isinstance(layer, T5Block):  # layer = [T5LayerSelfAttention, (T5LayerCrossAttention,) T5LayerFF]
        sites = {"self_attn": layer.layer[0].SelfAttention, "ffn": layer.layer[-1].DenseReluDense}
        if layer.is_decoder:
            sites["cross_attn"] = layer.layer[1].EncDecAttention
        return sites
    raise VLError(f"adapters know T5 and BART layers; found a {type(layer).__name__}")


def find_sites(model: VLModel) -> list[Site]:
    """Every site of `model.backbone`: encoder layers first, then decoder layers; in a layer
    self_attn, cross_attn, ffn."""
    backbone = model.backbone
    sites = []
    for stack, part in (("encoder", backbone.get_encoder()), ("decoder", backbone.get_decoder())):
        layers = getattr(part, "layers", None) or getattr(part, "block", None)  # BART / T5
        for i, layer in enumerate(layers or []):
            found = _layer_sites(layer)
            sites += [Site(stack, i, kind, found[kind]) for kind in SITE_KINDS if kind in found]
    if not sites:
        raise VLError(f"no adapter sites found in the {type(backbone).__name__} backbone (no encoder/decoder layers)")
    return sites


def _attached(model: VLModel) -> list[str]:
    """The model attributes that `attach` registered: the adapter family's modules."""
    return [name for name, module in model.named_children() if hasattr(module, "hook_handles")]


def check_free(model: VLModel) -> None:
    """Refuse a second adapter-family method on the same model: one at a time, as in the
    reference (trainer_base.py L130-132); two would put two adapters on each site."""
    taken = _attached(model)
    if taken:
        raise VLError(f"this model already has `{taken[0]}` modules; apply one of adapter, hyperformer, "
                      "compacter per model (or `detach` it first)")


def per_site(sites: list[Site], make: Callable[[Site], nn.Module]) -> nn.ModuleDict:
    """`make(site)` for every site, laid out as {stack: ModuleList[ModuleDict{kind: module}]}, so
    parameter names read `<attr>.encoder.0.self_attn.down.weight`."""
    out = nn.ModuleDict()
    for stack in STACKS:
        layers = sorted({s.layer for s in sites if s.stack == stack})
        out[stack] = nn.ModuleList(nn.ModuleDict() for _ in layers)
    for s in sites:
        out[s.stack][s.layer][s.kind] = make(s)
    return out


class OutputHook:
    """A forward hook that passes a module's output (its first element if a tuple) through `fn`.

    A callable object rather than a closure, so `copy.deepcopy(model)` copies `fn` with the
    model (the modules it calls are found in the deepcopy memo) instead of sharing it."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        self.fn = fn

    def __call__(self, module: nn.Module, args: tuple, output):
        if isinstance(output, tuple):
            return (self.fn(output[0]), *output[1:])
        return self.fn(output)


def attach(model: VLModel, attr: str, modules: nn.Module, sites: list[Site],
           fn_for: Callable[[Site], Callable[[torch.Tensor], torch.Tensor]]) -> None:
    """Register `modules` as `model.<attr>` and hook every site with `fn_for(site)`; the
    handles go to `modules.hook_handles`."""
    setattr(model, attr, modules)
    modules.hook_handles = [s.module.register_forward_hook(OutputHook(fn_for(s))) for s in sites]


def detach(model: VLModel) -> bool:
    """Remove the adapter-family method's hooks and modules from `model`; False if none was applied."""
    attached = _attached(model)  # one at most (check_free)
    for attr in attached:
        for handle in getattr(model, attr).hook_handles:
            handle.remove()
        delattr(model, attr)
    return bool(attached)


def trainable_names(model: VLModel, attr: str, train_layer_norms: bool) -> list[str]:
    """The method's own parameters (`model.<attr>`), the visual projection, and the LayerNorms;
    each name once, in that order."""
    names = [f"{attr}.{n}" for n, _ in getattr(model, attr).named_parameters()]
    names += visual_projection_names(model)
    if train_layer_norms:
        names += layer_norm_names(model)
    return list(dict.fromkeys(names))

