"""Acoustics against known truth: a two-party call with scripted talk, silence and overtalk; VAD, loudness, SNR."""

from __future__ import annotations

import numpy as np
import pyloudnorm
import pytest
import soxr

from services.events.models import Acoustics, AudioRef, AudioSubmitted, ChannelRole
from services.preprocess.acoustics import speech_mask
from services.preprocess.loudness import integrated_lufs, subblock_power
from services.preprocess.pipeline import PreparedAudio, prepare
from services.preprocess.vad import FRAME_S, SpeechDetector, VadParams, default_detector, model_path
from services.settings import PreprocessSettings
from tests.audio_factory import Call, alarm, call, music, sndfile_bytes, speech, tone

# Agent on channel 0, customer on channel 1, 60 s. Overtalk 7.0-8.0 and 20.0-21.5 (2.5 s, two episodes);
# nobody talks 12.5-13.0, 27.0-30.0, 44.0-52.0 and at both ends (14 s, the longest 8 s); dead air
# (silence of 2 s or more) 27-30, 44-52 and 58-60 (13 s).
SCRIPT = [
    (0, 0.5, 8.0), (0, 13.0, 21.5), (0, 30.0, 38.0), (0, 52.0, 58.0),
    (1, 7.0, 12.5), (1, 20.0, 27.0), (1, 38.5, 44.0),
]  # fmt: skip
# Silero marks speech onsets and ends to within about a frame or two (32 ms), pads each segment by
# 30 ms and hears a syllable's decay: allow 0.2 s per turn edge, summed over a channel's turns.
EDGE_S = 0.2


@pytest.fixture(scope="module")
def known_call() -> tuple[Call, PreparedAudio]:
    """The scripted call as a PBX records it: 8 kHz mu-law stereo with -70 dBFS line noise."""
    truth = call(SCRIPT, 60.0, rate=8000, noise_dbfs=-70, seed=0)
    data = sndfile_bytes(truth.samples, 8000, "WAV", "ULAW")
    roles = [ChannelRole(index=0, role="agent"), ChannelRole(index=1, role="customer")]
    sub = AudioSubmitted(audio=AudioRef(data_base64="AA==", format="wav"), channels=roles)
    return truth, prepare(data, sub, PreprocessSettings())


def test_talk_time_per_role_matches_the_script(known_call: tuple[Call, PreparedAudio]) -> None:
    truth, prepared = known_call
    a = prepared.acoustics
    assert a.talk_time_s["agent"] == pytest.approx(truth.talk_s(0), abs=EDGE_S * 4)  # 30 s in 4 turns
    assert a.talk_time_s["customer"] == pytest.approx(truth.talk_s(1), abs=EDGE_S * 3)  # 18 s in 3 turns
    agent, customer = a.channels
    assert (agent.role, agent.channel, customer.role, customer.channel) == ("agent", 0, "customer", 1)
    assert (agent.speech_segments, customer.speech_segments) == (4, 3)
    assert agent.speech_ratio == pytest.approx(30 / 60, abs=0.02)
    assert a.speech_ratio == pytest.approx(46 / 60, abs=0.02)


def test_overtalk_matches_the_script(known_call: tuple[Call, PreparedAudio]) -> None:
    truth, prepared = known_call
    a = prepared.acoustics
    overtalk = sum(end - start for start, end in truth.overtalk())
    assert overtalk == 2.5
    assert a.overtalk_s == pytest.approx(overtalk, abs=EDGE_S * 4)  # 2 episodes, 4 edges
    assert a.overtalk_ratio == pytest.approx(overtalk / 60, abs=EDGE_S * 4 / 60)
    assert a.overtalk_count == 2


def test_silence_non_talk_and_dead_air_match_the_script(known_call: tuple[Call, PreparedAudio]) -> None:
    _, prepared = known_call
    a = prepared.acoustics
    assert a.duration_s == pytest.approx(60.0)
    assert a.non_talk_s == pytest.approx(14.0, abs=EDGE_S * 8)
    assert a.longest_non_talk_s == pytest.approx(8.0, abs=EDGE_S * 2)
    # Energy-based: the line noise (-70 dBFS) is below the -45 dBFS floor; a syllable's edges are not.
    assert a.longest_silence_s == pytest.approx(8.0, abs=0.1)
    assert a.dead_air_s == pytest.approx(13.0, abs=0.3)
    # Between syllables the synthetic voices pause too: silence is a little more than the 14 s scripted.
    assert 14 / 60 <= a.silence_ratio <= 14 / 60 + 0.05


