"""`optim.decay`: which trainable parameters AdamW decays (vl.train.weight_decay).

`reference` is checked against the reference's own rule, computed here independently:
trainer_base.py L418-420 / L474-483 put a parameter in the no-decay group when its name
contains "bias" or "LayerNorm.weight". Our parameter names are mapped to the names the
same parameter had in the reference's VL-BART / VL-T5 (REFERENCE_NAMES) and the rule is
applied to those; the two selections must be equal for every method."""
from __future__ import annotations

import re

import pytest
import torch

from vl.shared.config import config_from_dict
from vl.shared.errors import VLError
from vl.train import build, loop
from vl.train.config import OptimConfig, TrainConfig
from vl.train.model import build_vl_model

FEAT = 12
TASKS = ["vqa", "gqa"]
REFERENCE_NO_DECAY = ["bias", "LayerNorm.weight"]  # trainer_base.py L420


pytestmark = pytest.mark.usefixtures("one_torch_thread_module")


# -- our names -> the reference's ------------------------------------------------------------

KIND = {"self_attn": "self_attention", "cross_attn": "cross_attention", "ffn": "feed_forward"}
# the AdapterController attribute of each site in the reference's BART layers
CONTROLLER = {("encoder", "self_attn"): "attn_adapter", ("decoder", "self_attn"): "self_attn_adapter",
              ("decoder", "cross_attn"): "enc_attn_adapter", ("encoder", "ffn"): "ff_adapter",
              ("decoder", "ffn"): "ff_adapter"}
PHM = {"W": "W", "left": "W_left", "right": "W_right", "bias": "b", "rule.weight": "phm_rule"}  # hypercomplex/layers.py


def _site(m: re.Match, leaf: str) -> str:
    stack, layer, kind, side, task = m["stack"], m["layer"], m["kind"], m["side"], m["task"] or "vqa"
    return f"model.{stack}.layers.{layer}.{CONTROLLER[stack, kind]}.adapters.{task}.{side}_sampler.{leaf}"


SITE = r"(?P<stack>encoder|decoder)\.(?P<layer>\d+)\.(?P<kind>\w+)\.(?P<side>down|up)\.(?:(?P<task>vqa|gqa)\.)?"
# (our name, the reference's), the first full match wins; sources in VL-T5/src/
REFERENCE_NAMES = [
    # the backbone: transformers' own names in both (the reference's LoRALinearController is the
    # projection itself, with lora_As / lora_Bs ParameterDicts: lora/controller.py)
    (r"backbone\.(.*)\.base\.(weight|bias)", r"\1.\2"),
    (r"backbone\.(.*)\.lora_([AB])\.(\w+)\.weight", r"\1.lora_\2s.\3"),
    (r"backbone\.(.*)", r"\1"),
    # VisualEmbedding (modeling_bart.py L76-191): feat_embedding = [Linear, LayerNorm],
    # absolute_vis_pos_embedding = [Linear, LayerNorm], img_order_embedding
    (r"visual_embedding\.proj\.(\w+)", r"model.encoder.visual_embedding.feat_embedding.0.\1"),
    (r"visual_embedding\.norm\.(\w+)", r"model.encoder.visual_embedding.feat_embedding.1.\1"),
    (r"visual_embedding\.box\.(\w+)", r"model.encoder.visual_embedding.absolute_vis_pos_embedding.0.\1"),
    (r"visual_embedding\.box_norm\.(\w+)", r"model.encoder.visual_embedding.absolute_vis_pos_embedding.1.\1"),
    (r"visual_embedding\.image_order\.weight", r"model.encoder.visual_embedding.img_order_embedding.weight"),
    (r"visual_embedding\.(.*)", r"model.encoder.visual_embedding.\1"),  # parts added later: named alike
    # adapters (adapter_controller.py, adapter_modeling.py Adapter: down_sampler, up_sampler)
    (r"adapters\." + SITE + r"(?P<leaf>weight|bias)", lambda m: _site(m, m["leaf"])),
    # compacter (adapter_modeling.py HyperComplexAdapter of PHMLinear; VLBart.phm_rule when shared)
    (r"compacter\." + SITE + r"(?P<leaf>W|left|right|bias|rule\.weight)", lambda m: _site(m, PHM[m["leaf"]])),
    (r"compacter\.phm_rule\.weight", r"phm_rule"),
    # hyperformer (adapter_hypernetwork.py AdapterLayersHyperNetController, adapter_utils.py)
    (r"hyperformer\.task_embeddings\.(\w+)", r"model.shared_task_embed.task_to_embeddings.\1"),
    (r"hyperformer\.(\w+)\.layer_embedding\.weight", r"model.\1.adapter_layers_hyper_net.layer_id_embeddings.weight"),
    (r"hyperformer\.(\w+)\.task_hypernet\.([02])\.(\w+)",
     r"model.\1.adapter_layers_hyper_net.task_hypernet.task_embeding_generator.\2.\3"),
    (r"hyperformer\.(\w+)\.task_hypernet\.3\.(\w+)", r"model.\1.adapter_layers_hyper_net.LayerNorm.\2"),
    (r"hyperformer\.(?P<stack>\w+)\.generators\.(?P<kind>\w+)\.(?P<side>down|up)_(?P<what>weight|bias)\.(?P<leaf>\w+)",
     lambda m: f"model.{m['stack']}.adapter_layers_hyper_net.{KIND[m['kind']]}_{m['side']}_sampler_hyper_net."
               f"{m['what']}_generator.0.{m['leaf']}"),
    # prompts (prompt_modeling.py InputPrompts.prefix_embedding = [Embedding, Linear, Tanh, Linear])
    (r"encoder_prompt\.prompts\.(\w+)\.embedding\.weight", r"model.encoder.prompt_modules.prompts.\1.prefix_embedding.0.weight"),
    (r"encoder_prompt\.prompts\.(\w+)\.mlp\.0\.(\w+)", r"model.encoder.prompt_modules.prompts.\1.prefix_embedding.1.\2"),
    (r"encoder_prompt\.prompts\.(\w+)\.mlp\.2\.(\w+)", r"model.encoder.prompt_modules.prompts.\1.prefix_embedding.3.\2"),
]


