"""``webhook``: the notification as a CloudEvent over HTTP, optionally signed (Standard Webhooks).

One CloudEvent per notification (not per alert: a group is what the routing tree decided to
send together), type ``com.listenpost.notification``, ``id`` the notification's idempotency key
(the same alerts, receiver and group give the same id, so a retried or redelivered notification
is recognisable), ``time`` its creation, ``subject`` the receiver's name, ``data`` the
notification as JSON (:class:`~services.notify.model.Notification`, plus its ``status``).

HTTP binding: binary mode by default (``ce-*`` headers, ``Content-Type: application/json``,
the data as body); ``mode: structured`` sends the JSON event format
(``application/cloudevents+json``). With ``signing_secret`` (a ``whsec_`` secret), the request
carries ``webhook-id`` (the event id), ``webhook-timestamp`` and ``webhook-signature``, made by
:func:`services.events.webhooks.sign_webhook`, the code listenpost's own ingress verifies with.
"""

from __future__ import annotations

import time
from typing import Any, Literal, Self

import httpx
from pydantic import Field, model_validator

from services.events.binding import encode_binary, encode_structured, new_event
from services.events.webhooks import WEBHOOK_HEADERS, sign_webhook
from services.notify.model import Notification
from services.notify.receivers.base import Delivery, DeliveryError, ReceiverBase, SecretName, Url, post, sendable, skipped
from services.notify.receivers.secrets import MissingSecret, SecretSource, reveal
from services.settings import webhook_secret_key

__all__ = ["EVENT_TYPE", "WebhookConfig", "notification_data", "payload", "send"]

EVENT_TYPE = "com.listenpost.notification"
_RESERVED_HEADERS = ("content-type", "content-length", "host", "authorization", *WEBHOOK_HEADERS)


class WebhookConfig(ReceiverBase):
    """Post each notification as a CloudEvent to a URL."""

    type: Literal["webhook"] = "webhook"
    url: Url | None = Field(default=None, description="Where to post, when the URL is not itself a secret.")
    url_secret: SecretName | None = Field(default=None, description="The secret holding the URL (instead of url).")
    mode: Literal["binary", "structured"] = Field(default="binary", description="CloudEvents HTTP content mode.")
    signing_secret: SecretName | None = Field(
        default=None, description="A Standard Webhooks secret (`whsec_...`): sign each request with it."
    )
    bearer_token_secret: SecretName | None = Field(default=None, description="Send `Authorization: Bearer <secret>`.")
    source: str = Field(default="/listenpost/notify", min_length=1, description="The events' CloudEvents `source`.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers (not secrets).")

    @model_validator(mode="after")
    def _one_url(self) -> Self:
        if (self.url is None) == (self.url_secret is None):
            raise ValueError("set exactly one of url and url_secret")
        reserved = sorted(h for h in self.headers if h.lower() in _RESERVED_HEADERS or h.lower().startswith("ce-"))
        if reserved:
            raise ValueError(f"headers may not set {', '.join(reserved)}: the receiver sets them")
        return self


def notification_data(notification: Notification) -> dict[str, Any]:
    """The event's data: the notification as JSON, with its ``status``."""
    return {**notification.model_dump(mode="json"), "status": notification.status}


def payload(
    notification: Notification, config: WebhookConfig, *, signing_key: bytes | None = None, now: float | None = None
) -> tuple[bytes, dict[str, str]]:
    """The request's body and headers (no network): the CloudEvent, signed when ``signing_key`` is given."""
    callids = {a.callid for a in notification.alerts}
    event = new_event(
        EVENT_TYPE,
        config.source,
        notification_data(notification),
        id=notification.idempotency_key,
        subject=notification.receiver,
        time=notification.created_at,
        extensions={"callid": callids.pop() if len(callids) == 1 else None},
    )
    if config.mode == "structured":
        body, headers = encode_structured(event)
    else:
        body, headers = encode_binary(event)
        # HTTP binding: datacontenttype travels as Content-Type, not as a ce- header.
        headers["content-type"] = headers.pop("ce-datacontenttype")
    headers = {**config.headers, **headers}
    if signing_key is not None:
        timestamp = int(time.time() if now is None else now)
        headers.update(sign_webhook(signing_key, notification.idempotency_key, timestamp, body))
    return body, headers


async def send(notification: Notification, config: WebhookConfig, secrets: SecretSource, client: httpx.AsyncClient) -> Delivery:
    """One attempt: post the event; :class:`DeliveryError` when it fails."""
    alerts = sendable(notification, config)
    if not alerts:
        return skipped(config, "webhook")
    notification = notification.model_copy(update={"alerts": alerts})
    started = time.monotonic()
    try:
        url = reveal(secrets, config.url_secret) if config.url_secret else str(config.url)
        signing_key = None
        if config.signing_secret:
            try:
                signing_key = webhook_secret_key(reveal(secrets, config.signing_secret))
            except ValueError as exc:
                raise DeliveryError(
                    config.name, f"secret {config.signing_secret!r} is not a Standard Webhooks secret: it {exc}", retryable=False
                ) from None
        token = reveal(secrets, config.bearer_token_secret) if config.bearer_token_secret else None
    except MissingSecret as exc:
        raise DeliveryError(config.name, str(exc), retryable=False) from None
    body, headers = payload(notification, config, signing_key=signing_key)
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    response = await post(
        client, receiver=config.name, url=url, content=body, headers=headers, timeout_s=config.timeout_s, url_secret=config.url_secret
    )
    return Delivery(config.name, "webhook", status=response.status_code, elapsed_s=time.monotonic() - started)
