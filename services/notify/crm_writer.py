"""The CRM write-back's trigger: once a call's rules are evaluated, its summary goes to each CRM target.

A durable pull consumer (``notify.crm_durable``) of the rules engine's evaluated markers
(``com.listenpost.rules.evaluated`` on ``<prefix>.rules.evaluated``, services/rules/evaluated.py).
For each marker, when the notification file has ``crm:`` targets (none: the marker is acked
and nothing else happens):

1. the captioned event it names is read from LISTENPOST_OUT by stream sequence, its data from
   the outputs bucket when it was claim-checked;
2. :func:`~services.notify.call_summary.summarise` makes the call's summary from it and the
   decisions the marker lists;
3. each target whose ``when`` holds gets one :func:`~services.notify.crm.write` with an
   ``Idempotency-Key`` (the captioned event's id, the ruleset version and the target's name;
   a mapping that sets the header itself wins), inside a ``crm write`` span.

Failures follow the notification sender's policy (:func:`~services.notify.delivery.next_step`,
the same ``notify.max_attempts``, back-off and ``max_age_s``): a retryable failure (a 5xx, a
timeout, a 429) is retried by redelivering the marker after the computed delay; a failure
that is not (a 4xx, a missing secret or mapping, a mapping or ``when`` that fails on this
call), or one out of attempts, is dead-lettered with the reason (stage ``crm``, the events'
DLQ, ``listenpost dlq list --stage crm``; ``dlq replay`` sends it again once fixed). A marker
or captioned event that cannot be read is dead-lettered too; NATS trouble is retried.

With several targets, one that has accepted (or given up) is remembered by this process, so
a redelivery for another target's sake does not write to it again; after a restart it may be
written again, with the same idempotency key for the CRM to recognise. Log lines name the
call and the target, never a secret, a URL that is one, or a body.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import httpx
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from services.dsl.mapping import summarize
from services.events.binding import BindingError, decode, event_attributes, event_data_json
from services.events.claimcheck import ClaimCheckError, ClaimCheckUnavailable, resolve_data
from services.events.consumer import Poison, PullConsumer, RetryLater, stored_age_s
from services.events.deadletter import dead_letter
from services.events.jetstream import TRANSIENT_NATS_ERRORS, derive_msg_id
from services.events.models import RULES_EVALUATED, RulesEvaluated, StoredEventRef
from services.metrics import recorder
from services.notify.call_summary import CallSummary, SummaryError, summarise
from services.notify.config import WatchedConfig
from services.notify.crm import CrmConfig, CrmMapping, CrmMappingError, CrmMappingLoadError, load_mappings, write
from services.notify.delivery import DeliveryPolicy, GiveUp, next_step, redelivery
from services.notify.receivers import DeliveryError, SecretSource
from services.notify.status import ReceiverStats
from services.settings import Settings
from services.telemetry import mark_error, stage_span

__all__ = ["CrmWriteFailed", "CrmWriter", "WatchedMappings", "idempotency_key"]

log = logging.getLogger(__name__)

#: Targets settled (accepted or given up) remembered per process, newest kept.
_SETTLED_LIMIT: Final = 10_000


class CrmWriteFailed(Poison):
    """A call's summary given up on for one or more targets: dead-lettered with each one's reason."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("crm", "; ".join(reasons), error="CrmWriteFailed")


def idempotency_key(marker: RulesEvaluated, target: str) -> str:
    """The same call, rules and target: the same key. A replay under new rules is a new write."""
    return derive_msg_id("crm", marker.captioned.id, marker.ruleset_version, target)


