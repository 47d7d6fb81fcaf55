"""Image-text matching accuracy (`itm`): does the prediction ("true" / "false") say whether
the caption shown was the image's own?

The gold is what the validation item drew (a fixed, seeded draw: the same swapped captions
at every validation), in the example's `answers` (vl.train.data.TaskDataset.scored_examples).
A prediction is right when it equals the label ignoring case. "overall" is the accuracy,
"per_label" the accuracy on matching ("true") and swapped ("false") captions, 0-100.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from vl.evaluate.metrics.common import (Predictions, check_predictions, check_references, examples_by_id, percent,
                                        percent_by_group, single)

LABELS = ("true", "false")


def itm_accuracy(predictions: Predictions[str], labels: Mapping[str, str], *,
                 allow_missing: bool = False) -> dict[str, Any]:
    """Accuracy of `predictions` ({id: "true" or "false"}) against `labels` ({id: label})."""
    check_references(labels, is_valid=lambda a: isinstance(a, str) and a.lower() in LABELS,
                     expected='"true" or "false"', what="ITM labels")
    preds, missing = check_predictions(predictions, labels, is_valid=lambda p: isinstance(p, str),
                                       expected="strings", allow_missing=allow_missing)
    right: dict[str, float] = {}
    counts: dict[str, int] = {}
    for rid, label in labels.items():
        label = label.lower()
        right[label] = right.get(label, 0) + (rid in preds and preds[rid].lower() == label)
        counts[label] = counts.get(label, 0) + 1
    return {"overall": percent(sum(right.values()), len(labels)), "per_label": percent_by_group(right, counts),
            "count": len(labels), "missing": len(missing)}


def score_examples(predictions: Predictions[str], examples: Iterable[Mapping[str, Any]], *,
                   allow_missing: bool = False) -> dict[str, Any]:
    """`itm_accuracy` against examples whose `answers` hold the drawn label."""
    by_id = examples_by_id(examples, "answers", "itm",
                           hint="itm's gold is drawn by its validation items (TaskDataset.scored_examples)")
    return itm_accuracy(predictions, {eid: single(ex["answers"]) for eid, ex in by_id.items()},
                        allow_missing=allow_missing)
