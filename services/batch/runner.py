"""Submit a batch and collect its results: the shell around the manifest and the run record.

Each recording becomes an ``audio.submitted`` on ``<prefix>.batch.<batch-id>`` (the batch
stream, consumed by the Ingress a few at a time: docs/batch.md), at most ``rate`` per second and
at most ``max_in_flight`` without a result. Results are read back from JetStream itself, from the
batch's start on (captioned events by their ``inputid``, dead letters likewise), so a re-run
also learns what finished while nobody was watching.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aiolimiter import AsyncLimiter
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from services.batch.manifest import BatchItem
from services.batch.record import DONE, ItemRecord, RunRecord, event_id_for, save
from services.events.binding import BindingError, decode, event_data_json, new_event
from services.events.bounds import StreamFullError
from services.events.claimcheck import audio_reference
from services.events.connection import connect
from services.events.jetstream import publish_event
from services.events.models import AUDIO_SUBMITTED, AudioSubmitted
from services.settings import NatsSettings

log = logging.getLogger(__name__)

#: Results read back before their id is known to be ours (a re-run's first minutes), kept at most.
_MAX_UNCLAIMED = 200_000
#: Results are looked for from this long before the batch began (clocks differ a little).
_CLOCK_SLACK = timedelta(minutes=5)


@dataclass(frozen=True)
class BatchOptions:
    rate: float = 10.0  # submissions per second
    max_in_flight: int = 32  # submitted, no result yet
    wait_s: float = 600.0  # give up waiting when no result has come for this long
    retry_failed: bool = False
    max_file_bytes: int = 512 * 1024 * 1024
    bucket: str = "listenpost-audio"
    source: str = "urn:listenpost:batch"
    save_every_s: float = 5.0


class BatchStopped(Exception):
    """No result came for ``wait_s``: what is still out stays ``submitted`` for a re-run."""


async def run_batch(
    items: list[BatchItem],
    record: RunRecord,
    *,
    nats: NatsSettings,
    record_path: Path,
    options: BatchOptions = BatchOptions(),
    on_change: Callable[[RunRecord], None] = lambda record: None,
) -> RunRecord:
    """Submit what has no result yet and wait for the results; the record is saved as it goes
    and on the way out (a Ctrl-C included), so a re-run continues."""
    record.runs += 1
    if options.retry_failed:
        for entry in record.items.values():
            if entry.status == "failed":
                entry.status, entry.reason, entry.stage, entry.finished_at = "pending", None, None, None
    todo = [item for item in items if record.items[item.key].status not in DONE]
    batch = _Batch(record, options, on_change)
    nc = await connect(nats, role="operator", name="listenpost-batch")
    js = nc.jetstream()
    saver = asyncio.create_task(batch.save_periodically(record_path))
    try:
        start = record.created - _CLOCK_SLACK
        # The captioned event's body is the whole timeline: its headers name the input.
        subs = [
            await js.subscribe(nats.subject("captioned"), cb=batch.on_captioned, headers_only=True, ordered_consumer=True,
                               deliver_policy=DeliverPolicy.BY_START_TIME, config=_start_at(start)),
            await js.subscribe(nats.subject("dlq", ">"), cb=batch.on_failed, ordered_consumer=True,
                               deliver_policy=DeliverPolicy.BY_START_TIME, config=_start_at(start)),
        ]  # fmt: skip
        limiter = AsyncLimiter(options.rate, 1)
        for item in todo:
            entry = record.items[item.key]
            if entry.status in DONE:  # its result arrived while we went through the list
                continue
            await batch.slot()
            async with limiter:
                await _submit(js, nats, item, entry, record.batch_id, options, batch)
        await batch.drain()
        for sub in subs:
            await sub.unsubscribe()
    finally:
        saver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await saver
        save(record, record_path)
        await nc.close()
    return record


def _start_at(moment: datetime) -> ConsumerConfig:
    return ConsumerConfig(opt_start_time=moment.astimezone(UTC))


async def _submit(
    js: Any, nats: NatsSettings, item: BatchItem, entry: ItemRecord, batch_id: str, options: BatchOptions, batch: _Batch
) -> None:
    try:
        data = await asyncio.to_thread(_read, item, options.max_file_bytes) if item.path is not None else None
    except OSError as exc:
        batch.finish(entry, "invalid", reason=exc.strerror or str(exc))
        return
    except _Unusable as exc:
        batch.finish(entry, "invalid", reason=str(exc))
        return
    if data is not None:
        entry.sha256, entry.bytes = hashlib.sha256(data).hexdigest(), len(data)
    # Submitted before (a re-run): the same id again, which the batch stream's dedup window drops
    # when the first one is still there or done. Pending: a new attempt (0 the first time).
    if entry.status == "submitted" and entry.event_ids:
        event_id = entry.event_ids[-1]
    else:
        event_id = event_id_for(item.key, sha256=entry.sha256, attempt=len(entry.event_ids))
    context = {**item.context, "batch": {"id": batch_id, "path": item.key}}
    if data is not None:
        # An archive's file names are not declarations (LDC's SPHERE files are named .wav, a FLAC
        # may be too): only a manifest's `format` column declares; otherwise the bytes decide.
        name = item.path.name if item.path else "audio"
        audio = await audio_reference(js, data, filename=name, event_id=event_id, bucket=options.bucket,
                                      replicas=nats.replicas, fmt=item.format)  # fmt: skip
    else:
        audio = {"uri": item.url, **({"format": item.format} if item.format else {})}
    submitted = AudioSubmitted.model_validate(
        {
            "audio": audio,
            "channels": [{"index": i, "role": r} for i, r in enumerate(item.channels) if r],
            "context": context,
            **({"language": item.language} if item.language else {}),
        }
    )
    extensions = {"callid": str(context["callid"])} if "callid" in context else {}
    event = new_event(
        AUDIO_SUBMITTED, options.source, submitted.model_dump(mode="json", exclude_none=True), id=event_id,
        subject=item.key[-200:], extensions=extensions or None,
    )  # fmt: skip
    while True:
        try:
            await publish_event(js, nats.subject("batch", batch_id), event, msg_id=event_id)
            break
        except StreamFullError as exc:  # the batch stream is full: wait for the Ingress to catch up
            log.warning("%s; waiting", exc)
            await asyncio.sleep(2.0)
    if event_id not in entry.event_ids:
        entry.event_ids.append(event_id)
    batch.submitted(entry, event_id)


class _Unusable(ValueError):
    pass


def _read(item: BatchItem, limit: int) -> bytes:
    assert item.path is not None
    size = item.path.stat().st_size
    if size == 0:
        raise _Unusable("empty file")
    if size > limit:
        raise _Unusable(f"{size} bytes, more than the {limit} a batch submits (--max-file-mb)")
    return item.path.read_bytes()


class _Batch:
    """The run's moving parts: which event id is whose, the in-flight bound, the clock of the
    last result (for ``wait_s``)."""

    def __init__(self, record: RunRecord, options: BatchOptions, on_change: Callable[[RunRecord], None]) -> None:
        self.record = record
        self.options = options
        self.on_change = on_change
        self.by_event = {eid: entry for entry in record.items.values() for eid in entry.event_ids}
        self.in_flight = {entry.key for entry in record.items.values() if entry.status == "submitted"}
        self.unclaimed: dict[str, dict[str, Any]] = {}  # results of ids not (yet) known, bounded
        self.changed = asyncio.Event()
        self.last_result = time.monotonic()
        self.dirty = False

    async def slot(self) -> None:
        while len(self.in_flight) >= self.options.max_in_flight:
            await self._wait_for_change()

    async def drain(self) -> None:
        while self.in_flight:
            await self._wait_for_change()

    async def _wait_for_change(self) -> None:
        self.changed.clear()
        remaining = self.options.wait_s - (time.monotonic() - self.last_result)
        if remaining <= 0:
            raise BatchStopped(f"no result for {self.options.wait_s:g} s; {len(self.in_flight)} recordings still out")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.changed.wait(), min(remaining, 1.0))

    def submitted(self, entry: ItemRecord, event_id: str) -> None:
        self.by_event[event_id] = entry
        if not self.in_flight:  # the wait for results starts now, not at the last one
            self.last_result = time.monotonic()
        entry.status, entry.submitted_at = "submitted", datetime.now(UTC)
        self.in_flight.add(entry.key)
        self._changed()
        # A re-run after a crash between publish and record: its result may have been read
        # back before we knew the id was ours.
        if (early := self.unclaimed.pop(event_id, None)) is not None:
            self.finish(entry, **early)

    def finish(self, entry: ItemRecord, status: str, *, reason: str | None = None, stage: str | None = None,
               captioned_id: str | None = None) -> None:  # fmt: skip
        entry.status = status  # type: ignore[assignment]
        entry.reason, entry.stage, entry.captioned_id = reason, stage, captioned_id
        entry.finished_at = datetime.now(UTC)
        self.in_flight.discard(entry.key)
        self.last_result = time.monotonic()
        self._changed()

    def _changed(self) -> None:
        self.dirty = True
        self.changed.set()
        self.on_change(self.record)

    def _result(self, msg: Msg, result: dict[str, Any]) -> None:
        input_id = unquote((msg.headers or {}).get("ce-inputid", ""))
        entry = self.by_event.get(input_id)
        if entry is None:
            if len(self.unclaimed) < _MAX_UNCLAIMED:
                self.unclaimed[input_id] = result
            return
        if entry.status != "submitted" or entry.event_ids[-1:] != [input_id]:
            return  # already in, or an earlier attempt's (a --retry-failed waits for its new one)
        self.finish(entry, **result)

    async def on_captioned(self, msg: Msg) -> None:
        self._result(msg, {"status": "captioned", "captioned_id": unquote((msg.headers or {}).get("ce-id", ""))})

    async def on_failed(self, msg: Msg) -> None:
        try:
            data = event_data_json(decode(msg.data, msg.headers))
        except (BindingError, ValueError) as exc:
            self._result(msg, {"status": "failed", "reason": f"dead letter unreadable: {exc}", "stage": "unknown"})
            return
        data = data if isinstance(data, dict) else {}
        self._result(msg, {"status": "failed", "reason": str(data.get("reason", "")), "stage": str(data.get("stage", "unknown"))})

    async def save_periodically(self, path: Path) -> None:
        while True:
            await asyncio.sleep(self.options.save_every_s)
            if self.dirty:
                self.dirty = False
                await asyncio.to_thread(save, self.record.model_copy(deep=True), path)
