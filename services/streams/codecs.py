"""Chunk headers and payload decoding of a live stream: bytes in, float32 (frames, channels) out.

A live source sends small chunks (typically 20-100 ms) of one codec, named in headers with a
sequence number and the audio time of the chunk's first sample, so order and timing survive
redelivery and restarts. Four codecs cover what live sources send: 16-bit PCM (browsers,
media servers), G.711 mu-law and A-law (telephony at 8 kHz) and Opus (WebRTC).

G.711 is expanded with a 256-entry table (a lookup per byte: no codec context, no state).
Opus is stateful (each packet is predicted from the ones before it), so a stream has one
:class:`ChunkDecoder` for its whole life. Encoders for clients and tests are here too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum

import av
import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from services.events.live import CHANNELS_HEADER, CODEC_HEADER, RATE_HEADER, SEQ_HEADER, TIMESTAMP_HEADER
from services.streams.errors import BadFormatError, ChunkTooLargeError, UndecodableChunkError, UnknownCodecError

# The header names are the live-stream contract's (services/events/live.py); re-exported here
# so a client needs one import for headers and payloads.
__all__ = [
    "CHANNELS_HEADER",
    "CODEC_HEADER",
    "OPUS_RATES",
    "RATE_HEADER",
    "SEQ_HEADER",
    "TIMESTAMP_HEADER",
    "ChunkDecoder",
    "ChunkFormat",
    "Codec",
    "OpusEncoder",
    "chunk_header",
    "encode_pcm16",
    "format_headers",
]

PCM16_RATES = (8000, 48000)  # the range accepted: narrowband telephony to studio
G711_RATE = 8000
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)  # the rates an Opus encoder accepts (RFC 6716)
OPUS_FRAME_S = 0.02  # WebRTC's packet length, and libopus' default
_OPUS_DECODE_RATE = 48000  # ffmpeg's Opus decoders always decode at 48 kHz, whatever the encoder's rate
_PCM16_SCALE = 32768.0  # int16 <-> float as soundfile and ffmpeg do: -32768 is exactly -1.0
_INTEGER = re.compile(r"-?[0-9]+")


class Codec(StrEnum):
    pcm16 = "pcm16"
    mulaw = "mulaw"
    alaw = "alaw"
    opus = "opus"


def _codec_names() -> str:
    return ", ".join(c.value for c in Codec)


class ChunkFormat(BaseModel):
    """What a stream's chunks hold; fixed for the stream's life."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    codec: Codec
    sample_rate: int
    channels: int

    # The validators raise StreamErrors, not ValueErrors: pydantic passes other exceptions through
    # untouched, so the sender gets our message and reason instead of a ValidationError dump.

    @field_validator("codec", mode="before")
    @classmethod
    def _known_codec(cls, value: object) -> Codec:
        try:
            if not isinstance(value, str):
                raise ValueError(value)
            return Codec(value.strip().lower())
        except ValueError:
            raise UnknownCodecError(f"unknown codec {value!r} (expected one of: {_codec_names()})") from None

    @model_validator(mode="after")
    def _rate_and_channels(self) -> ChunkFormat:
        rate, codec = self.sample_rate, self.codec
        if codec is Codec.pcm16 and not PCM16_RATES[0] <= rate <= PCM16_RATES[1]:
            raise BadFormatError(f"sample rate {rate} Hz is out of range for pcm16 ({PCM16_RATES[0]}-{PCM16_RATES[1]} Hz)")
        if codec in (Codec.mulaw, Codec.alaw) and rate != G711_RATE:
            raise BadFormatError(f"sample rate {rate} Hz is not supported for {codec} (G.711 is {G711_RATE} Hz only)")
        if codec is Codec.opus and rate not in OPUS_RATES:
            rates = ", ".join(str(r) for r in OPUS_RATES)
            raise BadFormatError(f"sample rate {rate} Hz is not supported for opus (expected one of: {rates} Hz)")
        if self.channels not in (1, 2):
            raise BadFormatError(f"{self.channels} channels are not supported (expected 1 or 2)")
        return self


def _header(headers: Mapping[str, str], name: str) -> str:
    # Header names are matched without case: some gateways and client libraries change it.
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    if value is None:
        raise BadFormatError(f"chunk header {name} is missing")
    return value


def _int_header(headers: Mapping[str, str], name: str, minimum: int) -> int:
    raw = _header(headers, name)
    text = raw.strip()
    if not _INTEGER.fullmatch(text):
        raise BadFormatError(f"chunk header {name} is {raw[:40]!r}, not an integer")
    value = int(text)
    if value < minimum:
        raise BadFormatError(f"chunk header {name} is {value}; it must be {minimum} or more")
    return value


