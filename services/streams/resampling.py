"""A live stream's audio to the model's 16 kHz, block by block, with the filter state kept between
blocks: resampling each chunk on its own would click at every chunk boundary.

soxr works in internal blocks, so its output comes in bursts (at 8 kHz in, ~100 ms every fifth
20 ms chunk) while its total follows the input exactly. :attr:`StreamResampler.pending_s` says
how much pushed audio has not come out yet, so a caller can tell where an output block belongs:
it ends ``pending_s`` before the end of the audio pushed so far.
"""

from __future__ import annotations

import numpy as np
import soxr

from services.preprocess.channels import MODEL_RATE

__all__ = ["MODEL_RATE", "StreamResampler"]

_QUALITY = "HQ"  # as the recordings' resampling (services/preprocess/channels.py): captions must not depend on the path


class StreamResampler:
    """float32 (frames, channels) at ``in_rate`` to (frames', channels) at :data:`MODEL_RATE`."""

    def __init__(self, in_rate: int, channels: int) -> None:
        if in_rate <= 0 or channels <= 0:
            raise ValueError(f"a resampler needs a positive rate and channel count, not {in_rate} Hz and {channels} channel(s)")
        self.in_rate = in_rate
        self.channels = channels
        self._stream = (
            None if in_rate == MODEL_RATE else soxr.ResampleStream(in_rate, MODEL_RATE, channels, dtype="float32", quality=_QUALITY)
        )
        self._frames_in = 0
        self._frames_out = 0
        self._done = False

    def push(self, block: np.ndarray) -> np.ndarray:
        """The 16 kHz frames ready after this block (possibly none: see the module's note on bursts)."""
        return self._run(block, last=False)

    def flush(self) -> np.ndarray:
        """What the filter still holds, at the end of the stream; nothing may be pushed after it."""
        return self._run(np.zeros((0, self.channels), np.float32), last=True)

    @property
    def pending_s(self) -> float:
        """Audio pushed but not yet returned, in seconds (0 after :meth:`flush`)."""
        return max(self._frames_in / self.in_rate - self._frames_out / MODEL_RATE, 0.0)

    def _run(self, block: np.ndarray, *, last: bool) -> np.ndarray:
        if self._done:
            raise RuntimeError("the resampler was flushed: the stream has ended")
        if block.ndim != 2 or block.shape[1] != self.channels:
            raise ValueError(f"expected a (frames, {self.channels}) block, got shape {block.shape}")
        self._done = last
        self._frames_in += block.shape[0]
        data = np.ascontiguousarray(block, dtype=np.float32)
        if self._stream is None:
            out = data.copy() if data is block else data  # the caller may reuse its buffer
        else:
            out = self._stream.resample_chunk(data, last=last).reshape(-1, self.channels)
        self._frames_out += out.shape[0]
        return out
