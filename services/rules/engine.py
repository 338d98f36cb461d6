"""The engine's core loop step, without NATS messaging: one event in, the events to publish out.

:class:`RulesProcessor` runs the pure evaluation (:func:`evaluate`) between
two stateful steps that live in a :class:`~services.rules.state.StateStore`:

- before: load the debounce streaks of the event's call, for its ``for:`` rules;
- after: save the streaks, and pass each raised alert through the hygiene
  pipeline (:class:`~services.rules.alerting.Alerting`).

The Serve deployment, ``rules test``, ``rules backtest`` and the benchmark all
use this class; only the store (NATS KV or memory) and the clock differ.

Traces: ``evaluate`` (streaks loaded and saved, the rule set run) with one ``rule`` child per
matched or failed rule (recorded after the pure evaluation, which runs all rules in one pass),
then ``alert hygiene``; children of the caller's current span.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from services.rules.alerting import Alerting, Silences, Suppressed
from services.rules.decisions import DEFAULT_PREFIX, Decision
from services.rules.evaluate import Evaluation, Streak, evaluate
from services.rules.limits import DEFAULT_LIMITS, Limits
from services.rules.plan import debounced_rules
from services.rules.ruleset import RuleSet
from services.rules.state import Conflict, Stores, safe_key
from services.telemetry import mark_error, stage_span, tracing_enabled

#: CloudEvents extension counting how many rule engines an event went through:
#: an emitted event that a rule consumes again cannot loop forever.
HOPS_EXTENSION = "rulehops"
DEFAULT_MAX_HOPS = 3


@dataclass
class RuleCounters:
    matched: int = 0
    shadow: int = 0
    errors: int = 0
    suppressed: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None


@dataclass
class Counters:
    events: int = 0
    decisions: int = 0
    skipped_rules: int = 0  # applicable rules the pre-filter proved false
    looped: int = 0  # events not evaluated: too many rule hops
    truncated: int = 0  # events whose input was capped
    rules: dict[str, RuleCounters] = field(default_factory=dict)

    def rule(self, rule_id: str) -> RuleCounters:
        found = self.rules.get(rule_id)
        if found is None:
            found = self.rules[rule_id] = RuleCounters()
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "decisions": self.decisions,
            "skipped_rules": self.skipped_rules,
            "looped": self.looped,
            "truncated": self.truncated,
            "rules": {
                rule_id: {
                    "matched": c.matched, "shadow": c.shadow, "errors": c.errors,
                    "suppressed": dict(c.suppressed), "last_error": c.last_error,
                }
                for rule_id, c in sorted(self.rules.items())
            },
        }  # fmt: skip


@dataclass(frozen=True)
class Outcome:
    evaluation: Evaluation | None  # None: not evaluated (see `skipped`)
    publish: list[Decision]  # in order: publish all, then ack the input
    suppressed: list[Suppressed] = field(default_factory=list)
    skipped: str | None = None


def hops(attributes: Mapping[str, Any]) -> int:
    try:
        return int(attributes.get(HOPS_EXTENSION, 0))
    except (TypeError, ValueError):
        return 0


class RulesProcessor:
    def __init__(
        self,
        stores: Stores,
        *,
        prefix: str = DEFAULT_PREFIX,
        limits: Limits = DEFAULT_LIMITS,
        clock: Callable[[], float] = time.time,
        max_hops: int = DEFAULT_MAX_HOPS,
        silence_refresh_s: float = 2.0,
    ) -> None:
        self.stores = stores
        self.prefix = prefix
        self.limits = limits
        self.clock = clock
        self.max_hops = max_hops
        self.silences = Silences(stores.silences, refresh_s=silence_refresh_s)
        self.alerting = Alerting(stores.state, self.silences, prefix=prefix)
        self.counters = Counters()

    async def process(
        self, ruleset: RuleSet, attributes: Mapping[str, Any], data: Any, *, now: float | None = None
    ) -> Outcome:
        """Evaluate one event and run its alerts through hygiene; returns what to publish.

        Raises only on infrastructure faults (the state store): the caller naks.
        Rule errors are in the outcome, as ``rule.failed`` decisions to publish.
        """
        now = self.clock() if now is None else now
        self.counters.events += 1
        if hops(attributes) >= self.max_hops:
            self.counters.looped += 1
            return Outcome(None, [], skipped=f"{HOPS_EXTENSION} {hops(attributes)} >= {self.max_hops}: a rule loop")
        with stage_span("evaluate", {"listenpost.ruleset.version": ruleset.version}) as span:
            for attempt in range(5):
                try:
                    evaluation = await self._evaluate_with_streaks(ruleset, attributes, data)
                    break
                except Conflict:
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.01 * (attempt + 1))
            if tracing_enabled():
                span.set_attributes({"listenpost.rules.evaluated": evaluation.evaluated,
                                     "listenpost.rules.matched": len(evaluation.matches)})  # fmt: skip
                _rule_spans(evaluation)
        with stage_span("alert hygiene"):
            outcome = await self._hygiene(ruleset, evaluation, now)
        self._count(evaluation, outcome)
        return outcome

    async def _evaluate_with_streaks(self, ruleset: RuleSet, attributes: Mapping[str, Any], data: Any) -> Evaluation:
        callid = _callid(attributes, data)
        keys: dict[str, str] = {}
        revisions: dict[str, int | None] = {}
        streaks: dict[str, Streak] = {}
        if callid is not None:
            rule_ids = debounced_rules(ruleset, attributes, data)
            keys = {rule_id: f"streak.{rule_id}.{safe_key(str(callid))}" for rule_id in rule_ids}
            entries = await asyncio.gather(*(self.stores.state.get(k) for k in keys.values()))
            for rule_id, entry in zip(keys, entries, strict=True):
                revisions[rule_id] = entry.revision if entry is not None else None
                if entry is not None:
                    streaks[rule_id] = Streak.from_json(entry.value)
        evaluation = evaluate(ruleset, attributes, data, prefix=self.prefix, limits=self.limits, streaks=streaks)
        writes: list[Awaitable[object]] = []
        for rule_id, streak in evaluation.streaks.items():
            if rule_id not in keys:
                continue  # no call id, or not loaded (see debounced_rules): nothing to carry over
            key, revision = keys[rule_id], revisions.get(rule_id)
            if streak.windows == 0:
                if revision is not None:
                    writes.append(self.stores.state.delete(key))
            elif revision is None:
                writes.append(self.stores.state.create(key, streak.to_json()))
            else:
                writes.append(self.stores.state.update(key, streak.to_json(), revision))
        await asyncio.gather(*writes)  # a Conflict (another replica, same call) re-runs the event
        return evaluation

    async def _hygiene(self, ruleset: RuleSet, evaluation: Evaluation, now: float) -> Outcome:
        publish: list[Decision] = []
        suppressed: list[Suppressed] = []
        # Alerts of one event have distinct fingerprints (and rate-limit keys per action):
        # their KV round trips run concurrently; the results keep the evaluation order.
        alerts = [d for d in evaluation.decisions if d.kind == "alert"]
        admitted = await asyncio.gather(
            *(
                self.alerting.admit(d, ruleset.rule(d.rule_id).actions[d.action_index or 0].alert, now)
                for d in alerts
            )
        )
        results = dict(zip((id(d) for d in alerts), admitted, strict=True))
        for decision in evaluation.decisions:
            if decision.kind != "alert":
                publish.append(decision)
                continue
            result = results[id(decision)]
            if isinstance(result, Suppressed):
                suppressed.append(result)
            else:
                publish.append(result)
        return Outcome(evaluation, publish, suppressed)

    def _count(self, evaluation: Evaluation, outcome: Outcome) -> None:
        c = self.counters
        c.decisions += len(outcome.publish)
        c.skipped_rules += evaluation.skipped
        c.truncated += bool(evaluation.truncated)
        for match in evaluation.matches:
            counters = c.rule(match.rule_id)
            if match.mode == "shadow":
                counters.shadow += 1
            else:
                counters.matched += 1
        for error in evaluation.errors:
            counters = c.rule(error.rule_id)
            counters.errors += 1
            counters.last_error = error.message
        for held in outcome.suppressed:
            counters = c.rule(held.decision.rule_id)
            counters.suppressed[held.reason] = counters.suppressed.get(held.reason, 0) + 1

def _rule_spans(evaluation: Evaluation) -> None:
    """One span per matched (or failed) rule, so a trace shows which rules an event fired."""
    version = evaluation.ruleset_version
    for match in evaluation.matches:
        with stage_span("rule", {"listenpost.rule.id": match.rule_id, "listenpost.rule.mode": match.mode,
                                 "listenpost.ruleset.version": version}):  # fmt: skip
            pass
    for error in evaluation.errors:
        with stage_span("rule", {"listenpost.rule.id": error.rule_id, "listenpost.ruleset.version": version}) as span:
            mark_error(span, "RuleError", error.message)


def _callid(attributes: Mapping[str, Any], data: Any) -> Any:
    """What a ``for:`` streak runs over: the call, else the live stream (a camera's microphone
    has no call: its windows' streak is the stream's, services/events/live.py)."""
    context = data.get("context") if isinstance(data, Mapping) else None
    callid = context.get("callid") if isinstance(context, Mapping) else None
    if callid is None:
        callid = attributes.get("callid")
    return callid if callid is not None else attributes.get("streamid")
