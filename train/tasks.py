"""The eight tasks and two V&L pre-training tasks as text generation: what the encoder
reads, what the decoder learns.

Every task is generation with a task prefix (VL-T5 / VL-Adapter). A definition reads
the manifest fields of docs/manifests.md and says:

- `prefix`: the task's own prefix, the first words of the input by default; a run may
  name another per task or none (`InputLayout.prefix`, a TaskSpec's `prefix`): the
  original used prefixes only in some runs and spelt GQA's "gpa:";
- `source_parts(example)`: the input after the prefix, as `SourcePart`s; only a part
  with `may_cut` (subtitles) is ever shortened, so `build_input(example, budget, count)`
  keeps the prefix, the question and the choices whole, whatever the budget;
- `reference_parts(example)` (video tasks): the input as the reference wrote it,
  `[Subs] <every subtitle line> [Q] .. [TS] (..) [Choices] a0: ..`, which a run asks for
  with `data.video_inputs: reference` (`InputLayout.video`); the prefix then goes last,
  where the reference appended it;
- `targets(example)`: training targets with weights; `expand(examples)` makes the
  training items (one per caption reference, one per example otherwise);
- `read_prediction(text, example)`: a generated string back to an answer;
- `candidates(example)` (`rankable` tasks: NLVR2, multiple choice): the closed set of
  answers that `decision: rank` picks from;
- `media_kind`, `generation` defaults, and the `metric` key the evaluation looks up;
- `draws` (pre-training: `vl_lm`, `itm`): the input and target are drawn anew each
  epoch by `draw(item, rng)` from an rng of (seed, task, epoch, item) alone; `reads`
  names the manifest task whose examples it takes (`caption`), so one caption manifest
  feeds `caption`, `vl_lm` and `itm` in one run.

Multiple choice (TVQA, How2QA) is answered as the choice label by default (a run may set
`answer: text` to have the choice's own text written instead): the target is "a2",
not the choice's text, as in the original.

Pure Python on strings: the tokenizer comes later and passes its own `count`.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal, NamedTuple, Sequence

from vl.shared.answers import vqa_soft_scores
from vl.shared.errors import VLError, collect_or_raise
from vl.shared.registry import Registry

Count = Callable[[str], int]
Target = tuple[str, float]


def count_words(text: str) -> int:
    """The default length measure; a tokenizer passes e.g. `lambda s: len(tok(s).input_ids)`."""
    return len(text.split())


class SourcePart(NamedTuple):
    """A piece of the encoder input. `label` ("subtitles:") is written before the text
    and goes with it when a cut leaves no text."""

    text: str
    may_cut: bool = False
    label: str = ""


def compose(parts: Sequence[SourcePart], budget: int | None = None, count: Count = count_words) -> str:
    """The parts joined by single spaces (whitespace inside them collapsed), with the
    cuttable parts cut word by word from their end until `count(text) <= budget`.

    The cuttable words are kept in order across parts, so a later cuttable part loses
    its words first. Parts that may not be cut are never shortened: if they alone
    exceed the budget the result does too. `count` must not decrease as words are
    added (true of word and token counts); it is called about log2(cuttable words)
    times when a cut is needed, once otherwise."""
    cuttable = sum(len(p.text.split()) for p in parts if p.may_cut)

    def render(keep: int) -> str:  # keep: how many cuttable words stay
        pieces = []
        for part in parts:
            words = part.text.split()
            if part.may_cut:
                words, keep = words[:keep], keep - min(keep, len(words))
            if words:
                pieces.append(" ".join([part.label, *words] if part.label else words))
        return " ".join(pieces)

    text = render(cuttable)
    if budget is None or not cuttable or count(text) <= budget:  # nothing to cut: no need to count
        return text
    lo, hi = 0, cuttable - 1  # the largest keep in [lo, hi] that fits; 0 if none does
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(render(mid)) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return render(lo)


def subtitles_in_span(subtitles: Sequence[dict], ts: Sequence[float] | None) -> list[str]:
    """The texts of the subtitle lines overlapping [start, end] (a line that touches the
    span counts), in time order; every line when `ts` is None (no known span)."""
    lines = sorted(subtitles, key=lambda line: line["start"])
    if ts is not None:
        start, end = ts
        lines = [line for line in lines if line["start"] <= end and line["end"] >= start]
    return [line["text"] for line in lines if line["text"].strip()]


def sample_weighted(targets: Sequence[Target], rng: random.Random) -> Target:
    """One (text, weight), drawn in proportion to the weights; the same rng state gives
    the same draw."""
    assert targets and all(w > 0 for _, w in targets), f"nothing to sample from: {targets!r}"
    x = rng.random() * sum(w for _, w in targets)
    for target in targets:
        x -= target[1]
        if x < 0:
            return target
    return targets[-1]  # float rounding left x at 0


@dataclass(frozen=True)
class Generation:
    max_new_tokens: int
    num_beams: int = 1


VideoInputs = Literal["span", "reference"]  # data.video_inputs (vl.train.data)
McAnswer = Literal["label", "text"]  # a task's `answer` (vl.train.data.TaskOptions)
# vl_lm's `masking` (TaskOptions): T5's random spans (the issue's: mean length 3) or the
# reference's independent words merged where adjacent (VL-T5/src/preprocess.py L25-53)
Masking = Literal["spans", "words"]
# vl_lm's `objective` (TaskOptions): what a masked run becomes and what the decoder writes.
# span: T5's span prediction (VL-T5's `corrupt_spans`): each run -> `<extra_id_k>`, the target
# the sentinels with their runs. denoise: BART's (VL-BART's `corrupt_bart`, preprocess.py
# L85-154): each run -> one `<mask>`, prefix "denoise text:", the target the whole caption.
Objective = Literal["span", "denoise"]


@dataclass(frozen=True)
class InputLayout:
    """How one run writes one task's encoder text (tasks are shared singletons: a run's
    choices travel in this, never on the task)."""

    prefix: str | None = None  # None: the task's own prefix; "": none; any other string replaces it
    # video tasks: "span" (ours: prefix, question, choices, then the subtitles of the question's
    # span) or "reference" (the reference's template over the whole video's subtitles, prefix last)
    video: VideoInputs = "span"
    # multiple choice: the decoder writes the choice's label ("a2", the paper) or the choice's
    # own text ("It moves up."): then a tiny model need not learn to point from label to text
    answer: McAnswer = "label"
    # vl_lm: the share of a caption's words masked, the mean length of a masked span, the rule,
    # and what the masked runs become (sentinels and their runs to write, or <mask> and the caption)
    mask_rate: float = 0.15
    mean_span_length: float = 3.0
    masking: Masking = "spans"
    objective: Objective = "span"


DEFAULT_LAYOUT = InputLayout()


@dataclass
class TrainItem:
    """One training example: the input parts (prefix first, or last in the reference's video
    layout) and what the decoder may be
    taught. VQA keeps all answers with their soft scores and draws one each time it is
    seen; a caption item holds one reference; every other item one target of weight 1."""

    example_id: str
    task: str
    media: list[str]
    parts: list[SourcePart]
    targets: list[Target]
    context: Any = None  # what a drawing task needs besides (vl_lm: its masking; itm: the split's captions)

    def text(self, budget: int | None = None, count: Count = count_words) -> str:
        return compose(self.parts, budget, count)

    def sample_target(self, rng: random.Random) -> Target:
        return sample_weighted(self.targets, rng)


def _clean(text: str) -> str:
    return " ".join(text.split())


class Task:
    """What every task shares; a registered subclass fills in the class attributes."""

    name: ClassVar[str] = ""  # set by register_task
    prefix: ClassVar[str]
    media_kind: ClassVar[str]  # "image" or "video"
    metric: ClassVar[str]  # the key the evaluation stage looks up
    generation: ClassVar[Generation]
    inputs: ClassVar[tuple[str, ...]] = ()  # manifest fields the input is made from
    gold: ClassVar[tuple[str, ...]] = ("answers",)  # training needs at least one of these
    one_item_per_target: ClassVar[bool] = False  # captions: one training item per reference
    rankable: ClassVar[bool] = False  # has `candidates`: a closed answer set that `decision: rank` picks from
    reads: ClassVar[str | None] = None  # the manifest `task` of its examples; None: its own name
    draws: ClassVar[bool] = False  # input and target drawn each epoch by `draw` (pre-training tasks)

    @property
    def example_task(self) -> str:
        """The `task` field of the manifest examples this task reads."""
        return self.reads or self.name

    def draw(self, item: TrainItem, rng: random.Random) -> tuple[list[SourcePart], Target]:
        """A drawing task's input parts and target for `item` from `rng` (seeded by (seed,
        task, epoch, item), so any worker on any rank draws the same)."""
        raise NotImplementedError(f"task {self.name} does not draw its inputs")

    def sentinels_needed(self, item: TrainItem) -> int:
        """How many `<extra_id_k>` sentinels the tokenizer must have for `item` (vl_lm)."""
        return 0

    def source_parts(self, example: dict) -> list[SourcePart]:
        return []

    def reference_parts(self, example: dict) -> list[SourcePart]:
        """The input (without prefix) as the reference built it; video tasks define it."""
        raise NotImplementedError(f"task {self.name} has no reference template (video tasks only)")

    def candidates(self, example: dict, layout: InputLayout = DEFAULT_LAYOUT) -> list[str]:
        """Every answer `example` may have, as target strings (`rankable` tasks only)."""
        raise NotImplementedError(f"task {self.name} has no closed answer set to rank")

    def targets(self, example: dict) -> list[Target]:
        raise NotImplementedError

    def layout_targets(self, example: dict, layout: InputLayout) -> list[Target]:
        """`targets` as a run with `layout` writes them (multiple choice: label or text)."""
        return self.targets(example)

    def read_prediction(self, text: str, example: dict | None = None) -> str:
        return _clean(text).lower()

    def metric_value(self, prediction: str) -> Any:
        """A read prediction as the task's metric takes it (vl.evaluate.metrics): the string itself."""
        return prediction

    def source_text(self, example: dict) -> str:
        """The encoder text after the prefix, uncut."""
        return compose(self.source_parts(example))

    def prefix_for(self, layout: InputLayout) -> str:
        """The prefix a run with `layout` writes: the layout's, else the task's own."""
        return self.prefix if layout.prefix is None else layout.prefix

    def input_parts(self, example: dict, layout: InputLayout = DEFAULT_LAYOUT) -> list[SourcePart]:
        """The encoder input as parts: the prefix (`prefix_for(layout)`; an empty one is no
        part at all) first, or last after a video task's reference template."""
        prefix = SourcePart(self.prefix_for(layout))
        if layout.video == "reference" and self.media_kind == "video":
            return [*self.reference_parts(example), prefix]  # appended, as video/tvqa_data.py L208
        return [prefix, *self.source_parts(example)]

    def build_input(self, example: dict, budget: int | None = None, count: Count = count_words,
                    layout: InputLayout = DEFAULT_LAYOUT) -> str:
        """Prefix and source within `budget` (as `count` measures it), cutting only subtitles."""
        return compose(self.input_parts(example, layout), budget, count)

    def sample_target(self, example: dict, rng: random.Random) -> Target:
        return sample_weighted(self.targets(example), rng)

    def problems(self, example: dict, *, need_gold: bool) -> list[str]:
        """What keeps `example` from being read (and, with need_gold, trained on)."""
        where = f"{self.name} example {example.get('id')!r}"
        found = []
        if example.get("task") != self.example_task:
            found.append(f"{where}: field 'task' is {example.get('task')!r}, not {self.example_task!r}; "
                         f"give it to get_task({example.get('task')!r})")
        found += [f"{where}: missing field '{f}'" for f in self.inputs if f not in example]
        if need_gold and not any(example.get(f) is not None for f in self.gold):
            found.append(f"{where}: no gold ({' or '.join(repr(f) for f in self.gold)}) to train on; "
                         "training needs a split converted with its answers")
        return found

    def prediction_items(self, examples: Sequence[dict], layout: InputLayout = DEFAULT_LAYOUT) -> list[TrainItem]:
        """One item per example, without targets: what a model reads to predict (test
        splits without answers included)."""
        collect_or_raise([p for ex in examples for p in self.problems(ex, need_gold=False)],
                         hint="Check the manifest with `vl data check`, or convert it again with `vl data convert`.")
        return [TrainItem(ex["id"], self.name, list(ex["media"]), self.input_parts(ex, layout), []) for ex in examples]

    def expand(self, examples: Sequence[dict], layout: InputLayout = DEFAULT_LAYOUT) -> list[TrainItem]:
        """Training items, one per example (one per reference for captions). A VQA example
        whose labels are empty (every answer outside the LXMERT vocabulary) has nothing to
        learn and is skipped, as its zero score made its loss zero in the original."""
        collect_or_raise([p for ex in examples for p in self.problems(ex, need_gold=True)],
                         hint="Check the manifest with `vl data check`, or convert it again with `vl data convert`.")
        items = []
        for ex in examples:
            parts, targets = self.input_parts(ex, layout), self.layout_targets(ex, layout)
            groups = [[t] for t in targets] if self.one_item_per_target else ([targets] if targets else [])
            items += [TrainItem(ex["id"], self.name, list(ex["media"]), parts, group) for group in groups]
        return items


