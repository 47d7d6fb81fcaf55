"""Stage 3: official metrics of each task, prediction files, and run reports.

Callable from Python: `vl.evaluate("runs/adapter", split="val")` predicts, scores and
writes every task of a run, as `vl evaluate --run` (vl.evaluate.predict.evaluate_run)."""
from vl.shared.callables import callable_module

callable_module(__name__, "vl.evaluate.predict:evaluate_run")
