"""The notifier's status record in the rules status bucket: written by the Notifier deployment,
read by ``rules status``, ``status`` and ``top`` (which may not import the notifier package).

One key, :data:`NOTIFIER_STATUS_KEY`, beside the rules engines' ``status.<replica>`` keys; the
notifier's NATS role may write that key only (services/events/permissions.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from services.events.jetstream import NOTIFIER_STATUS_KEY

__all__ = ["NOTIFIER_STATUS_KEY", "delete_notifier_status", "read_notifier_status", "write_notifier_status"]


async def read_notifier_status(js: Any, bucket: str) -> dict[str, Any] | None:
    """The notifier's last reported status; None when it never reported (off, or not started)."""
    from nats.js.errors import BucketNotFoundError, KeyNotFoundError

    try:
        entry = await (await js.key_value(bucket)).get(NOTIFIER_STATUS_KEY)
    except (BucketNotFoundError, KeyNotFoundError):
        return None
    try:
        value = json.loads(entry.value or b"")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


async def write_notifier_status(js: Any, bucket: str, status: Mapping[str, Any]) -> None:
    await (await js.key_value(bucket)).put(NOTIFIER_STATUS_KEY, json.dumps(status, default=str).encode())


async def delete_notifier_status(js: Any, bucket: str) -> None:
    await (await js.key_value(bucket)).delete(NOTIFIER_STATUS_KEY)