TASKS: Registry[Task] = Registry("task", sort=True)


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    def wrap(cls: type[Task]) -> type[Task]:
        cls.name = name
        TASKS.add(name, cls())
        return cls

    return wrap


def get_task(name: str) -> Task:
    return TASKS.lookup(name)


# --- image tasks -------------------------------------------------------------------

_SHORT_ANSWER = Generation(max_new_tokens=10, num_beams=1)
_CAPTION = Generation(max_new_tokens=40, num_beams=5)


@register_task("vqa")
class VQA(Task):
    prefix, media_kind, metric, generation = "vqa:", "image", "vqa_accuracy", _SHORT_ANSWER
    inputs = ("question",)
    gold = ("labels", "answers")

    def source_parts(self, example: dict) -> list[SourcePart]:
        return [SourcePart(example["question"])]

    def targets(self, example: dict) -> list[Target]:
        """Every labelled answer with its soft score (LXMERT / VL-T5): training draws one in
        proportion to its score and weights its loss by it. `labels` as the manifest has
        them, else computed from the ten human answers."""
        labels = example["labels"] if example.get("labels") is not None else vqa_soft_scores(example["answers"])
        return [(answer, float(score)) for answer, score in labels.items() if score > 0]


@register_task("gqa")
class GQA(Task):
    prefix, media_kind, metric, generation = "gqa:", "image", "gqa_accuracy", _SHORT_ANSWER
    inputs = ("question",)

    def source_parts(self, example: dict) -> list[SourcePart]:
        return [SourcePart(example["question"])]

    def targets(self, example: dict) -> list[Target]:
        return [(example["answers"][0], 1.0)]


