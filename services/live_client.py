"""Play a file as a live stream and watch what comes back (``listenpost stream FILE``).

Over NATS (:func:`stream_file`), or over the Ingress's WebSocket door (:func:`stream_file_ws`,
``--ws``), which relays to the same subjects (services/ingest/live_ws.py).

The file is decoded, sent as 16-bit PCM chunks of ``chunk_ms`` (at real-time pace with
``realtime``), opened by ``stream.started`` and closed by ``stream.ended`` (services/events/live.py).
Window events, decisions and the summary are reported as they arrive, each with its latency
from the audio's own time: when the window's last sample was spoken (``started_at + end``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
from nats.aio.msg import Msg
from pydantic import BaseModel, Field

from services.events.binding import BindingError, decode, event_data_json, new_event
from services.events.connection import connect
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
    StreamEnded,
    StreamStarted,
    check_stream_id,
    chunk_subject,
    started_subject,
    window_subject,
)
from services.events.models import AUDIO_CAPTIONED, AUDIO_FAILED
from services.settings import NatsSettings

#: Decoded audio a client sends at most (the file is read whole before it is played).
MAX_FILE_S = 4 * 3600


class LiveReport(BaseModel):
    """One thing that came back, as printed."""

    kind: str  # window | decision | summary | failed
    at_s: float = Field(description="Seconds since the stream started.")
    latency_s: float | None = Field(default=None, description="From the audio's time of the window's end.")
    window: int | None = None
    start: float | None = None
    end: float | None = None
    text: str = ""
    data: dict[str, Any] = Field(default_factory=dict)


class StreamResult(BaseModel):
    stream_id: str
    chunks: int = 0
    audio_s: float = 0.0
    reports: list[LiveReport] = Field(default_factory=list)

    @property
    def windows(self) -> list[LiveReport]:
        return [r for r in self.reports if r.kind == "window"]


class Playback(BaseModel):
    """How a file is played as a live stream, whichever door it goes through."""

    stream_id: str | None = Field(default=None, description="Default: <prefix>-<random>.")
    chunk_ms: int = Field(default=20, ge=5, le=1000)
    realtime: bool = True
    context: dict[str, Any] = Field(default_factory=dict)
    channels: list[str] = Field(default_factory=list, description="Roles by channel index.")
    source: str = "urn:listenpost:cli"
    wait_s: float = Field(default=120.0, description="How long to wait for the summary after the last chunk.")

    def id_or(self, prefix: str) -> str:
        return check_stream_id(self.stream_id or f"{prefix}-{uuid.uuid4().hex[:12]}")


async def paced_chunks(samples: np.ndarray, rate: int, play: Playback, origin: float) -> AsyncIterator[tuple[int, int, bytes]]:
    """``(seq, audio time in ms, 16-bit PCM payload)`` of each chunk, at the audio's own pace
    from ``origin`` (a ``time.time()``) when ``play.realtime``."""
    frames = max(1, rate * play.chunk_ms // 1000)
    for seq, first in enumerate(range(0, samples.shape[0], frames), start=1):
        offset_s = first / rate
        if play.realtime and (ahead := origin + offset_s - time.time()) > 0:
            await asyncio.sleep(ahead)
        yield seq, round(offset_s * 1000), samples[first:first + frames].astype("<i2").tobytes()


def read_pcm16(path: Path) -> tuple[np.ndarray, int]:
    """``(int16 samples (frames, channels), rate)``; a rate the stream cannot carry is resampled."""
    with soundfile.SoundFile(str(path)) as f:
        if f.frames > MAX_FILE_S * f.samplerate:
            raise ValueError(f"{path.name} is longer than {MAX_FILE_S} s")
        samples = f.read(dtype="int16", always_2d=True)
        rate = int(f.samplerate)
    if samples.shape[1] > 2:
        samples = samples[:, :2]
    if not 8000 <= rate <= 48000:
        import soxr

        samples = soxr.resample(samples.astype(np.float32) / 32768, rate, 16000)
        samples = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
        rate = 16000
    return samples, rate


async def stream_file(
    path: Path, *, nats: NatsSettings, play: Playback | None = None, on_report: Callable[[LiveReport], None] | None = None
) -> StreamResult:
    """Send ``path`` as a live stream over NATS; return what came back once its summary (or its
    failure) did, or after ``play.wait_s`` more."""
    play = play or Playback()
    stream_id, source = play.id_or("cli"), play.source
    samples, rate = read_pcm16(path)
    result = StreamResult(stream_id=stream_id)
    started_at = datetime.now(UTC)
    origin = time.time()
    done = asyncio.Event()
    start_id = str(uuid.uuid4())

    def report(item: LiveReport) -> None:
        result.reports.append(item)
        if on_report is not None:
            on_report(item)

    async def on_message(msg: Msg) -> None:
        try:
            event = decode(msg.data, msg.headers)
        except (BindingError, ValueError):
            return
        attributes = event.get_attributes()
        now = time.time() - origin
        mine = stream_id in (attributes.get("streamid"), attributes.get("callid")) or attributes.get("inputid") == start_id
        if event.get_type() == STREAM_CAPTIONED and mine:
            data = event_data_json(event)
            position = data.get("stream", {})
            report(LiveReport(kind="window", at_s=round(now, 3), latency_s=round(now - float(position.get("end", 0.0)), 3),
                              window=position.get("window"), start=position.get("start"), end=position.get("end"),
                              text=str(data.get("caption", "")), data=data))  # fmt: skip
        elif event.get_type() == AUDIO_CAPTIONED and mine:
            data = event_data_json(event) if event.get_data() else {}
            report(LiveReport(kind="summary", at_s=round(now, 3), text=str(data.get("caption", "")), data=data))
            done.set()
        elif event.get_type() == AUDIO_FAILED and attributes.get("originalid") == start_id:
            data = event_data_json(event)
            report(LiveReport(kind="failed", at_s=round(now, 3), text=str(data.get("reason", "")), data=data))
            done.set()
        elif mine and event.get_type() not in (STREAM_STARTED, STREAM_ENDED):
            data = event_data_json(event) if event.get_data() else {}
            report(LiveReport(kind="decision", at_s=round(now, 3), text=str(data.get("summary") or data.get("rule_id") or event.get_type()),
                              data={"type": event.get_type(), **data}))  # fmt: skip

    nc = await connect(nats, role="operator", name="listenpost-stream")
    try:
        js = nc.jetstream()
        subs = [
            await nc.subscribe(subject, cb=on_message)
            for subject in (window_subject(nats, stream_id), nats.subject("captioned"), nats.subject("alerts", ">"),
                            nats.subject("routes", ">"), nats.subject("tags"), nats.subject("dlq", ">"))
        ]  # fmt: skip
        ctx = {"callid": stream_id, **play.context}  # decisions name the call: the stream, unless given
        started = StreamStarted(
            stream_id=stream_id, started_at=started_at, context=ctx,
            channels=[{"index": i, "role": r} for i, r in enumerate(play.channels) if r],  # type: ignore[misc]
        )  # fmt: skip
        await publish_event(js, started_subject(nats, stream_id),
                            new_event(STREAM_STARTED, source, started.model_dump(mode="json"), id=start_id, subject=stream_id,
                                      extensions={"streamid": stream_id}),
                            msg_id=derive_msg_id("stream-start", source, stream_id))  # fmt: skip
        subject = chunk_subject(nats, stream_id)
        headers = {CODEC_HEADER: "pcm16", RATE_HEADER: str(rate), CHANNELS_HEADER: str(samples.shape[1])}
        async for seq, timestamp_ms, payload in paced_chunks(samples, rate, play, origin):
            await js.publish(subject, payload, headers={**headers, SEQ_HEADER: str(seq), TIMESTAMP_HEADER: str(timestamp_ms)})
            result.chunks = seq
        result.audio_s = round(samples.shape[0] / rate, 3)
        ended = StreamEnded(stream_id=stream_id, chunks=result.chunks)
        await publish_event(js, subject, new_event(STREAM_ENDED, source, ended.model_dump(mode="json"), subject=stream_id,
                                                   extensions={"streamid": stream_id}),
                            msg_id=derive_msg_id("stream-end", source, stream_id))  # fmt: skip
        with contextlib.suppress(TimeoutError):  # no summary within wait_s: the result says so
            await asyncio.wait_for(done.wait(), play.wait_s)
            await asyncio.sleep(DECISIONS_AFTER_SUMMARY_S)
        for sub in subs:
            await sub.unsubscribe()
        return result
    finally:
        await nc.drain()


async def stream_file_ws(
    path: Path, *, url: str, api_key: str | None, play: Playback | None = None,
    on_report: Callable[[LiveReport], None] | None = None,
) -> StreamResult:
    """Send ``path`` as a live stream through the WebSocket door at ``url`` (``ws://host:port``);
    the replies come on the same socket. A refusal is a ``failed`` report with the close code
    and reason."""
    import websockets

    play = play or Playback()
    stream_id = play.id_or("ws")
    samples, rate = read_pcm16(path)
    result = StreamResult(stream_id=stream_id)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    origin = time.time()

    def report(item: LiveReport) -> None:
        result.reports.append(item)
        if on_report is not None:
            on_report(item)

    async with websockets.connect(f"{url.rstrip('/')}/streams/{stream_id}", additional_headers=headers,
                                  max_size=2**20) as socket:  # fmt: skip

        async def receive() -> None:
            async for message in socket:
                item = json.loads(message)
                now = time.time() - origin
                if item.get("type") == "window":
                    position = item.get("stream") or {}
                    report(LiveReport(kind="window", at_s=round(now, 3), latency_s=round(now - float(position.get("end", 0.0)), 3),
                                      window=position.get("window"), start=position.get("start"), end=position.get("end"),
                                      text=str(item.get("caption", "")), data=item))  # fmt: skip
                elif item.get("type") == "error":
                    report(LiveReport(kind="failed", at_s=round(now, 3), text=str(item.get("reason", "")), data=item))
                else:
                    kind = "summary" if item.get("type") == "summary" else "decision"
                    text = str(item.get("summary") or item.get("rule_id") or "")
                    report(LiveReport(kind=kind, at_s=round(now, 3), text=text, data=item))

        receiver = asyncio.get_running_loop().create_task(receive())
        try:
            await socket.send(json.dumps({"codec": "pcm16", "rate": rate, "channels": int(samples.shape[1]),
                                          "source": play.source, "context": play.context, "roles": play.channels}))  # fmt: skip
            async for seq, timestamp_ms, payload in paced_chunks(samples, rate, play, origin):
                await socket.send(WS_FRAME_HEADER.pack(seq, timestamp_ms) + payload)
                result.chunks = seq
            result.audio_s = round(samples.shape[0] / rate, 3)
            await socket.send(json.dumps({"type": "end"}))
            await asyncio.wait_for(receiver, play.wait_s)
        except websockets.ConnectionClosedError as exc:
            if exc.rcvd is not None:
                report(LiveReport(kind="failed", at_s=round(time.time() - origin, 3),
                                  text=f"closed {exc.rcvd.code}: {exc.rcvd.reason}"))  # fmt: skip
        except TimeoutError:
            pass  # no summary within wait_s: the result has what came (no summary report)
        finally:
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)
        if socket.close_code not in (None, 1000) and not any(r.kind == "failed" for r in result.reports):
            report(LiveReport(kind="failed", at_s=round(time.time() - origin, 3),
                              text=f"closed {socket.close_code}: {socket.close_reason}"))  # fmt: skip
    return result
