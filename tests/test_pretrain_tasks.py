"""V&L pre-training tasks: `vl_lm` (span corruption conditioned on the image) and `itm`
(image-text matching). The masking's statistics and sentinels, draws that depend on
(seed, epoch, item) alone (any worker, any rank), ITM's negatives, their metrics, bad
input, and a tiny pre-training run with vl_lm + itm + caption: its checkpoint holds every
weight, a fine-tuning run starts from it, and a killed run resumes to the same weights."""
from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_train_loop import train_until_killed, vl_train
from vl.evaluate.metrics import score
from vl.shared.config import load_config
from vl.shared.errors import VLError
from vl.shared.run_dir import read_metrics
from vl.train import loop
from vl.train.config import TrainConfig
from vl.train.data import ItemKey, MultiTaskDataset, MultiTaskSampler, TaskData, TaskDataset, TaskOptions, make_loader
from vl.train.tasks import (InputLayout, corrupt_spans, get_task, span_noise_mask, word_noise_mask)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SENTINEL = re.compile(r"<extra_id_(\d+)>")
WORDS = "a man rides the red bike down a busy street past two dogs and one tall tree near the old blue house".split()


def caption(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) + str(i) for i in range(n))  # words made unique by their position


def spans_of(mask: list[bool]) -> list[int]:
    """The lengths of the runs of True."""
    runs, prev = [], False
    for m in mask:
        if m and not prev:
            runs.append(0)
        if m:
            runs[-1] += 1
        prev = m
    return runs


# -- masking ------------------------------------------------------------------------------

def test_spans_mask_15_percent_of_the_words_in_spans_of_mean_length_3():
    rng = random.Random(0)
    masked = words = 0
    lengths, starts, ends = [], 0, 0
    for k in range(3000):
        n = 20 + k % 41  # 20..60 words
        mask = span_noise_mask(n, rng)
        assert len(mask) == n and 1 <= sum(mask) <= n - 1
        masked, words = masked + sum(mask), words + n
        lengths += spans_of(mask)
        starts, ends = starts + mask[0], ends + mask[-1]
    assert masked / words == pytest.approx(0.15, abs=0.005)
    assert sum(lengths) / len(lengths) == pytest.approx(3.0, abs=0.15)
    assert len(set(lengths)) >= 5  # span lengths vary (a random segmentation), not always 3
    assert starts > 50 and ends > 50  # the first and the last word are masked too, sometimes


def test_short_captions_get_one_short_span_and_the_reference_rule_masks_single_words():
    rng = random.Random(1)
    for n in (2, 3, 5, 10):
        for _ in range(200):
            mask = span_noise_mask(n, rng)
            assert 1 <= sum(mask) <= n - 1 and len(spans_of(mask)) == 1  # round(0.15 n) <= 2 words: one span
    # VL-T5's rule (preprocess.py L29-30): int(max(0.15 n, 1)) words, independently placed
    rates = [sum(word_noise_mask(40, rng)) for _ in range(100)]
    assert set(rates) == {6}
    lengths = [x for _ in range(500) for x in spans_of(word_noise_mask(40, rng))]
    assert 1.0 <= sum(lengths) / len(lengths) < 1.5  # mostly single words, not mean-3 spans


@pytest.mark.parametrize("masking", ["spans", "words"])
def test_sentinels_run_left_to_right_match_the_target_and_give_back_the_caption(masking):
    task = get_task("vl_lm")
    for seed in range(200):
        text = caption(5 + seed % 30, seed)
        (item,) = task.expand([{"id": str(seed), "task": "caption", "split": "train", "media": ["m"],
                                "targets": [text]}], InputLayout(masking=masking))
        parts, (target, weight) = task.draw(item, random.Random(seed))
        source = " ".join(p.text for p in parts)
        assert source.startswith("span prediction: ") and weight == 1.0
        in_source = [int(k) for k in SENTINEL.findall(source)]
        in_target = [int(k) for k in SENTINEL.findall(target)]
        assert in_source == in_target == list(range(len(in_source))) and in_source
        assert target.startswith("<extra_id_0> ")
        # put each span back in place of its sentinel: the caption again
        spans = [s.strip() for s in SENTINEL.split(target)[2::2]]
        body = source[len("span prediction: "):]
        restored = SENTINEL.sub(lambda m: spans[int(m.group(1))], body)
        assert restored == text
        assert all(spans)  # no empty span


