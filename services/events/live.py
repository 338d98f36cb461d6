"""The live-stream contract: subjects, chunk headers and the events of a live audio stream.

A live source (a PBX leg, a camera's microphone, a browser) sends:

- ``com.listenpost.stream.started`` on ``<prefix>.stream.<id>.started``: the stream's context
  (site, device, call id, channel roles) and the wall-clock time of its audio's first sample;
- audio chunks on ``<prefix>.stream.<id>``: the raw payload, with a sequence number, the
  audio time of its first sample and the codec in headers (:data:`SEQ_HEADER` and friends);
- ``com.listenpost.stream.ended`` on ``<prefix>.stream.<id>`` after its last chunk (same
  subject, so it is read after every chunk), or nothing: an idle timeout closes it.

Out of it come ``com.listenpost.stream.captioned`` on ``<prefix>.live.captioned.<id>`` (one per
window, as soon as it closes: the rules evaluate it) and, at the end, one
``com.listenpost.audio.captioned`` summary of the whole stream on ``<prefix>.captioned``, so
post-call rules and the CRM write-back run on live calls as on recordings. A stream that
cannot go on (an unknown codec, audio faster than real time) ends with a dead letter of its
``stream.started`` on ``<prefix>.dlq.stream`` (``audio.failed``: stage ``stream``, the reason);
``listenpost dlq replay`` runs it again from its first chunk while the chunks are kept.
"""

from __future__ import annotations

import re
import struct
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from services.events.models import AudioCaptioned, ChannelRole
from services.settings import NatsSettings

STREAM_STARTED = "com.listenpost.stream.started"
STREAM_ENDED = "com.listenpost.stream.ended"
STREAM_CAPTIONED = "com.listenpost.stream.captioned"

#: A stream id is one subject token, and a KV key: no dots, wildcards or spaces.
STREAM_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

SEQ_HEADER = "Listenpost-Seq"  # 1, 2, 3, ... per stream
TIMESTAMP_HEADER = "Listenpost-Timestamp-Ms"  # audio time of the chunk's first sample, from the stream's start
CODEC_HEADER = "Listenpost-Codec"  # pcm16 | mulaw | alaw | opus
RATE_HEADER = "Listenpost-Rate"  # samples per second
CHANNELS_HEADER = "Listenpost-Channels"  # 1 or 2
#: A WebSocket chunk's header (services/ingest/live_ws.py): sequence number and audio time in
#: milliseconds, unsigned, big-endian; the payload follows.
WS_FRAME_HEADER = struct.Struct(">II")

#: How long a listener (the WebSocket door, `listenpost stream`) keeps listening after a stream's
#: summary: the decisions on its last window and on the summary itself are stored just after it.
DECISIONS_AFTER_SUMMARY_S = 3.0


class StreamIdError(ValueError):
    """Not a usable stream id."""


def check_stream_id(stream_id: str) -> str:
    if not STREAM_ID.match(stream_id):
        raise StreamIdError(
            f"stream id {stream_id[:80]!r} is not 1-64 letters, digits, '_' or '-' (it is a NATS subject token)"
        )
    return stream_id


def chunk_subject(nats: NatsSettings, stream_id: str) -> str:
    return nats.subject("stream", check_stream_id(stream_id))


def started_subject(nats: NatsSettings, stream_id: str = "*") -> str:
    """``<prefix>.stream.<id>.started``; ``*``: every stream's (the owners' durable)."""
    return nats.subject("stream", stream_id if stream_id == "*" else check_stream_id(stream_id), "started")


def window_subject(nats: NatsSettings, stream_id: str = ">") -> str:
    """``<prefix>.live.captioned.<id>``; ``>``: every stream's (what the rules consume)."""
    return nats.subject("live", "captioned", stream_id if stream_id == ">" else check_stream_id(stream_id))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamStarted(_Strict):
    """The ``data`` of ``stream.started``."""

    stream_id: str = Field(pattern=STREAM_ID.pattern)
    started_at: datetime | None = Field(
        default=None, description="Wall-clock time of the audio's first sample (detection latency is measured from it)."
    )
    channels: list[ChannelRole] = Field(default_factory=list, description="Channel roles, e.g. 0 agent, 1 customer.")
    context: dict[str, Any] = Field(default_factory=dict, description="Site, camera or microphone id, call id, ...")
    language: str | None = None


class StreamEnded(_Strict):
    """The ``data`` of ``stream.ended``: after the last chunk, with how many were sent."""

    stream_id: str = Field(pattern=STREAM_ID.pattern)
    chunks: int | None = Field(default=None, ge=0, description="Chunks sent, if the sender counted them.")


class StreamPosition(BaseModel):
    """Where a window sits in its stream, and what happened to the stream so far."""

    id: str
    window: int = Field(description="The window's index in the stream: 0, 1, 2, ...")
    start: float = Field(description="Seconds from the stream's start.")
    end: float
    channel: int
    role: str | None = None
    final: bool = False
    silent: bool = Field(default=False, description="Under the gate on every channel: not captioned, measured.")
    #: Wall-clock time of the window's end (started_at + end), when the stream gave started_at.
    audio_end_at: datetime | None = None
    dropped_windows: int = 0
    gaps_s: float = 0.0


class StreamWindowCaptioned(AudioCaptioned):
    """The ``data`` of ``stream.captioned``: an ``audio.captioned`` of one window, plus its place."""

    stream: StreamPosition
