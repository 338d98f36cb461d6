"""Channel roles, down-mixing and resampling to the model's 16 kHz, block by block.

A :class:`ChannelCollector` takes decoded blocks at the source rate, keeps the
channels the event names (or down-mixes), notes peak and clipping at the
source rate (resampling smooths both away), and streams each kept channel
through soxr into a 16 kHz buffer. Only the 16 kHz channels stay in memory.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import soxr

from services.events.models import ChannelRole
from services.preprocess.errors import ChannelRoleError

MODEL_RATE = 16_000
_QUALITY = "HQ"  # soxr's high quality: 0.1 dB passband to 91% of Nyquist; VHQ costs ~30% more for nothing audible


@dataclass(frozen=True)
class ChannelAudio:
    channel: int | None  # None: a down-mix of all channels
    role: str | None
    samples: np.ndarray  # float32 mono at MODEL_RATE
    peak: float = 0.0  # largest |sample| at the source rate (of any source channel, for a down-mix)
    clipped: int = 0  # source samples (frames, for a down-mix) at or above the clip level
    source_frames: int = 0

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / MODEL_RATE

    @property
    def clipping_ratio(self) -> float:
        return self.clipped / self.source_frames if self.source_frames else 0.0


@dataclass(frozen=True)
class Output:
    channel: int | None  # the source channel, None for a down-mix of all of them
    role: str | None


def plan_channels(channels: int, roles: Sequence[ChannelRole], mode: Literal["split", "mix"]) -> list[Output]:
    """Keep role-named channels apart (mode ``split``), else down-mix to mono.

    Channels the event gives no role are left out when splitting: the event
    told us which channels matter. A mono recording with one role keeps it.
    """
    for role in roles:
        if role.index >= channels:
            raise ChannelRoleError(
                f"channel {role.index} ({role.role}) named, but the audio has {channels} channel(s)"
            )
    if mode == "split" and roles:
        return [Output(r.index, r.role) for r in sorted(roles, key=lambda r: r.index)]
    only_role = roles[0].role if len(roles) == 1 and channels == 1 else None
    return [Output(None, only_role)]


class _Buffer:
    """A float32 array that grows by half when full, so appends cost amortised O(1)."""

    def __init__(self, capacity: int) -> None:
        self._data = np.empty(max(capacity, 1024), np.float32)
        self.size = 0

    def append(self, values: np.ndarray) -> None:
        end = self.size + values.shape[0]
        if end > self._data.shape[0]:
            grown = np.empty(max(end, int(self._data.shape[0] * 1.5)), np.float32)
            grown[: self.size] = self._data[: self.size]
            self._data = grown
        self._data[self.size : end] = values
        self.size = end

    def array(self) -> np.ndarray:
        return self._data[: self.size]


class ChannelCollector:
    """Route, measure and resample decoded blocks; :meth:`finish` returns the 16 kHz channels."""

    def __init__(
        self,
        outputs: Sequence[Output],
        *,
        rate: int,
        clip_level: float = 0.98,
        expected_frames: int | None = None,
    ) -> None:
        self._outputs = list(outputs)
        self._rate = rate
        self._clip_level = clip_level
        self._columns = [o.channel for o in self._outputs if o.channel is not None]
        capacity = int((expected_frames or 30 * rate) * MODEL_RATE / rate) + 4096
        self._buffers = [_Buffer(capacity) for _ in self._outputs]
        self._peaks = np.zeros(len(self._outputs))
        self._clipped = np.zeros(len(self._outputs), np.int64)
        self._resampler = (
            None
            if rate == MODEL_RATE
            else soxr.ResampleStream(rate, MODEL_RATE, len(self._outputs), dtype="float32", quality=_QUALITY)
        )
        self.frames = 0
        self.resample_s = 0.0  # time in the resampler over all blocks (the trace's resample span reports it)

    def add(self, block: np.ndarray) -> None:
        """One block of float32 (frames, source channels)."""
        self.frames += block.shape[0]
        self._measure(block)
        self._store(self._route(block))

    # Reductions across the (few) channels of a (frames, channels) block are slow in numpy along
    # axis 1; the loops below go channel by channel over long strided columns instead.

    def _route(self, block: np.ndarray) -> np.ndarray:
        if self._outputs[0].channel is not None:
            return block[:, self._columns]
        if block.shape[1] == 1:
            return block
        mix = block[:, 0].copy()
        for c in range(1, block.shape[1]):
            mix += block[:, c]
        mix *= np.float32(1.0 / block.shape[1])
        return mix[:, None]

    def _measure(self, block: np.ndarray) -> None:
        if self._outputs[0].channel is not None:
            for i, c in enumerate(self._columns):
                magnitude = np.abs(block[:, c])
                self._peaks[i] = max(self._peaks[i], float(magnitude.max()))
                self._clipped[i] += int(np.count_nonzero(magnitude >= self._clip_level))
            return
        clipping = np.zeros(block.shape[0], bool)
        for c in range(block.shape[1]):
            magnitude = np.abs(block[:, c])
            self._peaks[0] = max(self._peaks[0], float(magnitude.max()))
            clipping |= magnitude >= self._clip_level
        self._clipped[0] += int(np.count_nonzero(clipping))

    def _store(self, routed: np.ndarray, last: bool = False) -> None:
        if self._resampler is not None:
            started = time.perf_counter()
            routed = self._resampler.resample_chunk(np.ascontiguousarray(routed), last=last)
            self.resample_s += time.perf_counter() - started
        for i, buffer in enumerate(self._buffers):
            buffer.append(routed[:, i])

    def finish(self) -> list[ChannelAudio]:
        if self._resampler is not None:
            self._store(np.zeros((0, len(self._outputs)), np.float32), last=True)
        return [
            ChannelAudio(
                channel=o.channel,
                role=o.role,
                samples=b.array(),
                peak=float(p),
                clipped=int(c),
                source_frames=self.frames,
            )
            for o, b, p, c in zip(self._outputs, self._buffers, self._peaks, self._clipped, strict=True)
        ]


def resample(samples: np.ndarray, rate: int) -> np.ndarray:
    """One whole mono signal to MODEL_RATE (tools and tests; the pipeline streams)."""
    if rate == MODEL_RATE:
        return np.ascontiguousarray(samples, dtype=np.float32)
    return soxr.resample(samples, rate, MODEL_RATE, quality=_QUALITY).astype(np.float32, copy=False)


def split_channels(
    samples: np.ndarray, rate: int, roles: Sequence[ChannelRole], mode: Literal["split", "mix"]
) -> list[ChannelAudio]:
    """Whole-signal form of the collector, for decoded (frames, channels) float32 arrays."""
    collector = ChannelCollector(plan_channels(samples.shape[1], roles, mode), rate=rate, expected_frames=len(samples))
    collector.add(samples)
    return collector.finish()
