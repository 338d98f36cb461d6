"""Turning a message that can never succeed into an ``audio.failed`` dead letter."""

from __future__ import annotations

import base64

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from services.events.binding import new_event
from services.events.consumer import Poison
from services.events.jetstream import derive_msg_id, publish_event
from services.events.models import AUDIO_FAILED, AudioFailed
from services.settings import NatsSettings


def failed_data(msg: Msg, poison: Poison) -> AudioFailed:
    deliveries = msg.metadata.num_delivered if msg.reply else None
    return AudioFailed(
        stage=poison.stage,
        reason=poison.reason,
        error=poison.error,
        deliveries=deliveries,
        original={
            "subject": msg.subject,
            "headers": dict(msg.headers or {}),
            "body_base64": base64.b64encode(msg.data).decode(),
        },
    )


async def dead_letter(js: JetStreamContext, cfg: NatsSettings, source: str, msg: Msg, poison: Poison) -> None:
    data = failed_data(msg, poison)
    original_id = (msg.headers or {}).get("ce-id")
    extensions = {"originalid": original_id} if original_id else None
    event = new_event(AUDIO_FAILED, source, data.model_dump(mode="json"), extensions=extensions)
    # One dead letter per stored message, however often it is dead-lettered.
    meta = msg.metadata
    msg_id = derive_msg_id("dlq", meta.stream, str(meta.sequence.stream))
    await publish_event(js, cfg.subject("dlq", poison.stage), event, msg_id=msg_id)
