"""Hostile audio cannot exhaust a replica: decompression bombs, channel-seconds, the memory budget and
the decoding slots, with real files decoded by the real decoders."""

from __future__ import annotations

import asyncio
import io
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import soundfile

from services.events.binding import new_event
from services.events.consumer import Poison, RetryLater
from services.events.models import AudioRef, AudioSubmitted, ChannelRole
from services.orchestrator.pipeline import caption_submitted
from services.preprocess import gate as gate_module
from services.preprocess.budget import MemoryBudget
from services.preprocess.errors import (
    ChannelSecondsError,
    PrepareMemoryBusyError,
    PrepareMemoryError,
    SamplesPerByteError,
)
from services.preprocess.gate import PrepareGate
from services.preprocess.pipeline import prepare
from services.settings import PreprocessSettings
from tests.audio_factory import av_bytes, call, sndfile_bytes, speech
from tests.hostile_audio import constant_flac

FULL_4H_16K_MONO = 4 * 3600 * 16000 * 4  # bytes of float32 the 50 KB bomb would decode to: 921.6 MB


def submitted(channels: int = 0) -> AudioSubmitted:
    roles = [ChannelRole(index=i, role=f"speaker{i}") for i in range(channels)]
    return AudioSubmitted(audio=AudioRef(data_base64="AA=="), channels=roles)