def reference_name(name: str) -> str:
    for pattern, repl in REFERENCE_NAMES:
        m = re.fullmatch(pattern, name)
        if m:
            return repl(m) if callable(repl) else m.expand(repl)
    raise AssertionError(f"no reference name for our parameter {name!r}: add it to REFERENCE_NAMES")


def test_name_mapping_examples():
    assert reference_name("hyperformer.decoder.generators.cross_attn.up_bias.weight") == \
        "model.decoder.adapter_layers_hyper_net.cross_attention_up_sampler_hyper_net.bias_generator.0.weight"
    assert reference_name("compacter.encoder.1.ffn.down.gqa.bias") == \
        "model.encoder.layers.1.ff_adapter.adapters.gqa.down_sampler.b"
    assert reference_name("backbone.model.encoder.layers.0.self_attn.q_proj.lora_A.vqa.weight") == \
        "model.encoder.layers.0.self_attn.q_proj.lora_As.vqa"


# -- the two rules over every method ---------------------------------------------------------------

def groups(kind: str, method: str, decay: str, **sections) -> tuple[list[str], set[str], set[str]]:
    """(trainable names, decayed, not decayed) of `method` on a tiny model, through the loop's
    own set_trainable and build_optimizer."""
    torch.manual_seed(0)
    model = build_vl_model(kind, FEAT, init="random")
    cfg = TrainConfig(method=method, optim=OptimConfig(decay=decay, weight_decay=0.01))
    for section, settings in sections.items():
        for key, value in settings.items():
            setattr(getattr(cfg, section), key, value)
    names = build.set_trainable(model, cfg, TASKS)
    optimizer = loop.build_optimizer(model, cfg)
    by_id = {id(p): n for n, p in model.named_parameters()}
    found = {g["weight_decay"]: [by_id[id(p)] for p in g["params"]] for g in optimizer.param_groups}
    decayed, plain = found.get(0.01, []), found.get(0.0, [])
    assert len(decayed) + len(plain) == len(names) == len(set(decayed) | set(plain))  # each trainable one, once
    return names, set(decayed), set(plain)


CASES = [  # (backbone, method, section settings)
    ("tiny-bart", "full", {}),
    ("tiny-bart", "visual+ln", {}),
    ("tiny-bart", "adapter", {"adapter": {"sharing": "single"}}),
    ("tiny-bart", "adapter", {"adapter": {"sharing": "half-shared"}}),
    ("tiny-bart", "hyperformer", {}),
    ("tiny-bart", "compacter", {"compacter": {"sharing": "multiple"}}),
    ("tiny-bart", "compacter", {"compacter": {"shared_rule": True, "low_rank": True}}),
    ("tiny-bart", "lora", {"lora": {"sharing": "multiple"}}),
    ("tiny-bart", "prompt", {"prompt": {"sharing": "multiple"}}),
    ("tiny-bart", "adapter+prompt", {}),
    ("tiny-t5", "full", {}),
    ("tiny-t5", "hyperformer", {}),
]


