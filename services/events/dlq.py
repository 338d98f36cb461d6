"""Inspecting and replaying dead letters (``com.listenpost.audio.failed`` on the DLQ stream).

A dead letter carries the original message whole (subject, headers, body), so
a replay republishes exactly what was first stored, on the same subject, and
the stream that holds that subject (the input stream for ingest failures,
the output stream for rule failures) delivers it to its consumer again.

Order matters for "never lose an event": the original is republished and its
JetStream ack awaited *before* the dead letter is deleted. A crash in between
leaves both, and the next replay of the same dead letter reuses its
``Nats-Msg-Id`` (derived from the dead letter's stream sequence), so JetStream
drops the second copy and the dead letter is then deleted.

Listing pages (:func:`page_dead_letters`): a headers-only consumer finds the
sequences of one page (no body leaves the server), and only the dead letters of
that page are then fetched whole. ``replay --all`` works through the same pages,
``replay --id`` matches the ``originalid`` header before it reads any body. An
original stored by reference (too large to embed, see :mod:`.deadletter`) is read
back from the dead-letter bucket only, and only when it is replayed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote

import nats.errors
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, PubAck, RawStreamMsg
from nats.js.errors import NoStreamResponseError, NotFoundError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.events.audit import Actor, AuditRecord, operator_action, record
from services.events.binding import BindingError, decode, event_data_json
from services.events.claimcheck import ClaimCheckError, delete_object, read_object
from services.events.errors import EventsError
from services.events.jetstream import derive_msg_id, evaluated_subject
from services.events.models import AUDIO_FAILED, AudioFailed
from services.settings import Settings

__all__ = [
    "DeadLetter",
    "DeadLetterError",
    "DeadLetterNotFound",
    "DeadLetterPage",
    "ReplayFailure",
    "ReplayReport",
    "Replayed",
    "list_dead_letters",
    "page_dead_letters",
    "replay",
    "republish_then_delete",
]

# Publish controls of the first publish, not part of the message: a stale
# expectation (Nats-Expected-Last-Sequence...) would make the replay fail.
_CONTROL_HEADERS = ("nats-msg-id", "nats-expected-")


class DeadLetterError(EventsError):
    """A replay request that cannot be carried out."""


class DeadLetterNotFound(DeadLetterError, LookupError):
    """No dead letter matches the sequence or original event id asked for."""


class OriginalMessage(BaseModel):
    """The message as it was stored before it failed (``AudioFailed.original``)."""

    model_config = ConfigDict(extra="ignore")

    subject: str = Field(min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)
    body_base64: str

    def body(self) -> bytes:
        return base64.b64decode(self.body_base64, validate=True)


class DeadLetter(BaseModel):
    """One entry of the DLQ stream, as an operator needs to see it."""

    seq: int = Field(description="Sequence in the DLQ stream: what `replay --seq` takes.")
    time: datetime | None = Field(description="When it was dead-lettered.")
    subject: str = Field(description="DLQ subject, <prefix>.dlq.<stage>.")
    stage: str | None
    reason: str
    error: str | None = None
    deliveries: int | None = None
    original_id: str | None = Field(description="The failed event's CloudEvents id, when it can be read.")
    original_subject: str | None = None
    replayable: bool = Field(description="Whether the original message can be republished.")
    original_ref: str | None = Field(
        default=None, description="Where the original is stored when it was too large to embed (nats-object://...)."
    )
    # What a replay republishes; excluded from listings (and --json) as the body can be large.
    original: OriginalMessage | None = Field(default=None, exclude=True, repr=False)


#: Dead letters shown per page by default (`dlq list --limit`).
PAGE_SIZE = 50


class DeadLetterPage(BaseModel):
    """One page of dead letters, oldest first."""

    letters: list[DeadLetter]
    total: int = Field(description="Dead letters from the page's start on (of the stage), this page included.")

    @property
    def next_after(self) -> int | None:
        """What ``--after`` takes for the next page; None on the last page."""
        return self.letters[-1].seq if self.letters and self.total > len(self.letters) else None


class _OriginalRef(BaseModel):
    """``AudioFailed.original`` of an original stored by reference."""

    subject: str = Field(min_length=1)
    ref: str


class Replayed(BaseModel):
    seq: int = Field(description="The dead letter's DLQ sequence (now deleted).")
    original_id: str | None
    subject: str
    stream: str = Field(description="The stream that stored the republished message.")
    stream_seq: int
    duplicate: bool = Field(description="JetStream already had this replay (an earlier, interrupted one).")


class ReplayFailure(BaseModel):
    seq: int
    original_id: str | None
    error: str


class ReplayReport(BaseModel):
    replayed: list[Replayed] = Field(default_factory=list)
    failed: list[ReplayFailure] = Field(default_factory=list)
    unaudited: int = Field(default=0, description="Replays whose audit record could not be stored (logged).")

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass(frozen=True)
class _Stored:
    """What the headers of a dead letter say, before its body is read."""

    seq: int
    original_id: str | None


async def _scan(
    js: JetStreamContext, stream: str, subject: str, *, after: int, since: datetime | None, limit: int
) -> tuple[list[_Stored], int]:
    """Up to ``limit`` dead letters from ``after`` (or ``since``), headers only, and how many there are in all."""
    start: dict[str, Any] = (
        {"deliver_policy": DeliverPolicy.BY_START_TIME, "opt_start_time": since.isoformat()}
        if since is not None
        else {"deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": after + 1}
    )
    # An ephemeral, in-memory consumer that acks nothing: a listing leaves nothing behind.
    config = ConsumerConfig(
        ack_policy=AckPolicy.NONE, filter_subject=subject, headers_only=True, mem_storage=True,
        inactive_threshold=30.0, **start,
    )  # fmt: skip
    sub = await js.pull_subscribe(subject, stream=stream, config=config)
    try:
        total = int((await sub.consumer_info()).num_pending or 0)
        found: list[_Stored] = []
        while len(found) < min(limit, total):
            try:
                msgs = await sub.fetch(min(limit, total) - len(found), timeout=2.0)
            except (TimeoutError, NatsTimeoutError):
                break
            for msg in msgs:
                headers = {k.lower(): v for k, v in (msg.headers or {}).items()}
                found.append(_Stored(msg.metadata.sequence.stream, headers.get("ce-originalid")))
        return found, total
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, sub._consumer)


async def _read(js: JetStreamContext, stream: str, seq: int) -> DeadLetter | None:
    try:
        return read_dead_letter(await js.get_msg(stream, seq))
    except NotFoundError:
        return None  # replayed or expired since the scan


async def page_dead_letters(
    js: JetStreamContext,
    settings: Settings,
    *,
    stage: str | None = None,
    after: int = 0,
    since: datetime | None = None,
    limit: int = PAGE_SIZE,
) -> DeadLetterPage:
    """One page of dead letters (of ``stage``), oldest first: those after sequence ``after``, or
    stored since ``since``; at most ``limit``, and only their bodies are read."""
    if limit < 1:
        raise DeadLetterError(f"a page holds at least one dead letter, not {limit}")
    cfg = settings.nats
    stored, total = await _scan(
        js, cfg.dlq_stream, cfg.subject("dlq", stage or ">"), after=after, since=since, limit=limit
    )
    letters = [letter for s in stored if (letter := await _read(js, cfg.dlq_stream, s.seq)) is not None]
    return DeadLetterPage(letters=letters, total=total - (len(stored) - len(letters)))


async def _pages(js: JetStreamContext, settings: Settings, stage: str | None) -> AsyncIterator[list[DeadLetter]]:
    after = 0
    while True:
        page = await page_dead_letters(js, settings, stage=stage, after=after)
        if page.letters:
            yield page.letters
        if page.next_after is None:
            return
        after = page.next_after


async def list_dead_letters(js: JetStreamContext, settings: Settings, *, stage: str | None = None) -> list[DeadLetter]:
    """Every dead letter, oldest first (optionally of one stage), read page by page."""
    return [letter async for page in _pages(js, settings, stage) for letter in page]


async def _by_original_id(
    js: JetStreamContext, settings: Settings, original_id: str, stage: str | None
) -> list[DeadLetter]:
    """Dead letters of one original id: matched on the ``originalid`` header; only letters
    without that header (written by older versions) are read whole to find their id."""
    cfg = settings.nats
    subject = cfg.subject("dlq", stage or ">")
    matches: list[DeadLetter] = []
    after = 0
    while True:
        stored, total = await _scan(js, cfg.dlq_stream, subject, after=after, since=None, limit=1000)
        for s in stored:
            if s.original_id in (original_id, None):
                letter = await _read(js, cfg.dlq_stream, s.seq)
                if letter is not None and letter.original_id == original_id:
                    matches.append(letter)
        if len(stored) >= total or not stored:
            return matches
        after = stored[-1].seq


def read_dead_letter(raw: RawStreamMsg) -> DeadLetter:
    """A DLQ stream message as a :class:`DeadLetter`; unreadable ones are listed, not skipped."""
    seq = int(raw.seq or 0)
    common: dict[str, Any] = {"seq": seq, "time": raw.time, "subject": raw.subject or ""}
    try:
        event = decode(raw.data or b"", raw.headers)
        if event.get_type() != AUDIO_FAILED:
            raise BindingError(f"type {event.get_type()!r}, not {AUDIO_FAILED!r}")
        failed = AudioFailed.model_validate(event_data_json(event))
    except (BindingError, ValidationError) as exc:
        return DeadLetter(
            **common, stage=None, reason=f"unreadable dead letter: {exc}", original_id=None, replayable=False
        )
    original: OriginalMessage | None = None
    reference: _OriginalRef | None = None
    if "ref" in failed.original:
        with contextlib.suppress(ValidationError):
            reference = _OriginalRef.model_validate(failed.original)
    else:
        try:
            parsed = OriginalMessage.model_validate(failed.original)
            parsed.body()  # the body must decode, or the letter cannot be replayed
            original = parsed
        except (ValidationError, binascii.Error, ValueError):
            original = None
    extension = event.get_attributes().get("originalid")
    return DeadLetter(
        **common,
        stage=failed.stage,
        reason=failed.reason,
        error=failed.error,
        deliveries=failed.deliveries,
        original_id=str(extension) if extension else _original_id(original),
        original_subject=original.subject if original else _str(failed.original.get("subject")),
        replayable=original is not None or reference is not None,
        original_ref=reference.ref if reference else None,
        original=original,
    )


def _original_id(original: OriginalMessage | None) -> str | None:
    if original is None:
        return None
    for name, value in original.headers.items():
        if name.lower() == "ce-id":
            return value
    try:  # structured mode keeps the id in the body
        return decode(original.body(), original.headers).get_id()
    except (BindingError, ValueError):
        return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


async def replay(
    js: JetStreamContext,
    settings: Settings,
    *,
    seq: int | None = None,
    original_id: str | None = None,
    all: bool = False,
    stage: str | None = None,
    timeout_s: float = 10.0,
    actor: Actor | None = None,
) -> ReplayReport:
    """Republish dead letters' originals, then delete the dead letters.

    Exactly one of ``seq``, ``original_id`` or ``all`` selects; ``stage``
    narrows ``original_id`` and ``all``. Raises :class:`DeadLetterNotFound`
    when ``seq`` or ``original_id`` matches nothing; ``all`` on an empty DLQ
    is an empty report. A dead letter that cannot be republished is reported
    in ``failed`` and kept. Each replay is recorded in the audit trail, as done by ``actor``
    (default: the operator running this process).
    """
    chosen = sum(x is not None for x in (seq, original_id)) + int(all)
    if chosen != 1:
        raise DeadLetterError("choose exactly one of: a sequence, an original event id, or all")
    cfg = settings.nats
    if seq is not None:
        try:
            raw = await js.get_msg(cfg.dlq_stream, seq)
        except NotFoundError:
            raise DeadLetterNotFound(f"no dead letter with sequence {seq} in {cfg.dlq_stream}") from None
        letters = [read_dead_letter(raw)]
    elif original_id is not None:
        letters = await _by_original_id(js, settings, original_id, stage)
        if not letters:
            raise DeadLetterNotFound(f"no dead letter of original event id {original_id!r} in {cfg.dlq_stream}")
    report = ReplayReport()
    who = actor or Actor.cli()
    if all:  # page by page: never every body in memory at once
        async for page in _pages(js, settings, stage):
            await _replay_all(js, settings, page, timeout_s, report, who)
    else:
        await _replay_all(js, settings, letters, timeout_s, report, who)
    return report


async def _replay_all(
    js: JetStreamContext,
    settings: Settings,
    letters: list[DeadLetter],
    timeout_s: float,
    report: ReplayReport,
    who: Actor,
) -> None:
    for letter in letters:
        try:
            done = await _replay_one(js, settings, letter, timeout_s)
        except DeadLetterError as exc:
            report.failed.append(ReplayFailure(seq=letter.seq, original_id=letter.original_id, error=str(exc)))
            continue
        report.replayed.append(done)
        if not await record(js, settings.nats, settings.audit, replay_record(letter, done, who)):
            report.unaudited += 1


async def _stored_original(js: JetStreamContext, settings: Settings, letter: DeadLetter) -> OriginalMessage:
    """The original of a dead letter that holds it by reference, from the dead-letter bucket only."""
    if letter.original_ref is None:
        raise DeadLetterError(f"no readable original message to republish ({letter.reason})")
    bucket = settings.nats.dlq_bucket
    try:
        # Only the dead-letter bucket: a forged dead letter cannot make a replay read (and
        # republish) another bucket's objects.
        blob = await read_object(js, letter.original_ref, buckets=[bucket])
        original = OriginalMessage.model_validate_json(blob)
        original.body()
    except ClaimCheckError as exc:
        raise DeadLetterError(f"original not readable: {exc}; dead letter kept") from exc
    except (ValidationError, binascii.Error, ValueError) as exc:
        raise DeadLetterError(f"original stored at {letter.original_ref} is not a message record; dead letter kept") from exc
    return original


def replay_record(letter: DeadLetter, done: Replayed, actor: Actor) -> AuditRecord:
    """The audit record of one replay: which dead letter, republished where (ids only)."""
    headers = letter.original.headers if letter.original is not None else {}
    # ce- headers are percent-encoded (services/events/binding.py)
    call_id = next((unquote(v) for k, v in headers.items() if k.lower() == "ce-callid"), None)
    source = next((unquote(v) for k, v in headers.items() if k.lower() == "ce-source"), None)
    return operator_action(
        "dlq.replay", actor, source=source, event_id=letter.original_id, call_id=call_id,
        details={"dlq_seq": letter.seq, "stage": letter.stage, "subject": done.subject,
                 "stored_in": f"{done.stream} #{done.stream_seq}", "duplicate": done.duplicate},
    )  # fmt: skip


def replayable_subject(subject: str, settings: Settings) -> bool:
    """Whether a replay may republish to ``subject``: an input (``<prefix>.in.>``), a subject
    the rules engine consumes, or the rules engine's evaluated marker (a CRM write-back that
    failed), the only places a dead letter's original comes from."""
    cfg = settings.nats
    inputs = cfg.subject("in") + "."
    return (
        (subject.startswith(inputs) and len(subject) > len(inputs))
        or subject in settings.rules.subjects(cfg)
        or subject == evaluated_subject(cfg)
    )


