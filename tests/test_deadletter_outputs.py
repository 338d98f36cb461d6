"""Dead letters as first-class outputs (issue 13), on a real nats-server with real audio decoding.

A poison input (a file that is no audio) is consumed, prepared by the real Preprocessor and
failed the way a Serve handle delivers a replica's error (a RayTaskError built from the raised
exception, as Ray builds it): its dead letter must say the decoder's own sentence and type, in
plain words, and carry ``originalid``, ``inputid`` and ``traceparent`` in both content modes,
so the accounting (and ``listenpost submit``) matches it to its input.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from ray.exceptions import RayTaskError

from services.events.accounting import account
from services.events.binding import decode, encode_binary, encode_structured, event_data_json, new_event
from services.events.connection import connect
from services.events.consumer import Poison, PullConsumer, Redelivery
from services.events.deadletter import dead_letter
from services.events.embedded import EmbeddedNatsServer
from services.events.jetstream import provision
from services.events.models import AUDIO_SUBMITTED
from services.events.reasons import is_plain, plain_error_type, plain_reason
from services.ingest.submitted import parse_submitted
from services.orchestrator.deployment import _replica_errors_as_raised
from services.orchestrator.pipeline import caption_submitted
from services.preprocess.deployment import Preprocessor
from services.settings import NatsSettings, PreprocessSettings, Settings

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
NOT_AUDIO = b"this is a text file, not a recording\n" * 40
DECODE_REASON = (
    "audio could not be decoded: unrecognised audio format (first bytes 74 68 69 73 20 69 73 20 61 20 74 65); "
    "expected WAV, FLAC, Ogg (Vorbis, Opus), MP3, M4A/AAC, WebM, AIFF, CAF or NIST SPHERE"
)


def delivered_by_ray(exc: Exception) -> RayTaskError:
    """What a caller of a Serve handle receives when the replica raised ``exc``: Ray's dual
    RayTaskError(<type>) whose text is the remote traceback with colour codes, pid and node IP."""
    tb = "".join(traceback.format_exception(exc))
    error = RayTaskError(
        "ServeReplica:listenpost:Preprocessor.handle_request",
        tb,
        exc,
        proctitle="ray::ServeReplica:listenpost:Preprocessor",
        pid=4242,
        ip="10.1.2.3",
        actor_id="3f6f0b1c5e0a8a9a2b8c01000000",
    )
    return error.as_instanceof_cause()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[JetStreamContext, Settings, Path]]:
    with EmbeddedNatsServer(tmp_path / "nats") as server:
        cfg = NatsSettings(url=server.url, ack_wait_s=5, max_deliver=2, retry_delay_s=0.1)
        nc = await connect(server.client_settings(), role="admin", name="test-deadletter-outputs")
        jsc = nc.jetstream()
        await provision(jsc, cfg)
        audio = tmp_path / "calls"
        audio.mkdir()
        settings = Settings(nats=cfg, preprocess=PreprocessSettings(file_roots=[audio]))
        try:
            yield jsc, settings, audio
        finally:
            await nc.close()


async def ingest_like_the_ingress(jsc: JetStreamContext, settings: Settings, *, unwrap: bool = True) -> PullConsumer:
    """The Ingress's handling minus Ray: parse, prepare (real Preprocessor, errors as a handle
    delivers them), caption; dead letters through the real deadletter module."""
    preprocessor = Preprocessor.func_or_class(settings)  # type: ignore[attr-defined]  # the replica class, without Serve

    async def prepare(submitted: Any) -> Any:
        async def through_handle() -> Any:
            try:
                return await preprocessor.prepare(submitted)
            except Exception as exc:  # noqa: BLE001 -- re-raised as Ray delivers it
                raise delivered_by_ray(exc) from None

        if not unwrap:
            return await through_handle()
        with _replica_errors_as_raised():
            return await through_handle()

    async def caption(samples: Any, request_id: str) -> Any:
        raise AssertionError("a file that is no audio never reaches the captioner")

    async def handle(msg: Msg) -> None:
        event, submitted = parse_submitted(msg.data, msg.headers)
        await caption_submitted(event, submitted, prepare=prepare, caption=caption, model="m", engine="e", source="urn:test")

    cfg = settings.nats
    return PullConsumer(
        jsc, stream=cfg.in_stream, durable=cfg.ingest_durable, handler=handle,
        dead_letter=lambda msg, poison: dead_letter(jsc, cfg, "urn:listenpost", msg, poison),
        redelivery=Redelivery(cfg.max_deliver, heartbeat_s=0.5, retry_delay_s=0.1, retry_delay_max_s=0.2),
    )  # fmt: skip


async def run_until_dead_lettered(consumer: PullConsumer, n: int = 1) -> None:
    consumer.start()
    try:
        async with asyncio.timeout(60):
            while consumer.stats.dead_lettered < n:
                await asyncio.sleep(0.05)
    finally:
        await consumer.stop(drain_timeout_s=5)


async def stored_dead_letters(jsc: JetStreamContext, cfg: NatsSettings) -> list[Msg]:
    sub = await jsc.subscribe(cfg.subject("dlq", ">"), ordered_consumer=True)
    found = []
    try:
        while True:
            try:
                found.append(await sub.next_msg(timeout=0.5))
            except nats.errors.TimeoutError:
                return found
    finally:
        await sub.unsubscribe()


async def submit_poison(
    jsc: JetStreamContext, settings: Settings, audio: Path, mode: str, traceparent: str | None
) -> str:
    path = audio / "not-audio.wav"
    path.write_bytes(NOT_AUDIO)
    extensions = {"traceparent": traceparent} if traceparent else None
    event = new_event(AUDIO_SUBMITTED, "urn:test:caller", {"audio": {"uri": path.as_uri()}}, extensions=extensions)
    if mode == "structured":
        body, headers = encode_structured(event)
    elif mode == "binary":
        body, headers = encode_binary(event)
    else:  # binary, header names as another client may spell them (NATS header names are case-insensitive)
        body, headers = encode_binary(event)
        headers = {name.replace("ce-", "Ce-").title() if name.startswith("ce-") else name: v for name, v in headers.items()}
    await jsc.publish(settings.nats.subject("in", "test"), body, headers=headers)
    return event.get_id()


@pytest.mark.parametrize("mode", ["binary", "structured", "binary-capitalised"])
async def test_a_poison_input_is_dead_lettered_with_its_own_error_ids_and_trace(env: Any, mode: str) -> None:
    jsc, settings, audio = env
    event_id = await submit_poison(jsc, settings, audio, mode, PARENT)
    await run_until_dead_lettered(await ingest_like_the_ingress(jsc, settings))

    (msg,) = await stored_dead_letters(jsc, settings.nats)
    letter = decode(msg.data, msg.headers)
    data = event_data_json(letter)
    assert data["stage"] == "decode-audio"
    assert data["error"] == "UnsupportedFormatError"
    assert data["reason"] == DECODE_REASON
    assert is_plain(data["reason"]) and "\n" not in data["reason"]
    for internal in ("4242", "10.1.2.3", "3f6f0b1c", "ray::", "Traceback", "\x1b["):
        assert internal not in data["reason"]
    attributes = letter.get_attributes()
    assert attributes["originalid"] == event_id
    assert attributes["inputid"] == event_id
    trace, parent_span = PARENT.split("-")[1:3]
    version, trace_id, span_id, flags = attributes["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", trace, "01") and span_id != parent_span
    accounting = await account(jsc, settings.nats, [event_id])
    assert accounting.balanced and accounting.dead_lettered == 1 and accounting.missing == []


async def test_a_dead_letter_of_an_input_without_a_trace_starts_one(env: Any) -> None:
    jsc, settings, audio = env
    event_id = await submit_poison(jsc, settings, audio, "structured", None)
    await run_until_dead_lettered(await ingest_like_the_ingress(jsc, settings))
    (msg,) = await stored_dead_letters(jsc, settings.nats)
    attributes = decode(msg.data, msg.headers).get_attributes()
    assert attributes["originalid"] == attributes["inputid"] == event_id
    version, trace_id, span_id, flags = attributes["traceparent"].split("-")
    assert version == "00" and len(trace_id) == 32 and len(span_id) == 16 and flags == "01"
    assert trace_id not in PARENT


async def test_a_replica_error_that_escapes_unwrapped_is_still_plain(env: Any) -> None:
    # Without the handle's unwrap (the code before issue 13), the dual RayTaskError(UnsupportedFormatError)
    # is caught as a PreprocessError and its text, the remote traceback, became the reason.
    # Poison's plain-words guard leaves the decoder's sentence and type.
    jsc, settings, audio = env
    event_id = await submit_poison(jsc, settings, audio, "binary", PARENT)
    await run_until_dead_lettered(await ingest_like_the_ingress(jsc, settings, unwrap=False))
    (msg,) = await stored_dead_letters(jsc, settings.nats)
    letter = decode(msg.data, msg.headers)
    data = event_data_json(letter)
    assert data["stage"] == "decode-audio" and data["error"] == "UnsupportedFormatError"
    assert data["reason"] == DECODE_REASON
    assert is_plain(data["reason"]) and "4242" not in data["reason"] and "10.1.2.3" not in data["reason"]
    assert letter.get_attributes()["originalid"] == event_id


def test_plain_words_from_a_ray_traceback() -> None:
    cause = ValueError("audio could not be decoded: unrecognised audio format")
    try:
        raise cause
    except ValueError as exc:
        ray_error = delivered_by_ray(exc)
    text = str(ray_error)
    assert not is_plain(text)  # what dead letters said before: the whole remote traceback
    assert plain_reason(text) == "audio could not be decoded: unrecognised audio format"
    assert plain_error_type(type(ray_error).__name__) == "ValueError"
    coloured = "\x1b[36mray::Ingress.prepare()\x1b[39m (pid=1, ip=10.0.0.1)\n\x1b[31mboom\x1b[0m"
    assert plain_reason(coloured) == "boom"
    actor_died = (
        "The actor died unexpectedly before finishing this task.\n\tclass_name: ServeReplica:listenpost:Captioner\n"
        "\tactor_id: 5c1f\n\tpid: 77\n\tname: SERVE_REPLICA::listenpost#Captioner#x\n\tnamespace: serve\n\tip: 10.0.0.9"
    )
    assert plain_reason(actor_died) == "The actor died unexpectedly before finishing this task."
    poison = Poison("retry", text, error=type(ray_error).__name__)
    assert (poison.reason, poison.error) == ("audio could not be decoded: unrecognised audio format", "ValueError")
    # A validation error's own lines are kept.
    assert plain_reason("2 validation errors\naudio.uri\n  Field required") == "2 validation errors\naudio.uri\n  Field required"
