"""Per-task settings of a run (TaskSpec / TaskOptions) and the reference's video inputs:

- `data.video_inputs: reference` on demo clips (converted from the demo world's VALUE
  files, features extracted with a tiny ViT): the text as the reference built it from the
  raw release records (written out here the reference's way), the whole video's frames
  max-pooled or zero-padded to max_frames and all attended;
- prefix, text budget and how it is cut, target length and decoding reach the model's
  inputs and its generate() calls;
- `decision: rank` answers only with candidates, and picks what a hand computation of the
  candidates' scores picks (NLVR2: the reference's first-step logit comparison);
- configs written before these settings existed read back to the old behaviour; settings
  that cannot work are one clear error.
"""
from __future__ import annotations

import contextlib
import json
import math

import numpy as np
import pytest
import torch

from conftest import model_args, run_vl, tiny_vl_model
from vl.extract.store_builder import FrameInfo, StoreBuilder
from vl.shared import FeatureStore, ManifestMeta, VLError, write_manifest
from vl.shared.config import config_from_dict
from vl.train.config import TrainConfig
from vl.train.data import Collator, DataSettings, TaskData, TaskDataset, TaskOptions, collate, pool_or_pad_frames
from vl.train.predict import generate_predictions, rank_candidates
from vl.train.tokenizer import manifest_texts

VIDEO_TASKS = ("tvqa", "how2qa", "tvc", "yc2c")
RAW = {"tvqa": ("tvqa_train.jsonl", "tv_subtitles.jsonl"),
       "how2qa": ("how2qa_train_release.jsonl", "how2_subtitles.jsonl"),
       "tvc": ("tvc_train_release.jsonl", "tv_subtitles.jsonl"),
       "yc2c": ("yc2c_train_release.jsonl", "yc2_subtitles.jsonl")}
SETTINGS = {"encoder": {"model": "toy"}, "preprocess": {"size": [8, 8]}, "features": {"layer": "grid"}}


