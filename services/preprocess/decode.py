"""Decoding encoded audio bytes to float32 samples (libsndfile via soundfile)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile

from services.preprocess.errors import AudioDecodeError, EmptyAudioError, InvalidSamplesError


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # float32, shape (frames, channels), in [-1, 1]
    sample_rate: int
    format: str

    @property
    def channels(self) -> int:
        return int(self.samples.shape[1])

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / self.sample_rate


def decode_audio(data: bytes) -> DecodedAudio:
    """Decode WAV (PCM, float, μ-law, A-law), FLAC or OGG Vorbis bytes."""
    if not data:
        raise EmptyAudioError("audio is empty (0 bytes)")
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as f:
            fmt = f.format.lower()
            samples = f.read(dtype="float32", always_2d=True)
            sample_rate = int(f.samplerate)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioDecodeError(f"audio could not be decoded: {exc}") from exc
    if samples.shape[1] == 0:
        raise EmptyAudioError("audio has zero channels")
    if samples.shape[0] == 0:
        raise EmptyAudioError(f"audio decodes to zero samples ({fmt})")
    if not np.isfinite(samples).all():
        raise InvalidSamplesError("audio contains NaN or infinite samples")
    return DecodedAudio(samples=samples, sample_rate=sample_rate, format=fmt)
