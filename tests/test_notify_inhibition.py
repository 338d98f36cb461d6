"""Inhibition, as Alertmanager has it: source matchers, target matchers, equal labels; an alert
never inhibits itself; a source inhibits only while it fires (a fixed clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.dsl.matchers import Matcher
from services.notify.config import load
from services.notify.inhibition import InhibitRule, alert_inhibited, firing_at, inhibited, inhibiting
from services.notify.model import Alert
from tests import notify_standins

SHIPPED = Path(__file__).parent.parent / "router_rules" / "notifications.yaml"
T0 = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)


def rule(source: list[str], target: list[str], equal: tuple[str, ...] = ()) -> InhibitRule:
    return InhibitRule(tuple(map(Matcher.parse, source)), tuple(map(Matcher.parse, target)), equal)


GUNSHOT = rule(['rule="gunshot"'], ['rule=~"screaming|alarm"'], ("site",))


def test_a_gunshot_inhibits_screaming_and_alarms_on_the_same_site() -> None:
    firing = [{"rule": "gunshot", "site": "hq", "severity": "critical"}]
    assert inhibited({"rule": "screaming", "site": "hq"}, firing, [GUNSHOT])
    assert inhibited({"rule": "alarm", "site": "hq", "severity": "warning"}, firing, [GUNSHOT])
    assert not inhibited({"rule": "screaming", "site": "depot"}, firing, [GUNSHOT])  # another site
    assert not inhibited({"rule": "screamingly-loud", "site": "hq"}, firing, [GUNSHOT])  # anchored regex
    assert not inhibited({"rule": "dead-air", "site": "hq"}, firing, [GUNSHOT])  # not a target
    assert not inhibited({"rule": "screaming", "site": "hq"}, [{"rule": "alarm", "site": "hq"}], [GUNSHOT])  # not a source
    assert not inhibited({"rule": "screaming", "site": "hq"}, [], [GUNSHOT])
    assert not inhibited({"rule": "screaming", "site": "hq"}, firing, [])


def test_equal_labels_both_missing_count_as_equal() -> None:
    assert inhibited({"rule": "screaming"}, [{"rule": "gunshot"}], [GUNSHOT])
    assert not inhibited({"rule": "screaming"}, [{"rule": "gunshot", "site": "hq"}], [GUNSHOT])
    # Without `equal`, any firing source inhibits every target.
    anywhere = rule(['rule="gunshot"'], ['rule="screaming"'])
    assert inhibited({"rule": "screaming", "site": "depot"}, [{"rule": "gunshot", "site": "hq"}], [anywhere])


def test_an_alert_never_inhibits_itself() -> None:
    # Critical mutes warning for the same call; a critical alert matches both sides.
    by_severity = rule(['severity="critical"'], ['severity=~"critical|warning"'], ("callid",))
    critical = {"rule": "gunshot", "severity": "critical", "callid": "c-1"}
    other_critical = {"rule": "explosion", "severity": "critical", "callid": "c-1"}
    warning = {"rule": "screaming", "severity": "warning", "callid": "c-1"}
    assert not inhibited(critical, [critical], [by_severity])
    # Two alerts that match both sides do not mute each other (Alertmanager's two-sided rule).
    assert not inhibited(critical, [critical, other_critical], [by_severity])
    assert not inhibited(other_critical, [critical, other_critical], [by_severity])
    assert inhibited(warning, [critical, warning], [by_severity])


def test_inhibiting_says_which_rule_and_source() -> None:
    other = rule(['rule="fire"'], ['rule="alarm"'])
    source = {"rule": "gunshot", "site": "hq"}
    found = inhibiting({"rule": "alarm", "site": "hq"}, [{"rule": "fire", "site": "x"}, source], [GUNSHOT, other])
    assert found == (GUNSHOT, source)
    assert inhibiting({"rule": "dead-air"}, [source], [GUNSHOT, other]) is None


def alert(fp: str, labels: dict[str, str], *, starts: timedelta = timedelta(0), ends: timedelta | None = None,
          status: str = "firing") -> Alert:  # fmt: skip
    return Alert.model_validate(
        {
            "fingerprint": fp, "status": status, "labels": labels, "starts_at": T0 + starts,
            "ends_at": None if ends is None else T0 + ends, "rule_id": labels["rule"], "decision_id": f"d-{fp}",
        }
    )  # fmt: skip


def test_a_source_inhibits_only_while_it_fires() -> None:
    gunshot = alert("g", {"rule": "gunshot", "site": "hq"}, starts=timedelta(minutes=1), ends=timedelta(minutes=16))
    scream = alert("s", {"rule": "screaming", "site": "hq"})
    rules = [GUNSHOT]
    assert not alert_inhibited(scream, [gunshot], rules, T0)  # not started yet
    assert alert_inhibited(scream, [gunshot], rules, T0 + timedelta(minutes=1))
    assert alert_inhibited(scream, [gunshot], rules, T0 + timedelta(minutes=15, seconds=59))
    assert not alert_inhibited(scream, [gunshot], rules, T0 + timedelta(minutes=16))  # ended
    resolved = gunshot.model_copy(update={"status": "resolved"})
    assert not alert_inhibited(scream, [resolved], rules, T0 + timedelta(minutes=5))
    assert firing_at([gunshot, resolved, scream], T0 + timedelta(minutes=5)) == [gunshot, scream]


def test_the_same_alert_is_not_its_own_source() -> None:
    both = rule(['rule="alarm"'], ['rule="alarm"'])
    alarm = alert("a", {"rule": "alarm"})
    assert not alert_inhibited(alarm, [alarm], [both], T0)


def test_the_shipped_rule_mutes_screaming_and_break_ins_on_the_call_with_a_gunshot(monkeypatch: pytest.MonkeyPatch) -> None:
    notify_standins.register(monkeypatch)
    rules = load(SHIPPED).inhibit_rules
    firing = [{"rule": "gunshot-or-explosion", "severity": "critical", "team": "security", "callid": "c-1"}]
    assert inhibited({"rule": "screaming", "severity": "warning", "team": "security", "callid": "c-1"}, firing, rules)
    assert inhibited({"rule": "break-in-sounds", "severity": "critical", "team": "security", "callid": "c-1"}, firing, rules)
    assert not inhibited({"rule": "screaming", "severity": "warning", "team": "security", "callid": "c-2"}, firing, rules)
    assert not inhibited({"rule": "dead-air", "severity": "warning", "team": "qa", "callid": "c-1"}, firing, rules)
