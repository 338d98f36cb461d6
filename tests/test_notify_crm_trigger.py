"""The CRM write-back's trigger (issue 14): the rules engine's evaluated marker, the notification
file's ``crm:`` targets, and the writer that sends one summary per call and target.

Against real parts: a hardened nats-server (TLS, an NKey identity per role: the rules engine
runs as ``rules``, the notifier as ``notify``, so the permissions are tested too), the real
RulesEngine class outside Serve, and a local HTTP server recording each request. The pure
parts (the marker, ``when``, the idempotency key) are tested without NATS.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NATS
from notify_fixtures import RecordingServer, Reply, http_server
from test_notify_crm import ATTRIBUTES, CALLID, RULES, captioned_data, expected_body
from test_notify_delivery import until

from services.events.binding import decode, encode_structured, new_event
from services.events.connection import connect
from services.events.dlq import list_dead_letters, replay
from services.events.embedded import EmbeddedNatsServer
from services.events.jetstream import evaluated_subject, provision_everything, publish_event
from services.events.models import AUDIO_CAPTIONED, RULES_EVALUATED, RulesEvaluated
from services.metrics import MemoryBackend
from services.notify.call_summary import summarise
from services.notify.config import load
from services.notify.crm import CrmConfig, CrmMappingError, load_mappings, write
from services.notify.crm_writer import idempotency_key
from services.notify.receivers import Secrets
from services.notify.service import Notifier
from services.notify.status import crm_rows
from services.rules import evaluate, load_ruleset
from services.rules.evaluated import evaluated_event, evaluated_msg_id
from services.settings import NatsSettings, NotifySettings, RulesSettings, Settings

__all__ = ["http_server"]  # the fixture, imported for pytest

REPO = Path(__file__).resolve().parents[1]
FILES = Path(__file__).parent / "notify_files"
BASE = Settings(_env_file=None)
TOKEN = "crm-T0k3n-5ecr3t-0123456789"
SECRETS = Secrets({"crm-token": TOKEN})


# --- pure parts --------------------------------------------------------------------------------


def engine_decisions(directory: Path, attributes: dict[str, Any], data: dict[str, Any]) -> tuple[str, list[Any]]:
    """The ruleset's version and its decisions on the event, as the engine's CloudEvents."""
    ruleset = load_ruleset(directory)
    events = []
    for d in evaluate(ruleset, attributes, data).decisions:
        extensions = {"rulesetver": d.ruleset_version, "inputid": attributes["id"], "callid": CALLID}
        events.append(new_event(d.type, "/listenpost/rules", d.data, id=d.id, subject=d.rule_id, extensions=extensions))
    return ruleset.version, events


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("rules")
    (directory / "cx.yaml").write_text(RULES + SHADOW)
    return directory


#: A shadow rule: its match is published, but it is not a decision the CRM hears of.
SHADOW = """\
  - id: quiet-agent
    description: Shadow - the agent spoke less than the customer.
    mode: shadow
    priority: 5
    continue: true
    match: {types: [com.listenpost.audio.captioned]}
    when: acoustics.talk_time_s.agent < acoustics.talk_time_s.customer
    actions:
      - tag: {tags: [quiet-agent]}
