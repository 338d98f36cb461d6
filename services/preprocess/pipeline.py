"""Bytes + the submitted event -> model windows and acoustics. Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.events.models import Acoustics, AudioFacts, AudioSubmitted
from services.preprocess.acoustics import measure
from services.preprocess.channels import MODEL_RATE, split_channels
from services.preprocess.decode import decode_audio
from services.preprocess.errors import AudioTooLongError
from services.preprocess.windows import plan_windows
from services.settings import PreprocessSettings


@dataclass(frozen=True)
class ModelWindow:
    index: int
    start: float
    end: float
    channel: int | None
    role: str | None
    samples: np.ndarray  # float32 mono, 16 kHz, at least min_window_s long


@dataclass(frozen=True)
class PreparedAudio:
    facts: AudioFacts
    windows: list[ModelWindow]
    acoustics: Acoustics


def prepare(data: bytes, submitted: AudioSubmitted, settings: PreprocessSettings) -> PreparedAudio:
    decoded = decode_audio(data)
    if decoded.duration_s > settings.max_duration_s:
        raise AudioTooLongError(
            f"audio is {decoded.duration_s:.1f} s long, over the limit of {settings.max_duration_s:.0f} s"
        )
    channels = split_channels(decoded, submitted.channels, settings.channel_mode)
    min_samples = int(settings.min_window_s * MODEL_RATE)
    windows: list[ModelWindow] = []
    for ch in channels:
        for span in plan_windows(ch.duration_s, settings.window_s):
            samples = ch.samples[int(round(span.start * MODEL_RATE)) : int(round(span.end * MODEL_RATE))]
            if samples.shape[0] < min_samples:
                # The model needs a minimum of audio to form one token; silence pads a blip.
                samples = np.pad(samples, (0, min_samples - samples.shape[0]))
            windows.append(
                ModelWindow(len(windows), round(span.start, 3), round(span.end, 3), ch.channel, ch.role, samples)
            )
    facts = AudioFacts(
        duration_s=round(decoded.duration_s, 3),
        sample_rate=decoded.sample_rate,
        channels=decoded.channels,
        format=decoded.format,
    )
    return PreparedAudio(facts=facts, windows=windows, acoustics=measure(channels, settings.silence_dbfs))