def word_tokenizer(texts, kind: str = "t5"):
    """A fast word-level tokenizer over `texts` with T5's special tokens (pad 0, </s> 1,
    "$A </s>") or BART's (<s> 0, pad 1, </s> 2, "<s> $A </s>"), matching the tiny
    backbones' configs."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    words = sorted({w for t in texts for w, _ in pre.pre_tokenize_str(t)})
    specials = ["<pad>", "</s>", "<unk>"] if kind == "t5" else ["<s>", "<pad>", "</s>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    if kind == "t5":
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>")


# -- the demo clips --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clips(tmp_path_factory, tiny_models):
    """The demo world's video tasks converted from its VALUE files, and their frames (a tiny
    ViT, 4 frames a second, pooled: one vector a frame)."""
    from vl.data_manifests.demo import write_demo_world
    from vl.data_manifests.registry import ConvertRequest, convert_dataset

    root = tmp_path_factory.mktemp("clips")
    write_demo_world(root, images=8, videos=6, seed=5)
    value = root / "annotations" / "value"
    manifests = {}
    for task, (annotations, subtitles) in RAW.items():
        req = ConvertRequest(split="train", annotations=value / annotations, subtitles=value / subtitles,
                             videos=root / "videos")
        manifests[task] = convert_dataset(task, req, root / "manifests" / f"{task}.jsonl")
    store = root / "frames.h5"
    run_vl(["extract", "videos", "--videos", root / "videos", "--out", store, *model_args(tiny_models, "tiny-vit"),
            "--layer", "pooled", "--fps", 4, "--max-frames", 32, "--workers", 0, "--dtype", "float32"])
    raw = {task: [json.loads(line) for line in (value / annotations).read_text().splitlines()]
           for task, (annotations, _) in RAW.items()}
    subs = {}
    for _, subtitles in RAW.values():
        for line in (value / subtitles).read_text().splitlines():
            record = json.loads(line)
            subs[record["vid_name"]] = record["sub"]
    texts = [*manifest_texts(manifests.values()), "[Subs] [Q] [TS] [Choices] ( ) NaN"]
    texts += [str(r) for records in raw.values() for r in records]
    return {"root": root, "manifests": manifests, "store": FeatureStore(store), "raw": raw, "subs": subs,
            "tok": word_tokenizer(texts)}


def reference_input(task: str, record: dict, subtitles: list[dict], prompt: str) -> str:
    """The encoder text the reference built for a raw VALUE record (video/tvqa_data.py
    L179-208, how2qa_data.py L174-203, tvc_data.py L189-207, yc2c_data.py L187-203),
    whitespace collapsed as ours is. The manifest keeps `ts` as numbers, so a TVQA/How2QA
    "0.00-1.00" comes back as "0.0-1.0": that is our one known difference."""
    subs = "[Subs] " + " ".join(t["text"].strip() for t in subtitles)
    if task in ("tvqa", "how2qa"):
        n = 5 if task == "tvqa" else 4
        choices = "[Choices] " + " ".join(f"a{i}: {record[f'a{i}'].strip('. ')}." for i in range(n))
        ts = "-".join(repr(float(x)) for x in record["ts"].split("-"))  # the numbers, see above
        sent = " ".join([subs, f"[Q] {record['q'].strip()}", f"[TS] ({ts})", choices])
    elif task == "tvc":
        sent = " ".join([subs, f"[TS] ({record['ts']})"])
    else:
        sent = subs
    return " ".join(f"{sent} {prompt}".split())


def clip_data(clips, task, **kw) -> TaskData:
    options = TaskOptions(**{k: kw.pop(k) for k in list(kw) if k in TaskOptions.__dataclass_fields__})
    return TaskData(task, "train", clips["manifests"][task], clips["store"], DataSettings(**kw), options)


@pytest.mark.parametrize("task", VIDEO_TASKS)
def test_reference_video_text_is_the_references_template_with_the_prefix_last(clips, task):
    ds = TaskDataset(clip_data(clips, task, video_inputs="reference"), clips["tok"], predict=True)
    prompt = f"{task}: "  # multitask_video.py L653-657: "tvqa: ", "how2qa: ", "tvc: ", "yc2c: "
    by_id = {str(r["qid"] if "qid" in r else r["clip_id"]): r for r in clips["raw"][task]}
    assert len(ds) == len(by_id) >= 1
    for i, item in enumerate(ds.items):
        record = by_id[item.example_id]
        expected = reference_input(task, record, clips["subs"][record["vid_name"]], prompt)
        assert ds.source(i) == expected
    assert ds.data.truncate == "end"  # the reference's tokenizer cut, not ours


def test_reference_text_keeps_every_subtitle_line_and_span_mode_keeps_the_span_only(clips):
    ds = TaskDataset(clip_data(clips, "tvqa", video_inputs="reference"), clips["tok"], predict=True)
    span = TaskDataset(clip_data(clips, "tvqa"), clips["tok"], predict=True)
    example = next(ex for ex in ds.data.examples if ex["ts"] and ex["ts"][1] < max(s["end"] for s in ex["subtitles"]))
    i = next(k for k, item in enumerate(ds.items) if item.example_id == example["id"])
    last_line = example["subtitles"][-1]["text"].strip()
    assert last_line in ds.source(i) and last_line not in span.source(i)  # it starts after the question's span
    assert span.source(i).startswith("tvqa: ")


def reference_resize(frames: np.ndarray, length: int) -> np.ndarray:
    """The reference's resize() written out with numpy: output frame i of `length` is the max
    over input frames floor(i n / length) .. ceil((i + 1) n / length) - 1; zero rows pad."""
    n, dim = frames.shape
    if n < length:
        return np.concatenate([frames, np.zeros((length - n, dim), frames.dtype)])
    return np.stack([frames[math.floor(i * n / length):math.ceil((i + 1) * n / length)].max(0) for i in range(length)])


@pytest.mark.parametrize("task, max_frames", [("tvqa", 5), ("tvqa", 64), ("yc2c", 6), ("yc2c", 16)])
def test_reference_video_pools_or_pads_the_whole_video_and_attends_to_every_token(clips, task, max_frames):
    ds = TaskDataset(clip_data(clips, task, video_inputs="reference", max_frames=max_frames), clips["tok"])
    lengths = set()
    for i, item in enumerate(ds.items):
        whole = clips["store"].get(item.media[0])  # (n, D): every frame of the video, not the question's span
        lengths.add(len(whole))
        feats, image_ids = ds.visual(i)
        assert feats.shape == (max_frames, whole.shape[1]) and not image_ids.any()
        np.testing.assert_allclose(feats.numpy(), reference_resize(whole.astype(np.float32), max_frames), rtol=0)
    assert lengths - {max_frames}, f"every clip has {max_frames} frames: nothing pooled or padded"
    batch = collate([ds[i] for i in range(len(ds))], clips["tok"])
    # padding attended too, as the reference (it had no mask)
    assert batch["visual_feats"].shape[1] == max_frames and batch["visual_mask"].all()


def test_pool_or_pad_frames_by_hand():
    frames = torch.arange(14, dtype=torch.float32).reshape(7, 2) * torch.tensor([1.0, -1.0])  # rising / falling
    np.testing.assert_array_equal(pool_or_pad_frames(frames, 3).numpy(), reference_resize(frames.numpy(), 3))
    # 7 frames into 3: [0, 3), [2, 5), [4, 7) -> maxima of frames 2, 4, 6 (column 0) and 0, 2, 4 (column 1)
    assert pool_or_pad_frames(frames, 3).tolist() == [[4.0, -1.0], [8.0, -5.0], [12.0, -9.0]]
    assert pool_or_pad_frames(frames, 9)[7:].abs().sum() == 0 and pool_or_pad_frames(frames, 7).equal(frames)


def test_reference_text_is_cut_at_its_end_by_the_tokenizer_prefix_included(clips):
    tok = clips["tok"]
    data = clip_data(clips, "tvqa", video_inputs="reference", max_text_tokens=12)
    ds = TaskDataset(data, tok)
    full = ds.source(0)
    assert len(tok(full)["input_ids"]) > 12 and full.endswith("tvqa:")
    ids = Collator(tok, None, {"tvqa": data.token_cut})([ds[0]])["input_ids"][0].tolist()
    whole = tok(full)["input_ids"]
    assert ids == whole[:11] + [tok.eos_token_id]  # the first 11 tokens and </s>: the prefix is cut away
    # truncate=subtitles keeps the question, choices and prefix and cuts subtitle lines instead
    def source(budget):
        return TaskDataset(clip_data(clips, "tvqa", video_inputs="reference", max_text_tokens=budget,
                                     truncate="subtitles"), tok).source(0)

    bare = source(1)  # no subtitle left: "[Subs]", question, span, choices, prefix
    budget = len(tok(bare)["input_ids"]) + 3
    kept = source(budget)
    assert bare.startswith("[Subs] [Q]") and kept.startswith("[Subs]") and kept.endswith("tvqa:")
    assert len(tok(kept)["input_ids"]) <= budget < len(whole) and len(kept) > len(bare)


def test_tokenizer_texts_follow_the_runs_layout(clips):
    from vl.train.tasks import InputLayout

    manifest = clips["manifests"]["yc2c"]
    ours = list(manifest_texts([manifest]))
    reference = list(manifest_texts([manifest], {"yc2c": InputLayout(prefix="", video="reference")}))
    assert all(t.startswith("yc2c:") for t in ours[:1]) and all(not t.startswith("[Subs]") for t in ours)
    assert reference[0].startswith("[Subs]") and "yc2c:" not in reference[0]


# -- image tasks: prefix and truncation; generation settings -----------------------------------

QUESTION = "what color is the small bus next to the tall red house on the left side of the road ?"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A grid store (3x3 tokens of 8) of 6 images; VQA, GQA, NLVR2 and caption manifests."""
    root = tmp_path_factory.mktemp("images")
    ids = [f"img{i}" for i in range(6)]
    rng = np.random.default_rng(0)
    with StoreBuilder(root / "images.h5", dict(SETTINGS), {"grid": (9, 8)}, "float32") as b:
        b.add(ids, {"grid": rng.standard_normal((6, 9, 8)).astype(np.float32)})
        b.finish({}, retried_ids=set(ids))
    examples = {
        "vqa": [{"id": f"v{i}", "task": "vqa", "split": "train", "media": [f"img{i}"], "question": QUESTION,
                 "answers": ["red"] * 10, "labels": {"red": 1.0}} for i in range(4)],
        "gqa": [{"id": f"g{i}", "task": "gqa", "split": "train", "media": [f"img{i}"], "question": QUESTION,
                 "answers": ["red"]} for i in range(3)],
        "nlvr2": [{"id": f"n{i}", "task": "nlvr2", "split": "train", "media": [f"img{i}", f"img{i + 1}"],
                   "sentence": "there are two red buses", "answers": ["true" if i % 2 else "false"]} for i in range(5)],
        "caption": [{"id": f"c{i}", "task": "caption", "split": "train", "media": [f"img{i}"],
                     "targets": ["a long red bus drives down the road past a tall red house on the left"]}
                    for i in range(3)],
    }
    manifests = {t: write_manifest(root / f"{t}.jsonl", exs, ManifestMeta("test", "tests"))
                 for t, exs in examples.items()}
    texts = [QUESTION, "vqa: gqa: gpa: nlvr: caption: true false red there are two buses a long drives down road",
             "past tall house on left dark car"]
    return {"store": FeatureStore(root / "images.h5"), "manifests": manifests, "texts": texts}


