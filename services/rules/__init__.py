"""The rules engine's pure core: load YAML rule files, evaluate them, build decisions.

No NATS, no Ray: plain functions on plain data, so lint, test, explain and
backtest run the exact code the engine runs.
"""

from .decisions import (
    ALERT_RAISED,
    DEFAULT_PREFIX,
    ROUTE_DECIDED,
    RULE_FAILED,
    RULE_SHADOW_MATCHED,
    TAG_ADDED,
    Decision,
    decision_id,
    fingerprint,
)
from .errors import RuleFileError, RuleSetError
from .evaluate import Evaluation, RuleError, RuleMatch, evaluate, rule_variables
from .expr import VARIABLES
from .loader import lint, load_ruleset, rule_files
from .ruleset import CompiledAction, CompiledRule, RuleSet
from .schema import API_VERSION, KIND, RuleFileSpec, RuleSpec

__all__ = [
    "ALERT_RAISED",
    "API_VERSION",
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
    "RuleError",
    "RuleFileError",
    "RuleFileSpec",
    "RuleMatch",
    "RuleSet",
    "RuleSetError",
    "RuleSpec",
    "decision_id",
    "evaluate",
    "fingerprint",
    "lint",
    "load_ruleset",
    "rule_files",
    "rule_variables",
]
