"""``alertmanager``: post the alerts to an Alertmanager's ``/api/v2/alerts``.

For teams who already route, group, inhibit and silence in Alertmanager: listenpost's alerts
arrive as any Prometheus alert does, and Alertmanager's silences apply to them.

Each alert becomes ``{"labels", "annotations", "startsAt", "endsAt", "generatorURL"}``:

- labels: the alert's labels (``rule`` and ``severity`` included), ``alertname`` (the label if
  the rule set one, else the rule id) and the receiver's ``extra_labels``. Labels are what
  Alertmanager identifies an alert by, so nothing per-call goes there;
- annotations: the alert's (``summary``, ``description``), and ``callid``, ``caption_span``,
  ``rule_id``, ``ruleset_version``, ``decision_id``, ``input_id`` and ``explain`` (the
  ``listenpost rules explain`` command line) when known;
- ``startsAt``: when the alert started; ``endsAt``: when it ended for a resolved alert (now, if
  the alert does not say); for a firing one, ``starts_at + firing_ttl`` when ``firing_ttl`` is
  set, else absent, and Alertmanager resolves it after its own ``resolve_timeout`` (5 m by
  default) unless it is posted again;
- ``generatorURL``: the link back, when the alert has one.

Authentication, when the Alertmanager sits behind a proxy that asks for it: basic
(``username`` + ``password_secret``) or a bearer token (``bearer_token_secret``).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, Self

import httpx
from pydantic import BeforeValidator, Field, model_validator

from services.dsl.durations import parse_duration
from services.notify.model import Notification
from services.notify.receivers.base import Delivery, DeliveryError, ReceiverBase, SecretName, Url, iso, post, sendable, skipped
from services.notify.receivers.secrets import MissingSecret, SecretSource, reveal
from services.notify.templates import alert_context

__all__ = ["AlertmanagerConfig", "payload", "send"]

_ANNOTATIONS = ("callid", "caption_span", "rule_id", "ruleset_version", "decision_id", "input_id", "explain")


def _ttl(value: object) -> object:
    """A duration as the rest of the file writes them (``1h``, ``90m``), not ISO 8601's ``PT1H``."""
    if isinstance(value, str):
        return timedelta(seconds=parse_duration(value))
    return value


class AlertmanagerConfig(ReceiverBase):
    """Post alerts to an Alertmanager (API v2)."""

    type: Literal["alertmanager"] = "alertmanager"
    url: Url = Field(description="The Alertmanager's base URL, e.g. `http://alertmanager:9093`.")
    extra_labels: dict[str, str] = Field(default_factory=dict, description="Labels added to every alert (the alert's win).")
    firing_ttl: Annotated[timedelta | None, BeforeValidator(_ttl)] = Field(
        default=None, description="endsAt of a firing alert, from its start; unset: Alertmanager's resolve_timeout."
    )
    username: str | None = Field(default=None, description="Basic auth user (with password_secret).")
    password_secret: SecretName | None = Field(default=None, description="The secret holding the basic auth password.")
    bearer_token_secret: SecretName | None = Field(default=None, description="Send `Authorization: Bearer <secret>`.")

    @model_validator(mode="after")
    def _auth(self) -> Self:
        if (self.username is None) != (self.password_secret is None):
            raise ValueError("username and password_secret go together")
        if self.password_secret is not None and self.bearer_token_secret is not None:
            raise ValueError("set basic auth (username, password_secret) or bearer_token_secret, not both")
        return self

    @property
    def alerts_url(self) -> str:
        return str(self.url).rstrip("/") + "/api/v2/alerts"


def payload(notification: Notification, config: AlertmanagerConfig, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """The posted JSON list, one entry per alert (no network)."""
    now = now or datetime.now(UTC)
    out: list[dict[str, Any]] = []
    for alert in notification.alerts:
        context = alert_context(alert)
        labels = {**config.extra_labels, "alertname": alert.rule_id, **alert.labels}
        annotations = dict(alert.annotations)
        for key in _ANNOTATIONS:
            if context[key] and key not in annotations:
                annotations[key] = str(context[key])
        entry: dict[str, Any] = {"labels": labels, "annotations": annotations, "startsAt": iso(alert.starts_at)}
        if alert.status == "resolved":
            entry["endsAt"] = iso(alert.ends_at or now)
        elif alert.ends_at is not None:
            entry["endsAt"] = iso(alert.ends_at)
        elif config.firing_ttl is not None:
            entry["endsAt"] = iso(alert.starts_at + config.firing_ttl)
        if alert.generator_url:
            entry["generatorURL"] = alert.generator_url
        out.append(entry)
    return out


async def send(notification: Notification, config: AlertmanagerConfig, secrets: SecretSource, client: httpx.AsyncClient) -> Delivery:
    alerts = sendable(notification, config)
    if not alerts:
        return skipped(config, "alertmanager")
    started = time.monotonic()
    headers = {"content-type": "application/json"}
    auth: httpx.Auth | None = None
    try:
        if config.username is not None and config.password_secret is not None:
            auth = httpx.BasicAuth(config.username, reveal(secrets, config.password_secret))
        if config.bearer_token_secret is not None:
            headers["authorization"] = f"Bearer {reveal(secrets, config.bearer_token_secret)}"
    except MissingSecret as exc:
        raise DeliveryError(config.name, str(exc), retryable=False) from None
    body = json.dumps(payload(notification.model_copy(update={"alerts": alerts}), config), ensure_ascii=False).encode()
    response = await post(
        client, receiver=config.name, url=config.alerts_url, content=body, headers=headers, timeout_s=config.timeout_s, auth=auth
    )
    return Delivery(config.name, "alertmanager", status=response.status_code, elapsed_s=time.monotonic() - started)
