"""`vl_lm` with `objective: denoise`: VL-BART's own pre-training objective (BART denoising,
VL-T5/src/preprocess.py L85-154 `corrupt_bart`, used by pretrain_data.py L527-546). Each
maximal run of masked words becomes one `<mask>`, the prefix is `denoise text:`, the target
the whole caption. The corruption on fixed masks and rngs, the draw through the task and a
tiny BART tokenizer, the refusal of a tokenizer without `<mask>` (T5's), the VL-BART preset,
and a tiny `vl train` whose validation and `vl evaluate --run` score the whole caption."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from test_pretrain_tasks import captions, tokenizer  # noqa: F401 (their module fixtures, reused here)
from test_pretrain_tasks import dataset, pretrain_config, spans_of
from test_train_loop import vl_train
from vl.shared.config import load_config
from vl.shared.errors import VLError
from vl.shared.run_dir import read_metrics
from vl.train.config import TrainConfig
from vl.train.data import TaskData, TaskOptions, collate
from vl.train.tasks import (DEFAULT_LAYOUT, MASK_TOKEN, InputLayout, corrupt_denoise, get_task, span_noise_mask,
                            word_noise_mask)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PRESETS = Path(__file__).resolve().parents[1] / "configs" / "paper"


# -- the corruption -------------------------------------------------------------------------

@pytest.mark.parametrize("mask, source", [
    ([False, True, True, False, True, False], "a <mask> a <mask> bike"),  # a run of two is one <mask>
    ([True, False, False, False, False, True], "<mask> man rides a red <mask>"),  # the first and the last word
    ([True, True, True, False, False, False], "<mask> a red bike"),  # a leading run
    ([False, False, False, True, True, True], "a man rides <mask>"),  # a trailing run
])
def test_each_run_of_masked_words_becomes_one_mask_and_the_target_is_the_caption(mask, source):
    words = "a man rides a red bike".split()
    assert corrupt_denoise(words, mask) == (source, "a man rides a red bike")


def test_a_two_word_caption_masks_one_word():
    rng = random.Random(0)
    seen = set()
    for _ in range(50):
        mask = word_noise_mask(2, rng, 0.3)  # int(max(0.6, 1)) = 1 word
        source, target = corrupt_denoise(["two", "dogs"], mask)
        seen.add(source)
        assert target == "two dogs"
    assert seen == {"<mask> dogs", "two <mask>"}


def test_the_reference_rate_rule_and_runs_under_words_masking():
    """int(max(rate n, 1)) words picked uniformly (preprocess.py L110-111); the <mask>s are the runs
    of picks, and the kept words stay in order."""
    rng = random.Random(3)
    first = last = 0
    for k in range(400):
        n = 2 + k % 39
        words = [f"w{i}" for i in range(n)]
        mask = word_noise_mask(n, rng, 0.3)
        assert sum(mask) == int(max(0.3 * n, 1))
        source, target = corrupt_denoise(words, mask)
        assert target == " ".join(words)
        assert source.split().count(MASK_TOKEN) == len(spans_of(mask))
        assert [w for w in source.split() if w != MASK_TOKEN] == [w for w, m in zip(words, mask) if not m]
        first, last = first + mask[0], last + mask[-1]
    assert first > 50 and last > 50  # the first and the last word are masked too, sometimes


@pytest.mark.parametrize("masking", ["words", "spans"])
def test_the_task_draws_denoise_text_and_the_whole_caption(masking):
    task = get_task("vl_lm")
    layout = InputLayout(objective="denoise", masking=masking, mask_rate=0.3)
    for seed in range(100):
        text = " ".join(f"w{i}" for i in range(3 + seed % 20))
        (item,) = task.expand([{"id": str(seed), "task": "caption", "split": "train", "media": ["m"],
                                "targets": [text]}], layout)
        parts, (target, weight) = task.draw(item, random.Random(seed))
        source = " ".join(p.text for p in parts)
        assert source.startswith("denoise text: ") and target == text and weight == 1.0
        rule = (word_noise_mask(len(text.split()), random.Random(seed), 0.3) if masking == "words"
                else span_noise_mask(len(text.split()), random.Random(seed), 0.3))
        assert source == "denoise text: " + corrupt_denoise(text.split(), rule)[0]  # the layout's rule and rate
        assert task.sentinels_needed(item) == 0
    own = InputLayout(objective="denoise", prefix="lm:")  # a run's own prefix still wins
    assert task.prefix_for(own) == "lm:" and task.prefix_for(DEFAULT_LAYOUT) == "span prediction:"


def test_span_stays_the_default_bit_for_bit():
    task = get_task("vl_lm")
    example = {"id": "1", "task": "caption", "split": "train", "media": ["m"],
               "targets": ["a man rides the red bike down a busy street"]}
    (default,) = task.expand([example])
    (span,) = task.expand([example], InputLayout(objective="span"))
    assert DEFAULT_LAYOUT.objective == "span" and TaskOptions().objective is None
    for seed in range(20):
        assert task.draw(default, random.Random(seed)) == task.draw(span, random.Random(seed))
        assert "<extra_id_0>" in task.draw(default, random.Random(seed))[1][0]


# -- through the dataset and a tokenizer ------------------------------------------------------

def test_mask_survives_tokenization_and_the_labels_are_the_caption(world, captions, tokenizer):
    ds = dataset(world, captions, tokenizer, "vl_lm", objective="denoise", masking="words", mask_rate=0.3)
    mask_id = tokenizer.get_vocab()[MASK_TOKEN]
    batch = collate([ds.item(i, 0) for i in range(8)], tokenizer)  # uncut: the tiny vocabulary makes long targets
    for i in range(8):
        x = ds.item(i, 0)
        assert x["source"].startswith("denoise text: ") and x["target"] == ds.items[i].targets[0][0]
        ids = batch["input_ids"][i].tolist()
        assert ids.count(mask_id) == x["source"].split().count(MASK_TOKEN) >= 1  # one id for each <mask>
        labels = [t for t in batch["labels"][i].tolist() if t != -100]
        assert tokenizer.decode(labels, skip_special_tokens=True).strip() == x["target"]
    gold = ds.scored_examples()  # validation's gold: epoch 0's draw, the whole caption
    assert gold[0]["answers"] == [ds.item(0, 0)["target"]]


def test_denoise_needs_no_sentinels(world, captions):
    from vl.shared.manifest import DatasetManifest
    from vl.train.tokenizer import manifest_texts, train_tokenizer

    plain = train_tokenizer(manifest_texts([DatasetManifest.read(captions)]), 300, "bart", None)  # no <extra_id_k>
    ds = dataset(world, captions, plain, "vl_lm", objective="denoise")
    assert "<extra_id_0>" not in plain.get_vocab() and len(ds) == 45


def test_a_tokenizer_without_a_mask_token_is_refused_before_training(world, captions):
    from vl.shared.manifest import DatasetManifest
    from vl.train.tokenizer import manifest_texts, train_tokenizer

    t5 = train_tokenizer(manifest_texts([DatasetManifest.read(captions)]), 300, "t5", None)
    with pytest.raises(VLError, match=r"vl_lm/train: objective denoise replaces each masked run of a caption with "
                                      r"the mask token <mask> \(BART's denoising\), but the tokenizer "
                                      r"\(\d+ tokens, none named\) has no <mask> token") as e:
        dataset(world, captions, t5, "vl_lm", objective="denoise")
    assert "objective: span for task vl_lm" in e.value.hint and "facebook/bart-base" in e.value.hint


def test_objective_is_vl_lms_alone_and_a_typo_is_named(world, captions):
    with pytest.raises(VLError, match="task itm: objective set how vl_lm masks captions; leave it unset"):
        TaskData("itm", "train", captions, world / "features/coco.h5", options=TaskOptions(objective="denoise"))
    with pytest.raises(VLError, match=r"objective: expected one of 'span', 'denoise' or null, got 'bart'"):
        TaskData("vl_lm", "train", captions, world / "features/coco.h5", options=TaskOptions(objective="bart"))


def test_a_tokenizer_trained_for_the_run_sees_the_denoise_prefix(captions):
    from vl.shared.manifest import DatasetManifest
    from vl.train.tokenizer import manifest_texts

    texts = list(manifest_texts([DatasetManifest.read(captions)], {"vl_lm": InputLayout(objective="denoise")}))
    assert "denoise text:" in texts and "span prediction:" not in texts


# -- the VL-BART preset ---------------------------------------------------------------------

def test_the_vl_bart_preset_denoises_as_the_reference_and_vl_t5s_predicts_spans():
    (bart_lm, *_), (t5_lm, *_) = (load_config(TrainConfig, PRESETS / f"pretrain/{p}.yaml").tasks
                                  for p in ("vl_bart", "vl_t5"))
    assert (bart_lm.name, bart_lm.objective, bart_lm.mask_rate, bart_lm.masking) == ("vl_lm", "denoise", 0.3, "words")
    assert (t5_lm.name, t5_lm.objective, t5_lm.masking) == ("vl_lm", None, "words")


def test_the_vl_bart_preset_dry_runs():
    result = vl_train("-c", str(PRESETS / "pretrain/vl_bart.yaml"), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "trainable 141,156,864 of 141,156,864 parameters (100.00%)" in result.output


# -- a tiny run -----------------------------------------------------------------------------

def test_a_tiny_denoising_run_validates_and_evaluates_on_the_whole_captions(world, captions, tmp_path):
    from vl.evaluate.predict import evaluate_run

    run = tmp_path / "denoise"
    config = pretrain_config(world, captions, run)
    settings = json.loads(config.read_text())
    settings["tasks"] = [{**settings["tasks"][0], "objective": "denoise", "masking": "words", "mask_rate": 0.3}]
    settings["extra_tokens"] = 0  # denoising writes <mask>, no sentinels
    config.write_text(json.dumps(settings))
    result = vl_train("-c", str(config))
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["tasks"][0]["objective"] == "denoise"
    records = read_metrics(run)
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(0 <= r["vl_lm_score"] <= 100 and r["vl_lm_val_loss"] > 0 for r in records)
    assert records[1]["vl_lm_val_loss"] < records[0]["vl_lm_val_loss"]  # it learns to write the captions back
    (scored,) = evaluate_run(run, split="val", tasks=["vl_lm"], checkpoint="last", device="cpu", progress=False)
    assert scored.scores["overall"] == pytest.approx(records[-1]["vl_lm_score"])  # the same fixed draws
    examples = [json.loads(line) for line in captions.read_text().splitlines()]
    assert scored.scores["words"] == sum(len(ex["targets"][0].split()) for ex in examples)  # every caption word


def test_vl_train_with_a_t5_tokenizer_stops_before_training(world, captions, tmp_path):
    run = tmp_path / "t5-denoise"
    config = pretrain_config(world, captions, run, backbone="tiny-t5")
    settings = json.loads(config.read_text())
    settings["tasks"] = [{**settings["tasks"][0], "objective": "denoise"}]
    config.write_text(json.dumps(settings))
    result = vl_train("-c", str(config))
    assert result.exit_code == 1, result.output
    assert "vl_lm/train: objective denoise replaces each masked run" in result.output
    assert "Set objective: span for task vl_lm" in result.output
    assert "Traceback" not in result.output
    assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()  # no step was taken