@pytest.mark.parametrize("kind,method,sections", CASES,
                         ids=[f"{k}-{m}-{'-'.join(str(v) for s in c.values() for v in s.values())}"
                              for k, m, c in CASES])
def test_reference_decay_selects_what_the_reference_name_rule_selected(kind, method, sections):
    names, decayed, plain = groups(kind, method, "reference", **sections)
    want_plain = {n for n in names if any(entry in reference_name(n) for entry in REFERENCE_NO_DECAY)}
    assert plain == want_plain, (sorted(plain - want_plain), sorted(want_plain - plain))
    assert decayed == set(names) - want_plain


def test_reference_decay_exceptions_are_where_the_reference_names_put_them():
    """The cases where 'every trainable parameter but the biases' is not what the reference did."""
    _, decayed, plain = groups("tiny-bart", "hyperformer", "reference")
    assert "hyperformer.encoder.generators.ffn.down_bias.weight" in plain  # `bias_generator.0.weight`
    assert "hyperformer.encoder.task_hypernet.3.weight" in plain  # `adapter_layers_hyper_net.LayerNorm.weight`
    assert "hyperformer.encoder.generators.ffn.down_weight.weight" in decayed
    assert "hyperformer.task_embeddings.vqa" in decayed
    assert "backbone.model.encoder.layers.0.final_layer_norm.weight" in decayed  # `final_layer_norm.weight`
    _, decayed, plain = groups("tiny-bart", "compacter", "reference")
    assert "compacter.encoder.0.ffn.down.bias" in decayed  # PHMLinear's `b`
    assert "compacter.encoder.0.ffn.down.W" in decayed and "compacter.encoder.0.ffn.down.rule.weight" in decayed
    _, decayed, plain = groups("tiny-t5", "full", "reference")
    assert "backbone.encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight" in plain
    assert "backbone.encoder.block.0.layer.0.layer_norm.weight" in decayed


@pytest.mark.parametrize("method,sections", [
    ("adapter", {"adapter": {"sharing": "multiple"}}),
    ("hyperformer", {}),
    ("compacter", {"compacter": {"shared_rule": True}}),
    ("prompt", {}),
])
def test_standard_decay_is_linear_and_embedding_weights(method, sections):
    names, decayed, plain = groups("tiny-bart", method, "standard", **sections)

    def is_linear_or_embedding_weight(name: str) -> bool:  # by our names, written out
        if not name.endswith(".weight") or name.startswith("compacter."):  # PHM factors, rules: bare tensors
            return False
        return not re.search(r"norm|layer_norm|layernorm_embedding|task_hypernet\.3\.", name)

    want = {n for n in names if is_linear_or_embedding_weight(n)}
    assert decayed == want, (sorted(decayed - want), sorted(want - decayed))
    assert plain == set(names) - want
    assert any(".bias" in n for n in plain) and any("norm" in n for n in plain)


def test_the_two_rules_differ_where_the_reference_decayed_more():
    names, standard, _ = groups("tiny-bart", "compacter", "standard")
    _, reference, _ = groups("tiny-bart", "compacter", "reference")
    assert standard < reference
    gained = reference - standard
    assert "backbone.model.encoder.layernorm_embedding.weight" in gained and "compacter.encoder.0.ffn.up.W" in gained
    assert not any(n.endswith(".bias") and not n.startswith("compacter.") for n in gained)


def test_decay_setting():
    saved_before = {"lr": 1e-3, "weight_decay": 0.01, "warmup_ratio": 0.1}  # a config.json without the setting
    assert config_from_dict(OptimConfig, saved_before).decay == "standard"  # decays as before
    assert config_from_dict(OptimConfig, {"decay": "reference"}).decay == "reference"
    with pytest.raises(VLError) as e:  # the loader checks the field's Literal type
        config_from_dict(OptimConfig, {"decay": "paper"}, source="run.yaml")
    assert e.value.problems == ["run.yaml: decay: expected one of 'standard', 'reference', got 'paper' (str)"]
    assert OptimConfig(decay="paper").check() == ["decay: expected one of 'standard', 'reference', got 'paper' (str)"]
