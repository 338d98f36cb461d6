"""What a rule set decides about one event: the rules' meaning, as a pure function.

Semantics (Alertmanager's routing tree flattened to a list):

- Rules run in priority order. The first ``enforce`` match stops evaluation unless it says
  ``continue: true``; ``shadow`` matches are recorded (what the rule *would* do) and never
  stop anything; ``disabled`` rules are skipped.
- A failing rule is recorded as an error and evaluation goes on: an evaluation error is
  never a silent false.
- A rule with ``for:`` (debounce) is evaluated once per slot of the call: one slot holds
  every channel's window over the same span. In each slot ``caption`` and ``facets`` are
  that slot's own; ``acoustics``, ``context``, ``event`` and ``data`` are the whole event's.
  The rule fires when its condition held in ``windows`` consecutive slots, or for
  ``duration`` of call time. The streak carries over to the next event of the same call
  (the engine keeps it in NATS KV); an event without windows counts as one window, and a
  window starting more than :data:`STREAK_GAP_S` after the last one ended breaks a streak
  (overlapping windows, as a live stream's, continue it).
- Every decision is built by :mod:`services.rules.decisions`: deterministic ids, the
  ruleset version, the evidence the rule matched.

How conditions are evaluated fast enough (the pre-filter, projections, batches) is
:mod:`services.rules.conditions` and :mod:`services.rules.plan`; every condition is
evaluated by the ``cel`` library. The guardrails are :mod:`services.rules.limits`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from services.rules.conditions import EventRun, Verdict
from services.rules.decisions import DEFAULT_PREFIX, Decision, DecisionBuilder, check_prefix
from services.rules.limits import DEFAULT_LIMITS, Budget, Limits
from services.rules.ruleset import CompiledRule, RuleSet

#: Windows further apart than this (seconds) break a debounce streak.
STREAK_GAP_S = 1.0


class RuleMatch(NamedTuple):
    rule_id: str
    mode: Literal["enforce", "shadow"]


class RuleError(NamedTuple):
    """A rule that could not be evaluated for this event (a record, not an exception)."""

    rule_id: str
    message: str


@dataclass(frozen=True, slots=True)
class Streak:
    """Debounce state of one rule on one call (one of no windows is the same as none)."""

    windows: int = 0  # consecutive slots the condition held in
    since_s: float | None = None  # call time the streak began
    last_end_s: float | None = None  # end of the last slot evaluated
    evidence: dict[str, Any] = field(default_factory=dict)  # what the first slot of the streak matched

    def to_json(self) -> dict[str, Any]:
        return {"windows": self.windows, "since_s": self.since_s, "last_end_s": self.last_end_s, "evidence": dict(self.evidence)}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Streak:
        return cls(
            windows=int(value.get("windows", 0)),
            since_s=value.get("since_s"),
            last_end_s=value.get("last_end_s"),
            evidence=dict(value.get("evidence") or {}),
        )


#: The streak of a rule that did not hold (no windows): shared, since a Streak never changes.
NO_STREAK = Streak()


@dataclass(slots=True)
class Evaluation:
    """What evaluate() found for one event (read-only by convention)."""

    ruleset_version: str
    #: Every output event, in evaluation order: actions of enforce matches,
    #: shadow-match notices and rule-failure notices.
    decisions: list[Decision]
    matches: list[RuleMatch]
    errors: list[RuleError]
    evaluated: int = 0  # rules whose condition ran (a batch runs all its conditions)
    skipped: int = 0  # applicable rules the pre-filter proved false
    truncated: tuple[str, ...] = ()
    callid: str | None = None
    #: Debounce state after this event, for the `for:` rules that were evaluated.
    streaks: dict[str, Streak] = field(default_factory=dict)

    @property
    def actions(self) -> list[Decision]:
        """Only the effects (route, alert, tag, emit), without shadow and error notices."""
        return [d for d in self.decisions if d.kind in ("route", "alert", "tag", "emit")]


def evaluate(
    ruleset: RuleSet,
    event_attributes: Mapping[str, Any],
    data: Any,
    *,
    prefix: str = DEFAULT_PREFIX,
    limits: Limits = DEFAULT_LIMITS,
    streaks: Mapping[str, Streak] | None = None,
    prefilter: bool = True,
    batch: bool = True,
) -> Evaluation:
    """Run every applicable rule of ``ruleset`` on one event (attributes incl. extensions, and data).

    ``streaks``: the debounce state of the event's call, by rule id (none: a fresh call).
    ``prefilter=False, batch=False`` evaluates every applicable rule alone: the reference
    the fast path is tested against (same results), and what ``rules explain`` uses.
    """
    if prefix is not DEFAULT_PREFIX:
        check_prefix(prefix)
    run = EventRun(ruleset, event_attributes, data, limits, prefilter=prefilter)
    out = _Outcome(run, DecisionBuilder(ruleset.version, event_attributes, run.variables, prefix), streaks or {})
    stop = _walk(run, out, Budget(limits), batch) if run.rules else None
    # The `for:` rules the pre-filter proved false on the whole event end their streaks,
    # up to a stopping match (the rules after it are not reached).
    end = len(run.plan.rules) if stop is None else run.candidates.order[stop]
    for position, rule_id in run.candidates.resets:
        if position > end:
            break
        out.after[rule_id] = NO_STREAK
    callid = out.builder.callid
    return Evaluation(
        ruleset_version=ruleset.version,
        decisions=out.decisions,
        matches=out.matches,
        errors=out.errors,
        evaluated=out.evaluated,
        skipped=len(run.plan.rules) - len(run.rules) + out.proved_false,
        truncated=run.truncated,
        callid=None if callid is None else str(callid),
        streaks=out.after,
    )


def _walk(run: EventRun, out: _Outcome, budget: Budget, batch: bool) -> int | None:
    """Evaluate the candidate rules in order; the position of a stopping match, if one stopped."""
    run.start()
    try:
        batched = run.batch(budget) if batch else None
        last = time.perf_counter()
        order: Iterable[int]
        if batched is None:
            batched, order = {}, range(len(run.rules))
        else:
            # A batched condition that is plainly false needs no more work.
            out.evaluated += len(batched)
            order = sorted([p for p, (held, _) in batched.items() if held is not False] + list(run.candidates.alone))
        for position in order:
            rule = run.rules[position]
            if run.context_error is not None:
                out.fail(rule, run.context_error)
                continue
            evidence: dict[str, Any] | None = None
            if position in batched:
                held, error = batched[position]
            else:
                if (error := budget.over_event(last)) is not None:
                    out.fail(rule, error)
                    continue
                if position in run.proved_false:
                    out.proved_false_on(rule)
                    continue
                if rule.debounce is not None:
                    held, error, evidence = out.debounce(rule)
                else:
                    out.evaluated += 1
                    held, error = run.held(rule)
                    evidence = run.evidence() if held else {}
                now = time.perf_counter()
                if error is None:
                    error = budget.over_rule(now - last)
                last = now
            if error is not None:
                out.fail(rule, error)
                continue
            if not held:
                continue
            if evidence is None:  # held inside the batch: what its helpers matched
                evidence = run.evidence_of(rule)
            if not evidence and rule.debounce is None and rule.quotes_match:
                evidence = run.window_evidence(rule)
                last = time.perf_counter()
            if out.matched(rule, evidence):
                return position
        return None
    finally:
        run.finish()


class _Outcome:
    """What an evaluation produced so far: decisions, matches, errors, streaks."""

    __slots__ = ("after", "builder", "decisions", "errors", "evaluated", "matches", "proved_false", "run", "streaks")

    def __init__(self, run: EventRun, builder: DecisionBuilder, streaks: Mapping[str, Streak]) -> None:
        self.run = run
        self.builder = builder
        self.streaks = streaks
        self.decisions: list[Decision] = []
        self.matches: list[RuleMatch] = []
        self.errors: list[RuleError] = []
        self.after: dict[str, Streak] = {}
        self.evaluated = 0  # rules whose condition ran (a batch runs all its conditions)
        self.proved_false = 0  # rules the pre-filter proved false on this event (below a floor)

    def fail(self, rule: CompiledRule, message: str) -> None:
        self.errors.append(RuleError(rule_id=rule.id, message=message))
        self.decisions.append(self.builder.error(rule, message))

    def matched(self, rule: CompiledRule, evidence: dict[str, Any]) -> bool:
        """Record a match; whether evaluation stops here (an enforce match without ``continue``)."""
        if rule.mode == "shadow":
            self.matches.append(RuleMatch(rule.id, "shadow"))
            self.decisions.append(self.builder.shadow(rule, evidence))
            return False
        self.matches.append(RuleMatch(rule.id, "enforce"))
        self.decisions.extend(self.builder.action(rule, action, evidence) for action in rule.actions)
        return not rule.continue_

    def proved_false_on(self, rule: CompiledRule) -> None:
        """A rule false on the whole event, by the pre-filter's proof: not evaluated; a `for:`
        rule's streak ends here, with no windows (where it ended does not matter)."""
        self.proved_false += 1
        if rule.debounce is not None:
            self.after[rule.id] = NO_STREAK

    def debounce(self, rule: CompiledRule) -> tuple[bool | None, str | None, dict[str, Any]]:
        """A `for:` rule on this event: (fired, error, evidence); its streak goes to ``after``."""
        self.evaluated += 1
        fired, error, streak, evidence = _debounce(self.run, rule, self.streaks.get(rule.id) or NO_STREAK)
        self.after[rule.id] = streak
        return fired, error, evidence


