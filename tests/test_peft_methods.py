"""The methods through `vl train`: every paper preset's dry-run budget is the paper's, and
every preset's method trains on demo tasks and reloads to the outputs it was trained to."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from test_config_presets import preset_names
from test_train_loop import vl_train, write_config
from vl.shared.config import load_config
from vl.train import build, loop, predict
from vl.train.build import load_trained
from vl.train.config import TrainConfig
from vl.train.data import TaskDataset, collate
from vl.evaluate.report import method_name
from vl.shared.run_dir import read_run_json
from vl.train.peft.methods import display_name

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PRESETS = Path(__file__).resolve().parents[1] / "configs" / "paper"
# The table: the trainable share of all parameters as the paper reports it.
PAPER_SHARES = {
    "image/full": "100.00", "image/single_adapter": "4.18", "image/multiple_adapters": "12.22",
    "image/half_shared_adapters": "8.36", "image/hyperformer": "5.79", "image/single_compacter": "2.70",
    "image/multiple_compacters": "7.05", "image/single_lora": "5.93", "image/multiple_lora": "17.71",
    "image/single_prompt": "2.00", "image/multiple_prompts": "4.53",
    "video/full": "100.00", "video/single_adapter": "3.39", "video/single_lora": "5.17", "video/single_prompt": "1.18",
}


def test_the_presets_are_exactly_the_papers_rows():
    # the `_base*.yaml` files they build on are not presets; the V&L pre-training (pretrain/) and the rows
    # started from it (image/from_pretrain/: each its row plus init_from, test_config_presets.py) add none
    rows = [p for p in preset_names() if not p.startswith(("pretrain/", "image/from_pretrain/"))]
    assert rows == sorted(PAPER_SHARES)


@pytest.mark.parametrize("preset", sorted(PAPER_SHARES))
def test_dry_run_of_each_preset_prints_the_papers_share(preset):
    cfg = load_config(TrainConfig, PRESETS / f"{preset}.yaml")
    table = build.dry_run(cfg)
    last = table.splitlines()[-1]
    assert re.fullmatch(r"trainable [\d,]+ of [\d,]+ parameters \(\d+\.\d\d%\)", last), last
    assert last.endswith(f"({PAPER_SHARES[preset]}%)"), (preset, table)


def test_dry_run_through_the_cli_lists_groups_and_needs_no_files(tmp_path):
    result = vl_train("-c", str(PRESETS / "image/single_adapter.yaml"), "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("adapters: encoder ffn") for line in lines)
    assert any(line.startswith("visual projection") and "1,582,848" in line for line in lines)
    assert lines[-1] == "trainable 6,081,600 of 145,606,464 parameters (4.18%)"
    bad = vl_train("-c", str(PRESETS / "image/single_adapter.yaml"), "--dry-run", "--set", "feat_dim=null")
    assert bad.exit_code == 1 and "set feat_dim" in bad.output


@pytest.mark.parametrize("backbone, tokenizer", [("tiny-t5", "t5"), ("tiny-bart", "bart"), ("tiny-t5", None)])
def test_the_dry_runs_budget_is_the_one_the_run_builds(world, tokenizer_folders, tmp_path, backbone, tokenizer):
    """With extra_tokens 200 the build sizes the token embedding to the tokenizer's length once the
    extra tokens it lacks are added: a T5 tokenizer has its 100 <extra_id_k> already; a tokenizer
    to be trained (None) has none."""
    from vl.train.tokenizer import load_tokenizer

    settings = ["--set", f"backbone={backbone}", "--set", "extra_tokens=200", "--set", "method=adapter",
                "--set", f"tokenizer={tokenizer_folders[tokenizer] if tokenizer else 'null'}"]
    config = write_config(world, tmp_path / "run")
    dry = vl_train("-c", str(config), *settings, "--dry-run")
    assert dry.exit_code == 0, dry.output
    run = vl_train("-c", str(config), *settings, "--set", "max_steps=1", "--set", "val_every=0", "-q")
    assert run.exit_code == 0, run.output
    (built,) = re.findall(r"^method adapter: \d+ tensors train, ([\d,]+) of ([\d,]+) parameters \((.*)\)$",
                          run.output, re.M)
    line = "trainable {} of {} parameters ({})".format(*built)
    if tokenizer is None:  # trained as the run starts: at most tokenizer_vocab_size (400) tokens, as it says
        assert "token embedding: at most 600 rows, the tokenizer_vocab_size" in dry.output
        assert int(dry.output.splitlines()[-1].split()[3].replace(",", "")) > int(built[1].replace(",", ""))
    else:
        assert dry.output.splitlines()[-1] == line and "token embedding:" not in dry.output
    if tokenizer == "t5":  # what the dry run counted before: the tokenizer's length plus all 200
        assert "<extra_id_99>" in load_tokenizer(str(tokenizer_folders["t5"])).get_vocab()
    started = vl_train("--resume", str(tmp_path / "run"), "--dry-run")  # the run's own tokenizer, read back
    assert started.exit_code == 0 and started.output.splitlines()[-1] == line, started.output


def test_the_hub_tokenizers_of_the_t5_presets_keep_their_own_sentinels():
    from vl.train.build import embedding_rows

    t5 = load_config(TrainConfig, PRESETS / "pretrain/vl_t5.yaml")
    assert embedding_rows(t5) == (32100 + 100, "")  # google-t5's 32,100 tokens hold <extra_id_0..99>: 100 <vis_extra_id_k>
    assert embedding_rows(load_config(TrainConfig, PRESETS / "pretrain/vl_bart.yaml")) == (50265 + 200, "")


def demo_config(world: Path, run: Path, preset: str) -> TrainConfig:
    """The preset's method and settings on a tiny random BART and two demo tasks."""
    cfg = load_config(TrainConfig, PRESETS / f"{preset}.yaml", [
        "backbone=tiny-bart", "init=random", "tokenizer=null", "tokenizer_vocab_size=400", "extra_tokens=200",
        "feat_dim=null", "epochs=1", "workers=0", "device=cpu", "precision=fp32", "data.visual_pool=null",
        "optim.lr=3e-3"])
    demo = load_config(TrainConfig, write_config(world, run, batch_size=16))
    cfg.tasks, cfg.run_dir = demo.tasks, run
    if cfg.method == "prompt":
        cfg.prompt.length = 8  # tiny-bart has 256 positions
    return cfg


