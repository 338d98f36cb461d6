"""The consumer loop's delivery policy, on a real nats-server (no Ray): ack, retry, dead-letter."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import nats.errors
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from services.events.binding import decode, event_data_json, new_event
from services.events.connection import connect
from services.events.consumer import Poison, PullConsumer, Redelivery, RetryLater
from services.events.deadletter import dead_letter
from services.events.embedded import EmbeddedNatsServer
from services.events.jetstream import provision, publish_event
from services.settings import NatsSettings


@pytest.fixture
async def js(tmp_path: Path) -> AsyncIterator[tuple[JetStreamContext, NatsSettings]]:
    with EmbeddedNatsServer(tmp_path / "nats") as server:
        cfg = NatsSettings(url=server.url, ack_wait_s=2, max_deliver=3, retry_delay_s=0.1)
        nc = await connect(server.client_settings(), role="admin", name="consumer-test")
        jsc = nc.jetstream()
        await provision(jsc, cfg)
        yield jsc, cfg
        await nc.close()


async def run_consumer(jsc: JetStreamContext, cfg: NatsSettings, handler, until, timeout: float = 20.0) -> PullConsumer:
    consumer = PullConsumer(
        jsc, stream=cfg.in_stream, durable=cfg.ingest_durable, handler=handler,
        dead_letter=lambda msg, poison: dead_letter(jsc, cfg, "urn:test", msg, poison),
        redelivery=Redelivery(cfg.max_deliver, heartbeat_s=0.5, retry_delay_s=0.1, retry_delay_max_s=0.2),
    )  # fmt: skip
    consumer.start()
    try:
        async with asyncio.timeout(timeout):
            while not until(consumer):
                await asyncio.sleep(0.05)
    finally:
        await consumer.stop(drain_timeout_s=5)
    return consumer


async def publish(jsc: JetStreamContext, cfg: NatsSettings, n: int = 1) -> list[str]:
    ids = []
    for i in range(n):
        event = new_event("com.listenpost.audio.submitted", "urn:test", {"n": i})
        await publish_event(jsc, cfg.subject("in", "t"), event, msg_id=event.get_id())
        ids.append(event.get_id())
    return ids


async def dead_letters(jsc: JetStreamContext, cfg: NatsSettings) -> list[dict]:
    sub = await jsc.subscribe(cfg.subject("dlq", ">"), ordered_consumer=True)
    found = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except nats.errors.TimeoutError:
                return found
            found.append(event_data_json(decode(msg.data, msg.headers)))
    finally:
        await sub.unsubscribe()


async def pending(jsc: JetStreamContext, cfg: NatsSettings) -> tuple[int, int]:
    info = await jsc.consumer_info(cfg.in_stream, cfg.ingest_durable)
    return info.num_pending, info.num_ack_pending


async def test_success_is_acked_and_leaves_the_work_queue(js) -> None:
    jsc, cfg = js
    await publish(jsc, cfg, 3)
    seen: list[str] = []

    async def handler(msg: Msg) -> None:
        seen.append(decode(msg.data, msg.headers).get_id())

    consumer = await run_consumer(jsc, cfg, handler, lambda c: c.stats.acked == 3)
    assert len(seen) == 3 and consumer.stats.naked == 0
    assert await pending(jsc, cfg) == (0, 0)
    assert (await jsc.stream_info(cfg.in_stream)).state.messages == 0  # work-queue: acked means removed


async def test_transient_fault_is_redelivered_then_succeeds(js) -> None:
    jsc, cfg = js
    await publish(jsc, cfg)
    deliveries: list[int] = []

    async def handler(msg: Msg) -> None:
        deliveries.append(msg.metadata.num_delivered)
        if len(deliveries) < 2:
            raise RetryLater("engine restarting", delay_s=0.1)

    consumer = await run_consumer(jsc, cfg, handler, lambda c: c.stats.acked == 1)
    assert deliveries == [1, 2] and consumer.stats.naked == 1
    assert await dead_letters(jsc, cfg) == []


async def test_poison_is_dead_lettered_with_the_original_and_terminated(js) -> None:
    jsc, cfg = js
    (event_id,) = await publish(jsc, cfg)

    async def handler(msg: Msg) -> None:
        raise Poison("decode-audio", "audio could not be decoded: bad header")

    await run_consumer(jsc, cfg, handler, lambda c: c.stats.dead_lettered == 1)
    (letter,) = await dead_letters(jsc, cfg)
    assert letter["stage"] == "decode-audio" and letter["reason"] == "audio could not be decoded: bad header"
    assert letter["original"]["headers"]["ce-id"] == event_id
    assert json.loads(base64.b64decode(letter["original"]["body_base64"])) == {"n": 0}
    assert await pending(jsc, cfg) == (0, 0)


async def test_a_bug_is_retried_up_to_max_deliver_then_dead_lettered(js) -> None:
    jsc, cfg = js
    await publish(jsc, cfg)
    calls = 0

    async def handler(msg: Msg) -> None:
        nonlocal calls
        calls += 1
        raise KeyError("surprise")

    consumer = await run_consumer(jsc, cfg, handler, lambda c: c.stats.dead_lettered == 1)
    assert calls == cfg.max_deliver and consumer.stats.naked == cfg.max_deliver - 1
    (letter,) = await dead_letters(jsc, cfg)
    assert letter["stage"] == "retry" and letter["reason"].startswith("gave up after 3 deliveries: KeyError")


async def test_heartbeats_keep_a_long_event_from_being_redelivered(js) -> None:
    jsc, cfg = js  # AckWait is 2 s; the handler takes 4 s
    await publish(jsc, cfg)
    deliveries: list[int] = []

    async def handler(msg: Msg) -> None:
        deliveries.append(msg.metadata.num_delivered)
        await asyncio.sleep(4)

    await run_consumer(jsc, cfg, handler, lambda c: c.stats.acked == 1)
    assert deliveries == [1]


async def test_max_deliveries_advisory_dead_letters_what_a_dead_replica_held(tmp_path: Path) -> None:
    """A replica that dies on the last delivery never nacks: the server's advisory is the only trace."""
    from services.events.advisories import handle_advisory

    with EmbeddedNatsServer(tmp_path / "nats") as server:
        cfg = NatsSettings(url=server.url, ack_wait_s=1, max_deliver=2)
        nc = await connect(server.client_settings(), role="admin", name="advisory-test")
        jsc = nc.jetstream()
        await provision(jsc, cfg)
        (event_id,) = await publish(jsc, cfg)
        # Two "replicas" take the message and die without a word.
        sub = await jsc.pull_subscribe_bind(cfg.ingest_durable, cfg.in_stream)
        for _ in range(cfg.max_deliver):
            (msg,) = await sub.fetch(1, timeout=5)
            assert msg.metadata.num_delivered == _ + 1
        # A live replica asking for work is when the server notices the limit and advises.
        with pytest.raises(asyncio.TimeoutError):
            await sub.fetch(1, timeout=2.5)
        consumer = PullConsumer(
            jsc, stream=cfg.advisory_stream, durable=cfg.advisory_durable,
            handler=lambda m: handle_advisory(jsc, cfg, "urn:test", m),
            dead_letter=lambda m, p: dead_letter(jsc, cfg, "urn:test", m, p), redelivery=Redelivery(3),
        )  # fmt: skip
        consumer.start()
        try:
            async with asyncio.timeout(20):
                while not (letters := await dead_letters(jsc, cfg)):
                    await asyncio.sleep(0.2)
        finally:
            await consumer.stop(drain_timeout_s=5)
        (letter,) = letters
        assert letter["stage"] == "retry" and letter["error"] == "max_deliveries"
        assert "no acknowledgement after 2 deliveries" in letter["reason"]
        assert letter["original"]["headers"]["ce-id"] == event_id
        assert (await jsc.stream_info(cfg.in_stream)).state.messages == 0  # no longer held forever
        await nc.close()


