"""From an ``alert.raised`` decision to the alert it is about: pure functions, no I/O.

The rules engine has already silenced and rate-limited its alerts (services/rules/alerting.py);
what reaches the notifier is each alert a rule raised. It is read at the boundary into an
:class:`~services.notify.model.Alert` (:func:`alerts_from_decision`); who hears about it, when
and how often is decided by its routes' aggregation groups (services/notify/groups.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.notify.model import Alert

__all__ = ["ALERT_RAISED", "DecisionError", "alert_from_decision", "alerts_from_decision"]

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


def alerts_from_decision(attributes: Mapping[str, Any], data: Any, *, now: datetime | None = None) -> list[Alert]:
    """The alerts an ``alert.raised`` decision is about (one: a list for callers that batch).

    ``attributes``: the CloudEvent's attributes (``id``, ``type``, ``time``, extensions such as
    ``inputid`` and ``callid``); ``data``: its data. :class:`DecisionError` for anything else.
    """
    if attributes.get("type") != ALERT_RAISED:
        raise DecisionError(f"event type {attributes.get('type')!r} is not {ALERT_RAISED!r}")
    decision_id = str(attributes.get("id") or "")
    if not decision_id:
        raise DecisionError("the decision has no id")
    try:
        parsed = _AlertData.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "data"
        raise DecisionError(f"not an alert decision: {where}: {first['msg']}") from None
    raised = attributes.get("time")
    starts_at = raised if isinstance(raised, datetime) else (now or datetime.now(UTC))
    return [_alert(parsed, attributes, decision_id, starts_at)]


def alert_from_decision(attributes: Mapping[str, Any], data: Any, *, now: datetime | None = None) -> Alert:
    """The one alert of a decision."""
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
