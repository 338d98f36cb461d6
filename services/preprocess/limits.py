"""What a recording may cost to decode: checked from its header, then counted while it decodes.

A header may lie or say nothing (FLAC's STREAMINFO total may be 0 or false; Ogg and
ADTS lengths are estimates), so it is used twice and never alone: the figures it
declares refuse a recording before any decoding and size the memory reserved for it
(:func:`project`); then a :class:`DecodeGuard` counts what the decoder really
produces and stops at the first block that crosses a limit. Three figures:

- **samples per encoded byte** (frames x source channels / encoded bytes): what an
  input may demand per byte sent. Real codecs stay below ~145 (Opus at 6 kbit/s,
  stereo); a FLAC of constant subframes reaches 4,500-15,000 (bench/samples_per_byte.py);
- **channel-seconds kept**: kept channels x duration, the 16 kHz float32 that a
  prepare holds (64,000 bytes per channel-second), so eight channels cost eight times one;
- **memory**: the encoded bytes plus the kept channels at 16 kHz float32, reserved from
  the replica's budget (:mod:`.budget`) before decoding and grown, if it can be, when
  the decoder produces more than the header said.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from services.preprocess.budget import Reservation
from services.preprocess.channels import MODEL_RATE
from services.preprocess.decode import StreamInfo
from services.preprocess.errors import (
    AudioTooLongError,
    ChannelSecondsError,
    PrepareMemoryBusyError,
    PrepareMemoryError,
    SamplesPerByteError,
)
from services.settings import PreprocessSettings

BYTES_PER_CHANNEL_SECOND = MODEL_RATE * 4  # a kept channel at 16 kHz float32
_MB = 1024 * 1024
# What a length estimate (bit rate, last Ogg page) may be short by before the reservation grows.
_ESTIMATE_MARGIN = 1.05


def _env(field: str) -> str:
    return f"LISTENPOST_PREPROCESS__{field.upper()}"


@dataclass(frozen=True)
class DecodeLimits:
    encoded_bytes: int
    max_duration_s: float
    max_channel_seconds: float
    max_samples_per_byte: float
    max_memory_bytes: int

    @classmethod
    def of(cls, settings: PreprocessSettings, encoded_bytes: int) -> DecodeLimits:
        return cls(
            encoded_bytes=encoded_bytes,
            max_duration_s=settings.max_duration_s,
            max_channel_seconds=settings.max_channel_seconds,
            max_samples_per_byte=settings.max_samples_per_byte,
            max_memory_bytes=settings.max_prepare_memory_bytes,
        )

    def max_frames(self, info: StreamInfo, kept: int) -> int:
        """The most source frames these limits let the recording decode."""
        rate = info.sample_rate
        return int(
            min(
                self.max_duration_s * rate,
                self.max_channel_seconds / kept * rate,
                self.max_samples_per_byte * self.encoded_bytes / info.channels,
            )
        )


def held_bytes(frames: int, rate: int, kept: int, encoded_bytes: int) -> int:
    """Memory a prepare holds after ``frames`` source frames: the encoded bytes and the kept 16 kHz float32."""
    return encoded_bytes + math.ceil(frames * MODEL_RATE / rate) * kept * 4


@dataclass(frozen=True)
class Projection:
    frames: int  # source frames the reservation covers
    basis: Literal["declared", "estimated", "limits"]  # where the figure comes from
    bytes: int  # what the prepare reserves from the replica's budget


def project(info: StreamInfo, kept: int, limits: DecodeLimits) -> Projection:
    """Refuse what the header already shows over a limit; else the memory to reserve.

    Only a declared length refuses; an estimate or the limits' own bound only sizes the
    reservation (at most the whole budget), since the decoder may well produce less.
    """
    if info.declared_frames is not None:
        _check_figures(info, kept, info.declared_frames, limits, stopped=None)
        needed = held_bytes(info.declared_frames, info.sample_rate, kept, limits.encoded_bytes)
        if needed > limits.max_memory_bytes:
            raise PrepareMemoryError(_memory_message(info, kept, info.declared_frames, limits, needed))
        return Projection(info.declared_frames, "declared", needed)
    bound = limits.max_frames(info, kept)
    basis: Literal["estimated", "limits"] = "limits"
    frames = bound
    if info.estimated_frames is not None:
        frames, basis = min(int(info.estimated_frames * _ESTIMATE_MARGIN), bound), "estimated"
    needed = held_bytes(frames, info.sample_rate, kept, limits.encoded_bytes)
    return Projection(frames, basis, min(needed, limits.max_memory_bytes))


def _check_figures(info: StreamInfo, kept: int, frames: int, limits: DecodeLimits, *, stopped: float | None) -> None:
    """Refuse ``frames`` (declared, or decoded so far when ``stopped`` is set) over a limit."""
    rate, seconds = info.sample_rate, frames / info.sample_rate
    samples = frames * info.channels
    where = (
        f"its {info.container.upper()} header declares {samples:,} samples"
        if stopped is None
        else f"decoding stopped at {stopped:,.1f} s, after {samples:,} samples"
    )
    if samples > limits.max_samples_per_byte * limits.encoded_bytes:
        raise SamplesPerByteError(
            f"audio decodes to more than {limits.max_samples_per_byte:,.0f} samples per encoded byte: {where} "
            f"from {limits.encoded_bytes:,} bytes ({samples / limits.encoded_bytes:,.1f} per byte; limit "
            f"{_env('max_samples_per_byte')}={limits.max_samples_per_byte:g})"
        )
    if kept * seconds > limits.max_channel_seconds:
        raise ChannelSecondsError(
            f"audio is over the limit of {limits.max_channel_seconds:,.0f} channel-seconds: {kept} kept "
            f"channel(s) x {seconds:,.1f} s = {kept * seconds:,.0f} ("
            + ("its header's length" if stopped is None else "decoding stopped there")
            + f"; limit {_env('max_channel_seconds')}={limits.max_channel_seconds:g})"
        )
    if stopped is not None and frames > limits.max_duration_s * rate:
        raise AudioTooLongError(
            f"audio is longer than the limit of {limits.max_duration_s:.0f} s (decoding stopped at {stopped:.1f} s)"
        )


def _memory_message(info: StreamInfo, kept: int, frames: int, limits: DecodeLimits, needed: int) -> str:
    return (
        f"audio would take {needed / _MB:,.0f} MB to prepare ({kept} kept channel(s) x "
        f"{frames / info.sample_rate:,.1f} s at 16 kHz float32, plus {limits.encoded_bytes:,} encoded bytes), "
        f"more than this replica's budget of {limits.max_memory_bytes / _MB:,.0f} MB "
        f"({_env('max_prepare_memory_bytes')}={limits.max_memory_bytes})"
    )


class DecodeGuard:
    """Counts decoded blocks against the limits and the reservation, before each block is kept."""

    def __init__(self, info: StreamInfo, kept: int, limits: DecodeLimits, reservation: Reservation) -> None:
        self._info = info
        self._kept = kept
        self._limits = limits
        self._reservation = reservation
        self.frames = 0

    def admit(self, frames: int) -> None:
        """Count a block of ``frames``; raise, and so stop decoding, at the first limit it crosses."""
        total = self.frames + frames
        info, limits = self._info, self._limits
        _check_figures(info, self._kept, total, limits, stopped=total / info.sample_rate)
        needed = held_bytes(total, info.sample_rate, self._kept, limits.encoded_bytes)
        if needed > self._reservation.bytes and not self._grow(needed):
            if needed > limits.max_memory_bytes:
                raise PrepareMemoryError(
                    _memory_message(info, self._kept, total, limits, needed)
                    + f"; decoding stopped at {total / info.sample_rate:,.1f} s"
                )
            raise PrepareMemoryBusyError(
                f"audio decodes to more than its projection and this replica's memory budget for prepares has "
                f"no room for the rest now ({needed / _MB:,.0f} MB needed at {total / info.sample_rate:,.1f} s; "
                f"{_env('max_prepare_memory_bytes')}={limits.max_memory_bytes}); it will be retried"
            )
        self.frames = total

    def _grow(self, needed: int) -> bool:
        if needed > self._limits.max_memory_bytes:
            return False
        # Grow by a quarter at a time, so that a long undeclared recording asks the budget rarely.
        ample = min(max(needed, self._reservation.bytes * 5 // 4), self._limits.max_memory_bytes)
        return self._reservation.grow(ample) or self._reservation.grow(needed)
