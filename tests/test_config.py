"""Typed configs: dataclass defaults, then a YAML file, then `--set` overrides; every
problem collected into one VLError that names the source, the dotted key and the fix."""
from __future__ import annotations  # hints are strings: load_config must resolve them

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import pytest

from vl.shared.config import config_from_dict, config_to_dict, dump_config, load_config, save_config
from vl.shared.errors import VLError


@dataclass
class Optim:
    lr: float = 1e-4
    warmup_ratio: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])

    def check(self) -> list[str]:
        problems = []
        if self.lr <= 0:
            problems.append(f"lr must be > 0 (got {self.lr})")
        if not 0 <= self.warmup_ratio < 1:
            problems.append(f"warmup_ratio must be in [0, 1) (got {self.warmup_ratio})")
        return problems


@dataclass
class Data:
    tasks: list[str]
    batch_size: dict[str, int] = field(default_factory=dict)
    sampling: Literal["proportional", "temperature"] = "proportional"


@dataclass
class Lora:
    r: int = 8
    alpha: float = 32.0


@dataclass
class Stage:
    name: str
    epochs: int = 1

    def check(self) -> list[str]:
        return [] if self.epochs > 0 else [f"epochs must be > 0 (got {self.epochs})"]


@dataclass
class RunConfig:
    run_name: str  # required
    data: Data  # a group without a default: its own defaults, so data.tasks is what is missing
    seed: int = 0
    use_amp: bool = True
    init_from: Optional[str] = None
    output_dir: Path = Path("runs")
    loss_weights: dict[str, float] = field(default_factory=lambda: {"vqa": 1.0})
    grid: tuple[int, int] = (7, 7)
    extra: Any = None
    optim: Optim = field(default_factory=Optim)
    lora: Optional[Lora] = None
    stages: list[Stage] = field(default_factory=list)


REQUIRED = ["run_name=r1", "data.tasks=[vqa]"]


def problems_of(excinfo) -> list[str]:
    return excinfo.value.problems


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults():
    assert load_config(Optim) == Optim()
    cfg = load_config(RunConfig, overrides=REQUIRED)
    assert cfg == RunConfig(run_name="r1", data=Data(tasks=["vqa"]))
    assert cfg.optim == Optim() and cfg.lora is None and cfg.output_dir == Path("runs")


def test_yaml_file_merges_into_defaults(tmp_path):
    path = write(tmp_path, """
run_name: base
data:
  tasks: [vqa, gqa]
  batch_size: {vqa: 64, gqa: 32}
optim:
  lr: 3e-4          # a float without a dot: YAML 1.2, not PyYAML's 1.1
lora:
  r: 4
stages:
  - {name: warmup}
  - {name: main, epochs: 20}
output_dir: /tmp/out
grid: [14, 14]
""")
    cfg = load_config(RunConfig, path)
    assert cfg.run_name == "base"
    assert cfg.data == Data(tasks=["vqa", "gqa"], batch_size={"vqa": 64, "gqa": 32})
    assert cfg.optim == Optim(lr=3e-4)  # warmup_ratio and betas keep their defaults
    assert cfg.lora == Lora(r=4, alpha=32.0)  # an unset Optional group is switched on by a mapping
    assert cfg.stages == [Stage("warmup"), Stage("main", 20)]
    assert cfg.output_dir == Path("/tmp/out") and cfg.grid == (14, 14)


