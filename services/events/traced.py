"""Publishing an event inside a PRODUCER span, so that the event carries that span's ``traceparent``.

The outputs listenpost emits (``audio.captioned``, decisions, dead letters) go through
:func:`publish_traced`: a consumer of the event, ours or anyone's, continues the trace from
the span that published it (messaging semantic conventions: the creation context travels
with the message). Without tracing it is :func:`~services.events.jetstream.publish_event`.
"""

from __future__ import annotations

from typing import Literal

from cloudevents.core.base import BaseCloudEvent
from nats.js import JetStreamContext

from services.events.binding import CloudEvent
from services.events.jetstream import publish_event
from services.telemetry import publish_span


def with_traceparent(event: BaseCloudEvent, traceparent: str) -> BaseCloudEvent:
    """A copy of ``event`` whose ``traceparent`` extension is ``traceparent`` (same id, data, time)."""
    return CloudEvent({**event.get_attributes(), "traceparent": traceparent}, event.get_data())


async def publish_traced(
    js: JetStreamContext,
    subject: str,
    event: BaseCloudEvent,
    *,
    msg_id: str,
    mode: Literal["binary", "structured"] = "binary",
) -> bool:
    """:func:`publish_event` in a ``send <subject>`` PRODUCER span; the event carries the span's context."""
    with publish_span(subject, msg_id) as traceparent:
        if traceparent is not None:
            event = with_traceparent(event, traceparent)
        return await publish_event(js, subject, event, msg_id=msg_id, mode=mode)
