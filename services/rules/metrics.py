"""What one rules outcome tells the metrics: evaluations, matches, errors, alert hygiene.

A plain function over :class:`~services.rules.engine.Outcome`, called by the RulesEngine
once the decisions are stored; the declarations are in :mod:`services.metrics`. Shadow
matches are not counted as matches (they act on nothing); their notices are decisions.
"""

from __future__ import annotations

from services.metrics import Recorder, recorder
from services.rules.engine import Outcome


def observe_outcome(outcome: Outcome, *, seconds: float, stored_age_s: float | None, metrics: Recorder | None = None) -> None:
    """Record one event's rules outcome; ``stored_age_s``: captioned stored to decisions stored."""
    m = metrics or recorder()
    m.observe("listenpost_stage_latency_seconds", seconds, stage="rules")
    if stored_age_s is not None and outcome.publish:
        m.observe("listenpost_end_to_end_latency_seconds", stored_age_s, stage="decided")
    evaluation = outcome.evaluation
    if evaluation is None:
        return
    version = evaluation.ruleset_version
    m.inc("listenpost_rule_evaluations", evaluation.evaluated, ruleset_version=version)
    for match in evaluation.matches:
        if match.mode == "enforce":
            m.inc("listenpost_rule_matches", rule_id=match.rule_id, ruleset_version=version)
    for error in evaluation.errors:
        m.inc("listenpost_rule_errors", rule_id=error.rule_id, ruleset_version=version)
    for decision in outcome.publish:
        if decision.kind == "alert":
            m.inc("listenpost_alerts", rule_id=decision.rule_id, outcome="notified")
    for held in outcome.suppressed:
        m.inc("listenpost_alerts", rule_id=held.decision.rule_id, outcome=held.reason)
