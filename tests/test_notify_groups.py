"""Aggregation groups with a fixed clock: group_wait, group_interval, repeat_interval (where
deduplication now lives, and is counted), resolved alerts, time intervals and inhibition at send
time. No NATS (the grouper's store and looks are tested in test_notify_delivery.py)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from services.metrics import MemoryBackend
from services.notify.config import NotifyConfig, load
from services.notify.grouper import Grouper, GroupStore
from services.notify.groups import AggregationGroup, due, join_counted, look_at
from services.notify.model import Alert, Notification
from services.rules.decisions import fingerprint
from services.settings import Settings

T0 = datetime(2026, 3, 9, 13, 30, tzinfo=UTC).timestamp()  # a Monday afternoon
FIRING_S = 3600.0

CONFIG = """
apiVersion: listenpost/v1
kind: Notifications
route:
  receiver: leads
  group_by: [rule, queue]
  group_wait: 30s
  group_interval: 5m
  repeat_interval: 1h
  routes:
    - matchers: ['team="qa"']
      receiver: qa
      group_by: [team]
      active_time_intervals: [office-hours]
    - matchers: ['team="security"']
      receiver: pager
      group_by: [callid]
      group_wait: 0s
receivers:
  - {name: leads, type: webhook, url: "http://127.0.0.1:9/leads"}
  - {name: qa, type: slack, url_secret: slack-qa}
  - {name: pager, type: webhook, url: "http://127.0.0.1:9/pager"}
inhibit_rules:
  - source_matchers: ['rule="gunshot"']
    target_matchers: ['rule="screaming"']
    equal: [callid]
time_intervals:
  - name: office-hours
    time_intervals:
      - weekdays: [monday:friday]
        times: [{start_time: "09:00", end_time: "17:00"}]
        location: Europe/London
