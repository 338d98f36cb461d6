"""The HTTP CloudEvents ingress against a real nats-server with JetStream.

The app runs in-process through httpx's ASGI transport, on the test's event
loop, so it shares the JetStream connection the test reads the stream with.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.js import JetStreamContext
from pydantic import Field, SecretStr

from services.events.binding import decode, encode_binary, encode_structured, new_event
from services.events.connection import connect
from services.events.embedded import EmbeddedNatsServer
from services.events.jetstream import derive_msg_id, provision
from services.events.models import AUDIO_SUBMITTED
from services.ingest.adapters import AdapterLoadError, load_adapters
from services.ingest.http import HttpIngest, HttpIngressConfigError, app_for, http_app
from services.settings import AdapterSettings, ApiKey, HttpSettings, NatsSettings, Settings

REPO = Path(__file__).resolve().parents[1]
KEY = "k-3f9a1c-0c5e7d2b9a4f8e1d6c3b7a2f5e9d"
AUTH = {"authorization": f"Bearer {KEY}"}
#: The test key may submit for the sources the tests use.
TEST_KEY = ApiKey(id="test", secret=SecretStr(KEY), sources=["urn:test:*", "urn:t", "urn:x"])
TELEPHONY = "com.acme.telephony.call.recorded"
SUBMITTED_DATA = {"audio": {"uri": "file:///calls/1.wav"}, "channels": [{"index": 0, "role": "agent"}]}
CALL_DATA = {"recording": {"url": "https://pbx.example/r/42.wav"}, "call_id": "c-42", "channels": {"agent": 0, "customer": 1}}


class Env:
    def __init__(self, js: JetStreamContext, nats: NatsSettings, client: httpx.AsyncClient) -> None:
        self.js = js
        self.nats = nats
        self.client = client

    def install(self, **http: Any) -> HttpIngest:
        settings = HttpSettings(**{"keys": [TEST_KEY], **http})
        ingest = HttpIngest(js=self.js, nats=self.nats, http=settings, adapters=load_adapters(REPO / "adapters"))
        assert app_for(ingest) is http_app
        return ingest

    async def stored(self) -> list[Any]:
        """Every message on the input stream, in order."""
        info = await self.js.stream_info(self.nats.in_stream)
        return [await self.js.get_msg(self.nats.in_stream, seq) for seq in range(1, info.state.last_seq + 1)]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    with EmbeddedNatsServer(tmp_path / "nats") as server:
        nc = await connect(server.client_settings(), role="admin", name="test-http-ingress")
        nats = NatsSettings(url=server.url)
        await provision(nc.jetstream(), nats)
        transport = httpx.ASGITransport(app=http_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingress") as client:
            environment = Env(nc.jetstream(), nats, client)
            environment.install()
            try:
                yield environment
            finally:
                del http_app.state.ingest
                await nc.close()


def submitted(id: str = "ev-1", data: Any = None, type: str = AUDIO_SUBMITTED) -> Any:
    return new_event(type, "urn:test:http", SUBMITTED_DATA if data is None else data, id=id)


def structured(event: Any) -> dict[str, Any]:
    return json.loads(encode_structured(event)[0])


def assert_problem(reply: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/problem+json"
    body = reply.json()
    assert body["type"] == f"urn:listenpost:problem:{slug}"
    assert body["status"] == status
    assert body["title"] and body["detail"]
    assert body["instance"].startswith("urn:uuid:")
    return body


async def test_binary_mode_is_stored_before_202(env: Env) -> None:
    event = submitted()
    body, headers = encode_binary(event)
    # The HTTP binding carries datacontenttype in Content-Type, not ce-datacontenttype.
    headers["content-type"] = headers.pop("ce-datacontenttype")
    reply = await env.client.post("/events", content=body, headers={**headers, **AUTH})
    assert reply.status_code == 202, reply.text
    assert reply.json() == {"accepted": [{"id": "ev-1", "duplicate": False}]}

    [msg] = await env.stored()
    assert msg.subject == env.nats.subject("in", "http")
    assert msg.headers["Nats-Msg-Id"] == derive_msg_id("http", "urn:test:http", "ev-1")
    stored = decode(msg.data, msg.headers)
    assert (stored.get_id(), stored.get_type(), stored.get_source()) == ("ev-1", AUDIO_SUBMITTED, "urn:test:http")
    assert stored.get_data() == SUBMITTED_DATA
    assert stored.get_time() == event.get_time()


async def test_a_resent_event_is_acknowledged_as_duplicate_and_stored_once(env: Env) -> None:
    body = json.dumps(structured(submitted())).encode()
    headers = {"content-type": "application/cloudevents+json; charset=utf-8", **AUTH}
    first = await env.client.post("/events", content=body, headers=headers)
    again = await env.client.post("/events", content=body, headers=headers)
    assert first.json() == {"accepted": [{"id": "ev-1", "duplicate": False}]}
    assert again.status_code == 202
    assert again.json() == {"accepted": [{"id": "ev-1", "duplicate": True}]}
    assert len(await env.stored()) == 1


async def test_structured_mode_keeps_extensions_and_base64_data(env: Env) -> None:
    event = new_event(
        AUDIO_SUBMITTED,
        "urn:test:http",
        {"audio": {"data_base64": base64.b64encode(b"RIFF....").decode()}},
        id="ev-s",
        extensions={"callid": "c-7"},
    )
    reply = await env.client.post(
        "/events", content=encode_structured(event)[0], headers={"content-type": "application/cloudevents+json", **AUTH}
    )
    assert reply.status_code == 202, reply.text
    [msg] = await env.stored()
    stored = decode(msg.data, msg.headers)
    assert stored.get_extension("callid") == "c-7"
    assert stored.get_data() == event.get_data()


async def test_batch_mode_stores_every_event_including_adapted_types(env: Env) -> None:
    batch = [structured(submitted("b-1")), structured(submitted("b-2", CALL_DATA, TELEPHONY))]
    reply = await env.client.post(
        "/events", content=json.dumps(batch), headers={"content-type": "application/cloudevents-batch+json", **AUTH}
    )
    assert reply.status_code == 202, reply.text
    assert reply.json() == {"accepted": [{"id": "b-1", "duplicate": False}, {"id": "b-2", "duplicate": False}]}
    stored = {e.get_id(): e for e in (decode(m.data, m.headers) for m in await env.stored())}
    assert stored.keys() == {"b-1", "b-2"}
    # Stored as received: the consumer adapts it, so the raw event is what is kept and replayed.
    assert stored["b-2"].get_type() == TELEPHONY
    assert stored["b-2"].get_data() == CALL_DATA


async def test_a_batch_with_bad_events_stores_nothing_and_lists_each_error(env: Env) -> None:
    batch: list[Any] = [
        structured(submitted("ok-1")),
        {"specversion": "1.0", "source": "urn:test", "type": AUDIO_SUBMITTED, "data": SUBMITTED_DATA},  # no id
        structured(submitted("bad-data", {"audio": {}})),
        structured(submitted("unknown", {}, "com.example.unknown")),
        "not an object",
    ]
    reply = await env.client.post(
        "/events", content=json.dumps(batch), headers={"content-type": "application/cloudevents-batch+json", **AUTH}
    )
    body = assert_problem(reply, 400, "invalid-batch")
    assert body["detail"] == "4 of 5 events rejected; nothing was stored"
    errors = {e["pointer"]: e for e in body["errors"]}
    assert errors.keys() == {"/1", "/2", "/3", "/4"}
    assert errors["/1"]["status"] == 400
    assert "missing required attribute(s): id" in errors["/1"]["detail"]
    assert errors["/2"] == {
        "pointer": "/2",
        "id": "bad-data",
        "type": "urn:listenpost:problem:invalid-data",
        "status": 400,
        "detail": f"invalid {AUDIO_SUBMITTED} data: audio: audio must have exactly one of 'uri', 'object', "
        "'data_base64' (got none)",
    }
    assert errors["/3"]["status"] == 422
    assert errors["/3"]["type"] == "urn:listenpost:problem:unknown-event-type"
    assert errors["/4"]["detail"] == "batch entries are JSON objects (structured events), not str"
    assert await env.stored() == []


async def test_missing_or_wrong_key_is_401_with_a_challenge(env: Env) -> None:
    body, headers = encode_binary(submitted())
    missing = await env.client.post("/events", content=body, headers=headers)
    problem = assert_problem(missing, 401, "unauthorized")
    assert problem["detail"] == "missing bearer API key"
    assert missing.headers["www-authenticate"] == 'Bearer realm="listenpost"'

    for authorization in ("Bearer wrong", f"Basic {KEY}", "Bearer"):
        wrong = await env.client.post("/events", content=body, headers={**headers, "authorization": authorization})
        assert_problem(wrong, 401, "unauthorized")
        assert wrong.headers["www-authenticate"] == 'Bearer realm="listenpost", error="invalid_token"'
    assert await env.stored() == []


async def test_any_configured_key_is_accepted(env: Env) -> None:
    other = ApiKey(id="other", secret=SecretStr("o" * 32), sources=["urn:other"])
    env.install(keys=[other, TEST_KEY])
    body, headers = encode_binary(submitted())
    reply = await env.client.post("/events", content=body, headers={**headers, **AUTH})
    assert reply.status_code == 202


async def test_an_ingress_without_keys_refuses_to_start_unless_anonymous_is_chosen(env: Env) -> None:
    with pytest.raises(HttpIngressConfigError, match="no API keys: set LISTENPOST_HTTP__KEYS"):
        HttpIngest(js=env.js, nats=env.nats, http=HttpSettings())
    with pytest.raises(HttpIngressConfigError, match="choose one"):
        HttpIngest(js=env.js, nats=env.nats, http=HttpSettings(keys=[TEST_KEY], allow_anonymous=True))

    env.install(keys=[], allow_anonymous=True)
    body, headers = encode_binary(submitted())
    assert (await env.client.post("/events", content=body, headers=headers)).status_code == 202


async def test_a_declared_oversized_body_is_refused_before_reading(env: Env) -> None:
    env.install(max_body_bytes=1000)
    body, headers = encode_binary(submitted(data={**SUBMITTED_DATA, "context": {"pad": "x" * 2000}}))
    reply = await env.client.post("/events", content=body, headers={**headers, **AUTH})
    problem = assert_problem(reply, 413, "too-large")
    assert problem["detail"].startswith(f"body of {len(body)} bytes exceeds the limit of 1000 bytes; send large audio")


async def test_a_streamed_oversized_body_is_cut_off_while_reading(env: Env) -> None:
    env.install(max_body_bytes=64 * 1024)
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(1000):  # 16 MiB if read to the end
            sent += 1
            yield b"x" * 16 * 1024

    headers = {"ce-specversion": "1.0", "ce-id": "big", "ce-source": "urn:t", "ce-type": AUDIO_SUBMITTED, **AUTH}
    reply = await env.client.post("/events", content=endless(), headers=headers)
    assert "content-length" not in reply.request.headers  # chunked: only reading can tell
    problem = assert_problem(reply, 413, "too-large")
    assert problem["detail"].startswith("body exceeds the limit of 65536 bytes")
    assert sent <= 6


async def test_an_event_too_big_for_a_nats_message_is_413(env: Env) -> None:
    env.install(max_body_bytes=4 * 1024 * 1024)
    big = {"audio": {"data_base64": base64.b64encode(b"\0" * 900_000).decode()}}
    body, headers = encode_binary(submitted("huge", big))
    reply = await env.client.post("/events", content=body, headers={**headers, **AUTH})
    problem = assert_problem(reply, 413, "too-large")
    assert "as a NATS message, over the limit of 1048576" in problem["detail"]


async def test_batch_limits(env: Env) -> None:
    env.install(max_batch_events=2, max_batch_bytes=10_000)
    many = [structured(submitted(f"n-{i}")) for i in range(3)]
    headers = {"content-type": "application/cloudevents-batch+json", **AUTH}
    reply = await env.client.post("/events", content=json.dumps(many), headers=headers)
    assert_problem(reply, 413, "too-large")
    assert reply.json()["detail"] == "batch of 3 events exceeds the limit of 2 events"
    reply = await env.client.post("/events", content=json.dumps([{"pad": "x" * 20_000}]), headers=headers)
    assert_problem(reply, 413, "too-large")
    reply = await env.client.post("/events", content=b"[]", headers=headers)
    assert reply.status_code == 202 and reply.json() == {"accepted": []}


@pytest.mark.parametrize(
    ("headers", "body", "status", "slug", "detail"),
    [
        (
            {"content-type": "application/json"},
            b"{}",
            400,
            "malformed-event",
            "not a CloudEvent: no 'ce-specversion' header (binary mode) and no 'application/cloudevents' content "
            "type (structured mode); send binary mode (ce-specversion, ce-id, ce-source, ce-type headers) or "
            "structured mode (application/cloudevents+json)",
        ),
        (
            {"ce-specversion": "1.0", "ce-source": "urn:t", "ce-type": AUDIO_SUBMITTED, "content-type": "application/json"},
            b"{}",
            400,
            "malformed-event",
            "binary-mode message is missing required attribute(s): id; send binary mode (ce-specversion, ce-id, "
            "ce-source, ce-type headers) or structured mode (application/cloudevents+json)",
        ),
        (
            {"content-type": "application/cloudevents+json"},
            b"{not json",
            400,
            "malformed-event",
            "structured body is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        ),
        (
            {"content-type": "application/cloudevents+xml"},
            b"<event/>",
            415,
            "unsupported-media-type",
            "'application/cloudevents+xml' is not read: use application/cloudevents+json, "
            "application/cloudevents-batch+json or binary mode",
        ),
        (
            {"ce-specversion": "1.0", "ce-id": "x", "ce-source": "urn:t", "ce-type": "com.example.unknown"},
            b"",
            422,
            "unknown-event-type",
            "no handler for event type 'com.example.unknown': send com.listenpost.audio.submitted or a type a "
            "source adapter maps",
        ),
        (
            {"ce-specversion": "1.0", "ce-id": "x", "ce-source": "urn:t", "ce-type": AUDIO_SUBMITTED,
             "content-type": "application/json"},
            json.dumps({"audio": {"uri": "a", "data_base64": "AA=="}, "channels": [{"index": 0, "role": "Agent"}]}).encode(),
            400,
            "invalid-data",
            "invalid com.listenpost.audio.submitted data: audio: audio must have exactly one of 'uri', 'object', "
            "'data_base64' (got uri, data_base64); channels[0].role: String should match pattern '^[a-z][a-z0-9_-]*$'",
        ),
        (
            {"ce-specversion": "1.0", "ce-id": "x", "ce-source": "urn:t", "ce-type": TELEPHONY,
             "content-type": "application/json"},
            json.dumps({"recording": {}, "call_id": "c-1"}).encode(),
            400,
            "invalid-data",
            "adapter 'acme-call-recorded': cannot map audio.uri from `data.recording.url`: no such key: url",
        ),
    ],
    ids=["not-a-cloudevent", "no-id", "bad-json", "xml-format", "unknown-type", "invalid-submitted", "adapter-gap"],
)
async def test_refused_events_get_a_problem_document(
    env: Env, headers: dict[str, str], body: bytes, status: int, slug: str, detail: str
) -> None:
    reply = await env.client.post("/events", content=body, headers={**headers, **AUTH})
    problem = assert_problem(reply, status, slug)
    assert problem["detail"] == detail
    assert await env.stored() == []


async def test_a_claim_check_dataref_stands_for_the_audio(env: Env) -> None:
    event = new_event(
        AUDIO_SUBMITTED, "urn:test:http", {"context": {"callid": "c"}}, id="ref-1",
        extensions={"dataref": "nats-object://listenpost-audio/calls/1.wav"},
    )  # fmt: skip
    body, headers = encode_binary(event)
    reply = await env.client.post("/events", content=body, headers={**headers, **AUTH})
    assert reply.status_code == 202, reply.text
    [msg] = await env.stored()
    assert decode(msg.data, msg.headers).get_extension("dataref") == "nats-object://listenpost-audio/calls/1.wav"


async def test_non_ascii_header_bytes_are_refused(env: Env) -> None:
    raw = [
        (b"ce-specversion", b"1.0"), (b"ce-id", "caf\u00e9".encode()), (b"ce-source", b"urn:t"),
        (b"ce-type", AUDIO_SUBMITTED.encode()), (b"authorization", AUTH["authorization"].encode()),
    ]  # fmt: skip
    reply = await env.client.post("/events", content=b"", headers=raw)
    problem = assert_problem(reply, 400, "malformed-event")
    assert problem["detail"] == "header 'ce-id' has non-ASCII bytes: percent-encode its UTF-8 value"


async def test_store_failure_is_503_with_retry_after(env: Env) -> None:
    # No stream listens on this prefix: JetStream cannot store, the client must hear so.
    ingest = env.install()
    ingest.nats = NatsSettings(subject_prefix="unprovisioned")
    body, headers = encode_binary(submitted())
    reply = await env.client.post("/events", content=body, headers={**headers, **AUTH})
    problem = assert_problem(reply, 503, "unavailable")
    assert reply.headers["retry-after"] == "5"
    assert "resend it" in problem["detail"]


async def test_healthz_and_unknown_routes(env: Env) -> None:
    assert (await env.client.get("/healthz")).json() == {"status": "ok"}
    missing = await env.client.get("/nope")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["type"] == "about:blank"
    del http_app.state.ingest
    try:
        assert_problem(await env.client.get("/healthz"), 503, "not-configured")
    finally:
        env.install()


class WiredSettings(Settings):
    """Settings as they are once the Ingress wires ``http`` and ``adapters`` into them."""

    http: HttpSettings = Field(default_factory=HttpSettings)
    adapters: AdapterSettings = Field(default_factory=AdapterSettings)


async def test_from_settings_loads_the_adapters(env: Env, tmp_path: Path) -> None:
    http = HttpSettings(keys=[TEST_KEY])
    wired = WiredSettings(nats=env.nats, http=http, adapters=AdapterSettings(directory=REPO / "adapters"))
    ingest = HttpIngest.from_settings(env.js, wired)
    assert ingest.adapters.match(TELEPHONY, "urn:x") is not None
    assert ingest.subject == "listenpost.in.http"
    off = WiredSettings(nats=env.nats, http=http, adapters=AdapterSettings(enabled=False, directory=tmp_path / "no"))
    assert len(HttpIngest.from_settings(env.js, off).adapters) == 0
    with pytest.raises(AdapterLoadError, match="adapter file or directory does not exist"):
        HttpIngest.from_settings(env.js, WiredSettings(nats=env.nats, http=http, adapters=AdapterSettings(directory=tmp_path / "no")))
