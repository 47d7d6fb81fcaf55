"""`vl list methods|tasks|converters|metrics`: one line per registered thing, read from
the registries themselves, and no torch for the registries that need none."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import run_vl


def registered(kind: str) -> list[str]:
    if kind == "methods":
        from vl.train.peft.methods import METHODS as table
    elif kind == "tasks":
        from vl.train.tasks import TASKS as table
    elif kind == "converters":
        from vl.data_manifests.registry import load_converters

        table = load_converters()
    else:
        from vl.evaluate.metrics import METRICS as table
    return list(table)


@pytest.mark.parametrize("kind", ["methods", "tasks", "converters", "metrics"])
def test_each_kind_prints_one_line_per_registered_name_with_a_description(kind):
    lines = run_vl(["list", kind]).stdout.splitlines()
    names = registered(kind)
    assert len(names) > 1 and [line.split()[0] for line in lines] == names  # registration order
    assert all(len(line.split(maxsplit=1)) == 2 for line in lines)  # a description after each name
    starts = {line.index(line.split(maxsplit=1)[1]) for line in lines}
    assert len(starts) == 1  # one column


def test_what_each_line_says():
    methods = run_vl(["list", "methods"]).stdout
    assert "adapter+prompt  adapters, prompts, LayerNorms, visual projection; vl export: bundle" in methods.splitlines()
    assert "lora            LoRA matrices, every bias, visual projection; vl export: peft, bundle" in methods.splitlines()
    tasks = run_vl(["list", "tasks"]).stdout.splitlines()
    assert tasks[0].split() == ["vqa", "image,", "scored", "by", "vqa_accuracy,", "prefix", "'vqa:'"]
    assert any(line.startswith("caption ") and line.endswith("tasks: caption, tvc, yc2c")
               for line in run_vl(["list", "metrics"]).stdout.splitlines())
    converters = run_vl(["list", "converters"]).stdout.splitlines()
    assert "nlvr2         nlvr2 (image): NLVR2 JSON Lines" in converters


def test_list_help_names_the_kinds_and_an_unknown_kind_is_a_usage_error():
    text = run_vl(["list", "--help"]).stdout
    assert all(kind in text for kind in ("methods", "tasks", "converters", "metrics"))
    assert "list" in run_vl(["--help"]).stdout
    bad = run_vl(["list", "presets"], expect=2)
    assert "No such command 'presets'" in bad.output


@pytest.mark.parametrize("kind", ["tasks", "converters", "metrics"])
def test_listing_needs_no_torch_except_for_methods(kind):
    code = ("import sys; from click.testing import CliRunner; from vl.shared.cli import cli; "
            f"result = CliRunner().invoke(cli, ['list', {kind!r}]); assert result.exit_code == 0, result.output; "
            "print(sorted(m for m in ('torch', 'h5py', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
