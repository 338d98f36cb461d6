"""When to try a notification again, and when to give up: a pure policy.

After a failed attempt (a :class:`~services.notify.receivers.DeliveryError`) the sender asks
:func:`next_step`:

- not retryable (a 4xx, a missing secret): give up at once;
- ``max_attempts`` reached: give up;
- otherwise wait the exponential back-off with jitter (:func:`backoff_s`), or the receiver's
  ``Retry-After`` when that is longer (a 429 or 503 says how long to stay away);
- a ``Retry-After`` longer than ``retry_after_max_s``, or a wait that would take the
  notification past ``max_age_s``: give up now rather than send stale news late.

"Give up" means a dead letter (services/notify/sender.py), which ``listenpost notify replay``
sends again once the receiver is fixed.

Why not tenacity (which publish_event uses): its waits belong to one retry loop in one process;
here each attempt is a JetStream redelivery, possibly to another replica after a restart, so the
attempt number comes from the message (its delivery count) and the delay from this function.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from services.events.consumer import Redelivery
from services.events.jetstream import NOTIFY_DELIVER_MARGIN
from services.settings import NotifySettings, Settings

__all__ = ["DeliveryPolicy", "GiveUp", "Retry", "backoff_s", "next_step", "redelivery"]


def redelivery(settings: Settings) -> Redelivery:
    """The consumer's redelivery for a durable whose retries are :func:`next_step`'s (the sender,
    the CRM writer): its own bound, ``max_attempts`` and a margin, is only a backstop, so a
    crash mid-attempt (redelivered after AckWait) does not end a delivery early."""
    nats, notify = settings.nats, settings.notify
    return Redelivery(
        max_deliver=notify.max_attempts + NOTIFY_DELIVER_MARGIN,
        heartbeat_s=nats.ack_wait_s / 3,
        retry_delay_s=notify.backoff_base_s,
        retry_delay_max_s=notify.backoff_max_s,
        max_handling_s=nats.max_handling_s,
    )


@dataclass(frozen=True)
class DeliveryPolicy:
    max_attempts: int = 8
    max_age_s: float = 24 * 3600.0
    backoff_base_s: float = 2.0
    backoff_max_s: float = 300.0
    retry_after_max_s: float = 3600.0

    @classmethod
    def from_settings(cls, notify: NotifySettings) -> DeliveryPolicy:
        return cls(notify.max_attempts, notify.max_age_s, notify.backoff_base_s, notify.backoff_max_s, notify.retry_after_max_s)


@dataclass(frozen=True)
class Retry:
    delay_s: float


@dataclass(frozen=True)
class GiveUp:
    reason: str  # in words: why this notification is dead-lettered now


def backoff_s(attempts: int, policy: DeliveryPolicy, rand: Callable[[], float] = random.random) -> float:
    """The wait after ``attempts`` failed attempts: ``base * 2^(attempts-1)``, at most ``backoff_max_s``,
    with "equal jitter" (between half and all of it): receivers that failed together do not
    all come back at the same instant, and no retry comes sooner than half its back-off."""
    ceiling = min(policy.backoff_max_s, policy.backoff_base_s * 2 ** max(0, attempts - 1))
    return ceiling / 2 + rand() * ceiling / 2


def next_step(
    *,
    retryable: bool,
    retry_after_s: float | None,
    attempts: int,
    age_s: float,
    policy: DeliveryPolicy,
    rand: Callable[[], float] = random.random,
) -> Retry | GiveUp:
    """What to do after attempt number ``attempts`` failed, ``age_s`` after the notification was queued."""
    if not retryable:
        return GiveUp("the receiver refused it (not worth retrying)")
    if attempts >= policy.max_attempts:
        return GiveUp(f"gave up after {attempts} attempts (notify.max_attempts)")
    if retry_after_s is not None and retry_after_s > policy.retry_after_max_s:
        return GiveUp(
            f"the receiver asked to wait {retry_after_s:g} s (Retry-After), longer than notify.retry_after_max_s "
            f"({policy.retry_after_max_s:g} s)"
        )
    delay = max(backoff_s(attempts, policy, rand), retry_after_s or 0.0)
    if age_s + delay > policy.max_age_s:
        return GiveUp(
            f"not delivered within notify.max_age_s ({policy.max_age_s:g} s) of being queued: "
            f"the next attempt would come {age_s + delay:.0f} s after"
        )
    return Retry(delay)
