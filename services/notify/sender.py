"""The sender: queued notifications out to their receivers, retried, or dead-lettered.

A durable pull consumer (``notify.send_durable``) of ``<prefix>.notify.send.>``. For each
queued notification:

- at most ``notify.concurrency`` deliveries run at once per receiver (a semaphore each), so
  one slow receiver cannot take every connection;
- one attempt (:func:`services.notify.receivers.send`), bounded by the receiver's
  ``timeout_s`` (an attempt that runs past it is cancelled and counts as a timeout);
- accepted: the message is acked (by the consumer loop) and leaves the stream;
- failed: :func:`~services.notify.delivery.next_step` says retry (a nak with the delay it
  computed: back-off with jitter, or the receiver's Retry-After when longer) or give up;
- given up (not retryable, ``max_attempts``, ``max_age_s``, a receiver no longer in the file):
  a dead letter on ``<prefix>.notify.dlq.<receiver>`` with the reason, the attempts, the last
  status and response excerpt, and the notification whole; then the message is terminated.

Attempts are JetStream deliveries, so they are counted across restarts and replicas; a
notification whose attempt was cut short by a crash is sent again, with the same idempotency
key (``webhook-id``, ``Message-ID``, PagerDuty's ``dedup_key``) for the receiving end to
recognise. Errors and excerpts are redacted of every secret (services/notify/receivers); no
log line here prints a secret, a URL that is one, or a request body.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from services.events.consumer import Poison, PullConsumer, RetryLater, stored_age_s
from services.events.deadletter import dead_letter
from services.events.jetstream import notify_subject
from services.events.traced import publish_traced
from services.metrics import recorder
from services.notify.config import WatchedConfig
from services.notify.delivery import DeliveryPolicy, GiveUp, next_step, redelivery
from services.notify.model import Notification
from services.notify.queue import (
    NotificationFailed,
    QueueFormatError,
    dead_letter_msg_id,
    failed_event,
    read_queued,
)
from services.notify.receivers import DeliveryError, ReceiverBase, SecretSource, send
from services.notify.status import ReceiverStats
from services.settings import Settings

log = logging.getLogger(__name__)


class Undeliverable(Poison):
    """A notification given up on: dead-lettered with what the last attempt got."""

    def __init__(
        self, notification: Notification, reason: str, *, label: str, attempts: int, last: DeliveryError | None = None
    ) -> None:
        detail = last.message if last is not None else reason
        super().__init__("notify", f"{reason}: {detail}" if last is not None else reason, error=type(last or self).__name__)
        self.why = reason
        self.notification = notification
        self.label = label  # one of services.metrics.DELIVERY_REASONS
        self.attempts = attempts
        self.last = last

    def failed(self, queued_at: datetime | None) -> NotificationFailed:
        last = self.last
        return NotificationFailed(
            receiver=self.notification.receiver,
            reason=self.why,
            error=last.message if last is not None else self.why,
            retryable=bool(last and last.retryable),
            attempts=self.attempts,
            status=last.status if last is not None else None,
            response_excerpt=last.response_excerpt if last is not None else "",
            queued_at=queued_at,
            notification=self.notification,
        )


def failure_label(error: DeliveryError, step: GiveUp | None = None) -> str:
    """A failed attempt (and why it was given up, if it was) in :data:`services.metrics.DELIVERY_REASONS`."""
    if step is not None and "max_attempts" in step.reason:
        return "retries_exhausted"
    if step is not None and "max_age_s" in step.reason:
        return "expired"
    if error.status == 429:
        return "rate_limited"
    if not error.retryable:
        return "rejected"
    if error.status is None and ("within" in error.message or "timed out" in error.message.lower()):
        return "timeout"
    return "unavailable"


class Sender:
    """Delivers queued notifications (run it with :meth:`consumer`); one HTTP client for all."""

    def __init__(
        self,
        js: JetStreamContext,
        settings: Settings,
        *,
        config: WatchedConfig,
        secrets: SecretSource,
        client: httpx.AsyncClient,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._js = js
        self._settings = settings
        self._config = config
        self._secrets = secrets
        self._client = client
        self._rand = rand
        self._policy = DeliveryPolicy.from_settings(settings.notify)
        self._slots: defaultdict[str, asyncio.Semaphore] = defaultdict(lambda: asyncio.Semaphore(settings.notify.concurrency))
        #: Per receiver, since this replica started (services/notify/status.py).
        self.stats: defaultdict[str, ReceiverStats] = defaultdict(ReceiverStats)

    def consumer(self) -> PullConsumer:
        settings = self._settings
        nats, notify = settings.nats, settings.notify
        return PullConsumer(
            self._js,
            stream=notify.stream,
            durable=notify.send_durable,
            handler=self.handle,
            dead_letter=self.dead_letter,
            redelivery=redelivery(settings),  # retries are next_step's: the consumer's bound is a backstop
            max_in_flight=notify.max_in_flight,
            batch=nats.fetch_batch,
        )

    async def handle(self, msg: Msg) -> None:
        try:
            notification = read_queued(msg.data, msg.headers)
        except QueueFormatError as exc:
            raise Poison("notify", str(exc), error=type(exc).__name__) from exc
        attempts = int(msg.metadata.num_delivered)
        config = self._config.get()
        if config is None:
            raise RetryLater(f"the notification file {self._config.last_good.path} has not loaded yet")
        receiver = config.receivers.get(notification.receiver)
        if receiver is None:
            raise Undeliverable(
                notification,
                f"receiver {notification.receiver!r} is not in the notification file (version {config.version}); "
                "add it back and replay",
                label="unknown_receiver",
                attempts=attempts,
            )
        options = receiver.config
        assert isinstance(options, ReceiverBase), "the loader checks every receiver against its type's model"
        timeout_s = options.timeout_s
        # Each request of an attempt has the receiver's timeout (PagerDuty makes one per alert);
        # this bounds the whole attempt, whatever a client library does.
        bound_s = timeout_s * (len(notification.alerts) + 1)
        async with self._slots[notification.receiver]:
            try:
                async with asyncio.timeout(bound_s):
                    await send(notification, options, self._secrets, self._client)
            except DeliveryError as exc:
                error = exc
            except TimeoutError:
                error = DeliveryError(notification.receiver, f"no answer within {bound_s:g} s", retryable=True)
            else:
                metrics = recorder()
                metrics.inc("listenpost_notifications_sent", receiver=notification.receiver)
                metrics.observe("listenpost_notification_delivery_seconds", stored_age_s(msg) or 0.0, receiver=notification.receiver)
                self.stats[notification.receiver].delivered()
                return
        step = next_step(
            retryable=error.retryable,
            retry_after_s=error.retry_after_s,
            attempts=attempts,
            age_s=stored_age_s(msg) or 0.0,
            policy=self._policy,
            rand=self._rand,
        )
        if isinstance(step, GiveUp):
            raise Undeliverable(notification, step.reason, label=failure_label(error, step), attempts=attempts, last=error)
        recorder().inc("listenpost_notifications_retried", receiver=notification.receiver, reason=failure_label(error))
        self.stats[notification.receiver].failed(error.message, given_up=False)
        log.warning("notification %s to %r: attempt %d failed (%s); next in %.1f s",
                    notification.idempotency_key, notification.receiver, attempts, error.message, step.delay_s)  # fmt: skip
        raise RetryLater(error.message, delay_s=step.delay_s, exact=True)

    async def dead_letter(self, msg: Msg, poison: Poison) -> None:
        """Store why a notification was given up, beside it, on ``<prefix>.notify.dlq.<receiver>``."""
        meta = msg.metadata
        queued_at = meta.timestamp.astimezone(UTC) if meta.timestamp is not None else None
        if isinstance(poison, Undeliverable):
            failed, label = poison.failed(queued_at), poison.label
        else:
            try:
                notification = read_queued(msg.data, msg.headers)
            except QueueFormatError:
                # Not a notification at all: the events dead-letter stream takes it as it is.
                await dead_letter(self._js, self._settings.nats, self._settings.source, msg, poison)
                return
            failed = NotificationFailed(
                receiver=notification.receiver, reason=poison.reason, error=poison.error, retryable=False,
                attempts=int(meta.num_delivered), queued_at=queued_at, notification=notification,
            )  # fmt: skip
            label = "retries_exhausted" if poison.stage == "retry" else "error"
        msg_id = dead_letter_msg_id(meta.stream, meta.sequence.stream)
        event = failed_event(failed, self._settings.source, event_id=msg_id)
        await publish_traced(self._js, notify_subject(self._settings.nats, "dlq", failed.receiver), event, msg_id=msg_id)
        recorder().inc("listenpost_notifications_dead_lettered", receiver=failed.receiver, reason=label)
        self.stats[failed.receiver].failed(failed.error or failed.reason, given_up=True)
        log.error("notification %s to %r dead-lettered after %d attempt(s): %s",
                  failed.notification.idempotency_key, failed.receiver, failed.attempts, failed.reason)  # fmt: skip
