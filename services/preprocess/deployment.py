"""The Preprocessor Serve deployment: fetch the audio, then run the pure pipeline off the event loop."""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client as NATS
from ray import serve

from services.events.connection import connect
from services.events.models import AudioSubmitted, ObjectRef
from services.logcontext import configure_replica_logging, event_context
from services.preprocess.gate import PrepareGate
from services.preprocess.pipeline import PreparedAudio
from services.preprocess.sources import fetch_audio, http_policy, read_object
from services.preprocess.vad import default_detector
from services.settings import Settings
from services.telemetry import configure_tracing, stage_span

log = logging.getLogger(__name__)


@serve.deployment(name="Preprocessor")
class Preprocessor:
    def __init__(self, settings: Settings) -> None:
        configure_tracing("listenpost-preprocessor")  # OTEL_* only; nothing without an endpoint
        configure_replica_logging()  # an event_id on every line of an event's handling
        self._settings = settings
        self._http = http_policy(settings.preprocess)
        self._nc: NATS | None = None
        self._nc_lock = asyncio.Lock()
        default_detector()  # load the VAD model now, not in the first request
        # Decoding slots and the memory budget of this replica's prepares (see gate.py).
        self._gate = PrepareGate(settings.preprocess)

    async def _get_object(self, ref: ObjectRef) -> bytes:
        async with self._nc_lock:
            if self._nc is None:
                assert self._settings.nats.url, "the app builder always sets the NATS URL"
                self._nc = await connect(self._settings.nats, role="preprocess", name="listenpost-preprocessor")
        pre = self._settings.preprocess
        return await read_object(self._nc.jetstream(), ref, max_bytes=pre.max_bytes, buckets=pre.object_buckets)

    async def prepare(
        self, submitted: AudioSubmitted, traceparent: str | None = None, event_id: str | None = None
    ) -> PreparedAudio:
        """``traceparent``: the caller's span (the Ingress's ``preprocess`` stage), parent of this
        replica's; ``event_id``: the input's, for this replica's log lines."""
        pre = self._settings.preprocess
        with event_context(event_id), stage_span("prepare", parent=traceparent):
            with stage_span("fetch") as span:
                data = await fetch_audio(
                    submitted.audio,
                    roots=pre.file_roots,
                    max_bytes=pre.max_bytes,
                    get_object=self._get_object,
                    http=self._http,
                    max_inline_bytes=pre.max_inline_bytes,
                )
                span.set_attribute("listenpost.audio.bytes", len(data))
            # Decoding, resampling and VAD are CPU-bound: the gate runs them in threads (which carry
            # the trace context: asyncio.to_thread copies it), within its slots and budget.
            prepared = await self._gate.prepare(data, submitted)
            facts = prepared.facts
            log.info(
                "prepared %d windows from %.1f s of %s audio (%d channels at %d Hz)",
                len(prepared.windows), facts.duration_s, facts.format or "unknown", facts.channels, facts.sample_rate,
            )  # fmt: skip
            return prepared

    async def __del__(self) -> None:
        if self._nc is not None:
            await self._nc.close()
