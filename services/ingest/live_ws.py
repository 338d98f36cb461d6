"""The WebSocket door for live audio: ``/streams/{id}`` on the Serve HTTP proxy.

For devices and browsers that do not speak NATS. It is a relay, not a second pipeline: what
arrives is published on the stream's NATS subjects exactly as a NATS client would send it
(services/events/live.py), and the LiveStreams owners do the rest. What comes back for the
stream (window captions, decisions, the summary, a failure) is sent to the client as it happens.

The conversation (docs/streams.md#websocket):

1. the client connects with ``Authorization: Bearer <key>`` (the HTTP ingress's keys; a browser,
   which cannot set headers, offers the subprotocols ``listenpost`` and ``bearer.<key>``);
2. its first message is text, JSON: ``{"codec": "pcm16", "rate": 16000, "channels": 1,
   "source": "urn:...", "context": {...}, "roles": ["agent", "customer"]}``;
3. then binary messages, one chunk each: 4 bytes sequence number and 4 bytes audio time in
   milliseconds (both unsigned, big-endian), then the payload;
4. text ``{"type": "end"}`` ends the stream; the server sends the summary, then closes (1000).

The server sends text JSON: ``{"type": "window" | "decision" | "summary" | "error", ...}``.
Close codes: 1008 (policy: not authorised, a message out of turn, the stream refused by its
owner with the reason), 1009 (a chunk over ``streams.max_chunk_bytes``), 1003 (a message that
is not JSON or not binary where it should be), 1011 (NATS unavailable).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect
from nats.aio.msg import Msg
from pydantic import BaseModel, Field, ValidationError

from services.events.binding import BindingError, decode, event_data_json, new_event
from services.events.jetstream import derive_msg_id, publish_event
from services.events.live import (
    CHANNELS_HEADER,
    CODEC_HEADER,
    DECISIONS_AFTER_SUMMARY_S,
    RATE_HEADER,
    SEQ_HEADER,
    STREAM_CAPTIONED,
    STREAM_ENDED,
    STREAM_STARTED,
    TIMESTAMP_HEADER,
    WS_FRAME_HEADER,
    StreamIdError,
    StreamStarted,
    check_stream_id,
    chunk_subject,
    started_subject,
    window_subject,
)
from services.events.models import AUDIO_CAPTIONED, AUDIO_FAILED

log = logging.getLogger(__name__)

POLICY, TOO_BIG, UNSUPPORTED, UNAVAILABLE = 1008, 1009, 1003, 1011
_FRAME_HEADER = WS_FRAME_HEADER
#: How long after the end the door waits for the summary before it closes anyway.
SUMMARY_WAIT_S = 120.0


class StartMessage(BaseModel):
    """The client's first message."""

    codec: str = Field(max_length=16)
    rate: int = Field(ge=1, le=192_000)
    channels: int = Field(ge=1, le=8)
    source: str = Field(default="urn:listenpost:ws", max_length=256)
    context: dict[str, Any] = Field(default_factory=dict)
    roles: list[str] = Field(default_factory=list, max_length=8)


@dataclass
class WsClose(Exception):
    code: int
    reason: str


def bearer(websocket: WebSocket) -> tuple[str | None, str | None]:
    """``(Authorization header value, the subprotocol to accept)``: a browser sends its key as
    the subprotocol ``bearer.<key>`` beside ``listenpost``."""
    header = websocket.headers.get("authorization")
    if header:
        return header, None
    offered = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    token = next((p.removeprefix("bearer.") for p in offered if p.startswith("bearer.")), None)
    if token and "listenpost" in offered:
        return f"Bearer {token}", "listenpost"
    return None, None


