"""A JetStream pull-consumer loop with at-least-once semantics.

The loop owns acknowledgement so every consumer in listenpost behaves alike:

- the handler returns normally      -> ``ack`` (its outputs are already stored);
- it raises :class:`RetryLater`     -> ``nak`` with a delay (transient fault);
- it raises :class:`Poison`         -> dead-letter with stage and reason, then ``term``;
- anything else                     -> ``nak``, and dead-letter once MaxDeliver is reached,
                                       so a bug never loops forever nor loses the event;
- it runs past ``max_handling_s``   -> cancelled, and counted like "anything else" (heartbeats
                                       would otherwise hold the message forever);
- the dead letter cannot be stored  -> ``nak`` at the longest delay, bounded by MaxDeliver; the
                                       message stays in its stream (see :mod:`.deadletter`).

While a handler runs, ``in_progress`` heartbeats keep the message from being
redelivered to another replica.

Traces (:mod:`services.telemetry`): each message is handled inside a CONSUMER span whose
parent is its event's ``traceparent``, and whose ``listenpost.outcome`` says how it was settled;
each fetched batch is one ``receive`` span linked to the traces of its messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg
from nats.errors import NotJSMessageError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from opentelemetry import trace
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from services.events.errors import EventsError
from services.events.jetstream import TRANSIENT_NATS_ERRORS
from services.events.models import Stage
from services.events.reasons import plain_error_type, plain_reason
from services.logcontext import event_context
from services.metrics import reason_label, recorder
from services.settings import NatsSettings
from services.telemetry import consume_span, mark_error, message_id, receive_span, tracing_enabled

log = logging.getLogger(__name__)


class RetryLater(EventsError):
    """A transient fault: redeliver the message later (after ``delay_s``, else the consumer's delay).

    The consumer doubles the delay with each delivery, up to its longest; ``exact``: the handler
    worked out its own back-off (the notification sender: jitter, a receiver's Retry-After), and
    the message is redelivered after ``delay_s`` as given.
    """

    def __init__(self, reason: str, delay_s: float | None = None, *, exact: bool = False) -> None:
        super().__init__(plain_reason(reason))  # it ends up in logs and, at the last try, a dead letter
        self.delay_s = delay_s
        self.exact = exact and delay_s is not None


@dataclass(frozen=True)
class Redelivery:
    """How a consumer retries a message: bounded deliveries (never JetStream's -1, forever),
    doubling nak delays on transient faults, and in-progress heartbeats while it works."""

    max_deliver: int
    heartbeat_s: float = 10.0
    retry_delay_s: float = 5.0
    retry_delay_max_s: float = 60.0
    max_handling_s: float = 3600.0

    @classmethod
    def from_settings(cls, nats: NatsSettings) -> Redelivery:
        """``LISTENPOST_NATS__MAX_DELIVER``, ``__RETRY_DELAY_S``, ``__RETRY_DELAY_MAX_S``,
        ``__MAX_HANDLING_S``; a heartbeat every third of ``__ACK_WAIT_S``."""
        return cls(
            nats.max_deliver, nats.ack_wait_s / 3, nats.retry_delay_s, nats.retry_delay_max_s, nats.max_handling_s
        )


class HandlingTimeout(EventsError):
    """A handler worked on one message longer than ``max_handling_s``."""


class Poison(EventsError):
    """The message can never succeed: dead-letter it with ``stage`` and ``reason``."""

    def __init__(self, stage: Stage, reason: str, error: str | None = None) -> None:
        # Every dead letter's reason and error are built here: plain words, whoever raised it.
        reason = plain_reason(reason)
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason
        self.error = plain_error_type(error or type(self).__name__)


Handler = Callable[[Msg], Awaitable[None]]
DeadLetter = Callable[[Msg, Poison], Awaitable[None]]


@dataclass
class ConsumerStats:
    acked: int = 0
    naked: int = 0
    dead_lettered: int = 0
    fetch_errors: int = 0


class PullConsumer:
    """Runs ``handler`` over a durable pull consumer until :meth:`stop`."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        stream: str,
        durable: str,
        handler: Handler,
        dead_letter: DeadLetter,
        redelivery: Redelivery,
        max_in_flight: int = 16,
        batch: int = 8,
    ) -> None:
        self._js = js
        self._stream = stream
        self._durable = durable
        self._handler = handler
        self._dead_letter = dead_letter
        self._max_deliver = redelivery.max_deliver
        self._slots = asyncio.Semaphore(max_in_flight)
        self._batch = batch
        self._heartbeat_s = redelivery.heartbeat_s
        self._retry_delay_s = redelivery.retry_delay_s
        self._retry_delay_max_s = redelivery.retry_delay_max_s
        self._max_handling_s = redelivery.max_handling_s
        self._stopping = asyncio.Event()
        self._resubscribe = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self.stats = ConsumerStats()

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._run(), name=f"consumer-{self._durable}")

    @property
    def failure(self) -> BaseException | None:
        """Why the loop died, if it did (for ``check_health``)."""
        if self._loop_task is None or not self._loop_task.done() or self._loop_task.cancelled():
            return None
        return self._loop_task.exception() or RuntimeError(f"consumer {self._durable} stopped")

    async def stop(self, drain_timeout_s: float = 30.0, *, cancel: bool = False) -> None:
        """Stop fetching; let messages in flight finish (un-acked ones are redelivered later).

        ``cancel``: handlers still running after ``drain_timeout_s`` are cancelled (their
        messages are redelivered after AckWait), so nothing works on after the stop, as after
        a process exit; the caller may then close what the handlers use."""
        self._stopping.set()
        if self._loop_task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._loop_task, drain_timeout_s)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=drain_timeout_s)
        if cancel and self._tasks:
            left = list(self._tasks)
            for task in left:
                task.cancel()
            await asyncio.wait(left)

    def resubscribe(self) -> None:
        """Make a fresh pull subscription before the next fetch (call after a reconnect).

        A pull subscription can go quiet after nats-server restarts (nats.py has an
        open report of it); a new one is cheap and always works.
        """
        self._resubscribe.set()

    async def _subscribe(self) -> Any:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(TRANSIENT_NATS_ERRORS),
            wait=wait_exponential(multiplier=0.2, max=3.0),
            stop=stop_after_delay(3600),
            reraise=True,
        ):
            with attempt:
                return await self._js.pull_subscribe_bind(self._durable, self._stream)
        raise AssertionError("unreachable")

    async def _run(self) -> None:
        sub = await self._subscribe()
        try:
            await self._fetch_loop(sub)
        finally:
            # An un-drained pull subscription makes a later nc.drain() wait out its timeout.
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _fetch_loop(self, sub: Any) -> None:
        self._sub = sub
        while not self._stopping.is_set():
            if self._resubscribe.is_set():
                self._resubscribe.clear()
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
                sub = self._sub = await self._subscribe()
            free = self._free_slots()
            if free == 0:
                await asyncio.sleep(0.05)
                continue
            try:
                msgs = await sub.fetch(min(self._batch, free), timeout=1.0)
            except (TimeoutError, NatsTimeoutError):
                continue  # nothing to do for now
            except TRANSIENT_NATS_ERRORS as exc:
                # While nats-server restarts the client reconnects by itself; keep asking.
                self.stats.fetch_errors += 1
                log.warning("fetch from %s failed (%r); retrying", self._durable, exc)
                await asyncio.sleep(1.0)
                self._resubscribe.set()
                continue
            if tracing_enabled():
                with receive_span(stream=self._stream, durable=self._durable, messages=msgs):
                    pass  # the fetch is done: the span marks it and links the batch's traces
            for msg in msgs:
                await self._slots.acquire()
                task = asyncio.get_running_loop().create_task(self._process(msg))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _free_slots(self) -> int:
        return self._slots._value

    async def _process(self, msg: Msg) -> None:
        metrics = recorder()
        metrics.inc("listenpost_events_consumed", durable=self._durable)
        if _deliveries(msg) > 1:
            metrics.inc("listenpost_events_redelivered", durable=self._durable)
        with event_context(message_id(msg.headers)), consume_span(
            stream=self._stream, durable=self._durable, subject=msg.subject, headers=msg.headers, body=msg.data,
            delivery=_deliveries(msg),
        ):
            await self._process_traced(msg)

    async def _process_traced(self, msg: Msg) -> None:
        heartbeat = asyncio.get_running_loop().create_task(self._keep_alive(msg))
        # Heartbeats would hold a message whose handler never returns forever: bound the work.
        timer = asyncio.timeout(self._max_handling_s)
        try:
            async with timer:
                await self._handler(msg)
        except TimeoutError as exc:
            failure: Exception = exc
            if timer.expired():
                log.error("handler did not finish %s within %g s; counted as a failed delivery",
                          msg.subject, self._max_handling_s)  # fmt: skip
                failure = HandlingTimeout(f"not finished within max_handling_s={self._max_handling_s:g} s")
            else:
                log.exception("handler failed on %s", msg.subject)
            await self._retry_or_give_up(msg, failure, delay_s=self._retry_delay_s)
        except RetryLater as exc:
            await self._retry_or_give_up(msg, exc, delay_s=exc.delay_s or self._retry_delay_s, exact=exc.exact)
        except Poison as exc:
            await self._poison(msg, exc)
        except Exception as exc:  # a bug or an unforeseen fault: bounded retries, then dead-letter
            log.exception("handler failed on %s", msg.subject)
            await self._retry_or_give_up(msg, exc, delay_s=self._retry_delay_s)
        else:
            if await _settle(msg.ack()):
                self.stats.acked += 1
                recorder().inc("listenpost_events_acked", durable=self._durable)
                _outcome("acked")
        finally:
            heartbeat.cancel()
            self._slots.release()

    async def _retry_or_give_up(self, msg: Msg, exc: Exception, *, delay_s: float, exact: bool = False) -> None:
        deliveries = msg.metadata.num_delivered
        if deliveries >= self._max_deliver:
            reason = f"gave up after {deliveries} deliveries: {plain_error_type(type(exc).__name__)}: {exc}"
            await self._poison(msg, Poison("retry", reason, error=type(exc).__name__))
            return
        if not exact:
            # Doubling delays: a restarting engine gets room, a blip costs little.
            delay_s = min(delay_s * 2 ** (deliveries - 1), self._retry_delay_max_s)
        if await _settle(msg.nak(delay=delay_s)):
            self.stats.naked += 1
            recorder().inc("listenpost_events_naked", durable=self._durable, reason=reason_label(type(exc).__name__, str(exc)))
            _outcome("naked")

    async def _poison(self, msg: Msg, exc: Poison) -> None:
        try:
            await self._dead_letter(msg, exc)
        except Exception:
            # Could not store the dead letter (a full DLQ, NATS down): never lose the message, never
            # loop on it either. It is redelivered at the longest retry delay, so at most max_deliver
            # times in all; then JetStream's MAX_DELIVERIES advisory tries the dead letter once more,
            # and if that fails too the message stays, unacked, in its stream for an operator.
            log.exception("dead-lettering failed; message kept in %s and redelivered (bounded)", self._stream)
            await _settle(msg.nak(delay=self._retry_delay_max_s))
            return
        await _settle(msg.term())
        self.stats.dead_lettered += 1
        recorder().inc(
            "listenpost_events_dead_lettered", durable=self._durable, stage=exc.stage, reason=reason_label(exc.error, exc.reason)
        )
        _outcome("dead-lettered")
        mark_error(trace.get_current_span(), exc.error, f"{exc.stage}: {exc.reason}")

    async def _keep_alive(self, msg: Msg) -> None:
        # in_progress resets the server's AckWait timer: a long recording is not redelivered mid-work.
        with contextlib.suppress(Exception):
            while True:
                await asyncio.sleep(self._heartbeat_s)
                await msg.in_progress()


def stored_age_s(msg: Msg) -> float | None:
    """Seconds since JetStream stored ``msg`` (its metadata timestamp), if it says."""
    try:
        stored = msg.metadata.timestamp
    except NotJSMessageError:  # not a JetStream message: no stored time to measure from
        return None
    return max(0.0, time.time() - stored.timestamp()) if stored is not None else None


def _deliveries(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except NotJSMessageError:  # not a JetStream message: count it as a first delivery
        return 1


def _outcome(outcome: str) -> None:
    trace.get_current_span().set_attribute("listenpost.outcome", outcome)


async def _settle(reply: Awaitable[None]) -> bool:
    """Send an ack/nak/term; if the connection is down, the server redelivers after AckWait."""
    try:
        await reply
    except TRANSIENT_NATS_ERRORS as exc:
        log.warning("could not settle message (%s); it will be redelivered", exc)
        return False
    return True
