"""The Ingress Serve deployment: where events enter listenpost.

It consumes ``audio.submitted`` CloudEvents from the LISTENPOST_IN stream with a
durable pull consumer, drives the Preprocessor and the Captioner through Serve
handles, and publishes ``audio.captioned`` to LISTENPOST_OUT (by reference when it
is too large for a NATS message, see :mod:`.publish`), acking the input only once
that publish is stored.

Traces: each input is a ``process`` span (parent: the event's ``traceparent``) with ``parse``,
the pipeline's stages and ``publish`` under it; the replicas it calls get the current span's
``traceparent`` as an argument, as Serve handles carry no trace context.

Every input it consumes is recorded in the audit trail (submitter, source, id, call id;
refused ones too), and once an input is captioned its uploaded audio is deleted unless
retention settings keep it (services/events/retention.py, docs/privacy.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
from fastapi import FastAPI
from nats.aio.msg import Msg
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, RequestCancelledError
from ray.serve.handle import DeploymentHandle

from services.captioner.errors import CaptionGenerationError, EngineDeadError
from services.captioner.redaction import RedactionPolicy
from services.events.advisories import handle_advisory
from services.events.audit import record, submission
from services.events.connection import connect
from services.events.consumer import Poison, PullConsumer, Redelivery, RetryLater, stored_age_s
from services.events.deadletter import dead_letter
from services.events.jetstream import TRANSIENT_NATS_ERRORS, ensure_provisioned
from services.events.jsstate import poll_forever
from services.events.models import AudioCaptioned, AudioSubmitted, ContextLimits, Facets, Window
from services.events.retention import release_audio
from services.events.tasks import cancel_and_wait
from services.ingest.adapters import AdapterSet, load_adapters
from services.ingest.http import HttpIngest, app_for
from services.ingest.submitted import parse_submitted
from services.logcontext import configure_replica_logging, current_event_id
from services.metrics import recorder
from services.orchestrator.autoscaling import BACKLOG_METRIC
from services.orchestrator.metrics import observe_captioned
from services.orchestrator.pipeline import caption_submitted, correlation_extensions, lexicon_facets
from services.orchestrator.publish import publish_captioned
from services.preprocess.pipeline import PreparedAudio
from services.settings import Settings
from services.telemetry import configure_tracing, current_traceparent, stage_span

log = logging.getLogger(__name__)

# Faults of the serving system, not of the event: try again later.
_TRANSIENT = (
    RayActorError,
    BackPressureError,
    RequestCancelledError,
    EngineDeadError,
    CaptionGenerationError,
    TimeoutError,
)


@contextlib.contextmanager
def _replica_errors_as_raised() -> Iterator[None]:
    """A replica's own error as it raised it. Through a handle it arrives as a RayTaskError whose
    text is the remote traceback; dead letters and logs get the plain sentence instead."""
    try:
        yield
    except RayTaskError as exc:
        if isinstance(exc.cause, Exception) and not isinstance(exc.cause, RayTaskError):
            raise exc.cause from None
        raise


@serve.deployment(name="Ingress")
@serve.ingress()  # the app comes from __serve_build_asgi_app__ (see services/ingest/http.py)
class Ingress:
    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor
        self,
        settings: Settings,
        preprocessor: DeploymentHandle,
        captioner: DeploymentHandle,
        rules: DeploymentHandle,
        notifier: DeploymentHandle | None = None,
        streams: DeploymentHandle | None = None,
    ) -> None:
        assert settings.nats.url, "the app builder always sets the NATS URL"
        configure_tracing("listenpost-ingress")  # OTEL_* only; nothing without an endpoint
        configure_replica_logging()  # an event_id on every line of an event's handling
        self._settings = settings
        self._preprocessor = preprocessor
        self._captioner = captioner
        self._rules = rules
        self._notifier = notifier  # None: notify.enabled is false
        self._streams = streams  # None: streams.enabled is false (held so that Serve deploys it)
        self._nc = await connect(settings.nats, role="ingress", name="listenpost-ingress", on_reconnect=self._on_reconnect)
        self._js = self._nc.jetstream()
        self._adapters = load_adapters(settings.adapters.directory) if settings.adapters.enabled else AdapterSet()
        self._context_limits = ContextLimits.from_settings(settings.ingress)
        self._redaction = RedactionPolicy.from_settings(settings.captioner)
        cfg = settings.nats
        await ensure_provisioned(self._js, settings)
        redelivery = Redelivery.from_settings(cfg)
        self._consumer = PullConsumer(
            self._js,
            stream=cfg.in_stream,
            durable=cfg.ingest_durable,
            handler=self._handle,
            dead_letter=self._dead_letter,
            redelivery=redelivery,
            max_in_flight=settings.ingress.max_in_flight,
            batch=cfg.fetch_batch,
        )
        # Batch inputs (`listenpost batch`): the same handling, few at a time, so that an archive's
        # thousands of recordings never hold the Captioner's batch slots that live inputs need.
        self._batch = PullConsumer(
            self._js,
            stream=cfg.batch_stream,
            durable=cfg.batch_durable,
            handler=self._handle,
            dead_letter=self._dead_letter,
            redelivery=redelivery,
            max_in_flight=settings.ingress.batch_max_in_flight,
            batch=min(cfg.fetch_batch, settings.ingress.batch_max_in_flight),
        )
        self._advisories = PullConsumer(
            self._js,
            stream=cfg.advisory_stream,
            durable=cfg.advisory_durable,
            handler=lambda msg: handle_advisory(self._js, cfg, settings.source, msg),
            dead_letter=self._dead_letter,
            redelivery=redelivery,
            max_in_flight=4,
            batch=cfg.fetch_batch,
        )
        self._consumer.start()
        self._batch.start()
        self._advisories.start()
        self._windows_waiting = 0
        self._poller: asyncio.Task[None] | None = None
        if settings.metrics.jetstream_poll_s > 0:
            self._poller = asyncio.get_running_loop().create_task(
                poll_forever(self._js, settings, settings.metrics.jetstream_poll_s), name="jetstream-metrics"
            )

    def __serve_build_asgi_app__(self) -> FastAPI:
        """POST /events (HTTP CloudEvents ingress) when enabled; unrouted otherwise."""
        cfg = self._settings
        if not cfg.http.enabled:
            return app_for(None)
        return app_for(HttpIngest.from_settings(self._js, cfg, adapters=self._adapters))

    async def _on_reconnect(self) -> None:
        for consumer in (self._consumer, self._batch, self._advisories):
            consumer.resubscribe()

    async def _dead_letter(self, msg: Msg, poison: Poison) -> None:
        await dead_letter(self._js, self._settings.nats, self._settings.source, msg, poison)
        try:  # an input's audio may go with it (retention.keep_dead_lettered_audio false)
            event, submitted = parse_submitted(msg.data, msg.headers, self._adapters)
        except Poison:
            return  # not a readable input (or an advisory): no audio of ours to find
        await self._release_audio(event.get_id(), submitted, "dead-lettered")

    async def _release_audio(self, event_id: str, submitted: AudioSubmitted, outcome: str) -> None:
        cfg = self._settings
        await release_audio(
            self._js, submitted, outcome=outcome, retention=cfg.retention,
            buckets=cfg.preprocess.object_buckets, event_id=event_id,
        )  # fmt: skip

    async def _audit_submission(self, msg: Msg, event: Any, submitted: AudioSubmitted | None, refused: str | None) -> None:
        headers = msg.headers or {}
        if event is not None:
            source, event_id = event.get_source(), event.get_id()
            call_id = correlation_extensions(event, submitted).get("callid") if submitted is not None else None
        else:  # unreadable: what the binary-mode headers say, if anything
            source, event_id, call_id = headers.get("ce-source"), headers.get("ce-id"), headers.get("ce-callid")
        rec = submission(
            headers,
            source=source,
            event_id=event_id,
            call_id=call_id,
            subject=msg.subject,
            http_subject=self._settings.nats.subject("in", "http"),
            refused=refused,
        )
        cfg = self._settings
        await record(self._js, cfg.nats, cfg.audit, rec)

    async def _prepare(self, submitted: AudioSubmitted) -> PreparedAudio:
        with _replica_errors_as_raised():
            return await self._preprocessor.prepare.remote(submitted, current_traceparent(), current_event_id())

    async def _caption(self, samples: np.ndarray, request_id: str) -> Any:
        self._windows_waiting += 1
        recorder().set("listenpost_windows_waiting", self._windows_waiting)
        try:
            with _replica_errors_as_raised():
                return await self._captioner.caption.remote(samples, request_id, current_traceparent(), current_event_id())
        finally:
            self._windows_waiting -= 1
            recorder().set("listenpost_windows_waiting", self._windows_waiting)

    async def _facets(self, windows: list[Window], request_id: str) -> Facets:
        if self._settings.captioner.facets_extractor == "guided":
            with _replica_errors_as_raised():
                return await self._captioner.facets.remote(
                    windows, request_id, current_traceparent(), current_event_id()
                )  # same engine
        return await lexicon_facets(windows, request_id)

    async def _handle(self, msg: Msg) -> None:
        try:
            with stage_span("parse"):
                event, submitted = parse_submitted(msg.data, msg.headers, self._adapters, self._context_limits)
        except Poison as exc:
            await self._audit_submission(msg, None, None, refused=f"{exc.stage}: {exc.reason}")
            raise
        await self._audit_submission(msg, event, submitted, refused=None)
        cfg = self._settings
        try:
            captioned = await caption_submitted(
                event,
                submitted,
                prepare=self._prepare,
                caption=self._caption,
                model=cfg.captioner.model,
                engine=cfg.captioner.engine,
                source=cfg.source,
                deliveries=msg.metadata.num_delivered,
                facets=self._facets,
                redaction=self._redaction,
            )
        except _TRANSIENT as exc:
            raise RetryLater(f"{type(exc).__name__}: {exc}") from exc
        with stage_span("publish"):
            stored = await publish_captioned(
                self._js, cfg.nats, captioned, input_source=event.get_source(), input_id=event.get_id()
            )
        outcome = AudioCaptioned.model_validate(captioned.get_data())
        observe_captioned(outcome, max_tokens=cfg.captioner.max_tokens, input_to_stored_s=stored_age_s(msg))
        log.info(
            "captioned: %d windows from %.1f s of audio%s",
            len(outcome.windows), outcome.audio.duration_s, "" if stored else " (already stored: a redelivery)",
        )  # fmt: skip
        # Stored: the audio has served. (A crash before the ack redelivers the input, which
        # then fails at fetch and is dead-lettered, while its caption is already stored.)
        await self._release_audio(event.get_id(), submitted, "captioned")

    async def status(self) -> dict[str, Any]:
        """What an operator asks first: is it consuming, which rules are active, and (when it runs)
        the Notifier's receivers, queue and last reload error."""
        stats, batch = self._consumer.stats, self._batch.stats
        status: dict[str, Any] = {
            "ingress": {"acked": stats.acked, "naked": stats.naked, "dead_lettered": stats.dead_lettered},
            "batch": {"acked": batch.acked, "naked": batch.naked, "dead_lettered": batch.dead_lettered},
            "rules": await self._rules.status.remote(),
        }
        if self._notifier is not None:
            status["notify"] = await self._notifier.status.remote()
        return status

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """The input durable's backlog, for the Ingress's autoscaling policy (services/orchestrator/autoscaling.py).

        Serve calls it only when the Ingress autoscales (ingress.max_replicas). A failed read
        reports nothing this round: the policy keeps the count until the next one."""
        cfg = self._settings.nats
        try:
            info = await self._js.consumer_info(cfg.in_stream, cfg.ingest_durable)
        except TRANSIENT_NATS_ERRORS as exc:
            log.warning("input backlog not read for autoscaling (%r)", exc)
            return {}
        return {BACKLOG_METRIC: float((info.num_pending or 0) + (info.num_ack_pending or 0))}

    async def check_health(self) -> None:
        for consumer in (self._consumer, self._advisories):
            if (failure := consumer.failure) is not None:
                raise RuntimeError(f"ingest consumer loop died: {failure!r}")

    async def __del__(self) -> None:
        # Serve calls this on delete (services/runner.py waits for it before stopping NATS):
        # stop fetching, let in-flight messages finish, then drain the connection.
        if not hasattr(self, "_advisories"):  # the constructor failed part way (its error is the news)
            if hasattr(self, "_nc"):
                await self._nc.close()
            return
        await cancel_and_wait(self._poller)
        await self._advisories.stop()
        await self._batch.stop()
        await self._consumer.stop()
        await self._nc.drain()
