"""GQA accuracy as the official `eval.py` (and VL-T5's GQAEvaluator) computes it:
exact string match, prediction == answer, with no normalisation at all.

Breakdowns, from each question's `types` ({structural, semantic, detailed}) when the
examples have them, as `eval.py` reports them: "per_answer_type" (binary / open; a
question is open when its structural type is "query"), "per_structural_type" and
"per_semantic_type". The official validity, plausibility, consistency, grounding and
distribution scores need files the manifest does not keep (choices, entailments,
scene graphs, attention maps) and are not computed.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from vl.evaluate.metrics.common import Predictions, check_covers, check_predictions, check_references, examples_by_id
from vl.shared.errors import VLError


def _gqa_percent(correct: float, count: int) -> float:
    return round(correct / count * 100, 2)  # eval.py: avg(scores) * 100, printed with {:.2f}


def gqa_accuracy(predictions: Predictions[str], answers: Mapping[str, str], *,
                 types: Mapping[str, Mapping[str, str]] | None = None,
                 allow_missing: bool = False) -> dict[str, Any]:
    """Accuracy of `predictions` ({question id: answer}) against `answers` ({question id:
    answer}). Returns {"overall", "count", "missing"}, plus the type breakdowns when
    `types` ({question id: {"structural", "semantic", ...}}) is given; 0-100."""
    check_references(answers, is_valid=lambda a: isinstance(a, str), expected="answer strings",
                     what="GQA answers")
    check_covers(types, answers, "types")
    if types is not None:
        bad = [qid for qid in answers if not isinstance(types[qid], Mapping)
               or not {"structural", "semantic"} <= set(types[qid])]
        if bad:
            raise VLError(f"{len(bad)} questions' types lack 'structural' or 'semantic' (e.g. {bad[0]!r}: "
                          f"{types[bad[0]]!r:.80}); they should be GQA's `types` objects")
    preds, missing = check_predictions(predictions, answers, is_valid=lambda p: isinstance(p, str),
                                       expected="strings", allow_missing=allow_missing)

    correct = 0
    groups: dict[str, dict[str, list[int]]] = {"per_answer_type": {}, "per_structural_type": {},
                                               "per_semantic_type": {}}  # name -> group -> [correct, count]
    for qid, answer in answers.items():
        right = int(preds.get(qid) == answer)
        correct += right
        if types is not None:
            t = types[qid]
            for name, group in (("per_answer_type", "open" if t["structural"] == "query" else "binary"),
                                ("per_structural_type", t["structural"]), ("per_semantic_type", t["semantic"])):
                entry = groups[name].setdefault(group, [0, 0])
                entry[0] += right
                entry[1] += 1

    result: dict[str, Any] = {"overall": _gqa_percent(correct, len(answers)), "count": len(answers),
                              "missing": len(missing)}
    if types is not None:
        for name, by_group in groups.items():
            result[name] = {g: _gqa_percent(c, n) for g, (c, n) in sorted(by_group.items())}
    return result


def score_examples(predictions: Predictions[str], examples: Iterable[Mapping[str, Any]], *,
                   allow_missing: bool = False) -> dict[str, Any]:
    """`gqa_accuracy` against `gqa` manifest examples (`answers` = [answer]), with the
    type breakdowns when every example has `types`."""
    by_id = examples_by_id(examples, "answers", "gqa")
    answers, types = {}, {}
    for eid, ex in by_id.items():
        gold = ex["answers"]
        answers[eid] = gold[0] if isinstance(gold, list) and len(gold) == 1 else gold  # else reported as bad
        types[eid] = ex.get("types")
    with_types = all(t is not None for t in types.values())
    return gqa_accuracy(predictions, answers, types=types if with_types else None, allow_missing=allow_missing)