def image_data(images, task, settings=None, **options) -> TaskData:
    return TaskData(task, "train", images["manifests"][task], images["store"], settings or DataSettings(),
                    TaskOptions(**options))


@pytest.mark.parametrize("prefix, expected", [(None, "vqa: " + QUESTION), ("", QUESTION), ("gpa:", "gpa: " + QUESTION),
                                              ("gpa: ", "gpa: " + QUESTION)])
def test_prefix_per_task_is_joined_as_the_reference_joined_it(images, prefix, expected):
    tok = word_tokenizer(images["texts"])
    ds = TaskDataset(image_data(images, "vqa", prefix=prefix), tok)
    # the reference wrote f"{prompt}{question}" with prompt "vqa: " (vqa_clip_data.py L200): the same text
    assert ds.source(0) == expected
    assert ds.data.task.prefix == "vqa:"  # the registered task is untouched


def test_vqa_question_cut_at_20_tokens_prefix_included_as_the_reference(images):
    tok = word_tokenizer(images["texts"], "bart")
    data = image_data(images, "vqa", max_text_tokens=20, truncate="end")
    ds = TaskDataset(data, tok)
    ids = collate([ds[0]], tok, max_text_tokens=data.token_cut)["input_ids"][0].tolist()
    whole = tok("vqa: " + QUESTION)["input_ids"]  # <s> vqa : what ... </s>: 24 tokens
    assert len(whole) > 20 and ids == whole[:19] + [tok.eos_token_id]
    # without truncate=end nothing of a question is cut (only subtitles may be)
    ours = TaskDataset(image_data(images, "vqa", max_text_tokens=20), tok)
    assert collate([ours[0]], tok, max_text_tokens=ours.data.token_cut)["input_ids"][0].tolist() == whole


