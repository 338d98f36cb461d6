"""The rules engine's state and tools on a real nats-server (JetStream and KV), without Ray:
the KV store, replicas sharing state, silences, backtest, status, and the RulesEngine class
started outside Serve (start with broken files, last good rules, hot reload)."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.errors import BucketNotFoundError
from pydantic import BaseModel

from services.events.binding import new_event
from services.events.embedded import EmbeddedNatsServer
from services.events.errors import EventsError
from services.events.jetstream import provision, publish_event
from services.events.kv import bucket_models, bucket_values, stream_subjects
from services.rules import load_ruleset
from services.rules.alerting import Matcher
from services.rules.backtest import backtest
from services.rules.engine import RulesProcessor
from services.rules.inputs import read_input
from services.rules.state import Conflict, Stores, open_bucket, open_stores
from services.rules.status import read_status
from services.settings import AuditSettings, NatsSettings, RulesSettings, Settings

REPO = Path(__file__).resolve().parents[1]
CAPTIONED = "com.listenpost.audio.captioned"


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with EmbeddedNatsServer(tmp_path_factory.mktemp("rules-nats")) as server:
        yield server.url


@pytest.fixture
async def js(nats_url: str) -> AsyncIterator[Any]:
    nc = await nats.connect(nats_url)
    yield nc.jetstream()
    await nc.drain()


def unique(name: str) -> str:
    return f"{name}_{uuid.uuid4().hex[:8]}"


async def stores(js: Any, tag: str) -> Stores:
    return await open_stores(
        js, state_bucket=f"S_{tag}", silence_bucket=f"Q_{tag}", status_bucket=f"T_{tag}", state_ttl_s=3600
    )


async def test_kv_store_compare_and_set(js: Any) -> None:
    store = await open_bucket(js, unique("KV"))
    assert await store.get("a.1") is None
    rev = await store.create("a.1", {"n": 1})
    with pytest.raises(Conflict):
        await store.create("a.1", {"n": 2})
    rev2 = await store.update("a.1", {"n": 2}, rev)
    with pytest.raises(Conflict):
        await store.update("a.1", {"n": 3}, rev)  # stale revision
    entry = await store.get("a.1")
    assert entry is not None and (entry.value, entry.revision) == ({"n": 2}, rev2)
    await store.put("a.2", {"n": 9})
    await store.put("b.1", {"n": 0})
    assert await store.keys("a.") == ["a.1", "a.2"]
    await store.delete("a.1")
    assert await store.get("a.1") is None and await store.keys("a.") == ["a.2"]
    await store.create("a.1", {"n": 5})  # re-created after a delete
    assert await store.keys("zzz.") == []


async def test_listing_reads_the_stream_index_not_a_watcher(js: Any) -> None:
    # nats-py's KV watcher can end its initial replay before deliveries in flight
    # arrive and list too few keys (nats-io/nats.py#842): a status or silence
    # listing came back empty once in CI. Listing must not start a consumer at all.
    name = unique("KV")
    store = await open_bucket(js, name)
    for i in range(5):
        await store.put(f"silence.s{i}", {"n": i})
    await store.put("group.g", {"n": 9})
    await store.delete("silence.s3")
    for _ in range(20):
        listed = await store.entries("silence.")
        assert [(e.key, e.value["n"]) for e in listed] == [(f"silence.s{i}", i) for i in (0, 1, 2, 4)]
    assert await store.keys("group.") == ["group.g"]
    assert (await js.stream_info(f"KV_{name}")).state.consumer_count == 0


class _Counted(BaseModel):
    n: int


async def test_a_whole_bucket_is_read_from_its_subject_index_and_bad_values_are_named(js: Any) -> None:
    """What the notifier reads back at start (firing alerts, aggregation groups): every key, none
    missed (nats-py's kv.keys() watcher can list too few), deleted keys left out."""
    name = unique("WHOLE")
    kv = await js.create_key_value(bucket=name)
    await asyncio.gather(*(kv.put(f"k.{i:03d}", json.dumps({"n": i}).encode()) for i in range(300)))
    await kv.put("k.bad", b'{"n": "not a number"}')
    await kv.put("gone", b'{"n": 1}')
    await kv.delete("gone")
    read, bad = await bucket_models(kv, _Counted)
    assert [m.n for _, m in read] == list(range(300)) and bad == ["k.bad"]
    assert [key for key, _ in await bucket_values(kv, "k.")][:2] == ["k.000", "k.001"]


async def test_stream_subjects_reads_every_page() -> None:
    # The server pages at 100,000 subjects; a stand-in JetStream API pages at 2 to
    # exercise the offset loop without writing 100,000 keys.
    subjects = {f"$KV.B.group.{i}": 1 for i in range(5)}

    class PagedApi:
        _prefix, _timeout = "$JS.API", 1.0
        asked: list[int] = []

        async def _api_request(self, subject: str, body: bytes, timeout: float) -> dict[str, Any]:
            assert subject == "$JS.API.STREAM.INFO.KV_B"
            offset = json.loads(body)["offset"]
            self.asked.append(offset)
            page = dict(list(subjects.items())[offset : offset + 2])
            return {"total": len(subjects), "offset": offset, "limit": 2, "state": {"subjects": page}}

    api = PagedApi()
    assert sorted(await stream_subjects(api, "KV_B", "$KV.B.group.>")) == sorted(subjects)
    assert api.asked == [0, 2, 4]


async def test_buckets_open_idempotently_from_many_replicas(js: Any) -> None:
    name = unique("KV")
    opened = await asyncio.gather(*(open_bucket(js, name, ttl_s=60) for _ in range(4)))
    await opened[0].put("k", {"v": 1})
    assert (await opened[3].get("k")).value == {"v": 1}


RULES = """apiVersion: listenpost/v1
kind: RuleSet
metadata: {name: t, owner: qa}
rules:
  - id: angry
    description: angry customer
    match: {types: [com.listenpost.audio.captioned]}
    when: 'emotion("customer", ["anger"], 0.5)'
    for: {windows: 2}
    actions:
      - route: {queue: escalations}
      - alert: {severity: warning, summary: "angry {{ context.callid }}", labels: {callid: "{{ context.callid }}"}}
  - id: alarm
    description: alarm
    match: {types: [com.listenpost.audio.captioned]}
    when: 'sound(["alarm"], 0.5)'
    actions:
      - alert:
          severity: critical
          summary: "alarm {{ context.callid }}"
          labels: {team: security, callid: "{{ context.callid }}"}
          rate_limit: {max: 1, per: 1h}
"""


def captioned(i: int, callid: str, *, angry: bool = False, alarm: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    return (
        {"specversion": "1.0", "id": f"{callid}-{i}", "source": "/test", "type": CAPTIONED},
        {
            "context": {"callid": callid},
            "caption": "x",
            "windows": [{"index": i, "start": 10.0 * i, "end": 10.0 * (i + 1), "caption": "x"}],
            "facets": {
                "emotions": [{"role": "customer", "label": "anger", "intensity": 0.9, "window": i}] if angry else [],
                "sound_events": [{"label": "alarm", "confidence": 0.9, "window": i}] if alarm else [],
            },
            "acoustics": {"silence_ratio": 0.1},
        },
    )


async def test_two_replicas_share_streaks_rate_limits_and_silences(nats_url: str, tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)
    rules = load_ruleset(tmp_path)
    tag = uuid.uuid4().hex[:8]
    connections = [await nats.connect(nats_url) for _ in range(2)]
    try:
        a, b = [RulesProcessor(await stores(nc.jetstream(), tag), silence_refresh_s=0.0) for nc in connections]
        # The call's first window lands on replica a, the second on replica b: the streak carries over.
        assert (await a.process(rules, *captioned(0, "c-1", angry=True))).publish == []
        fired = await b.process(rules, *captioned(1, "c-1", angry=True))
        assert [d.kind for d in fired.publish] == ["route", "alert"]
        # The same alert again, on the other replica: raised again (the notifier deduplicates).
        again = await a.process(rules, *captioned(2, "c-1", angry=True))
        assert [d.kind for d in again.publish] == ["route", "alert"] and again.suppressed == []
        # A rate limit of one alarm an hour holds across the replicas: the second is held back.
        assert [d.kind for d in (await a.process(rules, *captioned(0, "c-2", alarm=True))).publish] == ["alert"]
        assert [s.reason for s in (await b.process(rules, *captioned(0, "c-3", alarm=True))).suppressed] == ["rate_limited"]
        # A silence created through one replica's store silences the other.
        await a.silences.add([Matcher.parse("callid=c-4")], ends_at=a.clock() + 60)
        assert (await b.process(rules, *captioned(0, "c-4", angry=True))).publish == []
        done = await b.process(rules, *captioned(1, "c-4", angry=True))
        assert [s.reason for s in done.suppressed] == ["silenced"]
    finally:
        for nc in connections:
            await nc.drain()


LIVE_RULES = """apiVersion: listenpost/v1
kind: RuleSet
metadata: {name: t, owner: security}
rules:
  - id: alarm-held
    description: an alarm over two windows of a live stream
    match: {types: [com.listenpost.stream.captioned]}
    when: 'sound(["alarm"], 0.5)'
    for: {windows: 2}
    actions:
      - alert: {severity: critical, summary: "alarm on {{ data.stream.id }}", labels: {stream: "{{ data.stream.id }}"}}
"""


def live_window(i: int, stream_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A live window of a camera's microphone: no call id, only the stream's."""
    return (
        {"specversion": "1.0", "id": f"{stream_id}-w{i}", "source": "/test", "type": "com.listenpost.stream.captioned",
         "streamid": stream_id},
        {
            "context": {"site": "depot"},
            "stream": {"id": stream_id, "window": i, "start": 5.0 * i, "end": 5.0 * i + 10.0},
            "caption": "an alarm rings",
            "windows": [{"index": i, "start": 5.0 * i, "end": 5.0 * i + 10.0, "caption": "an alarm rings"}],
            "facets": {"emotions": [], "sound_events": [{"label": "alarm", "confidence": 0.9, "window": i}]},
            "acoustics": {"silence_ratio": 0.1},
        },
    )  # fmt: skip


async def test_a_for_streak_runs_over_the_windows_of_one_live_stream_without_a_call_id(nats_url: str, tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(LIVE_RULES)
    rules = load_ruleset(tmp_path)
    nc = await nats.connect(nats_url)
    try:
        engine = RulesProcessor(await stores(nc.jetstream(), uuid.uuid4().hex[:8]), silence_refresh_s=0.0)
        assert (await engine.process(rules, *live_window(0, "cam-1"))).publish == []
        assert (await engine.process(rules, *live_window(0, "cam-2"))).publish == []  # another stream's first
        fired = await engine.process(rules, *live_window(1, "cam-1"))
        assert [(d.kind, d.data["summary"]) for d in fired.publish] == [("alert", "alarm on cam-1")]
    finally:
        await nc.drain()


async def test_backtest_replays_history_without_side_effects(js: Any, tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)
    rules = load_ruleset(tmp_path)
    cfg = NatsSettings(subject_prefix=unique("bt").lower(), out_stream=unique("OUT"), in_stream=unique("IN"), dlq_stream=unique("DLQ"))
    await provision(js, cfg)
    for i in range(2):
        attrs, data = captioned(i, "c-1", angry=True)
        await publish_event(js, cfg.subject("captioned"), new_event(CAPTIONED, "/test", data, id=attrs["id"]), msg_id=attrs["id"])
    attrs, data = captioned(0, "c-2", alarm=True)
    await publish_event(js, cfg.subject("captioned"), new_event(CAPTIONED, "/test", data, id=attrs["id"]), msg_id=attrs["id"])
    await js.publish(cfg.subject("captioned"), b"not an event")
    await publish_event(js, cfg.subject("routes", "x"), new_event("com.x", "/t", {"a": 1}), msg_id="r1")  # not replayed
    before = await js.stream_info(cfg.out_stream)
    buckets_before = {s.config.name for s in await js.streams_info()}

    async def decode_msg(body: bytes, headers: Any) -> tuple[dict[str, Any], Any]:
        try:
            return await read_input(js, body, headers, buckets=[cfg.outputs_bucket])
        except EventsError as exc:
            raise ValueError(str(exc)) from exc

    report = await backtest(
        js, rules, stream=cfg.out_stream, subjects=[cfg.subject("captioned")], since_s=3600, since_text="1h",
        prefix=cfg.subject_prefix, decode=decode_msg,
    )  # fmt: skip
    assert report.events == 3 and report.undecodable == 1
    angry, alarm = report.rules["angry"], report.rules["alarm"]
    assert (angry.matched, dict(angry.routes), angry.alerts_raised) == (1, {"escalations": 1}, 1)
    assert (alarm.matched, alarm.alerts_raised) == (1, 1)
    after = await js.stream_info(cfg.out_stream)
    assert after.state.messages == before.state.messages  # nothing published
    assert after.state.consumer_count == before.state.consumer_count  # its consumer is gone
    assert {s.config.name for s in await js.streams_info()} == buckets_before  # no KV written
    # Nothing stored since the start time: nothing replayed.
    empty = await backtest(
        js, rules, stream=cfg.out_stream, subjects=[cfg.subject("captioned")], since_s=3600, since_text="1h",
        prefix=cfg.subject_prefix, decode=decode_msg, now=time.time() + 86400,
    )  # fmt: skip
    assert empty.events == 0


async def test_status_records(js: Any) -> None:
    bucket = unique("STATUS")
    assert await read_status(js, bucket) == []
    store = await open_bucket(js, bucket)
    await store.put("status.r1", {"replica": "r1", "updated_at": 1.0})
    await store.put("status.r2", {"replica": "r2", "updated_at": 2.0})
    await store.put("ruleset.last-good", {"sources": {}})
    assert [r["replica"] for r in await read_status(js, bucket)] == ["r2", "r1"]


# --- the deployment class, outside Serve ----------------------------------------------


async def start_engine(settings: Settings) -> Any:
    from services.rules.deployment import RulesEngine

    cls = RulesEngine.func_or_class
    engine = cls.__new__(cls)
    await engine.__init__(settings)
    return engine


async def stop_engine(engine: Any) -> None:
    """What Serve does at shutdown: await the async __del__ (then keep the GC from calling it again)."""
    await engine.__del__()

    class Stopped(type(engine)):
        def __del__(self) -> None:
            pass

    engine.__class__ = Stopped


def engine_settings(nats_url: str, directory: Path, tag: str) -> Settings:
    return Settings(
        nats=NatsSettings(
            url=nats_url, subject_prefix=f"lp{tag}", in_stream=f"IN_{tag}", out_stream=f"OUT_{tag}", dlq_stream=f"DLQ_{tag}",
            rules_durable=f"rules-{tag}", ingest_durable=f"ingest-{tag}", ack_wait_s=5,
        ),
        rules=RulesSettings(
            directory=directory, reload_interval_s=0.1, status_interval_s=0.2,
            state_bucket=f"S_{tag}", silence_bucket=f"Q_{tag}", status_bucket=f"T_{tag}",
        ),
    )  # fmt: skip


async def test_engine_starts_on_last_good_rules_and_reloads(nats_url: str, js: Any, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    directory = tmp_path / "rules"
    shutil.copytree(REPO / "router_rules", directory)
    settings = engine_settings(nats_url, directory, tag)
    engine = await start_engine(settings)
    try:
        status = await engine.status()
        good = status["ruleset_version"]
        assert status["consuming"] and status["origin"] == "files" and status["last_reload_error"] is None
    finally:
        await stop_engine(engine)

    # Restart with a broken file: the last good rules (from KV) are active, the error is reported.
    (directory / "broken.yaml").write_text("apiVersion: listenpost/v1\nkind: RuleSet\nmetadata: {name: b, owner: x}\nrules:\n  - id: [\n")
    engine = await start_engine(settings)
    try:
        status = await engine.status()
        assert (status["ruleset_version"], status["origin"], status["consuming"]) == (good, "last good (KV)", True)
        assert "broken.yaml:6:1: invalid YAML" in status["last_reload_error"]
        # Fixing the file on disk: picked up without a restart.
        (directory / "broken.yaml").unlink()
        async with asyncio.timeout(10):
            while (await engine.status())["origin"] != "files":
                await asyncio.sleep(0.1)
        assert (await engine.status())["last_reload_error"] is None
        async def reported() -> list[dict[str, Any]]:
            async with asyncio.timeout(10):
                while not (records := await read_status(js, settings.rules.status_bucket)) or records[0]["origin"] != "files":
                    await asyncio.sleep(0.2)
            return records

        [record] = await reported()
        assert record["ruleset_version"] == good and record["origin"] == "files"
    finally:
        await stop_engine(engine)


async def test_engine_without_any_good_rules_waits(nats_url: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    directory = tmp_path / "rules"
    directory.mkdir()
    (directory / "bad.yaml").write_text("nope: [\n")
    engine = await start_engine(engine_settings(nats_url, directory, tag))
    try:
        status = await engine.status()
        assert status["ruleset_version"] is None and not status["consuming"] and "invalid YAML" in status["last_reload_error"]
        shutil.copy(REPO / "router_rules" / "quality.yaml", directory / "bad.yaml")
        async with asyncio.timeout(10):
            while not (await engine.status())["consuming"]:
                await asyncio.sleep(0.1)
    finally:
        await stop_engine(engine)


async def test_bucket_missing_is_not_an_error_for_status(js: Any) -> None:
    with pytest.raises(BucketNotFoundError):
        await js.key_value(unique("NONE"))


async def test_every_rule_set_activation_is_in_the_audit_trail(nats_url: str, tmp_path: Path) -> None:
    """Who activated which rule set version, when: at start, on a reload of an edited file and
    from the last good copy; an unchanged directory activates nothing new."""
    from services.events.audit import list_records, parse_since

    tag = uuid.uuid4().hex[:8]
    directory = tmp_path / "rules"
    shutil.copytree(REPO / "router_rules", directory)
    base = engine_settings(nats_url, directory, tag)
    # An audit stream of this test's own: the module's server is shared by tests with other prefixes.
    settings = base.model_copy(update={"audit": AuditSettings(stream=f"AUDIT_{tag}", publish_retry_s=2.0)})
    since = parse_since("1m")

    async def activations(count: int) -> list[Any]:
        async with asyncio.timeout(10):
            while len(found := await list_records(js, settings.nats, settings.audit, since=since, action="ruleset.activate")) < count:
                await asyncio.sleep(0.1)
        return found

    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    engine = await start_engine(settings)
    try:
        first = (await engine.status())["ruleset_version"]
        [started] = await activations(1)
        # Edited on disk: the reload swaps in a new version, and records it.
        quality = directory / "quality.yaml"
        quality.write_text(quality.read_text().replace("Long silences on the call", "Long silences on a call"))
        async with asyncio.timeout(10):
            while (status := await engine.status())["ruleset_version"] == first:
                await asyncio.sleep(0.1)
        second, rules, files = status["ruleset_version"], status["rules"], sorted(status["files"])
        _, reloaded = await activations(2)
        # Touched, not changed: the same version is not activated (nor recorded) again.
        quality.touch()
        await asyncio.sleep(0.5)
        assert len(await activations(2)) == 2
    finally:
        await stop_engine(engine)
    # A restart on a broken directory runs the last good copy (from KV): recorded as such.
    (directory / "broken.yaml").write_text("nope: [\n")
    engine = await start_engine(settings)
    try:
        *_, fallback = await activations(3)
    finally:
        await stop_engine(engine)
        await nc.drain()

    for rec, version, origin in ((started, first, "files"), (reloaded, second, "files"), (fallback, second, "last good (KV)")):
        assert (str(rec.actor), rec.action) == ("service:rules", "ruleset.activate")
        assert (rec.details["version"], rec.details["origin"], rec.details["rules"]) == (version, origin, rules)
        assert rec.details["replica"] and rec.call_id is None and rec.event_id is None
    assert first != second
    assert started.details["files"] == reloaded.details["files"] == files and "quality.yaml" in files
    assert started.time <= reloaded.time <= fallback.time
