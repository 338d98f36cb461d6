"""Reading the engine's status records from NATS KV (for ``listenpost rules status``)."""

from __future__ import annotations

from typing import Any

from services.rules.state import NatsKVStore

STATUS_PREFIX = "status."
LAST_GOOD_KEY = "ruleset.last-good"


async def read_status(js: Any, bucket: str) -> list[dict[str, Any]]:
    """Every replica's status record, newest report first; [] when no engine ever reported."""
    from nats.js.errors import BucketNotFoundError

    try:
        store = NatsKVStore(await js.key_value(bucket))
    except BucketNotFoundError:
        return []
    records = [entry.value for entry in await store.entries(STATUS_PREFIX)]
    return sorted(records, key=lambda r: -float(r.get("updated_at") or 0.0))
