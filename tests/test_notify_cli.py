"""``listenpost notify check`` and ``notify routes test``, and ``rules test`` asserting the
receivers an alert reaches; through typer's CliRunner, with stand-in receiver types."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from services.cli import app
from tests import notify_standins

REPO = Path(__file__).resolve().parents[1]
FILES = REPO / "tests" / "notify_files"
GOOD = FILES / "good" / "notifications.yaml"
SHIPPED = REPO / "router_rules"
runner = CliRunner()


@pytest.fixture(autouse=True)
def stand_ins(monkeypatch: pytest.MonkeyPatch) -> None:
    notify_standins.register(monkeypatch)


def cli(*args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


# --- notify routes test ---------------------------------------------------------------------


def test_routes_test_prints_the_receivers_then_a_table() -> None:
    result = cli("notify", "routes", "test", "--file", str(GOOD), "--at", "2026-03-09T13:30:00Z",
                 "severity=critical", 'rule="qa-dead-air"')  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "oncall-pagerduty,qa-email"
    assert lines[1] == "at 2026-03-09T13:30+00:00"
    assert "oncall-pagerduty" in result.output and "outside" in result.output


def test_routes_test_json_says_what_each_route_does_at_a_time() -> None:
    # Monday 13:30 UTC: 09:30 in New York (business hours, so no page), 13:30 in London (QA mail goes).
    result = cli("notify", "routes", "test", "-f", str(GOOD), "--at", "2026-03-09T13:30", "--json",
                 "severity=critical", "rule=qa-dead-air", "site=hq")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["at"] == "2026-03-09T13:30:00+00:00"
    assert report["labels"] == {"severity": "critical", "rule": "qa-dead-air", "site": "hq"}
    assert report["routes"] == [
        {
            "receiver": "oncall-pagerduty",
            "route": '{}/{severity="critical"}/0',
            "group_by": ["rule", "site"],
            "group_key": '{}/{severity="critical"}/0:{rule="qa-dead-air", site="hq"}',
            "timing": "30s / 5m / 4h",
            "mute_time_intervals": [],
            "active_time_intervals": ["outside-business-hours"],
            "muted": "outside outside-business-hours",
        },
        {
            "receiver": "qa-email",
            "route": '{}/{rule=~"qa-.*"}/1',
            "group_by": ["..."],
            "group_key": '{}/{rule=~"qa-.*"}/1:{rule="qa-dead-air", severity="critical", site="hq"}',
            "timing": "30s / 5m / 4h",
            "mute_time_intervals": ["weekends"],
            "active_time_intervals": [],
            "muted": None,
        },
    ]
    # A week before, 13:30 UTC was 08:30 in New York (EST): on-call is paged.
    earlier = json.loads(cli("notify", "routes", "test", "-f", str(GOOD), "--at", "2026-03-02T13:30", "--json",
                             "severity=critical").output)  # fmt: skip
    assert [(r["receiver"], r["muted"]) for r in earlier["routes"]] == [("oncall-pagerduty", None)]


def test_routes_test_says_when_the_receiver_itself_is_muted(tmp_path: Path) -> None:
    # qa-email is active only at month-end on the receiver (its route's own interval is weekends).
    path = tmp_path / "notifications.yaml"
    text = GOOD.read_text().replace("    to: [qa@example.com]\n", "    to: [qa@example.com]\n    active_time_intervals: [month-end]\n")
    path.write_text(text)

    def muted(at: str) -> list[tuple[str, str | None]]:
        result = cli("notify", "routes", "test", "-f", str(path), "--at", at, "--json", "rule=qa-dead-air")
        assert result.exit_code == 0, result.output
        return [(r["receiver"], r["muted"]) for r in json.loads(result.output)["routes"]]

    assert muted("2026-03-09T13:30") == [("qa-email", "receiver qa-email outside month-end")]  # a Monday
    assert muted("2026-01-30T13:30") == [("qa-email", None)]  # a Friday, within month-end


def test_routes_test_verify_receivers() -> None:
    args = ("notify", "routes", "test", "-f", str(GOOD), "severity=critical", "rule=qa-1")
    assert cli(*args, "--verify-receivers", "oncall-pagerduty,qa-email").exit_code == 0
    result = cli(*args, "--verify-receivers", "qa-email,oncall-pagerduty")
    assert result.exit_code == 1
    assert "expected receivers qa-email,oncall-pagerduty, got oncall-pagerduty,qa-email" in result.output


def test_routes_test_uses_the_setting_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTENPOST_NOTIFY__FILE", str(SHIPPED / "notifications.yaml"))
    result = cli("notify", "routes", "test", "team=qa", "rule=dead-air", "severity=warning")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "alertmanager,qa-email"


def test_routes_test_bad_file_and_bad_arguments_exit_2() -> None:
    result = cli("notify", "routes", "test", "-f", str(FILES / "bad" / "references.yaml"), "team=qa")
    assert result.exit_code == 2
    first = "route.routes[0].receiver: unknown receiver 'on-call', did you mean 'oncall'?"
    assert f"{FILES}/bad/references.yaml:7:17: {first}" in result.output
    assert len([line for line in result.output.splitlines() if "references.yaml:" in line]) == 6
    result = cli("notify", "routes", "test", "-f", str(GOOD), "team-name=qa")
    assert result.exit_code == 2 and "'team-name=qa' is not LABEL=VALUE" in result.output
    result = cli("notify", "routes", "test", "-f", str(GOOD), "--at", "yesterday", "team=qa")
    assert result.exit_code == 2 and "Invalid isoformat string: 'yesterday'" in result.output
    assert cli("notify", "routes", "test", "-f", str(FILES / "missing.yaml"), "team=qa").exit_code == 2


# --- notify check ---------------------------------------------------------------------------


def test_check_summarises_a_good_file_and_warns_of_unused_names() -> None:
    result = cli("notify", "check", str(GOOD))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"{GOOD}: ok (version ")
    assert lines[0].endswith(
        "): 6 routes, 5 receivers (alertmanager 1, email 1, pagerduty 1, slack 1, webhook 1), 1 inhibit rule, 3 time intervals"
    )
    assert [line for line in lines[1:] if "needs secret" not in line] == [
        "warning: receiver 'spare' is not used by any route",
        "warning: time interval 'month-end' is not used by any route",
    ]


def test_check_lists_every_error_of_a_bad_file() -> None:
    result = cli("notify", "check", str(FILES / "bad" / "root-route.yaml"))
    assert result.exit_code == 1
    assert [line.split(": ", 1)[1] for line in result.output.splitlines()] == [
        "route: the root route must name a receiver (its children inherit it)",
        "route.matchers: the root route takes every alert: it has no matchers",
        "route.continue: the root route has no siblings: it takes no continue",
        "route.mute_time_intervals: the root route takes no mute_time_intervals (put them on a child route)",
    ]
    assert cli("notify", "check", str(FILES / "missing.yaml")).exit_code == 2


def test_check_the_shipped_file_by_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.undo()  # the real receiver types, which name their secrets
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("LISTENPOST_NOTIFY__FILE", raising=False)
    # Secrets from settings and from a folder of files (a mounted Kubernetes secret): all there, no warning.
    (tmp_path / "smtp-password").write_text("hunter2-smtp\n")
    (tmp_path / "..data").mkdir()  # Kubernetes' own entries are not secrets
    monkeypatch.setenv("LISTENPOST_NOTIFY__SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("LISTENPOST_NOTIFY__SECRETS", json.dumps({
        "ops-webhook": "https://hooks.example.com/ops-0123", "pagerduty-security": "R0UT1NGKEY",
        "slack-security": "https://hooks.slack.com/services/T0/B0/sec", "slack-cx-leads": "https://hooks.slack.com/services/T0/B0/cx",
    }))  # fmt: skip
    result = cli("notify", "check")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("router_rules/notifications.yaml: ok") and "warning" not in result.output

    monkeypatch.setenv("LISTENPOST_NOTIFY__SECRETS", json.dumps({"ops-webhook": "https://hooks.example.com/ops-0123"}))
    result = cli("notify", "check")
    assert result.exit_code == 0, result.output
    assert "warning: receiver 'security-slack' needs secret 'slack-security', which is not configured" in result.output
    assert "ops-webhook', which" not in result.output and "smtp-password', which" not in result.output
    assert "hooks.example.com" not in result.output and "hunter2" not in result.output


# --- rules test: the receivers an alert reaches ------------------------------------------------

RULE_TEST = """
notifications: notifications.yaml
tests:
  - name: an alarm on a call pages security
    steps:
      - event:
          data:
            context: {callid: c-1}
            facets: {sound_events: [{label: alarm, confidence: 0.9, window: 0, start: 1.0, end: 2.0, span: "an alarm"}]}
        expect:
          alerts:
            - {rule: break-in-sounds, receivers: [alertmanager, security-pagerduty, security-slack]}