def test_overrides_of_every_type():
    cfg = load_config(RunConfig, overrides=[
        "run_name=2024",                  # str: YAML reads an int, the field wants the text
        "data.tasks=[vqa, gqa]",          # list[str]
        "data.batch_size={vqa: 8}",       # dict[str, int], whole
        "data.batch_size.gqa=16",         # dict[str, int], one entry
        "data.sampling=temperature",      # Literal
        "seed=7",                         # int
        "use_amp=false",                  # bool
        "init_from=runs/a/ckpt",          # Optional[str]
        "output_dir=/x/y",                # Path
        "loss_weights={vqa: 1, gqa: 0.5}",  # dict[str, float], ints accepted
        "grid=[3, 5]",                    # tuple[int, int]
        "extra={anything: [1, 2]}",       # Any
        "optim.lr=3e-4",                  # float
        "optim.warmup_ratio=0",           # int where a float is expected
        "optim.betas=[0.8, 0.99]",        # list[float]
        "lora.r=16",                      # switches the Optional group on
        "stages=[{name: a, epochs: 2}]",  # list of dataclasses
    ])
    assert cfg.run_name == "2024"
    assert cfg.data == Data(tasks=["vqa", "gqa"], batch_size={"vqa": 8, "gqa": 16}, sampling="temperature")
    assert (cfg.seed, cfg.use_amp, cfg.init_from) == (7, False, "runs/a/ckpt")
    assert cfg.output_dir == Path("/x/y") and cfg.grid == (3, 5)
    assert cfg.loss_weights == {"vqa": 1.0, "gqa": 0.5} and isinstance(cfg.loss_weights["vqa"], float)
    assert cfg.extra == {"anything": [1, 2]}
    assert cfg.optim == Optim(lr=3e-4, warmup_ratio=0.0, betas=[0.8, 0.99])
    assert isinstance(cfg.optim.warmup_ratio, float)
    assert cfg.lora == Lora(r=16)
    assert cfg.stages == [Stage("a", 2)]

    off = load_config(RunConfig, overrides=[*REQUIRED, "lora.r=2", "lora=null", "init_from=x", "init_from=null"])
    assert off.lora is None and off.init_from is None


def test_yaml_12_scalars():
    cfg = load_config(RunConfig, overrides=["run_name=no", "data.tasks=[on, yes, off]", "seed=010", "optim.lr=1e-3"])
    assert cfg.run_name == "no" and cfg.data.tasks == ["on", "yes", "off"]  # not bools
    assert cfg.seed == 10 and cfg.optim.lr == 1e-3
    assert load_config(RunConfig, overrides=[*REQUIRED, "seed=1e3"]).seed == 1000  # integral float for an int


def test_override_order_later_wins(tmp_path):
    path = write(tmp_path, "run_name: from_file\ndata: {tasks: [vqa]}\noptim: {lr: 0.1}\n")
    cfg = load_config(RunConfig, path, ["optim.lr=0.2", "run_name=first", "optim.lr=0.3", "run_name=second"])
    assert cfg.optim.lr == 0.3 and cfg.run_name == "second"
    cfg = load_config(RunConfig, path, ["optim={lr: 0.5}", "optim.warmup_ratio=0.2"])  # a mapping merges
    assert cfg.optim == Optim(lr=0.5, warmup_ratio=0.2)
    assert load_config(RunConfig, path).optim.lr == 0.1  # the file beats the defaults


def test_unknown_keys_name_the_closest_and_list_the_valid_ones(tmp_path):
    with pytest.raises(VLError) as e:
        load_config(RunConfig, overrides=[*REQUIRED, "optim.lrr=1e-4"])
    assert problems_of(e) == [
        "--set optim.lrr=1e-4: optim.lrr: no such setting; did you mean optim.lr? "
        "(optim has: lr, warmup_ratio, betas)"]

    path = write(tmp_path, "run_nam: x\ndata:\n  tasks: [vqa]\n  batch: {vqa: 1}\n")
    with pytest.raises(VLError) as e:
        load_config(RunConfig, path, ["lr=1", "zzz=1"])
    file_top, file_nested, *rest = problems_of(e)
    assert file_top.startswith(
        f"{path}:1: run_nam: no such setting; did you mean run_name? (the top level has: run_name, data, seed,")
    assert file_nested == (f"{path}:4: data.batch: no such setting; did you mean data.batch_size? "
                           "(data has: tasks, batch_size, sampling)")
    assert rest[0].startswith("--set lr=1: lr: no such setting; did you mean optim.lr?")  # right name, wrong level
    assert rest[1].startswith("--set zzz=1: zzz: no such setting (the top level has:")  # nothing close
    # the required run_name was misspelt, so it is also reported missing
    assert rest[2:] == [
        "run_name: required setting missing (str); set it in the config file or with --set run_name=..."]


