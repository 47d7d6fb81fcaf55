"""vl.train.model: VL-T5 / VL-BART on tiny backbones built here (no downloads)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import BartConfig, BartForConditionalGeneration
from transformers.models.t5.modeling_t5 import T5LayerNorm

from vl.shared.errors import VLError
from vl.train.model import (
    BACKBONE_SHAPES,
    VLModel,
    build_backbone,
    build_vl_model,
    count_parameters,
    pool_grid,
    VisualEmbedding,
    token_boxes,
    within_image_positions,
)

FEAT = 12  # visual feature size of the fake CLIP features
KINDS = ["tiny-t5", "tiny-bart"]


pytestmark = pytest.mark.usefixtures("one_torch_thread_module")


@pytest.fixture(scope="module", params=KINDS)
def model(request) -> VLModel:
    torch.manual_seed(0)
    return build_vl_model(request.param, FEAT, init="random").eval()


def batch(seed: int = 0, text_lens=(5, 3), vis_lens=(4, 2), vis_len: int = 4, vocab: int = 128) -> dict:
    """Right-padded text ids and zero-padded visual features with their masks."""
    g = torch.Generator().manual_seed(seed)
    b, text_len = len(text_lens), max(text_lens)
    ids = torch.randint(3, vocab, (b, text_len), generator=g)
    text_mask = (torch.arange(text_len) < torch.tensor(text_lens)[:, None]).long()
    ids = ids * text_mask  # padding id 0: masked anyway
    feats = torch.randn(b, vis_len, FEAT, generator=g)
    vis_mask = torch.arange(vis_len) < torch.tensor(vis_lens)[:, None]
    return dict(input_ids=ids, attention_mask=text_mask, visual_feats=feats * vis_mask[..., None], visual_mask=vis_mask)


LABELS = torch.tensor([[5, 6, 7], [8, 9, -100]])


def logits(model: VLModel, **inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs, labels=LABELS[: inputs["input_ids"].shape[0]]).logits


def test_forward_gives_a_finite_loss_and_logits(model):
    out = model(**batch(), labels=LABELS)
    assert torch.isfinite(out.loss)
    assert out.logits.shape == (2, 3, model.config.vocab_size)
    out.loss.backward()  # gradients reach the visual projection through inputs_embeds
    assert model.visual_embedding.proj.weight.grad.abs().sum() > 0
    model.zero_grad()


def test_visual_norm_follows_the_backbone(model):
    norm = model.visual_embedding.norm
    assert isinstance(norm, T5LayerNorm if model.config.model_type == "t5" else nn.LayerNorm)


def test_visual_features_change_the_output(model):
    a, b = batch(), batch()
    b["visual_feats"] = b["visual_feats"] + torch.randn_like(b["visual_feats"]) * b["visual_mask"][..., None]
    assert not torch.allclose(logits(model, **a), logits(model, **b), atol=1e-4)


def test_padded_visual_tokens_do_not_change_the_output(model):
    short = batch(vis_len=4)  # row 1 has 2 padded tokens (zeros)
    long = batch(vis_len=4)
    pad = torch.randn(2, 3, FEAT) * 100  # 3 more padded tokens with wild values
    long["visual_feats"] = torch.cat([long["visual_feats"] + 50 * ~long["visual_mask"][..., None], pad], 1)
    long["visual_mask"] = torch.cat([long["visual_mask"], torch.zeros(2, 3, dtype=torch.bool)], 1)
    assert torch.allclose(logits(model, **short), logits(model, **long), atol=1e-5)
    # ... and the mask is what hides them: unmasked, the same padding does change the output.
    long["visual_mask"] = torch.ones_like(long["visual_mask"])
    assert not torch.allclose(logits(model, **short), logits(model, **long), atol=1e-4)


def test_an_example_gives_the_same_output_alone_or_padded_in_a_batch(model):
    # Row 0 of `pair` is `alone` with its text padded by 3: packing [text, visual, padding]
    # keeps its positions (BART) and relative distances (T5) unchanged.
    pair = batch(text_lens=(2, 5), vis_lens=(3, 4))
    alone = dict(input_ids=pair["input_ids"][:1, :2], attention_mask=pair["attention_mask"][:1, :2],
                 visual_feats=pair["visual_feats"][:1, :3], visual_mask=pair["visual_mask"][:1, :3])
    assert torch.allclose(logits(model, **alone), logits(model, **pair)[:1], atol=1e-5)


@pytest.mark.parametrize("kind", KINDS + ["tiny-bart-scaled"])
def test_with_every_visual_token_masked_it_is_the_text_only_backbone(kind):
    # Checks the text path: the backbone's own (scaled, for BART with scale_embedding) token
    # embedding, the mask, and text before visual.
    torch.manual_seed(0)
    if kind == "tiny-bart-scaled":
        backbone = BartForConditionalGeneration(BartConfig(**{**BACKBONE_SHAPES["tiny-bart"].config,
                                                               "scale_embedding": True})).eval()
        assert backbone.get_input_embeddings().embed_scale == math.sqrt(32)
    else:
        backbone = build_backbone(kind, init="random")
    vl = VLModel(backbone, FEAT).eval()
    inputs = batch()
    inputs["visual_mask"] = torch.zeros_like(inputs["visual_mask"])
    with torch.no_grad():
        text_only = backbone(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                             labels=LABELS).logits
    assert torch.allclose(logits(vl, **inputs), text_only, atol=1e-5)


def test_image_ids_change_the_output(model):
    inputs = batch(vis_lens=(4, 4))
    two_images = dict(inputs, image_ids=torch.tensor([[0, 0, 1, 1]] * 2))
    assert not torch.allclose(logits(model, **inputs), logits(model, **two_images), atol=1e-5)
    with pytest.raises(ValueError, match=r"image_ids must lie in \[0, 2\)"):
        logits(model, **dict(inputs, image_ids=torch.full((2, 4), 2)))


def test_visual_positions_count_within_each_image():
    ids = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 0, 1, 0]])
    assert within_image_positions(ids, 2).tolist() == [[0, 1, 0, 1, 2], [0, 0, 1, 1, 2]]


def test_token_boxes_are_grid_cells_or_video_spans():
    grid = token_boxes(torch.arange(4)[None], torch.full((1, 4), 4))[0]  # a 2x2 grid, row-major
    assert grid.tolist() == [[0, 0, .5, .5, .25], [.5, 0, 1, .5, .25], [0, .5, .5, 1, .25], [.5, .5, 1, 1, .25]]
    frames = token_boxes(torch.arange(3)[None], torch.full((1, 3), 3))[0]  # three frames: spans of the video
    torch.testing.assert_close(frames, torch.tensor([[0, 0, 1 / 3, 1, 1 / 3], [1 / 3, 0, 2 / 3, 1, 1 / 3],
                                                     [2 / 3, 0, 1, 1, 1 / 3]]))
    assert token_boxes(torch.zeros(1, 1), torch.ones(1, 1))[0].tolist() == [[0, 0, 1, 1, 1]]  # one pooled vector


def test_the_visual_embedding_has_the_reference_parameter_count():
    """VL-BART's visual embedding for RN101 grids (2048-d) on bart-base: feat Linear + LN,
    box Linear(5) + LN, 2 image-order rows = 1,582,848 (reference section 2.7); 512-d video: 403,200."""
    count = lambda feat: sum(p.numel() for p in VisualEmbedding(feat, 768).parameters())  # noqa: E731
    assert (count(2048), count(512)) == (1_582_848, 403_200)


def test_generate_decodes_deterministically_and_agrees_with_forward(model):
    inputs = batch()
    kw = dict(max_new_tokens=4, min_new_tokens=4)
    out = model.generate(**inputs, **kw)
    assert out.shape == (2, 5) and out.dtype == torch.long
    assert torch.equal(out, model.generate(**inputs, **kw))
    assert (out[:, 0] == model.config.decoder_start_token_id).all()
    # Greedy decoding = argmax of the teacher-forced logits (EOS aside: min_new_tokens bans
    # it, and BART forces it at the last step), so generate sees the same encoder input.
    with torch.no_grad():
        step_logits = model(**inputs, decoder_input_ids=out[:, :-1]).logits
    step_logits[..., model.config.eos_token_id] = -math.inf
    assert torch.equal(step_logits.argmax(-1)[:, :-1], out[:, 1:-1])
    beams = model.generate(**inputs, num_beams=2, **kw)
    assert beams.shape == (2, 5)


def test_left_padded_text_and_bad_shapes_are_refused(model):
    inputs = batch()
    with pytest.raises(ValueError, match="right-padded"):
        logits(model, **dict(inputs, attention_mask=inputs["attention_mask"].flip(1)))
    with pytest.raises(ValueError, match=f"tokens, {FEAT}"):
        logits(model, **dict(inputs, visual_feats=torch.randn(2, 4, FEAT + 1)))
    with pytest.raises(ValueError, match="labels .* or decoder_input_ids"):
        model(**inputs)


@pytest.mark.parametrize("kind", KINDS)
def test_a_saved_backbone_loads_from_its_directory(kind, tmp_path):
    torch.manual_seed(0)
    saved = build_backbone(kind, init="random")
    saved.save_pretrained(tmp_path / kind)
    loaded = build_backbone(str(tmp_path / kind))
    assert type(loaded) is type(saved)
    want, have = saved.state_dict(), loaded.state_dict()
    assert want.keys() == have.keys() and all(torch.equal(want[k], have[k]) for k in want)
    assert not loaded.training  # eval mode, however it was made
    # A larger vocabulary (task tokens added to the tokenizer) resizes embeddings and LM head.
    bigger = build_backbone(str(tmp_path / kind), vocab_size=140)
    assert bigger.get_input_embeddings().num_embeddings == 140
    assert bigger.get_output_embeddings().weight.shape[0] == 140
    # init="random" reads only the architecture from the directory.
    fresh = build_backbone(str(tmp_path / kind), init="random", vocab_size=136)
    assert fresh.get_input_embeddings().num_embeddings == 136 and fresh.config.d_model == saved.config.d_model


def test_pool_grid_is_a_max_over_the_adaptive_windows():
    feats = torch.randn(2, 49, 3)  # a 7x7 grid, row-major, as CLIP RN101 at 224 px
    pooled = pool_grid(feats, 6)
    assert pooled.shape == (2, 36, 3)
    grid = feats.view(2, 7, 7, 3)
    for r in range(6):
        for c in range(6):  # adaptive pooling window: [floor(i*7/6), ceil((i+1)*7/6))
            rows = slice(r * 7 // 6, -(-(r + 1) * 7 // 6))
            cols = slice(c * 7 // 6, -(-(c + 1) * 7 // 6))
            want = grid[:, rows, cols].amax(dim=(1, 2))
            assert torch.equal(pooled[:, r * 6 + c], want)
    assert torch.equal(pool_grid(feats, 7), feats)
    with pytest.raises(ValueError, match="50 is not a perfect square"):
        pool_grid(torch.randn(1, 50, 3), 6)
    with pytest.raises(ValueError, match="1 <= size <= 7"):
        pool_grid(feats, 8)


def test_unknown_backbones_and_inits_say_what_to_use():
    with pytest.raises(VLError) as e:
        build_backbone("bart-bsae", init="random")
    assert all(name in str(e.value) for name in BACKBONE_SHAPES)
    with pytest.raises(VLError, match="not found"):
        build_backbone("./no/such/dir")
    with pytest.raises(VLError, match="choose one of: pretrained, random"):
        build_backbone("tiny-t5", init="zeros")
    with pytest.raises(VLError, match="init='random'"):
        build_backbone("tiny-t5")  # test-only shape: no pretrained weights


# Published parameter counts of the real checkpoints (bart-base: the reference's constant).
REAL_COUNTS = {"t5-small": 60_506_624, "t5-base": 222_903_552, "bart-large": 406_291_456}


@pytest.mark.parametrize("name", sorted(REAL_COUNTS))
def test_built_in_shapes_have_the_real_parameter_counts(name):
    with torch.device("meta"):  # shapes only: no memory, no init time
        backbone = build_backbone(name, init="random")
    assert count_parameters(backbone) == (REAL_COUNTS[name], REAL_COUNTS[name])


def test_bart_base_has_139m_parameters_and_the_visual_embedding_adds_its_own():
    torch.manual_seed(0)
    backbone = build_backbone("bart-base", init="random")  # real tensors, ~3 s: the one big build
    assert count_parameters(backbone) == (139_420_416, 139_420_416)
    vl = VLModel(backbone, 2048)
    # Linear 2048->768 + LayerNorm, 2 image-order rows, box Linear 5->768 + LayerNorm: the reference's 1,582,848
    visual = (2048 * 768 + 768 + 2 * 768) + 2 * 768 + (5 * 768 + 768 + 2 * 768)
    for p in vl.backbone.parameters():
        p.requires_grad_(False)
    assert count_parameters(vl) == (visual, 139_420_416 + visual)
