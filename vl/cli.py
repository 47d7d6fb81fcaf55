"""`vl predict`: a trained run answers a question about a new image or video (vl.runs)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

EXAMPLE = """\b
Examples (runs from `vl demo --out vl_demo`; its encoder is a custom architecture file):
  vl predict --run vl_demo/runs/image-adapter --image vl_demo/world/images/val2014/COCO_val2014_000000000001.jpg \\
      --question "what color is the circle?" --model-config vl_demo/models/demo-clip.json
  vl predict --run vl_demo/runs/video-adapter --video clip.mp4 --task tvqa \\
      --question "What is in the video?" --choice "a red square" --choice "a blue circle"
  vl predict --run runs/vqa --image left.jpg --image right.jpg --task nlvr2 --question "both hold a dog."
  vl predict --run runs/vqa --manifest new_questions.jsonl --media-root photos/ --out answers.jsonl

\b
The answer is printed (a choice's text for multiple choice; `--json` for the details).
The run's CLIP encoder is rebuilt from the provenance its run.json recorded for the
task's feature store, and the new features must match it field for field, so no store
is needed; a run trained on imported features (VALUE's) cannot be rebuilt and says so."""


@click.command("predict", epilog=EXAMPLE, context_settings={"max_content_width": 100})
@click.option("--run", "run_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="A run folder made by `vl train` (or a bundle from `vl export --format bundle`).")
@click.option("--image", "images", type=click.Path(dir_okay=False, path_type=Path), multiple=True,
              help="The image to ask about (twice for NLVR2: left, then right).")
@click.option("--video", type=click.Path(dir_okay=False, path_type=Path), help="The video to ask about.")
@click.option("--question", help="The question (VQA, GQA, TVQA, How2QA) or statement (NLVR2); none for captions.")
@click.option("--choice", "choices", multiple=True, help="A multiple-choice answer (repeat, in order: a0, a1, ...).")
@click.option("--subtitles", type=click.Path(dir_okay=False, path_type=Path),
              help="A JSON file of the video's subtitles: [{\"start\": s, \"end\": s, \"text\": ...}, ...].")
@click.option("--span", nargs=2, type=float, default=None, metavar="START END",
              help="The seconds of the video the question is about (default: the whole video).")
@click.option("--task", help="Which of the run's tasks (default: the only one that takes this input).")
@click.option("--manifest", type=click.Path(dir_okay=False, path_type=Path),
              help="Instead of one question: every example of this manifest (of the run's tasks).")
@click.option("--media-root", type=click.Path(file_okay=False, path_type=Path),
              help="Where the manifest's media are (default: the root its meta file records).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="With --manifest: write one JSON line per example here (default: print them).")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default=None,
              help="Which checkpoint answers (default: the run's eval_checkpoint).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--model-config", type=click.Path(dir_okay=False, path_type=Path),
              help="The open_clip architecture JSON the run's features were made with, when the provenance "
                   "names one but does not hold it (stores made before vl recorded it).")
@click.option("--pretrained", type=click.Path(dir_okay=False, path_type=Path),
              help="The CLIP checkpoint file the run's features were made with, when it has moved (its sha256 "
                   "must match the recorded one).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object (task, answer, run, checkpoint).")
def predict(run_dir, images, video, question, choices, subtitles, span, task, manifest, media_root, out,
            checkpoint, device, model_config, pretrained, as_json) -> None:
    """Answer a question about a new image or video with a trained run.

    Give one image (two for NLVR2) or one video, and the question; or a --manifest of
    many. The media are encoded with the run's own CLIP encoder and answered with the
    task's decoding (or ranking) as `vl evaluate` does.
    """
    from vl.shared.errors import VLError

    if manifest is None and not images and video is None:
        raise click.UsageError("give --image PATH (twice for NLVR2), --video PATH, or --manifest M.jsonl")
    if manifest is not None and (images or video or question or choices):
        raise click.UsageError("--manifest answers its own examples: drop --image/--video/--question/--choice")
    if (out or media_root) and manifest is None:
        raise click.UsageError("--out and --media-root go with --manifest")
    subs = None
    if subtitles is not None:
        try:
            subs = json.loads(subtitles.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise VLError(f"--subtitles {subtitles}: not a readable JSON file ({e})",
                          hint='Give a JSON list like [{"start": 0.0, "end": 2.5, "text": "hello"}].') from None
        if not isinstance(subs, list) or not all(isinstance(s, dict) and {"start", "end", "text"} <= s.keys()
                                                 for s in subs):
            raise VLError(f"--subtitles {subtitles}: must be a JSON list of {{start, end, text}} objects")

    if out is not None:
        from vl.shared.atomic import refuse_overwriting_inputs

        refuse_overwriting_inputs(out, [("--manifest", manifest)])
    from vl.runs import load_run

    run = load_run(run_dir, checkpoint, device, model_config, pretrained)
    if manifest is not None:
        from vl.shared.atomic import write_text_atomic

        results = run.predict_manifest(manifest, media_root, [task] if task else None)
        lines = "".join(json.dumps({"id": i, **r}, ensure_ascii=False, sort_keys=True) + "\n"
                        for i, r in results.items())
        failed = sum("error" in r for r in results.values())
        if out is not None:
            write_text_atomic(out, lines)
            click.echo(f"{len(results) - failed} predictions written to {out}", err=True)
        else:
            click.echo(lines, nl=False)
        _notes(run)
        if failed:
            click.secho(f"warning: {failed} example(s) have no prediction: their media failed (see 'error')",
                        fg="yellow", err=True)
            sys.exit(1)
        return
    answer = run.predict(list(images) if images else None, video=video, question=question,
                         choices=list(choices) or None, subtitles=subs, span=tuple(span) if span else None, task=task)
    if as_json:
        chosen = task or run.choose_task(None, "video" if video else "image", bool(choices), len(images) == 2)
        click.echo(json.dumps({"task": chosen, "answer": answer, "run": str(run.run_dir),
                               "checkpoint": run.trained.checkpoint}, ensure_ascii=False))
    else:
        click.echo(answer)
    _notes(run)


def _notes(run) -> None:
    for note in run.notes:
        click.echo(f"note: {note}", err=True)
