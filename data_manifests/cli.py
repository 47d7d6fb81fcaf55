"""`vl data`: dataset manifests from official release files, checks, and the demo world.
Thin click layer; the converters are imported inside the commands."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click


CONVERT_HELP = """Convert official release files into a dataset manifest (JSONL + meta).

\b
DATASET and the files it reads:
  vqa2          --questions Q.json [--annotations A.json]   VQA v2 (or LXMERT/VL-T5 JSON as --questions)
  gqa           --questions balanced_questions.json          GQA (dict keyed by question id)
  nlvr2         --annotations train.json                     NLVR2 JSON Lines
  coco-caption  --karpathy dataset_coco.json                 Karpathy COCO split (--restval-into-train)
  vg-caption    --annotations region_descriptions.json --image-data image_data.json   Visual Genome phrases
  vg-qa         --questions question_answers.json --image-data image_data.json        Visual Genome QA (vqa)
  tvqa, how2qa  --annotations QA.jsonl --subtitles S.jsonl   VALUE multiple-choice QA
  tvc, yc2c     --annotations C.jsonl --subtitles S.jsonl    VALUE captioning
Give --images DIR (image datasets) or --videos DIR (video datasets) to record where
the media are; `vl extract` and `vl data check` use it.

\b
Several files, one manifest (the paper's recipe):
  vqa2   repeat --questions/--annotations (paired in order); --karpathy dataset_coco.json
         --karpathy-split train|val|test keeps one Karpathy split (train = train + restval
         images, from train2014 and val2014); --answer-min-count 9 limits the training labels
         to the answers of >= 9 questions read (3,129 on train2014 + val2014), or
         --answer-vocab trainval_ans2label.json reads the vocabulary
  gqa    repeat --questions to merge splits (train + val, as the paper trains)

\b
Pre-training data (coco-caption, vg-caption, vg-qa): --exclude-images M.jsonl (repeat)
leaves out every image of the downstream val/test manifests M (by media id, and by COCO
id: VG images that are COCO images carry image_data.json's coco_id); the meta counts them.

\b
Examples:
  vl data convert vqa2 --split val \\
      --questions v2_OpenEnded_mscoco_val2014_questions.json \\
      --annotations v2_mscoco_val2014_annotations.json \\
      --images /data/coco --out manifests/vqa2_val.jsonl
  vl data convert vqa2 --split train \\
      --questions v2_OpenEnded_mscoco_train2014_questions.json --annotations v2_mscoco_train2014_annotations.json \\
      --questions v2_OpenEnded_mscoco_val2014_questions.json --annotations v2_mscoco_val2014_annotations.json \\
      --karpathy dataset_coco.json --karpathy-split train --answer-min-count 9 \\
      --images /data/coco --out manifests/vqa2_karpathy_train.jsonl
  vl data convert vg-caption --split train --annotations region_descriptions.json \\
      --image-data image_data.json --exclude-images manifests/vqa2_karpathy_val.jsonl \\
      --exclude-images manifests/vqa2_karpathy_test.jsonl --images /data/vg --out manifests/vg_caption.jsonl
"""


@click.group()
def data() -> None:
    """Dataset manifests: one JSONL line per example, read by every stage.

    \b
    vl data convert DATASET ...   official release files -> manifest
    vl data check M.jsonl         validate a manifest, count it, find missing media
    vl data merge A B --out C     manifests of one task into one (COCO + VG pre-training data)
    vl data demo --out DIR        write the synthetic shapes world (official formats)
    """


@data.command("convert", help=CONVERT_HELP)
@click.argument("dataset")
@click.option("--split", required=True, help="The split these files hold: train, val, test, ... (recorded on every line).")
@click.option("--questions", type=click.Path(path_type=Path), multiple=True,
              help="Questions file (VQA v2, GQA); repeat to merge files (vqa2, gqa).")
@click.option("--annotations", type=click.Path(path_type=Path), multiple=True,
              help="Annotation file (VQA v2 answers, one per --questions in the same order; the main file of NLVR2 "
                   "and the VALUE datasets).")
@click.option("--subtitles", type=click.Path(path_type=Path), help="VALUE subtitles JSONL (video datasets).")
@click.option("--karpathy", type=click.Path(path_type=Path),
              help="Karpathy's dataset_coco.json (coco-caption; vqa2 with --karpathy-split).")
@click.option("--karpathy-split", type=click.Choice(["train", "val", "test"]),
              help="vqa2: keep the questions on the images of this Karpathy split (train: train + restval images).")
@click.option("--images", type=click.Path(path_type=Path), help="Image folder (media root of image datasets).")
@click.option("--videos", type=click.Path(path_type=Path), help="Video folder (media root of video datasets).")
@click.option("--restval-into-train", is_flag=True, help="coco-caption: add the Karpathy restval images to --split train.")
@click.option("--image-ids", type=click.Path(path_type=Path),
              help="vqa2: keep only questions on these image ids (JSON list or one per line).")
@click.option("--answer-min-count", type=int, metavar="N",
              help="vqa2: training labels only for the normalised multiple_choice_answers of >= N of the questions "
                   "read (the paper: 9, over train2014 + val2014).")
@click.option("--answer-vocab", type=click.Path(path_type=Path),
              help="vqa2: training labels only for the answers in this file (JSON list, or LXMERT's "
                   "trainval_ans2label.json).")
@click.option("--image-data", type=click.Path(path_type=Path),
              help="vg-caption, vg-qa: Visual Genome's image_data.json (which VG images are COCO images).")
@click.option("--exclude-images", type=click.Path(path_type=Path), multiple=True, metavar="MANIFEST",
              help="coco-caption, vg-caption, vg-qa: leave out the images of this manifest (repeat; e.g. the "
                   "downstream val/test manifests, which pre-training must not see).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The manifest to write (M.jsonl; M.meta.json beside it).")
def convert(dataset, split, questions, annotations, subtitles, karpathy, karpathy_split, images, videos,
            restval_into_train, image_ids, answer_min_count, answer_vocab, image_data, exclude_images, out) -> None:
    from vl.data_manifests.registry import ConvertRequest, convert_dataset

    req = ConvertRequest(split=split, questions=list(questions), annotations=list(annotations), subtitles=subtitles,
                         karpathy=karpathy, karpathy_split=karpathy_split, images=images, videos=videos,
                         restval_into_train=restval_into_train, image_ids=image_ids,
                         answer_min_count=answer_min_count, answer_vocab=answer_vocab, image_data=image_data,
                         exclude_images=list(exclude_images))
    manifest = convert_dataset(dataset, req, out)
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(manifest.counts().items()))
    click.echo(f"wrote {out} ({len(manifest.examples)} examples; {counts}; {len(manifest.media_ids())} media ids)")
    extra = manifest.meta.extra if manifest.meta else {}
    if "karpathy" in extra:
        k = extra["karpathy"]
        click.echo(f"Karpathy {k['split']} split: questions on {k['images_with_questions']} of its {k['images']} images")
    if "answer_vocabulary" in extra:
        v = extra["answer_vocabulary"]
        rule = f"answers of >= {v['min_count']} questions" if v["rule"] == "min_count" else v["file"]
        click.echo(f"answer vocabulary: {v['size']} answers ({rule}); {v['questions_without_label']} questions have "
                   "no answer in it and are not trained on")
    if "excluded_images" in extra:
        x = extra["excluded_images"]
        first = f" (first: {', '.join(x['first_dropped'])})" if x["first_dropped"] else ""
        click.echo(f"excluded: {x['dropped_images']} images ({x['matched_by']['media_id']} by media id, "
                   f"{x['matched_by']['coco_id']} by COCO id), {x['dropped_examples']} examples{first}, the images of:")
        for m in x["manifests"]:
            click.echo(f"  {m['path']} ({m['images']} images)")


@data.command("check")
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--media-root", type=click.Path(path_type=Path),
              help="Where the media are (default: the root recorded in the manifest's meta file).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--against", type=click.Path(path_type=Path), multiple=True, metavar="MANIFEST",
              help="Fail if MANIFEST shares an image with this one (repeat): a pre-training manifest against the "
                   "downstream val/test manifests it must not see.")
def check(manifest, media_root, as_json, against) -> None:
    """Validate a manifest; report counts per task/split, answer statistics, and media
    ids whose files are missing (exit code 1 if any are).

    \b
    Example (pre-training data must not hold the images the fine-tuned model is scored on):
      vl data check manifests/vg_caption.jsonl --against manifests/vqa2_karpathy_test.jsonl
    """
    from vl.data_manifests.check import check_manifest, format_report
    from vl.data_manifests.exclusion import require_no_overlap

    if against:
        require_no_overlap(manifest, list(against))
    report = check_manifest(manifest, media_root)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else format_report(report))
    if report.missing_media:
        sys.exit(1)


@data.command("merge")
@click.argument("manifests", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The merged manifest to write.")
def merge(manifests, out) -> None:
    """Join manifests of one task into one (a run's task reads one train manifest), e.g.
    COCO Karpathy-train and Visual Genome captions for pre-training. Ids must be unique
    across them; the meta records each input and its sha256.

    \b
    Example:
      vl data merge manifests/coco_caption_train.jsonl manifests/vg_caption.jsonl \\
          --out manifests/pretrain_captions.jsonl
    """
    from vl.data_manifests.merge import merge_manifests

    merged = merge_manifests(list(manifests), out)
    parts = ", ".join(f"{m['examples']} from {Path(m['path']).name}" for m in merged.meta.extra["merged"])
    click.echo(f"wrote {out} ({len(merged.examples)} {merged.meta.extra['task']} examples: {parts}; "
               f"{len(merged.media_ids())} media ids)")


@data.command("demo")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder to write the demo world into.")
@click.option("--images", type=click.IntRange(min=8), default=160, show_default=True, help="Number of scene images.")
@click.option("--videos", type=click.IntRange(min=6), default=24, show_default=True, help="Number of videos.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same bytes.")
def demo(out, images, videos, seed) -> None:
    """Write the synthetic shapes world: images and MP4 videos of coloured shapes, with
    questions, statements, captions and subtitles in each dataset's official format,
    so that every converter, decoder and stage can run offline."""
    from vl.data_manifests.demo import write_demo_world

    world = write_demo_world(out, images=images, videos=videos, seed=seed, progress=True)
    click.echo(f"wrote the demo world to {out}: {world.summary()}")
    click.echo(f"next: convert it into manifests with the {len(world.commands)} commands in "
               f"{out / 'convert.sh'} (run: bash {out / 'convert.sh'})")


@click.command("converters")
def list_converters() -> None:
    """The registered converters (vl.data_manifests.registry): the format each reads."""
    from vl.data_manifests.registry import load_converters
    from vl.shared.cli import print_rows

    # `reads` up to its first detail: "VQA v2 questions JSON", "NLVR2 JSON Lines", ...
    print_rows([(name, f"{conv.task} ({conv.media}): {conv.reads.split(' (')[0].split(';')[0]}")
                for name, conv in load_converters().items()])
