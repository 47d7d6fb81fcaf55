"""Tokenizers for VL-T5 / VL-BART: the backbone's own, or one trained on the manifests.

    tok = load_tokenizer("google-t5/t5-base")                  # the real one (hub id or local folder)
    tok = train_tokenizer(manifest_texts(manifests), 2000, "t5", out_dir)   # offline: tests, the demo
    item.text(budget=600, count=token_counter(tok))            # cut subtitles by tokens, not words

A trained tokenizer copies the conventions of the real ones, so the rest of the code
cannot tell them apart:

- "t5": a Unigram model (SentencePiece style: NFKC, "▁" marks a word start) with
  <pad> 0, </s> 1, <unk> 2; `tok(text)` appends </s>, as T5's tokenizer does.
- "bart": a byte-level BPE (GPT-2 style, so no text is ever unknown) with <s> 0,
  <pad> 1, </s> 2, <unk> 3 and <mask> last; `tok(text)` gives <s> ... </s>, as BART's.

No visual word tokens. The reference (VL-T5's VLT5Tokenizer / VLBartTokenizer) added 100
`<vis_extra_id_i>` tokens to T5 and 200 special tokens (`<extra_id_i>` and
`<vis_extra_id_i>`) to BART. We add none: the visual features enter the encoder as
embeddings through `inputs_embeds` (vl.train.model), never as word ids, so the
vocabulary and the embedding matrix stay the backbone's own. A trained T5-style
tokenizer has no `<extra_id_i>` sentinels either: nothing here does span-corruption
pretraining.

Small corpora. On a corpus of few distinct words (the demo world has 162) the Unigram
trainer of `tokenizers` settles on characters: it left 743 of 1000 entries unused and split
"is" and "small" into letters. A trained T5-style vocabulary is therefore topped up, up to
`vocab_size`, with the most frequent whole words (seen twice or more) it lacks, each scored
by its log frequency; that made the demo's questions 2.3x shorter in tokens.

Determinism. The BPE trainer is deterministic. The Unigram trainer of `tokenizers` is
not quite: it sums its EM statistics over words in hash-map order (scores then differ
run to run by 1e-14 to 1e-11) and orders pieces of equal score, and the characters it has to
keep, by hash order too. `_canonical_unigram` therefore orders the pieces by (score,
piece), gives those kept characters their scores in character order, and rounds every
score to 1e-5 (a likelihood change of 0.001%), so the same texts give the same
tokenizer.json bytes (a score landing within 1e-11 of a rounding boundary could still
flip; we have not seen it).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal, Mapping

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from vl.shared.atomic import temporary_sibling
from vl.shared.disk_full import reporting_disk_full
from vl.shared.errors import VLError, collect_or_raise
from vl.shared.manifest import DatasetManifest
from vl.train.tasks import DEFAULT_LAYOUT, TASKS, Count, InputLayout

Kind = Literal["t5", "bart"]
KINDS = ("t5", "bart")

# Special tokens in id order, as the real tokenizers number them (BART's <mask> comes last, after the merges).
T5_SPECIALS = ("<pad>", "</s>", "<unk>")
BART_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
BART_MASK = "<mask>"
MODEL_MAX_LENGTH = {"t5": 512, "bart": 1024}  # the real tokenizers' model_max_length

# Every printable ASCII character is in a trained T5-style vocabulary, seen in the texts or
# not, so an ASCII question at evaluation time never meets <unk> (T5's own vocabulary has them all).
ASCII_ALPHABET = sorted(set(string.printable) - set(string.whitespace))
_UNIGRAM_PENALTY_STEP = 1e-4  # tokenizers' Unigram trainer: a kept character's score is min + k * this
_SCORE_DECIMALS = 5

LOCAL_OR_TRAIN_HINT = ("Without network access, pass a local directory: `save_pretrained` the tokenizer on a machine "
                       "that has one, or train one on your manifests with `vl.train.tokenizer.train_tokenizer` "
                       "and pass the directory it was saved to.")
NO_TEXTS = "no (non-blank) texts to train a tokenizer on; give it e.g. manifest_texts(manifests) of non-empty manifests"
LOCAL_DIR_HINT = ("Give a folder written by `save_pretrained` or by `train_tokenizer(..., out_dir=...)` "
                  "(it holds tokenizer.json and tokenizer_config.json).")


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerFast:
    """The tokenizer saved in a local directory (by `save_pretrained` or `train_tokenizer`)
    or published under a hub id ("google-t5/t5-base"), through `AutoTokenizer`."""
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        source, hint = str(local), LOCAL_DIR_HINT
    elif name_or_path.startswith((".", "/", "~")) or "\\" in name_or_path or local.exists():
        raise VLError(f"tokenizer directory {name_or_path} not found (or not a directory): give a folder written by "
                      "`save_pretrained` or `train_tokenizer`, or a hub id such as google-t5/t5-base")
    else:
        source, hint = name_or_path, LOCAL_OR_TRAIN_HINT  # a hub id
    try:
        tok = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise VLError(f"cannot load the tokenizer of {source}: {e}", hint=hint) from None
    if not isinstance(tok, PreTrainedTokenizerFast):
        raise VLError(f"{source} gave a slow {type(tok).__name__}; VL models need a fast tokenizer (a tokenizer.json)",
                      hint=hint)
    return tok


def token_counter(tok: PreTrainedTokenizerFast) -> Count:
    """`count` for `TrainItem.text(budget, count)` / `Task.build_input`: the number of
    tokens of a text without special tokens (no </s>, no <s>)."""
    backend = tok.backend_tokenizer  # the same encoding as tok(text), without the Python layer

    def count(text: str) -> int:
        return len(backend.encode(text, add_special_tokens=False).ids)

    return count


def manifest_texts(manifests: Iterable[DatasetManifest],
                   layouts: Mapping[str, InputLayout] | None = None) -> Iterator[str]:
    """Every text a model reads or writes for these manifests: each example's whole
    encoder input (task prefix, question, choices "a0: ..", subtitles; uncut), written
    with its task's layout in `layouts` (the run's prefix and video template; default:
    the task's own), and each of its training targets (answers, choice labels "a2",
    captions). Examples without gold (test splits) give their input only."""
    for manifest in manifests:
        problems = []
        for ex in manifest.examples:
            if ex["task"] in TASKS:
                problems += TASKS[ex["task"]].problems(ex, need_gold=False)
            else:
                problems.append(f"example {ex['id']!r}: unknown task {ex['task']!r}; "
                                f"tasks are: {', '.join(sorted(TASKS))}")
        collect_or_raise([f"{manifest.path}: {p}" for p in problems],
                         hint="Check the manifest with `vl data check`, or convert it again with `vl data convert`.")
        for ex in manifest.examples:
            task = TASKS[ex["task"]]
            yield task.build_input(ex, layout=(layouts or {}).get(task.name, DEFAULT_LAYOUT))
            if any(ex.get(f) is not None for f in task.gold):
                layout = (layouts or {}).get(task.name, DEFAULT_LAYOUT)
                yield from (text for text, _weight in task.layout_targets(ex, layout))
    for name, layout in (layouts or {}).items():  # a task reading another's examples (vl_lm, itm): its prefix
        if TASKS[name].reads:
            yield TASKS[name].prefix_for(layout)


def train_tokenizer(texts: Iterable[str], vocab_size: int, kind: Kind,
                    out_dir: Path | None = None) -> PreTrainedTokenizerFast:
    """A T5-style (Unigram) or BART-style (byte-level BPE) tokenizer trained on `texts`,
    of at most `vocab_size` entries special tokens included (a small corpus may give
    fewer: see "Small corpora" above). Same texts, same tokenizer. Saved with
    `save_pretrained(out_dir)` when `out_dir` is given; `load_tokenizer(out_dir)` reads
    it back."""
    if kind not in KINDS:
        raise VLError(f"unknown tokenizer kind {kind!r}; choose one of: {', '.join(KINDS)}")
    minimum = _minimum_vocab_size(kind)
    if vocab_size < minimum:
        holds = (f"3 special tokens, the {len(ASCII_ALPHABET)} printable ASCII characters, '▁' and one piece more"
                 if kind == "t5" else "the 256 byte symbols, 4 special tokens and <mask>")
        raise VLError(f"vocab_size {vocab_size} is too small for a {kind}-style tokenizer: "
                      f"it needs at least {minimum} ({holds})")
    seen = _TextStats(_t5_words if kind == "t5" else None)
    train = _train_t5 if kind == "t5" else _train_bart
    backend = train(seen.watch(texts), vocab_size, seen)
    if seen.count == 0:
        raise VLError(NO_TEXTS)
    specials = (dict(pad_token="<pad>", eos_token="</s>", unk_token="<unk>") if kind == "t5" else
                dict(bos_token="<s>", pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                     mask_token=AddedToken(BART_MASK, lstrip=True, special=True)))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=MODEL_MAX_LENGTH[kind], **specials)
    assert len(tok) <= vocab_size, f"trained {len(tok)} entries for vocab_size {vocab_size}"
    if out_dir is not None:
        save_tokenizer(tok, Path(out_dir))
    return tok


def save_tokenizer(tok: PreTrainedTokenizerFast, out_dir: Path) -> None:
    """`save_pretrained` into a temporary sibling folder renamed into place once complete:
    a failure (a full disk) leaves no half-written tokenizer for the rerun to load."""
    tmp = temporary_sibling(out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with reporting_disk_full(out_dir, needed=len(tok.backend_tokenizer.to_str(pretty=True).encode("utf-8"))):
            tok.save_pretrained(str(tmp))
            if out_dir.is_dir():  # one file at a time over an older one
                for f in tmp.iterdir():
                    os.replace(f, out_dir / f.name)
            else:
                os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _minimum_vocab_size(kind: Kind) -> int:
    """Before seeing the texts: T5-style keeps its specials, the ASCII characters, "▁" and
    needs one piece more (the Unigram trainer's rule); BART-style its 256 bytes and specials."""
    if kind == "t5":
        return len(T5_SPECIALS) + len(ASCII_ALPHABET) + 1 + 1
    return 256 + len(BART_SPECIALS) + 1  # + <mask>


class _TextStats:
    """Counts the non-blank texts and collects their characters as training streams them;
    with `words_of` (a text -> its words) counts the words too."""

    def __init__(self, words_of: Callable[[str], list[str]] | None = None) -> None:
        self.count = 0
        self.chars: set[str] = set()
        self.words: Counter[str] = Counter()
        self._words_of = words_of

    def watch(self, texts: Iterable[str]) -> Iterator[str]:
        for text in texts:
            self.count += bool(text.strip())
            self.chars.update(text)
            if self._words_of is not None:
                self.words.update(self._words_of(text))
            yield text


def _t5_pipeline(tk: Tokenizer) -> Tokenizer:
    """T5's text handling: NFKC, runs of spaces as one, words split on whitespace and
    marked with a leading "▁", which the decoder turns back into spaces."""
    tk.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return tk


def _train_t5(texts: Iterator[str], vocab_size: int, seen: _TextStats) -> Tokenizer:
    tk = _t5_pipeline(Tokenizer(models.Unigram()))
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=list(T5_SPECIALS), unk_token="<unk>",
                                      initial_alphabet=ASCII_ALPHABET, show_progress=False)
    try:
        tk.train_from_iterator(texts, trainer)
    except Exception as e:
        if type(e) is not Exception:  # raised by `texts` (a VLError from manifest_texts, say), not by the trainer
            raise
        # The Rust trainer raises a bare Exception when the characters do not fit.
        raise VLError(f"cannot train a t5-style tokenizer of vocab_size {vocab_size}: {e}",
                      hint=f"Pass at least {_t5_minimum(tk, seen.chars)}.") from None
    if seen.count == 0:
        raise VLError(NO_TEXTS)
    vocab = json.loads(tk.to_str())["model"]["vocab"]  # [[piece, score], ...], specials first
    if len(vocab) > vocab_size:  # the trainer keeps every character even past vocab_size
        raise VLError(f"vocab_size {vocab_size} is too small for these texts: their characters alone need "
                      f"{len(vocab)} entries; pass at least {_t5_minimum(tk, seen.chars)}")
    pieces = _with_whole_words(_canonical_unigram(vocab), seen.words, vocab_size)
    final = _t5_pipeline(Tokenizer(models.Unigram(pieces, unk_id=T5_SPECIALS.index("<unk>"))))
    final.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in T5_SPECIALS])
    final.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                         special_tokens=[("</s>", T5_SPECIALS.index("</s>"))])
    return final


