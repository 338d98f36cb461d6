"""JetStream advisories about the input stream, turned into dead letters.

When a replica dies while holding a message on its last allowed delivery, no
code of ours sees the failure: the server stops delivering and emits a
MAX_DELIVERIES advisory. Advisories are captured in their own stream (so none
is missed while no replica runs) and each becomes an ``audio.failed`` event
carrying the original message, which is then removed from the input stream.
"""

from __future__ import annotations

import json
import logging

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from services.events.consumer import Poison
from services.events.deadletter import original_record, publish_dead_letter
from services.settings import NatsSettings

log = logging.getLogger(__name__)

MAX_DELIVERIES = "MAX_DELIVERIES"
TERMINATED = "MSG_TERMINATED"


async def handle_advisory(js: JetStreamContext, cfg: NatsSettings, source: str, msg: Msg) -> None:
    try:
        advisory = json.loads(msg.data)
        stream, sequence = str(advisory["stream"]), int(advisory["stream_seq"])
    except (ValueError, KeyError, TypeError):
        log.warning("ignoring malformed advisory on %s", msg.subject)
        return
    kind = MAX_DELIVERIES if f".{MAX_DELIVERIES}." in msg.subject else TERMINATED
    deliveries = advisory.get("deliveries")
    try:
        stored = await js.get_msg(stream, sequence)
    except NotFoundError:
        # A terminated message is gone from a work-queue stream; the consumer that
        # terminated it already stored its dead letter under the same id (deduped).
        original: dict[str, object] = {"subject": None, "headers": {}, "body_base64": ""}
        found = False
    else:
        original = original_record(stored.subject or "", stored.headers, stored.data or b"")
        found = True
    if kind == MAX_DELIVERIES:
        reason = f"no acknowledgement after {deliveries} deliveries (a replica died or timed out on each)"
    else:
        reason = str(advisory.get("reason") or "terminated by a consumer")
    await publish_dead_letter(
        js,
        cfg,
        source,
        poison=Poison("retry" if kind == MAX_DELIVERIES else "validate", reason, error=kind.lower()),
        stream=stream,
        sequence=sequence,
        original=original,
        deliveries=deliveries,
    )
    if found:
        # Stored in the DLQ: now it may leave the input stream, which would otherwise hold it forever.
        await js.delete_msg(stream, sequence)
