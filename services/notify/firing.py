"""The alerts firing now, which inhibition rules read: in memory, kept in a KV bucket.

Decisions carry no end time yet, so an alert counts as firing for ``notify.firing_s`` after
it was last raised. The queuer reads this set for every decision, so it is held in memory;
each alert it records is also written to the KV bucket ``notify.firing_bucket`` (whose TTL
removes it when it stops firing), and :meth:`FiringAlerts.load` reads the bucket back at
start. Why KV and not memory alone: a restarted queuer would otherwise forget that a
gunshot fired a minute ago and notify the screaming alerts it inhibits.

One queuer replica consumes the decisions, in stream order (see services/notify/queuer.py),
so its memory is the whole set; a second replica would need this set shared live (a KV watch).
Memory follows the bucket where they differ: the grouper's looks call :meth:`forget_erased`, so an
alert that ``listenpost erase`` removed from the bucket stops inhibiting (and leaves memory) at the
next look.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from nats.js.kv import KeyValue
from pydantic import BaseModel

from services.events.kv import bucket_keys, bucket_models
from services.notify.model import Alert

log = logging.getLogger(__name__)


class _Record(BaseModel):
    alert: Alert
    until: float  # epoch seconds


class FiringAlerts:
    """Alerts by fingerprint, each until its ``until``; written through to ``kv`` when given."""

    def __init__(self, firing_s: float, kv: KeyValue | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.firing_s = firing_s
        self._kv = kv
        self._clock = clock
        self._alerts: dict[str, _Record] = {}

    async def load(self) -> int:
        """Read the bucket (at start); how many alerts fire now."""
        if self._kv is None:
            return 0
        records, bad = await bucket_models(self._kv, _Record)
        for key in bad:
            log.warning("firing alerts: key %r of the bucket is not a firing alert; ignored", key)
        self._alerts.update(records)
        return len(self.current())

    async def add(self, alert: Alert) -> None:
        """``alert`` fires from now for ``firing_s``: kept here, and in the bucket."""
        record = _Record(alert=alert, until=self._clock() + self.firing_s)
        if self._kv is not None:
            await self._kv.put(alert.fingerprint, json.dumps(record.model_dump(mode="json")).encode())
        self._alerts[alert.fingerprint] = record

    async def forget_erased(self) -> int:
        """Forget alerts whose key the bucket no longer holds (``listenpost erase`` purged them,
        or their TTL ran out, a moment after they stopped firing here); how many. One request.

        Only alerts already held before the bucket is listed are judged: :meth:`add` writes the
        bucket first, so such an alert is listed unless it was removed since."""
        if self._kv is None or not self._alerts:
            return 0
        held = dict(self._alerts)
        present = set(await bucket_keys(self._kv))
        gone = [fp for fp, record in held.items() if fp not in present and self._alerts.get(fp) is record]
        for fp in gone:
            del self._alerts[fp]
        return len(gone)

    def current(self) -> list[Alert]:
        """The alerts firing now; forgets those that stopped."""
        now = self._clock()
        for key in [k for k, r in self._alerts.items() if r.until <= now]:
            del self._alerts[key]
        return [r.alert for r in self._alerts.values()]
