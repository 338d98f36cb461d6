"""What a receiver is given: alerts as Alertmanager shows them, grouped into one notification."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Alert(BaseModel):
    """One alert, as receivers see it (Alertmanager's fields, plus what links it to its call)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fingerprint: str = Field(description="Same rule and labels: same alert (the rules engine's fingerprint).")
    status: Literal["firing", "resolved"] = "firing"
    labels: dict[str, str] = Field(description="The alert's labels, with the built-ins `rule` and `severity`.")
    annotations: dict[str, str] = Field(default_factory=dict, description="`summary`, `description`.")
    starts_at: datetime
    ends_at: datetime | None = None
    generator_url: str | None = Field(default=None, description="A link back: where the rule and its evidence are explained.")
    rule_id: str
    ruleset_version: str = ""
    decision_id: str = Field(description="The alert.raised decision's CloudEvent id.")
    input_id: str | None = Field(default=None, description="The input event the alert is about.")
    callid: str | None = None
    caption_span: str | None = Field(default=None, description="The caption text that matched, if the rule quoted it.")


class Notification(BaseModel):
    """One message to one receiver: a group of alerts (Alertmanager's group_by), sent once."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    receiver: str
    group_key: str = Field(description="The route and the group's label values: what the alerts share.")
    group_labels: dict[str, str] = Field(default_factory=dict)
    alerts: list[Alert] = Field(min_length=1)
    created_at: datetime
    seq: int = Field(default=0, ge=0, description="The group's notifications before this one: a repeat is a new notification.")

    @property
    def idempotency_key(self) -> str:
        """The same receiver, group, alerts and place in the group's sequence give the same key:
        a retry, or a notification queued again after a restart, is recognisable by the
        receiving end (webhook-id, Idempotency-Key...); a repeat after repeat_interval is not."""
        body = json.dumps([self.receiver, self.group_key, self.seq, sorted((a.fingerprint, a.status) for a in self.alerts)])
        return hashlib.sha256(body.encode()).hexdigest()[:32]

    @property
    def status(self) -> Literal["firing", "resolved"]:
        return "firing" if any(a.status == "firing" for a in self.alerts) else "resolved"
