"""The model of a run: built from its config (with the method applied), started from
another run's weights (init_from), or rebuilt from a run directory with a checkpoint
loaded, as `vl evaluate` and the tests use it.

Checkpoints hold only the trainable tensors, so the rest is rebuilt: the backbone from its
hub id or folder (init=pretrained), or from the run's seed (init=random); run.json keeps
a digest of those frozen weights, and a rebuild that does not match it is refused. A run
started from another rebuilds that one first (build_model -> starting_model ->
load_trained -> build_model), so these live in one module.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vl.shared.config import load_config
from vl.shared.errors import VLError
from vl.shared.feature_store import FeatureStore
from vl.shared.run_dir import (BEST, CONFIG_FILE, LAST, bundle_relative, config_path, has_checkpoint, read_run_json,
                               tokenizer_dir)
from vl.train.config import Checkpoint, TrainConfig
from vl.train.model import BACKBONE_SHAPES, VLModel, build_vl_model
from vl.train.peft.methods import (apply_method, budget_table, carried_over, carry_over,
                                   uses_every_parameter_each_step)
from vl.train.peft.registry import applied
from vl.train.run_dir import frozen_sha256, load_checkpoint
from vl.train.tokenizer import HUB_TOKENIZERS, add_extra_tokens, extra_token_names, load_tokenizer, vis_token_ids

# -- what trains: freeze all, apply the method, unfreeze exactly what it names -------------

def set_trainable(model: VLModel, cfg: TrainConfig, tasks: list[str]) -> list[str]:
    """Freeze everything, add the method's modules (vl.train.peft.methods), unfreeze exactly
    the parameters the method names; returns those names."""
    model.requires_grad_(False)
    names = apply_method(model, cfg.method, cfg, tasks)  # may add modules: look parameters up after
    params = dict(model.named_parameters())
    unknown = sorted(set(names) - set(params))
    assert not unknown, f"method {cfg.method} named parameters the model does not have: {unknown[:5]}"
    for name in names:
        params[name].requires_grad_(True)
    return sorted(names)


# -- a new run's model ---------------------------------------------------------------------

def build_model(cfg: TrainConfig, feat_dim: int, vocab_size: int, tasks: list[str],
                object_order_ids: list[int] | None = None) -> tuple[VLModel, list[str]]:
    """The run's model with its method applied, and the names of what trains. Seeded here,
    so that with init=random the frozen weights (never in a checkpoint) are rebuilt exactly
    from the config (load_trained checks them against run.json). object_order_ids: the
    tokenizer's <vis_extra_id_k> ids (`vis_token_ids`), for visual_inputs=reference."""
    if cfg.init_from is not None:  # another run's weights, themselves checked against that run's run.json
        model, continued = starting_point(cfg, feat_dim, vocab_size)
        model.set_visual_inputs(cfg.visual_inputs, cfg.visual_boxes, object_order_ids)  # this run's, not the source's
        torch.manual_seed(cfg.seed)  # the method's new modules
        if continued is not None:  # the source trained this run's method: its modules train on from there
            model.requires_grad_(False)
            params = dict(model.named_parameters())
            for name in continued:
                params[name].requires_grad_(True)
            return model, continued
    else:
        torch.manual_seed(cfg.seed)
        model = build_vl_model(cfg.backbone, feat_dim, init=cfg.init, vocab_size=vocab_size, dropout=cfg.dropout,
                               visual_inputs=cfg.visual_inputs, visual_boxes=cfg.visual_boxes,
                               object_order_ids=object_order_ids)
    return model, set_trainable(model, cfg, tasks)


