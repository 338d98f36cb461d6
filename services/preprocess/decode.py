"""Decoding encoded audio to float32 blocks: libsndfile (soundfile) where it can, FFmpeg (PyAV) for the rest.

Decoding streams: a reader yields blocks of about a second, so that nothing
holds the whole recording at its source rate (a 10-minute 48 kHz stereo file
is 230 MB of float32; at 16 kHz per kept channel it is 38 MB). Every failure
becomes an :class:`AudioDecodeError` subclass with the reason in its message:
a replica never crashes on input.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, replace
from typing import Protocol

import av
import numpy as np
import soundfile

from services.preprocess.errors import (
    AudioDecodeError,
    EmptyAudioError,
    InvalidSamplesError,
    TruncatedAudioError,
    ZeroChannelsError,
)
from services.preprocess.formats import Container, SphereHeader, mp3_declares_length, sniff, sphere_header, wav_header

BLOCK_FRAMES = 1 << 16  # ~1.4-8 s per block, depending on the rate: few Python round trips, bounded memory
# A decoder may end a little short of what its header declares (codec delay and padding); more than
# this is a truncated file.
_TRUNCATION_SLACK_S = 0.25
# libsndfile's frame count for a stream that does not declare its length (FLAC's STREAMINFO total 0).
_SF_UNKNOWN_FRAMES = 2**62


@dataclass(frozen=True)
class StreamInfo:
    container: str
    codec: str
    sample_rate: int
    channels: int
    declared_frames: int | None  # what the header says; None where the container does not say
    # A decoder's guess where nothing is declared (bit rate x size, the last Ogg page): sizes the
    # memory reserved, never refuses anything.
    estimated_frames: int | None = None

    @property
    def declared_duration_s(self) -> float | None:
        return None if self.declared_frames is None else self.declared_frames / self.sample_rate


class AudioReader(Protocol):
    info: StreamInfo

    def blocks(self) -> Iterator[np.ndarray]:
        """float32 blocks of shape (frames, channels); raises AudioDecodeError subclasses."""
        ...


def open_audio(data: bytes, container: Container | None = None) -> AbstractContextManager[AudioReader]:
    """Open ``data`` with the decoder for its container (sniffed when not given)."""
    if not data:
        raise EmptyAudioError("audio is empty (0 bytes)")
    container = container or sniff(data)
    if container.backend == "sndfile":
        return _open_sndfile_or_ffmpeg(data, container)
    return _open_ffmpeg(data, container)


class _NotForSndfile(Exception):  # private control flow, caught in this module
    """libsndfile knows the container but not the codec inside: FFmpeg may."""


# WAV format tags libsndfile decodes: PCM, MS ADPCM, float, A-law, mu-law, IMA ADPCM, G.723, GSM 6.10,
# G.721, MPEG, extensible. Others (G.722, G.726, AAC in WAV...) go to FFmpeg.
_SNDFILE_WAV_TAGS = {0x0001, 0x0002, 0x0003, 0x0006, 0x0007, 0x0011, 0x0014, 0x0031, 0x0040, 0x0050, 0x0055, 0xFFFE}


@contextmanager
def _open_sndfile_or_ffmpeg(data: bytes, container: Container) -> Iterator[AudioReader]:
    fallback = replace(container, backend="ffmpeg", demuxer=container.name)  # FFmpeg's wav, aiff, caf... demuxers
    with ExitStack() as stack:
        if container.name == "wav" and wav_header(data).format_tag not in _SNDFILE_WAV_TAGS:
            reader = stack.enter_context(_open_ffmpeg(data, fallback))
        else:
            try:
                reader = stack.enter_context(_open_sndfile(data, container))
            except _NotForSndfile:
                reader = stack.enter_context(_open_ffmpeg(data, fallback))
        yield reader


def check_complete(info: StreamInfo, decoded_frames: int) -> None:
    """Refuse audio that decodes to nothing, or to clearly less than its header declares."""
    if decoded_frames == 0:
        raise EmptyAudioError(f"audio decodes to zero samples ({info.container})")
    if info.declared_frames is None:
        return
    missing = info.declared_frames - decoded_frames
    if missing > max(_TRUNCATION_SLACK_S * info.sample_rate, 0.01 * info.declared_frames):
        raise TruncatedAudioError(
            f"audio is truncated: the {info.container.upper()} header declares "
            f"{info.declared_frames / info.sample_rate:.2f} s, the file holds {decoded_frames / info.sample_rate:.2f} s"
        )


def _decode_failure(
    exc: Exception, info: StreamInfo, decoded_frames: int, *, header_ok: bool = False
) -> AudioDecodeError:
    """A decoder error mid-stream: after a good header or good samples, the body is cut short or damaged."""
    if decoded_frames or header_ok:
        return TruncatedAudioError(
            f"audio is truncated or corrupt: {info.container.upper()} decoding broke off after "
            f"{decoded_frames / info.sample_rate:.2f} s: {exc}"
        )
    return AudioDecodeError(f"audio could not be decoded ({info.container}): {exc}")


def _check_finite(block: np.ndarray, info: StreamInfo, decoded_frames: int) -> None:
    # One reduction per block: the sum is finite exactly when every sample is (float32 overflow aside,
    # which needs values no decoder produces).
    if not np.isfinite(block.sum(dtype=np.float64)):
        where = decoded_frames + int(np.argmax(~np.isfinite(block).all(axis=1)))
        raise InvalidSamplesError(
            f"audio contains NaN or infinite samples (first at {where / info.sample_rate:.3f} s)"
        )


# --- libsndfile ------------------------------------------------------------------------------------


class _SndfileReader:
    def __init__(self, handle: soundfile.SoundFile, info: StreamInfo, *, last_frame: int | None = None) -> None:
        self._handle = handle
        self.info = info
        self._last_frame = last_frame  # read no further (SPHERE: its sample_count); None: to the end

    def blocks(self) -> Iterator[np.ndarray]:
        decoded = 0
        while True:
            want = BLOCK_FRAMES if self._last_frame is None else min(BLOCK_FRAMES, self._last_frame - decoded)
            if want <= 0:
                return
            try:
                block = self._handle.read(want, dtype="float32", always_2d=True)
            except (soundfile.LibsndfileError, RuntimeError, ValueError) as exc:
                raise _decode_failure(exc, self.info, decoded, header_ok=True) from exc
            if block.shape[0] == 0:
                return
            _check_finite(block, self.info, decoded)
            decoded += block.shape[0]
            yield block


def _check_sphere(data: bytes) -> SphereHeader:
    """Read and check a SPHERE header; refuse a file cut short of its sample_count before decoding it.

    The figures the limits check (duration, channel-seconds, samples per byte) then come from a
    sample_count the bytes can hold: a header claiming billions of samples stops here.
    """
    header = sphere_header(data)
    if header.sample_count is not None:
        present = max(0, len(data) - header.header_size) // header.frame_bytes
        info = StreamInfo("sph", header.sample_coding, header.sample_rate, header.channel_count, header.sample_count)
        check_complete(info, max(present, 1))
    return header


def _check_sndfile_read_sphere(handle: soundfile.SoundFile, header: SphereHeader) -> None:
    # libsndfile parses only the first 1024 bytes of a SPHERE header, by substring: a field it missed
    # or read elsewhere would decode the samples as something else. Both readings must agree.
    theirs = (int(handle.samplerate), int(handle.channels), str(handle.subtype))
    ours = (header.sample_rate, header.channel_count, header.subtype)
    if theirs != ours:
        raise AudioDecodeError(
            "audio could not be decoded: libsndfile reads this SPHERE header as "
            f"{theirs[0]} Hz x {theirs[1]} {theirs[2]}, not {ours[0]} Hz x {ours[1]} {ours[2]} as written"
        )


@contextmanager
def _open_sndfile(data: bytes, container: Container) -> Iterator[AudioReader]:
    declared: int | None = None
    sphere: SphereHeader | None = None
    if container.name == "sph":
        sphere = _check_sphere(data)
        declared = sphere.sample_count  # libsndfile ignores sample_count: its length is the file's size
    elif container.name == "wav":
        header = wav_header(data)  # libsndfile reads a truncated WAV silently: check its header ourselves
        declared = header.declared_frames
        if declared is not None:  # refuse a cut file before decoding it
            present = max(0, len(data) - header.data_offset) // header.block_align
            check_complete(
                StreamInfo("wav", "pcm", header.sample_rate or 1, header.channels, declared), max(present, 1)
            )
    try:
        handle = soundfile.SoundFile(io.BytesIO(data))
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        if "channel count is zero" in str(exc).lower():
            raise ZeroChannelsError(f"audio has zero channels ({container.name})") from exc
        if "unsupported encoding" in str(exc).lower():
            raise _NotForSndfile(str(exc)) from exc
        raise AudioDecodeError(f"audio could not be decoded ({container.name}): {_sndfile_reason(exc)}") from exc
    with handle:
        if handle.channels <= 0:
            raise ZeroChannelsError(f"audio has zero channels ({container.name})")
        if sphere is not None:
            _check_sndfile_read_sphere(handle, sphere)
        if handle.frames >= _SF_UNKNOWN_FRAMES:
            # libsndfile cannot read such a stream (it seeks to its unknown end); FFmpeg decodes it,
            # and the decode limits count what it produces.
            raise _NotForSndfile(f"{container.name} declares no length")
        trusted = container.name in ("flac", "aiff", "caf") or (container.name == "mp3" and mp3_declares_length(data))
        if trusted and handle.frames > 0:
            declared = handle.frames  # from STREAMINFO, the Xing/LAME header or the chunk sizes
        info = StreamInfo(
            container=container.name,
            codec=str(handle.subtype).lower(),
            sample_rate=int(handle.samplerate),
            channels=int(handle.channels),
            declared_frames=declared,
            estimated_frames=None if declared is not None or handle.frames <= 0 else int(handle.frames),
        )
        # Bytes after a SPHERE file's sample_count are no samples of it: read no further.
        yield _SndfileReader(handle, info, last_frame=None if sphere is None else sphere.sample_count)


def _sndfile_reason(exc: Exception) -> str:
    # libsndfile names our BytesIO object in its message; the reason is what follows.
    text = str(exc)
    reason = text.split(": ", 1)[1] if text.startswith("Error opening") and ": " in text else text
    return reason or "libsndfile refused it without giving a reason"  # its NIST reader says nothing


# --- FFmpeg (PyAV) ---------------------------------------------------------------------------------


def _frame_samples(frame: av.AudioFrame, channels: int) -> np.ndarray:
    """(frames, channels) float32 in [-1, 1] from any FFmpeg sample format."""
    array = frame.to_ndarray()
    array = array.T if frame.format.is_planar else array.reshape(-1, channels)
    if array.dtype == np.float32:
        return array
    if array.dtype == np.float64:
        return array.astype(np.float32)
    if array.dtype == np.uint8:
        return (array.astype(np.float32) - 128.0) / 128.0
    scale = float(2 ** (8 * array.dtype.itemsize - 1))
    return (array.astype(np.float64) / scale).astype(np.float32)


class _FfmpegReader:
    def __init__(self, frames: Iterator[av.AudioFrame], first: np.ndarray, info: StreamInfo) -> None:
        self._frames = frames
        self._first = first
        self.info = info

    def blocks(self) -> Iterator[np.ndarray]:
        # Codec frames are ~1k samples: gather them into blocks of BLOCK_FRAMES for the stages after.
        pending, size, decoded = [self._first], self._first.shape[0], 0
        while True:
            try:
                frame = next(self._frames, None)
            except (av.FFmpegError, ValueError, EOFError) as exc:
                raise _decode_failure(exc, self.info, decoded + size) from exc
            if frame is not None:
                if frame.sample_rate != self.info.sample_rate or frame.layout.nb_channels != self.info.channels:
                    raise AudioDecodeError(
                        "audio could not be decoded: its sample rate or channel count changes mid-stream "
                        f"({self.info.sample_rate} Hz x {self.info.channels} -> "
                        f"{frame.sample_rate} Hz x {frame.layout.nb_channels})"
                    )
                samples = _frame_samples(frame, self.info.channels)
                pending.append(samples)
                size += samples.shape[0]
            if pending and (size >= BLOCK_FRAMES or frame is None):
                block = pending[0] if len(pending) == 1 else np.concatenate(pending)
                _check_finite(block, self.info, decoded)
                decoded += block.shape[0]
                pending, size = [], 0
                yield block
            if frame is None:
                return


def _demux(handle: av.container.InputContainer, stream: av.AudioStream) -> Iterator[av.AudioFrame]:
    for packet in handle.demux(stream):
        yield from packet.decode()


@contextmanager
def _open_ffmpeg(data: bytes, container: Container) -> Iterator[AudioReader]:
    try:
        handle = av.open(io.BytesIO(data), mode="r", format=container.demuxer, metadata_errors="ignore")
    except (av.FFmpegError, ValueError, EOFError) as exc:
        raise AudioDecodeError(f"audio could not be decoded ({container.name}, truncated or corrupt): {exc}") from exc
    with handle:
        if not handle.streams.audio:
            raise ZeroChannelsError(f"audio has zero channels: the {container.name} file holds no audio stream")
        stream = handle.streams.audio[0]
        frames = _demux(handle, stream)
        # The first frame tells the real rate and layout (Opus always decodes at 48 kHz; HE-AAC
        # doubles the rate its header gives), so decode it before anyone reads the info.
        try:
            first = next(frames, None)
        except (av.FFmpegError, ValueError, EOFError) as exc:
            raise AudioDecodeError(f"audio could not be decoded ({container.name}): {exc}") from exc
        if first is None:
            raise EmptyAudioError(f"audio decodes to zero samples ({container.name})")
        if first.layout.nb_channels <= 0:
            raise ZeroChannelsError(f"audio has zero channels ({container.name})")
        info = _ffmpeg_info(handle, stream, container, first)
        yield _FfmpegReader(frames, _frame_samples(first, info.channels), info)


def _ffmpeg_info(
    handle: av.container.InputContainer, stream: av.AudioStream, container: Container, first: av.AudioFrame
) -> StreamInfo:
    rate, channels = int(first.sample_rate), int(first.layout.nb_channels)
    declared: int | None = None
    # Trust durations the container writes in its header (MP4's stream duration, Matroska's segment
    # duration); ADTS and Ogg durations are estimates from the bit rate, not declarations.
    if container.name == "m4a" and stream.duration and stream.time_base:
        declared = int(round(float(stream.duration * stream.time_base) * rate))
    elif container.name == "webm" and handle.duration:
        declared = int(round(handle.duration / av.time_base * rate))
    estimated = None
    if declared is None and handle.duration and handle.duration > 0:
        estimated = int(round(handle.duration / av.time_base * rate))
    return StreamInfo(container.name, stream.codec_context.name, rate, channels, declared, estimated)


# --- whole-file decoding (small clips, tools, tests) --------------------------------------------------


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # float32, shape (frames, channels), in [-1, 1]
    sample_rate: int
    format: str

    @property
    def channels(self) -> int:
        return int(self.samples.shape[1])

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / self.sample_rate


def decode_audio(data: bytes) -> DecodedAudio:
    """Decode a whole recording at its own rate. The pipeline streams instead; see :mod:`.pipeline`."""
    with open_audio(data) as reader:
        blocks = list(reader.blocks())
        decoded = sum(b.shape[0] for b in blocks)
        check_complete(reader.info, decoded)
        samples = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
        return DecodedAudio(samples=samples, sample_rate=reader.info.sample_rate, format=reader.info.container)
