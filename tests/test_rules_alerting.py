"""Alert hygiene on the in-memory store: silences, dedup/repeat, rate limits, groups, redelivery,
and the processor's debounce state and loop guard."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

import pytest

from services.rules import Decision, RuleSet, load_ruleset
from services.rules.alerting import Alerting, Matcher, Silences, Suppressed
from services.rules.engine import RulesProcessor
from services.rules.schema import AlertSpec
from services.rules.state import Conflict, MemoryStore, memory_stores, mutate

T0 = 1_700_000_000.0


def alert(rule_id: str = "r", labels: dict[str, str] | None = None, *, event: str = "e1", severity: str = "warning") -> Decision:
    from services.rules.decisions import fingerprint

    labels = labels or {"callid": "c-1"}
    return Decision(
        id=f"{rule_id}-{event}",
        kind="alert",
        type="com.listenpost.alert.raised",
        subject=f"listenpost.alerts.{severity}",
        rule_id=rule_id,
        ruleset_version="v1",
        data={
            "rule_id": rule_id,
            "severity": severity,
            "summary": f"{rule_id} on {labels}",
            "labels": labels,
            "callid": labels.get("callid"),
        },
        fingerprint=fingerprint(rule_id, labels),
        action_index=0,
    )


def spec(**kwargs: Any) -> AlertSpec:
    return AlertSpec.model_validate({"severity": "warning", "summary": "s", "labels": {"callid": "x", "queue": "q"}, **kwargs})


def pipeline() -> Alerting:
    store = MemoryStore()
    return Alerting(store, Silences(MemoryStore(), refresh_s=0.0), prefix="listenpost")


@pytest.mark.parametrize(
    ("text", "labels", "hit"),
    [
        ("team=qa", {"team": "qa"}, True),
        ("team=qa", {"team": "qa2"}, False),
        ("team!=qa", {}, True),
        ("rule=~'angry-.*'", {"rule": "angry-customer"}, True),
        ('rule=~"angry"', {"rule": "angry-customer"}, False),  # anchored, as in Alertmanager
        ("severity!~info|warning", {"severity": "critical"}, True),
        ("callid = c 1", {"callid": "c 1"}, True),
    ],
)
def test_matchers(text: str, labels: dict[str, str], hit: bool) -> None:
    assert Matcher.parse(text).matches(labels) is hit


@pytest.mark.parametrize("text", ["team", "=qa", "team=~(", "9x=1"])
def test_bad_matchers(text: str) -> None:
    with pytest.raises(ValueError):
        Matcher.parse(text)


async def test_silences_add_list_expire() -> None:
    silences = Silences(MemoryStore(), refresh_s=0.0)
    s = await silences.add([Matcher.parse("team=qa")], starts_at=T0 + 10, ends_at=T0 + 100, comment="maintenance", created_by="ops", now=T0)
    assert (s.state(T0), s.state(T0 + 50), s.state(T0 + 100)) == ("pending", "active", "expired")
    assert [x.id for x in await silences.stored()] == [s.id]
    assert await silences.active(T0) == [] and [x.id for x in await silences.active(T0 + 50)] == [s.id]
    expired = await silences.expire(s.id, now=T0 + 60)
    assert expired.ends_at == T0 + 60 and await silences.active(T0 + 61) == []
    with pytest.raises(KeyError):
        await silences.expire("nope")
    with pytest.raises(ValueError):
        await silences.add([Matcher.parse("a=b")], starts_at=T0, ends_at=T0, now=T0)


async def test_silenced_alerts_are_held_back() -> None:
    hygiene = pipeline()
    await hygiene.silences.add([Matcher.parse("callid=c-1"), Matcher.parse("severity=warning")], ends_at=T0 + 60, now=T0)
    held = await hygiene.admit(alert(), spec(), T0 + 1)
    assert isinstance(held, Suppressed) and held.reason == "silenced"
    assert await hygiene.admit(alert(labels={"callid": "c-2"}), spec(), T0 + 1) == alert(labels={"callid": "c-2"})
    assert await hygiene.admit(alert(event="e2"), spec(), T0 + 61) == alert(event="e2")  # silence over


async def test_every_alert_raised_is_a_decision_the_same_one_again_too() -> None:
    """Deduplication is the notifier's (a route's repeat_interval): the rules engine records each
    alert it raises, so the decision stream says what happened, every time it happened."""
    hygiene = pipeline()
    assert await hygiene.admit(alert(event="e1"), spec(), T0) == alert(event="e1")
    assert await hygiene.admit(alert(event="e2"), spec(), T0 + 300) == alert(event="e2")


@pytest.mark.parametrize("setting", ["group_by", "group_wait", "group_interval", "repeat_interval"])
def test_notification_settings_on_an_alert_are_refused_with_where_they_moved(setting: str) -> None:
    value = ["queue"] if setting == "group_by" else "5m"
    with pytest.raises(ValueError, match=f"{setting} moved to the notification routes: .* set {setting} on the route"):
        spec(**{setting: value})


async def test_a_redelivered_event_resends_its_alert() -> None:
    """The same decision (same input event) again is a redelivery, not a repeat: it is sent again
    (JetStream's Nats-Msg-Id dedup drops the copy) so a crash between state and publish loses nothing."""
    hygiene = pipeline()
    s = spec(rate_limit={"max": 1, "per": "1h"})
    assert await hygiene.admit(alert(event="e1"), s, T0) == alert(event="e1")
    assert await hygiene.admit(alert(event="e1"), s, T0 + 5) == alert(event="e1")
    other = await hygiene.admit(alert(labels={"callid": "c-2"}, event="e2"), s, T0 + 6)
    assert isinstance(other, Suppressed) and other.reason == "rate_limited"


async def test_rate_limit_is_a_sliding_window_per_rule() -> None:
    hygiene = pipeline()
    s = spec(rate_limit={"max": 2, "per": "1m"})
    results = [await hygiene.admit(alert(labels={"callid": f"c-{i}"}, event=f"e{i}"), s, T0 + i * 10) for i in range(4)]
    assert [isinstance(r, Suppressed) and r.reason for r in results] == [False, False, "rate_limited", "rate_limited"]
    assert not isinstance(await hygiene.admit(alert(labels={"callid": "c-9"}, event="e9"), s, T0 + 61), Suppressed)
    # another rule has its own budget
    assert not isinstance(await hygiene.admit(alert("other", event="x"), s, T0 + 20), Suppressed)


async def test_two_replicas_racing_on_a_rate_limit_let_one_alert_through() -> None:
    store, silences = MemoryStore(), MemoryStore()
    replicas = [Alerting(store, Silences(silences, refresh_s=0.0), prefix="lp") for _ in range(2)]
    s = spec(rate_limit={"max": 1, "per": "1h"})
    results = await asyncio.gather(*(r.admit(alert(labels={"callid": f"c-{i}"}, event=f"e{i}"), s, T0) for i, r in enumerate(replicas)))
    assert sorted(type(r).__name__ for r in results) == ["Decision", "Suppressed"]


async def test_mutate_retries_lost_compare_and_set() -> None:
    store = MemoryStore()
    await asyncio.gather(*(mutate(store, "k", lambda v: {"n": (v or {}).get("n", 0) + 1}) for _ in range(20)))
    entry = await store.get("k")
    assert entry is not None and entry.value == {"n": 20}

    class Stubborn(MemoryStore):
        async def update(self, key: str, value: dict[str, Any], revision: int) -> int:
            raise Conflict(key)

    stubborn = Stubborn()
    await stubborn.put("k", {"n": 1})
    with pytest.raises(Conflict):
        await mutate(stubborn, "k", lambda v: {"n": 2}, attempts=3)


# --- the processor ------------------------------------------------------------------


def ruleset(tmp_path: Path, body: str) -> RuleSet:
    header = "apiVersion: listenpost/v1\nkind: RuleSet\nmetadata: {name: t, owner: qa}\nrules:\n"
    (tmp_path / "rules.yaml").write_text(header + textwrap.indent(textwrap.dedent(body), "  "))
    return load_ruleset(tmp_path)


ANGRY = """
- id: angry
  description: angry
  match: {types: [com.listenpost.audio.captioned]}
  when: 'emotion("customer", ["anger"], 0.5)'
  for: {windows: 2}
  actions:
    - route: {queue: escalations}
    - alert: {severity: warning, summary: "angry {{ context.callid }}", labels: {callid: "{{ context.callid }}"}}
"""


def event(i: int, callid: str = "c-1", angry: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    emotions = [{"role": "customer", "label": "anger", "intensity": 0.9, "window": i}] if angry else []
    return (
        {"specversion": "1.0", "id": f"e{i}-{callid}", "source": "/s", "type": "com.listenpost.audio.captioned"},
        {
            "context": {"callid": callid},
            "windows": [{"index": i, "start": 10.0 * i, "end": 10.0 * (i + 1), "caption": "x"}],
            "facets": {"emotions": emotions, "sound_events": []},
        },
    )


async def test_processor_keeps_streaks_per_call_in_the_store(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, ANGRY)
    stores = memory_stores()
    processor = RulesProcessor(stores, clock=lambda: T0)
    first = await processor.process(rules, *event(0))
    assert first.publish == [] and await stores.state.keys("streak.") != []
    other_call = await processor.process(rules, *event(1, callid="c-2"))
    assert other_call.publish == []
    second = await processor.process(rules, *event(1))
    assert [d.kind for d in second.publish] == ["route", "alert"]
    # A calm window ends the streak. (Its record is not even read: a later window
    # starts after a gap, so the old streak cannot continue.)
    assert (await processor.process(rules, *event(2, angry=False))).publish == []
    assert (await processor.process(rules, *event(3))).publish == []  # one window again, not three
    # A restarted engine (a new processor on the same store) continues the call.
    restarted = RulesProcessor(stores, clock=lambda: T0)
    assert (await restarted.process(rules, *event(2, callid="c-2"))).publish[0].kind == "route"
    counters = processor.counters.to_json()
    assert counters["events"] == 5 and counters["rules"]["angry"]["matched"] == 1


async def test_processor_drops_rule_loops_and_counts_suppressions(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, ANGRY)
    processor = RulesProcessor(memory_stores(), clock=lambda: T0, max_hops=2)
    attributes, data = event(0)
    skipped = await processor.process(rules, {**attributes, "rulehops": "2"}, data)
    assert skipped.evaluation is None and "rule loop" in (skipped.skipped or "")
    await processor.process(rules, *event(0))
    await processor.process(rules, *event(1))
    await processor.silences.add([Matcher.parse("rule=angry")], ends_at=T0 + 60, now=T0)
    again = await processor.process(rules, {**event(2)[0], "id": "other"}, event(2)[1])
    assert [s.reason for s in again.suppressed] == ["silenced"]
    assert processor.counters.to_json()["rules"]["angry"]["suppressed"] == {"silenced": 1}
    assert processor.counters.looped == 1