"""


def test_the_marker_lists_the_decisions_that_acted_and_says_where_the_event_is(rules_dir: Path) -> None:
    data = captioned_data()
    version, events = engine_decisions(rules_dir, ATTRIBUTES, data)
    assert "com.listenpost.rule.shadowmatched" in {e.get_type() for e in events}
    marker = evaluated_event(ATTRIBUTES, stream="LISTENPOST_OUT", sequence=42, ruleset_version=version, decisions=events,
                             source="/listenpost/rules")  # fmt: skip
    assert (marker.get_type(), marker.get_id(), marker.get_subject()) == (RULES_EVALUATED, evaluated_msg_id("cap-77", version), "cap-77")
    assert marker.get_attributes()["callid"] == CALLID and marker.get_attributes()["inputid"] == "cap-77"
    body = RulesEvaluated.model_validate(marker.get_data())
    assert body.captioned.model_dump() == {"id": "cap-77", "stream": "LISTENPOST_OUT", "sequence": 42}
    assert (body.callid, body.ruleset_version) == (CALLID, version)
    assert [(d.type, d.subject) for d in body.decisions] == [
        ("com.listenpost.route.decided", "angry-customer"),
        ("com.listenpost.alert.raised", "angry-customer"),
        ("com.listenpost.tag.added", "overtalk"),
    ]
    assert all("evidence" not in d.data and d.data["source_event"]["id"] == "cap-77" for d in body.decisions)
    # What summarise makes of the marker's decisions is what it makes of the events themselves.
    whole = [json.loads(encode_structured(e)[0]) for e in events]
    from_marker = summarise(data, ATTRIBUTES, [d.model_dump(exclude_none=True) for d in body.decisions], ruleset_version=version)
    assert from_marker == summarise(data, ATTRIBUTES, whole, ruleset_version=version)
    # Same event, same rules: the same marker id (a redelivery publishes it once); new rules, a new one.
    assert evaluated_msg_id("cap-77", version) != evaluated_msg_id("cap-77", "other")


def test_an_emits_author_data_is_not_carried() -> None:
    emitted = new_event("com.acme.crm.flag", "/listenpost/rules", {"big": "x" * 10_000}, id="e-1", subject="flag",
                        extensions={"rulesetver": "rs-1", "inputid": "cap-77"})  # fmt: skip
    marker = evaluated_event(ATTRIBUTES, stream="OUT", sequence=1, ruleset_version="rs-1", decisions=[emitted], source="s")
    [decision] = RulesEvaluated.model_validate(marker.get_data()).decisions
    assert (decision.type, decision.subject, decision.data, decision.inputid) == ("com.acme.crm.flag", "flag", {}, "cap-77")


def test_a_targets_when_picks_calls(rules_dir: Path) -> None:
    data = captioned_data()
    version, events = engine_decisions(rules_dir, ATTRIBUTES, data)
    summary = summarise(data, ATTRIBUTES, [json.loads(encode_structured(e)[0]) for e in events])
    target = {"name": "t", "url": "http://crm.test", "mapping": "generic-rest"}
    assert CrmConfig.model_validate(target).wants(summary)  # no `when`: every call
    assert CrmConfig.model_validate({**target, "when": "'escalations' in summary.queues"}).wants(summary)
    assert not CrmConfig.model_validate({**target, "when": "summary.duration_s > 60.0"}).wants(summary)
    with pytest.raises(CrmMappingError, match=r"crm target 't': cannot map when from `summary.nope`: no such key: nope"):
        CrmConfig.model_validate({**target, "when": "summary.nope"}).wants(summary)
    with pytest.raises(CrmMappingError, match=r"crm target 't': when `summary.callid` is 'c-1042', not a boolean"):
        CrmConfig.model_validate({**target, "when": "summary.callid"}).wants(summary)


async def test_the_idempotency_key_is_sent_unless_the_mapping_sets_one(
    rules_dir: Path, http_server: RecordingServer, tmp_path: Path
) -> None:
    data = captioned_data()
    _, events = engine_decisions(rules_dir, ATTRIBUTES, data)
    summary = summarise(data, ATTRIBUTES, [json.loads(encode_structured(e)[0]) for e in events])
    plain = {"name": "t", "url": http_server.url, "mapping": {"body": {"id": "summary.callid"}}}
    async with httpx.AsyncClient() as client:
        await write(summary, CrmConfig.model_validate(plain), SECRETS, client, idempotency_key="k-1")
        await write(summary, CrmConfig.model_validate({**plain, "mapping": "generic-rest"}), SECRETS, client,
                    mappings=load_mappings(REPO / "crm"), idempotency_key="k-1")  # fmt: skip
    first, second = http_server.requests
    assert first.headers["idempotency-key"] == "k-1"
    assert second.headers["idempotency-key"] == summary.summary_id  # the shipped mapping's own


def test_the_crm_section_of_the_notification_file() -> None:
    config = load(FILES / "good" / "crm.yaml")
    assert [(t.name, t.when) for t in config.crm] == [
        ("sales-crm", None),
        ("escalations-crm", "summary.queues.exists(q, q == 'escalations')"),
    ]
    sales, escalations = config.crm
    assert (str(sales.url), sales.mapping, sales.auth.token_secret) == ("https://crm.example.com/api", "generic-rest", "crm-token")
    assert escalations.url_secret == "escalations-crm-url" and isinstance(escalations.mapping, dict)
    # Without a crm section there are no targets.
    assert load(REPO / "router_rules" / "notifications.yaml").crm == ()


# --- against nats-server, the rules engine and a CRM ----------------------------------------


@dataclass
class Env:
    server: EmbeddedNatsServer
    settings: Settings
    admin: NATS
    tmp: Path
    crm: RecordingServer

    def with_targets(self, targets: str) -> Settings:
        path = self.tmp / "notifications.yaml"
        path.write_text(f"""apiVersion: listenpost/v1
