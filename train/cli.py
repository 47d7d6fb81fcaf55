"""`vl train`: one run of VL-T5 / VL-BART on cached CLIP features, from a YAML config.

Thin on purpose: it reads the config (vl.shared.config), prints it resolved, and calls
vl.train.loop.train. torch is imported inside the command, so `vl --help` stays instant.
"""
from __future__ import annotations

from pathlib import Path

import click

EXAMPLE = """\b
Example (the demo world: `vl data demo`, convert.sh, `vl extract images`):
  cat > vqa_gqa.yaml <<EOF
  run_dir: runs/vqa-gqa
  epochs: 5
  tasks:
    - {name: vqa, train_manifest: manifests/vqa2_train.jsonl, store: features/coco.h5, batch_size: 32}
    - {name: gqa, train_manifest: manifests/gqa_train.jsonl, store: features/coco.h5, batch_size: 32,
       val_manifest: manifests/gqa_val.jsonl}
  EOF
  vl train -c vqa_gqa.yaml --set optim.lr=3e-4 --set epochs=10
  vl train --resume runs/vqa-gqa          # after a kill: continues from the latest checkpoint
  vl train --resume runs/vqa-gqa --resume-from step-2000   # or from the checkpoint named

\b
Logging and training controls (settings, as any other):
  vl train -c vqa_gqa.yaml --set 'logging.report_to=[jsonl, tensorboard]' --set logging.every_n_steps=20 \\
      --set max_steps=5000 --set save_every_n_steps=1000 --set keep_last_n=2 \\
      --set early_stopping.patience=3 --quiet
  tensorboard --logdir runs/vqa-gqa/tensorboard

\b
Composing configs: a file may build on another (a paper preset, a shared base) and change
a few settings; several -c files merge left to right, then each --set:
  cat > mine.yaml <<EOF
  base: configs/paper/image/single_adapter.yaml   # relative to this file's folder
  run_dir: runs/mine
  optim: {lr: 3e-4}                     # only lr: the base's other optim settings stay
  EOF
  vl train -c mine.yaml --print-config   # each setting with its source: # from FILE, # --set ..., # default
  vl train -c configs/paper/image/single_adapter.yaml -c mine-paths.yaml --set seed=1

\b
The run dir gets config.json (the resolved config), run.json (inputs, digests, versions,
parameter budget), metrics.jsonl (a line an epoch, and one every logging.every_n_steps
steps), eval/epoch_N.json (predictions) and checkpoints/{last,best,step-N}/ (the trainable
tensors, optimizer and RNG states).
Every setting, with its default: `vl train --print-config`."""