"""


@pytest.fixture
def config(tmp_path: Path) -> NotifyConfig:
    path = tmp_path / "notifications.yaml"
    path.write_text(CONFIG)
    return load(path)


def alert(rule: str, callid: str, *, queue: str = "billing", team: str = "cx", decision: str = "") -> Alert:
    labels = {"team": team, "queue": queue, "callid": callid}
    return Alert(
        fingerprint=fingerprint(rule, labels),
        labels={**labels, "rule": rule, "severity": "warning"},
        annotations={"summary": f"{rule} on {callid}"},
        starts_at=datetime.fromtimestamp(T0, UTC),
        rule_id=rule,
        decision_id=decision or f"dec-{rule}-{callid}",
        callid=callid,
    )


class Notifier:
    """The groups and what their looks sent, on a clock the test moves."""

    def __init__(self, config: NotifyConfig) -> None:
        self.config = config
        self.groups: dict[str, AggregationGroup] = {}
        self.firing: dict[str, Alert] = {}
        self.deduplicated: Counter[str] = Counter()  # by receiver, as the grouper counts them

    def raise_(self, at: float, *alerts: Alert) -> None:
        joined = join_counted(self.groups, list(alerts), self.config, T0 + at, FIRING_S)
        self.groups.update(joined.groups)
        self.deduplicated.update(joined.deduplicated)
        self.firing.update({a.fingerprint: a for a in alerts})

    def look(self, at: float) -> list[Notification]:
        sent = []
        for group in due(self.groups, T0 + at):
            outcome = look_at(group, self.config, self.firing.values(), T0 + at)
            if outcome.notification is not None:
                sent.append(outcome.notification)
            if outcome.group is None:
                del self.groups[group.key]
            else:
                self.groups[group.key] = outcome.group
        return sent


def told(notifications: list[Notification]) -> list[tuple[str, list[tuple[str | None, str]]]]:
    return [(n.receiver, [(a.callid, a.status) for a in n.alerts]) for n in notifications]


def test_a_group_waits_then_tells_its_alerts_together(config: NotifyConfig) -> None:
    n = Notifier(config)
    n.raise_(0, alert("angry", "c-1"))
    n.raise_(10, alert("angry", "c-2"), alert("angry", "c-3", queue="sales"))
    assert n.look(29) == []  # group_wait (30s) not over
    assert told(n.look(30)) == [("leads", [("c-1", "firing"), ("c-2", "firing")])]
    assert told(n.look(40)) == [("leads", [("c-3", "firing")])]  # its own group: its own wait


def test_the_same_alert_again_is_not_told_again_before_repeat_interval(config: NotifyConfig) -> None:
    """Deduplication: the rules engine raised the alert again (the same call seen again); its
    group already told it, so nothing is sent until repeat_interval (1h) is over."""
    n = Notifier(config)
    n.raise_(0, alert("angry", "c-1"))
    [first] = n.look(30)
    n.raise_(60, alert("angry", "c-1", decision="dec-again"))
    assert [n.look(t) for t in (330, 630, 1830)] == [[], [], []]
    [repeat] = n.look(30 + 3600)
    assert (repeat.seq, first.seq) == (1, 0) and repeat.idempotency_key != first.idempotency_key
    assert told([repeat]) == [("leads", [("c-1", "firing")])]
    assert n.deduplicated == {"leads": 1}  # the raise that made no notification of its own


def test_alerts_raised_again_while_they_fire_are_counted_as_deduplicated_per_receiver(config: NotifyConfig) -> None:
    n = Notifier(config)
    n.raise_(0, alert("angry", "c-1"), alert("angry", "c-1", decision="dec-same-batch"))  # the same alert twice at once
    assert n.deduplicated == {"leads": 1}
    n.raise_(10, alert("angry", "c-1", decision="dec-2"), alert("angry", "c-2"))  # before group_wait: told once
    n.raise_(10, alert("gunshot", "c-9", team="security"), alert("gunshot", "c-9", team="security", decision="dec-3"))
    assert n.deduplicated == {"leads": 2, "pager": 1}
    assert told(n.look(30)) == [("pager", [("c-9", "firing")]), ("leads", [("c-1", "firing"), ("c-2", "firing")])]
    # Once an alert stopped firing (firing_s after it was last raised) it is raised anew, not a duplicate.
    n.raise_(10 + FIRING_S + 1, alert("angry", "c-1", decision="dec-4"))
    assert n.deduplicated == {"leads": 2, "pager": 1}


async def test_the_grouper_counts_deduplicated_alerts_by_receiver(config: NotifyConfig, memory: MemoryBackend) -> None:
    # Joining touches only the store (no KV here): NATS, the file watcher and the firing set are not used.
    unused = cast(Any, None)
    grouper = Grouper(unused, Settings(_env_file=None), config=unused, firing=unused, store=GroupStore())
    assert await grouper.add([alert("angry", "c-1")], config, T0) == 1
    assert memory.total("listenpost_notifications_deduplicated") == 0
    assert await grouper.add([alert("angry", "c-1", decision="dec-2"), alert("angry", "c-2")], config, T0 + 60) == 1
    assert await grouper.add([alert("angry", "c-1", decision="dec-3")], config, T0 + 120) == 1
    assert memory.get("listenpost_notifications_deduplicated", receiver="leads") == 2
    assert memory.total("listenpost_notifications_deduplicated") == 2


def test_a_new_alert_in_a_told_group_waits_for_the_group_interval(config: NotifyConfig) -> None:
    n = Notifier(config)
    n.raise_(0, alert("angry", "c-1"))
    n.look(30)
    n.raise_(40, alert("angry", "c-2"))
    assert n.look(100) == []
    # The notification carries the whole group: the receiver sees every alert still firing.
    assert told(n.look(330)) == [("leads", [("c-1", "firing"), ("c-2", "firing")])]


def test_a_resolved_alert_is_told_once_then_its_group_is_dropped(config: NotifyConfig) -> None:
    n = Notifier(config)
    n.raise_(0, alert("angry", "c-1"))
    n.look(30)
    # It fires FIRING_S after it was last raised; the first look after that tells it resolved.
    assert n.look(FIRING_S - 1) == []  # still firing, already told, repeat_interval not over
    [resolved] = n.look(FIRING_S + 300)
    assert told([resolved]) == [("leads", [("c-1", "resolved")])]
    assert resolved.alerts[0].ends_at == datetime.fromtimestamp(T0 + FIRING_S, UTC)
    assert n.groups == {}


def test_a_receiver_without_send_resolved_is_not_told_of_resolved_alerts(config: NotifyConfig) -> None:
    n = Notifier(config)  # qa is slack: send_resolved is off by default there, as in Alertmanager
    n.raise_(0, alert("dead-air", "c-1", team="qa"))
    assert [x.receiver for x in n.look(30)] == ["qa"]
    assert n.look(FIRING_S + 300) == [] and n.groups == {}


def test_a_muted_route_keeps_its_alerts_and_tells_them_when_the_mute_ends(config: NotifyConfig) -> None:
    """office-hours is 09:00-17:00 in London (UTC+0 in March before the change): raised at
    16:59:45, the group's first look at 17:00:15 is outside it; at 09:00 the next morning the
    alert still fires (raised again overnight) and is told then."""
    n = Notifier(config)
    evening = datetime(2026, 3, 9, 16, 59, 45, tzinfo=UTC).timestamp() - T0
    n.raise_(evening, alert("dead-air", "c-1", team="qa"))
    assert n.look(evening + 30) == []
    n.raise_(evening + 15.5 * 3600, alert("dead-air", "c-1", team="qa"))  # 08:29:45: fires until 09:29:45
    morning = datetime(2026, 3, 10, 9, 0, 5, tzinfo=UTC).timestamp() - T0
    assert n.look(morning - 600) == []
    assert told(n.look(morning)) == [("qa", [("c-1", "firing")])]


def test_office_hours_follow_london_across_the_clock_change(config: NotifyConfig) -> None:
    """After the last Sunday of March London is UTC+1: 08:30 UTC is 09:30 there, inside office hours."""
    n = Notifier(config)
    before = datetime(2026, 3, 27, 8, 30, tzinfo=UTC).timestamp() - T0  # Friday, GMT: 08:30, muted
    n.raise_(before - 30, alert("dead-air", "c-1", team="qa"))
    assert n.look(before) == []
    n2 = Notifier(config)
    after = datetime(2026, 3, 30, 8, 30, tzinfo=UTC).timestamp() - T0  # Monday, BST: 09:30, active
    n2.raise_(after - 30, alert("dead-air", "c-2", team="qa"))
    assert told(n2.look(after)) == [("qa", [("c-2", "firing")])]


def test_inhibition_is_judged_when_the_group_is_looked_at(config: NotifyConfig) -> None:
    n = Notifier(config)
    n.raise_(0, alert("screaming", "c-1", team="security"))
    n.raise_(0, alert("gunshot", "c-1", team="security"))
    sent = n.look(0)  # group_wait 0s on the security route
    assert sorted((x.group_labels["callid"], [a.rule_id for a in x.alerts]) for x in sent) == [("c-1", ["gunshot"])]


def test_a_group_of_a_receiver_gone_from_the_file_is_dropped(config: NotifyConfig, tmp_path: Path) -> None:
    n = Notifier(config)
    n.raise_(0, alert("angry", "c-1"))
    path = tmp_path / "edited.yaml"
    leads = '  - {name: leads, type: webhook, url: "http://127.0.0.1:9/leads"}\n'
    path.write_text(CONFIG.replace("receiver: leads", "receiver: pager").replace(leads, ""))
    n.config = load(path)
    assert n.look(30) == [] and n.groups == {}


def test_a_group_survives_a_round_trip_through_its_store(config: NotifyConfig) -> None:
    n = Notifier(config)
    n.raise_(0, alert("angry", "c-2"), alert("angry", "c-1"))
    n.look(30)
    [group] = n.groups.values()
    again = AggregationGroup.model_validate_json(group.model_dump_json())
    assert again == group and list(again.alerts) == list(group.alerts)  # the order they joined


def test_a_group_erased_of_one_call_is_still_a_group_that_forgets_its_alerts(config: NotifyConfig) -> None:
    """What `listenpost erase` writes back for a group shared by two calls is a group the notifier
    reads (it takes the bucket's version over its own), with nothing left of the erased call:
    not its alert, nor its fingerprint among those told or held back."""
    from services.events.erasure import kv_decision

    n = Notifier(config)
    gone, kept = alert("angry", "c-gone", team="qa"), alert("angry", "c-kept", team="qa")
    n.raise_(0, gone, kept)
    [group] = n.groups.values()
    group = group.model_copy(update={"told_firing": (gone.fingerprint, kept.fingerprint), "held": (gone.fingerprint,)})
    decision, value = kv_decision("group.abc", group.model_dump_json().encode(), "c-gone", ())
    assert decision == "rewrite" and value is not None
    rewritten = AggregationGroup.model_validate_json(value)
    assert list(rewritten.alerts) == [kept.fingerprint]
    assert (rewritten.told_firing, rewritten.held) == ((kept.fingerprint,), ())
    assert gone.fingerprint not in value.decode() and b"c-gone" not in value
    assert rewritten.model_copy(update={"alerts": group.alerts, "told_firing": group.told_firing, "held": group.held}) == group


def with_receiver_intervals(tmp_path: Path, receiver: str, intervals: str) -> NotifyConfig:
    """CONFIG with time intervals on a receiver (not on its route)."""
    path = tmp_path / "receiver-intervals.yaml"
    entry = f'  - {{name: {receiver}, type: webhook, url: "http://127.0.0.1:9/{receiver}"}}\n'
    assert entry in CONFIG
    path.write_text(CONFIG.replace(entry, f'  - {{name: {receiver}, type: webhook, url: "http://127.0.0.1:9/{receiver}", {intervals}}}\n'))
    return load(path)


def test_a_muted_receiver_holds_its_alerts_as_a_muted_route_does(tmp_path: Path) -> None:
    """pager is muted in office hours (its route is not): raised at 13:30 on a Monday in London,
    the alert is held, and told at the first look after 17:00 while it still fires."""
    config = with_receiver_intervals(tmp_path, "pager", "mute_time_intervals: [office-hours]")
    assert config.receivers["pager"].mute_time_intervals == ("office-hours",) and config.unused_time_intervals() == []
    n = Notifier(config)
    n.raise_(0, alert("gunshot", "c-1", team="security"))
    assert n.look(0) == [] and n.look(3000) == []  # group_wait 0s: looked at, muted
    [group] = n.groups.values()
    assert [a.alert.callid for a in group.alerts.values()] == ["c-1"]  # held, not dropped
    n.raise_(3.4 * 3600, alert("gunshot", "c-1", team="security"))  # 16:54: fires until 17:54
    evening = datetime(2026, 3, 9, 17, 0, 5, tzinfo=UTC).timestamp() - T0
    assert told(n.look(evening)) == [("pager", [("c-1", "firing")])]
    # Only that receiver: leads (no intervals) is told in office hours.
    other = Notifier(config)
    other.raise_(0, alert("angry", "c-2"))
    assert [x.receiver for x in other.look(30)] == ["leads"]


def test_an_active_receiver_follows_its_time_zone_across_the_clock_change(tmp_path: Path) -> None:
    """leads is active only in London office hours: 08:30 UTC is 08:30 there on the Friday before
    summer time (held) and 09:30 on the Monday after (told)."""
    config = with_receiver_intervals(tmp_path, "leads", "active_time_intervals: [office-hours]")
    before = datetime(2026, 3, 27, 8, 30, tzinfo=UTC).timestamp() - T0
    n = Notifier(config)
    n.raise_(before - 30, alert("angry", "c-1"))
    assert n.look(before) == []
    after = datetime(2026, 3, 30, 8, 30, tzinfo=UTC).timestamp() - T0
    n2 = Notifier(config)
    n2.raise_(after - 30, alert("angry", "c-2"))
    assert told(n2.look(after)) == [("leads", [("c-2", "firing")])]
