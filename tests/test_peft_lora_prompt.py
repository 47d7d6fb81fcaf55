"""vl.train.peft.lora and .prompt on tiny T5/BART built here (no downloads), plus the
parameter budget of a bart-base-shaped model (shapes only, on the meta device)."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers.models.bart.modeling_bart import BartAttention
from transformers.models.t5.modeling_t5 import T5Attention

from vl.shared.errors import VLError
from conftest import tiny_vl_model
from vl.train.model import VLModel, build_vl_model, count_parameters
from vl.train.peft import LAYER_NORMS, visual_projection_names
from vl.train.peft.lora import LoRAConfig, LoRALinear, apply_lora, export_peft, lora_layers, merge_lora
from vl.train.peft.prompt import EncoderPrompt, PromptConfig, apply_prompt

FEAT = 12
KINDS = ["tiny-t5", "tiny-bart"]
TASKS = ["vqa", "gqa"]
SMALL_LORA = dict(rank=4, alpha=8.0)
SMALL_PROMPT = dict(length=3, mid_dim=16)
LABELS = torch.tensor([[5, 6, 7], [8, 9, -100]])


pytestmark = pytest.mark.usefixtures("one_torch_thread_module")


def fresh(kind: str) -> VLModel:
    return tiny_vl_model(kind, FEAT).eval()


def batch() -> dict:
    """Two rows: right-padded text (5 and 3 tokens), 4 and 2 visual tokens."""
    g = torch.Generator().manual_seed(0)
    text_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    vis_mask = torch.tensor([[True] * 4, [True, True, False, False]])
    return dict(input_ids=torch.randint(3, 128, (2, 5), generator=g) * text_mask, attention_mask=text_mask,
                visual_feats=torch.randn(2, 4, FEAT, generator=g) * vis_mask[..., None], visual_mask=vis_mask)


def logits(model: VLModel, task: str | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch(), labels=LABELS, task=task).logits


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def train_steps(model: VLModel, names: list[str], task: str | None = None, steps: int = 2) -> set[str]:
    """Freeze all, unfreeze `names` (the loop's rule), take optimizer steps on one task;
    returns the names of the parameters whose values changed. Two steps: LoRA's A only
    gets a gradient once B has left zero. Adam with a tiny eps moves every parameter with
    a nonzero gradient by about lr, however small the gradient (random-init BART's are
    ~1e-7 in the encoder)."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = dict(model.named_parameters())
    for n in names:
        params[n].requires_grad_(True)
    before = snapshot(model)
    opt = torch.optim.Adam([params[n] for n in names], lr=1e-2, eps=1e-12)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(**batch(), labels=LABELS, task=task).loss.backward()
        got_grad = {n for n, p in model.named_parameters() if p.grad is not None}
        opt.step()
    model.eval()
    assert got_grad <= set(names)  # nothing frozen even receives a gradient
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


def key_biases(model: VLModel) -> set[str]:
    """BART's k_proj biases: a constant shift of every attention logit of a query, which
    softmax ignores, so their gradient is zero (up to rounding) and they may not move."""
    return {f"{path}.k_proj.bias" for path, m in model.named_modules() if isinstance(m, BartAttention)}


# -- LoRA -------------------------------------------------------------------------------

@pytest.mark.parametrize("sharing", ["single", "multiple"])
@pytest.mark.parametrize("kind", KINDS)
def test_lora_wraps_query_and_value_of_every_attention_and_starts_as_identity(kind, sharing):
    model = fresh(kind)
    before = logits(model, "vqa")
    apply_lora(model, LoRAConfig(**SMALL_LORA, sharing=sharing), TASKS)
    wanted = ("q_proj", "v_proj") if kind == "tiny-bart" else ("q", "v")
    others = ("k_proj", "out_proj") if kind == "tiny-bart" else ("k", "o")
    attentions = [m for m in model.backbone.modules() if isinstance(m, (BartAttention, T5Attention))]
    assert len(attentions) == 6  # 2 encoder self + 2 decoder self + 2 decoder cross
    for attention in attentions:
        assert all(isinstance(getattr(attention, n), LoRALinear) for n in wanted)
        assert all(type(getattr(attention, n)) is nn.Linear for n in others)
    assert len(lora_layers(model)) == 12
    assert torch.equal(logits(model, "vqa"), before)  # B = 0


@pytest.mark.parametrize("kind", KINDS)
def test_lora_trains_exactly_its_parameters_biases_and_the_visual_projection(kind):
    model = fresh(kind)
    names = apply_lora(model, LoRAConfig(**SMALL_LORA), TASKS)
    lora = {f"{p}.lora_{ab}.shared.weight" for p in lora_layers(model) for ab in "AB"}
    biases = {f"{path}.bias" for path, m in model.backbone.named_modules()
              if isinstance(m, (nn.Linear, *LAYER_NORMS)) and getattr(m, "bias", None) is not None}
    want = lora | {f"backbone.{b}" for b in biases} | set(visual_projection_names(model))
    assert len(names) == len(set(names)) and set(names) == want
    assert len(biases) == (0 if kind == "tiny-t5" else 44)  # BART: 8 per encoder layer, 13 per decoder layer, 2
    changed = train_steps(model, names)
    assert changed <= set(names)
    assert set(names) - key_biases(model) <= changed
    without_biases = apply_lora(fresh(kind), LoRAConfig(**SMALL_LORA, train_biases=False), TASKS)
    assert set(without_biases) == lora | set(visual_projection_names(model))


@pytest.mark.parametrize("kind", KINDS)
def test_multiple_loras_route_each_task_to_its_own_pair(kind):
    model = fresh(kind)
    names = apply_lora(model, LoRAConfig(**SMALL_LORA, sharing="multiple"), TASKS)
    changed = train_steps(model, names, task="vqa")
    pairs = {task: {f"{p}.lora_{ab}.{task}.weight" for p in lora_layers(model) for ab in "AB"} for task in TASKS}
    assert pairs["vqa"] <= changed  # every A and B of vqa's
    assert not pairs["gqa"] & changed  # the other task's pairs got no gradient...
    params = dict(model.named_parameters())
    assert all(not params[n].any() for n in pairs["gqa"] if ".lora_B." in n)  # ...so gqa is still the identity
    assert not torch.allclose(logits(model, "vqa"), logits(model, "gqa"), atol=1e-4)
    with pytest.raises(VLError, match="no LoRA weights for task 'nlvr2'; this model has them for: gqa, vqa"):
        logits(model, "nlvr2")


def randomize_lora(model: VLModel) -> None:
    """What training would do: B away from zero (and BART's biases moved), so the update matters."""
    torch.manual_seed(1)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            for b in layer.lora_B.values():
                b.weight.normal_(std=0.5)
            if layer.base.bias is not None:
                layer.base.bias.normal_(std=0.1)


@pytest.mark.parametrize("kind", KINDS)
def test_merged_lora_computes_what_the_unmerged_one_does(kind):
    single = fresh(kind)
    apply_lora(single, LoRAConfig(**SMALL_LORA), TASKS)
    randomize_lora(single)
    unmerged = logits(single)
    assert not torch.allclose(unmerged, logits(fresh(kind)), atol=1e-4)
    assert len(merge_lora(single)) == 12
    assert not lora_layers(single)
    wrapped = ("q_proj", "v_proj") if kind == "tiny-bart" else ("q", "v")
    assert all(type(getattr(m, n)) is nn.Linear for m in single.backbone.modules()
               if isinstance(m, (BartAttention, T5Attention)) for n in wrapped)
    assert torch.allclose(logits(single), unmerged, atol=1e-5)

    multiple = fresh(kind)
    apply_lora(multiple, LoRAConfig(**SMALL_LORA, sharing="multiple"), TASKS)
    randomize_lora(multiple)
    unmerged = logits(multiple, "gqa")
    with pytest.raises(VLError, match="choose task= one of: gqa, vqa"):
        merge_lora(multiple)
    merge_lora(multiple, task="gqa")
    assert torch.allclose(logits(multiple), unmerged, atol=1e-5)


@pytest.mark.parametrize("sharing", ["single", "multiple"])
@pytest.mark.parametrize("kind", KINDS)
def test_exported_lora_loads_into_peft_and_computes_the_same(kind, sharing, tmp_path):
    peft = pytest.importorskip("peft")
    model = fresh(kind)
    base_copy = copy.deepcopy(model.backbone)  # what a user loads the export onto
    apply_lora(model, LoRAConfig(**SMALL_LORA, sharing=sharing), TASKS)
    randomize_lora(model)
    task = None if sharing == "single" else "gqa"
    out = export_peft(model, tmp_path / "lora", task=task)

    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 4, 8.0)
    assert config["target_modules"] == (["q_proj", "v_proj"] if kind == "tiny-bart" else ["q", "v"])
    assert config["bias"] == ("all" if kind == "tiny-bart" else "none")
    keys = load_file(out / "adapter_model.safetensors")
    first = ("base_model.model.model.encoder.layers.0.self_attn.q_proj" if kind == "tiny-bart"
             else "base_model.model.encoder.block.0.layer.0.SelfAttention.q")
    assert f"{first}.lora_A.weight" in keys and f"{first}.lora_B.weight" in keys

    loaded = peft.PeftModel.from_pretrained(base_copy, str(out)).eval()
    assert sum(isinstance(m, peft.tuners.lora.LoraLayer) for m in loaded.modules()) == 12
    with torch.no_grad():
        model.task_state.name = task
        embeds, mask = model.encoder_inputs(**batch())
        decoder_ids = model.backbone.prepare_decoder_input_ids_from_labels(labels=LABELS)
        ours = model.backbone(inputs_embeds=embeds, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        theirs = loaded(inputs_embeds=embeds, attention_mask=mask, decoder_input_ids=decoder_ids).logits
    assert not torch.allclose(ours, fresh(kind).backbone(inputs_embeds=embeds, attention_mask=mask,
                                                         decoder_input_ids=decoder_ids).logits, atol=1e-4)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_bad_lora_settings_name_the_fix():
    problems = LoRAConfig(rank=0, alpha=0, dropout=1.0, targets=("qproj",), sharing="half").check()
    (targets,) = [p for p in problems if "'qproj'" in p]
    assert len(problems) == 5 and "q_proj" in targets
    with pytest.raises(VLError, match=r"'q_proj' is not an attention projection of this t5 backbone.*q, k, v, o"):
        apply_lora(fresh("tiny-t5"), LoRAConfig(targets=("query", "q_proj")), TASKS)
    with pytest.raises(VLError, match="must be a list of names"):
        apply_lora(fresh("tiny-t5"), LoRAConfig(targets="query"), TASKS)
    with pytest.raises(VLError, match="need the list of tasks"):
        apply_lora(fresh("tiny-bart"), LoRAConfig(sharing="multiple"), [])
    with pytest.raises(VLError, match="'a.b'"):
        apply_lora(fresh("tiny-bart"), LoRAConfig(sharing="multiple"), ["a.b"])
    model = fresh("tiny-bart")
    apply_lora(model, LoRAConfig(**SMALL_LORA, targets=("value", "k_proj")), TASKS)
    assert {p.rpartition(".")[2] for p in lora_layers(model)} == {"k_proj", "v_proj"}
    with pytest.raises(VLError, match="already applied"):
        apply_lora(model, LoRAConfig(), TASKS)
    with pytest.raises(VLError, match="one LoRA shared by all tasks"):
        merge_lora(model, task="vqa")
    with pytest.raises(VLError, match="apply_lora first"):
        export_peft(fresh("tiny-bart"), "unused")


# -- prompt ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_prompt_is_prepended_with_a_mask_that_covers_it_and_changes_the_output(kind):
    model = fresh(kind)
    before = logits(model)
    names = apply_prompt(model, PromptConfig(**SMALL_PROMPT), TASKS)
    assert isinstance(model.encoder_prompt, EncoderPrompt)
    embeds, mask = model.encoder_inputs(**batch())
    assert embeds.shape == (2, 3 + 5 + 4, model.config.d_model)
    assert mask[:, :3].eq(1).all() and mask.sum(1).tolist() == [3 + 5 + 4, 3 + 3 + 2]
    assert torch.equal(embeds[:, :3], model.encoder_prompt.prompts["shared"]().expand(2, -1, -1))
    assert not torch.allclose(logits(model), before, atol=1e-4)
    calls = []
    model.encoder_prompt.register_forward_hook(lambda module, args, out: calls.append(out.shape))
    model.generate(**batch(), max_new_tokens=2)
    assert calls == [(2, 3, model.config.d_model)]  # generate's encoder pass sees the prompt too
    changed = train_steps(model, names)
    assert changed == set(names)
    assert not any(isinstance(m, LAYER_NORMS) for m in model.encoder_prompt.modules())


@pytest.mark.parametrize("kind", KINDS)
def test_multiple_prompts_route_each_task_to_its_own(kind):
    model = fresh(kind)
    names = apply_prompt(model, PromptConfig(**SMALL_PROMPT, sharing="multiple"), TASKS)
    prompts = {}
    for task in TASKS:
        model.task_state.name = task
        prompts[task] = model.encoder_inputs(**batch())[0][:, :3]
    assert torch.equal(prompts["vqa"], model.encoder_prompt.prompts["vqa"]().expand(2, -1, -1))
    assert not torch.allclose(prompts["vqa"], prompts["gqa"], atol=1e-4)
    # The prompts start small (std 0.02 weights, as the reference), so outputs differ a little.
    assert not torch.equal(logits(model, "vqa"), logits(model, "gqa"))
    gqa_before = logits(model, "gqa")
    changed = train_steps(model, names, task="vqa")
    vqa = {n for n in names if n.startswith("encoder_prompt.prompts.vqa.")}
    assert len(vqa) == 5 and vqa <= changed
    assert not any(n.startswith("encoder_prompt.prompts.gqa.") for n in changed)
    assert changed == vqa | set(visual_projection_names(model))
    assert not torch.allclose(logits(model, "gqa"), gqa_before, atol=1e-6)  # the visual projection trained
    with pytest.raises(VLError, match="no prompt for task 'nlvr2'"):
        logits(model, "nlvr2")


@pytest.mark.parametrize("kind", KINDS)
def test_a_prompt_without_reparameterisation_is_its_embedding(kind):
    model = fresh(kind)
    names = apply_prompt(model, PromptConfig(length=2, reparameterize=False), TASKS)
    prompt = model.encoder_prompt.prompts["shared"]
    assert prompt.mlp is None and torch.equal(prompt(), prompt.embedding.weight)
    assert [n for n in names if n.startswith("encoder_prompt.")] == ["encoder_prompt.prompts.shared.embedding.weight"]


def test_bad_prompt_settings_name_the_fix():
    assert len(PromptConfig(length=0, mid_dim=0, sharing="per-task").check()) == 3
    model = fresh("tiny-bart")
    with pytest.raises(VLError, match="BART's 256 positions"):
        apply_prompt(model, PromptConfig(length=256), TASKS)
    apply_prompt(model, PromptConfig(**SMALL_PROMPT), TASKS)
    with pytest.raises(VLError, match="already has an encoder prompt"):
        apply_prompt(model, PromptConfig(), TASKS)


# -- the paper's budget on bart-base (reference §2.7) -----------------------------------

@pytest.fixture(scope="module")
def bart_base() -> VLModel:
    with torch.device("meta"):  # shapes only: parameter counts need no memory or init time
        return build_vl_model("bart-base", 2048, init="random")


def numel(model: nn.Module, names) -> int:
    params = dict(model.named_parameters())
    return sum(params[n].numel() for n in names)


# The reference's denominator: BART-base 139,420,416 + 200 added token rows (153,600) +
# its visual projection (2048*768+768 Linear, LayerNorm 1536, Linear(5->768)+LayerNorm 5376,
# 2 image-order rows 1536 = 1,582,848: the size of ours, tests/test_vl_model.py).
REF_BASE, REF_VISUAL = 139_420_416 + 153_600, 1_582_848
D, R = 768, 128
LORA_SINGLE = 36 * (R * D + D * R)  # 6 enc self + 6 dec self + 6 dec cross attentions x (q, v)
# Every Linear and LayerNorm bias: encoder layer q,k,v,out (4*768), fc1 3072, fc2 768, 2 LNs;
# decoder layer 8 attention projections, fc1, fc2, 3 LNs; the two layernorm_embedding.
BART_BIASES = 6 * (4 * D + 3072 + D + 2 * D) + 6 * (8 * D + 3072 + D + 3 * D) + 2 * D
PROMPT_SINGLE = 40 * D + (D * 800 + 800) + (800 * D + D)  # Embedding(40, 768), Linear(768, 800), Linear(800, 768)


def share(trainable_added: int, added: int) -> float:
    """Percent trainable, the reference's formula, with its visual projection."""
    return round(100 * (trainable_added + REF_VISUAL) / (REF_BASE + REF_VISUAL + added), 2)


@pytest.mark.parametrize("sharing, tasks, paper", [("single", 1, 5.93), ("multiple", 4, 17.71)])
def test_lora_on_bart_base_has_the_papers_budget(bart_base, sharing, tasks, paper):
    model = bart_base
    total_before = count_parameters(model)[1]
    visual = set(visual_projection_names(model))
    names = apply_lora(model, LoRAConfig(sharing=sharing), [f"task{i}" for i in range(4)])
    try:
        assert len(lora_layers(model)) == 36
        added = count_parameters(model)[1] - total_before
        assert added == tasks * LORA_SINGLE == tasks * 7_077_888
        lora = {f"{path}.lora_{ab}.{key}.weight" for path, layer in lora_layers(model).items()
                for ab in "AB" for key in layer.lora_A}
        assert lora <= set(names) and numel(model, lora) == added
        biases = set(names) - set(lora) - visual
        assert numel(model, biases) == BART_BIASES == 125_952
        assert share(added + BART_BIASES, added) == paper
    finally:
        merge_lora(model, task=None if sharing == "single" else "task0")
    assert count_parameters(model)[1] == total_before


@pytest.mark.parametrize("sharing, tasks, paper", [("single", 1, 2.00), ("multiple", 4, 4.53)])
def test_prompts_on_bart_base_have_the_papers_budget(bart_base, sharing, tasks, paper):
    model = bart_base
    total_before = count_parameters(model)[1]
    names = apply_prompt(model, PromptConfig(sharing=sharing), [f"task{i}" for i in range(4)])
    try:
        added = count_parameters(model)[1] - total_before
        assert added == tasks * PROMPT_SINGLE == tasks * 1_261_088
        assert numel(model, set(names) - set(visual_projection_names(model))) == added
        assert share(added, added) == paper
    finally:
        model.encoder_prompt = None
