"""The notification stream's messages: a queued notification, and its dead letter.

Both are CloudEvents on the ``LISTENPOST_NOTIFY`` stream (settings ``notify.stream``):

- ``com.listenpost.notification.queued`` on ``<prefix>.notify.send.<receiver>``: the
  :class:`~services.notify.model.Notification` as data; its ``Nats-Msg-Id`` comes from the
  notification's idempotency key and the decisions it carries (:func:`queued_msg_id`), so a
  redelivered alert decision queues nothing twice;
- ``com.listenpost.notification.failed`` on ``<prefix>.notify.dlq.<receiver>``:
  :class:`NotificationFailed`, with the notification whole (what ``notify replay`` sends
  again), why it failed, the attempts made, the last status and the start of the last
  response (redacted of every secret by the receivers). One dead letter per queued message:
  its ``Nats-Msg-Id`` comes from that message's stream sequence.

Every event carries ``notifyid`` (the idempotency key, what the receiving end sees as
``webhook-id``, ``Message-ID``...) and ``callid`` when all its alerts are about one call.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from nats.js import JetStreamContext
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.events.binding import BindingError, CloudEvent, decode, event_data_json, new_event
from services.events.jetstream import derive_msg_id, notify_subject
from services.events.traced import publish_traced
from services.notify.model import Notification
from services.settings import NatsSettings

__all__ = [
    "NOTIFICATION_FAILED",
    "NOTIFICATION_QUEUED",
    "NotificationFailed",
    "QueueFormatError",
    "dead_letter_msg_id",
    "enqueue",
    "failed_event",
    "queued_event",
    "queued_msg_id",
    "read_queued",
]

NOTIFICATION_QUEUED = "com.listenpost.notification.queued"
NOTIFICATION_FAILED = "com.listenpost.notification.failed"
#: CloudEvents extension values this module sets from alert data (a call id is client text).
_EXTENSION_VALUE = re.compile(r"^[\w.:@/-]{1,128}$")


class QueueFormatError(ValueError):
    """A message on the notification stream that is not what listenpost queues there."""


class NotificationFailed(BaseModel):
    """A dead letter of the notification stream: a notification that did not reach its receiver."""

    model_config = ConfigDict(extra="ignore")

    receiver: str
    reason: str = Field(description="Why it was given up, in words.")
    error: str = Field(description="The last attempt's error, in words (redacted).")
    retryable: bool = Field(description="Whether the last error was a transient one.")
    attempts: int = Field(ge=0, description="Delivery attempts made.")
    status: int | None = Field(default=None, description="The last HTTP status (or SMTP reply code).")
    response_excerpt: str = Field(default="", description="The start of the last response (redacted).")
    queued_at: datetime | None = Field(default=None, description="When the notification was queued (or replayed).")
    notification: Notification


def queued_msg_id(notification: Notification) -> str:
    """The ``Nats-Msg-Id`` of a queued notification: its idempotency key and the decisions behind it.

    A redelivered decision gives the same id (JetStream drops the copy); the same alert raised
    again later (after its rule's repeat_interval) is a new decision, and is sent again."""
    return derive_msg_id("notify", notification.idempotency_key, *sorted({a.decision_id for a in notification.alerts}))


def dead_letter_msg_id(stream: str, sequence: int) -> str:
    """One dead letter per stored queued message, however many times it is given up on."""
    return derive_msg_id("notify-dlq", stream, str(sequence))


def _extensions(notification: Notification, traceparent: str | None = None) -> dict[str, Any]:
    callids = {a.callid for a in notification.alerts}
    callid = callids.pop() if len(callids) == 1 else None
    return {
        "notifyid": notification.idempotency_key,
        "callid": callid if callid is not None and _EXTENSION_VALUE.match(callid) else None,
        "traceparent": traceparent,
    }


def queued_event(notification: Notification, source: str, *, traceparent: str | None = None) -> CloudEvent:
    return new_event(
        NOTIFICATION_QUEUED,
        source,
        notification.model_dump(mode="json"),
        id=queued_msg_id(notification),
        subject=notification.receiver,
        extensions=_extensions(notification, traceparent),
    )


def failed_event(failed: NotificationFailed, source: str, *, event_id: str) -> CloudEvent:
    return new_event(
        NOTIFICATION_FAILED,
        source,
        failed.model_dump(mode="json"),
        id=event_id,
        subject=failed.receiver,
        extensions=_extensions(failed.notification),
    )


async def enqueue(
    js: JetStreamContext, nats: NatsSettings, notification: Notification, source: str, *, traceparent: str | None = None
) -> bool:
    """Store a notification for its receiver; False when the stream already had it (a redelivered decision)."""
    event = queued_event(notification, source, traceparent=traceparent)
    subject = notify_subject(nats, "send", notification.receiver)
    return await publish_traced(js, subject, event, msg_id=queued_msg_id(notification))


def read_queued(body: bytes, headers: Mapping[str, str] | None) -> Notification:
    """The notification a queued message carries; :class:`QueueFormatError` when it carries none."""
    try:
        event = decode(body, headers)
        if event.get_type() != NOTIFICATION_QUEUED:
            raise QueueFormatError(f"event type {event.get_type()!r} is not {NOTIFICATION_QUEUED!r}")
        return Notification.model_validate(event_data_json(event))
    except (BindingError, ValidationError, ValueError) as exc:
        if isinstance(exc, QueueFormatError):
            raise
        raise QueueFormatError(f"not a queued notification: {exc}") from None
