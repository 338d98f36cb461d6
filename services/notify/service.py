"""The notifier as one unit: the queuer, the aggregation groups' looks, the sender and the CRM
writer on one NATS connection.

What a deployment (or a test) starts and stops; it owns the HTTP client it makes, the watched
notification file, and the firing set. The connection is the caller's (role ``notify``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx
from nats.js import JetStreamContext

from services.events.consumer import PullConsumer
from services.events.tasks import cancel_and_wait
from services.notify.config import WatchedConfig
from services.notify.crm_writer import CrmWriter
from services.notify.firing import FiringAlerts
from services.notify.grouper import Grouper, GroupStore
from services.notify.queuer import Queuer
from services.notify.receivers import SecretSource
from services.notify.receivers.secrets import configured_secrets
from services.notify.sender import Sender
from services.settings import Settings

log = logging.getLogger(__name__)


class Notifier:
    """Queues notifications for alert decisions and delivers them, until :meth:`stop`."""

    def __init__(
        self,
        js: JetStreamContext,
        settings: Settings,
        *,
        secrets: SecretSource | None = None,
        client: httpx.AsyncClient | None = None,
        queue: bool = True,
        send: bool = True,
        crm: bool = True,
    ) -> None:
        notify = settings.notify
        self._js = js
        self._settings = settings
        self._secrets = secrets if secrets is not None else configured_secrets(notify)
        self._own_client = client is None
        # One client for every receiver: pooled connections; each request sets its own timeout.
        self._client = client or httpx.AsyncClient(follow_redirects=False)
        self.config = WatchedConfig(notify.file, interval_s=notify.reload_interval_s)
        self._roles = (queue, send)
        self._crm = crm
        self._consumers: list[PullConsumer] = []
        self._waiting: asyncio.Task[None] | None = None
        self.firing: FiringAlerts | None = None
        self.grouper: Grouper | None = None
        self._looks: asyncio.Task[None] | None = None
        self.crm_writer: CrmWriter | None = None
        self.sender: Sender | None = None

    async def start(self) -> None:
        """Start consuming once the notification file has loaded: until then decisions and
        notifications wait in their streams (retrying them would only use up their attempts)."""
        if self.config.get() is None:
            log.error("no notification is queued or sent until %s loads", self.config.last_good.path)
            self._waiting = asyncio.get_running_loop().create_task(self._start_when_loaded(), name="notify-wait-config")
            return
        await self._start_consumers()

    async def _start_when_loaded(self) -> None:
        while self.config.get() is None:
            await asyncio.sleep(self.config.interval_s)
        await self._start_consumers()

    async def _start_consumers(self) -> None:
        queue, send = self._roles
        if queue:
            notify = self._settings.notify
            self.firing = FiringAlerts(notify.firing_s, await self._js.key_value(notify.firing_bucket))
            firing = await self.firing.load()
            store = GroupStore(await self._js.key_value(notify.groups_bucket))
            groups = await store.load()
            log.info("notifier: %d alert(s) firing, %d aggregation group(s), read from %s and %s",
                     firing, groups, notify.firing_bucket, notify.groups_bucket)  # fmt: skip
            self.grouper = Grouper(self._js, self._settings, config=self.config, firing=self.firing, store=store)
            queuer = Queuer(self._js, self._settings, config=self.config, firing=self.firing, grouper=self.grouper)
            self._consumers.append(queuer.consumer())
            self._looks = asyncio.get_running_loop().create_task(self.grouper.run(notify.flush_interval_s), name="notify-groups")
        if send:
            self.sender = Sender(self._js, self._settings, config=self.config, secrets=self._secrets, client=self._client)
            self._consumers.append(self.sender.consumer())
        if self._crm:
            # Always consumed, so markers do not pile up in the durable: without `crm:` targets each is acked at once.
            self.crm_writer = CrmWriter(self._js, self._settings, config=self.config, secrets=self._secrets, client=self._client)
            self._consumers.append(self.crm_writer.consumer())
        for consumer in self._consumers:
            consumer.start()

    @property
    def failure(self) -> BaseException | None:
        """Why a consumer loop died, if one did (for a health check)."""
        if self._looks is not None and self._looks.done() and not self._looks.cancelled():
            return self._looks.exception() or RuntimeError("the aggregation group looks stopped")
        return next((c.failure for c in self._consumers if c.failure is not None), None)

    @property
    def consuming(self) -> bool:
        return bool(self._consumers)

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Stop fetching; let deliveries in flight finish (un-acked ones are redelivered later)."""
        await cancel_and_wait(self._waiting)
        await cancel_and_wait(self._looks)
        self._looks = None
        for consumer in self._consumers:
            # What is still in flight then is cancelled (and redelivered): the HTTP client closes next.
            await consumer.stop(drain_timeout_s, cancel=True)
        self._consumers.clear()
        if self._own_client:
            with contextlib.suppress(Exception):
                await self._client.aclose()