kind: Notifications
route: {{receiver: hook}}
receivers:
  - {{name: hook, type: webhook, url: "{self.crm.url}/hook"}}
crm:
{targets}""")
        update = {**self.settings.notify.model_dump(), "file": path}
        return self.settings.model_copy(update={"notify": NotifySettings.model_validate(update)})

    async def caption(self, event_id: str = "cap-77", **context: Any) -> Any:
        """Publish a captioned event as the Ingress does; returns it."""
        attributes = {k: v for k, v in ATTRIBUTES.items() if k not in ("specversion", "id", "source", "type", "time")}
        event = new_event(AUDIO_CAPTIONED, ATTRIBUTES["source"], captioned_data(**context), id=event_id, extensions=attributes,
                          time=datetime.fromisoformat(ATTRIBUTES["time"]))  # fmt: skip
        await publish_event(self.admin.jetstream(), self.settings.nats.subject("captioned"), event, msg_id=event_id)
        return event

    async def markers(self) -> list[Any]:
        """The evaluated markers stored in LISTENPOST_OUT."""
        js = self.admin.jetstream()
        subject = evaluated_subject(self.settings.nats)
        state = (await js.stream_info(self.settings.nats.out_stream, subjects_filter=subject)).state
        out, seq = [], 0
        for _ in range(sum((state.subjects or {}).values())):
            raw = await js.get_msg(self.settings.nats.out_stream, seq + 1, subject=subject, next=True)
            seq = raw.seq or 0
            out.append(decode(raw.data or b"", raw.headers))
        return out

    async def crm_pending(self) -> int:
        info = await self.admin.jetstream().consumer_info(self.settings.nats.out_stream, self.settings.notify.crm_durable)
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)


@pytest.fixture
def crm_server() -> Iterator[RecordingServer]:
    server = RecordingServer()
    yield server
    server.close()


@pytest.fixture
async def env(tmp_path: Path, rules_dir: Path, crm_server: RecordingServer) -> AsyncIterator[Env]:
    root = tmp_path / "nats"
    with EmbeddedNatsServer(root / "data", secrets_dir=root / "secrets", tls=True, settings=BASE) as server:
        nats = server.client_settings(NatsSettings(ack_wait_s=2.0, max_deliver=5, retry_delay_s=0.2, retry_delay_max_s=1.0))
        notify = NotifySettings(backoff_base_s=0.2, backoff_max_s=0.5, max_attempts=3, max_age_s=120, reload_interval_s=0.2,
                                crm_mappings_dir=REPO / "crm")  # fmt: skip
        rules = RulesSettings(directory=rules_dir, reload_interval_s=60, status_interval_s=60)
        settings = Settings(_env_file=None, nats=nats, notify=notify, rules=rules)
        admin = await connect(nats, role="admin", name="test-crm-admin")
        await provision_everything(admin.jetstream(), settings)
        try:
            yield Env(server, settings, admin, tmp_path, crm_server)
        finally:
            await admin.close()


async def start_engine(settings: Settings) -> Any:
    from services.rules.deployment import RulesEngine

    cls = RulesEngine.func_or_class
    engine = cls.__new__(cls)
    await engine.__init__(settings)
    return engine


async def stop_engine(engine: Any) -> None:
    await engine.__del__()

    class Stopped(type(engine)):
        def __del__(self) -> None:
            pass

    engine.__class__ = Stopped


async def start_writer(settings: Settings) -> tuple[Notifier, NATS]:
    nc = await connect(settings.nats, role="notify", name="test-crm-writer")
    notifier = Notifier(nc.jetstream(), settings, secrets=SECRETS, queue=False, send=False)
    await notifier.start()
    return notifier, nc


SALES = """  - name: sales-crm
    url: "{url}/api"
    mapping: generic-rest
    auth: {{type: bearer, token_secret: crm-token}}