_T5_PIPELINE = _t5_pipeline(Tokenizer(models.Unigram()))


def _t5_words(text: str) -> list[str]:
    """The "▁word" pieces the T5 pipeline splits `text` into."""
    normalized = _T5_PIPELINE.normalizer.normalize_str(text)
    return [word for word, _ in _T5_PIPELINE.pre_tokenizer.pre_tokenize_str(normalized)]


def _with_whole_words(pieces: list[tuple[str, float]], words: Counter[str],
                      vocab_size: int) -> list[tuple[str, float]]:
    """`pieces` (specials first) plus the most frequent whole words missing from them (seen
    at least twice), up to `vocab_size` entries, each scored log(count / all words); the
    non-special pieces ordered again by (-score, piece)."""
    have = {piece for piece, _ in pieces}
    room = vocab_size - len(pieces)
    total = sum(words.values())
    missing = [(word, count) for word, count in sorted(words.items(), key=lambda wc: (-wc[1], wc[0]))
               if count >= 2 and word not in have][:max(room, 0)]
    if not missing:
        return pieces
    specials, rest = pieces[:len(T5_SPECIALS)], pieces[len(T5_SPECIALS):]
    rest += [(word, round(math.log(count / total), _SCORE_DECIMALS)) for word, count in missing]
    return specials + sorted(rest, key=lambda ps: (-ps[1], ps[0]))


