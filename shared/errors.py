"""The one exception type for mistakes a user can fix.

`raise VLError(...)` for the user's mistakes (bad paths, bad records, mismatched
settings); the CLI prints it as a short message without a traceback. `assert` stays
for our own invariants.
"""
from __future__ import annotations


class VLError(Exception):
    """A problem the user can fix; carries one or more messages, each naming the fix."""

    def __init__(self, problems: str | list[str], *, hint: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        assert self.problems, "VLError needs at least one problem"
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        if len(self.problems) == 1:
            text = self.problems[0]
        else:
            text = f"{len(self.problems)} problems:\n" + "\n".join(f"  - {p}" for p in self.problems)
        if self.hint:
            text += f"\n{self.hint}"
        return text


def collect_or_raise(problems: list[str], *, limit: int = 20, hint: str | None = None) -> None:
    """Raise one VLError listing (at most `limit` of) the problems, if there are any."""
    if not problems:
        return
    shown = problems[:limit]
    if len(problems) > limit:
        shown.append(f"... and {len(problems) - limit} more")
    raise VLError(shown, hint=hint)