@register_task("nlvr2")
class NLVR2(Task):
    prefix, media_kind, metric, generation = "nlvr:", "image", "nlvr2_accuracy", _SHORT_ANSWER
    inputs = ("sentence",)
    rankable = True

    def source_parts(self, example: dict) -> list[SourcePart]:
        return [SourcePart(example["sentence"])]

    def targets(self, example: dict) -> list[Target]:
        return [(example["answers"][0].lower(), 1.0)]  # "true" / "false"

    def read_prediction(self, text: str, example: dict | None = None) -> str:
        return _clean(text).lower().strip(" .!")  # "True." -> "true"

    def candidates(self, example: dict, layout: InputLayout = DEFAULT_LAYOUT) -> list[str]:
        return ["true", "false"]


@register_task("caption")
class Caption(Task):
    """COCO: the input is the prefix alone."""

    prefix, media_kind, metric, generation = "caption:", "image", "caption", _CAPTION
    gold = ("targets",)
    one_item_per_target = True

    def targets(self, example: dict) -> list[Target]:
        return [(ref, 1.0) for ref in example["targets"]]

    def read_prediction(self, text: str, example: dict | None = None) -> str:
        return _clean(text)  # the caption metric's tokenizer lower-cases itself


# --- V&L pre-training tasks (VL-T5's "span prediction" and "image text match") ----------
# Both read the `caption` task's examples (COCO Karpathy train, Visual Genome region
# descriptions), one training item per caption, and draw input and target anew each epoch.
# VL-T5's region-based objectives (grounded captioning, referring expressions) need object
# boxes that grid features lack: left out (docs/fidelity.md).

