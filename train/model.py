"""VL-T5 / VL-BART: a `transformers` encoder-decoder that reads CLIP features as extra
encoder tokens (VL-Adapter, Sung et al. CVPR 2022, built on Cho et al.'s VL-T5).

    text ids ──► backbone's own token embedding ─┐
                                                  ├─► [text, visual] ─► encoder ─► decoder ─► LM head
    CLIP feats ─► VisualEmbedding ────────────────┘    (inputs_embeds)

The backbone is an unmodified `T5ForConditionalGeneration` or
`BartForConditionalGeneration`: `VLModel` only builds `inputs_embeds` and the attention
mask and hands them over, so every later change (PEFT methods) is made from outside too.

Two ways in for the visual tokens (`VLModel(..., visual_inputs=...)`, the run setting
`visual_inputs`); docs/fidelity.md compares them:

- "reference": the encoder input of the reference code (ylsung/VL_adapter,
  `VL-T5/src/modeling_{bart,t5}.py`), for reproducing the paper. Each row is
  [prompt, text padded to the batch's longest, visual]. BART's learned positions go to the
  text only (0..L-1 over the padded text); the prompt vectors get none; BART's
  `layernorm_embedding` normalises prompt and text; the visual tokens are appended after
  it with neither, then dropout and the encoder layers. T5's relative position bias acts
  among the prompt and text tokens only (zero for every pair with a visual token). Visual
  token k of an image (or frame k of a video) adds the shared word embedding row of
  `<vis_extra_id_k>` (its "object order", frozen whenever the word embeddings are), and the
  box term sees zero boxes, as the reference fed (so it is a learned constant). All of this
  is done from outside the unmodified `transformers` encoder: forward hooks on BART's
  `embed_positions` and `layernorm_embedding` and on T5's relative-attention-bias table,
  which act only while VLModel runs the encoder.
- "packed" (the default, our earlier design): the encoder treats every token alike: BART
  adds a learned position to every token, visual ones included, and `layernorm_embedding`
  normalises them all; T5's relative bias spans text and visual tokens; each visual token
  gets a learned embedding of its grid cell or video span (real boxes) instead of the
  word-embedding object order. Each row is packed as [its real text, its visual tokens,
  padding], so an example's output does not depend on the batch it is in, and padded
  frames are masked (the reference had no mask for them).

Both modes have exactly the same parameters, so the parameter budgets do not depend on the
mode. `visual_boxes` ("grid" or "zero") overrides the mode's choice of boxes.
"""
from __future__ import annotations

import contextlib
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    BartConfig,
    BartForConditionalGeneration,
    PreTrainedModel,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput
from transformers.models.t5.modeling_t5 import T5LayerNorm

from vl.shared.errors import VLError

# -- backbones ---------------------------------------------------------------------

# model_type -> (config class, model class); the only backbones VLModel wraps.
MODEL_CLASSES: dict[str, tuple[type, type[PreTrainedModel]]] = {
    "t5": (T5Config, T5ForConditionalGeneration),
    "bart": (BartConfig, BartForConditionalGeneration),
}


@dataclass(frozen=True)
class BackboneShape:
    """An architecture we can build without the network: a config class's arguments."""

    model_type: Literal["t5", "bart"]
    config: dict[str, Any]  # keyword arguments of T5Config / BartConfig
    hub_id: str | None = None  # where its pretrained weights live; None: a test-only shape


