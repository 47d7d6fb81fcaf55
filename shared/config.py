"""Typed configs: dataclass defaults, overridden by YAML files, then by `--set a.b=v`.

Each component owns a dataclass of its settings; a run's config nests them. The
defaults in the code are the base; YAML files and `--set` overrides only change them:

    cfg = load_config(TrainConfig, "configs/vqa.yaml", ["optim.lr=3e-4", "data.tasks=[vqa, gqa]"])
    cfg = load_config(TrainConfig, ["base.yaml", "mine.yaml"])  # mine.yaml over base.yaml

Composition: a file may start with `base: other.yaml` (relative to the file's own folder;
the base may name its own base; a loop is an error naming the files). A file's keys merge
over its base's, and several files merge left to right, recursively: mappings key by key,
lists and other values replace. `load_config_with_sources` also says where each setting
came from (a file, a `--set`, or the default), which `dump_config(cfg, sources)` writes as
trailing comments. `base` is a reserved key at the top of a file.

Every value is checked against its field's type hint, and every problem (a YAML
syntax error, an unknown key, a wrong type, a missing required setting, a failed
`check()`) is collected into one `VLError` that names where it came from
(`file:line` or the `--set` text), the dotted key, what was given and what was
expected. Unknown keys get the closest known one and the list of valid keys.

Validation hooks: a config dataclass may define `check(self) -> list[str]`, returning
a message for each problem (e.g. "lr must be > 0 (got -1.0)"). It is called after
loading, inner configs first, and its messages are collected with the rest,
prefixed by the config's dotted path ("optim: lr must be > 0 (got -1.0)"). Keep it
cheap (no file system walks, no torch): it runs before anything expensive.
`__post_init__` may raise `VLError` too; its problems are collected the same way.

Supported field types: int, float (ints accepted), bool, str, pathlib.Path, None,
Optional / unions, Literal[...], list[X], tuple[X, ...], tuple[X, Y], dict[str, X],
Any, and nested dataclasses (directly, Optional, or inside lists and dicts).

Merging into the defaults: a mapping for a nested dataclass merges into it; any other
value (lists, dicts) replaces the default. `--set data.batch_size.vqa=64` sets one entry of a
dict-typed field. YAML follows the 1.2 core schema: `3e-4` is a float, only
`true`/`false` are bools (`no` stays a string), `010` is ten.

The resolved config is saved beside every output with `save_config` (sorted-key
JSON); `load_config(cls, that_json)` reads it back, since JSON is YAML.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import functools
import os
import re
import types
import typing
from pathlib import Path, PurePath
from typing import Any, Literal, Mapping, Sequence, TypeVar, Union

import yaml

from vl.shared.atomic import write_json_atomic
from vl.shared.errors import VLError, collect_or_raise

__all__ = ["ConfigSources", "config_from_dict", "config_to_dict", "dump_config", "literal_problems", "load_config",
           "load_config_with_sources", "save_config"]

T = TypeVar("T")
V = TypeVar("V")

NoneType = type(None)
_MISSING = object()  # a required setting nobody has set yet
_INVALID = object()  # a value that failed conversion (its problem is already recorded)
_UNPARSABLE = object()  # a config file that could not be read
_REJECTED = object()  # a required setting whose value was rejected (reported once, not as missing too)

# A problem before it is placed: (dotted key, message).
Problem = tuple[str, str]
# The dataclass that unknown keys are looked up from, and its dotted path ("" at the top).
_Root = tuple[type, str]


# --- YAML: the 1.2 core schema, so `3e-4` is a float and `no` a string ----------------------

class _YamlLoader(yaml.SafeLoader):
    pass


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node).replace("_", "")
    sign = -1 if text.startswith("-") else 1
    text = text.lstrip("+-")
    if text.startswith("0o"):
        return sign * int(text[2:], 8)
    if text.startswith("0x"):
        return sign * int(text[2:], 16)
    return sign * int(text, 10)


_YamlLoader.yaml_implicit_resolvers = {}
for _tag, _pattern, _first in [
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("int", r"^(?:[-+]?[0-9][0-9_]*|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    ("float", r"""^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", "-+0123456789."),
    ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("merge", r"^(?:<<)$", "<"),
]:
    _YamlLoader.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(_pattern, re.X), list(_first))
_YamlLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


class _YamlDumper(yaml.SafeDumper):
    """Block style, but short lists of scalars on one line; quotes any string that either
    our loader or a YAML 1.1 reader would take for something else ('3e-4', 'no')."""