def test_redelivery_comes_from_the_nats_settings() -> None:
    policy = Redelivery.from_settings(NatsSettings(max_deliver=7, ack_wait_s=90, retry_delay_s=2, retry_delay_max_s=30))
    assert policy == Redelivery(max_deliver=7, heartbeat_s=30.0, retry_delay_s=2.0, retry_delay_max_s=30.0)


async def test_a_handler_that_never_returns_is_cancelled_and_dead_lettered(tmp_path: Path) -> None:
    # Before issue 12 heartbeats held such a message forever: nothing redelivered it, nothing dead-lettered it.
    with EmbeddedNatsServer(tmp_path / "nats") as server:
        cfg = NatsSettings(url=server.url, ack_wait_s=2, max_deliver=2, retry_delay_s=0.1, max_handling_s=0.5)
        nc = await connect(server.client_settings(), role="admin", name="consumer-test")
        jsc = nc.jetstream()
        await provision(jsc, cfg)
        try:
            [event_id] = await publish(jsc, cfg)
            calls = 0

            async def hang(msg: Msg) -> None:
                nonlocal calls
                calls += 1
                await asyncio.Event().wait()

            consumer = PullConsumer(
                jsc, stream=cfg.in_stream, durable=cfg.ingest_durable, handler=hang,
                dead_letter=lambda msg, poison: dead_letter(jsc, cfg, "urn:test", msg, poison),
                redelivery=Redelivery(
                    cfg.max_deliver, heartbeat_s=0.2, retry_delay_s=0.1, retry_delay_max_s=0.2,
                    max_handling_s=cfg.max_handling_s,
                ),
            )  # fmt: skip
            consumer.start()
            async with asyncio.timeout(15):
                while consumer.stats.dead_lettered == 0:
                    await asyncio.sleep(0.05)
            await consumer.stop(drain_timeout_s=2)
            assert calls == 2
            [letter] = await dead_letters(jsc, cfg)
            assert letter["stage"] == "retry"
            assert letter["reason"] == "gave up after 2 deliveries: HandlingTimeout: not finished within max_handling_s=0.5 s"
            assert (await jsc.stream_info(cfg.in_stream)).state.messages == 0
            assert letter["original"]["headers"]["ce-id"] == event_id
        finally:
            await nc.close()


