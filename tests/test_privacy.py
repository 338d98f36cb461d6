"""Audit trail, audio retention and erasure, against a real nats-server (no Ray).

Each test first shows what today's code allowed (no audit stream, audio kept forever, no way
to erase a call), then that it is refused or done.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError, ObjectNotFoundError
from typer.testing import CliRunner

from services.cli import app
from services.events.audit import (
    KEY_ID_HEADER,
    Actor,
    AuditError,
    list_records,
    operator_action,
    parse_since,
    record,
    submission,
)
from services.events.binding import encode_binary, encode_structured, new_event
from services.events.connection import connect
from services.events.embedded import EmbeddedNatsServer
from services.events.jetstream import provision, publish_event
from services.events.models import (
    ALERT_RAISED,
    AUDIO_CAPTIONED,
    AUDIO_FAILED,
    AUDIO_SUBMITTED,
    ROUTE_DECIDED,
    AudioFailed,
    AudioSubmitted,
)
from services.events.retention import provision_audio_buckets, release_audio
from services.rules.state import open_bucket, open_stores, safe_key
from services.settings import NatsSettings, RetentionSettings, Settings, SettingsError

CALL_A, CALL_B = "call-A-7781", "call-B-9902"
BUCKET = "listenpost-audio"


def wav_with_title(call_id: str, seconds: float = 0.5) -> bytes:
    """A real WAV whose INFO chunk names the call: the id is in the audio object's bytes too."""
    buf = io.BytesIO()
    with soundfile.SoundFile(buf, "w", 8000, 1, format="WAV") as f:
        f.title = call_id
        t = np.arange(int(seconds * 8000)) / 8000
        f.write((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32))
    return buf.getvalue()


class Env:
    def __init__(self, js: JetStreamContext, settings: Settings, url: str) -> None:
        self.js, self.settings, self.url, self.cfg = js, settings, url, settings.nats

    async def cli(self, *args: str, input: str | None = None) -> Any:
        # The commands run their own event loop: keep them off the test's.
        option = "--nats" if args[0] == "rules" else "--nats-url"  # (the rules commands' name for it)
        return await asyncio.to_thread(CliRunner().invoke, app, [*args, option, self.url], input=input)

    async def messages(self, stream: str) -> list[Any]:
        out, seq = [], 1
        while True:
            try:
                raw = await self.js.get_msg(stream, seq, subject=">", next=True)
            except NotFoundError:
                return out
            out.append(raw)
            seq = int(raw.seq) + 1

    async def streams(self) -> list[str]:
        return [info.config.name for info in await self.js.streams_info()]


@pytest.fixture
async def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Env]:
    monkeypatch.delenv("LISTENPOST_NATS__URL", raising=False)
    with EmbeddedNatsServer(tmp_path / "nats") as server:
        nc = await connect(server.client_settings(), role="admin", name="test-privacy")
        settings = Settings(nats=NatsSettings(url=server.url))
        await provision(nc.jetstream(), settings.nats, audit=settings.audit, retention=settings.retention)
        try:
            yield Env(nc.jetstream(), settings, server.url)
        finally:
            await nc.close()


# --- audit ------------------------------------------------------------------------------


async def test_audit_stream_is_append_only_at_the_server(env: Env) -> None:
    info = await env.js.stream_info("LISTENPOST_AUDIT")
    assert info.config.subjects == ["listenpost.audit.>"]
    assert info.config.max_age == 400 * 24 * 3600
    rec = operator_action("erase", Actor(kind="cli", id="mallory"), call_id="c-1", details={"removed": {}})
    assert await record(env.js, env.cfg, env.settings.audit, rec)
    [stored] = await list_records(env.js, env.cfg, env.settings.audit, since=parse_since("1h"))
    # The attack: whoever can reach the JetStream API removes the trace of what they did.
    with pytest.raises(APIError, match="message delete not permitted"):
        await env.js.delete_msg("LISTENPOST_AUDIT", int(stored.seq or 0))
    with pytest.raises(APIError, match="purge not permitted"):
        await env.js.purge_stream("LISTENPOST_AUDIT")
    assert [r.call_id for r in await list_records(env.js, env.cfg, env.settings.audit, since=parse_since("1h"))] == ["c-1"]


