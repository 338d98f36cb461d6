"""Reading LISTENPOST_OUT and LISTENPOST_DLQ over NATS for an export (the shell around
:mod:`services.analytics.tables` and :mod:`services.analytics.writer`).

Each read is an ephemeral, in-memory pull consumer that acks nothing (the operator role may
create those and no more: services/events/permissions.py), started at the range's first
stored message (``DeliverPolicy.BY_START_TIME``) and stopped at the stream's last sequence as
it was when the read began, so an export is a snapshot and ends even while the service writes.

An export reads in three passes, each in stream order:

1. the ``rules.evaluated`` markers (small): captioned event id -> ruleset version, decisions;
2. the captioned events and decisions: the calls, windows and facets rows (with the markers'
   ruleset version), and the decisions rows (with the batch of their call, seen before them);
3. the dead letters.

Memory holds the markers of the range and the batch of each batch call (an id each), and the
writer's buffers; never the rows of the range.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, NotFoundError

from services.analytics.errors import ExportError, RowError
from services.analytics.tables import (
    TABLES,
    CallIndex,
    Marker,
    StoredEvent,
    TableName,
    Tabulator,
    range_start,
    read_marker,
    utc,
)
from services.analytics.writer import (
    FOLLOW_FLUSH_ROWS,
    FOLLOW_FLUSH_S,
    DateSpan,
    ExportWriter,
    FlushReport,
    FollowReport,
    Format,
    HourlySink,
    TableReport,
    file_tag,
    follow,
)
from services.events.binding import BindingError, decode, event_attributes
from services.events.claimcheck import ClaimCheckError, ClaimCheckUnavailable, resolve_data
from services.events.jetstream import TRANSIENT_NATS_ERRORS, evaluated_subject
from services.settings import NatsSettings, Settings

log = logging.getLogger(__name__)

#: ``(messages read since the last call, messages newly known to be in range)``: a progress bar's
#: advance and the growth of its total (each pass learns its count when it starts).
ProgressCallback = Callable[[int, int], None]

#: Messages pulled per request: captioned events can be large (up to the payload limit each).
FETCH_BATCH: Final = 64
#: Empty fetches (a second each) an export waits for messages its consumer says are pending.
MAX_IDLE_FETCHES: Final = 30
#: What a follow reader survives by reading again: a nats-server restart (which loses the
#: in-memory consumer) and the API errors around it.
_READ_AGAIN: Final[tuple[type[BaseException], ...]] = (*TRANSIENT_NATS_ERRORS, APIError)
#: A follow run remembers the batch of this many recent batch calls for its decisions.
FOLLOW_CALLS: Final = 100_000


def decision_subjects(nats: NatsSettings) -> list[str]:
    """What the decisions table reads: routes, alerts and tags (not emits, shadow matches or errors)."""
    return [nats.subject("routes", ">"), nats.subject("alerts", ">"), nats.subject("tags")]


def table_streams(settings: Settings) -> dict[TableName, str]:
    """The stream each table's rows come from."""
    return {table: settings.nats.dlq_stream if table == "dead_letters" else settings.nats.out_stream for table in TABLES}


@dataclass
class ExportReport:
    """What one export read and wrote."""

    out: Path
    start: datetime
    tables: dict[TableName, TableReport]
    read: int = 0  # messages read
    skipped: int = 0  # events their model refused (services.analytics.errors.RowError)
    unreadable: int = 0  # not CloudEvents, or data by reference that is gone
    markers: int = 0

    @property
    def rows(self) -> dict[TableName, int]:
        return {table: self.tables[table].rows for table in TABLES}


@dataclass
class _Counts:
    read: int = 0
    skipped: int = 0
    unreadable: int = 0
    notes: list[str] = field(default_factory=list)


def _no_progress(advance: int, total: int) -> None:
    return None


def _deliver_from(start: datetime | None, after_seq: int | None) -> dict[str, Any]:
    if after_seq is not None:
        return {"deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": after_seq + 1}
    if start is not None:
        return {"deliver_policy": DeliverPolicy.BY_START_TIME, "opt_start_time": start}
    return {"deliver_policy": DeliverPolicy.ALL}