def test_target_limit_per_task_reaches_the_labels(images):
    tok = word_tokenizer(images["texts"])
    data = image_data(images, "caption", max_target_tokens=6)
    ds = TaskDataset(data, tok)
    labels = Collator(tok, {"caption": data.max_target_tokens})([ds[0]])["labels"][0].tolist()
    assert labels == tok(ds[0]["target"])["input_ids"][:5] + [tok.eos_token_id]
    assert TaskDataset(image_data(images, "caption"), tok).data.max_target_tokens == 40  # the task's default
    # max_new_tokens without max_target_tokens moves both (the reference cut video captions at its generation length)
    assert image_data(images, "caption", max_new_tokens=20).max_target_tokens == 20
    assert image_data(images, "caption", settings=DataSettings(max_target_tokens=9)).max_target_tokens == 9


class GenerateSpy(torch.nn.Module):
    """Stands in for VLModel in generate_predictions: records each generate() call and
    answers a fixed token."""

    def __init__(self, answer_id: int):
        super().__init__()
        self.answer_id, self.calls = answer_id, []

    def generate(self, **kwargs):
        self.calls.append(kwargs)
        return torch.full((len(kwargs["input_ids"]), 1), self.answer_id)


@pytest.mark.parametrize("options, beams, new_tokens", [({}, 5, 40), ({"num_beams": 1}, 1, 40),
                                                        ({"num_beams": 5, "max_new_tokens": 19}, 5, 19)])
