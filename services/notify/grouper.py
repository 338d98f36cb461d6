"""The aggregation groups of the notifier: alerts join them, due groups are queued as notifications.

The pure rules are in :mod:`services.notify.groups`; this is their I/O. Groups are held in memory
(one queuer replica consumes the decisions, see services/notify/queuer.py) and written through
to the KV bucket ``notify.groups_bucket``, read back at start, so a restart neither forgets what
it was about to send nor tells an alert twice.

:meth:`Grouper.add` (the queuer, per decision) and :meth:`Grouper.look` (the flusher, every
``notify.flush_interval_s``) take one lock: a look that queues a notification and then keeps the
group must not overwrite an alert that joined in between.

A notification is stored with a ``Nats-Msg-Id`` made from its group, its place in the group's
sequence and its alerts (services/notify/queue.py): after a crash between queueing it and
keeping the group, the next look queues the same id, and JetStream keeps one.

**The bucket is the truth, memory a copy.** ``listenpost erase --callid`` removes a call's
alerts from the bucket (it purges a group of that call alone, and rewrites a group shared with
other calls without them) while the notifier runs. Memory must not write them back, nor send
them. So the store writes with optimistic concurrency (``kv.create``, then ``kv.update`` with
the revision it last wrote or read): a write against a group the bucket no longer holds as this
store left it fails, and memory takes the bucket's version (or forgets the group). Each look
first forgets the groups whose key the bucket no longer holds (one request for the whole bucket),
and reads each due group again before it is told, so an erased call's alerts are never queued
after the erasure, and a group erased whole leaves memory at the next look.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence

from nats.js import JetStreamContext
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from services.events.bounds import StreamFullError
from services.events.kv import bucket_entries, bucket_keys
from services.metrics import recorder
from services.notify.config import NotifyConfig, WatchedConfig
from services.notify.firing import FiringAlerts
from services.notify.groups import AggregationGroup, Flush, due, join_all, join_counted, look_at
from services.notify.model import Alert
from services.notify.queue import enqueue
from services.settings import Settings

log = logging.getLogger(__name__)


_GROUP_PREFIX = "group."
#: JetStream's "wrong last sequence" errors: the key is not at the revision the writer expected.
_WRONG_LAST_SEQUENCE = (10071, 10164)
#: Joins tried again after the bucket changed under a group: only an erasure writes there besides
#: this store, so a second conflict in a row is already unexpected.
_JOIN_ATTEMPTS = 3


class GroupConflictError(RuntimeError):
    """A group's bucket entry kept changing under the store while alerts joined it."""


def _store_key(group_key: str) -> str:
    # Group keys hold matchers and label values: a digest is a valid KV key for any of them.
    return _GROUP_PREFIX + hashlib.sha256(group_key.encode()).hexdigest()[:40]


class GroupStore:
    """The groups by key, in memory, written through to ``kv`` when given (see the module's
    docstring: the bucket wins over memory when they differ)."""

    def __init__(self, kv: KeyValue | None = None) -> None:
        self._kv = kv
        self.groups: dict[str, AggregationGroup] = {}
        self._revisions: dict[str, int] = {}  # by group key: the bucket revision memory holds

    async def load(self) -> int:
        """Read the bucket (at start); how many groups there are."""
        if self._kv is None:
            return 0
        for store_key, value, revision in await bucket_entries(self._kv, _GROUP_PREFIX):
            group = _parse(store_key, value)
            if group is not None:
                self._keep(group, revision)
        return len(self.groups)

    async def put(self, group: AggregationGroup) -> bool:
        """Keep ``group``; False when the bucket no longer holds the group as this store last
        saw it (erased or rewritten): then nothing is written, and memory holds the bucket's
        version, or nothing, for the caller to work from."""
        if self._kv is None:
            self.groups[group.key] = group
            return True
        value = group.model_dump_json().encode()
        known = self._revisions.get(group.key)
        try:
            if known is None:
                revision = await self._kv.create(_store_key(group.key), value)
            else:
                revision = await self._kv.update(_store_key(group.key), value, last=known)
        except KeyWrongLastSequenceError:
            await self.refresh(group.key)
            return False
        self._keep(group, revision)
        return True

    async def drop(self, key: str) -> bool:
        """Forget the group (it has no alerts left); False when the bucket's entry changed since
        this store saw it: then it is not deleted, and memory holds the bucket's version."""
        if self._kv is not None:
            try:
                await self._kv.delete(_store_key(key), last=self._revisions.get(key))
            except KeyNotFoundError:
                pass  # already gone (erased): what dropping it wanted
            except APIError as exc:  # nats-py's delete() does not turn this one into KeyWrongLastSequenceError
                if exc.err_code not in _WRONG_LAST_SEQUENCE:
                    raise
                return await self.refresh(key) is None
        self._forget(key)
        return True

    async def refresh(self, key: str) -> AggregationGroup | None:
        """The group as the bucket holds it now, which memory takes; None (and forgotten) when
        the bucket no longer holds it."""
        if self._kv is None:
            return self.groups.get(key)
        try:
            entry = await self._kv.get(_store_key(key))
        except KeyNotFoundError:  # deleted or purged (nats-py raises this for both)
            entry = None
        group = _parse(_store_key(key), entry.value) if entry is not None and entry.value else None
        if entry is None or group is None or group.key != key:
            self._forget(key)
            return None
        self._keep(group, int(entry.revision or 0))
        return group

    async def forget_erased(self) -> list[str]:
        """Forget the groups whose key the bucket no longer holds (``listenpost erase`` purged
        them); their keys. One request, however many groups."""
        if self._kv is None or not self.groups:
            return []
        present = set(await bucket_keys(self._kv, _GROUP_PREFIX))
        gone = [key for key in self.groups if _store_key(key) not in present]
        for key in gone:
            self._forget(key)
        return gone

    def _keep(self, group: AggregationGroup, revision: int) -> None:
        self.groups[group.key] = group
        self._revisions[group.key] = revision

    def _forget(self, key: str) -> None:
        self.groups.pop(key, None)
        self._revisions.pop(key, None)


