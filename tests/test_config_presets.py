"""The paper presets resolve to exactly the settings they had before they shared a base:
tests/data/paper_presets_resolved.json is each preset's resolved config, dumped from the
flat presets (one file each) before they were split into `_base.yaml` + the method's lines
(the pre-training presets: as they were written). The fine-tuning presets that start from
the pre-training (image/from_pretrain/) are their method's preset plus init_from."""
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


FROM_PRETRAIN = "image/from_pretrain/"


def test_every_preset_has_a_fixture():
    assert [p for p in preset_names() if not p.startswith(FROM_PRETRAIN)] == sorted(RESOLVED)


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


@pytest.mark.parametrize("backbone, batch", [("vl_bart", 150), ("vl_t5", 80)])
def test_pretrain_presets_follow_vl_t5s_scripts(backbone, batch):
    """COCOVG_pretrain_VLBart.sh / _VLT5.sh: 30 epochs, lr 1e-4, warmup 0.05, clip 1.0, fp16, all
    weights; VL-T5's tasks without the region-based ones; the image presets' visual inputs."""
    cfg = load_config(TrainConfig, PRESETS / f"pretrain/{backbone}.yaml")
    assert (cfg.epochs, cfg.optim.lr, cfg.optim.warmup_ratio, cfg.optim.grad_clip, cfg.precision, cfg.method) == \
        (30, 1e-4, 0.05, 1.0, "fp16", "full")
    assert [(t.name, t.batch_size) for t in cfg.tasks] == [("vl_lm", batch), ("itm", batch), ("vqa", batch),
                                                           ("gqa", batch)]
    assert cfg.backbone == {"vl_bart": "bart-base", "vl_t5": "t5-base"}[backbone]
    image = load_config(TrainConfig, PRESETS / "image/single_adapter.yaml")
    for key in ("visual_inputs", "feat_dim", "extra_tokens", "dropout", "init"):
        assert getattr(cfg, key) == getattr(image, key), key
    assert cfg.data.visual_pool == image.data.visual_pool


@pytest.mark.parametrize("preset", [p for p in preset_names() if p.startswith(FROM_PRETRAIN)])
def test_from_pretrain_presets_are_their_method_started_from_the_pretraining(preset):
    method = preset.removeprefix(FROM_PRETRAIN)
    cfg = config_to_dict(load_config(TrainConfig, PRESETS / f"{preset}.yaml"))
    plain = config_to_dict(load_config(TrainConfig, PRESETS / f"image/{method}.yaml"))
    assert str(cfg.pop("init_from")) == "runs/paper-pretrain-vl-bart" and plain.pop("init_from") is None
    assert str(cfg.pop("run_dir")) == f"runs/paper-image-from-pretrain-{method.replace('_', '-')}"
    plain.pop("run_dir")
    assert cfg == plain


def test_the_paper_comparison_dry_runs_from_the_pretraining_run(tmp_path):
    """The pre-training preset builds; a fine-tuning preset started from its run takes its backbone,
    tokenizer and extra tokens without a clash and trains the paper's share."""
    from vl.shared.config import save_config
    from vl.train.build import dry_run

    pretrain = load_config(TrainConfig, PRESETS / "pretrain/vl_bart.yaml")
    assert "trainable 141,156,864 of 141,156,864 parameters (100.00%)" in dry_run(pretrain)
    run = tmp_path / "paper-pretrain-vl-bart"
    run.mkdir()
    save_config(pretrain, run / "config.json")  # what `vl train` saves in the run
    cfg = load_config(TrainConfig, PRESETS / f"{FROM_PRETRAIN}single_adapter.yaml", [f"init_from={run}"])
    table = dry_run(cfg)
    assert table == dry_run(load_config(TrainConfig, PRESETS / "image/single_adapter.yaml"))
    assert "(4.18%)" in table
