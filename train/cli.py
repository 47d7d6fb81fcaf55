"""`vl train`: placeholder until the stage-2 issue lands."""
from vl.shared.cli import not_yet_available

train = not_yet_available(
    "train",
    "Train a parameter-efficient variant of VL-T5 / VL-BART on cached features.",
    "stage 2 is tracked in issue 5",
)
