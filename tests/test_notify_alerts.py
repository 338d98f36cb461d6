"""From alert decisions to notifications, without NATS: reading the rules engine's decisions,
routing, inhibition, muted routes, grouping; and the retry policy of the sender."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.notify.alerts import DecisionError, alert_from_decision, alerts_from_decision
from services.notify.config import NotifyConfig, load
from services.notify.delivery import DeliveryPolicy, GiveUp, Retry, backoff_s, next_step
from services.notify.groups import AggregationGroup, due, join_all, look_at
from services.notify.model import Alert, Notification
from services.rules.decisions import ALERT_RAISED, fingerprint

MONDAY = datetime(2026, 3, 9, 13, 30, tzinfo=UTC)
SATURDAY = datetime(2026, 3, 14, 13, 30, tzinfo=UTC)

CONFIG = """
apiVersion: listenpost/v1
kind: Notifications
route:
  receiver: ops
  group_by: [rule]
  routes:
    - matchers: ['team="security"']
      receiver: security
      group_by: [callid]
      continue: true
    - matchers: ['team="qa"']
      receiver: qa
      group_by: [team]
      mute_time_intervals: [weekends]
    - receiver: ops
receivers:
  - {name: ops, type: webhook, url: "http://127.0.0.1:9/ops"}
  - {name: security, type: webhook, url: "http://127.0.0.1:9/security"}
  - {name: qa, type: webhook, url: "http://127.0.0.1:9/qa"}
inhibit_rules:
  - source_matchers: ['rule="gunshot"']
    target_matchers: ['rule=~"screaming|break-in"']
    equal: [callid]
time_intervals:
  - name: weekends
    time_intervals:
      - weekdays: [saturday, sunday]
"""


@pytest.fixture
def config(tmp_path: Path) -> NotifyConfig:
    path = tmp_path / "notifications.yaml"
    path.write_text(CONFIG)
    return load(path)


def decision_data(rule: str, labels: dict[str, str], *, severity: str = "critical", callid: str | None = "c-1") -> dict:
    """An alert decision's data, as services/rules/decisions.py writes it."""
    data = {
        "source_event": {"id": f"in-{rule}", "source": "urn:test", "type": "com.listenpost.audio.captioned"},
        "rule_id": rule, "description": f"{rule} heard", "owner": "cx-ops", "ruleset_version": "rs-1",
        "severity": severity, "summary": f"{rule} on call {callid}", "labels": labels,
        "fingerprint": fingerprint(rule, labels),
        "evidence": {"span": "help, someone is shooting", "at": "00:12"},
    }  # fmt: skip
    if callid is not None:
        data["callid"] = callid
    return data


def attributes(event_id: str = "dec-1") -> dict:
    return {"id": event_id, "type": ALERT_RAISED, "source": "urn:listenpost", "time": MONDAY, "rulesetver": "rs-1",
            "inputid": "in-x"}  # fmt: skip


def alert(rule: str, *, callid: str = "c-1", team: str = "security", event_id: str | None = None) -> Alert:
    labels = {"team": team, "callid": callid}
    return alert_from_decision(attributes(event_id or f"dec-{rule}-{callid}"), decision_data(rule, labels, callid=callid))


# --- reading decisions -------------------------------------------------------------------------


def test_an_alert_decision_becomes_an_alert_with_its_labels_and_links() -> None:
    a = alert_from_decision(attributes(), decision_data("gunshot", {"team": "security"}))
    assert a.labels == {"team": "security", "rule": "gunshot", "severity": "critical"}
    assert a.annotations == {"summary": "gunshot on call c-1", "description": "gunshot heard"}
    assert (a.rule_id, a.ruleset_version, a.decision_id, a.input_id, a.callid) == ("gunshot", "rs-1", "dec-1", "in-gunshot", "c-1")
    assert a.caption_span == "help, someone is shooting"
    assert a.fingerprint == fingerprint("gunshot", {"team": "security"})
    assert (a.status, a.starts_at, a.ends_at) == ("firing", MONDAY, None)


def test_what_is_not_an_alert_decision_is_refused_in_words() -> None:
    with pytest.raises(DecisionError, match="is not 'com.listenpost.alert.raised'"):
        alerts_from_decision({**attributes(), "type": "com.listenpost.route.decided"}, {})
    with pytest.raises(DecisionError, match=r"^not an alert decision: fingerprint: Field required$"):
        alerts_from_decision(attributes(), {k: v for k, v in decision_data("x", {}).items() if k != "fingerprint"})
    with pytest.raises(DecisionError, match="no id"):
        alerts_from_decision({**attributes(), "id": ""}, decision_data("x", {}))


# --- routing, inhibition, muted routes (through the aggregation groups) ------------------------


def notifications_for(
    alerts: Alert | list[Alert], config: NotifyConfig, firing: dict[str, Alert], at: datetime
) -> list[Notification]:
    """What the alerts, raised together at ``at``, make at their groups' first look (group_wait
    is 30 s by default: the look is then), in tree order."""
    batch = [alerts] if isinstance(alerts, Alert) else alerts
    groups = join_all({}, batch, config, at.timestamp(), 3600.0)
    looks = [look_at(g, config, firing.values(), at.timestamp() + 30) for g in due(groups, at.timestamp() + 30)]
    return sorted((f.notification for f in looks if f.notification is not None), key=lambda n: _order(groups, n))


