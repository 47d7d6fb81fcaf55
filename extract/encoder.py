"""CLIP image encoders from open_clip: any model name, any pretrained tag or local file.

Architecture and weights stay apart (open_clip's model JSON vs its pretrained tags,
which also carry the preprocessing), and both go into the provenance, so a store
made with other weights or other preprocessing is refused rather than mixed.

Features:
- `grid`: the spatial map before the pooling head. ResNets: the layer-4 output
  (RN101 at 224 px: 2048 x 7 x 7). ViTs: the last block's patch tokens after the
  final LayerNorm, before the projection (ViT-B/32 at 224 px: 768 x 7 x 7).
  `pool=N` adaptive-max-pools it to N x N (VL-Adapter pools 7x7 to 6x6 = 36 tokens).
  Stored as (tokens, channels), tokens in row-major order.
- `pooled`: the image embedding (`encode_image` without normalisation).
"""
from __future__ import annotations

import contextlib
import typing
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from vl.shared.devices import Precision, amp_dtype, autocast, pick_device
from vl.shared.digests import digest_json, sha256_file
from vl.shared.errors import VLError

LAYERS = ("grid", "pooled", "both")
RESIZE_MODES = ("model", "shortest", "longest", "squash")
PRECISIONS = typing.get_args(Precision)


@dataclass
class EncoderSpec:
    """What the user asked for; everything that changes the features."""

    model: str
    pretrained: str | None = "openai"  # open_clip tag, checkpoint file, or None for random weights
    model_config: str | None = None  # a JSON architecture file for a custom model
    layer: str = "grid"
    pool: int | None = None
    resize: str = "model"
    precision: str = "fp32"
    device: str = "auto"
    seed: int = 0  # only used for random weights, so reruns make the same model


class ClipImageFeatures(torch.nn.Module):
    """The vision tower of a CLIP model, returning the chosen feature kinds.

    forward(images (B, 3, H, W)) -> {"grid": (B, T, C), "pooled": (B, D)} (those asked for)
    """

    def __init__(self, visual: torch.nn.Module, layer: str, pool: int | None):
        super().__init__()
        self.visual = visual
        self.want_grid = layer in ("grid", "both")
        self.want_pooled = layer in ("pooled", "both")
        self.pool = pool
        if self.want_grid and not hasattr(visual, "forward_intermediates"):
            raise VLError(
                f"this open_clip vision tower ({type(visual).__name__}) does not expose grid features; "
                "use --layer pooled"
            )

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        if not self.want_grid:
            out["pooled"] = self.visual(images)
            return out
        result = self.visual.forward_intermediates(
            images,
            indices=1,  # the last block only
            normalize_intermediates=True,  # ViT: final LayerNorm on the patch tokens; ResNet: no-op
            intermediates_only=not self.want_pooled,
            output_fmt="NCHW",
        )
        grid = result["image_intermediates"][-1]  # (B, C, H, W)
        if self.pool is not None:
            grid = F.adaptive_max_pool2d(grid, self.pool)  # (B, C, N, N)
        out["grid"] = grid.flatten(2).transpose(1, 2)  # (B, N*N, C)
        if self.want_pooled:
            out["pooled"] = result["image_features"]
        return out


@dataclass
class LoadedEncoder:
    module: ClipImageFeatures
    transform: object  # PIL image -> (3, H, W) tensor; picklable for DataLoader workers
    device: torch.device
    autocast_dtype: torch.dtype | None
    provenance: dict  # the settings that decide the features (compared on reuse)
    image_size: tuple[int, int]

    def autocast(self):
        return autocast(self.device, self.autocast_dtype)

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        # channels-last matches the module's layout: about 2x faster convolutions on CPUs, and
        # the layout tensor cores want on GPUs
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with self.autocast():
            return self.module(images)


