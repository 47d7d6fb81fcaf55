"""What every metric shares: checking predictions against the reference ids, reading
gold fields from manifest examples, and percentages.

Every metric returns one dict: the task's main score under "overall" (0-100), the
number of references scored under "count", how many of them had no prediction under
"missing" (scored as wrong; only non-zero with `allow_missing=True`), and breakdowns
beside them ("per_answer_type": {...}, ...).

Predictions come as {id: prediction} or as (id, prediction) pairs; pairs are what a
prediction file gives, and the only way a repeated id can reach us.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, Union

from vl.shared.errors import VLError, collect_or_raise

T = TypeVar("T")
Predictions = Union[Mapping[str, T], Iterable[tuple[str, T]]]

SHOWN_IDS = 3  # example ids a message names


def some_ids(ids: Iterable[Any], limit: int = SHOWN_IDS) -> str:
    """"'a', 'b', 'c', ..." for a message."""
    ids = list(ids)
    text = ", ".join(repr(i) for i in ids[:limit])
    return text + (", ..." if len(ids) > limit else "")


def check_predictions(predictions: Predictions[T], reference_ids: Iterable[str], *,
                      is_valid: Callable[[Any], bool], expected: str,
                      allow_missing: bool = False) -> tuple[dict[str, T], list[str]]:
    """Predictions as a dict, and the reference ids that have none (in reference order).

    One VLError lists every problem found: repeated ids, ids that are not references,
    values that fail `is_valid` (`expected` says what they should be), and, unless
    `allow_missing`, references without a prediction."""
    if isinstance(predictions, Mapping):
        pairs = predictions.items()
    else:
        pairs = list(predictions)
        odd = [p for p in pairs if not (isinstance(p, (tuple, list)) and len(p) == 2)]
        if odd:
            raise VLError(f"predictions must be {{id: prediction}} or (id, prediction) pairs (got an item like "
                          f"{odd[0]!r:.80})")
    out: dict[str, T] = {}
    repeated: list[Any] = []
    for pid, value in pairs:
        if pid in out:
            repeated.append(pid)
        out[pid] = value
    references = list(reference_ids)
    known = set(references)
    unknown = [pid for pid in out if pid not in known]
    invalid = [pid for pid, value in out.items() if not is_valid(value)]
    missing = [rid for rid in references if rid not in out]

    problems = []
    if repeated:
        problems.append(f"{len(repeated)} prediction ids are repeated ({some_ids(dict.fromkeys(repeated))}); "
                        "give one prediction per example")
    if unknown:
        problem = (f"{len(unknown)} prediction ids are not among the {len(references)} references "
                   f"({some_ids(unknown)})")
        if any(not isinstance(pid, str) for pid in unknown):
            problem += "; ids are strings, as in the manifest (e.g. '262148000', not 262148000)"
        else:
            problem += "; were the predictions made on another split or manifest?"
        problems.append(problem)
    if invalid:
        shown = ", ".join(f"{pid!r}: {out[pid]!r:.40}" for pid in invalid[:SHOWN_IDS])
        more = ", ..." if len(invalid) > SHOWN_IDS else ""
        problems.append(f"{len(invalid)} predictions are not {expected} ({shown}{more})")
    if missing and not allow_missing:
        problems.append(f"{len(missing)} of {len(references)} references have no prediction ({some_ids(missing)}); "
                        "predict every example, or pass --allow-missing (allow_missing=True in Python) to "
                        "score them as wrong")
    collect_or_raise(problems)
    return out, missing


def check_references(references: Mapping[str, Any], *, is_valid: Callable[[Any], bool], expected: str,
                     what: str) -> None:
    """At least one reference, each passing `is_valid`; a VLError names a few that fail."""
    if not references:
        raise VLError(f"no {what} to score against")
    bad = [rid for rid, value in references.items() if not is_valid(value)]
    if bad:
        raise VLError(f"{len(bad)} {what} are not {expected} ({some_ids(bad)})")


def check_covers(mapping: Mapping[str, Any] | None, reference_ids: Iterable[str], name: str) -> None:
    """A breakdown mapping (`answer_types`, `groups`, ...) must name every reference."""
    if mapping is None:
        return
    lacking = [rid for rid in reference_ids if rid not in mapping]
    if lacking:
        raise VLError(f"{name} has no entry for {len(lacking)} references ({some_ids(lacking)}); "
                      f"give one for every reference, or leave {name} out")


def examples_by_id(examples: Iterable[Mapping[str, Any]], gold: str, task: str, *,
                   hint: str | None = None) -> dict[str, Mapping[str, Any]]:
    """Manifest examples (docs/manifests.md) keyed by id; each must carry the `gold`
    field, which test splits lack."""
    out: dict[str, Mapping[str, Any]] = {}
    repeated, lacking = [], []
    for ex in examples:
        if ex["id"] in out:
            repeated.append(ex["id"])
        out[ex["id"]] = ex
        if gold not in ex:
            lacking.append(ex["id"])
    problems = []
    if repeated:
        problems.append(f"{len(repeated)} example ids are repeated ({some_ids(repeated)}); read the examples "
                        "from one manifest")
    if lacking:
        problems.append(f"{len(lacking)} {task} examples have no field '{gold}' ({some_ids(lacking)}); a "
                        "test split without gold answers is scored by its official server, not here")
    if not out:
        problems.append(f"no {task} examples to score")
    collect_or_raise(problems, hint=hint)
    return out


def field_if_everywhere(examples: Mapping[str, Mapping[str, Any]], name: str) -> dict[str, Any] | None:
    """{id: example[name]} when every example has the field, else None (no breakdown)."""
    if all(name in ex for ex in examples.values()):
        return {eid: ex[name] for eid, ex in examples.items()}
    return None


def percent(total: float, count: int) -> float:
    """100 * total / count, rounded to two decimals."""
    return round(100 * total / count, 2)


def percent_by_group(totals: Mapping[str, float], counts: Mapping[str, int]) -> dict[str, float]:
    """{group: percent}, groups sorted by name."""
    return {g: percent(totals[g], counts[g]) for g in sorted(counts)}


def single(answers: Any) -> Any:
    """["x"] -> "x": a gold list of one; anything else as it is (the reference check names it)."""
    return answers[0] if isinstance(answers, list) and len(answers) == 1 else answers