_T5_COMMON = dict(vocab_size=32128, d_kv=64, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                  dropout_rate=0.1, layer_norm_epsilon=1e-6, feed_forward_proj="relu",
                  pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
_BART_COMMON = dict(vocab_size=50265, max_position_embeddings=1024, activation_function="gelu",
                    dropout=0.1, attention_dropout=0.1, activation_dropout=0.1, scale_embedding=False,
                    pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2)

# Architecture values of the `config.json` files on the Hugging Face hub
# (google-t5/t5-small, google-t5/t5-base, facebook/bart-base, facebook/bart-large), the
# checkpoints the reference's download_backbones.py fetches; generation defaults in those
# files (num_beams, no_repeat_ngram_size, ...) are left out: decoding is the caller's.
# Parameter counts of the models these build (tests/test_vl_model.py checks them):
# t5-small 60,506,624; t5-base 222,903,552; bart-base 139,420,416 (the figure in the
# reference's trainer_base.py); bart-large 406,291,456.
BACKBONE_SHAPES: dict[str, BackboneShape] = {
    "t5-small": BackboneShape("t5", dict(_T5_COMMON, d_model=512, d_ff=2048, num_layers=6, num_heads=8),
                              "google-t5/t5-small"),
    "t5-base": BackboneShape("t5", dict(_T5_COMMON, d_model=768, d_ff=3072, num_layers=12, num_heads=12),
                             "google-t5/t5-base"),
    "bart-base": BackboneShape("bart", dict(_BART_COMMON, d_model=768, encoder_layers=6, decoder_layers=6,
                                            encoder_attention_heads=12, decoder_attention_heads=12,
                                            encoder_ffn_dim=3072, decoder_ffn_dim=3072), "facebook/bart-base"),
    "bart-large": BackboneShape("bart", dict(_BART_COMMON, d_model=1024, encoder_layers=12, decoder_layers=12,
                                             encoder_attention_heads=16, decoder_attention_heads=16,
                                             encoder_ffn_dim=4096, decoder_ffn_dim=4096), "facebook/bart-large"),
    # For `vl demo`: small enough to train on the shapes world on 2 CPU cores in a minute a run.
    "demo-t5": BackboneShape("t5", dict(_T5_COMMON, vocab_size=1000, d_model=128, d_kv=32, d_ff=512,
                                        num_layers=2, num_heads=4)),
    # For tests: a few thousand parameters, built in milliseconds.
    "tiny-t5": BackboneShape("t5", dict(_T5_COMMON, vocab_size=128, d_model=32, d_kv=16, d_ff=64,
                                        num_layers=2, num_heads=2)),
    "tiny-bart": BackboneShape("bart", dict(_BART_COMMON, vocab_size=128, max_position_embeddings=256, d_model=32,
                                            encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                                            decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64)),
}

BackboneInit = Literal["pretrained", "random"]
INITS = typing.get_args(BackboneInit)


def dropout_settings(model_type: str, p: float | None) -> dict[str, float]:
    """Config keys that set every dropout of a T5 or BART model to p ({} for None: keep the model's)."""
    if p is None:
        return {}
    if model_type == "t5":
        return {"dropout_rate": p}
    return {"dropout": p, "attention_dropout": p, "activation_dropout": p}


def build_backbone(name_or_path: str, init: str = "pretrained", vocab_size: int | None = None,
                   dropout: float | None = None) -> PreTrainedModel:
    """A T5 or BART encoder-decoder with its LM head, in eval mode.

    `name_or_path` is a name in BACKBONE_SHAPES, a local directory written by
    `save_pretrained`, or a hub id ("owner/name"). init="pretrained" loads weights
    (a built-in name loads its hub checkpoint); init="random" builds the architecture
    with fresh weights (no download for a built-in name). `vocab_size` sets the number
    of token embeddings (the tokenizer's length once task tokens are added): in the
    config for random weights, by `resize_token_embeddings` for loaded ones. `dropout`
    sets every dropout probability of the model (None keeps its config's).
    """
    if init not in INITS:
        raise VLError(f"unknown init '{init}'; choose one of: {', '.join(INITS)}")
    shape = BACKBONE_SHAPES.get(name_or_path)  # a built-in name wins over a same-named folder
    local = Path(name_or_path).expanduser()
    if shape is not None:
        config_cls, model_cls = MODEL_CLASSES[shape.model_type]
        if init == "random":
            config = config_cls(**{**shape.config, **({} if vocab_size is None else {"vocab_size": vocab_size}),
                                   **dropout_settings(shape.model_type, dropout)})
            return model_cls(config).eval()
        if shape.hub_id is None:
            raise VLError(f"backbone '{name_or_path}' is a test-only shape with no pretrained weights; "
                          "build it with init='random'")
        source = shape.hub_id
    elif local.is_dir():
        source = str(local)
    elif name_or_path.startswith((".", "/", "~")) or "\\" in name_or_path or local.exists():
        raise VLError(f"backbone directory {name_or_path} not found (or not a directory): "
                      "give a folder written by `save_pretrained`")
    elif name_or_path.count("/") == 1:
        source = name_or_path  # a hub id
    else:
        raise VLError(f"unknown backbone '{name_or_path}'; choose one of: {', '.join(BACKBONE_SHAPES)}, "
                      "or give a local directory written by `save_pretrained` or a hub id such as google-t5/t5-base")

    offline_hint = ("without network access, load a local copy: `save_pretrained` it on a machine that has one "
                    "and pass that directory")
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise VLError(f"cannot read the backbone config of {source}: {e}", hint=offline_hint) from None
    if config.model_type not in MODEL_CLASSES:
        raise VLError(f"{source} is a '{config.model_type}' model; VL models wrap one of: {', '.join(MODEL_CLASSES)}")
    model_cls = MODEL_CLASSES[config.model_type][1]
    overrides = dropout_settings(config.model_type, dropout)
    if init == "random":
        if vocab_size is not None:
            config.vocab_size = vocab_size
        for key, value in overrides.items():
            setattr(config, key, value)
        return model_cls(config).eval()
    try:
        model = model_cls.from_pretrained(source, **overrides)
    except OSError as e:
        raise VLError(f"cannot load backbone weights from {source}: {e}", hint=offline_hint) from None
    if vocab_size is not None and vocab_size != model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(vocab_size)
    return model.eval()


# -- visual tokens -------------------------------------------------------------------

def pool_grid(feats: torch.Tensor, size: int) -> torch.Tensor:
    """Max-pool a square grid of tokens to size x size (the paper: RN101's 7x7 -> 6x6 = 36).

    feats: (B, T, C) with T = side * side tokens in row-major order; returns
    (B, size * size, C), also row-major.
    """
    if feats.dim() != 3:
        raise ValueError(f"pool_grid wants (batch, tokens, channels); got shape {tuple(feats.shape)}")
    batch, tokens, channels = feats.shape
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"pool_grid needs a square grid of tokens; {tokens} is not a perfect square "
                         "(pooled features and video frames are not grids)")
    if not 1 <= size <= side:
        raise ValueError(f"pool_grid pools a {side}x{side} grid down to size x size with 1 <= size <= {side}; "
                         f"got size={size}")
    grid = feats.transpose(1, 2).reshape(batch, channels, side, side)  # (B, C, side, side)
    pooled = F.adaptive_max_pool2d(grid, size)  # (B, C, size, size)
    return pooled.flatten(2).transpose(1, 2)  # (B, size*size, C)


