"""The adapter family (vl.train.peft.adapter, hyperformer, compacter) on tiny T5 and BART
built here, and their exact parameter counts on bart-base shapes (random init, offline)."""
from __future__ import annotations

import copy

import pytest
import torch
from transformers.activations import ACT2FN

from vl.shared.errors import VLError
from conftest import tiny_vl_model
from vl.train.model import VLModel, build_vl_model
from vl.train.peft import LAYER_NORMS, adapter, compacter, hyperformer
from vl.train.peft.compacter import PHMLinear, PHMRule
from vl.train.peft.sites import OutputHook, detach, find_sites

FEAT = 12
KINDS = ["tiny-t5", "tiny-bart"]
TASKS = ["vqa", "gqa"]
LABELS = torch.tensor([[5, 6, 7], [8, 9, -100]])

# id -> (apply, config class, config overrides, model attribute, per-task modules?)
METHODS = {
    "adapter-single": (adapter.apply, adapter.AdapterConfig, {}, "adapters", False),
    "adapter-multiple": (adapter.apply, adapter.AdapterConfig, {"sharing": "multiple"}, "adapters", True),
    "adapter-half-shared": (adapter.apply, adapter.AdapterConfig, {"sharing": "half-shared"}, "adapters", True),
    "hyperformer": (hyperformer.apply, hyperformer.HyperformerConfig, {}, "hyperformer", True),
    "compacter-single": (compacter.apply, compacter.CompacterConfig, {}, "compacter", False),
    "compacter-multiple": (compacter.apply, compacter.CompacterConfig, {"sharing": "multiple"}, "compacter", True),
    "compacter-shared-lowrank": (compacter.apply, compacter.CompacterConfig,
                                 {"shared_rule": True, "low_rank": True, "rank": 2}, "compacter", False),
}
PER_TASK = [m for m, spec in METHODS.items() if spec[4]]


pytestmark = pytest.mark.usefixtures("one_torch_thread_module")


def tiny(kind: str) -> VLModel:
    return tiny_vl_model(kind, FEAT).eval()


def apply(model: VLModel, method: str, tasks=TASKS, **overrides) -> list[str]:
    fn, config_cls, base, _, _ = METHODS[method]
    torch.manual_seed(1)
    return fn(model, config_cls(**{**base, **overrides}), list(tasks))


def batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    text_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    vis_mask = torch.tensor([[True] * 4, [True, True, False, False]])
    return dict(input_ids=torch.randint(3, 128, (2, 5), generator=g) * text_mask, attention_mask=text_mask,
                visual_feats=torch.randn(2, 4, FEAT, generator=g) * vis_mask[..., None], visual_mask=vis_mask)


def logits(model: VLModel, task: str | None = "vqa") -> torch.Tensor:
    with torch.no_grad():
        return model(**batch(), labels=LABELS, task=task).logits


