"""visual_inputs="reference": the encoder input of the reference code, checked against
computations made here from the backbone's own modules (not by re-running VLModel)."""
from __future__ import annotations

import copy

import pytest
import torch

from vl.shared.errors import VLError
from vl.train.model import VLModel, build_vl_model, within_image_positions
from vl.train.peft.prompt import PromptConfig, apply_prompt

FEAT, VOCAB, VIS_IDS = 12, 140, list(range(130, 140))  # <vis_extra_id_0..9> as the last ten rows


pytestmark = pytest.mark.usefixtures("one_torch_thread_module")


def reference_model(kind: str, **kwargs) -> VLModel:
    torch.manual_seed(0)
    return build_vl_model(kind, FEAT, init="random", vocab_size=VOCAB, visual_inputs="reference",
                          object_order_ids=VIS_IDS, **kwargs).eval()


def inputs(seed: int = 0, image_ids: torch.Tensor | None = None) -> dict:
    """Two rows: 5 and 3 real text tokens (right-padded), 4 visual tokens each."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (2, 5), generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    out = dict(input_ids=ids * mask + (1 - mask), attention_mask=mask, visual_feats=torch.randn(2, 4, FEAT, generator=g),
               visual_mask=torch.ones(2, 4, dtype=torch.bool))
    if image_ids is not None:
        out["image_ids"] = image_ids
    return out


def first_layer_input(model: VLModel, batch: dict) -> torch.Tensor:
    """The hidden states the encoder's first layer receives (eval mode: dropout is off)."""
    seen = {}

    def grab(module, args, kwargs):
        seen["x"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

    encoder = model.backbone.get_encoder()
    first = encoder.layers[0] if hasattr(encoder, "layers") else encoder.block[0]
    handle = first.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**batch, labels=torch.tensor([[5, 6], [7, 8]]))
    finally:
        handle.remove()
    return seen["x"]


def expected_visual_rows(model: VLModel, batch: dict) -> torch.Tensor:
    """Norm(Linear(feats)) + Norm(Linear(zero box)) + image order + word embedding of <vis_extra_id_k>."""
    ve, words = model.visual_embedding, model.backbone.get_input_embeddings().weight
    image_ids = batch.get("image_ids", torch.zeros(2, 4, dtype=torch.long))
    k = within_image_positions(image_ids, 2)
    order = words[torch.tensor(VIS_IDS)[k]]  # (B, V, d)
    zero_box = ve.box_norm(ve.box(torch.zeros(5)))  # (d,): the learned constant of zero boxes
    return ve.norm(ve.proj(batch["visual_feats"])) + zero_box + ve.image_order(image_ids) + order


def test_bart_text_gets_positions_0_to_L_and_the_embedding_norm_visual_neither():
    model = reference_model("tiny-bart")
    batch = inputs(image_ids=torch.tensor([[0, 0, 1, 1], [0, 1, 0, 1]]))
    x = first_layer_input(model, batch)  # (B, L + V, d): [text padded to L = 5, visual]
    encoder = model.backbone.get_encoder()
    with torch.no_grad():
        text = encoder.embed_tokens(batch["input_ids"])  # scaled by the module itself (1.0 here)
        positions = encoder.embed_positions.weight[2:7]  # BART's positions 0..4 sit at rows offset by 2
        want_text = encoder.layernorm_embedding(text + positions)
        want_visual = expected_visual_rows(model, batch)
    assert x.shape == (2, 9, model.config.d_model)
    torch.testing.assert_close(x[:, :5], want_text, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x[:, 5:], want_visual, rtol=1e-5, atol=1e-5)