def _parse(store_key: str, value: bytes) -> AggregationGroup | None:
    try:
        return AggregationGroup.model_validate_json(value)
    except ValidationError:
        log.warning("aggregation groups: key %r of the bucket is not a group; ignored", store_key)
        return None


class Grouper:
    """Alerts into their routes' groups; due groups out as queued notifications."""

    def __init__(
        self,
        js: JetStreamContext,
        settings: Settings,
        *,
        config: WatchedConfig,
        firing: FiringAlerts,
        store: GroupStore,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._js = js
        self._settings = settings
        self._config = config
        self._firing = firing
        self.store = store
        self._clock = clock
        self._lock = asyncio.Lock()
        self.failure: BaseException | None = None

    async def add(self, alerts: Sequence[Alert], config: NotifyConfig, now: float | None = None) -> int:
        """Each alert joins its group on every route it reaches; how many groups changed.

        An alert already firing in its group is counted as deduplicated: since the rules engine
        records every alert it raises, this is the one place a repeat is told apart."""
        now = self._clock() if now is None else now
        firing_s = self._settings.notify.firing_s
        async with self._lock:
            joined = join_counted(self.store.groups, alerts, config, now, firing_s)
            changed = joined.groups
            count = len(changed)
            for _ in range(_JOIN_ATTEMPTS):
                stale = [group.key for group in changed.values() if not await self.store.put(group)]
                if not stale:
                    break
                # The bucket changed under these groups (an erasure): join what it holds now.
                again = join_all(self.store.groups, alerts, config, now, firing_s)
                changed = {key: again[key] for key in stale}
            else:
                raise GroupConflictError(
                    f"aggregation groups {sorted(changed)} kept changing in the bucket while alerts joined them"
                )
        metrics = recorder()
        for receiver, repeats in joined.deduplicated.items():
            metrics.inc("listenpost_notifications_deduplicated", repeats, receiver=receiver)
        return count

    async def look(self, now: float | None = None) -> int:
        """Look at every due group; how many notifications were queued."""
        config = self._config.get()
        if config is None:
            return 0
        now = self._clock() if now is None else now
        queued = 0
        metrics = recorder()
        async with self._lock:
            await self._forget_erased()
            firing = self._firing.current()
            for stale in due(self.store.groups, now):
                # Read again before telling it: an erasure may have rewritten it without a call's alerts.
                group = await self.store.refresh(stale.key)
                if group is None:
                    log.info("aggregation group %s is no longer in the bucket (erased): dropped", stale.key)
                    continue
                outcome = look_at(group, config, firing, now)
                self._report(group, outcome)
                if outcome.notification is not None:
                    try:
                        stored = await enqueue(self._js, self._settings.nats, outcome.notification, self._settings.source)
                    except StreamFullError as exc:
                        # Kept as it was: the next look tries again with the same key.
                        log.error("notification for %s not queued: %s; tried again at the next look", group.receiver, exc)
                        continue
                    if stored:
                        queued += 1
                        metrics.inc("listenpost_notifications_queued", receiver=group.receiver)
                kept = await self.store.drop(group.key) if outcome.group is None else await self.store.put(outcome.group)
                if not kept:
                    log.warning("aggregation group %s changed in the bucket while it was looked at (erased?): "
                                "the bucket's version is kept", group.key)  # fmt: skip
            metrics.set("listenpost_notify_groups", len(self.store.groups))
        return queued

    async def _forget_erased(self) -> None:
        """Memory lets go of what ``listenpost erase`` removed from the buckets since the last look."""
        for key in await self.store.forget_erased():
            log.info("aggregation group %s is no longer in the bucket (erased): dropped", key)
        forgotten = await self._firing.forget_erased()
        if forgotten:
            log.info("%d firing alert(s) no longer in the bucket (erased): dropped", forgotten)

    @staticmethod
    def _report(group: AggregationGroup, outcome: Flush) -> None:
        if outcome.held_back and outcome.held_reason is not None:
            recorder().inc("listenpost_notifications_skipped", len(outcome.held_back), reason=outcome.held_reason)
            why = f"route {outcome.reason}" if outcome.held_reason == "muted" else "inhibited"
            log.info("group %s: %d alert(s) not told to %s: %s", group.key, len(outcome.held_back), group.receiver, why)
        if outcome.group is None and outcome.reason.startswith("receiver"):
            log.warning("aggregation group %s dropped: %s", group.key, outcome.reason)

    async def run(self, interval_s: float) -> None:
        """Look every ``interval_s`` until cancelled; a failed look (NATS trouble) is logged and
        the next one tries again (the groups are unchanged)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.look()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - NATS or KV trouble: the next look retries
                log.error("looking at aggregation groups failed: %s: %s", type(exc).__name__, exc)
