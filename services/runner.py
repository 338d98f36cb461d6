"""Starting and stopping the whole service: embedded NATS (if needed), Ray, the Serve app.

Used by ``listenpost serve`` and by the end-to-end tests, so both run the same path.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import ray
from ray import serve

from services.app import APP_NAME, build_app
from services.events.embedded import EmbeddedNatsServer
from services.settings import Settings

log = logging.getLogger(__name__)

@contextlib.contextmanager
def embedded_nats(settings: Settings) -> Iterator[Settings]:
    """Yield settings with a NATS URL, starting nats-server when none is configured."""
    if settings.nats.url:
        yield settings
        return
    with EmbeddedNatsServer(settings.nats.data_dir) as server:
        log.info("embedded nats-server with JetStream on %s (data in %s)", server.url, settings.nats.data_dir)
        yield settings.model_copy(update={"nats": settings.nats.model_copy(update={"url": server.url})})


@contextlib.contextmanager
def running_service(
    settings: Settings, *, ray_num_cpus: int | None = None, runtime_env: dict[str, Any] | None = None
) -> Iterator[Settings]:
    """Start everything, yield the effective settings, and stop it all on exit."""
    with embedded_nats(settings) as settings:
        started_ray = not ray.is_initialized()
        if started_ray:
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