async def relay_stream(websocket: WebSocket, stream_id: str, *, js: Any, nats: Any, max_chunk_bytes: int,
                       check_source: Any, subprotocol: str | None) -> None:  # fmt: skip
    """Run one WebSocket stream until it ends; every refusal is a close code with a reason."""
    try:
        check_stream_id(stream_id)
    except StreamIdError as exc:
        await websocket.close(code=POLICY, reason=str(exc)[:120])
        return
    await websocket.accept(subprotocol=subprotocol)
    nc = js._nc  # the Ingress's own connection (JetStreamContext has no public one): core subscriptions for the replies
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=256)
    start_id = str(uuid.uuid4())
    ended = asyncio.Event()
    failure: list[str] = []  # the owner's reason, when it refused the stream
    subs: list[Any] = []

    async def on_message(msg: Msg) -> None:
        try:
            event = decode(msg.data, msg.headers)
            data = event_data_json(event) if event.get_data() is not None else {}
        except (BindingError, ValueError):
            return
        attributes = event.get_attributes()
        if event.get_type() == AUDIO_FAILED and attributes.get("originalid") == start_id:
            failure.append(str(data.get("reason", "")))
            outbox.put_nowait({"type": "error", "reason": failure[0]})
            ended.set()
            return
        if stream_id not in (attributes.get("streamid"), attributes.get("callid")):
            return
        if event.get_type() == STREAM_CAPTIONED:
            item = {"type": "window", "stream": data.get("stream"), "caption": data.get("caption", "")}
        elif event.get_type() == AUDIO_CAPTIONED:
            item = {"type": "summary", "caption": data.get("caption", ""), "context": data.get("context", {})}
            ended.set()
        else:
            item = {"type": "decision", "event": event.get_type(), "rule_id": data.get("rule_id"), "summary": data.get("summary")}
        if not outbox.full():
            outbox.put_nowait(item)

    async def send_replies() -> None:
        while True:
            await websocket.send_text(json.dumps(await outbox.get()))

    sender = asyncio.get_running_loop().create_task(send_replies(), name=f"ws-{stream_id}-replies")
    try:
        for subject in (window_subject(nats, stream_id), nats.subject("captioned"), nats.subject("alerts", ">"),
                        nats.subject("routes", ">"), nats.subject("dlq", "stream")):  # fmt: skip
            subs.append(await nc.subscribe(subject, cb=on_message))
        start = await _start(websocket)
        check_source(start.source)
        started = StreamStarted(
            stream_id=stream_id, started_at=datetime.now(UTC), context={"callid": stream_id, **start.context},
            channels=[{"index": i, "role": r} for i, r in enumerate(start.roles)],  # type: ignore[misc]
        )  # fmt: skip
        await publish_event(js, started_subject(nats, stream_id),
                            new_event(STREAM_STARTED, start.source, started.model_dump(mode="json"), id=start_id,
                                      subject=stream_id, extensions={"streamid": stream_id}),
                            msg_id=derive_msg_id("stream-start", start.source, stream_id))  # fmt: skip
        headers = {CODEC_HEADER: start.codec, RATE_HEADER: str(start.rate), CHANNELS_HEADER: str(start.channels)}
        while not ended.is_set():
            try:
                message = await asyncio.wait_for(websocket.receive(), timeout=1.0)
            except TimeoutError:
                continue  # look again whether the owner refused the stream meanwhile
            if message["type"] == "websocket.disconnect":
                return  # the owner's idle timeout closes the stream
            if message.get("text") is not None:
                if _is_end(message["text"]):
                    await publish_event(js, chunk_subject(nats, stream_id),
                                        new_event(STREAM_ENDED, start.source, {"stream_id": stream_id},
                                                  extensions={"streamid": stream_id}),
                                        msg_id=derive_msg_id("stream-end", start.source, stream_id))  # fmt: skip
                    break
                raise WsClose(UNSUPPORTED, 'text after the start must be {"type": "end"}')
            frame = message.get("bytes") or b""
            if len(frame) < _FRAME_HEADER.size:
                raise WsClose(UNSUPPORTED, "a chunk starts with 8 bytes: sequence and milliseconds")
            if len(frame) - _FRAME_HEADER.size > max_chunk_bytes:
                raise WsClose(TOO_BIG, f"chunk of {len(frame) - _FRAME_HEADER.size:,} bytes is over {max_chunk_bytes:,}")
            seq, timestamp_ms = _FRAME_HEADER.unpack_from(frame)
            await js.publish(chunk_subject(nats, stream_id), frame[_FRAME_HEADER.size:],
                             headers={**headers, SEQ_HEADER: str(seq), TIMESTAMP_HEADER: str(timestamp_ms)})  # fmt: skip
        with contextlib.suppress(TimeoutError):  # no summary in time: the socket closes without it
            await asyncio.wait_for(ended.wait(), SUMMARY_WAIT_S)
        if not failure:
            await asyncio.sleep(DECISIONS_AFTER_SUMMARY_S)
        await _drain(outbox)
        if failure:
            await websocket.close(code=POLICY, reason=failure[0][:120])
        else:
            await websocket.close(code=1000)
    except WsClose as exc:
        await _drain(outbox)
        await websocket.close(code=exc.code, reason=exc.reason[:120])
    except WebSocketDisconnect:
        return
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        for sub in subs:
            await sub.unsubscribe()


async def _start(websocket: WebSocket) -> StartMessage:
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect()
    if message.get("text") is None:
        raise WsClose(POLICY, "send the start message (JSON text) before any audio")
    try:
        return StartMessage.model_validate_json(message["text"])
    except ValidationError as exc:
        error = exc.errors()[0]
        raise WsClose(UNSUPPORTED, f"start message: {'.'.join(str(p) for p in error['loc'])}: {error['msg']}") from None


def _is_end(text: str) -> bool:
    try:
        return bool(json.loads(text) == {"type": "end"})
    except ValueError:
        return False


async def _drain(outbox: asyncio.Queue[dict[str, Any]]) -> None:
    """Let the replies already queued go out before the close."""
    for _ in range(50):
        if outbox.empty():
            return
        await asyncio.sleep(0.02)