def chunk_header(headers: Mapping[str, str]) -> tuple[int, int, ChunkFormat]:
    """``(seq, timestamp_ms, format)`` of one chunk message; BadFormatError or UnknownCodecError if unusable."""
    seq = _int_header(headers, SEQ_HEADER, 1)
    timestamp_ms = _int_header(headers, TIMESTAMP_HEADER, 0)
    codec = _header(headers, CODEC_HEADER)
    # Zero passes here so that the format's own check names the range ("0 channels are not supported").
    rate = _int_header(headers, RATE_HEADER, 0)
    channels = _int_header(headers, CHANNELS_HEADER, 0)
    return seq, timestamp_ms, ChunkFormat.model_validate({"codec": codec, "sample_rate": rate, "channels": channels})


def format_headers(seq: int, timestamp_ms: int, fmt: ChunkFormat) -> dict[str, str]:
    """The headers of one chunk (the inverse of :func:`chunk_header`; clients use it)."""
    if seq < 1:
        raise BadFormatError(f"chunk header {SEQ_HEADER} is {seq}; it must be 1 or more")
    if timestamp_ms < 0:
        raise BadFormatError(f"chunk header {TIMESTAMP_HEADER} is {timestamp_ms}; it must be 0 or more")
    return {
        SEQ_HEADER: str(seq),
        TIMESTAMP_HEADER: str(timestamp_ms),
        CODEC_HEADER: fmt.codec.value,
        RATE_HEADER: str(fmt.sample_rate),
        CHANNELS_HEADER: str(fmt.channels),
    }


# --- G.711 (ITU-T G.711, the expansion of Sun's reference g711.c) -----------------------------------


def _mulaw_table() -> np.ndarray:
    # Bytes are sent inverted; 4 mantissa bits, 3 exponent bits, sign; the bias 0x84 keeps zero exact.
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    magnitude = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    linear = np.where(u & 0x80, 0x84 - magnitude, magnitude - 0x84)
    return (linear / _PCM16_SCALE).astype(np.float32)


def _alaw_table() -> np.ndarray:
    # Even bits are inverted (XOR 0x55); segment 0 is linear, each further segment doubles the step.
    a = np.arange(256, dtype=np.int32) ^ 0x55
    mantissa = (a & 0x0F) << 4
    segment = (a & 0x70) >> 4
    magnitude = np.where(segment == 0, mantissa + 8, (mantissa + 0x108) << np.maximum(segment - 1, 0))
    linear = np.where(a & 0x80, magnitude, -magnitude)
    return (linear / _PCM16_SCALE).astype(np.float32)


_G711_TABLES = {Codec.mulaw: _mulaw_table(), Codec.alaw: _alaw_table()}


# --- decoding ------------------------------------------------------------------------------------------


class ChunkDecoder:
    """One stream's chunks to float32 (frames, channels) at the stream's sample rate, values in [-1, 1]."""

    def __init__(self, fmt: ChunkFormat, *, max_chunk_bytes: int) -> None:
        self.format = fmt
        self._max_bytes = max_chunk_bytes
        self._opus: av.AudioCodecContext | None = None
        self._to_rate: av.AudioResampler | None = None
        if fmt.codec is Codec.opus:
            self._opus, self._to_rate = _opus_decoder(fmt)

    def decode(self, payload: bytes) -> np.ndarray:
        fmt = self.format
        if len(payload) > self._max_bytes:
            raise ChunkTooLargeError(f"chunk of {len(payload):,} bytes is larger than the {self._max_bytes:,} bytes allowed")
        if not payload:
            # An empty Opus packet would drain the decoder (ffmpeg's end of stream): never send one.
            return np.zeros((0, fmt.channels), np.float32)
        if fmt.codec is Codec.pcm16:
            return self._pcm16(payload)
        if fmt.codec is Codec.opus:
            return self._decode_opus(payload)
        if len(payload) % fmt.channels:
            raise UndecodableChunkError(
                f"{fmt.codec} chunk of {len(payload)} bytes does not hold whole frames of {fmt.channels} channels (1 byte each)"
            )
        return _G711_TABLES[fmt.codec][np.frombuffer(payload, np.uint8)].reshape(-1, fmt.channels)

    def _pcm16(self, payload: bytes) -> np.ndarray:
        frame_bytes = 2 * self.format.channels
        if len(payload) % frame_bytes:
            raise UndecodableChunkError(
                f"pcm16 chunk of {len(payload)} bytes does not hold whole frames of {self.format.channels} channel(s) "
                f"({frame_bytes} bytes each)"
            )
        samples = np.frombuffer(payload, "<i2").astype(np.float32) * np.float32(1 / _PCM16_SCALE)
        return samples.reshape(-1, self.format.channels)

    def _decode_opus(self, payload: bytes) -> np.ndarray:
        assert self._opus is not None and self._to_rate is not None
        try:
            frames = self._opus.decode(av.Packet(payload))
        except av.FFmpegError as exc:
            # The decoder stays usable: the next packet decodes as after a lost one.
            raise UndecodableChunkError(f"a {len(payload)}-byte chunk is not a valid Opus packet") from exc
        blocks = [_packed(out, self.format.channels) for frame in frames for out in self._to_rate.resample(frame)]
        if not blocks:
            return np.zeros((0, self.format.channels), np.float32)
        return np.clip(np.concatenate(blocks), -1.0, 1.0)  # Opus may overshoot full scale slightly