def test_generation_settings_per_task_reach_generate(images, options, beams, new_tokens):
    tok = word_tokenizer(images["texts"])
    spy = GenerateSpy(tok.convert_tokens_to_ids("red"))
    ds = TaskDataset(image_data(images, "caption", **options), tok, predict=True)
    predictions = generate_predictions(spy, ds, tok, torch.device("cpu"), 2, contextlib.nullcontext)
    assert predictions == {"c0": "red", "c1": "red", "c2": "red"}
    assert [(c["num_beams"], c["max_new_tokens"], c["task"]) for c in spy.calls] == [(beams, new_tokens, "caption")] * 2


def test_generate_predictions_feeds_the_cut_text(images):
    tok = word_tokenizer(images["texts"])
    spy = GenerateSpy(tok.convert_tokens_to_ids("red"))
    ds = TaskDataset(image_data(images, "gqa", prefix="gpa:", max_text_tokens=6, truncate="end"), tok, predict=True)
    generate_predictions(spy, ds, tok, torch.device("cpu"), 8, contextlib.nullcontext)
    ids = spy.calls[0]["input_ids"]
    assert ids.shape == (3, 6) and tok.decode(ids[0]) == "gpa : what color is </s>"


# -- rank --------------------------------------------------------------------------------------

def tiny_model(backbone: str, tok, feat_dim: int = 8, seed: int = 0):
    return tiny_vl_model(backbone, feat_dim, seed, vocab_size=len(tok)).eval()