async def stored_messages(
    js: JetStreamContext,
    stream: str,
    subjects: list[str],
    *,
    start: datetime | None = None,
    after_seq: int | None = None,
    stop: asyncio.Event | None = None,
    progress: ProgressCallback = _no_progress,
) -> AsyncGenerator[Msg | None, None]:
    """The messages of ``stream`` on ``subjects`` from ``start`` (or after sequence ``after_seq``),
    oldest first. Without ``stop``: until the stream's last sequence as it was at the start.
    With ``stop``: until it is set, yielding ``None`` whenever a second passes without a message."""
    info = await js.stream_info(stream)
    last_seq = int(info.state.last_seq or 0)
    # An ephemeral, in-memory consumer that acks nothing: a read leaves nothing behind (the
    # server removes it after inactive_threshold even if this process dies).
    config = ConsumerConfig(
        ack_policy=AckPolicy.NONE, filter_subjects=list(subjects), mem_storage=True, inactive_threshold=60.0,
        **_deliver_from(start, after_seq),
    )  # fmt: skip
    sub = await js.pull_subscribe(subjects[0], stream=stream, config=config)
    try:
        pending = int((await sub.consumer_info()).num_pending or 0)
        progress(0, pending)
        if stop is None and pending == 0:
            return
        idle = 0
        while stop is None or not stop.is_set():
            try:
                msgs = await sub.fetch(FETCH_BATCH, timeout=1.0)
            except (TimeoutError, NatsTimeoutError):
                if stop is not None:
                    yield None
                    continue
                # Nothing more in range (a filter's last match can precede last_seq), or a slow
                # server: only the consumer's count tells them apart, and a snapshot must be whole.
                if not (await sub.consumer_info()).num_pending:
                    return
                idle += 1
                if idle >= MAX_IDLE_FETCHES:
                    raise ExportError(
                        f"{stream} stopped delivering with messages still pending; nothing was written, run it again"
                    ) from None
                continue
            idle = 0
            for msg in msgs:
                yield msg
                meta = msg.metadata
                if stop is None and (meta.num_pending == 0 or meta.sequence.stream >= last_seq):
                    return
    finally:
        with contextlib.suppress(Exception):  # best effort: inactive_threshold removes it anyway
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, sub._consumer)


async def read_stored(js: JetStreamContext, msg: Msg, stream: str, buckets: Collection[str]) -> StoredEvent:
    """One message as a :class:`StoredEvent`, its data read back from the object store when it was
    stored by reference. Raises BindingError (not a CloudEvent) or ClaimCheckError (data gone)."""
    event = decode(msg.data, msg.headers)
    data = await resolve_data(js, event, buckets=buckets)
    meta = msg.metadata
    return StoredEvent(
        attributes=event_attributes(event), data=data, subject=msg.subject, stream=stream,
        sequence=int(meta.sequence.stream), stored_at=utc(meta.timestamp),
    )  # fmt: skip


async def _events(
    js: JetStreamContext,
    stream: str,
    subjects: list[str],
    *,
    start: datetime,
    buckets: Collection[str],
    counts: _Counts,
    progress: ProgressCallback,
) -> AsyncGenerator[StoredEvent, None]:
    """The readable events of one pass of an export; the unreadable ones counted (and logged)."""
    async with contextlib.aclosing(stored_messages(js, stream, subjects, start=start, progress=progress)) as messages:
        async for msg in messages:
            if msg is None:
                continue
            counts.read += 1
            progress(1, 0)
            try:
                yield await read_stored(js, msg, stream, buckets)
            except ClaimCheckUnavailable as exc:
                # Transient: skipping would silently drop a call from the files; fail, keep the old files.
                raise ExportError(f"the object store did not answer: {exc}; nothing was written, run it again") from exc
            except (BindingError, ClaimCheckError) as exc:
                counts.unreadable += 1
                log.warning("%s #%d (%s) skipped: %s", stream, msg.metadata.sequence.stream, msg.subject, exc)


async def _first_stored(js: JetStreamContext, stream: str) -> tuple[int, datetime | None]:
    """The stream's first sequence, and when its first message was stored (None: empty)."""
    info = await js.stream_info(stream)
    first_seq = int(info.state.first_seq or 0)
    if not info.state.messages:
        return first_seq, None
    try:
        raw = await js.get_msg(stream, first_seq)
    except NotFoundError:  # deleted since the info: the next one is as good a bound
        return first_seq, None
    return first_seq, utc(raw.time) if raw.time is not None else None


async def _span(js: JetStreamContext, stream: str, start: datetime, now: datetime) -> DateSpan | None:
    """The dates an export owns for the tables of ``stream``: the whole range while the stream
    holds everything it stored since the start; from its first message when retention has
    removed older ones (that date partial); none when retention has removed everything."""
    first_seq, first_at = await _first_stored(js, stream)
    if first_seq <= 1 or (first_at is not None and first_at <= start):
        return DateSpan(start.date(), now.date())  # nothing removed yet, or nothing in range removed
    if first_at is None:
        return None  # all it held is gone: leave the files of every date as they are
    return DateSpan(first_at.date(), now.date(), first_partial=True)


