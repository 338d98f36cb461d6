"""What the bytes are: the container, from its magic bytes, and the declared format checked against it.

We sniff the container ourselves instead of letting FFmpeg probe, for two
reasons: FFmpeg then only ever runs the one demuxer we chose (never a playlist
demuxer such as HLS or concat that would open other files or URLs named in
untrusted input), and a wrong ``audio.format`` is caught with a clear message.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

from services.preprocess.errors import (
    AudioDecodeError,
    EmptyAudioError,
    FormatMismatchError,
    UnsupportedFormatError,
    ZeroChannelsError,
)

Backend = Literal["sndfile", "ffmpeg"]


@dataclass(frozen=True)
class Container:
    name: str  # wav, flac, ogg, mp3, m4a, aac, webm, aiff, caf
    backend: Backend  # libsndfile where it decodes the format, FFmpeg (PyAV) for the rest
    demuxer: str | None = None  # the FFmpeg demuxer for the ffmpeg backend
    codec: str | None = None  # known from the magic bytes alone: vorbis, opus or flac inside Ogg


# Declared names (``audio.format``, case-insensitive, an ``audio/`` MIME prefix allowed) and the
# containers each may be. A codec name is accepted for every container that carries that codec.
_DECLARED: dict[str, frozenset[str]] = {
    **dict.fromkeys(("wav", "wave", "x-wav", "vnd.wave", "rf64"), frozenset({"wav"})),
    **dict.fromkeys(("flac", "x-flac"), frozenset({"flac", "ogg"})),
    **dict.fromkeys(("ogg", "oga", "x-ogg"), frozenset({"ogg"})),
    "vorbis": frozenset({"ogg", "webm"}),
    "opus": frozenset({"ogg", "webm"}),
    **dict.fromkeys(("mp3", "mpeg", "mpga", "mpeg3", "x-mpeg-3"), frozenset({"mp3"})),
    **dict.fromkeys(("m4a", "mp4", "x-m4a", "aac", "aacp", "alac"), frozenset({"m4a", "aac"})),
    **dict.fromkeys(("webm", "mka", "mkv", "matroska", "x-matroska"), frozenset({"webm"})),
    **dict.fromkeys(("aiff", "aif", "x-aiff"), frozenset({"aiff"})),
    **dict.fromkeys(("caf", "x-caf"), frozenset({"caf"})),
}


def sniff(data: bytes) -> Container:
    """The container of ``data``, from its first bytes; refuse anything we do not decode."""
    head = data[:64]
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return Container("wav", "sndfile")
    if head[:4] == b"fLaC":
        return Container("flac", "sndfile")
    if head[:4] == b"OggS":
        if b"OpusHead" in head:
            # libsndfile refuses some valid short Opus files ("malformed"); FFmpeg decodes them all.
            return Container("ogg", "ffmpeg", "ogg", codec="opus")
        if b"\x01vorbis" in head:
            return Container("ogg", "sndfile", codec="vorbis")
        if b"\x7fFLAC" in head:
            return Container("ogg", "ffmpeg", "ogg", codec="flac")
        return Container("ogg", "ffmpeg", "ogg")
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return Container("aiff", "sndfile")
    if head[:4] == b"caff":
        return Container("caf", "sndfile")
    if head[4:8] == b"ftyp":
        return Container("m4a", "ffmpeg", "mov")
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return Container("webm", "ffmpeg", "matroska")
    if head[:3] == b"ID3" or _mpeg_audio_sync(head) == "mp3":
        return Container("mp3", "sndfile")
    if _mpeg_audio_sync(head) == "adts":
        return Container("aac", "ffmpeg", "aac")
    if not data:
        raise EmptyAudioError("audio is empty (0 bytes)")
    raise UnsupportedFormatError(
        f"audio could not be decoded: unrecognised audio format (first bytes {data[:12].hex(' ')}); "
        "expected WAV, FLAC, Ogg (Vorbis, Opus), MP3, M4A/AAC, WebM, AIFF or CAF"
    )


def _mpeg_audio_sync(head: bytes) -> str | None:
    """'mp3' for an MPEG audio frame header, 'adts' for an AAC ADTS header, else None."""
    if len(head) < 2 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return None
    layer = (head[1] >> 1) & 0b11
    if layer == 0:
        return "adts" if head[1] & 0xF6 == 0xF0 else None
    return "mp3"


def check_declared(declared: str | None, container: Container) -> None:
    """Refuse bytes that are not what the event says they are."""
    if declared is None or not declared.strip():
        return
    name = declared.strip().lower().removeprefix("audio/").split(";")[0].strip()
    allowed = _DECLARED.get(name)
    if allowed is None:
        raise UnsupportedFormatError(f"declared audio format {declared!r} is not one we decode")
    if container.name not in allowed:
        raise FormatMismatchError(
            f"declared audio format {declared!r} does not match the content, which is {container.name.upper()}"
        )


# WAV format tags whose block_align is one frame: PCM, IEEE float, A-law, mu-law, WAVE_FORMAT_EXTENSIBLE.
# (For ADPCM and GSM a block holds many frames; libsndfile knows how many.)
_FRAME_PER_BLOCK_TAGS = {0x0001, 0x0003, 0x0006, 0x0007, 0xFFFE}


@dataclass(frozen=True)
class WavHeader:
    format_tag: int
    channels: int
    sample_rate: int
    block_align: int
    data_offset: int
    data_size: int | None  # None: unknown (streamed WAV with a 0 or 0xFFFFFFFF size, RF64 without ds64)

    @property
    def declared_frames(self) -> int | None:
        if self.data_size is None or self.block_align <= 0 or self.format_tag not in _FRAME_PER_BLOCK_TAGS:
            return None
        return self.data_size // self.block_align


def wav_header(data: bytes) -> WavHeader:
    """Walk the RIFF chunks up to ``data``: libsndfile reads a truncated WAV silently, we do not.

    Only the fields needed to tell a truncated or channel-less file apart; the
    samples themselves are libsndfile's job.
    """
    pos, fmt, ds64_size = 12, None, None
    while pos + 8 <= len(data):
        chunk_id, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if chunk_id == b"ds64" and size >= 16:
            ds64_size = struct.unpack_from("<Q", data, body + 8)[0]  # RF64: the real data size
        elif chunk_id == b"fmt ":
            if size < 16 or body + 16 > len(data):
                raise AudioDecodeError("audio could not be decoded: WAV 'fmt ' chunk is too short")
            tag, channels, rate, _bps, block_align = struct.unpack_from("<HHIIH", data, body)
            fmt = (tag, channels, rate, block_align)
        elif chunk_id == b"data":
            if fmt is None:
                raise AudioDecodeError("audio could not be decoded: WAV has no 'fmt ' chunk before its data")
            tag, channels, rate, block_align = fmt
            if channels == 0:
                raise ZeroChannelsError("audio has zero channels (the WAV header says 0)")
            known = ds64_size if size == 0xFFFFFFFF and ds64_size else size
            return WavHeader(tag, channels, rate, block_align, body, None if known in (0, 0xFFFFFFFF) else known)
        if body + size > len(data):
            raise AudioDecodeError(
                f"audio could not be decoded: WAV chunk {chunk_id!r} of {size} bytes runs past the end of the file"
            )
        pos = body + size + (size & 1)  # chunks are padded to an even length
    if fmt is not None and fmt[1] == 0:
        raise ZeroChannelsError("audio has zero channels (the WAV header says 0)")
    raise AudioDecodeError("audio could not be decoded: WAV has no 'data' chunk")


def mp3_declares_length(data: bytes) -> bool:
    """Whether an MP3 carries a Xing/Info or VBRI header (a frame count written by the encoder).

    Without one, a decoder's length is a guess from the bit rate, wrong for VBR files: no ground to
    call such a file truncated.
    """
    start = 0
    if data[:3] == b"ID3" and len(data) >= 10:
        size = data[6] << 21 | data[7] << 14 | data[8] << 7 | data[9]  # ID3v2 sizes are "syncsafe"
        start = 10 + size + (10 if data[5] & 0x10 else 0)  # a footer follows when flagged
    first_frame = data[start : start + 200]  # the tag sits in the first frame, after its side info
    return any(tag in first_frame for tag in (b"Xing", b"Info", b"VBRI"))