"""


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "rules"
    directory.mkdir()
    shutil.copy(SHIPPED / "security.yaml", directory)
    shutil.copy(SHIPPED / "notifications.yaml", directory)
    return directory


def test_rule_tests_assert_the_receivers(rules_dir: Path) -> None:
    (rules_dir / "security_test.yaml").write_text(RULE_TEST)
    result = cli("rules", "test", str(rules_dir))
    assert result.exit_code == 0, result.output
    assert "PASS security_test.yaml: an alarm on a call pages security" in result.output


def test_a_wrong_receiver_expectation_fails(rules_dir: Path) -> None:
    (rules_dir / "security_test.yaml").write_text(RULE_TEST.replace("security-pagerduty, ", ""))
    result = cli("rules", "test", str(rules_dir))
    assert result.exit_code == 1
    assert "FAIL security_test.yaml: an alarm on a call pages security" in result.output
    assert '"receivers": ["alertmanager", "security-pagerduty", "security-slack"]' in result.output


def test_a_bad_or_missing_notification_file_is_the_test_files_error(rules_dir: Path) -> None:
    (rules_dir / "security_test.yaml").write_text(RULE_TEST.replace("notifications: notifications.yaml", "notifications: other.yaml"))
    result = cli("rules", "test", str(rules_dir))
    assert result.exit_code == 1
    assert "security_test.yaml: notifications did not load: 1 error in notifications:" in result.output
    assert "other.yaml:1:1: cannot read the notification file: No such file or directory" in result.output


def test_without_the_entry_point_receivers_cannot_be_checked(rules_dir: Path) -> None:
    from services.rules.cli import rules_app

    (rules_dir / "security_test.yaml").write_text(RULE_TEST)
    result = runner.invoke(rules_app, ["test", str(rules_dir)], catch_exceptions=False)
    assert result.exit_code == 1
    assert "alerts expect receivers, but no notification routing is lent here (run `listenpost rules test`)" in result.output


def test_rule_tests_without_receivers_need_no_notification_file(tmp_path: Path) -> None:
    shutil.copytree(SHIPPED, tmp_path / "r")
    (tmp_path / "r" / "notifications.yaml").unlink()
    for test_file in (tmp_path / "r").glob("*_test.yaml"):
        if "receivers:" in test_file.read_text():
            test_file.unlink()
    assert list((tmp_path / "r").glob("*_test.yaml")), "the shipped rules keep a test file without receivers"
    result = cli("rules", "test", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