def dry_run(cfg: TrainConfig) -> str:
    """Build the model with the method applied, offline (random weights, no memory: the
    meta device) and return the table of trainable parameters (vl.train.peft.methods). The
    feature width comes from cfg.feat_dim or the first task's store; the token embedding's
    rows from `embedding_rows` (its note first, where they are an estimate)."""
    cfg = inherit_from_run(cfg)
    feat_dim = cfg.feat_dim
    if feat_dim is None:
        stores = [t.store for t in cfg.tasks if t.store is not None and Path(t.store).is_file()]
        if not stores:
            raise VLError("a dry run needs the feature width: set feat_dim (2048 for RN101 grids, 512 for ViT-B/32) "
                          "or make the tasks' feature stores first")
        store = FeatureStore(stores[0])
        feat_dim = int(store.item_shape(store.default_feature)[-1])
    vocab, estimate = embedding_rows(cfg)
    with torch.device("meta"):
        model = build_vl_model(cfg.backbone, feat_dim, init="random", vocab_size=vocab)
        # the same parameters either way; <vis_extra_id_k> are the last extra_tokens // 2 rows
        rows = model.backbone.get_input_embeddings().num_embeddings
        model.set_visual_inputs(cfg.visual_inputs, cfg.visual_boxes, range(rows - cfg.extra_tokens // 2, rows))
        set_trainable(model, cfg, [t.name for t in cfg.tasks])
    return "\n".join([*([estimate] if estimate else []), budget_table(model)])


def embedding_rows(cfg: TrainConfig) -> tuple[int | None, str]:
    """The token embedding's rows in the model a run builds, found offline, and a note where
    they are only an estimate ("" where exact). The build sizes the embedding to the
    tokenizer's length once `add_extra_tokens` has added the extra tokens it lacks (a T5
    tokenizer has its <extra_id_k> already). The tokenizer is read from a local folder
    (cfg.tokenizer, or the one a started run saved); a hub id of the built-in backbones is
    known (HUB_TOKENIZERS). One still to be trained on the manifests has at most
    tokenizer_vocab_size tokens; another hub id is unknown offline: None, the backbone's own
    vocabulary (a built-in backbone's rows plus the extra tokens)."""
    folder = cfg.tokenizer if cfg.tokenizer is not None else str(tokenizer_dir(cfg.run_dir))
    extra = len(extra_token_names(cfg.extra_tokens))
    if Path(folder).expanduser().is_dir():
        tokenizer = load_tokenizer(folder)
        add_extra_tokens(tokenizer, cfg.extra_tokens)
        return len(tokenizer), ""
    if cfg.tokenizer is None:  # trained on the manifests (none of the extra tokens), up to tokenizer_vocab_size
        return cfg.tokenizer_vocab_size + extra, (
            f"token embedding: at most {cfg.tokenizer_vocab_size + extra:,} rows, the tokenizer_vocab_size of the "
            f"tokenizer the run trains on its manifests (fewer when their texts cannot fill it) + {extra} extra "
            f"tokens; once the run has started, `vl train --resume {cfg.run_dir} --dry-run` counts its own")
    if cfg.tokenizer in HUB_TOKENIZERS:
        return HUB_TOKENIZERS[cfg.tokenizer].length_with_extra_tokens(cfg.extra_tokens), ""
    rows = BACKBONE_SHAPES[cfg.backbone].config["vocab_size"] + extra if cfg.backbone in BACKBONE_SHAPES else None
    return rows, (f"token embedding: the backbone's own rows{f' + {extra} extra tokens' if rows else ''}; the run "
                  f"sizes it to the length of tokenizer {cfg.tokenizer}, unknown offline (a local folder gives it)")


# -- a trained run back in memory ------------------------------------------------------------

CHECKPOINTS = typing.get_args(Checkpoint)  # the ones a run can be evaluated with


@dataclass
class TrainedRun:
    run_dir: Path
    cfg: TrainConfig
    model: VLModel  # in eval mode, on the device asked for
    tokenizer: Any
    checkpoint: str  # which one was loaded
    extra: dict  # the checkpoint's state: epoch, step, best, ...


def load_trained(run_dir: str | os.PathLike, checkpoint: str | None = None, device: str = "cpu") -> TrainedRun:
    """Rebuild the model of `run_dir` and load `checkpoints/<checkpoint>` into it; None: the
    run's `eval_checkpoint` ("best" falls back to "last" when the run never validated)."""
    run_dir = Path(run_dir)
    if not config_path(run_dir).is_file():
        raise VLError(f"{run_dir} is not a vl run directory (no {CONFIG_FILE}): give a folder `vl train` made")
    if checkpoint is not None and checkpoint not in CHECKPOINTS:
        raise VLError(f"checkpoint must be one of {', '.join(CHECKPOINTS)} (got {checkpoint!r})")
    have = [c for c in CHECKPOINTS if has_checkpoint(run_dir, c)]
    if not have:
        raise VLError(f"{run_dir} has no checkpoints yet (training stopped before its first epoch ended): "
                      f"continue it with `vl train --resume {run_dir}`")
    cfg = load_config(TrainConfig, config_path(run_dir), [f"run_dir={run_dir}"])
    # a bundle (vl export) names its own folders (tokenizer, init_from, backbone) relative to itself
    cfg = dataclasses.replace(cfg, **{key: type(getattr(cfg, key))(run_dir / getattr(cfg, key))
                                      for key in bundle_relative(run_dir)})
    checkpoint = checkpoint or cfg.eval_checkpoint
    name = checkpoint if checkpoint in have else LAST if checkpoint == BEST and LAST in have else None
    if name is None:
        raise VLError(f"{run_dir} has no '{checkpoint}' checkpoint; it has: {', '.join(have)}")
    facts = read_run_json(run_dir).get("model") or {}
    if not facts.get("feat_dim") or not facts.get("vocab_size"):
        raise VLError(f"{run_dir}/run.json records no model facts (feat_dim, vocab_size): it was made by an older "
                      "vl; train the run again with this version")
    tokenizer = load_tokenizer(cfg.tokenizer if cfg.tokenizer is not None else str(tokenizer_dir(run_dir)))
    add_extra_tokens(tokenizer, cfg.extra_tokens)
    tokenizer.padding_side = "right"
    model, _ = build_model(cfg, facts["feat_dim"], facts["vocab_size"], [t.name for t in cfg.tasks],
                           vis_token_ids(tokenizer))
    if frozen_sha256(model) != facts.get("frozen_sha256"):
        raise VLError(f"the frozen weights rebuilt for {run_dir} differ from the run's (run.json frozen_sha256): "
                      f"backbone {cfg.backbone!r} ({cfg.init}) changed since training, or another torch version draws "
                      "other random weights", hint="Evaluate with the backbone files (and torch version) it was "
                                                   "trained with.")
    extra = load_checkpoint(run_dir, name, model, restore_rng=False)
    model.to(torch.device(device)).eval()
    return TrainedRun(run_dir, cfg, model, tokenizer, name, extra)


# -- starting a run from another (init_from) -----------------------------------------------

INHERITED = ("backbone", "init", "tokenizer", "extra_tokens")  # what a run takes from the run it starts from


def _source_config(source: Path) -> TrainConfig:
    if not config_path(source).is_file():
        raise VLError(f"init_from {source} is not a vl run directory (no {CONFIG_FILE}): give a folder `vl train` "
                      "made, e.g. a pre-training run")
    return load_config(TrainConfig, config_path(source), [f"run_dir={source}"])


def inherit_from_run(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with the backbone, init, tokenizer and extra_tokens of the run it starts from
    (cfg.init_from; unchanged without one). That run's tokenizer is reused: its trained one
    (`<run>/tokenizer`) or the folder / hub id it named. Setting one of these to something
    else is refused: the weights only fit their own backbone and vocabulary."""
    if cfg.init_from is None:
        return cfg
    source = Path(cfg.init_from)
    src = _source_config(source)
    wanted = {"backbone": src.backbone, "init": src.init, "extra_tokens": src.extra_tokens,
              "tokenizer": src.tokenizer if src.tokenizer is not None else str(tokenizer_dir(source))}
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name in INHERITED}
    clashes = [f"{key}: {getattr(cfg, key)!r} here, {wanted[key]!r} in {source}" for key in INHERITED
               if getattr(cfg, key) not in (defaults[key], wanted[key])]
    if clashes:
        raise VLError(f"this run starts from {source} (init_from) and so uses its {', '.join(INHERITED)}; "
                      f"but the config sets: {'; '.join(clashes)}",
                      hint="Leave these settings out (they come from that run), or drop init_from.")
    return dataclasses.replace(cfg, **wanted)


def starting_model(cfg: TrainConfig, feat_dim: int, vocab_size: int) -> VLModel:
    """The weights of cfg.init_from's best checkpoint (else its last) as a plain VLModel: a
    run whose method adds no modules as it is, a single LoRA merged into its base weights."""
    return starting_point(cfg, feat_dim, vocab_size, continue_method=False)[0]


def continues_method(src: TrainConfig, cfg: TrainConfig) -> bool:
    """Whether `cfg` trains on the modules `src` (its init_from run) trained: the same method
    with the same settings (V&L pre-training with the adapter in place, then fine-tuning that
    adapter), and, where the method keeps modules per task, the same tasks."""
    if src.method != cfg.method:
        return False
    if any(getattr(src, part.name) != getattr(cfg, part.name) for part in applied(cfg.method)):
        return False
    return uses_every_parameter_each_step(cfg.method, cfg) or [t.name for t in src.tasks] == [t.name for t in cfg.tasks]


def starting_point(cfg: TrainConfig, feat_dim: int, vocab_size: int,
                   continue_method: bool = True) -> tuple[VLModel, list[str] | None]:
    """(the weights of cfg.init_from's best checkpoint, else its last; None or the names of
    what trains on). A plain VLModel where the source's method adds no modules, or merges
    them (a single LoRA); else, with `continue_method`, a source that trained this run's
    method with its settings (`continues_method`: an adapter pre-trained in place, then
    fine-tuned) comes with its modules in place and the names of what trains on from there."""
    source = Path(cfg.init_from)
    src = load_trained(source, BEST)
    facts = read_run_json(source)["model"]
    if facts["feat_dim"] != feat_dim:
        raise VLError(f"{source} (init_from) was trained on features {facts['feat_dim']} wide, but this run's stores "
                      f"hold {feat_dim}-wide ones", hint="Extract this run's media with the encoder that run used.")
    if facts["vocab_size"] != vocab_size:
        raise VLError(f"{source} (init_from) has a {facts['vocab_size']}-token vocabulary but this run's tokenizer "
                      f"has {vocab_size}: the tokenizer must be that run's (leave tokenizer and extra_tokens unset)")
    if cfg.dropout is not None and cfg.dropout != src.cfg.dropout:
        raise VLError(f"dropout comes from {source} (init_from), which built its model with dropout "
                      f"{src.cfg.dropout}; this config sets {cfg.dropout}", hint="Leave dropout unset.")
    if carry_over(src.model, src.cfg.method, src.cfg):  # e.g. a single LoRA is merged into the weights
        return src.model, None
    if continue_method and continues_method(src.cfg, cfg):
        return src.model, sorted(name for name, p in src.model.named_parameters() if p.requires_grad)
    raise VLError(f"{source} (init_from) trained with method {src.cfg.method}, whose added modules do not carry "
                      "over to a run of another method", hint=(
                          f"Fine-tune with method {src.cfg.method} and the same {src.cfg.method} settings (its "
                          f"modules then train on from there), or start from a run of {carried_over()}."))
