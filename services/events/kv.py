"""Reading every key of a JetStream KV bucket without missing one.

Not ``kv.keys()`` / ``kv.watch()``: nats-py's watcher can signal "initial replay done" before
deliveries already in flight arrive, and then lists too few keys (nats-io/nats.py#842); a
silence, an alert group or a firing alert would go unseen after a restart. The stream's
per-subject index, read server-side in one snapshot, cannot miss a stored key. It also lists
deleted keys (their tombstones), which readers skip.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

__all__ = ["bucket_entries", "bucket_keys", "bucket_models", "bucket_values", "stream_subjects"]

M = TypeVar("M", bound=BaseModel)

#: KV reads in flight at once when a bucket is read whole: thousands of keys must not become
#: thousands of requests at once.
READS_IN_FLIGHT = 32


async def stream_subjects(js: Any, stream: str, subjects_filter: str) -> list[str]:
    """Every subject of ``stream`` matching the filter that holds a message.

    The server answers at most ``JSMaxSubjectDetails`` (100,000) subjects per
    request; beyond that the answer comes in pages by offset.
    """
    found: dict[str, int] = {}
    while True:
        request = {"subjects_filter": subjects_filter, "offset": len(found)}
        # nats-py's public stream_info() neither sends an offset nor returns the page total.
        info = await js._api_request(
            f"{js._prefix}.STREAM.INFO.{stream}",
            json.dumps(request).encode(),
            timeout=js._timeout,
        )
        page = (info.get("state") or {}).get("subjects") or {}
        before = len(found)
        found.update(page)
        if len(found) == before or len(found) >= int(info.get("total") or 0):
            return list(found)



async def bucket_keys(kv: Any, prefix: str = "") -> list[str]:
    """The keys of ``kv`` (a nats-py ``KeyValue``) starting with ``prefix`` (a whole token ending
    in '.', or empty for all) that hold a message, deleted ones included, in key order."""
    pattern = prefix + ">" if prefix.endswith(".") or not prefix else prefix
    start = len(kv._pre)
    return sorted(subject[start:] for subject in await stream_subjects(kv._js, kv._stream, kv._pre + pattern))


async def bucket_entries(kv: Any, prefix: str = "") -> list[tuple[str, bytes, int]]:
    """``(key, value, revision)`` of every live key of ``kv`` starting with ``prefix``, in key
    order (deleted keys and keys gone since they were listed are left out). The revision is what
    a writer that must not overwrite someone else's change passes to ``kv.update(last=...)``."""
    from nats.js.errors import KeyDeletedError, KeyNotFoundError

    limit = asyncio.Semaphore(READS_IN_FLIGHT)

    async def read(key: str) -> tuple[str, bytes, int] | None:
        async with limit:
            try:
                entry = await kv.get(key)
            except (KeyNotFoundError, KeyDeletedError):
                return None
        return (key, entry.value, int(entry.revision or 0)) if entry.value else None

    found = await asyncio.gather(*(read(key) for key in await bucket_keys(kv, prefix)))
    return [item for item in found if item is not None]


async def bucket_values(kv: Any, prefix: str = "") -> list[tuple[str, bytes]]:
    """``(key, value)`` of every live key of ``kv`` starting with ``prefix``, in key order
    (deleted keys and keys gone since they were listed are left out)."""
    return [(key, value) for key, value, _ in await bucket_entries(kv, prefix)]


async def bucket_models(kv: Any, model: type[M], prefix: str = "") -> tuple[list[tuple[str, M]], list[str]]:
    """Every live value of ``kv`` read as ``model`` (JSON), in key order; and the keys whose value
    is not one (for the caller to log: a bucket shared by mistake, an older format)."""
    read: list[tuple[str, M]] = []
    bad: list[str] = []
    for key, value in await bucket_values(kv, prefix):
        try:
            read.append((key, model.model_validate_json(value)))
        except ValidationError:
            bad.append(key)
    return read, bad
