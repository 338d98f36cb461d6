"""Standard Webhooks signatures (https://www.standardwebhooks.com/): one implementation, both ways.

The HTTP ingress verifies them on events posted to it (:func:`services.ingest.auth.verify_webhook`
turns a failure into a 401); the webhook receiver signs the notifications it posts
(``services.notify.receivers.webhook``). Both call :func:`webhook_signature`, so a notification
listenpost signs is one its own ingress would accept.

A signature is ``v1,<base64 of HMAC-SHA256 over "webhook-id.webhook-timestamp.body">``, keyed by
the bytes of the secret (``whsec_`` + base64: :func:`services.settings.webhook_secret_key`).
Hand-written rather than the ``standardwebhooks`` package, which decodes the body as UTF-8
(a binary-mode event's data is audio bytes), has a fixed 5-minute tolerance and lets a
malformed signature header escape as ValueError.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from typing import Final

from services.events.errors import EventsError

__all__ = ["WEBHOOK_HEADERS", "WebhookSignatureError", "sign_webhook", "verify_webhook_signature", "webhook_signature"]

#: The Standard Webhooks headers, in the order the signature covers them.
WEBHOOK_HEADERS: Final = ("webhook-id", "webhook-timestamp", "webhook-signature")


class WebhookSignatureError(EventsError):
    """A request's webhook headers are missing, stale or do not match its body.

    ``missing`` names the absent headers (empty when they were there but wrong)."""

    def __init__(self, detail: str, missing: tuple[str, ...] = ()) -> None:
        super().__init__(detail)
        self.missing = missing


def webhook_signature(key: bytes, msg_id: str, timestamp: int | str, body: bytes) -> bytes:
    """HMAC-SHA256 of ``msg_id.timestamp.body`` (the raw digest: ``v1,`` + its base64 is the header)."""
    return hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()


def sign_webhook(key: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers of a signed request: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``."""
    signature = "v1," + base64.b64encode(webhook_signature(key, msg_id, timestamp, body)).decode("ascii")
    return dict(zip(WEBHOOK_HEADERS, (msg_id, str(timestamp), signature), strict=True))


def verify_webhook_signature(key: bytes, body: bytes, headers: Mapping[str, str], now: float, tolerance_s: float) -> None:
    """Check a request's signature (any one ``v1`` of the space-separated list may match) and that its
    timestamp is within ``tolerance_s`` of ``now``; :class:`WebhookSignatureError` otherwise.

    ``headers`` are looked up by their lower-case names. A replay within the tolerance passes: the
    receiving end dedupes by ``webhook-id``.
    """
    msg_id, timestamp, signatures = (headers.get(name, "").strip() for name in WEBHOOK_HEADERS)
    if not (msg_id and timestamp and signatures):
        missing = tuple(name for name in WEBHOOK_HEADERS if not headers.get(name, "").strip())
        raise WebhookSignatureError(f"missing header(s) {', '.join(missing)}", missing)
    if not timestamp.isdigit() or len(timestamp) > 12:
        raise WebhookSignatureError("webhook-timestamp is not a Unix time in whole seconds")
    skew = abs(int(now) - int(timestamp))
    if skew > tolerance_s:
        raise WebhookSignatureError(f"webhook-timestamp is {skew} s from now, more than the {tolerance_s:g} s tolerance")
    expected = webhook_signature(key, msg_id, timestamp, body)
    matched = False
    for versioned in signatures.split():
        version, _, encoded = versioned.partition(",")
        try:
            presented = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        matched |= version == "v1" and hmac.compare_digest(expected, presented)
    if not matched:
        raise WebhookSignatureError(
            "no webhook-signature matches the request (v1: HMAC-SHA256 of webhook-id.webhook-timestamp.body)"
        )