async def test_a_full_dead_letter_stream_keeps_the_input_and_stops_after_max_deliver(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with EmbeddedNatsServer(tmp_path / "nats") as server:
        cfg = NatsSettings(url=server.url, ack_wait_s=2, max_deliver=3, retry_delay_s=0.1, dlq_max_msgs=1)
        nc = await connect(server.client_settings(), role="admin", name="consumer-test")
        jsc = nc.jetstream()
        await provision(jsc, cfg)
        try:
            filler = new_event("com.listenpost.audio.failed", "urn:test", {"n": 0})
            await publish_event(jsc, cfg.subject("dlq", "fetch"), filler, msg_id="filler")  # the DLQ is now full
            await publish(jsc, cfg)
            calls = 0

            async def poison(msg: Msg) -> None:
                nonlocal calls
                calls += 1
                raise Poison("validate", "bad event")

            consumer = await run_consumer(jsc, cfg, poison, until=lambda c: calls >= 3, timeout=15)
            await asyncio.sleep(1.5)  # longer than the nak delay: no fourth delivery comes
            assert calls == 3 and consumer.stats.dead_lettered == 0
            info = await jsc.consumer_info(cfg.in_stream, cfg.ingest_durable)
            assert (info.num_pending, info.num_ack_pending) == (0, 0)  # not redelivered again...
            assert (await jsc.stream_info(cfg.in_stream)).state.messages == 1  # ...and not lost
            assert (await jsc.stream_info(cfg.dlq_stream)).state.messages == 1  # the filler, nothing dropped
            assert "DEAD-LETTER STREAM FULL: LISTENPOST_IN #1 (stage validate: bad event) could not be " \
                   "dead-lettered (listenpost.dlq.validate: maximum messages exceeded); it stays in LISTENPOST_IN" in caplog.text
        finally:
            await nc.close()
