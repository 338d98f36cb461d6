"""An input message as ``audio.submitted``: decoded, adapted when it is another type, validated.

What the orchestrator's NATS consumer runs on every message; an input that can never
become ``audio.submitted`` is :class:`~services.events.consumer.Poison` (dead-lettered with
stage ``decode-event`` or ``validate``). The HTTP door checks the same things before it
stores an event (:func:`services.ingest.http.admit`).

An input's ``context`` is bounded (depth, keys, bytes: :class:`ContextLimits`) here too, not
only at the HTTP door: inputs published straight to NATS never passed it, and a context that
would fail later must fail before any audio is fetched, never be retried.
"""

from __future__ import annotations

from collections.abc import Mapping

from cloudevents.core.base import BaseCloudEvent
from pydantic import ValidationError

from services.events.binding import BindingError, CloudEvent, decode
from services.events.claimcheck import submitted_data
from services.events.consumer import Poison
from services.events.models import (
    AUDIO_SUBMITTED,
    DEFAULT_CONTEXT_LIMITS,
    AudioSubmitted,
    ContextLimitError,
    ContextLimits,
    check_context,
)
from services.ingest.adapters import AdapterError, AdapterSet


def parse_submitted(
    body: bytes,
    headers: Mapping[str, str] | None,
    adapters: AdapterSet | None = None,
    limits: ContextLimits = DEFAULT_CONTEXT_LIMITS,
) -> tuple[BaseCloudEvent, AudioSubmitted]:
    """Decode and validate an input; other event types go through a matching source adapter."""
    try:
        received = decode(body, headers)
    except BindingError as exc:
        raise Poison("decode-event", str(exc), error=type(exc).__name__) from exc
    event, submitted = _as_submitted(received, adapters)
    try:
        check_context(submitted.context, limits)
    except ContextLimitError as exc:
        raise Poison("validate", f"invalid {AUDIO_SUBMITTED} data: {exc}", error=type(exc).__name__) from exc
    return event, submitted


def _as_submitted(event: CloudEvent, adapters: AdapterSet | None) -> tuple[BaseCloudEvent, AudioSubmitted]:
    if event.get_type() != AUDIO_SUBMITTED:
        adapter = adapters.match(event.get_type(), event.get_source()) if adapters else None
        if adapter is None:
            raise Poison(
                "validate",
                f"unexpected event type {event.get_type()!r}: not {AUDIO_SUBMITTED!r} and no source adapter maps it",
            )
        try:
            return adapter.adapt(event)
        except AdapterError as exc:
            raise Poison("validate", str(exc), error="AdapterError") from exc
    try:
        submitted = AudioSubmitted.model_validate(submitted_data(event))
    except (ValidationError, ValueError) as exc:
        raise Poison("validate", f"invalid {AUDIO_SUBMITTED} data: {exc}", error=type(exc).__name__) from exc
    return event, submitted
