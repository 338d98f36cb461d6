"""Stand-in receiver config models for the notification tests.

The real models live in services/notify/receivers (``RECEIVER_CONFIGS``); these tests check
the notification file's own rules (routing, inhibition, time intervals, cross-references), so
they register small models of their own and do not depend on the real receivers' options.
"""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

import services.notify.receivers


class _StandIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Webhook(_StandIn):
    type: Literal["webhook"]  # a model may name its type (then it is given `type`)
    url_secret: str


class Slack(_StandIn):
    url_secret: str
    channel: str | None = None


class PagerDuty(_StandIn):
    routing_key_secret: str


class Email(_StandIn):
    to: list[str] = Field(min_length=1)
    # The real model's other fields, so the shipped file loads with the stand-ins too.
    host: str | None = None
    sender: str | None = None
    username: str | None = None
    password_secret: str | None = None


class Alertmanager(_StandIn):
    url: str


STAND_INS: dict[str, type[BaseModel]] = {
    "webhook": Webhook,
    "slack": Slack,
    "pagerduty": PagerDuty,
    "email": Email,
    "alertmanager": Alertmanager,
}


def register(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the stand-ins the registry that the config loader looks up."""
    monkeypatch.setattr(services.notify.receivers, "RECEIVER_CONFIGS", STAND_INS, raising=False)