async def republish_then_delete(
    js: JetStreamContext,
    *,
    dlq_stream: str,
    seq: int,
    subject: str,
    body: bytes,
    headers: Mapping[str, str],
    timeout_s: float,
) -> PubAck:
    """Publish what a dead letter holds, await JetStream's ack, then delete the dead letter
    (``seq`` of ``dlq_stream``): never the other way round, so a crash in between leaves both.

    The ``Nats-Msg-Id`` comes from the dead letter's sequence, so the next replay of the same
    dead letter is dropped by JetStream as a repeat (and then deletes it). Also used by
    ``notify replay`` (services/notify/deadletters.py)."""
    sent = {k: v for k, v in headers.items() if not k.lower().startswith(_CONTROL_HEADERS)}
    # A new id: the original's Nats-Msg-Id may still be in the stream's dedup window.
    sent["Nats-Msg-Id"] = derive_msg_id("replay", dlq_stream, str(seq))
    try:
        ack = await js.publish(subject, body, headers=sent, timeout=timeout_s)
    except NoStreamResponseError:
        raise DeadLetterError(f"no stream stores subject {subject!r}; dead letter kept") from None
    except (nats.errors.Error, TimeoutError) as exc:
        raise DeadLetterError(f"republishing failed ({type(exc).__name__}: {exc}); dead letter kept") from exc
    try:
        await js.delete_msg(dlq_stream, seq)
    except NotFoundError:
        pass  # a concurrent replay got there first; the original is stored either way
    except (nats.errors.Error, TimeoutError) as exc:
        raise DeadLetterError(
            f"republished (stream {ack.stream} seq {ack.seq}) but the dead letter could not be deleted "
            f"({type(exc).__name__}: {exc}); replaying it again is safe: JetStream drops the repeat"
        ) from exc
    return ack


async def _replay_one(js: JetStreamContext, settings: Settings, letter: DeadLetter, timeout_s: float) -> Replayed:
    cfg = settings.nats
    original = letter.original or await _stored_original(js, settings, letter)
    if not replayable_subject(original.subject, settings):
        # Anyone who can publish a dead letter could otherwise have a replay publish a
        # decision (listenpost.alerts.critical) or a silence in listenpost's name.
        raise DeadLetterError(
            f"not replayed: {original.subject!r} is not an input of listenpost "
            f"({cfg.subject('in', '>')}, what the rules consume, or {evaluated_subject(cfg)}); dead letter kept"
        )
    ack = await republish_then_delete(
        js, dlq_stream=cfg.dlq_stream, seq=letter.seq, subject=original.subject, body=original.body(),
        headers=original.headers, timeout_s=timeout_s,
    )  # fmt: skip
    if letter.original_ref is not None:
        # The stored original has served its purpose; it would expire with the DLQ's max age anyway.
        await delete_object(js, letter.original_ref)
    return Replayed(
        seq=letter.seq,
        original_id=letter.original_id,
        subject=original.subject,
        stream=ack.stream,
        stream_seq=ack.seq,
        duplicate=bool(ack.duplicate),
    )