"""


async def test_a_captioned_call_is_written_once_its_rules_are_evaluated(env: Env, rules_dir: Path, memory: MemoryBackend) -> None:
    settings = env.with_targets(
        SALES.format(url=env.crm.url)
        + f"""  - name: vip-only
    url: "{env.crm.url}/vip"
    mapping: generic-rest
    when: "has(summary.context.customer_tier) && summary.context.customer_tier == 'platinum'"
"""
    )
    notifier, nc = await start_writer(settings)
    engine = await start_engine(settings)
    try:
        await env.caption()
        await until(lambda: len(env.crm.requests) >= 1, timeout_s=30)
        await env.caption()  # the same event again (a redelivery past the engine): nothing new
        await until(_idle(env), timeout_s=30)
    finally:
        await stop_engine(engine)
        await notifier.stop(drain_timeout_s=5)
        await nc.close()
    [request] = env.crm.requests
    assert (request.method, request.path) == ("PATCH", f"/api/interactions/{CALLID}")
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    # The summary the writer made is the one the engine's own decisions make.
    version, events = engine_decisions(rules_dir, ATTRIBUTES, captioned_data())
    [marker] = await env.markers()
    assert marker.get_id() == evaluated_msg_id("cap-77", version)
    body = RulesEvaluated.model_validate(marker.get_data())
    assert (body.captioned.id, body.callid, body.ruleset_version) == ("cap-77", CALLID, version)
    assert [d.id for d in body.decisions] == [e.get_id() for e in events if "rule." not in e.get_type()]
    expected = summarise(captioned_data(), ATTRIBUTES, [d.model_dump(exclude_none=True) for d in body.decisions],
                         ruleset_version=version)  # fmt: skip
    assert json.loads(request.body) == expected_body(expected)
    assert request.headers["idempotency-key"] == expected.summary_id
    assert memory.get("listenpost_crm_writes", receiver="sales-crm", outcome="sent") == 1
    assert memory.get("listenpost_crm_writes", receiver="vip-only", outcome="skipped") == 1
    assert len(memory.get("listenpost_crm_write_seconds", receiver="sales-crm")) == 1


def _idle(env: Env) -> Any:
    async def idle() -> bool:
        rules = await env.admin.jetstream().consumer_info(env.settings.nats.out_stream, env.settings.nats.rules_durable)
        return int(rules.num_pending or 0) + int(rules.num_ack_pending or 0) == 0 and await env.crm_pending() == 0

    return idle


async def publish_marker(env: Env, *, event_id: str = "cap-77", **context: Any) -> RulesEvaluated:
    """A captioned event, and the marker as the engine publishes it (without running the engine)."""
    event = await env.caption(event_id, **context)
    js = env.admin.jetstream()
    stored = await js.get_last_msg(env.settings.nats.out_stream, env.settings.nats.subject("captioned"))
    marker = evaluated_event(event.get_attributes(), stream=env.settings.nats.out_stream, sequence=stored.seq or 0,
                             ruleset_version="rs-1", decisions=[], source="/listenpost/rules")  # fmt: skip
    await publish_event(js, evaluated_subject(env.settings.nats), marker, msg_id=marker.get_id())
    return RulesEvaluated.model_validate(marker.get_data())


async def test_500_then_200_is_one_write_with_the_same_idempotency_key(env: Env, memory: MemoryBackend) -> None:
    settings = env.with_targets(f"""  - name: plain
    url: "{env.crm.url}"
    mapping: {{request: {{method: POST, path: /calls}}, body: {{id: summary.callid, summary: summary.caption}}}}
