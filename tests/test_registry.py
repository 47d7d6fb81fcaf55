"""vl.shared.registry: the one shape of the task, converter, metric and method registries."""
from __future__ import annotations

import pytest

from vl.data_manifests.registry import CONVERTERS, get_converter
from vl.evaluate.metrics import METRICS, score
from vl.shared.errors import VLError
from vl.shared.registry import Registry
from vl.train.tasks import TASKS, get_task


def test_entries_in_registration_order_a_name_once_and_a_miss_names_the_choices():
    reg: Registry[int] = Registry("widget")
    assert reg.add("b", 2) == 2 and reg.add("a", 1) == 1
    assert list(reg) == ["b", "a"] and reg.lookup("a") == 1
    with pytest.raises(AssertionError, match="widget 'a' is registered twice"):
        reg.add("a", 3)
    with pytest.raises(VLError, match="unknown widget 'c'; choose one of: b, a\nrun `vl list widgets`"):
        reg.lookup("c", hint="run `vl list widgets`")
    alphabetical: Registry[int] = Registry("widget", sort=True)
    alphabetical.add("b", 2)
    alphabetical.add("a", 1)
    with pytest.raises(VLError, match="choose one of: a, b$"):
        alphabetical.lookup("c")


def test_every_plug_in_kind_is_a_registry():
    for registry, kind in ((TASKS, "task"), (CONVERTERS, "dataset"), (METRICS, "metric")):
        assert isinstance(registry, Registry) and registry.kind == kind
    with pytest.raises(VLError, match="unknown task 'vqa3'; choose one of: caption, gqa"):
        get_task("vqa3")
    with pytest.raises(VLError, match="unknown dataset 'vqa3'; choose one of: coco-caption, gqa"):
        get_converter("vqa3")
    with pytest.raises(VLError, match="unknown metric 'bleu'; choose one of: vqa_accuracy, gqa_accuracy"):
        score("bleu", {}, [])