def test_corrupt_spans_writes_the_references_format():
    words = "a man rides a red bike".split()
    assert corrupt_spans(words, [False, True, True, False, True, False]) == (
        "a <extra_id_0> a <extra_id_1> bike", "<extra_id_0> man rides <extra_id_1> red")


# -- draws: per (seed, epoch, item), whatever worker or rank ------------------------------

@pytest.fixture(scope="module")
def captions(world, tmp_path_factory) -> Path:
    """The demo world's Karpathy train captions (9 images, 5 captions each) as a manifest."""
    from vl.data_manifests.registry import ConvertRequest, convert_dataset

    out = tmp_path_factory.mktemp("captions") / "coco_caption_train.jsonl"
    cwd = os.getcwd()
    os.chdir(world)
    try:
        request = ConvertRequest(split="train", karpathy=Path("annotations/coco/dataset_coco.json"),
                                 images=Path("images"), restval_into_train=True)
        convert_dataset("coco-caption", request, out)
    finally:
        os.chdir(cwd)
    return out


@pytest.fixture(scope="module")
def tokenizer(captions, tmp_path_factory):
    from vl.shared.manifest import DatasetManifest
    from vl.train.tokenizer import add_extra_tokens, manifest_texts, train_tokenizer

    tok = train_tokenizer(manifest_texts([DatasetManifest.read(captions)]), 300, "bart",
                          tmp_path_factory.mktemp("tok"))
    add_extra_tokens(tok, 200)
    return tok


def dataset(world, captions, tokenizer, task: str, seed: int = 7, **options) -> TaskDataset:
    data = TaskData(task, "train", captions, world / "features/coco.h5", options=TaskOptions(**options))
    return TaskDataset(data, tokenizer, seed=seed)


def texts(ds: TaskDataset, epoch: int) -> list[tuple[str, str]]:
    return [(x["source"], x["target"]) for x in (ds.item(i, epoch) for i in range(len(ds)))]


@pytest.mark.parametrize("task", ["vl_lm", "itm"])
def test_draws_depend_on_seed_epoch_and_item_alone(world, captions, tokenizer, task):
    ds = dataset(world, captions, tokenizer, task)
    assert len(ds) == 45  # one item per caption of the caption task's examples
    epoch0 = texts(ds, 0)
    assert texts(dataset(world, captions, tokenizer, task), 0) == epoch0  # another process builds the same
    assert [ds.item(i, 0)["target"] for i in reversed(range(len(ds)))] == [t for _, t in reversed(epoch0)]
    epoch1 = texts(ds, 1)
    changed = sum(a != b for a, b in zip(epoch0, epoch1))
    assert changed > len(ds) // 3  # a new mask / a new draw each epoch
    assert texts(dataset(world, captions, tokenizer, task, seed=8), 0) != epoch0


def test_loader_workers_and_ranks_see_the_same_items(world, captions, tokenizer):
    sets = {t: dataset(world, captions, tokenizer, t) for t in ("vl_lm", "itm")}
    multi = MultiTaskDataset(sets)

    def batches(workers: int, rank: int = 0, world_size: int = 1) -> dict[tuple, tuple]:
        sampler = MultiTaskSampler(multi.sizes, 4, seed=3, rank=rank, world_size=world_size)
        sampler.set_epoch(2)
        loader = make_loader(multi, sampler, tokenizer, workers=workers, seed=3)
        out = {}
        for keys, batch in zip(sampler, loader):
            for key, ids, labels in zip(keys, batch["input_ids"].tolist(), batch["labels"].tolist()):
                out[tuple(key)] = (tuple(i for i in ids if i != tokenizer.pad_token_id),
                                   tuple(i for i in labels if i != -100))
        return out

    alone = batches(0)
    assert batches(2) == alone  # two worker processes draw exactly what the main process does
    ranks = {**batches(0, 0, 2), **batches(0, 1, 2)}  # two ranks' shares: the same items, the same draws
    assert ranks and all(ranks[k] == alone[k] for k in ranks)
    assert all(k[2] == 2 for k in alone)  # the epoch travels with the key
    assert multi[ItemKey("vl_lm", 0, 2)]["target"] == sets["vl_lm"].item(0, 2)["target"]