_YamlDumper.yaml_implicit_resolvers = {
    first: list(yaml.SafeDumper.yaml_implicit_resolvers.get(first, [])) + list(rs)
    for first, rs in _YamlLoader.yaml_implicit_resolvers.items()
}
for _first, _rs in yaml.SafeDumper.yaml_implicit_resolvers.items():
    _YamlDumper.yaml_implicit_resolvers.setdefault(_first, list(_rs))


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(x, (list, dict)) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_YamlDumper.add_representer(list, _represent_list)


def _yaml_parse(text: str) -> Any:
    """One YAML value (a `--set` value), under the alias budget config files have."""
    loader = _YamlLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None and _alias_bomb(node):
            raise yaml.YAMLError(f"its aliases expand to more than {YAML_EXPANSION_LIMIT:,} values")
        return None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()


# --- the schema: what each dataclass accepts -------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Field:
    name: str
    hint: Any
    group: type | None  # the dataclass when the field is one (or Optional of one): a settings group
    nullable: bool


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (Union, types.UnionType)


def _is_dataclass_type(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


@functools.lru_cache(maxsize=None)
def _schema(cls: type) -> dict[str, _Field]:
    """The settable fields of `cls` in order, with resolved hints; TypeError for our bugs."""
    if not _is_dataclass_type(cls):
        raise TypeError(f"config classes must be dataclasses, not {cls!r}")
    try:
        hints = typing.get_type_hints(cls)
    except NameError as e:
        raise TypeError(f"cannot resolve the type hints of {cls.__qualname__}: {e} "
                        "(config dataclasses must live at module level)") from e
    out = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        hint = hints[f.name]
        _check_supported(hint, f"{cls.__qualname__}.{f.name}")
        group, nullable = None, False
        if _is_dataclass_type(hint):
            group = hint
        elif _is_union(hint):
            members = [a for a in typing.get_args(hint) if a is not NoneType]
            if len(members) == 1 and _is_dataclass_type(members[0]):
                group, nullable = members[0], True
        out[f.name] = _Field(f.name, hint, group, nullable)
    return out


def _check_supported(hint: Any, where: str) -> None:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in (Any, object, NoneType, bool, int, float, str, list, tuple, dict) or origin is Literal:
        return
    if isinstance(hint, type) and (issubclass(hint, PurePath) or dataclasses.is_dataclass(hint)):
        return
    if _is_union(hint) or origin in (list, tuple, collections.abc.Sequence):
        for a in args:
            if a is not Ellipsis:
                _check_supported(a, where)
        return
    if origin in (dict, collections.abc.Mapping):
        if args and args[0] is not str:
            raise TypeError(f"{where}: config dicts need str keys, not {args[0]!r}")
        if args:
            _check_supported(args[1], where)
        return
    raise TypeError(f"{where}: vl.shared.config does not support the type {hint!r}")


def _all_paths(cls: type, prefix: str = "") -> list[str]:
    out = []
    for name, f in _schema(cls).items():
        out.append(_join(prefix, name))
        if f.group is not None:
            out.extend(_all_paths(f.group, _join(prefix, name)))
    return out


# --- messages -------------------------------------------------------------------------------

def _join(prefix: str, name: Any) -> str:
    return f"{prefix}.{name}" if prefix else str(name)


def _type_name(hint: Any) -> str:
    if hint is NoneType or hint is None:
        return "null"
    if hint is Any or hint is object:
        return "any value"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if _is_union(hint):
        return " or ".join(_type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if _is_dataclass_type(hint):
        return f"a mapping of {hint.__name__} settings ({', '.join(_schema(hint))})"
    return getattr(hint, "__name__", str(hint))


def _got(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _accepts(hint: Any, kind: type) -> bool:
    members = typing.get_args(hint) if _is_union(hint) else (hint,)
    return any(m is kind for m in members)


def _expected(hint: Any, value: Any) -> str:
    msg = f"expected {_type_name(hint)}, got {_got(value)}"
    if isinstance(value, str) and (_accepts(hint, float) or _accepts(hint, int)) and _looks_numeric(value):
        msg += "; write the number without quotes"
    elif isinstance(value, (bool, int, float)) and _accepts(hint, str):
        msg += "; put it in quotes to make it a string"
    return msg


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


_NO_SUCH = "no such setting"


def _unknown_key(cls: type, prefix: str, key: str, root: _Root) -> str:
    names = list(_schema(cls))
    by_lower = {n.lower(): n for n in names}
    # the right name at the wrong level (`lr` for `optim.lr`) beats a near miss at this one
    elsewhere = [p for p in _all_paths(*root) if p.rsplit(".", 1)[-1] == key]
    close = difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=0.6)
    suggestion = elsewhere[0] if elsewhere else _join(prefix, by_lower[close[0]]) if close else None
    msg = _NO_SUCH
    if suggestion:
        msg += f"; did you mean {suggestion}?"
    return msg + f" ({prefix or 'the top level'} has: {', '.join(names)})"


def _place(where: str | None, key: str, msg: str) -> str:
    return ": ".join(part for part in (where, key, msg) if part)


# --- converting one value against a type hint -----------------------------------------------

def _not_allowed(hint: Any, allowed: tuple, value: Any) -> str:
    """The one message for a value outside a Literal's: the choices, and the nearest one."""
    choices = [str(a) for a in allowed]
    close = [c for c in choices if str(value) and c.startswith(str(value))]
    close = close or difflib.get_close_matches(str(value), choices, n=1)
    return _expected(hint, value) + (f"; did you mean {close[0]!r}?" if close else "")


def _convert(value: Any, hint: Any, path: str, problems: list[Problem]) -> Any:
    """`value` as `hint` wants it, or _INVALID after recording why not."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)

    def fail(msg: str | None = None) -> Any:
        problems.append((path, msg or _expected(hint, value)))
        return _INVALID

    if hint is Any or hint is object:
        return value
    if hint is NoneType:
        return None if value is None else fail()
    if origin is Literal:
        for a in args:
            if value == a and type(value) is type(a):
                return a
        return fail(_not_allowed(hint, args, value))
    if _is_union(hint):
        if value is None and NoneType in args:
            return None
        members = [a for a in args if a is not NoneType]
        if len(members) == 1 and typing.get_origin(members[0]) is Literal:  # `truncate: Literal[...] | None`
            tried = []
            v = _convert(value, members[0], path, tried)
            return fail(_not_allowed(hint, typing.get_args(members[0]), value)) if tried else v
        if len(members) == 1 and (typing.get_origin(members[0]) is not None or _is_dataclass_type(members[0])):
            return _convert(value, members[0], path, problems)  # its own, more precise messages
        for m in members:
            tried: list[Problem] = []
            v = _convert(value, m, path, tried)
            if not tried:
                return v
        return fail()
    if hint is bool:
        return value if isinstance(value, bool) else fail()
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():  # `max_steps: 1e5`
            return int(value)
        return fail()
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        return fail()
    if hint is str:
        return value if isinstance(value, str) else fail()
    if isinstance(hint, type) and issubclass(hint, PurePath):
        return hint(value) if isinstance(value, (str, PurePath)) else fail()
    if _is_dataclass_type(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            return fail()
        group = _defaults(hint)
        before = len(problems)
        _merge(group, value, path, problems, root=(hint, path))
        built = _build(group, path, problems, run_checks=False)
        return _INVALID if len(problems) > before else built
    if hint is list or hint is tuple or origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return fail()
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                return fail(f"expected {_type_name(hint)} ({len(args)} items), got {len(value)} items")
            item_hints = list(args)
        else:
            item_hints = [args[0] if args else Any] * len(value)
        items = [_convert(v, h, f"{path}[{i}]", problems) for i, (v, h) in enumerate(zip(value, item_hints))]
        if any(v is _INVALID for v in items):
            return _INVALID
        return tuple(items) if (hint is tuple or origin is tuple) else items
    if hint is dict or origin in (dict, collections.abc.Mapping):
        if not isinstance(value, Mapping):
            return fail()
        value_hint = args[1] if args else Any
        out, ok = {}, True
        for k, v in value.items():
            if not isinstance(k, str):
                problems.append((path, f"keys must be strings, got {_got(k)}; put it in quotes"))
                ok = False
                continue
            out[k] = _convert(v, value_hint, _join(path, k), problems)
            ok = ok and out[k] is not _INVALID
        return out if ok else _INVALID
    raise AssertionError(f"unsupported type {hint!r} slipped past _check_supported")


# --- the settings tree: a dataclass's values before it is built ----------------------------

@dataclasses.dataclass
class _Group:
    cls: type
    values: dict[str, Any]  # name -> value | _Group | None (an unset Optional group) | _MISSING | _REJECTED


def _defaults(cls: type) -> _Group:
    values = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        spec = _schema(cls)[f.name]
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            value = _MISSING
        if spec.group is not None:
            if value is _MISSING:  # a group without a default starts from its own defaults
                value = _defaults(spec.group)
            elif value is not None:
                value = _from_instance(value)
        values[f.name] = value
    return _Group(cls, values)


def _from_instance(obj: Any) -> _Group:
    values = {}
    for name, spec in _schema(type(obj)).items():
        value = getattr(obj, name)
        values[name] = _from_instance(value) if spec.group is not None and value is not None else value
    return _Group(type(obj), values)


def _merge(group: _Group, mapping: Mapping, prefix: str, problems: list[Problem], *, root: _Root) -> None:
    """Apply a mapping of settings (a YAML file, or part of one) to `group`."""
    schema = _schema(group.cls)
    for key, value in mapping.items():
        path = _join(prefix, key)
        if not isinstance(key, str):
            problems.append((path, f"setting names must be strings, got {_got(key)}"))
            continue
        spec = schema.get(key)
        if spec is None and "." in key and key.split(".")[0] in schema:
            head, _, tail = key.partition(".")
            problems.append((path, f"dotted keys are for --set; in a file nest them: `{head}: {{{tail}: ...}}`"))
        elif spec is None:
            problems.append((path, _unknown_key(group.cls, prefix, key, root)))
        elif spec.group is not None:
            _assign_group(group, spec, value, path, problems, root=root)
        else:
            _set_leaf(group, key, _convert(value, spec.hint, path, problems))


def _assign_group(group: _Group, spec: _Field, value: Any, path: str, problems: list[Problem], *, root: _Root) -> None:
    if isinstance(value, Mapping):
        child = group.values[spec.name]
        if not isinstance(child, _Group):
            child = group.values[spec.name] = _defaults(spec.group)
        _merge(child, value, path, problems, root=root)
    elif value is None and spec.nullable:
        group.values[spec.name] = None
    elif isinstance(value, spec.group):
        group.values[spec.name] = _from_instance(value)
    else:
        problems.append((path, _expected(spec.hint, value)))


def _set_dotted(group: _Group, keys: list[str], value: Any, raw: str | None, prefix: str,
                problems: list[Problem], *, root: _Root) -> None:
    """Apply one `--set` override: keys is the dotted key, split."""
    key, rest = keys[0], keys[1:]
    path = _join(prefix, key)
    spec = _schema(group.cls).get(key)
    if spec is None:
        problems.append((path, _unknown_key(group.cls, prefix, key, root)))
    elif spec.group is not None:
        if not rest:
            _assign_group(group, spec, value, path, problems, root=root)
            return
        child = group.values[key]
        if not isinstance(child, _Group):  # `--set lora.r=8` switches an unset Optional group on
            child = group.values[key] = _defaults(spec.group)
        _set_dotted(child, rest, value, raw, path, problems, root=root)
    elif not rest:
        _set_leaf(group, key, _convert_override(value, raw, spec.hint, path, problems))
    else:
        current = group.values[key]
        _set_leaf(group, key, _set_in_dict(current if isinstance(current, dict) else {}, spec.hint, rest, value, raw,
                                           path, problems))


def _set_leaf(group: _Group, name: str, value: Any) -> None:
    if value is not _INVALID:
        group.values[name] = value
    elif group.values[name] is _MISSING:
        group.values[name] = _REJECTED


def _set_in_dict(current: dict, hint: Any, keys: list[str], value: Any, raw: str | None, path: str,
                 problems: list[Problem]) -> Any:
    """`--set data.batch_size.vqa=64`: a copy of `current` with one entry set."""
    if _is_union(hint) and NoneType in typing.get_args(hint):
        members = [a for a in typing.get_args(hint) if a is not NoneType]
        hint = members[0] if len(members) == 1 else hint
    if not (hint is dict or typing.get_origin(hint) in (dict, collections.abc.Mapping)):
        problems.append((path, f"is a single setting ({_type_name(hint)}), not a group; "
                               f"use --set {path}=VALUE"))
        return _INVALID
    args = typing.get_args(hint)
    value_hint = args[1] if args else Any
    key, rest = keys[0], keys[1:]
    entry_path = _join(path, key)
    if rest:
        inner = current.get(key)
        inner = inner if isinstance(inner, dict) else {}
        entry = _set_in_dict(inner, value_hint, rest, value, raw, entry_path, problems)
    else:
        entry = _convert_override(value, raw, value_hint, entry_path, problems)
    if entry is _INVALID:
        return _INVALID
    return {**current, key: entry}


def _convert_override(value: Any, raw: str | None, hint: Any, path: str, problems: list[Problem]) -> Any:
    """Like _convert, but an override's text is taken as written when the setting wants a
    string and YAML read it as something else: `--set run_name=2024`, `--set note=a: b`."""
    attempt: list[Problem] = []
    converted = _convert(value, hint, path, attempt)
    if not attempt:
        return converted
    if raw is not None and not isinstance(value, str) and (value is not None or raw.strip() == ""):
        as_text: list[Problem] = []
        text_value = _convert(raw, hint, path, as_text)
        if not as_text:
            return text_value
    problems.extend(attempt)
    return _INVALID


def _build(group: _Group, path: str, problems: list[Problem], *, run_checks: bool) -> Any:
    """The dataclass instance, inner ones first, or _INVALID (problems recorded)."""
    kwargs, complete = {}, True
    for name, spec in _schema(group.cls).items():
        value, key = group.values[name], _join(path, name)
        if value is _MISSING:
            how = "" if "[" in key else f"; set it in the config file or with --set {key}=..."  # no --set a[0].b
            problems.append((key, f"required setting missing ({_type_name(spec.hint)}){how}"))
            complete = False
        elif value is _REJECTED:
            complete = False
        elif isinstance(value, _Group):
            value = _build(value, key, problems, run_checks=run_checks)
            complete = complete and value is not _INVALID
        elif run_checks:
            _check_inside(value, key, problems)
        kwargs[name] = value
    if not complete:
        return _INVALID
    try:
        obj = group.cls(**kwargs)
    except VLError as e:  # a __post_init__ that validates
        problems.extend((path, p) for p in e.problems)
        return _INVALID
    if run_checks:
        _run_check(obj, path, problems)
    return obj


def _check_inside(value: Any, path: str, problems: list[Problem]) -> None:
    """Run the check() hooks of dataclasses held in lists and dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for name in _schema(type(value)):
            _check_inside(getattr(value, name), _join(path, name), problems)
        _run_check(value, path, problems)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_inside(v, f"{path}[{i}]", problems)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_inside(v, _join(path, k), problems)


def _run_check(obj: Any, path: str, problems: list[Problem]) -> None:
    check = getattr(obj, "check", None)
    if not callable(check):
        return
    found = check()
    assert isinstance(found, (list, tuple)) and all(isinstance(p, str) for p in found), (
        f"{type(obj).__qualname__}.check() must return a list of messages, got {found!r}")
    problems.extend((path, p) for p in found)


# --- reading the YAML file ------------------------------------------------------------------

def _read_yaml(path: Path) -> tuple[Any, dict[str, int], list[str]]:
    """(data or _UNPARSABLE, line of each dotted key, problems)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return _UNPARSABLE, {}, [f"config file {path} not found"]
    except UnicodeDecodeError:
        return _UNPARSABLE, {}, [f"{path}: not a UTF-8 text file; a config is YAML"]
    except OSError as e:
        return _UNPARSABLE, {}, [f"cannot read config file {path}: {e.strerror or e}"]
    loader = _YamlLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None and _alias_bomb(node):
            return _UNPARSABLE, {}, [f"{path}: its YAML aliases (*name) expand to more than {YAML_EXPANSION_LIMIT:,} "
                                     "values, more than any config needs (an alias bomb?); write the settings out"]
        data = {} if node is None else loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        context = ""
        if e.context and e.problem:
            started = e.context_mark.line + 1 if e.context_mark else None
            context = f" ({e.context}" + (f" started on line {started})" if started else ")")
        return _UNPARSABLE, {}, [f"{where}: YAML syntax error: {e.problem or e.context}{context}"]
    except yaml.YAMLError as e:
        return _UNPARSABLE, {}, [f"{path}: YAML syntax error: {e}"]
    finally:
        loader.dispose()
    lines: dict[str, int] = {}
    problems: list[str] = []
    _node_lines(node, "", lines, problems, path)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        problems.append(f"{path}: expected a mapping of settings (`name: value` lines) at the top level, "
                        f"got a {type(data).__name__}")
        return _UNPARSABLE, lines, problems
    return data, lines, problems


# A config's values once its aliases are expanded: the largest preset has a few hundred; a
# "billion laughs" file of a few lines has 10^9 and exhausted memory.
YAML_EXPANSION_LIMIT = 100_000


def _alias_bomb(node: yaml.Node) -> bool:
    """Whether the document's aliases expand past YAML_EXPANSION_LIMIT values."""
    return _expanded_size(node, YAML_EXPANSION_LIMIT) > YAML_EXPANSION_LIMIT


def _expanded_size(node: yaml.Node, limit: int) -> int:
    """How many nodes the document has with every alias expanded (counting stops past `limit`).
    The composed graph shares an aliased node wherever it is used, so this walks it as
    the constructed values would repeat it."""
    count, stack = 0, [node]
    while stack and count <= limit:
        current = stack.pop()
        count += 1
        if isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)
        elif isinstance(current, yaml.MappingNode):
            for key, value in current.value:
                stack.extend((key, value))
    return count


def _node_lines(node: yaml.Node | None, path: str, lines: dict[str, int], problems: list[str], file: Path) -> None:
    """Record the line of each dotted key; report keys set twice (YAML keeps the last silently)."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key, line = _join(path, key_node.value), key_node.start_mark.line + 1
            if key in seen:
                problems.append(f"{file}:{line}: {key}: set twice in this file (first on line {seen[key]}); "
                                "delete one")
            seen[key] = lines[key] = line
            _node_lines(value_node, key, lines, problems, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, child in enumerate(node.value):
            lines[f"{path}[{i}]"] = child.start_mark.line + 1
            _node_lines(child, f"{path}[{i}]", lines, problems, file)


def _nearest(table: Mapping[str, V], path: str) -> V | None:
    """table's entry for the dotted `path`, else for the nearest mapping or list holding it."""
    while path not in table:
        shorter = re.sub(r"(\.[^.\[\]]*|\[\d+\])$", "", path)
        if shorter == path:
            return None
        path = shorter
    return table[path]


# --- the public face ------------------------------------------------------------------------

ConfigPaths = Union[str, Path, Sequence[Union[str, Path]], None]


def load_config(cls: type[T], path: ConfigPaths = None, overrides: Sequence[str] = ()) -> T:
    """`cls`'s defaults, then the YAML file at `path` (or several files, merged left to right;
    each over its `base:` chain), then each `a.b.c=value` override in order (later wins);
    raises one VLError listing every problem found."""
    return load_config_with_sources(cls, path, overrides)[0]


def load_config_with_sources(cls: type[T], path: ConfigPaths = None,
                             overrides: Sequence[str] = ()) -> tuple[T, ConfigSources]:
    """load_config, and where each setting came from (for `--print-config`)."""
    if isinstance(overrides, str):
        raise TypeError("overrides must be a list of 'a.b=value' strings, not one string")
    if BASE_KEY in _schema(cls):
        raise TypeError(f"{cls.__qualname__}.{BASE_KEY}: the name is reserved for a config file's base file")
    root = _defaults(cls)
    problems: list[str] = []
    origins: dict[str, _Origin] = {}
    paths = [] if path is None else [path] if isinstance(path, (str, PurePath)) else list(path)

    chains = [_read_with_bases(Path(p), problems) for p in paths]
    buildable = None not in chains  # not when a file could not be read: "missing" would be noise
    layers = [layer for chain in chains if chain for layer in chain]
    data: dict[str, Any] = {}
    for layer in layers:
        _overlay(data, layer.data, "", origins, layer)
    found: list[Problem] = []
    _merge(root, data, "", found, root=(cls, ""))
    for key, msg in found:
        origin = _nearest(origins, key)
        line = _nearest(origin.lines, key) if origin and origin.lines else None
        where = None if origin is None else f"{origin.source}:{line}" if line else origin.source
        problems.append(_place(where, key, msg))

    for text in overrides:
        found = []
        _apply_override(root, text, found, root_cls=cls, origins=origins)
        problems += [_place(f"--set {text}", key, msg) for key, msg in found]
    if not buildable:
        collect_or_raise(problems)  # the files' own problems; there is at least one
    return _build_or_raise(root, problems), ConfigSources(origins)


# --- composing files: `base:` chains, several files, sources -------------------------------

BASE_KEY = "base"  # a config file's `base: other.yaml`, relative to the file's own folder


@dataclasses.dataclass(frozen=True)
class _Layer:
    """One config file as read, without its `base:` key."""

    path: Path
    data: Mapping[str, Any]
    lines: dict[str, int]


@dataclasses.dataclass(frozen=True)
class _Origin:
    source: str  # a file, or "--set KEY=VALUE"
    lines: dict[str, int] | None  # that file's line of each dotted key; None for --set
    mapping: bool  # the value was a mapping: its keys are recorded on their own, the rest are not its


def _read_with_bases(path: Path, problems: list[str]) -> list[_Layer] | None:
    """The file at `path` after its chain of bases, the deepest base first; None after
    recording a problem when one of them cannot be read."""
    chain: list[_Layer] = []
    named_by: tuple[_Layer, Any] | None = None  # (the file naming `path` as its base, the name it wrote)
    while True:
        if any(path.resolve() == layer.path.resolve() for layer in chain):
            loop = " -> ".join(str(layer.path) for layer in chain) + f" -> {path}"
            problems.append(f"config files name each other as base in a loop: {loop}; "
                            f"remove the `base:` line of one of them")
            return None
        if named_by is not None and not path.is_file():
            child, name = named_by
            problems.append(f"{child.path}:{child.lines.get(BASE_KEY)}: base: config file {path} not found "
                            f"(`base: {name}` is relative to the folder of {child.path})")
            return None
        data, lines, found = _read_yaml(path)
        problems += found
        if data is _UNPARSABLE:
            return None
        data = dict(data)
        layer = _Layer(path, data, lines)
        chain.append(layer)
        if BASE_KEY not in data:
            return chain[::-1]
        name = data.pop(BASE_KEY)
        if not isinstance(name, str) or not name:
            problems.append(f"{path}:{lines.get(BASE_KEY)}: base: expected the file name of a config that this "
                            f"one builds on, got {_got(name)}")
            return None
        named_by = (layer, name)
        path = Path(os.path.normpath(path.parent / name))


def _overlay(into: dict[str, Any], data: Mapping[str, Any], prefix: str, origins: dict[str, _Origin],
             layer: _Layer) -> None:
    """Merge `data` over `into` (mappings key by key; lists and scalars replace) and record
    that each key it sets now comes from `layer`."""
    for key, value in data.items():
        path = _join(prefix, key)
        old = into.get(key)
        if not (isinstance(value, Mapping) and isinstance(old, Mapping)):
            _forget(origins, path)
            old = {}
        if isinstance(value, Mapping):
            into[key] = dict(old)
            _overlay(into[key], value, path, origins, layer)
        else:
            into[key] = value
        origins[path] = _Origin(str(layer.path), layer.lines, mapping=isinstance(value, Mapping))


def _record_override(origins: dict[str, _Origin], path: str, value: Any, source: str) -> None:
    """Note that `--set` gave `path` its value (a mapping: each key it names)."""
    if isinstance(value, Mapping):  # merged into a group, or replacing a dict whose old keys no longer show
        for key, inner in value.items():
            _record_override(origins, _join(path, key), inner, source)
    else:
        _forget(origins, path)
    origins[path] = _Origin(source, None, mapping=isinstance(value, Mapping))


def _forget(origins: dict[str, _Origin], path: str) -> None:
    for key in [k for k in origins if k.startswith((f"{path}.", f"{path}["))]:
        del origins[key]


@dataclasses.dataclass(frozen=True)
class ConfigSources:
    """Where each setting of a resolved config came from."""

    origins: Mapping[str, _Origin] = dataclasses.field(default_factory=dict)

    def of(self, key: str) -> str:
        """`from FILE`, `--set KEY=VALUE` or `default` for a dotted key (`optim.lr`, `tasks`)."""
        origin = _nearest(self.origins, key)
        if origin is None or (origin.mapping and key not in self.origins):
            return "default"
        return origin.source if origin.lines is None else f"from {origin.source}"

    def with_source(self, key: str, source: str) -> ConfigSources:
        """These sources, but `key` set by `source` (e.g. "from runs/pretrain (init_from)")."""
        return ConfigSources({**self.origins, key: _Origin(source, None, mapping=False)})


def _build_or_raise(root: _Group, problems: list[str]) -> Any:
    found: list[Problem] = []
    obj = _build(root, "", found, run_checks=True)
    problems += [_place(None, key, msg) for key, msg in found]
    collect_or_raise(problems)
    assert obj is not _INVALID, "a config failed to build without a problem recorded"
    return obj


def _apply_override(root: _Group, text: str, problems: list[Problem], *, root_cls: type,
                    origins: dict[str, _Origin] | None = None) -> None:
    key, sep, raw = text.partition("=")
    keys = key.strip().split(".")
    if not sep or not all(keys):
        example = next((p for p in _all_paths(root_cls) if "." in p), next(iter(_schema(root_cls)), "a.b"))
        problems.append(("", f"expected KEY=VALUE with a dotted KEY, e.g. --set {example}=..."))
        return
    try:
        value, unparsable = _yaml_parse(raw), None
    except yaml.YAMLError as e:  # still fine for a string setting: `--set note=a: b: c`
        value, unparsable = raw, getattr(e, "problem", None) or str(e).splitlines()[0]
    found: list[Problem] = []
    _set_dotted(root, keys, value, raw, "", found, root=(root_cls, ""))
    if unparsable and found:
        found = [p for p in found if p[1].startswith(_NO_SUCH)] or [
            (key.strip(), f"the value {raw!r} is not valid YAML ({unparsable}); quote it, e.g. {key.strip()}='...'")]
    problems += found
    if origins is not None and not found:
        _record_override(origins, ".".join(k.strip() for k in keys), value, f"--set {text}")


def config_from_dict(cls: type[T], data: Mapping[str, Any], *, source: str = "config") -> T:
    """`cls` from a plain mapping (e.g. a saved config.json already read), checked like a file."""
    found: list[Problem] = []
    root = _defaults(cls)
    _merge(root, data, "", found, root=(cls, ""))
    return _build_or_raise(root, [_place(source, key, msg) for key, msg in found])


def literal_problems(cfg: Any) -> list[str]:
    """A problem for each Literal-typed setting of the dataclass `cfg` whose value its type
    does not allow, in the loader's words. Loading checks these itself; a config's `check()`
    calls this so one built in code is held to the same choices."""
    found: list[Problem] = []
    for name, spec in _schema(type(cfg)).items():
        if _mentions_literal(spec.hint):
            _convert(getattr(cfg, name), spec.hint, name, found)
    return [_place(None, key, msg) for key, msg in found]


def _mentions_literal(hint: Any) -> bool:
    return typing.get_origin(hint) is Literal or (_is_union(hint) and any(map(_mentions_literal, typing.get_args(hint))))


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-able nested dict of `cfg`'s settings, in field order."""
    if not (dataclasses.is_dataclass(cfg) and not isinstance(cfg, type)):
        raise TypeError(f"config_to_dict needs a dataclass instance, got {cfg!r}")
    return _plain(cfg)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {name: _plain(getattr(value, name)) for name in _schema(type(value))}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, PurePath):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot write {value!r} ({type(value).__name__}) into a config file")


