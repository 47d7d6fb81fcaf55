"""Training data: a task's examples with their cached CLIP features, batched one task at a time.

- `DataSettings`: how features and text are cut to size (typed config, `check()`ed).
- `TaskOptions`: one task's own settings in a run (prefix, text budget and how it is cut,
  target length, decoding, generate or rank); a TaskSpec of the config carries them.
- `TaskData`: one task and split: its manifest examples, the task definition, the
  feature store, the settings and options. `check_media` finds media missing from the
  store before anything is loaded (an error naming the fix, or `--skip-missing`).
- `TaskDataset`: `task.expand(examples)` as items: source text within the token budget
  (only subtitles are cut, or the tokenizer cuts the end: `truncate`), a target and its
  loss weight, visual tokens (V, D).
- `MultiTaskDataset`: several `TaskDataset`s addressed by `ItemKey(task, index, epoch)`.
- `MultiTaskSampler`: a `batch_sampler` whose every batch comes from one task; the order
  is drawn from (seed, epoch) alone, so every rank builds the same plan and takes its share.
- `Collator` / `collate`: right-padded text, zero-padded visual tokens with masks, labels
  with -100 on padding, per-item weights.

As in the original (reference section 3.6), one batch holds one task, and an epoch in
the default `proportional` mode is one pass over every task's items, so tasks come up
in proportion to their size. Unlike the original, at every global step all ranks work
on the same task (each on its own batch), the item order is reproducible from the seed
for any number of DataLoader workers, and VQA's sampled answer depends only on
(seed, epoch, item), not on which worker drew it.
"""
from __future__ import annotations

import logging
import math
import os
import random
import typing
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Mapping, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from vl.shared.config import literal_problems
from vl.shared.errors import VLError, collect_or_raise
from vl.shared.feature_store import FeatureStore, sidecar_path
from vl.shared.manifest import DatasetManifest
from vl.shared.stopping import worker_signals
from vl.train.model import pool_grid
from vl.train.tasks import (MASK_TOKEN, SENTINEL, TASKS, Generation, InputLayout, Masking, McAnswer,
                            MultipleChoiceQA, Objective, Task, TrainItem, VideoInputs, VisualSpanPrediction, compose,
                            get_task)

log = logging.getLogger(__name__)

Sampling = Literal["proportional", "temperature"]
SAMPLING = typing.get_args(Sampling)
MASKING_OPTIONS = ("mask_rate", "mean_span_length", "masking", "objective")  # TaskOptions that only vl_lm takes
TEXT_ANSWER_TOKENS = 20  # generation / target limit of multiple-choice answers written as the choice's text
Truncation = Literal["subtitles", "end"]
Decision = Literal["generate", "rank"]