def test_bart_visual_rows_ignore_position_and_norm_weights():
    model = reference_model("tiny-bart")
    batch = inputs()
    before = first_layer_input(model, batch)
    encoder = model.backbone.get_encoder()
    with torch.no_grad():
        encoder.embed_positions.weight.add_(torch.randn_like(encoder.embed_positions.weight))
        encoder.layernorm_embedding.weight.mul_(3.0)
        encoder.layernorm_embedding.bias.add_(1.0)
    after = first_layer_input(model, batch)
    torch.testing.assert_close(after[:, 5:], before[:, 5:], rtol=0, atol=0)  # visual rows: untouched
    assert not torch.allclose(after[:, :5], before[:, :5])  # text rows do see them


def test_packed_bart_visual_rows_do_see_position_and_norm_weights():
    """The contrast that makes the test above able to fail: packed inputs normalise everything."""
    torch.manual_seed(0)
    model = build_vl_model("tiny-bart", FEAT, init="random").eval()
    batch = inputs()
    before = first_layer_input(model, batch)
    with torch.no_grad():
        model.backbone.get_encoder().layernorm_embedding.bias.add_(1.0)
    assert not torch.allclose(first_layer_input(model, batch)[0, 5:], before[0, 5:])


def test_bart_prompt_rows_get_the_norm_but_no_position():
    model = reference_model("tiny-bart")
    apply_prompt(model, PromptConfig(length=3, mid_dim=8), ["vqa"])
    model.eval()
    batch = inputs()
    x = first_layer_input(model, batch)  # [prompt 3, text 5, visual 4]
    encoder = model.backbone.get_encoder()
    with torch.no_grad():
        prompt = model.encoder_prompt(2)
        text = encoder.embed_tokens(batch["input_ids"]) + encoder.embed_positions.weight[2:7]
        want = encoder.layernorm_embedding(torch.cat([prompt, text], dim=1))
    torch.testing.assert_close(x[:, :8], want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x[:, 8:], expected_visual_rows(model, batch), rtol=1e-5, atol=1e-5)


def test_t5_relative_bias_is_zero_for_every_pair_with_a_visual_token():
    model = reference_model("tiny-t5")
    seen = {}

    def grab(module, args):
        seen["bias"] = args[2].detach()  # T5Block(hidden, mask, position_bias, ...): layer 0's bias

    handle = model.backbone.get_encoder().block[1].register_forward_pre_hook(grab)
    with torch.no_grad():
        model(**inputs(), labels=torch.tensor([[5, 6], [7, 8]]))
    handle.remove()
    bias = seen["bias"][0]  # (heads, 9, 9)
    attention = model.backbone.get_encoder().block[0].layer[0].SelfAttention
    with torch.no_grad():
        text_bias = attention.compute_bias(5, 5)[0]  # (heads, 5, 5), no layout set: the plain table
    torch.testing.assert_close(bias[:, :5, :5], text_bias)
    assert bias[:, :5, 5:].abs().max() == 0 and bias[:, 5:, :].abs().max() == 0
    assert text_bias.abs().max() > 0  # the check above is not trivially true


def test_visual_rows_add_the_word_embedding_of_vis_extra_id_k():
    model = reference_model("tiny-t5")
    batch = inputs(image_ids=torch.tensor([[0, 0, 1, 1], [0, 0, 0, 0]]))
    with torch.no_grad():
        embeds, mask = model.encoder_inputs(**batch)
        torch.testing.assert_close(embeds[:, 5:], expected_visual_rows(model, batch))
    assert mask.tolist() == [[1] * 9, [1, 1, 1, 0, 0, 1, 1, 1, 1]]  # [text padded to 5, visual]
    # the object order is a row of the shared word embedding: it moves with that row alone
    with torch.no_grad():
        model.backbone.get_input_embeddings().weight[VIS_IDS[1]] += 1.0
        moved = model.encoder_inputs(**batch)[0][:, 5:] - embeds[:, 5:]  # (B, 4, d)
    k = within_image_positions(batch["image_ids"], 2)
    assert torch.allclose(moved[k == 1], torch.ones_like(moved[k == 1]))
    assert moved[k != 1].abs().max() == 0


