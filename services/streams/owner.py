"""Owning one live stream from its start to its end: the I/O around :class:`StreamSession`.

The LiveStreams replica that takes a ``stream.started`` message from the durable consumer owns
the stream, and holds that message (heart-beating it) while the stream is open. It reads the
stream's chunks with an ordered consumer, captions each window as it closes, publishes one
``stream.captioned`` per window and stores where it is in the streams' KV bucket. If the replica
dies, the message is redelivered after ``owner_ack_wait_s`` and the next owner resumes from the
stored position: windows already captioned are not captioned again, and a window published just
before the crash is not published twice (its ``Nats-Msg-Id`` derives from stream and index).

Live audio cannot wait: windows wait for the Captioner in a bounded backlog, and the declared
drop policy decides which go when it is full. A stream that ends (``stream.ended``) or goes
quiet (``idle_timeout_s``) gets its last window, then one ``audio.captioned`` summary.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
from cloudevents.core.base import BaseCloudEvent
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from services.captioner.facets import extract_facets
from services.captioner.redact_captions import redact_captions
from services.captioner.redaction import RedactionPolicy
from services.captioner.timeline import merge_timeline
from services.events.binding import BindingError, decode, event_data_json, new_event
from services.events.claimcheck import by_reference
from services.events.consumer import Poison
from services.events.jetstream import derive_msg_id
from services.events.live import (
    STREAM_CAPTIONED,
    STREAM_ENDED,
    STREAM_STARTED,
    StreamPosition,
    StreamStarted,
    StreamWindowCaptioned,
    chunk_subject,
    window_subject,
)
from services.events.models import AUDIO_CAPTIONED, Acoustics, AudioCaptioned, AudioFacts, Facets, SourceEventRef, Window
from services.events.traced import publish_traced
from services.metrics import recorder
from services.settings import Settings
from services.streams.backlog import DropPolicy, WindowBacklog
from services.streams.errors import StreamError
from services.streams.measure import WindowMeasurer
from services.streams.session import Checkpoint, StreamSession, WindowGroup
from services.streams.strays import ended_key
from services.streams.summary import merge_acoustics

log = logging.getLogger(__name__)

Caption = Callable[[np.ndarray, str], Awaitable[Any]]  # -> CaptionResult

_EXTENSION_VALUE_MAX = 128


@dataclass
class _Progress:
    """What the stream produced so far: the summary is made of it."""

    windows: list[Window] = field(default_factory=list)
    parts: list[Acoustics] = field(default_factory=list)
    done: set[int] = field(default_factory=set)
    cut: int = 0  # windows cut so far (index + 1 of the last)
    final: int | None = None  # the index of the stream's last window, once cut
    last: tuple[WindowGroup, dict[int, str]] | None = None  # the latest window captioned: its tail ends the summary


class StreamOwner:
    """Owns streams for one replica: :meth:`own` is the durable consumer's handler."""

    def __init__(self, js: JetStreamContext, settings: Settings, *, caption: Caption, state: KeyValue,
                 measurer: WindowMeasurer, redaction: RedactionPolicy) -> None:  # fmt: skip
        self._js = js
        self._settings = settings
        self._caption = caption
        self._state = state
        self._measurer = measurer
        self._redaction = redaction
        self.open_streams = 0

    async def own(self, msg: Msg) -> None:
        """Run the stream ``msg`` started until it ends; raises Poison for a stream that cannot go on."""
        started, start_event = _read_started(msg)
        stream_id = started.stream_id
        checkpoint = await self._checkpoint(stream_id)
        owners = int(getattr(msg.metadata, "num_delivered", 1) or 1)
        if owners > 1:
            log.info("stream %s: resuming at window %d (owner %d)", stream_id, checkpoint.next_window, owners)
        self.open_streams += 1
        recorder().set("listenpost_streams_open", self.open_streams)
        try:
            await self._run(stream_id, started, start_event, checkpoint)
        finally:
            self.open_streams -= 1
            recorder().set("listenpost_streams_open", self.open_streams)

    async def _checkpoint(self, stream_id: str) -> Checkpoint:
        try:
            entry = await self._state.get(stream_id)
        except KeyNotFoundError:
            return Checkpoint()
        return Checkpoint.model_validate_json(entry.value or b"{}")

    async def _run(self, stream_id: str, started: StreamStarted, start_event: BaseCloudEvent, checkpoint: Checkpoint) -> None:
        cfg = self._settings.streams
        session = StreamSession(cfg, checkpoint)
        backlog: WindowBacklog[WindowGroup] = WindowBacklog(DropPolicy(cfg.drop_policy), cfg.max_waiting_windows)
        progress = _Progress(done=set(range(checkpoint.next_window)))
        progress.cut = checkpoint.next_window
        state = {"dropped": checkpoint.dropped_windows, "silent": checkpoint.silent_windows, "published": 0}
        ready = asyncio.Event()
        room = asyncio.Event()
        reading_done = asyncio.Event()
        # Audio stored before this owner took the stream (a previous owner's, lost) is caught up
        # on, never dropped: the drop policy is for audio the Captioner falls behind on live.
        # Until the last window cut from that audio is taken, new windows wait for room too: they
        # would otherwise evict the catch-up windows still waiting (a CI run lost window 2 so).
        took_over_at = time.time()
        catching_up: set[int] = set()  # windows cut from audio stored before the takeover, still waiting

        async def caption_windows() -> None:
            while True:
                group = backlog.take()
                if group is not None:
                    catching_up.discard(group.index)
                room.set()
                if group is None:
                    if reading_done.is_set():
                        return
                    ready.clear()
                    await ready.wait()
                    continue
                await self._window(stream_id, started, start_event, group, session, progress, state)
                await self._save(stream_id, session, progress, state)

        async def offer(groups: list[WindowGroup], *, stored_before: bool = False) -> None:
            for group in groups:
                progress.cut = max(progress.cut, group.index + 1)
                if group.final:
                    progress.final = group.index
                wait = stored_before or bool(catching_up)
                if stored_before:
                    catching_up.add(group.index)
                while wait and len(backlog) >= cfg.max_waiting_windows and not worker.done():
                    room.clear()
                    await room.wait()
                for dropped in backlog.offer(group):
                    state["dropped"] += 1
                    progress.done.add(dropped.index)
                    recorder().inc("listenpost_stream_windows", outcome="dropped")
                    log.warning("stream %s: window %d dropped (the Captioner is behind; drop_policy %s)",
                                stream_id, dropped.index, cfg.drop_policy)  # fmt: skip
                ready.set()

        worker = asyncio.get_running_loop().create_task(caption_windows(), name=f"stream-{stream_id}-captions")
        deliver = (
            {"deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": checkpoint.js_seq}
            if checkpoint.js_seq
            else {"deliver_policy": DeliverPolicy.ALL}
        )
        sub = await self._js.subscribe(
            chunk_subject(self._settings.nats, stream_id), stream=cfg.live_stream, ordered_consumer=True,
            config=ConsumerConfig(**deliver),
        )  # fmt: skip
        ended_by = "ended"
        last_seq = checkpoint.js_seq  # the LISTENPOST_LIVE sequence of the last message read (the end's, at the end)
        faults: dict[str, float] = dict.fromkeys(_FAULTS, 0.0)
        try:
            opened_at = time.monotonic()
            while not checkpoint.finished:
                if time.monotonic() - opened_at > cfg.max_stream_s:
                    ended_by = "max_stream_s"
                    break
                try:
                    chunk = await sub.next_msg(timeout=cfg.idle_timeout_s)
                except (TimeoutError, NatsTimeoutError):
                    ended_by = "idle"
                    log.info("stream %s: no chunk for %.0f s, closed (idle_timeout_s)", stream_id, cfg.idle_timeout_s)
                    break
                meta = chunk.metadata
                last_seq = int(meta.sequence.stream)
                if _is_end(chunk):
                    break
                published = meta.timestamp.timestamp() if meta.timestamp else time.time()
                try:
                    groups = session.push(chunk.headers or {}, chunk.data, js_seq=int(meta.sequence.stream), published_s=published)
                except StreamError as exc:
                    recorder().inc("listenpost_streams_failed", reason=exc.reason)
                    raise Poison("stream", f"stream {stream_id}: {exc}", error=type(exc).__name__) from exc
                recorder().inc("listenpost_stream_chunks")
                faults = _count_faults(session, faults)
                await offer(groups, stored_before=published < took_over_at)
            try:
                if not checkpoint.finished:
                    await offer(session.finish())
            except StreamError as exc:
                raise Poison("stream", f"stream {stream_id}: {exc}", error=type(exc).__name__) from exc
            reading_done.set()
            ready.set()
            await worker
            if cfg.summary:
                await self._summary(stream_id, started, start_event, session, progress, state, ended_by)
            await self._state.delete(stream_id)
            # A chunk stored after this is for a stream that has ended (services/streams/strays.py).
            await self._state.put(ended_key(stream_id), str(last_seq).encode())
            log.info("stream %s %s: %d chunk(s), %.1f s of audio, %d window(s) published by this owner, %d dropped, %d silent",
                     stream_id, ended_by, session.chunks, session.audio_s, state["published"],
                     state["dropped"], state["silent"])  # fmt: skip
        finally:
            if not worker.done():
                worker.cancel()
                await asyncio.gather(worker, return_exceptions=True)
            await sub.unsubscribe()

    async def _window(self, stream_id: str, started: StreamStarted, start_event: BaseCloudEvent, group: WindowGroup,
                      session: StreamSession, progress: _Progress, state: dict[str, int]) -> None:  # fmt: skip
        roles = {c.index: c.role for c in started.channels}
        began = time.perf_counter()
        # A silent window (under the gate on every channel) is not captioned, but still an event:
        # its acoustics are what a dead-air rule reads.
        heard = [w for w in group.windows if not w.silent]
        results = dict(zip(
            [w.channel for w in heard],
            await asyncio.gather(*(self._caption(w.samples, f"{stream_id}/w{group.index}c{w.channel}") for w in heard)),
            strict=True,
        ))  # fmt: skip
        windows = [
            Window(index=group.index * len(group.windows) + i, start=round(w.start_s, 3), end=round(w.end_s, 3),
                   channel=w.channel, role=roles.get(w.channel), caption=r.text if r else "",
                   prompt_tokens=r.prompt_tokens if r else 0, output_tokens=r.output_tokens if r else 0,
                   engine_s=round(r.engine_seconds, 4) if r else 0.0)  # fmt: skip
            for i, w in enumerate(group.windows)
            for r in [results.get(w.channel)]
        ]
        if group.silent:
            state["silent"] += 1
        facets = extract_facets(windows)
        redacted = redact_captions(windows, facets, self._redaction)
        acoustics, part = self._measurer.measure(group, roles, part_s=None if group.final else self._settings.streams.hop_s)
        counts = session.counts
        position = StreamPosition(
            id=stream_id, window=group.index, start=round(group.start, 3), end=round(group.end, 3),
            channel=group.windows[0].channel, role=roles.get(group.windows[0].channel), final=group.final, silent=group.silent,
            audio_end_at=started.started_at + timedelta(seconds=group.end) if started.started_at else None,
            dropped_windows=state["dropped"], gaps_s=float(counts["gap_s"]),
        )  # fmt: skip
        data = StreamWindowCaptioned(
            source_event=SourceEventRef(id=start_event.get_id(), source=start_event.get_source(), type=start_event.get_type()),
            context=started.context,
            audio=_facts(session, group.end - group.start),
            windows=redacted.windows,
            caption=merge_timeline(redacted.windows),
            facets=redacted.facets,
            redactions={str(label): n for label, n in redacted.counts.items()},
            acoustics=acoustics,
            model=self._settings.captioner.model,
            engine=self._settings.captioner.engine,
            timings={"caption_s": round(time.perf_counter() - began, 4)},
            stream=position,
        )
        msg_id = derive_msg_id("stream-window", stream_id, str(group.index))
        event = new_event(STREAM_CAPTIONED, self._settings.source, data.model_dump(mode="json"), subject=stream_id,
                          extensions=_extensions(stream_id, started, start_event))  # fmt: skip
        await publish_traced(self._js, window_subject(self._settings.nats, stream_id), event, msg_id=msg_id)
        progress.windows += redacted.windows
        progress.parts.append(part)
        state["published"] += 1
        progress.last = None if group.final else (group, roles)
        progress.done.add(group.index)
        recorder().inc("listenpost_stream_windows", outcome="silent" if group.silent else "captioned")
        if started.started_at is not None:
            lag = time.time() - (started.started_at.timestamp() + group.end)
            recorder().observe("listenpost_stream_window_latency_seconds", max(0.0, lag))

    async def _save(self, stream_id: str, session: StreamSession, progress: _Progress, state: dict[str, int]) -> None:
        next_window = min((i for i in range(progress.cut + 1) if i not in progress.done), default=progress.cut)
        js_seq, chunk_seq, offset = session.resume_point(next_window)
        finished = progress.final is not None and progress.final in progress.done and next_window > progress.final
        checkpoint = Checkpoint(next_window=next_window, js_seq=js_seq, chunk_seq=chunk_seq, offset_s=offset,
                                dropped_windows=state["dropped"], silent_windows=state["silent"], finished=finished,
                                audio_s=session.audio_s, format=session.first_format)  # fmt: skip
        await self._state.put(stream_id, checkpoint.model_dump_json().encode())

    async def _summary(self, stream_id: str, started: StreamStarted, start_event: BaseCloudEvent, session: StreamSession,
                       progress: _Progress, state: dict[str, int], ended_by: str) -> None:  # fmt: skip
        windows = await self._stored_windows(stream_id)
        if progress.last is not None:  # no shorter last window: the latest one's rest ends the stream
            group, roles = progress.last
            tail = self._measurer.tail(group, roles, after_s=self._settings.streams.hop_s)
            if tail is not None:
                progress.parts.append(tail)
        acoustics = merge_acoustics(progress.parts) or Acoustics(duration_s=0.0, silence_ratio=1.0, longest_silence_s=0.0,
                                                                  dead_air_s=0.0, peak_dbfs=-100.0, channels=[])  # fmt: skip
        windows = sorted(windows, key=lambda w: (w.start, w.channel or 0))
        data = AudioCaptioned(
            source_event=SourceEventRef(id=start_event.get_id(), source=start_event.get_source(), type=start_event.get_type()),
            context={**started.context, "stream": {"id": stream_id, "ended_by": ended_by, "dropped_windows": state["dropped"],
                                                   "silent_windows": state["silent"], **session.counts}},
            audio=_facts(session, session.audio_s),
            windows=[w.model_copy(update={"index": i}) for i, w in enumerate(windows)],
            caption=merge_timeline(windows),
            facets=extract_facets(windows) if windows else Facets(),
            acoustics=acoustics,
            model=self._settings.captioner.model,
            engine=self._settings.captioner.engine,
            timings={"audio_s": round(session.audio_s, 3)},
        )
        summary = new_event(AUDIO_CAPTIONED, self._settings.source, data.model_dump(mode="json"), subject=stream_id,
                            extensions=_extensions(stream_id, started, start_event))  # fmt: skip
        nats = self._settings.nats
        msg_id = derive_msg_id("captioned", start_event.get_source(), start_event.get_id())
        event = await by_reference(self._js, summary, bucket=nats.outputs_bucket, name=f"captioned/{msg_id}",
                                   max_payload_bytes=nats.max_payload_bytes, ttl_s=nats.out_max_age_s,
                                   max_bytes=nats.out_max_bytes, replicas=nats.replicas)  # fmt: skip
        await publish_traced(self._js, nats.subject("captioned"), event, msg_id=msg_id)

    async def _stored_windows(self, stream_id: str) -> list[Window]:
        """The stream's windows as published (redacted), read back: a resumed owner has them all.
        Direct reads by subject, oldest first (no consumer, whose pending count can lag a publish)."""
        found: list[Window] = []
        subject, seq = window_subject(self._settings.nats, stream_id), 1
        while True:
            try:
                raw = await self._js.get_msg(self._settings.nats.out_stream, seq, subject=subject, next=True)
            except NotFoundError:
                return found
            data = event_data_json(decode(raw.data or b"", raw.headers))
            found += [Window.model_validate(w) for w in data.get("windows", [])]
            seq = int(raw.seq or seq) + 1