@dataclass
class DataSettings:
    """How one task's features and text are cut to size."""

    visual_pool: int | None = None  # max-pool an image grid to N x N tokens (paper: 7x7 -> 6); None keeps it
    feature: str | None = None  # the store's feature to read; None: grid for images, pooled for videos
    max_frames: int = 64  # video: frames of the clip, subsampled uniformly to at most this many
    max_text_tokens: int | None = 600  # encoder text budget (special tokens included); only subtitles are cut
    max_target_tokens: int | None = None  # None: the task's generation.max_new_tokens (VQA 10, captions 40)
    # Video inputs. span: the frames inside the question's or clip's span (the whole video when it
    # has none), subsampled to at most max_frames, padding masked; our text layout (tasks.py).
    # reference: as the reference (video/tvqa_data.py L34-44, L164-168): the whole video's frames,
    # adaptive-max-pooled along time to max_frames when longer, zero-padded to max_frames when
    # shorter, every one attended (it had no mask); the reference's text template, prefix last,
    # cut at its end by the tokenizer (tasks' `truncate` default).
    video_inputs: VideoInputs = "span"
    # Each task's dataset keeps the visual tokens it has read (pooled, per image or clip) in
    # memory up to this many MiB, so later epochs skip the store and the pooling; per process
    # (each loader worker fills its own). 0: read the store every time.
    feature_cache_mb: int = 256

    def check(self) -> list[str]:
        problems = literal_problems(self)
        for name in ("visual_pool", "max_frames", "max_text_tokens", "max_target_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"{name} must be >= 1 (got {value})")
        if self.feature_cache_mb < 0:
            problems.append(f"feature_cache_mb must be >= 0 (got {self.feature_cache_mb}); 0 turns the cache off")
        return problems


@dataclass(kw_only=True)
class TaskOptions:
    """One task's own settings in a run; every None keeps the default, today's behaviour.
    `TaskSpec` (vl.train.config) inherits these fields, so a config sets them per task:
    `{name: vqa, ..., prefix: "vqa:", max_text_tokens: 20, truncate: end}`."""

    prefix: str | None = None  # None: the task's own ("vqa:", ...); "": none; else this ("gpa:": the reference's GQA)
    max_text_tokens: int | None = None  # None: data.max_text_tokens; special tokens included
    # How a text over max_text_tokens is cut. subtitles: only the subtitles, from their end (the
    # prefix, question and choices stay whole); end: the tokenizer cuts the whole text's end, as the
    # reference (its VQA/GQA questions, prefix included, at 20; its video texts at 600). None: end for
    # video tasks under data.video_inputs=reference, else subtitles.
    truncate: Truncation | None = None
    max_target_tokens: int | None = None  # None: data.max_target_tokens, else this task's max_new_tokens
    num_beams: int | None = None  # None: the task's (beam 5 for captions, greedy for answers)
    max_new_tokens: int | None = None  # None: the task's (captions 40, VQA/GQA/NLVR2 10, choice labels 4)
    # generate: decode text, read it back as an answer. rank: score each candidate answer of the
    # example (NLVR2 true/false, multiple choice a0..aN) and take the best, so the answer is always
    # one of them (vl.train.predict.rank_candidates). None: generate.
    decision: Decision | None = None
    # multiple choice: what the decoder writes, the choice's label "a2" (None: label, the paper's)
    # or its text; with text, targets and generation default to 20 tokens instead of the label's 4
    answer: McAnswer | None = None
    # vl_lm (span corruption): the share of each caption's words masked (None: 0.15), the mean
    # length of a masked span (None: 3, T5's), and the rule: spans (None: T5's random spans) or
    # words (the reference's: random words, adjacent ones merged; mean_span_length unused);
    # the objective: span (None: T5's, sentinels and their runs as the target) or denoise
    # (VL-BART's: each run one <mask>, prefix "denoise text:", the whole caption as the target;
    # needs a tokenizer with a <mask> token, BART's)
    mask_rate: float | None = None
    mean_span_length: float | None = None
    masking: Masking | None = None
    objective: Objective | None = None

    def check(self) -> list[str]:
        problems = literal_problems(self)
        for name in ("max_text_tokens", "max_target_tokens", "num_beams", "max_new_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"{name} must be >= 1 or null (got {value})")
        if self.mask_rate is not None and not 0 < self.mask_rate < 1:
            problems.append(f"mask_rate must be in (0, 1) or null (got {self.mask_rate})")
        if self.mean_span_length is not None and not self.mean_span_length >= 1:
            problems.append(f"mean_span_length must be >= 1 or null (got {self.mean_span_length})")
        return problems

    def task_problems(self, task: Task) -> list[str]:
        """What these options cannot do for `task`."""
        if self.answer is not None and not isinstance(task, MultipleChoiceQA):
            return [f"task {task.name}: answer={self.answer} chooses how multiple-choice answers are written; "
                    f"{task.name} is not multiple choice: leave answer unset"]
        masking = [name for name in MASKING_OPTIONS if getattr(self, name) is not None]
        if masking and not isinstance(task, VisualSpanPrediction):
            return [f"task {task.name}: {', '.join(masking)} set how vl_lm masks captions; leave "
                    f"{'it' if len(masking) == 1 else 'them'} unset for {task.name}"]
        if self.decision == "rank" and not task.rankable:
            closed = ", ".join(name for name, t in TASKS.items() if t.rankable)
            return [f"task {task.name}: decision=rank picks among a closed set of answers, which only {closed} "
                    f"have; set decision to generate (or leave it unset) for {task.name}"]
        return []


class ItemKey(NamedTuple):
    """What the sampler yields for one item; the epoch travels with it so an item's random
    choices do not depend on a dataset attribute that persistent workers would not see change."""

    task: str
    index: int
    epoch: int = 0


# -- one task's data ------------------------------------------------------------------------

class TaskData:
    """One task and split: its examples, the task definition, the feature store, the
    settings (shared by the run's tasks) and this task's options (a TaskSpec, or
    TaskOptions); the properties below resolve the options against the defaults.

    Construction checks everything cheap (the store holds this task's media kind, the
    feature exists and fits the settings, the split has examples, the options suit the
    task) and raises one VLError listing every problem. `check_media` then compares the
    examples' media with the store.
    """

    def __init__(self, task: str | Task, split: str, manifest: DatasetManifest | str | os.PathLike,
                 store: FeatureStore | str | os.PathLike, settings: DataSettings | None = None,
                 options: TaskOptions | None = None):
        self.task = get_task(task) if isinstance(task, str) else task
        self.split = split
        self.manifest = manifest if isinstance(manifest, DatasetManifest) else DatasetManifest.read(manifest)
        self.store = store if isinstance(store, FeatureStore) else FeatureStore(store)
        self.settings = settings or DataSettings()
        self.options = options or TaskOptions()
        self.examples: list[dict] = [ex for ex in self.manifest.examples
                                     if ex["task"] == self.task.example_task and ex["split"] == split]
        self.media_checked = False
        video = self.task.media_kind == "video"
        # The feature read: as set, else the grid for images and one vector a frame for videos.
        self.feature = self.settings.feature or (
            "pooled" if video and "pooled" in self.store.features else self.store.default_feature)
        problems = [f"data settings: {p}" for p in self.settings.check()]
        problems += [f"task {self.task.name}: {p}" for p in self.options.check()]
        problems += self.options.task_problems(self.task)
        if not self.examples:
            has = ", ".join(sorted(self.manifest.counts())) or "nothing"
            problems.append(f"task {self.task.name!r} split {split!r} has no examples in manifest "
                            f"{self.manifest.path} (it holds: {has}); name a task/split it has, or convert that split")
        problems += self._feature_problems()
        collect_or_raise(problems)

    @property
    def name(self) -> str:
        return f"{self.task.name}/{self.split}"

    def _feature_problems(self) -> list[str]:
        video = self.task.media_kind == "video"
        if video != (self.store.layout == "frames"):
            holds = "videos (frames layout)" if self.store.layout == "frames" else "images"
            return [f"{self.name} reads {self.task.media_kind}s but feature store {self.store.path} holds {holds}; "
                    f"give it a store made by `vl extract {self.task.media_kind}s`"]
        if self.feature not in self.store.features:
            return [f"feature store {self.store.path} has no '{self.feature}' features (it has: "
                    f"{', '.join(self.store.features)}); set data feature to one of them"]
        shape = self.store.item_shape(self.feature)
        where = f"{self.name}: feature '{self.feature}' of {self.store.path} is {shape}"
        if video:
            if len(shape) != 1 and self.reference_video:
                return [f"{where} per frame; data.video_inputs=reference pools one vector a frame along time to "
                        f"max_frames={self.settings.max_frames} tokens and cannot read a grid a frame: extract the "
                        "videos with `vl extract videos --layer pooled`, or set data.video_inputs=span"]
            if len(shape) == 2:  # a grid a frame: pooled like an image's, frame after frame
                return self._pool_problems(where, shape)
            if len(shape) != 1:
                return [f"{where} per frame; video tasks read one vector or one grid per frame: extract with "
                        "`--layer pooled` or `--layer grid`"]
            return []
        if len(shape) == 1:
            if self.settings.visual_pool is not None:
                return [f"{where}, one vector an image, not a grid: visual_pool={self.settings.visual_pool} "
                        "cannot pool it; unset visual_pool or read the 'grid' feature"]
            return []
        if len(shape) != 2:
            return [f"{where}; image features must be (tokens, channels) or (channels,)"]
        return self._pool_problems(where, shape)

    def _pool_problems(self, where: str, shape: tuple[int, ...]) -> list[str]:
        """A (tokens, channels) grid that visual_pool must be able to pool."""
        pool = self.settings.visual_pool
        side = math.isqrt(shape[0])
        if pool is not None and (side * side != shape[0] or pool > side):
            grid = f"a {side}x{side} grid" if side * side == shape[0] else f"{shape[0]} tokens, not a square grid"
            return [f"{where} ({grid}): cannot pool it to {pool}x{pool}; set visual_pool to at most {side} "
                    "or None"]
        return []

    @property
    def feat_dim(self) -> int:
        return int(self.store.item_shape(self.feature)[-1])

    @property
    def tokens_per_image(self) -> int:
        """Visual tokens of one image (after pooling), or the most of one video (frames, times
        the tokens of each frame's grid when the store holds a grid a frame)."""
        shape = self.store.item_shape(self.feature)
        per_grid = 1 if len(shape) == 1 else (self.settings.visual_pool ** 2 if self.settings.visual_pool
                                              else int(shape[0]))
        if self.task.media_kind == "video":
            return self.settings.max_frames * per_grid
        return per_grid

    # -- the options resolved against the settings and the task's defaults --

    @property
    def reference_video(self) -> bool:
        """Video read as the reference did (data.video_inputs=reference)."""
        return self.task.media_kind == "video" and self.settings.video_inputs == "reference"

    @property
    def layout(self) -> InputLayout:
        masking = {name: getattr(self.options, name) for name in MASKING_OPTIONS
                   if getattr(self.options, name) is not None}
        return InputLayout(prefix=self.options.prefix, video=self.settings.video_inputs,
                           answer=self.options.answer or "label", **masking)

    @property
    def truncate(self) -> str:
        if self.options.truncate is not None:
            return self.options.truncate
        return "end" if self.reference_video else "subtitles"

    @property
    def max_text_tokens(self) -> int | None:
        return self.settings.max_text_tokens if self.options.max_text_tokens is None else self.options.max_text_tokens

    @property
    def token_cut(self) -> int | None:
        """The length the tokenizer cuts every source to (`truncate: end`); None: no cut there."""
        return self.max_text_tokens if self.truncate == "end" else None

    @property
    def generation(self) -> Generation:
        default = self.task.generation
        if self.options.answer == "text":  # a choice's text, not a 2-token label
            default = Generation(max_new_tokens=max(default.max_new_tokens, TEXT_ANSWER_TOKENS), num_beams=default.num_beams)
        return Generation(max_new_tokens=self.options.max_new_tokens or default.max_new_tokens,
                          num_beams=self.options.num_beams or default.num_beams)

    @property
    def decision(self) -> str:
        return self.options.decision or "generate"

    @property
    def max_target_tokens(self) -> int:
        return self.options.max_target_tokens or self.settings.max_target_tokens or self.generation.max_new_tokens

    def check_media(self, skip_missing: bool = False) -> int:
        """Compare the examples' media ids with the store; returns how many examples were dropped.

        Missing ids are an error naming how many, a few of them, the store, the manifest and
        the fix; with skip_missing the examples using them are dropped with a warning."""
        missing = [m for m in dict.fromkeys(m for ex in self.examples for m in ex["media"]) if m not in self.store]
        if not missing:
            self.media_checked = True
            return 0
        gone = set(missing)
        keep = [ex for ex in self.examples if not gone.intersection(ex["media"])]
        dropped = len(self.examples) - len(keep)
        failed = {x.get("id") for x in self.store.failures} & gone
        why = (f" ({len(failed)} of them failed extraction: see {sidecar_path(self.store.path)})" if failed else "")
        shown = ", ".join(missing[:5]) + (f", ... ({len(missing) - 5} more)" if len(missing) > 5 else "")
        what = (f"{len(missing)} media ids used by {dropped} of the {len(self.examples)} {self.name} examples of "
                f"manifest {self.manifest.path} are not in feature store {self.store.path}{why}: {shown}")
        if not skip_missing:
            raise VLError(what, hint=f"Extract them with `vl extract {self.task.media_kind}s --manifest "
                                     f"{self.manifest.path} --out {self.store.path} ...` (the same settings as the "
                                     f"store), or pass --skip-missing to train without those {dropped} examples.")
        if not keep:
            raise VLError(f"{self.name}: no examples left: every one of the {len(self.examples)} examples of manifest "
                          f"{self.manifest.path} uses media missing from feature store {self.store.path}",
                          hint=f"Extract them with `vl extract {self.task.media_kind}s --manifest {self.manifest.path} "
                               f"--out {self.store.path} ...`, or check that this is the right store.")
        log.warning("%s: skipping %d of %d examples: %s", self.name, dropped, len(self.examples), what)
        self.examples, self.media_checked = keep, True
        return dropped


# -- one task's items -----------------------------------------------------------------------

class TaskDataset(Dataset):
    """`task.expand(examples)` as model inputs. `dataset[i]` uses the epoch set by
    `set_epoch`; `item(i, epoch)` names it (what `MultiTaskDataset` does)."""

    def __init__(self, data: TaskData, tokenizer: Any, seed: int = 0, predict: bool = False):
        if not data.media_checked:
            data.check_media(skip_missing=False)
        self.data, self.tokenizer, self.seed, self.epoch = data, tokenizer, seed, 0
        self.task_name = data.task.name
        # predict: one item per example and no targets (test splits need no answers)
        self.items: list[TrainItem] = (data.task.prediction_items(data.examples, data.layout) if predict
                                       else data.task.expand(data.examples, data.layout))
        if not self.items:
            raise VLError(f"{data.name}: none of its {len(data.examples)} examples has a target to train on "
                          f"(manifest {data.manifest.path})")
        self._check_sentinels()
        self._check_mask_token()
        self._ts = {ex["id"]: ex.get("ts") for ex in data.examples}  # video clip spans, seconds
        self._sources: dict[int, str] = {}  # index -> encoder text (cut to its budget by the tokenizer's count)
        self._visual_cache: dict[tuple, torch.Tensor] = {}  # (kind, media[, span]) -> visual tokens
        self._visual_cache_left = data.settings.feature_cache_mb * 2**20  # bytes it may still take

    def __len__(self) -> int:
        return len(self.items)

    def _check_sentinels(self) -> None:
        """vl_lm writes `<extra_id_k>` sentinels: the tokenizer must hold as many as a caption needs."""
        need = max((self.data.task.sentinels_needed(item) for item in self.items), default=0)
        if not need or self.tokenizer is None:
            return
        vocab = self.tokenizer.get_vocab()
        have = next((k for k in range(need) if SENTINEL.format(k) not in vocab), need)
        if have < need:
            raise VLError(f"{self.data.name}: span corruption needs the sentinel tokens <extra_id_0> .. "
                          f"<extra_id_{need - 1}> (the longest caption of manifest {self.data.manifest.path} masks "
                          f"{need} spans), but the tokenizer has {have} of them",
                          hint="Set extra_tokens: 200 (VL-BART's 100 <extra_id_k> and 100 <vis_extra_id_k>), or use "
                               "a T5 tokenizer, which has 100 <extra_id_k>.")

    def _check_mask_token(self) -> None:
        """vl_lm's denoise objective writes `<mask>`: the tokenizer must read it as one token."""
        if self.data.layout.objective != "denoise" or self.tokenizer is None:
            return
        mask_id = self.tokenizer.get_vocab().get(MASK_TOKEN)
        if mask_id is None or self.tokenizer(MASK_TOKEN, add_special_tokens=False)["input_ids"] != [mask_id]:
            name = getattr(self.tokenizer, "name_or_path", "")
            which = f"tokenizer {name!r}" if name else f"the tokenizer ({len(self.tokenizer)} tokens, none named)"
            raise VLError(f"{self.data.name}: objective denoise replaces each masked run of a caption with the mask "
                          f"token {MASK_TOKEN} (BART's denoising), but {which} has no {MASK_TOKEN} token "
                          "(T5's tokenizers have none)",
                          hint=f"Set objective: span for task {self.data.task.name} (T5's span prediction, with "
                               "<extra_id_k> sentinels), or use a tokenizer with a <mask> token (BART's: "
                               "backbone: bart-base, tokenizer: facebook/bart-base).")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])  # special tokens included: the encoder's length

    def source(self, index: int) -> str:
        """The encoder text: subtitles cut to the budget here (`truncate: subtitles`), or whole
        (`truncate: end`: the collate's tokenizer cuts its end, at `data.token_cut` tokens)."""
        if self.data.truncate == "end":
            return self.items[index].text()
        if index not in self._sources:
            self._sources[index] = self.items[index].text(self.data.max_text_tokens, self.count_tokens)
        return self._sources[index]

    def _cached(self, key: tuple, read: Callable[[], torch.Tensor]) -> torch.Tensor:
        """read(), kept for the next call with `key` while the cache has room (data.feature_cache_mb).
        Callers must not change the tensor in place (collate copies it into the batch)."""
        hit = self._visual_cache.get(key)
        if hit is not None:
            return hit
        value = read()
        size = value.element_size() * value.nelement()
        if size <= self._visual_cache_left:
            self._visual_cache[key], self._visual_cache_left = value, self._visual_cache_left - size
        return value

    def target(self, index: int, epoch: int) -> tuple[str, float]:
        """The target and its loss weight. VQA draws one answer in proportion to its soft score,
        from an rng seeded by (seed, task, epoch, index): the same draw whichever worker asks."""
        item = self.items[index]
        if not item.targets:  # a prediction item
            return "", 0.0
        if len(item.targets) == 1:
            return item.targets[0]
        return item.sample_target(self._rng(index, epoch))

    def _rng(self, index: int, epoch: int) -> random.Random:
        """The rng of item `index` in `epoch`: a function of (seed, task, epoch, index) alone.
        A str seed goes through sha512: stable across processes and PYTHONHASHSEED."""
        return random.Random(f"{self.seed}/{self.task_name}/{epoch}/{index}")

    def drawn(self, index: int, epoch: int) -> tuple[str, tuple[str, float]]:
        """A drawing task's (source, (target, weight)) for item `index` in `epoch` (vl_lm's
        masked caption, itm's matched or swapped caption): the same on any worker or rank."""
        parts, target = self.data.task.draw(self.items[index], self._rng(index, epoch))
        return compose(parts), target

    def scored_examples(self) -> list[dict]:
        """The examples a metric scores predictions against. A drawing task's gold is what its
        validation items drew (epoch 0's draw, as `generate_predictions` reads them: the same
        masks and negatives at every validation), put in `answers`; other tasks' examples as they are."""
        if not self.data.task.draws:
            return self.data.examples
        first = {}
        for i, item in enumerate(self.items):
            first.setdefault(item.example_id, i)
        return [{**ex, "answers": [self.drawn(first[ex["id"]], 0)[1][0]]} for ex in self.data.examples
                if ex["id"] in first]

    def visual(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Visual tokens (V, D) float32 and their image ids (V,) long."""
        item = self.items[index]
        if self.data.reference_video:
            (video,) = item.media
            feats = self._cached(("reference", video), lambda: self._reference_frames(video))
            return feats, torch.zeros(len(feats), dtype=torch.long)
        if self.data.task.media_kind == "video":
            (video,) = item.media
            ts = self._ts.get(item.example_id)
            span = None if ts is None else (float(ts[0]), float(ts[1]))
            feats = self._cached(("span", video, span), lambda: self._span_frames(video, span))
            return feats, torch.zeros(len(feats), dtype=torch.long)
        per_image = [self._cached(("image", media_id), lambda: self._image_tokens(media_id))
                     for media_id in item.media]  # one image; NLVR2 two, left then right
        feats = torch.cat(per_image)  # (sum of tokens, D)
        image_ids = torch.cat([torch.full((len(x),), i, dtype=torch.long) for i, x in enumerate(per_image)])
        return feats, image_ids

    def _reference_frames(self, video: str) -> torch.Tensor:
        """(max_frames, D): the whole video's vectors pooled or zero-padded along time, all attended."""
        frames = np.asarray(self.data.store.get(video, self.data.feature), dtype=np.float32)  # (n, D)
        return pool_or_pad_frames(torch.from_numpy(frames), self.data.settings.max_frames)

    def _span_frames(self, video: str, span: tuple[float, float] | None) -> torch.Tensor:
        """(n, D) or (n * tokens, C): the frames inside `span` (the whole video for None), at most
        max_frames of them; a grid a frame pooled like an image's, frame after frame."""
        store, feature, settings = self.data.store, self.data.feature, self.data.settings
        if span is None:
            frames = store.get(video, feature)  # (n, D): the whole video
        else:
            frames, _ = store.get_span(video, span[0], span[1], feature)  # (n, D) inside the span
        if len(frames) > settings.max_frames:  # uniform subsample, first and last kept
            frames = frames[np.round(np.linspace(0, len(frames) - 1, settings.max_frames)).astype(int)]
        feats = torch.from_numpy(np.asarray(frames, dtype=np.float32))  # (n, D), or (n, T, C): a grid a frame
        if feats.dim() == 3:
            if settings.visual_pool:
                feats = pool_grid(feats, settings.visual_pool)  # (n, N*N, C)
            feats = feats.flatten(0, 1)  # (n * tokens, C)
        return feats

    def _image_tokens(self, media_id: str) -> torch.Tensor:
        """(tokens, D): one image's grid pooled to visual_pool x visual_pool, or its pooled vector."""
        x = torch.from_numpy(np.asarray(self.data.store.get(media_id, self.data.feature), dtype=np.float32))
        if x.dim() == 1:
            return x[None]  # (1, D): a pooled vector is one token
        if self.data.settings.visual_pool:
            return pool_grid(x[None], self.data.settings.visual_pool)[0]  # (T, C) -> (N*N, C)
        return x

    def item(self, index: int, epoch: int) -> dict[str, Any]:
        if self.data.task.draws:
            source, (target, weight) = self.drawn(index, epoch)
        else:
            source, (target, weight) = self.source(index), self.target(index, epoch)
        feats, image_ids = self.visual(index)
        return {"task": self.task_name, "id": self.items[index].example_id, "source": source,
                "target": target, "weight": float(weight), "visual_feats": feats, "image_ids": image_ids}

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.item(index, self.epoch)


class MultiTaskDataset(Dataset):
    """Several tasks' datasets; `dataset[ItemKey(task, index, epoch)]` is that task's item
    (a plain (task, index) uses the task dataset's own epoch)."""

    def __init__(self, datasets: Mapping[str, TaskDataset]):
        if not datasets:
            raise VLError("no tasks to train on: name at least one task")
        self.datasets = dict(datasets)

    @property
    def sizes(self) -> dict[str, int]:
        return {name: len(ds) for name, ds in self.datasets.items()}

    def __len__(self) -> int:
        return sum(self.sizes.values())

    def __getitem__(self, key: Sequence) -> dict[str, Any]:
        task, index, *epoch = key
        ds = self.datasets[task]
        return ds.item(index, epoch[0] if epoch else ds.epoch)

    def collator(self, tokenizer: Any) -> "Collator":
        """A collate function that cuts each task's targets (and, with `truncate: end`, its
        sources) to its own limits."""
        return Collator(tokenizer, {name: ds.data.max_target_tokens for name, ds in self.datasets.items()},
                        {name: ds.data.token_cut for name, ds in self.datasets.items()})


def pool_or_pad_frames(frames: torch.Tensor, length: int) -> torch.Tensor:
    """(n, D) frame vectors -> exactly (length, D), as the reference's resize()
    (video/tvqa_data.py L34-44): adaptive max pooling along time when n > length (output
    frame i is the max over frames floor(i*n/length) .. ceil((i+1)*n/length) - 1), zero
    frames appended when n < length."""
    n, dim = frames.shape
    if n > length:
        return F.adaptive_max_pool1d(frames.t()[None], length)[0].t()  # (D, n) -> (D, length) -> (length, D)
    if n < length:
        return torch.cat([frames, frames.new_zeros(length - n, dim)])
    return frames


# -- batching -------------------------------------------------------------------------------

def collate(batch: Sequence[dict[str, Any]], tokenizer: Any, max_target_tokens: int | None = None,
            max_text_tokens: int | None = None) -> dict[str, Any]:
    """Items of one task -> tensors for `VLModel.forward` (plus `weights`, `task`, `ids`).
    Targets are cut to max_target_tokens and sources to max_text_tokens tokens (special
    tokens included, the end cut as the tokenizer does); None: not cut here."""
    tasks = {x["task"] for x in batch}
    if len(tasks) != 1:
        raise VLError(f"a batch mixes tasks {sorted(tasks)}: batch with MultiTaskSampler (one task per batch)")
    if getattr(tokenizer, "padding_side", "right") != "right":
        raise VLError("the tokenizer pads on the left; VLModel needs right-padded text: "
                      "set tokenizer.padding_side = 'right'")
    src = tokenizer([x["source"] for x in batch], padding=True, truncation=max_text_tokens is not None,
                    max_length=max_text_tokens, return_tensors="pt")  # (B, T_text)
    tgt = tokenizer([x["target"] for x in batch], padding=True, truncation=max_target_tokens is not None,
                    max_length=max_target_tokens, return_tensors="pt")  # (B, T_target)
    labels = tgt["input_ids"].masked_fill(tgt["attention_mask"] == 0, -100)  # (B, T_target)
    longest = max(len(x["visual_feats"]) for x in batch)
    dim = batch[0]["visual_feats"].shape[-1]
    feats = torch.zeros(len(batch), longest, dim, dtype=torch.float32)  # (B, V_max, D)
    mask = torch.zeros(len(batch), longest, dtype=torch.bool)  # (B, V_max), True on real tokens
    image_ids = torch.zeros(len(batch), longest, dtype=torch.long)  # (B, V_max)
    for b, x in enumerate(batch):
        v = len(x["visual_feats"])
        feats[b, :v], mask[b, :v], image_ids[b, :v] = x["visual_feats"], True, x["image_ids"]
    return {"input_ids": src["input_ids"], "attention_mask": src["attention_mask"], "visual_feats": feats,
            "visual_mask": mask, "image_ids": image_ids, "labels": labels,
            "weights": torch.tensor([x["weight"] for x in batch], dtype=torch.float32),  # (B,)
            "task": tasks.pop(), "ids": [x["id"] for x in batch]}


WORKER_NICENESS = 10


def lower_worker_priority(worker_id: int) -> None:
    """DataLoader worker_init_fn: a worker runs below the training process's priority.
    When the step's threads fill the cores and other jobs compete for them too, a worker
    that preempts one compute thread makes every other wait at the next barrier; niced, it
    reads in the gaps and still keeps ahead (bench/train_step.py, 2 cores with another job
    running: 0.78 -> 0.87 of the held batches' speed; on a quiet machine 0.99 either way)."""
    try:
        os.nice(WORKER_NICENESS)
    except OSError:  # not permitted here: run at the same priority
        pass


def init_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: Ctrl-C is left to the training process, which stops between
    steps (vl.shared.stopping), and the worker runs niced (lower_worker_priority)."""
    worker_signals(worker_id)
    lower_worker_priority(worker_id)


def make_loader(dataset: "MultiTaskDataset", sampler: "MultiTaskSampler", tokenizer: Any, workers: int, seed: int,
                pin_memory: bool = False) -> "torch.utils.data.DataLoader":
    """The training DataLoader: one task per batch from `sampler`, collated in `workers`
    processes (persistent across epochs, niced) or in this one (0)."""
    from torch.utils.data import DataLoader

    from vl.shared.disk_full import file_size_limit

    if workers and file_size_limit() is not None:
        # Workers hand batches over in shared-memory files, which `ulimit -f` limits too: a batch over
        # it is lost in the worker and training would wait for it. The same batches, collated here.
        log.warning("a file size limit (ulimit -f) is set: batches are collated in the main process (workers=0)")
        workers = 0
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=dataset.collator(tokenizer), num_workers=workers,
                      persistent_workers=workers > 0, worker_init_fn=init_worker if workers else None,
                      pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(seed))  # keeps the global RNG untouched


class Collator:
    """`collate` with its tokenizer and limits bound: a picklable DataLoader collate_fn.
    max_target_tokens, max_text_tokens: one limit each, or one per task name."""

    def __init__(self, tokenizer: Any, max_target_tokens: int | Mapping[str, int | None] | None = None,
                 max_text_tokens: int | Mapping[str, int | None] | None = None):
        self.tokenizer, self.max_target_tokens, self.max_text_tokens = tokenizer, max_target_tokens, max_text_tokens

    def __call__(self, batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
        task = batch[0]["task"]

        def limit(value: int | Mapping[str, int | None] | None) -> int | None:
            return value.get(task) if isinstance(value, Mapping) else value

        return collate(batch, self.tokenizer, limit(self.max_target_tokens), limit(self.max_text_tokens))


class MultiTaskSampler:
    """Batches of `ItemKey`s, each batch from one task, for `DataLoader(batch_sampler=...)`.

    An epoch is planned from (seed, epoch) alone, so every rank plans the same one: the
    plan is a shuffled list of global steps; a step is `world_size` batches of one task,
    and rank r takes batch r of every step. All ranks thus train the same task at each
    step (as in the original) and run the same number of steps (DDP needs that).

    - `proportional` (the paper): each task's items, shuffled, cut into steps of
      world_size x batch_size; an epoch is one pass over every task's items, so tasks come
      up in proportion to their size. A task's last, partial step is shared out as
      world_size smaller batches (sizes differing by at most one); when it has fewer items
      than ranks those items are dropped for this epoch, i.e. fewer than world_size items
      per task per epoch, a different few each epoch. With one rank nothing is dropped.
    - `temperature`: task t gets a share p_t ∝ n_t^(1/T) of the epoch's items; an epoch
      holds as many items as one pass over all tasks (N = Σ n_t), in full batches:
      k_t = max(1, round(N p_t / (world_size b_t))) steps. A task's items are drawn in
      reshuffled passes (small tasks repeat, large ones are partly seen). T = 1 gives the
      proportional shares; T -> inf equal shares of items.

    `shuffle=False` (validation): items in order, tasks one after another.
    """

    def __init__(self, sizes: Mapping[str, int], batch_size: int | Mapping[str, int], *,
                 sampling: Sampling = "proportional", temperature: float = 1.0,
                 seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        batch_sizes = dict(batch_size) if isinstance(batch_size, Mapping) else {t: batch_size for t in sizes}
        problems = []
        if not sizes:
            problems.append("no tasks to sample from")
        problems += [f"task {t!r} has no items to train on" for t, n in sizes.items() if n < 1]
        problems += [f"no batch size for task {t!r}; give one for each of: {', '.join(sizes)}"
                     for t in sizes if t not in batch_sizes]
        problems += [f"batch size of task {t!r} must be >= 1 (got {b})" for t, b in batch_sizes.items()
                     if t in sizes and b < 1]
        if sampling not in SAMPLING:
            problems.append(f"unknown sampling {sampling!r}; choose one of: {', '.join(SAMPLING)}")
        if not temperature > 0:
            problems.append(f"temperature must be > 0 (got {temperature})")
        if not 0 <= rank < world_size:
            problems.append(f"rank {rank} is outside [0, world_size={world_size})")
        collect_or_raise(problems)
        self.sizes = {t: int(sizes[t]) for t in sorted(sizes)}  # sorted: the plan must not depend on dict order
        self.batch_sizes = {t: int(batch_sizes[t]) for t in self.sizes}
        self.sampling, self.temperature, self.seed = sampling, float(temperature), seed
        self.rank, self.world_size, self.shuffle, self.epoch, self.start = rank, world_size, shuffle, 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Plan `epoch`; iterating then yields its batches from number `start` on (a resume
        from a checkpoint saved inside the epoch). len() stays the whole epoch's."""
        self.epoch, self.start = epoch, start

    def steps_per_task(self) -> dict[str, int]:
        """Global steps of each task in one epoch (each rank runs their sum)."""
        w = self.world_size
        if self.sampling == "proportional":
            return {t: n // (w * self.batch_sizes[t]) + (n % (w * self.batch_sizes[t]) >= w)
                    for t, n in self.sizes.items()}
        total = sum(self.sizes.values())
        return {t: max(1, round(total * p / (w * self.batch_sizes[t]))) for t, p in self.shares().items()}

    def shares(self) -> dict[str, float]:
        """The share of an epoch's items each task is meant to get."""
        power = 1.0 if self.sampling == "proportional" else 1.0 / self.temperature
        weights = {t: n ** power for t, n in self.sizes.items()}
        return {t: v / sum(weights.values()) for t, v in weights.items()}

    def plan(self) -> list[list[list[ItemKey]]]:
        """The epoch's global steps, each a list of world_size batches of one task."""
        # A str seed (sha512 inside random) keeps (seed, epoch) pairs apart: seed + epoch would
        # give seed 1's epoch 0 the order of seed 0's epoch 1, correlating multi-seed runs.
        rng = random.Random(f"vl.multitask/{self.seed}/{self.epoch}")
        w, steps = self.world_size, []
        for task, n_steps in self.steps_per_task().items():
            n, b = self.sizes[task], self.batch_sizes[task]
            if self.sampling == "proportional":
                order = list(range(n))
                if self.shuffle:
                    rng.shuffle(order)
            else:
                order = []
                while len(order) < n_steps * w * b:  # reshuffled passes over the task
                    one_pass = list(range(n))
                    if self.shuffle:
                        rng.shuffle(one_pass)
                    order += one_pass
                order = order[:n_steps * w * b]
            keys = [ItemKey(task, i, self.epoch) for i in order]
            for s in range(n_steps):
                chunk = keys[s * w * b:(s + 1) * w * b]
                # w batches of the step, as equal as can be (all b but in a task's last step)
                cuts = [r * (len(chunk) // w) + min(r, len(chunk) % w) for r in range(w + 1)]
                steps.append([chunk[cuts[r]:cuts[r + 1]] for r in range(w)])
        if self.shuffle:
            rng.shuffle(steps)
        return steps

    def __iter__(self) -> Iterator[list[ItemKey]]:
        for step in self.plan()[self.start:]:
            yield step[self.rank]

    def __len__(self) -> int:
        return sum(self.steps_per_task().values())
