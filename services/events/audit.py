"""The audit trail: who did what, in an append-only stream (``LISTENPOST_AUDIT``).

Each record names an actor (``key:pbx-a``, ``nats``, ``cli:alice``, ``service:rules``),
an action and the ids it touched (source, event id, call id), never content: no audio,
caption or body. The stream refuses deletes and purges (``deny_delete``/``deny_purge``,
see :func:`services.events.jetstream.stream_configs`); records leave only by age
(``LISTENPOST_AUDIT__MAX_AGE_S``).

Building a record is a pure function (:func:`submission`, :func:`operator_action`...);
:func:`record` stores one, with a ``Nats-Msg-Id`` derived from what it records, so a
redelivered input or a retried command never writes two.

**A failure to audit does not block the action.** Submissions are recorded by the
Ingress as it consumes an input: holding calls back (or dead-lettering them) because the
audit stream is unavailable would turn an audit outage into lost alerts. Operator
commands have already acted when they record (the silence exists, the data is erased).
So :func:`record` retries for ``publish_retry_s``, then logs the whole record at ERROR
(the log is the fallback trail) and returns False; commands then exit non-zero and say so.
"""

from __future__ import annotations

import getpass
import json
import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from services.events.errors import EventsError
from services.events.jetstream import TRANSIENT_NATS_ERRORS, derive_msg_id
from services.settings import AuditSettings, NatsSettings

log = logging.getLogger(__name__)

#: The header the HTTP door puts on a stored input: the id of the API key that submitted it.
#: The HTTP door's record of the API key that submitted an input (extension ``listenpostkeyid``,
#: binary mode). Believed only on the HTTP door's own subject, which producers may not publish to.
KEY_ID_HEADER = "ce-listenpostkeyid"

Action = Literal[
    "submit",
    "dlq.replay",
    "silence.add",
    "silence.expire",
    "ruleset.activate",
    "erase",
    "notify.replay",
]
ACTIONS: tuple[str, ...] = Action.__args__  # type: ignore[attr-defined]
ActorKind = Literal["key", "nats", "cli", "service"]

_TOKEN = re.compile(r"[^A-Za-z0-9_-]")


class AuditError(EventsError):
    """An audit request that cannot be answered (bad --since, unreadable stream)."""


class Actor(BaseModel):
    """Who acted: an API key, a NATS client, an operator at the command line, or a service."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: ActorKind
    id: str = Field(default="", max_length=256)

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}" if self.id else self.kind

    @classmethod
    def cli(cls) -> Actor:
        """The operator running this command (the OS user)."""
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry (a container's random uid)
            user = "unknown"
        return cls(kind="cli", id=user)

    @classmethod
    def service(cls, name: str) -> Actor:
        return cls(kind="service", id=name)


class AuditRecord(BaseModel):
    """One entry of the audit trail: ids and counts, never content."""

    model_config = ConfigDict(extra="forbid")

    time: datetime
    actor: Actor
    action: Action
    source: str | None = Field(default=None, description="CloudEvents source of the event acted on.")
    event_id: str | None = Field(default=None, description="CloudEvents id of the event acted on.")
    call_id: str | None = None
    details: dict[str, Any] = Field(default_factory=dict, description="Ids and counts only (no content).")
    seq: int | None = Field(default=None, description="Sequence in the audit stream (set when read back).")

    def msg_id(self) -> str:
        """Dedup id: the same action on the same thing by the same actor is one record."""
        stable = json.dumps(self.details, sort_keys=True, default=str)
        when = "" if self.action == "submit" else self.time.isoformat()  # a redelivered input is one submission
        return derive_msg_id("audit", self.action, str(self.actor), self.source or "", self.event_id or "",
                             self.call_id or "", stable, when)  # fmt: skip


def now() -> datetime:
    return datetime.now(UTC)


# --- building records (pure) ---------------------------------------------------------


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    lowered = name.lower()
    for key, value in (headers or {}).items():
        if key.lower() == lowered:
            return value
    return None


def submission(
    headers: Mapping[str, str] | None,
    *,
    source: str | None,
    event_id: str | None,
    call_id: str | None,
    subject: str,
    http_subject: str | None = None,
    refused: str | None = None,
    at: datetime | None = None,
) -> AuditRecord:
    """An input consumed by the Ingress. The actor is the API key the HTTP door stored on it
    (``ce-listenpostkeyid``) when it came through the HTTP door (``http_subject``; producers'
    permissions deny it, so a NATS publisher cannot claim a key), else ``nats``: a NATS
    publisher's user is not on its messages."""
    key_id = _header(headers, KEY_ID_HEADER) if http_subject is not None and subject == http_subject else None
    actor = Actor(kind="key", id=key_id[:256]) if key_id else Actor(kind="nats")
    details: dict[str, Any] = {"subject": subject}
    if refused is not None:
        details["refused"] = refused[:500]
    return AuditRecord(
        time=at or now(), actor=actor, action="submit", source=source, event_id=event_id, call_id=call_id, details=details
    )


