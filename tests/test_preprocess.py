"""Preprocessing core: windows, channels, limits and refusals of the pure pipeline. No NATS, no Ray.

Formats are in test_preprocess_formats.py, acoustics against a known call in
test_preprocess_acoustics.py, sources in test_preprocess_sources.py.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from services.events.models import AudioRef, AudioSubmitted, ChannelRole
from services.preprocess.channels import MODEL_RATE
from services.preprocess.errors import (
    AllSilentError,
    AudioTooLongError,
    ChannelRoleError,
    PreprocessError,
    SampleRateError,
    TooManyChannelsError,
)
from services.preprocess.pipeline import prepare
from services.preprocess.windows import plan_speech_windows, plan_windows
from services.settings import PreprocessSettings
from tests.audio_factory import alarm, av_bytes, music, sndfile_bytes, speech, tone


def submitted(*roles: str, fmt: str | None = None) -> AudioSubmitted:
    return AudioSubmitted(
        audio=AudioRef(data_base64="AA==", format=fmt),
        channels=[ChannelRole(index=i, role=r) for i, r in enumerate(roles)],
    )


# --- windows ---------------------------------------------------------------------------------------


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
def test_time_windows_at_the_edges(duration: float, expected: list[tuple[float, float]]) -> None:
    spans = plan_windows(duration, 30.0)
    assert [(s.start, s.end) for s in spans] == expected
    assert all(s.duration_s <= 30.0 for s in spans)


def test_no_windows_for_nothing() -> None:
    assert plan_windows(0.0, 30.0) == []
    assert plan_speech_windows(0.0, np.zeros((0, 2)), np.zeros(0), 0.02, max_window_s=30, overlap_s=1,
                               min_pause_s=0.2) == []  # fmt: skip


def _plan(duration: float, speech: list[tuple[float, float]], **kw: float) -> list[tuple[float, float, str]]:
    levels = np.full(int(duration / 0.02), -20.0)
    options = {"max_window_s": 30.0, "overlap_s": 1.0, "min_pause_s": 0.2} | kw
    spans = plan_speech_windows(duration, np.array(speech, float).reshape(-1, 2), levels, 0.02, **options)
    return [(s.start, s.end, s.cut) for s in spans]


def test_cuts_fall_in_pauses_and_windows_stay_few() -> None:
    # Speech with pauses at 24.0-24.5 (short) and 26-28 (long) before the 30 s limit.
    speech = [(0.5, 24.0), (24.5, 26.0), (28.0, 55.0), (56.0, 78.0), (79.0, 100.0)]
    assert _plan(100.0, speech) == [
        (0.0, 27.0, "pause"),  # the middle of the longest pause before the limit
        (27.0, 55.5, "pause"),  # the only pause in reach
        (55.5, 78.5, "pause"),  # four windows: the fewest that 100 s allows
        (78.5, 100.0, "end"),
    ]  # cuts in pauses need no overlap


def test_last_two_windows_share_the_rest() -> None:
    # 40 s: not 30 + 10 but two near 20, cut in the pause near the middle.
    speech = [(0.0, 19.0), (19.6, 40.0)]
    assert _plan(40.0, speech) == [(0.0, 19.3, "pause"), (19.3, 40.0, "end")]


def test_a_long_silence_does_not_push_a_cut_into_speech() -> None:
    # A greedy cut near the limit (in the silence, at ~25 s) leaves 45-70 s of speech straddling the
    # next limit; looking ahead, every cut lands in a pause.
    spans = _plan(75.0, [(0.5, 20.0), (45.0, 70.0)])
    assert all(cut in ("pause", "end") for _, _, cut in spans)
    assert any(start <= 45.0 and end >= 70.0 for start, end, _ in spans)  # the second turn is whole
    assert all(end - start <= 30.0 for start, end, _ in spans)


def test_continuous_speech_is_cut_at_the_quietest_point_with_overlap() -> None:
    levels = np.full(int(70 / 0.02), -20.0)
    levels[int(27.0 / 0.02)] = -40.0  # one quiet frame near the limit: a breath
    spans = plan_speech_windows(70.0, np.array([[0.0, 70.0]]), levels, 0.02, max_window_s=30.0, overlap_s=1.0,
                                min_pause_s=0.2)  # fmt: skip
    first, second = spans[0], spans[1]
    assert first.cut == "quiet" and first.end == pytest.approx(27.01)
    assert second.start == pytest.approx(first.end - 1.0)  # the overlap hears a split word whole
    assert all(s.duration_s <= 30.0 + 1e-9 for s in spans) and spans[-1].end == 70.0


def test_audio_without_speech_is_windowed_by_time() -> None:
    data = sndfile_bytes(np.concatenate([alarm(50, 16000), music(45, 16000)]), 16000)
    prepared = prepare(data, submitted(), PreprocessSettings())
    assert prepared.acoustics.speech_ratio == 0.0
    assert [(w.start, w.end) for w in prepared.windows] == [(0.0, 23.75), (23.75, 47.5), (47.5, 71.25), (71.25, 95.0)]


def test_speech_windows_in_the_pipeline_cut_in_pauses() -> None:
    rate = 16000
    parts, t, pauses = [], 0.0, []
    for i, length in enumerate([12.0, 14.0, 9.0, 16.0, 11.0]):  # 62 s of talk, 1.2 s pauses between
        parts.append(speech(length, rate, seed=i))
        t += length
        parts.append(np.zeros(int(1.2 * rate), np.float32))
        pauses.append((t, t + 1.2))
        t += 1.2
    data = sndfile_bytes(np.concatenate(parts), rate)
    windows = prepare(data, submitted(), PreprocessSettings()).windows
    assert len(windows) >= 3
    assert all(w.end - w.start <= 30.0 for w in windows)
    for w in windows[:-1]:
        assert any(a <= w.end <= b for a, b in pauses), f"cut at {w.end} is not in a pause {pauses}"
    assert all(a.end == b.start for a, b in itertools.pairwise(windows))
    assert all(w.samples.shape[0] == pytest.approx((w.end - w.start) * MODEL_RATE, abs=2) for w in windows)


def test_window_length_is_a_setting() -> None:
    data = sndfile_bytes(speech(25, 16000), 16000)
    windows = prepare(data, submitted(), PreprocessSettings(window_s=10.0)).windows
    assert len(windows) >= 3 and all(w.end - w.start <= 10.0 for w in windows)


def test_short_clip_is_padded_to_the_minimum_window() -> None:
    prepared = prepare(sndfile_bytes(tone(0.1, 16000), 16000), submitted(), PreprocessSettings(min_window_s=0.5))
    (window,) = prepared.windows
    assert window.end == pytest.approx(0.1) and window.samples.shape[0] == 8000


# --- channels --------------------------------------------------------------------------------------


def test_roles_keep_channels_apart_and_mix_otherwise() -> None:
    stereo = np.stack([speech(31, 8000), np.zeros(31 * 8000, np.float32)], axis=1)
    data = sndfile_bytes(stereo, 8000, subtype="ULAW")
    split = prepare(data, submitted("agent", "customer"), PreprocessSettings())
    assert {(w.channel, w.role) for w in split.windows} == {(0, "agent"), (1, "customer")}
    assert [c.role for c in split.acoustics.channels] == ["agent", "customer"]
    assert split.acoustics.channels[1].silence_ratio == 1.0 and split.acoustics.channels[1].talk_time_s == 0.0
    assert split.acoustics.talk_time_s["agent"] > 25 and split.acoustics.talk_time_s["customer"] == 0.0
    mixed = prepare(data, submitted(), PreprocessSettings())
    assert {(w.channel, w.role) for w in mixed.windows} == {(None, None)}
    assert list(mixed.acoustics.talk_time_s) == ["all"]
    forced = prepare(data, submitted("agent", "customer"), PreprocessSettings(channel_mode="mix"))
    assert {w.channel for w in forced.windows} == {None}


def test_channels_without_a_role_are_left_out_when_splitting() -> None:
    three = np.stack([speech(3, 8000, seed=i) for i in range(3)], axis=1)
    data = sndfile_bytes(three, 8000)
    sub = AudioSubmitted(audio=AudioRef(data_base64="AA=="), channels=[ChannelRole(index=2, role="customer")])
    prepared = prepare(data, sub, PreprocessSettings())
    assert {(w.channel, w.role) for w in prepared.windows} == {(2, "customer")}
    assert prepared.facts.channels == 3


def test_role_for_missing_channel_is_rejected() -> None:
    data = sndfile_bytes(speech(1, 8000), 8000)
    with pytest.raises(ChannelRoleError, match=r"channel 1 \(customer\) named, but the audio has 1 channel"):
        prepare(data, submitted("agent", "customer"), PreprocessSettings())


# --- limits and refusals ---------------------------------------------------------------------------


def test_too_long_audio_from_its_header() -> None:
    data = sndfile_bytes(speech(3, 8000), 8000)
    with pytest.raises(AudioTooLongError, match="audio is 3.0 s long, over the limit of 2 s") as caught:
        prepare(data, submitted(), PreprocessSettings(max_duration_s=2))
    assert caught.value.stage == "validate"


def test_too_long_audio_without_a_declared_length_stops_decoding() -> None:
    data = av_bytes(speech(6, 16000), 16000, "opus")  # Ogg declares no duration: caught while decoding
    with pytest.raises(AudioTooLongError, match=r"longer than the limit of 2 s \(decoding stopped at"):
        prepare(data, submitted(), PreprocessSettings(max_duration_s=2))


def test_too_many_channels() -> None:
    data = sndfile_bytes(np.zeros((800, 6), np.float32) + 0.1, 8000)
    with pytest.raises(TooManyChannelsError, match="audio has 6 channels, over the limit of 4"):
        prepare(data, submitted(), PreprocessSettings(max_channels=4))


def test_sample_rate_out_of_range() -> None:
    data = sndfile_bytes(tone(1, 96000), 96000)
    with pytest.raises(SampleRateError, match="audio sample rate 96000 Hz is outside the accepted 4000-48000 Hz"):
        prepare(data, submitted(), PreprocessSettings(max_sample_rate=48000))


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        (np.zeros(16000 * 3, np.float32), "silent throughout: its loudest 20 ms is -inf dBFS"),
        (np.full(16000 * 3, 1e-4, np.float32), "loudest 20 ms is -80.0 dBFS"),  # line hum far below speech
    ],
    ids=["digital-silence", "hiss"],
)
def test_all_silent_audio_is_refused(samples: np.ndarray, message: str) -> None:
    with pytest.raises(AllSilentError, match=message) as caught:
        prepare(sndfile_bytes(samples, 16000, subtype="FLOAT"), submitted(), PreprocessSettings())
    assert caught.value.stage == "validate"


def test_every_error_is_a_preprocess_error_with_a_stage() -> None:
    import services.preprocess.errors as errors

    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, Exception)]
    assert all(issubclass(c, PreprocessError) for c in classes)
    assert {c.stage for c in classes} == {"fetch", "decode-audio", "validate", "preprocess"}
