"""Call acoustics, per channel and per call, from levels (20 ms frames), speech segments and loudness.

Two kinds of quiet are measured, because rules need both:
- *silence* is sound below the silence floor (``silence_dbfs``): dead air, a muted line;
- *non-talk* is time when nobody speaks (Silero VAD), which also counts hold
  music, ringing and background noise.
Overtalk needs the parties on separate channels; for a down-mix it is 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.events.models import Acoustics, ChannelAcoustics
from services.preprocess.channels import MODEL_RATE, ChannelAudio
from services.preprocess.loudness import integrated_lufs, subblock_power

FRAME_S = 0.02
FLOOR_DB = -120.0
SNR_CAP_DB = 100.0  # noise at digital zero (synthetic audio) would give an infinite ratio
_MIN_NOISE_FRAMES = 25  # 0.5 s of non-speech; with less, noise comes from the quietest speech frames


@dataclass(frozen=True)
class AcousticLimits:
    silence_dbfs: float = -45.0
    dead_air_min_s: float = 2.0  # silences shorter than this are turn-taking, not dead air
    overtalk_min_s: float = 0.5  # overlaps shorter than this are backchannels ("mm-hm"), not overtalk


def _db(power: float | np.ndarray) -> np.ndarray:
    return 10.0 * np.log10(np.maximum(power, 10 ** (FLOOR_DB / 10)))


def frame_power(samples: np.ndarray, frame: int = int(MODEL_RATE * FRAME_S)) -> np.ndarray:
    """Mean square per frame of ``frame`` samples (the last one zero-padded), without copying the signal."""
    whole = samples.shape[0] // frame
    shaped = samples[: whole * frame].reshape(whole, frame)
    power = np.einsum("ij,ij->i", shaped, shaped, dtype=np.float64) / frame
    tail = samples[whole * frame :]
    if tail.size or whole == 0:
        power = np.append(power, np.dot(tail.astype(np.float64), tail) / frame)
    return power


def frame_levels_dbfs(samples: np.ndarray) -> np.ndarray:
    """RMS level per 20 ms frame, dB full scale (a full-scale sine is -3 dBFS)."""
    return _db(frame_power(samples))


def speech_mask(segments: np.ndarray, frames: int) -> np.ndarray:
    """20 ms frames covered by speech segments ((n, 2) seconds); a frame counts from half covered."""
    mask = np.zeros(frames + 1, np.int32)
    if len(segments):
        bounds = np.clip(np.round(segments / FRAME_S).astype(int), 0, frames)
        np.add.at(mask, bounds[:, 0], 1)
        np.add.at(mask, bounds[:, 1], -1)
    return np.cumsum(mask[:frames]) > 0


def runs(mask: np.ndarray) -> np.ndarray:
    """Lengths, in frames, of each run of True."""
    if mask.size == 0:
        return np.zeros(0, int)
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)


def silent_runs(silent: np.ndarray) -> list[int]:
    """Lengths, in frames, of each run of consecutive silent frames."""
    return runs(silent).tolist()


def _quiet_stats(quiet: np.ndarray, min_s: float) -> tuple[float, float, float]:
    """Share of quiet frames, longest quiet run (s), total of quiet runs of at least ``min_s`` (s)."""
    lengths = runs(quiet) * FRAME_S
    ratio = float(quiet.mean()) if quiet.size else 0.0
    return ratio, float(lengths.max(initial=0.0)), float(lengths[lengths >= min_s - 1e-9].sum())


@dataclass(frozen=True)
class ChannelMeasure:
    """What the pipeline measured on one channel, ready to be summarised."""

    audio: ChannelAudio
    power: np.ndarray  # mean square per 20 ms frame
    speech: np.ndarray  # (n, 2) speech segments, seconds

    @property
    def levels_dbfs(self) -> np.ndarray:
        return _db(self.power)


def _noise_and_snr(power: np.ndarray, speaking: np.ndarray) -> tuple[float | None, float | None]:
    quiet = power[~speaking]
    noise = float(np.median(quiet)) if quiet.size >= _MIN_NOISE_FRAMES else None
    if not speaking.any():
        return (None if noise is None else float(_db(noise))), None
    loud = power[speaking]
    if noise is None:
        noise = float(np.percentile(loud, 5))  # the pauses between syllables
    speech_power = max(float(loud.mean()) - noise, 0.0)  # speech frames carry the noise too
    if noise <= 10 ** (FLOOR_DB / 10):
        return float(_db(noise)), SNR_CAP_DB
    snr = 10 * np.log10(max(speech_power, 1e-30) / noise)
    return float(_db(noise)), float(np.clip(snr, -SNR_CAP_DB, SNR_CAP_DB))


def _channel(m: ChannelMeasure, limits: AcousticLimits, speaking: np.ndarray, loudness: float) -> ChannelAcoustics:
    samples = m.audio.samples
    silent = m.levels_dbfs < limits.silence_dbfs
    ratio, longest, _ = _quiet_stats(silent, limits.dead_air_min_s)
    talk = float((m.speech[:, 1] - m.speech[:, 0]).sum()) if len(m.speech) else 0.0
    duration = m.audio.duration_s
    rms = float(np.sqrt(m.power.mean())) if samples.size else 0.0
    noise, snr = _noise_and_snr(m.power, speaking)
    return ChannelAcoustics(
        channel=m.audio.channel,
        role=m.audio.role,
        duration_s=round(duration, 3),
        rms_dbfs=round(float(20 * np.log10(max(rms, 1e-6))), 2),
        peak_dbfs=round(float(20 * np.log10(max(m.audio.peak, 1e-6))), 2),
        silence_ratio=round(ratio, 4),
        longest_silence_s=round(longest, 3),
        talk_time_s=round(talk, 3),
        speech_ratio=round(talk / duration, 4) if duration else 0.0,
        speech_segments=len(m.speech),
        loudness_lufs=round(loudness, 2),
        clipping_ratio=round(m.audio.clipping_ratio, 6),
        noise_dbfs=None if noise is None else round(noise, 2),
        snr_db=None if snr is None else round(snr, 2),
    )


def role_key(audio: ChannelAudio) -> str:
    if audio.role:
        return audio.role
    return f"ch{audio.channel}" if audio.channel is not None else "all"


def measure(measures: Sequence[ChannelMeasure], limits: AcousticLimits = AcousticLimits()) -> Acoustics:
    frames = max((m.power.shape[0] for m in measures), default=0)
    duration = max((m.audio.duration_s for m in measures), default=0.0)
    speaking = [speech_mask(m.speech, m.power.shape[0]) for m in measures]
    powers = [subblock_power(m.audio.samples, MODEL_RATE) for m in measures]
    per_channel = [
        _channel(m, limits, s, integrated_lufs([p])) for m, s, p in zip(measures, speaking, powers, strict=True)
    ]

    def padded(mask: np.ndarray, fill: bool) -> np.ndarray:
        return np.concatenate((mask, np.full(frames - mask.shape[0], fill)))

    all_silent = np.logical_and.reduce([padded(m.levels_dbfs < limits.silence_dbfs, True) for m in measures])
    ratio, longest, dead_air = _quiet_stats(all_silent, limits.dead_air_min_s)
    talkers = np.sum([padded(s, False) for s in speaking], axis=0) if measures else np.zeros(0)
    _, longest_non_talk, _ = _quiet_stats(talkers == 0, 0.0)
    overtalk = talkers >= 2
    episodes = runs(overtalk) * FRAME_S
    talk_time: dict[str, float] = {}
    for m, c in zip(measures, per_channel, strict=True):
        talk_time[role_key(m.audio)] = round(talk_time.get(role_key(m.audio), 0.0) + c.talk_time_s, 3)
    snrs = [c.snr_db for c in per_channel if c.snr_db is not None]
    return Acoustics(
        duration_s=round(duration, 3),
        silence_ratio=round(ratio, 4),
        longest_silence_s=round(longest, 3),
        dead_air_s=round(dead_air, 3),
        peak_dbfs=max((c.peak_dbfs for c in per_channel), default=FLOOR_DB),
        channels=per_channel,
        speech_ratio=round(float((talkers > 0).mean()), 4) if frames else 0.0,
        talk_time_s=talk_time,
        non_talk_s=round(float((talkers == 0).sum()) * FRAME_S, 3),
        longest_non_talk_s=round(longest_non_talk, 3),
        overtalk_s=round(float(overtalk.sum()) * FRAME_S, 3),
        overtalk_ratio=round(float(overtalk.mean()), 4) if frames else 0.0,
        overtalk_count=int((episodes >= limits.overtalk_min_s - 1e-9).sum()),
        loudness_lufs=round(integrated_lufs(powers), 2),
        clipping_ratio=max((c.clipping_ratio for c in per_channel), default=0.0),
        snr_db=min(snrs) if snrs else None,
    )
