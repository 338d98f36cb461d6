"""Decoding every container and codec the issue names, from files the tests make, and every way to fail."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from services.events.models import AudioRef, AudioSubmitted
from services.preprocess.channels import MODEL_RATE
from services.preprocess.decode import decode_audio
from services.preprocess.errors import (
    AudioDecodeError,
    EmptyAudioError,
    FormatMismatchError,
    InvalidSamplesError,
    PreprocessError,
    TruncatedAudioError,
    UnsupportedFormatError,
    ZeroChannelsError,
)
from services.preprocess.formats import mp3_declares_length, sniff
from services.preprocess.pipeline import prepare
from services.settings import PreprocessSettings
from tests.audio_factory import av_bytes, encode, sndfile_bytes, speech, tone, wav_with_header


def submitted(fmt: str | None = None) -> AudioSubmitted:
    return AudioSubmitted(audio=AudioRef(data_base64="AA==", format=fmt))


def voices(seconds: float, rate: int, channels: int) -> np.ndarray:
    tracks = [speech(seconds, rate, seed=c, f0=(110.0, 210.0)[c % 2]) for c in range(channels)]
    return tracks[0] if channels == 1 else np.stack(tracks, axis=1)


def rms_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(x, dtype=np.float64))))


@pytest.mark.parametrize(
    ("fmt", "rate", "channels", "container", "codec"),
    [
        ("wav", 16000, 2, "wav", "pcm_16"),
        ("flac", 44100, 2, "flac", "pcm_16"),
        ("flac", 8000, 1, "flac", "pcm_16"),
        ("vorbis", 22050, 1, "ogg", "vorbis"),
        ("vorbis", 48000, 2, "ogg", "vorbis"),
        ("opus", 48000, 2, "ogg", "opus"),
        ("opus", 16000, 1, "ogg", "opus"),
        ("mp3", 44100, 2, "mp3", "mpeg_layer_iii"),
        ("mp3", 8000, 1, "mp3", "mpeg_layer_iii"),
        ("m4a", 48000, 2, "m4a", "aac"),
        ("m4a", 16000, 1, "m4a", "aac"),
        ("webm", 48000, 1, "webm", "opus"),
        ("webm", 48000, 2, "webm", "opus"),
    ],
)
def test_decodes_every_format(fmt: str, rate: int, channels: int, container: str, codec: str) -> None:
    source = voices(3.0, rate, channels)
    prepared = prepare(encode(source, rate, fmt), submitted(), PreprocessSettings())
    facts = prepared.facts
    assert (facts.format, facts.codec, facts.channels) == (container, codec, channels)
    assert facts.sample_rate == (48000 if codec == "opus" else rate)  # Opus always decodes at 48 kHz
    # AAC adds its encoder priming (1024 samples) that this muxer does not trim.
    assert facts.duration_s == pytest.approx(3.0, abs=0.2 if fmt == "m4a" else 0.03)
    (window,) = prepared.windows
    assert window.samples.dtype == np.float32 and window.channel is None
    assert window.samples.shape[0] == pytest.approx(facts.duration_s * MODEL_RATE, abs=10)  # facts round to 1 ms
    mix = source if channels == 1 else source.mean(axis=1)
    assert rms_db(window.samples) == pytest.approx(rms_db(mix), abs=1.5)  # the level survives codec and resampler
    assert prepared.acoustics.speech_ratio > 0.8  # still speech after the codec, to Silero


@pytest.mark.parametrize(
    ("subtype", "rate", "channels"),
    [
        ("PCM_U8", 8000, 1),
        ("PCM_16", 11025, 1),
        ("PCM_24", 48000, 2),
        ("PCM_32", 22050, 1),
        ("FLOAT", 44100, 1),
        ("ULAW", 8000, 2),
        ("ALAW", 8000, 1),
        ("PCM_16", 16000, 4),
    ],
)
def test_wav_encodings_decode_and_resample_to_16k(subtype: str, rate: int, channels: int) -> None:
    samples = np.repeat(tone(2.0, rate, freq=440)[:, None], channels, axis=1)
    prepared = prepare(sndfile_bytes(samples, rate, "WAV", subtype), submitted(), PreprocessSettings())
    assert (prepared.facts.sample_rate, prepared.facts.channels) == (rate, channels)
    assert prepared.facts.codec == subtype.lower() and prepared.facts.duration_s == pytest.approx(2.0, abs=0.01)
    (window,) = prepared.windows
    assert window.samples.shape[0] == pytest.approx(2 * MODEL_RATE, abs=2)
    # A 440 Hz tone stays a 440 Hz tone after resampling.
    spectrum = np.abs(np.fft.rfft(window.samples))
    assert np.fft.rfftfreq(window.samples.shape[0], 1 / MODEL_RATE)[spectrum.argmax()] == pytest.approx(440, abs=2)


@pytest.mark.parametrize(
    ("head", "name"),
    [
        (b"RIFF\x00\x00\x00\x00WAVE", "wav"),
        (b"RF64\xff\xff\xff\xffWAVE", "wav"),
        (b"fLaC\x00\x00\x00\x22", "flac"),
        (b"OggS" + b"\x00" * 24 + b"OpusHead", "ogg"),
        (b"ID3\x04\x00", "mp3"),
        (b"\xff\xfb\x90\x64", "mp3"),
        (b"\xff\xf1\x50\x80", "aac"),
        (b"\x00\x00\x00\x20ftypM4A ", "m4a"),
        (b"\x1a\x45\xdf\xa3\x9f", "webm"),
        (b"FORM\x00\x00\x00\x00AIFF", "aiff"),
    ],
)
def test_sniffs_containers_from_magic_bytes(head: bytes, name: str) -> None:
    assert sniff(head + b"\x00" * 32).name == name


@pytest.mark.parametrize(
    ("fmt", "declared"),
    [("wav", "wav"), ("wav", "audio/wav"), ("mp3", "audio/mpeg"), ("webm", "opus"), ("opus", "OPUS"),
     ("m4a", "aac"), ("m4a", "audio/mp4"), ("flac", "flac"), ("vorbis", "ogg")],
)  # fmt: skip
def test_declared_format_that_matches_is_accepted(fmt: str, declared: str) -> None:
    data = encode(speech(1.0, 16000), 16000 if fmt not in ("opus", "webm") else 48000, fmt)
    assert prepare(data, submitted(declared), PreprocessSettings()).windows


@pytest.mark.parametrize(
    ("fmt", "declared", "error", "message"),
    [
        ("wav", "mp3", FormatMismatchError, "declared audio format 'mp3' does not match the content, which is WAV"),
        ("mp3", "wav", FormatMismatchError, "declared audio format 'wav' does not match the content, which is MP3"),
        ("webm", "m4a", FormatMismatchError, "which is WEBM"),
        ("wav", "g729", UnsupportedFormatError, "declared audio format 'g729' is not one we decode"),
    ],
)
def test_wrong_declared_format_is_refused(fmt: str, declared: str, error: type[Exception], message: str) -> None:
    data = encode(speech(1.0, 16000), 16000 if fmt != "webm" else 48000, fmt)
    with pytest.raises(error, match=message) as caught:
        prepare(data, submitted(declared), PreprocessSettings())
    assert caught.value.stage == "decode-audio"


@pytest.mark.parametrize(
    ("fmt", "error", "message"),
    [
        ("wav", TruncatedAudioError, r"audio is truncated: the WAV header declares 4.00 s, the file holds 2.40 s"),
        ("flac", TruncatedAudioError, "FLAC decoding broke off after"),
        ("mp3", TruncatedAudioError, r"audio is truncated: the MP3 header declares 4.0\d s"),
        ("webm", TruncatedAudioError, r"audio is truncated: the WEBM header declares 4.0\d s"),
        ("m4a", AudioDecodeError, r"audio could not be decoded \(m4a, truncated or corrupt\)"),  # no index left
    ],
)
def test_truncated_audio_is_refused(fmt: str, error: type[Exception], message: str) -> None:
    rate = 48000 if fmt == "webm" else 16000
    data = encode(speech(4.0, rate), rate, fmt)
    with pytest.raises(error, match=message):
        prepare(data[: int(len(data) * 0.6)], submitted(), PreprocessSettings())


def test_mp3_without_a_length_header_is_not_called_truncated() -> None:
    """Without a Xing/Info header an MP3's length is a guess (wrong for VBR): a cut file just decodes shorter."""
    source = speech(4.0, 16000)
    with_header = av_bytes(source, 16000, "mp3")
    without = av_bytes(source, 16000, "mp3", options={"write_xing": "0"})
    assert mp3_declares_length(with_header) and not mp3_declares_length(without)
    prepared = prepare(without[: len(without) // 2], submitted(), PreprocessSettings())
    assert prepared.facts.duration_s == pytest.approx(2.0, abs=0.2)


def _video_only_mp4() -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for _ in range(3):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def _with_nan() -> bytes:
    samples = speech(1.0, 8000)
    samples[4000] = np.nan
    return sndfile_bytes(samples, 8000, "WAV", "FLOAT")


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: b"", EmptyAudioError, r"audio is empty \(0 bytes\)"),
        (lambda: wav_with_header(b""), EmptyAudioError, r"audio decodes to zero samples \(wav\)"),
        (lambda: wav_with_header(b"\x00" * 64, channels=0), ZeroChannelsError, "the WAV header says 0"),
        (_video_only_mp4, ZeroChannelsError, "the m4a file holds no audio stream"),
        (_with_nan, InvalidSamplesError, r"NaN or infinite samples \(first at 0.500 s\)"),
        (lambda: b"RIFF\x00\x00\x00\x00WAVEjunk" * 4, AudioDecodeError, "audio could not be decoded: WAV chunk"),
        (lambda: b"ID3 definitely not audio" * 8, AudioDecodeError, r"audio could not be decoded \(mp3\)"),
        (lambda: b"fLaC" + bytes(range(256)) * 4, AudioDecodeError, r"audio could not be decoded \(flac\)"),
        (lambda: b"%PDF-1.7 not audio at all", UnsupportedFormatError, "unrecognised audio format"),
    ],
    ids=["empty", "no-samples", "zero-channels", "no-audio-stream", "nan", "junk-riff", "junk-id3", "junk-flac",
         "pdf"],
)  # fmt: skip
def test_bad_audio_has_specific_errors(make: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        prepare(make(), submitted(), PreprocessSettings())


@pytest.mark.parametrize("fmt", ["wav", "flac", "vorbis", "opus", "mp3", "m4a", "webm"])
def test_damaged_files_never_crash(fmt: str) -> None:
    """Cut and bit-flipped files either decode or raise a PreprocessError: never anything else."""
    rate = 48000 if fmt in ("opus", "webm") else 16000
    good = encode(speech(1.5, rate), rate, fmt)
    rng = np.random.default_rng(len(fmt))
    outcomes = set()
    for trial in range(12):
        damaged = bytearray(good)
        if trial % 3 == 0:
            damaged = damaged[: int(rng.integers(1, len(good)))]
        else:
            for at in rng.integers(0, len(good), size=int(rng.integers(1, 40))):
                damaged[at] = int(rng.integers(0, 256))
        try:
            prepare(bytes(damaged), submitted(), PreprocessSettings())
            outcomes.add("ok")
        except PreprocessError as exc:
            outcomes.add(type(exc).__name__)
    assert outcomes  # and nothing but PreprocessError escaped


def test_decode_audio_returns_the_whole_recording() -> None:
    source = np.stack([tone(1.0, 8000), tone(1.0, 8000, 300)], axis=1)
    decoded = decode_audio(sndfile_bytes(source, 8000, "FLAC"))
    assert decoded.samples.shape == (8000, 2) and decoded.sample_rate == 8000 and decoded.format == "flac"
    assert np.allclose(decoded.samples, source, atol=1e-4)


@pytest.mark.parametrize("subtype", ["IMA_ADPCM", "MS_ADPCM", "GSM610", "G721_32"])
def test_telephony_codecs_inside_wav(subtype: str) -> None:
    """Call recorders also write compressed WAV (ADPCM, GSM 6.10, G.721): libsndfile reads them."""
    prepared = prepare(sndfile_bytes(speech(3.0, 8000), 8000, "WAV", subtype), submitted(), PreprocessSettings())
    assert prepared.facts.codec == subtype.lower() and prepared.facts.duration_s == pytest.approx(3.0, abs=0.1)
    assert prepared.acoustics.speech_ratio > 0.8


def test_a_wav_codec_libsndfile_lacks_goes_to_ffmpeg() -> None:
    data = av_bytes(speech(3.0, 16000), 16000, "g722-in-wav")
    assert sniff(data).name == "wav"
    prepared = prepare(data, submitted("wav"), PreprocessSettings())
    assert (prepared.facts.format, prepared.facts.codec) == ("wav", "g722")
    assert prepared.facts.duration_s == pytest.approx(3.0, abs=0.1) and prepared.acoustics.speech_ratio > 0.8
