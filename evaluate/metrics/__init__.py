"""The official metrics of the eight tasks (and the two pre-training tasks'): pure functions over predictions and references
(no torch, no files written), used by validation in `vl train` and by `vl evaluate`.

One module per task family; each has `score_examples(predictions, examples, allow_missing=False)`
scoring `{example id: prediction}` against a manifest's examples, and returns a dict with the
task's main score (0-100) under "overall", "count", "missing", and its breakdowns.

`score(metric, predictions, examples)` looks a task's metric key (`Task.metric` in
vl.train.tasks) up in METRICS; the caption metrics (Java, pycocoevalcap) load only when used.
"""
from __future__ import annotations

import importlib
from typing import Any, Iterable, Mapping

from vl.shared.registry import Registry

# Task.metric -> the module whose score_examples computes it
METRICS: Registry[str] = Registry("metric")
for _key, _module in (("vqa_accuracy", "vqa"), ("gqa_accuracy", "gqa"), ("nlvr2_accuracy", "nlvr2"),
                      ("mc_accuracy", "multiple_choice"), ("caption", "captions"),
                      ("token_accuracy", "token_accuracy"), ("itm_accuracy", "matching")):
    METRICS.add(_key, _module)


def score(metric: str, predictions: Mapping[str, Any], examples: Iterable[Mapping[str, Any]],
          **kwargs: Any) -> dict[str, Any]:
    """Score `predictions` ({id: prediction}) against manifest `examples` with `metric`."""
    module = importlib.import_module(f"vl.evaluate.metrics.{METRICS.lookup(metric)}")
    return module.score_examples(predictions, examples, **kwargs)
