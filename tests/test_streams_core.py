"""The live-stream core on plain data: codecs, resampling, sequencing, windowing, pacing, backlog.

References are independent of the code under test where one exists: G.711 tables against
ffmpeg's own decoders and encoders, Opus packets from libopus through PyAV, resampling against
soxr on the whole signal.
"""

from __future__ import annotations

import av
import numpy as np
import pytest
import soxr

from services.streams.backlog import DropPolicy, WindowBacklog
from services.streams.codecs import (
    CHANNELS_HEADER,
    CODEC_HEADER,
    RATE_HEADER,
    SEQ_HEADER,
    TIMESTAMP_HEADER,
    ChunkDecoder,
    ChunkFormat,
    Codec,
    OpusEncoder,
    chunk_header,
    encode_pcm16,
    format_headers,
)
from services.streams.errors import (
    BadFormatError,
    ChunkTooLargeError,
    StreamError,
    TooFastError,
    UndecodableChunkError,
    UnknownCodecError,
)
from services.streams.pacing import RealtimeGuard
from services.streams.resampling import MODEL_RATE, StreamResampler
from services.streams.sequencing import Reorderer, SequenceCounts
from services.streams.windowing import LiveWindow, SlidingWindower


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5, channels: int = 1) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    mono = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(mono[:, None], channels, axis=1)


def dominant_hz(signal: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(signal.shape[0])))
    return float(np.argmax(spectrum) * rate / signal.shape[0])


def rms(signal: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(signal, dtype=np.float64))))


def headers(**overrides: str) -> dict[str, str]:
    base = {SEQ_HEADER: "1", TIMESTAMP_HEADER: "0", CODEC_HEADER: "pcm16", RATE_HEADER: "16000", CHANNELS_HEADER: "1"}
    return {**base, **overrides}


def fmt(codec: str, rate: int, channels: int = 1) -> ChunkFormat:
    return ChunkFormat(codec=Codec(codec), sample_rate=rate, channels=channels)


# --- errors ----------------------------------------------------------------------------------------------


def test_error_reasons_are_short_machine_codes() -> None:
    assert StreamError.reason == "stream-error"
    assert UnknownCodecError.reason == "unknown-codec"
    assert BadFormatError.reason == "bad-format"
    assert UndecodableChunkError.reason == "undecodable-chunk"
    assert ChunkTooLargeError.reason == "chunk-too-large"
    assert TooFastError.reason == "faster-than-real-time"
    error = BadFormatError("chunk header Listenpost-Seq is missing")
    assert isinstance(error, StreamError)
    assert str(error) == error.message == "chunk header Listenpost-Seq is missing"


# --- headers and formats --------------------------------------------------------------------------------


def test_header_names_are_the_contract() -> None:
    assert (SEQ_HEADER, TIMESTAMP_HEADER, CODEC_HEADER, RATE_HEADER, CHANNELS_HEADER) == (
        "Listenpost-Seq",
        "Listenpost-Timestamp-Ms",
        "Listenpost-Codec",
        "Listenpost-Rate",
        "Listenpost-Channels",
    )


def test_chunk_header_reads_seq_timestamp_and_format() -> None:
    seq, timestamp_ms, chunk_format = chunk_header(
        headers(**{SEQ_HEADER: "42", TIMESTAMP_HEADER: "820", CODEC_HEADER: "mulaw", RATE_HEADER: "8000", CHANNELS_HEADER: "2"})
    )
    assert (seq, timestamp_ms) == (42, 820)
    assert chunk_format == ChunkFormat(codec=Codec.mulaw, sample_rate=8000, channels=2)


def test_format_headers_is_the_inverse_of_chunk_header() -> None:
    chunk_format = fmt("opus", 48000, 2)
    sent = format_headers(7, 140, chunk_format)
    assert sent == {SEQ_HEADER: "7", TIMESTAMP_HEADER: "140", CODEC_HEADER: "opus", RATE_HEADER: "48000", CHANNELS_HEADER: "2"}
    assert chunk_header(sent) == (7, 140, chunk_format)


def test_header_names_and_codec_are_matched_without_case() -> None:
    lowered = {k.lower(): v for k, v in headers(**{CODEC_HEADER: " PCM16 "}).items()}
    assert chunk_header(lowered) == (1, 0, fmt("pcm16", 16000))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({SEQ_HEADER: None}, "chunk header Listenpost-Seq is missing"),
        ({TIMESTAMP_HEADER: None}, "chunk header Listenpost-Timestamp-Ms is missing"),
        ({CODEC_HEADER: None}, "chunk header Listenpost-Codec is missing"),
        ({RATE_HEADER: None}, "chunk header Listenpost-Rate is missing"),
        ({CHANNELS_HEADER: None}, "chunk header Listenpost-Channels is missing"),
        ({SEQ_HEADER: "abc"}, "chunk header Listenpost-Seq is 'abc', not an integer"),
        ({SEQ_HEADER: "1.5"}, "chunk header Listenpost-Seq is '1.5', not an integer"),
        ({TIMESTAMP_HEADER: "12ms"}, "chunk header Listenpost-Timestamp-Ms is '12ms', not an integer"),
        ({RATE_HEADER: "16000.0"}, "chunk header Listenpost-Rate is '16000.0', not an integer"),
        ({SEQ_HEADER: "0"}, "chunk header Listenpost-Seq is 0; it must be 1 or more"),
        ({SEQ_HEADER: "-4"}, "chunk header Listenpost-Seq is -4; it must be 1 or more"),
        ({TIMESTAMP_HEADER: "-20"}, "chunk header Listenpost-Timestamp-Ms is -20; it must be 0 or more"),
        ({RATE_HEADER: "-8000"}, "chunk header Listenpost-Rate is -8000; it must be 0 or more"),
        ({CHANNELS_HEADER: "-1"}, "chunk header Listenpost-Channels is -1; it must be 0 or more"),
    ],
)
def test_bad_headers_are_named(changes: dict[str, str | None], message: str) -> None:
    sent = {k: v for k, v in {**headers(), **changes}.items() if v is not None}
    with pytest.raises(BadFormatError) as caught:
        chunk_header(sent)
    assert str(caught.value) == message
    assert caught.value.reason == "bad-format"


