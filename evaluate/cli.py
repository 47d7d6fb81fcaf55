"""`vl evaluate`: placeholder until the stage-3 issue lands."""
from vl.shared.cli import not_yet_available

evaluate = not_yet_available(
    "evaluate",
    "Score a training run with each task's official metric.",
    "stage 3 is tracked in issue 7",
)
