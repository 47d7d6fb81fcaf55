"""The paper presets resolve to exactly the settings they had before they shared a base:
tests/data/paper_presets_resolved.json is each preset's resolved config, dumped from the
flat presets (one file each) before they were split into `_base.yaml` + the method's lines."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from vl.shared.config import config_to_dict, load_config
from vl.train.config import TrainConfig

PRESETS = Path(__file__).resolve().parents[1] / "configs" / "paper"
FIXTURE = Path(__file__).resolve().parent / "data" / "paper_presets_resolved.json"
RESOLVED = json.loads(FIXTURE.read_text(encoding="utf-8"))


def preset_names() -> list[str]:
    """The runnable presets: a `_`-named file is a base that presets build on, not a preset."""
    return sorted(p.relative_to(PRESETS).with_suffix("").as_posix() for p in PRESETS.rglob("*.yaml")
                  if not p.name.startswith("_"))


def test_every_preset_has_a_fixture():
    assert preset_names() == sorted(RESOLVED)


@pytest.mark.parametrize("preset", sorted(RESOLVED))
def test_preset_resolves_as_before(preset):
    cfg = load_config(TrainConfig, PRESETS / f"{preset}.yaml")
    assert json.loads(json.dumps(config_to_dict(cfg))) == RESOLVED[preset]
