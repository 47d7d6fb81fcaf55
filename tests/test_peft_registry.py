"""The contract every registered PEFT method keeps (vl.train.peft.registry), walked over
the registry itself, so a new method is tested the day it registers: it builds on a tiny
T5 and a tiny BART with its default settings, the dry-run table shows what it trains, and
its trainable state survives the run directory's checkpoint round trip."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch

from conftest import run_vl, tiny_vl_model
from vl.shared.errors import VLError
from vl.train.build import set_trainable
from vl.train.config import TrainConfig
from vl.train.peft.methods import METHODS, budget_table, parameter_groups, uses_every_parameter_each_step
from vl.train.peft.registry import display_name, get_method, register_method, sections
from vl.train.run_dir import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FEAT = 12
TASKS = ["vqa", "gqa"]
LABELS = torch.tensor([[5, 6, 7], [8, 9, -100]])


def batch() -> dict:
    g = torch.Generator().manual_seed(0)
    text_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    vis_mask = torch.tensor([[True] * 4, [True, True, False, False]])
    return dict(input_ids=torch.randint(3, 128, (2, 5), generator=g) * text_mask, attention_mask=text_mask,
                visual_feats=torch.randn(2, 4, FEAT, generator=g) * vis_mask[..., None], visual_mask=vis_mask,
                labels=LABELS)


def built(method: str, backbone: str):
    """The tiny model with `method` applied by its defaults, as `vl train` does (freeze, apply, unfreeze)."""
    model = tiny_vl_model(backbone, FEAT).eval()  # eval: no dropout, outputs comparable
    torch.manual_seed(1)
    names = set_trainable(model, TrainConfig(method=method), TASKS)
    return model, names


def outputs(model) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {task: model(**batch(), task=task).logits for task in TASKS}


def test_the_registry_lists_the_papers_methods_in_order_and_a_miss_names_them():
    assert list(METHODS) == ["full", "visual-only", "visual+ln", "adapter", "hyperformer", "compacter", "lora",
                             "prompt", "adapter+prompt"]
    with pytest.raises(VLError, match=r"unknown method 'adaptr'; choose one of: full, visual-only, .*adapter\+prompt"):
        get_method("adaptr")
    with pytest.raises(AssertionError, match="registered twice"):
        register_method("lora", "again", apply=lambda model, cfg, tasks: [])


def test_the_order_holds_whichever_method_module_is_imported_first():
    code = ("import vl.train.peft.prompt, vl.train.peft.compacter; from vl.train.peft.methods import METHODS; "
            "from vl.train.config import TrainConfig; import dataclasses; "
            "print(list(METHODS)); print([f.name for f in dataclasses.fields(TrainConfig)])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == str(["full", "visual-only", "visual+ln", "adapter", "hyperformer", "compacter", "lora", "prompt",
                          "adapter+prompt"])
    assert "'adapter', 'hyperformer', 'compacter', 'lora', 'prompt'" in out[1]


def test_every_module_of_the_peft_folder_but_the_machinery_is_a_method_module(tmp_path):
    import vl.train.peft as peft
    from vl.train.peft.methods import method_modules

    assert method_modules(peft.__path__) == ["adapter", "hyperformer", "compacter", "lora", "prompt"]
    for name in ("zeta", "beta", "lora", "sites", "registry", "methods", "adapter"):
        (tmp_path / f"{name}.py").write_text("")
    (tmp_path / "notes.txt").write_text("")
    assert method_modules([str(tmp_path)]) == ["adapter", "lora", "beta", "zeta"]  # the paper's first, then by name


def test_train_config_has_one_section_per_method_with_settings():
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    assert list(sections()) == ["adapter", "hyperformer", "compacter", "lora", "prompt"]
    at = fields.index("method")
    assert fields[at + 1:at + 1 + len(sections())] == list(sections())  # right after `method`, as the YAML reads
    cfg = TrainConfig()
    assert all(isinstance(getattr(cfg, name), config) for name, config in sections().items())


@pytest.mark.parametrize("backbone", ["tiny-t5", "tiny-bart"])
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_builds_reports_its_groups_and_survives_save_and_restore(method, backbone, tmp_path):
    model, names = built(method, backbone)
    assert names and all(p.requires_grad == (n in names) for n, p in model.named_parameters())

    # the dry-run table: one row per group, and the method's share is > 0
    groups = parameter_groups(model)
    table = budget_table(model).splitlines()
    assert len(table) == len(groups) + 2  # header, a row per group, the total
    assert {line.rsplit(maxsplit=2)[0] for line in table[1:-1]} == set(groups)
    assert sum(t for t, _ in groups.values()) == sum(p.numel() for p in model.parameters() if p.requires_grad) > 0
    assert not table[-1].endswith("(0.00%)")

    # one AdamW step per task, then the run directory's checkpoint, loaded into a rebuilt model
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    for task in TASKS:
        optimizer.zero_grad(set_to_none=True)
        model(**batch(), task=task).loss.backward()
        # what DDP is told (find_unused_parameters) is what a step does
        every = all(p.grad is not None for p in params)
        assert every == uses_every_parameter_each_step(method, TrainConfig(method=method)), (method, task)
        optimizer.step()
    trained = outputs(model)
    save_checkpoint(tmp_path, "last", model, optimizer, extra={"epoch": 1})
    rebuilt, rebuilt_names = built(method, backbone)
    assert rebuilt_names == names
    assert any(not torch.equal(trained[t], logits) for t, logits in outputs(rebuilt).items())  # the step mattered
    assert load_checkpoint(tmp_path, "last", rebuilt, restore_rng=False) == {"epoch": 1}
    for task, logits in outputs(rebuilt).items():
        assert torch.equal(logits, trained[task]), (method, backbone, task)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_has_a_report_name(method):
    name = display_name(method, TrainConfig(method=method))  # the paper's names: tests/test_report.py
    assert isinstance(name, str) and name


TOY_METHOD = '''
from dataclasses import dataclass

from vl.train.peft import visual_projection_names
from vl.train.peft.registry import register_method


@dataclass
class ToyConfig:
    sharing: str = "single"
    scale: int = 1

    def check(self) -> list[str]:
        return [] if self.scale >= 1 else [f"toy scale must be >= 1 (got {self.scale})"]


def apply_toy(model, cfg: ToyConfig, tasks: list[str]) -> list[str]:
    return visual_projection_names(model)


def plain_toy(model, cfg: ToyConfig) -> bool:
    return cfg.sharing == "single"


register_method("toy", "the visual projection, by a toy", config=ToyConfig, apply=apply_toy, display=("toy", "toys"),
                to_plain_model=plain_toy, plain_model_when="a single toy becomes a plain model")
'''


def test_a_new_method_is_one_module_that_registers_itself(tmp_path):
    """What the README promises: a module with a config and `register_method` gets its config
    section, `--method`, the dry-run, its report name and `vl list methods`, with no other edit
    (here imported from a folder of its own before vl.train.config; in `train/peft/` vl.train.peft.methods
    finds and imports it)."""
    (tmp_path / "toy_method.py").write_text(TOY_METHOD)
    (tmp_path / "run.yaml").write_text("method: toy\ntoy: {scale: 3, sharing: multiple}\nfeat_dim: 8\n"
                                       "tasks: [{name: vqa, train_manifest: m.jsonl, store: f.h5}]\n")
    code = f"""
