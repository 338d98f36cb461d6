"""The error base of the event layer: every exception this package raises is an :class:`EventsError`."""

from __future__ import annotations


class EventsError(Exception):
    """Base of the errors of this package (the binding, the consumer loop, dead letters, nats-server)."""
