"""The marker that one captioned event's rules are evaluated: ``com.listenpost.rules.evaluated``.

The rules engine publishes it on ``<prefix>.rules.evaluated`` after every decision on an
``audio.captioned`` event is stored, before it acks the event. Whoever acts once a call is
fully decided (the CRM write-back, services/notify/crm_writer.py) consumes the marker instead
of guessing when the last decision has arrived. It carries:

- where the captioned event is stored (id, stream, sequence), so a reader fetches it by
  sequence rather than carrying a large caption twice;
- the call id and the ruleset version;
- the decisions published on it, as their CloudEvents' JSON, each without its ``evidence``
  and an ``emit``'s author data (neither is a summary's business, and they are what could
  make the marker large).

Its ``Nats-Msg-Id`` derives from the captioned event's id and the ruleset version, so a
redelivered event publishes it once; a replay under new rules publishes a new one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from cloudevents.core.base import BaseCloudEvent

from services.events.binding import CloudEvent, new_event
from services.events.jetstream import derive_msg_id
from services.events.models import (
    ALERT_RAISED,
    AUDIO_CAPTIONED,
    ROUTE_DECIDED,
    RULE_FAILED,
    RULE_SHADOW_MATCHED,
    RULES_EVALUATED,
    TAG_ADDED,
    EvaluatedDecision,
    RulesEvaluated,
    StoredEventRef,
)

__all__ = ["evaluated_event", "evaluated_msg_id", "wants_marker"]

#: Decision types whose data is listenpost's (an emit's is its author's).
_OWN_TYPES: Final = frozenset({ROUTE_DECIDED, ALERT_RAISED, TAG_ADDED})
#: Published on the event, but not decisions that acted.
_NOTICES: Final = frozenset({RULE_SHADOW_MATCHED, RULE_FAILED})


def wants_marker(attributes: Mapping[str, Any]) -> bool:
    """Only captioned calls are summarised: an event a rule emitted and another rule consumes is not a call."""
    return attributes.get("type") == AUDIO_CAPTIONED and bool(attributes.get("id"))


def evaluated_msg_id(captioned_id: str, ruleset_version: str) -> str:
    return derive_msg_id("rules.evaluated", captioned_id, ruleset_version)


def evaluated_event(
    attributes: Mapping[str, Any],
    *,
    stream: str,
    sequence: int,
    ruleset_version: str,
    decisions: Sequence[BaseCloudEvent],
    source: str,
) -> CloudEvent:
    """The marker for the captioned event with ``attributes`` (stored at ``stream`` #``sequence``)
    and the decision events published on it (notices, shadow matches and rule errors, are left out)."""
    captioned_id = str(attributes["id"])
    data = RulesEvaluated(
        captioned=StoredEventRef(id=captioned_id, stream=stream, sequence=sequence),
        callid=_text(attributes.get("callid")),
        ruleset_version=ruleset_version,
        decisions=[_decision(d) for d in decisions if _acted(d)],
    )
    extensions: dict[str, Any] = {"inputid": captioned_id, "rulesetver": ruleset_version}
    if data.callid is not None and isinstance(attributes.get("callid"), str):
        extensions["callid"] = attributes["callid"]  # as the engine's decisions carry it (already checked)
    return new_event(
        RULES_EVALUATED, source, data.model_dump(mode="json", exclude_none=True),
        id=evaluated_msg_id(captioned_id, ruleset_version), subject=captioned_id, extensions=extensions,
    )  # fmt: skip


def _acted(event: BaseCloudEvent) -> bool:
    return event.get_type() not in _NOTICES


def _decision(event: BaseCloudEvent) -> EvaluatedDecision:
    attributes = event.get_attributes()
    raw = event.get_data()
    data = {k: v for k, v in raw.items() if k != "evidence"} if isinstance(raw, dict) and event.get_type() in _OWN_TYPES else {}
    time = attributes.get("time")
    return EvaluatedDecision(
        type=event.get_type(), id=event.get_id(), subject=event.get_subject(),
        time=time.isoformat() if isinstance(time, datetime) else _text(time),
        rulesetver=_text(attributes.get("rulesetver")), inputid=_text(attributes.get("inputid")), data=data,
    )  # fmt: skip


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)
