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
    TruncatedAudioError,
    UnsupportedFormatError,
    ZeroChannelsError,
)

Backend = Literal["sndfile", "ffmpeg"]


@dataclass(frozen=True)
class Container:
    name: str  # wav, flac, ogg, mp3, m4a, aac, webm, aiff, caf, sph
    backend: Backend  # libsndfile where it decodes the format, FFmpeg (PyAV) for the rest
    demuxer: str | None = None  # the FFmpeg demuxer for the ffmpeg backend
    codec: str | None = None  # known from the magic bytes alone: vorbis, opus or flac inside Ogg


# Declared names (``audio.format``, case-insensitive, an ``audio/`` MIME prefix allowed) and the
# containers each may be. A codec name is accepted for every container that carries that codec.
#
# "wav" may also be NIST SPHERE: LDC telephone corpora and the archives built from them name SPHERE
# files ``.wav``, and a format derived from the file name (or its MIME type, audio/x-wav) then says
# "wav". Both are PCM or G.711 in a header libsndfile reads, so nothing is lost by decoding what the
# bytes are; the magic bytes still decide the decoder. Not the other way round: a declared "sph" on
# a RIFF file is a real mismatch. And not "rf64", which names one RIFF variant, never a SPHERE file.
_DECLARED: dict[str, frozenset[str]] = {
    **dict.fromkeys(("wav", "wave", "x-wav", "vnd.wave"), frozenset({"wav", "sph"})),
    "rf64": frozenset({"wav"}),
    **dict.fromkeys(("flac", "x-flac"), frozenset({"flac", "ogg"})),
    **dict.fromkeys(("ogg", "oga", "x-ogg"), frozenset({"ogg"})),
    "vorbis": frozenset({"ogg", "webm"}),
    "opus": frozenset({"ogg", "webm"}),
    **dict.fromkeys(("mp3", "mpeg", "mpga", "mpeg3", "x-mpeg-3"), frozenset({"mp3"})),
    **dict.fromkeys(("m4a", "mp4", "x-m4a", "aac", "aacp", "alac"), frozenset({"m4a", "aac"})),
    **dict.fromkeys(("webm", "mka", "mkv", "matroska", "x-matroska"), frozenset({"webm"})),
    **dict.fromkeys(("aiff", "aif", "x-aiff"), frozenset({"aiff"})),
    **dict.fromkeys(("caf", "x-caf"), frozenset({"caf"})),
    **dict.fromkeys(("sph", "sphere", "nist", "x-nist"), frozenset({"sph"})),
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
    if head[: len(SPHERE_MAGIC)] == SPHERE_MAGIC:
        return Container("sph", "sndfile")
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
        "expected WAV, FLAC, Ogg (Vorbis, Opus), MP3, M4A/AAC, WebM, AIFF, CAF or NIST SPHERE"
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


# --- NIST SPHERE ------------------------------------------------------------------------------------
#
# An ASCII header: "NIST_1A\n", the header's own size in bytes right-aligned on the second line
# ("   1024\n"), then one "name -type value" line per field (-i integer, -r real, -sN string of N
# bytes) up to "end_head"; the rest of the header is padding and the samples start at its size.
# libsndfile decodes PCM, mu-law and A-law SPHERE, but reads its header loosely: it falls back to
# 1024 when the size is not a number, ignores sample_count (the length is the file's size), and
# refuses what it cannot read without a reason. So we read the header ourselves first.

SPHERE_MAGIC = b"NIST_1A\n"
_SPHERE_HEADER_UNIT = 1024  # the standard header size; longer headers are whole multiples of it
_SPHERE_MAX_HEADER = 64 * 1024  # real headers are 1024 bytes: a bound so a header cannot make us scan the file
_SPHERE_MAX_CHANNELS = 1024  # libsndfile's SF_MAX_CHANNELS
_SPHERE_MAX_INT = 2**62  # libsndfile's sample counts are 64-bit; anything near this is not a recording
# Sample codings libsndfile decodes, and the name we give each; "mu-law" is an older spelling of ulaw.
_SPHERE_CODINGS = {"pcm": "pcm", "ulaw": "ulaw", "mu-law": "ulaw", "alaw": "alaw"}
# Compressions LDC applied inside SPHERE (sample_coding "pcm,embedded-shorten-v2.00"): libsndfile
# decodes none of them, and decoding them ourselves means running a shorten/wavpack decoder on input.
_SPHERE_COMPRESSIONS = ("shorten", "wavpack", "shortpack")
# libsndfile's subtype for each (coding, bytes per sample): what it must report for the header we read.
_SPHERE_SUBTYPES = {
    ("pcm", 1): "PCM_S8",
    ("pcm", 2): "PCM_16",
    ("pcm", 3): "PCM_24",
    ("pcm", 4): "PCM_32",
    ("ulaw", 1): "ULAW",
    ("alaw", 1): "ALAW",
}
_BAD_SPHERE = "audio could not be decoded: SPHERE header"


@dataclass(frozen=True)
class SphereField:
    kind: str  # "i", "r" or "s"
    value: str
    length: int | None = None  # N of "-sN": the string's declared length


@dataclass(frozen=True)
class SphereHeader:
    header_size: int  # where the samples start
    sample_count: int | None  # frames (samples per channel); None where the header does not say
    sample_rate: int
    channel_count: int
    sample_n_bytes: int
    sample_coding: str  # pcm, ulaw or alaw

    @property
    def frame_bytes(self) -> int:
        return self.channel_count * self.sample_n_bytes

    @property
    def subtype(self) -> str:
        """libsndfile's name for the sample encoding (PCM_16, ULAW...)."""
        return _SPHERE_SUBTYPES[(self.sample_coding, self.sample_n_bytes)]


def _ascii_digits(text: str) -> bool:
    # str.isdigit() alone accepts "¹" and other Unicode digits (latin-1 byte 0xB9), which int() refuses.
    return text.isascii() and text.isdigit()


def _is_real(text: str) -> bool:
    whole, _, fraction = text.removeprefix("-").partition(".")
    return bool(whole or fraction) and all(not part or _ascii_digits(part) for part in (whole, fraction))


def sphere_header_size(data: bytes) -> int:
    """The header size the second line declares: 1024 or a larger multiple of it, at most 64 KiB."""
    if not data.startswith(SPHERE_MAGIC):
        raise AudioDecodeError(f"{_BAD_SPHERE} does not start with NIST_1A")
    end = data.find(b"\n", len(SPHERE_MAGIC), len(SPHERE_MAGIC) + 16)
    if end < 0:
        raise _sphere_short_or_bad(data, "has no header size on its second line")
    line = data[len(SPHERE_MAGIC) : end].decode("latin-1").strip()
    if not _ascii_digits(line):  # at most 15 characters: the search above stops there
        raise AudioDecodeError(f"{_BAD_SPHERE} size {line!r} is not a number of bytes")
    size = int(line)
    if size < _SPHERE_HEADER_UNIT or size % _SPHERE_HEADER_UNIT or size > _SPHERE_MAX_HEADER:
        raise AudioDecodeError(
            f"{_BAD_SPHERE} size {size} is not a multiple of {_SPHERE_HEADER_UNIT} bytes "
            f"between {_SPHERE_HEADER_UNIT} and {_SPHERE_MAX_HEADER}"
        )
    if len(data) < size:
        raise TruncatedAudioError(
            f"audio is truncated: the SPHERE header is {size} bytes, the file holds {len(data)}"
        )
    return size


def _sphere_short_or_bad(data: bytes, problem: str) -> AudioDecodeError:
    # A file cut inside its first line cannot be told apart from a bad header by content; by size it can.
    if len(data) < _SPHERE_HEADER_UNIT:
        return TruncatedAudioError(
            f"audio is truncated: the file holds {len(data)} bytes, less than a {_SPHERE_HEADER_UNIT}-byte SPHERE header"
        )
    return AudioDecodeError(f"{_BAD_SPHERE} {problem}")


def sphere_fields(data: bytes, header_size: int) -> dict[str, SphereField]:
    """The "name -type value" lines of the header, up to end_head; refuse a line of another shape."""
    text = data[:header_size].decode("latin-1")
    lines = text.split("\n")[2:]  # after NIST_1A and the size
    fields: dict[str, SphereField] = {}
    for line in lines:
        line = line.strip()
        if line.rstrip("\x00 ") == "end_head":  # padding may follow at once, as NULs
            return fields
        if not line or line.startswith(";"):  # blank and comment lines carry no field
            continue
        if "\x00" in line:
            # libsndfile reads the header as a C string: it would not see the fields after the NUL.
            raise AudioDecodeError(f"{_BAD_SPHERE} holds a NUL byte before end_head")
        name, _, rest = line.partition(" ")
        kind, _, value = rest.strip().partition(" ")
        field = _sphere_field(name, kind, value.strip())
        if name in fields:
            raise AudioDecodeError(f"{_BAD_SPHERE} gives {name!r} twice")
        fields[name] = field
    raise AudioDecodeError(f"{_BAD_SPHERE} has no end_head within its {header_size} bytes")


def _sphere_field(name: str, kind: str, value: str) -> SphereField:
    shown = f"{name} {kind} {value}"[:60]
    if kind in ("-i", "-r"):
        # Every number is checked, not only the fields we use: libsndfile finds fields by substring, and a
        # line that swallowed the next ("sample_sig_bits -i 16sample_coding -s4 ulaw") would still name one.
        if kind == "-i" and not _ascii_digits(value.removeprefix("-")):
            raise AudioDecodeError(f"{_BAD_SPHERE} line {shown!r}: the value is not an integer")
        if kind == "-r" and not _is_real(value):
            raise AudioDecodeError(f"{_BAD_SPHERE} line {shown!r}: the value is not a number")
        return SphereField(kind[1], value)
    if kind.startswith("-s") and _ascii_digits(kind[2:]) and len(kind) <= 8:
        # The value is the rest of the line, not exactly N bytes: libsndfile itself writes
        # "sample_byte_format -s3 01" for 24-bit samples.
        return SphereField("s", value, int(kind[2:]))
    raise AudioDecodeError(f"{_BAD_SPHERE} line {shown!r} is not 'name -i|-r|-sN value'")


def sphere_int(
    fields: dict[str, SphereField], name: str, *, low: int, high: int, as_string: bool = False
) -> int | None:
    """An integer field within [low, high]; None when absent.

    ``as_string``: a number written as a string (-sN) is accepted too, for a field whose value we
    read and libsndfile does not need (it writes "sample_n_bytes -s1 1" for mu-law itself). Where
    libsndfile needs the field, it reads it only as -i: a -s there it would not see.
    """
    field = fields.get(name)
    if field is None:
        return None
    if field.kind != "i" and not (as_string and field.kind == "s"):
        raise AudioDecodeError(f"{_BAD_SPHERE} field {name} is -{field.kind}, not an integer (-i)")
    text = field.value.removeprefix("-")
    if not _ascii_digits(text):
        raise AudioDecodeError(f"{_BAD_SPHERE} field {name} is not a number: {field.value[:24]!r}")
    if len(text) > 19:  # past any 64-bit count; and int() of thousands of digits is slow, then refused
        raise AudioDecodeError(f"{_BAD_SPHERE} field {name} has {len(text)} digits, outside {low}-{high}")
    number = int(field.value)
    if not low <= number <= high:
        raise AudioDecodeError(f"{_BAD_SPHERE} field {name} is {number}, outside {low}-{high}")
    return number


def sphere_coding(fields: dict[str, SphereField]) -> str:
    """pcm, ulaw or alaw; refuse compressed SPHERE (shorten, wavpack) and codings libsndfile lacks."""
    field = fields.get("sample_coding")
    if field is None:
        return "pcm"  # the SPHERE default, and libsndfile's
    coding = field.value.strip().lower()
    for compression in _SPHERE_COMPRESSIONS:
        if compression in coding:
            raise UnsupportedFormatError(
                f"audio could not be decoded: SPHERE file compressed with {compression} "
                f"(sample_coding {field.value!r}): not supported; decompress it with sph2pipe first"
            )
    base = coding.split(",")[0]
    if base not in _SPHERE_CODINGS:
        raise UnsupportedFormatError(
            f"audio could not be decoded: SPHERE sample_coding {field.value[:40]!r} is not one we decode "
            "(pcm, ulaw, alaw)"
        )
    return _SPHERE_CODINGS[base]


def sphere_sample_n_bytes(fields: dict[str, SphereField], coding: str) -> int:
    """Bytes per sample: sample_n_bytes, else the length of sample_byte_format, else 1 for G.711."""
    # G.711 samples are 1 byte whatever the field says, so its form matters not; PCM's width libsndfile
    # reads from "sample_n_bytes -i" (or the byte order's length) only.
    declared = sphere_int(fields, "sample_n_bytes", low=1, high=4, as_string=coding != "pcm")
    order = fields.get("sample_byte_format")
    order_bytes = order.length if order is not None and order.length and order.length > 1 else None
    n_bytes = declared or order_bytes or (1 if coding != "pcm" else None)
    if n_bytes is None:
        raise AudioDecodeError(f"{_BAD_SPHERE} gives neither sample_n_bytes nor sample_byte_format for its PCM")
    if coding != "pcm" and n_bytes != 1:
        raise AudioDecodeError(f"{_BAD_SPHERE} says {coding} samples of {n_bytes} bytes; {coding} samples are 1 byte")
    if order is not None and order_bytes is not None:
        # libsndfile reads a byte order only as "01" (little-endian) or "10" (big-endian), of the sample's width.
        if order_bytes != n_bytes or order.value not in ("01", "10"):
            raise UnsupportedFormatError(
                f"audio could not be decoded: SPHERE sample_byte_format -s{order.length} {order.value[:12]!r} "
                f"for {n_bytes}-byte samples is not one we decode (01 or 10)"
            )
    return n_bytes


def sphere_header(data: bytes) -> SphereHeader:
    """The header fields decoding needs, each checked: a malformed header is refused, never guessed at."""
    size = sphere_header_size(data)
    fields = sphere_fields(data, size)
    interleaved = fields.get("channels_interleaved")
    if interleaved is not None and interleaved.value.upper() == "FALSE":
        raise UnsupportedFormatError(
            "audio could not be decoded: SPHERE file with channels not interleaved: not supported"
        )
    channels = sphere_int(fields, "channel_count", low=0, high=_SPHERE_MAX_CHANNELS)
    if channels is None:
        raise AudioDecodeError(f"{_BAD_SPHERE} gives no channel_count")
    if channels == 0:
        raise ZeroChannelsError("audio has zero channels (the SPHERE header says 0)")
    rate = sphere_int(fields, "sample_rate", low=1, high=2**31 - 1)
    if rate is None:
        raise AudioDecodeError(f"{_BAD_SPHERE} gives no sample_rate")
    coding = sphere_coding(fields)
    return SphereHeader(
        header_size=size,
        sample_count=sphere_int(fields, "sample_count", low=0, high=_SPHERE_MAX_INT, as_string=True),
        sample_rate=rate,
        channel_count=channels,
        sample_n_bytes=sphere_sample_n_bytes(fields, coding),
        sample_coding=coding,
    )
