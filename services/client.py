"""A small client: submit a local recording and collect what listenpost decided."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from pathlib import Path
from typing import Any

from cloudevents.core.base import BaseCloudEvent
from pydantic import BaseModel, Field

from services.events.binding import BindingError, decode, new_event
from services.events.bounds import StreamFullError
from services.events.claimcheck import ClaimCheckError, audio_reference, object_dataref, resolve_data
from services.events.connection import connect
from services.events.jetstream import derive_msg_id, publish_event
from services.events.models import AUDIO_CAPTIONED, AUDIO_FAILED, AUDIO_SUBMITTED, AudioSubmitted
from services.settings import NatsSettings


class ReceivedEvent(BaseModel):
    subject: str
    type: str
    id: str
    attributes: dict[str, Any]
    data: Any


class SubmitResult(BaseModel):
    event_id: str
    captioned: ReceivedEvent | None = None
    failed: ReceivedEvent | None = None
    decisions: list[ReceivedEvent] = Field(default_factory=list)
    elapsed_s: float = 0.0


def _received(subject: str, event: BaseCloudEvent, data: Any) -> ReceivedEvent:
    attributes = {k: v for k, v in event.get_attributes().items() if k != "data"}
    return ReceivedEvent(subject=subject, type=event.get_type(), id=event.get_id(), attributes=attributes, data=data)


def _concerns(event: ReceivedEvent, ids: set[str]) -> bool:
    """Is this output about our input, or about an output of it (a decision on its caption)?"""
    return event.attributes.get("inputid") in ids or event.attributes.get("originalid") in ids


async def submit_file(
    path: Path,
    *,
    nats: NatsSettings,
    bucket: str = "listenpost-audio",
    channels: list[str] | None = None,
    context: dict[str, Any] | None = None,
    source: str = "urn:listenpost:cli",
    wait_s: float = 300.0,
    settle_s: float = 3.0,
) -> SubmitResult:
    """Publish an ``audio.submitted`` event for ``path`` and wait for its outcome.

    Small files ride inline; larger ones go to ``bucket`` of the NATS object store (one the
    preprocessor reads from: ``LISTENPOST_PREPROCESS__OBJECT_BUCKETS``). After the
    captioned event arrives, decisions are collected for ``settle_s`` more. Raises
    :class:`~services.events.bounds.StreamFullError` when the input stream is full.
    """
    nc = await connect(nats, role="operator", name="listenpost-cli")
    try:
        js = nc.jetstream()
        event_id = str(uuid.uuid4())
        received: asyncio.Queue[ReceivedEvent] = asyncio.Queue()
        related_ids = {event_id}

        async def on_message(msg: Any) -> None:
            try:
                decoded = decode(msg.data, msg.headers)
                candidate = _received(msg.subject, decoded, None)
                if not _concerns(candidate, related_ids):
                    return
                # A captioned event too large for NATS names its data in the outputs bucket.
                event = _received(msg.subject, decoded, await resolve_data(js, decoded, buckets=[nats.outputs_bucket]))
            except (BindingError, ClaimCheckError):
                return
            if _concerns(event, related_ids):
                related_ids.add(event.id)  # decisions name the captioned event as their input
                await received.put(event)

        # Subscribe before publishing, so nothing about our event is missed.
        sub = await nc.subscribe(f"{nats.subject_prefix}.>", cb=on_message)
        fmt = path.suffix.lstrip(".").lower() or None  # a file named by its sender: the name is a declaration
        audio = await audio_reference(js, path.read_bytes(), filename=path.name, event_id=event_id, bucket=bucket,
                                      replicas=nats.replicas, fmt=fmt)  # fmt: skip
        data = AudioSubmitted.model_validate(
            {
                "audio": audio,
                "channels": [{"index": i, "role": r} for i, r in enumerate(channels or []) if r],
                "context": context or {},
            }
        )
        extensions: dict[str, str] = {"callid": str(context["callid"])} if context and "callid" in context else {}
        if "object" in audio:
            # Claim check: the audio is elsewhere; dataref says where (CloudEvents extension).
            extensions["dataref"] = object_dataref(audio["object"]["bucket"], audio["object"]["name"])
        event = new_event(
            AUDIO_SUBMITTED, source, data.model_dump(mode="json", exclude_none=True), id=event_id, subject=path.name,
            extensions=extensions or None,
        )  # fmt: skip
        started = time.perf_counter()
        try:
            await publish_event(js, nats.subject("in", "cli"), event, msg_id=derive_msg_id("submit", source, event_id))
        except StreamFullError:
            if "object" in audio:  # no event will ever name it: do not leave the audio behind
                with contextlib.suppress(Exception):
                    await (await js.object_store(audio["object"]["bucket"])).delete(audio["object"]["name"])
            raise

        result = SubmitResult(event_id=event_id)
        settled_at = started
        deadline = started + wait_s
        while True:
            done = result.captioned is not None or result.failed is not None
            remaining = (min(deadline, settled_at + settle_s) if done else deadline) - time.perf_counter()
            if remaining <= 0:
                break
            try:
                got = await asyncio.wait_for(received.get(), remaining)
            except TimeoutError:
                break
            if got.type == AUDIO_CAPTIONED:
                result.captioned, settled_at = got, time.perf_counter()
            elif got.type == AUDIO_FAILED:
                result.failed, settled_at = got, time.perf_counter()
            elif got.type != AUDIO_SUBMITTED:
                result.decisions.append(got)
                settled_at = time.perf_counter()
        result.elapsed_s = round(time.perf_counter() - started, 3)
        await sub.unsubscribe()
        return result
    finally:
        await nc.drain()