def test_nlvr2_rank_is_the_references_first_step_logit_comparison(images):
    tok = word_tokenizer(images["texts"], "bart")
    ds = TaskDataset(image_data(images, "nlvr2", decision="rank"), tok, predict=True)
    true_id, false_id = tok.convert_tokens_to_ids("true"), tok.convert_tokens_to_ids("false")
    model = tiny_model("tiny-bart", tok)
    keys = ("input_ids", "attention_mask", "visual_feats", "visual_mask", "image_ids")
    start = torch.tensor([[model.config.decoder_start_token_id, model.config.bos_token_id]])

    def first_step_logits(i):  # the reference's test_step (nlvr_model.py L240-257), one example at a time
        one = collate([ds[i]], tok)
        return model(**{k: one[k] for k in keys}, decoder_input_ids=start, task="nlvr2").logits[0, 1]  # (V,)

    # A random model's true-false gap hardly depends on its input; make it: true's output row is
    # false's plus d = h_0 - mean(h), and its bias lower by mean(h) . d, so the gap is (h_i - mean h) . d
    # (h_i the decoder's last state at step 1): positive for example 0, negative for some other.
    states = []
    hook = model.backbone.lm_head.register_forward_hook(lambda m, inp, out: states.append(inp[0][0, 1].detach()))
    for i in range(len(ds)):
        first_step_logits(i)
    hook.remove()
    h = torch.stack(states)  # (N, d)
    d = h[0] - h.mean(0)
    with torch.no_grad():
        model.backbone.lm_head.weight[true_id] = model.backbone.lm_head.weight[false_id] + d
        model.backbone.final_logits_bias[0, true_id] = model.backbone.final_logits_bias[0, false_id] - h.mean(0) @ d
    expected = {ds.items[i].example_id: "true" if (lambda z: z[true_id] > z[false_id])(first_step_logits(i))
                else "false" for i in range(len(ds))}
    assert set(expected.values()) == {"true", "false"}
    ranked = generate_predictions(model, ds, tok, torch.device("cpu"), 3, contextlib.nullcontext)
    assert ranked == expected
    # generation from the same model says other things: rank is what keeps the answer in {true, false}
    generated = generate_predictions(model, TaskDataset(image_data(images, "nlvr2"), tok, predict=True), tok,
                                     torch.device("cpu"), 3, contextlib.nullcontext)
    assert not set(generated.values()) <= {"true", "false"}


def hand_scores(model, one: dict, texts: list[str], tok, with_end: bool) -> list[float]:
    """Each candidate's summed token log-probability, one candidate at a time, the decoder
    input written out as [decoder_start] + the candidate's tokens but its last."""
    out = []
    for text in texts:
        ids = tok(text)["input_ids"]
        dec = [model.config.decoder_start_token_id] + ids[:-1]
        logits = model(**{k: one[k] for k in ("input_ids", "attention_mask", "visual_feats", "visual_mask",
                                              "image_ids")}, decoder_input_ids=torch.tensor([dec]), task="t").logits
        logp = torch.log_softmax(logits[0].double(), -1)
        scored = ids if with_end else ids[:-1]
        out.append(sum(logp[t, token].item() for t, token in enumerate(scored)))
    return out


@pytest.mark.parametrize("backbone, kind", [("tiny-bart", "bart"), ("tiny-t5", "t5")])
def test_rank_picks_the_best_hand_scored_candidate_with_rows_of_different_choices(images, backbone, kind):
    tok = word_tokenizer(images["texts"], kind)
    ds = TaskDataset(image_data(images, "vqa"), tok)
    batch = collate([ds[i] for i in range(4)], tok)
    # rows of 3, 2, 3 and 5 candidates; row 2 nests ("red" begins "red car"), so it counts end tokens
    candidates = [["red", "dark red", "true"], ["car", "house"], ["red", "red car", "bus"],
                  ["a long road", "false", "the left", "tall", "past"]]
    agree = 0
    for seed in range(6):  # several random models: the picks must follow the scores whatever they are
        model = tiny_model(backbone, tok, seed=seed)
        picked = rank_candidates(model, batch, candidates, tok)
        for row, texts in enumerate(candidates):
            one = {k: v[row:row + 1] for k, v in batch.items() if isinstance(v, torch.Tensor)}
            scores = hand_scores(model, one, texts, tok, with_end=row == 2)
            best = texts[int(np.argmax(scores))]
            assert picked[row] == best, (seed, row, scores)
            agree += best != texts[0]
    assert agree > 3, "the hand scores should not always favour the first candidate"


def test_multiple_choice_rank_answers_only_choice_labels(clips):
    tok = clips["tok"]
    data = clip_data(clips, "how2qa", decision="rank", max_frames=8)
    model = tiny_model("tiny-t5", tok, feat_dim=clips["store"].item_shape("pooled")[-1])
    predictions = generate_predictions(model, TaskDataset(data, tok, predict=True), tok, torch.device("cpu"), 2,
                                       contextlib.nullcontext)
    assert predictions and set(predictions.values()) <= {0, 1, 2, 3}  # a0..a3 read back as choice indices


