"""VQA accuracy, exactly as the official evaluation computes it.

The official script (GT-Vision-Lab/VQA, `PythonEvaluationTools/vqaEvaluation/vqaEval.py`,
the version since commit a013f00 of March 2021) does, per question:

1. replace "\\n" and "\\t" by spaces and strip, in the ten human answers and in the
   prediction;
2. only if the ten answers are not all the same string after step 1, normalise the
   answers and the prediction (`processPunctuation`, then `processDigitArticle`; see
   `vl.shared.answers.normalize_vqa_answer`). When all ten agree nothing is normalised,
   so against ten "yes" the prediction "Yes" or "yes." scores 0; the authors keep this
   so that answers reading text in the image are compared verbatim
   (GT-Vision-Lab/VQA#14). VL-T5 and LAVIS copy the pre-2021 rule instead;
3. score each of the ten answers' leave-one-out subsets as min(1, matches among the
   other nine / 3) and average the ten: m matching answers give
   (m * min(1, (m-1)/3) + (10-m) * min(1, m/3)) / 10, so 1 -> 0.3, 2 -> 0.6, 3 -> 0.9.

The overall score and the per answer type / per question type scores are means of the
question scores, times 100, rounded to two decimals as the official script's Python 2
`round` does (a tie goes away from zero: 62.125 -> 62.13).

Speed: the official loop compares every answer with the other nine (10 x 10 per
question) and normalises the prediction again for every question. Here each distinct
string is normalised once (cached), and each question keeps, for every distinct
answer, the positions where it occurs; a prediction's score is then one dict lookup
into a table of leave-one-out means. The table keeps the official summation order
(answer by answer), because the float sum depends on where the matches sit (two
matches give 0.6 or 0.5999999999999999), so results agree with the official script to
the last bit, ties in the final rounding included.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from typing import Any, NamedTuple

from vl.evaluate.metrics.common import (Predictions, check_covers, check_predictions, check_references, examples_by_id,
                                field_if_everywhere)
from vl.shared.answers import normalize_vqa_answer

# Distinct answer and prediction strings: VQA v2 has far fewer than this per split.
_CACHE_SIZE = 1 << 18
_normalized = lru_cache(maxsize=_CACHE_SIZE)(normalize_vqa_answer)


def clean_whitespace(text: str) -> str:
    """The official step applied to every answer and prediction: "\\n" and "\\t" to spaces, strip."""
    return text.replace("\n", " ").replace("\t", " ").strip()


class VQAGold(NamedTuple):
    """One question's human answers, ready to score any prediction."""

    normalise: bool  # the answers disagree: compare normalised strings
    positions: dict[str, int]  # answer as compared -> bit mask of where it occurs among the answers
    n: int  # number of answers (10 in VQA v2)


def prepare_gold(answers: Sequence[str]) -> VQAGold:
    """Steps 1 and 2 of the module docstring for one question's answers."""
    cleaned = [clean_whitespace(a) for a in answers]
    normalise = len(set(cleaned)) > 1
    keys = [_normalized(a) for a in cleaned] if normalise else cleaned
    positions: dict[str, int] = {}
    for i, key in enumerate(keys):
        positions[key] = positions.get(key, 0) | (1 << i)
    return VQAGold(normalise, positions, len(keys))


@lru_cache(maxsize=None)
def _leave_one_out_mean(n: int, matches: int) -> float:
    """The official mean over the n leave-one-out subsets, summed in the official order
    (answer 0 first) for the answers at the bit positions of `matches`."""
    m = bin(matches).count("1")
    total = 0.0
    for i in range(n):
        total += min(1, (m - (matches >> i & 1)) / 3)
    return total / n


def question_accuracy(prediction: str, gold: VQAGold) -> float:
    """The official score of one prediction, in [0, 1]."""
    key = _normalized(clean_whitespace(prediction)) if gold.normalise else clean_whitespace(prediction)
    matches = gold.positions.get(key, 0)
    return _leave_one_out_mean(gold.n, matches) if matches else 0.0


def official_round(value: float, ndigits: int = 2) -> float:
    """Python 2's `round`, which the official script ran under: the float's exact value
    rounded half away from zero (Python 3's `round` rounds half to even)."""
    return float(Decimal(value).quantize(Decimal(1).scaleb(-ndigits), rounding=ROUND_HALF_UP))


def _official_percent(total: float, count: int) -> float:
    return official_round(100 * total / count)  # the official order: (100 * sum) / count


def vqa_accuracy(predictions: Predictions[str], answers: Mapping[str, Sequence[str] | VQAGold], *,
                 answer_types: Mapping[str, str] | None = None, question_types: Mapping[str, str] | None = None,
                 allow_missing: bool = False) -> dict[str, Any]:
    """The official VQA accuracy of `predictions` ({question id: answer string}) against
    `answers` ({question id: the human answers, raw, in release order}, or `VQAGold`s
    made once by `prepare_gold` for repeated scoring).

    Returns {"overall", "count", "missing"} and, when the types are given,
    "per_answer_type" and "per_question_type" ({type: score}); scores on 0-100.
    A question without a prediction (only with `allow_missing`) scores 0."""
    check_references(answers, is_valid=lambda a: isinstance(a, VQAGold) or (
        isinstance(a, (list, tuple)) and len(a) > 0 and all(isinstance(s, str) for s in a)),
        expected="non-empty lists of answer strings", what="VQA questions' answers")
    check_covers(answer_types, answers, "answer_types")
    check_covers(question_types, answers, "question_types")
    preds, missing = check_predictions(predictions, answers, is_valid=lambda p: isinstance(p, str),
                                       expected="strings", allow_missing=allow_missing)

    # Sums run in question order with plain float additions, as the official `sum` does.
    total = 0.0
    by_answer_type: dict[str, list] = {}  # type -> [sum, count]
    by_question_type: dict[str, list] = {}
    for qid, gold in answers.items():
        if not isinstance(gold, VQAGold):
            gold = prepare_gold(gold)
        acc = question_accuracy(preds[qid], gold) if qid in preds else 0.0
        total += acc
        for types, by_type in ((answer_types, by_answer_type), (question_types, by_question_type)):
            if types is not None:
                entry = by_type.setdefault(types[qid], [0.0, 0])
                entry[0] += acc
                entry[1] += 1

    result: dict[str, Any] = {"overall": _official_percent(total, len(answers)), "count": len(answers),
                              "missing": len(missing)}
    if answer_types is not None:
        result["per_answer_type"] = {t: _official_percent(s, n) for t, (s, n) in sorted(by_answer_type.items())}
    if question_types is not None:
        result["per_question_type"] = {t: _official_percent(s, n) for t, (s, n) in sorted(by_question_type.items())}
    return result


def score_examples(predictions: Predictions[str], examples: Iterable[Mapping[str, Any]], *,
                   allow_missing: bool = False) -> dict[str, Any]:
    """`vqa_accuracy` against `vqa` manifest examples: their `answers`, and their
    `answer_type` / `question_type` breakdowns when every example has them."""
    by_id = examples_by_id(examples, "answers", "vqa", hint=(
        "A manifest converted from the LXMERT / VL-T5 JSON keeps only the soft `labels`, not the ten human "
        "answers the official accuracy needs: convert the official questions with --annotations."))
    return vqa_accuracy(predictions, {eid: ex["answers"] for eid, ex in by_id.items()},
                        answer_types=field_if_everywhere(by_id, "answer_type"),
                        question_types=field_if_everywhere(by_id, "question_type"),
                        allow_missing=allow_missing)