@contextmanager
def measured() -> Iterator[dict[str, float]]:
    """Wall time and tracemalloc peak (numpy's buffers included) of the block."""
    out: dict[str, float] = {}
    tracemalloc.start()
    started = time.perf_counter()
    try:
        yield out
    finally:
        out["seconds"] = time.perf_counter() - started
        out["peak_bytes"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


# --- the bombs of the issue ---------------------------------------------------------------------------


def test_the_hostile_files_are_what_the_issue_says() -> None:
    mono = constant_flac(4 * 3600, 16000, 1)
    eight = constant_flac(4 * 3600, 48000, 8)
    assert 45_000 < len(mono) < 55_000  # "a 50 KB FLAC ... decodes to 4 hours"
    assert 370_000 < len(eight) < 385_000  # "a 378 KB one with 8 channels at 48 kHz"
    for data, rate, channels in ((mono, 16000, 1), (eight, 48000, 8)):
        with soundfile.SoundFile(io.BytesIO(data)) as f:  # valid FLAC that libFLAC decodes
            assert (f.samplerate, f.channels) == (rate, channels)
            assert f.frames / rate > 4 * 3600 - 5
            first = f.read(70_000, dtype="float32", always_2d=True)
            assert first.shape == (70_000, channels) and np.all(first == first[0, 0])


@pytest.mark.parametrize(
    ("seconds", "rate", "channels", "message"),
    [
        (4 * 3600, 16000, 1, "its FLAC header declares 230,355,525 samples from 50,591 bytes (4,553.3 per byte"),
        (4 * 3600, 48000, 8, "its FLAC header declares 5,529,581,160 samples from 377,558 bytes (14,645.6 per byte"),
    ],
    ids=["50KB-4h-mono", "378KB-8ch-48k"],
)
def test_a_flac_bomb_is_refused_from_its_header_before_decoding(
    seconds: int, rate: int, channels: int, message: str
) -> None:
    data = constant_flac(seconds, rate, channels)
    with measured() as cost, pytest.raises(SamplesPerByteError) as caught:
        prepare(data, submitted(channels), PreprocessSettings())
    assert str(caught.value) == (
        f"audio decodes to more than 1,000 samples per encoded byte: {message}; "
        "limit LISTENPOST_PREPROCESS__MAX_SAMPLES_PER_BYTE=1000)"
    )
    assert caught.value.stage == "validate" and not caught.value.retryable
    assert cost["seconds"] < 1.0 and cost["peak_bytes"] < 8 * 1024 * 1024  # nothing decoded


def test_a_flac_bomb_without_a_declared_length_stops_while_decoding() -> None:
    """STREAMINFO's total may be 0 (unknown) or a lie: the decoded samples are counted as they come."""
    data = constant_flac(4 * 3600, 16000, 1, declared_frames=0)
    with measured() as cost, pytest.raises(SamplesPerByteError) as caught:
        prepare(data, submitted(), PreprocessSettings())
    assert str(caught.value) == (
        "audio decodes to more than 1,000 samples per encoded byte: decoding stopped at 3,162.1 s, after "
        "50,593,020 samples from 50,591 bytes (1,000.0 per byte; limit LISTENPOST_PREPROCESS__MAX_SAMPLES_PER_BYTE=1000)"
    )
    # Stopped at 1,000 x 50,591 samples (one 65,535-frame block past it): a fifth of the full decode.
    assert cost["peak_bytes"] < 0.25 * FULL_4H_16K_MONO
    assert cost["seconds"] < 10


def test_a_header_that_understates_the_length_decodes_no_more_than_it_declares() -> None:
    data = constant_flac(4 * 3600, 16000, 1, value=8000, declared_frames=16000 * 3)
    # A loud constant: not silent, but no speech either; libsndfile stops where the header says.
    with measured() as cost:
        prepared = prepare(data, submitted(), PreprocessSettings())
    assert prepared.facts.duration_s == 3.0 and cost["peak_bytes"] < 8 * 1024 * 1024


def test_channel_seconds_count_the_kept_channels_while_decoding() -> None:
    """Eight kept channels cost eight times one: the 8-channel bomb with a length it hides is stopped at
    max_channel_seconds / 8 of audio, while the same file down-mixed to one channel decodes further."""
    data = constant_flac(60, 48000, 8, declared_frames=0)
    settings = PreprocessSettings(max_channel_seconds=80, max_samples_per_byte=1e9)
    with measured() as cost, pytest.raises(ChannelSecondsError) as caught:
        prepare(data, submitted(8), settings)
    assert str(caught.value) == (
        "audio is over the limit of 80 channel-seconds: 8 kept channel(s) x 10.9 s = 87 (decoding stopped there; "
        "limit LISTENPOST_PREPROCESS__MAX_CHANNEL_SECONDS=80)"
    )
    assert caught.value.stage == "validate"
    assert cost["peak_bytes"] < 30 * 1024 * 1024  # 60 s x 8 channels at 16 kHz would be 31 MB, 48 kHz 92 MB
    assert prepare(data, submitted(), settings).facts.duration_s > 58  # a mix keeps one: 59 channel-seconds


def test_channel_seconds_from_the_header_before_decoding() -> None:
    stereo = call([(0, 0.5, 3.0), (1, 4.0, 7.0)], 40.0, rate=8000).samples
    data = sndfile_bytes(stereo, 8000)
    settings = PreprocessSettings(max_channel_seconds=60)
    with pytest.raises(ChannelSecondsError) as caught:
        prepare(data, submitted(2), settings)
    assert str(caught.value) == (
        "audio is over the limit of 60 channel-seconds: 2 kept channel(s) x 40.0 s = 80 (its header's length; "
        "limit LISTENPOST_PREPROCESS__MAX_CHANNEL_SECONDS=60)"
    )
    assert prepare(data, submitted(), settings).facts.duration_s == 40.0  # down-mixed: 40 channel-seconds


# --- real recordings still pass ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: av_bytes(np.stack([speech(20, 48000, seed=1), speech(20, 48000, seed=2)], 1), 48000, "opus",
                         bit_rate=6000),  # ~140 samples per byte, the most of any real codec measured
        lambda: sndfile_bytes(call([(0, 1, 4), (1, 10, 13)], 30, rate=8000).samples, 8000, "FLAC"),  # zero gaps
        lambda: sndfile_bytes(speech(20, 8000), 8000, "WAV", "ULAW"),
        lambda: av_bytes(speech(20, 16000), 16000, "mp3", bit_rate=8000),
    ],
    ids=["opus-6k-stereo-48k", "flac-call-digital-silence", "wav-mulaw-8k", "mp3-8k"],
)
def test_real_recordings_pass_the_default_limits(make: object) -> None:
    data = make()  # type: ignore[operator]
    prepared = prepare(data, submitted(2 if b"OpusHead" in data[:64] or data[:4] == b"fLaC" else 0),
                       PreprocessSettings())
    assert prepared.windows and prepared.facts.duration_s >= 19.9


# --- the memory budget ------------------------------------------------------------------------------