def test_itm_negatives_come_from_other_images_about_half_the_time(world, captions, tokenizer):
    ds = dataset(world, captions, tokenizer, "itm")
    own = {}
    for item in ds.items:
        own.setdefault(tuple(item.media), set()).add(item.targets[0][0])
    negative = total = 0
    drawn_from = set()
    for epoch in range(40):
        for i, item in enumerate(ds.items):
            x = ds.item(i, epoch)
            shown = x["source"][len("image text match: "):]
            total += 1
            if x["target"] == "false":
                negative += 1
                # never a caption of the same image, nor another image's caption of the same text
                assert shown not in own[tuple(item.media)]
                drawn_from |= {m for m, caps in own.items() if shown in caps}
            else:
                assert x["target"] == "true" and shown == item.targets[0][0]
    assert negative / total == pytest.approx(0.5, abs=0.04)
    assert len(drawn_from) == len(own)  # every image's captions serve as negatives
    assert any(len(set.intersection(*pair)) for pair in [(own[a], own[b]) for a in own for b in own if a != b])


def test_itm_refuses_an_image_whose_captions_are_all_the_split_has():
    examples = [{"id": "a", "task": "caption", "split": "train", "media": ["img-a"], "targets": ["x y", "z w"]},
                {"id": "b", "task": "caption", "split": "train", "media": ["img-b"], "targets": ["x y"]}]
    with pytest.raises(VLError, match="every caption of its split is also a caption of image img-a"):
        get_task("itm").expand(examples)


def test_itm_never_draws_a_caption_of_the_same_image_from_another_example():
    task = get_task("itm")
    examples = [{"id": f"a{k}", "task": "caption", "split": "train", "media": ["img-a"], "targets": [f"alpha {k}"]}
                for k in range(20)]  # twenty examples of one image: their captions are never negatives of it
    examples.append({"id": "b", "task": "caption", "split": "train", "media": ["img-b"], "targets": ["beta"]})
    items = task.expand(examples)
    for seed in range(300):
        parts, (target, _) = task.draw(items[seed % 20], random.Random(seed))
        assert target == "true" or parts[-1].text == "beta"


# -- metrics --------------------------------------------------------------------------------

def test_token_accuracy_counts_gold_words_in_place():
    examples = [{"id": "1", "answers": ["<extra_id_0> red bike <extra_id_1> street"]},
                {"id": "2", "answers": ["<extra_id_0> two dogs"]}]
    # 1: red, bike right, street missing (2 of 3); 2: both words wrong but shifted (0 of 2)
    got = score("token_accuracy", {"1": "<extra_id_0> Red bike", "2": "the two dogs"}, examples)
    assert got == {"overall": 40.0, "exact": 0.0, "count": 2, "missing": 0, "words": 5}
    assert score("token_accuracy", {"1": "red bike street", "2": "two dogs"}, examples)["exact"] == 100.0


def test_itm_accuracy_by_label():
    examples = [{"id": str(i), "answers": [label]} for i, label in enumerate(["true", "true", "false", "false"])]
    got = score("itm_accuracy", {"0": "true", "1": "false", "2": "false", "3": "false"}, examples)
    assert got == {"overall": 75.0, "per_label": {"false": 100.0, "true": 50.0}, "count": 4, "missing": 0}
    with pytest.raises(VLError, match='ITM labels are not "true" or "false"'):
        score("itm_accuracy", {"0": "true"}, [{"id": "0", "answers": ["maybe"]}])


def test_list_shows_the_tasks_and_metrics():
    from click.testing import CliRunner

    from vl.shared.cli import cli

    tasks = CliRunner().invoke(cli, ["list", "tasks"], prog_name="vl").output
    assert re.search(r"vl_lm\s+image, scored by token_accuracy, prefix 'span prediction:'", tasks)
    assert re.search(r"itm\s+image, scored by itm_accuracy, prefix 'image text match:'", tasks)
    metrics = CliRunner().invoke(cli, ["list", "metrics"], prog_name="vl").output
    assert re.search(r"token_accuracy\s+vl.evaluate.metrics.token_accuracy; tasks: vl_lm", metrics)
    assert re.search(r"itm_accuracy\s+vl.evaluate.metrics.matching; tasks: itm", metrics)


def test_a_tokenizer_trained_for_the_run_sees_the_pretraining_prefixes(captions):
    from vl.shared.manifest import DatasetManifest
    from vl.train.tokenizer import manifest_texts

    manifest = DatasetManifest.read(captions)
    texts = list(manifest_texts([manifest], {"vl_lm": InputLayout(), "itm": InputLayout(prefix="itm:")}))
    assert "span prediction:" in texts and "itm:" in texts
    assert "image text match:" not in texts and "span prediction:" not in manifest_texts([manifest])