async def export(
    js: JetStreamContext,
    settings: Settings,
    out: Path,
    *,
    since: timedelta,
    batch: str | None = None,
    fmt: Format = "parquet",
    progress: ProgressCallback | None = None,
    now: datetime | None = None,
    flush_rows: int = 10_000,
) -> ExportReport:
    """Export the tables of the last ``since`` (from midnight UTC of its first day) into ``out``,
    replacing the files of every date in range; ``batch``: only that batch's rows."""
    if since <= timedelta(0):
        raise ExportError(f"the range must be positive, not {since}")
    progress = progress or _no_progress
    now = utc(now or datetime.now(UTC))
    start = range_start(since, now)
    nats = settings.nats
    buckets = [nats.outputs_bucket]
    counts = _Counts()
    markers: dict[str, Marker] = {}
    async for event in _events(
        js, nats.out_stream, [evaluated_subject(nats)], start=start, buckets=buckets, counts=counts, progress=progress
    ):
        try:
            captioned_id, marker = read_marker(event)
        except RowError as exc:
            counts.skipped += 1
            log.warning("%s", exc)
        else:
            markers[captioned_id] = marker  # stream order: a later evaluation (a replay) wins
    tabulator = Tabulator(start=start, batch=batch, markers=markers, batch_subject=nats.subject("batch"))
    passes = [
        (nats.out_stream, [nats.subject("captioned"), *decision_subjects(nats)]),
        (nats.dlq_stream, [nats.subject("dlq", ">")]),
    ]
    with ExportWriter(out, fmt, tag=file_tag(batch), flush_rows=flush_rows) as writer:
        for stream, subjects in passes:
            async for event in _events(js, stream, subjects, start=start, buckets=buckets, counts=counts, progress=progress):
                try:
                    found = tabulator.rows(event)
                except RowError as exc:
                    counts.skipped += 1
                    log.warning("%s", exc)
                    continue
                for table, row in found.rows:
                    writer.add(table, row)
        out_span = await _span(js, nats.out_stream, start, now)
        dlq_span = await _span(js, nats.dlq_stream, start, now)
        spans = {table: dlq_span if table == "dead_letters" else out_span for table in TABLES}
        tables = writer.commit(spans)
    return ExportReport(
        out=out, start=start, tables=tables, read=counts.read, skipped=counts.skipped, unreadable=counts.unreadable,
        markers=len(markers),
    )  # fmt: skip


async def follow_streams(
    js: JetStreamContext,
    settings: Settings,
    out: Path,
    *,
    since: timedelta,
    stop: asyncio.Event,
    batch: str | None = None,
    fmt: Format = "parquet",
    progress: ProgressCallback | None = None,
    on_flush: Callable[[FlushReport], None] | None = None,
    now: datetime | None = None,
    flush_rows: int = FOLLOW_FLUSH_ROWS,
    flush_s: float = FOLLOW_FLUSH_S,
) -> FollowReport:
    """Append the tables to ``out`` by hour as events are stored, until ``stop`` is set.

    The first run starts at the range's start (as an export would); a restart resumes after the
    checkpoint in ``out``. Calls get their ruleset version and decision count when the marker
    arrives before the call's rows are flushed (within ``flush_s``, usually), else they stay null.
    """
    progress = progress or _no_progress
    nats = settings.nats
    sink = HourlySink(out, fmt, streams=table_streams(settings), flush_rows=flush_rows, flush_s=flush_s)
    removed = sink.remove_unrecorded()
    if removed:
        log.info("removed %d file(s) written after the last checkpoint; their rows are read again", len(removed))
    resumed = sink.checkpoint
    start = range_start(since, utc(now or datetime.now(UTC)))
    tabulator = Tabulator(
        start=None if resumed else start, batch=batch, calls=CallIndex(FOLLOW_CALLS), batch_subject=nats.subject("batch")
    )
    reads: Mapping[str, list[str]] = {
        nats.out_stream: [nats.subject("captioned"), *decision_subjects(nats), evaluated_subject(nats)],
        nats.dlq_stream: [nats.subject("dlq", ">")],
    }
    # Bounded: a slow disk holds the readers back instead of filling memory.
    queue: asyncio.Queue[StoredEvent] = asyncio.Queue(maxsize=4 * FETCH_BATCH)
    buckets = [nats.outputs_bucket]

    async def pump(stream: str, subjects: list[str]) -> None:
        last = resumed.get(stream)
        while not stop.is_set():
            try:
                async with contextlib.aclosing(
                    stored_messages(js, stream, subjects, start=start, after_seq=last, stop=stop, progress=progress)
                ) as messages:
                    async for msg in messages:
                        if msg is None:
                            continue
                        progress(1, 0)
                        seq = int(msg.metadata.sequence.stream)
                        try:
                            event = await read_stored(js, msg, stream, buckets)
                        except (BindingError, ClaimCheckError) as exc:
                            log.warning("%s #%d (%s) skipped: %s", stream, seq, msg.subject, exc)
                            event = StoredEvent(attributes={}, data=None, subject=msg.subject, stream=stream, sequence=seq)
                        await queue.put(event)
                        last = seq
                return
            except _READ_AGAIN as exc:
                # A nats-server restart loses the in-memory consumer: make a new one after the last read.
                log.warning("reading %s: %s: %s; reading again after #%s", stream, type(exc).__name__, exc, last)
                await asyncio.sleep(1.0)

    pumps = [asyncio.create_task(pump(stream, subjects), name=f"export-follow-{stream}") for stream, subjects in reads.items()]

    async def events() -> AsyncIterator[StoredEvent | None]:
        while True:
            if all(task.done() for task in pumps) and queue.empty():
                for task in pumps:
                    task.result()  # a reader's unexpected error ends the run, with its cause
                return
            try:
                yield await asyncio.wait_for(queue.get(), timeout=1.0)
            except TimeoutError:
                yield None  # an idle tick: the sink's time-based flush

    try:
        return await follow(events(), sink, tabulator, on_flush=on_flush)
    finally:
        stop.set()
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
