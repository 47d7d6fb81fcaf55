"""`vl export RUN --format peft|adapters|bundle`: a trained run in a form that others load.

    peft      LoRA and prompt tuning as a `peft` checkpoint that
              `peft.AutoPeftModelForSeq2SeqLM.from_pretrained(OUT)` loads: adapter_config.json
              with base_model_name_or_path set, adapter_model.safetensors, the run's tokenizer
    adapters  bottleneck adapters and Compacter as an AdapterHub (`adapters` library) adapter:
              `adapters.init(base); base.load_adapter(OUT, use_safetensors=True)`
    bundle    the run folder made self-contained and relocatable: `vl evaluate --run OUT`
              and vl.train.build.load_trained work after moving it and deleting what it came from

Which of peft / adapters a method can be written in, each method's module declares
(`register_method(..., exports={format: writer})`, vl.train.peft.registry); every method
can be bundled. The peft and adapters folders also hold what vl trained that those
libraries have no place for: `vl_extras.safetensors` (the visual embedding, `visual_embedding.*`;
for adapters the trained LayerNorms, `backbone.<the transformers model's name>`), and
`vl_export.json` (the run, checkpoint, feature width and visual-input settings);
`load_peft_export` puts a peft export back together as a VLModel.
The backbone named as the base is the run's own pretrained one (its hub id or folder) when
the run's frozen weights are exactly those; otherwise (random init, a run started from
another, a vocabulary the library cannot resize to) the frozen backbone is written into
`base_model/` and named by its absolute path.

Everything is written into a temporary folder beside OUT and renamed into place at the end,
so a refused or failed export leaves nothing behind. torch is imported inside the functions
so that `vl export --help` stays instant.
"""
from __future__ import annotations

import json
import os
import shutil
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import click

from vl.shared.atomic import dumps_json, temporary_sibling
from vl.shared.errors import VLError
from vl.shared.run_dir import (BEST, BUNDLE_JSON, CHECKPOINTS, CONFIG_FILE, LAST, TOKENIZER_DIR, bundle_relative,
                               config_path, has_checkpoint)

if TYPE_CHECKING:
    from vl.train.build import TrainedRun

Format = Literal["peft", "adapters", "bundle"]
FORMATS = typing.get_args(Format)
EXPORT_JSON = "vl_export.json"
EXTRAS_FILE = "vl_extras.safetensors"
BASE_DIR = "base_model"
# copied into a bundle as they are (what evaluation, reports and predictions read)
BUNDLE_FILES = ("run.json", "metrics.jsonl", "curves.png", "curves.svg")
SCHEMA_VERSION = 1

EXAMPLE = """\b
Examples (runs of the demo world: `vl demo --out vl_demo`):
  vl export vl_demo/runs/image-lora --format peft --out exports/lora-peft
  python -c "from peft import AutoPeftModelForSeq2SeqLM as A; print(A.from_pretrained('exports/lora-peft'))"
  vl export vl_demo/runs/image-adapter --format adapters --out exports/adapter-hub
  vl export vl_demo/runs/image-adapter --format bundle --out /elsewhere/image-adapter
  vl evaluate --run /elsewhere/image-adapter   # works without vl_demo/runs (and its init_from run)
  vl export vl_demo/runs/image-lora --format peft --push-to-hub me/vl-lora   # needs `hf auth login`

\b
Formats by method: `vl list methods` names the methods; peft takes lora and prompt,
adapters takes adapter and compacter (one shared by all tasks), bundle takes every run.
Runs with one LoRA or prompt per task export one task's: --task vqa."""


