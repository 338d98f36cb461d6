"""The Ingress Serve deployment: where events enter listenpost.

It consumes ``audio.submitted`` CloudEvents from the LISTENPOST_IN stream with a
durable pull consumer, drives the Preprocessor and the Captioner through Serve
handles, and publishes ``audio.captioned`` to LISTENPOST_OUT, acking the input
only once that publish is stored.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from nats.aio.msg import Msg
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, RequestCancelledError
from ray.serve.handle import DeploymentHandle

from services.captioner.errors import EngineDeadError
from services.events.consumer import PullConsumer, RetryLater
from services.events.deadletter import dead_letter
from services.events.jetstream import connect, derive_msg_id, provision, publish_event
from services.events.models import AudioSubmitted
from services.ingest.pipeline import caption_submitted, parse_submitted
from services.preprocess.pipeline import PreparedAudio
from services.settings import Settings

# Faults of the serving system, not of the event: try again later.
_TRANSIENT = (RayActorError, BackPressureError, RequestCancelledError, EngineDeadError, TimeoutError)


@serve.deployment(name="Ingress")
class Ingress:
    async def __init__(
        self,
        settings: Settings,
        preprocessor: DeploymentHandle,
        captioner: DeploymentHandle,
        rules: DeploymentHandle,
    ) -> None:
        assert settings.nats.url, "the app builder always sets the NATS URL"
        self._settings = settings
        self._preprocessor = preprocessor
        self._captioner = captioner
        self._rules = rules
        self._nc = await connect(settings.nats.url, name="listenpost-ingress")
        self._js = self._nc.jetstream()
        await provision(self._js, settings.nats, settings.rules.subjects(settings.nats))
        self._consumer = PullConsumer(
            self._js,
            stream=settings.nats.in_stream,
            durable=settings.nats.ingest_durable,
            handler=self._handle,
            dead_letter=lambda msg, poison: dead_letter(self._js, settings.nats, settings.source, msg, poison),
            max_deliver=settings.nats.max_deliver,
            max_in_flight=settings.ingest_max_in_flight,
        )
        self._consumer.start()

    async def _prepare(self, submitted: AudioSubmitted) -> PreparedAudio:
        return await self._preprocessor.prepare.remote(submitted)

    async def _caption(self, samples: np.ndarray, request_id: str) -> Any:
        return await self._captioner.caption.remote(samples, request_id)

    async def _handle(self, msg: Msg) -> None:
        event, submitted = parse_submitted(msg.data, msg.headers)
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
            )
        except _TRANSIENT as exc:
            raise RetryLater(f"{type(exc).__name__}: {exc}", delay_s=10.0) from exc
        msg_id = derive_msg_id("captioned", event.get_source(), event.get_id())
        await publish_event(self._js, cfg.nats.subject("captioned"), captioned, msg_id=msg_id)

    async def status(self) -> dict[str, Any]:
        """What an operator asks first: is it consuming, and which rules are active."""
        stats = self._consumer.stats
        return {
            "ingress": {"acked": stats.acked, "naked": stats.naked, "dead_lettered": stats.dead_lettered},
            "rules": await self._rules.status.remote(),
        }

    async def check_health(self) -> None:
        if (failure := self._consumer.failure) is not None:
            raise RuntimeError(f"ingest consumer loop died: {failure!r}")

    async def __del__(self) -> None:
        await self._consumer.stop()
        await self._nc.drain()