def _order(groups: dict[str, AggregationGroup], n: Notification) -> int:
    return list(groups).index(n.group_key)


def test_one_notification_per_matched_receiver_with_the_routes_group(config: NotifyConfig) -> None:
    notifications = notifications_for(alert("gunshot"), config, {}, MONDAY)
    assert [(n.receiver, n.group_key, n.group_labels) for n in notifications] == [
        ("security", '{}/{team="security"}/0:{callid="c-1"}', {"callid": "c-1"}),
        ("ops", "{}/{}/2:{rule=\"gunshot\"}", {"rule": "gunshot"}),
    ]
    assert all(n.created_at == MONDAY + timedelta(seconds=30) and len(n.alerts) == 1 for n in notifications)


def test_a_firing_source_inhibits_its_targets_on_the_same_call_only(config: NotifyConfig) -> None:
    gunshot = alert("gunshot")
    firing = {gunshot.fingerprint: gunshot}
    assert notifications_for(alert("screaming"), config, firing, MONDAY) == []
    assert notifications_for(alert("break-in"), config, firing, MONDAY) == []
    assert [n.receiver for n in notifications_for(alert("screaming", callid="c-2"), config, firing, MONDAY)] == ["security", "ops"]
    assert len(notifications_for(alert("dead-air"), config, firing, MONDAY)) == 2  # not a target
    # The source itself is not inhibited by itself, and an alert that has not started inhibits nothing.
    assert len(notifications_for(gunshot, config, firing, MONDAY)) == 2
    assert len(notifications_for(alert("screaming"), config, firing, MONDAY - timedelta(seconds=31))) == 2
    groups = join_all({}, [alert("screaming")], config, MONDAY.timestamp(), 3600.0).values()
    looks = [look_at(g, config, firing.values(), MONDAY.timestamp() + 30) for g in groups]
    assert {(look.notification, look.reason, look.held_back, look.held_reason) for look in looks} == {
        (None, "all inhibited", (alert("screaming").fingerprint,), "inhibited")
    }


def test_a_muted_route_sends_nothing_and_stops_its_siblings(config: NotifyConfig) -> None:
    qa = alert("dead-air", team="qa")
    assert [(n.receiver, n.group_labels) for n in notifications_for(qa, config, {}, MONDAY)] == [("qa", {"team": "qa"})]
    # At the weekend the qa route is muted; it still matched, so the catch-all does not take it.
    assert notifications_for(qa, config, {}, SATURDAY) == []
    [group] = join_all({}, [qa], config, SATURDAY.timestamp(), 3600.0).values()
    assert look_at(group, config, [], SATURDAY.timestamp() + 30).reason == "muted by weekends"


def test_alerts_raised_together_that_share_a_receiver_and_group_are_one_notification(config: NotifyConfig) -> None:
    a, b = alert("dead-air", team="qa", callid="c-1"), alert("dead-air", team="qa", callid="c-2")
    [notification] = notifications_for([a, b], config, {}, MONDAY)
    assert (notification.receiver, [x.callid for x in notification.alerts]) == ("qa", ["c-1", "c-2"])
    # ...and the same alert twice is told once.
    [once] = notifications_for([a, a], config, {}, MONDAY)
    assert len(once.alerts) == 1


# --- the retry policy --------------------------------------------------------------------------

POLICY = DeliveryPolicy(max_attempts=5, max_age_s=600, backoff_base_s=2, backoff_max_s=30, retry_after_max_s=120)


def test_backoff_doubles_up_to_its_ceiling_with_equal_jitter() -> None:
    assert [backoff_s(n, POLICY, rand=lambda: 1.0) for n in (1, 2, 3, 4, 5, 6)] == [2, 4, 8, 16, 30, 30]
    assert [backoff_s(n, POLICY, rand=lambda: 0.0) for n in (1, 2, 3)] == [1, 2, 4]  # never below half


def test_retry_after_is_honoured_when_longer_than_the_backoff() -> None:
    step = next_step(retryable=True, retry_after_s=45, attempts=1, age_s=0, policy=POLICY, rand=lambda: 1.0)
    assert step == Retry(45)
    assert next_step(retryable=True, retry_after_s=1, attempts=3, age_s=0, policy=POLICY, rand=lambda: 1.0) == Retry(8)


def test_giving_up_is_said_in_words() -> None:
    def step(**kw: object) -> Retry | GiveUp:
        args: dict = {"retryable": True, "retry_after_s": None, "attempts": 1, "age_s": 0.0, "policy": POLICY, "rand": lambda: 1.0}
        return next_step(**{**args, **kw})

    assert step(retryable=False) == GiveUp("the receiver refused it (not worth retrying)")
    assert step(attempts=5) == GiveUp("gave up after 5 attempts (notify.max_attempts)")
    assert step(retry_after_s=121) == GiveUp(
        "the receiver asked to wait 121 s (Retry-After), longer than notify.retry_after_max_s (120 s)"
    )
    assert step(age_s=599) == GiveUp(
        "not delivered within notify.max_age_s (600 s) of being queued: the next attempt would come 601 s after"
    )
    assert step(age_s=100) == Retry(2)
