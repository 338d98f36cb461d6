"""One open stream, chunk by chunk: headers read, order restored, audio decoded, resampled to
16 kHz and cut into sliding windows. Plain code over plain data (no NATS, no Ray): the owner
(services/streams/owner.py) feeds it the messages it reads and captions what comes out.

The position a restarted owner resumes from is kept here too: for every chunk still in the
window buffer, its JetStream sequence, its own sequence number and its audio time, so the
first chunk a window still needs can be named (:meth:`StreamSession.resume_point`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel

from services.settings import StreamsSettings
from services.streams.codecs import ChunkDecoder, ChunkFormat, chunk_header
from services.streams.errors import BadFormatError
from services.streams.pacing import RealtimeGuard
from services.streams.resampling import MODEL_RATE, StreamResampler
from services.streams.sequencing import Reorderer
from services.streams.windowing import LiveWindow, SlidingWindower


class Checkpoint(BaseModel):
    """Where an open stream is, stored in the streams' KV bucket after every window."""

    next_window: int = 0  # the first window index not yet captioned (or dropped)
    js_seq: int = 0  # the LISTENPOST_LIVE sequence to read from; 0: from the stream's first message
    chunk_seq: int = 1  # the Listenpost-Seq expected there
    offset_s: float = 0.0  # the audio time of that chunk
    dropped_windows: int = 0
    silent_windows: int = 0
    #: The last window (to the end of the stream) is out: a new owner only sends the summary.
    finished: bool = False
    audio_s: float = 0.0  # audio read so far, and its format: for the summary of a stream resumed after its end
    format: ChunkFormat | None = None


@dataclass(frozen=True)
class WindowGroup:
    """Window ``index`` of every channel: captioned, measured and published together."""

    index: int
    start: float
    end: float
    final: bool
    windows: tuple[LiveWindow, ...]

    @property
    def silent(self) -> bool:
        return all(w.silent for w in self.windows)


@dataclass(frozen=True)
class _ChunkAt:
    js_seq: int
    chunk_seq: int
    offset_s: float


