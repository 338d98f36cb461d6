"""Errors of rule loading and evaluation.

Load errors carry file, line and column (1-based, like compilers and
``promtool``) so ``listenpost rules lint`` can point an operator at the exact
spot; a load collects every error rather than stopping at the first, because
fixing a rule file one error per reload is slow and frustrating.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, order=True)
class Position:
    line: int
    column: int


class RuleFileError(Exception):
    """One problem at one place in one rule file."""

    def __init__(self, path: Path, line: int, column: int, message: str) -> None:
        super().__init__(f"{path}:{line}:{column}: {message}")
        self.path = path
        self.line = line
        self.column = column
        self.message = message

    def sort_key(self) -> tuple[str, int, int, str]:
        return (str(self.path), self.line, self.column, self.message)

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.message}"

    def __repr__(self) -> str:
        return f"RuleFileError({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RuleFileError) and self.sort_key() == other.sort_key()

    def __hash__(self) -> int:
        return hash(self.sort_key())


class RuleSetError(Exception):
    """A rule directory did not load: every error found, across all files."""

    def __init__(self, errors: list[RuleFileError]) -> None:
        self.errors = sorted(errors, key=RuleFileError.sort_key)
        count = len(self.errors)
        super().__init__(
            f"{count} error{'s' if count != 1 else ''} in rules:\n" + "\n".join(str(e) for e in self.errors)
        )