_FAULTS = ("duplicates", "out_of_order", "missing")


def _count_faults(session: StreamSession, before: dict[str, float]) -> dict[str, float]:
    """Count the chunk faults the last push found (a metric each), and return the new totals."""
    now = {label: float(session.counts[label]) for label in _FAULTS}
    for label in _FAULTS:
        if now[label] > before[label]:
            recorder().inc("listenpost_stream_chunk_faults", now[label] - before[label], label=label)
    return now


def _read_started(msg: Msg) -> tuple[StreamStarted, BaseCloudEvent]:
    try:
        event = decode(msg.data, msg.headers)
    except (BindingError, ValueError) as exc:
        raise Poison("stream", f"not a CloudEvent: {exc}", error=type(exc).__name__) from exc
    if event.get_type() != STREAM_STARTED:
        raise Poison("stream", f"{event.get_type()!r} on {msg.subject} is not {STREAM_STARTED}", error="WrongType")
    try:
        started = StreamStarted.model_validate(event_data_json(event))
    except ValidationError as exc:
        raise Poison("stream", f"stream.started data not valid: {exc.errors()[0]['msg']}", error="ValidationError") from exc
    expected = msg.subject.rsplit(".", 2)[-2]
    if started.stream_id != expected:
        raise Poison("stream", f"stream.started for {started.stream_id!r} published on the subject of {expected!r}",
                     error="WrongSubject")  # fmt: skip
    return started, event


def _is_end(msg: Msg) -> bool:
    headers = msg.headers or {}
    if headers.get("ce-type") == STREAM_ENDED:
        return True
    if (headers.get("Content-Type") or headers.get("content-type") or "").startswith("application/cloudevents"):
        try:
            return decode(msg.data, headers).get_type() == STREAM_ENDED
        except (BindingError, ValueError):
            return False
    return False


def _facts(session: StreamSession, duration_s: float) -> AudioFacts:
    fmt = session.first_format
    return AudioFacts(duration_s=round(duration_s, 3), sample_rate=fmt.sample_rate if fmt else 16000,
                      channels=fmt.channels if fmt else 1, format="stream", codec=str(fmt.codec) if fmt else None)  # fmt: skip


def _extensions(stream_id: str, started: StreamStarted, start_event: BaseCloudEvent) -> dict[str, str]:
    extensions = {"streamid": stream_id, "inputid": start_event.get_id()}
    callid = started.context.get("callid") or started.context.get("call_id") or start_event.get_attributes().get("callid")
    if isinstance(callid, str) and 0 < len(callid) <= _EXTENSION_VALUE_MAX:
        extensions["callid"] = callid
    return extensions