def operator_action(
    action: Action,
    actor: Actor,
    *,
    source: str | None = None,
    event_id: str | None = None,
    call_id: str | None = None,
    details: Mapping[str, Any] | None = None,
    at: datetime | None = None,
) -> AuditRecord:
    """A replay, a silence, a rule set activation or an erasure."""
    return AuditRecord(
        time=at or now(), actor=actor, action=action, source=source, event_id=event_id, call_id=call_id,
        details=dict(details or {}),
    )  # fmt: skip


def audit_subject(cfg: NatsSettings, action: str) -> str:
    """``<prefix>.audit.<action>``, the action's dots as dashes (one token)."""
    return cfg.subject("audit", _TOKEN.sub("-", action))


# --- storing and reading (thin shell) ---------------------------------------------------


async def record(js: JetStreamContext, cfg: NatsSettings, audit: AuditSettings, rec: AuditRecord) -> bool:
    """Store ``rec``; True once the stream has it (or had it: a duplicate).

    Never raises for a NATS fault: see the module docstring for why an action is not blocked.
    """
    body = rec.model_dump_json(exclude={"seq"}).encode()
    headers = {"Nats-Msg-Id": rec.msg_id(), "Content-Type": "application/json"}
    try:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(TRANSIENT_NATS_ERRORS),
            stop=stop_after_delay(audit.publish_retry_s),
            wait=wait_exponential(multiplier=0.2, max=2.0),
            reraise=True,
        ):
            with attempt:
                await js.publish(audit_subject(cfg, rec.action), body, headers=headers, stream=audit.stream, timeout=5.0)
    except Exception as exc:  # noqa: BLE001 -- any failure: logged with the whole record, never raised
        log.error(
            "AUDIT RECORD NOT STORED in %s (%s: %s); the action went ahead. Record: %s",
            audit.stream, type(exc).__name__, exc, body.decode(),
        )  # fmt: skip
        return False
    log.info("audit: %s %s %s", rec.actor, rec.action, rec.call_id or rec.event_id or "")
    return True


_SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, *, at: datetime | None = None) -> datetime:
    """``24h``, ``30m``, ``7d`` (ago), or an ISO 8601 time; :class:`AuditError` otherwise."""
    found = _SINCE.match(text)
    if found:
        return (at or now()) - timedelta(seconds=float(found.group(1)) * _UNITS[found.group(2)])
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise AuditError(
            f"--since {text!r} is neither a duration (30m, 24h, 7d) nor an ISO time (2026-01-31T08:00:00Z)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


async def list_records(
    js: JetStreamContext,
    cfg: NatsSettings,
    audit: AuditSettings,
    *,
    since: datetime,
    action: str | None = None,
    limit: int | None = None,
) -> list[AuditRecord]:
    """Records stored since ``since``, oldest first (of one action, if given), at most ``limit``."""
    if action is not None and action not in ACTIONS:
        raise AuditError(f"unknown action {action!r}: one of {', '.join(ACTIONS)}")
    subject = audit_subject(cfg, action) if action else cfg.subject("audit", ">")
    seq = await _first_seq_since(js, audit.stream, since)
    out: list[AuditRecord] = []
    while seq is not None and (limit is None or len(out) < limit):
        try:
            raw = await js.get_msg(audit.stream, seq, subject=subject, next=True)
        except NotFoundError:
            break
        seq = int(raw.seq or seq) + 1
        try:
            rec = AuditRecord.model_validate_json(raw.data or b"")
        except ValidationError:
            log.warning("audit stream %s: record %s is not an audit record; skipped", audit.stream, raw.seq)
            continue
        out.append(rec.model_copy(update={"seq": raw.seq}))
    return out


async def _first_seq_since(js: JetStreamContext, stream: str, since: datetime) -> int | None:
    """The first sequence stored at or after ``since`` (None: none), found by the server."""
    request = {"start_time": since.astimezone(UTC).isoformat().replace("+00:00", "Z")}
    try:
        # nats-py's get_msg() has no start_time; the API request is the documented one.
        reply = await js._api_request(f"{js._prefix}.STREAM.MSG.GET.{stream}", json.dumps(request).encode(), timeout=5.0)
    except NotFoundError:
        return None
    except nats.errors.Error as exc:
        raise AuditError(f"cannot read the audit stream {stream}: {exc}") from exc
    return int(reply["message"]["seq"])
