"""The rules engine's pure core: load YAML rule files, evaluate them, build decisions.

No NATS, no Ray: plain functions on plain data, so lint, test, explain and
backtest run the exact code the engine runs. The engine's state (debounce
streaks, rate limits, silences) sits behind the
:class:`~services.rules.state.StateStore` interface: in memory for tests and
tools, NATS KV in the service.
"""

from services.dsl.errors import FileError
from services.rules.decisions import (
    ALERT_RAISED,
    DEFAULT_EMIT_SUBJECTS,
    DEFAULT_PREFIX,
    ROUTE_DECIDED,
    RULE_FAILED,
    RULE_SHADOW_MATCHED,
    TAG_ADDED,
    Decision,
    decision_id,
    fingerprint,
)
from services.rules.errors import RuleSetError
from services.rules.evaluate import Evaluation, RuleError, RuleMatch, Streak, evaluate
from services.rules.expr import VARIABLES
from services.rules.fields import rule_variables
from services.rules.limits import DEFAULT_LIMITS, Limits
from services.rules.loader import lint, load_ruleset, load_sources, rule_files
from services.rules.ruleset import CompiledAction, CompiledRule, RuleSet
from services.rules.schema import API_VERSION, KIND, RuleFileSpec, RuleSpec, json_schema

__all__ = [
    "ALERT_RAISED",
    "API_VERSION",
    "DEFAULT_EMIT_SUBJECTS",
    "DEFAULT_LIMITS",
    "DEFAULT_PREFIX",
    "KIND",
    "ROUTE_DECIDED",
    "RULE_FAILED",
    "RULE_SHADOW_MATCHED",
    "TAG_ADDED",
    "VARIABLES",
    "CompiledAction",
    "CompiledRule",
    "Decision",
    "Evaluation",
    "Limits",
    "RuleError",
    "FileError",
    "RuleFileSpec",
    "RuleMatch",
    "RuleSet",
    "RuleSetError",
    "RuleSpec",
    "Streak",
    "decision_id",
    "evaluate",
    "fingerprint",
    "json_schema",
    "lint",
    "load_ruleset",
    "load_sources",
    "rule_files",
    "rule_variables",
]