MIN_MASKED_WORDS = 2  # span corruption keeps at least one word and masks at least one
SENTINEL = "<extra_id_{}>"
MASK_TOKEN = "<mask>"  # BART's mask token, which `corrupt_bart` wrote for each masked run (preprocess.py L141)
DENOISE_PREFIX = "denoise text:"  # VL-BART's vl_lm prefix (pretrain_data.py L539-542; none when --losses is lm alone)


def random_segmentation(n_items: int, n_segments: int, rng: random.Random) -> list[int]:
    """`n_items` split into `n_segments` non-empty runs, every such split equally likely
    (T5's `_random_segmentation` in t5/data/preprocessors.py)."""
    cuts = sorted(rng.sample(range(1, n_items), n_segments - 1))
    bounds = [0, *cuts, n_items]
    return [b - a for a, b in zip(bounds, bounds[1:])]


def span_sizes(n_words: int, rate: float, mean_span: float) -> tuple[int, int]:
    """(masked words, spans) of T5's span corruption on `n_words` words: round(rate * n)
    words, at least 1 and at most n - 1, in max(1, round(masked / mean_span)) spans, no
    more than the kept words can separate."""
    assert n_words >= MIN_MASKED_WORDS, n_words
    n_noise = min(max(round(n_words * rate), 1), n_words - 1)
    return n_noise, min(max(1, round(n_noise / mean_span)), n_words - n_noise + 1)  # inner gaps need a word each