def test_wrong_types_name_the_dotted_key(tmp_path):
    path = write(tmp_path, """run_name: 2024
data:
  tasks: [vqa, 3]
  batch_size: {vqa: '64'}
  sampling: temp
optim:
  lr: fast
  betas: 0.9
use_amp: 1
lora: 4
stages: [{name: a, epochs: two}]
""")
    with pytest.raises(VLError) as e:
        load_config(RunConfig, path)
    assert problems_of(e) == [
        f"{path}:1: run_name: expected str, got 2024 (int); put it in quotes to make it a string",
        f"{path}:3: data.tasks[1]: expected str, got 3 (int); put it in quotes to make it a string",
        f"{path}:4: data.batch_size.vqa: expected int, got '64' (str); write the number without quotes",
        f"{path}:5: data.sampling: expected one of 'proportional', 'temperature', got 'temp' (str); "
        "did you mean 'temperature'?",
        f"{path}:7: optim.lr: expected float, got 'fast' (str)",
        f"{path}:8: optim.betas: expected list[float], got 0.9 (float)",
        f"{path}:9: use_amp: expected bool, got 1 (int)",
        f"{path}:10: lora: expected a mapping of Lora settings (r, alpha) or null, got 4 (int)",
        f"{path}:11: stages[0].epochs: expected int, got 'two' (str)",
    ]

    with pytest.raises(VLError) as e:
        load_config(RunConfig, overrides=[*REQUIRED, "optim.lr=fast", "seed=1.5", "optim.betas=[0.9, x]",
                                          "grid=[1, 2, 3]", "data.tasks.vqa=1", "optim=3"])
    assert problems_of(e) == [
        "--set optim.lr=fast: optim.lr: expected float, got 'fast' (str)",
        "--set seed=1.5: seed: expected int, got 1.5 (float)",
        "--set optim.betas=[0.9, x]: optim.betas[1]: expected float, got 'x' (str)",
        "--set grid=[1, 2, 3]: grid: expected tuple[int, int] (2 items), got 3 items",
        "--set data.tasks.vqa=1: data.tasks: is a single setting (list[str]), not a group; "
        "use --set data.tasks=VALUE",
        "--set optim=3: optim: expected a mapping of Optim settings (lr, warmup_ratio, betas), got 3 (int)",
    ]


def test_bad_override_syntax():
    with pytest.raises(VLError) as e:
        load_config(RunConfig, overrides=[*REQUIRED, "optim.lr", "optim..lr=1", "optim.lr=[1,"])
    assert problems_of(e) == [
        "--set optim.lr: expected KEY=VALUE with a dotted KEY, e.g. --set data.tasks=...",
        "--set optim..lr=1: expected KEY=VALUE with a dotted KEY, e.g. --set data.tasks=...",
        "--set optim.lr=[1,: optim.lr: the value '[1,' is not valid YAML (expected the node content, "
        "but found '<stream end>'); quote it, e.g. optim.lr='...'",
    ]
    # text that is not valid YAML is still fine for a string setting
    assert load_config(RunConfig, overrides=[*REQUIRED, "init_from=a: b: c"]).init_from == "a: b: c"
    with pytest.raises(TypeError, match="list of 'a.b=value' strings"):
        load_config(RunConfig, overrides="seed=1")


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "run_name: x\ndata:\n  tasks: [vqa\noptim:\n  lr: 1\n")
    with pytest.raises(VLError) as e:
        load_config(RunConfig, path, ["seed=oops"])  # overrides are still checked
    assert len(problems_of(e)) == 2
    assert problems_of(e)[0].startswith(f"{path}:4: YAML syntax error: ")
    assert "started on line 3" in problems_of(e)[0]
    assert problems_of(e)[1] == "--set seed=oops: seed: expected int, got 'oops' (str)"  # and no "missing" noise

    path = write(tmp_path, "run_name: x\n  seed: 1\n", "indent.yaml")
    with pytest.raises(VLError, match=rf"{path}:2: YAML syntax error: mapping values are not allowed here"):
        load_config(RunConfig, path)


