"""The paper presets resolve to exactly the settings they had before they shared a base:
tests/data/paper_presets_resolved.json is each preset's resolved config, dumped from the
flat presets (one file each) before they were split into `_base.yaml` + the method's lines."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from vl.shared.config import config_to_dict, load_config
from vl.shared.errors import VLError
from vl.train.config import TrainConfig
from vl.train.data import TaskOptions

PRESETS = Path(__file__).resolve().parents[1] / "configs" / "paper"
FIXTURE = Path(__file__).resolve().parent / "data" / "paper_presets_resolved.json"
RESOLVED = json.loads(FIXTURE.read_text(encoding="utf-8"))
TASK_DEFAULTS = json.loads(json.dumps(config_to_dict(TaskOptions())))


def preset_names() -> list[str]:
    """The runnable presets: a `_`-named file is a base that presets build on, not a preset."""
    return sorted(p.relative_to(PRESETS).with_suffix("").as_posix() for p in PRESETS.rglob("*.yaml")
                  if not p.name.startswith("_"))


def test_every_preset_has_a_fixture():
    assert preset_names() == sorted(RESOLVED)


def without_added_settings(resolved: dict, before: dict, defaults: dict) -> dict:
    """`resolved` without the settings added since the fixture was dumped, each of which
    must have its default (a preset that said nothing about it)."""
    out = {}
    for key, value in resolved.items():
        if key not in before:
            assert value == defaults.get(key), f"{key}: {value!r} is not its default {defaults.get(key)!r}"
        elif isinstance(value, dict) and isinstance(before[key], dict):
            out[key] = without_added_settings(value, before[key], defaults.get(key) or {})
        elif key == "tasks" and isinstance(value, list) and isinstance(before[key], list) \
                and len(value) == len(before[key]):
            # a task's settings added since (TaskOptions' fields, e.g. vl_lm's masking) must be unset
            out[key] = [without_added_settings(v, b, TASK_DEFAULTS) for v, b in zip(value, before[key])]
        else:
            out[key] = value
    return out


@pytest.mark.parametrize("preset", sorted(RESOLVED))
def test_preset_resolves_as_before(preset):
    cfg = load_config(TrainConfig, PRESETS / f"{preset}.yaml")
    resolved = json.loads(json.dumps(config_to_dict(cfg)))
    defaults = json.loads(json.dumps(config_to_dict(TrainConfig())))
    assert without_added_settings(resolved, RESOLVED[preset], defaults) == RESOLVED[preset]


@pytest.mark.parametrize("override, allowed", [
    ("adapter.sharing=shared", "'single', 'multiple', 'half-shared'"),
    ("adapter.activation=gelu2", "'gelu_new', 'gelu', 'gelu_fast', 'gelu_pytorch_tanh', 'quick_gelu', 'relu', 'silu', "
                                 "'swish', 'tanh'"),
    ("lora.sharing=half-shared", "'single', 'multiple'"),
    ("prompt.init=zero-up", "'normal', 'reference'"),
    ("optim.decay=paper", "'standard', 'reference'"),
    ("visual_inputs=flat", "'packed', 'reference'"),
    ("visual_boxes=none", "'grid', 'zero' or null"),
    ("data.video_inputs=whole", "'span', 'reference'"),
    ("sampling=uniform", "'proportional', 'temperature'"),
    ("precision=fp8", "'fp32', 'bf16', 'fp16'"),
    ("eval_checkpoint=first", "'best', 'last'"),
])
def test_allowed_values_are_checked_once_from_the_literal_type(override, allowed):
    """One message for every setting with a fixed set of values: the setting, what it got, the choices."""
    key, value = override.split("=")
    with pytest.raises(VLError) as e:
        load_config(TrainConfig, PRESETS / "image/single_adapter.yaml", [override])
    (problem,) = e.value.problems
    assert problem.startswith(f"--set {override}: {key}: expected one of {allowed}, got '{value}' (str)"), problem


def test_task_literal_settings_name_the_file_line_and_task(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("base: " + str(PRESETS / "image/single_adapter.yaml") + "\n"
                    "tasks:\n  - {name: vqa, train_manifest: a.jsonl, store: s.h5,\n     truncate: sub, decision: vote}\n")
    with pytest.raises(VLError) as e:
        load_config(TrainConfig, path)
    assert {f"{path}:4: tasks[0].decision: expected one of 'generate', 'rank' or null, got 'vote' (str)",
            f"{path}:4: tasks[0].truncate: expected one of 'subtitles', 'end' or null, got 'sub' (str); "
            "did you mean 'subtitles'?"} <= set(e.value.problems)


def test_an_optional_literal_of_the_wrong_type_is_one_problem():
    from vl.shared.config import config_from_dict
    from vl.train.data import TaskOptions

    with pytest.raises(VLError) as e:
        config_from_dict(TaskOptions, {"truncate": True}, source="run.yaml")
    assert e.value.problems == ["run.yaml: truncate: expected one of 'subtitles', 'end' or null, got True (bool)"]