def _debounce(run: EventRun, rule: CompiledRule, streak: Streak) -> tuple[bool, str | None, Streak, dict[str, Any]]:
    """Walk the call's slots, continuing ``streak``: (fired, error, streak after, evidence)."""
    spec = rule.debounce
    assert spec is not None
    count, since, last_end, first = streak.windows, streak.since_s, streak.last_end_s, dict(streak.evidence)
    fired, evidence = False, {}
    windowed = bool(run.slots)
    if windowed:
        spans = [(slot.start, slot.end) for slot in run.slots]
    else:  # an event without windows is one window; events follow each other in time
        t = run.event_time()
        spans = [(t, t)]
    for index, (start, end) in enumerate(spans):
        if windowed and start is not None and last_end is not None and _breaks(start, last_end, since):
            count, since, first = 0, None, {}  # a gap in the call: the streak starts over
        verdict: Verdict = run.held_in(rule, index) if windowed else run.held(rule)
        held, error = verdict
        if error is not None:
            return False, error, _streak(count, since, last_end, first), {}
        if held:
            if count == 0:
                # The first slot of a streak is what its evidence quotes.
                since, first = start, (run.evidence_in(index) if windowed else run.evidence())
            count += 1
            held_s = (end - since) if end is not None and since is not None else 0.0
            if not fired and (
                (spec.windows is not None and count >= spec.windows)
                or (rule.debounce_s is not None and held_s >= rule.debounce_s)
            ):
                evidence = {**first, "windows": count, "held_s": round(held_s, 3)}
                fired = True
        else:
            count, since, first = 0, None, {}
        last_end = end
    return fired, None, _streak(count, since, last_end, first), evidence


def _breaks(start: float, last_end: float, since: float | None) -> bool:
    """Whether a slot starting at ``start`` breaks a streak that last ended at ``last_end``: a gap
    of more than STREAK_GAP_S does, and so does time going back before the streak began.
    Overlap does not: a live stream's windows overlap (10 s every 5 s), and so do a recording's
    windows cut inside speech (preprocess ``overlap_s``)."""
    return start - last_end > STREAK_GAP_S or (since is not None and start < since - STREAK_GAP_S)


def _streak(count: int, since: float | None, last_end: float | None, first: dict[str, Any]) -> Streak:
    # A streak of no windows is no streak: always the same empty one.
    return Streak(count, since, last_end, first) if count else NO_STREAK
