"""Cutting a channel into model windows of at most ``max_window_s`` seconds, in pauses where it can.

With speech, cuts go in pauses between speech segments (Silero VAD), and as
few windows as that allows, so windows run close to the limit (fewer model
calls) and of even length (no sliver of a window at the end). Where a
stretch of speech is longer than a window, the cut goes at its quietest
20 ms and the next window starts ``overlap_s`` earlier, so a word cut in two
is heard whole by one of them. Audio without speech (music, alarms) is cut
by time into equal windows.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from pydantic import BaseModel

_EPS = 1e-6


class WindowSpan(BaseModel):
    start: float
    end: float
    cut: str = "time"  # how this window ends: pause, quiet (no pause in reach), time (no speech) or end

    @property
    def duration_s(self) -> float:
        return self.end - self.start


def plan_windows(duration_s: float, max_window_s: float) -> list[WindowSpan]:
    """Equal windows by time, as few as possible, none longer than ``max_window_s``.

    Equal lengths avoid a sliver of a last window (95 s -> 4 x 23.75 s, not
    30+30+30+5), which the model would caption poorly.
    """
    if duration_s <= 0:
        return []
    count = max(1, math.ceil(duration_s / max_window_s - 1e-9))
    step = duration_s / count
    edges = [round(i * step, 6) for i in range(count)] + [duration_s]
    return [WindowSpan(start=edges[i], end=edges[i + 1], cut="time" if i < count - 1 else "end") for i in range(count)]


def plan_speech_windows(
    duration_s: float,
    speech: np.ndarray,
    levels_dbfs: np.ndarray,
    level_frame_s: float,
    *,
    max_window_s: float,
    overlap_s: float,
    min_pause_s: float,
) -> list[WindowSpan]:
    """Windows cut in pauses between the ``speech`` segments ((n, 2) seconds, sorted, disjoint).

    A small dynamic programme over candidate cuts (the middle of every pause
    of at least ``min_pause_s``, points every second inside long pauses, and
    the quietest 20 ms of every second of speech) picks, in this order of
    importance: as few cuts inside speech as possible, as few windows as
    possible, quieter cuts in speech and longer pauses, then windows of even
    length. Looking ahead like this keeps a long silence from pushing the next
    cut into the middle of a sentence, which a greedy cut at the limit does.
    """
    if duration_s <= 0:
        return []
    if len(speech) == 0:
        return plan_windows(duration_s, max_window_s)
    points, costs, in_pause = _candidates(duration_s, speech, levels_dbfs, level_frame_s, max_window_s, min_pause_s)
    overlap = np.where(in_pause, 0.0, overlap_s)
    starts = points - overlap  # where the window after each candidate cut would start
    best = np.full(points.shape[0], np.inf)
    previous = np.full(points.shape[0], -1)
    best[0] = 0.0
    # Only cuts within a window (plus an overlap) before a point can precede it: a sliding range.
    reach = np.searchsorted(points, points - max_window_s - overlap_s - _EPS)
    for i in range(1, points.shape[0]):
        lo = int(reach[i])
        lengths = points[i] - starts[lo:i]
        feasible = lo + np.flatnonzero((lengths <= max_window_s + _EPS) & (lengths > _EPS) & np.isfinite(best[lo:i]))
        if feasible.size == 0:
            continue
        lengths = points[i] - starts[feasible]
        shortfall = (max_window_s - lengths) / max_window_s
        totals = best[feasible] + 1.0 + costs[i] + 1e-3 * shortfall**2
        j = int(np.argmin(totals))
        best[i], previous[i] = totals[j], feasible[j]
    chain = [points.shape[0] - 1]
    while chain[-1] > 0:
        chain.append(int(previous[chain[-1]]))
    chain.reverse()
    spans = []
    for a, b in itertools.pairwise(chain):
        cut = "end" if b == points.shape[0] - 1 else ("pause" if in_pause[b] else "quiet")
        spans.append(WindowSpan(start=round(float(starts[a]), 3), end=round(float(points[b]), 3), cut=cut))
    spans[-1].end = duration_s
    return spans


_SPEECH_CUT = 100.0  # a cut inside speech costs as much as a hundred extra windows


def _candidates(
    duration_s: float, speech: np.ndarray, levels_dbfs: np.ndarray, frame_s: float, max_window_s: float,
    min_pause_s: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Cut points (0 and the end included), their costs, and whether each lies in a pause."""
    step = min(1.0, max_window_s / 4)
    points, costs, pause = [0.0], [0.0], [True]
    edges = np.concatenate(([0.0], speech.reshape(-1), [duration_s])).reshape(-1, 2)
    for a, b in edges:
        if b - a < min_pause_s or b <= 0 or a >= duration_s:
            continue
        inside = [(a + b) / 2] + (list(np.arange(a + step / 2, b - step / 2, step)) if b - a > 2 * step else [])
        bonus = -0.05 * min(b - a, 2.0) / 2.0  # prefer the longer pause, all else equal
        points += inside
        costs += [bonus] * len(inside)
        pause += [True] * len(inside)
    for lo, hi in speech:
        for t in np.arange(lo + step / 2, hi, step):
            at = _quietest(levels_dbfs, frame_s, max(lo, t - step / 2), min(hi, t + step / 2))
            level = float(levels_dbfs[min(int(at / frame_s), levels_dbfs.shape[0] - 1)]) if levels_dbfs.size else 0.0
            points.append(at)
            costs.append(_SPEECH_CUT + 0.01 * (min(max(level, -120.0), 0.0) + 120.0) / 120.0)
            pause.append(False)
    points.append(duration_s)
    costs.append(0.0)
    pause.append(True)
    order = np.argsort(points, kind="stable")
    keep = (np.asarray(points)[order] > 0) & (np.asarray(points)[order] < duration_s)
    keep[0] = keep[-1] = True  # 0 sorts first and the end last
    order = order[keep]
    return np.asarray(points)[order], np.asarray(costs)[order], np.asarray(pause)[order]


def _quietest(levels_dbfs: np.ndarray, frame_s: float, lo: float, hi: float) -> float:
    """The middle of the quietest level frame in [lo, hi] (later ones win ties), else the middle of the range."""
    first, stop = int(math.ceil(lo / frame_s)), int(hi / frame_s)
    if stop <= first or first >= levels_dbfs.shape[0]:
        return (lo + hi) / 2
    window = levels_dbfs[first:stop]
    best = first + len(window) - 1 - int(np.argmin(window[::-1]))
    return min(hi, (best + 0.5) * frame_s)
