"""Channel roles and resampling to the model's 16 kHz."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import soxr

from services.events.models import ChannelRole
from services.preprocess.decode import DecodedAudio
from services.preprocess.errors import ChannelRoleError

MODEL_RATE = 16_000


@dataclass(frozen=True)
class ChannelAudio:
    channel: int | None  # None: a down-mix of all channels
    role: str | None
    samples: np.ndarray  # float32 mono at MODEL_RATE

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / MODEL_RATE


def resample(samples: np.ndarray, rate: int) -> np.ndarray:
    if rate == MODEL_RATE:
        return np.ascontiguousarray(samples, dtype=np.float32)
    return soxr.resample(samples, rate, MODEL_RATE, quality="HQ").astype(np.float32, copy=False)


def split_channels(
    audio: DecodedAudio, roles: Sequence[ChannelRole], mode: Literal["split", "mix"]
) -> list[ChannelAudio]:
    """Keep role-named channels apart (mode ``split``), else down-mix to mono.

    Channels the event gives no role are left out when splitting: the event
    told us which channels matter.
    """
    for role in roles:
        if role.index >= audio.channels:
            raise ChannelRoleError(
                f"channel {role.index} ({role.role}) named, but the audio has {audio.channels} channel(s)"
            )
    if mode == "split" and roles:
        return [
            ChannelAudio(r.index, r.role, resample(audio.samples[:, r.index], audio.sample_rate))
            for r in sorted(roles, key=lambda r: r.index)
        ]
    mono = audio.samples.mean(axis=1) if audio.channels > 1 else audio.samples[:, 0]
    role = roles[0].role if len(roles) == 1 and audio.channels == 1 else None
    return [ChannelAudio(None, role, resample(mono, audio.sample_rate))]
