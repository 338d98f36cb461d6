"""Publishing ``audio.captioned``: inline when it fits a NATS message, by reference when not.

A 4-hour stereo call's ``audio.captioned`` is ~3.8 MB against NATS's 1 MiB payload: its
data goes to the outputs bucket (``LISTENPOST_NATS__OUTPUTS_BUCKET``) and the event carries
a ``dataref`` instead (:func:`services.events.claimcheck.by_reference`). Object name and
``Nats-Msg-Id`` both derive from the input's source and id, so a redelivered input
rewrites the same object and its repeat event is dropped by JetStream's dedup.
"""

from __future__ import annotations

from cloudevents.core.base import BaseCloudEvent
from nats.js import JetStreamContext

from services.events.claimcheck import by_reference
from services.events.jetstream import derive_msg_id
from services.events.traced import publish_traced
from services.settings import NatsSettings


async def publish_captioned(
    js: JetStreamContext, cfg: NatsSettings, captioned: BaseCloudEvent, *, input_source: str, input_id: str
) -> bool:
    """Store ``captioned`` on ``<prefix>.captioned``; False when JetStream already had it (a redelivery)."""
    msg_id = derive_msg_id("captioned", input_source, input_id)
    event = await by_reference(
        js,
        captioned,
        bucket=cfg.outputs_bucket,
        name=f"captioned/{msg_id}",
        max_payload_bytes=cfg.max_payload_bytes,
        ttl_s=cfg.out_max_age_s,  # the object lives as long as the event that names it
        max_bytes=cfg.out_max_bytes,
        replicas=cfg.replicas,
    )
    return await publish_traced(js, cfg.subject("captioned"), event, msg_id=msg_id)
