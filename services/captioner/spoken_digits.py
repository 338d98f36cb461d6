"""Spoken digits in a caption as numerals, with a map back to the caption's own offsets.

A caption is speech turned into text, so a card number may arrive as "four one one one, one
one one one, ..." and a phone number as "oh two oh, seven nine four six, oh nine five eight".
:func:`normalise` rewrites each run of at least :data:`MIN_DIGITS` spoken digits as numerals
("4111 1111 ..." / "020 7946 0958") so that the redaction detectors, which read numerals,
see them; :meth:`Normalised.to_original` maps a span found in the rewritten text back to the
caption, widened to whole spoken words.

What counts as a spoken digit: zero, oh, o, nought, one ... nine, and "double"/"triple" before
a digit ("double four" = 44). Inside a run, words are separated by spaces; a comma, full stop
or semicolon between them is a group break (written as a space), a hyphen stays a hyphen.
Numbers said as amounts ("forty-one", "two thousand") are not digits and are left alone.
Runs shorter than MIN_DIGITS are left alone too: no identifier we redact is that short, and
"oh, one more thing" stays prose.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass

DIGIT_WORDS = {
    "zero": "0",
    "oh": "0",
    "o": "0",
    "nought": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
}
REPEATS = {"double": 2, "triple": 3}
#: The shortest run rewritten: shorter than any phone number, card or id we look for.
MIN_DIGITS = 7

_WORD = re.compile(r"[A-Za-z]+")
# What may stand between two digit words of one run, and what it becomes.
_GAP = re.compile(r"\s*(?P<mark>[,.;-]?)\s*")
_GAP_AS = {"": "", ",": " ", ".": " ", ";": " ", "-": "-"}


@dataclass(frozen=True, slots=True)
class Segment:
    """One rewritten run: caption[start:end] became text[out_start:out_end]."""

    start: int
    end: int
    out_start: int
    out_end: int


@dataclass(frozen=True, slots=True)
class Normalised:
    text: str
    segments: tuple[Segment, ...]

    def to_original(self, start: int, end: int) -> tuple[int, int]:
        """The caption span of ``text[start:end]``; a span touching a rewritten run covers its words."""
        return self._map(start, is_end=False), self._map(end, is_end=True)

    def _map(self, pos: int, *, is_end: bool) -> int:
        # The last segment starting at or before pos (for an end: strictly before).
        starts = [s.out_start for s in self.segments]
        i = bisect_right(starts, pos - 1 if is_end else pos) - 1
        if i < 0:
            return pos
        seg = self.segments[i]
        if seg.out_start <= pos < seg.out_end or (is_end and seg.out_start < pos <= seg.out_end):
            return seg.end if is_end else seg.start
        return pos - seg.out_end + seg.end


def _digit_words(text: str) -> list[tuple[int, int, str]]:
    """(start, end, numerals) of each spoken digit, "double four" as one item ("44")."""
    words = list(_WORD.finditer(text))
    items: list[tuple[int, int, str]] = []
    i = 0
    while i < len(words):
        word = words[i].group().lower()
        after = words[i + 1] if i + 1 < len(words) else None
        if (
            word in REPEATS
            and after is not None
            and after.group().lower() in DIGIT_WORDS
            and text[words[i].end() : after.start()].isspace()
        ):
            items.append((words[i].start(), after.end(), DIGIT_WORDS[after.group().lower()] * REPEATS[word]))
            i += 2
            continue
        if word in DIGIT_WORDS:
            items.append((words[i].start(), words[i].end(), DIGIT_WORDS[word]))
        i += 1
    return items


def _runs(text: str) -> list[tuple[int, int, str]]:
    """(start, end, numerals) of each run of spoken digits, however short."""
    runs: list[tuple[int, int, str]] = []
    for start, end, numerals in _digit_words(text):
        gap = _GAP.fullmatch(text, runs[-1][1], start) if runs else None
        if gap is None:  # anything but spaces and one mark between them (a word, a numeral...): a new run
            runs.append((start, end, numerals))
        else:
            runs[-1] = (runs[-1][0], end, runs[-1][2] + _GAP_AS[gap["mark"]] + numerals)
    return runs


def normalise(text: str, min_digits: int = MIN_DIGITS) -> Normalised:
    """``text`` with every run of at least ``min_digits`` spoken digits written as numerals."""
    pieces: list[str] = []
    segments: list[Segment] = []
    cursor = out_len = 0
    for start, end, numerals in _runs(text):
        if sum(c.isdigit() for c in numerals) < min_digits:
            continue
        pieces.append(text[cursor:start])
        out_len += start - cursor
        segments.append(Segment(start, end, out_len, out_len + len(numerals)))
        pieces.append(numerals)
        out_len += len(numerals)
        cursor = end
    pieces.append(text[cursor:])
    return Normalised("".join(pieces), tuple(segments))


__all__ = ["DIGIT_WORDS", "MIN_DIGITS", "REPEATS", "Normalised", "Segment", "normalise"]
