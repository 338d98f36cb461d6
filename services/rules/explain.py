"""``listenpost rules explain EVENT.json``: why each rule did or did not match one event.

For every rule, in evaluation order, one of:

- ``matched`` / ``shadow``: the condition held (and what the rule did, or would do);
- ``not matched``: the first top-level clause (``a && b && c``) that was false,
  or that failed, with its value;
- ``pending``: a ``for:`` rule whose condition held, but not long enough yet;
- ``error``: the evaluation failed, and the clause where it failed;
- ``not applicable``: the event's type or source is not in ``match``;
- ``not reached``: an earlier rule matched and did not say ``continue: true``;
- ``disabled``.

It runs the engine's own :func:`evaluate` for the outcome; clauses are then
evaluated one by one, each compiled by the same CEL library.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import cel

from services.dsl.cel_checks import runtime_message
from services.rules.analysis import clause_text, conjuncts, disjuncts
from services.rules.conditions import EvalContext, EventRun
from services.rules.decisions import DEFAULT_PREFIX
from services.rules.evaluate import Evaluation, evaluate
from services.rules.limits import DEFAULT_LIMITS, Limits
from services.rules.ruleset import CompiledRule, RuleSet


@dataclass
class Explanation:
    rule_id: str
    priority: int
    mode: str
    status: str  # matched, shadow, not matched, pending, error, not applicable, not reached, disabled
    reason: str = ""
    clause: str | None = None
    actions: list[dict[str, Any]] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, "", [], {})}


@dataclass
class Report:
    ruleset_version: str
    event: dict[str, Any]
    rules: list[Explanation]
    evaluation: Evaluation

    def to_json(self) -> dict[str, Any]:
        return {
            "ruleset_version": self.ruleset_version,
            "event": self.event,
            "rules": [r.to_json() for r in self.rules],
            "decisions": [d.model_dump(exclude_none=True) for d in self.evaluation.decisions],
        }


def event_from_json(value: Any) -> tuple[dict[str, Any], Any]:
    """A structured-mode CloudEvent (``specversion`` ...), or bare captioned ``data``."""
    if isinstance(value, Mapping) and "specversion" in value:
        attributes = {k: v for k, v in value.items() if k not in ("data", "data_base64")}
        data = value.get("data")
        if isinstance(data, str) and str(value.get("datacontenttype", "application/json")).endswith("json"):
            try:
                data = json.loads(data)
            except ValueError:
                pass
        return attributes, data
    attributes = {
        "specversion": "1.0",
        "id": "explain",
        "source": "/listenpost/explain",
        "type": "com.listenpost.audio.captioned",
    }
    return attributes, value


def explain(
    ruleset: RuleSet,
    attributes: Mapping[str, Any],
    data: Any,
    *,
    prefix: str = DEFAULT_PREFIX,
    limits: Limits = DEFAULT_LIMITS,
) -> Report:
    evaluation = evaluate(ruleset, attributes, data, prefix=prefix, limits=limits, prefilter=False, batch=False)
    matched = {m.rule_id: m for m in evaluation.matches}
    errors = {e.rule_id: e.message for e in evaluation.errors}
    by_rule: dict[str, list[Any]] = {}
    for decision in evaluation.decisions:
        by_rule.setdefault(decision.rule_id, []).append(decision)
    event_type, source = str(attributes.get("type", "")), str(attributes.get("source", ""))
    run = EventRun(ruleset, attributes, data, limits, prefilter=False)
    context = EvalContext()
    context.current.facts = run.facts
    context.context.update(run.variables)
    stopped_by: str | None = None
    out: list[Explanation] = []
    for rule in ruleset.rules:
        item = Explanation(rule.id, rule.spec.priority, rule.mode, status="")
        out.append(item)
        if rule.mode == "disabled":
            item.status = "disabled"
            continue
        if not rule.applies(event_type, source):
            item.status = "not applicable"
            item.reason = (
                f"type {event_type!r} is not in {rule.spec.match.types}"
                if not any(_glob(event_type, p) for p in rule.spec.match.types)
                else f"source {source!r} is not in {rule.spec.match.sources}"
            )
            continue
        if stopped_by is not None:
            item.status = "not reached"
            item.reason = f"{stopped_by} matched first (without continue: true)"
            continue
        if rule.id in matched:
            decisions = by_rule.get(rule.id, [])
            item.status = "shadow" if matched[rule.id].mode == "shadow" else "matched"
            item.actions = [
                {
                    "kind": d.kind,
                    "subject": d.subject,
                    **{k: d.data[k] for k in ("queue", "severity", "summary", "tags", "actions") if k in d.data},
                }
                for d in decisions
            ]
            if decisions and decisions[0].data.get("evidence"):
                item.evidence = decisions[0].data["evidence"]
            if item.status == "matched" and not rule.spec.continue_:
                stopped_by = rule.id
            continue
        if rule.id in errors:
            item.status = "error"
            item.reason = errors[rule.id]
            item.clause = _failing_clause(rule, context)[0]
            continue
        if rule.debounce is not None and _held_anywhere(run, rule):
            item.status = "pending"
            need = f"{rule.debounce.windows} windows" if rule.debounce.windows else rule.debounce.duration
            item.reason = f"the condition held, but not for {need} in a row"
            continue
        item.status = "not matched"
        item.clause, item.reason = _failing_clause(rule, context)
    return Report(ruleset.version, dict(attributes), out, evaluation)


def _glob(value: str, pattern: str) -> bool:
    from fnmatch import fnmatchcase

    return fnmatchcase(value, pattern)


def _held_anywhere(run: EventRun, rule: CompiledRule) -> bool:
    run.start()
    try:
        if not run.slots:
            return run.held(rule)[0] is True
        return any(run.held_in(rule, i)[0] is True for i in range(len(run.slots)))
    finally:
        run.finish()


def _failing_clause(rule: CompiledRule, context: EvalContext) -> tuple[str | None, str]:
    analysis = rule.condition.analysis
    source = analysis.source
    if analysis.ast is None:
        return source.strip(), "the condition was false"
    clauses = conjuncts(analysis.ast)
    if len(clauses) == 1 and len(disjuncts(analysis.ast)) > 1:
        parts = disjuncts(analysis.ast)
        values = [_value(clause_text(source, (p.start, p.end)), context) for p in parts]
        shown = "; ".join(f"{clause_text(source, (p.start, p.end))} -> {v}" for p, v in zip(parts, values, strict=True))
        return clause_text(source, (analysis.ast.start, analysis.ast.end)), f"no alternative held: {shown}"
    for clause in clauses:
        text = clause_text(source, (clause.start, clause.end))
        value = _value(text, context)
        if value != "true":
            return text, f"{text} -> {value}"
    return None, "every clause held alone, but not together"


def _value(text: str, context: EvalContext) -> str:
    try:
        result = cel.compile(text).execute(context.context)
    except Exception as exc:  # noqa: BLE001 -- an evaluation error is an answer here
        return f"an error ({runtime_message(exc).splitlines()[0]})"
    if isinstance(result, bool):
        return "true" if result else "false"
    return json.dumps(result, default=str)[:80]
