"""Cutting audio into model windows of at most ``max_window_s`` seconds."""

from __future__ import annotations

import math

from pydantic import BaseModel


class WindowSpan(BaseModel):
    start: float
    end: float

    @property
    def duration_s(self) -> float:
        return self.end - self.start


def plan_windows(duration_s: float, max_window_s: float) -> list[WindowSpan]:
    """Equal windows, as few as possible, none longer than ``max_window_s``.

    Equal lengths avoid a sliver of a last window (95 s -> 4 x 23.75 s, not
    30+30+30+5), which the model would caption poorly.
    """
    if duration_s <= 0:
        return []
    count = max(1, math.ceil(duration_s / max_window_s - 1e-9))
    step = duration_s / count
    edges = [round(i * step, 6) for i in range(count)] + [duration_s]
    return [WindowSpan(start=edges[i], end=edges[i + 1]) for i in range(count)]
