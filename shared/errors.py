"""The one exception type for mistakes a user can fix.

`raise VLError(...)` for the user's mistakes (bad paths, bad records, mismatched
settings); the CLI prints it as a short message without a traceback. `assert` stays
for our own invariants.
"""
from __future__ import annotations


class VLError(Exception):
    """A problem the user can fix; carries one or more messages, each naming the fix."""

    def __init__(self, problems: str | list[str], *, hint: str | None = None, total: int | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        assert self.problems, "VLError needs at least one problem"
        self.hint = hint
        self.total = total if total is not None else len(self.problems)  # shown ones may end with "... and K more"
        super().__init__(self.render())

    def render(self) -> str:
        if len(self.problems) == 1:
            text = self.problems[0]
        else:
            text = f"{self.total} problems:\n" + "\n".join(f"  - {p}" for p in self.problems)
        if self.hint:
            text += f"\n{self.hint}"
        return text


class ProblemList(list):
    """Problems found while reading a large file: keeps the first `keep` to show and counts
    every one (`total`), so a file with a million bad lines costs no memory to report."""

    def __init__(self, keep: int):
        super().__init__()
        self.keep, self.total = keep, 0

    def append(self, problem: str) -> None:
        self.total += 1
        if len(self) < self.keep:
            super().append(problem)

    def extend(self, problems) -> None:
        for problem in problems:
            self.append(problem)


def collect_or_raise(problems: list[str], *, limit: int = 20, hint: str | None = None) -> None:
    """Raise one VLError listing (at most `limit` of) the problems, if there are any; the
    count it states is all of them (a ProblemList's `total`)."""
    if not problems:
        return
    total = getattr(problems, "total", len(problems))
    shown = list(problems[:limit])
    if total > limit:
        shown.append(f"... and {total - limit} more")
    raise VLError(shown, hint=hint, total=total)
