"""Voice activity with Silero VAD: speech segments of one 16 kHz channel.

We run the ONNX "sequence" export that ships inside the ``silero-vad``
package (``silero_vad_16k_sequence.onnx``): one ONNX Runtime call scores a
block of 256 frames of 32 ms, giving exactly the per-frame
probabilities of the streaming model without a Python call per frame. The
package's Python front-end imports torch; this module needs only numpy and
onnxruntime, so a Preprocessor replica never loads torch.

Speed: the model costs ~0.065 ms of one core per 32 ms frame (~500x real
time), the largest share of preprocessing. Stretches that are quieter than a
gate (default -60 dBFS RMS, inaudible line noise or digital silence) cannot be
speech and are not scored: on a two-party call each channel is quiet for about
half the time.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

RATE = 16_000
FRAME = 512  # samples per frame at 16 kHz: 32 ms
FRAME_S = FRAME / RATE
_CONTEXT = 64  # each frame is scored with the last 64 samples of the frame before it
_BLOCK = 256  # frames per ONNX call: ~8 s of audio; larger blocks are no faster and grow ORT's arena
_MODEL = "silero_vad_16k_sequence.onnx"


@dataclass(frozen=True)
class VadParams:
    """Silero's post-processing parameters (its defaults), plus our energy gate."""

    threshold: float = 0.5  # speech starts at this probability
    min_speech_s: float = 0.25  # shorter bursts are not speech
    min_silence_s: float = 0.1  # shorter gaps do not end a segment
    pad_s: float = 0.03  # each segment is widened by this much on both sides
    gate_dbfs: float | None = -60.0  # frames quieter than this are never scored (None: score all)

    @property
    def neg_threshold(self) -> float:  # speech ends below this (hysteresis, as in silero)
        return max(self.threshold - 0.15, 0.01)


