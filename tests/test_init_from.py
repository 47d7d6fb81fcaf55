"""`init_from`: a run that starts from another run's weights (V&L pre-training, then a
method), with that run's backbone and tokenizer; its checkpoint still reloads exactly,
and what cannot carry over is refused with a message saying what to do."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from test_peft_methods import demo_config
from test_train_loop import vl_train
from vl.shared.errors import VLError
from vl.shared.run_dir import read_run_json
from vl.train import loop, predict
from vl.train.build import build_model, inherit_from_run, load_trained, starting_model
from vl.train.data import TaskDataset, collate
from vl.train.tokenizer import vis_token_ids

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sources(world, tmp_path_factory) -> dict[str, Path]:
    """Finished runs to start from: full fine-tuning, a single LoRA and a single adapter."""
    root = tmp_path_factory.mktemp("sources")
    runs = {}
    for name, preset in (("full", "image/full"), ("lora", "image/single_lora"), ("adapter", "image/single_adapter")):
        runs[name] = root / name
        loop.train(demo_config(world, runs[name], preset))
    return runs


def feat_dim(run: Path) -> int:
    return read_run_json(run)["model"]["feat_dim"]


def started_from(world: Path, run: Path, source: Path, preset: str = "image/single_adapter"):
    return dataclasses.replace(demo_config(world, run, preset), init_from=source)


def logits(model, cfg, tokenizer) -> torch.Tensor:
    data = loop.task_data(cfg, lambda t: (t.train_split, t.train_manifest), {})["vqa"]
    batch = collate([TaskDataset(data, tokenizer, seed=0).item(i, 0) for i in range(4)], tokenizer)
    with torch.no_grad():
        return model.eval()(**{k: batch[k] for k in predict.MODEL_INPUTS}, labels=batch["labels"], task="vqa").logits


def test_a_run_starts_from_the_source_weights_and_tokenizer_and_reloads_exactly(world, sources, tmp_path,
                                                                               monkeypatch):
    run = tmp_path / "adapter-from-full"
    kept = {}
    real_save = loop.save_checkpoint

    def save_and_keep(run_dir, name, model, *args, **kwargs):
        kept[name] = model
        return real_save(run_dir, name, model, *args, **kwargs)

    monkeypatch.setattr(loop, "save_checkpoint", save_and_keep)
    loop.train(started_from(world, run, sources["full"]))
    saved = json.loads((run / "config.json").read_text())
    assert saved["init_from"] == str(sources["full"]) and saved["tokenizer"] == str(sources["full"] / "tokenizer")
    assert not (run / "tokenizer").exists()  # the source's own, not one trained again

    source, trained = load_trained(sources["full"], "last"), load_trained(run, "last")
    embeddings = trained.model.backbone.get_input_embeddings().weight
    assert torch.equal(embeddings, source.model.backbone.get_input_embeddings().weight)  # frozen: as pre-trained
    fresh, _ = build_model(demo_config(world, run, "image/full"), feat_dim(run), len(trained.tokenizer), ["vqa"],
                                vis_token_ids(trained.tokenizer))
    assert not torch.equal(embeddings, fresh.backbone.get_input_embeddings().weight)  # not a random start
    assert torch.equal(logits(trained.model, trained.cfg, trained.tokenizer),
                       logits(kept["last"], trained.cfg, trained.tokenizer))


def test_a_source_whose_weights_changed_is_caught_when_the_run_is_rebuilt(world, sources, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(sources["full"], source)
    run = tmp_path / "run"
    loop.train(started_from(world, run, source))
    load_trained(run, "last")  # fine as trained
    other = tmp_path / "other"
    loop.train(dataclasses.replace(demo_config(world, other, "image/full"), seed=7))
    shutil.rmtree(source / "checkpoints")
    shutil.copytree(other / "checkpoints", source / "checkpoints")
    with pytest.raises(VLError, match="frozen weights rebuilt"):
        load_trained(run, "last")


def test_a_single_lora_source_is_merged_into_its_weights(world, sources, tmp_path):
    cfg = inherit_from_run(started_from(world, tmp_path / "full-from-lora", sources["lora"], "image/full"))
    source = load_trained(sources["lora"], "last")
    model = starting_model(cfg, feat_dim(sources["lora"]), len(source.tokenizer))
    assert not any("lora" in name for name, _ in model.named_parameters())  # a plain model
    want = logits(load_trained(sources["lora"], "last").model, source.cfg, source.tokenizer)
    torch.testing.assert_close(logits(model, source.cfg, source.tokenizer), want, rtol=1e-4, atol=1e-4)


def test_what_cannot_carry_over_is_refused_with_the_fix(world, sources, tmp_path):
    cfg = started_from(world, tmp_path / "run", sources["full"])
    with pytest.raises(VLError, match="uses its backbone.*backbone: 't5-small' here, 'tiny-bart' in"):
        inherit_from_run(dataclasses.replace(cfg, backbone="t5-small"))
    with pytest.raises(VLError, match="not a vl run directory"):
        inherit_from_run(dataclasses.replace(cfg, init_from=tmp_path))
    resolved = inherit_from_run(cfg)
    source = load_trained(sources["full"], "last")
    width, vocab = feat_dim(sources["full"]), len(source.tokenizer)
    with pytest.raises(VLError, match="wide, but this run's stores hold"):
        starting_model(resolved, width + 1, vocab)
    with pytest.raises(VLError, match="tokenizer must be that run's"):
        starting_model(resolved, width, vocab + 2)
    with pytest.raises(VLError, match="Leave dropout unset"):
        starting_model(dataclasses.replace(resolved, dropout=0.3), width, vocab)
    adapter_cfg = inherit_from_run(dataclasses.replace(cfg, init_from=sources["adapter"]))
    with pytest.raises(VLError, match="method adapter, whose added modules do not carry over") as refused:
        starting_model(adapter_cfg, width, vocab)
    # the methods that carry over, from the registry (tests/test_peft_registry.py registers a new one)
    assert refused.value.hint.endswith("or start from a run of method full, visual-only or visual+ln (no added "
                                       "modules), or lora (a single LoRA merges into its base weights).")


def test_init_from_through_the_cli_prints_the_inherited_settings(world, sources, tmp_path):
    from test_train_loop import write_config

    path = write_config(world, tmp_path / "run", init_from=str(sources["full"]), backbone="tiny-bart",
                        tokenizer_vocab_size=400)
    result = vl_train("-c", str(path), "--print-config")
    assert result.exit_code == 0, result.output
    assert f"tokenizer: {sources['full'] / 'tokenizer'}" in result.output and "backbone: tiny-bart" in result.output
    clash = vl_train("-c", str(path), "--set", "backbone=t5-small", "--print-config")
    assert clash.exit_code == 1 and "Leave these settings out" in clash.output


def test_tokenizer_manifests_add_texts_to_the_trained_tokenizer(world, tmp_path):
    base = demo_config(world, tmp_path / "plain", "image/full")
    more = dataclasses.replace(demo_config(world, tmp_path / "more", "image/full"), tasks=base.tasks[:1],
                               tokenizer_manifests=[base.tasks[1].train_manifest])
    missing = dataclasses.replace(more, tokenizer_manifests=[tmp_path / "nope.jsonl"])
    with pytest.raises(VLError, match="tokenizer_manifests: .*nope.jsonl not found"):
        loop.train(missing)
    only = dataclasses.replace(demo_config(world, tmp_path / "only", "image/full"), tasks=base.tasks[:1])
    for cfg in (more, only):
        cfg.epochs = 1
        loop.train(cfg)
    with_more = json.loads((tmp_path / "more/tokenizer/tokenizer.json").read_text())["model"]["vocab"]
    alone = json.loads((tmp_path / "only/tokenizer/tokenizer.json").read_text())["model"]["vocab"]
    assert with_more != alone  # the second task's texts shaped the vocabulary


def test_an_adapter_trained_in_place_trains_on_in_a_run_of_the_same_method(world, sources, tmp_path):
    """V&L pre-training with the adapter in place, then fine-tuning that adapter: a run of the
    same method and settings starts from the source's adapters, LayerNorms and visual
    embedding as they were trained (its other weights frozen as the source's); other
    settings are refused with the fix."""
    from safetensors.torch import load_file

    run = tmp_path / "adapter-from-adapter"
    cfg = inherit_from_run(started_from(world, run, sources["adapter"]))
    source = load_trained(sources["adapter"], "best")
    model, names = build_model(cfg, feat_dim(sources["adapter"]), len(source.tokenizer), ["vqa", "gqa"],
                               vis_token_ids(source.tokenizer))
    saved = load_file(str(sources["adapter"] / "checkpoints/best/model.safetensors"))
    assert sorted(saved) == names  # exactly what the source trained trains on
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], saved[n]) for n in names)  # from there, not from a fresh init
    assert not any(p.requires_grad for n, p in params.items() if n not in names)
    loop.train(started_from(world, run, sources["adapter"]))  # and it trains and reloads
    assert load_trained(run, "last").checkpoint == "last"

    other = dataclasses.replace(cfg, adapter=dataclasses.replace(cfg.adapter, reduction_factor=2))
    with pytest.raises(VLError, match="Fine-tune with method adapter and the same adapter settings"):
        build_model(other, feat_dim(sources["adapter"]), len(source.tokenizer), ["vqa", "gqa"],
                    vis_token_ids(source.tokenizer))
