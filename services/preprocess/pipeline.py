"""Bytes + the submitted event -> model windows and acoustics. Pure: no I/O.

The stages, in order: sniff the container and check the declared format;
refuse from the header what already shows over a limit and project the memory
to hold (:func:`plan`, :mod:`.limits`); decode in blocks, counting each block
against the limits before it is kept, keeping or down-mixing channels and
resampling each kept channel to 16 kHz as the blocks come; refuse what is cut
short or silent; find speech (Silero VAD); cut windows in pauses; measure the call.

Traces: ``decode`` (with its ``resample`` child: the last flush of the resampler, and the time
spent resampling over all blocks, which are resampled as they are decoded), ``vad`` and
``acoustics`` spans, children of the caller's current span (the Preprocessor's ``prepare``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.events.models import Acoustics, AudioFacts, AudioSubmitted
from services.preprocess.acoustics import FRAME_S, AcousticLimits, ChannelMeasure, frame_power, measure
from services.preprocess.budget import MemoryBudget, Reservation
from services.preprocess.channels import MODEL_RATE, ChannelAudio, ChannelCollector, Output, plan_channels
from services.preprocess.decode import AudioReader, StreamInfo, check_complete, open_audio
from services.preprocess.errors import (
    AllSilentError,
    AudioTooLongError,
    PrepareMemoryError,
    SampleRateError,
    TooManyChannelsError,
)
from services.preprocess.formats import check_declared, sniff
from services.preprocess.limits import DecodeGuard, DecodeLimits, Projection, project
from services.preprocess.vad import SpeechDetector, VadParams, default_detector
from services.preprocess.windows import WindowSpan, plan_speech_windows
from services.settings import PreprocessSettings
from services.telemetry import stage_span


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
    # Speech segments ((n, 2) seconds) of each kept channel, in the order of acoustics.channels.
    speech: tuple[np.ndarray, ...] = ()


def prepare(
    data: bytes,
    submitted: AudioSubmitted,
    settings: PreprocessSettings,
    *,
    detector: SpeechDetector | None = None,
    reservation: Reservation | None = None,
) -> PreparedAudio:
    """``reservation``: memory already held for this prepare (see :mod:`.gate`); without one, the
    prepare holds its own from a budget of ``max_prepare_memory_bytes``."""
    with stage_span("decode", {"listenpost.audio.bytes": len(data)}):
        info, channels = decode_channels(data, submitted, settings, reservation=reservation)
    powers = [frame_power(ch.samples) for ch in channels]
    _check_not_silent(channels, powers, settings.silent_audio_dbfs)
    detector = detector or default_detector()
    params = VadParams(
        threshold=settings.vad_threshold,
        min_speech_s=settings.vad_min_speech_s,
        min_silence_s=settings.vad_min_silence_s,
        pad_s=settings.vad_pad_s,
        gate_dbfs=settings.vad_gate_dbfs,
    )
    with stage_span("vad", {"listenpost.channels": len(channels)}):
        measures = [
            ChannelMeasure(audio=ch, power=power, speech=detector.segments(ch.samples, params))
            for ch, power in zip(channels, powers, strict=True)
        ]
    windows: list[ModelWindow] = []
    for m in measures:
        for span in _spans(m, settings):
            windows.append(_window(len(windows), m.audio, span, settings.min_window_s))
    facts = AudioFacts(
        duration_s=round(channels[0].source_frames / info.sample_rate, 3),
        sample_rate=info.sample_rate,
        channels=info.channels,
        format=info.container,
        codec=info.codec,
    )
    limits = AcousticLimits(
        silence_dbfs=settings.silence_dbfs,
        dead_air_min_s=settings.dead_air_min_s,
        overtalk_min_s=settings.overtalk_min_s,
    )
    with stage_span("acoustics"):
        acoustics = measure(measures, limits)
    return PreparedAudio(facts=facts, windows=windows, acoustics=acoustics, speech=tuple(m.speech for m in measures))


@dataclass(frozen=True)
class Plan:
    """What preparing a recording will hold, from its header (see :func:`plan`)."""

    info: StreamInfo
    outputs: list[Output]
    limits: DecodeLimits
    projection: Projection


def plan(data: bytes, submitted: AudioSubmitted, settings: PreprocessSettings) -> Plan:
    """Read the header only: refuse what it already shows over a limit, project the memory to reserve."""
    container = sniff(data)
    check_declared(submitted.audio.format, container)
    with open_audio(data, container) as reader:
        return _plan(reader, len(data), submitted, settings)


def _plan(reader: AudioReader, encoded_bytes: int, submitted: AudioSubmitted, settings: PreprocessSettings) -> Plan:
    info = reader.info
    _check_stream(info, settings)
    outputs = plan_channels(info.channels, submitted.channels, settings.channel_mode)
    limits = DecodeLimits.of(settings, encoded_bytes)
    return Plan(info, outputs, limits, project(info, len(outputs), limits))


def decode_channels(
    data: bytes,
    submitted: AudioSubmitted,
    settings: PreprocessSettings,
    *,
    reservation: Reservation | None = None,
) -> tuple[StreamInfo, list[ChannelAudio]]:
    """Decode block by block into the kept (or down-mixed) channels at 16 kHz, within the limits.

    Each block is counted before it is kept, so decoding stops at the first block over a
    limit: a bomb costs what the limits allow, never what it would decode to.
    """
    container = sniff(data)
    check_declared(submitted.audio.format, container)
    with open_audio(data, container) as reader:
        p = _plan(reader, len(data), submitted, settings)
        own = reservation is None
        held = reservation or MemoryBudget(settings.max_prepare_memory_bytes).try_reserve(p.projection.bytes)
        if held is None:  # cannot happen: a projection never exceeds the budget it was made for
            raise PrepareMemoryError(f"audio needs {p.projection.bytes} bytes, over the budget for prepares")
        try:
            guard = DecodeGuard(p.info, len(p.outputs), p.limits, held)
            collector = ChannelCollector(
                p.outputs,
                rate=p.info.sample_rate,
                clip_level=settings.clip_level,
                # Room for the projection, up to an hour: a lying header cannot make us allocate more.
                expected_frames=min(p.projection.frames, 3600 * p.info.sample_rate),
            )
            for block in reader.blocks():
                guard.admit(block.shape[0])  # raises, and so stops decoding, before the block is kept
                collector.add(block)
            check_complete(p.info, collector.frames)
            with stage_span("resample", {"listenpost.from_hz": p.info.sample_rate}) as span:
                channels = collector.finish()
                span.set_attribute("listenpost.resample.total_s", round(collector.resample_s, 6))
            return p.info, channels
        finally:
            if own:
                held.release()


def _check_stream(info: StreamInfo, settings: PreprocessSettings) -> None:
    """Refuse, from the header alone, what we would refuse after decoding."""
    if info.channels > settings.max_channels:
        raise TooManyChannelsError(f"audio has {info.channels} channels, over the limit of {settings.max_channels}")
    if not settings.min_sample_rate <= info.sample_rate <= settings.max_sample_rate:
        raise SampleRateError(
            f"audio sample rate {info.sample_rate} Hz is outside the accepted "
            f"{settings.min_sample_rate}-{settings.max_sample_rate} Hz"
        )
    declared = info.declared_duration_s
    if declared is not None and declared > settings.max_duration_s:
        raise AudioTooLongError(f"audio is {declared:.1f} s long, over the limit of {settings.max_duration_s:.0f} s")


def _check_not_silent(channels: list[ChannelAudio], powers: list[np.ndarray], floor_dbfs: float) -> None:
    loudest = max(float(p.max(initial=0.0)) for p in powers)
    if loudest < 10 ** (floor_dbfs / 10):
        level = 10 * np.log10(loudest) if loudest > 0 else float("-inf")
        peak = max(ch.peak for ch in channels)
        raise AllSilentError(
            f"audio is silent throughout: its loudest 20 ms is {level:.1f} dBFS (peak "
            f"{20 * np.log10(peak) if peak > 0 else float('-inf'):.1f} dBFS), below the {floor_dbfs:.0f} dBFS floor"
        )


def _spans(m: ChannelMeasure, settings: PreprocessSettings) -> list[WindowSpan]:
    return plan_speech_windows(
        m.audio.duration_s,
        m.speech,
        m.levels_dbfs,
        FRAME_S,
        max_window_s=settings.window_s,
        overlap_s=min(settings.window_overlap_s, settings.window_s / 4),
        min_pause_s=settings.window_min_pause_s,
    )


def _window(index: int, audio: ChannelAudio, span: WindowSpan, min_window_s: float) -> ModelWindow:
    samples = audio.samples[int(round(span.start * MODEL_RATE)) : int(round(span.end * MODEL_RATE))]
    min_samples = int(min_window_s * MODEL_RATE)
    if samples.shape[0] < min_samples:
        # The model needs a minimum of audio to form one token; silence pads a blip.
        samples = np.pad(samples, (0, min_samples - samples.shape[0]))
    return ModelWindow(index, round(span.start, 3), round(span.end, 3), audio.channel, audio.role, samples)
