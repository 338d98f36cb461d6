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
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any
from urllib.parse import unquote

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NoStreamResponseError, NotFoundError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.events.audit import Actor, AuditRecord, operator_action, record
from services.events.binding import BindingError, decode, event_data_json
from services.events.errors import EventsError
from services.events.jetstream import derive_msg_id
from services.events.models import AUDIO_FAILED, AudioFailed
from services.settings import Settings

__all__ = [
    "DeadLetter",
    "DeadLetterError",
    "DeadLetterNotFound",
    "ReplayFailure",
    "ReplayReport",
    "Replayed",
    "list_dead_letters",
    "replay",
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
    # What a replay republishes; excluded from listings (and --json) as the body can be large.
    original: OriginalMessage | None = Field(default=None, exclude=True, repr=False)


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


async def list_dead_letters(js: JetStreamContext, settings: Settings, *, stage: str | None = None) -> list[DeadLetter]:
    """Every dead letter, oldest first (optionally of one stage)."""
    cfg = settings.nats
    subject = cfg.subject("dlq", stage or ">")
    letters: list[DeadLetter] = []
    seq = 1
    # Direct lookups by sequence leave no consumer behind on the DLQ stream.
    while True:
        try:
            raw = await js.get_msg(cfg.dlq_stream, seq, subject=subject, next=True)
        except NotFoundError:
            return letters
        letters.append(read_dead_letter(raw))
        seq = int(raw.seq or seq) + 1


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
    try:
        parsed = OriginalMessage.model_validate(failed.original)
        parsed.body()  # the body must decode, or the letter cannot be replayed
        original: OriginalMessage | None = parsed
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
        replayable=original is not None,
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
    else:
        letters = await list_dead_letters(js, settings, stage=stage)
        if original_id is not None:
            letters = [letter for letter in letters if letter.original_id == original_id]
            if not letters:
                raise DeadLetterNotFound(f"no dead letter of original event id {original_id!r} in {cfg.dlq_stream}")
    report = ReplayReport()
    who = actor or Actor.cli()
    for letter in letters:
        try:
            done = await _replay_one(js, settings, letter, timeout_s)
        except DeadLetterError as exc:
            report.failed.append(ReplayFailure(seq=letter.seq, original_id=letter.original_id, error=str(exc)))
            continue
        report.replayed.append(done)
        rec = replay_record(letter, done, who)
        if not await record(js, cfg, settings.audit, rec):
            report.unaudited += 1
    return report


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
    """Whether a replay may republish to ``subject``: an input (``<prefix>.in.>``) or a subject
    the rules engine consumes, the only places a dead letter's original comes from."""
    cfg = settings.nats
    inputs = cfg.subject("in") + "."
    return (subject.startswith(inputs) and len(subject) > len(inputs)) or subject in settings.rules.subjects(cfg)


async def _replay_one(js: JetStreamContext, settings: Settings, letter: DeadLetter, timeout_s: float) -> Replayed:
    cfg = settings.nats
    if letter.original is None:
        raise DeadLetterError(f"no readable original message to republish ({letter.reason})")
    original = letter.original
    if not replayable_subject(original.subject, settings):
        # Anyone who can publish a dead letter could otherwise have a replay publish a
        # decision (listenpost.alerts.critical) or a silence in listenpost's name.
        raise DeadLetterError(
            f"not replayed: {original.subject!r} is not an input of listenpost "
            f"({cfg.subject('in', '>')} or what the rules consume); dead letter kept"
        )
    headers = {k: v for k, v in original.headers.items() if not k.lower().startswith(_CONTROL_HEADERS)}
    # A new id: the original's Nats-Msg-Id may still be in the input's dedup window.
    headers["Nats-Msg-Id"] = derive_msg_id("replay", cfg.dlq_stream, str(letter.seq))
    try:
        ack = await js.publish(original.subject, original.body(), headers=headers, timeout=timeout_s)
    except NoStreamResponseError:
        raise DeadLetterError(f"no stream stores subject {original.subject!r}; dead letter kept") from None
    except (nats.errors.Error, TimeoutError) as exc:
        raise DeadLetterError(f"republishing failed ({type(exc).__name__}: {exc}); dead letter kept") from exc
    try:
        await js.delete_msg(cfg.dlq_stream, letter.seq)
    except NotFoundError:
        pass  # a concurrent replay got there first; the original is stored either way
    except (nats.errors.Error, TimeoutError) as exc:
        raise DeadLetterError(
            f"republished (stream {ack.stream} seq {ack.seq}) but the dead letter could not be deleted "
            f"({type(exc).__name__}: {exc}); replaying it again is safe: JetStream drops the repeat"
        ) from exc
    return Replayed(
        seq=letter.seq,
        original_id=letter.original_id,
        subject=original.subject,
        stream=ack.stream,
        stream_seq=ack.seq,
        duplicate=bool(ack.duplicate),
    )