def _t5_minimum(tk: Tokenizer, chars: set[str]) -> int:
    """The smallest vocab_size the Unigram trainer accepts for these characters: the
    special tokens, every character it must keep ("▁" included), and one piece more."""
    normalized = {c for ch in chars for c in tk.normalizer.normalize_str(ch) if not c.isspace()}
    return len(T5_SPECIALS) + len(normalized | set(ASCII_ALPHABET) | {"▁"}) + 1


def _canonical_unigram(vocab: list[list]) -> list[tuple[str, float]]:
    """The trained pieces in an order and with scores that do not depend on hash order
    (see the module docstring): specials first, then by descending score, ties by piece."""
    specials = [(piece, 0.0) for piece in T5_SPECIALS]
    pieces = {piece: score for piece, score in vocab if piece not in T5_SPECIALS}
    # Characters the trainer had to keep without a score of their own got lowest + k * step,
    # k counted in hash order; give them the same scores in character order instead.
    lowest = min(pieces.values())
    steps = {piece: (score - lowest) / _UNIGRAM_PENALTY_STEP for piece, score in pieces.items() if len(piece) == 1}
    kept = sorted(piece for piece, k in steps.items() if abs(k - round(k)) < 1e-5 and round(k) < len(steps))
    pieces.update({piece: lowest + k * _UNIGRAM_PENALTY_STEP for k, piece in enumerate(kept)})
    ordered = sorted(((piece, round(score, _SCORE_DECIMALS)) for piece, score in pieces.items()),
                     key=lambda ps: (-ps[1], ps[0]))
    return specials + ordered


