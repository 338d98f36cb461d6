"""Rule evaluation: order, first match wins, continue, shadow, disabled, errors, ids."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from services.rules import (
    ALERT_RAISED,
    ROUTE_DECIDED,
    RULE_FAILED,
    RULE_SHADOW_MATCHED,
    TAG_ADDED,
    RuleError,
    RuleMatch,
    RuleSet,
    evaluate,
    fingerprint,
    load_ruleset,
)

SHIPPED = Path(__file__).parent.parent / "router_rules"
CAPTIONED = "com.listenpost.audio.captioned"
EVENT = {"specversion": "1.0", "id": "evt-1", "source": "/listenpost/captioner", "type": CAPTIONED}


def captioned(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "source_event": {"id": "sub-1", "source": "/crm", "type": "com.listenpost.audio.submitted"},
        "context": {"callid": "c-1", "queue": "billing", "customer_tier": "gold"},
        "audio": {"duration_s": 42.0, "sample_rate": 8000, "channels": 2},
        "windows": [{"index": 0, "start": 0.0, "end": 30.0, "channel": 0, "role": "agent", "caption": "..."}],
        "caption": "A calm agent and a customer; long pauses.",
        "facets": {"emotions": [], "sound_events": [], "languages": ["en"]},
        "acoustics": {"duration_s": 42.0, "silence_ratio": 0.5, "longest_silence_s": 12.0, "channels": []},
        "model": "tiny",
        "engine": "vllm",
        "timings": {},
    }
    data.update(overrides)
    return data


def rules(tmp_path: Path, body: str, name: str = "rules.yaml") -> RuleSet:
    header = "apiVersion: listenpost/v1\nkind: RuleSet\nmetadata: {name: t}\nrules:\n"
    (tmp_path / name).write_text(header + textwrap.indent(textwrap.dedent(body), "  "))
    return load_ruleset(tmp_path)


def rule(rule_id: str, when: str = "true", priority: int = 100, extra: str = "", queue: str | None = None) -> str:
    return f"""
    - id: {rule_id}
      description: {rule_id}
      priority: {priority}
      match: {{types: [{CAPTIONED}]}}
      when: {when!r}
      actions: [{{route: {{queue: {queue or rule_id}}}}}]
    {extra}"""


def routed(evaluation: Any) -> list[str]:
    return [d.data["queue"] for d in evaluation.decisions if d.kind == "route"]


def test_priority_order_and_first_match_wins(tmp_path: Path) -> None:
    ruleset = rules(tmp_path, rule("late", priority=30) + rule("early", priority=10) + rule("middle", priority=20))
    result = evaluate(ruleset, EVENT, captioned())
    assert routed(result) == ["early"]
    assert result.matches == [RuleMatch(rule_id="early", mode="enforce")]


def test_ties_break_by_file_then_position(tmp_path: Path) -> None:
    rules(tmp_path, rule("b-first") + rule("b-second"), name="b.yaml")
    ruleset = rules(tmp_path, rule("a-only", when="false"), name="a.yaml")
    assert [r.id for r in ruleset.rules] == ["a-only", "b-first", "b-second"]
    assert routed(evaluate(ruleset, EVENT, captioned())) == ["b-first"]


def test_continue_lets_later_rules_match(tmp_path: Path) -> None:
    body = rule("one", priority=1, extra="  continue: true") + rule("two", priority=2) + rule("three", priority=3)
    result = evaluate(rules(tmp_path, body), EVENT, captioned())
    assert routed(result) == ["one", "two"]


def test_shadow_is_recorded_without_actions_and_never_stops(tmp_path: Path) -> None:
    body = rule("watch", priority=1, extra="  mode: shadow") + rule("act", priority=2)
    result = evaluate(rules(tmp_path, body), EVENT, captioned())
    assert result.matches == [RuleMatch(rule_id="watch", mode="shadow"), RuleMatch(rule_id="act", mode="enforce")]
    assert [(d.kind, d.rule_id) for d in result.decisions] == [("shadow", "watch"), ("route", "act")]
    shadow = result.decisions[0]
    assert (shadow.type, shadow.subject) == (RULE_SHADOW_MATCHED, "listenpost.rules.shadow")
    assert shadow.data["actions"] == [{"kind": "route", "queue": "watch"}]
    assert [d.rule_id for d in result.actions] == ["act"]


def test_disabled_is_skipped(tmp_path: Path) -> None:
    body = rule("off", priority=1, extra="  mode: disabled") + rule("on", priority=2)
    result = evaluate(rules(tmp_path, body), EVENT, captioned())
    assert routed(result) == ["on"] and [m.rule_id for m in result.matches] == ["on"]


def test_match_filters_type_and_source(tmp_path: Path) -> None:
    body = rule("crm-only", extra="  match: {types: ['com.example.*'], sources: ['/crm/*']}").replace(
        f"      match: {{types: [{CAPTIONED}]}}\n", ""
    )
    ruleset = rules(tmp_path, body)
    assert routed(evaluate(ruleset, EVENT, captioned())) == []
    crm = {"id": "1", "source": "/crm/eu", "type": "com.example.case.updated"}
    assert routed(evaluate(ruleset, crm, {"status": "open"})) == ["crm-only"]
    assert routed(evaluate(ruleset, {**crm, "source": "/billing"}, {})) == []


def test_runtime_error_is_isolated_and_recorded(tmp_path: Path) -> None:
    body = (
        rule("missing-field", priority=1, when="acoustics.no_such_field > 1.0")
        + rule("not-bool", priority=2, when="acoustics.silence_ratio")
        + rule("bad-types", priority=3, when="context.callid > 1")
        + rule("fine", priority=4, when="acoustics.silence_ratio > 0.4")
    )
    result = evaluate(rules(tmp_path, body), EVENT, captioned())
    assert result.errors == [
        RuleError(rule_id="missing-field", message="no such key: no_such_field"),
        RuleError(rule_id="not-bool", message="when returned float 0.5, not a bool"),
        RuleError(
            rule_id="bad-types",
            message="No such overload: the operation is not defined for the given operand types",
        ),
    ]
    assert routed(result) == ["fine"]
    failed = [d for d in result.decisions if d.kind == "error"]
    assert [(d.rule_id, d.type, d.subject) for d in failed] == [
        (rule_id, RULE_FAILED, "listenpost.rules.errors") for rule_id in ("missing-field", "not-bool", "bad-types")
    ]
    assert failed[0].data["error"] == "no such key: no_such_field"


def test_absent_convenience_names_are_empty(tmp_path: Path) -> None:
    body = rule("empty", when='size(facets) == 0 && size(context) == 0 && caption == "" && size(acoustics) == 0')
    crm = {"id": "1", "source": "/crm", "type": CAPTIONED}
    assert routed(evaluate(rules(tmp_path, body), crm, None)) == ["empty"]


def test_event_attributes_and_extensions_are_visible(tmp_path: Path) -> None:
    body = rule("ext", when='event.callid == "c-9" && event.source.startsWith("/listenpost") && data.model == "tiny"')
    result = evaluate(rules(tmp_path, body), {**EVENT, "callid": "c-9", "data": "ignored"}, captioned(context={}))
    assert routed(result) == ["ext"]
    # the extension supplies callid when data.context has none
    assert result.decisions[0].data["callid"] == "c-9"


def test_decisions_of_each_kind(tmp_path: Path) -> None:
    ruleset = load_ruleset(SHIPPED)
    result = evaluate(ruleset, EVENT, captioned(), prefix="acme.lp")
    dead_air = [d for d in result.decisions if d.rule_id == "dead-air"]
    assert [(d.kind, d.type, d.subject) for d in dead_air] == [
        ("route", ROUTE_DECIDED, "acme.lp.routes.quality"),
        ("alert", ALERT_RAISED, "acme.lp.alerts.warning"),
        ("tag", TAG_ADDED, "acme.lp.tags"),
    ]
    alert = dead_air[1]
    assert alert.data == {
        "source_event": {"id": "evt-1", "source": "/listenpost/captioner", "type": CAPTIONED},
        "rule_id": "dead-air",
        "description": "Long silences on the call; send it to quality review.",
        "ruleset_version": ruleset.version,
        "severity": "warning",
        "summary": "Dead air on call c-1",
        "labels": {"team": "qa"},
        "fingerprint": fingerprint("dead-air", {"team": "qa"}),
        "callid": "c-1",
    }
    assert alert.fingerprint == alert.data["fingerprint"] and alert.ruleset_version == ruleset.version
    assert dead_air[2].data["tags"] == ["dead-air"]
    # dead-air continues; the gold customer is routed to priority too
    assert routed(result) == ["quality", "priority"]


def test_prefix_must_be_subject_tokens(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="subject prefix"):
        evaluate(rules(tmp_path, rule("x")), EVENT, captioned(), prefix="bad prefix")


def test_decision_ids_are_deterministic(tmp_path: Path) -> None:
    ruleset = rules(tmp_path, rule("a", extra="  continue: true") + rule("b"))
    first = evaluate(ruleset, EVENT, captioned())
    again = evaluate(ruleset, dict(EVENT), captioned())
    assert [d.id for d in first.decisions] == [d.id for d in again.decisions]
    ids = [d.id for d in first.decisions]
    assert len(ids) == 2 and len(set(ids)) == 2  # different rule -> different id
    assert all(len(i) == 64 and int(i, 16) >= 0 for i in ids)
    other_event = evaluate(ruleset, {**EVENT, "id": "evt-2"}, captioned())
    assert not set(ids) & {d.id for d in other_event.decisions}
    other_source = evaluate(ruleset, {**EVENT, "source": "/elsewhere"}, captioned())
    assert not set(ids) & {d.id for d in other_source.decisions}


def test_decision_ids_differ_per_action_and_version(tmp_path: Path) -> None:
    ruleset = load_ruleset(SHIPPED)
    result = evaluate(ruleset, EVENT, captioned())
    assert len({d.id for d in result.decisions}) == len(result.decisions)
    changed = rules(tmp_path, rule("dead-air", when="acoustics.silence_ratio > 0.4", queue="quality"))
    assert evaluate(changed, EVENT, captioned()).decisions[0].id not in {d.id for d in result.decisions}


def test_alert_fingerprint_ignores_the_event_but_follows_labels() -> None:
    assert fingerprint("r", {"a": "1", "b": "2"}) == fingerprint("r", {"b": "2", "a": "1"})
    assert fingerprint("r", {"a": "1"}) != fingerprint("r", {"a": "2"})
    assert fingerprint("r", {"a": "1"}) != fingerprint("s", {"a": "1"})


def test_templates_render_missing_fields_visibly(tmp_path: Path) -> None:
    body = """
    - id: t
      description: t
      match: {types: [com.listenpost.audio.captioned]}
      when: "true"
      actions:
        - alert:
            severity: info
            summary: "{{ context.callid }} {{ acoustics.silence_ratio }} {{ facets.languages.0 }} {{ context.nope }}"
            labels: {queue: "{{ context.queue }}"}
    """
    [alert] = evaluate(rules(tmp_path, body), EVENT, captioned()).decisions
    assert alert.data["summary"] == "c-1 0.5 en <no value>"
    assert alert.data["labels"] == {"queue": "billing"}
    assert alert.fingerprint == fingerprint("t", {"queue": "billing"})


def test_shipped_rules_on_demo_recording_with_long_silence() -> None:
    data = captioned(context={"callid": "demo-1"})  # no tier, no facets yet
    result = evaluate(load_ruleset(SHIPPED), EVENT, data)
    assert result.errors == []
    assert [(d.kind, d.subject) for d in result.actions] == [
        ("route", "listenpost.routes.quality"),
        ("alert", "listenpost.alerts.warning"),
        ("tag", "listenpost.tags"),
    ]
    assert result.actions[1].data["summary"] == "Dead air on call demo-1"


def test_shipped_rules_angry_customer_escalates() -> None:
    data = captioned(
        facets={"emotions": [{"role": "customer", "label": "anger", "intensity": 0.8}], "sound_events": []},
        acoustics={"silence_ratio": 0.1, "longest_silence_s": 2.0},
        context={"callid": "c-7", "queue": "billing"},
    )
    result = evaluate(load_ruleset(SHIPPED), EVENT, data)
    assert routed(result) == ["escalations"]
    assert result.actions[1].data["summary"] == "Angry customer on call c-7 (billing queue)"