def within_image_positions(image_ids: torch.Tensor, max_images: int) -> torch.Tensor:
    """(B, V) image index of each visual token -> (B, V) its index among its image's tokens
    (e.g. [0,0,1,1,1] -> [0,1,0,1,2]); tokens of one image need not be contiguous."""
    one_hot = F.one_hot(image_ids, max_images)  # (B, V, M)
    return ((one_hot.cumsum(1) - 1) * one_hot).sum(-1)  # (B, V)


def token_boxes(positions: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(B, V) index of each visual token within its image or video, (B, V) how many real
    tokens that image or video has -> (B, V, 5) boxes (x1, y1, x2, y2, area) in [0, 1].

    n = s * s tokens (n > 1) are a row-major s x s grid: token (r, c) gets the cell
    (c/s, r/s, (c+1)/s, (r+1)/s). Other counts (video frames, one pooled vector) are a
    sequence: token j of n gets the span (j/n, 0, (j+1)/n, 1). The area is 1/n."""
    n = counts.clamp(min=1).to(torch.float32)
    side = n.sqrt().round()
    grid = (side * side == n) & (n > 1)
    j = positions.to(torch.float32)
    row, col = torch.div(j, side, rounding_mode="floor"), torch.remainder(j, side)
    one, zero = torch.ones_like(n), torch.zeros_like(n)
    x1 = torch.where(grid, col / side, j / n)
    y1 = torch.where(grid, row / side, zero)
    x2 = torch.where(grid, (col + 1) / side, (j + 1) / n)
    y2 = torch.where(grid, (row + 1) / side, one)
    return torch.stack([x1, y1, x2, y2, 1 / n], dim=-1)


VisualInputs = Literal["packed", "reference"]
VISUAL_INPUTS = typing.get_args(VisualInputs)
VisualBoxes = Literal["grid", "zero"]
VISUAL_BOXES = typing.get_args(VisualBoxes)


class VisualEmbedding(nn.Module):
    """CLIP features -> encoder tokens: Norm(Linear(feats)) + image order + Norm(Linear(box))
    [+ object order: the word embedding of `<vis_extra_id_k>` for token k of its image].

    The norms are T5's RMS norm for T5 and nn.LayerNorm for BART, as in the reference, and
    the parameters are the reference's: for 2048-d features and d = 768, 1,582,848. The
    image-order embedding starts small (std 0.02, BART's init_std) next to the unit-scale
    normalised features.
    """

    def __init__(self, feat_dim: int, d_model: int, max_images: int = 2, norm: Literal["layer", "rms"] = "layer",
                 eps: float = 1e-5):
        super().__init__()
        self.feat_dim, self.max_images = feat_dim, max_images
        make_norm = (lambda: T5LayerNorm(d_model, eps=eps)) if norm == "rms" else (
            lambda: nn.LayerNorm(d_model, eps=eps))
        self.proj = nn.Linear(feat_dim, d_model)
        self.norm = make_norm()
        self.image_order = nn.Embedding(max_images, d_model)  # which image (NLVR2's left / right)
        self.box = nn.Linear(5, d_model)  # where the token sits: its grid cell or video span
        self.box_norm = make_norm()
        nn.init.normal_(self.image_order.weight, std=0.02)

    def forward(self, feats: torch.Tensor, image_ids: torch.Tensor | None = None,
                visual_mask: torch.Tensor | None = None, boxes: str = "grid",
                order_embedding: torch.Tensor | None = None, order_ids: torch.Tensor | None = None) -> torch.Tensor:
        """feats (B, V, feat_dim); image_ids (B, V) long in [0, max_images), None: all 0;
        visual_mask (B, V) true on real tokens (None: all real), which sets how many tokens
        each image or video has. boxes: "grid" (each token's grid cell or video span) or
        "zero" (the reference's all-zero boxes). order_embedding (vocab, d) with order_ids
        (K,): token k of an image adds row order_ids[k] (the reference's object order).
        Returns (B, V, d_model)."""
        if feats.dim() != 3 or feats.shape[-1] != self.feat_dim:
            raise ValueError(f"visual features must be (batch, tokens, {self.feat_dim}); got {tuple(feats.shape)} "
                             "(was the model built for another CLIP encoder's feature size?)")
        batch, tokens, _ = feats.shape
        if image_ids is None:
            image_ids = torch.zeros(batch, tokens, dtype=torch.long, device=feats.device)
        else:
            if image_ids.shape != (batch, tokens):
                raise ValueError(f"image_ids must be (batch, tokens) = {(batch, tokens)}; got {tuple(image_ids.shape)}")
            if bool(((image_ids < 0) | (image_ids >= self.max_images)).any()):
                raise ValueError(f"image_ids must lie in [0, {self.max_images}); got values "
                                 f"{image_ids.min().item()}..{image_ids.max().item()}")
        positions = within_image_positions(image_ids, self.max_images)  # (B, V)
        one_hot = F.one_hot(image_ids, self.max_images)  # (B, V, M)
        if visual_mask is not None:
            one_hot = one_hot * visual_mask.long().unsqueeze(-1)
        counts = one_hot.sum(1).gather(1, image_ids)  # (B, V): real tokens of each token's image
        if boxes == "zero":
            box5 = feats.new_zeros(batch, tokens, 5, dtype=self.box.weight.dtype)  # (B, V, 5)
        else:
            box5 = token_boxes(positions, counts).to(self.box.weight.dtype)  # (B, V, 5)
        x = self.norm(self.proj(feats.to(self.proj.weight.dtype)))  # (B, V, d)
        x = x + self.image_order(image_ids) + self.box_norm(self.box(box5))  # (B, V, d)
        if order_embedding is not None:
            if tokens and int(positions.max()) >= len(order_ids):
                raise ValueError(f"visual token {int(positions.max())} of an image has no <vis_extra_id_k> to embed its "
                                 f"order: the tokenizer has {len(order_ids)} of them; set extra_tokens to at least "
                                 f"{2 * (int(positions.max()) + 1)} (VL-BART: 200) or use fewer visual tokens")
            x = x + F.embedding(order_ids[positions], order_embedding).to(x.dtype)  # (B, V, d)
        return x

    def reference_init(self, model_type: str) -> None:
        """The reference's initialisation: VL-BART's `init_weights` set every Linear and Embedding
        to N(0, 0.02) with zero bias (LayerNorms to 1 and 0, as built); VL-T5's left Linear and
        Embedding layers at PyTorch's defaults (the image-order table N(0, 1))."""
        for module in (self.proj, self.box, self.image_order):
            if model_type == "bart":
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            else:
                module.reset_parameters()


# -- reference-mode hooks on the unmodified encoder ---------------------------------------
# Each hook reads the layout VLModel put on the hooked module for the one encoder call in
# flight (`vl_layout` = (prompt P, text L, whole row T)); with none set (packed inputs, or any
# other use of the backbone) it does nothing. They are module-level functions reading the
# module they run on, so a deep copy of the model carries working hooks of its own.

def _bart_positions_pre(module: nn.Module, args: tuple) -> tuple | None:
    """BART's learned positions are asked for the text only: positions 0..L-1."""
    layout = getattr(module, "vl_layout", None)
    if layout is None:
        return None
    prompt, text, _ = layout
    return (args[0][:, :text], *args[1:])  # (B, L): only its shape is read


def _bart_positions_post(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
    """(B, L, d) text positions -> (B, T, d): zero for the prompt and the visual tokens."""
    layout = getattr(module, "vl_layout", None)
    if layout is None:
        return None
    prompt, text, total = layout
    batch, _, d = out.shape
    return torch.cat([out.new_zeros(batch, prompt, d), out, out.new_zeros(batch, total - prompt - text, d)], dim=1)


def _bart_layernorm_post(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
    """`layernorm_embedding` normalises prompt and text; visual tokens pass through as they came."""
    layout = getattr(module, "vl_layout", None)
    if layout is None:
        return None
    prompt, text, _ = layout
    return torch.cat([out[:, :prompt + text], args[0][:, prompt + text:].to(out.dtype)], dim=1)  # (B, T, d)


def _t5_bias_post(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
    """T5's bias table looked up for (query, key) pairs (q, k, heads): zero unless both
    tokens are prompt or text (the first P + L of the row)."""
    layout = getattr(module, "vl_layout", None)
    if layout is None:
        return None
    prompt, text, _ = layout
    q, k = out.shape[0], out.shape[1]
    keep = ((torch.arange(q, device=out.device) < prompt + text)[:, None]
            & (torch.arange(k, device=out.device) < prompt + text)[None, :])  # (q, k)
    return out * keep.unsqueeze(-1).to(out.dtype)  # (q, k, heads)


def _reference_hook_sites(backbone: PreTrainedModel) -> list[nn.Module]:
    """The encoder modules whose output reference mode changes; hooks are registered on them."""
    encoder = backbone.get_encoder()
    if backbone.config.model_type == "bart":
        positions, norm = encoder.embed_positions, encoder.layernorm_embedding
        positions.register_forward_pre_hook(_bart_positions_pre)
        positions.register_forward_hook(_bart_positions_post)
        norm.register_forward_hook(_bart_layernorm_post)
        return [positions, norm]
    table = encoder.block[0].layer[0].SelfAttention.relative_attention_bias  # T5: layer 0 computes the bias
    table.register_forward_hook(_t5_bias_post)
    return [table]


# -- the model -------------------------------------------------------------------------

class TaskState:
    """Which task the batch in flight belongs to. `VLModel.forward/generate(task=...)` set it;
    per-task PEFT modules (one adapter, LoRA or prompt per task) hold a reference to the
    model's one TaskState and read `current()` in their forward. Batches hold one task."""

    def __init__(self) -> None:
        self.name: str | None = None

    def current(self) -> str:
        if self.name is None:
            raise RuntimeError("this model has per-task modules: call it with task=<task name> "
                               "(VLModel.forward / generate)")
        return self.name


class VLModel(nn.Module):
    """A T5/BART encoder-decoder whose encoder reads text and visual tokens.

    Attributes: `backbone` (the unmodified transformers model), `visual_embedding`,
    `config` (the backbone's config), `visual_inputs` ("reference" or "packed", see the
    module docstring), `visual_boxes` ("grid" or "zero").

    object_order_ids: the token ids of `<vis_extra_id_0>`, `<vis_extra_id_1>`, ... (needed by
    visual_inputs="reference", whose visual token k adds that token's word embedding).
    """

    def __init__(self, backbone: PreTrainedModel, feat_dim: int, max_images: int = 2,
                 visual_inputs: str = "packed", visual_boxes: str | None = None,
                 object_order_ids: Sequence[int] | None = None):
        super().__init__()
        model_type = getattr(backbone.config, "model_type", None)
        if model_type not in MODEL_CLASSES or not backbone.config.is_encoder_decoder:
            raise VLError(f"VLModel wraps a T5 or BART encoder-decoder; got a '{model_type}' model")
        self.backbone = backbone
        self.config = backbone.config
        d_model = self.config.d_model
        if model_type == "t5":
            norm, eps = "rms", self.config.layer_norm_epsilon
        else:
            norm, eps = "layer", 1e-5  # nn.LayerNorm's default, as BART's own layer norms
        self.visual_embedding = VisualEmbedding(feat_dim, d_model, max_images, norm, eps)
        # BART multiplies token embeddings by sqrt(d_model) when config.scale_embedding
        # (False for bart-base/large). Current transformers does it inside the embedding
        # module (it has `embed_scale`); older versions did it in the encoder, on the
        # input_ids path only, which inputs_embeds skips: then we scale here.
        scales_itself = hasattr(backbone.get_input_embeddings(), "embed_scale")
        self.text_embed_scale = (math.sqrt(d_model) if getattr(self.config, "scale_embedding", False)
                                 and not scales_itself else 1.0)
        self.task_state = TaskState()
        # A module called as encoder_prompt(batch_size) -> (B, P, d_model) prompt vectors that
        # `encoder_inputs` puts before every row (prompt tuning, vl.train.peft.prompt); None: no prompt.
        self.encoder_prompt: nn.Module | None = None
        self._hooked = _reference_hook_sites(backbone)  # inert until reference inputs set a layout
        self.register_buffer("object_order_ids", torch.zeros(0, dtype=torch.long), persistent=False)
        self.set_visual_inputs(visual_inputs, visual_boxes, object_order_ids)
        if visual_inputs == "reference":
            self.visual_embedding.reference_init(model_type)

    def set_visual_inputs(self, visual_inputs: str, visual_boxes: str | None = None,
                          object_order_ids: Sequence[int] | None = None) -> None:
        """Choose how visual tokens enter the encoder (no parameter changes: a model trained
        one way can be run or trained on the other way)."""
        if visual_inputs not in VISUAL_INPUTS:
            raise VLError(f"visual_inputs must be one of: {', '.join(VISUAL_INPUTS)} (got {visual_inputs!r})")
        boxes = visual_boxes or ("zero" if visual_inputs == "reference" else "grid")
        if boxes not in VISUAL_BOXES:
            raise VLError(f"visual_boxes must be one of: {', '.join(VISUAL_BOXES)} (got {visual_boxes!r})")
        if visual_inputs == "reference":
            ids = list(object_order_ids or [])
            vocab = self.backbone.get_input_embeddings().num_embeddings
            if not ids or not all(0 <= i < vocab for i in ids):
                raise VLError("visual_inputs=reference embeds visual token k with the word embedding of "
                              "<vis_extra_id_k>, but the tokenizer has none (or not in this model's vocabulary)",
                              hint="Set extra_tokens: 200 (VL-BART's 100 <extra_id_k> and 100 <vis_extra_id_k>).")
            self.object_order_ids = torch.tensor(ids, dtype=torch.long, device=self.object_order_ids.device)
        self.visual_inputs, self.visual_boxes = visual_inputs, boxes

    @contextlib.contextmanager
    def _encoder_layout(self, prompt: int, text: int, total: int) -> Iterator[None]:
        """While the encoder runs on reference inputs, its hooks see the row layout."""
        if self.visual_inputs != "reference":
            yield
            return
        for module in self._hooked:
            module.vl_layout = (prompt, text, total)
        try:
            yield
        finally:
            for module in self._hooked:
                module.vl_layout = None

    def _check_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, visual_feats: torch.Tensor,
                      visual_mask: torch.Tensor) -> None:
        batch, text_len = input_ids.shape
        vis_len = visual_feats.shape[1]
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids {tuple(input_ids.shape)}")
        if visual_feats.shape[0] != batch or visual_mask.shape != (batch, vis_len):
            raise ValueError(f"visual_feats {tuple(visual_feats.shape)} and visual_mask {tuple(visual_mask.shape)} must "
                             f"be (batch={batch}, tokens, ...) and (batch, tokens)")
        if bool((attention_mask[:, 1:].long() > attention_mask[:, :-1].long()).any()):
            raise ValueError("text must be right-padded (attention_mask 1...1 0...0): tokenize with padding_side='right'")
        if self.config.model_type != "bart":
            return
        max_pos = self.config.max_position_embeddings  # BART's learned positions; T5 has none
        if self.visual_inputs == "reference":  # only the text takes positions
            if text_len > max_pos:
                raise ValueError(f"{text_len} text tokens exceed BART's {max_pos} positions: truncate the text")
            return
        prompt_len = getattr(self.encoder_prompt, "length", 0)
        if prompt_len + text_len + vis_len > max_pos:
            raise ValueError(f"{prompt_len} prompt + {text_len} text + {vis_len} visual tokens exceed BART's {max_pos} "
                             "positions: truncate the text, use fewer visual tokens or a shorter prompt")

    def encoder_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, visual_feats: torch.Tensor,
                       visual_mask: torch.Tensor, image_ids: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's `inputs_embeds` (B, P + L + V, d) and attention mask (B, P + L + V).

        input_ids, attention_mask: (B, L) right-padded text; visual_feats: (B, V, feat_dim);
        visual_mask: (B, V), true/1 on real tokens; image_ids: (B, V) or None. Rows are
        [prompt, text padded to L, visual] for reference inputs, [prompt, real text, visual,
        padding] for packed ones (see the module docstring).
        """
        self._check_inputs(input_ids, attention_mask, visual_feats, visual_mask)
        batch, text_len = input_ids.shape
        vis_len = visual_feats.shape[1]
        text_mask = attention_mask.long()
        text = self.backbone.get_input_embeddings()(input_ids) * self.text_embed_scale  # (B, L, d)
        reference = self.visual_inputs == "reference"
        visual = self.visual_embedding(
            visual_feats, image_ids, visual_mask, boxes=self.visual_boxes,
            order_embedding=self.backbone.get_input_embeddings().weight if reference else None,
            order_ids=self.object_order_ids if reference else None).to(text.dtype)  # (B, V, d)
        embeds = torch.cat([text, visual], dim=1)  # (B, L + V, d)
        mask = torch.cat([text_mask, visual_mask.long()], dim=1)  # (B, L + V)

        if not reference:
            # Pack each row: text token i < n goes to i, visual token j to n + j, text padding
            # to the end (n = the row's real text length). `order` is the inverse permutation.
            n = text_mask.sum(1, keepdim=True)  # (B, 1)
            i = torch.arange(text_len, device=n.device).expand(batch, -1)  # (B, L)
            j = torch.arange(vis_len, device=n.device).expand(batch, -1)  # (B, V)
            dest = torch.cat([torch.where(i < n, i, i + vis_len), n + j], dim=1)  # (B, L + V)
            order = dest.argsort(dim=1)  # (B, L + V): which source token lands at each place
            embeds = embeds.gather(1, order.unsqueeze(-1).expand_as(embeds))
            mask = mask.gather(1, order)
        if self.encoder_prompt is not None:  # [prompt, text, visual(, padding)]
            prompt = self.encoder_prompt(batch).to(embeds.dtype)  # (B, P, d)
            embeds = torch.cat([prompt, embeds], dim=1)
            mask = torch.cat([mask.new_ones(batch, prompt.shape[1]), mask], dim=1)
        return embeds, mask

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, visual_feats: torch.Tensor,
                visual_mask: torch.Tensor, image_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                decoder_input_ids: torch.Tensor | None = None, task: str | None = None) -> Seq2SeqLMOutput:
        """Teacher-forced pass. labels (B, T) with -100 where ignored give `.loss` (token-mean
        cross-entropy) and the decoder input (labels shifted right); or give
        decoder_input_ids to score. `task` routes per-task PEFT modules (see TaskState).
        Returns the backbone's output: `.loss`, `.logits` (B, T, vocab)."""
        if labels is None and decoder_input_ids is None:
            raise ValueError("VLModel.forward needs labels (training) or decoder_input_ids (scoring)")
        self.task_state.name = task
        embeds, mask = self.encoder_inputs(input_ids, attention_mask, visual_feats, visual_mask, image_ids)
        prompt = embeds.shape[1] - input_ids.shape[1] - visual_feats.shape[1]
        backbone = self.__dict__.get("_compiled_backbone", self.backbone)
        with self._encoder_layout(prompt, input_ids.shape[1], embeds.shape[1]):
            return backbone(inputs_embeds=embeds, attention_mask=mask, labels=labels,
                            decoder_input_ids=decoder_input_ids)

    def compile_backbone(self, **compile_kwargs: Any) -> None:
        """Run the teacher-forced passes (training steps, validation loss) through
        `torch.compile(backbone)` (the `compile: true` setting); generation stays eager
        (its cache and changing lengths would only recompile). The compiled wrapper shares
        the backbone's parameters and stays out of the module tree, so state_dict keys and
        checkpoints do not change."""
        self.__dict__["_compiled_backbone"] = torch.compile(self.backbone, **compile_kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, visual_feats: torch.Tensor,
                 visual_mask: torch.Tensor, image_ids: torch.Tensor | None = None, task: str | None = None,
                 **generate_kwargs: Any) -> torch.LongTensor:
        """Decode answers: (B, T_out) token ids starting with the decoder start token.
        generate_kwargs go to the backbone's `generate` (max_new_tokens, num_beams, ...).
        The encoder runs once here; beam search reuses its output for every beam."""
        encoded, mask = self.encode(input_ids, attention_mask, visual_feats, visual_mask, image_ids, task=task)
        return self.backbone.generate(encoder_outputs=encoded, attention_mask=mask, **generate_kwargs)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, visual_feats: torch.Tensor,
               visual_mask: torch.Tensor, image_ids: torch.Tensor | None = None, task: str | None = None
               ) -> tuple[BaseModelOutput, torch.Tensor]:
        """The encoder's output for these inputs (`.last_hidden_state` (B, P + L + V, d)) and
        its attention mask (B, P + L + V), for the backbone's decoder to read any number of
        times: `backbone(encoder_outputs=, attention_mask=, decoder_input_ids=)` or `generate`.
        Leaves `task` routing the per-task modules, as the decoder needs."""
        self.task_state.name = task
        embeds, mask = self.encoder_inputs(input_ids, attention_mask, visual_feats, visual_mask, image_ids)
        prompt = embeds.shape[1] - input_ids.shape[1] - visual_feats.shape[1]
        with self._encoder_layout(prompt, input_ids.shape[1], embeds.shape[1]):
            encoded = self.backbone.get_encoder()(inputs_embeds=embeds, attention_mask=mask)
        hidden = encoded.last_hidden_state if hasattr(encoded, "last_hidden_state") else encoded[0]
        return BaseModelOutput(last_hidden_state=hidden), mask


def build_vl_model(backbone: str, feat_dim: int, init: str = "pretrained", vocab_size: int | None = None,
                   dropout: float | None = None, visual_inputs: str = "packed", visual_boxes: str | None = None,
                   object_order_ids: Sequence[int] | None = None) -> VLModel:
    """`build_backbone(backbone, init, vocab_size, dropout)` wrapped with a fresh visual
    embedding for `feat_dim`-wide features (RN101 grid 2048, ViT-B/32 pooled 512, ...) and the
    visual inputs asked for (see VLModel)."""
    return VLModel(build_backbone(backbone, init=init, vocab_size=vocab_size, dropout=dropout), feat_dim,
                   visual_inputs=visual_inputs, visual_boxes=visual_boxes, object_order_ids=object_order_ids)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights (T5/BART's shared embedding and
    LM head) count once."""
    params = list(model.parameters())  # nn.Module.parameters() yields a shared tensor once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