def _train_bart(texts: Iterator[str], vocab_size: int, seen: _TextStats) -> Tokenizer:
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1,  # room for <mask>, added last as in BART
                                  special_tokens=list(BART_SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(texts, trainer)
    tk.post_processor = processors.RobertaProcessing(("</s>", BART_SPECIALS.index("</s>")),
                                                     ("<s>", BART_SPECIALS.index("<s>")),
                                                     trim_offsets=True, add_prefix_space=False)
    tk.add_special_tokens([AddedToken(BART_MASK, lstrip=True, special=True)])
    return tk


def extra_token_names(count: int) -> list[str]:
    """`count // 2` `<extra_id_k>` and as many `<vis_extra_id_k>`: VL-BART's special tokens."""
    half = max(count, 0) // 2
    return [f"<extra_id_{k}>" for k in range(half)] + [f"<vis_extra_id_{k}>" for k in range(half)]


def add_extra_tokens(tokenizer: PreTrainedTokenizerFast, count: int) -> int:
    """Add VL-BART's special tokens (`extra_token_names`; the reference added 100 + 100 to
    BART's tokenizer). Tokens the tokenizer has already (T5's own extra ids, or a second
    call) are not added again; returns how many were added."""
    if count <= 0:
        return 0
    return tokenizer.add_tokens(extra_token_names(count), special_tokens=True)


@dataclass(frozen=True)
class HubTokenizer:
    """What a dry run needs to know of a hub tokenizer without the network."""

    length: int  # len(tokenizer) as loaded
    extra_ids: int  # its own <extra_id_0> .. <extra_id_{n-1}> (T5's span sentinels), which add_extra_tokens keeps

    def length_with_extra_tokens(self, count: int) -> int:
        """len(tokenizer) after add_extra_tokens(tokenizer, count)."""
        own = {f"<extra_id_{k}>" for k in range(self.extra_ids)}
        return self.length + sum(name not in own for name in extra_token_names(count))


# The tokenizers of the built-in backbones' hub checkpoints (vl.train.model.BACKBONE_SHAPES). T5's has
# 32,000 pieces and 100 <extra_id_k> (its model's embedding has 32,128 rows, which a build resizes to the
# tokenizer's length); BART's has 50,265 tokens, as many as its embedding's rows.
HUB_TOKENIZERS: dict[str, HubTokenizer] = {
    "google-t5/t5-small": HubTokenizer(32100, 100),
    "google-t5/t5-base": HubTokenizer(32100, 100),
    "facebook/bart-base": HubTokenizer(50265, 0),
    "facebook/bart-large": HubTokenizer(50265, 0),
}


def vis_token_ids(tokenizer: PreTrainedTokenizerFast) -> list[int]:
    """The ids of `<vis_extra_id_0>`, `<vis_extra_id_1>`, ... as far as the tokenizer has them
    (visual_inputs=reference embeds visual token k with the word embedding of the k-th)."""
    vocab = tokenizer.get_vocab()
    ids = []
    while f"<vis_extra_id_{len(ids)}>" in vocab:
        ids.append(vocab[f"<vis_extra_id_{len(ids)}>"])
    return ids
