"""Turning a message that can never succeed into an ``audio.failed`` dead letter.

One dead letter per stored input message: its ``Nats-Msg-Id`` comes from the
input's stream and sequence, so the consumer's own dead-lettering and a later
JetStream advisory about the same message never store two.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from services.events.binding import new_event
from services.events.consumer import Poison
from services.events.jetstream import derive_msg_id, publish_event
from services.events.models import AUDIO_FAILED, AudioFailed
from services.settings import NatsSettings


def original_record(subject: str, headers: Mapping[str, str] | None, body: bytes) -> dict[str, object]:
    return {"subject": subject, "headers": dict(headers or {}), "body_base64": base64.b64encode(body).decode()}


async def publish_dead_letter(
    js: JetStreamContext,
    cfg: NatsSettings,
    source: str,
    *,
    poison: Poison,
    stream: str,
    sequence: int,
    original: dict[str, object],
    deliveries: int | None,
) -> None:
    data = AudioFailed(
        stage=poison.stage, reason=poison.reason, error=poison.error, deliveries=deliveries, original=original
    )
    headers = original.get("headers")
    original_id = headers.get("ce-id") if isinstance(headers, Mapping) else None
    extensions = {"originalid": original_id} if original_id else None
    event = new_event(AUDIO_FAILED, source, data.model_dump(mode="json"), extensions=extensions)
    msg_id = derive_msg_id("dlq", stream, str(sequence))
    await publish_event(js, cfg.subject("dlq", poison.stage), event, msg_id=msg_id)


async def dead_letter(js: JetStreamContext, cfg: NatsSettings, source: str, msg: Msg, poison: Poison) -> None:
    """Dead-letter a message consumed from a stream."""
    meta = msg.metadata
    await publish_dead_letter(
        js,
        cfg,
        source,
        poison=poison,
        stream=meta.stream,
        sequence=meta.sequence.stream,
        original=original_record(msg.subject, msg.headers, msg.data),
        deliveries=meta.num_delivered,
    )