def test_levels_loudness_and_noise(known_call: tuple[Call, PreparedAudio]) -> None:
    truth, prepared = known_call
    a = prepared.acoustics
    assert a.peak_dbfs == pytest.approx(20 * np.log10(0.3), abs=0.3)  # the voices peak at 0.3 (mu-law steps)
    assert a.clipping_ratio == 0.0
    for channel, c in enumerate(a.channels):
        assert c.noise_dbfs == pytest.approx(-70, abs=3)  # the line noise, heard between turns
        voice = truth.samples[:, channel]
        mine = [t for t in truth.turns if t.channel == channel]
        turns = np.concatenate([voice[int(t.start * 8000) : int(t.end * 8000)] for t in mine])
        expected_snr = 10 * np.log10(np.mean(turns.astype(np.float64) ** 2) / 10 ** (-70 / 10))
        assert c.snr_db == pytest.approx(expected_snr, abs=3)
        reference = pyloudnorm.Meter(16000).integrated_loudness(soxr.resample(voice, 8000, 16000).astype(np.float64))
        assert c.loudness_lufs == pytest.approx(reference, abs=0.5)
    assert a.snr_db == min(c.snr_db for c in a.channels if c.snr_db is not None)
    both = soxr.resample(truth.samples, 8000, 16000).astype(np.float64)  # BS.1770 sums the channels' power
    assert a.loudness_lufs == pytest.approx(pyloudnorm.Meter(16000).integrated_loudness(both), abs=0.5)


def test_windows_keep_the_parties_apart(known_call: tuple[Call, PreparedAudio]) -> None:
    _, prepared = known_call
    for channel, role in ((0, "agent"), (1, "customer")):
        mine = [w for w in prepared.windows if w.channel == channel]
        assert mine and all(w.role == role for w in mine)
        assert mine[0].start == 0.0 and mine[-1].end == pytest.approx(60.0)
        assert all(w.end - w.start <= 30.0 for w in mine)
    assert [w.index for w in prepared.windows] == list(range(len(prepared.windows)))


def test_acoustics_are_usable_in_rules(known_call: tuple[Call, PreparedAudio]) -> None:
    """What the rules engine sees: plain JSON, with the field names existing rules use."""
    data = known_call[1].acoustics.model_dump(mode="json")
    for name in ("duration_s", "silence_ratio", "longest_silence_s", "dead_air_s", "peak_dbfs", "speech_ratio",
                 "talk_time_s", "overtalk_ratio", "overtalk_count", "loudness_lufs", "clipping_ratio", "snr_db"):
        assert name in data  # fmt: skip
    assert data["channels"][0]["role"] == "agent" and isinstance(data["talk_time_s"]["customer"], float)
    for name, field in {**Acoustics.model_fields}.items():
        assert field.description or name == "channels" or name == "duration_s", f"{name} is undocumented"


# --- the parts, one at a time ----------------------------------------------------------------------


def test_synthetic_speech_is_speech_and_sounds_are_not() -> None:
    detector = default_detector()
    for samples in (speech(6, 16000, seed=3), speech(6, 16000, seed=4, f0=210)):
        assert (detector.probabilities(samples) > 0.5).mean() > 0.9
    noise = (0.05 * np.random.default_rng(0).standard_normal(96000)).astype(np.float32)
    for sound in (tone(6, 16000), alarm(6, 16000), music(6, 16000), noise):
        assert (detector.probabilities(sound) > 0.5).mean() == 0.0


def test_vad_matches_silero_own_runner() -> None:
    """Our torch-free runner gives Silero's own probabilities and, gated, the same segments."""
    silero_vad = pytest.importorskip("silero_vad")
    samples = np.concatenate([np.zeros(16000, np.float32), speech(5, 16000, seed=1), np.zeros(24000, np.float32),
                              speech(4, 16000, seed=2, f0=200), np.zeros(8000, np.float32)])  # fmt: skip
    theirs = silero_vad.load_silero_vad(sequence=True)
    ours = SpeechDetector(model_path())
    np.testing.assert_allclose(ours.probabilities(samples), theirs.audio_forward(samples, 16000), atol=1e-5)
    stamps = silero_vad.get_speech_timestamps_sequence(samples, theirs, return_seconds=True)
    expected = [(t["start"], t["end"]) for t in stamps]
    got = ours.segments(samples, VadParams(gate_dbfs=None))
    assert got.reshape(-1).tolist() == pytest.approx(np.ravel(expected).tolist(), abs=0.07)  # silero rounds to 0.1 s
    gated = ours.segments(samples, VadParams())
    assert gated.reshape(-1).tolist() == pytest.approx(got.reshape(-1).tolist(), abs=0.3)


