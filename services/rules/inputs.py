"""Reading one message the rules engine consumes: the CloudEvent, its attributes and its data.

Shared by the RulesEngine and ``rules backtest`` so both read what the engine would. An
``audio.captioned`` too large for a NATS message carries no data and a ``dataref``
(see :mod:`services.events.claimcheck`): its data is read back from the outputs bucket,
and from no other bucket, so a forged event cannot make the engine read another one.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from nats.js import JetStreamContext

from services.events.binding import BindingError, decode, event_attributes
from services.events.claimcheck import ClaimCheckError, ClaimCheckUnavailable, resolve_data
from services.events.consumer import Poison, RetryLater


async def read_input(
    js: JetStreamContext, body: bytes, headers: Mapping[str, str] | None, *, buckets: Collection[str]
) -> tuple[dict[str, Any], Any]:
    """``(attributes, data)`` of a consumed message.

    Raises :class:`Poison` (stage ``rules``) for what can never be read (not a CloudEvent,
    data not JSON, a ``dataref`` to another bucket or to an object that is gone) and
    :class:`RetryLater` when the object store did not answer.
    """
    try:
        event = decode(body, headers)
        data = await resolve_data(js, event, buckets=buckets)
    except ClaimCheckUnavailable as exc:
        raise RetryLater(str(exc)) from exc
    except ClaimCheckError as exc:
        raise Poison("rules", f"event data not readable: {exc}", error=type(exc).__name__) from exc
    except (BindingError, ValueError) as exc:
        raise Poison("rules", str(exc), error=type(exc).__name__) from exc
    return event_attributes(event), data
