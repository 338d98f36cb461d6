"""What a bounded stream answers when it is full, as one exception type.

The input and dead-letter streams refuse new messages when they reach their byte or
message limits (``discard: new``). nats-server answers such a publish with a 503 API
error, err_code 10077 and the description ``maximum messages exceeded`` or ``maximum
bytes exceeded`` (checked against nats-server 2.12 in tests/test_streams_bounded.py);
account-wide limits answer 10047/10027/10028. nats-py raises all of these as
``ServiceUnavailableError``, the same type as "JetStream is restarting": retrying them
only makes a client wait, so :func:`stream_full` tells them apart and
:class:`StreamFullError` names the stream and the limit, in plain words.
"""

from __future__ import annotations

from nats.js.errors import APIError

from services.events.errors import EventsError

# JSStreamStoreFailedF (the store's own refusal), JSInsufficientResourcesErr,
# JSAccountResourcesExceededErr, JSStorageResourcesExceededErr.
_STORE_FAILED = 10077
_RESOURCE_LIMITS = frozenset({10047, 10027, 10028})


class StreamFullError(EventsError):
    """A stream refused a publish because it holds as much as its limits allow. Retry later."""

    def __init__(self, subject: str, limit: str) -> None:
        super().__init__(f"the stream that stores {subject} is full ({limit}); nothing was stored, try again later")
        self.subject = subject
        self.limit = limit


def stream_full(exc: BaseException) -> str | None:
    """The limit a publish error reports (``maximum bytes exceeded``...), or None if it is another error."""
    if not isinstance(exc, APIError):
        return None
    description = exc.description or ""
    if exc.err_code == _STORE_FAILED and description.startswith("maximum ") and description.endswith(" exceeded"):
        return description
    if exc.err_code in _RESOURCE_LIMITS:
        return description or "resource limits exceeded"
    return None
