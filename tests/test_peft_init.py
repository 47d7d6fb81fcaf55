"""`init: reference` of the methods that add modules, checked by the statistics of the
weights they start with, against the reference's init written out here per backbone:

    BART  its init_weights drew every nn.Linear / nn.Embedding of VLBart from N(0, 0.02)
          with zero biases (HF `_init_weights`, my_transformers/modeling_bart.py L747-756);
          LayerNorms, bare Parameters (task embeddings) and PHM layers kept their own init
    T5    its `_init_weights` (modeling_t5.py L774-814) ignores nn.Linear / nn.Embedding
          that are not T5's own: the modules keep the init they were built with
          (adapters and prompts PyTorch's default, Hyperformer N(0, 0.01) and N(0, 1))

and that `zero-up`, the default, is what it was."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import tiny_vl_model
from vl.train.model import VLModel
from vl.train.peft import adapter, compacter, hyperformer, prompt

FEAT = 12
TASKS = ["vqa", "gqa"]


pytestmark = pytest.mark.usefixtures("one_torch_thread_module")


def tiny(kind: str) -> VLModel:
    return tiny_vl_model(kind, FEAT)


def pooled(tensors) -> torch.Tensor:
    return torch.cat([t.detach().flatten() for t in tensors])


def assert_std(values: torch.Tensor, want: float, what: str) -> None:
    """The sample std of a zero-mean draw within 10% of `want` (thousands of values: the
    estimate is within ~3% at these sizes), and its mean near zero."""
    assert values.numel() >= 500, what
    std = values.std().item()
    assert abs(std - want) < 0.1 * want, f"{what}: std {std:.4f}, want {want}"
    assert abs(values.mean().item()) < 0.2 * want, what


def default_linear_std(fan_in: int) -> float:
    """nn.Linear's default: Kaiming-uniform with a=sqrt(5) = U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return 1 / math.sqrt(3 * fan_in)


# -- adapters: Linear down (d -> b) and up (b -> d) at every site -----------------------------

def adapter_layers(model: VLModel, side: str) -> list[torch.nn.Linear]:
    return [m for name, m in model.adapters.named_modules() if name.endswith(f".{side}")]


@pytest.mark.parametrize("sharing", ["single", "multiple"])
def test_adapter_reference_on_bart_is_normal_002_with_zero_biases(sharing):
    model = tiny("tiny-bart")
    adapter.apply(model, adapter.AdapterConfig(init="reference", sharing=sharing), TASKS)
    for side in ("down", "up"):
        layers = [m for layer in adapter_layers(model, side) for m in layer.modules()
                  if isinstance(m, torch.nn.Linear)]
        assert_std(pooled(m.weight for m in layers), 0.02, f"{side} weights")
        assert not pooled(m.bias for m in layers).any(), f"{side} biases"


def test_adapter_reference_on_t5_keeps_pytorch_default():
    model = tiny("tiny-t5")  # d 32, bottleneck 4
    adapter.apply(model, adapter.AdapterConfig(init="reference"), TASKS)
    d, b = model.config.d_model, model.config.d_model // 8
    for side, fan_in in (("down", d), ("up", b)):
        layers = adapter_layers(model, side)
        weights, biases = pooled(m.weight for m in layers), pooled(m.bias for m in layers)
        assert_std(weights, default_linear_std(fan_in), f"{side} weights")
        assert weights.abs().max() <= 1 / math.sqrt(fan_in)
        assert biases.abs().min() > 0 and biases.abs().max() <= 1 / math.sqrt(fan_in), f"{side} biases"


@pytest.mark.parametrize("kind", ["tiny-bart", "tiny-t5"])
def test_adapter_zero_up_is_unchanged(kind):
    model = tiny(kind)
    adapter.apply(model, adapter.AdapterConfig(), TASKS)
    down, up = adapter_layers(model, "down"), adapter_layers(model, "up")
    assert_std(pooled(m.weight for m in down), 0.02, "down weights")
    assert not pooled([*(m.weight for m in up), *(m.bias for m in up), *(m.bias for m in down)]).any()


# -- hyperformer --------------------------------------------------------------------------------

def hyper_parts(model: VLModel) -> dict[str, torch.Tensor]:
    h = model.hyperformer
    stacks = [h.encoder, h.decoder]
    generators = [g for s in stacks for g in s.generators.values()]
    linears = [*(getattr(g, n) for g in generators for n in ("down_weight", "down_bias", "up_weight", "up_bias")),
               *(s.task_hypernet[i] for s in stacks for i in (0, 2))]
    return {
        "down generators": pooled(l.weight for g in generators for l in (g.down_weight, g.down_bias)),
        "up generators": pooled(l.weight for g in generators for l in (g.up_weight, g.up_bias)),
        "hypernet": pooled(s.task_hypernet[i].weight for s in stacks for i in (0, 2)),
        "linear biases": pooled(l.bias for l in linears),
        "layer embeddings": pooled(s.layer_embedding.weight for s in stacks),
        "task embeddings": pooled(h.task_embeddings.values()),
        "norm weight": pooled(s.task_hypernet[3].weight for s in stacks),
        "norm bias": pooled(s.task_hypernet[3].bias for s in stacks),
    }


