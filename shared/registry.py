"""One shape for every kind of plug-in: tasks (vl.train.tasks), dataset converters
(vl.data_manifests.registry), metrics (vl.evaluate.metrics) and PEFT methods
(vl.train.peft.registry).

A `Registry` is a dict of name -> entry, in registration order, that each plug-in fills
from its own module (`add`), and that answers an unknown name with one message naming
the choices (`lookup`):

    TASKS = Registry("task", sort=True)
    TASKS.add("vqa", VQA())          # a name is registered once
    TASKS.lookup("vqa3")             # VLError: unknown task 'vqa3'; choose one of: caption, gqa, ...

`vl list methods|tasks|converters|metrics` prints them.
"""
from __future__ import annotations

from typing import TypeVar

from vl.shared.errors import VLError

T = TypeVar("T")


class Registry(dict[str, T]):
    """Entries by name. `kind` names them in messages ("task", "dataset", ...); `sort` lists
    the choices alphabetically in them (else in registration order)."""

    def __init__(self, kind: str, *, sort: bool = False):
        super().__init__()
        self.kind, self.sort = kind, sort

    def add(self, name: str, entry: T) -> T:
        assert name not in self, f"{self.kind} {name!r} is registered twice"
        self[name] = entry
        return entry

    def choices(self) -> list[str]:
        return sorted(self) if self.sort else list(self)

    def lookup(self, name: str, hint: str | None = None) -> T:
        if name not in self:
            raise VLError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.choices())}", hint=hint)
        return self[name]
