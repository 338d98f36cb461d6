"""``listenpost rules backtest --since 24h``: what the rules on disk would have done with history.

It replays the captioned events (the subjects the engine consumes) stored in
LISTENPOST_OUT since a point in time through the engine's own
:class:`RulesProcessor`, on an in-memory state store and a clock that follows
the events' stored times, so debounce, rate limits and silences
(none: the live ones are not applied) behave as they would have.

No side effects: it reads with an ephemeral consumer that acknowledges nothing
(deleted at the end), publishes nothing, and writes no KV.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.rules.decisions import DEFAULT_PREFIX, Decision
from services.rules.engine import RulesProcessor
from services.rules.limits import DEFAULT_LIMITS, Limits
from services.rules.ruleset import RuleSet
from services.rules.state import memory_stores


@dataclass
class RuleTally:
    matched: int = 0
    shadow: int = 0
    errors: int = 0
    routes: Counter[str] = field(default_factory=Counter)
    tags: Counter[str] = field(default_factory=Counter)
    emits: Counter[str] = field(default_factory=Counter)
    alerts_raised: int = 0  # alert decisions (the notifier groups them and sends repeats: not counted here)
    alerts_suppressed: Counter[str] = field(default_factory=Counter)
    last_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "matched": self.matched,
            "shadow": self.shadow,
            "errors": self.errors,
            "routes": dict(self.routes),
            "tags": dict(self.tags),
            "emits": dict(self.emits),
            "alerts_raised": self.alerts_raised,
            "alerts_suppressed": dict(self.alerts_suppressed),
            "last_error": self.last_error,
        }


@dataclass
class BacktestReport:
    ruleset_version: str
    since: str
    events: int = 0
    undecodable: int = 0
    first_event_at: str | None = None
    last_event_at: str | None = None
    rules: dict[str, RuleTally] = field(default_factory=dict)

    def tally(self, rule_id: str) -> RuleTally:
        found = self.rules.get(rule_id)
        if found is None:
            found = self.rules[rule_id] = RuleTally()
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "ruleset_version": self.ruleset_version,
            "since": self.since,
            "events": self.events,
            "undecodable": self.undecodable,
            "first_event_at": self.first_event_at,
            "last_event_at": self.last_event_at,
            "rules": {k: v.to_json() for k, v in sorted(self.rules.items())},
        }


class Replay:
    """Feeds events through a side-effect-free processor and tallies what each rule did."""

    def __init__(self, ruleset: RuleSet, *, since: str, prefix: str = DEFAULT_PREFIX, limits: Limits = DEFAULT_LIMITS) -> None:
        self.ruleset = ruleset
        self.clock = [0.0]
        self.processor = RulesProcessor(memory_stores(), prefix=prefix, limits=limits, clock=lambda: self.clock[0])
        self.report = BacktestReport(ruleset_version=ruleset.version, since=since)
        for rule in ruleset.rules:
            self.report.tally(rule.id)

    async def event(self, attributes: dict[str, Any], data: Any, at: float) -> None:
        self.clock[0] = at
        stamp = datetime.fromtimestamp(at, tz=UTC).isoformat()
        self.report.first_event_at = self.report.first_event_at or stamp
        self.report.last_event_at = stamp
        self.report.events += 1
        outcome = await self.processor.process(self.ruleset, attributes, data, now=at)
        if outcome.evaluation is None:
            return
        for match in outcome.evaluation.matches:
            tally = self.report.tally(match.rule_id)
            if match.mode == "shadow":
                tally.shadow += 1
            else:
                tally.matched += 1
        for error in outcome.evaluation.errors:
            tally = self.report.tally(error.rule_id)
            tally.errors += 1
            tally.last_error = error.message
        for decision in outcome.publish:
            self._count(decision)
        for held in outcome.suppressed:
            self.report.tally(held.decision.rule_id).alerts_suppressed[held.reason] += 1

    def _count(self, decision: Decision) -> None:
        tally = self.report.tally(decision.rule_id)
        if decision.kind == "route":
            tally.routes[decision.data["queue"]] += 1
        elif decision.kind == "tag":
            tally.tags.update(decision.data["tags"])
        elif decision.kind == "emit":
            tally.emits[decision.type] += 1
        elif decision.kind == "alert":
            tally.alerts_raised += 1

    async def finish(self) -> BacktestReport:
        return self.report


async def backtest(
    js: Any,
    ruleset: RuleSet,
    *,
    stream: str,
    subjects: Sequence[str],
    since_s: float,
    since_text: str,
    prefix: str = DEFAULT_PREFIX,
    limits: Limits = DEFAULT_LIMITS,
    decode: Callable[[bytes, Any], Awaitable[tuple[dict[str, Any], Any]]],
    progress: Callable[[int], Awaitable[None] | None] | None = None,
    now: float | None = None,
) -> BacktestReport:
    """Replay ``subjects`` of ``stream`` from ``since_s`` seconds ago until the stream's end (at start).

    ``decode`` reads one message as ``(attributes, data)`` (resolving a ``dataref``, as the engine
    does) or raises ValueError; such messages are counted as undecodable.
    """
    from nats.errors import TimeoutError as NatsTimeoutError
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    start = datetime.fromtimestamp((now if now is not None else datetime.now(UTC).timestamp()) - since_s, tz=UTC)
    replay = Replay(ruleset, since=since_text, prefix=prefix, limits=limits)
    info = await js.stream_info(stream)
    last_seq = info.state.last_seq
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_TIME,
        opt_start_time=start,
        ack_policy=AckPolicy.NONE,
        filter_subjects=list(subjects),
        inactive_threshold=30.0,
        mem_storage=True,
    )
    sub = await js.pull_subscribe(subjects[0], stream=stream, config=config)
    try:
        done = False
        while not done:
            try:
                msgs = await sub.fetch(256, timeout=1.0)
            except (TimeoutError, NatsTimeoutError):
                break
            for msg in msgs:
                meta = msg.metadata
                try:
                    attributes, data = await decode(msg.data, msg.headers)
                except ValueError:
                    replay.report.undecodable += 1
                else:
                    await replay.event(attributes, data, meta.timestamp.timestamp())
                if meta.num_pending == 0 or meta.sequence.stream >= last_seq:
                    done = True
                    break
            if progress is not None:
                maybe = progress(replay.report.events)
                if maybe is not None:
                    await maybe
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, sub._consumer)
    return await replay.finish()