@click.command("export", epilog=EXAMPLE, context_settings={"max_content_width": 100})
@click.argument("run", type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True,
              help="peft (LoRA, prompt tuning), adapters (AdapterHub: adapter, compacter) or bundle (any run).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="The folder to write (must not exist); default: RUN-FORMAT beside the run.")
@click.option("--checkpoint", type=click.Choice([LAST, BEST]), default=None,
              help="Which checkpoint to export (default: the run's eval_checkpoint); a bundle keeps both.")
@click.option("--task", default=None, help="For a run with one LoRA or prompt per task: the task to export.")
@click.option("--push-to-hub", "repo", metavar="OWNER/NAME", default=None,
              help="Then upload the folder to this Hugging Face hub repository (created if missing; needs a token).")
@click.option("--private", is_flag=True, help="With --push-to-hub: create the repository private.")
def export(run: Path, fmt: str, out: Path | None, checkpoint: str | None, task: str | None, repo: str | None,
           private: bool) -> None:
    """Write RUN (a folder `vl train` made) as a peft checkpoint, an AdapterHub adapter or a
    relocatable bundle, and optionally upload it to the Hugging Face hub."""
    out = out if out is not None else run.parent / f"{run.name}-{fmt}"
    written = export_run(run, fmt, out, checkpoint=checkpoint, task=task)
    click.echo(f"wrote {written} ({fmt})")
    if repo is not None:
        click.echo(f"uploaded to {push_to_hub(written, repo, private=private)}")


# -- the whole export: check, write into a temporary folder, rename ---------------------------

def export_run(run_dir: str | os.PathLike, fmt: str, out: str | os.PathLike, checkpoint: str | None = None,
               task: str | None = None) -> Path:
    """Write the run `run_dir` in format `fmt` to the new folder `out` (see the module docstring);
    returns `out`. Refused before any work: a format the run's method cannot be written in
    (the message names those it can), an `out` that exists."""
    from vl.train.peft.methods import METHODS  # noqa: F401  (fills the registry)
    from vl.train.peft.registry import export_formats

    run_dir, out = Path(run_dir), Path(out)
    if not config_path(run_dir).is_file():
        raise VLError(f"{run_dir} is not a vl run directory (no {CONFIG_FILE}): give a folder `vl train` made")
    if fmt not in FORMATS:
        raise VLError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    method = json.loads(config_path(run_dir).read_text(encoding="utf-8")).get("method", "full")
    formats = export_formats(method)
    if fmt not in formats:
        raise VLError(f"a run of method {method} cannot be written as {fmt}; it can be written as: {', '.join(formats)}")
    if out.exists():
        raise VLError(f"{out} exists: give another --out, or remove it first")
    if fmt == "bundle" and task is not None:
        raise VLError("--task is for peft and adapters exports; a bundle holds every task")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(out)
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed export of this process id
    try:
        if fmt == "bundle":
            write_bundle(run_dir, tmp, checkpoint)
        else:
            write_library_format(run_dir, fmt, tmp, out, checkpoint, task)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# -- peft and AdapterHub ----------------------------------------------------------------------

def write_library_format(run_dir: Path, fmt: str, tmp: Path, out: Path, checkpoint: str | None,
                         task: str | None) -> None:
    """The method's writer (its `exports[fmt]`), then what every such folder holds: the
    tokenizer, the base backbone's name (or the backbone itself), vl_extras, vl_export.json."""
    from safetensors.torch import save_file

    from vl.train.build import load_trained
    from vl.train.peft.registry import get_method

    trained = load_trained(run_dir, checkpoint)
    cfg, model = trained.cfg, trained.model
    writer = get_method(cfg.method).exports[fmt]
    try:
        written = set(writer(model, getattr(cfg, cfg.method, None), tmp, task))
    except VLError as e:
        raise VLError(f"{run_dir} cannot be written as {fmt}: {e}",
                      hint=f"Write it as a bundle instead: vl export {run_dir} --format bundle") from None
    trained.tokenizer.save_pretrained(str(tmp))
    base = _base_model(trained, fmt, tmp, out)
    extras = {name: p.detach().cpu().contiguous() for name, p in model.named_parameters()
              if p.requires_grad and name not in written and name.startswith(("visual_embedding.", "backbone."))}
    save_file(extras, str(tmp / EXTRAS_FILE))
    visual = model.visual_embedding
    facts = {"kind": "vl.export", "schema_version": SCHEMA_VERSION, "format": fmt, "method": cfg.method,
             "run": str(run_dir.resolve()), "checkpoint": trained.checkpoint, "task": task, "base_model": base,
             "model_type": model.config.model_type, "feat_dim": visual.feat_dim, "max_images": visual.max_images,
             "visual_inputs": model.visual_inputs, "visual_boxes": model.visual_boxes,
             "extras": sorted(extras)}
    (tmp / EXPORT_JSON).write_text(dumps_json(facts), encoding="utf-8")


def load_peft_export(folder: str | os.PathLike):
    """A `peft` export back as a vl model that reads CLIP features (needs the `peft` library):
    AutoPeftModelForSeq2SeqLM's model, a LoRA merged into its weights or a prompt as the
    encoder prompt, with the visual embedding of vl_extras.safetensors and the visual-input
    settings of vl_export.json. Returns the VLModel, in eval mode."""
    from peft import AutoPeftModelForSeq2SeqLM
    from safetensors.torch import load_file

    from vl.train.model import VLModel
    from vl.train.peft.prompt import SHARED, EncoderPrompt, Prompt
    from vl.train.tokenizer import load_tokenizer, vis_token_ids

    folder = Path(folder)
    facts = json.loads((folder / EXPORT_JSON).read_text(encoding="utf-8")) if (folder / EXPORT_JSON).is_file() else {}
    if facts.get("format") != "peft":
        raise VLError(f"{folder} is not a peft export of vl (no {EXPORT_JSON} of format peft): give a folder "
                      "`vl export RUN --format peft` wrote")
    loaded = AutoPeftModelForSeq2SeqLM.from_pretrained(str(folder))
    prompt = loaded.peft_config["default"].peft_type == "PROMPT_TUNING"
    vectors = loaded.get_prompt_embedding_to_save("default") if prompt else None  # (P, d)
    backbone = loaded.get_base_model() if prompt else loaded.merge_and_unload()
    reference = facts["visual_inputs"] == "reference"
    model = VLModel(backbone, facts["feat_dim"], facts["max_images"], facts["visual_inputs"], facts["visual_boxes"],
                    vis_token_ids(load_tokenizer(str(folder))) if reference else None)
    extras = {k: v for k, v in load_file(str(folder / EXTRAS_FILE)).items() if k.startswith("visual_embedding.")}
    missing = {f"visual_embedding.{k}" for k in model.visual_embedding.state_dict()} - set(extras)
    if missing:
        raise VLError(f"{folder / EXTRAS_FILE} lacks {', '.join(sorted(missing))}: export the run again")
    model.load_state_dict(extras, strict=False)
    if vectors is not None:
        fixed = Prompt(vectors.shape[0], vectors.shape[1], 0, reparameterize=False, dtype=vectors.dtype)
        fixed.embedding.weight.data.copy_(vectors)
        model.encoder_prompt = EncoderPrompt({SHARED: fixed}, vectors.shape[0])
    return model.eval()


def _named_base(trained: "TrainedRun") -> tuple[str | None, int | None]:
    """(the hub id or absolute folder of the pretrained backbone the run's frozen weights are, its
    vocabulary size), or (None, None) when they are no published backbone's (random init, a run
    started from another, a backbone config that cannot be read here)."""
    from transformers import AutoConfig

    from vl.train.model import BACKBONE_SHAPES

    cfg = trained.cfg
    if cfg.init != "pretrained" or cfg.init_from is not None:
        return None, None
    shape = BACKBONE_SHAPES.get(cfg.backbone)
    if shape is not None:
        return shape.hub_id, shape.config["vocab_size"]
    local = Path(cfg.backbone).expanduser()
    name = str(local.resolve()) if local.is_dir() else cfg.backbone
    try:
        return name, AutoConfig.from_pretrained(name).vocab_size
    except (OSError, ValueError):
        return None, None


def _base_model(trained: "TrainedRun", fmt: str, tmp: Path, out: Path) -> str:
    """Name the backbone the export goes on (peft: in adapter_config.json) and return that name;
    write the frozen backbone into BASE_DIR where no published one is the run's. A LoRA on a
    pretrained backbone whose vocabulary the run grew (extra_tokens) names the pretrained one and
    carries the new rows as peft trainable tokens (AutoPeftModel grows the vocabulary to the
    tokenizer's)."""
    model = trained.model
    vocab = model.backbone.get_input_embeddings().num_embeddings
    name, base_vocab = _named_base(trained)
    config_file = tmp / "adapter_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    grown_lora = fmt == "peft" and config.get("peft_type") == "LORA" and base_vocab is not None and vocab > base_vocab
    if name is None or (vocab != base_vocab and not grown_lora):
        plain_backbone(trained).save_pretrained(str(tmp / BASE_DIR))
        name = str(out.resolve() / BASE_DIR)
    elif grown_lora:
        _add_trainable_tokens(model, config, tmp / "adapter_model.safetensors", base_vocab)
    if fmt == "peft":
        config["base_model_name_or_path"] = name
    else:
        config["model_name"] = name
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return name


def _add_trainable_tokens(model, config: dict, weights: Path, base_vocab: int) -> None:
    """peft's trainable tokens for the rows base_vocab.. of the run's (tied) embedding and LM head:
    their values, and the whole table as the layer's base (the rows HF's resize would draw differ)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(weights))
    backbone = model.backbone
    table = backbone.get_input_embeddings().weight.detach().cpu().contiguous()
    rows = table[base_vocab:].clone()
    owners = {id(backbone.get_input_embeddings()), id(backbone.get_output_embeddings())}
    for path, module in backbone.named_modules():
        if id(module) in owners:
            tensors[f"base_model.model.{path}.token_adapter.base_layer.weight"] = table.clone()  # a file per key
            tensors[f"base_model.model.{path}.token_adapter.trainable_tokens_delta"] = rows.clone()
    save_file(tensors, str(weights))
    config["trainable_token_indices"] = list(range(base_vocab, table.shape[0]))


def plain_backbone(trained: "TrainedRun"):
    """The run's frozen backbone as it was before its method was applied (a plain transformers
    model): rebuilt as vl.train.build.build_model builds it (same seed, or the init_from run)."""
    import torch

    from vl.train.build import starting_model
    from vl.train.model import build_vl_model

    cfg, model = trained.cfg, trained.model
    vocab = model.backbone.get_input_embeddings().num_embeddings
    if cfg.init_from is not None:
        return starting_model(cfg, model.visual_embedding.feat_dim, vocab).backbone
    torch.manual_seed(cfg.seed)
    return build_vl_model(cfg.backbone, model.visual_embedding.feat_dim, init=cfg.init, vocab_size=vocab,
                          dropout=cfg.dropout).backbone


# -- bundle -------------------------------------------------------------------------------------

def write_bundle(run_dir: Path, tmp: Path, checkpoint: str | None = None) -> None:
    """The run as a self-contained folder: its config with the folders it needs inside the
    bundle and named relative to it (listed in bundle.json, which vl.train.build.load_trained
    reads), the tokenizer, the checkpoints (`checkpoint` only, if given), and the run it started
    from (init_from) bundled inside as `init_from/`. Manifests and feature stores are data, not
    the model: they stay where they are, named by absolute paths."""
    from vl.train.tokenizer import load_tokenizer

    cfg = json.loads(config_path(run_dir).read_text(encoding="utf-8"))
    for key in bundle_relative(run_dir):  # a bundle bundled again
        cfg[key] = str(run_dir / cfg[key])
    tmp.mkdir(parents=True)
    relative = []
    names = [checkpoint] if checkpoint else [LAST, BEST]
    kept = [n for n in names if has_checkpoint(run_dir, n)]
    if not kept:
        raise VLError(f"{run_dir} has no {' or '.join(names)} checkpoint to bundle")
    for name in kept:
        shutil.copytree(run_dir / CHECKPOINTS / name, tmp / CHECKPOINTS / name)
    for name in BUNDLE_FILES:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, tmp / name)
    if cfg.get("tokenizer") is None:
        shutil.copytree(run_dir / TOKENIZER_DIR, tmp / TOKENIZER_DIR)
    else:  # a folder or hub id: stored as it loads (load_trained adds the extra tokens again)
        load_tokenizer(str(cfg["tokenizer"])).save_pretrained(str(tmp / TOKENIZER_DIR))
        cfg["tokenizer"] = TOKENIZER_DIR
        relative.append("tokenizer")
    source = cfg.get("init_from")
    if source is not None:
        write_bundle(Path(source), tmp / "init_from")  # starting_model reads its best (else last)
        cfg["init_from"] = "init_from"
        relative.append("init_from")
    from vl.train.model import BACKBONE_SHAPES

    backbone = Path(str(cfg.get("backbone", ""))).expanduser()
    # a backbone folder goes in, unless the run starts from another (whose bundle holds it)
    if source is None and cfg.get("backbone") not in BACKBONE_SHAPES and backbone.is_dir():
        shutil.copytree(backbone, tmp / "backbone")
        cfg["backbone"] = "backbone"
        relative.append("backbone")
    for spec in cfg.get("tasks", []):
        for key in ("train_manifest", "val_manifest", "test_manifest", "store"):
            if spec.get(key) is not None:
                spec[key] = str(Path(spec[key]).resolve())
    cfg["tokenizer_manifests"] = []  # only for training a tokenizer; the bundle has its own
    cfg["run_dir"] = "."
    (tmp / CONFIG_FILE).write_text(dumps_json(cfg), encoding="utf-8")
    facts = {"kind": "vl.bundle", "schema_version": SCHEMA_VERSION, "made_from": str(run_dir.resolve()),
             "relative": relative, "checkpoints": kept}
    (tmp / BUNDLE_JSON).write_text(dumps_json(facts), encoding="utf-8")


# -- the hub ------------------------------------------------------------------------------------

def push_to_hub(folder: str | os.PathLike, repo: str, private: bool = False) -> str:
    """Upload `folder` to the hub model repository `repo` (created if missing) with
    huggingface_hub; returns the commit's URL. Needs a token (`hf auth login` or HF_TOKEN)."""
    from huggingface_hub import HfApi, get_token

    token = get_token()
    if not token:
        raise VLError(f"--push-to-hub {repo} needs a Hugging Face token: run `hf auth login` or set HF_TOKEN",
                      hint=f"The export itself is written: {folder}; upload it later with `hf upload {repo} {folder}`.")
    api = HfApi(token=token)
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo, folder_path=str(folder), commit_message=f"vl export of {folder}")
    except Exception as e:  # network, permissions, offline mode: the library's own message
        raise VLError(f"uploading {folder} to the hub repository {repo} failed: {e}",
                      hint=f"The export is written: {folder}; upload it later with `hf upload {repo} {folder}`.") \
            from None
    return str(getattr(commit, "commit_url", commit))