# -- old configs, bad settings -----------------------------------------------------------------

def test_a_config_written_before_these_settings_reads_back_to_the_old_behaviour(images, tmp_path):
    old = {"run_dir": "r", "tasks": [{"name": "caption", "train_manifest": str(images["manifests"]["caption"]),
                                      "store": "x.h5", "batch_size": 4}],
           "data": {"visual_pool": None, "feature": None, "max_frames": 64, "max_text_tokens": 600,
                    "max_target_tokens": None}}
    cfg = config_from_dict(TrainConfig, old)
    spec = cfg.tasks[0]
    assert (spec.prefix, spec.max_text_tokens, spec.truncate, spec.num_beams, spec.max_new_tokens, spec.decision,
            spec.max_target_tokens) == (None,) * 7
    assert cfg.data.video_inputs == "span"
    data = TaskData("caption", "train", images["manifests"]["caption"], images["store"], cfg.data, spec)
    assert (data.generation.num_beams, data.generation.max_new_tokens, data.max_target_tokens) == (5, 40, 40)
    assert (data.truncate, data.token_cut, data.decision, data.layout.prefix) == ("subtitles", None, "generate", None)
    tok = word_tokenizer(images["texts"])
    assert TaskDataset(data, tok).source(0) == "caption:"


def test_reference_video_inputs_refuse_a_store_without_one_vector_a_frame(tmp_path, clips):
    lengths = [3]
    with StoreBuilder(tmp_path / "grid_frames.h5", dict(SETTINGS), {"grid": (4, 6)}, "float32", layout="frames") as b:
        b.add(["demo_s01e01_seg01_clip_00"], {"grid": np.zeros((3, 4, 6), np.float32)},
              FrameInfo(lengths, [0.0, 1.0, 2.0], [3.0]))
        b.finish({}, retried_ids={"demo_s01e01_seg01_clip_00"})
    with pytest.raises(VLError, match=r"data.video_inputs=reference pools one vector a frame along time to "
                                      r"max_frames=64 tokens .* `vl extract videos --layer pooled`, or set "
                                      r"data.video_inputs=span"):
        TaskData("tvqa", "train", clips["manifests"]["tvqa"], tmp_path / "grid_frames.h5",
                 DataSettings(video_inputs="reference"))


@pytest.mark.parametrize("options, message", [
    ({"name": "caption", "decision": "rank"}, "task caption: decision=rank picks among a closed set of answers, "
                                               "which only nlvr2, itm, tvqa, how2qa have; set decision to generate"),
    ({"name": "vqa", "num_beams": 0}, "num_beams must be >= 1 or null (got 0)"),
    ({"name": "vqa", "truncate": "middle"}, "truncate"),
    ({"name": "tvqa", "max_text_tokens": 0}, "max_text_tokens must be >= 1 or null (got 0)"),
])
def test_settings_that_cannot_work_are_named(options, message):
    cfg = {"tasks": [{"train_manifest": "m.jsonl", "store": "s.h5", **options}]}
    with pytest.raises(VLError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config_from_dict(TrainConfig, cfg)
    with pytest.raises(VLError, match="video_inputs"):
        config_from_dict(TrainConfig, {"data": {"video_inputs": "whole"}})


def test_answer_text_is_for_multiple_choice_only():
    from vl.train.data import TaskOptions
    from vl.train.tasks import get_task

    assert TaskOptions(answer="text").task_problems(get_task("tvqa")) == []
    assert "not multiple choice" in TaskOptions(answer="text").task_problems(get_task("nlvr2"))[0]
    with pytest.raises(VLError, match="answer: expected one of 'label', 'text' or null, got 'words'"):
        config_from_dict(TaskOptions, {"answer": "words"})
