"""End to end, on the running service (nats-server, Ray Serve, the RulesEngine deployment):
a rule file edited on disk takes effect without a restart, a broken edit leaves the previous
rules active and shows in `status`, and every decision carries the active ruleset version.

Captioned events are published straight to `<prefix>.captioned`: no captioner needed.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from typer.testing import CliRunner

from services.events.binding import BindingError, decode, event_data_json, new_event
from services.events.connection import connect
from services.events.jetstream import publish_event
from services.settings import Settings

pytestmark = pytest.mark.e2e
CAPTIONED = "com.listenpost.audio.captioned"
ROUTE = "com.listenpost.route.decided"


class Decisions:
    def __init__(self) -> None:
        self.events: list[Any] = []

    async def on_message(self, msg: Any) -> None:
        try:
            self.events.append(decode(msg.data, msg.headers))
        except BindingError:
            pass

    def about(self, input_id: str, type_: str = ROUTE) -> list[Any]:
        return [e for e in self.events if e.get_type() == type_ and e.get_attributes().get("inputid") == input_id]


@pytest.fixture
async def bus(service: Settings) -> AsyncIterator[tuple[NATS, Decisions]]:
    nc = await connect(service.nats, role="admin", name="rules-e2e")
    decisions = Decisions()
    await nc.subscribe(f"{service.nats.subject_prefix}.>", cb=decisions.on_message)
    yield nc, decisions
    await nc.drain()


async def rules_status() -> dict[str, Any]:
    from ray import serve

    handle = serve.get_deployment_handle("RulesEngine", app_name="listenpost")
    return await handle.status.remote()


async def until(check: Any, timeout: float = 20.0, every: float = 0.2) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            result = await check()
            if result:
                return result
            await asyncio.sleep(every)


async def send(nc: NATS, settings: Settings, marker: str) -> str:
    data = {
        "source_event": {"id": "x", "source": "/e2e", "type": "com.listenpost.audio.submitted"},
        "context": {"callid": f"hot-{marker[:8]}", "marker": marker},
        "caption": "A short calm call.",
        "windows": [{"index": 0, "start": 0.0, "end": 5.0, "channel": None, "role": None, "caption": "calm"}],
        "facets": {"emotions": [], "sound_events": [], "languages": ["en"]},
        "acoustics": {
            "duration_s": 5.0,
            "silence_ratio": 0.05,
            "longest_silence_s": 0.5,
            "dead_air_s": 0.0,
            "peak_dbfs": -6.0,
            "channels": [],
        },
    }
    event = new_event(CAPTIONED, "urn:test:rules-e2e", data)
    await publish_event(nc.jetstream(), settings.nats.subject("captioned"), event, msg_id=event.get_id())
    return event.get_id()


def hot_rule(marker: str, queue: str) -> str:
    return f"""apiVersion: listenpost/v1
kind: RuleSet
metadata: {{name: hot, owner: e2e}}
rules:
  - id: hot-route
    description: Added while the service runs.
    priority: 0
    continue: true
    match: {{types: [{CAPTIONED}]}}
    when: has(context.marker) && context.marker == "{marker}"
    actions:
      - route: {{queue: {queue}}}
"""


async def test_rule_edits_take_effect_live_and_broken_edits_keep_the_last_good_rules(
    service: Settings, rules_dir: Path, bus: tuple[NATS, Decisions]
) -> None:
    nc, decisions = bus
    originals = {p.name: p.read_bytes() for p in rules_dir.iterdir() if p.is_file()}
    before = await rules_status()
    marker = uuid.uuid4().hex

    async def routed_to(queue: str, version: str) -> Any:
        """Publish one event and wait for its decisions; the route to `queue`, or None."""
        input_id = await send(nc, service, marker)
        await until(lambda: _ready(decisions, input_id), timeout=15)
        routes = decisions.about(input_id)
        assert all(e.get_attributes()["rulesetver"] == version for e in routes)
        return next((e for e in routes if event_data_json(e)["queue"] == queue), None)

    try:
        # No rule for this marker yet.
        assert before["last_reload_error"] is None
        # 1. A new rule file, written while the service runs, is picked up within seconds.
        (rules_dir / "hot.yaml").write_text(hot_rule(marker, "hot-first"))
        status = await until(lambda: _version_changed(before["ruleset_version"]))
        v2 = status["ruleset_version"]
        assert status["last_reload_error"] is None and "hot.yaml" in status["files"]
        decision = await routed_to("hot-first", v2)
        assert decision is not None
        assert event_data_json(decision)["ruleset_version"] == v2 and event_data_json(decision)["rule_id"] == "hot-route"

        # 2. An edit of that file changes the decision.
        (rules_dir / "hot.yaml").write_text(hot_rule(marker, "hot-second"))
        v3 = (await until(lambda: _version_changed(v2)))["ruleset_version"]
        assert await routed_to("hot-second", v3) is not None

        # 3. A broken edit is rejected with file:line:column; the last good rules stay active.
        broken = hot_rule(marker, "hot-broken").replace('context.marker == "', 'context.marker = "')
        (rules_dir / "hot.yaml").write_text(broken)
        status = await until(lambda: _has_error())
        assert status["ruleset_version"] == v3
        assert f"{rules_dir / 'hot.yaml'}:10:11: rules[0].when: CEL syntax error" in status["last_reload_error"]
        assert await routed_to("hot-second", v3) is not None  # still the previous rules

        # `listenpost rules status` shows the active version and the error (via NATS KV).
        # As an operator configures it: URL, CA and the operator's NKey seed file from the environment.
        env = {
            "LISTENPOST_NATS__URL": service.nats.url or "",
            "LISTENPOST_NATS__TLS_CA_FILE": str(service.nats.tls_ca_file),
            "LISTENPOST_NATS__ROLES__OPERATOR__NKEY_SEED_FILE": str(service.nats.identity("operator").nkey_seed_file),
        }
        args = ["rules", "status", "--json"]
        result = await asyncio.to_thread(CliRunner().invoke, _cli(), args, env=env)  # the CLI runs its own event loop
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        [record] = [r for r in report["engines"] if r["replica"] == status["replica"]]
        assert record["ruleset_version"] == v3 and "CEL syntax error" in record["last_reload_error"]
        # The notifier (on in the test service) reports its receivers beside the engines.
        assert [r["name"] for r in report["notifier"]["receiver_status"]] == ["e2e-webhook"]
    finally:
        for path in rules_dir.iterdir():
            if path.name not in originals:
                path.unlink()
        for name, content in originals.items():
            (rules_dir / name).write_bytes(content)
        # Other tests share the running service: wait until the shipped rules are back.
        restored = await until(lambda: _version_is(before["ruleset_version"]))
        assert restored["last_reload_error"] is None


async def _ready(decisions: Decisions, input_id: str) -> bool:
    # The shipped rules route nothing for this event, so the hot rule's route (or a short
    # wait when no rule matches) tells the evaluation is done.
    if decisions.about(input_id):
        return True
    await asyncio.sleep(1.5)
    return True


async def _version_changed(old: str) -> dict[str, Any] | None:
    status = await rules_status()
    return status if status["ruleset_version"] != old else None


async def _version_is(version: str) -> dict[str, Any] | None:
    status = await rules_status()
    return status if status["ruleset_version"] == version and status["last_reload_error"] is None else None


async def _has_error() -> dict[str, Any] | None:
    status = await rules_status()
    return status if status["last_reload_error"] else None


def _cli() -> Any:
    from services.cli import app

    return app
