"""Stopping a background loop for certain.

``task.cancel(); await task`` can wait forever on Python 3.11: ``asyncio.wait_for`` (which
nats-py's requests, and so every KV read or write, run through) returns its result and drops
the cancellation when the cancel arrives in the same loop step as the reply it awaited
(CPython gh-86296, fixed by the 3.12 rewrite). A loop that makes NATS requests every 0.1 s hits
that window now and then, goes on looping, and the ``await`` never returns: a notifier that
never stopped was how it showed (one test run in many, on a busy machine).
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)

#: How long between cancels: time for a loop's own cleanup (an unsubscribe, a flush) to finish.
_RETRY_S = 0.5


async def cancel_and_wait(task: asyncio.Task[object] | None, *, timeout_s: float = 10.0) -> bool:
    """Cancel ``task`` again until it has ended, for at most ``timeout_s``.

    Returns whether it ended; one that outlives the bound is logged by name and left behind
    (its loop's next NATS call fails once the connection closes). What the task raised, other
    than its cancellation, is logged, never raised: a stop goes on stopping.
    """
    if task is None:
        return True
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not task.done():
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            log.error("task %s did not stop within %.0f s of being cancelled; left running", task.get_name(), timeout_s)
            return False
        task.cancel()
        await asyncio.wait({task}, timeout=min(_RETRY_S, left))
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("task %s had failed before it was stopped: %s: %s", task.get_name(), type(error).__name__, error)
    return True