@pytest.mark.parametrize("preset", sorted(PAPER_SHARES))
def test_each_preset_trains_on_demo_tasks_and_its_checkpoint_reloads_to_the_same_outputs(world, tmp_path, preset,
                                                                                         monkeypatch):
    run = tmp_path / "run"
    cfg = demo_config(world, run, preset)
    kept = {}
    real_save = loop.save_checkpoint

    def save_and_keep(run_dir, name, model, *args, **kwargs):  # the trained model itself, as it was saved
        kept[name] = model
        return real_save(run_dir, name, model, *args, **kwargs)

    monkeypatch.setattr(loop, "save_checkpoint", save_and_keep)
    loop.train(cfg)
    trained = load_trained(run, "last")
    assert trained.model.training is False and trained.checkpoint == "last"
    # run.json names the method as `vl report` prints it, so a report needs no registry
    assert read_run_json(run)["method"] == {"name": cfg.method, "display": display_name(cfg.method, cfg)}
    assert display_name(cfg.method, cfg) == method_name(json.loads((run / "config.json").read_text()))
    # only what trains is in the checkpoint: for a PEFT method, far less than the model
    meta = json.loads((run / "checkpoints/last/meta.json").read_text())
    total = sum(p.numel() for p in trained.model.parameters())
    assert (meta["trainable_parameters"] == total) == (cfg.method == "full")
    assert meta["trainable_parameters"] > 0
    # the reloaded model computes exactly what the trained one does, for each task
    original = kept["last"].eval()
    sets = loop.task_data(cfg, lambda t: (t.val_split, t.val_manifest), {})
    for name, data in sets.items():
        ds = TaskDataset(data, trained.tokenizer, seed=cfg.seed)
        batch = collate([ds.item(i, 0) for i in range(6)], trained.tokenizer)
        inputs = {k: batch[k] for k in predict.MODEL_INPUTS}
        labels = batch["labels"]
        with torch.no_grad():
            want = original(**inputs, labels=labels, task=name).logits
            have = trained.model(**inputs, labels=labels, task=name).logits
        assert torch.equal(have, want), (preset, name)
        assert not torch.equal(want[:, :, :5].std(0), torch.zeros_like(want[:, :, :5].std(0)))  # inputs matter


def test_a_rebuilt_model_that_differs_from_the_run_is_refused(world, tmp_path):
    run = tmp_path / "run"
    loop.train(demo_config(world, run, "image/single_adapter"))
    cfg_path = run / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["seed"] += 1  # the frozen random backbone would come out different
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(Exception, match="frozen weights rebuilt"):
        load_trained(run)


# The reference's scripts (VL-T5/scripts/image/*.sh) passed --use_tasks_prompts in these runs only.
PREFIXED = {"image/single_adapter", "image/single_compacter", "image/single_lora", "image/single_prompt"}
INIT_SECTIONS = {"adapter": "adapter", "hyperformer": "hyperformer", "compacter": "compacter", "prompt": "prompt"}


@pytest.mark.parametrize("preset", sorted(PAPER_SHARES))
def test_each_preset_runs_in_paper_mode(preset):
    """The settings docs/fidelity.md lists, as each preset's script ran them."""
    cfg = load_config(TrainConfig, PRESETS / f"{preset}.yaml")
    assert (cfg.visual_inputs, cfg.visual_boxes, cfg.extra_tokens) == ("reference", None, 200)
    assert cfg.eval_checkpoint == "last" and cfg.optim.decay == "reference"
    if cfg.method in INIT_SECTIONS:
        assert getattr(cfg, INIT_SECTIONS[cfg.method]).init == "reference"
    tasks = {t.name: t for t in cfg.tasks}
    if preset.startswith("image/"):
        prefixes = ({"vqa": "vqa:", "gqa": "gpa:", "nlvr2": "nlvr:", "caption": "caption:"} if preset in PREFIXED
                    else dict.fromkeys(tasks, ""))
        assert {name: t.prefix for name, t in tasks.items()} == prefixes
        for name in ("vqa", "gqa"):  # question + prefix cut to 20 tokens, greedy
            t = tasks[name]
            assert (t.max_text_tokens, t.truncate, t.num_beams, t.max_new_tokens) == (20, "end", 1, 19)
        assert tasks["nlvr2"].decision == "rank"
        c = tasks["caption"]
        assert (c.num_beams, c.max_new_tokens, c.max_target_tokens) == (5, 19, 40)
        assert tasks["vqa"].train_manifest.name == "vqa2_karpathy_train.jsonl"
        assert tasks["gqa"].train_manifest.name == "gqa_trainval.jsonl" and tasks["gqa"].val_split == "testdev"
        assert cfg.data.visual_pool == 6
    else:
        assert (cfg.data.video_inputs, cfg.data.max_frames, cfg.data.max_text_tokens) == ("reference", 64, 600)
        assert all(t.prefix is None and t.num_beams == 5 and t.max_new_tokens == 19 for t in tasks.values())
        assert tasks["tvc"].max_target_tokens == tasks["yc2c"].max_target_tokens == 20
