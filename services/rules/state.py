"""Where the engine keeps state that must outlive a replica: a small key-value interface.

Debounce streaks, alert dedup records, rate-limit windows, alert groups,
silences and the engine's status all live behind :class:`StateStore`:

- :class:`MemoryStore` for unit tests, ``rules test`` and ``rules backtest``
  (which must have no side effects);
- :class:`NatsKVStore` in the service: NATS JetStream KV, so a restart or a
  second replica sees the same state. Writes are compare-and-set on the key's
  revision (``kv.update(key, value, last=revision)``), so two replicas racing
  on one alert group never lose an update: the loser re-reads and retries
  (:func:`mutate`).

Values are JSON objects.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from services.events.kv import READS_IN_FLIGHT, bucket_keys
from services.rules.errors import RulesError

log = logging.getLogger(__name__)

Value = dict[str, Any]


class Conflict(RulesError):
    """A compare-and-set lost: the key changed (or appeared) since it was read."""


@dataclass(frozen=True)
class Entry:
    key: str
    value: Value
    revision: int


class StateStore(Protocol):
    async def get(self, key: str) -> Entry | None: ...

    async def create(self, key: str, value: Value) -> int:
        """Write a new key; :class:`Conflict` if it exists."""
        ...

    async def update(self, key: str, value: Value, revision: int) -> int:
        """Replace the key if it is still at ``revision``; :class:`Conflict` otherwise."""
        ...

    async def put(self, key: str, value: Value) -> int: ...

    async def delete(self, key: str) -> None: ...

    async def entries(self, prefix: str) -> list[Entry]:
        """Every key starting with ``prefix`` (a whole token ending in '.': ``"group."``), read, in key order."""
        ...

    async def keys(self, prefix: str) -> list[str]:
        """The keys :meth:`entries` would read."""
        ...


def safe_key(text: str) -> str:
    """Any string as a KV key token (KV keys allow only ``[-/_=.a-zA-Z0-9]``)."""
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class _Unchanged:
    pass


UNCHANGED: Any = _Unchanged()


async def mutate(
    store: StateStore, key: str, change: Callable[[Value | None], Value | None], *, attempts: int = 10
) -> Value | None:
    """Read-modify-write with optimistic concurrency.

    ``change`` gets the current value (None: absent) and returns the new value,
    None to delete, or :data:`UNCHANGED`. It may run several times: keep it pure.
    """
    for attempt in range(attempts):
        entry = await store.get(key)
        current = copy.deepcopy(entry.value) if entry is not None else None
        new = change(current)
        if new is UNCHANGED:
            return entry.value if entry is not None else None
        try:
            if new is None:
                if entry is not None:
                    await store.delete(key)
                return None
            if entry is None:
                await store.create(key, new)
            else:
                await store.update(key, new, entry.revision)
            return new
        except Conflict:
            await asyncio.sleep(0.002 * (attempt + 1))
    raise Conflict(f"{key}: still changing after {attempts} attempts")


class MemoryStore:
    """An in-process :class:`StateStore` with the same revision semantics as NATS KV."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[str, int]] = {}
        self._revision = 0
        self.writes = 0

    def _next(self) -> int:
        self._revision += 1
        self.writes += 1
        return self._revision

    async def get(self, key: str) -> Entry | None:
        found = self._data.get(key)
        return Entry(key, json.loads(found[0]), found[1]) if found else None

    async def create(self, key: str, value: Value) -> int:
        if key in self._data:
            raise Conflict(key)
        rev = self._next()
        self._data[key] = (json.dumps(value), rev)
        return rev

    async def update(self, key: str, value: Value, revision: int) -> int:
        found = self._data.get(key)
        if found is None or found[1] != revision:
            raise Conflict(key)
        rev = self._next()
        self._data[key] = (json.dumps(value), rev)
        return rev

    async def put(self, key: str, value: Value) -> int:
        rev = self._next()
        self._data[key] = (json.dumps(value), rev)
        return rev

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)

    async def entries(self, prefix: str) -> list[Entry]:
        return [entry for key in await self.keys(prefix) if (entry := await self.get(key)) is not None]

    async def keys(self, prefix: str) -> list[str]:
        return sorted(k for k in self._data if k.startswith(prefix))


