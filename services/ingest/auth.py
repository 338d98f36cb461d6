"""Who may post events over HTTP, for which sources, how fast: API keys, pure of HTTP.

Each key (:class:`~services.settings.ApiKey`) has an id, a bearer secret, the
CloudEvents ``source`` patterns it may submit for, an optional expiry, a token
bucket and optionally a Standard Webhooks signing secret. Binding keys to sources
is what keeps one client from claiming another's events: JetStream's dedup
(``Nats-Msg-Id``) is derived from source and id, so a key that could post under
any source could pre-empt a PBX's event id and have the real event dropped as a
duplicate, its own audio processed under the victim's call.

:mod:`services.ingest.http` turns the exceptions raised here into problem
documents (401, 403, 429); nothing here knows about requests.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from fnmatch import fnmatchcase

from services.events.webhooks import WebhookSignatureError, verify_webhook_signature
from services.ingest.errors import IngestError
from services.settings import ApiKey

__all__ = [
    "Caller",
    "Keyring",
    "RateLimited",
    "SourceNotAllowed",
    "TokenBucket",
    "Unauthorized",
    "verify_webhook",
]

class Unauthorized(IngestError):
    """No key, an unknown or expired key, or a missing or wrong webhook signature (401)."""

    def __init__(self, detail: str, *, invalid_token: bool = True) -> None:
        super().__init__(detail)
        self.detail = detail
        self.invalid_token = invalid_token  # False: no credentials were presented at all


class SourceNotAllowed(IngestError):
    """The key may not submit events for this source (403)."""


class RateLimited(IngestError):
    """The key has used its rate; ``retry_after_s`` until one more event is allowed (429)."""

    def __init__(self, key_id: str, retry_after_s: int) -> None:
        super().__init__(f"key {key_id!r} is over its rate limit; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


@dataclass
class TokenBucket:
    """A token bucket that may go into debt: a batch is never refused for its size, it is
    paid for afterwards. Hand-written (20 lines) because the maintained limiters either
    wait instead of refusing (aiolimiter) or count fixed windows with no burst (limits),
    and none is installed here."""

    rate_per_s: float
    burst: float
    tokens: float
    updated: float  # time.monotonic() of the last refill

    @classmethod
    def full(cls, rate_per_s: float, burst: float, now: float) -> TokenBucket:
        return cls(rate_per_s=rate_per_s, burst=burst, tokens=burst, updated=now)

    def take(self, now: float, cost: float = 1.0) -> int:
        """Take ``cost`` tokens if one is there; else the whole seconds until one is (nothing taken)."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate_per_s)
        self.updated = now
        if self.tokens < 1.0:
            return max(1, math.ceil((1.0 - self.tokens) / self.rate_per_s))
        self.tokens -= cost
        return 0

    def charge(self, cost: float) -> None:
        """Pay for work already admitted (the rest of a batch): the debt delays the next request."""
        self.tokens -= cost


@dataclass
class Caller:
    """The authenticated client of one request; ``key`` None when anonymous access is on."""

    key: ApiKey | None
    bucket: TokenBucket | None = field(default=None, repr=False)

    @property
    def key_id(self) -> str | None:
        return self.key.id if self.key else None

    def check_source(self, source: str) -> None:
        if self.key is None:
            return  # allow_anonymous: chosen to be open
        if not any(fnmatchcase(source, pattern) for pattern in self.key.sources):
            raise SourceNotAllowed(
                f"key {self.key.id!r} may not submit events for source {source!r}; "
                f"its sources are {', '.join(self.key.sources)}"
            )

    def throttle(self, now: float, cost: int = 1) -> None:
        if self.key is None or self.bucket is None:
            return
        wait_s = self.bucket.take(now, cost)
        if wait_s:
            raise RateLimited(self.key.id, wait_s)

    def charge(self, cost: int) -> None:
        if self.bucket is not None and cost > 0:
            self.bucket.charge(cost)


class Keyring:
    """The configured keys: finds the one a bearer token names, in constant time."""

    def __init__(self, keys: Sequence[ApiKey], now: float) -> None:
        self._keys = list(keys)
        # Digests, not secrets, are compared: equal lengths, so the time taken says nothing of a secret's length.
        self._digests = [_digest(key.secret.get_secret_value() if key.secret else "") for key in self._keys]
        self._buckets = {key.id: TokenBucket.full(key.rate_per_s, key.burst, now) for key in self._keys}

    def __len__(self) -> int:
        return len(self._keys)

    def expired(self, at: datetime) -> list[ApiKey]:
        return [key for key in self._keys if key.expires_at is not None and key.expires_at <= at]

    def identify(self, authorization: str | None, at: datetime) -> Caller:
        """The caller an ``Authorization: Bearer`` header names; :class:`Unauthorized` otherwise."""
        if not authorization:
            raise Unauthorized("missing bearer API key", invalid_token=False)
        scheme, _, token = authorization.strip().partition(" ")
        presented = _digest(token.strip())
        found: ApiKey | None = None
        # Every key is compared, without stopping at a match, so timing does not tell which matched.
        for key, digest in zip(self._keys, self._digests, strict=True):
            if hmac.compare_digest(presented, digest):
                found = key
        if scheme.lower() != "bearer" or found is None:
            raise Unauthorized("invalid API key")
        if found.expires_at is not None and found.expires_at <= at:
            raise Unauthorized(f"API key {found.id!r} expired at {found.expires_at.isoformat()}")
        return Caller(key=found, bucket=self._buckets[found.id])


def verify_webhook(key: bytes, body: bytes, headers: Mapping[str, str], now: float, tolerance_s: float) -> None:
    """Check a Standard Webhooks signature: ``v1,<base64 HMAC-SHA256 of id.timestamp.body>``.

    The check is :func:`services.events.webhooks.verify_webhook_signature`, the same code whose
    :func:`~services.events.webhooks.webhook_signature` the webhook receiver signs with; here a
    failure is a 401. A replay within the tolerance is harmless: the event's source and id make
    it a JetStream duplicate.
    """
    try:
        verify_webhook_signature(key, body, headers, now, tolerance_s)
    except WebhookSignatureError as exc:
        detail = f"this key signs its requests: {exc}" if exc.missing else str(exc)
        raise Unauthorized(detail) from None


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()
