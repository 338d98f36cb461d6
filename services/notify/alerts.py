"""From an ``alert.raised`` decision to the notifications it makes: pure functions, no I/O.

The rules engine has already deduplicated, rate-limited, silenced and grouped its alerts
(services/rules/alerting.py); what reaches this module is an alert decision to tell people
about. It is read at the boundary into :class:`~services.notify.model.Alert` values
(:func:`alerts_from_decision`: one, or one per alert of a grouped decision), then
:func:`notifications_for` decides who hears about them:

1. an alert muted by an inhibition rule (a firing source alert, services/notify/inhibition.py)
   goes nowhere;
2. each alert is routed through the tree (services/notify/routing.py); a route muted now by
   its time intervals sends nothing;
3. the alerts of one decision that reach the same receiver in the same group are one
   notification: one :class:`~services.notify.model.Notification` per (receiver, group).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.notify.config import NotifyConfig
from services.notify.inhibition import alert_inhibited
from services.notify.model import Alert, Notification
from services.notify.routing import group_key, group_labels, muted_by, route

__all__ = [
    "ALERT_RAISED",
    "DecisionError",
    "Skipped",
    "alert_from_decision",
    "alerts_from_decision",
    "notifications_for",
    "plan_notifications",
]

#: The CloudEvent type of the rules engine's alert decisions (services/rules/decisions.py).
ALERT_RAISED = "com.listenpost.alert.raised"


class DecisionError(ValueError):
    """An event that is not an alert decision this module can read (never retried: it cannot change)."""


class _SourceEvent(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str | None = None


class _AlertData(BaseModel):
    """One alert as the rules engine writes it in a decision's ``data`` (or in ``data.alerts``)."""

    model_config = ConfigDict(extra="ignore")

    rule_id: str = Field(min_length=1)
    ruleset_version: str | None = None
    severity: str = Field(min_length=1)
    summary: str = ""
    description: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    fingerprint: str = Field(min_length=1)
    callid: str | None = None
    evidence: dict[str, Any] = Field(default_factory=dict)
    source_event: _SourceEvent | None = None


class _DecisionData(_AlertData):
    """A decision's ``data``; a grouped decision (a rule's ``group_by``) also lists its alerts."""

    alerts: list[_AlertData] | None = None


def alerts_from_decision(attributes: Mapping[str, Any], data: Any, *, now: datetime | None = None) -> list[Alert]:
    """The alerts an ``alert.raised`` decision is about: itself, or each alert of its group.

    ``attributes``: the CloudEvent's attributes (``id``, ``type``, ``time``, extensions such as
    ``inputid`` and ``callid``); ``data``: its data. :class:`DecisionError` for anything else.
    """
    if attributes.get("type") != ALERT_RAISED:
        raise DecisionError(f"event type {attributes.get('type')!r} is not {ALERT_RAISED!r}")
    decision_id = str(attributes.get("id") or "")
    if not decision_id:
        raise DecisionError("the decision has no id")
    try:
        parsed = _DecisionData.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "data"
        raise DecisionError(f"not an alert decision: {where}: {first['msg']}") from None
    raised = attributes.get("time")
    starts_at = raised if isinstance(raised, datetime) else (now or datetime.now(UTC))
    members = parsed.alerts if parsed.alerts else [parsed]
    return [_alert(member, attributes, decision_id, starts_at) for member in members]


def alert_from_decision(attributes: Mapping[str, Any], data: Any, *, now: datetime | None = None) -> Alert:
    """The one alert of an ungrouped decision (the first of a grouped one)."""
    return alerts_from_decision(attributes, data, now=now)[0]


def _alert(item: _AlertData, attributes: Mapping[str, Any], decision_id: str, starts_at: datetime) -> Alert:
    annotations = {"summary": item.summary} if item.summary else {}
    if item.description:
        annotations["description"] = item.description
    span = item.evidence.get("span")
    callid = item.callid or _text(attributes.get("callid"))
    input_id = (item.source_event.id if item.source_event else None) or _text(attributes.get("inputid"))
    return Alert(
        fingerprint=item.fingerprint,
        # The labels silences and groups saw in the rules engine: the rule's, plus the built-ins.
        labels={**item.labels, "rule": item.rule_id, "severity": item.severity},
        annotations=annotations,
        starts_at=starts_at,
        rule_id=item.rule_id,
        ruleset_version=item.ruleset_version or _text(attributes.get("rulesetver")) or "",
        decision_id=decision_id,
        input_id=input_id or None,
        callid=callid or None,
        caption_span=span if isinstance(span, str) and span else None,
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# --- who hears about them ------------------------------------------------------------------


@dataclass(frozen=True)
class Skipped:
    """An alert (or one of its routes) that makes no notification, and why."""

    fingerprint: str
    receiver: str | None  # None: the whole alert (inhibited)
    reason: str  # "inhibited", or the route's "muted by weekends" / "outside business-hours"


def plan_notifications(
    alerts: Sequence[Alert], config: NotifyConfig, firing: Iterable[Alert], now: datetime
) -> tuple[list[Notification], list[Skipped]]:
    """:func:`notifications_for`, with what was left out and why (for logs and metrics)."""
    sources = list(firing)
    groups: dict[tuple[str, str], tuple[dict[str, str], list[Alert]]] = {}
    skipped: list[Skipped] = []
    for alert in alerts:
        if alert_inhibited(alert, sources, config.inhibit_rules, now):
            skipped.append(Skipped(alert.fingerprint, None, "inhibited"))
            continue
        for match in route(config, alert.labels):
            why = muted_by(match, config.time_intervals, now)
            if why is not None:
                skipped.append(Skipped(alert.fingerprint, match.receiver, why))
                continue
            key = (match.receiver, group_key(match, alert.labels))
            labels, members = groups.setdefault(key, (group_labels(match, alert.labels), []))
            if all(a.fingerprint != alert.fingerprint for a in members):
                members.append(alert)
    notifications = [
        Notification(receiver=receiver, group_key=key, group_labels=labels, alerts=members, created_at=now)
        for (receiver, key), (labels, members) in groups.items()
    ]
    return notifications, skipped


def notifications_for(
    alerts: Alert | Sequence[Alert], config: NotifyConfig, firing: Mapping[str, Alert] | Iterable[Alert], now: datetime
) -> list[Notification]:
    """The notifications ``alerts`` make at ``now``: one per receiver and group, in tree order.

    ``firing``: the alerts firing now (by fingerprint, or any iterable), which may inhibit them;
    an alert never inhibits itself.
    """
    batch = [alerts] if isinstance(alerts, Alert) else list(alerts)
    sources = firing.values() if isinstance(firing, Mapping) else firing
    return plan_notifications(batch, config, sources, now)[0]