# -- bad input ------------------------------------------------------------------------------

def test_a_caption_too_short_to_mask_is_named():
    examples = [{"id": "ok", "task": "caption", "split": "train", "media": ["m"], "targets": ["two words"]},
                {"id": "391895", "task": "caption", "split": "train", "media": ["m"], "targets": ["fine here", "Dog."]}]
    with pytest.raises(VLError) as e:
        get_task("vl_lm").expand(examples)
    assert "vl_lm example '391895': caption 1 ('Dog.') has fewer than 2 words, too short to mask" in str(e.value)
    assert "'ok'" not in str(e.value)


def test_itm_with_one_image_is_refused():
    examples = [{"id": str(k), "task": "caption", "split": "train", "media": ["img"], "targets": ["a b", "c d"]}
                for k in range(2)]
    with pytest.raises(VLError, match=r"itm: its examples \('0', '1'\) show 1 image; image-text matching draws its "
                                      r"non-matching captions from other images and needs at least two"):
        get_task("itm").expand(examples)


def test_a_tokenizer_without_sentinels_and_misplaced_masking_options_are_refused(world, captions):
    from vl.shared.manifest import DatasetManifest
    from vl.train.tokenizer import manifest_texts, train_tokenizer

    plain = train_tokenizer(manifest_texts([DatasetManifest.read(captions)]), 300, "bart", None)
    with pytest.raises(VLError, match=r"span corruption needs the sentinel tokens <extra_id_0> .. <extra_id_\d+> .* "
                                      r"the tokenizer has 0 of them") as e:
        dataset(world, captions, plain, "vl_lm")
    assert "extra_tokens: 200" in e.value.hint
    with pytest.raises(VLError, match="task itm: mask_rate, masking set how vl_lm masks captions; leave them unset"):
        TaskData("itm", "train", captions, world / "features/coco.h5", options=TaskOptions(mask_rate=0.2,
                                                                                         masking="words"))
    with pytest.raises(VLError, match=r"mask_rate must be in \(0, 1\) or null \(got 1.5\)"):
        TaskData("vl_lm", "train", captions, world / "features/coco.h5", options=TaskOptions(mask_rate=1.5))


def test_masking_options_reach_the_draw(world, captions, tokenizer):
    ds = dataset(world, captions, tokenizer, "vl_lm", mask_rate=0.5, mean_span_length=1.0)
    masked = sum(len(SENTINEL.sub(" ", ds.item(i, 0)["target"]).split()) for i in range(len(ds)))
    words = sum(len(item.targets[0][0].split()) for item in ds.items)
    assert masked / words == pytest.approx(0.5, abs=0.05)


# -- a tiny pre-training run, then fine-tuning from it ---------------------------------------

