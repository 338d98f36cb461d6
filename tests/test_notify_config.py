"""The notification file: the good file loads as meant, every bad file fails with its exact messages.

As for the rule files (tests/test_rules_loader.py): one file per kind of mistake under
tests/notify_files/bad/, each error asserted in full (``file:line:column: cause``), so a change
of wording or position is a conscious one. Receiver types are stand-ins
(tests/notify_standins.py); the real receivers' options, good and bad, are checked the same way
in tests/test_notify_receiver_files.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import services.notify.receivers
from services.notify.config import LastGood, NotifyConfigError, check, load, parse
from tests import notify_standins

FILES = Path(__file__).parent / "notify_files"
SHIPPED = Path(__file__).parent.parent / "router_rules" / "notifications.yaml"

BAD = {
    "crm": [
        'bad/crm.yaml:11:11: crm[0].when: unknown CEL function lower',
        "bad/crm.yaml:12:11: crm[1].name: duplicate CRM target name 'sales-crm' (first defined at bad/crm.yaml:8:11)",
        "bad/crm.yaml:14:14: crm[1].mapping: 'Generic_REST' is not a valid mapping name (lower-case letters, digits and '-')",
        'bad/crm.yaml:15:5: crm[2]: set exactly one of url and url_secret',
        'bad/crm.yaml:21:5: crm[3].mapping: inline mapping: body.id: unknown CEL variable summry (known: summary)',
        'bad/crm.yaml:26:11: crm[4].auth.bearer.token_secret: missing required field',
        "bad/crm.yaml:27:5: crm[4].timeout: unknown field, did you mean 'timeout_s'?",
    ],
    "empty-file": [
        'bad/empty-file.yaml:1:1: empty file: expected Notifications (apiVersion, kind, route, receivers)',
    ],
    "grouping": [
        "bad/grouping.yaml:5:13: route.group_by: '...' (every label) stands alone in group_by",
        "bad/grouping.yaml:6:15: route.group_wait: '30 s' is not a duration like 30s, 5m, 1h30m or 250ms",
        "bad/grouping.yaml:9:18: route.routes[0].group_by[0]: 'queue-name' is not a label name ([a-zA-Z_][a-zA-Z0-9_]*)",
        'bad/grouping.yaml:10:23: route.routes[0].group_interval: group_interval cannot be zero',
        'bad/grouping.yaml:11:24: route.routes[0].repeat_interval: repeat_interval cannot be zero',
        'bad/grouping.yaml:12:17: route.routes[0].continue: Input should be a valid boolean',
    ],
    "header": [
        "bad/header.yaml:1:13: apiVersion: Input should be 'listenpost/v1' (got 'listenpost/v2')",
        "bad/header.yaml:2:7: kind: Input should be 'Notifications' (got 'Notification')",
        'bad/header.yaml:8:3: receivers: Input should be a valid list',
        'bad/header.yaml:9:16: inhibit_rules: Input should be a valid list',
        'bad/header.yaml:10:17: time_intervals: Input should be a valid list',
    ],
    "invalid-yaml": [
        (
            "bad/invalid-yaml.yaml:6:10: invalid YAML: expected ',' or ']', but got ':' (while parsing a flow "
            'sequence at line 5, column 13)'
        ),
    ],
    "matchers": [
        (
            "bad/matchers.yaml:6:18: route.routes[0].matchers[0]: matcher 'severity: critical' is not NAME=VALUE, "
            'NAME!=VALUE, NAME=~REGEX or NAME!~REGEX'
        ),
        (
            "bad/matchers.yaml:6:40: route.routes[0].matchers[1]: bad regular expression 'angry-(.*': missing ), "
            'unterminated subpattern at position 6'
        ),
        'bad/matchers.yaml:6:61: route.routes[0].matchers[2]: 7 is not a matcher: write a string like \'severity="critical"\'',
        'bad/matchers.yaml:7:17: route.routes[1].matchers: Input should be a valid list',
        'bad/matchers.yaml:11:5: inhibit_rules[0].target_matchers: missing required field',
        "bad/matchers.yaml:12:13: inhibit_rules[0].equal[0]: 'call-id' is not a label name ([a-zA-Z_][a-zA-Z0-9_]*)",
        'bad/matchers.yaml:13:22: inhibit_rules[1].source_matchers: List should have at least 1 item after validation, not 0',
    ],
    "missing-route": [
        'bad/missing-route.yaml:1:1: route: missing required field',
    ],
    "no-receivers": [
        "bad/no-receivers.yaml:3:19: route.receiver: unknown receiver 'ops' (defined: none)",
        'bad/no-receivers.yaml:4:12: receivers: List should have at least 1 item after validation, not 0',
    ],
    "receiver-intervals": [
        (
            "bad/receiver-intervals.yaml:9:29: receivers[0].active_time_intervals[0]: unknown time interval "
            "'outside-business-hour', did you mean 'outside-business-hours'?"
        ),
        (
            "bad/receiver-intervals.yaml:13:37: receivers[1].mute_time_intervals[1]: unknown time interval "
            "'holidays' (defined: weekends, outside-business-hours)"
        ),
        'bad/receiver-intervals.yaml:17:26: receivers[2].mute_time_intervals: Input should be a valid list',
    ],
    "receivers": [
        "bad/receivers.yaml:7:24: receivers[1].type: unknown receiver type 'slak', did you mean 'slack'?",
        (
            "bad/receivers.yaml:8:25: receivers[2].type: unknown receiver type 'carrier-pigeon' (known: "
            'alertmanager, email, pagerduty, slack, webhook)'
        ),
        'bad/receivers.yaml:9:5: receivers[3].routing_key_secret: missing required field',
        "bad/receivers.yaml:11:5: receivers[3].routing_key: unknown field, did you mean 'routing_key_secret'?",
        'bad/receivers.yaml:14:9: receivers[4].to: List should have at least 1 item after validation, not 0',
        'bad/receivers.yaml:15:5: receivers[5].name: missing required field',
        'bad/receivers.yaml:18:11: receivers[6].type: Input should be a valid string',
    ],
    "references": [
        "bad/references.yaml:7:17: route.routes[0].receiver: unknown receiver 'on-call', did you mean 'oncall'?",
        (
            'bad/references.yaml:8:31: route.routes[0].active_time_intervals[0]: unknown time interval '
            "'outside-business-hour', did you mean 'outside-business-hours'?"
        ),
        "bad/references.yaml:10:17: route.routes[1].receiver: unknown receiver 'quality' (defined: ops, oncall)",
        (
            "bad/references.yaml:11:39: route.routes[1].mute_time_intervals[1]: unknown time interval 'holidays' "
            '(defined: weekends, outside-business-hours)'
        ),
        "bad/references.yaml:15:12: receivers[2].name: duplicate receiver name 'ops' (first defined at bad/references.yaml:13:12)",
        (
            "bad/references.yaml:21:11: time_intervals[2].name: duplicate time interval name 'weekends' (first "
            'defined at bad/references.yaml:17:11)'
        ),
    ],
    "root-route": [
        'bad/root-route.yaml:3:1: route: the root route must name a receiver (its children inherit it)',
        'bad/root-route.yaml:4:3: route.matchers: the root route takes every alert: it has no matchers',
        'bad/root-route.yaml:5:3: route.continue: the root route has no siblings: it takes no continue',
        (
            'bad/root-route.yaml:6:3: route.mute_time_intervals: the root route takes no mute_time_intervals (put '
            'them on a child route)'
        ),
    ],
    "time-intervals": [
        (
            'bad/time-intervals.yaml:14:13: time_intervals[0].time_intervals[0].times[0]: start_time 17:00 is not '
            'before end_time 09:00 (a range across midnight is two ranges, e.g. 22:00-24:00 and 00:00-06:00)'
        ),
        (
            "bad/time-intervals.yaml:15:26: time_intervals[0].time_intervals[0].times[1].start_time: '9:00' is "
            'not a time of day HH:MM from 00:00 to 24:00'
        ),
        (
            "bad/time-intervals.yaml:15:44: time_intervals[0].time_intervals[0].times[1].end_time: '24:01' is not "
            'a time of day HH:MM from 00:00 to 24:00'
        ),
        (
            'bad/time-intervals.yaml:16:13: time_intervals[0].time_intervals[0].times[2]: start_time 24:00 is the '
            'end of the day: a range starts at 23:59 at the latest'
        ),
        (
            "bad/time-intervals.yaml:17:20: time_intervals[0].time_intervals[0].weekdays[0]: 'funday' is not a "
            "weekday, did you mean 'sunday'?"
        ),
        (
            "bad/time-intervals.yaml:17:28: time_intervals[0].time_intervals[0].weekdays[1]: 'friday:monday': "
            "friday comes after monday (weeks run sunday to saturday: write 'friday:saturday' and "
            "'sunday:monday')"
        ),
        (
            "bad/time-intervals.yaml:17:45: time_intervals[0].time_intervals[0].weekdays[2]: 'saturday:sunday': "
            "saturday comes after sunday (weeks run sunday to saturday: write 'saturday' and 'sunday')"
        ),
        (
            "bad/time-intervals.yaml:17:64: time_intervals[0].time_intervals[0].weekdays[3]: 'monday:' is not a "
            'weekday or a range of them, like monday or monday:friday'
        ),
        (
            'bad/time-intervals.yaml:18:19: time_intervals[0].time_intervals[0].location: unknown time zone '
            "'Europe/Londn', did you mean 'Europe/London'?"
        ),
        (
            'bad/time-intervals.yaml:19:25: time_intervals[0].time_intervals[1].days_of_month[0]: 0 is not a day '
            'of the month (1 to 31, or -1 to -31 counting from the end)'
        ),
        (
            "bad/time-intervals.yaml:19:30: time_intervals[0].time_intervals[1].days_of_month[1]: '-1:5': a range "
            'from a day counted from the end cannot end on a day counted from the start'
        ),
        (
            "bad/time-intervals.yaml:19:38: time_intervals[0].time_intervals[1].days_of_month[2]: '10:3': the "
            'first day comes after the last'
        ),
        (
            'bad/time-intervals.yaml:19:46: time_intervals[0].time_intervals[1].days_of_month[3]: 32 is not a day '
            'of the month (1 to 31, or -1 to -31 counting from the end)'
        ),
        (
            "bad/time-intervals.yaml:20:18: time_intervals[0].time_intervals[1].months[0]: 'janury' is not a "
            "month, did you mean 'january'?"
        ),
        (
            "bad/time-intervals.yaml:20:26: time_intervals[0].time_intervals[1].months[1]: 'march:february': "
            'march comes after february (write two ranges)'
        ),
        (
            "bad/time-intervals.yaml:20:44: time_intervals[0].time_intervals[1].months[2]: '13' is not a month "
            '(january to december, or 1 to 12)'
        ),
        (
            "bad/time-intervals.yaml:21:17: time_intervals[0].time_intervals[1].years[0]: '2027:2026': the first "
            'year comes after the last'
        ),
        (
            'bad/time-intervals.yaml:21:30: time_intervals[0].time_intervals[1].years[1]: True is not a year or a '
            'range of them, like 2026 or 2026:2027'
        ),
        (
            "bad/time-intervals.yaml:22:19: time_intervals[0].time_intervals[1].location: 'Local' depends on the "
            'machine: name the zone, e.g. Europe/London'
        ),
        (
            'bad/time-intervals.yaml:24:21: time_intervals[1].time_intervals: List should have at least 1 item '
            'after validation, not 0'
        ),
    ],
    "unknown-field": [
        "bad/unknown-field.yaml:8:7: route.routes[0].contineu: unknown field, did you mean 'continue'?",
        "bad/unknown-field.yaml:9:7: route.routes[1].matcher: unknown field, did you mean 'matchers'?",
        "bad/unknown-field.yaml:18:9: time_intervals[0].time_intervals[0].weekday: unknown field, did you mean 'weekdays'?",
    ],
}


@pytest.fixture(autouse=True)
def stand_ins(monkeypatch: pytest.MonkeyPatch) -> None:
    notify_standins.register(monkeypatch)


@pytest.fixture
def in_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FILES)  # relative paths keep the messages short


def test_every_bad_file_is_listed() -> None:
    assert sorted(p.stem for p in (FILES / "bad").iterdir()) == sorted(BAD)


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_file_fails_with_exact_errors(case: str, in_files: None) -> None:
    with pytest.raises(NotifyConfigError) as caught:
        load(Path("bad") / f"{case}.yaml")
    assert [str(e) for e in caught.value.errors] == BAD[case]
    count = len(BAD[case])
    assert str(caught.value).splitlines() == [f"{count} error{'s' if count > 1 else ''} in notifications:", *BAD[case]]


def test_errors_carry_their_parts(in_files: None) -> None:
    _, errors = check(Path("bad/references.yaml"))
    first = errors[0]
    assert (first.path, first.line, first.column) == (Path("bad/references.yaml"), 7, 17)
    assert first.message == "route.routes[0].receiver: unknown receiver 'on-call', did you mean 'oncall'?"


def test_good_file_loads() -> None:
    config = load(FILES / "good" / "notifications.yaml")
    assert len(config.version) == 12
    root = config.route
    assert (root.id, root.receiver, root.group_by, root.line) == ("{}", "ops-webhook", ("rule", "site"), 5)
    assert (root.group_wait_s, root.group_interval_s, root.repeat_interval_s) == (30.0, 300.0, 4 * 3600.0)
    assert [r.id for r in config.routes()] == [
        "{}",
        '{}/{severity="critical"}/0',
        '{}/{rule=~"qa-.*"}/1',
        '{}/{team="security",site!="lab"}/2',
        '{}/{team="security",site!="lab"}/2/{severity="critical"}/0',
        '{}/{team="security",site!="lab"}/2/{rule!~"test-.*"}/1',
    ]
    pager, qa, security, sec_critical, sec_other = config.route.routes[0], *config.route.routes[1:], *config.route.routes[2].routes
    assert pager.continue_ and pager.active_time_intervals == ("outside-business-hours",) and pager.mute_time_intervals == ()
    assert qa.group_by_all and qa.group_by == () and qa.mute_time_intervals == ("weekends",)
    # Children inherit the receiver and the group settings; time intervals are each node's own.
    assert security.receiver == "ops-webhook" and security.group_wait_s == 0.0 and security.group_by == ("rule", "site")
    assert (sec_critical.receiver, sec_critical.group_wait_s, sec_critical.repeat_interval_s) == ("security-slack", 0.0, 900.0)
    assert sec_other.group_by == ("callid",) and sec_other.repeat_interval_s == 4 * 3600.0
    assert {name: r.type for name, r in config.receivers.items()} == {
        "ops-webhook": "webhook", "oncall-pagerduty": "pagerduty", "qa-email": "email",
        "security-slack": "slack", "spare": "alertmanager",
    }  # fmt: skip
    # Each receiver's options went through its type's model (given `type` when the model names it).
    assert config.receivers["ops-webhook"].config == notify_standins.Webhook(type="webhook", url_secret="ops-webhook")
    assert config.receivers["security-slack"].config == notify_standins.Slack(url_secret="slack-security", channel="#security")
    [rule] = config.inhibit_rules
    assert [str(m) for m in rule.source_matchers] == ["rule=gunshot"] and rule.equal == ("site",)
    assert sorted(config.time_intervals) == ["month-end", "outside-business-hours", "weekends"]
    [weekdays, weekend] = config.time_intervals["outside-business-hours"]
    assert weekdays.times == ((0, 540), (1020, 1440)) and weekdays.weekdays == ((1, 5),) and weekend.weekdays == ((6, 6), (0, 0))
    [month_end] = config.time_intervals["month-end"]
    assert (month_end.days_of_month, month_end.months, month_end.years) == (((-3, -1),), ((1, 6), (12, 12)), ((2026, 2027),))
    assert config.unused_receivers() == ["spare"] and config.unused_time_intervals() == ["month-end"]


def test_unknown_receiver_type_without_any_registered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services.notify.receivers, "RECEIVER_CONFIGS", {})
    path = tmp_path / "n.yaml"
    path.write_text(
        "apiVersion: listenpost/v1\nkind: Notifications\nroute: {receiver: ops}\n"
        "receivers: [{name: ops, type: webhook, url_secret: x}]\n"
    )
    _, errors = check(path)
    assert [e.message for e in errors] == ["receivers[0].type: unknown receiver type 'webhook' (known: none registered)"]


def test_unreadable_files_are_errors_too(tmp_path: Path) -> None:
    _, errors = check(tmp_path / "missing.yaml")
    assert [str(e) for e in errors] == [f"{tmp_path / 'missing.yaml'}:1:1: cannot read the notification file: No such file or directory"]
    (tmp_path / "latin1.yaml").write_bytes(b"kind: Notifications # caf\xe9\n")
    _, errors = check(tmp_path / "latin1.yaml")
    assert [e.message for e in errors] == ["not UTF-8 text: invalid continuation byte at byte 25"]


def test_a_bad_edit_never_replaces_the_last_good_config(tmp_path: Path) -> None:
    path = tmp_path / "notifications.yaml"
    good = (FILES / "good" / "notifications.yaml").read_text()
    path.write_text(good)
    holder = LastGood(path)
    first = holder.reload()
    assert first is not None and holder.errors == []
    path.write_text(good.replace("receiver: qa-email", "receiver: qa-mail"))
    assert holder.reload() is first
    assert [e.message for e in holder.errors] == ["route.routes[1].receiver: unknown receiver 'qa-mail', did you mean 'qa-email'?"]
    path.write_text(good.replace("repeat_interval: 15m", "repeat_interval: 20m"))
    second = holder.reload()
    assert second is not None and second is not first and second.version != first.version and holder.errors == []
    path.unlink()
    assert holder.reload() is second and len(holder.errors) == 1


def test_parse_names_the_file_it_is_given() -> None:
    text = (FILES / "bad" / "root-route.yaml").read_text()
    config, errors = parse(Path("elsewhere.yaml"), text)
    assert config is None and str(errors[0]).startswith("elsewhere.yaml:3:1: route: the root route must name a receiver")


def test_the_shipped_file_is_valid_with_the_real_receivers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # the real registry, not the stand-ins
    config, errors = check(SHIPPED)
    assert errors == []
    assert config is not None and config.unused_receivers() == [] and config.unused_time_intervals() == []
    assert {r.type for r in config.receivers.values()} == {"webhook", "alertmanager", "pagerduty", "slack", "email"}
