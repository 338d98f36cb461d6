"""Chunks nobody will read: for a stream that was never started, or after a stream ended.

Over NATS a sender gets no answer to a chunk, so a chunk on the wrong subject would sit in
LISTENPOST_LIVE unread until it expires. Every ``streams.stray_check_s`` one sweep looks at the
chunk subjects the stream holds (one per stream id, with its message count) and, for each
stream that is not open:

- chunks but no ``stream.started``, the last of them older than ``idle_timeout_s`` (a start
  that is merely late is not a stray): "never started";
- a chunk stored after the stream's end (the owner records the end's sequence in the streams'
  KV bucket as ``ended.<id>``): "after the stream ended".

Each is reported once, as a dead letter on ``<prefix>.dlq.stream`` naming the stream, the count
and the last chunk (its id derives from that chunk's sequence, so replicas sweeping at the same
time store one), and counted in ``listenpost_streams_failed{reason="stray-chunks"}``. The sweep
remembers what it reported as ``stray.<id>`` in the bucket.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from services.events.consumer import Poison
from services.events.deadletter import original_record, publish_dead_letter
from services.events.live import STREAM_ID, started_subject
from services.metrics import recorder
from services.settings import Settings

log = logging.getLogger(__name__)

#: Subjects looked at per sweep at most: a sweep's cost stays bounded whatever the stream holds.
MAX_SUBJECTS_PER_SWEEP = 1000


@dataclass(frozen=True)
class Stray:
    stream_id: str
    subject: str
    last_seq: int
    chunks: int
    why: str  # "never started" | "after the stream ended"

    @property
    def reason(self) -> str:
        return f"{self.chunks} chunk(s) on {self.subject} for stream {self.stream_id!r}, which {self._what}: nobody reads them"

    @property
    def _what(self) -> str:
        return "was never started" if self.why == "never started" else "had already ended"


def ended_key(stream_id: str) -> str:
    return f"ended.{stream_id}"


def _stray_key(stream_id: str) -> str:
    return f"stray.{stream_id}"


async def _value(kv: KeyValue, key: str) -> bytes | None:
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return None
    return entry.value


async def find_strays(js: JetStreamContext, settings: Settings, state: KeyValue, *, now: float | None = None) -> list[Stray]:
    """The streams with chunks nobody will read, not reported yet."""
    cfg, nats = settings.streams, settings.nats
    now = time.time() if now is None else now
    info = await js.stream_info(cfg.live_stream, subjects_filter=nats.subject("stream", "*"))
    subjects = dict(list((info.state.subjects or {}).items())[:MAX_SUBJECTS_PER_SWEEP])
    strays: list[Stray] = []
    for subject, count in subjects.items():
        stream_id = subject.rsplit(".", 1)[-1]
        if not STREAM_ID.match(stream_id) or await _value(state, stream_id) is not None:
            continue  # open: its owner reads it
        try:
            last = await js.get_last_msg(cfg.live_stream, subject)
        except NotFoundError:
            continue  # expired meanwhile
        last_seq = int(last.seq or 0)
        reported = await _value(state, _stray_key(stream_id))
        if reported is not None and int(reported) >= last_seq:
            continue
        ended = await _value(state, ended_key(stream_id))
        if ended is not None:
            if last_seq > int(ended):
                late = await _count_after(js, cfg.live_stream, subject, int(ended), last_seq)
                strays.append(Stray(stream_id, subject, last_seq, late, "after the stream ended"))
            continue
        try:
            await js.get_last_msg(cfg.live_stream, started_subject(nats, stream_id))
        except NotFoundError:
            stored_at = last.time.timestamp() if last.time is not None else now
            if now - stored_at > cfg.idle_timeout_s:
                strays.append(Stray(stream_id, subject, last_seq, int(count), "never started"))
    return strays


async def _count_after(js: JetStreamContext, stream: str, subject: str, after: int, last: int, limit: int = 10_000) -> int:
    """Messages on ``subject`` after sequence ``after`` (up to ``last``; at most ``limit`` read)."""
    count, seq = 0, after + 1
    while seq <= last and count < limit:
        try:
            raw = await js.get_msg(stream, seq, subject=subject, next=True)
        except NotFoundError:
            break
        count += 1
        seq = int(raw.seq or seq) + 1
    return count


async def report_strays(js: JetStreamContext, settings: Settings, state: KeyValue) -> list[Stray]:
    """Find and dead-letter the strays; what was reported."""
    strays = await find_strays(js, settings, state)
    for stray in strays:
        last = await js.get_last_msg(settings.streams.live_stream, stray.subject)
        await publish_dead_letter(
            js, settings.nats, settings.source, poison=Poison("stream", stray.reason, error="StrayChunks"),
            stream=settings.streams.live_stream, sequence=stray.last_seq,
            original=original_record(stray.subject, dict(last.headers or {}), b""), deliveries=None,
        )  # fmt: skip
        await state.put(_stray_key(stray.stream_id), str(stray.last_seq).encode())
        recorder().inc("listenpost_streams_failed", reason="stray-chunks")
    return strays


async def sweep_forever(js: JetStreamContext, settings: Settings, state: KeyValue) -> None:
    """Sweep every ``streams.stray_check_s`` until cancelled; a failed sweep is logged and retried."""
    while True:
        await asyncio.sleep(settings.streams.stray_check_s)
        try:
            await report_strays(js, settings, state)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - NATS trouble: the next sweep tries again
            log.error("looking for stray live chunks failed: %s: %s", type(exc).__name__, exc)