def dump_config(cfg: Any, sources: ConfigSources | None = None) -> str:
    """`cfg` as YAML, keys in field order: for printing the resolved config. With `sources`,
    each setting's line ends in a comment saying where it came from (`# from run.yaml`,
    `# --set optim.lr=3e-4`, `# default`); without the comments it is the same YAML."""
    if sources is None:
        return yaml.dump(config_to_dict(cfg), Dumper=_YamlDumper, sort_keys=False, allow_unicode=True,
                         default_flow_style=False)
    return "\n".join(_dump_with_sources(config_to_dict(cfg), sources, "")) + "\n"


def _yaml_dump(data: Any) -> str:
    """One setting as YAML, unwrapped, so its source comment can end its line."""
    return yaml.dump(data, Dumper=_YamlDumper, sort_keys=False, allow_unicode=True, default_flow_style=False,
                     width=float("inf"))


def _dump_with_sources(settings: dict[str, Any], sources: ConfigSources, prefix: str) -> list[str]:
    out = []
    for key, value in settings.items():
        path = _join(prefix, key)
        if isinstance(value, dict) and value:  # merged key by key, so each key has its own source
            out.append(_yaml_dump({key: {}}).rstrip("\n").removesuffix(" {}"))
            out += ["  " + line for line in _dump_with_sources(value, sources, path)]
            continue
        lines = _yaml_dump({key: value}).rstrip("\n").splitlines()
        # one comment for the whole value: after its key when it spans lines (a list of tasks), else after it
        at = 0 if len(lines) > 1 and isinstance(value, (list, dict)) else len(lines) - 1
        lines[at] += f"  # {sources.of(path)}"
        out += lines
    return out


def save_config(cfg: Any, path: str | Path) -> None:
    """Write `cfg` beside an output as sorted-key JSON, atomically; load_config reads it back."""
    write_json_atomic(path, config_to_dict(cfg))
