"""Alert hygiene, after Alertmanager: silences, dedup and repeat, rate limits, grouping.

Every alert a rule raises passes, in order:

1. **silences**: an active silence whose matchers all match the alert's labels
   (plus the built-ins ``rule`` and ``severity``) suppresses it;
2. **dedup / repeat_interval**: an alert with the same fingerprint (rule +
   rendered labels) notified less than ``repeat_interval`` ago is a duplicate;
3. **rate limit**: at most ``rate_limit.max`` alerts of the rule per
   ``rate_limit.per`` (sliding window);
4. **grouping**: without ``group_by`` the alert is notified at once; with it,
   alerts with equal values of those labels join one group, notified as one
   ``alert.raised`` after ``group_wait``, then at most every ``group_interval``
   when new alerts join (the flusher, :meth:`Alerting.due`).

All state is in a :class:`~services.rules.state.StateStore` (NATS KV in the
service), written compare-and-set. Redelivery is safe: dedup and rate-limit
records remember the decision id they let through, so the same input event
processed twice re-sends the same alert (JetStream drops the duplicate by its
``Nats-Msg-Id``) instead of suppressing it as a repeat of itself.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.dsl.matchers import Matcher
from services.rules.decisions import ALERT_RAISED, Decision
from services.rules.schema import AlertSpec
from services.rules.state import UNCHANGED, StateStore, mutate

SuppressReason = Literal["silenced", "duplicate", "rate_limited"]


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


@dataclass(frozen=True)
class Queued:
    decision: Decision
    group_key: str


@dataclass(frozen=True)
class Due:
    """A group notification to publish, then to mark with :meth:`Alerting.flushed`."""

    key: str
    notification: Decision
    fingerprints: list[str]
    seq: int


def alert_labels(decision: Decision) -> dict[str, str]:
    """The labels silences and groups see: the rule's labels plus ``rule`` and ``severity``."""
    return {**decision.data.get("labels", {}), "rule": decision.rule_id, "severity": str(decision.data.get("severity"))}


