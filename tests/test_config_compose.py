"""Config composition: `base:` chains (relative to the file, checked for loops and missing
files), several files merged left to right, `--set` last, and `--print-config` naming the
source of each setting."""
from __future__ import annotations  # hints are strings: load_config must resolve them


import pytest
import yaml

from test_config import REQUIRED, Data, Lora, Optim, RunConfig, problems_of, write
from vl.shared.config import dump_config, load_config, load_config_with_sources
from vl.shared.errors import VLError


def test_a_base_chain_of_three_levels_with_relative_paths(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    write(tmp_path, "run_name: root\ndata: {tasks: [vqa]}\nseed: 1\noptim: {lr: 1e-3}\n", "root.yaml")
    write(tmp_path / "a", "base: ../root.yaml\nseed: 2\noptim: {warmup_ratio: 0.1}\n", "mid.yaml")
    leaf = write(tmp_path / "a" / "b", "base: ../mid.yaml\nrun_name: leaf\n", "leaf.yaml")
    cfg = load_config(RunConfig, leaf)
    assert (cfg.run_name, cfg.seed, cfg.data.tasks) == ("leaf", 2, ["vqa"])
    assert cfg.optim == Optim(lr=1e-3, warmup_ratio=0.1)  # nested mappings merge key by key


def test_a_base_loop_is_one_error_naming_the_files(tmp_path):
    write(tmp_path, "base: b.yaml\nrun_name: a\n", "a.yaml")
    write(tmp_path, "base: c.yaml\n", "b.yaml")
    write(tmp_path, "base: a.yaml\n", "c.yaml")
    with pytest.raises(VLError) as e:
        load_config(RunConfig, tmp_path / "a.yaml", REQUIRED)
    (problem,) = problems_of(e)
    assert "loop" in problem
    assert problem.index("a.yaml") < problem.index("b.yaml") < problem.index("c.yaml")
    assert problem.count("a.yaml") == 2


def test_a_file_that_is_its_own_base(tmp_path):
    path = write(tmp_path, "base: run.yaml\nrun_name: a\n")
    with pytest.raises(VLError, match="loop"):
        load_config(RunConfig, path, REQUIRED)


def test_a_missing_base_names_the_file_and_the_config_naming_it(tmp_path):
    path = write(tmp_path, "run_name: a\nbase: nowhere/base.yaml\n")
    with pytest.raises(VLError) as e:
        load_config(RunConfig, path, REQUIRED)
    (problem,) = problems_of(e)
    assert problem.startswith(f"{path}:2: base:")
    assert str(tmp_path / "nowhere" / "base.yaml") in problem and "not found" in problem


def test_a_base_that_is_not_a_file_name(tmp_path):
    path = write(tmp_path, "base: [a.yaml, b.yaml]\n")
    with pytest.raises(VLError, match=r"run\.yaml:1: base: expected the file name"):
        load_config(RunConfig, path, REQUIRED)


def test_merge_nested_dicts_key_by_key_lists_and_scalars_replace(tmp_path):
    write(tmp_path, """
run_name: base
data: {tasks: [vqa, gqa], batch_size: {vqa: 64, gqa: 32}}
optim: {lr: 1e-3, betas: [0.8, 0.9]}
lora: {r: 4}
stages: [{name: a}, {name: b}]
""", "base.yaml")
    path = write(tmp_path, """
base: base.yaml
data: {tasks: [nlvr2], batch_size: {gqa: 16}}
optim: {betas: [0.5, 0.6]}
lora: null
stages: [{name: c, epochs: 3}]
""")
    cfg = load_config(RunConfig, path)
    assert cfg.data == Data(tasks=["nlvr2"], batch_size={"vqa": 64, "gqa": 16})  # a dict setting merges too
    assert cfg.optim == Optim(lr=1e-3, betas=[0.5, 0.6])
    assert cfg.lora is None
    assert [s.name for s in cfg.stages] == ["c"]


def test_several_files_merge_left_to_right_then_set_wins(tmp_path):
    first = write(tmp_path, "run_name: first\ndata: {tasks: [vqa]}\nseed: 1\nlora: {r: 2}\n", "first.yaml")
    second = write(tmp_path, "run_name: second\nseed: 2\nlora: {alpha: 8}\n", "second.yaml")
    cfg = load_config(RunConfig, [first, second], ["seed=3"])
    assert (cfg.run_name, cfg.seed, cfg.lora) == ("second", 3, Lora(r=2, alpha=8))
    assert load_config(RunConfig, [second, first]).run_name == "first"


def test_problems_name_the_file_and_line_that_set_the_value(tmp_path):
    write(tmp_path, "run_name: base\ndata: {tasks: [vqa]}\noptim:\n  lr: fast\n", "base.yaml")
    path = write(tmp_path, "base: base.yaml\n\nseed: many\n")
    with pytest.raises(VLError) as e:
        load_config(RunConfig, path)
    assert sorted(problems_of(e)) == sorted([
        f"{tmp_path / 'base.yaml'}:4: optim.lr: expected float, got 'fast' (str)",
        f"{path}:3: seed: expected int, got 'many' (str)"])


def test_print_config_names_each_source_and_stays_valid_yaml(tmp_path):
    write(tmp_path, "run_name: base\ndata: {tasks: [vqa]}\noptim: {lr: 1e-3}\nstages: [{name: a}]\n", "base.yaml")
    path = write(tmp_path, "base: base.yaml\noptim: {warmup_ratio: 0.1}\nloss_weights: {gqa: 2.0}\n")
    cfg, sources = load_config_with_sources(RunConfig, path, ["seed=7", "optim.lr=2e-3"])
    text = dump_config(cfg, sources)
    lines = dict(line.strip().split(":", 1) for line in text.splitlines())
    base = tmp_path / "base.yaml"
    assert lines["run_name"] == f" base  # from {base}"
    assert lines["seed"] == " 7  # --set seed=7"
    assert lines["lr"] == " 0.002  # --set optim.lr=2e-3"
    assert lines["warmup_ratio"] == f" 0.1  # from {path}"
    assert lines["betas"] == " [0.9, 0.999]  # default"
    assert lines["gqa"] == f" 2.0  # from {path}" and "vqa" not in lines  # a file's dict replaces the default
    assert lines["stages"] == f"  # from {base}"  # a list has one source: the file that wrote it
    assert lines["use_amp"] == " true  # default"
    assert yaml.safe_load(text) == yaml.safe_load(dump_config(cfg))  # the comments are only comments


def test_print_config_through_the_cli(tmp_path):
    from test_train_loop import vl_train

    base = write(tmp_path, "epochs: 3\ntasks: [{name: vqa, train_manifest: m.jsonl, store: s.h5}]\n", "base.yaml")
    mine = write(tmp_path, "base: base.yaml\nseed: 5\n", "mine.yaml")
    other = write(tmp_path, "seed: 6\n", "other.yaml")
    result = vl_train("-c", str(mine), "-c", str(other), "--set", "epochs=4", "--print-config")
    assert result.exit_code == 0, result.output
    assert f"seed: 6  # from {other}\n" in result.output
    assert "epochs: 4  # --set epochs=4\n" in result.output
    assert f"tasks:  # from {base}\n" in result.output
    assert "precision: fp32  # default\n" in result.output