def _layout(channels: int) -> str:
    return "mono" if channels == 1 else "stereo"


def _opus_decoder(fmt: ChunkFormat) -> tuple[av.AudioCodecContext, av.AudioResampler]:
    # libopus is the reference decoder (the native ffmpeg one trims its first frame differently);
    # either decodes at 48 kHz, so swr brings it to the stream's rate: its output follows its input
    # frame by frame after a 1 ms start-up delay, so chunks keep their durations.
    if "libopus" in av.codecs_available:
        ctx = av.CodecContext.create("libopus", "r")
    else:
        ctx = av.CodecContext.create("opus", "r")
    ctx.sample_rate = _OPUS_DECODE_RATE
    ctx.layout = _layout(fmt.channels)
    ctx.options = {"request_sample_fmt": "flt"}  # float output: no second rounding to 16 bits
    return ctx, av.AudioResampler(format="flt", layout=_layout(fmt.channels), rate=fmt.sample_rate)


def _packed(frame: av.AudioFrame, channels: int) -> np.ndarray:
    array = frame.to_ndarray()
    if frame.format.is_planar:
        array = array.T
    array = array.reshape(-1, channels)
    if array.dtype == np.int16:
        return array.astype(np.float32) * np.float32(1 / _PCM16_SCALE)
    return np.ascontiguousarray(array, dtype=np.float32)


# --- encoding (clients and tests) ------------------------------------------------------------------------


def encode_pcm16(samples: np.ndarray) -> bytes:
    """float (frames, channels) or (frames,) to interleaved little-endian int16, clipped to full scale."""
    scaled = np.rint(np.asarray(samples, dtype=np.float64) * _PCM16_SCALE)
    return np.clip(scaled, -32768, 32767).astype("<i2").tobytes()


class OpusEncoder:
    """Float audio to Opus packets of 20 ms (libopus through PyAV), one packet per chunk to send."""

    def __init__(self, sample_rate: int = 48000, channels: int = 1, *, bitrate: int = 32000) -> None:
        if "libopus" not in av.codecs_available:
            raise RuntimeError("this PyAV build has no libopus encoder")
        self.format = ChunkFormat(codec=Codec.opus, sample_rate=sample_rate, channels=channels)  # the decoder's limits
        ctx = av.CodecContext.create("libopus", "w")
        ctx.sample_rate = sample_rate
        ctx.layout = _layout(channels)
        ctx.format = "flt"
        ctx.bit_rate = bitrate
        ctx.open()
        self._ctx = ctx
        self.frame_frames = ctx.frame_size or round(sample_rate * OPUS_FRAME_S)
        self._pending = np.zeros((0, channels), np.float32)
        self._pts = 0

    def encode(self, samples: np.ndarray) -> list[bytes]:
        """Packets for every whole 20 ms frame now buffered; the rest waits for more samples or :meth:`flush`."""
        block = np.asarray(samples, dtype=np.float32).reshape(-1, self.format.channels)
        self._pending = np.concatenate([self._pending, block])
        whole = self._pending.shape[0] // self.frame_frames * self.frame_frames
        packets = [p for i in range(0, whole, self.frame_frames) for p in self._frame(self._pending[i : i + self.frame_frames])]
        self._pending = self._pending[whole:]
        return packets

    def flush(self) -> list[bytes]:
        """The last partial frame (zero-padded) and what the encoder still holds; the encoder is done after it."""
        packets: list[bytes] = []
        if self._pending.shape[0]:
            padded = np.zeros((self.frame_frames, self.format.channels), np.float32)
            padded[: self._pending.shape[0]] = self._pending
            packets += self._frame(padded)
            self._pending = self._pending[:0]
        return packets + [bytes(p) for p in self._ctx.encode(None)]

    def _frame(self, block: np.ndarray) -> list[bytes]:
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block).reshape(1, -1), format="flt", layout=_layout(self.format.channels))
        frame.sample_rate = self.format.sample_rate
        frame.pts = self._pts
        self._pts += block.shape[0]
        return [bytes(p) for p in self._ctx.encode(frame)]
