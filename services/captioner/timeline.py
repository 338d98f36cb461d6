"""Merging per-window captions into one timeline for the call."""

from __future__ import annotations

from collections.abc import Sequence

from services.events.models import Window


def clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def merge_timeline(windows: Sequence[Window]) -> str:
    """One line per window in time order: ``[00:00-00:30 customer] caption``."""
    lines = []
    for w in sorted(windows, key=lambda w: (w.start, w.channel if w.channel is not None else -1)):
        who = f" {w.role}" if w.role else (f" ch{w.channel}" if w.channel is not None else "")
        lines.append(f"[{clock(w.start)}-{clock(w.end)}{who}] {w.caption.strip()}")
    return "\n".join(lines)
