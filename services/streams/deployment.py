"""The LiveStreams Serve deployment: where live audio enters (NATS; the WebSocket door of the
Ingress publishes there too) and its windows leave as ``stream.captioned`` events.

Which replica owns which stream is JetStream's doing, not ours: every replica pulls
``stream.started`` messages from one durable consumer, and the replica that gets one owns that
stream, heart-beating the message while the stream is open (services/streams/owner.py). A
replica that dies stops heart-beating; after ``owner_ack_wait_s`` the message goes to another
replica, which resumes the stream where the last one stored it was. So streams spread over the
replicas as they come (at most ``max_streams`` each), and no hash ring has to be rebuilt when
Serve adds or removes one.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from services.events.connection import connect
from services.events.jetstream import ensure_provisioned
from services.logcontext import configure_replica_logging
from services.settings import Settings
from services.streams.service import StreamService
from services.telemetry import configure_tracing, current_traceparent

log = logging.getLogger(__name__)


@serve.deployment(name="LiveStreams")
class LiveStreams:
    async def __init__(self, settings: Settings, captioner: DeploymentHandle) -> None:  # type: ignore[misc]
        configure_tracing("listenpost-streams")
        configure_replica_logging()
        self._settings = settings
        self._captioner = captioner
        self._nc = await connect(settings.nats, role="streams", name="listenpost-streams", on_reconnect=self._on_reconnect)
        js = self._nc.jetstream()
        await ensure_provisioned(js, settings)
        self._service = StreamService(js, settings, caption=self._caption)
        await self._service.start()

    async def _caption(self, samples: np.ndarray, request_id: str) -> Any:
        return await self._captioner.caption.remote(samples, request_id, current_traceparent(), None)

    async def _on_reconnect(self) -> None:
        self._service.resubscribe()

    async def status(self) -> dict[str, Any]:
        return self._service.status()

    async def check_health(self) -> None:
        if (failure := self._service.failure) is not None:
            raise RuntimeError(f"stream consumer loop died: {failure!r}")

    async def __del__(self) -> None:
        # Streams in flight are cancelled un-acked: after owner_ack_wait_s another replica (or
        # this one, restarted) resumes each from its stored position.
        if hasattr(self, "_service"):
            await self._service.stop()
        if hasattr(self, "_nc"):
            await self._nc.close()