class StreamSession:
    def __init__(self, settings: StreamsSettings, resume: Checkpoint | None = None) -> None:
        self._settings = settings
        self._resume = resume or Checkpoint()
        self.format: ChunkFormat | None = None
        self._decoder: ChunkDecoder | None = None
        self._resampler: StreamResampler | None = None
        self._windower: SlidingWindower | None = None
        self._reorderer: Reorderer[tuple[int, bytes, int]] = Reorderer(settings.max_held_chunks)
        self._reorderer.resume_at(self._resume.chunk_seq)
        self._guard = RealtimeGuard(max_speed=settings.max_speed, slack_s=settings.speed_slack_s)
        self._positions: deque[_ChunkAt] = deque()
        self.chunks = 0
        self.audio_s = self._resume.audio_s
        self.first_format = self._resume.format  # what the stream sent first, kept across owners
        # Time is kept at the source rate, before resampling: the resampler holds some audio back
        # (its filter delay), so its output cannot be placed by the chunks' timestamps.
        self._input_end_s: float | None = None
        self.gap_s = 0.0
        self.overlap_s = 0.0

    def push(self, headers: Mapping[str, str], payload: bytes, *, js_seq: int, published_s: float) -> list[WindowGroup]:
        """One chunk message in; the windows it closed out (raises a StreamError for bad input)."""
        seq, timestamp_ms, fmt = chunk_header(headers)
        if self.format is None:
            self._open(fmt)
        elif fmt != self.format:
            raise BadFormatError(f"chunk {seq} is {_describe(fmt)} but the stream began as {_describe(self.format)}")
        assert self._decoder is not None
        released = self._reorderer.push(seq, (timestamp_ms, payload, js_seq))
        return self._place([(s, ts, self._decoder.decode(data), js) for s, (ts, data, js) in released], published_s)

    def finish(self) -> list[WindowGroup]:
        """The end of the stream: what was held for a missing chunk, then the last window."""
        if self._windower is None or self._decoder is None or self._resampler is None:
            return []
        held = [(s, ts, self._decoder.decode(data), js) for s, (ts, data, js) in self._reorderer.flush()]
        groups = self._place(held, None)
        tail = self._resampler.flush()
        windows = self._windower.append(self._windower.end_s, tail) if len(tail) else []
        return groups + _grouped([*windows, *self._windower.finish()])

    def _open(self, fmt: ChunkFormat) -> None:
        settings = self._settings
        self.format = self.first_format = fmt
        self._decoder = ChunkDecoder(fmt, max_chunk_bytes=settings.max_chunk_bytes)
        self._resampler = StreamResampler(fmt.sample_rate, fmt.channels)
        self._windower = SlidingWindower(
            channels=fmt.channels, window_s=settings.window_s, hop_s=settings.hop_s, gate_dbfs=settings.gate_dbfs,
            min_final_s=settings.min_final_s, start_index=self._resume.next_window, start_offset_s=self._resume.offset_s,
        )  # fmt: skip

    def _place(self, decoded: list[tuple[int, int, np.ndarray, int]], published_s: float | None) -> list[WindowGroup]:
        assert self.format is not None and self._resampler is not None and self._windower is not None
        windows: list[LiveWindow] = []
        rate = self.format.sample_rate
        for seq, timestamp_ms, block, js_seq in decoded:
            offset = timestamp_ms / 1000
            end = offset + block.shape[0] / rate
            if published_s is not None:
                self._guard.observe(end, published_s)
            self._positions.append(_ChunkAt(js_seq, seq, offset))
            self.chunks += 1
            expected = offset if self._input_end_s is None else self._input_end_s
            if offset - expected > _JITTER_S:  # audio that never came: silence in its place
                self.gap_s += offset - expected
                block = np.concatenate([np.zeros((round((offset - expected) * rate), block.shape[1]), np.float32), block])
            elif expected - offset > _JITTER_S:  # audio already placed, sent again: its repeat goes
                repeated = min(round((expected - offset) * rate), block.shape[0])
                self.overlap_s += repeated / rate
                block = block[repeated:]
            self._input_end_s = expected + block.shape[0] / rate
            self.audio_s = max(self.audio_s, self._input_end_s)
            resampled = self._resampler.push(block)
            if len(resampled):
                windows += self._windower.append(self._windower.end_s, resampled)
        return _grouped(windows)

    def resume_point(self, next_window: int) -> tuple[int, int, float]:
        """``(js_seq, chunk_seq, offset_s)`` of the last chunk that starts at or before window
        ``next_window``'s start: reading from there rebuilds that window whole."""
        start = next_window * self._settings.hop_s
        while len(self._positions) > 1 and self._positions[1].offset_s <= start + 1e-9:
            self._positions.popleft()
        if not self._positions:
            return self._resume.js_seq, self._resume.chunk_seq, self._resume.offset_s
        first = self._positions[0]
        return first.js_seq, first.chunk_seq, first.offset_s

    @property
    def counts(self) -> dict[str, float]:
        """What went wrong with the chunks so far (for the window events and metrics)."""
        counts = self._reorderer.counts
        windower = self._windower
        return {
            "duplicates": counts.duplicates,
            "out_of_order": counts.out_of_order,
            "missing": counts.missing,
            "gap_s": round(self.gap_s + (windower.gap_s if windower else 0.0), 3),
            "overlap_s": round(self.overlap_s, 3),
        }


#: Timestamps closer than this to where the audio is are taken as contiguous (rounding, jitter).
_JITTER_S = 0.03


def _describe(fmt: ChunkFormat) -> str:
    return f"{fmt.codec} at {fmt.sample_rate} Hz, {fmt.channels} channel(s)"


def _grouped(windows: list[LiveWindow]) -> list[WindowGroup]:
    groups: list[WindowGroup] = []
    for window in windows:
        if groups and groups[-1].index == window.index:
            last = groups[-1]
            groups[-1] = WindowGroup(last.index, last.start, last.end, last.final, (*last.windows, window))
        else:
            groups.append(WindowGroup(window.index, window.start_s, window.end_s, window.final, (window,)))
    return groups


__all__ = ["MODEL_RATE", "Checkpoint", "StreamSession", "WindowGroup"]
