"""Errors of the doors events come in by (HTTP ingress, source adapters)."""

from __future__ import annotations


class IngestError(Exception):
    """Base of the errors of this package."""
