"""Which event a log line is about.

While a replica handles an event, every record it logs carries the event's id as
``event_id`` (a context variable: concurrent events on one replica's event loop keep theirs
apart, and threads started with ``asyncio.to_thread`` inherit it). listenpost's own loggers
write into the replica's Serve log, beside Serve's lines and with Serve's context (deployment,
replica, request id); with ``logs.encoding`` JSON (the default) each line is one JSON object, so
a log shipper, or a grep in the Ray dashboard's log view, finds one event's lines across the
Ingress, Preprocessor, Captioner and RulesEngine.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

_event_id: ContextVar[str | None] = ContextVar("listenpost_event_id", default=None)
_configured = False


def current_event_id() -> str | None:
    return _event_id.get()


@contextlib.contextmanager
def event_context(event_id: str | None) -> Iterator[None]:
    """Log lines written inside carry ``event_id`` (nothing changes when it is None)."""
    if event_id is None:
        yield
        return
    token = _event_id.set(event_id)
    try:
        yield
    finally:
        _event_id.reset(token)


def configure_replica_logging() -> None:
    """Once per replica process: records carry ``event_id``, and the ``services`` loggers write
    to Serve's replica log handlers (in Serve's encoding) instead of the worker's stderr."""
    global _configured
    if _configured:
        return
    _configured = True
    make_record = logging.getLogRecordFactory()

    def with_event_id(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        event_id = _event_id.get()
        if event_id is not None:
            record.event_id = event_id
        return record

    logging.setLogRecordFactory(with_event_id)
    serve_logger = logging.getLogger("ray.serve")
    if serve_logger.handlers:  # set up by Serve in a replica; absent in a plain process
        ours = logging.getLogger("services")
        ours.handlers = list(serve_logger.handlers)
        ours.setLevel(serve_logger.level)
        ours.propagate = False  # or every line would be written twice