async def test_submission_records_name_the_api_key_or_nats_and_are_deduplicated(env: Env) -> None:
    http = "listenpost.in.http"
    by_key = submission({KEY_ID_HEADER: "pbx-a", "ce-id": "x"}, source="urn:pbx:a", event_id="ev-1",
                        call_id="c-1", subject=http, http_subject=http)  # fmt: skip
    # A NATS producer that claims a key on another subject is recorded as what it is.
    claimed = submission({KEY_ID_HEADER: "pbx-a"}, source="urn:pbx:a", event_id="ev-2", call_id=None,
                         subject="listenpost.in.pbx", http_subject=http)  # fmt: skip
    assert str(claimed.actor) == "nats"
    by_nats = submission({}, source=None, event_id=None, call_id=None, subject="listenpost.in.raw",
                         refused="decode-event: not a CloudEvent")  # fmt: skip
    for rec in (by_key, by_key.model_copy(update={"time": by_key.time}), by_nats):  # a redelivery: one record
        assert await record(env.js, env.cfg, env.settings.audit, rec)
    records = await list_records(env.js, env.cfg, env.settings.audit, since=parse_since("5m"), action="submit")
    assert [(str(r.actor), r.source, r.event_id, r.call_id, r.details) for r in records] == [
        ("key:pbx-a", "urn:pbx:a", "ev-1", "c-1", {"subject": "listenpost.in.http"}),
        ("nats", None, None, None, {"subject": "listenpost.in.raw", "refused": "decode-event: not a CloudEvent"}),
    ]