def pretrain_config(world: Path, captions: Path, run: Path, epochs: int = 2, **top) -> Path:
    store = str(world / "features/coco.h5")
    cfg = {
        "run_dir": str(run), "epochs": epochs, "seed": 5, "backbone": "tiny-bart", "init": "random",
        "tokenizer_vocab_size": 400, "extra_tokens": 200, "method": "full", "workers": 0, "device": "cpu",
        "precision": "fp32", "dropout": 0.1, "optim": {"lr": 3e-3, "warmup_ratio": 0.1},
        "tasks": [  # validation on the train split: a placeholder on a tiny world (no Java for captions)
            {"name": "vl_lm", "train_manifest": str(captions), "store": store, "batch_size": 16,
             "val_manifest": str(captions), "val_split": "train"},
            {"name": "itm", "train_manifest": str(captions), "store": store, "batch_size": 16,
             "val_manifest": str(captions), "val_split": "train", "decision": "rank"},
            {"name": "caption", "train_manifest": str(captions), "store": store, "batch_size": 16},
        ],
        **top,
    }
    path = run.parent / f"{run.name}.yaml"
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def pretrained(world, captions, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("pretrain") / "vl-pretrained"
    result = vl_train("-c", str(pretrain_config(world, captions, run)))
    assert result.exit_code == 0, result.output
    return run


def test_pretraining_validates_both_objectives_and_saves_every_weight(pretrained):
    from vl.train.build import load_trained

    records = read_metrics(pretrained)
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert 0 <= r["vl_lm_score"] <= 100 and 0 <= r["itm_score"] <= 100 and "caption_score" not in r
        assert r["mean_score"] == pytest.approx((r["vl_lm_score"] + r["itm_score"]) / 2)  # the losses stay out
        assert r["vl_lm_val_loss"] > 0 and r["itm_val_loss"] > 0
    assert records[1]["vl_lm_val_loss"] < records[0]["vl_lm_val_loss"]  # it learns the held-out spans
    trained = load_trained(pretrained, "last")
    saved = load_file(str(pretrained / "checkpoints/last/model.safetensors"))
    params = dict(trained.model.named_parameters())
    assert set(saved) == set(params)  # method full: every tensor, the backbone's included
    assert sum(k.startswith("backbone.") for k in saved) > 20
    for name, tensor in saved.items():
        assert torch.equal(tensor, params[name].detach()), name
    assert "<extra_id_0>" in trained.tokenizer.get_vocab()


def test_vl_evaluate_scores_the_pretraining_tasks_as_validation_did(pretrained):
    from vl.evaluate.predict import evaluate_run

    results = {r.task: r for r in evaluate_run(pretrained, split="val", tasks=["vl_lm", "itm"], checkpoint="last",
                                               device="cpu", progress=False)}
    last = read_metrics(pretrained)[-1]
    assert results["vl_lm"].scores["overall"] == pytest.approx(last["vl_lm_score"])  # the same fixed draws
    assert results["itm"].scores["overall"] == pytest.approx(last["itm_score"])
    written = json.loads(results["itm"].predictions_file.read_text())
    assert len(written) == 9 and set(written[0]) == {"id", "prediction"}  # one per example (image)


def test_a_fine_tuning_run_starts_from_the_pretrained_run(world, pretrained, tmp_path):
    from test_init_from import started_from
    from vl.train.build import load_trained

    run = tmp_path / "adapter-from-pretrained"
    loop.train(started_from(world, run, pretrained))  # a single adapter on VQA + GQA
    source, tuned = load_trained(pretrained, "best"), load_trained(run, "last")  # init_from takes the best
    assert json.loads((run / "config.json").read_text())["init_from"] == str(pretrained)
    embeddings = tuned.model.backbone.get_input_embeddings().weight
    assert torch.equal(embeddings, source.model.backbone.get_input_embeddings().weight)  # frozen: as pre-trained
    assert len(embeddings) == len(source.tokenizer)  # with the sentinels the pre-training added
    assert [r["epoch"] for r in read_metrics(run)] == [1]


def test_a_killed_pretraining_run_resumes_to_the_weights_of_an_uninterrupted_one(world, captions, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert vl_train("-c", str(pretrain_config(world, captions, whole))).exit_code == 0
    train_until_killed(load_config(TrainConfig, pretrain_config(world, captions, killed)), "last")
    assert [r["epoch"] for r in read_metrics(killed)] == [1]
    result = vl_train("--resume", str(killed))
    assert result.exit_code == 0, result.output
    a = load_file(str(whole / "checkpoints/last/model.safetensors"))
    b = load_file(str(killed / "checkpoints/last/model.safetensors"))
    assert sorted(a) == sorted(b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    assert read_metrics(killed)[1]["vl_lm_score"] == read_metrics(whole)[1]["vl_lm_score"]


@pytest.mark.slow
def test_two_process_ddp_pretrains_as_one_process(world, captions, tmp_path):
    """torchrun --nproc-per-node 2 (gloo), batch 8 per rank == one process with batch 16: the
    same global batches of the same draws, so the same losses and weights (dropout off)."""
    from test_extract_distributed import torchrun
    from test_train_loop import trainable_tensors

    one, two = tmp_path / "one", tmp_path / "two"
    common = sum((["--set", x] for x in ["dropout=0.0", "epochs=1", "optim.grad_clip=1.0"]), [])
    assert vl_train("-c", str(pretrain_config(world, captions, one)), *common).exit_code == 0
    config = pretrain_config(world, captions, two)
    settings = json.loads(config.read_text())
    for t in settings["tasks"]:
        t["batch_size"] = 8
    config.write_text(json.dumps(settings))
    proc = torchrun(["train", "-c", config, *common])
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, (out[-2000:], err[-3000:])
    assert "torchrun: 2 ranks (gloo)" in out
    (a,), (b,) = read_metrics(one), read_metrics(two)
    for key in ("train_loss", "vl_lm_train_loss", "itm_train_loss", "caption_train_loss"):
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    wa, wb = trainable_tensors(one), trainable_tensors(two)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5, msg=k)
