"""The HTTP door against hostile clients (issue 12), through the app on a real nats-server.

Each test first makes the attack the review found, then checks that it is refused:
keys bound to sources (the dedup pre-emption), expiry, rate limits, webhook
signatures, no served schema, batch errors that do not echo, deep JSON and
oversized ``context`` at the door and at the consumer, and log lines a client
cannot forge.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.msg import Msg
from pydantic import SecretStr

from services.events.binding import decode, encode_binary, encode_structured, new_event
from services.events.connection import connect
from services.events.embedded import EmbeddedNatsServer
from services.events.jetstream import derive_msg_id, provision
from services.events.models import AUDIO_SUBMITTED, ContextLimits, check_context
from services.ingest.adapters import load_adapters
from services.ingest.auth import TokenBucket, Unauthorized, verify_webhook
from services.ingest.http import HttpIngest, app_for, http_app
from services.ingest.submitted import parse_submitted
from services.settings import ApiKey, HttpSettings, NatsSettings, Settings, SettingsError
from tests.test_consumer import dead_letters, run_consumer
from tests.test_http_ingress import REPO, SUBMITTED_DATA, TELEPHONY, assert_problem

SECRET_A = "a" * 16 + "-secret-of-pbx-a-0123456789"
SECRET_B = "b" * 16 + "-secret-of-pbx-b-0123456789"
KEY_A = ApiKey(id="pbx-a", secret=SecretStr(SECRET_A), sources=["urn:pbx:a/*"])
KEY_B = ApiKey(id="pbx-b", secret=SecretStr(SECRET_B), sources=["urn:pbx:b/*"])
AS_A = {"authorization": f"Bearer {SECRET_A}"}
AS_B = {"authorization": f"Bearer {SECRET_B}"}
STRUCTURED = {"content-type": "application/cloudevents+json"}
BATCH = {"content-type": "application/cloudevents-batch+json"}
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef01234567").decode()


class Door:
    def __init__(self, js: Any, nats: NatsSettings, client: httpx.AsyncClient) -> None:
        self.js, self.nats, self.client = js, nats, client

    def install(self, *keys: ApiKey, **http: Any) -> HttpIngest:
        settings = HttpSettings(keys=list(keys or (KEY_A, KEY_B)), **http)
        ingest = HttpIngest(js=self.js, nats=self.nats, http=settings, adapters=load_adapters(REPO / "adapters"))
        app_for(ingest)
        return ingest

    async def stored(self) -> list[Any]:
        info = await self.js.stream_info(self.nats.in_stream)
        return [await self.js.get_msg(self.nats.in_stream, seq) for seq in range(1, info.state.last_seq + 1)]


@pytest.fixture
async def door(tmp_path: Path) -> AsyncIterator[Door]:
    with EmbeddedNatsServer(tmp_path / "nats") as server:
        nc = await connect(server.client_settings(), role="admin", name="test-http-security")
        nats = NatsSettings(url=server.url)
        await provision(nc.jetstream(), nats)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=http_app), base_url="http://ingress") as client:
            found = Door(nc.jetstream(), nats, client)
            found.install()
            try:
                yield found
            finally:
                del http_app.state.ingest
                await nc.close()


def event(source: str, id: str = "call-1", data: Any = None, **extensions: Any) -> Any:
    return new_event(AUDIO_SUBMITTED, source, SUBMITTED_DATA if data is None else data, id=id, extensions=extensions)


def body_of(ev: Any) -> bytes:
    return encode_structured(ev)[0]


# --- keys bound to sources --------------------------------------------------------------------


async def test_a_key_cannot_claim_another_sources_event_id(door: Door) -> None:
    """The attack: key A posts the PBX B's next event id first, so B's real event would be a duplicate."""
    forged = event("urn:pbx:b/line-1", "call-77", {"audio": {"uri": "https://evil.example/a.wav"}})
    reply = await door.client.post("/events", content=body_of(forged), headers={**STRUCTURED, **AS_A})
    problem = assert_problem(reply, 403, "forbidden-source")
    assert problem["detail"] == "key 'pbx-a' may not submit events for source 'urn:pbx:b/line-1'; its sources are urn:pbx:a/*"
    assert await door.stored() == []

    real = event("urn:pbx:b/line-1", "call-77")
    reply = await door.client.post("/events", content=body_of(real), headers={**STRUCTURED, **AS_B})
    assert reply.status_code == 202, reply.text
    assert reply.json() == {"accepted": [{"id": "call-77", "duplicate": False}]}  # stored, not a duplicate
    [msg] = await door.stored()
    assert msg.headers["Nats-Msg-Id"] == derive_msg_id("http", "urn:pbx:b/line-1", "call-77")
    assert decode(msg.data, msg.headers).get_data() == SUBMITTED_DATA


async def test_a_batch_entry_for_another_source_is_403_and_nothing_is_stored(door: Door) -> None:
    batch = [json.loads(body_of(event("urn:pbx:a/x", "ok"))), json.loads(body_of(event("urn:pbx:b/x", "theirs")))]
    reply = await door.client.post("/events", content=json.dumps(batch), headers={**BATCH, **AS_A})
    problem = assert_problem(reply, 403, "invalid-batch")
    assert problem["errors"] == [
        {
            "pointer": "/1",
            "id": "theirs",
            "type": "urn:listenpost:problem:forbidden-source",
            "status": 403,
            "detail": "key 'pbx-a' may not submit events for source 'urn:pbx:b/x'; its sources are urn:pbx:a/*",
        }
    ]
    assert await door.stored() == []


async def test_the_stored_event_carries_the_key_id_never_the_secret(
    door: Door, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.ingest.http")
    # A client's own value for the attribute is replaced: it cannot pass itself off as another key.
    ev = event("urn:pbx:a/line-2", "call-8", listenpostkeyid="pbx-b")
    body, headers = encode_binary(ev)
    reply = await door.client.post("/events", content=body, headers={**headers, **AS_A})
    assert reply.status_code == 202, reply.text
    [msg] = await door.stored()
    assert msg.headers["ce-listenpostkeyid"] == "pbx-a"
    assert decode(msg.data, msg.headers).get_extension("listenpostkeyid") == "pbx-a"
    assert "stored 1 event(s) (0 duplicate) from key 'pbx-a'" in caplog.messages
    assert SECRET_A not in caplog.text and SECRET_A.encode() not in msg.data + json.dumps(dict(msg.headers)).encode()


async def test_an_expired_key_is_refused(door: Door) -> None:
    old = ApiKey(id="old", secret=SecretStr("o" * 40), sources=["*"], expires_at=datetime(2024, 1, 1, tzinfo=UTC))
    fresh = KEY_A.model_copy(update={"expires_at": datetime.now(UTC) + timedelta(days=1)})
    door.install(old, fresh)
    body, headers = encode_binary(event("urn:pbx:a/1"))
    reply = await door.client.post("/events", content=body, headers={**headers, "authorization": "Bearer " + "o" * 40})
    problem = assert_problem(reply, 401, "unauthorized")
    assert problem["detail"] == "API key 'old' expired at 2024-01-01T00:00:00+00:00"
    assert reply.headers["www-authenticate"] == 'Bearer realm="listenpost", error="invalid_token"'
    assert (await door.client.post("/events", content=body, headers={**headers, **AS_A})).status_code == 202


# --- rate limits ---------------------------------------------------------------------------------


async def test_a_key_over_its_rate_gets_429_with_retry_after(door: Door) -> None:
    door.install(KEY_A.model_copy(update={"rate_per_s": 0.5, "burst": 3}), KEY_B)
    batch = [json.loads(body_of(event("urn:pbx:a/x", f"b-{i}"))) for i in range(3)]
    assert (await door.client.post("/events", content=json.dumps(batch), headers={**BATCH, **AS_A})).status_code == 202
    body, headers = encode_binary(event("urn:pbx:a/x", "one-more"))
    reply = await door.client.post("/events", content=body, headers={**headers, **AS_A})
    problem = assert_problem(reply, 429, "rate-limited")
    assert problem["detail"] == "key 'pbx-a' is over its rate limit; retry in 2 s"
    assert reply.headers["retry-after"] == "2"
    # Other keys have their own buckets.
    body_b, headers_b = encode_binary(event("urn:pbx:b/x", "b-ok"))
    assert (await door.client.post("/events", content=body_b, headers={**headers_b, **AS_B})).status_code == 202
    assert len(await door.stored()) == 4


def test_the_token_bucket_lets_a_batch_go_into_debt_and_charges_the_wait() -> None:
    bucket = TokenBucket.full(rate_per_s=2.0, burst=4, now=100.0)
    assert bucket.take(100.0) == 0  # 3 left
    bucket.charge(9)  # the rest of a batch of 10: -6
    assert bucket.take(100.0) == 4  # (1 - -6) / 2 = 3.5 s -> 4
    assert bucket.take(103.5) == 0  # refilled to 1, taken
    assert bucket.take(1000.0) == 0 and bucket.tokens == 3  # never more than the burst


# --- webhook signatures --------------------------------------------------------------------------


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    signature = "v1," + base64.b64encode(digest).decode()
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": signature}


def test_webhook_verification_matches_the_standard_webhooks_test_vector() -> None:
    # From the Standard Webhooks specification's examples (the reference libraries' own test).
    key = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,bm9ldGhlcg== v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }
    verify_webhook(key, b'{"test": 2432232314}', headers, now=1614265330 + 60, tolerance_s=300)
    with pytest.raises(Unauthorized, match="no webhook-signature matches"):
        verify_webhook(key, b'{"test": 2432232315}', headers, now=1614265330, tolerance_s=300)
    with pytest.raises(Unauthorized, match="no webhook-signature matches"):
        verify_webhook(key, b"{}", {**headers, "webhook-signature": "v1,not-base64!! v2"}, now=1614265330, tolerance_s=300)


async def test_a_key_with_a_webhook_secret_needs_a_fresh_signature_over_the_body(door: Door) -> None:
    signer = KEY_A.model_copy(update={"webhook_secret": SecretStr(WEBHOOK_SECRET)})
    door.install(signer)
    body, headers = encode_binary(event("urn:pbx:a/1", "signed-1"))
    headers.update(AS_A)

    unsigned = await door.client.post("/events", content=body, headers=headers)
    assert assert_problem(unsigned, 401, "unauthorized")["detail"] == (
        "this key signs its requests: missing header(s) webhook-id, webhook-timestamp, webhook-signature"
    )
    now = int(time.time())
    tampered = await door.client.post(
        "/events", content=body.replace(b"1.wav", b"2.wav"), headers={**headers, **sign(WEBHOOK_SECRET, "m1", now, body)}
    )
    assert assert_problem(tampered, 401, "unauthorized")["detail"] == (
        "no webhook-signature matches the request (v1: HMAC-SHA256 of webhook-id.webhook-timestamp.body)"
    )
    for skew in (-600, 600):  # a second may pass between signing and checking
        stale = await door.client.post(
            "/events", content=body, headers={**headers, **sign(WEBHOOK_SECRET, "m1", now + skew, body)}
        )
        assert assert_problem(stale, 401, "unauthorized")["detail"] in {
            f"webhook-timestamp is {s} s from now, more than the 300 s tolerance" for s in (599, 600, 601)
        }
    assert await door.stored() == []
    good = await door.client.post("/events", content=body, headers={**headers, **sign(WEBHOOK_SECRET, "m1", now, body)})
    assert good.status_code == 202, good.text
    assert len(await door.stored()) == 1


# --- the schema is not served; errors do not echo ---------------------------------------------------


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"])
async def test_the_api_schema_and_docs_are_not_served(door: Door, path: str) -> None:
    for headers in ({}, AS_A):
        reply = await door.client.get(path, headers=headers)
        assert reply.status_code == 404
        assert reply.headers["content-type"] == "application/problem+json"
    assert "/events" in http_app.openapi()["paths"]  # still there for integrators, offline


async def test_a_batch_error_names_index_id_and_reason_and_echoes_no_body(door: Door) -> None:
    secret_data = {"audio": {}, "context": {"card": "4111-1111-1111-1111", "pad": "p" * 500_000}}
    long_id = "i" * 10_000
    batch = [
        {**json.loads(body_of(event("urn:pbx:a/x", "bad-data"))), "data": secret_data},
        # An attribute name the spec forbids is quoted in the reason: cut, not echoed whole.
        {**json.loads(body_of(event("urn:pbx:a/x", long_id))), "SECRET" + "x" * 100_000: "v"},
    ]
    reply = await door.client.post("/events", content=json.dumps(batch), headers={**BATCH, **AS_A})
    problem = assert_problem(reply, 400, "invalid-batch")
    assert len(reply.content) < 2_000
    assert "4111" not in reply.text and "ppppp" not in reply.text
    first, second = problem["errors"]
    assert first == {
        "pointer": "/0",
        "id": "bad-data",
        "type": "urn:listenpost:problem:invalid-data",
        "status": 400,
        "detail": "invalid com.listenpost.audio.submitted data: audio: audio must have exactly one of 'uri', "
        "'object', 'data_base64' (got none)",
    }
    assert second["id"] == "i" * 199 + "\u2026"
    assert second["detail"].startswith("extension attribute 'SECRETxxx") and second["detail"].endswith("x\u2026")
    assert len(second["detail"]) == 500


# --- deep JSON and bounded context ---------------------------------------------------------------------


DEEP = b"[" * 100_000 + b"]" * 100_000


async def test_100k_deep_json_is_400_in_every_mode(door: Door) -> None:
    attributes = json.loads(body_of(event("urn:pbx:a/x", "deep")))
    del attributes["data"]
    structured = json.dumps(attributes).encode()[:-1] + b', "data": ' + DEEP + b"}"
    reply = await door.client.post("/events", content=structured, headers={**STRUCTURED, **AS_A})
    assert assert_problem(reply, 400, "malformed-event")["detail"] == (
        "structured body is not valid JSON: arrays and objects nested too deeply to read"
    )

    batch = b"[" + structured + b"]"
    reply = await door.client.post("/events", content=batch, headers={**BATCH, **AS_A})
    assert assert_problem(reply, 400, "malformed-event")["detail"] == (
        "batch body is not valid JSON: arrays and objects nested too deeply to read"
    )

    _, headers = encode_binary(event("urn:pbx:a/x", "deep"))
    headers["content-type"] = headers.pop("ce-datacontenttype")
    reply = await door.client.post("/events", content=DEEP, headers={**headers, **AS_A})
    assert assert_problem(reply, 400, "malformed-event")["detail"] == (
        "data is not valid JSON for datacontenttype 'application/json': arrays and objects nested too deeply to read"
    )
    # Deep enough to parse, too deep to walk: refused before adapters or a re-encode see it.
    reply = await door.client.post("/events", content=b"[" * 100 + b"]" * 100, headers={**headers, **AS_A})
    assert assert_problem(reply, 400, "malformed-event")["detail"] == "the event's data is nested more than 64 levels deep"
    assert await door.stored() == []


def nested(levels: int) -> dict[str, Any]:
    context: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        context = {"k": context}
    return context


@pytest.mark.parametrize(
    ("context", "reason"),
    [
        (nested(20), "context is nested more than 8 levels deep (the limit)"),
        ({"pad": "x" * 20_000}, "context is 20010 bytes as JSON, over the limit of 16384"),
        ({f"k{i}": i for i in range(300)}, "context has more than 256 keys (the limit, counting nested objects)"),
    ],
    ids=["20-levels", "20-kB", "300-keys"],
)
async def test_an_oversized_context_is_400_at_the_door(door: Door, context: dict[str, Any], reason: str) -> None:
    body, headers = encode_binary(event("urn:pbx:a/x", data={**SUBMITTED_DATA, "context": context}))
    reply = await door.client.post("/events", content=body, headers={**headers, **AS_A})
    problem = assert_problem(reply, 400, "invalid-data")
    assert problem["detail"] == f"invalid {AUDIO_SUBMITTED} data: {reason}"
    assert await door.stored() == []


async def test_a_300_level_context_is_refused_before_any_work(door: Door) -> None:
    body, headers = encode_binary(event("urn:pbx:a/x", data={**SUBMITTED_DATA, "context": nested(300)}))
    reply = await door.client.post("/events", content=body, headers={**headers, **AS_A})
    assert assert_problem(reply, 400, "malformed-event")["detail"] == "the event's data is nested more than 64 levels deep"


async def test_the_limits_come_from_settings_and_apply_to_adapted_events(door: Door) -> None:
    settings = Settings(_env_file=None, nats=door.nats, http={"keys": [KEY_A]}, ingress={"max_context_keys": 1},
                        adapters={"directory": REPO / "adapters"})  # fmt: skip
    app_for(HttpIngest.from_settings(door.js, settings))
    call = {"recording": {"url": "https://pbx.example/r/1.wav"}, "call_id": "c-1", "queue": "billing"}
    telephony = new_event(TELEPHONY, "urn:pbx:a/x", call, id="t-1")
    reply = await door.client.post("/events", content=body_of(telephony), headers={**STRUCTURED, **AS_A})
    assert assert_problem(reply, 400, "invalid-data")["detail"] == (
        f"invalid {AUDIO_SUBMITTED} data: context has more than 1 keys (the limit, counting nested objects)"
    )


def test_check_context_counts_lists_as_levels_and_stops_early() -> None:
    limits = ContextLimits(max_depth=3, max_keys=10, max_bytes=100)
    check_context({"a": [[1]]}, limits)
    with pytest.raises(ValueError, match="nested more than 3 levels"):
        check_context({"a": [[[1]]]}, limits)
    check_context(nested(8), ContextLimits(max_depth=8, max_keys=10, max_bytes=1000))


async def test_a_bad_context_or_deep_json_from_nats_is_dead_lettered_once_not_retried(tmp_path: Path) -> None:
    with EmbeddedNatsServer(tmp_path / "nats") as server:
        cfg = NatsSettings(url=server.url, ack_wait_s=2, max_deliver=3, retry_delay_s=0.1)
        nc = await connect(server.client_settings(), role="admin", name="test-context-consumer")
        js = nc.jetstream()
        await provision(js, cfg)
        deep_context = event("urn:nats", "deep-context", {**SUBMITTED_DATA, "context": nested(300)})
        body, headers = encode_binary(deep_context)
        await js.publish(cfg.subject("in", "t"), body, headers=headers)
        await js.publish(cfg.subject("in", "t"), DEEP, headers={**headers, "ce-id": "deep-json"})

        async def handler(msg: Msg) -> None:
            parse_submitted(msg.data, msg.headers, None, ContextLimits(max_depth=8, max_keys=256, max_bytes=16384))

        await run_consumer(js, cfg, handler, until=lambda c: c.stats.dead_lettered == 2)
        letters = {letter["original"]["headers"]["ce-id"]: letter for letter in await dead_letters(js, cfg)}
        await nc.close()
    assert {i: (d["stage"], d["reason"], d["error"], d["deliveries"]) for i, d in letters.items()} == {
        "deep-context": (
            "validate",
            f"invalid {AUDIO_SUBMITTED} data: context is nested more than 8 levels deep (the limit)",
            "ContextLimitError",
            1,
        ),
        "deep-json": (
            "decode-event",
            "data is not valid JSON for datacontenttype 'application/json': arrays and objects nested too deeply to read",
            "MalformedEventError",
            1,
        ),
    }


# --- log lines a client cannot forge ------------------------------------------------------------------------


FORGED = "\n2026-01-01 00:00:00 INFO forged"


async def test_client_text_in_log_lines_is_escaped(door: Door, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="services.ingest.http")
    # A key the client chose, quoted in a validation error, and a path the client chose.
    data = {"audio": {"uri": "file:///calls/1.wav", FORGED: 1}}
    body, headers = encode_binary(event("urn:pbx:a/x", "ev" + FORGED, data))
    reply = await door.client.post("/events", content=body, headers={**headers, **AS_A})
    assert_problem(reply, 400, "invalid-data")
    # Starlette's URL drops newlines from a path, not terminal escapes: ESC [2J clears an operator's screen.
    missing = await door.client.get("/x%1B[2J")
    assert missing.status_code == 404
    first, second = [r.getMessage() for r in caplog.records if r.name == "services.ingest.http"]
    assert first.endswith(
        ", key 'pbx-a'): 'invalid com.listenpost.audio.submitted data: audio.\\n2026-01-01 00:00:00 INFO forged: "
        "Extra inputs are not permitted'"
    )
    assert second.startswith("GET '/x\\x1b[2J' -> 404 about:blank")
    for line in (first, second):
        assert "\n" not in line and "\x1b" not in line


# --- keys at settings load ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        (
            [{"id": "a", "secret": "short", "sources": ["*"]}],
            "http.keys.0 (LISTENPOST_HTTP__KEYS__0): Value error, key 'a': the secret has 5 characters, at least 32 "
            "are required (make one with `openssl rand -base64 32`)",
        ),
        (
            ["a-bare-secret-that-is-long-enough-1234"],
            "http.keys.0 (LISTENPOST_HTTP__KEYS__0): Value error, a key is an object naming who holds it and what it "
            'may submit, not a bare secret: {"id": "pbx-a", "secret": "...", "sources": ["urn:pbx:a/*"]}',
        ),
        (
            [{"id": "a", "secret": "s" * 32, "sources": []}],
            "http.keys.0.sources (LISTENPOST_HTTP__KEYS__0__SOURCES): List should have at least 1 item after "
            "validation, not 0",
        ),
        (
            [{"id": "a", "secret": "s" * 32, "sources": ["*"]}, {"id": "a", "secret": "t" * 32, "sources": ["*"]}],
            "http (LISTENPOST_HTTP): Value error, key id(s) 'a' used more than once: ids name keys in logs",
        ),
        (
            [{"id": "a", "secret": "s" * 32, "sources": ["*"], "webhook_secret": "whsec_c2hvcnQ="}],
            "http.keys.0 (LISTENPOST_HTTP__KEYS__0): Value error, key 'a': webhook_secret is 5 bytes, 24 to 64 are "
            "required",
        ),
        (
            [{"id": "a", "secret": "s" * 32, "sources": ["*"], "expires_at": "2030-01-01T00:00:00"}],
            "http.keys.0.expires_at (LISTENPOST_HTTP__KEYS__0__EXPIRES_AT): Input should have timezone info",
        ),
    ],
    ids=["short", "bare-string", "no-sources", "same-id", "short-webhook-secret", "naive-expiry"],
)
def test_bad_keys_are_settings_errors(keys: list[Any], problem: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings(_env_file=None, http={"keys": keys})
    assert caught.value.problems == [problem]


def test_the_old_key_list_is_refused_with_how_to_move(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings(_env_file=None, http={"api_keys": ["x" * 40]})
    assert caught.value.problems == [
        "http (LISTENPOST_HTTP): api_keys is replaced by keys: every key now has an id and the sources it may "
        'submit for, e.g. [{"id": "pbx-a", "secret": "...", "sources": ["urn:pbx:a/*"]}] (see docs/ingestion.md)'
    ]
    monkeypatch.setenv("LISTENPOST_HTTP__API_KEYS", '["x"]')
    with pytest.raises(SettingsError) as caught:
        Settings(_env_file=None)
    assert caught.value.problems == ["LISTENPOST_HTTP__API_KEYS: this setting is now LISTENPOST_HTTP__KEYS"]


def test_secrets_may_come_from_files_and_never_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "key").write_text(SECRET_A + "\n")
    (tmp_path / "hook").write_text(WEBHOOK_SECRET)
    keys = [{"id": "f", "secret_file": str(tmp_path / "key"), "webhook_secret_file": str(tmp_path / "hook"),
             "sources": ["urn:f/*"]}]  # fmt: skip
    monkeypatch.setenv("LISTENPOST_HTTP__KEYS", json.dumps(keys))
    settings = Settings(_env_file=None)
    [key] = settings.http.keys
    assert key.secret is not None and key.secret.get_secret_value() == SECRET_A
    assert key.webhook_key() == b"0123456789abcdef01234567"
    assert SECRET_A not in repr(settings) and "whsec_" not in repr(settings)
    with pytest.raises(SettingsError, match=r"key 'f'.*cannot read secret_file '.*/absent': No such file or directory"):
        Settings(_env_file=None, http={"keys": [{"id": "f", "secret_file": str(tmp_path / "absent"), "sources": ["*"]}]})
