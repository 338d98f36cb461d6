"""Sliding windows over a live 16 kHz signal, cut as soon as the audio covers them.

Window ``k`` covers ``[k * hop_s, k * hop_s + window_s)`` of stream time. With ``hop_s <
window_s`` windows overlap, so speech cut at one window's edge is whole in the next. Blocks
are placed by their own stream time, not by counting samples: a lost chunk leaves a gap
(filled with silence, so later audio keeps its time) and a resent or jittered one overlaps
(its head is dropped). Differences under ``jitter_s`` are ignored, so millisecond rounding of
timestamps never makes sliver gaps; the samples decide there.

Only the audio still needed is kept (from the start of the next window to cut): memory is
bounded by one window and one block, however long the stream runs. A restarted owner resumes
with ``start_index`` (the first window not yet captioned) and ``start_offset_s`` (where the
audio it reads again begins).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.preprocess.acoustics import frame_levels_dbfs
from services.preprocess.channels import MODEL_RATE


@dataclass(frozen=True, eq=False)  # eq=False: fields hold an array, so compare and hash by identity
class LiveWindow:
    index: int
    start_s: float
    end_s: float
    channel: int
    samples: np.ndarray  # float32 1-D at MODEL_RATE
    silent: bool  # its loudest 20 ms frame is below the gate
    final: bool  # the last window, cut at the stream's end (possibly shorter)


class _Samples:
    """(frames, channels) float32 that grows at the tail and shrinks at the head, amortised O(1) per frame."""

    def __init__(self, channels: int, capacity: int) -> None:
        self._data = np.zeros((max(capacity, 1), channels), np.float32)
        self._lo = 0
        self._hi = 0

    def __len__(self) -> int:
        return self._hi - self._lo

    def append(self, block: np.ndarray) -> None:
        n = block.shape[0]
        if self._hi + n > self._data.shape[0]:
            live = self._hi - self._lo
            if live + n > self._data.shape[0]:
                grown = np.zeros((max(live + n, 2 * self._data.shape[0]), self._data.shape[1]), np.float32)
                grown[:live] = self._data[self._lo : self._hi]
                self._data = grown
            else:
                self._data[:live] = self._data[self._lo : self._hi]
            self._lo, self._hi = 0, live
        self._data[self._hi : self._hi + n] = block
        self._hi += n

    def drop_head(self, frames: int) -> None:
        self._lo += min(frames, len(self))

    def keep_head(self, frames: int) -> None:
        self._hi = self._lo + max(min(frames, len(self)), 0)

    def view(self, start: int, stop: int) -> np.ndarray:
        return self._data[self._lo + start : self._lo + stop]


class SlidingWindower:
    """Blocks of (frames, channels) 16 kHz float32 in, :class:`LiveWindow` per channel out as each closes."""

    def __init__(
        self,
        *,
        channels: int,
        window_s: float,
        hop_s: float,
        gate_dbfs: float | None,
        max_window_s: float = 30.0,
        min_final_s: float = 1.0,
        start_index: int = 0,
        start_offset_s: float = 0.0,
        jitter_s: float = 0.05,
    ) -> None:
        if channels < 1:
            raise ValueError(f"a stream has 1 channel or more, not {channels}")
        if not hop_s > 0:
            raise ValueError(f"hop_s must be more than 0 s, not {hop_s}")
        if hop_s > window_s:
            raise ValueError(f"hop_s ({hop_s} s) must not be longer than window_s ({window_s} s): audio between windows would be lost")
        if window_s > max_window_s:
            raise ValueError(f"window_s ({window_s} s) must not be longer than max_window_s ({max_window_s} s)")
        if min_final_s < 0 or jitter_s < 0 or start_index < 0 or start_offset_s < 0:
            raise ValueError("min_final_s, jitter_s, start_index and start_offset_s must not be negative")
        self.channels = channels
        self.window_s = window_s
        self.hop_s = hop_s
        self._gate = gate_dbfs
        self._window = round(window_s * MODEL_RATE)
        self._hop = max(round(hop_s * MODEL_RATE), 1)
        self._min_final = round(min_final_s * MODEL_RATE)
        self._jitter = round(jitter_s * MODEL_RATE)
        self._next = start_index
        # Audio a resumed window needs from before where the stream is read again counts as a gap.
        self._start = min(round(start_offset_s * MODEL_RATE), start_index * self._hop)  # stream frame of the buffer's first sample
        self._buffer = _Samples(channels, 2 * self._window)
        self._gap = 0
        self._overlap = 0
        self._finished = False

    @property
    def next_index(self) -> int:
        """The index of the next window to cut."""
        return self._next

    @property
    def resume_offset_s(self) -> float:
        """Stream time from which audio is still needed (the next window's start)."""
        return self._next * self._hop / MODEL_RATE

    @property
    def end_s(self) -> float:
        """Stream time up to which audio has been placed."""
        return self._end / MODEL_RATE

    @property
    def buffered_s(self) -> float:
        return len(self._buffer) / MODEL_RATE

    @property
    def gap_s(self) -> float:
        """Silence inserted for audio that never came (lost chunks, late starts)."""
        return self._gap / MODEL_RATE

    @property
    def overlap_s(self) -> float:
        """Audio dropped because it repeated stream time already placed."""
        return self._overlap / MODEL_RATE

    @property
    def _end(self) -> int:
        return self._start + len(self._buffer)

    def append(self, offset_s: float, block: np.ndarray) -> list[LiveWindow]:
        """A block whose first sample is at stream time ``offset_s``; the windows it closed, in index then channel order."""
        if self._finished:
            raise RuntimeError("the windower has finished: the stream has ended")
        block = self._checked(block)
        if block.shape[0] == 0:
            return []  # no audio, no claim about time: an empty block never makes a gap
        position = round(offset_s * MODEL_RATE)
        windows: list[LiveWindow] = []
        if position > self._end + self._jitter:
            gap = position - self._end
            self._gap += gap
            windows += self._silence(gap)
        elif position < self._end - self._jitter:
            repeated = min(self._end - position, block.shape[0])
            self._overlap += repeated
            block = block[repeated:]
        return windows + self._feed(block)

    def finish(self, end_s: float | None = None) -> list[LiveWindow]:
        """The stream ended (at ``end_s`` if known): the last window, from the next window's start to the end,
        if at least ``min_final_s`` of it is audio no window covered yet. Nothing may be appended after it."""
        if self._finished:
            return []
        windows: list[LiveWindow] = []
        if end_s is not None:
            end = round(end_s * MODEL_RATE)
            if end > self._end + self._jitter:
                self._gap += end - self._end
                windows += self._silence(end - self._end)
            elif end < self._end:
                self._buffer.keep_head(end - self._start)
        start = self._next * self._hop
        available = self._end - start
        # Audio the windows already cut do not cover: the last one is worth captioning only if
        # that is at least min_final_s (a stream that ends where a window ended needs none).
        covered = (self._next - 1) * self._hop + self._window if self._next > 0 else 0
        if available > 0 and self._end - covered >= self._min_final:
            windows += self._cut(self._next, self._buffer.view(start - self._start, self._end - self._start), final=True)
            self._next += 1
        self._finished = True
        self._buffer = _Samples(self.channels, 1)
        return windows

    def _checked(self, block: np.ndarray) -> np.ndarray:
        if block.ndim == 1 and self.channels == 1:
            block = block[:, None]
        if block.ndim != 2 or block.shape[1] != self.channels:
            raise ValueError(f"expected a (frames, {self.channels}) block, got shape {block.shape}")
        return block

    def _silence(self, frames: int) -> list[LiveWindow]:
        # In pieces of at most one window, so a long gap never allocates more than the buffer holds.
        windows: list[LiveWindow] = []
        while frames > 0:
            piece = min(frames, self._window)
            windows += self._feed(np.zeros((piece, self.channels), np.float32))
            frames -= piece
        return windows

    def _feed(self, block: np.ndarray) -> list[LiveWindow]:
        self._buffer.append(block)
        windows: list[LiveWindow] = []
        while self._end >= self._next * self._hop + self._window:
            start = self._next * self._hop - self._start
            windows += self._cut(self._next, self._buffer.view(start, start + self._window), final=False)
            self._next += 1
            self._trim()
        self._trim()
        return windows

    def _trim(self) -> None:
        needed = self._next * self._hop
        if needed > self._start:
            dropped = min(needed - self._start, len(self._buffer))
            self._buffer.drop_head(dropped)
            self._start += dropped

    def _cut(self, index: int, samples: np.ndarray, *, final: bool) -> list[LiveWindow]:
        start_s = index * self._hop / MODEL_RATE
        end_s = start_s + samples.shape[0] / MODEL_RATE
        windows = []
        for channel in range(self.channels):
            mono = samples[:, channel].copy()  # a copy (contiguous): the buffer is reused
            windows.append(
                LiveWindow(index=index, start_s=start_s, end_s=end_s, channel=channel, samples=mono, silent=self._silent(mono), final=final)
            )
        return windows

    def _silent(self, samples: np.ndarray) -> bool:
        return self._gate is not None and float(frame_levels_dbfs(samples).max()) < self._gate