def test_unknown_codec() -> None:
    with pytest.raises(UnknownCodecError) as caught:
        chunk_header(headers(**{CODEC_HEADER: "mp3"}))
    assert str(caught.value) == "unknown codec 'mp3' (expected one of: pcm16, mulaw, alaw, opus)"
    assert caught.value.reason == "unknown-codec"


@pytest.mark.parametrize(
    ("codec", "rate", "channels", "message"),
    [
        ("pcm16", 96000, 1, "sample rate 96000 Hz is out of range for pcm16 (8000-48000 Hz)"),
        ("pcm16", 4000, 1, "sample rate 4000 Hz is out of range for pcm16 (8000-48000 Hz)"),
        ("pcm16", 0, 1, "sample rate 0 Hz is out of range for pcm16 (8000-48000 Hz)"),
        ("mulaw", 16000, 1, "sample rate 16000 Hz is not supported for mulaw (G.711 is 8000 Hz only)"),
        ("alaw", 44100, 1, "sample rate 44100 Hz is not supported for alaw (G.711 is 8000 Hz only)"),
        ("opus", 44100, 1, "sample rate 44100 Hz is not supported for opus (expected one of: 8000, 12000, 16000, 24000, 48000 Hz)"),
        ("pcm16", 16000, 3, "3 channels are not supported (expected 1 or 2)"),
        ("opus", 48000, 0, "0 channels are not supported (expected 1 or 2)"),
    ],
)
def test_bad_format_combinations(codec: str, rate: int, channels: int, message: str) -> None:
    with pytest.raises(BadFormatError) as caught:
        chunk_header(headers(**{CODEC_HEADER: codec, RATE_HEADER: str(rate), CHANNELS_HEADER: str(channels)}))
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("codec", "rate"), [("pcm16", 8000), ("pcm16", 44100), ("pcm16", 48000), ("mulaw", 8000), ("alaw", 8000), ("opus", 12000)]
)
def test_good_format_combinations(codec: str, rate: int) -> None:
    for channels in (1, 2):
        assert fmt(codec, rate, channels).sample_rate == rate


# --- pcm16 -----------------------------------------------------------------------------------------------


def test_pcm16_round_trip_is_exact() -> None:
    rng = np.random.default_rng(1)
    ints = rng.integers(-32768, 32768, size=(4000, 2), dtype=np.int16)
    ints[:4] = [[-32768, 32767], [0, 1], [-1, 0], [16384, -16384]]
    payload = ints.astype("<i2").tobytes()
    decoded = ChunkDecoder(fmt("pcm16", 16000, 2), max_chunk_bytes=64 * 1024).decode(payload)
    assert decoded.dtype == np.float32 and decoded.shape == (4000, 2)
    np.testing.assert_array_equal(decoded, ints.astype(np.float32) / 32768)
    assert decoded.min() >= -1.0 and decoded.max() <= 1.0
    assert encode_pcm16(decoded) == payload  # and back, bit for bit


def test_encode_pcm16_interleaves_rounds_and_clips() -> None:
    stereo = np.array([[0.5, -0.5], [1.0, -1.0], [1.7, -3.0], [1e-5, 2e-5]], np.float32)
    assert np.frombuffer(encode_pcm16(stereo), "<i2").tolist() == [16384, -16384, 32767, -32768, 32767, -32768, 0, 1]
    assert np.frombuffer(encode_pcm16(np.array([0.25, -0.25], np.float32)), "<i2").tolist() == [8192, -8192]


def test_pcm16_decodes_a_known_tone() -> None:
    signal = tone(440, 1.0, 16000)
    decoded = ChunkDecoder(fmt("pcm16", 16000), max_chunk_bytes=64 * 1024).decode(encode_pcm16(signal))
    assert np.abs(decoded - signal).max() <= 0.5 / 32768 + 1e-9
    assert dominant_hz(decoded[:, 0], 16000) == pytest.approx(440, abs=1)


