"""Turning a message that can never succeed into an ``audio.failed`` dead letter.

One dead letter per stored input message: its ``Nats-Msg-Id`` comes from the
input's stream and sequence, so the consumer's own dead-lettering and a later
JetStream advisory about the same message never store two.

The dead letter carries the original whole (subject, headers, body) so it can be
replayed. An original too large to embed (a 1 MiB input is 1.33 MiB in base64) is
stored in the object-store bucket ``LISTENPOST_NATS__DLQ_BUCKET`` as the same JSON
record, named ``<stream>/<sequence>``, and the dead letter's ``original`` is
``{"subject", "ref", "size"}`` instead; ``dlq replay`` reads it back from there.

Dead-lettering is a ``dead-letter`` span (status error, with the stage and error type) inside the
consume span of the failed message, so it shows in the input's own trace (and is linked to it,
for a dead letter written from an advisory, in the advisory's trace); the dead letter is
published in a PRODUCER span whose ``traceparent`` it carries.

A full dead-letter stream refuses new dead letters (it never drops old ones): that is
logged as an error and raised as :class:`~services.events.bounds.StreamFullError`, and
the failed input stays in its stream (see :mod:`services.events.consumer`).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from services.events.binding import BindingError, CloudEvent, decode, new_event
from services.events.bounds import StreamFullError
from services.events.claimcheck import HEADER_ROOM, encoded_size, put_object
from services.events.consumer import Poison
from services.events.jetstream import derive_msg_id
from services.events.models import AUDIO_FAILED, AudioFailed
from services.events.traced import publish_traced
from services.settings import NatsSettings
from services.telemetry import child_traceparent, mark_error, message_traceparent, stage_span, tracing_enabled

log = logging.getLogger(__name__)


def original_record(subject: str, headers: Mapping[str, str] | None, body: bytes) -> dict[str, object]:
    return {"subject": subject, "headers": dict(headers or {}), "body_base64": base64.b64encode(body).decode()}


def _original_event(original: Mapping[str, object]) -> CloudEvent | None:
    headers = original.get("headers")
    body = original.get("body_base64")
    if not isinstance(body, str) or not isinstance(headers, Mapping):
        return None
    try:
        return decode(base64.b64decode(body), {str(k): str(v) for k, v in headers.items()})
    except (BindingError, ValueError):
        return None


def _header(original: Mapping[str, object], name: str) -> str | None:
    headers = original.get("headers")
    if isinstance(headers, Mapping):
        for key, value in headers.items():
            if str(key).lower() == name and isinstance(value, str) and value:  # NATS header names: any case
                return value
    return None


def original_id(original: Mapping[str, object]) -> str | None:
    """The failed event's CloudEvents id: its ``ce-id`` header (any case), else its structured body's ``id``."""
    return correlation(original).get("originalid")


def correlation(original: Mapping[str, object]) -> dict[str, str]:
    """The dead letter's extensions, read from the failed event in either content mode:

    - ``originalid`` and ``inputid``: the failed event's id (``inputid`` is what every emitted
      event carries: the id of the event it answers), absent when the original has none;
    - ``traceparent``: a child of the original's ``traceparent``, or a new trace when it had
      none (or an invalid one), so a dead letter continues the input's trace.

    A binary-mode event's headers are read even when its body is not a readable event (that
    may be why it failed); a structured-mode event's attributes come from its decoded body.
    """
    event = _original_event(original)
    attributes = dict(event.get_attributes()) if event is not None else {}
    failed_id = attributes.get("id") or _header(original, "ce-id")
    parent = attributes.get("traceparent") or _header(original, "ce-traceparent")
    extensions = {"traceparent": child_traceparent(parent if isinstance(parent, str) else None)}
    if isinstance(failed_id, str) and failed_id:
        extensions |= {"originalid": failed_id, "inputid": failed_id}
    return extensions


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
    attributes = {"listenpost.stage": poison.stage, "listenpost.error": poison.error,
                  "messaging.nats.stream": stream, "messaging.nats.sequence": sequence}  # fmt: skip
    # Linked to the failed message's own trace: a dead letter written from a JetStream advisory
    # runs in the advisory's trace, and the link leads back to the input's.
    with stage_span("dead-letter", attributes, link=_original_traceparent(original)) as span:
        mark_error(span, poison.error, f"{poison.stage}: {poison.reason}")
        # originalid/inputid, and a traceparent in the input's trace (publish_traced replaces it
        # with its PRODUCER span's while tracing is on).
        extensions = correlation(original)

        def letter(record: dict[str, object]) -> CloudEvent:
            data = AudioFailed(
                stage=poison.stage, reason=poison.reason, error=poison.error, deliveries=deliveries, original=record
            )
            return new_event(AUDIO_FAILED, source, data.model_dump(mode="json"), extensions=extensions)

        event = letter(original)
        try:
            if encoded_size(event) > cfg.max_payload_bytes - HEADER_ROOM:
                blob = json.dumps(original).encode()
                name = f"{stream}/{sequence}"
                ref = await put_object(
                    js, cfg.dlq_bucket, name, blob, ttl_s=cfg.dlq_max_age_s, max_bytes=cfg.dlq_max_bytes, replicas=cfg.replicas
                )
                log.info("original of %s #%d is too large to embed in its dead letter: stored as %s", stream, sequence, ref)
                event = letter({"subject": original.get("subject"), "ref": ref, "size": len(blob)})
            msg_id = derive_msg_id("dlq", stream, str(sequence))
            stored = await publish_traced(js, cfg.subject("dlq", poison.stage), event, msg_id=msg_id)
            if stored:
                log.warning(
                    "dead-lettered %s #%d (original id %r) at stage %s: %s: %r",
                    stream, sequence, extensions.get("originalid"), poison.stage, poison.error, poison.reason,
                )  # fmt: skip
        except StreamFullError as exc:
            log.error(
                "DEAD-LETTER STREAM FULL: %s #%d (stage %s: %s) could not be dead-lettered (%s: %s); it stays in %s. "
                "Replay or remove dead letters (listenpost dlq list), or raise LISTENPOST_NATS__DLQ_MAX_MSGS/_BYTES",
                stream, sequence, poison.stage, poison.reason, exc.subject, exc.limit, stream,
            )  # fmt: skip
            raise


def _original_traceparent(original: Mapping[str, object]) -> str | None:
    headers, body = original.get("headers"), original.get("body_base64")
    if not tracing_enabled() or not isinstance(headers, Mapping) or not isinstance(body, str):
        return None
    try:
        return message_traceparent({str(k): str(v) for k, v in headers.items()}, base64.b64decode(body))
    except ValueError:
        return None


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