def span_noise_mask(n_words: int, rng: random.Random, rate: float = 0.15, mean_span: float = 3.0) -> list[bool]:
    """T5's span corruption (`random_spans_noise_mask`, t5/data/preprocessors.py): round(rate * n)
    words masked (at least 1, at most n - 1) in max(1, round(masked / mean_span)) spans whose
    lengths are a random segmentation of the masked words. The kept words fill the gaps
    before, between and after the spans: the inner gaps at least one word, the outer two
    possibly empty, every such split equally likely. (T5 always began with a kept run and
    so never masked the first word, unless `random_roll` rotated the mask: on a one-span
    caption that would put the span always at the end.) Short texts get fewer, shorter
    spans than `mean_span`: a 10-word caption has 2 masked words in 1 span."""
    n_noise, n_spans = span_sizes(n_words, rate, mean_span)
    n_kept = n_words - n_noise
    noise = random_segmentation(n_noise, n_spans, rng)
    gaps = random_segmentation(n_kept + 2, n_spans + 1, rng)  # one more word at each end, taken off below
    gaps[0], gaps[-1] = gaps[0] - 1, gaps[-1] - 1
    mask = []
    for gap, span in zip(gaps, noise):
        mask += [False] * gap + [True] * span
    return mask + [False] * gaps[-1]


def word_noise_mask(n_words: int, rng: random.Random, rate: float = 0.15) -> list[bool]:
    """The reference's rule (VL-T5/src/preprocess.py L25-30, corrupt_spans): int(max(rate * n, 1))
    words picked uniformly without replacement; adjacent picks form one span."""
    picked = set(rng.sample(range(n_words), int(max(rate * n_words, 1))))
    return [i in picked for i in range(n_words)]


def masked_runs(words: Sequence[str], mask: Sequence[bool],
                placeholder: Callable[[int], str]) -> tuple[list[str], list[list[str]]]:
    """The words with each maximal run of masked words replaced by `placeholder(k)`, k = 0,
    1, ... left to right, and the runs' words: what both vl_lm objectives start from."""
    source: list[str] = []
    runs: list[list[str]] = []
    for i, (word, masked) in enumerate(zip(words, mask)):
        if not masked:
            source.append(word)
            continue
        if i == 0 or not mask[i - 1]:  # a run starts
            source.append(placeholder(len(runs)))
            runs.append([])
        runs[-1].append(word)
    return source, runs


def corrupt_spans(words: Sequence[str], mask: Sequence[bool]) -> tuple[str, str]:
    """(input, target) as VL-T5's corrupt_spans writes them (preprocess.py L55-80): each
    maximal run of masked words becomes `<extra_id_k>` in the input, k = 0, 1, ... left to
    right; the target is `<extra_id_0> span0 <extra_id_1> span1 ...` (no closing sentinel,
    as the reference: L70 is commented out)."""
    source, runs = masked_runs(words, mask, SENTINEL.format)
    return " ".join(source), " ".join(w for k, run in enumerate(runs) for w in (SENTINEL.format(k), *run))