def test_pcm16_partial_frames_are_undecodable() -> None:
    mono = ChunkDecoder(fmt("pcm16", 16000), max_chunk_bytes=1024)
    with pytest.raises(UndecodableChunkError) as caught:
        mono.decode(b"\x00\x01\x02")
    assert str(caught.value) == "pcm16 chunk of 3 bytes does not hold whole frames of 1 channel(s) (2 bytes each)"
    stereo = ChunkDecoder(fmt("pcm16", 16000, 2), max_chunk_bytes=1024)
    with pytest.raises(UndecodableChunkError, match="pcm16 chunk of 6 bytes does not hold whole frames of 2 channel"):
        stereo.decode(b"\x00" * 6)
    assert stereo.decode(b"\x00" * 8).shape == (2, 2)


def test_empty_chunk_is_no_audio() -> None:
    for codec, rate in (("pcm16", 16000), ("mulaw", 8000), ("opus", 48000)):
        assert ChunkDecoder(fmt(codec, rate, 2), max_chunk_bytes=10).decode(b"").shape == (0, 2)


def test_oversized_chunk_is_refused_before_decoding() -> None:
    with pytest.raises(ChunkTooLargeError) as caught:
        ChunkDecoder(fmt("pcm16", 16000), max_chunk_bytes=64 * 1024).decode(b"\x00" * (64 * 1024 + 2))
    assert str(caught.value) == "chunk of 65,538 bytes is larger than the 65,536 bytes allowed"
    # Garbage that would not decode is refused for its size, without reaching the decoder.
    with pytest.raises(ChunkTooLargeError):
        ChunkDecoder(fmt("opus", 48000), max_chunk_bytes=100).decode(b"\xff" * 101)
    assert ChunkDecoder(fmt("pcm16", 16000), max_chunk_bytes=100).decode(b"\x00" * 100).shape == (50, 1)


# --- G.711 --------------------------------------------------------------------------------------------------


def ffmpeg_g711_decode(codec: str, payload: bytes) -> np.ndarray:
    ctx = av.CodecContext.create(codec, "r")
    ctx.sample_rate = 8000
    ctx.layout = "mono"
    return np.concatenate([frame.to_ndarray().reshape(-1) for frame in ctx.decode(av.Packet(payload))])


def ffmpeg_g711_encode(codec: str, ints: np.ndarray) -> bytes:
    ctx = av.CodecContext.create(codec, "w")
    ctx.sample_rate = 8000
    ctx.layout = "mono"
    ctx.format = "s16"
    ctx.open()
    frame = av.AudioFrame.from_ndarray(ints.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 8000
    return b"".join(bytes(p) for p in [*ctx.encode(frame), *ctx.encode(None)])


@pytest.mark.parametrize(("codec", "ffmpeg_name"), [("mulaw", "pcm_mulaw"), ("alaw", "pcm_alaw")])
def test_g711_table_equals_ffmpeg_for_every_byte(codec: str, ffmpeg_name: str) -> None:
    every_byte = bytes(range(256))
    ours = ChunkDecoder(fmt(codec, 8000), max_chunk_bytes=1024).decode(every_byte)[:, 0]
    reference = ffmpeg_g711_decode(ffmpeg_name, every_byte)
    np.testing.assert_array_equal(ours * 32768, reference.astype(np.float32))


def test_g711_known_values() -> None:
    mulaw = ChunkDecoder(fmt("mulaw", 8000), max_chunk_bytes=16).decode(bytes([0xFF, 0x7F, 0x80, 0x00, 0xFE]))[:, 0] * 32768
    assert mulaw.tolist() == [0, 0, 32124, -32124, 8]
    alaw = ChunkDecoder(fmt("alaw", 8000), max_chunk_bytes=16).decode(bytes([0xD5, 0x55, 0xAA, 0x2A]))[:, 0] * 32768
    assert alaw.tolist() == [8, -8, 32256, -32256]


@pytest.mark.parametrize(("codec", "ffmpeg_name"), [("mulaw", "pcm_mulaw"), ("alaw", "pcm_alaw")])
def test_g711_decodes_a_tone_encoded_by_ffmpeg(codec: str, ffmpeg_name: str) -> None:
    signal = tone(440, 1.0, 8000, amplitude=0.8)[:, 0]
    ints = np.round(signal * 32767).astype(np.int16)
    payload = ffmpeg_g711_encode(ffmpeg_name, ints)
    assert len(payload) == 8000
    decoder = ChunkDecoder(fmt(codec, 8000), max_chunk_bytes=1024)
    decoded = np.concatenate([decoder.decode(payload[i : i + 160]) for i in range(0, 8000, 160)])[:, 0]  # 20 ms chunks
    error = decoded - ints / 32768
    # G.711's largest step is 1024 in 16-bit units (its top segment); rounding is within one step.
    assert np.abs(error).max() <= 1024 / 32768
    assert 10 * np.log10(rms(signal) ** 2 / rms(error) ** 2) > 30  # ~38 dB is G.711's SNR for a loud tone
    assert dominant_hz(decoded, 8000) == pytest.approx(440, abs=1)


def test_g711_stereo_deinterleaves_and_needs_whole_frames() -> None:
    decoder = ChunkDecoder(fmt("mulaw", 8000, 2), max_chunk_bytes=1024)
    assert (decoder.decode(bytes([0x80, 0x00, 0xFF, 0x80])) * 32768).tolist() == [[32124, -32124], [0, 32124]]
    with pytest.raises(UndecodableChunkError) as caught:
        decoder.decode(b"\x00\x00\x00")
    assert str(caught.value) == "mulaw chunk of 3 bytes does not hold whole frames of 2 channels (1 byte each)"


# --- Opus ---------------------------------------------------------------------------------------------------


def test_pyav_has_an_opus_encoder() -> None:
    assert "libopus" in av.codecs_available
    assert av.CodecContext.create("libopus", "w").codec.name == "libopus"


def libopus_packets(signal: np.ndarray, rate: int) -> list[bytes]:
    """20 ms Opus packets straight from libopus through PyAV (not through OpusEncoder)."""
    layout = "mono" if signal.shape[1] == 1 else "stereo"
    ctx = av.CodecContext.create("libopus", "w")
    ctx.sample_rate = rate
    ctx.layout = layout
    ctx.format = "flt"
    ctx.bit_rate = 64000
    ctx.open()
    size = ctx.frame_size
    packets: list[bytes] = []
    for start in range(0, signal.shape[0] - size + 1, size):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(signal[start : start + size]).reshape(1, -1), format="flt", layout=layout)
        frame.sample_rate = rate
        frame.pts = start
        packets += [bytes(p) for p in ctx.encode(frame)]
    return packets + [bytes(p) for p in ctx.encode(None)]