def test_a_recording_larger_than_the_whole_budget_is_refused_at_once() -> None:
    data = sndfile_bytes(speech(10, 16000), 16000)  # 320,044 bytes + 10 s x 64,000 B decoded
    with measured() as cost, pytest.raises(PrepareMemoryError) as caught:
        prepare(data, submitted(), PreprocessSettings(max_prepare_memory_bytes=500_000))
    assert str(caught.value) == (
        "audio would take 1 MB to prepare (1 kept channel(s) x 10.0 s at 16 kHz float32, plus 320,044 encoded "
        "bytes), more than this replica's budget of 0 MB (LISTENPOST_PREPROCESS__MAX_PREPARE_MEMORY_BYTES=500000)"
    )
    assert caught.value.stage == "validate" and cost["peak_bytes"] < 2 * 1024 * 1024


def test_an_undeclared_length_over_the_budget_stops_while_decoding() -> None:
    data = av_bytes(speech(30, 16000), 16000, "opus")  # Ogg: an estimate, never a declaration
    with pytest.raises(PrepareMemoryError, match=r"more than this replica's budget .*; decoding stopped at \d+\.\d s$"):
        prepare(data, submitted(), PreprocessSettings(max_prepare_memory_bytes=1_000_000))


def test_growing_past_a_projection_when_the_budget_is_busy_is_retried_later() -> None:
    data = constant_flac(120, 16000, 1, declared_frames=0)  # no length, no estimate: the limits' bound
    budget = MemoryBudget(10_000_000)
    mine = budget.try_reserve(1_000_000)  # the reservation a gate would have made, too small for the audio
    assert mine is not None and budget.try_reserve(9_000_000) is not None  # another prepare holds the rest
    with pytest.raises(PrepareMemoryBusyError, match="has no room for the rest now") as caught:
        prepare(data, submitted(), PreprocessSettings(max_prepare_memory_bytes=10_000_000), reservation=mine)
    assert caught.value.retryable and mine.bytes <= 1_000_000


# --- through the Ingress's handling: a dead letter at stage validate --------------------------------


async def test_a_bomb_becomes_a_dead_letter_at_stage_validate() -> None:
    data = constant_flac(4 * 3600, 48000, 8)
    sub = submitted(8)
    event = new_event("com.listenpost.audio.submitted", "urn:test", sub.model_dump(mode="json"))

    async def real_prepare(s: AudioSubmitted) -> object:
        return await PrepareGate(PreprocessSettings()).prepare(data, s)

    async def never(*_: object) -> object:
        raise AssertionError("a refused recording is never captioned")

    with pytest.raises(Poison) as caught:
        await caption_submitted(event, sub, prepare=real_prepare, caption=never, model="m", engine="e", source="s")  # type: ignore[arg-type]
    assert caught.value.stage == "validate"
    assert "LISTENPOST_PREPROCESS__MAX_SAMPLES_PER_BYTE=1000" in caught.value.reason


async def test_a_busy_budget_is_retried_not_dead_lettered() -> None:
    async def busy(_: AudioSubmitted) -> object:
        raise PrepareMemoryBusyError("audio decodes to more than its projection ...")

    sub = submitted()
    event = new_event("com.listenpost.audio.submitted", "urn:test", sub.model_dump(mode="json"))
    with pytest.raises(RetryLater, match="^validate: audio decodes to more than its projection"):
        await caption_submitted(event, sub, prepare=busy, caption=busy, model="m", engine="e", source="s")  # type: ignore[arg-type]


# --- the gate: slots and the budget together --------------------------------------------------------


async def test_the_gate_waits_for_memory_and_bounds_concurrent_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    data = sndfile_bytes(speech(4, 16000), 16000)  # 128,044 bytes + 256,000 decoded = 384,044 reserved
    settings = PreprocessSettings(max_concurrent_prepares=2, max_prepare_memory_bytes=800_000)  # room for two
    gate = PrepareGate(settings)
    active, most, most_held = 0, 0, 0
    lock = threading.Lock()
    real = gate_module.prepare

    def counting(*args: object, **kwargs: object) -> object:
        nonlocal active, most, most_held
        with lock:
            active += 1
            most = max(most, active)
            most_held = max(most_held, gate.budget.used)
        try:
            time.sleep(0.05)  # overlap the calls
            return real(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            with lock:
                active -= 1

    monkeypatch.setattr(gate_module, "prepare", counting)
    results = await asyncio.gather(*(gate.prepare(data, submitted()) for _ in range(5)))
    assert all(r.facts.duration_s == 4.0 for r in results)
    assert most == 2  # never more than two decoding at once
    assert most_held <= 800_000 and gate.waited >= 3  # the others waited for room, none was refused
    assert gate.budget.used == 0  # every reservation returned