def model_path() -> Path:
    """The ONNX model inside the installed silero-vad package, found without importing it (and torch)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the silero-vad package is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / _MODEL
    if not path.is_file():
        raise RuntimeError(f"silero-vad ships no {_MODEL} (need silero-vad >= 6.2): {path}")
    return path


class SpeechDetector:
    """Silero VAD on one thread. ``run`` of an ONNX session is thread-safe: share one per process."""

    def __init__(self, path: Path | None = None) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # one core per call; a replica scales by calls in parallel
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(path or model_path()), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def probabilities(self, samples: np.ndarray, *, gate_dbfs: float | None = None) -> np.ndarray:
        """Speech probability per 32 ms frame; 0 for frames in stretches quieter than ``gate_dbfs``.

        The model's LSTM state starts afresh in each scored stretch, as at the
        start of a file; stretches are padded and joined so that speech is
        never scored from its first frame without context.
        """
        count = -(-samples.shape[0] // FRAME)
        probs = np.zeros(count, np.float32)
        for first, stop in active_stretches(samples, gate_dbfs):
            probs[first:stop] = self._score(samples, first, stop)
        return probs

    def _score(self, samples: np.ndarray, first: int, stop: int) -> np.ndarray:
        hidden = np.zeros((1, 1, 128), np.float32)
        cell = np.zeros((1, 1, 128), np.float32)
        out = []
        for lo in range(first, stop, _BLOCK):
            hi = min(stop, lo + _BLOCK)
            chunk = samples[lo * FRAME : hi * FRAME]
            body = np.zeros((hi - lo, FRAME), np.float32)
            body.reshape(-1)[: chunk.shape[0]] = chunk  # the last frame is zero-padded
            context = np.zeros((hi - lo, _CONTEXT), np.float32)
            context[1:] = body[:-1, -_CONTEXT:]
            if lo:
                context[0] = samples[lo * FRAME - _CONTEXT : lo * FRAME]
            frames = np.concatenate((context, body), axis=1)
            values, hidden, cell = self._session.run(
                ["speech_probs", "hn", "cn"], {"input": frames, "h": hidden, "c": cell}
            )
            out.append(values.reshape(-1))
        return np.concatenate(out)

    def segments(self, samples: np.ndarray, params: VadParams = VadParams()) -> np.ndarray:
        """Speech segments as an (n, 2) float array of [start, end) seconds."""
        probs = self.probabilities(samples, gate_dbfs=params.gate_dbfs)
        return speech_segments(probs, params, duration_s=samples.shape[0] / RATE)


def active_stretches(samples: np.ndarray, gate_dbfs: float | None) -> list[tuple[int, int]]:
    """Frame ranges [first, stop) worth scoring: louder than the gate, widened by 0.5 s, gaps < 1 s joined."""
    count = -(-samples.shape[0] // FRAME)
    if gate_dbfs is None or count == 0:
        return [(0, count)] if count else []
    whole = samples.shape[0] // FRAME
    shaped = samples[: whole * FRAME].reshape(whole, FRAME)  # a view: no copy of the channel
    power = np.einsum("ij,ij->i", shaped, shaped, dtype=np.float64) / FRAME
    if count > whole:
        tail = samples[whole * FRAME :].astype(np.float64)
        power = np.append(power, np.dot(tail, tail) / FRAME)
    loud = power > 10 ** (gate_dbfs / 10)
    if not loud.any():
        return []
    widen, join = int(0.5 / FRAME_S), int(1.0 / FRAME_S)
    runs = _runs(loud)
    runs[:, 0] = np.maximum(runs[:, 0] - widen, 0)
    runs[:, 1] = np.minimum(runs[:, 1] + widen, count)
    return [(int(a), int(b)) for a, b in _join(runs, join)]


def speech_segments(probs: np.ndarray, params: VadParams, *, duration_s: float) -> np.ndarray:
    """Silero's post-processing, vectorised: hysteresis, short gaps joined, short bursts dropped, padding."""
    if probs.size == 0:
        return np.zeros((0, 2))
    # Hysteresis: on at >= threshold, off below neg_threshold, in between keep the last state.
    state = np.where(probs >= params.threshold, 1, np.where(probs < params.neg_threshold, 0, -1))
    decided = np.where(state >= 0, np.arange(state.size), -1)
    last = np.maximum.accumulate(decided)
    speaking = np.where(last >= 0, state[np.maximum(last, 0)], 0).astype(bool)
    runs = _runs(speaking).astype(float) * FRAME_S
    if runs.size == 0:
        return np.zeros((0, 2))
    # Silero measures a silence from the start of its first quiet frame to the start of the current
    # one, so a gap ends a segment only once it is a frame longer than min_silence_s.
    runs = _join(runs, params.min_silence_s + FRAME_S)
    runs = runs[(runs[:, 1] - runs[:, 0]) >= params.min_speech_s]
    runs[:, 0] = np.maximum(runs[:, 0] - params.pad_s, 0.0)
    runs[:, 1] = np.minimum(runs[:, 1] + params.pad_s, duration_s)
    return _join(runs, 0.0)


def _runs(mask: np.ndarray) -> np.ndarray:
    """[start, stop) index pairs of each run of True."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return np.stack([np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)], axis=1)


def _join(runs: np.ndarray, gap: float) -> np.ndarray:
    """Merge sorted runs separated by less than ``gap`` (touching or overlapping runs for gap 0)."""
    if len(runs) < 2:
        return runs
    keep = np.concatenate(([True], runs[1:, 0] - runs[:-1, 1] >= gap if gap > 0 else runs[1:, 0] > runs[:-1, 1]))
    starts = runs[keep, 0]
    ends = np.maximum.accumulate(runs[:, 1])[np.concatenate((np.flatnonzero(keep)[1:] - 1, [len(runs) - 1]))]
    return np.stack([starts, ends], axis=1)


@functools.cache
def default_detector() -> SpeechDetector:
    """One detector per process: loading the model takes ~50 ms and ~10 MB."""
    return SpeechDetector()
