"""Receivers: one module per type, each with its config model, its payload and its ``send``.

Every receiver module exports a pydantic config model (``type`` a Literal naming it), a pure
``payload`` (or ``message``) function that builds exactly what is sent, and an
``async def send(notification, config, secrets, client) -> Delivery`` that makes one attempt
and raises :class:`DeliveryError` (``retryable``, ``retry_after_s``) when it fails; retries,
queueing and dead-lettering are the sender's job, not the receiver's.

=================  ==============================================================================
``webhook``        the notification as a CloudEvent over HTTP (binary or structured), optionally
                   signed (Standard Webhooks)
``slack``          a Slack incoming webhook (``text`` + ``blocks``)
``msteams``        a Teams Adaptive Card (Workflows webhook) or a legacy MessageCard
``pagerduty``      PagerDuty Events API v2, one event per alert, ``dedup_key`` its fingerprint
``email``          SMTP with STARTTLS (aiosmtplib), text and HTML
``alertmanager``   ``POST /api/v2/alerts`` to a real Alertmanager
=================  ==============================================================================

Secrets are referenced by name (``url_secret``, ``routing_key_secret``, ``password_secret``,
``signing_secret``, ``bearer_token_secret``) and resolved through a
:class:`~services.notify.receivers.secrets.SecretSource` at send time; :func:`secret_names`
lists what a configuration needs, so a loader can refuse one whose secrets are missing.
docs/notification-receivers.md describes every field, payload and template.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Final

import httpx
from pydantic import BaseModel, Field

from services.notify.model import Notification
from services.notify.receivers import alertmanager, email, msteams, pagerduty, slack, webhook
from services.notify.receivers.alertmanager import AlertmanagerConfig
from services.notify.receivers.base import Delivery, DeliveryError, ReceiverBase
from services.notify.receivers.email import EmailConfig
from services.notify.receivers.msteams import MSTeamsConfig
from services.notify.receivers.pagerduty import PagerDutyConfig
from services.notify.receivers.secrets import MissingSecret, Secrets, SecretSource, redact
from services.notify.receivers.slack import SlackConfig
from services.notify.receivers.webhook import WebhookConfig

__all__ = [
    "RECEIVER_CONFIGS",
    "SENDERS",
    "AlertmanagerConfig",
    "Delivery",
    "DeliveryError",
    "EmailConfig",
    "MSTeamsConfig",
    "MissingSecret",
    "PagerDutyConfig",
    "ReceiverBase",
    "ReceiverConfig",
    "SecretSource",
    "Secrets",
    "SlackConfig",
    "WebhookConfig",
    "missing_secrets",
    "redact",
    "secret_names",
    "send",
]

#: Receiver type -> its configuration model.
RECEIVER_CONFIGS: Final[dict[str, type[ReceiverBase]]] = {
    "webhook": WebhookConfig,
    "slack": SlackConfig,
    "msteams": MSTeamsConfig,
    "pagerduty": PagerDutyConfig,
    "email": EmailConfig,
    "alertmanager": AlertmanagerConfig,
}

#: One receiver's configuration, told apart by ``type``.
ReceiverConfig = Annotated[
    WebhookConfig | SlackConfig | MSTeamsConfig | PagerDutyConfig | EmailConfig | AlertmanagerConfig,
    Field(discriminator="type"),
]

Sender = Callable[[Notification, Any, SecretSource, httpx.AsyncClient], Awaitable[Delivery]]


#: Receiver type -> its ``send``.
SENDERS: Final[dict[str, Sender]] = {
    "webhook": webhook.send,
    "slack": slack.send,
    "msteams": msteams.send,
    "pagerduty": pagerduty.send,
    "email": email.send,
    "alertmanager": alertmanager.send,
}


async def send(notification: Notification, config: ReceiverBase, secrets: SecretSource, client: httpx.AsyncClient) -> Delivery:
    """One attempt to deliver ``notification`` to the receiver ``config`` describes."""
    return await SENDERS[_type(config)](notification, config, secrets, client)


def secret_names(config: BaseModel) -> list[str]:
    """The names of the secrets a receiver's configuration refers to (its ``*_secret`` fields)."""
    return sorted(value for name, value in config if name.endswith("_secret") and isinstance(value, str))


def missing_secrets(config: BaseModel, secrets: SecretSource) -> list[str]:
    """The secrets a configuration names that ``secrets`` does not have: check them at load."""
    return [name for name in secret_names(config) if secrets.get(name) is None]


def _type(config: ReceiverBase) -> str:
    type_ = getattr(config, "type", None)
    if type_ not in SENDERS:
        raise ValueError(f"receiver {config.name!r} has no known type: {type_!r}")
    return str(type_)
