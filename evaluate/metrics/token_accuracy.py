"""Token accuracy of span prediction (`vl_lm`): how many masked words the model wrote back
in the right place.

The gold is the target the validation item drew, `<extra_id_0> span0 <extra_id_1> span1
...` (objective span) or the whole caption (objective denoise: every word is scored, the
kept ones too), in the example's `answers` (vl.train.data.TaskDataset.scored_examples). Both texts
are lower-cased, every sentinel `<extra_id_k>` is removed (decoding with
`skip_special_tokens` drops them from the prediction anyway) and the rest is split on
white space into words. A gold word counts as right when the prediction has the same word
at the same position. "overall" is the right words over all gold words of all examples
(a micro average, 0-100); "exact" is the share of examples whose predicted words are
exactly the gold words. The tokens here are words, the unit that was masked, not the
tokenizer's sub-words, so the score does not depend on the vocabulary.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from vl.evaluate.metrics.common import (Predictions, check_predictions, check_references, examples_by_id, percent,
                                        single)

SENTINEL = re.compile(r"<extra_id_\d+>")


def span_words(text: str) -> list[str]:
    """"<extra_id_0> A red <extra_id_1> bus" -> ["a", "red", "bus"]."""
    return SENTINEL.sub(" ", text).lower().split()


def token_accuracy(predictions: Predictions[str], targets: Mapping[str, str], *,
                   allow_missing: bool = False) -> dict[str, Any]:
    """Token accuracy ("overall") and "exact" of `predictions` ({id: predicted text})
    against `targets` ({id: target with sentinels}); also "count", "missing" and "words"
    (gold words scored); 0-100."""
    check_references(targets, is_valid=lambda t: isinstance(t, str) and bool(span_words(t)),
                     expected="targets with at least one word", what="span targets")
    preds, missing = check_predictions(predictions, targets, is_valid=lambda p: isinstance(p, str),
                                       expected="strings", allow_missing=allow_missing)
    right = words = exact = 0
    for rid, target in targets.items():
        gold, guess = span_words(target), span_words(preds.get(rid, ""))
        right += sum(g == p for g, p in zip(gold, guess))
        words += len(gold)
        exact += rid in preds and gold == guess
    return {"overall": percent(right, words), "exact": percent(exact, len(targets)),
            "count": len(targets), "missing": len(missing), "words": words}


def score_examples(predictions: Predictions[str], examples: Iterable[Mapping[str, Any]], *,
                   allow_missing: bool = False) -> dict[str, Any]:
    """`token_accuracy` against examples whose `answers` hold the drawn target (one string)."""
    by_id = examples_by_id(examples, "answers", "vl_lm",
                           hint="vl_lm's gold is drawn by its validation items (TaskDataset.scored_examples)")
    return token_accuracy(predictions, {eid: single(ex["answers"]) for eid, ex in by_id.items()},
                          allow_missing=allow_missing)
