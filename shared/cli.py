"""The `vl` command root.

Stage commands are named by import string and imported only when run, so `vl --help`
never imports torch. Every stage module's CLI stays thin: it parses options, then
imports its workers inside the command.
"""
from __future__ import annotations

import errno
import importlib
import sys

import click

from vl.shared.disk_full import DISK_FULL_ERRNOS, disk_full_errno, disk_full_message
from vl.shared.errors import VLError
from vl.shared.stopping import Stopped
from vl.shared.version import __version__

# name -> (import string, one-line help shown by `vl --help` without importing)
STAGE_COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("vl.data_manifests.cli:data", "Dataset manifests: convert official files, check them, write the demo world."),
    "extract": ("vl.extract.cli:extract", "Stage 1: CLIP features of images and video frames into a resumable HDF5 feature store."),
    "train": ("vl.train.cli:train", "Stage 2: train PEFT variants of VL-T5 / VL-BART on cached features."),
    "evaluate": ("vl.evaluate.cli:evaluate", "Stage 3: score runs with each task's official metric."),
    "report": ("vl.evaluate.report:report", "Compare runs: one table (CSV, Markdown) and the score-vs-budget plot."),
    "predict": ("vl.cli:predict", "Answer a question about a new image or video with a trained run."),
    "export": ("vl.train.export:export", "A trained run as a peft checkpoint, an AdapterHub adapter or a relocatable bundle."),
    "demo": ("vl.evaluate.demo:demo", "The whole pipeline offline on a synthetic world, in minutes (start here)."),
    "list": ("vl.shared.cli:list_registered", "What is registered: methods, tasks, converters, metrics."),
}
# `vl list KIND`: each stage lists its own registry (methods imports torch, the others do not)
LIST_COMMANDS: dict[str, tuple[str, str]] = {
    "methods": ("vl.train.cli:list_methods", "PEFT methods a run can name (`method:`) and what each trains."),
    "tasks": ("vl.train.cli:list_tasks", "Tasks a run can train (`tasks: - name:`), their media and metric."),
    "converters": ("vl.data_manifests.cli:list_converters", "Official release formats `vl data convert` reads."),
    "metrics": ("vl.evaluate.cli:list_metrics", "Official metrics the tasks are scored with."),
}


def os_error_message(error: OSError) -> str | None:
    """One line for the file-system errors a user fixes outside vl (a folder they may not
    write, a full disk), naming the path; None for the rest, which stay tracebacks (bugs)."""
    where = f" {error.filename}" if error.filename else ""
    if isinstance(error, PermissionError):
        return f"permission denied:{where}; choose a folder you may write (or read), or fix its permissions"
    if error.errno in DISK_FULL_ERRNOS:
        return disk_full_message(error.filename, error.errno)
    if error.errno == errno.EROFS:
        return f"read-only file system:{where}; write somewhere else"
    return None


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def __init__(self, *args, lazy: dict[str, tuple[str, str]], **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module_name, attr = self.lazy[name][0].split(":")
            return getattr(importlib.import_module(module_name), attr)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, self.lazy[name][1]) for name in sorted(self.lazy)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except VLError as e:
            click.secho(f"error: {e}", fg="red", err=True)
            ctx.exit(1)
        except OSError as e:
            message = os_error_message(e)
            if message is None:
                raise
            click.secho(f"error: {message}", fg="red", err=True)
            ctx.exit(1)
        except Stopped as e:  # SIGINT/SIGTERM, between batches (vl.shared.stopping): 130 / 143
            click.secho(f"\n{e}", fg="yellow", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:  # Ctrl-C where no batch loop listens (a command without batches)
            click.secho("\ninterrupted by SIGINT: run the same command again (vl writes its files whole: none is "
                        "half-written)", fg="yellow", err=True)
            ctx.exit(130)
        except Exception as e:  # a library's own error for a full disk (safetensors, tokenizers, torch.save)
            error_number = disk_full_errno(e)
            if error_number is None:
                raise
            click.secho(f"error: {disk_full_message(None, error_number)}", fg="red", err=True)
            ctx.exit(1)


@click.group(
    cls=LazyGroup,
    lazy=STAGE_COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, "--version", prog_name="vl")
def cli() -> None:
    """vl: parameter-efficient transfer learning for vision-and-language tasks.

    \b
    The three stages, linked by files on disk:
      1. vl extract images|videos   media -> CLIP features in one HDF5 feature store
         vl extract import          or released video features (VALUE's .npz) into one
      2. vl train                   PEFT training of VL-T5 / VL-BART on those features
      3. vl evaluate                official metrics of each task; vl report compares runs
    Dataset manifests (vl data) say which examples and media each task uses.

    Run `vl COMMAND --help` for the options of a command.
    """


def print_rows(rows: list[tuple[str, str]]) -> None:
    """One line per registered thing: its name, padded, then its short description."""
    width = max((len(name) for name, _ in rows), default=0)
    for name, description in rows:
        click.echo(f"{name:<{width}}  {description}".rstrip())


list_registered = LazyGroup("list", lazy=LIST_COMMANDS, help="List what is registered, one line each: name and "
                                                             "a short description.")


def main() -> None:
    cli(prog_name="vl")


if __name__ == "__main__":  # python -m vl.shared.cli
    sys.exit(main())
