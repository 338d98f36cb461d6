"""Errors of files that people write (rule files, adapter files): each at a file, line and column.

Positions are 1-based, like compilers and ``promtool``, so an editor jumps to the spot. A
load collects every error rather than stopping at the first: fixing a file one error per
reload is slow and frustrating.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class DslError(Exception):
    """Base of the errors of this package."""


@dataclass(frozen=True, order=True)
class Position:
    line: int
    column: int


class FileError(DslError):
    """One problem at one place in one file."""

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
        return f"FileError({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FileError) and self.sort_key() == other.sort_key()

    def __hash__(self) -> int:
        return hash(self.sort_key())


class LoadError(DslError):
    """Files did not load: every error found, across all of them, in file and line order."""

    #: What did not load, for the first line of the message ("rules", "adapters").
    what = "files"

    def __init__(self, errors: list[FileError]) -> None:
        self.errors = sorted(errors, key=FileError.sort_key)
        count = len(self.errors)
        super().__init__(
            f"{count} error{'s' if count != 1 else ''} in {self.what}:\n" + "\n".join(str(e) for e in self.errors)
        )


class ExpressionError(DslError, ValueError):
    """A CEL expression or a template that cannot be accepted; the message is for its author."""
