"""Preprocessing core: windows, decoding, channels, acoustics and sources. No NATS, no Ray."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest

from services.events.models import AudioRef, AudioSubmitted, ChannelRole
from services.preprocess.channels import MODEL_RATE, split_channels
from services.preprocess.decode import decode_audio
from services.preprocess.errors import (
    AudioDecodeError,
    AudioTooLongError,
    ChannelRoleError,
    EmptyAudioError,
    InlineAudioError,
    PathOutsideRootsError,
    SourceNotFoundError,
    SourceTooLargeError,
    UnsupportedSourceError,
)
from services.preprocess.pipeline import prepare
from services.preprocess.sources import fetch_audio, resolve_local_path
from services.preprocess.windows import plan_windows
from services.settings import PreprocessSettings
from tests.conftest import tone, wav_bytes


@pytest.mark.parametrize(
    ("duration", "expected"),
    [
        (0.4, [(0.0, 0.4)]),
        (12.0, [(0.0, 12.0)]),
        (30.0, [(0.0, 30.0)]),
        (30.5, [(0.0, 15.25), (15.25, 30.5)]),
        (95.0, [(0.0, 23.75), (23.75, 47.5), (47.5, 71.25), (71.25, 95.0)]),
    ],
)
def test_windows_at_the_edges(duration: float, expected: list[tuple[float, float]]) -> None:
    spans = plan_windows(duration, 30.0)
    assert [(s.start, s.end) for s in spans] == expected
    assert all(s.duration_s <= 30.0 for s in spans)


def test_no_windows_for_nothing() -> None:
    assert plan_windows(0.0, 30.0) == []


def submitted(*roles: str) -> AudioSubmitted:
    return AudioSubmitted(
        audio=AudioRef(data_base64="AA=="), channels=[ChannelRole(index=i, role=r) for i, r in enumerate(roles)]
    )


@pytest.mark.parametrize(
    ("fmt", "subtype", "rate"),
    [
        ("WAV", "PCM_16", 16000),
        ("WAV", "PCM_U8", 8000),
        ("WAV", "PCM_24", 48000),
        ("WAV", "PCM_32", 22050),
        ("WAV", "FLOAT", 44100),
        ("WAV", "ULAW", 8000),
        ("WAV", "ALAW", 8000),
        ("FLAC", "PCM_16", 44100),
    ],
)
def test_decodes_and_resamples_to_16k(fmt: str, subtype: str, rate: int) -> None:
    data = wav_bytes(tone(2.0, rate, freq=440), rate, subtype=subtype, fmt=fmt)
    prepared = prepare(data, submitted(), PreprocessSettings())
    assert prepared.facts.sample_rate == rate and prepared.facts.duration_s == pytest.approx(2.0, abs=0.01)
    (window,) = prepared.windows
    assert window.samples.dtype == np.float32
    assert window.samples.shape[0] == pytest.approx(2 * MODEL_RATE, abs=2)
    # A 440 Hz tone stays a 440 Hz tone after resampling.
    spectrum = np.abs(np.fft.rfft(window.samples))
    assert np.fft.rfftfreq(window.samples.shape[0], 1 / MODEL_RATE)[spectrum.argmax()] == pytest.approx(440, abs=2)


def test_roles_keep_channels_apart_and_mix_otherwise() -> None:
    stereo = np.stack([tone(31, 8000, 300), np.zeros(31 * 8000, np.float32)], axis=1)
    data = wav_bytes(stereo, 8000, subtype="ULAW")
    split = prepare(data, submitted("agent", "customer"), PreprocessSettings())
    assert [(w.channel, w.role) for w in split.windows] == [(0, "agent"), (0, "agent"), (1, "customer"), (1, "customer")]
    assert [c.role for c in split.acoustics.channels] == ["agent", "customer"]
    assert split.acoustics.channels[1].silence_ratio == 1.0
    assert split.acoustics.channels[0].silence_ratio == 0.0
    mixed = prepare(data, submitted(), PreprocessSettings())
    assert [(w.channel, w.role) for w in mixed.windows] == [(None, None), (None, None)]
    forced = prepare(data, submitted("agent", "customer"), PreprocessSettings(channel_mode="mix"))
    assert len(forced.windows) == 2


def test_role_for_missing_channel_is_rejected() -> None:
    data = wav_bytes(tone(1, 8000), 8000)
    with pytest.raises(ChannelRoleError, match=r"channel 1 \(customer\) named, but the audio has 1 channel"):
        prepare(data, submitted("agent", "customer"), PreprocessSettings())


def test_acoustics_of_a_call_with_known_silence() -> None:
    rate = 16000
    samples = np.concatenate([tone(3, rate), np.zeros(7 * rate, np.float32), tone(2, rate)])
    acoustics = prepare(wav_bytes(samples, rate), submitted(), PreprocessSettings()).acoustics
    assert acoustics.duration_s == pytest.approx(12.0)
    assert acoustics.longest_silence_s == pytest.approx(7.0, abs=0.04)
    assert acoustics.dead_air_s == pytest.approx(7.0, abs=0.04)
    assert acoustics.silence_ratio == pytest.approx(7 / 12, abs=0.01)
    assert acoustics.channels[0].talk_time_s == pytest.approx(5.0, abs=0.04)
    assert acoustics.peak_dbfs == pytest.approx(20 * np.log10(0.3), abs=0.1)


def test_short_clip_is_padded_to_the_minimum_window() -> None:
    prepared = prepare(wav_bytes(tone(0.1, 16000), 16000), submitted(), PreprocessSettings(min_window_s=0.5))
    (window,) = prepared.windows
    assert window.end == pytest.approx(0.1) and window.samples.shape[0] == 8000


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"", EmptyAudioError, "audio is empty (0 bytes)"),
        (b"RIFF\x00\x00\x00\x00WAVEjunk" * 4, AudioDecodeError, "audio could not be decoded"),
        (b"ID3 definitely not audio", AudioDecodeError, "audio could not be decoded"),
    ],
)
def test_bad_audio_has_specific_errors(data: bytes, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as caught:
        decode_audio(data)
    assert message in str(caught.value)


def test_truncated_wav_is_an_error_not_a_crash() -> None:
    data = wav_bytes(tone(1, 8000), 8000)
    with pytest.raises(AudioDecodeError):
        decode_audio(data[:30])


def test_too_long_audio() -> None:
    data = wav_bytes(tone(3, 8000), 8000)
    with pytest.raises(AudioTooLongError, match="audio is 3.0 s long, over the limit of 2 s"):
        prepare(data, submitted(), PreprocessSettings(max_duration_s=2))


def test_file_uri_escaping_its_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "calls"
    root.mkdir()
    (tmp_path / "secret.wav").write_bytes(b"x")
    with pytest.raises(PathOutsideRootsError, match="is outside the allowed roots"):
        resolve_local_path((root / ".." / "secret.wav").as_uri().replace("/calls/../", "/calls/%2E%2E/"), [root])
    with pytest.raises(PathOutsideRootsError):
        resolve_local_path(str(root / ".." / "secret.wav"), [root])
    (root / "link.wav").symlink_to(tmp_path / "secret.wav")
    with pytest.raises(PathOutsideRootsError):
        resolve_local_path(str(root / "link.wav"), [root])


async def test_sources(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    path.write_bytes(b"abc")
    assert await fetch_audio(AudioRef(uri=path.as_uri()), roots=[tmp_path], max_bytes=10) == b"abc"
    assert await fetch_audio(AudioRef(uri=str(path)), roots=[tmp_path], max_bytes=10) == b"abc"
    inline = AudioRef(data_base64=base64.b64encode(b"abc").decode())
    assert await fetch_audio(inline, roots=[], max_bytes=10) == b"abc"
    with pytest.raises(SourceNotFoundError, match="audio file not found"):
        await fetch_audio(AudioRef(uri=str(tmp_path / "missing.wav")), roots=[tmp_path], max_bytes=10)
    with pytest.raises(SourceTooLargeError, match="over the limit of 2"):
        await fetch_audio(AudioRef(uri=str(path)), roots=[tmp_path], max_bytes=2)
    with pytest.raises(InlineAudioError, match="not valid base64"):
        await fetch_audio(AudioRef(data_base64="@@@"), roots=[], max_bytes=10)
    with pytest.raises(UnsupportedSourceError, match="unsupported audio URI scheme 'ftp'"):
        await fetch_audio(AudioRef(uri="ftp://host/a.wav"), roots=[tmp_path], max_bytes=10)


def test_audio_ref_needs_exactly_one_location() -> None:
    with pytest.raises(ValueError, match="exactly one of 'uri', 'object', 'data_base64' \\(got none\\)"):
        AudioRef()
    with pytest.raises(ValueError, match="got uri, data_base64"):
        AudioRef(uri="file:///a.wav", data_base64="AA==")
