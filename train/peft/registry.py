"""The registry of PEFT methods, filled by each method's own module (timm's `register_model`).

A method module ends with one call,

    register_method("adapter", summary="adapters, LayerNorms, visual projection", config=AdapterConfig,
                    apply=apply_adapters, display=("adapter", "adapters"), groups=parameter_group)

and everything that depends on the method reads it from `METHODS`: the config section of
TrainConfig (`adapter:`, named as the method), what `apply_method` adds and trains, the
rows of the dry-run table, whether DDP must look for unused parameters, whether a run can
start from it (`init_from`), and its name in `vl report`. Composites (`full`,
`adapter+prompt`, ...) are registered with `parts` or `base` instead of `apply`. No code
outside a method's own module branches on its name.

Every module of `train/peft/` is imported by vl.train.peft.methods (`method_modules`):
adding a method is one new module there plus its tests. This module imports no torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from vl.shared.registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from vl.train.model import VLModel


def _sharing(settings: Any) -> str:
    """A section's `sharing` ("single" when it has none), from its dataclass or its dict in config.json."""
    value = settings.get("sharing", "single") if isinstance(settings, Mapping) else getattr(settings, "sharing",
                                                                                          "single")
    return str(value)


def _single(settings: Any) -> bool:
    return _sharing(settings) == "single"


@dataclass(frozen=True)
class MethodSpec:
    name: str  # `method:` in the config; also the name of its config section when it has one
    summary: str  # what trains, for `vl list methods`
    # its config section's dataclass (None: no settings); TrainConfig gets a field of this name
    config: type | None = None
    # apply(model, its section's settings, tasks) -> names of every parameter that trains
    apply: Callable[["VLModel", Any, list[str]], list[str]] | None = None
    # composites: the registered methods applied in order, and the trainable names without added modules
    parts: tuple[str, ...] = ()
    base: Callable[["VLModel"], list[str]] | None = None
    # what `vl report` prints: a fixed name ("": the method's own), or (one, several) -> "single adapter",
    # "multiple adapters" by its section's `sharing`
    display: str | tuple[str, str] = ""
    # groups(module_name, module, attr) -> the dry-run table's group of that parameter, or None (not the method's)
    groups: Callable[[str, "nn.Module", str], str | None] | None = None
    # False where a step leaves some trainable parameters without a gradient (per-task modules of other tasks)
    every_parameter_each_step: Callable[[Any], bool] = _single
    # a run starting from one trained with this method (init_from): turn its model into a plain VLModel
    # (e.g. merge LoRA into the weights) and return True, or False when its modules cannot carry over;
    # None: they never can (a method that adds no modules carries over as it is)
    to_plain_model: Callable[["VLModel", Any], bool] | None = None
    # with to_plain_model: when it succeeds, in a few words for the message that refuses another
    # method's run ("a single LoRA merges into its base weights")
    plain_model_when: str = ""
    # formats other libraries read that `vl export --format` can write this method's modules in (every
    # method can also be written as a `bundle`, vl.train.export): {format: write(model, settings, out_dir,
    # task)}, which writes the method's weights and config files into the folder out_dir and returns the
    # names of the model's parameters it wrote, or raises a VLError when these settings cannot be written
    # exactly in that format (one module per task, say)
    exports: Mapping[str, Callable[["VLModel", Any, Path, str | None], list[str]]] = field(default_factory=dict)


METHODS: Registry[MethodSpec] = Registry("method")  # name -> spec, in registration order


def register_method(name: str, summary: str, **spec: Any) -> MethodSpec:
    """Add a method to METHODS (see MethodSpec for the fields); a name is registered once."""
    entry = MethodSpec(name, summary, **spec)
    assert bool(entry.apply) != bool(entry.parts or entry.base), f"{name}: give apply, or parts/base, not both"
    assert all(p in METHODS and METHODS[p].apply for p in entry.parts), f"{name}: register its parts first"
    return METHODS.add(name, entry)


def get_method(name: str) -> MethodSpec:
    return METHODS.lookup(name)


def applied(name: str) -> list[MethodSpec]:
    """The methods that add modules when `name` is applied: itself, or a composite's parts."""
    spec = get_method(name)
    return [METHODS[p] for p in spec.parts] if not spec.apply else [spec]


def export_formats(name: str) -> list[str]:
    """The formats `vl export` can write a run of method `name` in: its own (a composite's
    never: other libraries know one method at a time), then "bundle", which every method has."""
    spec = get_method(name)
    return [*spec.exports, "bundle"]


def sections() -> dict[str, type]:
    """{section name: config dataclass} of every registered method that has settings."""
    return {name: spec.config for name, spec in METHODS.items() if spec.config is not None}


def group_under(attr: str, label: str, per_site: bool = False) -> Callable[[str, Any, str], str | None]:
    """A `groups` function for a method whose modules are the model attribute `attr`: all
    its parameters in one group `label`, or with per_site one group per stack and site kind
    (`<attr>.<stack>.<layer>.<kind>...` -> "adapters: encoder ffn")."""
    def group(module_name: str, module: Any, param: str) -> str | None:
        parts = module_name.split(".")
        if parts[0] != attr:
            return None
        return f"{label}: {parts[1]} {parts[3]}" if per_site and len(parts) > 3 else label

    return group


def display_name(method: str, settings: Any) -> str:
    """The method as the paper names it ("single adapter", "multiple LoRA", "full fine-tuning",
    "single adapter + multiple prompts"); `settings` holds the sections (TrainConfig, or the
    dict of config.json). An unknown method keeps its own name."""
    if method not in METHODS:
        return method
    spec = METHODS[method]
    if isinstance(spec.display, str) and (spec.display or not spec.parts):
        return spec.display or method
    names = []
    for part in applied(method):
        if isinstance(part.display, str):
            names.append(part.display or part.name)
            continue
        one, several = part.display
        section = settings.get(part.name) if isinstance(settings, Mapping) else getattr(settings, part.name, None)
        sharing = _sharing(section) if section is not None else "single"
        names.append(f"single {one}" if sharing == "single" else f"{sharing} {several}")
    return " + ".join(names)
