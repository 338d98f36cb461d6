"""``listenpost rules ...``: lint, test (the shipped rule sets pass), explain, schema, and the
commands that talk to NATS (silence, status, backtest) against a real nats-server."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import nats
import pytest
from typer.testing import CliRunner

from services.cli import app
from services.events.binding import new_event
from services.events.embedded import EmbeddedNatsServer
from services.events.jetstream import provision, publish_event
from services.rules.state import open_bucket
from services.settings import NatsSettings

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "router_rules"
runner = CliRunner()


def rules(*args: str) -> Any:
    return runner.invoke(app, ["rules", *args], catch_exceptions=False)


def test_lint_ok_and_errors(tmp_path: Path) -> None:
    assert rules("lint", str(SHIPPED)).exit_code == 0
    shutil.copytree(REPO / "tests" / "rules_cases" / "bad" / "unknown-field-path", tmp_path / "bad")
    result = rules("lint", str(tmp_path / "bad"))
    assert result.exit_code == 1
    assert "rules.yaml:8:11: rules[0].when: 1:1: unknown field 'silence_ration' of acoustics" in result.output
    assert rules("lint", str(tmp_path / "missing")).exit_code == 2


def test_the_shipped_rule_sets_pass_their_tests() -> None:
    result = rules("test", str(SHIPPED))
    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.output and " 0 failed: ok" in result.output
    for name in ("emotional_test.yaml", "security_test.yaml", "quality_test.yaml", "contact-centre_test.yaml"):
        assert f"PASS {name}" in result.output
    report = json.loads(rules("test", str(SHIPPED), "--json").output)
    assert report["failed"] == 0 and report["tests"] >= 20


def test_failing_and_invalid_test_files_fail_the_command(tmp_path: Path) -> None:
    shutil.copytree(SHIPPED, tmp_path / "r")
    test_file = tmp_path / "r" / "contact-centre_test.yaml"
    test_file.write_text(test_file.read_text().replace("expect: {routes: [priority]}", "expect: {routes: [gold]}", 1))
    (tmp_path / "r" / "typo_test.yaml").write_text("tests:\n  - name: x\n    stepz: []\n")
    result = rules("test", str(tmp_path / "r"))
    assert result.exit_code == 1
    assert "FAIL contact-centre_test.yaml: gold and platinum customers go to the priority queue" in result.output
    assert 'step 2 (event at 0s): routes: expected ["gold"], got [{"queue": "priority", "rule": "gold-tier-priority"}]' in result.output
    assert "typo_test.yaml:3:5: tests[0].stepz: unknown field, did you mean 'steps'?" in result.output
    assert "typo_test.yaml:2:5: tests[0].steps: missing required field" in result.output


def test_explain(tmp_path: Path) -> None:
    event = {
        "specversion": "1.0", "id": "evt-1", "source": "/listenpost", "type": "com.listenpost.audio.captioned",
        "data": {
            "context": {"callid": "c-1", "customer_tier": "gold"},
            "caption": "A calm call.",
            "windows": [{"index": 0, "start": 0.0, "end": 30.0, "channel": 1, "role": "customer", "caption": "calm"}],
            "facets": {
                "emotions": [],
                "sound_events": [{"label": "alarm", "confidence": 0.9, "window": 0, "start": 3.0, "end": 4.0, "span": "beeping"}],
            },
            "acoustics": {"silence_ratio": 0.5, "longest_silence_s": 2.0},
        },
    }  # fmt: skip
    path = tmp_path / "event.json"
    path.write_text(json.dumps(event))
    result = rules("explain", str(path), "--rules", str(SHIPPED))
    assert result.exit_code == 0, result.output
    lines = {line.split()[1]: line for line in result.output.splitlines()[1:] if line.strip() and line.split()[0].isdigit()}
    assert "matched" in lines["break-in-sounds"] and "alert critical: alarm heard on call c-1 at 00:03" in lines["break-in-sounds"]
    assert 'evidence at 00:03: "beeping"' in result.output
    assert 'not matched    sound(["gunshot", "explosion"], 0.5) -> false' in lines["gunshot-or-explosion"]
    assert "matched        route -> quality" in lines["dead-air"]
    assert "not reached" not in lines["gold-tier-priority"] and "matched        route -> priority" in lines["gold-tier-priority"]
    report = json.loads(rules("explain", str(path), "--rules", str(SHIPPED), "--json").output)
    statuses = {r["rule_id"]: r["status"] for r in report["rules"]}
    assert statuses["angry-customer-to-escalations"] == "not matched" and statuses["cancellation-risk"] == "not reached"
    # bare data works too
    path.write_text(json.dumps(event["data"]))
    assert rules("explain", str(path), "--rules", str(SHIPPED)).exit_code == 0


def test_schema_is_current() -> None:
    assert rules("schema", "--output", str(SHIPPED / "rules.schema.json"), "--check").exit_code == 0
    schema = json.loads(rules("schema").output)
    assert schema["title"] == "listenpost RuleSet" and "RuleSpec" in schema["$defs"]


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with EmbeddedNatsServer(tmp_path_factory.mktemp("cli-nats")) as server:

        async def provisioned() -> None:  # as a running service leaves it: silences are audited
            nc = await nats.connect(server.url)
            await provision(nc.jetstream(), NatsSettings(url=server.url))
            await nc.close()

        asyncio.run(provisioned())
        yield server.url


def test_silences_from_the_command_line(nats_url: str) -> None:
    added = rules(
        "silence",
        "add",
        "team=qa",
        "rule=~dead-.*",
        "--duration",
        "2h",
        "--comment",
        "maintenance",
        "--author",
        "me",
        "--nats",
        nats_url,
        "--json",
    )
    assert added.exit_code == 0, added.output
    silence = json.loads(added.output)
    assert [m["op"] for m in silence["matchers"]] == ["=", "=~"]
    listed = json.loads(rules("silence", "list", "--nats", nats_url, "--json").output)
    assert [(s["id"], s["state"]) for s in listed] == [(silence["id"], "active")]
    assert "maintenance" in rules("silence", "list", "--nats", nats_url).output
    assert rules("silence", "expire", silence["id"], "--nats", nats_url).exit_code == 0
    assert json.loads(rules("silence", "list", "--nats", nats_url, "--json").output) == []
    assert len(json.loads(rules("silence", "list", "--all", "--nats", nats_url, "--json").output)) == 1
    assert rules("silence", "expire", "nope", "--nats", nats_url).exit_code == 1
    assert rules("silence", "add", "team", "--nats", nats_url).exit_code == 2


def test_status_from_the_command_line(nats_url: str) -> None:
    assert rules("status", "--nats", nats_url).exit_code == 1  # nothing reported yet

    async def report() -> None:
        nc = await nats.connect(nats_url)
        store = await open_bucket(nc.jetstream(), "LISTENPOST_RULES_STATUS")
        await store.put(
            "status.r1",
            {
                "replica": "r1", "ruleset_version": "abc123", "rules": 3, "files": ["a.yaml"], "origin": "files",
                "loaded_at": 1.0, "last_reload_error": "a.yaml:3:1: broken", "last_reload_error_at": 2.0,
                "consuming": True, "updated_at": 3.0,
                "counters": {"events": 5, "decisions": 4, "rules": {"r": {"errors": 2, "last_error": "no such key: x"}}},
            },
        )  # fmt: skip
        await nc.drain()

    asyncio.run(report())
    result = rules("status", "--nats", nats_url)
    assert result.exit_code == 0
    for text in ("abc123", "a.yaml:3:1: broken", "r: 2 (no such key: x)", "5 / 4"):
        assert text in result.output
    assert json.loads(rules("status", "--nats", nats_url, "--json").output)["engines"][0]["ruleset_version"] == "abc123"


def test_backtest_from_the_command_line(nats_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTENPOST_NATS__SUBJECT_PREFIX", "bt")
    monkeypatch.setenv("LISTENPOST_NATS__OUT_STREAM", "BT_OUT")
    monkeypatch.setenv("LISTENPOST_NATS__IN_STREAM", "BT_IN")
    monkeypatch.setenv("LISTENPOST_NATS__DLQ_STREAM", "BT_DLQ")

    async def history() -> None:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        cfg = NatsSettings(subject_prefix="bt", out_stream="BT_OUT", in_stream="BT_IN", dlq_stream="BT_DLQ")
        await provision(js, cfg)
        data = {
            "context": {"callid": "c-1", "customer_tier": "gold"},
            "acoustics": {"silence_ratio": 0.6, "longest_silence_s": 1.0},
            "facets": {"emotions": [], "sound_events": []},
            "caption": "",
        }
        await publish_event(js, "bt.captioned", new_event("com.listenpost.audio.captioned", "/t", data, id="h1"), msg_id="h1")
        await nc.drain()

    asyncio.run(history())
    result = rules("backtest", "--since", "1h", "--rules", str(SHIPPED), "--nats", nats_url, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["events"] == 1
    assert report["rules"]["dead-air"]["routes"] == {"quality": 1} and report["rules"]["dead-air"]["alerts_raised"] == 1
    assert report["rules"]["gold-tier-priority"]["routes"] == {"priority": 1}
    table = rules("backtest", "--since", "1h", "--rules", str(SHIPPED), "--nats", nats_url)
    assert "backtest of rules" in table.output and "dead-air" in table.output
    assert rules("backtest", "--since", "yesterday", "--nats", nats_url).exit_code == 2
