"""``pagerduty``: PagerDuty Events API v2 (https://developer.pagerduty.com/docs/events-api-v2/).

One event per alert, ``dedup_key`` the alert's fingerprint: PagerDuty groups a repeat into the
open incident, and a ``resolve`` (the alert resolved) closes it. A retried notification is
therefore harmless (a trigger on an open incident, a resolve on a closed one, change nothing),
so a failure part-way through a group fails the attempt and the whole group is sent again.

Trigger events carry ``payload`` (``summary`` from the template, ``source``, ``severity`` from
the ``severity`` label, ``timestamp``, ``class`` the rule id, ``custom_details`` with the labels,
annotations, caption span, call id and the ``listenpost rules explain`` command line) and
``links`` (the generator URL). Resolve events carry only what the API reads: the routing key,
the action and the dedup key. The routing key is a secret (``routing_key_secret``).
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

import httpx
from pydantic import Field, HttpUrl, ValidationInfo, field_validator

from services.notify.model import Notification
from services.notify.receivers.base import Delivery, DeliveryError, ReceiverBase, SecretName, Url, iso, post, sendable, skipped
from services.notify.receivers.secrets import MissingSecret, SecretSource, reveal
from services.notify.templates import check_overrides, notification_context, render_field, with_alert

__all__ = ["DEFAULT_URL", "PagerDutyConfig", "PagerDutySeverity", "payload", "send"]

DEFAULT_URL = "https://events.pagerduty.com/v2/enqueue"
PagerDutySeverity = Literal["critical", "error", "warning", "info"]


class PagerDutyConfig(ReceiverBase):
    """Trigger and resolve PagerDuty incidents, one per alert."""

    type: Literal["pagerduty"] = "pagerduty"
    routing_key_secret: SecretName = Field(description="The secret holding the integration's routing key.")
    url: Url = Field(default=HttpUrl(DEFAULT_URL), description="The Events API v2 endpoint.")
    source: str = Field(default="listenpost", min_length=1, description="payload.source: where the events come from.")
    component: str | None = Field(default=None, description="payload.component, if set.")
    group: str | None = Field(default=None, description="payload.group, if set.")
    severity_map: dict[str, PagerDutySeverity] = Field(
        default_factory=dict, description="Alert severity label -> PagerDuty severity, beyond the identical names."
    )
    default_severity: PagerDutySeverity = Field(default="warning", description="For severities neither maps.")
    client_url: Url | None = Field(default=None, description="A link to listenpost, shown as the event's client.")
    template: dict[str, str] = Field(default_factory=dict, description="Override `summary` (Jinja, per alert: `alert`).")

    @field_validator("template")
    @classmethod
    def _templates(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        return check_overrides("pagerduty", info.data.get("name", "pagerduty"), value)

    def severity(self, label: str | None) -> PagerDutySeverity:
        if label is not None and label in self.severity_map:
            return self.severity_map[label]
        if label in ("critical", "error", "warning", "info"):
            return label  # type: ignore[return-value]  # one of the Literal's values, checked just above
        return self.default_severity


def payload(notification: Notification, config: PagerDutyConfig, routing_key: str) -> list[dict[str, Any]]:
    """The events, one per alert, in the notification's order (no network)."""
    context = notification_context(notification)
    events: list[dict[str, Any]] = []
    for index, alert in enumerate(notification.alerts):
        if alert.status == "resolved":
            events.append({"routing_key": routing_key, "event_action": "resolve", "dedup_key": alert.fingerprint})
            continue
        summary = render_field(
            "pagerduty", "summary", receiver=config.name, overrides=config.template, context=with_alert(context, index)
        )
        alert_context = context["alerts"][index]
        details: dict[str, Any] = {
            "labels": dict(alert.labels),
            "annotations": dict(alert.annotations),
            "rule_id": alert.rule_id,
            "ruleset_version": alert.ruleset_version,
            "decision_id": alert.decision_id,
        }
        for key in ("caption_span", "callid", "input_id", "explain"):
            if alert_context[key]:
                details[key] = alert_context[key]
        body: dict[str, Any] = {
            "summary": summary or alert.rule_id,
            "source": config.source,
            "severity": config.severity(alert.labels.get("severity")),
            "timestamp": iso(alert.starts_at),
            "class": alert.rule_id,
            "custom_details": details,
        }
        if config.component:
            body["component"] = config.component
        if config.group:
            body["group"] = config.group
        event: dict[str, Any] = {
            "routing_key": routing_key,
            "event_action": "trigger",
            "dedup_key": alert.fingerprint,
            "payload": body,
            "client": "listenpost",
        }
        if config.client_url is not None:
            event["client_url"] = str(config.client_url)
        if alert.generator_url:
            event["links"] = [{"href": alert.generator_url, "text": "Explain this alert"}]
        events.append(event)
    return events


async def send(notification: Notification, config: PagerDutyConfig, secrets: SecretSource, client: httpx.AsyncClient) -> Delivery:
    """One attempt: every alert's event in turn; the first failure fails the attempt."""
    alerts = sendable(notification, config)
    if not alerts:
        return skipped(config, "pagerduty")
    started = time.monotonic()
    try:
        routing_key = reveal(secrets, config.routing_key_secret)
    except MissingSecret as exc:
        raise DeliveryError(config.name, str(exc), retryable=False) from None
    status = None
    events = payload(notification.model_copy(update={"alerts": alerts}), config, routing_key)
    for event in events:
        response = await post(
            client,
            receiver=config.name,
            url=str(config.url),
            content=json.dumps(event, ensure_ascii=False).encode(),
            headers={"content-type": "application/json"},
            timeout_s=config.timeout_s,
        )
        status = response.status_code
    return Delivery(config.name, "pagerduty", status=status, requests=len(events), elapsed_s=time.monotonic() - started)
