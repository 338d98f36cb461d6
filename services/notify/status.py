"""What the notifier reports about its receivers, for ``rules status``, ``status`` and ``top``.

The sender counts, per receiver, what it delivered, the attempts that failed and will be retried,
what it gave up on (dead letters), and the last error in words (:class:`ReceiverStats`, in the
replica's memory: since it started). The deployment adds each receiver's queue depth and dead
letters, read from the LISTENPOST_NOTIFY stream, and writes the whole record to the rules status
bucket every ``notify.status_interval_s`` (services/events/notifier_status.py); the commands read
it from there, as they read the rules engines' records.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from services.events.jetstream import notify_subject
from services.notify.config import NotifyConfig
from services.settings import Settings

__all__ = ["ReceiverStats", "ReceiverStatus", "crm_rows", "per_receiver", "receiver_rows", "receiver_status"]


@dataclass
class ReceiverStats:
    """One receiver's deliveries since the replica started."""

    sent: int = 0
    retried: int = 0  # failed attempts that will be tried again
    dead_lettered: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    last_sent_at: float | None = None

    def delivered(self, now: float | None = None) -> None:
        self.sent += 1
        self.last_sent_at = time.time() if now is None else now

    def failed(self, error: str, *, given_up: bool, now: float | None = None) -> None:
        if given_up:
            self.dead_lettered += 1
        else:
            self.retried += 1
        self.last_error, self.last_error_at = error, time.time() if now is None else now


class ReceiverStatus(BaseModel):
    """A receiver's row: its deliveries (since the replica started) and its queue (now)."""

    name: str
    type: str
    sent: int = 0
    retried: int = 0
    dead_lettered: int = 0
    queued: int | None = Field(default=None, description="Waiting in LISTENPOST_NOTIFY; None: not read.")
    dead_letters: int | None = Field(default=None, description="Stored dead letters (until replayed); None: not read.")
    last_error: str | None = None
    last_error_at: float | None = None
    last_sent_at: float | None = None


def receiver_rows(
    receivers: Iterable[tuple[str, str]],
    stats: Mapping[str, ReceiverStats],
    queued: Mapping[str, int] | None,
    dead_letters: Mapping[str, int] | None,
) -> list[ReceiverStatus]:
    """One row per receiver of the file (``(name, type)``), then any other receiver with
    deliveries or a queue (one removed from the file since), by name."""
    types = dict(receivers)
    names = sorted({*types, *stats, *(queued or {}), *(dead_letters or {})})
    rows = []
    for name in names:
        s = stats.get(name, ReceiverStats())
        rows.append(
            ReceiverStatus(
                name=name, type=types.get(name, "(not in the file)"), sent=s.sent, retried=s.retried,
                dead_lettered=s.dead_lettered,
                queued=None if queued is None else queued.get(name, 0),
                dead_letters=None if dead_letters is None else dead_letters.get(name, 0),
                last_error=s.last_error, last_error_at=s.last_error_at, last_sent_at=s.last_sent_at,
            )
        )  # fmt: skip
    return rows


def per_receiver(subjects: Mapping[str, int] | None, prefix: str) -> dict[str, int]:
    """Messages per receiver from a stream's per-subject counts (``<prefix>.<receiver>``)."""
    return {subject.removeprefix(prefix): count for subject, count in (subjects or {}).items() if subject.startswith(prefix)}


async def receiver_status(
    js: Any, settings: Settings, config: NotifyConfig | None, stats: Mapping[str, ReceiverStats]
) -> list[ReceiverStatus]:
    """:func:`receiver_rows` with each receiver's queue and dead letters read from the notification
    stream (per subject); a count that cannot be read now is None, not a guess."""
    nats, stream = settings.nats, settings.notify.stream
    counts: dict[str, dict[str, int] | None] = {}
    for kind in ("send", "dlq"):
        prefix = notify_subject(nats, kind, "")
        try:
            state = (await js.stream_info(stream, subjects_filter=notify_subject(nats, kind))).state
        except Exception:  # noqa: BLE001 - a status read: NATS trouble shows as "-", never fails the report
            counts[kind] = None
        else:
            counts[kind] = per_receiver(state.subjects, prefix)
    receivers = [(r.name, r.type) for r in config.receivers.values()] if config is not None else []
    return receiver_rows(receivers, stats, counts["send"], counts["dlq"])


def crm_rows(config: NotifyConfig | None, stats: Mapping[str, ReceiverStats]) -> list[ReceiverStatus]:
    """The CRM targets' rows (type ``crm``): their queue is the CRM writer's durable, not per
    target, so ``queued`` and ``dead_letters`` are None (dead letters are in the events' DLQ)."""
    targets = [(t.name, "crm") for t in config.crm] if config is not None else []
    return receiver_rows(targets, stats, None, None)
