"""Call acoustics from energy per 20 ms frame: silence, talk time, levels.

An energy floor is a first measure; a speech-aware (VAD) measure replaces it
where a channel must tell speech from noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.events.models import Acoustics, ChannelAcoustics
from services.preprocess.channels import MODEL_RATE, ChannelAudio

FRAME_S = 0.02
DEAD_AIR_MIN_S = 2.0  # silences shorter than this are turn-taking, not dead air
_FLOOR_DB = -120.0


def _db(value: float | np.ndarray) -> np.ndarray:
    return 20.0 * np.log10(np.maximum(value, 10 ** (_FLOOR_DB / 20)))


def frame_levels_dbfs(samples: np.ndarray) -> np.ndarray:
    frame = int(MODEL_RATE * FRAME_S)
    count = max(1, int(np.ceil(samples.shape[0] / frame)))
    padded = np.zeros(count * frame, dtype=np.float32)
    padded[: samples.shape[0]] = samples
    rms = np.sqrt(np.mean(padded.reshape(count, frame).astype(np.float64) ** 2, axis=1))
    return _db(rms)


def silent_runs(silent: np.ndarray) -> list[int]:
    """Lengths, in frames, of each run of consecutive silent frames."""
    if silent.size == 0:
        return []
    edges = np.diff(np.concatenate(([0], silent.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return (ends - starts).tolist()


def _silence_stats(silent: np.ndarray) -> tuple[float, float, float]:
    runs = silent_runs(silent)
    longest = max(runs, default=0) * FRAME_S
    dead_air = sum(r for r in runs if r * FRAME_S >= DEAD_AIR_MIN_S) * FRAME_S
    ratio = float(silent.mean()) if silent.size else 0.0
    return ratio, longest, dead_air


def measure(channels: Sequence[ChannelAudio], silence_dbfs: float) -> Acoustics:
    per_channel: list[ChannelAcoustics] = []
    silent_masks = []
    for ch in channels:
        levels = frame_levels_dbfs(ch.samples)
        silent = levels < silence_dbfs
        silent_masks.append(silent)
        ratio, longest, _ = _silence_stats(silent)
        rms = float(np.sqrt(np.mean(ch.samples.astype(np.float64) ** 2))) if ch.samples.size else 0.0
        per_channel.append(
            ChannelAcoustics(
                channel=ch.channel,
                role=ch.role,
                duration_s=round(ch.duration_s, 3),
                rms_dbfs=round(float(_db(rms)), 2),
                peak_dbfs=round(float(_db(float(np.max(np.abs(ch.samples), initial=0.0)))), 2),
                silence_ratio=round(ratio, 4),
                longest_silence_s=round(longest, 3),
                talk_time_s=round(float((~silent).sum()) * FRAME_S, 3),
            )
        )
    frames = min((m.size for m in silent_masks), default=0)
    all_silent = np.logical_and.reduce([m[:frames] for m in silent_masks]) if silent_masks else np.array([])
    ratio, longest, dead_air = _silence_stats(all_silent)
    return Acoustics(
        duration_s=round(max((c.duration_s for c in channels), default=0.0), 3),
        silence_ratio=round(ratio, 4),
        longest_silence_s=round(longest, 3),
        dead_air_s=round(dead_air, 3),
        peak_dbfs=max((c.peak_dbfs for c in per_channel), default=_FLOOR_DB),
        channels=per_channel,
    )
