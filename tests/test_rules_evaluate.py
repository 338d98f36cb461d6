"""Rule evaluation: order, first match wins, continue, shadow, disabled, errors, ids,
debounce over windows, evidence for templates, emit, guardrails."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from services.rules import (
    ALERT_RAISED,
    ROUTE_DECIDED,
    RULE_FAILED,
    RULE_SHADOW_MATCHED,
    TAG_ADDED,
    Limits,
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
    header = "apiVersion: listenpost/v1\nkind: RuleSet\nmetadata: {name: t, owner: qa}\nrules:\n"
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
        rule("missing-field", priority=1, when="context.no_such_field > 1.0")
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
        "owner": "qa-team",
        # an alert's own description template replaces the rule's description
        "description": "0.5 of the call is silent; the longest gap is 12 s.",
        "ruleset_version": ruleset.version,
        "severity": "warning",
        "summary": "Dead air on call c-1",
        "labels": {"team": "qa", "callid": "c-1"},
        "fingerprint": fingerprint("dead-air", {"team": "qa", "callid": "c-1"}),
        "callid": "c-1",
    }
    assert alert.fingerprint == alert.data["fingerprint"] and alert.ruleset_version == ruleset.version
    assert alert.action_index == 1
    assert dead_air[0].data["description"] == "Long silences on the call; send it to quality review."
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
        windows=[{"index": 0, "start": 0.0, "end": 30.0, "channel": 1, "role": "customer", "caption": "Shouting."}],
        facets={
            "emotions": [
                {
                    "role": "customer",
                    "label": "anger",
                    "intensity": 0.8,
                    "window": 0,
                    "start": 65.0,
                    "end": 70.0,
                    "span": "Enough!",
                }
            ],
            "sound_events": [],
        },
        acoustics={"silence_ratio": 0.1, "longest_silence_s": 2.0},
        context={"callid": "c-7", "queue": "billing"},
    )
    result = evaluate(load_ruleset(SHIPPED), EVENT, data)
    assert result.errors == []
    assert routed(result) == ["escalations"]
    alert = result.actions[1]
    assert alert.data["summary"] == "Angry customer on call c-7 (billing queue)"
    assert alert.data["description"] == 'At 01:05 the customer said: "Enough!" (anger, intensity 0.8; held over 30 s).'
    assert alert.data["evidence"]["span"] == "Enough!" and alert.data["evidence"]["windows"] == 1


# --- debounce (for:) ---------------------------------------------------------------


def windows(*spans: tuple[float, float], role: str = "customer") -> list[dict[str, Any]]:
    return [
        {"index": i, "start": a, "end": b, "channel": 1, "role": role, "caption": f"window {i}"}
        for i, (a, b) in enumerate(spans)
    ]


def anger(window: int, start: float, intensity: float = 0.9) -> dict[str, Any]:
    return {
        "role": "customer",
        "label": "anger",
        "intensity": intensity,
        "window": window,
        "start": start,
        "end": start + 1,
        "span": f"angry {window}",
    }


DEBOUNCED = 'emotion("customer", ["anger"], 0.6)'


@pytest.mark.parametrize(
    ("spec", "held", "fires"),
    [
        ("{windows: 2}", [0, 1], True),
        ("{windows: 2}", [0, 2], False),  # not consecutive
        ("{windows: 3}", [0, 1], False),
        ("{duration: 25s}", [0, 1], True),  # 2 x 15 s = 30 s
        ("{duration: 25s}", [1], False),
        ("{duration: 15s}", [2], True),
    ],
)
def test_for_counts_consecutive_windows_or_call_time(tmp_path: Path, spec: str, held: list[int], fires: bool) -> None:
    ruleset = rules(tmp_path, rule("angry", when=DEBOUNCED, extra=f"  for: {spec}"))
    data = captioned(
        windows=windows((0, 15), (15, 30), (30, 45)),
        facets={"emotions": [anger(i, 15.0 * i + 2) for i in held], "sound_events": []},
    )
    result = evaluate(ruleset, EVENT, data)
    assert result.errors == []
    assert routed(result) == (["angry"] if fires else [])


def test_for_groups_channels_of_one_span_into_one_window(tmp_path: Path) -> None:
    ruleset = rules(tmp_path, rule("angry", when=DEBOUNCED, extra="  for: {windows: 2}"))
    both_channels = [
        {"index": 0, "start": 0.0, "end": 15.0, "channel": 0, "role": "agent", "caption": "agent 0"},
        {"index": 1, "start": 0.0, "end": 15.0, "channel": 1, "role": "customer", "caption": "customer 0"},
        {"index": 2, "start": 15.0, "end": 30.0, "channel": 0, "role": "agent", "caption": "agent 1"},
        {"index": 3, "start": 15.0, "end": 30.0, "channel": 1, "role": "customer", "caption": "customer 1"},
    ]
    one_span = captioned(windows=both_channels, facets={"emotions": [anger(1, 2.0)], "sound_events": []})
    assert routed(evaluate(ruleset, EVENT, one_span)) == []  # two channels of one span are one window
    two_spans = captioned(windows=both_channels, facets={"emotions": [anger(1, 2.0), anger(3, 16.0)], "sound_events": []})
    result = evaluate(ruleset, EVENT, two_spans)
    assert routed(result) == ["angry"]
    assert result.decisions[0].data["evidence"]["span"] == "angry 1"


def test_for_sees_each_window_caption_and_facets_alone(tmp_path: Path) -> None:
    body = rule("words", when='any_words(caption, ["refund"]) && size(facets.emotions) == 1', extra="  for: {windows: 2}")
    ws = windows((0, 15), (15, 30))
    ws[0]["caption"], ws[1]["caption"] = "wants a refund", "refund again"
    data = captioned(windows=ws, caption="no such word here", facets={"emotions": [anger(0, 1.0), anger(1, 16.0)], "sound_events": []})
    result = evaluate(rules(tmp_path, body), EVENT, data)
    assert routed(result) == ["words"]
    evidence = result.decisions[0].data["evidence"]
    assert (evidence["label"], evidence["caption"], evidence["at"], evidence["windows"]) == ("refund", "wants a refund", "00:00", 2)


def test_for_streak_carries_across_events_and_breaks_on_gaps(tmp_path: Path) -> None:
    ruleset = rules(tmp_path, rule("angry", when=DEBOUNCED, extra="  for: {windows: 3}"))
    first = evaluate(ruleset, EVENT, captioned(windows=windows((0, 15), (15, 30)), facets={"emotions": [anger(0, 1), anger(1, 16)]}))
    assert routed(first) == [] and first.streaks["angry"].windows == 2
    streak = first.streaks["angry"]
    # The next event of the call continues where the last ended: a third window fires.
    nxt = captioned(windows=[{**windows((30, 45))[0], "index": 2}], facets={"emotions": [anger(2, 31)]})
    assert routed(evaluate(ruleset, {**EVENT, "id": "evt-2"}, nxt, streaks={"angry": streak})) == ["angry"]
    # A gap (the next event starts at 60 s) breaks the streak.
    later = captioned(windows=[{**windows((60, 75))[0], "index": 4}], facets={"emotions": [anger(4, 61)]})
    after_gap = evaluate(ruleset, {**EVENT, "id": "evt-3"}, later, streaks={"angry": streak})
    assert routed(after_gap) == [] and after_gap.streaks["angry"].windows == 1
    # A window without anger resets it.
    calm = captioned(windows=[{**windows((30, 45))[0], "index": 2}], facets={"emotions": []})
    assert evaluate(ruleset, EVENT, calm, streaks={"angry": streak}).streaks["angry"].windows == 0


def test_for_counts_events_without_windows(tmp_path: Path) -> None:
    body = rule("crm", when='data.status == "escalated"', extra="  for: {windows: 2}").replace(
        f"{{types: [{CAPTIONED}]}}", "{types: [com.example.crm.case.updated]}"
    )
    ruleset = rules(tmp_path, body)
    crm = {"id": "1", "source": "/crm", "type": "com.example.crm.case.updated", "callid": "c-1"}
    first = evaluate(ruleset, crm, {"status": "escalated"})
    assert routed(first) == [] and first.streaks["crm"].windows == 1
    second = evaluate(ruleset, {**crm, "id": "2"}, {"status": "escalated"}, streaks=first.streaks)
    assert routed(second) == ["crm"]


# --- evidence and templates -----------------------------------------------------------


def test_helpers_record_evidence_for_templates(tmp_path: Path) -> None:
    body = """
    - id: glass
      description: glass
      match: {types: [com.listenpost.audio.captioned]}
      when: 'sound(["glass_breaking"], 0.5) && any_words(caption, ["window"])'
      actions:
        - alert:
            severity: critical
            summary: "{{ match.label }} at {{ match.at }} ({{ match.confidence }}) by rule {{ rule.id }} of {{ rule.owner }}"
            description: '"{{ match.span }}" in window {{ match.window }}, {{ match.start }}-{{ match.end }} s'
    """
    data = captioned(
        caption="Someone smashes a window.",
        facets={
            "emotions": [],
            "sound_events": [
                {
                    "label": "glass_breaking",
                    "confidence": 0.75,
                    "window": 3,
                    "start": 95.5,
                    "end": 96.0,
                    "span": "glass shatters",
                }
            ],
        },
    )
    [alert] = evaluate(rules(tmp_path, body), EVENT, data).decisions
    assert alert.data["summary"] == "glass_breaking at 01:35 (0.75) by rule glass of qa"
    assert alert.data["description"] == '"glass shatters" in window 3, 95.5-96 s'
    assert alert.data["evidence"]["kind"] == "sound"


def test_without_helpers_the_first_matching_window_is_quoted(tmp_path: Path) -> None:
    body = """
    - id: crying
      description: crying
      match: {types: [com.listenpost.audio.captioned]}
      when: 'facets.sound_events.exists(s, s.label == "crying")'
      actions:
        - alert: {severity: info, summary: "crying at {{ match.at }}: {{ match.caption }}"}
    """
    ws = windows((0, 30), (30, 60))
    ws[1]["caption"] = "A child cries in the background."
    data = captioned(windows=ws, facets={"emotions": [], "sound_events": [{"label": "crying", "confidence": 0.9, "window": 1}]})
    [alert] = evaluate(rules(tmp_path, body), EVENT, data).decisions
    assert alert.data["summary"] == "crying at 00:30: A child cries in the background."


def test_emit_renders_data_with_json_types(tmp_path: Path) -> None:
    body = """
    - id: callback
      description: callback
      match: {types: [com.listenpost.audio.captioned]}
      when: "true"
      actions:
        - emit:
            type: com.acme.callback.requested
            subject: rules.emit.crm
            data:
              callid: "{{ context.callid }}"
              silence: "{{ acoustics.silence_ratio }}"
              text: "call {{ context.callid }}: {{ acoustics.silence_ratio }}"
              missing: "{{ context.nope }}"
              nested: {langs: "{{ facets.languages }}", fixed: [1, true, null]}
    """
    [emit] = evaluate(rules(tmp_path, body), EVENT, captioned(), prefix="acme").decisions
    assert (emit.kind, emit.type, emit.subject, emit.rule_id) == ("emit", "com.acme.callback.requested", "acme.rules.emit.crm", "callback")
    assert emit.data == {
        "callid": "c-1", "silence": 0.5, "text": "call c-1: 0.5", "missing": None,
        "nested": {"langs": ["en"], "fixed": [1, True, None]},
    }  # fmt: skip


# --- guardrails ------------------------------------------------------------------------


def test_oversized_inputs_are_capped_and_reported(tmp_path: Path) -> None:
    ruleset = rules(tmp_path, rule("size", when="size(caption) == 10 && size(facets.emotions) == 3"))
    data = captioned(
        caption="x" * 50,
        facets={"emotions": [anger(0, 1.0)] * 5, "sound_events": []},
        windows=windows(*[(i, i + 1) for i in range(5)]),
    )
    result = evaluate(ruleset, EVENT, data, limits=Limits(max_caption_chars=10, max_list_items=3))
    assert routed(result) == ["size"]
    assert set(result.truncated) == {"caption", "windows", "facets.emotions"}
    assert len(data["caption"]) == 50  # the input itself is not modified


def test_time_limits_turn_into_rule_errors(tmp_path: Path) -> None:
    ruleset = rules(tmp_path, rule("a", priority=1, when="false") + rule("b", priority=2, when="false"))
    spent = evaluate(ruleset, EVENT, captioned(), limits=Limits(max_event_ms=-1.0))
    assert [e.rule_id for e in spent.errors] == ["a", "b"]
    assert spent.errors[0].message == "not evaluated: the event's evaluation budget of -1 ms was spent"
    slow = evaluate(ruleset, EVENT, captioned(), limits=Limits(max_rule_ms=-1.0))
    assert [e.message.split(",")[1].strip() for e in slow.errors] == ["over the limit of -1 ms"] * 2


def test_time_limits_count_cpu_time_not_waiting() -> None:
    # The time budget of one evaluation (services.rules.limits.Budget): a limit is crossed when
    # both the wall time and the thread's CPU time are over it, so a descheduled or waiting
    # replica is not a slow rule, and a busy one is, even from a CPU-time sample read earlier.
    from services.rules.limits import _CPU_SAMPLE, Budget

    limits = Limits(max_rule_ms=20.0, max_event_ms=20.0)

    def burn(seconds: float) -> None:
        """Spend ``seconds`` of this thread's CPU time (reading the clock is the work)."""
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            continue

    _CPU_SAMPLE.last = (time.perf_counter() - 60.0, time.thread_time() - 1.0)  # stale: read again
    waiting = Budget(limits)
    assert _CPU_SAMPLE.last[0] == waiting.started
    time.sleep(0.04)
    assert waiting.over_rule(time.perf_counter() - waiting.started) is None
    assert waiting.over_event(time.perf_counter()) is None

    Budget(limits)  # takes a fresh sample; the next clock within 2 ms reuses it
    busy = Budget(limits)
    burn(0.03)
    took = time.perf_counter() - busy.started
    assert busy.over_rule(took) == f"evaluation took {took * 1000:.0f} ms, over the limit of 20 ms"
    assert busy.over_event(time.perf_counter()) == "not evaluated: the event's evaluation budget of 20 ms was spent"


