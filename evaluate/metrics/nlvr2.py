"""NLVR2 accuracy and consistency as the official `nlvr2/eval/metrics.py` (lil-lab/nlvr)
computes them.

An identifier reads `split-set_id-pair_id-sentence_id` ("dev-850-0-0"): one sentence
was written for an eight-image set and is paired with several image pairs of that
set, so its examples share everything but the pair id. The official script keys a
sentence by the identifier with its third field (the pair id) blanked, "dev-850--0",
and counts a sentence as consistent when every one of its examples is right.
Consistency is the share of consistent sentences. (The image files, by contrast, drop
the last field, the sentence id: "dev-850-0-img0".)

A prediction is right when it equals the label ignoring case ("True" == "true").
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from vl.evaluate.metrics.common import Predictions, check_predictions, check_references, examples_by_id, percent, some_ids
from vl.shared.errors import VLError

PAIR_FIELD = 2  # "dev-850-0-0".split("-")[2] is the pair id


def sentence_key(identifier: str) -> str:
    """"dev-850-0-0" -> "dev-850--0": the identifier with its pair id blanked, as the
    official script groups examples by sentence."""
    fields = identifier.split("-")
    fields[PAIR_FIELD] = ""
    return "-".join(fields)


def nlvr2_accuracy(predictions: Predictions[str], labels: Mapping[str, str], *,
                   allow_missing: bool = False) -> dict[str, Any]:
    """Accuracy ("overall") and "consistency" of `predictions` ({identifier: "true" or
    "false"}) against `labels` ({identifier: label}); also "count", "missing" and
    "sentences" (how many distinct sentences); 0-100."""
    check_references(labels, is_valid=lambda a: isinstance(a, str), expected="label strings",
                     what="NLVR2 labels")
    malformed = [i for i in labels if not isinstance(i, str) or i.count("-") < PAIR_FIELD + 1]
    if malformed:
        raise VLError(f"{len(malformed)} NLVR2 identifiers are not split-set-pair-sentence like 'dev-850-0-0' "
                      f"({some_ids(malformed)}); consistency groups examples by these fields")
    preds, missing = check_predictions(predictions, labels, is_valid=lambda p: isinstance(p, str),
                                       expected="strings", allow_missing=allow_missing)

    correct = 0
    consistent: dict[str, bool] = {}
    for identifier, label in labels.items():
        right = identifier in preds and preds[identifier].lower() == label.lower()
        correct += right
        key = sentence_key(identifier)
        consistent[key] = consistent.get(key, True) and right
    return {"overall": percent(correct, len(labels)),
            "consistency": percent(sum(consistent.values()), len(consistent)),
            "count": len(labels), "missing": len(missing), "sentences": len(consistent)}


def score_examples(predictions: Predictions[str], examples: Iterable[Mapping[str, Any]], *,
                   allow_missing: bool = False) -> dict[str, Any]:
    """`nlvr2_accuracy` against `nlvr2` manifest examples (`answers` = ["true"] or ["false"])."""
    by_id = examples_by_id(examples, "answers", "nlvr2")
    labels = {eid: ex["answers"][0] if isinstance(ex["answers"], list) and len(ex["answers"]) == 1 else ex["answers"]
              for eid, ex in by_id.items()}
    return nlvr2_accuracy(predictions, labels, allow_missing=allow_missing)