class MethodOption(click.Option):
    """`--method`, whose help names the registered methods (vl.train.peft.registry) as it is
    shown: the method modules that fill the registry import torch, so they load for `vl train
    --help` only, never for `vl --help` or a command that does not train."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        from vl.train.peft.methods import METHODS

        self.help = (f"What trains: {', '.join(METHODS)} (`vl list methods` says what each trains); its settings "
                     "are the config section of that name (e.g. --set adapter.sharing=multiple). Same as --set "
                     "method=NAME.")
        return super().get_help_record(ctx)


@click.command("train", epilog=EXAMPLE, context_settings={"max_content_width": 100})
@click.option("-c", "--config", "config_paths", type=click.Path(dir_okay=False, path_type=Path), multiple=True,
              help="YAML file of settings; the defaults fill in the rest. Repeatable: later files merge over "
                   "earlier ones. A file may build on another with `base: other.yaml` (relative to the file).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override one setting by its dotted key (repeatable), e.g. --set optim.lr=3e-4.")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Continue the run in this folder from its latest checkpoint, `last` or a `step-N` (with its "
                   "saved config.json; --set still applies).")
@click.option("--resume-from", "resume_from", metavar="CHECKPOINT",
              help="With --resume: continue from this checkpoint (e.g. step-2000) instead of the latest; the "
                   "metrics logged after it are dropped.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars (TQDM_DISABLE=1 does the same).")
@click.option("--features-in-memory", is_flag=True,
              help="Read the training features into memory once (refused when they would not fit); "
                   "same as --set features_in_memory=true.")
@click.option("--skip-missing", is_flag=True,
              help="Train without the examples whose media are missing from the feature store (a warning says "
                   "how many) instead of stopping; same as --set skip_missing=true.")
@click.option("--method", metavar="NAME", cls=MethodOption)  # its help: the registered methods, as shown
@click.option("--print-config", is_flag=True,
              help="Print the resolved config, each setting followed by where it came from (`# from FILE`, "
                   "`# --set KEY=VALUE`, `# default`), and exit without training.")
@click.option("--dry-run", is_flag=True,
              help="Build the model with the method applied (offline, random weights) and print its trainable "
                   "parameters per group, then exit.")
def train(config_paths: tuple[Path, ...], overrides: tuple[str, ...], resume_dir: Path | None, resume_from: str | None,
          quiet: bool, features_in_memory: bool, skip_missing: bool, method: str | None, print_config: bool,
          dry_run: bool) -> None:
    """Train VL-T5 / VL-BART on one or more tasks at once (stage 2).

    Settings come from the built-in defaults, then the YAML files (-c, left to right,
    each over its `base:` chain), then each --set. Files merge key by key (nested
    mappings too); a list or a value replaces the one before. A line says what trains;
    the resolved config goes to the run's config.json (`--print-config` shows it with
    each setting's source). Paths in the config are relative to the current folder;
    `base:` is relative to the file that names it.

    On several GPUs or machines, start the same command under torchrun (DDP: every
    rank takes its share of each step's batches; `batch_size` is per rank):
    `torchrun --nproc-per-node 4 -m vl.shared.cli train -c run.yaml`.
    """
    from vl.shared.config import ConfigSources, dump_config, load_config_with_sources
    from vl.shared.errors import VLError
    from vl.train.config import TrainConfig

    overrides = (*([f"method={method}"] if method else []), *overrides,
                 *(["features_in_memory=true"] if features_in_memory else []),
                 *(["skip_missing=true"] if skip_missing else []))

    if resume_from is not None and resume_dir is None:
        raise click.UsageError("--resume-from names a checkpoint of the run given with --resume RUN_DIR")
    if resume_dir is not None:
        if config_paths:
            raise VLError("give either -c CONFIG (a new run) or --resume RUN_DIR (its saved config.json), not both")
        from vl.shared.run_dir import CONFIG_FILE

        saved = resume_dir / CONFIG_FILE
        if not saved.is_file():
            raise VLError(f"{saved} not found: {resume_dir} is not a vl run directory (or it never started)")
        cfg, sources = load_config_with_sources(TrainConfig, saved, [f"run_dir={resume_dir}", *overrides])
    elif not config_paths and not overrides:
        if print_config:  # every setting with its default (tasks still to fill in)
            click.echo(dump_config(TrainConfig(), ConfigSources()))
            return
        raise click.UsageError("give a config file (-c run.yaml) or a run to continue (--resume RUN_DIR); "
                               "see `vl train --help` for an example")
    else:
        cfg, sources = load_config_with_sources(TrainConfig, config_paths, list(overrides))
    from vl.train.build import INHERITED, inherit_from_run

    own, cfg = cfg, inherit_from_run(cfg)  # init_from: the backbone and tokenizer of the run it starts from
    for key in INHERITED:
        if getattr(cfg, key) != getattr(own, key):
            sources = sources.with_source(key, f"from {cfg.init_from} (init_from)")
    if print_config:
        click.echo(dump_config(cfg, sources))
        return
    if dry_run:
        from vl.train.build import dry_run as budget

        click.echo(f"method {cfg.method} on {cfg.backbone}, tasks: {', '.join(t.name for t in cfg.tasks)}")
        click.echo(budget(cfg))
        return

    import torch

    from vl.shared import distributed
    from vl.shared.disk_full import DiskFullError
    from vl.shared.run_dir import config_path, metrics_path
    from vl.shared.stopping import keep, stop_on_signals
    from vl.train.loop import train as run_training

    backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
    ranks = distributed.ranks_from_env(backend)
    # SIGINT/SIGTERM: the loop stops between optimizer steps and saves a step-N checkpoint (exit 130/143)
    with stop_on_signals(f"the run's checkpoints are kept; continue with `vl train --resume {cfg.run_dir}`"):
        try:
            if ranks.is_main:
                click.echo(start_line(cfg, sources, resume_dir is not None))
                if ranks.world_size > 1:
                    click.echo(f"torchrun: {ranks.world_size} ranks ({backend})")
            run_dir = run_training(cfg, resume=resume_dir is not None, ranks=ranks, progress=not quiet,
                                   resume_from=resume_from)
            keep(f"training had finished: {run_dir} is complete")
        except DiskFullError as e:  # a resume goes on from the latest checkpoint (or from the start, if none yet)
            if config_path(cfg.run_dir).is_file():
                raise e.retold(then=f"continue with `vl train --resume {cfg.run_dir}`") from None
            raise  # stopped before the run dir held a run: the same command starts it
        finally:
            distributed.close()
        if ranks.is_main:
            click.echo(f"done: {run_dir} (metrics in {metrics_path(run_dir)})")


TEST_BACKBONES = ("tiny-t5", "tiny-bart")


def start_line(cfg, sources, resume: bool) -> str:
    """What is about to train, in a few lines (the whole resolved config is in the run's
    config.json, and `--print-config` prints it), with a warning when the backbone is the
    tiny test model only because the config names none."""
    from vl.shared.run_dir import config_path

    what = "resuming" if resume else "training"
    lines = [f"{what} {cfg.run_dir}: method {cfg.method} on {cfg.backbone} ({cfg.init}), tasks "
             f"{', '.join(t.name for t in cfg.tasks)}, {cfg.epochs} epochs; every setting: "
             f"{config_path(cfg.run_dir)} (or add --print-config)"]
    if cfg.backbone in TEST_BACKBONES and sources.of("backbone") == "default":
        lines.insert(0, click.style(f"warning: the config names no backbone, so this run uses {cfg.backbone}, a tiny "
                                    "random model for tests; set backbone (t5-base, bart-base, ...) or start from a "
                                    "paper preset: `base: configs/paper/image/single_adapter.yaml`", fg="yellow"))
    return "\n".join(lines)


@click.command("methods")
def list_methods() -> None:
    """The registered PEFT methods (vl.train.peft.registry)."""
    from vl.shared.cli import print_rows
    from vl.train.peft.methods import METHODS
    from vl.train.peft.registry import export_formats

    print_rows([(name, f"{spec.summary}; vl export: {', '.join(export_formats(name))}")
                for name, spec in METHODS.items()])


@click.command("tasks")
def list_tasks() -> None:
    """The registered tasks (vl.train.tasks)."""
    from vl.shared.cli import print_rows
    from vl.train.tasks import TASKS

    print_rows([(name, f"{task.media_kind}, scored by {task.metric}, prefix {task.prefix!r}")
                for name, task in TASKS.items()])
