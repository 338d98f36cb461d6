"""``slack``: a Slack incoming webhook (https://api.slack.com/messaging/webhooks).

The body is ``text`` (the title: what notifications and clients without blocks show) and
``blocks``: a header with the title, a section with the text (mrkdwn), and a context line with
the links back when the alerts have a ``generator_url``. The webhook URL is the credential, so
it comes from a secret (``url_secret``). Every string in the template context is escaped for
mrkdwn (a caption saying ``<!channel>`` does not ping anyone).
"""

from __future__ import annotations

from typing import Any, Literal

import httpx
from pydantic import Field, ValidationInfo, field_validator

from services.notify.model import Notification
from services.notify.receivers.base import Delivery, ReceiverBase, SecretName, post_json_to_secret_url
from services.notify.receivers.secrets import SecretSource
from services.notify.templates import check_overrides, mrkdwn_escape, notification_context, render_field

__all__ = ["SlackConfig", "payload", "send"]

_MAX_LINKS = 5


class SlackConfig(ReceiverBase):
    """Post to a Slack incoming webhook."""

    type: Literal["slack"] = "slack"
    # Alertmanager's default for chat and mail: a person reads it, and "resolved" is noise there.
    send_resolved: bool = Field(default=False, description="Also notify when alerts resolve (off by default, as in Alertmanager).")
    url_secret: SecretName = Field(description="The secret holding the incoming webhook's URL.")
    channel: str | None = Field(default=None, description="Override the webhook's channel (legacy webhooks only).")
    username: str | None = Field(default=None, description="Override the poster's name (legacy webhooks only).")
    icon_emoji: str | None = Field(default=None, description="Override the poster's icon, e.g. `:rotating_light:`.")
    template: dict[str, str] = Field(default_factory=dict, description="Override `title` and/or `text` (Jinja).")

    @field_validator("template")
    @classmethod
    def _templates(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        return check_overrides("slack", info.data.get("name", "slack"), value)


def payload(notification: Notification, config: SlackConfig) -> dict[str, Any]:
    """The JSON body (no network)."""
    context = notification_context(notification, escape=mrkdwn_escape)
    # The header block is plain_text: the title is rendered from the unescaped context.
    plain = notification_context(notification)
    title = render_field("slack", "title", receiver=config.name, overrides=config.template, context=plain)
    context["title"] = mrkdwn_escape(title)
    text = render_field("slack", "text", receiver=config.name, overrides=config.template, context=context)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title, "emoji": True}},
        {"type": "section", "text": {"type": "mrkdwn", "text": text or " "}},
    ]
    links = list(dict.fromkeys(a["generator_url"] for a in context["alerts"] if a["generator_url"]))[:_MAX_LINKS]
    if links:
        elements = [{"type": "mrkdwn", "text": f"<{url}|explain>"} for url in links]
        blocks.append({"type": "context", "elements": elements})
    body: dict[str, Any] = {"text": mrkdwn_escape(title), "blocks": blocks}
    for field in ("channel", "username", "icon_emoji"):
        if getattr(config, field) is not None:
            body[field] = getattr(config, field)
    return body


async def send(notification: Notification, config: SlackConfig, secrets: SecretSource, client: httpx.AsyncClient) -> Delivery:
    return await post_json_to_secret_url(
        notification, config, secrets, client, kind="slack", url_secret=config.url_secret, payload=payload
    )
