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
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Sequence

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from services.events.bounds import StreamFullError
from services.events.kv import bucket_models
from services.metrics import recorder
from services.notify.config import NotifyConfig, WatchedConfig
from services.notify.firing import FiringAlerts
from services.notify.groups import AggregationGroup, Flush, due, join_counted, look_at
from services.notify.model import Alert
from services.notify.queue import enqueue
from services.settings import Settings

log = logging.getLogger(__name__)


def _store_key(group_key: str) -> str:
    # Group keys hold matchers and label values: a digest is a valid KV key for any of them.
    return "group." + hashlib.sha256(group_key.encode()).hexdigest()[:40]


class GroupStore:
    """The groups by key, in memory, written through to ``kv`` when given."""

    def __init__(self, kv: KeyValue | None = None) -> None:
        self._kv = kv
        self.groups: dict[str, AggregationGroup] = {}

    async def load(self) -> int:
        """Read the bucket (at start); how many groups there are."""
        if self._kv is None:
            return 0
        groups, bad = await bucket_models(self._kv, AggregationGroup)
        for key in bad:
            log.warning("aggregation groups: key %r of the bucket is not a group; ignored", key)
        self.groups.update((group.key, group) for _, group in groups)
        return len(self.groups)

    async def put(self, group: AggregationGroup) -> None:
        if self._kv is not None:
            await self._kv.put(_store_key(group.key), group.model_dump_json().encode())
        self.groups[group.key] = group

    async def drop(self, key: str) -> None:
        if self._kv is not None:
            with contextlib.suppress(KeyNotFoundError):
                await self._kv.delete(_store_key(key))
        self.groups.pop(key, None)


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
        async with self._lock:
            joined = join_counted(self.store.groups, alerts, config, now, self._settings.notify.firing_s)
            for group in joined.groups.values():
                await self.store.put(group)
        metrics = recorder()
        for receiver, count in joined.deduplicated.items():
            metrics.inc("listenpost_notifications_deduplicated", count, receiver=receiver)
        return len(joined.groups)

    async def look(self, now: float | None = None) -> int:
        """Look at every due group; how many notifications were queued."""
        config = self._config.get()
        if config is None:
            return 0
        now = self._clock() if now is None else now
        queued = 0
        metrics = recorder()
        async with self._lock:
            firing = self._firing.current()
            for group in due(self.store.groups, now):
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
                if outcome.group is None:
                    await self.store.drop(group.key)
                else:
                    await self.store.put(outcome.group)
            metrics.set("listenpost_notify_groups", len(self.store.groups))
        return queued

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