def test_helper_errors_are_rule_errors_not_false(tmp_path: Path) -> None:
    ruleset = rules(
        tmp_path,
        rule("e", priority=1, when='emotion("customer", ["anger"], 0.5)', extra="  continue: true")
        + rule("ok", priority=2),
    )
    broken = captioned(facets={"emotions": [{"role": "customer", "label": "anger", "intensity": "high"}], "sound_events": []})
    result = evaluate(ruleset, EVENT, broken)
    assert result.errors == [RuleError(rule_id="e", message="intensity of emotion 'anger' must be a number, got str")]
    assert routed(result) == ["ok"]
    missing = evaluate(ruleset, EVENT, captioned(facets={}))
    assert [e.message for e in missing.errors] == ["facets.emotions is missing, not a list"]


def test_a_value_cel_cannot_take_fails_every_rule_visibly(tmp_path: Path) -> None:
    ruleset = rules(
        tmp_path,
        rule("a", priority=1, when="size(context) > 0", extra="  continue: true") + rule("b", priority=2, when="true"),
    )
    result = evaluate(ruleset, EVENT, captioned(context={"ids": {1, 2}}))  # a set: not JSON, not CEL
    assert [e.rule_id for e in result.errors] == ["a", "b"]
    assert result.errors[0].message.startswith("event cannot be given to CEL")


