"""`compile: true` (torch.compile of the backbone's teacher-forced pass) and `optim.fused`
(fused AdamW): wired into `vl train`, checkpoints unchanged, and the same loss as eager."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_vl_model
from test_train_loop import trainable_tensors, vl_train, write_config
from vl.shared.config import load_config
from vl.shared.errors import VLError
from vl.train.config import TrainConfig
from vl.train.loop import build_optimizer, weighted_sequence_loss


def batch(seed: int = 0, b: int = 4, text: int = 7, visual: int = 5, target: int = 3, vocab: int = 100) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(2, vocab, (b, text), generator=g),
            "attention_mask": torch.ones(b, text, dtype=torch.long),
            "visual_feats": torch.randn(b, visual, 8, generator=g),
            "visual_mask": torch.ones(b, visual, dtype=torch.bool),
            "labels": torch.randint(2, vocab, (b, target), generator=g), "weights": torch.ones(b)}


def step_losses(model, cfg: TrainConfig, batches: list[dict]) -> list[float]:
    """Training steps as the loop takes them (forward, weighted loss, backward, AdamW)."""
    optimizer = build_optimizer(model, cfg)
    model.train()
    losses = []
    for x in batches:
        decoder_input_ids = model.backbone.prepare_decoder_input_ids_from_labels(labels=x["labels"])
        out = model(input_ids=x["input_ids"], attention_mask=x["attention_mask"], visual_feats=x["visual_feats"],
                    visual_mask=x["visual_mask"], decoder_input_ids=decoder_input_ids, task="vqa")
        loss = weighted_sequence_loss(out.logits, x["labels"], x["weights"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_the_settings_are_checked_by_type():
    assert TrainConfig().compile is False and TrainConfig().optim.fused is False
    with pytest.raises(VLError, match="compile"):
        load_config(TrainConfig, overrides=["compile=sometimes"])


def test_fused_adamw_takes_the_same_steps(one_torch_thread):
    losses = {}
    for fused in (False, True):
        cfg = TrainConfig(dropout=0.0)
        cfg.optim.fused = fused
        model = tiny_vl_model(dropout=0.0)
        losses[fused] = step_losses(model, cfg, [batch(s) for s in range(3)])
        if fused:
            assert build_optimizer(model, cfg).defaults["fused"] is True
    assert losses[True][0] == losses[False][0]
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-5, atol=1e-6)
    assert losses[False][2] != losses[False][0]  # the steps changed the weights


def test_compile_setting_compiles_the_backbone_in_vl_train_and_checkpoints_keep_their_names(
        world, tmp_path, monkeypatch):
    """Wiring (fast): torch.compile is called on the backbone; the run trains and saves the
    same tensor names as an eager run. The compiled numerics are the slow test below."""
    compiled = []

    def spy(module, **kwargs):
        compiled.append(type(module).__name__)
        return module  # eager: what compiling does to the numbers is checked below

    monkeypatch.setattr(torch, "compile", spy)
    runs = {}
    for flag in ("false", "true"):
        runs[flag] = tmp_path / f"compile_{flag}"
        result = vl_train("-c", str(write_config(world, runs[flag], epochs=1, val_every=0)),
                          "--set", f"compile={flag}", "--set", "optim.fused=true")
        assert result.exit_code == 0, result.output
    assert compiled == ["T5ForConditionalGeneration"]  # once, the backbone, only in the compile=true run
    a, b = trainable_tensors(runs["false"]), trainable_tensors(runs["true"])
    assert sorted(a) == sorted(b) and not any("_compiled" in k or "_orig_mod" in k for k in b)
    for k in a:
        torch.testing.assert_close(a[k], b[k])


@pytest.mark.slow
def test_compiled_backbone_gives_the_eager_loss(one_torch_thread):
    """torch.compile (inductor, CPU) of a tiny T5: two training steps, the same losses as
    eager within float tolerance (about 30-60 s of compiling on a CPU)."""
    cfg = TrainConfig(dropout=0.0)
    batches = [batch(s) for s in range(2)]
    eager = step_losses(tiny_vl_model(dropout=0.0), cfg, batches)
    model = tiny_vl_model(dropout=0.0)
    model.compile_backbone()
    compiled = step_losses(model, cfg, batches)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    assert compiled[1] != compiled[0]