class WatchedMappings:
    """The CRM mapping files (``notify.crm_mappings_dir``), read again when they change; a broken
    edit is logged once and the last good mappings stay in use (none until they first load)."""

    def __init__(self, directory: Path, *, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = directory
        self.interval_s = interval_s
        self._clock = clock
        self._checked_at: float | None = None
        self._signature: tuple[tuple[str, int, int], ...] | None = None
        self.mappings: dict[str, CrmMapping] = {}
        self.error: str | None = None

    def get(self) -> Mapping[str, CrmMapping]:
        now = self._clock()
        if self._checked_at is not None and now - self._checked_at < self.interval_s:
            return self.mappings
        self._checked_at = now
        signature = _signature(self.directory)
        if signature != self._signature:
            self._signature = signature
            try:
                self.mappings = load_mappings(self.directory)
            except CrmMappingLoadError as exc:
                self.error = str(exc)
                kept = ", ".join(sorted(self.mappings)) or "none"
                log.error("CRM mappings in %s do not load (keeping: %s):\n%s", self.directory, kept, exc)
            else:
                self.error = None
                log.info("CRM mappings loaded from %s: %s", self.directory, ", ".join(sorted(self.mappings)) or "none")
        return self.mappings


def _signature(directory: Path) -> tuple[tuple[str, int, int], ...]:
    paths = [directory] if directory.is_file() else sorted(directory.glob("*.y*ml")) if directory.is_dir() else []
    out = []
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            continue
        out.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(out)


class CrmWriter:
    """Writes each evaluated call's summary to the CRM targets (run it with :meth:`consumer`)."""

    def __init__(
        self,
        js: JetStreamContext,
        settings: Settings,
        *,
        config: WatchedConfig,
        secrets: SecretSource,
        client: httpx.AsyncClient,
        mappings: WatchedMappings | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        notify = settings.notify
        self._js = js
        self._settings = settings
        self._config = config
        self._secrets = secrets
        self._client = client
        self._rand = rand
        self._policy = DeliveryPolicy.from_settings(notify)
        self.mappings = mappings or WatchedMappings(notify.crm_mappings_dir, interval_s=notify.reload_interval_s)
        # idempotency key -> None (accepted, or `when` said no) or why it was given up.
        self._settled: OrderedDict[str, str | None] = OrderedDict()
        #: Per CRM target, since this replica started (services/notify/status.py).
        self.stats: defaultdict[str, ReceiverStats] = defaultdict(ReceiverStats)

    def consumer(self) -> PullConsumer:
        settings = self._settings
        nats, notify = settings.nats, settings.notify
        return PullConsumer(
            self._js,
            stream=nats.out_stream,
            durable=notify.crm_durable,
            handler=self.handle,
            dead_letter=lambda msg, poison: dead_letter(self._js, nats, settings.source, msg, poison),
            redelivery=redelivery(settings),  # retries are next_step's: the consumer's bound is a backstop
            max_in_flight=notify.max_in_flight,
            batch=nats.fetch_batch,
        )

    async def handle(self, msg: Msg) -> None:
        config = self._config.get()
        if config is None:
            raise RetryLater(f"the notification file {self._config.last_good.path} has not loaded yet")
        targets: tuple[CrmConfig, ...] = config.crm
        if not targets:
            return  # no CRM configured: nothing to write, nothing to keep
        marker = _read_marker(msg)
        attributes, data = await self._captioned(marker.captioned)
        try:
            summary = summarise(
                data, attributes, [d.model_dump(exclude_none=True) for d in marker.decisions],
                ruleset_version=marker.ruleset_version,
            )  # fmt: skip
        except SummaryError as exc:
            raise Poison("crm", f"call {marker.captioned.id!r} cannot be summarised: {exc}", error=type(exc).__name__) from exc
        mappings = self.mappings.get()
        pending = [t for t in targets if idempotency_key(marker, t.name) not in self._settled]
        age_s = stored_age_s(msg) or 0.0
        results = await asyncio.gather(*(self._write(marker, summary, t, mappings, age_s) for t in pending))
        attempts = int(msg.metadata.num_delivered)
        delays: list[float] = []
        metrics = recorder()
        for target, error in zip(pending, results, strict=True):
            key = idempotency_key(marker, target.name)
            if error is None:
                self._settle(key, None)
                continue
            step = next_step(retryable=error.retryable, retry_after_s=error.retry_after_s, attempts=attempts, age_s=age_s,
                             policy=self._policy, rand=self._rand)  # fmt: skip
            if isinstance(step, GiveUp):
                self._settle(key, f"crm target {target.name!r}: {step.reason}: {error.message}")
                metrics.inc("listenpost_crm_writes", receiver=target.name, outcome="dead_lettered")
                self.stats[target.name].failed(error.message, given_up=True)
                log.error("call %r: CRM target %r given up after %d attempt(s): %s: %s",
                          marker.captioned.id, target.name, attempts, step.reason, error.message)  # fmt: skip
                continue
            delays.append(step.delay_s)
            metrics.inc("listenpost_crm_writes", receiver=target.name, outcome="retried")
            self.stats[target.name].failed(error.message, given_up=False)
            log.warning("call %r: CRM target %r attempt %d failed (%s); next in %.1f s",
                        marker.captioned.id, target.name, attempts, error.message, step.delay_s)  # fmt: skip
        if delays:
            raise RetryLater(f"{len(delays)} CRM target(s) to retry", delay_s=max(delays), exact=True)
        given_up = [reason for t in targets if (reason := self._settled.get(idempotency_key(marker, t.name)))]
        if given_up:
            raise CrmWriteFailed(given_up)

    async def _write(
        self, marker: RulesEvaluated, summary: CallSummary, target: CrmConfig, mappings: Mapping[str, CrmMapping], age_s: float
    ) -> DeliveryError | None:
        """One attempt for one target: None when it accepted (or ``when`` said no), else why not."""
        metrics = recorder()
        try:
            wanted = target.wants(summary)
        except CrmMappingError as exc:
            return DeliveryError(target.name, str(exc), retryable=False)
        if not wanted:
            metrics.inc("listenpost_crm_writes", receiver=target.name, outcome="skipped")
            log.info("call %r: not written to CRM target %r (its `when` is false)", marker.captioned.id, target.name)
            return None
        key = idempotency_key(marker, target.name)
        attributes = {"listenpost.crm.target": target.name, "listenpost.captioned.id": marker.captioned.id}
        with stage_span("crm write", attributes) as span:
            # Each attempt is bounded by the target's timeout; this bounds it whatever a library does.
            bound_s = target.timeout_s + 1.0
            try:
                async with asyncio.timeout(bound_s):
                    delivery = await write(summary, target, self._secrets, self._client, mappings=mappings,
                                           idempotency_key=key)  # fmt: skip
            except DeliveryError as exc:
                mark_error(span, "DeliveryError", exc.message)
                return exc
            except TimeoutError:
                mark_error(span, "TimeoutError", f"no answer within {bound_s:g} s")
                return DeliveryError(target.name, f"no answer within {bound_s:g} s", retryable=True)
        metrics.inc("listenpost_crm_writes", receiver=target.name, outcome="sent")
        self.stats[target.name].delivered()
        metrics.observe("listenpost_crm_write_seconds", age_s + delivery.elapsed_s, receiver=target.name)
        log.info("call %r written to CRM target %r (HTTP %s)", marker.captioned.id, target.name, delivery.status)
        return None

    def _settle(self, key: str, reason: str | None) -> None:
        self._settled[key] = reason
        self._settled.move_to_end(key)
        while len(self._settled) > _SETTLED_LIMIT:
            self._settled.popitem(last=False)

    async def _captioned(self, ref: StoredEventRef) -> tuple[dict[str, Any], Any]:
        """The captioned event the marker names: ``(attributes, data)``, its data resolved."""
        nats = self._settings.nats
        if ref.stream != nats.out_stream:
            raise Poison("crm", f"the marker names stream {ref.stream!r}, not {nats.out_stream} where captioned events are")
        try:
            stored = await self._js.get_msg(ref.stream, ref.sequence)
        except NotFoundError as exc:
            raise Poison("crm", f"captioned event {ref.id!r} is no longer in {ref.stream} (#{ref.sequence}): it aged out "
                         "or was erased", error="NotFoundError") from exc  # fmt: skip
        except TRANSIENT_NATS_ERRORS as exc:
            raise RetryLater(f"could not read captioned event {ref.id!r}: {type(exc).__name__}: {exc}") from exc
        try:
            event = decode(stored.data or b"", stored.headers)
            data = await resolve_data(self._js, event, buckets=[nats.outputs_bucket])
        except ClaimCheckUnavailable as exc:
            raise RetryLater(str(exc)) from exc
        except (ClaimCheckError, BindingError, ValueError) as exc:
            raise Poison("crm", f"captioned event {ref.id!r} not readable: {exc}", error=type(exc).__name__) from exc
        if event.get_id() != ref.id:
            raise Poison("crm", f"{ref.stream} #{ref.sequence} is event {event.get_id()!r}, not the captioned event {ref.id!r}")
        return event_attributes(event), data


def _read_marker(msg: Msg) -> RulesEvaluated:
    try:
        event = decode(msg.data, msg.headers)
        data = event_data_json(event)
    except (BindingError, ValueError) as exc:
        raise Poison("crm", f"not a readable evaluated marker: {exc}", error=type(exc).__name__) from exc
    if event.get_type() != RULES_EVALUATED:
        raise Poison("crm", f"{event.get_type()!r} on {msg.subject} is not {RULES_EVALUATED}", error="WrongType")
    try:
        return RulesEvaluated.model_validate(data)
    except ValidationError as exc:
        raise Poison("crm", f"invalid {RULES_EVALUATED} data: {summarize(exc)}", error="ValidationError") from exc
