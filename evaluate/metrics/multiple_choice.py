"""Multiple-choice accuracy for TVQA and How2QA, as VALUE's `evaluate_tvqa.py` computes
it: the share of questions whose predicted choice index equals `answer_idx`.

A prediction is the index of the chosen answer (0-4 for TVQA, 0-3 for How2QA), or
None when the model's output named no choice; None and out-of-range indices score as
wrong. "per_group" breaks the score down by any grouping given, e.g. TVQA's
`show_name`, as VL-T5's TVQAEvaluator does per show.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from vl.evaluate.metrics.common import (Predictions, check_covers, check_predictions, check_references, examples_by_id,
                                field_if_everywhere, percent, percent_by_group)


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def multiple_choice_accuracy(predictions: Predictions[int | None], answers: Mapping[str, int], *,
                             groups: Mapping[str, str] | None = None,
                             allow_missing: bool = False) -> dict[str, Any]:
    """Accuracy of `predictions` ({question id: choice index or None}) against `answers`
    ({question id: answer_idx}). Returns {"overall", "count", "missing"} and, with
    `groups` ({question id: group}), "per_group"; 0-100."""
    check_references(answers, is_valid=_is_index, expected="integer answer indices",
                     what="multiple-choice answers")
    check_covers(groups, answers, "groups")
    preds, missing = check_predictions(predictions, answers, is_valid=lambda p: p is None or _is_index(p),
                                       expected="choice indices (int) or None", allow_missing=allow_missing)
    correct = 0
    totals: dict[str, int] = {}
    counts: dict[str, int] = {}
    for qid, answer in answers.items():
        right = int(preds.get(qid) == answer)
        correct += right
        if groups is not None:
            totals[groups[qid]] = totals.get(groups[qid], 0) + right
            counts[groups[qid]] = counts.get(groups[qid], 0) + 1
    result: dict[str, Any] = {"overall": percent(correct, len(answers)), "count": len(answers),
                              "missing": len(missing)}
    if groups is not None:
        result["per_group"] = percent_by_group(totals, counts)
    return result


def score_examples(predictions: Predictions[int | None], examples: Iterable[Mapping[str, Any]], *,
                   allow_missing: bool = False) -> dict[str, Any]:
    """`multiple_choice_accuracy` against `tvqa` / `how2qa` manifest examples
    (`answer_idx`), per `show_name` when every example has one (TVQA)."""
    by_id = examples_by_id(examples, "answer_idx", "multiple-choice")
    return multiple_choice_accuracy(predictions, {eid: ex["answer_idx"] for eid, ex in by_id.items()},
                                    groups=field_if_everywhere(by_id, "show_name"), allow_missing=allow_missing)