def train_steps(model: VLModel, names: list[str], tasks: list[str]) -> dict[str, torch.Tensor]:
    """Freeze all, unfreeze `names`, one AdamW step per entry of `tasks`; the state before."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = dict(model.named_parameters())
    for n in names:
        params[n].requires_grad_(True)
    before = {n: p.detach().clone() for n, p in params.items()}
    opt = torch.optim.AdamW([params[n] for n in names], lr=1e-2, weight_decay=0.0)
    for task in tasks:
        opt.zero_grad(set_to_none=True)
        model(**batch(), labels=LABELS, task=task).loss.backward()
        opt.step()
    return before


def changed(model: VLModel, before: dict[str, torch.Tensor]) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", KINDS)
def test_starts_as_the_frozen_model(kind, method):
    model = tiny(kind)
    frozen, decoded = logits(model), model.generate(**batch(), task="vqa", max_new_tokens=3)
    apply(model, method)
    assert torch.allclose(logits(model), frozen, atol=1e-6, rtol=0)
    assert torch.equal(model.generate(**batch(), task="vqa", max_new_tokens=3), decoded)
    # ... and the hooks do act: the reference's init (N(0, 0.02) everywhere) changes the output
    # (little on tiny BART, whose logits are small; identity above is exact, so 1e-7 is plenty)
    other = tiny(kind)
    apply(other, method, init="normal")
    assert (logits(other) - frozen).abs().max() > 1e-7


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_site_is_hooked_once_and_fires(kind, method):
    model = tiny(kind)
    apply(model, method)
    sites = find_sites(model)
    layers = model.config.num_layers if kind == "tiny-t5" else model.config.encoder_layers
    assert len(sites) == 2 * layers + 3 * layers  # encoder: self, ffn; decoder: self, cross, ffn
    calls = []
    for s in sites:
        (hook,) = [h for h in s.module._forward_hooks.values() if isinstance(h, OutputHook)]
        hook.fn = (lambda fn, key: lambda h: calls.append(key) or fn(h))(hook.fn, (s.stack, s.layer, s.kind))
    logits(model)
    assert sorted(calls) == sorted((s.stack, s.layer, s.kind) for s in sites)


@pytest.mark.parametrize("kind", KINDS)
def test_each_adapter_changes_the_output_at_its_site(kind):
    model = tiny(kind)
    apply(model, "adapter-single")
    frozen = logits(model)
    for s in find_sites(model):
        up = model.adapters[s.stack][s.layer][s.kind].up
        with torch.no_grad():  # not a constant vector: BART's LayerNorm would remove it
            up.bias.normal_()
        assert not torch.allclose(logits(model), frozen, atol=1e-4), s
        with torch.no_grad():
            up.bias.zero_()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", KINDS)
def test_steps_train_exactly_the_returned_parameters(kind, method):
    model = tiny(kind)
    old = {n for n, _ in model.named_parameters()}
    names = apply(model, method)
    attr = METHODS[method][3]
    # Independently: the new modules, the visual embedding, and the backbone's LayerNorms found by type.
    new = {n for n, _ in model.named_parameters()} - old
    assert new and all(n.startswith(attr + ".") for n in new)
    norms = {f"{m}.{p}" for m, mod in model.backbone.named_modules() if isinstance(mod, LAYER_NORMS)
             for p, _ in mod.named_parameters(recurse=False)}
    visual = {f"visual_embedding.{n}" for n, _ in model.visual_embedding.named_parameters()}
    assert len(names) == len(set(names))
    assert set(names) == new | visual | {f"backbone.{n}" for n in norms}
    # Two steps per task: with a zero up-projection the first step reaches only the up side.
    before = train_steps(model, names, TASKS * 2)
    assert changed(model, before) == set(names)
    assert all(p.grad is None for n, p in model.named_parameters() if n not in set(names))


def test_layer_norms_stay_frozen_when_asked():
    model = tiny("tiny-bart")
    names = apply(model, "adapter-single", train_layer_norms=False)
    assert not any(n.startswith("backbone.") for n in names)
    assert {n for n in names if not n.startswith("adapters.")} == {
        f"visual_embedding.{n}" for n, _ in model.visual_embedding.named_parameters()}


def task_params(model: VLModel, attr: str, task: str) -> set[str]:
    """Names of the per-task parameters of `task` (an entry keyed by the task name)."""
    return {n for n, _ in model.named_parameters() if n.startswith(attr + ".") and task in n.split(".")}


@pytest.mark.parametrize("method", PER_TASK)
@pytest.mark.parametrize("kind", KINDS)
def test_a_step_on_one_task_leaves_the_other_tasks_modules_alone(kind, method):
    model = tiny(kind)
    attr = METHODS[method][3]
    names = apply(model, method, init="normal")
    vqa, gqa = task_params(model, attr, "vqa"), task_params(model, attr, "gqa")
    assert vqa and len(vqa) == len(gqa)
    gqa_logits = logits(model, "gqa")
    before = train_steps(model, names, ["vqa"])
    moved = changed(model, before)
    assert vqa <= moved and not gqa & moved
    shared = {n for n in names if n.startswith(attr + ".")} - vqa - gqa
    if method == "adapter-half-shared":  # up shared, down per task
        assert shared and all(".up." in n for n in shared) and all(".down." in n for n in vqa)
        assert shared <= moved
    if method in ("adapter-multiple", "compacter-multiple"):
        assert not shared
    if method == "hyperformer":  # per task: only the task embedding; the hypernetworks are shared
        assert vqa == {"hyperformer.task_embeddings.vqa"}
    assert not torch.allclose(logits(model, "gqa"), gqa_logits, atol=1e-6)  # the shared parts moved
    if not shared:
        # nothing shared but the frozen model and the visual embedding, LNs: reset those, gqa is as before
        with torch.no_grad():
            for n, p in model.named_parameters():
                if not n.startswith(attr + "."):
                    p.copy_(before[n])
        assert torch.allclose(logits(model, "gqa"), gqa_logits, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", PER_TASK)
def test_per_task_modules_need_a_known_task(method):
    model = tiny("tiny-bart")
    apply(model, method)
    with pytest.raises(RuntimeError, match="call it with task="):
        logits(model, task=None)
    with pytest.raises(VLError, match="no modules for task 'nlvr2'; it was built for: gqa, vqa"):
        logits(model, task="nlvr2")


@pytest.mark.parametrize("method", ["adapter-single", "compacter-single"])
def test_shared_modules_need_no_task(method):
    model = tiny("tiny-t5")
    apply(model, method, tasks=[], init="normal")
    assert torch.isfinite(logits(model, task=None)).all()


def kron_sum(rules: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    return sum(torch.kron(rules[i], W[i]) for i in range(rules.shape[0]))


@pytest.mark.parametrize("n,d_in,d_out", [(2, 8, 12), (4, 8, 4), (1, 3, 5)])
def test_phm_weight_is_the_kronecker_sum(n, d_in, d_out):
    torch.manual_seed(0)
    layer = PHMLinear(d_in, d_out, n)
    with torch.no_grad():
        layer.rule.weight.normal_()
        layer.bias.normal_()
    H = kron_sum(layer.rule.weight, layer.W)
    assert H.shape == (d_in, d_out)
    assert torch.allclose(layer.weight(), H, atol=1e-6)
    x = torch.randn(3, 2, d_in)
    assert torch.allclose(layer(x), x @ H + layer.bias, atol=1e-5)

    shared = PHMRule(n)
    low = PHMLinear(d_in, d_out, n, low_rank=True, rank=2, shared_rule=shared)
    assert low.rule is None and low.rules() is shared.weight
    assert {n for n, _ in low.named_parameters()} == {"left", "right", "bias"}  # the shared rule is its owner's
    assert torch.allclose(low.weight(), kron_sum(shared.weight, low.left @ low.right), atol=1e-6)


def test_zero_up_phm_starts_at_zero_and_low_rank_can_still_learn():
    up = PHMLinear(4, 8, 2, low_rank=True, zero=True)
    assert not up.weight().any() and up.left.abs().sum() > 0  # right = 0 only: left gets gradients


def test_shared_rule_is_registered_once():
    model = tiny("tiny-bart")
    names = apply(model, "compacter-shared-lowrank")
    rules = [n for n in names if "rule" in n]
    assert rules == ["compacter.phm_rule.weight"]
    layer = model.compacter["encoder"][0]["ffn"].down
    assert layer.rules() is model.compacter["phm_rule"].weight
    copied = copy.deepcopy(model)  # the plain reference follows the copy
    assert copied.compacter["encoder"][0]["ffn"].down.rules() is copied.compacter["phm_rule"].weight


def test_deepcopy_hooks_call_the_copys_modules_and_detach_restores_the_model():
    model = tiny("tiny-bart")
    frozen = logits(model)
    apply(model, "adapter-single", init="normal")
    adapted = logits(model)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.adapters["decoder"][0]["ffn"].up.bias.normal_()
    assert not torch.allclose(logits(twin), adapted, atol=1e-4)
    assert torch.equal(logits(model), adapted)
    assert detach(model) and not hasattr(model, "adapters")
    assert not any(isinstance(h, OutputHook) for m in model.modules() for h in m._forward_hooks.values())
    assert torch.equal(logits(model), frozen)
    assert not detach(model)


def test_bad_settings_are_clear_errors():
    model = tiny("tiny-t5")  # d_model 32
    with pytest.raises(VLError, match="d_model 32 is not divisible by reduction_factor 5"):
        adapter.apply(model, adapter.AdapterConfig(reduction_factor=5), TASKS)
    with pytest.raises(VLError, match="n=3 must divide d_model 32"):
        compacter.apply(model, compacter.CompacterConfig(n=3), TASKS)
    with pytest.raises(VLError, match="bottleneck 4"):  # 32 / 8 = 4 is not divisible by 8
        compacter.apply(model, compacter.CompacterConfig(n=8), TASKS)
    with pytest.raises(VLError, match="need the list of tasks"):
        hyperformer.apply(model, hyperformer.HyperformerConfig(), [])
    with pytest.raises(VLError, match="'vqa' is listed twice"):
        adapter.apply(model, adapter.AdapterConfig(sharing="multiple"), ["vqa", "vqa"])
    with pytest.raises(VLError, match="cannot name a module"):
        compacter.apply(model, compacter.CompacterConfig(sharing="multiple"), ["vqa.v2"])
    with pytest.raises(VLError) as info:  # every problem at once
        adapter.apply(model, adapter.AdapterConfig(reduction_factor=0, sharing="some", activation="gelu2"), TASKS)
    assert len(info.value.problems) == 3
    assert not any(hasattr(model, a) for a in ("adapters", "hyperformer", "compacter"))  # nothing half-applied
    adapter.apply(model, adapter.AdapterConfig(), TASKS)
    with pytest.raises(VLError, match="already has `adapters`"):
        compacter.apply(model, compacter.CompacterConfig(), TASKS)


def test_config_checks():
    assert adapter.AdapterConfig().check() == []
    assert hyperformer.HyperformerConfig().check() == []
    assert compacter.CompacterConfig().check() == []
    assert len(compacter.CompacterConfig(n=0, rank=0, sharing="half-shared", init="x").check()) == 4
    assert len(hyperformer.HyperformerConfig(projected_dim=0, init="x").check()) == 2
    assert set(adapter.ACTIVATIONS) <= set(ACT2FN)


# -- budgets on bart-base (d 768, 6 + 6 layers: 12 encoder sites, 18 decoder sites) ----------

D, B, LAYERS = 768, 768 // 8, 6
SITES = 2 * LAYERS + 3 * LAYERS  # 30
IMAGE_TASKS = ["vqa", "gqa", "nlvr2", "caption"]  # the paper's multi-task image setting
K = len(IMAGE_TASKS)
DOWN, UP = D * B + B, B * D + D  # one Linear each
PHM_DOWN = 2 * 2 * 2 + 2 * (D // 2) * (B // 2) + B  # n=2: rule n^3, W_i n x (d/n x b/n), bias
PHM_UP = 2 * 2 * 2 + 2 * (B // 2) * (D // 2) + D
E, HID, P = 512, 128, 8
HYPERNET = 2 * E * HID + HID + HID * P + P + 2 * P  # Linear, Linear, LayerNorm(8)
GENERATORS = (P * D * B + D * B) + (P * B + B) + (P * B * D + B * D) + (P * D + D)  # down w, b; up w, b
HYPERFORMER = K * E + 2 * (LAYERS * E + HYPERNET) + (2 + 3) * GENERATORS

# The reference's budget (vl-adapter-reference §2.7): BART 139,420,416 + 153,600 new token rows
# + its visual projection 1,582,848; trainable = method + all LayerNorms + visual projection.
REF_BASE, REF_VISUAL = 139_420_416 + 153_600, 1_582_848
BART_BASE_LAYER_NORMS = (2 * LAYERS + 3 * LAYERS + 2) * 2 * D  # + encoder/decoder layernorm_embedding

BUDGETS = [  # id, apply, config, added parameters, the paper's trainable % (image)
    ("adapter-single", adapter.apply, adapter.AdapterConfig(), SITES * (DOWN + UP), 4.18),
    ("adapter-multiple", adapter.apply, adapter.AdapterConfig(sharing="multiple"), K * SITES * (DOWN + UP), 12.22),
    ("adapter-half-shared", adapter.apply, adapter.AdapterConfig(sharing="half-shared"),
     SITES * DOWN * K + SITES * UP, 8.36),
    ("hyperformer", hyperformer.apply, hyperformer.HyperformerConfig(), HYPERFORMER, 5.79),
    ("compacter-single", compacter.apply, compacter.CompacterConfig(), SITES * (PHM_DOWN + PHM_UP), 2.70),
    ("compacter-multiple", compacter.apply, compacter.CompacterConfig(sharing="multiple"),
     K * SITES * (PHM_DOWN + PHM_UP), 7.05),
]


@pytest.fixture(scope="module")
def bart_base() -> VLModel:
    torch.manual_seed(0)
    return build_vl_model("bart-base", 2048, init="random")


def test_hand_counts():  # the figures the integrator checks the paper's shares against
    assert [b[3] for b in BUDGETS] == [4_449_600, 17_798_400, 11_093_760, 6_947_088, 2_238_240, 8_952_960]


@pytest.mark.parametrize("name,fn,cfg,added,paper_percent", BUDGETS, ids=[b[0] for b in BUDGETS])
def test_bart_base_budget(bart_base, name, fn, cfg, added, paper_percent):
    total = sum(p.numel() for p in bart_base.parameters())
    visual = sum(p.numel() for p in bart_base.visual_embedding.parameters())
    names = fn(bart_base, cfg, IMAGE_TASKS)
    try:
        attr = METHODS[name][3]
        assert len(getattr(bart_base, attr).hook_handles) == SITES
        assert sum(p.numel() for p in bart_base.parameters()) - total == added
        params = dict(bart_base.named_parameters())
        trainable = sum(params[n].numel() for n in names)
        assert trainable == added + visual + BART_BASE_LAYER_NORMS
        share = 100 * (added + BART_BASE_LAYER_NORMS + REF_VISUAL) / (REF_BASE + REF_VISUAL + added)
        assert round(share, 2) == paper_percent
    finally:
        detach(bart_base)
