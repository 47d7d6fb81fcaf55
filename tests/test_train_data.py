"""vl.train.data on tiny feature stores and manifests built here: item contents and shapes,
pooling, NLVR2's two images, video clip spans, collate padding, VQA's seeded answer draws,
the one-task-per-batch sampler (proportional, temperature, ranks), missing-media errors,
and DataLoader workers."""
from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pytest
import torch

from vl.extract.store_builder import FrameInfo, StoreBuilder
from vl.shared import FeatureStore, ManifestMeta, VLError, write_manifest
from vl.train.data import (Collator, DataSettings, ItemKey, MultiTaskDataset, MultiTaskSampler, TaskData,
                           TaskDataset, collate)

SETTINGS = {"encoder": {"model": "toy"}, "preprocess": {"size": [8, 8]}, "features": {"layer": "both"}}
GRID, POOLED, FRAME = (9, 8), (5,), (6,)  # image grid 3x3 tokens of 8; pooled 5; video frame 6
FRAME_STEP = 1.5  # seconds between stored frames
SUBS = [{"start": 1.0 * i, "end": 1.0 * i + 0.9, "text": f"line {i} says word{i} again"} for i in range(12)]
LABELS0 = {"red": 1.0, "dark red": 0.3, "maroon": 0.3}


def vqa(i, media=None):
    labels = LABELS0 if i == 0 else {"yes": 1.0}
    return {"id": f"q{i}", "task": "vqa", "split": "train", "media": [media or f"img{i % 4}"],
            "question": "what color is the bus" + " really" * i + "?", "answers": [max(labels)] * 10,
            "labels": labels, "image_id": i}


EXAMPLES = {
    "vqa": [vqa(i) for i in range(6)],
    "nlvr2": [{"id": f"n{i}", "task": "nlvr2", "split": "train", "media": [f"pair{i}-img0", f"pair{i}-img1"],
               "sentence": "there are two dogs", "answers": ["true" if i % 2 else "false"]} for i in range(3)],
    "caption": [{"id": f"c{i}", "task": "caption", "split": "train", "media": [f"img{i}"],
                 "targets": ["a red bus on a road", "a bus parked by the road near a tall tree and a man"]}
                for i in range(3)],
    "tvqa": [{"id": f"t{i}", "task": "tvqa", "split": "train", "media": [f"vid{i}"],
              "question": "who says hello", "choices": ["amy", "raj", "penny", "leonard", "howard"],
              "ts": ts, "subtitles": SUBS, "answer_idx": i, "answers": [["amy", "raj", "penny"][i]]}
             for i, ts in enumerate([[1.0, 4.0], None, [13.0, 13.2]])],
}