def test_file_level_problems(tmp_path):
    with pytest.raises(VLError, match="config file .*nope.yaml not found"):
        load_config(RunConfig, tmp_path / "nope.yaml")
    with pytest.raises(VLError, match="expected a mapping of settings"):
        load_config(RunConfig, write(tmp_path, "- a\n- b\n"))
    path = write(tmp_path, "run_name: a\ndata: {tasks: [x]}\nseed: 1\nseed: 2\n")
    with pytest.raises(VLError) as e:
        load_config(RunConfig, path)
    assert problems_of(e) == [f"{path}:4: seed: set twice in this file (first on line 3); delete one"]
    assert load_config(RunConfig, write(tmp_path, "", "empty.yaml"), REQUIRED).run_name == "r1"
    path = write(tmp_path, "run_name: a\ndata: {tasks: [x]}\noptim.lr: 0.1\n", "dotted.yaml")
    with pytest.raises(VLError) as e:
        load_config(RunConfig, path)
    assert problems_of(e) == [f"{path}:3: optim.lr: dotted keys are for --set; in a file nest them: `optim: {{lr: ...}}`"]


def test_many_problems_collected_into_one_error(tmp_path):
    path = write(tmp_path, "data:\n  tasks: vqa\noptim:\n  lrr: 1\n")
    with pytest.raises(VLError) as e:
        load_config(RunConfig, path, ["seed=x", "optim.warmup_ratio=2", "bogus=1"])
    problems = problems_of(e)
    assert problems == [
        f"{path}:2: data.tasks: expected list[str], got 'vqa' (str)",
        f"{path}:4: optim.lrr: no such setting; did you mean optim.lr? (optim has: lr, warmup_ratio, betas)",
        "--set seed=x: seed: expected int, got 'x' (str)",
        "--set bogus=1: bogus: no such setting (the top level has: run_name, data, seed, use_amp, init_from, "
        "output_dir, loss_weights, grid, extra, optim, lora, stages)",
        "run_name: required setting missing (str); set it in the config file or with --set run_name=...",
        "optim: warmup_ratio must be in [0, 1) (got 2.0)",  # check() hooks still run where values are typed
    ]  # data.tasks was given, wrongly: reported once, not as missing too
    assert str(e.value).startswith("6 problems:\n  - ")


def test_missing_required_fields():
    with pytest.raises(VLError) as e:
        load_config(RunConfig)
    assert problems_of(e) == [
        "run_name: required setting missing (str); set it in the config file or with --set run_name=...",
        "data.tasks: required setting missing (list[str]); set it in the config file or with --set data.tasks=...",
    ]
    with pytest.raises(VLError, match=r"stages\[1\].name: required setting missing"):
        load_config(RunConfig, overrides=[*REQUIRED, "stages=[{name: a}, {epochs: 3}]"])


def test_check_hooks_are_collected_inner_first():
    with pytest.raises(VLError) as e:
        load_config(RunConfig, overrides=[*REQUIRED, "optim.lr=-1", "optim.warmup_ratio=1.5",
                                          "stages=[{name: a}, {name: b, epochs: 0}]"])
    assert problems_of(e) == [
        "optim: lr must be > 0 (got -1.0)",
        "optim: warmup_ratio must be in [0, 1) (got 1.5)",
        "stages[1]: epochs must be > 0 (got 0)",
    ]
    with pytest.raises(VLError, match="lr must be > 0"):  # a top-level config's own hook, no prefix
        load_config(Optim, overrides=["lr=0"])