# (kind, init) -> std of: down generators, up generators (0: zero), hypernet, layer embeddings
HYPER_STDS = {
    ("tiny-bart", "reference"): (0.02, 0.02, 0.02, 0.02),  # all re-initialised by BART's init_weights
    ("tiny-t5", "reference"): (0.01, 0.01, 0.01, 1.0),  # as built: hyperformer's N(0, 0.01), nn.Embedding's N(0, 1)
    ("tiny-bart", "zero-up"): (0.01, 0.0, 0.01, 1.0),  # today's default
    ("tiny-t5", "zero-up"): (0.01, 0.0, 0.01, 1.0),
}


@pytest.mark.parametrize("kind,init", HYPER_STDS)
def test_hyperformer_init(kind, init):
    model = tiny(kind)
    hyperformer.apply(model, hyperformer.HyperformerConfig(init=init), TASKS)
    parts = hyper_parts(model)
    names = ("down generators", "up generators", "hypernet", "layer embeddings")
    for name, want in zip(names, HYPER_STDS[kind, init]):
        if want:
            assert_std(parts[name], want, name)
        else:
            assert not parts[name].any(), name
    assert not parts["linear biases"].any()
    assert_std(parts["task embeddings"], 1.0, "task embeddings")  # randn, never re-initialised
    assert torch.equal(parts["norm weight"], torch.ones_like(parts["norm weight"]))  # LayerNorm: untouched
    assert not parts["norm bias"].any()


# -- compacter: PHM layers keep their Glorot init on both backbones -----------------------------

@pytest.mark.parametrize("kind", ["tiny-bart", "tiny-t5"])
@pytest.mark.parametrize("init", ["reference", "zero-up"])
def test_compacter_keeps_glorot(kind, init):
    model = tiny(kind)
    compacter.apply(model, compacter.CompacterConfig(init=init, sharing="multiple"), TASKS)
    d, b, n = model.config.d_model, model.config.d_model // 8, 2
    p, q = d // n, b // n
    layers = {side: [m for name, m in model.compacter.named_modules()
                     if isinstance(m, compacter.PHMLinear) and f".{side}" in name] for side in ("down", "up")}
    # xavier_uniform with gain sqrt(2) on a (p, q) matrix: U(-a, a), a = sqrt(2) sqrt(6 / (p + q))
    glorot = math.sqrt(2) * math.sqrt(6 / (p + q)) / math.sqrt(3)
    assert_std(pooled(m.W for m in layers["down"]), glorot, "down W")
    if init == "zero-up":
        assert not pooled(m.W for m in layers["up"]).any()
    else:
        assert_std(pooled(m.W for m in layers["up"]), glorot, "up W")
    rules = pooled(m.rule.weight for side in layers.values() for m in side)
    assert rules.numel() >= 100 and abs(rules.std().item() - 0.01) < 0.002  # N(0, 0.01), not BART's 0.02
    assert not pooled(m.bias for side in layers.values() for m in side).any()


# -- prompt ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["tiny-bart", "tiny-t5"])
@pytest.mark.parametrize("init", ["reference", "normal"])
def test_prompt_init(kind, init):
    model = tiny(kind)
    prompt.apply_prompt(model, prompt.PromptConfig(length=40, mid_dim=64, init=init), TASKS)
    (p,) = model.encoder_prompt.prompts.values()
    first, second = p.mlp[0], p.mlp[2]
    if kind == "tiny-t5" and init == "reference":  # PyTorch's default, left alone by T5's _init_weights
        assert_std(p.embedding.weight.flatten(), 1.0, "embedding")
        assert_std(first.weight.flatten(), default_linear_std(first.in_features), "mlp.0")
        assert first.bias.abs().min() > 0
    else:  # N(0, 0.02), zero biases: BART's init_weights, and "normal" everywhere
        assert_std(p.embedding.weight.flatten(), 0.02, "embedding")
        assert_std(pooled([first.weight, second.weight]), 0.02, "mlp")
        assert not pooled([first.bias, second.bias]).any()


# -- budgets: parameter counts do not depend on the init -----------------------------------------

@pytest.mark.parametrize("kind", ["tiny-bart", "tiny-t5"])
@pytest.mark.parametrize("apply,config_cls,attr", [
    (adapter.apply, adapter.AdapterConfig, "adapters"),
    (hyperformer.apply, hyperformer.HyperformerConfig, "hyperformer"),
    (compacter.apply, compacter.CompacterConfig, "compacter"),
    (prompt.apply_prompt, prompt.PromptConfig, "encoder_prompt"),
], ids=["adapter", "hyperformer", "compacter", "prompt"])
def test_reference_init_adds_the_same_parameters(kind, apply, config_cls, attr):
    shapes = []
    for init in ("reference", config_cls().init):
        model = tiny(kind)
        names = apply(model, config_cls(init=init), TASKS)
        params = dict(model.named_parameters())
        shapes.append({n: params[n].shape for n in names})
    assert shapes[0] == shapes[1]
