"""Bounded streams against a real nats-server: limits from settings, and a clear refusal when IN is full.

Before issue 12 the streams had no byte or message limits, so ``discard: new`` on the input
stream never applied; and a full stream's refusal (a 503 API error) was retried as if
nats-server were restarting, then answered as a 500 or a traceback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StreamConfig
from pydantic import SecretStr
from typer.testing import CliRunner

from services.cli import app
from services.events.binding import encode_structured, new_event
from services.events.bounds import StreamFullError
from services.events.connection import connect
from services.events.embedded import EmbeddedNatsServer
from services.events.jetstream import derive_msg_id, provision, publish_event, stream_configs
from services.events.models import AUDIO_SUBMITTED
from services.ingest.adapters import AdapterSet
from services.ingest.http import HttpIngest, app_for, http_app
from services.settings import ApiKey, HttpSettings, NatsSettings, NotifySettings

KEY = "k-3f9a1c-bounded-0123456789abcdef-streams"
DATA = {"audio": {"uri": "file:///calls/1.wav"}}


def tiny(url: str, **limits: Any) -> NatsSettings:
    return NatsSettings(url=url, **{"in_max_msgs": 2, **limits})


async def fill(js: JetStreamContext, cfg: NatsSettings, count: int) -> None:
    for i in range(count):
        event = new_event(AUDIO_SUBMITTED, "urn:test:fill", DATA, id=f"fill-{i}")
        await publish_event(js, cfg.subject("in", "test"), event, msg_id=derive_msg_id("fill", str(i)))


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[EmbeddedNatsServer]:
    with EmbeddedNatsServer(tmp_path / "nats") as running:
        yield running


def test_every_stream_that_can_grow_has_byte_and_message_limits() -> None:
    cfg = NatsSettings(in_max_msgs=7, in_max_bytes=7000, out_max_msgs=8, out_max_bytes=8000,
                       dlq_max_msgs=9, dlq_max_bytes=9000, dlq_max_age_s=3600)  # fmt: skip
    configs = {c.name: c for c in stream_configs(cfg)}
    inputs, outputs, dlq = configs[cfg.in_stream], configs[cfg.out_stream], configs[cfg.dlq_stream]
    assert (inputs.max_msgs, inputs.max_bytes, inputs.discard) == (7, 7000, DiscardPolicy.NEW)
    assert (outputs.max_msgs, outputs.max_bytes, outputs.discard) == (8, 8000, DiscardPolicy.OLD)
    assert (dlq.max_msgs, dlq.max_bytes, dlq.discard, dlq.max_age) == (9, 9000, DiscardPolicy.NEW, 3600)
    # Notifications and their dead letters: a full stream refuses a new one, never drops one unsent.
    notify = NotifySettings(max_msgs=10, max_bytes=10_000, stream_max_age_s=7200, max_age_s=3600)
    queued = {c.name: c for c in stream_configs(cfg, notify=notify)}[notify.stream]
    assert (queued.max_msgs, queued.max_bytes, queued.discard, queued.max_age) == (10, 10_000, DiscardPolicy.NEW, 7200)
    assert queued.retention == RetentionPolicy.WORK_QUEUE


async def test_provision_bounds_a_stream_created_without_limits(server: EmbeddedNatsServer) -> None:
    nc = await connect(server.client_settings(), role="admin", name="test-bounded")
    try:
        js = nc.jetstream()
        cfg = tiny(server.url)
        # As a listenpost before issue 12 created it: no limits at all.
        await js.add_stream(StreamConfig(name=cfg.in_stream, subjects=[cfg.subject("in", ">")],
                                         retention=RetentionPolicy.WORK_QUEUE, discard=DiscardPolicy.NEW))  # fmt: skip
        await provision(js, cfg)
        info = await js.stream_info(cfg.in_stream)
        assert (info.config.max_msgs, info.config.max_bytes) == (2, cfg.in_max_bytes)
    finally:
        await nc.close()


async def test_a_full_input_stream_refuses_at_once_with_a_plain_error(server: EmbeddedNatsServer) -> None:
    nc = await connect(server.client_settings(), role="admin", name="test-bounded")
    try:
        js = nc.jetstream()
        cfg = tiny(server.url)
        await provision(js, cfg)
        await fill(js, cfg, 2)
        event = new_event(AUDIO_SUBMITTED, "urn:test:fill", DATA, id="one-too-many")
        started = time.perf_counter()
        with pytest.raises(StreamFullError) as refused:
            await publish_event(js, cfg.subject("in", "test"), event, msg_id="one-too-many", retry_for_s=30)
        # Not retried for retry_for_s as a restarting server would be: waiting does not empty a stream.
        assert time.perf_counter() - started < 2.0
        assert str(refused.value) == (
            "the stream that stores listenpost.in.test is full (maximum messages exceeded); "
            "nothing was stored, try again later"
        )
        assert (await js.stream_info(cfg.in_stream)).state.messages == 2  # nothing stored was dropped

        # The byte limit is refused the same way.
        small = tiny(server.url, in_max_msgs=100, in_max_bytes=600)
        await js.purge_stream(cfg.in_stream)
        await provision(js, small)
        with pytest.raises(StreamFullError, match=r"\(maximum bytes exceeded\)"):
            await fill(js, small, 5)
    finally:
        await nc.close()


async def test_http_answers_503_input_full_with_retry_after(server: EmbeddedNatsServer) -> None:
    nc = await connect(server.client_settings(), role="admin", name="test-bounded")
    try:
        js = nc.jetstream()
        cfg = tiny(server.url)
        await provision(js, cfg)
        await fill(js, cfg, 2)
        http = HttpSettings(keys=[ApiKey(id="bounded", secret=SecretStr(KEY), sources=["urn:test:*"])], publish_timeout_s=20)
        app_for(HttpIngest(js=js, nats=cfg, http=http, adapters=AdapterSet()))
        transport = httpx.ASGITransport(app=http_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingress") as client:
            body = encode_structured(new_event(AUDIO_SUBMITTED, "urn:test:http", DATA, id="ev-full"))[0]
            started = time.perf_counter()
            reply = await client.post(
                "/events", content=body,
                headers={"content-type": "application/cloudevents+json", "authorization": f"Bearer {KEY}"},
            )  # fmt: skip
            assert time.perf_counter() - started < 2.0  # answered at once, not after publish_timeout_s
        del http_app.state.ingest
        assert reply.status_code == 503, reply.text
        assert reply.headers["retry-after"] == "30"
        assert reply.headers["content-type"] == "application/problem+json"
        problem = reply.json()
        assert problem["type"] == "urn:listenpost:problem:input-full"
        assert problem["title"] == "Input stream full"
        assert problem["detail"] == (
            "the input stream is full (maximum messages exceeded): the event was not stored; "
            "resend it after Retry-After seconds"
        )
    finally:
        await nc.close()


def test_submit_exits_with_a_clear_message_when_the_input_is_full(
    server: EmbeddedNatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LISTENPOST_NATS__IN_MAX_MSGS", "2")
    cfg = tiny(server.url)

    async def prefill() -> None:
        nc = await connect(server.client_settings(), role="admin", name="test-bounded")
        try:
            await provision(nc.jetstream(), cfg)
            await fill(nc.jetstream(), cfg, 2)
        finally:
            await nc.close()

    asyncio.run(prefill())
    wav = tmp_path / "call.wav"
    wav.write_bytes(b"RIFF0000WAVE")  # never decoded: it is refused before anyone reads it
    result = CliRunner().invoke(app, ["submit", str(wav), "--nats-url", server.url, "--timeout", "5"])
    assert result.exit_code == 75, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "not submitted: the stream that stores listenpost.in.cli is full (maximum messages exceeded)" in " ".join(
        result.output.split()
    )
    assert "Traceback" not in result.output