import sys; sys.path.insert(0, {str(tmp_path)!r})
import toy_method
from click.testing import CliRunner
from vl.shared.cli import cli
from vl.shared.config import load_config
from vl.train.config import TrainConfig
from vl.train.build import dry_run
from vl.train.peft.methods import display_name
cfg = load_config(TrainConfig, {str(tmp_path / 'run.yaml')!r})
print(cfg.toy.scale, display_name(cfg.method, cfg), dry_run(cfg).splitlines()[-1].startswith('trainable '))
bad = CliRunner().invoke(cli, ['train', '-c', {str(tmp_path / 'run.yaml')!r}, '--set', 'toy.scale=0', '--dry-run'])
print(bad.exit_code, 'toy scale must be >= 1' in bad.output)
print([line for line in CliRunner().invoke(cli, ['list', 'methods']).output.splitlines() if 'toy' in line])
import click
from vl.train.cli import train
from vl.train.peft.methods import carried_over
(option,) = [p for p in train.params if p.name == 'method']
print(option.get_help_record(click.Context(train))[1].split(' (')[0])
print(carried_over())
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "3 multiple toys True", "1 True", "['toy             the visual projection, by a toy; vl export: bundle']",
        "What trains: full, visual-only, visual+ln, toy, adapter, hyperformer, compacter, lora, prompt, adapter+prompt",
        "method full, visual-only or visual+ln (no added modules), or toy (a single toy becomes a plain model), "
        "or lora (a single LoRA merges into its base weights)"]


def method_help() -> str:
    """`vl train --help`'s text of --method, unwrapped."""
    import click

    from vl.train.cli import train

    (option,) = [p for p in train.params if p.name == "method"]
    return option.get_help_record(click.Context(train))[1]


def test_the_method_option_names_the_registered_methods_without_importing_them_before_it_is_shown():
    names = method_help().removeprefix("What trains: ").split(" (`vl list methods`")[0]
    assert names.split(", ") == list(METHODS)
    assert "adapter+prompt (`vl list methods` says" in " ".join(run_vl(["train", "--help"]).stdout.split())
    code = ("import sys; from click.testing import CliRunner; from vl.shared.cli import cli; "
            "CliRunner().invoke(cli, ['--help']); CliRunner().invoke(cli, ['train', '--no-such-option']); "
            "print(sorted(m for m in ('torch', 'vl.train.peft.methods') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