@pytest.mark.parametrize(("rate", "channels"), [(48000, 2), (16000, 1), (8000, 1), (24000, 2)])
def test_opus_decodes_a_tone_at_the_stream_rate(rate: int, channels: int) -> None:
    signal = tone(440, 1.0, rate, channels=channels)
    packets = libopus_packets(signal, rate)
    decoder = ChunkDecoder(fmt("opus", rate, channels), max_chunk_bytes=4000)
    blocks = [decoder.decode(p) for p in packets]
    # One 20 ms packet per chunk comes out as 20 ms at the stream's rate (after a 1 ms start-up delay).
    assert {b.shape[0] for b in blocks[1:-1]} == {rate // 50}
    decoded = np.concatenate(blocks)
    assert decoded.dtype == np.float32 and decoded.shape[1] == channels
    assert abs(decoded.shape[0] - signal.shape[0]) <= rate // 50
    steady = decoded[rate // 10 : rate - rate // 10]
    for channel in range(channels):
        assert dominant_hz(steady[:, channel], rate) == pytest.approx(440, abs=3)
        assert rms(steady[:, channel]) == pytest.approx(rms(signal[:, 0]), rel=0.15)
    assert np.abs(decoded).max() <= 1.0


def test_opus_encoder_packets_decode_to_the_tone() -> None:
    encoder = OpusEncoder(16000, 1)
    assert encoder.frame_frames == 320
    signal = tone(440, 1.0, 16000, amplitude=0.3)
    packets = [p for i in range(0, 16000, 1000) for p in encoder.encode(signal[i : i + 1000])] + encoder.flush()
    assert len(packets) >= 50
    decoder = ChunkDecoder(encoder.format, max_chunk_bytes=4000)
    decoded = np.concatenate([decoder.decode(p) for p in packets])[:, 0]
    assert dominant_hz(decoded[1600:14400], 16000) == pytest.approx(440, abs=3)
    assert rms(decoded[1600:14400]) == pytest.approx(rms(signal), rel=0.15)


def test_corrupt_opus_packet_is_undecodable_and_the_stream_goes_on() -> None:
    packets = libopus_packets(tone(440, 0.2, 48000), 48000)
    decoder = ChunkDecoder(fmt("opus", 48000), max_chunk_bytes=4000)
    decoder.decode(packets[0])
    for corrupt in (b"\x03", b"\xff\xff\xff"):
        with pytest.raises(UndecodableChunkError) as caught:
            decoder.decode(corrupt)
        assert str(caught.value) == f"a {len(corrupt)}-byte chunk is not a valid Opus packet"
        assert caught.value.reason == "undecodable-chunk"
    assert decoder.decode(packets[1]).shape == (960, 1)


def test_opus_encoder_refuses_rates_opus_lacks() -> None:
    with pytest.raises(BadFormatError, match="sample rate 44100 Hz is not supported for opus"):
        OpusEncoder(44100)


# --- resampling ---------------------------------------------------------------------------------------------


def test_resampler_8k_tone_to_16k() -> None:
    signal = tone(440, 1.0, 8000)
    resampler = StreamResampler(8000, 1)
    out = np.concatenate([resampler.push(signal), resampler.flush()])
    assert out.dtype == np.float32 and out.shape[1] == 1
    assert abs(out.shape[0] - 16000) <= 2
    assert dominant_hz(out[:, 0], 16000) == pytest.approx(440, abs=1)
    assert rms(out[800:-800]) == pytest.approx(rms(signal), rel=0.01)


def test_resampler_chunked_equals_whole_signal() -> None:
    rng = np.random.default_rng(3)
    signal = (tone(440, 2.0, 8000, channels=2) + 0.05 * rng.standard_normal((16000, 2))).astype(np.float32)
    whole = soxr.resample(signal, 8000, MODEL_RATE, quality="HQ")
    resampler = StreamResampler(8000, 2)
    parts = []
    for start in range(0, 16000, 160):  # 20 ms chunks
        parts.append(resampler.push(signal[start : start + 160]))
        assert resampler.pending_s >= 0
        produced = sum(p.shape[0] for p in parts) / MODEL_RATE
        assert produced + resampler.pending_s == pytest.approx((start + 160) / 8000, abs=1e-9)
    parts.append(resampler.flush())
    chunked = np.concatenate(parts)
    assert resampler.pending_s == 0
    assert chunked.shape == whole.shape
    np.testing.assert_allclose(chunked, whole, atol=1e-5)


def test_resampler_passes_16k_through_as_a_copy() -> None:
    block = tone(300, 0.1, 16000, channels=2)
    resampler = StreamResampler(16000, 2)
    out = resampler.push(block)
    np.testing.assert_array_equal(out, block)
    block[:] = 0
    assert np.abs(out).max() > 0.4
    assert resampler.flush().shape == (0, 2)
    with pytest.raises(RuntimeError, match="flushed"):
        resampler.push(block)


# --- sequencing ---------------------------------------------------------------------------------------------


def test_reorderer_in_order() -> None:
    reorderer: Reorderer[str] = Reorderer(max_held=4)
    assert [reorderer.push(i, f"c{i}") for i in range(1, 4)] == [[(1, "c1")], [(2, "c2")], [(3, "c3")]]
    assert reorderer.counts == SequenceCounts(0, 0, 0)
    assert reorderer.next_seq == 4


def test_reorderer_reversed_pairs() -> None:
    reorderer: Reorderer[str] = Reorderer(max_held=4)
    assert reorderer.push(2, "b") == []
    assert reorderer.push(1, "a") == [(1, "a"), (2, "b")]
    assert reorderer.push(4, "d") == []
    assert reorderer.push(3, "c") == [(3, "c"), (4, "d")]
    assert reorderer.counts == SequenceCounts(duplicates=0, out_of_order=2, missing=0)


def test_reorderer_drops_duplicates() -> None:
    reorderer: Reorderer[str] = Reorderer(max_held=4)
    assert reorderer.push(1, "a") == [(1, "a")]
    assert reorderer.push(1, "a again") == []  # already delivered
    assert reorderer.push(3, "c") == []
    assert reorderer.push(3, "c again") == []  # already held
    assert reorderer.push(2, "b") == [(2, "b"), (3, "c")]
    assert reorderer.push(2, "b again") == []
    assert reorderer.counts == SequenceCounts(duplicates=3, out_of_order=1, missing=0)


def test_reorderer_gives_up_a_gap_after_max_held() -> None:
    reorderer: Reorderer[int] = Reorderer(max_held=3)
    assert reorderer.push(1, 1) == [(1, 1)]
    assert [reorderer.push(s, s) for s in (3, 4, 5)] == [[], [], []]  # 2 is missing: held
    assert reorderer.held == 3
    assert reorderer.push(6, 6) == [(3, 3), (4, 4), (5, 5), (6, 6)]  # a fourth: 2 is given up
    assert reorderer.counts == SequenceCounts(duplicates=0, out_of_order=0, missing=1)
    assert reorderer.push(2, 2) == []  # too late: its turn has passed
    assert reorderer.push(7, 7) == [(7, 7)]
    assert reorderer.counts == SequenceCounts(duplicates=1, out_of_order=0, missing=1)


def test_reorderer_gives_up_several_missing_at_once() -> None:
    reorderer: Reorderer[int] = Reorderer(max_held=1)
    assert reorderer.push(5, 5) == []
    assert reorderer.push(7, 7) == [(5, 5)]  # 1-4 given up; 6 is still awaited
    assert reorderer.counts.missing == 4
    assert reorderer.push(6, 6) == [(6, 6), (7, 7)]
    assert reorderer.counts == SequenceCounts(duplicates=0, out_of_order=1, missing=4)


def test_reorderer_without_holding() -> None:
    reorderer: Reorderer[int] = Reorderer(max_held=0)
    assert reorderer.push(3, 3) == [(3, 3)]
    assert reorderer.counts.missing == 2


def test_reorderer_flush_releases_everything_held() -> None:
    reorderer: Reorderer[str] = Reorderer(max_held=10)
    reorderer.push(1, "a")
    reorderer.push(3, "c")
    reorderer.push(6, "f")
    reorderer.push(5, "e")
    assert reorderer.flush() == [(3, "c"), (5, "e"), (6, "f")]
    assert reorderer.counts == SequenceCounts(duplicates=0, out_of_order=1, missing=2)  # 2 and 4 never came
    assert reorderer.flush() == []
    assert reorderer.next_seq == 7


def test_reorderer_resumes_at_a_sequence() -> None:
    reorderer: Reorderer[str] = Reorderer(max_held=4)
    reorderer.resume_at(10)
    assert reorderer.push(9, "old") == []
    assert reorderer.push(11, "k") == []
    assert reorderer.push(10, "j") == [(10, "j"), (11, "k")]
    assert reorderer.counts == SequenceCounts(duplicates=1, out_of_order=1, missing=0)
    with pytest.raises(ValueError, match="start at 1"):
        Reorderer[str](max_held=1).resume_at(0)


# --- windowing ----------------------------------------------------------------------------------------------


def ramp(seconds: float, channels: int = 1) -> np.ndarray:
    """A signal whose every sample is distinct within 1 s, so a window's content pins its offset."""
    frames = round(seconds * MODEL_RATE)
    base = ((np.arange(frames) % MODEL_RATE) / MODEL_RATE - 0.5).astype(np.float32)
    return np.stack([base * (1 - 0.25 * c) for c in range(channels)], axis=1)


def feed(windower: SlidingWindower, signal: np.ndarray, *, start_s: float = 0.0, block_s: float = 0.02) -> list[LiveWindow]:
    block = round(block_s * MODEL_RATE)
    windows: list[LiveWindow] = []
    for first in range(0, signal.shape[0], block):
        windows += windower.append(start_s + first / MODEL_RATE, signal[first : first + block])
        assert windower.buffered_s <= windower.window_s + block_s + 1e-9
    return windows


def spans(windows: list[LiveWindow]) -> list[tuple[int, float, float, int, bool]]:
    return [(w.index, w.start_s, w.end_s, w.channel, w.final) for w in windows]


def test_windows_over_27_seconds_in_20ms_blocks() -> None:
    signal = ramp(27.0)
    windower = SlidingWindower(channels=1, window_s=10.0, hop_s=5.0, gate_dbfs=None, min_final_s=1.0)
    windows = feed(windower, signal)
    assert spans(windows) == [(0, 0.0, 10.0, 0, False), (1, 5.0, 15.0, 0, False), (2, 10.0, 20.0, 0, False), (3, 15.0, 25.0, 0, False)]
    final = windower.finish()
    assert spans(final) == [(4, 20.0, 27.0, 0, True)]
    for window in windows + final:
        start, end = round(window.start_s * MODEL_RATE), round(window.end_s * MODEL_RATE)
        assert window.samples.dtype == np.float32 and window.samples.ndim == 1
        np.testing.assert_array_equal(window.samples, signal[start:end, 0])
        assert not window.silent
    assert (windower.gap_s, windower.overlap_s) == (0.0, 0.0)
    assert windower.next_index == 5
    assert windower.finish() == []
    with pytest.raises(RuntimeError, match="finished"):
        windower.append(27.0, signal[:10])


def test_windows_come_per_channel_in_index_then_channel_order() -> None:
    signal = ramp(12.0, channels=2)
    windower = SlidingWindower(channels=2, window_s=4.0, hop_s=4.0, gate_dbfs=None)
    windows = feed(windower, signal, block_s=0.1)
    assert [(w.index, w.channel) for w in windows] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    for window in windows:
        start = round(window.start_s * MODEL_RATE)
        np.testing.assert_array_equal(window.samples, signal[start : start + 4 * MODEL_RATE, window.channel])
    assert windower.finish() == []  # nothing left after the last window


def test_final_window_needs_min_final_s() -> None:
    windower = SlidingWindower(channels=1, window_s=10.0, hop_s=10.0, gate_dbfs=None, min_final_s=1.0)
    feed(windower, ramp(20.5))
    assert windower.finish() == []  # 0.5 s after the last window: too short to caption
    windower = SlidingWindower(channels=1, window_s=10.0, hop_s=10.0, gate_dbfs=None, min_final_s=1.0)
    feed(windower, ramp(21.5))
    assert spans(windower.finish()) == [(2, 20.0, 21.5, 0, True)]
    short = SlidingWindower(channels=1, window_s=10.0, hop_s=5.0, gate_dbfs=None, min_final_s=1.0)
    assert feed(short, ramp(3.0)) == []
    assert spans(short.finish()) == [(0, 0.0, 3.0, 0, True)]  # a stream shorter than one window


def test_finish_at_a_known_end_pads_with_silence() -> None:
    windower = SlidingWindower(channels=1, window_s=10.0, hop_s=5.0, gate_dbfs=None)
    feed(windower, ramp(7.0))
    final = windower.finish(end_s=9.0)
    assert spans(final) == [(0, 0.0, 9.0, 0, True)]
    assert windower.gap_s == pytest.approx(2.0)
    assert np.all(final[0].samples[7 * MODEL_RATE :] == 0)


def test_silent_windows_are_gated() -> None:
    quiet = np.zeros((12 * MODEL_RATE, 1), np.float32)
    quiet[: 6 * MODEL_RATE] = 10 ** (-70 / 20) * np.sqrt(2) * tone(200, 6.0, MODEL_RATE, amplitude=1.0)  # -70 dBFS hum
    loud = tone(440, 13.0, MODEL_RATE, amplitude=0.1)  # -23 dBFS
    signal = np.concatenate([quiet, loud])
    gated = SlidingWindower(channels=1, window_s=10.0, hop_s=5.0, gate_dbfs=-50.0)
    windows = feed(gated, signal) + gated.finish()
    # The last window [15, 25) reaches the end: no shorter last window after it.
    assert [(w.index, w.silent) for w in windows] == [(0, True), (1, False), (2, False), (3, False)]
    ungated = SlidingWindower(channels=1, window_s=10.0, hop_s=5.0, gate_dbfs=None)
    assert not any(w.silent for w in feed(ungated, signal) + ungated.finish())


def test_one_loud_frame_keeps_a_window_from_being_silent() -> None:
    signal = np.zeros((10 * MODEL_RATE, 1), np.float32)
    signal[5 * MODEL_RATE : 5 * MODEL_RATE + 320] = 0.1  # one 20 ms frame at -20 dBFS
    windower = SlidingWindower(channels=1, window_s=10.0, hop_s=10.0, gate_dbfs=-50.0)
    (window,) = feed(windower, signal)
    assert not window.silent


def test_a_gap_is_filled_with_silence_and_counted() -> None:
    signal = ramp(12.0)
    windower = SlidingWindower(channels=1, window_s=10.0, hop_s=5.0, gate_dbfs=None)
    windows = feed(windower, signal[: 2 * MODEL_RATE])
    windows += feed(windower, signal[3 * MODEL_RATE :], start_s=3.0)  # the chunks of [2, 3) s were lost
    assert windower.gap_s == pytest.approx(1.0)
    assert windower.overlap_s == 0.0
    (first,) = windows
    expected = signal[: 10 * MODEL_RATE, 0].copy()
    expected[2 * MODEL_RATE : 3 * MODEL_RATE] = 0
    np.testing.assert_array_equal(first.samples, expected)  # later audio kept its time


def test_an_overlap_is_trimmed_and_counted() -> None:
    signal = ramp(11.0)
    windower = SlidingWindower(channels=1, window_s=10.0, hop_s=5.0, gate_dbfs=None)
    windows = feed(windower, signal[: 4 * MODEL_RATE])
    windows += windower.append(3.5, signal[int(3.5 * MODEL_RATE) : int(4.5 * MODEL_RATE)])  # 0.5 s sent again
    windows += windower.append(2.0, signal[2 * MODEL_RATE : int(2.5 * MODEL_RATE)])  # wholly repeated
    windows += feed(windower, signal[int(4.5 * MODEL_RATE) :], start_s=4.5)
    assert windower.overlap_s == pytest.approx(1.0)
    assert windower.gap_s == 0.0
    (first,) = windows
    np.testing.assert_array_equal(first.samples, signal[: 10 * MODEL_RATE, 0])


def test_jitter_under_the_tolerance_is_ignored() -> None:
    signal = ramp(10.0)
    windower = SlidingWindower(channels=1, window_s=10.0, hop_s=5.0, gate_dbfs=None)
    windows: list[LiveWindow] = []
    for k, first in enumerate(range(0, signal.shape[0], 320)):
        wobble = 0.01 if k % 2 else -0.01  # timestamps off by 10 ms either way
        windows += windower.append(max(first / MODEL_RATE + wobble, 0.0), signal[first : first + 320])
    assert (windower.gap_s, windower.overlap_s) == (0.0, 0.0)
    np.testing.assert_array_equal(windows[0].samples, signal[:, 0])


def test_a_long_gap_keeps_memory_bounded() -> None:
    windower = SlidingWindower(channels=1, window_s=10.0, hop_s=5.0, gate_dbfs=-50.0)
    windows = feed(windower, ramp(1.0))
    windows += windower.append(100.0, ramp(0.02))
    assert windower.buffered_s <= 10.0
    assert windower.gap_s == pytest.approx(99.0)
    assert [w.index for w in windows] == list(range(19))  # [0, 10) ... [90, 100)
    assert not windows[0].silent and all(w.silent for w in windows[1:])


def test_resume_from_a_window_index() -> None:
    signal = ramp(30.0)
    windower = SlidingWindower(channels=1, window_s=10.0, hop_s=5.0, gate_dbfs=None, start_index=3, start_offset_s=15.0)
    assert (windower.next_index, windower.resume_offset_s) == (3, 15.0)
    windows = feed(windower, signal[15 * MODEL_RATE :], start_s=15.0)
    assert spans(windows) == [(3, 15.0, 25.0, 0, False), (4, 20.0, 30.0, 0, False)]
    np.testing.assert_array_equal(windows[0].samples, signal[15 * MODEL_RATE : 25 * MODEL_RATE, 0])
    assert windower.gap_s == 0.0


def test_resume_reading_from_before_the_window_start() -> None:
    signal = ramp(26.0)
    windower = SlidingWindower(channels=1, window_s=10.0, hop_s=5.0, gate_dbfs=None, start_index=3, start_offset_s=13.7)
    windows = feed(windower, signal[int(13.7 * MODEL_RATE) :], start_s=13.7)  # the chunk holding 15 s began at 13.7 s
    assert spans(windows) == [(3, 15.0, 25.0, 0, False)]
    np.testing.assert_array_equal(windows[0].samples, signal[15 * MODEL_RATE : 25 * MODEL_RATE, 0])
    assert windower.gap_s == 0.0 and windower.overlap_s == 0.0
    assert windower.resume_offset_s == 20.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window_s": 10.0, "hop_s": 0.0}, "hop_s must be more than 0 s"),
        ({"window_s": 5.0, "hop_s": 10.0}, r"hop_s \(10.0 s\) must not be longer than window_s \(5.0 s\)"),
        ({"window_s": 40.0, "hop_s": 10.0}, r"window_s \(40.0 s\) must not be longer than max_window_s \(30.0 s\)"),
    ],
)
def test_windower_refuses_bad_geometry(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SlidingWindower(channels=1, gate_dbfs=None, **kwargs)


def test_windower_refuses_a_block_of_the_wrong_shape() -> None:
    windower = SlidingWindower(channels=2, window_s=10.0, hop_s=5.0, gate_dbfs=None)
    with pytest.raises(ValueError, match=r"expected a \(frames, 2\) block"):
        windower.append(0.0, np.zeros((10, 1), np.float32))
    assert windower.append(5.0, np.zeros((0, 2), np.float32)) == []  # no audio: no gap either
    assert windower.gap_s == 0.0


# --- pacing -------------------------------------------------------------------------------------------------


def test_real_time_is_accepted() -> None:
    guard = RealtimeGuard(max_speed=1.5, slack_s=3.0)
    for k in range(1, 3001):  # 60 s of 20 ms chunks, each published as its audio ends
        guard.observe(k * 0.02, 1000.0 + k * 0.02)


def test_twice_real_time_is_refused() -> None:
    guard = RealtimeGuard(max_speed=1.5, slack_s=3.0)
    for k in range(1, 14):  # 1 s chunks published every 0.5 s: the slack covers 12 of them
        guard.observe(float(k), 0.5 * (k - 1))
    with pytest.raises(TooFastError) as caught:
        guard.observe(14.0, 6.5)
    assert str(caught.value) == "the stream sends 2.0 s of audio per second; at most 1.5x real time is accepted"
    assert caught.value.reason == "faster-than-real-time"


def test_a_burst_is_refused() -> None:
    guard = RealtimeGuard()
    for k in range(1, 5):
        guard.observe(float(k), 50.0)
    with pytest.raises(TooFastError) as caught:
        guard.observe(5.0, 50.0)
    assert str(caught.value) == "the stream sent 4.0 s of audio at once; at most 1.5x real time is accepted"


def test_a_replay_with_spaced_publish_times_is_accepted() -> None:
    # A restarted owner reads 5 minutes of chunks in a moment; their publish times are real time.
    guard = RealtimeGuard()
    for k in range(1, 301):
        guard.observe(float(k), 1_700_000_000.0 + k)


def test_a_resumed_stream_starts_its_pace_at_its_first_chunk() -> None:
    guard = RealtimeGuard()
    guard.observe(600.02, 5000.0)  # the first chunk this owner sees is 10 minutes in
    for k in range(2, 100):
        guard.observe(600.0 + k * 0.02, 5000.0 + (k - 1) * 0.02)


# --- backlog ------------------------------------------------------------------------------------------------


def test_backlog_drops_the_oldest() -> None:
    backlog: WindowBacklog[int] = WindowBacklog(DropPolicy.oldest, max_waiting=2)
    assert [backlog.offer(1), backlog.offer(2), backlog.offer(3)] == [[], [], [1]]
    assert backlog.take() == 2
    assert backlog.offer(4) == []
    assert backlog.offer(5) == [3]
    assert [backlog.take(), backlog.take(), backlog.take()] == [4, 5, None]
    assert backlog.dropped == 2 and len(backlog) == 0


def test_backlog_alternate_keeps_every_other_window_while_full() -> None:
    backlog: WindowBacklog[int] = WindowBacklog(DropPolicy("alternate"), max_waiting=2)
    assert backlog.offer(1) == [] and backlog.offer(2) == []
    assert backlog.offer(3) == [3]  # full: dropped on arrival
    assert backlog.offer(4) == [1]  # kept: the oldest makes room
    assert backlog.offer(5) == [5]  # dropped
    assert backlog.offer(6) == [2]  # kept
    assert len(backlog) == 2 and backlog.dropped == 4
    assert [backlog.take(), backlog.take(), backlog.take()] == [4, 6, None]
    assert backlog.offer(7) == [] and backlog.offer(8) == []  # caught up: nothing dropped
    assert backlog.offer(9) == [9]  # full again: the alternation starts over with a dropped window
    assert backlog.offer(10) == [7]
    assert backlog.dropped == 6
    assert [backlog.take(), backlog.take()] == [8, 10]


def test_backlog_alternate_with_a_half_speed_consumer_drops_only_new_windows() -> None:
    backlog: WindowBacklog[int] = WindowBacklog(DropPolicy.alternate, max_waiting=1)
    taken, dropped = [], []
    for item in range(1, 13):
        dropped += backlog.offer(item)
        if item % 2 == 0:  # the Captioner takes one window for every two that close
            taken.append(backlog.take())
    assert taken == [1, 3, 5, 7, 9, 11]
    assert dropped == [2, 4, 6, 8, 10, 12]  # never one that waited
    assert backlog.dropped == 6


def test_backlog_oldest_with_a_half_speed_consumer_drops_the_waiting_ones() -> None:
    backlog: WindowBacklog[int] = WindowBacklog(DropPolicy.oldest, max_waiting=1)
    taken, dropped = [], []
    for item in range(1, 7):
        dropped += backlog.offer(item)
        if item % 2 == 0:
            taken.append(backlog.take())
    assert taken == [2, 4, 6]
    assert dropped == [1, 3, 5]


def test_backlog_refuses_no_room() -> None:
    with pytest.raises(ValueError, match="max_waiting must be 1 or more"):
        WindowBacklog(DropPolicy.oldest, max_waiting=0)
