"""Errors of the rules package: loading rule files, their state, their helpers.

Load errors are the shared positioned errors of :mod:`services.dsl.errors` (file, line,
column); a rule that fails on one event is not an exception but a record
(:class:`services.rules.evaluate.RuleError`) and a ``rule.failed`` event.
"""

from __future__ import annotations

from services.dsl.errors import LoadError


class RulesError(Exception):
    """Base of the errors of this package."""


class RuleSetError(RulesError, LoadError):
    """A rule directory did not load: every error found, across all files."""

    what = "rules"