""")
    env.crm.replies = [Reply(500, b"try later")]
    notifier, nc = await start_writer(settings)
    try:
        marker = await publish_marker(env)
        await until(lambda: any(r.status == 200 for r in env.crm.requests), timeout_s=30)
        await until(_crm_idle(env), timeout_s=30)
    finally:
        await notifier.stop(drain_timeout_s=5)
        await nc.close()
    first, second = env.crm.requests
    assert (first.status, second.status) == (500, 200)
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"] == idempotency_key(marker, "plain")
    assert first.body == second.body and json.loads(second.body)["id"] == CALLID
    assert memory.get("listenpost_crm_writes", receiver="plain", outcome="retried") == 1
    assert memory.get("listenpost_crm_writes", receiver="plain", outcome="sent") == 1
    assert await list_dead_letters(env.admin.jetstream(), env.settings) == []
    # What `rules status` and `top` show of the target: a row of type crm.
    assert notifier.crm_writer is not None
    [row] = crm_rows(notifier.config.get(), notifier.crm_writer.stats)
    assert (row.name, row.type, row.sent, row.retried, row.dead_lettered) == ("plain", "crm", 1, 1, 0)
    assert row.last_error is not None and "500" in row.last_error


def _crm_idle(env: Env) -> Any:
    async def idle() -> bool:
        return await env.crm_pending() == 0

    return idle


async def test_a_mapping_failing_on_the_call_is_dead_lettered_with_the_reason_then_replayed(env: Env, memory: MemoryBackend) -> None:
    targets = f"""  - name: strict
    url: "{env.crm.url}"
    mapping: {{body: {{id: summary.callid, tier: summary.context.tier}}}}
"""
    notifier, nc = await start_writer(env.with_targets(targets))
    try:
        await publish_marker(env)
        await until(_crm_idle(env), timeout_s=30)
    finally:
        await notifier.stop(drain_timeout_s=5)
        await nc.close()
    assert env.crm.requests == []  # nothing half-filled was sent
    [letter] = await list_dead_letters(env.admin.jetstream(), env.settings, stage="crm")
    assert letter.stage == "crm" and letter.original_subject == evaluated_subject(env.settings.nats)
    assert letter.reason == (
        "crm target 'strict': the receiver refused it (not worth retrying): crm mapping 'strict (inline)': "
        "cannot map body.tier from `summary.context.tier`: no such key: tier"
    )
    assert memory.get("listenpost_crm_writes", receiver="strict", outcome="dead_lettered") == 1

    # Fixed (the mapping no longer needs a tier), the dead letter is replayed and written once.
    fixed = targets.replace("summary.context.tier", '"has(summary.context.tier) ? summary.context.tier : null"')
    notifier, nc = await start_writer(env.with_targets(fixed))
    operator = await connect(env.settings.nats, role="operator", name="test-crm-operator")
    try:
        report = await replay(operator.jetstream(), env.settings, seq=letter.seq)
        assert report.failed == []
        await until(lambda: len(env.crm.requests) == 1, timeout_s=30)
    finally:
        await operator.close()
        await notifier.stop(drain_timeout_s=5)
        await nc.close()
    assert json.loads(env.crm.requests[0].body) == {"id": CALLID}


async def test_without_crm_targets_markers_are_acked_and_nothing_is_sent(env: Env) -> None:
    path = env.tmp / "plain.yaml"
    shutil.copy(REPO / "router_rules" / "notifications.yaml", path)
    update = {**env.settings.notify.model_dump(), "file": path}
    settings = env.settings.model_copy(update={"notify": NotifySettings.model_validate(update)})
    notifier, nc = await start_writer(settings)
    try:
        await publish_marker(env)
        await until(_crm_idle(env), timeout_s=30)
    finally:
        await notifier.stop(drain_timeout_s=5)
        await nc.close()
    assert env.crm.requests == [] and await list_dead_letters(env.admin.jetstream(), env.settings) == []