class NatsKVStore:
    """A :class:`StateStore` on one NATS JetStream KV bucket."""

    def __init__(self, kv: Any) -> None:
        self._kv = kv

    @property
    def bucket(self) -> str:
        return str(self._kv._name)

    async def get(self, key: str) -> Entry | None:
        from nats.js.errors import KeyDeletedError, KeyNotFoundError

        try:
            entry = await self._kv.get(key)
        except (KeyNotFoundError, KeyDeletedError):
            return None
        if entry.value is None or entry.value == b"":
            return None
        return Entry(key, json.loads(entry.value), int(entry.revision))

    async def create(self, key: str, value: Value) -> int:
        from nats.js.errors import KeyWrongLastSequenceError

        try:
            return int(await self._kv.create(key, _encode(value)))
        except KeyWrongLastSequenceError as exc:
            raise Conflict(key) from exc

    async def update(self, key: str, value: Value, revision: int) -> int:
        from nats.js.errors import KeyWrongLastSequenceError

        try:
            return int(await self._kv.update(key, _encode(value), last=revision))
        except KeyWrongLastSequenceError as exc:
            raise Conflict(key) from exc

    async def put(self, key: str, value: Value) -> int:
        return int(await self._kv.put(key, _encode(value)))

    async def delete(self, key: str) -> None:
        await self._kv.delete(key)

    async def entries(self, prefix: str) -> list[Entry]:
        # Listed from the stream's subject index, never nats-py's watcher (services/events/kv.py):
        # a silence or an alert group must not go unseen.
        limit = asyncio.Semaphore(READS_IN_FLIGHT)

        async def read(key: str) -> Entry | None:
            async with limit:
                return await self.get(key)

        found = await asyncio.gather(*(read(key) for key in await bucket_keys(self._kv, prefix)))
        return [entry for entry in found if entry is not None]

    async def keys(self, prefix: str) -> list[str]:
        return [entry.key for entry in await self.entries(prefix)]


def _encode(value: Value) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


async def open_bucket(
    js: Any, bucket: str, *, ttl_s: float | None = None, history: int = 1, replicas: int = 1
) -> NatsKVStore:
    """Bind to a KV bucket, creating it (``replicas`` copies) if absent; safe to call from every
    replica at start."""
    from nats.js.api import KeyValueConfig, StorageType
    from nats.js.errors import BadRequestError, BucketNotFoundError

    for _ in range(3):
        try:
            return NatsKVStore(await js.key_value(bucket))
        except BucketNotFoundError:
            pass
        try:
            config = KeyValueConfig(bucket=bucket, history=history, ttl=ttl_s, storage=StorageType.FILE, replicas=replicas)
            kv = await js.create_key_value(config)
            log.info("created KV bucket %s", bucket)
            return NatsKVStore(kv)
        except BadRequestError:  # another replica created it meanwhile: bind on the next turn
            await asyncio.sleep(0.05)
    return NatsKVStore(await js.key_value(bucket))


@dataclass(frozen=True)
class Stores:
    """The engine's buckets: state (streaks, dedup, rate limits, groups), silences, status."""

    state: StateStore
    silences: StateStore
    status: StateStore


async def open_stores(
    js: Any, *, state_bucket: str, silence_bucket: str, status_bucket: str, state_ttl_s: float, replicas: int = 1
) -> Stores:
    state, silences, status = await asyncio.gather(
        open_bucket(js, state_bucket, ttl_s=state_ttl_s, replicas=replicas),
        open_bucket(js, silence_bucket, replicas=replicas),
        open_bucket(js, status_bucket, replicas=replicas),
    )
    return Stores(state=state, silences=silences, status=status)


def memory_stores() -> Stores:
    return Stores(state=MemoryStore(), silences=MemoryStore(), status=MemoryStore())


Opener = Callable[[], Awaitable[Stores]]
