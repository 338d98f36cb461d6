"""Alert hygiene, after Alertmanager: silences and rate limits.

Every alert a rule raises passes, in order:

1. **silences**: an active silence whose matchers all match the alert's labels
   (plus the built-ins ``rule`` and ``severity``) suppresses it;
2. **rate limit**: at most ``rate_limit.max`` alerts of the rule per
   ``rate_limit.per`` (sliding window): a rule gone wild floods nobody.

What passes is an ``alert.raised`` decision, one per alert raised: the record of what happened.
Who hears about it, grouped how and repeated how often (``group_by``, ``group_wait``,
``group_interval``, ``repeat_interval``: deduplication) is the notifier's, set on the routes of
the notification file (services/notify/groups.py), as Alertmanager does it for Prometheus.

All state is in a :class:`~services.rules.state.StateStore` (NATS KV in the
service), written compare-and-set. Redelivery is safe: a rate-limit record remembers the
decision ids it let through, so the same input event processed twice sends the same alert
again (JetStream drops the duplicate by its ``Nats-Msg-Id``) instead of counting it twice.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.dsl.matchers import Matcher
from services.rules.decisions import Decision
from services.rules.schema import AlertSpec
from services.rules.state import UNCHANGED, StateStore, mutate

SuppressReason = Literal["silenced", "rate_limited"]


# --- silences -------------------------------------------------------------------
# Matchers (Alertmanager's syntax) live in services.dsl.matchers: notification routes use them too.


class Silence(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    matchers: list[Matcher] = Field(min_length=1)
    starts_at: float  # epoch seconds
    ends_at: float
    created_by: str = ""
    comment: str = ""
    created_at: float = 0.0

    def active(self, now: float) -> bool:
        return self.starts_at <= now < self.ends_at

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(m.matches(labels) for m in self.matchers)

    def state(self, now: float) -> str:
        if now < self.starts_at:
            return "pending"
        return "active" if now < self.ends_at else "expired"


class Silences:
    """Silences in their own bucket (key ``silence.<id>``), cached for ``refresh_s`` by readers."""

    def __init__(self, store: StateStore, *, refresh_s: float = 2.0) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self._cache: list[Silence] = []
        self._loaded_at: float | None = None

    async def add(
        self, matchers: list[Matcher], *, ends_at: float, starts_at: float | None = None,
        created_by: str = "", comment: str = "", now: float | None = None,
    ) -> Silence:  # fmt: skip
        now = time.time() if now is None else now
        silence = Silence(
            id=uuid.uuid4().hex[:12],
            matchers=matchers,
            starts_at=now if starts_at is None else starts_at,
            ends_at=ends_at,
            created_by=created_by,
            comment=comment,
            created_at=now,
        )
        if silence.ends_at <= silence.starts_at:
            raise ValueError("a silence must end after it starts")
        await self.store.create(f"silence.{silence.id}", silence.model_dump())
        self._loaded_at = None
        return silence

    async def expire(self, silence_id: str, *, now: float | None = None) -> Silence:
        now = time.time() if now is None else now
        key = f"silence.{silence_id}"
        found: dict[str, Silence] = {}

        def change(value: dict[str, Any] | None) -> Any:
            if value is None:
                raise KeyError(silence_id)
            silence = Silence.model_validate(value)
            found["s"] = silence.model_copy(update={"ends_at": min(silence.ends_at, now)})
            return found["s"].model_dump()

        await mutate(self.store, key, change)
        self._loaded_at = None
        return found["s"]

    async def stored(self) -> list[Silence]:
        """Every stored silence (active, pending and expired), oldest first."""
        out = [Silence.model_validate(entry.value) for entry in await self.store.entries("silence.")]
        return sorted(out, key=lambda s: (s.starts_at, s.id))

    async def active(self, now: float) -> list[Silence]:
        if self._loaded_at is None or now - self._loaded_at >= self.refresh_s or now < self._loaded_at:
            self._cache = await self.stored()
            self._loaded_at = now
        return [s for s in self._cache if s.active(now)]


# --- the pipeline -------------------------------------------------------------------


@dataclass(frozen=True)
class Suppressed:
    decision: Decision
    reason: SuppressReason
    detail: str


def alert_labels(decision: Decision) -> dict[str, str]:
    """The labels silences and routes see: the rule's labels plus ``rule`` and ``severity``."""
    return {**decision.data.get("labels", {}), "rule": decision.rule_id, "severity": str(decision.data.get("severity"))}


class Alerting:
    """The hygiene pipeline over a state store; the caller publishes what it returns."""

    def __init__(self, store: StateStore, silences: Silences, *, prefix: str) -> None:
        self.store = store
        self.silences = silences
        self.prefix = prefix

    async def admit(self, decision: Decision, spec: AlertSpec, now: float) -> Decision | Suppressed:
        """One raised alert: the decision to publish, or why it is held back."""
        labels = alert_labels(decision)
        for silence in await self.silences.active(now):
            if silence.matches(labels):
                return Suppressed(decision, "silenced", f"silence {silence.id} until {_iso(silence.ends_at)}")

        if spec.rate_limit is not None:
            limited = await self._rate(decision, spec, now)
            if limited is not None:
                return limited
        return decision

    async def _rate(self, decision: Decision, spec: AlertSpec, now: float) -> Suppressed | None:
        assert spec.rate_limit is not None
        per, limit = spec.rate_limit.per, spec.rate_limit.max
        window = _seconds(per)
        outcome: dict[str, Suppressed | None] = {"r": None}

        def take(value: dict[str, Any] | None) -> Any:
            sent = [s for s in (value or {}).get("sent", []) if s[0] > now - window]
            if any(s[1] == decision.id for s in sent):
                outcome["r"] = None
                return UNCHANGED
            if len(sent) >= limit:
                outcome["r"] = Suppressed(
                    decision, "rate_limited", f"{len(sent)} alerts of {decision.rule_id} in the last {per}"
                )
                return UNCHANGED
            outcome["r"] = None
            return {"sent": [*sent, [now, decision.id]]}

        await mutate(self.store, f"rate.{decision.rule_id}.{decision.action_index}", take)
        return outcome["r"]

def _seconds(duration: str) -> float:
    from services.rules.schema import parse_duration

    return parse_duration(duration)


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