def tiny_tokenizer(padding_side: str = "right"):
    """A word-level fast tokenizer over the test texts that appends </s>, as T5's does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    texts = [str(v) for exs in EXAMPLES.values() for ex in exs for v in ex.values()] + [s["text"] for s in SUBS]
    texts += ["vqa: nlvr: caption: tvqa: subtitles: a0 a1 a2 a3 a4 dark red maroon yes true false"]
    words = sorted({w for t in texts for w, _ in pre.pre_tokenize_str(t)})
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   padding_side=padding_side)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An image store (grid 3x3x8 + pooled 5, float16, one recorded failure), a video store
    (frames every 1.5 s), a manifest per task, and the expected features."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    image_ids = [f"img{i}" for i in range(4)] + [f"pair{i}-img{j}" for i in range(3) for j in range(2)]
    grid = rng.standard_normal((len(image_ids), *GRID)).astype(np.float16)
    pooled = rng.standard_normal((len(image_ids), *POOLED)).astype(np.float16)
    with StoreBuilder(root / "images.h5", dict(SETTINGS), {"grid": GRID, "pooled": POOLED}, "float16") as b:
        b.add(image_ids, {"grid": grid, "pooled": pooled})
        b.add_failures([{"id": "broken", "path": "/x/broken.jpg", "reason": "corrupt image"}])
        b.finish({}, retried_ids=set(image_ids) | {"broken"})
    lengths = [10, 10, 10]
    frames = rng.standard_normal((sum(lengths), *FRAME)).astype(np.float32)
    with StoreBuilder(root / "videos.h5", dict(SETTINGS), {"pooled": FRAME}, "float32", layout="frames") as b:
        times = [FRAME_STEP * t for n in lengths for t in range(n)]
        b.add([f"vid{i}" for i in range(3)], {"pooled": frames}, FrameInfo(lengths, times, [15.0] * 3))
        b.finish({}, retried_ids={"vid0", "vid1", "vid2"})
    manifests = {}
    for task, exs in EXAMPLES.items():
        manifests[task] = write_manifest(root / f"{task}_train.jsonl", exs, ManifestMeta("test", "tests"))
    return {"root": root, "images": FeatureStore(root / "images.h5"), "videos": FeatureStore(root / "videos.h5"),
            "manifests": manifests, "grid": dict(zip(image_ids, grid.astype(np.float32))),
            "pooled": dict(zip(image_ids, pooled.astype(np.float32))),
            "frames": dict(zip(["vid0", "vid1", "vid2"], np.split(frames, 3)))}


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def dataset(world, task, tok, seed=0, **settings):
    store = world["videos"] if task == "tvqa" else world["images"]
    return TaskDataset(TaskData(task, "train", world["manifests"][task], store, DataSettings(**settings)), tok, seed)


def adaptive_max_pool_3x3_to_2x2(grid: np.ndarray) -> np.ndarray:
    """By hand: output bin i of 2 over 3 spans [floor(3i/2), ceil(3(i+1)/2)) = rows 0:2 and 1:3."""
    g = grid.reshape(3, 3, -1)
    spans = [slice(0, 2), slice(1, 3)]
    return np.stack([g[r, c].max(axis=(0, 1)) for r in spans for c in spans])  # (4, C), row-major


# -- items --------------------------------------------------------------------------------------

def test_image_item_grid_pooled_grid_and_pooled_vector(world, tok):
    ds = dataset(world, "vqa", tok)
    assert len(ds) == 6
    x = ds[1]
    assert x["task"] == "vqa" and x["id"] == "q1" and x["source"] == "vqa: what color is the bus really?"
    assert (x["target"], x["weight"]) == ("yes", 1.0)
    assert x["visual_feats"].dtype == torch.float32 and x["visual_feats"].shape == (9, 8)
    np.testing.assert_array_equal(x["visual_feats"].numpy(), world["grid"]["img1"])
    assert x["image_ids"].tolist() == [0] * 9

    pooled = dataset(world, "vqa", tok, visual_pool=2)[1]["visual_feats"]
    assert pooled.shape == (4, 8)
    np.testing.assert_array_equal(pooled.numpy(), adaptive_max_pool_3x3_to_2x2(world["grid"]["img1"]))

    vec = dataset(world, "vqa", tok, feature="pooled")[1]
    assert vec["visual_feats"].shape == (1, 5) and vec["image_ids"].tolist() == [0]
    np.testing.assert_array_equal(vec["visual_feats"][0].numpy(), world["pooled"]["img1"])
    assert ds.data.feat_dim == 8 and ds.data.tokens_per_image == 9
    assert dataset(world, "vqa", tok, visual_pool=2).data.tokens_per_image == 4


def test_nlvr2_concatenates_both_images_with_image_ids(world, tok):
    x = dataset(world, "nlvr2", tok)[1]
    assert x["source"] == "nlvr: there are two dogs" and x["target"] == "true"
    assert x["visual_feats"].shape == (18, 8)
    np.testing.assert_array_equal(x["visual_feats"][:9].numpy(), world["grid"]["pair1-img0"])
    np.testing.assert_array_equal(x["visual_feats"][9:].numpy(), world["grid"]["pair1-img1"])
    assert x["image_ids"].tolist() == [0] * 9 + [1] * 9
    y = dataset(world, "nlvr2", tok, visual_pool=2)[1]
    assert y["visual_feats"].shape == (8, 8) and y["image_ids"].tolist() == [0] * 4 + [1] * 4
    right = adaptive_max_pool_3x3_to_2x2(world["grid"]["pair1-img1"])
    np.testing.assert_array_equal(y["visual_feats"][4:].numpy(), right)


def test_caption_has_one_item_per_reference(world, tok):
    ds = dataset(world, "caption", tok)
    assert len(ds) == 6
    assert [ds[i]["target"] for i in range(2)] == EXAMPLES["caption"][0]["targets"]
    assert ds[0]["source"] == "caption:" and ds[0]["weight"] == 1.0


def test_video_clip_takes_frames_inside_ts_capped_uniformly(world, tok):
    ds = dataset(world, "tvqa", tok, max_frames=4)
    clip = ds[0]  # ts [1.0, 4.0]: the frames at 1.5 and 3.0 s (rows 1, 2)
    np.testing.assert_array_equal(clip["visual_feats"].numpy(), world["frames"]["vid0"][[1, 2]])
    assert clip["image_ids"].tolist() == [0, 0] and clip["target"] == "a0"
    whole = ds[1]  # ts null: all 10 frames, subsampled uniformly to 4 (first and last kept)
    np.testing.assert_array_equal(whole["visual_feats"].numpy(), world["frames"]["vid1"][[0, 3, 6, 9]])
    between = ds[2]  # [13.0, 13.2] holds no frame: the nearest to its middle (13.5 s)
    np.testing.assert_array_equal(between["visual_feats"].numpy(), world["frames"]["vid2"][[9]])
    assert ds.data.tokens_per_image == 4 and ds.data.feat_dim == 6


def test_text_budget_in_tokenizer_tokens_cuts_only_subtitles(world, tok):
    full = dataset(world, "tvqa", tok, max_text_tokens=None)[1]["source"]
    assert full.startswith("tvqa: who says hello a0: amy a1: raj a2: penny a3: leonard a4: howard subtitles: line 0")
    assert full.endswith("line 11 says word11 again")
    cut = dataset(world, "tvqa", tok, max_text_tokens=40)[1]["source"]
    assert len(tok(cut)["input_ids"]) <= 40 < len(tok(full)["input_ids"])
    assert full.startswith(cut) and "subtitles: line 0" in cut and "word11" not in cut
    tight = dataset(world, "tvqa", tok, max_text_tokens=5)[1]["source"]  # prefix, question, choices stay whole
    assert tight == "tvqa: who says hello a0: amy a1: raj a2: penny a3: leonard a4: howard"


class CountingStore:
    """A feature store that counts its reads (the real one behind it)."""

    def __init__(self, store):
        self.store, self.reads = store, 0

    def get(self, *args, **kwargs):
        self.reads += 1
        return self.store.get(*args, **kwargs)

    def get_span(self, *args, **kwargs):
        self.reads += 1
        return self.store.get_span(*args, **kwargs)


@pytest.mark.parametrize("task, settings", [("vqa", {"visual_pool": 2}), ("nlvr2", {}), ("tvqa", {"max_frames": 4}),
                                            ("tvqa", {"video_inputs": "reference", "max_frames": 4})])
def test_visual_tokens_are_read_once_and_kept_within_the_cache_budget(world, tok, task, settings):
    expected = [dataset(world, task, tok, feature_cache_mb=0, **settings)[i] for i in range(3)]
    for budget, reads_again in ((256, 0), (0, None)):
        ds = dataset(world, task, tok, feature_cache_mb=budget, **settings)
        ds.data.store = counting = CountingStore(ds.data.store)
        first = [ds[i] for i in range(3)]
        reads = counting.reads
        assert reads >= 3
        again = [ds[i] for i in range(3)]
        assert counting.reads - reads == (reads if reads_again is None else reads_again)
        for a, b, c in zip(expected, first, again):  # the same tokens, cached or not
            for x in (b, c):
                torch.testing.assert_close(x["visual_feats"], a["visual_feats"], rtol=0, atol=0)
                assert x["image_ids"].tolist() == a["image_ids"].tolist() and x["source"] == a["source"]
    # a budget smaller than one item's tokens keeps nothing
    ds = dataset(world, task, tok, feature_cache_mb=1, **settings)
    ds._visual_cache_left = 8
    ds.data.store = counting = CountingStore(ds.data.store)
    ds[0], ds[0]
    assert counting.reads == 2 * (2 if task == "nlvr2" else 1) and not ds._visual_cache


def test_a_batch_does_not_write_into_the_cached_tokens(world, tok):
    ds = dataset(world, "vqa", tok)
    batch = collate([ds[0], ds[1]], tok)
    batch["visual_feats"].zero_()
    np.testing.assert_array_equal(ds[0]["visual_feats"].numpy(), world["grid"]["img0"])


def test_a_negative_cache_budget_is_refused():
    assert any("feature_cache_mb" in p for p in DataSettings(feature_cache_mb=-1).check())


# -- collate ----------------------------------------------------------------------------------

def test_collate_pads_right_masks_and_labels(world, tok):
    ds = dataset(world, "tvqa", tok, max_frames=4)
    vqa_ds = dataset(world, "vqa", tok)
    batch = collate([vqa_ds[0], vqa_ds[3]], tok)
    ids, att = batch["input_ids"], batch["attention_mask"]
    n0, n3 = (len(tok(vqa_ds[i]["source"])["input_ids"]) for i in (0, 3))
    assert ids.shape == (2, n3) and n0 < n3
    assert att.tolist() == [[1] * n0 + [0] * (n3 - n0), [1] * n3]
    assert ids[0, n0:].tolist() == [tok.pad_token_id] * (n3 - n0) and ids[0, n0 - 1] == tok.eos_token_id
    t0, t3 = (tok(vqa_ds[i]["target"])["input_ids"] for i in (0, 3))  # "red</s>" or "dark red</s>"; "yes</s>"
    longest = max(len(t0), len(t3))
    assert batch["labels"].tolist() == [t0 + [-100] * (longest - len(t0)), t3 + [-100] * (longest - len(t3))]
    assert batch["task"] == "vqa" and batch["ids"] == ["q0", "q3"]
    assert batch["weights"].dtype == torch.float32 and batch["weights"].tolist() == [
        pytest.approx(vqa_ds[0]["weight"]), 1.0]

    video = collate([ds[0], ds[1], ds[2]], tok)  # 2, 4 and 1 frames
    assert video["visual_feats"].shape == (3, 4, 6) and video["visual_mask"].dtype == torch.bool
    assert video["visual_mask"].tolist() == [[True, True, False, False], [True] * 4, [True, False, False, False]]
    assert video["image_ids"].shape == (3, 4) and not video["image_ids"].any()
    assert not video["visual_feats"][0, 2:].any() and not video["visual_feats"][2, 1:].any()
    np.testing.assert_array_equal(video["visual_feats"][0, :2].numpy(), ds[0]["visual_feats"].numpy())


def test_labels_are_cut_to_the_target_limit_and_pad_is_minus_100(world, tok):
    ds = dataset(world, "caption", tok)
    short, long = ds[0], ds[1]  # 6 words, 13 words (+ </s>)
    batch = collate([short, long], tok)
    assert batch["labels"].shape == (2, 14)
    assert batch["labels"][0].tolist() == tok(short["target"])["input_ids"] + [-100] * 7
    cut = Collator(tok, {"caption": 5})([short, long])["labels"]  # per-task limits, </s> kept
    assert cut.shape == (2, 5) and cut[1, -1] == tok.eos_token_id and (cut != -100).all()
    assert ds.data.max_target_tokens == 40  # the task's generation default
    multi = MultiTaskDataset({"caption": ds})
    assert multi.collator(tok).max_target_tokens == {"caption": 40}


def test_collate_refuses_mixed_tasks_and_left_padding(world, tok):
    a, b = dataset(world, "vqa", tok)[0], dataset(world, "nlvr2", tok)[0]
    with pytest.raises(VLError, match="mixes tasks.*MultiTaskSampler"):
        collate([a, b], tok)
    with pytest.raises(VLError, match="right-padded"):
        collate([a], tiny_tokenizer("left"))


def test_batch_feeds_the_model(world, tok):
    from vl.train.model import build_vl_model

    torch.manual_seed(0)
    model = build_vl_model("tiny-t5", 8, init="random", vocab_size=len(tok))
    ds = dataset(world, "nlvr2", tok)
    batch = collate([ds[0], ds[1]], tok)
    out = model(batch["input_ids"], batch["attention_mask"], batch["visual_feats"], batch["visual_mask"],
                batch["image_ids"], labels=batch["labels"])
    assert torch.isfinite(out.loss)


# -- VQA answer draws -------------------------------------------------------------------------

def test_vqa_target_draw_is_seeded_per_seed_epoch_index_and_proportional(world, tok):
    a, b, c = dataset(world, "vqa", tok, seed=3), dataset(world, "vqa", tok, seed=3), dataset(world, "vqa", tok, seed=4)
    draws = [a.target(0, e) for e in range(3000)]
    assert draws == [b.target(0, e) for e in range(3000)]  # same seed: the same draws
    assert draws != [c.target(0, e) for e in range(3000)]  # another seed: others
    for text, weight in draws:
        assert LABELS0[text] == weight  # the loss weight is the drawn answer's score
    freq = Counter(t for t, _ in draws)
    total = sum(LABELS0.values())
    for answer, score in LABELS0.items():
        assert freq[answer] / len(draws) == pytest.approx(score / total, abs=0.03)
    a.set_epoch(7)
    assert (a[0]["target"], a[0]["weight"]) == a.target(0, 7) == (b.item(0, 7)["target"], b.item(0, 7)["weight"])


# -- the sampler --------------------------------------------------------------------------------

SIZES = {"vqa": 50, "nlvr2": 13, "caption": 31}
BATCH = {"vqa": 8, "nlvr2": 4, "caption": 5}


def test_every_batch_one_task_and_an_epoch_is_one_pass():
    sampler = MultiTaskSampler(SIZES, BATCH, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 7 + 4 + 7
    seen: dict[str, list[int]] = {t: [] for t in SIZES}
    for batch in batches:
        assert len({k.task for k in batch}) == 1 and 1 <= len(batch) <= BATCH[batch[0].task]
        assert all(isinstance(k, ItemKey) and k.epoch == 0 for k in batch)
        seen[batch[0].task] += [k.index for k in batch]
    assert {t: sorted(v) for t, v in seen.items()} == {t: list(range(n)) for t, n in SIZES.items()}
    tasks = [b[0].task for b in batches]
    assert tasks != sorted(tasks, key=list(SIZES).index)  # tasks are interleaved, not one after another


def test_same_seed_same_order_other_epoch_or_seed_another():
    def order(seed, epoch):
        s = MultiTaskSampler(SIZES, BATCH, seed=seed)
        s.set_epoch(epoch)
        return [[(k.task, k.index) for k in b] for b in s]

    assert order(0, 3) == order(0, 3)
    assert order(0, 3) != order(0, 4)
    assert order(0, 1) != order(1, 0)  # (seed, epoch) pairs do not collide as seed + epoch would
    s = MultiTaskSampler(SIZES, BATCH)
    s.set_epoch(5)
    assert {k.epoch for b in s for k in b} == {5}
    plain = MultiTaskSampler(SIZES, BATCH, shuffle=False)
    assert [(b[0].task, b[0].index) for b in plain][:2] == [("caption", 0), ("caption", 5)]


def test_temperature_shares_against_proportional():
    sizes, bs = {"big": 800, "small": 200}, {"big": 10, "small": 10}
    prop = MultiTaskSampler(sizes, bs)
    temp = MultiTaskSampler(sizes, bs, sampling="temperature", temperature=2.0)
    assert temp.shares() == pytest.approx({"big": 2 / 3, "small": 1 / 3})  # sqrt(800) : sqrt(200)
    assert MultiTaskSampler(sizes, bs, sampling="temperature", temperature=1.0).shares() == pytest.approx(prop.shares())
    items = {"prop": Counter(), "temp": Counter()}
    early = Counter()  # which task the first half of each epoch's steps come from
    for epoch in range(20):
        for name, s in (("prop", prop), ("temp", temp)):
            s.set_epoch(epoch)
            batches = list(s)
            for b in batches:
                items[name][b[0].task] += len(b)
            if name == "temp":
                early.update(b[0].task for b in batches[:len(batches) // 2])
    assert items["prop"] == {"big": 800 * 20, "small": 200 * 20}  # exactly one pass each epoch
    assert items["temp"]["big"] / items["temp"]["small"] == pytest.approx(2.0, rel=0.05)
    assert sum(items["temp"].values()) == pytest.approx(1000 * 20, rel=0.02)  # an epoch: N items
    assert early["big"] / sum(early.values()) == pytest.approx(2 / 3, abs=0.08)  # shuffled, not blocked
    temp.set_epoch(0)
    small = [k.index for b in temp for k in b if k.task == "small"]
    assert len(small) > 200 and set(small) == set(range(200))  # the small task repeats in fresh passes


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_get_disjoint_equal_shares_same_task_each_step(world_size):
    samplers = [MultiTaskSampler(SIZES, BATCH, seed=2, rank=r, world_size=world_size) for r in range(world_size)]
    for s in samplers:
        s.set_epoch(1)
    shares = [list(s) for s in samplers]
    assert len({len(x) for x in shares}) == 1 and len(shares[0]) == len(samplers[0])
    for step in zip(*shares):
        assert len({b[0].task for b in step}) == 1  # every rank trains the same task at each step
        assert all(b for b in step)
    keys = [(k.task, k.index) for share in shares for b in share for k in b]
    assert len(keys) == len(set(keys))  # disjoint
    per_task = Counter(t for t, _ in keys)
    for task, n in SIZES.items():  # only a remainder smaller than world_size is dropped
        assert n - world_size < per_task[task] <= n
        assert per_task[task] == n - (n % (world_size * BATCH[task]) if n % (world_size * BATCH[task]) < world_size
                                      else 0)


def test_sampler_settings_errors():
    with pytest.raises(VLError, match="unknown sampling 'roundrobin'; choose one of: proportional, temperature"):
        MultiTaskSampler(SIZES, BATCH, sampling="roundrobin")
    with pytest.raises(VLError, match="no batch size for task 'caption'") as e:
        MultiTaskSampler(SIZES, {"vqa": 8, "nlvr2": 4}, temperature=0, rank=2, world_size=2)
    assert "temperature must be > 0" in str(e.value) and "rank 2 is outside" in str(e.value)


# -- missing media, empty tasks, wrong stores --------------------------------------------------

def test_missing_media_is_an_error_naming_the_fix_or_skipped(world, tok, caplog):
    exs = [vqa(i) for i in range(4)] + [vqa(4, "gone1"), vqa(5, "gone2"), vqa(6, "broken"), vqa(7, "gone1")]
    path = world["root"] / "vqa_missing.jsonl"
    manifest = write_manifest(path, exs, ManifestMeta("test", "tests"))
    data = TaskData("vqa", "train", manifest, world["images"])
    with pytest.raises(VLError) as e:
        data.check_media()
    text = str(e.value)
    assert "3 media ids used by 4 of the 8 vqa/train examples" in text
    assert "gone1, gone2, broken" in text and str(path) in text and str(world["images"].path) in text
    assert "1 of them failed extraction" in text
    assert f"vl extract images --manifest {path} --out {world['images'].path}" in text and "--skip-missing" in text
    with pytest.raises(VLError, match="1 of them failed"):
        TaskDataset(data, tok)  # an unchecked task is checked strictly
    with caplog.at_level(logging.WARNING, logger="vl.train.data"):
        assert data.check_media(skip_missing=True) == 4
    assert [ex["id"] for ex in data.examples] == ["q0", "q1", "q2", "q3"]
    assert "skipping 4 of 8 examples" in caplog.text
    assert len(TaskDataset(data, tok)) == 4

    none_left = write_manifest(world["root"] / "vqa_none.jsonl", [vqa(0, "gone1")], ManifestMeta("test", "tests"))
    with pytest.raises(VLError, match="vqa/train: no examples left"):
        TaskData("vqa", "train", none_left, world["images"]).check_media(skip_missing=True)


def test_empty_task_and_mismatched_store_are_clear_errors(world):
    with pytest.raises(VLError, match=r"task 'gqa' split 'train' has no examples in manifest .*holds: vqa/train"):
        TaskData("gqa", "train", world["manifests"]["vqa"], world["images"])
    with pytest.raises(VLError, match="task 'vqa' split 'val' has no examples"):
        TaskData("vqa", "val", world["manifests"]["vqa"], world["images"])
    with pytest.raises(VLError, match="tvqa/train reads videos but feature store .*images.h5 holds images"):
        TaskData("tvqa", "train", world["manifests"]["tvqa"], world["images"])
    with pytest.raises(VLError, match=r"3x3 grid\): cannot pool it to 4x4"):
        TaskData("vqa", "train", world["manifests"]["vqa"], world["images"], DataSettings(visual_pool=4))
    with pytest.raises(VLError, match="no 'patches' features"):
        TaskData("vqa", "train", world["manifests"]["vqa"], world["images"], DataSettings(feature="patches"))
    with pytest.raises(VLError, match="max_frames must be >= 1"):
        TaskData("vqa", "train", world["manifests"]["vqa"], world["images"], DataSettings(max_frames=0))


# -- DataLoader -----------------------------------------------------------------------------------

def test_dataloader_with_two_workers_matches_the_main_process(world, tok):
    world["images"].get("img0")  # a handle open in the parent: workers must open their own
    multi = MultiTaskDataset({t: dataset(world, t, tok, max_frames=4) for t in ("vqa", "nlvr2", "caption", "tvqa")})
    assert multi.sizes == {"vqa": 6, "nlvr2": 3, "caption": 6, "tvqa": 3} and len(multi) == 18
    bs = {"vqa": 4, "nlvr2": 2, "caption": 3, "tvqa": 2}

    def run(workers):
        sampler = MultiTaskSampler(multi.sizes, bs, seed=5)
        sampler.set_epoch(2)
        loader = torch.utils.data.DataLoader(multi, batch_sampler=sampler, collate_fn=multi.collator(tok),
                                             num_workers=workers)
        return list(loader)

    with_workers, in_process = run(2), run(0)
    assert len(with_workers) == len(in_process) == 2 + 2 + 2 + 2
    for a, b in zip(with_workers, in_process):
        assert a["task"] == b["task"] and a["ids"] == b["ids"]
        for key in ("input_ids", "attention_mask", "visual_feats", "visual_mask", "image_ids", "labels", "weights"):
            assert torch.equal(a[key], b[key]), key
    assert Counter(b["task"] for b in with_workers) == {"vqa": 2, "nlvr2": 2, "caption": 2, "tvqa": 2}
    assert multi[("vqa", 0, 2)]["id"] == "q0" and multi[ItemKey("tvqa", 1)]["visual_feats"].shape == (4, 6)


def test_a_grid_a_frame_is_pooled_like_an_image_and_laid_frame_after_frame(world, tok, tmp_path):
    """Span inputs (the default) read a video store of grids too: each frame's grid max-pooled to
    visual_pool x visual_pool, the frames' tokens one after another."""
    rng = np.random.default_rng(1)
    grids = rng.standard_normal((30, 9, 4)).astype(np.float32)  # 3 videos x 10 frames of a 3x3x4 grid
    with StoreBuilder(tmp_path / "grids.h5", dict(SETTINGS), {"grid": (9, 4)}, "float32", layout="frames") as b:
        b.add([f"vid{i}" for i in range(3)], {"grid": grids},
              FrameInfo([10] * 3, [FRAME_STEP * t for _ in range(3) for t in range(10)], [15.0] * 3))
        b.finish({}, retried_ids={"vid0", "vid1", "vid2"})
    data = TaskData("tvqa", "train", world["manifests"]["tvqa"], FeatureStore(tmp_path / "grids.h5"),
                    DataSettings(visual_pool=2, max_frames=4))
    assert data.tokens_per_image == 4 * 4  # four frames of 2x2
    clip = TaskDataset(data, tok)[0]  # ts [1.0, 4.0]: frames 1 and 2
    want = np.concatenate([adaptive_max_pool_3x3_to_2x2(grids[f]) for f in (1, 2)])  # (8, 4)
    np.testing.assert_array_equal(clip["visual_feats"].numpy(), want)
    with pytest.raises(VLError, match="cannot pool it to 4x4"):
        TaskData("tvqa", "train", world["manifests"]["tvqa"], FeatureStore(tmp_path / "grids.h5"),
                 DataSettings(visual_pool=4))
