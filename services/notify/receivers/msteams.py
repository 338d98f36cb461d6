"""``msteams``: a Microsoft Teams message, as an Adaptive Card (default) or a MessageCard.

- ``card: adaptive`` (default): what Teams' Workflows webhooks ("Post to a channel when a
  webhook request is received") take, the replacement of the retired Office 365 connectors:
  ``{"type": "message", "attachments": [{"contentType":
  "application/vnd.microsoft.card.adaptive", "content": <AdaptiveCard 1.4>}]}``, with the title
  and text as TextBlocks (Markdown) and an ``Action.OpenUrl`` per link back.
- ``card: message``: the legacy connector's MessageCard (``@type: MessageCard``): ``title``,
  ``text`` (HTML: the text template is autoescaped), ``themeColor`` and ``potentialAction``.

The webhook URL carries its credential, so it comes from a secret (``url_secret``).
"""

from __future__ import annotations

from typing import Any, Literal

import httpx
from pydantic import Field, ValidationInfo, field_validator

from services.notify.model import Notification
from services.notify.receivers.base import Delivery, ReceiverBase, SecretName, post_json_to_secret_url
from services.notify.receivers.secrets import SecretSource
from services.notify.templates import check_overrides, notification_context, render_field

__all__ = ["MSTeamsConfig", "payload", "send"]

_MAX_LINKS = 5
#: Theme colours (MessageCard) and TextBlock colours (Adaptive Card) by status and severity.
_THEME = {"critical": "D63333", "warning": "FFA500", "info": "2E77D0", "resolved": "2EB886"}
_ADAPTIVE_COLOUR = {"critical": "Attention", "warning": "Warning", "info": "Accent", "resolved": "Good"}


class MSTeamsConfig(ReceiverBase):
    """Post a card to a Microsoft Teams webhook."""

    type: Literal["msteams"] = "msteams"
    url_secret: SecretName = Field(description="The secret holding the Teams webhook's URL.")
    card: Literal["adaptive", "message"] = Field(default="adaptive", description="Adaptive Card or legacy MessageCard.")
    template: dict[str, str] = Field(default_factory=dict, description="Override `title` and/or `text` (Jinja).")

    @field_validator("template")
    @classmethod
    def _templates(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        kind = "msteams.message" if info.data.get("card") == "message" else "msteams"
        return check_overrides(kind, info.data.get("name", "msteams"), value)


def _tone(notification: Notification) -> str:
    if notification.status == "resolved":
        return "resolved"
    severities = {a.labels.get("severity") for a in notification.alerts if a.status == "firing"}
    return next((s for s in ("critical", "warning", "info") if s in severities), "warning")


def payload(notification: Notification, config: MSTeamsConfig) -> dict[str, Any]:
    """The JSON body (no network)."""
    kind = "msteams.message" if config.card == "message" else "msteams"
    context = notification_context(notification)
    title = render_field(kind, "title", receiver=config.name, overrides=config.template, context=context)
    text = render_field(kind, "text", receiver=config.name, overrides=config.template, context={**context, "title": title})
    links = list(dict.fromkeys(a.generator_url for a in notification.alerts if a.generator_url))[:_MAX_LINKS]
    tone = _tone(notification)
    if config.card == "message":
        card: dict[str, Any] = {
            "@type": "MessageCard",
            "@context": "https://schema.org/extensions",
            "themeColor": _THEME[tone],
            "summary": title,
            "title": title,
            "text": text,
        }
        if links:
            card["potentialAction"] = [
                {"@type": "OpenUri", "name": "Explain", "targets": [{"os": "default", "uri": url}]} for url in links
            ]
        return card
    content: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "msteams": {"width": "Full"},
        "body": [
            {"type": "TextBlock", "text": title, "weight": "Bolder", "size": "Medium", "wrap": True,
             "style": "heading", "color": _ADAPTIVE_COLOUR[tone]},  # fmt: skip
            {"type": "TextBlock", "text": text, "wrap": True},
        ],
    }
    if links:
        content["actions"] = [{"type": "Action.OpenUrl", "title": "Explain", "url": url} for url in links]
    return {
        "type": "message",
        "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": content}],
    }


async def send(notification: Notification, config: MSTeamsConfig, secrets: SecretSource, client: httpx.AsyncClient) -> Delivery:
    return await post_json_to_secret_url(
        notification, config, secrets, client, kind="msteams", url_secret=config.url_secret, payload=payload
    )
