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

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch
from safetensors.torch import save_file
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



# -- the AdapterHub (`adapters` library) format of the adapter family -----------------------
# VL-Adapter's sites are AdapterHub's bottleneck places: its "mh_adapter" after self-attention,
# "cross_adapter" after cross-attention and "output_adapter" after the feed-forward, each on the
# sub-layer's output after its dropout and before the residual (original_ln_before=False,
# residual_before_ln=True, original_ln_after=True), which in eval mode is ours, before dropout.

ADAPTERHUB_NAME = "vl"  # the adapter's name inside the exported weights (`load_adapter(load_as=...)` renames it)
ADAPTERHUB_WEIGHTS = "adapter.safetensors"  # `load_adapter(..., use_safetensors=True)` reads this name
# the config fields that place and shape a bottleneck adapter as vl's sites do (adapters 1.x BnConfig)
ADAPTERHUB_PLACEMENT = dict(mh_adapter=True, cross_adapter=True, output_adapter=True, original_ln_before=False,
                            original_ln_after=True, residual_before_ln=True, adapter_residual_before_ln=False,
                            ln_before=False, ln_after=False, is_parallel=False, scaling=1.0, use_gating=False,
                            dropout=0.0, leave_out=[], inv_adapter=None, inv_adapter_reduction_factor=None,
                            init_weights="bert", init_weights_seed=None, stochastic_depth=0.0)
_BART_PLACES = {"self_attn": "attention_adapters", "cross_attn": "cross_attention_adapters", "ffn": "output_adapters"}


def adapterhub_prefix(model_type: str, stack: str, layer: int, kind: str) -> str:
    """The AdapterHub key prefix of the adapter at one site: `model.encoder.layers.0.attention_adapters.adapters.vl`
    (BART), `encoder.block.0.layer.0.adapters.vl` (T5: the adapter of a sub-layer sits in it)."""
    if model_type == "bart":
        return f"model.{stack}.layers.{layer}.{_BART_PLACES[kind]}.adapters.{ADAPTERHUB_NAME}"
    sub = {"self_attn": 0, "cross_attn": 1, "ffn": 2 if stack == "decoder" else 1}[kind]
    return f"{stack}.block.{layer}.layer.{sub}.adapters.{ADAPTERHUB_NAME}"


def write_adapterhub(model: VLModel, attr: str, out: os.PathLike, config: dict,
                     rename: Callable[[str], str]) -> list[str]:
    """Write `model.<attr>` (one adapter per site, no per-task ones) as an AdapterHub adapter in the
    folder `out`: adapter_config.json (`config`: the BnConfig fields) and adapter.safetensors, each
    site's tensors under its adapterhub_prefix and `rename(name within the site's adapter)`. No
    prediction head: the backbone's own LM head is the model's. Returns the vl names written."""
    model_type, modules = model.config.model_type, getattr(model, attr)
    tensors, names = {}, []
    for stack in STACKS:
        for layer, kinds in enumerate(modules[stack]):
            for kind, adapter in kinds.items():
                for name, param in adapter.named_parameters():
                    tensors[f"{adapterhub_prefix(model_type, stack, layer, kind)}.{rename(name)}"] = param
                    names.append(f"{attr}.{stack}.{layer}.{kind}.{name}")
    full = {"config": dict(sorted(config.items())), "hidden_size": model.config.d_model,
            "model_class": type(model.backbone).__name__, "model_name": model.config._name_or_path or "",
            "model_type": model_type, "name": ADAPTERHUB_NAME, "version": "adapters.1.3.0"}
    Path(out).mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(Path(out) / ADAPTERHUB_WEIGHTS))
    (Path(out) / "adapter_config.json").write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
    return names