async def test_audit_failure_is_logged_and_does_not_raise(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    audit = env.settings.audit.model_copy(update={"stream": "NO_SUCH_STREAM", "publish_retry_s": 0.5})
    rec = operator_action("silence.add", Actor(kind="cli", id="op"), details={"silence_id": "s1"})
    assert await record(env.js, env.cfg, audit, rec) is False
    assert "AUDIT RECORD NOT STORED in NO_SUCH_STREAM" in caplog.text
    assert '"silence_id":"s1"' in caplog.text  # the log keeps the record


def test_since_is_a_duration_or_an_iso_time() -> None:
    at = parse_since("2026-01-31T08:00:00Z")
    assert at.isoformat() == "2026-01-31T08:00:00+00:00"
    assert abs((parse_since("24h", at=at) - at).total_seconds() + 86400) < 1e-6
    with pytest.raises(AuditError, match=r"--since 'yesterday' is neither a duration \(30m, 24h, 7d\) nor an ISO time"):
        parse_since("yesterday")


async def test_replays_and_silences_are_audited_and_listed(env: Env) -> None:
    # A dead letter to replay, as the consumer stores one.
    event = new_event(AUDIO_SUBMITTED, "urn:pbx:a", {"audio": {"uri": "file:///x.wav"}}, id="ev-r",
                      extensions={"callid": "c-r"})  # fmt: skip
    body, headers = encode_binary(event)
    original = {"subject": "listenpost.in.test", "headers": headers, "body_base64": base64.b64encode(body).decode()}
    failed = AudioFailed(stage="fetch", reason="gone", error="E", original=original)
    letter = new_event(AUDIO_FAILED, "urn:listenpost", failed.model_dump(mode="json"), extensions={"originalid": "ev-r"})
    await publish_event(env.js, env.cfg.subject("dlq", "fetch"), letter, msg_id="dl-1")

    # Today: nothing of who replayed or who muted alerts is kept anywhere.
    replayed = await env.cli("dlq", "replay", "--id", "ev-r")
    assert replayed.exit_code == 0, replayed.output
    added = await env.cli("rules", "silence", "add", "team=qa", "-d", "1h", "-a", "alice", "--json")
    assert added.exit_code == 0, added.output
    silence_id = json.loads(added.stdout)["id"]
    expired = await env.cli("rules", "silence", "expire", silence_id)
    assert expired.exit_code == 0, expired.output

    listed = await env.cli("audit", "list", "--since", "10m", "--json")
    assert listed.exit_code == 0, listed.output
    records = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [r["action"] for r in records] == ["dlq.replay", "silence.add", "silence.expire"]
    assert {r["actor"]["kind"] for r in records} == {"cli"}
    assert (records[0]["event_id"], records[0]["call_id"], records[0]["source"]) == ("ev-r", "c-r", "urn:pbx:a")
    assert records[0]["details"]["subject"] == "listenpost.in.test"
    assert records[1]["details"]["matchers"] == ["team=qa"] and records[1]["details"]["created_by"] == "alice"
    assert records[2]["details"]["silence_id"] == silence_id

    table = await env.cli("audit", "list", "--action", "silence.add")
    assert table.exit_code == 0 and "1 record" in table.stdout and "silence.add" in table.stdout
    bad = await env.cli("audit", "list", "--action", "delete-everything")
    assert bad.exit_code == 2
    assert "unknown action 'delete-everything': one of submit, dlq.replay" in bad.stderr


# --- retention -----------------------------------------------------------------------------


async def test_uploaded_audio_is_deleted_once_captioned_and_kept_when_asked(env: Env) -> None:
    await provision_audio_buckets(env.js, [BUCKET], RetentionSettings())
    store = await env.js.object_store(BUCKET)
    assert (await env.js.stream_info(f"OBJ_{BUCKET}")).config.max_age == 30 * 24 * 3600
    for name in ("ev-1/a.wav", "ev-2/b.wav", "ev-3/c.wav"):
        await store.put(name, wav_with_title(CALL_A))

    def submitted(name: str) -> AudioSubmitted:
        return AudioSubmitted.model_validate({"audio": {"object": {"bucket": BUCKET, "name": name}}})

    kept = RetentionSettings(keep_audio_s=40 * 24 * 3600.0)
    assert not await release_audio(env.js, submitted("ev-1/a.wav"), outcome="captioned", retention=kept,
                                   buckets=[BUCKET], event_id="ev-1")  # fmt: skip
    # Dead-lettered: kept for a replay by default.
    assert not await release_audio(env.js, submitted("ev-2/b.wav"), outcome="dead-lettered",
                                   retention=RetentionSettings(), buckets=[BUCKET], event_id="ev-2")  # fmt: skip
    # Today the audio of every processed call stays in the bucket for good.
    assert await release_audio(env.js, submitted("ev-3/c.wav"), outcome="captioned", retention=RetentionSettings(),
                               buckets=[BUCKET], event_id="ev-3")  # fmt: skip
    with pytest.raises(ObjectNotFoundError):
        await store.get_info("ev-3/c.wav", show_deleted=True)  # no tombstone either
    assert CALL_A.encode() in (await store.get("ev-1/a.wav")).data and (await store.get("ev-2/b.wav")).data
    # An object in a bucket that is not listenpost's is never touched.
    assert not await release_audio(env.js, submitted("ev-1/a.wav"), outcome="captioned",
                                   retention=RetentionSettings(), buckets=["other"], event_id="ev-1")  # fmt: skip

    await provision_audio_buckets(env.js, [BUCKET], kept)
    assert (await env.js.stream_info(f"OBJ_{BUCKET}")).config.max_age == 40 * 24 * 3600
    assert (await env.js.stream_info("LISTENPOST_DLQ")).config.max_age == 30 * 24 * 3600


def test_audio_cannot_expire_before_the_dead_letters_that_need_it() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings(retention={"keep_audio_s": 86400.0})
    assert "settings: Value error, audio expires after 86400 s but dead letters are kept 2.592e+06 s: raise " \
        "retention.audio_max_age_s" in str(caught.value)  # fmt: skip
    assert Settings(retention={"keep_audio_s": 86400.0, "keep_dead_lettered_audio": False}).retention.audio_ttl_s() == 86400


# --- erasure ----------------------------------------------------------------------------------


async def plant_call(env: Env, call_id: str, n: int) -> None:
    """Everything a call leaves behind: its pending input, caption, decision, dead letter,
    audio objects (three ways of finding them), rule state, an alert group entry, a silence."""
    js, cfg = env.js, env.cfg
    store = await js.create_object_store(BUCKET)
    await store.put(f"ev-in-{n}/recording.wav", wav_with_title(call_id))  # referenced by the pending input
    await store.put(f"ev-cap-{n}/recording.wav", wav_with_title(call_id))  # kept audio of a captioned input
    await store.put(f"ev-dl-{n}/recording.wav", wav_with_title(call_id))  # dead letter's audio (dataref)
    await store.put(f"{call_id}.wav", wav_with_title(call_id))  # `listenpost submit CALL.wav`

    pending = new_event(AUDIO_SUBMITTED, "urn:pbx", {"audio": {"object": {"bucket": BUCKET, "name": f"ev-in-{n}/recording.wav"}},
                        "context": {"callid": call_id}}, id=f"ev-in-{n}", extensions={"callid": call_id})  # fmt: skip
    await publish_event(js, cfg.subject("in", "pbx"), pending, msg_id=f"in-{n}")
    captioned = new_event(AUDIO_CAPTIONED, "urn:listenpost", {
        "source_event": {"id": f"ev-cap-{n}", "source": "urn:pbx", "type": AUDIO_SUBMITTED},
        "context": {"call_id": call_id, "queue": "sales"}, "caption": f"the customer is angry on {n}",
    }, id=f"cap-{n}")  # fmt: skip
    await publish_event(js, cfg.subject("captioned"), captioned, msg_id=f"cap-{n}")
    route = new_event(ROUTE_DECIDED, "urn:listenpost", {"queue": "retention", "callid": call_id},
                      id=f"route-{n}", extensions={"callid": call_id, "inputid": f"cap-{n}"})  # fmt: skip
    await publish_event(js, cfg.subject("routes", "retention"), route, msg_id=f"route-{n}")
    # A dead letter whose original is structured: the call id is only inside the base64 body.
    original_event = new_event(AUDIO_SUBMITTED, "urn:pbx", {"context": {"callid": call_id}, "audio": {"format": "wav"}},
                               id=f"ev-dl-{n}", extensions={"dataref": f"nats-object://{BUCKET}/ev-dl-{n}/recording.wav"})  # fmt: skip
    body, headers = encode_structured(original_event)
    original = {"subject": "listenpost.in.pbx", "headers": headers, "body_base64": base64.b64encode(body).decode()}
    failed = AudioFailed(stage="validate", reason="bad audio", error="E", original=original)
    letter = new_event(AUDIO_FAILED, "urn:listenpost", failed.model_dump(mode="json"), extensions={"originalid": f"ev-dl-{n}"})
    await publish_event(js, cfg.subject("dlq", "validate"), letter, msg_id=f"dl-{n}")

    rules = env.settings.rules
    stores = await open_stores(js, state_bucket=rules.state_bucket, silence_bucket=rules.silence_bucket,
                               status_bucket=rules.status_bucket, state_ttl_s=rules.state_ttl_s)  # fmt: skip
    streak = f"streak.angry.{safe_key(call_id)}"
    await stores.state.put(streak, {"windows": 1})
    await stores.state.put(streak, {"windows": 2})
    await stores.silences.put(f"silence.s{n}", {"matchers": [{"name": "callid", "op": "=", "value": call_id}]})
    history = await open_bucket(js, "LISTENPOST_NOTES", history=5)
    await history.put(f"note.{n}", {"about": call_id})
    await history.put(f"note.{n}", {"about": "nothing personal"})  # an old revision still names the call


async def plant_shared_group(env: Env) -> None:
    state = await open_bucket(env.js, env.settings.rules.state_bucket)
    alerts = {f"fp-{c}": {"callid": c, "summary": f"Angry customer on call {c}", "severity": "critical"}
              for c in (CALL_A, CALL_B)}  # fmt: skip
    await state.put("group.g1", {"rule_id": "angry", "labels": {"team": "qa"}, "alerts": alerts, "seq": 0})
    notice = new_event(ALERT_RAISED, "urn:listenpost", {"alerts": [alerts[f"fp-{CALL_A}"]], "summary": "x"}, id="n-a")
    await publish_event(env.js, env.cfg.subject("alerts", "critical"), notice, msg_id="n-a")


def haystacks(raw: Any) -> list[bytes]:
    """A stored message's bytes, and what base64 hides in them (DLQ bodies, object-store subjects)."""
    parts = [(raw.subject or "").encode(), json.dumps(dict(raw.headers or {})).encode(), raw.data or b""]
    for token in re.findall(rb"[A-Za-z0-9+/=_-]{12,}", b" ".join(parts)):
        for decoder in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                parts.append(decoder(token + b"=" * (-len(token) % 4)))
            except (binascii.Error, ValueError):
                pass
    return parts


async def where_named(env: Env, call_id: str) -> dict[str, int]:
    """Messages naming the call, per stream: every stream, KV (all revisions) and object store."""
    found: dict[str, int] = {}
    for stream in await env.streams():
        if stream == "LISTENPOST_AUDIT":
            continue
        hits = sum(1 for raw in await env.messages(stream) if any(call_id.encode() in h for h in haystacks(raw)))
        if hits:
            found[stream] = hits
    return found


async def test_erase_removes_a_call_everywhere_and_leaves_the_other(env: Env) -> None:
    await plant_call(env, CALL_A, 1)
    await plant_call(env, CALL_B, 2)
    await plant_shared_group(env)
    before_a, before_b = await where_named(env, CALL_A), await where_named(env, CALL_B)
    # Today the call is in every one of these, and there is no command to take it out.
    assert set(before_a) == {"LISTENPOST_IN", "LISTENPOST_OUT", "LISTENPOST_DLQ", f"OBJ_{BUCKET}",
                             "KV_LISTENPOST_RULES_STATE", "KV_LISTENPOST_RULES_SILENCES", "KV_LISTENPOST_NOTES"}  # fmt: skip

    started = time.perf_counter()
    result = await env.cli("erase", "--callid", CALL_A, "--yes", "--json")
    elapsed = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["audited"] is True and report["failed"] == []
    removed = {(r["place"], r["kind"], r["item"], r["action"]) for r in report["removed"]}
    assert {(p, i, a) for p, k, i, a in removed if k == "object"} == {
        (BUCKET, f"ev-{kind}-1/recording.wav", "deleted") for kind in ("in", "cap", "dl")
    } | {(BUCKET, f"{CALL_A}.wav", "deleted")}
    assert {(p, i, a) for p, k, i, a in removed if k == "kv"} == {
        ("LISTENPOST_RULES_STATE", f"streak.angry.{safe_key(CALL_A)}", "deleted"),
        ("LISTENPOST_RULES_STATE", "group.g1", "rewritten"),
        ("LISTENPOST_RULES_SILENCES", "silence.s1", "deleted"),
        ("LISTENPOST_NOTES", "note.1", "rewritten"),
    }
    assert sorted(p for p, k, _, _ in removed if k == "message") == [
        "LISTENPOST_DLQ", "LISTENPOST_IN", "LISTENPOST_OUT", "LISTENPOST_OUT", "LISTENPOST_OUT",
    ]

    # Nothing left anywhere: not in a message, a KV revision or tombstone, an object or its metadata.
    assert await where_named(env, CALL_A) == {}
    # The other call is intact (the shared group kept its alert; its own objects are readable).
    assert await where_named(env, CALL_B) == before_b
    store = await env.js.object_store(BUCKET)
    for name in ("ev-in-2/recording.wav", "ev-cap-2/recording.wav", "ev-dl-2/recording.wav", f"{CALL_B}.wav"):
        assert CALL_B.encode() in (await store.get(name)).data
    state = await env.js.key_value(env.settings.rules.state_bucket)
    group = json.loads((await state.get("group.g1")).value)
    assert list(group["alerts"]) == [f"fp-{CALL_B}"]
    notes = await env.js.key_value("LISTENPOST_NOTES")
    assert json.loads((await notes.get("note.1")).value) == {"about": "nothing personal"}

    # The audit trail has the erasure: who, which call, counts; no content.
    [rec] = await list_records(env.js, env.cfg, env.settings.audit, since=parse_since("10m"), action="erase")
    assert (rec.actor.kind, rec.call_id) == ("cli", CALL_A)
    assert rec.details["removed"] == {"LISTENPOST_IN": 1, "LISTENPOST_OUT": 3, "LISTENPOST_DLQ": 1, BUCKET: 4,
                                      "LISTENPOST_RULES_STATE": 2, "LISTENPOST_RULES_SILENCES": 1, "LISTENPOST_NOTES": 1}  # fmt: skip
    assert "angry" not in rec.model_dump_json()
    print(f"erase of one call among two: {elapsed:.2f} s")


async def test_erase_without_yes_shows_what_would_go_and_asks(env: Env) -> None:
    await plant_call(env, CALL_A, 1)
    before = await where_named(env, CALL_A)
    declined = await env.cli("erase", "--callid", CALL_A, input="n\n")
    assert declined.exit_code == 1
    assert f"call {CALL_A}: will erase 11 items" in declined.stdout
    assert "Erase them? This cannot be undone" in declined.stdout
    assert await where_named(env, CALL_A) == before  # nothing deleted, nothing audited
    assert await list_records(env.js, env.cfg, env.settings.audit, since=parse_since("10m")) == []

    nothing = await env.cli("erase", "--callid", "no-such-call")
    assert nothing.exit_code == 0 and "nothing stored carries call id 'no-such-call'" in nothing.stdout
    empty = await env.cli("erase", "--callid", " ", "--yes")
    assert empty.exit_code == 2 and "the call id is empty: nothing to erase" in empty.stderr


async def revisions(js: JetStreamContext, stream: str, subject: str) -> list[bytes]:
    """Every stored message of ``subject``, oldest first, read one by one from the stream.

    Not ``KeyValue.history()``: nats-py's watcher can signal "no more" before the messages the
    server already pushed are counted, and then reports no keys at all (seen in CI)."""
    out: list[bytes] = []
    seq = 1
    while True:
        try:
            msg = await js.get_msg(stream, seq=seq, subject=subject, next=True)
        except NotFoundError:
            return out
        out.append(msg.data or b"")
        assert msg.seq is not None
        seq = msg.seq + 1


async def test_history_bucket_fixture_is_real(env: Env) -> None:
    """The planted KV history is what erasure must handle: several revisions per key."""
    await plant_call(env, CALL_A, 1)
    assert [json.loads(v) for v in await revisions(env.js, "KV_LISTENPOST_NOTES", "$KV.LISTENPOST_NOTES.note.1")] == [
        {"about": CALL_A}, {"about": "nothing personal"},
    ]  # fmt: skip
    info = await env.js.stream_info("KV_LISTENPOST_NOTES")
    assert info.config.max_msgs_per_subject == 5


# --- the Ingress's wiring (its real methods, no Ray) --------------------------------------------


# The bare instance is never started by Serve, so its async __del__ is never awaited either.
@pytest.mark.filterwarnings("ignore:coroutine .*__del__' was never awaited:RuntimeWarning")
async def test_ingress_audits_every_input_and_drops_a_refused_inputs_audio_when_told(env: Env) -> None:
    from services.events.consumer import Poison
    from services.events.models import ContextLimits
    from services.ingest.adapters import AdapterSet
    from services.orchestrator.deployment import Ingress

    settings = env.settings.model_copy(
        update={"retention": RetentionSettings(keep_dead_lettered_audio=False, audio_max_age_s=86400.0)}
    )  # fmt: skip
    ingress = Ingress.func_or_class.__new__(Ingress.func_or_class)  # the deployment's class, not started by Serve
    ingress._settings, ingress._js, ingress._adapters = settings, env.js, AdapterSet()
    ingress._context_limits = ContextLimits.from_settings(settings.ingress)
    await provision_audio_buckets(env.js, [BUCKET], settings.retention)
    store = await env.js.object_store(BUCKET)
    await store.put("ev-k/a.wav", wav_with_title(CALL_A))
    good = new_event(AUDIO_SUBMITTED, "urn:pbx:a", {"audio": {"object": {"bucket": BUCKET, "name": "ev-k/a.wav"}},
                     "context": {"callid": CALL_A}}, id="ev-k")  # fmt: skip
    body, headers = encode_binary(good)
    await env.js.publish(env.cfg.subject("in", "http"), body, headers={**headers, KEY_ID_HEADER: "pbx-a"})
    await env.js.publish(env.cfg.subject("in", "raw"), b"not an event")
    sub = await env.js.pull_subscribe_bind(env.cfg.ingest_durable, env.cfg.in_stream)
    first, second = await sub.fetch(2, timeout=5)

    with pytest.raises(Poison, match="decode-event"):
        await ingress._handle(second)
    # The good input fails later (say its preprocessing): dead-lettered, and its audio goes.
    await ingress._audit_submission(first, good, AudioSubmitted.model_validate(json.loads(body)), refused=None)
    await ingress._dead_letter(first, Poison("preprocess", "no speech"))
    with pytest.raises(ObjectNotFoundError):
        await store.get_info("ev-k/a.wav", show_deleted=True)

    records = await list_records(env.js, env.cfg, settings.audit, since=parse_since("5m"), action="submit")
    assert [(str(r.actor), r.event_id, r.call_id, r.details.get("refused")) for r in records] == [
        ("nats", None, None, "decode-event: not a CloudEvent: no 'ce-specversion' header (binary mode) and no "
         "'application/cloudevents' content type (structured mode)"),
        ("key:pbx-a", "ev-k", CALL_A, None),
    ]
    await sub.unsubscribe()


async def test_submit_uploads_into_the_bucket_the_ingress_created_with_its_ttl(env: Env, tmp_path: Path) -> None:
    from services.events.claimcheck import INLINE_LIMIT_BYTES, audio_reference

    await provision_audio_buckets(env.js, [BUCKET], RetentionSettings())  # as the Ingress does at start
    path = tmp_path / f"{CALL_A}.wav"
    path.write_bytes(wav_with_title(CALL_A, seconds=INLINE_LIMIT_BYTES / 16000 + 1))
    # Creating the bucket again with the default configuration used to fail here.
    ref = await audio_reference(env.js, path.read_bytes(), filename=path.name, event_id="ev-up", bucket=BUCKET, replicas=1,
                                fmt="wav")
    assert ref["object"] == {"bucket": BUCKET, "name": f"ev-up/{CALL_A}.wav"}
    assert (await env.js.stream_info(f"OBJ_{BUCKET}")).config.max_age == 30 * 24 * 3600