def corrupt_denoise(words: Sequence[str], mask: Sequence[bool]) -> tuple[str, str]:
    """(input, target) as VL-BART's corrupt_bart writes them (preprocess.py L85-154): each
    maximal run of masked words becomes one `<mask>` in the input; the target is the whole
    text."""
    source, _ = masked_runs(words, mask, lambda k: MASK_TOKEN)
    return " ".join(source), " ".join(words)


def span_count(n_words: int, layout: "InputLayout") -> int:
    """The most sentinels a caption of `n_words` words can need under `layout`."""
    if layout.masking == "words":
        return min(int(max(layout.mask_rate * n_words, 1)), (n_words + 1) // 2)
    return span_sizes(n_words, layout.mask_rate, layout.mean_span_length)[1]


class CaptionPretraining(Task):
    """A pre-training task on caption examples: one item per caption, drawn each epoch."""

    media_kind = "image"
    gold = ("targets",)
    one_item_per_target = True
    reads = "caption"
    draws = True

    def targets(self, example: dict) -> list[Target]:
        return [(_clean(ref), 1.0) for ref in example["targets"]]

    def prediction_items(self, examples: Sequence[dict], layout: InputLayout = DEFAULT_LAYOUT) -> list[TrainItem]:
        """The input is made from a caption: predicting needs the captions, as training."""
        return self.expand(examples, layout)


@register_task("vl_lm")
class VisualSpanPrediction(CaptionPretraining):
    """VL-T5's "span prediction" (pretrain_data.py L345-352): a caption with spans replaced by
    sentinels, conditioned on the image; the target the sentinels with their spans. With
    `objective: denoise`, VL-BART's "denoise text" (L535-546): each span one `<mask>`, the
    target the whole caption."""

    prefix, metric = "span prediction:", "token_accuracy"
    generation = Generation(max_new_tokens=40, num_beams=1)

    def problems(self, example: dict, *, need_gold: bool) -> list[str]:
        found = super().problems(example, need_gold=need_gold)
        if not found and example.get("targets"):
            short = [i for i, ref in enumerate(example["targets"]) if len(ref.split()) < MIN_MASKED_WORDS]
            if short:
                found.append(f"{self.name} example {example.get('id')!r}: caption {short[0]} "
                             f"({example['targets'][short[0]]!r}) has fewer than {MIN_MASKED_WORDS} words, too short "
                             "to mask a span and keep a word; drop it from the manifest or train it with `caption` "
                             "only")
        return found

    def expand(self, examples: Sequence[dict], layout: InputLayout = DEFAULT_LAYOUT) -> list[TrainItem]:
        items = super().expand(examples, layout)
        for item in items:
            item.context = layout  # the masking settings travel with the item
        return items

    def draw(self, item: TrainItem, rng: random.Random) -> tuple[list[SourcePart], Target]:
        layout: InputLayout = item.context
        words = item.targets[0][0].split()
        mask = (word_noise_mask(len(words), rng, layout.mask_rate) if layout.masking == "words"
                else span_noise_mask(len(words), rng, layout.mask_rate, layout.mean_span_length))
        source, target = (corrupt_denoise if layout.objective == "denoise" else corrupt_spans)(words, mask)
        return [*item.parts, SourcePart(source)], (target, 1.0)

    def prefix_for(self, layout: InputLayout) -> str:
        if layout.prefix is None and layout.objective == "denoise":
            return DENOISE_PREFIX
        return super().prefix_for(layout)

    def sentinels_needed(self, item: TrainItem) -> int:
        if item.context.objective == "denoise":
            return 0  # one <mask> for every run, no sentinels
        return span_count(len(item.targets[0][0].split()), item.context)


@dataclass(frozen=True)
class CaptionPool:
    """A split's captions grouped by image: `texts[a:b]` are those of the image (or images)
    `media`, where `(a, b) = ranges[media]`."""

    texts: tuple[str, ...]
    ranges: dict[tuple[str, ...], tuple[int, int]]

    def other_image_caption(self, media: tuple[str, ...], rng: random.Random) -> str:
        """A caption drawn uniformly from the captions of every other image (never one of
        `media`) whose text is not also one of `media`'s own captions: generic captions
        ("Three shapes on a white background.") recur across images, and one shown as a
        mismatch would teach "false" for a text that describes the image. The reference
        compared image ids only (pretrain_data.py L411). `expand` has checked that such a
        caption exists."""
        a, b = self.ranges[media]
        own = set(self.texts[a:b])
        while True:  # rejection: the expected number of draws is (other captions) / (those of another text)
            j = rng.randrange(len(self.texts) - (b - a))
            text = self.texts[j + (b - a) if j >= a else j]  # skip the image's own run
            if text not in own:
                return text


@register_task("itm")
class ImageTextMatching(CaptionPretraining):
    """VL-T5's "image text match" (pretrain_data.py L398-429): with probability 0.5 the caption
    is swapped for a caption of another image; the target says whether text and image match."""

    prefix, metric, generation = "image text match:", "itm_accuracy", _SHORT_ANSWER
    rankable = True

    def expand(self, examples: Sequence[dict], layout: InputLayout = DEFAULT_LAYOUT) -> list[TrainItem]:
        items = super().expand(examples, layout)
        by_image: dict[tuple[str, ...], list[str]] = {}
        for item in items:
            by_image.setdefault(tuple(item.media), []).append(item.targets[0][0])
        if len(by_image) < 2:
            ids = ", ".join(repr(ex.get("id")) for ex in list(examples)[:3])
            raise VLError(f"{self.name}: its examples ({ids}{', ...' if len(examples) > 3 else ''}) show "
                          f"{len(by_image)} image{'s' * (len(by_image) != 1)}; image-text matching draws its "
                          "non-matching captions from other images and needs at least two",
                          hint="Give the task a split with captions of two or more images.")
        distinct = len(set(text for captions in by_image.values() for text in captions))
        alone = [media for media, captions in by_image.items() if len(set(captions)) == distinct]
        if alone:  # every caption of the split is also one of this image's: no mismatch to show
            raise VLError(f"{self.name}: every caption of its split is also a caption of image {' + '.join(alone[0])}, "
                          "so no caption of another image can be shown as a mismatch for it",
                          hint="Give the task a split whose images have captions of their own.")
        texts, ranges = [], {}
        for media, captions in by_image.items():
            ranges[media] = (len(texts), len(texts) + len(captions))
            texts += captions
        pool = CaptionPool(tuple(texts), ranges)
        for item in items:
            item.context = pool
        return items

    def draw(self, item: TrainItem, rng: random.Random) -> tuple[list[SourcePart], Target]:
        if rng.random() < 0.5:  # pretrain_data.py L403: random.random() < 0.5 -> not matched
            return [*item.parts, SourcePart(item.context.other_image_caption(tuple(item.media), rng))], ("false", 1.0)
        return [*item.parts, SourcePart(item.targets[0][0])], ("true", 1.0)

    def read_prediction(self, text: str, example: dict | None = None) -> str:
        return _clean(text).lower().strip(" .!")

    def candidates(self, example: dict, layout: InputLayout = DEFAULT_LAYOUT) -> list[str]:
        return ["true", "false"]


# --- video tasks -------------------------------------------------------------------


def _subtitle_part(example: dict) -> list[SourcePart]:
    text = " ".join(subtitles_in_span(example["subtitles"], example.get("ts")))
    return [SourcePart(text, may_cut=True, label="subtitles:")] if text.strip() else []


# The reference's video inputs (video/tvqa_data.py L179-208; how2qa_data.py L174-203,
# tvc_data.py L189-207, yc2c_data.py L187-203): "[Subs]" and every subtitle line of the
# whole video in file order, each stripped, joined by spaces; then per task "[Q] <question>",
# "[TS] (<ts>)", "[Choices] a0: <choice>. a1: ..."; the task prefix last; the whole string
# cut by the tokenizer at 600 tokens (`truncate: end`). "[Subs]" stays even when a cut (or
# an empty video) leaves no subtitle.

def _reference_subtitles(example: dict) -> list[SourcePart]:
    lines = " ".join(line["text"].strip() for line in example["subtitles"])
    return [SourcePart("[Subs]"), SourcePart(lines, may_cut=True)]


def _seconds(value: float) -> str:
    return repr(float(value))  # the shortest text of the number: 20.16 -> "20.16"


def reference_ts(ts: Sequence[float] | None, style: Literal["range", "list"]) -> str:
    """A span as the reference printed the release's own `ts` field: TVQA/How2QA's
    "st-ed" string ("20.16-25.12"; "NaN-NaN" where the span is unknown), TVC's [st, ed]
    list as Python prints it ("[35.73, 40.9]"). The manifest keeps the numbers, so a
    release text with trailing zeros ("25.10") comes back without them."""
    if style == "list":
        assert ts is not None, "a caption clip always has its span (value_caption checks it)"
        return f"[{_seconds(ts[0])}, {_seconds(ts[1])}]"
    return "NaN-NaN" if ts is None else f"{_seconds(ts[0])}-{_seconds(ts[1])}"


class MultipleChoiceQA(Task):
    """Question, the choices labelled a0..aN, then the subtitles of the question's span.
    The answer is the choice label ("a2"), which the metric compares with `answer_idx`."""

    media_kind, metric = "video", "mc_accuracy"
    generation = Generation(max_new_tokens=4, num_beams=1)
    inputs = ("question", "choices", "subtitles")
    gold = ("answer_idx",)
    rankable = True

    def source_parts(self, example: dict) -> list[SourcePart]:
        choices = " ".join(f"a{i}: {_clean(c)}" for i, c in enumerate(example["choices"]))
        return [SourcePart(example["question"]), SourcePart(choices), *_subtitle_part(example)]

    def reference_parts(self, example: dict) -> list[SourcePart]:
        # each choice stripped of dots and spaces at both ends, then one dot (tvqa_data.py L195-200)
        choices = " ".join(f"a{i}: {c.strip('. ')}." for i, c in enumerate(example["choices"]))
        return [*_reference_subtitles(example), SourcePart(f"[Q] {example['question'].strip()}"),
                SourcePart(f"[TS] ({reference_ts(example.get('ts'), 'range')})"), SourcePart(f"[Choices] {choices}")]

    def candidates(self, example: dict, layout: InputLayout = DEFAULT_LAYOUT) -> list[str]:
        if layout.answer == "text":
            return [_clean(c) for c in example["choices"]]
        return [f"a{i}" for i in range(len(example["choices"]))]

    def targets(self, example: dict) -> list[Target]:
        return [(f"a{example['answer_idx']}", 1.0)]

    def layout_targets(self, example: dict, layout: InputLayout) -> list[Target]:
        if layout.answer == "text":
            return [(_clean(example["choices"][example["answer_idx"]]), 1.0)]
        return self.targets(example)

    def metric_value(self, prediction: str) -> int | None:
        """"a2" -> 2, the answer index the metric compares with `answer_idx`; None for anything else."""
        label = re.fullmatch(r"a(\d+)", prediction)
        return int(label.group(1)) if label else None

    def read_prediction(self, text: str, example: dict | None = None) -> str:
        """ "a2", "A2", "a2: the choice" -> "a2"; the text of a choice of `example` -> its
        label; anything else comes back cleaned (and scores as wrong)."""
        clean = _clean(text).lower()
        label = re.match(r"a\s?(\d+)(?=$|[\s:.,)])", clean)
        if label:
            return f"a{label.group(1)}"
        if example is not None:
            loose = clean.rstrip(" .")
            for i, choice in enumerate(example.get("choices", [])):
                if _clean(choice).lower().rstrip(" .") == loose:
                    return f"a{i}"
        return clean


@register_task("tvqa")
class TVQA(MultipleChoiceQA):
    prefix = "tvqa:"


@register_task("how2qa")
class How2QA(MultipleChoiceQA):
    prefix = "how2qa:"


class VideoCaption(Caption):
    """The subtitles of the clip's span; one training item per description."""

    media_kind = "video"
    inputs = ("ts", "subtitles")

    def source_parts(self, example: dict) -> list[SourcePart]:
        return _subtitle_part(example)


@register_task("tvc")
class TVC(VideoCaption):
    prefix = "tvc:"

    def reference_parts(self, example: dict) -> list[SourcePart]:
        return [*_reference_subtitles(example), SourcePart(f"[TS] ({reference_ts(example['ts'], 'list')})")]


@register_task("yc2c")
class YC2C(VideoCaption):
    prefix = "yc2c:"

    def reference_parts(self, example: dict) -> list[SourcePart]:
        return _reference_subtitles(example)  # no span in the text (yc2c_data.py L201)