def test_cached_hash_prefixes_give_the_reference_ids_and_fingerprints() -> None:
    """Decision ids and fingerprints hash per-rule prefixes once (hashlib copy()): same digests."""
    import hashlib
    import json

    from services.rules.decisions import DecisionBuilder, decision_id

    for rule_id, labels in [("r", {}), ("dead-air", {"team": "qa", "callid": "c-1"}), ('q"é\\', {"ü": "\n", "a": "1"})]:
        reference = json.dumps([rule_id, sorted(labels.items())], separators=(",", ":"))
        assert fingerprint(rule_id, labels) == hashlib.sha256(reference.encode()).hexdigest()
    ruleset = load_ruleset(SHIPPED)
    rule = ruleset.rules[0]
    for event in (EVENT, {**EVENT, "id": "é-2", "source": ""}):
        builder = DecisionBuilder(ruleset.version, event, {}, "listenpost")
        for slot in (0, 3, "shadow", "error"):
            expected = decision_id(rule.id, ruleset.version, str(event["source"]), str(event["id"]), slot)
            assert builder.decision_id(rule, slot) == expected
            # Half over the event, half over the action, each length-prefixed.
            parts = (ruleset.version, str(event["source"]), str(event["id"]))
            event_half = hashlib.sha256("".join(f"{len(p)}:{p};" for p in parts).encode()).hexdigest()[:32]
            action_half = hashlib.sha256(f"{len(rule.id)}:{rule.id};{len(str(slot))}:{slot};".encode()).hexdigest()[:32]
            assert expected == event_half + action_half


def test_limits_come_from_the_rules_settings() -> None:
    from services.settings import RulesSettings

    limits = Limits.from_settings(RulesSettings(max_caption_chars=10, max_list_items=3, max_rule_ms=5, max_event_ms=50))
    assert limits == Limits(max_caption_chars=10, max_list_items=3, max_rule_ms=5.0, max_event_ms=50.0)
