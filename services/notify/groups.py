"""Aggregation groups, as Alertmanager has them: pure functions on plain data, no I/O.

The routes of the notification file own every notification timing (one place for each):

- ``group_by``: an alert joins, on each route it reaches, the group of alerts with the same
  values of those labels (:func:`services.notify.routing.group_key`);
- ``group_wait``: a new group waits this long before its first notification, so alerts raised
  together are told together;
- ``group_interval``: after that, the group is looked at every interval, and notified when it
  has alerts its receiver has not been told of (new ones, or ones that resolved);
- ``repeat_interval``: a group whose alerts are unchanged is re-sent only this long after it was
  last sent. This is where deduplication happens: the same alert raised again (the same
  fingerprint) while it fires changes nothing, so it is not sent again before then
  (:func:`join_counted` says how many alerts were so deduplicated, for the shell to count).

An alert fires from when it is raised until ``firing_s`` after it was last raised (decisions are
events: nothing says when the thing they describe ended). When it stops it is *resolved*, and
is told as resolved once to receivers with ``send_resolved``, then leaves its group; a group with
no alerts left is dropped.

At each look (:func:`flush`) inhibited alerts are left out, and a route muted by its time
intervals sends nothing (as Alertmanager's notification pipeline does at send time): a muted
group's alerts that still fire when the mute ends are sent then.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.notify.inhibition import alert_inhibited
from services.notify.model import Alert, Notification
from services.notify.routing import RouteMatch, group_key, group_labels, muted_by_intervals, receiver_muted_by, route

if TYPE_CHECKING:
    from services.notify.config import NotifyConfig

__all__ = [
    "AggregationGroup", "Flush", "GroupedAlert", "Joined", "due", "flush", "is_due", "is_firing_in", "join", "join_all",
    "join_counted", "look_at",
]  # fmt: skip


class GroupedAlert(BaseModel):
    """An alert in a group, and until when it fires (epoch seconds)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    alert: Alert
    until: float


class AggregationGroup(BaseModel):
    """One route's group of alerts for one receiver: what has been told, and when to look next."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str = Field(description="The route's id and the group's label values (routing.group_key).")
    receiver: str
    labels: dict[str, str] = Field(default_factory=dict)
    alerts: dict[str, GroupedAlert] = Field(default_factory=dict, description="By fingerprint.")
    mute_time_intervals: tuple[str, ...] = ()
    active_time_intervals: tuple[str, ...] = ()
    group_interval_s: float
    repeat_interval_s: float
    created_at: float
    next_flush_at: float
    last_sent_at: float | None = None
    told_firing: tuple[str, ...] = Field(default=(), description="Fingerprints the last notification told as firing.")
    seq: int = Field(default=0, description="Notifications sent: part of each one's idempotency key.")
    held: tuple[str, ...] = Field(default=(), description="Fingerprints held back (muted, inhibited) and counted so.")


def join(group: AggregationGroup | None, alert: Alert, match: RouteMatch, now: float, firing_s: float) -> AggregationGroup:
    """``group`` (None: a new one) with ``alert`` in it, firing until ``now + firing_s``.

    An alert already in the group keeps its first ``starts_at`` and fires longer; the group's
    timings are the route's as it is now (an edited file applies to the next look)."""
    until = now + firing_s
    if group is None:
        group = AggregationGroup(
            key=group_key(match, alert.labels),
            receiver=match.receiver,
            labels=group_labels(match, alert.labels),
            group_interval_s=match.group_interval_s,
            repeat_interval_s=match.repeat_interval_s,
            created_at=now,
            next_flush_at=now + match.group_wait_s,
        )
    if is_firing_in(group, alert, now):
        alert = alert.model_copy(update={"starts_at": group.alerts[alert.fingerprint].alert.starts_at})
    # A group that told everything waits for its interval before telling a new alert.
    next_flush_at = group.next_flush_at
    if group.last_sent_at is not None and alert.fingerprint not in group.told_firing:
        next_flush_at = min(next_flush_at, max(now, group.last_sent_at + match.group_interval_s))
    return group.model_copy(
        update={
            "alerts": {**group.alerts, alert.fingerprint: GroupedAlert(alert=alert, until=until)},
            "mute_time_intervals": match.mute_time_intervals,
            "active_time_intervals": match.active_time_intervals,
            "group_interval_s": match.group_interval_s,
            "repeat_interval_s": match.repeat_interval_s,
            "next_flush_at": next_flush_at,
        }
    )


def is_firing_in(group: AggregationGroup | None, alert: Alert, now: float) -> bool:
    """Whether ``alert`` (its fingerprint) already fires in ``group``: raised again, it is a
    duplicate, told with the group and no more often than its repeat_interval."""
    held = None if group is None else group.alerts.get(alert.fingerprint)
    return held is not None and held.until > now


@dataclass(frozen=True)
class Joined:
    """What alerts joining their groups did: the groups changed (by key), and per receiver how
    many of the alerts were duplicates (:func:`is_firing_in`), which make no notification of
    their own: the notifier counts them (``listenpost_notifications_deduplicated``)."""

    groups: dict[str, AggregationGroup]
    deduplicated: dict[str, int]


def join_counted(
    groups: Mapping[str, AggregationGroup], alerts: Sequence[Alert], config: NotifyConfig, now: float, firing_s: float
) -> Joined:
    """Each alert joins its group on every route it reaches (counted once per route, as joins are)."""
    changed: dict[str, AggregationGroup] = {}
    deduplicated: dict[str, int] = {}
    for alert in alerts:
        for match in route(config, alert.labels):
            key = group_key(match, alert.labels)
            group = changed.get(key) or groups.get(key)
            if is_firing_in(group, alert, now):
                deduplicated[match.receiver] = deduplicated.get(match.receiver, 0) + 1
            changed[key] = join(group, alert, match, now, firing_s)
    return Joined(changed, deduplicated)