def group_key(decision: Decision, spec: AlertSpec) -> tuple[str, dict[str, str]]:
    labels = alert_labels(decision)
    values = {name: labels.get(name, "") for name in spec.group_by}
    raw = json.dumps([decision.rule_id, decision.action_index, sorted(values.items())], separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()[:32], values


class Alerting:
    """The hygiene pipeline over a state store; the caller publishes what it returns."""

    def __init__(self, store: StateStore, silences: Silences, *, prefix: str) -> None:
        self.store = store
        self.silences = silences
        self.prefix = prefix

    async def admit(self, decision: Decision, spec: AlertSpec, now: float) -> Decision | Suppressed | Queued:
        """One raised alert: notify it now (the decision), hold it back, or queue it in its group."""
        labels = alert_labels(decision)
        for silence in await self.silences.active(now):
            if silence.matches(labels):
                return Suppressed(decision, "silenced", f"silence {silence.id} until {_iso(silence.ends_at)}")

        fp_key = f"alert.{decision.fingerprint}"
        # A read before the rate limit, so that a duplicate does not use up the rule's
        # budget; without a rate limit the claim below checks duplicates by itself.
        dedup = await self.store.get(fp_key) if spec.rate_limit is not None else None
        if dedup is not None and dedup.value.get("decision_id") != decision.id:
            last = float(dedup.value.get("last_sent", 0.0))
            if now - last < spec.repeat_interval_s:
                return Suppressed(
                    decision, "duplicate",
                    f"same fingerprint notified {now - last:.0f}s ago (repeat_interval {spec.repeat_interval})",
                )  # fmt: skip

        if spec.rate_limit is not None:
            limited = await self._rate(decision, spec, now)
            if limited is not None:
                return limited

        # Claim the fingerprint, re-checking inside the compare-and-set: of two
        # replicas racing on one alert, only one notifies.
        raced: dict[str, float] = {}

        def claim(value: dict[str, Any] | None) -> Any:
            if value is not None and value.get("decision_id") == decision.id:
                return UNCHANGED  # a redelivery of the alert we let through: send it again
            if value is not None and now - float(value.get("last_sent", 0.0)) < spec.repeat_interval_s:
                raced["last"] = float(value.get("last_sent", 0.0))
                return UNCHANGED
            count = int(value.get("count", 0)) + 1 if value else 1
            return {"last_sent": now, "decision_id": decision.id, "count": count, "rule_id": decision.rule_id}

        await mutate(self.store, fp_key, claim)
        if raced:
            return Suppressed(decision, "duplicate", f"same fingerprint notified {now - raced['last']:.0f}s ago")

        if not spec.group_by:
            return decision
        key, values = group_key(decision, spec)

        def join(value: dict[str, Any] | None) -> Any:
            group = value or {
                "rule_id": decision.rule_id,
                "action_index": decision.action_index,
                "labels": values,
                "severity": decision.data.get("severity"),
                "alerts": {},
                "created_at": now,
                "last_flush_at": None,
                "next_flush_at": None,
                "seq": 0,
                "group_wait_s": spec.group_wait_s,
                "group_interval_s": spec.group_interval_s,
            }
            if decision.fingerprint in group["alerts"]:
                return UNCHANGED if value is not None else group
            group["alerts"][decision.fingerprint] = {**decision.data, "decision_id": decision.id, "at": now}
            if group["next_flush_at"] is None:
                last = group["last_flush_at"]
                group["next_flush_at"] = now + spec.group_wait_s if last is None else max(now, last + spec.group_interval_s)
            return group

        await mutate(self.store, f"group.{key}", join)
        return Queued(decision, key)

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

    async def due(self, now: float) -> list[Due]:
        """Groups whose notification is due."""
        out = []
        for entry in await self.store.entries("group."):
            key, group = entry.key, entry.value
            due_at = group.get("next_flush_at")
            if not group.get("alerts") or due_at is None or due_at > now:
                continue
            notification = self.notification(key.removeprefix("group."), group)
            out.append(Due(key, notification, sorted(group["alerts"]), int(group.get("seq", 0))))
        return out

    def notification(self, key: str, group: Mapping[str, Any]) -> Decision:
        alerts = sorted(group["alerts"].values(), key=lambda a: (a.get("at", 0), a.get("fingerprint", "")))
        first = alerts[0]
        count = len(alerts)
        summary = first.get("summary", "") if count == 1 else f"{first.get('summary', '')} (and {count - 1} more)"
        fps = sorted(a.get("fingerprint", "") for a in alerts)
        notice_id = hashlib.sha256(json.dumps([key, group.get("seq", 0), fps]).encode()).hexdigest()
        severity = str(group.get("severity") or first.get("severity"))
        data = {
            "rule_id": group["rule_id"],
            "owner": first.get("owner"),
            "description": first.get("description"),
            "ruleset_version": first.get("ruleset_version"),
            "severity": severity,
            "summary": summary,
            "labels": dict(group.get("labels", {})),
            "fingerprint": hashlib.sha256(json.dumps([group["rule_id"], sorted(group.get("labels", {}).items())]).encode()).hexdigest(),
            "source_event": first.get("source_event"),
            "group": {"key": key, "labels": dict(group.get("labels", {})), "count": count, "seq": group.get("seq", 0)},
            "alerts": [{k: v for k, v in a.items() if k not in ("decision_id", "at")} for a in alerts],
        }
        if first.get("callid") is not None and all(a.get("callid") == first.get("callid") for a in alerts):
            data["callid"] = first["callid"]
        return Decision(
            id=notice_id,
            kind="alert",
            type=ALERT_RAISED,
            subject=f"{self.prefix}.alerts.{severity}",
            rule_id=str(group["rule_id"]),
            ruleset_version=str(first.get("ruleset_version") or ""),
            data=data,
            fingerprint=data["fingerprint"],
            action_index=group.get("action_index"),
        )

    async def flushed(self, due: Due, now: float) -> None:
        """After publishing a group's notification: drop the alerts it carried, schedule the next."""
        sent = set(due.fingerprints)

        def done(value: dict[str, Any] | None) -> Any:
            if value is None or int(value.get("seq", 0)) != due.seq:
                return UNCHANGED  # another replica flushed it (the same notification id: JetStream kept one)
            value["alerts"] = {fp: a for fp, a in value.get("alerts", {}).items() if fp not in sent}
            value["last_flush_at"] = now
            value["seq"] = int(value.get("seq", 0)) + 1
            # Alerts that joined meanwhile wait for the group interval.
            value["next_flush_at"] = now + float(value.get("group_interval_s", 300.0)) if value["alerts"] else None
            return value

        await mutate(self.store, due.key, done)


def _seconds(duration: str) -> float:
    from services.rules.schema import parse_duration

    return parse_duration(duration)


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
