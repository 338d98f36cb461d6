"""The routing tree: which receivers an alert reaches, with Alertmanager's semantics.

The tree is walked depth first from the root. A node matches when all its matchers match the
alert's labels (the root has none). Under a matching node the children are tried in order:
the first child that matches wins, unless it says ``continue: true``, in which case its
siblings are tried too. A matching node none of whose children match is itself a match.
Children inherit their parent's receiver and group settings; time intervals are each node's
own (:mod:`services.notify.config` resolves inheritance when it loads the file).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from services.dsl.matchers import Matcher, matches_all
from services.notify.time_intervals import TimeInterval, any_active

if TYPE_CHECKING:
    from services.notify.config import NotifyConfig, Receiver


@dataclass(frozen=True)
class Route:
    """One node of the routing tree, with its inherited settings resolved."""

    id: str  # its path: "{}" (the root), '{}/{severity="critical"}/0' (the root's first child), ...
    matchers: tuple[Matcher, ...]
    receiver: str
    continue_: bool
    group_by: tuple[str, ...]
    group_by_all: bool  # group_by: ['...']: every label
    group_wait_s: float
    group_interval_s: float
    repeat_interval_s: float
    mute_time_intervals: tuple[str, ...]
    active_time_intervals: tuple[str, ...]
    routes: tuple[Route, ...]
    line: int = 0  # where the node starts in its file


@dataclass(frozen=True)
class RouteMatch:
    """A route an alert reached: who hears about it, and how alerts are grouped there."""

    receiver: str
    path: str  # the route's id: the matchers from the root, with the node's position
    group_by: tuple[str, ...]
    group_by_all: bool
    group_wait_s: float
    group_interval_s: float
    repeat_interval_s: float
    mute_time_intervals: tuple[str, ...]
    active_time_intervals: tuple[str, ...]

    @classmethod
    def of(cls, node: Route) -> RouteMatch:
        return cls(
            receiver=node.receiver,
            path=node.id,
            group_by=node.group_by,
            group_by_all=node.group_by_all,
            group_wait_s=node.group_wait_s,
            group_interval_s=node.group_interval_s,
            repeat_interval_s=node.repeat_interval_s,
            mute_time_intervals=node.mute_time_intervals,
            active_time_intervals=node.active_time_intervals,
        )


def route(config: NotifyConfig, labels: Mapping[str, str]) -> list[RouteMatch]:
    """The routes an alert with ``labels`` reaches, in tree order (never empty: the root catches all)."""
    return [RouteMatch.of(node) for node in match_nodes(config.route, labels)]


def receivers(config: NotifyConfig, labels: Mapping[str, str]) -> list[str]:
    """The receivers an alert reaches, in tree order (as ``amtool config routes test`` prints them)."""
    return [m.receiver for m in route(config, labels)]


def match_nodes(node: Route, labels: Mapping[str, str]) -> list[Route]:
    """Alertmanager's ``Route.Match``: the nodes under (and including) ``node`` that take the alert."""
    if not matches_all(node.matchers, labels):
        return []
    found: list[Route] = []
    for child in node.routes:
        hits = match_nodes(child, labels)
        found.extend(hits)
        if hits and not child.continue_:
            break
    return found or [node]


def group_labels(match: RouteMatch, labels: Mapping[str, str]) -> dict[str, str]:
    """The labels the route groups by that the alert has (all of them with ``group_by: ['...']``)."""
    if match.group_by_all:
        return dict(sorted(labels.items()))
    return {name: labels[name] for name in sorted(match.group_by) if name in labels}


def group_key(match: RouteMatch, labels: Mapping[str, str]) -> str:
    """The aggregation group an alert joins on a route: ``<route id>:{name="value", ...}``."""
    grouped = ", ".join(f"{name}={json.dumps(value)}" for name, value in group_labels(match, labels).items())
    return f"{match.path}:{{{grouped}}}"


# --- time intervals on routes ------------------------------------------------------------


def muted_by(match: RouteMatch, time_intervals: Mapping[str, Sequence[TimeInterval]], at: datetime) -> str | None:
    """Why the route sends nothing at ``at`` (None: it notifies). A route is muted while any of
    its ``mute_time_intervals`` holds; with ``active_time_intervals`` it notifies only while
    one of them holds."""
    return muted_by_intervals(match.mute_time_intervals, match.active_time_intervals, time_intervals, at)


def muted_by_intervals(
    mute: Sequence[str], active: Sequence[str], time_intervals: Mapping[str, Sequence[TimeInterval]], at: datetime
) -> str | None:
    """:func:`muted_by` on interval names; a name the file no longer defines is ignored (an
    aggregation group keeps its route's names until the route is next reached)."""
    for name in mute:
        if name in time_intervals and any_active(time_intervals[name], at):
            return f"muted by {name}"
    known = [name for name in active if name in time_intervals]
    if known and not any(any_active(time_intervals[name], at) for name in known):
        return f"outside {', '.join(known)}"
    return None


def receiver_muted_by(receiver: Receiver, time_intervals: Mapping[str, Sequence[TimeInterval]], at: datetime) -> str | None:
    """Why the receiver takes nothing at ``at`` (None: it does), by its own time intervals: a
    receiver's are a route's, on every route that names it (the route's are judged first)."""
    why = muted_by_intervals(receiver.mute_time_intervals, receiver.active_time_intervals, time_intervals, at)
    return None if why is None else f"receiver {receiver.name} {why}"


def notify_now(match: RouteMatch, time_intervals: Mapping[str, Sequence[TimeInterval]], at: datetime) -> bool:
    """Whether the route notifies at ``at``: not muted, and within its active intervals if it has any."""
    return muted_by(match, time_intervals, at) is None


def route_id(parent: str | None, matchers: Sequence[Matcher], index: int | None) -> str:
    """A node's path, after Alertmanager's route ids: the parent's path, ``/``, this node's
    matchers, ``/``, its position among its siblings (the root is ``{}``)."""
    key = "{" + ",".join(_matcher_text(m) for m in matchers) + "}"
    if parent is None:
        return key
    return f"{parent}/{key}/{index}"


def _matcher_text(m: Matcher) -> str:
    return f"{m.name}{m.op}{json.dumps(m.value)}"
