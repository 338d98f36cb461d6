"""Starting and stopping the whole service: embedded NATS (if needed), Ray, the Serve app.

Used by ``listenpost serve`` and by the end-to-end tests, so both run the same path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import ray
from ray import serve

from services.app import APP_NAME, build_app
from services.events.connection import short_session
from services.events.embedded import EmbeddedNatsServer
from services.events.jetstream import provision_everything
from services.settings import Settings

log = logging.getLogger(__name__)

@contextlib.contextmanager
def embedded_nats(settings: Settings) -> Iterator[Settings]:
    """Yield settings with a NATS URL, starting a hardened nats-server when none is configured:
    loopback, TLS, an NKey identity per role with its permissions, JetStream encrypted at rest."""
    if settings.nats.url:
        yield settings
        return
    cfg = settings.nats
    with EmbeddedNatsServer(cfg.data_dir, secrets_dir=cfg.secrets_dir, tls=cfg.embedded_tls, settings=settings) as server:
        log.info("embedded nats-server with JetStream on %s (data in %s)", server.url, cfg.data_dir)
        yield settings.model_copy(update={"nats": server.client_settings(cfg)})


def provision_as_admin(settings: Settings) -> None:
    """Create or update every stream, consumer and bucket with the admin identity, for
    deployments whose identities may not (``nats.provision_on_start`` false)."""

    async def provision() -> None:
        async with short_session(settings.nats, role="admin", name="listenpost-provision") as nc:
            await provision_everything(nc.jetstream(), settings)

    asyncio.run(provision())


@contextlib.contextmanager
def running_service(
    settings: Settings, *, ray_num_cpus: int | None = None, runtime_env: dict[str, Any] | None = None
) -> Iterator[Settings]:
    """Start everything, yield the effective settings, and stop it all on exit."""
    with embedded_nats(settings) as settings:
        if not settings.nats.provision_on_start:
            provision_as_admin(settings)
        started_ray = not ray.is_initialized()
        if started_ray:
            # A local Ray's dashboard (and its Jobs API, which runs any code it is sent) listens
            # on loopback (ray.init's default, kept); a cluster's nodes use token auth
            # (ray_cluster.yaml, SECURITY.md).
            ray.init(address=settings.ray_address, num_cpus=ray_num_cpus, runtime_env=runtime_env)
        try:
            if settings.http.enabled:
                serve.start(http_options={"host": settings.http.host, "port": settings.http.port})
            serve.run(build_app(settings), name=APP_NAME, route_prefix="/" if settings.http.enabled else None)
            yield settings
        finally:
            with contextlib.suppress(Exception):
                serve.delete(APP_NAME)
            if started_ray:
                serve.shutdown()
                ray.shutdown()
