"""Listing the notification stream, and replaying its dead letters (``listenpost notify list|replay``).

The notification stream holds queued notifications (``<prefix>.notify.send.<receiver>``) and
dead letters (``<prefix>.notify.dlq.<receiver>``). Listing reads them by subject with direct
``STREAM.MSG.GET`` requests (the next message of a subject from a sequence on), as
``audit list`` does: no consumer is made, so a listing leaves nothing behind and never
competes with the sender for a work-queue stream's messages.

A replay republishes the dead letter's notification on ``<prefix>.notify.send.<receiver>``,
awaits JetStream's ack, then deletes the dead letter, with the same code as ``dlq replay``
(:func:`services.events.dlq.republish_then_delete`): a crash in between leaves both, and
replaying again is dropped by JetStream as a repeat. The notification is the same one, with
the same idempotency key, so a receiver that did get it after all can tell. Each replay is
recorded in the audit trail (``notify.replay``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError
from pydantic import BaseModel, Field, ValidationError

from services.events.audit import Actor, operator_action, record
from services.events.binding import BindingError, decode, encode_binary, event_data_json
from services.events.dlq import (
    PAGE_SIZE,
    DeadLetterError,
    DeadLetterNotFound,
    Replayed,
    ReplayFailure,
    ReplayReport,
    republish_then_delete,
)
from services.events.jetstream import notify_subject
from services.notify.model import Notification
from services.notify.queue import NOTIFICATION_FAILED, NotificationFailed, queued_event, read_queued
from services.settings import Settings

__all__ = ["NotifyEntry", "NotifyPage", "list_entries", "page_entries", "replay_notifications"]


class NotifyEntry(BaseModel):
    """One message of the notification stream, as an operator needs to see it."""

    seq: int = Field(description="Its sequence in the notification stream: what `notify replay` takes.")
    time: datetime | None = Field(description="When it was stored (queued, or dead-lettered).")
    kind: str = Field(description="`queued` (waiting for its receiver) or `dead` (a dead letter).")
    receiver: str | None
    notification_id: str | None = Field(description="The idempotency key: what the receiver sees (webhook-id...).")
    alerts: int = 0
    summary: str = Field(default="", description="The first alert's summary (or rule), and how many more.")
    attempts: int | None = Field(default=None, description="Dead letters: the delivery attempts made.")
    reason: str = Field(default="", description="Dead letters: why it was given up.")
    last_error: str = Field(default="", description="Dead letters: the last attempt's error (redacted).")
    status: int | None = None
    response_excerpt: str = ""
    replayable: bool = False
    # What a replay sends; left out of listings (and --json).
    notification: Notification | None = Field(default=None, exclude=True, repr=False)

    def age_s(self, now: datetime | None = None) -> float | None:
        if self.time is None:
            return None
        return max(0.0, ((now or datetime.now(UTC)) - self.time).total_seconds())


class NotifyPage(BaseModel):
    entries: list[NotifyEntry]
    total: int = Field(description="How many such messages the stream holds in all.")
    next_after: int | None = Field(default=None, description="What `--after` takes for the next page; None on the last.")


def _summary(notification: Notification) -> str:
    first = notification.alerts[0]
    text = first.annotations.get("summary") or first.rule_id
    more = len(notification.alerts) - 1
    return f"{text} (+{more} more)" if more else text


def read_entry(raw: RawStreamMsg, *, dead: bool) -> NotifyEntry:
    """A stream message as a :class:`NotifyEntry`; one that cannot be read is listed, not skipped."""
    common: dict[str, Any] = {"seq": int(raw.seq or 0), "time": raw.time, "kind": "dead" if dead else "queued"}
    try:
        if not dead:
            notification = read_queued(raw.data or b"", raw.headers)
            return NotifyEntry(
                **common, receiver=notification.receiver, notification_id=notification.idempotency_key,
                alerts=len(notification.alerts), summary=_summary(notification), notification=notification,
            )  # fmt: skip
        event = decode(raw.data or b"", raw.headers)
        if event.get_type() != NOTIFICATION_FAILED:
            raise BindingError(f"type {event.get_type()!r}, not {NOTIFICATION_FAILED!r}")
        failed = NotificationFailed.model_validate(event_data_json(event))
    except (BindingError, ValidationError, ValueError) as exc:
        subject = raw.subject or ""
        return NotifyEntry(**common, receiver=subject.rsplit(".", 1)[-1] or None, notification_id=None,
                           reason=f"unreadable: {exc}")  # fmt: skip
    n = failed.notification
    return NotifyEntry(
        **common, receiver=failed.receiver, notification_id=n.idempotency_key, alerts=len(n.alerts),
        summary=_summary(n), attempts=failed.attempts, reason=failed.reason, last_error=failed.error,
        status=failed.status, response_excerpt=failed.response_excerpt, replayable=True, notification=n,
    )  # fmt: skip


async def page_entries(
    js: JetStreamContext,
    settings: Settings,
    *,
    dead: bool,
    receiver: str | None = None,
    after: int = 0,
    limit: int = PAGE_SIZE,
) -> NotifyPage:
    """Queued notifications (or dead letters) of ``receiver`` (else all), oldest first: at most
    ``limit`` from sequence ``after`` on."""
    if limit < 1:
        raise DeadLetterError(f"a page holds at least one entry, not {limit}")
    stream = settings.notify.stream
    subject = notify_subject(settings.nats, "dlq" if dead else "send", receiver or ">")
    counts = (await js.stream_info(stream, subjects_filter=subject)).state.subjects or {}
    entries: list[NotifyEntry] = []
    seq = after + 1
    more = False
    while True:
        try:
            raw = await js.get_msg(stream, seq, subject=subject, next=True)
        except NotFoundError:
            break
        seq = int(raw.seq or seq) + 1
        entry = read_entry(raw, dead=dead)
        if receiver is not None and entry.receiver not in (receiver, None):
            continue  # another receiver whose name differs only by "." for "_" (one subject token)
        if len(entries) == limit:
            more = True
            break
        entries.append(entry)
    return NotifyPage(entries=entries, total=sum(counts.values()), next_after=entries[-1].seq if more else None)


async def _pages(js: JetStreamContext, settings: Settings, *, dead: bool, receiver: str | None) -> AsyncIterator[list[NotifyEntry]]:
    after = 0
    while True:
        page = await page_entries(js, settings, dead=dead, receiver=receiver, after=after)
        if page.entries:
            yield page.entries
        if page.next_after is None:
            return
        after = page.next_after


async def list_entries(js: JetStreamContext, settings: Settings, *, dead: bool, receiver: str | None = None) -> list[NotifyEntry]:
    """Every queued notification (or dead letter), oldest first, read page by page."""
    return [entry async for page in _pages(js, settings, dead=dead, receiver=receiver) for entry in page]


# --- replay ------------------------------------------------------------------------------------


async def replay_notifications(
    js: JetStreamContext,
    settings: Settings,
    *,
    ids: Sequence[str] = (),
    all: bool = False,
    receiver: str | None = None,
    timeout_s: float = 10.0,
    actor: Actor | None = None,
) -> ReplayReport:
    """Send dead-lettered notifications again: those named by ``ids`` (stream sequences or
    notification ids), or ``all`` (of ``receiver``, if given). Raises :class:`DeadLetterNotFound`
    when an id matches no dead letter; a dead letter that cannot be replayed is reported in
    ``failed`` and kept."""
    if bool(ids) == all:
        raise DeadLetterError("name dead letters (sequences or notification ids), or choose all, not both")
    report = ReplayReport()
    who = actor or Actor.cli()
    if all:
        async for page in _pages(js, settings, dead=True, receiver=receiver):
            await _replay_all(js, settings, page, timeout_s, report, who)
        return report
    await _replay_all(js, settings, await _find(js, settings, ids, receiver), timeout_s, report, who)
    return report


async def _find(js: JetStreamContext, settings: Settings, ids: Sequence[str], receiver: str | None) -> list[NotifyEntry]:
    stream = settings.notify.stream
    dead_prefix = notify_subject(settings.nats, "dlq", "")
    found: dict[int, NotifyEntry] = {}
    by_key = [i for i in ids if not _is_seq(i)]
    for text in (i for i in ids if _is_seq(i)):
        try:
            raw = await js.get_msg(stream, int(text))
        except NotFoundError:
            raise DeadLetterNotFound(f"no message with sequence {text} in {stream}") from None
        if not (raw.subject or "").startswith(dead_prefix):
            raise DeadLetterNotFound(f"message {text} of {stream} is not a dead letter (it is {raw.subject})")
        found[int(text)] = read_entry(raw, dead=True)
    if by_key:
        letters = await list_entries(js, settings, dead=True, receiver=receiver)
        for key in by_key:
            matches = [e for e in letters if e.notification_id == key]
            if not matches:
                raise DeadLetterNotFound(f"no dead letter of notification {key!r} in {stream}")
            found.update((e.seq, e) for e in matches)
    return [found[seq] for seq in sorted(found)]


def _is_seq(text: str) -> bool:
    # Notification ids are 32 hex digits; a sequence is a (much shorter) number.
    return text.isdigit() and len(text) < 20


async def _replay_all(
    js: JetStreamContext, settings: Settings, letters: list[NotifyEntry], timeout_s: float, report: ReplayReport, who: Actor
) -> None:
    for letter in letters:
        notification = letter.notification
        if notification is None:
            report.failed.append(ReplayFailure(seq=letter.seq, original_id=None, error=f"not replayable ({letter.reason})"))
            continue
        body, headers = encode_binary(queued_event(notification, settings.source))
        subject = notify_subject(settings.nats, "send", notification.receiver)
        try:
            ack = await republish_then_delete(
                js, dlq_stream=settings.notify.stream, seq=letter.seq, subject=subject, body=body, headers=headers,
                timeout_s=timeout_s,
            )  # fmt: skip
        except DeadLetterError as exc:
            report.failed.append(ReplayFailure(seq=letter.seq, original_id=letter.notification_id, error=str(exc)))
            continue
        done = Replayed(seq=letter.seq, original_id=letter.notification_id, subject=subject, stream=ack.stream,
                        stream_seq=ack.seq, duplicate=bool(ack.duplicate))  # fmt: skip
        report.replayed.append(done)
        callids = {a.callid for a in notification.alerts if a.callid}
        audit = operator_action(
            "notify.replay", who, event_id=letter.notification_id, call_id=callids.pop() if len(callids) == 1 else None,
            details={"notify_seq": letter.seq, "receiver": notification.receiver, "alerts": len(notification.alerts),
                     "stored_in": f"{done.stream} #{done.stream_seq}", "duplicate": done.duplicate},
        )  # fmt: skip
        if not await record(js, settings.nats, settings.audit, audit):
            report.unaudited += 1
