"""The routing tree, with Alertmanager's semantics: depth first, first matching child wins unless
``continue``, a node none of whose children match is itself the match, settings inherited."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.notify.config import NotifyConfig, load, parse
from services.notify.routing import RouteMatch, group_key, group_labels, receivers, route
from tests import notify_standins

GOOD = Path(__file__).parent / "notify_files" / "good" / "notifications.yaml"
SHIPPED = Path(__file__).parent.parent / "router_rules" / "notifications.yaml"


@pytest.fixture(autouse=True)
def stand_ins(monkeypatch: pytest.MonkeyPatch) -> None:
    notify_standins.register(monkeypatch)


@pytest.fixture
def config() -> NotifyConfig:
    return load(GOOD)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        # No child matches: the root itself.
        ({}, ["ops-webhook"]),
        ({"rule": "dead-air", "severity": "warning"}, ["ops-webhook"]),
        # continue: true on the first child lets the second match too.
        ({"rule": "qa-dead-air", "severity": "critical"}, ["oncall-pagerduty", "qa-email"]),
        # A continue route that matched alone: the root does not catch the alert as well.
        ({"rule": "fire", "severity": "critical"}, ["oncall-pagerduty"]),
        ({"rule": "qa-dead-air"}, ["qa-email"]),
        # Regular expressions are anchored: "xqa-1" is not "qa-.*".
        ({"rule": "xqa-1"}, ["ops-webhook"]),
        # Depth first: the security node's first matching child wins...
        ({"team": "security", "severity": "critical", "rule": "gunshot"}, ["oncall-pagerduty", "security-slack"]),
        ({"team": "security", "severity": "warning", "rule": "screaming"}, ["security-slack"]),
        # ...and when none of its children match, the security node itself (its inherited receiver).
        ({"team": "security", "severity": "warning", "rule": "test-1"}, ["ops-webhook"]),
        # site!="lab": a missing label reads as "", which is not "lab".
        ({"team": "security", "site": "lab", "rule": "screaming"}, ["ops-webhook"]),
    ],
)
def test_receivers(config: NotifyConfig, labels: dict[str, str], expected: list[str]) -> None:
    assert receivers(config, labels) == expected


def test_route_matches_carry_the_inherited_settings(config: NotifyConfig) -> None:
    labels = {"team": "security", "severity": "warning", "rule": "test-1"}
    [security_node] = route(config, labels)
    assert security_node == RouteMatch(
        receiver="ops-webhook",
        path='{}/{team="security",site!="lab"}/2',
        group_by=("rule", "site"),
        group_by_all=False,
        group_wait_s=0.0,
        group_interval_s=300.0,
        repeat_interval_s=4 * 3600.0,
        mute_time_intervals=(),
        active_time_intervals=(),
    )
    [pager, critical] = route(config, {"team": "security", "severity": "critical", "rule": "gunshot"})
    assert pager.active_time_intervals == ("outside-business-hours",) and pager.group_wait_s == 30.0
    assert (critical.path, critical.group_wait_s, critical.repeat_interval_s) == (
        '{}/{team="security",site!="lab"}/2/{severity="critical"}/0',
        0.0,
        900.0,
    )


def test_group_keys(config: NotifyConfig) -> None:
    labels = {"rule": "gunshot", "site": "hq", "callid": "c-1", "severity": "critical"}
    [pager] = route(config, labels)
    assert group_labels(pager, labels) == {"rule": "gunshot", "site": "hq"}
    assert group_key(pager, labels) == '{}/{severity="critical"}/0:{rule="gunshot", site="hq"}'
    # Labels the alert lacks are left out of the key.
    [root] = route(config, {"rule": "dead-air"})
    assert group_key(root, {"rule": "dead-air"}) == '{}:{rule="dead-air"}'
    # group_by: ['...']: every label; two alerts differing in any label are two groups.
    [qa] = route(config, {"rule": "qa-x", "callid": "c-1"})
    assert group_key(qa, {"rule": "qa-x", "callid": "c-1"}) == '{}/{rule=~"qa-.*"}/1:{callid="c-1", rule="qa-x"}'
    assert group_key(qa, {"rule": "qa-x", "callid": "c-2"}) != group_key(qa, {"rule": "qa-x", "callid": "c-1"})
    # The same labels on another route: another group.
    both = {"rule": "qa-x", "severity": "critical"}
    keys = {group_key(m, both) for m in route(config, both)}
    assert len(keys) == 2


TREE = """
apiVersion: listenpost/v1
kind: Notifications
route:
  receiver: root
  routes:
    - matchers: ['a="1"']
      receiver: a
      continue: true
      routes:
        - matchers: ['b="1"']
          receiver: a-b
          continue: true
        - matchers: ['c="1"']
          receiver: a-c
    - matchers: ['a=~"1|2"']
      receiver: a-any
    - matchers: ['a="1"']
      receiver: never           # a-any took every a=1 alert before it
receivers:
  - {name: root, type: webhook, url_secret: x}
  - {name: a, type: webhook, url_secret: x}
  - {name: a-b, type: webhook, url_secret: x}
  - {name: a-c, type: webhook, url_secret: x}
  - {name: a-any, type: webhook, url_secret: x}
  - {name: never, type: webhook, url_secret: x}
"""


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"a": "1"}, ["a", "a-any"]),
        ({"a": "1", "b": "1"}, ["a-b", "a-any"]),
        ({"a": "1", "b": "1", "c": "1"}, ["a-b", "a-c", "a-any"]),
        ({"a": "1", "c": "1"}, ["a-c", "a-any"]),
        ({"a": "2", "b": "1"}, ["a-any"]),
        ({"a": "3"}, ["root"]),
    ],
)
def test_continue_at_every_depth(labels: dict[str, str], expected: list[str]) -> None:
    config, errors = parse(Path("tree.yaml"), TREE)
    assert errors == [] and config is not None
    assert receivers(config, labels) == expected


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"rule": "gunshot-or-explosion", "severity": "critical", "team": "security", "callid": "c-1"},
         ["alertmanager", "security-pagerduty", "security-slack"]),
        ({"rule": "screaming", "severity": "warning", "team": "security", "callid": "c-1"}, ["alertmanager", "security-slack"]),
        ({"rule": "angry-customer-to-escalations", "severity": "warning", "team": "escalations", "queue": "claims"},
         ["alertmanager", "cx-leads-slack", "ops-webhook"]),
        ({"rule": "dead-air", "severity": "warning", "team": "qa"}, ["alertmanager", "qa-email"]),
        ({"rule": "something-new", "severity": "info"}, ["alertmanager", "ops-webhook"]),
    ],
)  # fmt: skip
def test_the_shipped_tree(labels: dict[str, str], expected: list[str]) -> None:
    assert receivers(load(SHIPPED), labels) == expected
