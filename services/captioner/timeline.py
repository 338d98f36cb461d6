"""Merging per-window captions into one timeline for the call, and reading it back.

One line per window, in time order, with its times and channel role:

    [00:00-00:30 customer] The customer sounds frustrated...
    [00:00-00:30 agent] The agent answers calmly...

Windows of one channel may overlap (segmentation can overlap them so that nothing said at a
cut is lost). Both windows then describe the overlap, so the later window's sentences that
nearly repeat a sentence of the previous window of the same channel are dropped: the
timeline says each thing once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from difflib import SequenceMatcher

from services.captioner.text import sentences, words
from services.events.models import Window

# Two sentences whose word sequences match at least this much say the same thing.
DEFAULT_SIMILARITY = 0.8

_LINE = re.compile(
    r"^\[(?P<start>(?:\d+:)?\d{1,2}:\d{2})-(?P<end>(?:\d+:)?\d{1,2}:\d{2})(?: (?P<who>[\w-]+))?\] ?(?P<text>.*)$"
)


def clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _seconds(clock_text: str) -> float:
    total = 0
    for part in clock_text.split(":"):
        total = total * 60 + int(part)
    return float(total)


def _who(window: Window) -> str:
    if window.role:
        return f" {window.role}"
    return f" ch{window.channel}" if window.channel is not None else ""


def near_duplicate(a: list[str], b: list[str], similarity: float = DEFAULT_SIMILARITY) -> bool:
    """Word sequences ``a`` and ``b`` say the same thing (or one holds the other)."""
    if not a or not b:
        return False
    short, long = (a, b) if len(a) <= len(b) else (b, a)
    joined_short, joined_long = " ".join(short), " ".join(long)
    if joined_short in joined_long and len(short) >= 4:
        return True
    matcher = SequenceMatcher(None, a, b, autojunk=False)
    return matcher.quick_ratio() >= similarity and matcher.ratio() >= similarity


def new_text(caption: str, previous: str, similarity: float = DEFAULT_SIMILARITY) -> str:
    """``caption`` without the sentences that nearly repeat a sentence of ``previous``."""
    seen = [words(s) for s in sentences(previous)]
    kept = [s for s in sentences(caption) if not any(near_duplicate(words(s), p, similarity) for p in seen)]
    return " ".join(kept)


def merge_timeline(windows: Sequence[Window], *, similarity: float = DEFAULT_SIMILARITY) -> str:
    """One line per window in time order: ``[00:00-00:30 customer] caption``.

    A window overlapping the previous window of the same channel drops the sentences that
    nearly repeat that window's (``similarity``: difflib ratio over words); a window left with
    nothing new gets no line.
    """
    ordered = sorted(windows, key=lambda w: (w.start, w.channel if w.channel is not None else -1, w.index))
    previous: dict[tuple[int | None, str | None], Window] = {}
    lines = []
    for w in ordered:
        stream = (w.channel, w.role)
        text = w.caption.strip()
        before = previous.get(stream)
        if before is not None and w.start < before.end and text:
            text = new_text(text, before.caption, similarity)
        previous[stream] = w
        if text or not w.caption.strip():
            lines.append(f"[{clock(w.start)}-{clock(w.end)}{_who(w)}] {text}".rstrip())
    return "\n".join(lines)


def parse_timeline(text: str) -> list[Window]:
    """Windows back from :func:`merge_timeline`'s lines; text that is not a timeline is one window.

    Lines without a ``[start-end who]`` prefix continue the window above them. ``who`` is a
    role, or ``chN`` for a channel without one.
    """
    parsed: list[Window] = []
    for line in text.splitlines():
        match = _LINE.match(line.strip())
        if match is None:
            if parsed:
                parsed[-1].caption = f"{parsed[-1].caption}\n{line}".strip()
                continue
            return [Window(index=0, start=0.0, end=0.0, channel=None, role=None, caption=text.strip())]
        who = match["who"]
        channel = int(who[2:]) if who and re.fullmatch(r"ch\d+", who) else None
        parsed.append(
            Window(
                index=len(parsed),
                start=_seconds(match["start"]),
                end=_seconds(match["end"]),
                channel=channel,
                role=None if channel is not None else who,
                caption=match["text"].strip(),
            )
        )
    return parsed


__all__ = ["DEFAULT_SIMILARITY", "clock", "merge_timeline", "near_duplicate", "new_text", "parse_timeline"]