def load_encoder(spec: EncoderSpec) -> LoadedEncoder:
    """Build the open_clip model, keep its vision tower, and describe it for provenance."""
    import open_clip

    problems = []
    if spec.layer not in LAYERS:
        problems.append(f"--layer must be one of {', '.join(LAYERS)} (got {spec.layer!r})")
    if spec.resize not in RESIZE_MODES:
        problems.append(f"--resize must be one of {', '.join(RESIZE_MODES)} (got {spec.resize!r})")
    if spec.precision not in PRECISIONS:
        problems.append(f"--precision must be one of {', '.join(PRECISIONS)} (got {spec.precision!r})")
    if spec.pool is not None and spec.pool < 1:
        problems.append(f"--pool must be a positive grid size such as 6 (got {spec.pool})")
    if spec.pool is not None and spec.layer == "pooled":
        problems.append("--pool applies to grid features; drop it or use --layer grid/both")
    if problems:
        raise VLError(problems)
    device = pick_device(spec.device)
    if spec.precision == "fp16" and device.type == "cpu":
        raise VLError("--precision fp16 is for GPUs; on the CPU use fp32 (exact) or bf16 (faster on recent CPUs)")

    config_digest = None
    if spec.model_config:
        cfg_path = Path(spec.model_config)
        if not cfg_path.is_file():
            raise VLError(f"--model-config {cfg_path} not found: give an open_clip model JSON (like open_clip's model_configs/RN101.json)")
        open_clip.add_model_config(cfg_path)
        config_digest = sha256_file(cfg_path)
    arch = open_clip.get_model_config(spec.model)
    schema = spec.model.split(":", 1)[0] + ":" if spec.model.startswith(("hf-hub:", "local-dir:")) else None
    if arch is None and schema is None:
        known = open_clip.list_models()
        close = [m for m in known if m.lower().startswith(spec.model.lower()[:4])][:8]
        raise VLError(
            f"unknown open_clip model {spec.model!r}; e.g. {', '.join(close or known[:8])} "
            "(`python -c 'import open_clip; print(open_clip.list_models())'` lists all), "
            "or pass --model-config FILE.json for your own architecture"
        )

    pretrained = spec.pretrained
    weights: dict = {"source": "random", "seed": spec.seed}
    if pretrained and schema is None:
        if os.path.isfile(pretrained):
            weights = {"source": "file", "path": str(Path(pretrained).resolve()), "sha256": sha256_file(pretrained)}
        else:
            tag_cfg = open_clip.get_pretrained_cfg(spec.model, pretrained)
            if not tag_cfg:
                tags = open_clip.list_pretrained_tags_by_model(spec.model)
                raise VLError(
                    f"--pretrained {pretrained!r} is neither a file nor an open_clip tag of {spec.model}; "
                    f"its tags are: {', '.join(tags) or 'none (give a checkpoint file, or none for random weights)'}"
                )
            weights = {"source": "tag", "tag": pretrained, "url": tag_cfg.get("url") or None,
                       "hf_hub": tag_cfg.get("hf_hub") or None, "quick_gelu": bool(tag_cfg.get("quick_gelu", False))}
    elif schema is not None:
        weights = {"source": schema.rstrip(":"), "id": spec.model.split(":", 1)[1]}

    torch.manual_seed(spec.seed)  # random weights are reproducible, so a resumed run matches
    try:
        with _quiet_open_clip():
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.model, pretrained=pretrained if schema is None else None, device="cpu"
            )
    except (pickle.UnpicklingError, EOFError) as e:  # a file torch refuses to unpickle (weights_only), or cut short
        raise VLError(f"--pretrained {pretrained}: not a checkpoint vl loads safely ({type(e).__name__}: "
                      f"{str(e).splitlines()[0][:200] if str(e) else 'the file ends early'})",
                      hint="Give an open_clip checkpoint of plain tensors (a state_dict saved with torch.save), "
                           "or an open_clip pretrained tag.") from None
    except RuntimeError as e:
        if weights["source"] == "tag":
            raise VLError(
                f"could not get the {spec.model} weights for tag {pretrained!r}: {e}. Without network access, "
                "download the checkpoint elsewhere and pass its path to --pretrained"
            ) from None
        raise VLError(f"could not load {spec.model} with --pretrained {pretrained}: {e}") from None
    visual = model.visual
    del model  # the text tower is not needed

    preprocess_cfg = dict(open_clip.get_model_preprocess_cfg(visual))
    size = preprocess_cfg.get("size", 224)
    size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    resize_mode = preprocess_cfg.get("resize_mode", "shortest") if spec.resize == "model" else spec.resize
    transform_cfg = {
        "size": list(size),
        "mean": list(preprocess_cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        "std": list(preprocess_cfg.get("std", open_clip.OPENAI_DATASET_STD)),
        "interpolation": preprocess_cfg.get("interpolation", "bicubic"),
        "resize_mode": resize_mode,
        "fill_color": preprocess_cfg.get("fill_color", 0),
    }
    transform = open_clip.image_transform(
        list(size), is_train=False, mean=transform_cfg["mean"], std=transform_cfg["std"],
        interpolation=transform_cfg["interpolation"], resize_mode=resize_mode, fill_color=transform_cfg["fill_color"],
    )

    autocast_dtype = amp_dtype(spec.precision)
    contiguous_attention(visual)
    module = ClipImageFeatures(visual, spec.layer, spec.pool).eval().to(device)
    module = module.to(memory_format=torch.channels_last)
    if autocast_dtype is not None:
        cast_matmul_weights(module, autocast_dtype)
    provenance = {
        "encoder": {
            "library": "open_clip",
            "model": spec.model,
            "architecture_digest": digest_json(arch) if arch is not None else None,
            "model_config_sha256": config_digest,
            # a custom architecture itself (a few hundred bytes), so the encoder can be rebuilt
            # from the provenance alone (`vl predict`) when the file is gone
            **({"architecture": arch} if config_digest is not None else {}),
            "weights": weights,
        },
        "preprocess": {
            **transform_cfg,
            "convert": "RGB (16-bit images scaled to 8 bits; no EXIF rotation)",
        },
        "features": {
            "layer": spec.layer,
            "pool": spec.pool,
            "grid_definition": "ResNet: layer4 output; ViT: last block patch tokens after ln_post",
            "precision": spec.precision,
        },
    }
    return LoadedEncoder(module, transform, device, autocast_dtype, provenance, size)


class _SequenceFirstAttention(torch.nn.Module):
    """A batch-first nn.MultiheadAttention run on contiguous (L, N, E) inputs.

    Batch-first attention transposes its inputs internally, and a transposed input makes
    the input projection copy an expanded weight for every layer under CPU autocast:
    ViT-B-32 in bf16 ran 3.5x slower than in fp32 (docs/benchmarks.md). The same module
    and weights on contiguous sequence-first inputs compute the same attention."""

    def __init__(self, attn: torch.nn.MultiheadAttention):
        super().__init__()
        self.attn = attn

    def forward(self, query, key, value, *args, **kwargs):
        q = query.transpose(0, 1).contiguous()  # (N, L, E) -> (L, N, E)
        k = q if key is query else key.transpose(0, 1).contiguous()
        v = k if value is key else value.transpose(0, 1).contiguous()
        self.attn.batch_first = False
        try:
            out, weights = self.attn(q, k, v, *args, **kwargs)
        finally:
            self.attn.batch_first = True
        return out.transpose(0, 1), weights


def contiguous_attention(module: torch.nn.Module) -> int:
    """Wrap every batch-first nn.MultiheadAttention in `module` (see _SequenceFirstAttention);
    returns how many were wrapped."""
    wrapped = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.MultiheadAttention) and child.batch_first:
                setattr(parent, name, _SequenceFirstAttention(child))
                wrapped += 1
    return wrapped


def cast_matmul_weights(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Store conv and linear weights in the autocast dtype once, instead of autocast
    converting them on every batch. The features are bit-identical (autocast would cast
    the same values to the same dtype); norms keep their fp32 parameters."""
    for m in module.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            m.to(dtype)


@contextlib.contextmanager
def _quiet_open_clip():
    """open_clip logs a warning for deliberate random weights; keep the user's terminal clean."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