def join_all(
    groups: Mapping[str, AggregationGroup], alerts: Sequence[Alert], config: NotifyConfig, now: float, firing_s: float
) -> dict[str, AggregationGroup]:
    """The groups ``alerts`` change (by key): each alert joins its group on every route it reaches."""
    return join_counted(groups, alerts, config, now, firing_s).groups


def is_due(group: AggregationGroup, now: float) -> bool:
    return group.next_flush_at <= now


@dataclass(frozen=True)
class Flush:
    """What one look at a group gives: a notification to queue (or None, and why), and the group
    to keep afterwards (None: it has no alerts left; drop it)."""

    notification: Notification | None
    group: AggregationGroup | None
    reason: str = ""  # why nothing is sent: "muted by ...", "outside ...", "nothing new", "all inhibited"
    held_back: tuple[str, ...] = ()  # alerts held back for the first time (by ``held_reason``): count them
    held_reason: Literal["inhibited", "muted"] | None = None


def flush(
    group: AggregationGroup,
    now: float,
    *,
    send_resolved: bool,
    muted: str | None = None,
    inhibited: frozenset[str] = frozenset(),
) -> Flush:
    """Look at a due group at ``now``.

    ``muted``: why the route sends nothing now (its time intervals), or None; ``inhibited``: the
    fingerprints of its alerts that inhibition rules mute now; ``send_resolved``: whether its
    receiver is told of resolved alerts. The caller queues the notification, then keeps the
    returned group: a crash in between looks again with the same ``seq`` (the same key).

    An alert held back (muted or inhibited) before it was told is reported in ``held_back`` once
    per group, however many looks it stays held: counters count alerts, not looks."""
    firing = {fp: held for fp, held in group.alerts.items() if held.until > now}
    resolved = {fp: held for fp, held in group.alerts.items() if held.until <= now}
    told = [fp for fp in firing if fp not in inhibited]  # in the order they joined
    newly_resolved = [fp for fp in resolved if fp in group.told_firing] if send_resolved else []
    holding = [fp for fp in firing if fp not in group.told_firing and (muted is not None or fp in inhibited)]
    held_reason: Literal["inhibited", "muted"] | None = "muted" if muted is not None else "inhibited" if holding else None
    held_back = tuple(fp for fp in holding if fp not in group.held)
    after = None
    if firing:
        after = group.model_copy(update={
            "alerts": firing,
            "next_flush_at": now + group.group_interval_s,
            "held": tuple(fp for fp in firing if fp in group.held or fp in holding),
        })  # fmt: skip

    if muted is not None:
        return Flush(None, after, reason=muted, held_back=held_back, held_reason=held_reason)
    repeat_due = group.last_sent_at is None or now - group.last_sent_at >= group.repeat_interval_s
    changed = any(fp not in group.told_firing for fp in told) or bool(newly_resolved)
    if not (changed or (told and repeat_due)):
        reason = "all inhibited" if holding and not told else "nothing new"
        return Flush(None, _forget(after, told), reason=reason, held_back=held_back, held_reason=held_reason)

    alerts = [firing[fp].alert for fp in told] + [
        resolved[fp].alert.model_copy(update={"status": "resolved", "ends_at": _utc(resolved[fp].until)}) for fp in newly_resolved
    ]
    notification = Notification(
        receiver=group.receiver,
        group_key=group.key,
        group_labels=group.labels,
        alerts=alerts,
        created_at=_utc(now),
        seq=group.seq,
    )
    kept = None
    if after is not None:
        kept = after.model_copy(update={"last_sent_at": now, "told_firing": tuple(told), "seq": group.seq + 1})
    return Flush(notification, kept, held_back=held_back, held_reason=held_reason)


def look_at(group: AggregationGroup, config: NotifyConfig, firing: Iterable[Alert], now: float) -> Flush:
    """:func:`flush` with the notification file's say: the receiver's ``send_resolved``, the
    route's time intervals and then the receiver's (read from the file now, so an edit applies
    at the next look), and the inhibition rules against the alerts ``firing`` now.
    A group whose receiver left the file is dropped (nothing to send it to)."""
    receiver = config.receivers.get(group.receiver)
    if receiver is None:
        return Flush(None, None, reason=f"receiver {group.receiver!r} is no longer in the notification file")
    at = _utc(now)
    sources = list(firing)
    inhibited = frozenset(fp for fp, held in group.alerts.items() if alert_inhibited(held.alert, sources, config.inhibit_rules, at))
    muted = muted_by_intervals(group.mute_time_intervals, group.active_time_intervals, config.time_intervals, at)
    if muted is None:
        muted = receiver_muted_by(receiver, config.time_intervals, at)
    send_resolved = bool(getattr(receiver.config, "send_resolved", True))
    return flush(group, now, send_resolved=send_resolved, muted=muted, inhibited=inhibited)


def _forget(group: AggregationGroup | None, told: list[str]) -> AggregationGroup | None:
    """Alerts that resolved untold, or were inhibited, are no longer among those told."""
    if group is None:
        return None
    still = tuple(fp for fp in group.told_firing if fp in told)
    return group if still == group.told_firing else group.model_copy(update={"told_firing": still})


def due(groups: Mapping[str, AggregationGroup], now: float) -> list[AggregationGroup]:
    """The groups to look at now, oldest first."""
    return sorted((g for g in groups.values() if is_due(g, now)), key=lambda g: (g.next_flush_at, g.key))


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)