@pytest.mark.parametrize("kind", ["tiny-t5", "tiny-bart"])
def test_reference_outputs_do_not_depend_on_text_padding(kind):
    """Text positions count over the padded text, and visual tokens have no position: adding a
    padded column leaves every real output the same (BART: visual rows have no position)."""
    model = reference_model(kind)
    batch = inputs()
    wider = dict(batch, input_ids=torch.cat([batch["input_ids"], torch.ones(2, 2, dtype=torch.long)], 1),
                 attention_mask=torch.cat([batch["attention_mask"], torch.zeros(2, 2, dtype=torch.long)], 1))
    with torch.no_grad():
        a = model(**batch, labels=torch.tensor([[5, 6], [7, 8]])).logits
        b = model(**wider, labels=torch.tensor([[5, 6], [7, 8]])).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def first_layer_hook(model: VLModel, seen: dict):
    def grab(module, args, kwargs):
        seen["x"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

    return model.backbone.get_encoder().layers[0].register_forward_pre_hook(grab, with_kwargs=True)


def test_hooks_are_inert_outside_the_model_and_survive_a_deep_copy():
    model = reference_model("tiny-bart")
    encoder = model.backbone.get_encoder()
    ids = torch.randint(3, 100, (1, 4))
    seen = {}
    handle = first_layer_hook(model, seen)
    with torch.no_grad():  # the backbone used directly: plain BART, positions and norm on every token
        encoder(input_ids=ids)
        want = encoder.layernorm_embedding(encoder.embed_tokens(ids) + encoder.embed_positions.weight[2:6])
    handle.remove()
    torch.testing.assert_close(seen["x"], want)
    twin = copy.deepcopy(model)
    batch = inputs()
    with torch.no_grad():
        twin.backbone.get_encoder().layernorm_embedding.bias.add_(1.0)  # the copy's hooks act on the copy
    torch.testing.assert_close(first_layer_input(twin, batch)[:, 5:], first_layer_input(model, batch)[:, 5:])
    assert not torch.allclose(first_layer_input(twin, batch)[:, :5], first_layer_input(model, batch)[:, :5])


def test_generate_encodes_the_reference_layout():
    model = reference_model("tiny-bart")
    batch = inputs()
    seen = {}
    handle = first_layer_hook(model, seen)
    out = model.generate(**batch, max_new_tokens=3, num_beams=2)
    handle.remove()
    assert out.shape[0] == 2
    torch.testing.assert_close(seen["x"], first_layer_input(model, batch))


def test_reference_inputs_need_vis_extra_ids():
    torch.manual_seed(0)
    with pytest.raises(VLError, match="extra_tokens: 200"):
        build_vl_model("tiny-t5", FEAT, init="random", visual_inputs="reference")
    model = reference_model("tiny-t5")
    model.object_order_ids = model.object_order_ids[:2]  # two tokens known, four asked for
    with pytest.raises(ValueError, match="set extra_tokens to at least 8"):
        model.encoder_inputs(**inputs())
    with pytest.raises(VLError, match="visual_inputs must be one of"):
        model.set_visual_inputs("sideways")


def test_zero_or_grid_boxes():
    model = reference_model("tiny-t5")
    batch = inputs()
    with torch.no_grad():
        zero = model.encoder_inputs(**batch)[0]
        model.set_visual_inputs("reference", "grid", VIS_IDS)
        grid = model.encoder_inputs(**batch)[0]
    torch.testing.assert_close(zero[:, :5], grid[:, :5])
    assert not torch.allclose(zero[:, 5:], grid[:, 5:])
    assert model.visual_boxes == "grid"


def test_reference_bart_visual_embedding_starts_as_bart_init_weights():
    model = reference_model("tiny-bart")
    ve = model.visual_embedding
    for layer in (ve.proj, ve.box):
        assert layer.bias.abs().max() == 0
    assert abs(ve.proj.weight.std().item() - 0.02) < 0.006
    assert abs(ve.image_order.weight.std().item() - 0.02) < 0.01