def test_gate_skips_quiet_stretches_only() -> None:
    samples = np.concatenate([np.zeros(16000 * 10, np.float32), speech(3, 16000), np.zeros(16000 * 10, np.float32)])
    from services.preprocess.vad import active_stretches

    ((first, stop),) = active_stretches(samples, -60.0)
    assert first * FRAME_S == pytest.approx(10 - 0.5, abs=0.05) and stop * FRAME_S == pytest.approx(13 + 0.5, abs=0.1)
    assert active_stretches(np.zeros(16000, np.float32), -60.0) == []


def test_speech_mask_covers_segments() -> None:
    mask = speech_mask(np.array([[0.1, 0.3], [0.5, 0.52]]), 40)
    assert np.flatnonzero(mask).tolist() == [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 25]


@pytest.mark.parametrize("rate", [8000, 16000, 44100])
def test_loudness_matches_pyloudnorm(rate: int) -> None:
    rng = np.random.default_rng(rate)
    left = np.concatenate([speech(8, rate, seed=1), np.zeros(rate * 3, np.float32), 0.3 * speech(5, rate, seed=2)])
    right = (0.01 * rng.standard_normal(left.shape[0])).astype(np.float32)
    meter = pyloudnorm.Meter(rate)
    for channels in ([left], [left, right]):
        expected = meter.integrated_loudness(np.stack(channels, axis=1).astype(np.float64))
        assert integrated_lufs([subblock_power(c, rate) for c in channels]) == pytest.approx(expected, abs=0.05)
    assert integrated_lufs([subblock_power(np.zeros(rate, np.float32), rate)]) == -70.0
    assert integrated_lufs([subblock_power(left[: rate // 4], rate)]) == -70.0  # shorter than one 400 ms block


def test_loudness_of_a_full_scale_sine() -> None:
    # BS.1770: a 0 dBFS 1 kHz sine in one channel reads -3.01 LUFS.
    samples = tone(5, 48000, freq=1000, level=1.0)
    assert integrated_lufs([subblock_power(samples, 48000)]) == pytest.approx(-3.01, abs=0.05)


@pytest.mark.parametrize("noise_dbfs", [-60.0, -40.0])
def test_snr_estimate_within_3_db(noise_dbfs: float) -> None:
    truth = call([(0, 1.0, 9.0), (0, 12.0, 19.0)], 20.0, rate=16000, channels=1, noise_dbfs=noise_dbfs, seed=5)
    voice = call([(0, 1.0, 9.0), (0, 12.0, 19.0)], 20.0, rate=16000, channels=1, seed=5).samples[:, 0]
    talk = np.concatenate([voice[16000:144000], voice[192000:304000]]).astype(np.float64)
    expected = 10 * np.log10(np.mean(talk**2) / 10 ** (noise_dbfs / 10))
    sub = AudioSubmitted(audio=AudioRef(data_base64="AA=="))
    a = prepare(sndfile_bytes(truth.samples, 16000, "WAV", "FLOAT"), sub, PreprocessSettings()).acoustics
    assert a.snr_db == pytest.approx(expected, abs=3)
    assert a.channels[0].noise_dbfs == pytest.approx(noise_dbfs, abs=2)


def test_snr_is_null_without_speech_and_capped_on_digital_silence() -> None:
    sub = AudioSubmitted(audio=AudioRef(data_base64="AA=="))
    assert prepare(sndfile_bytes(alarm(5, 16000), 16000), sub, PreprocessSettings()).acoustics.snr_db is None
    clean = np.concatenate([np.zeros(16000, np.float32), speech(4, 16000), np.zeros(16000, np.float32)])
    assert prepare(sndfile_bytes(clean, 16000, "WAV", "FLOAT"), sub, PreprocessSettings()).acoustics.snr_db == 100.0


def test_clipping_ratio_counts_samples_at_full_scale() -> None:
    rate = 16000
    loud = np.clip(speech(4, rate) * 8, -1.0, 1.0)  # a hot microphone, hard-clipped
    expected = float(np.mean(np.abs(loud) >= 0.98))
    quiet = speech(4, rate, seed=1)
    stereo = np.stack([loud, quiet], axis=1)
    roles = [ChannelRole(index=0, role="agent"), ChannelRole(index=1, role="customer")]
    sub = AudioSubmitted(audio=AudioRef(data_base64="AA=="), channels=roles)
    a = prepare(sndfile_bytes(stereo, rate, "WAV", "PCM_16"), sub, PreprocessSettings()).acoustics
    assert expected > 0.01
    assert a.channels[0].clipping_ratio == pytest.approx(expected, rel=0.01)
    assert a.channels[1].clipping_ratio == 0.0
    assert a.clipping_ratio == a.channels[0].clipping_ratio
    assert a.channels[0].peak_dbfs == pytest.approx(0.0, abs=0.01)
