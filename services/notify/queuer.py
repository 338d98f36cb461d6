"""The queuer: alert decisions in, alerts into their routes' aggregation groups.

A durable pull consumer (``notify.queue_durable``) of the rules engine's alert decisions
(``<prefix>.alerts.>`` on LISTENPOST_OUT). For each decision:

1. its alert is read (:func:`~services.notify.alerts.alerts_from_decision`);
2. it joins, on every route of the notification file it reaches (the last good file:
   :class:`~services.notify.config.WatchedConfig`), that route's group for its labels
   (:class:`~services.notify.grouper.Grouper`, written through to KV);
3. it joins the firing set (:class:`~services.notify.firing.FiringAlerts`), which inhibition
   reads; then the decision is acked (by the consumer loop).

Nothing is sent here: the grouper's looks (group_wait, group_interval, repeat_interval, time
intervals, inhibition) queue the notifications on ``<prefix>.notify.send.<receiver>``.

Failures follow the consumer's rules (services/events/consumer.py): a decision that can never
be read is dead-lettered (stage ``notify``, the DLQ stream); no notification file yet or NATS
trouble is retried later, so a decision is never lost. A redelivered decision joins the same
groups again, which changes nothing.

Decisions are handled one at a time, in stream order: a source alert raised before its target
inhibits it, as it would have on one Alertmanager.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from services.events.binding import BindingError, decode, event_attributes, event_data_json
from services.events.consumer import Poison, PullConsumer, Redelivery, RetryLater
from services.events.deadletter import dead_letter
from services.metrics import recorder
from services.notify.alerts import ALERT_RAISED, DecisionError, alerts_from_decision
from services.notify.config import WatchedConfig
from services.notify.firing import FiringAlerts
from services.notify.grouper import Grouper
from services.settings import Settings

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


class Queuer:
    """Turns alert decisions into queued notifications (run it with :meth:`consumer`)."""

    def __init__(
        self,
        js: JetStreamContext,
        settings: Settings,
        *,
        config: WatchedConfig,
        firing: FiringAlerts,
        grouper: Grouper,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._js = js
        self._settings = settings
        self._config = config
        self._firing = firing
        self._grouper = grouper
        self._clock = clock

    def consumer(self) -> PullConsumer:
        settings = self._settings
        return PullConsumer(
            self._js,
            stream=settings.nats.out_stream,
            durable=settings.notify.queue_durable,
            handler=self.handle,
            dead_letter=lambda msg, poison: dead_letter(self._js, settings.nats, settings.source, msg, poison),
            redelivery=Redelivery.from_settings(settings.nats),
            max_in_flight=1,  # in stream order: see the module's docstring
            batch=settings.nats.fetch_batch,
        )

    async def handle(self, msg: Msg) -> None:
        config = self._config.get()
        if config is None:
            raise RetryLater(f"the notification file {self._config.last_good.path} has not loaded yet")
        try:
            event = decode(msg.data, msg.headers)
            attributes, data = event_attributes(event), event_data_json(event)
        except (BindingError, ValueError) as exc:
            raise Poison("notify", f"not a readable alert decision: {exc}", error=type(exc).__name__) from exc
        if attributes.get("type") != ALERT_RAISED:
            log.info("ignored %r on %s: not an alert decision", attributes.get("type"), msg.subject)
            return
        try:
            alerts = alerts_from_decision(attributes, data, now=self._clock())
        except DecisionError as exc:
            raise Poison("notify", str(exc), error=type(exc).__name__) from exc
        joined = await self._grouper.add(alerts, config, self._clock().timestamp())
        recorder().inc("listenpost_notify_group_joins", value=joined)
        for alert in alerts:
            await self._firing.add(alert)