@dataclass
class Validated:
    size: int = 1

    def __post_init__(self):
        if self.size > 10:
            raise VLError(f"size {self.size} is too big; use at most 10")


@dataclass
class Holder:
    inner: Validated = field(default_factory=Validated)


def test_post_init_vlerror_is_collected():
    with pytest.raises(VLError) as e:
        load_config(Holder, overrides=["inner.size=11", "nope=1"])
    assert problems_of(e)[-1] == "inner: size 11 is too big; use at most 10"
    assert len(problems_of(e)) == 2


def test_round_trip_dict_save_load(tmp_path):
    cfg = load_config(RunConfig, overrides=[
        "run_name=rt", "data.tasks=[vqa, gqa]", "data.batch_size={vqa: 8}", "optim.lr=3e-5",
        "lora.r=4", "stages=[{name: a, epochs: 2}]", "output_dir=/o", "grid=[3, 5]", "init_from=a: b"])
    as_dict = config_to_dict(cfg)
    assert as_dict["optim"] == {"lr": 3e-5, "warmup_ratio": 0.05, "betas": [0.9, 0.999]}
    assert as_dict["output_dir"] == "/o" and as_dict["grid"] == [3, 5] and as_dict["lora"] == {"r": 4, "alpha": 32.0}
    assert json.loads(json.dumps(as_dict)) == as_dict

    path = tmp_path / "out" / "config.json"
    save_config(cfg, path)
    text = path.read_text()
    assert json.loads(text) == as_dict
    assert list(json.loads(text)) == sorted(as_dict)  # sorted keys, as every file on disk
    assert load_config(RunConfig, path) == cfg  # JSON is YAML: the saved config loads back
    assert config_from_dict(RunConfig, json.loads(text)) == cfg
    with pytest.raises(VLError, match="saved: seed: expected int"):
        config_from_dict(RunConfig, {**as_dict, "seed": "x"}, source="saved")


def test_dump_config_keeps_field_order_and_loads_back(tmp_path):
    cfg = load_config(RunConfig, overrides=[*REQUIRED, "init_from='3e-4'", "data.tasks=['no', vqa]"])
    text = dump_config(cfg)
    top_keys = [line.split(":")[0] for line in text.splitlines() if line and not line.startswith(" ")]
    assert top_keys == ["run_name", "data", "seed", "use_amp", "init_from", "output_dir", "loss_weights",
                        "grid", "extra", "optim", "lora", "stages"]
    assert "optim:\n  lr: 0.0001\n  warmup_ratio: 0.05\n  betas: [0.9, 0.999]\n" in text
    assert "init_from: '3e-4'\n" in text  # quoted, or it would read back as a float
    assert load_config(RunConfig, write(tmp_path, text, "dumped.yaml")) == cfg


@dataclass
class Unsupported:
    when: complex = 1j


def test_programmer_errors_are_type_errors():
    with pytest.raises(TypeError, match="does not support the type"):
        load_config(Unsupported)
    with pytest.raises(TypeError, match="must be dataclasses"):
        load_config(dict)
    with pytest.raises(TypeError, match="needs a dataclass instance"):
        config_to_dict({"a": 1})


def test_no_torch_import():
    code = "import sys, vl.shared.config; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_yaml_alias_bomb_is_one_line_not_all_memory(tmp_path):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]  # 9^9 values
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(VLError, match=r"bomb.yaml: its YAML aliases \(\*name\) expand to more than 100,000 values"):
        load_config(RunConfig, path)
    ok = tmp_path / "ok.yaml"  # an alias or two stay fine
    ok.write_text("run_name: &n x\ndata: {tasks: [*n]}\n")
    assert load_config(RunConfig, ok).data.tasks == ["x"]
