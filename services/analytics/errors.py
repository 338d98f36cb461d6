"""Errors of the analytics package."""

from __future__ import annotations


class AnalyticsError(Exception):
    """Base of the errors of this package."""


class RowError(AnalyticsError, ValueError):
    """A stored event cannot become a row: its data does not match its event type's model, or it
    has no time. The export counts it as skipped and goes on."""


class ExportError(AnalyticsError):
    """An export cannot run or finish: the output folder, a stream that is missing, a bad range."""
