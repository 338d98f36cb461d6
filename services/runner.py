"""Starting and stopping the whole service: embedded NATS (if needed), Ray, the Serve app.

Used by ``listenpost serve`` and by the end-to-end tests, so both run the same path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import ray
from ray import serve

from services.app import APP_NAME, build_app
from services.events.connection import short_session
from services.events.embedded import EmbeddedNatsCluster, EmbeddedNatsServer
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
    server: EmbeddedNatsServer | EmbeddedNatsCluster
    if cfg.embedded_cluster > 1:
        # Its own folder: a single server's store beside it stays as it was.
        server = EmbeddedNatsCluster(
            cfg.data_dir / "cluster", size=cfg.embedded_cluster, secrets_dir=cfg.secrets_dir, tls=cfg.embedded_tls,
            settings=settings,
        )  # fmt: skip
    else:
        server = EmbeddedNatsServer(cfg.data_dir, secrets_dir=cfg.secrets_dir, tls=cfg.embedded_tls, settings=settings)
    with server:
        log.info(
            "embedded nats-server (%d server%s) with JetStream on %s (data in %s)",
            cfg.embedded_cluster, "s" if cfg.embedded_cluster > 1 else "", server.url, cfg.data_dir,
        )  # fmt: skip
        yield settings.model_copy(update={"nats": server.client_settings(cfg)})
        log.info("stopping: stopping the embedded nats-server (last, once nothing uses it)")
    log.info("stopping: embedded nats-server stopped")


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
    """Start everything, yield the effective settings, and stop it all on exit, in order:

    1. the Serve app is deleted; ``serve.delete`` blocks until every replica has stopped, and a
       replica's ``__del__`` stops its consumers (no new fetches), lets in-flight work finish
       and flushes and closes its NATS connection;
    2. Serve and Ray shut down (when this call started Ray);
    3. only then the embedded nats-server stops (it runs in its own session, so a terminal's
       Ctrl-C reaches this process and not it: see services/events/embedded.py).
    """
    with embedded_nats(settings) as settings:
        if not settings.nats.provision_on_start:
            provision_as_admin(settings)
        started_ray = not ray.is_initialized()
        if started_ray:
            start_ray(settings, num_cpus=ray_num_cpus, runtime_env=runtime_env)
        try:
            if settings.http.enabled:
                serve.start(http_options={"host": settings.http.host, "port": settings.http.port})
            deploy_app(settings)
            yield settings
        finally:
            stop_serving(started_ray)


def deploy_app(settings: Settings) -> None:
    """Deploy (or redeploy) the Serve app. Its HTTP route is "/" when the HTTP doors are on: a
    redeploy that dropped it would leave the proxy answering 404 to webhooks and HTTP 500 to
    WebSocket handshakes (uvicorn's answer to a 404 body on a WebSocket scope)."""
    serve.run(build_app(settings), name=APP_NAME, route_prefix="/" if settings.http.enabled else None)


def start_ray(settings: Settings, *, num_cpus: int | None = None, runtime_env: dict[str, Any] | None = None) -> None:
    """Join the cluster at ``settings.ray_address``, or start a new local Ray when it is unset.

    A local Ray's dashboard (and its Jobs API, which runs any code it is sent) listens on
    loopback (ray.init's default, kept); a cluster's nodes use token auth (ray_cluster.yaml,
    SECURITY.md).
    """
    if settings.ray_address:
        ray.init(address=settings.ray_address, runtime_env=runtime_env)  # a cluster has its own size
    else:
        # "local", never None: ray.init(address=None) joins whatever cluster
        # /tmp/ray/ray_current_cluster names (the last `ray start` or test cluster on this machine,
        # alive or long gone) instead of the new local Ray these settings ask for.
        ray.init(address="local", num_cpus=num_cpus, runtime_env=runtime_env)


def local_metrics_urls() -> list[str]:
    """The Prometheus endpoint of the Ray node this process is attached to (its metrics agent
    binds the node's address, or loopback for a local node); [] when Ray is not running here
    or exports no metrics (a Ray Client connection, ``RAY_enable_metrics_collection=0``)."""
    node: Any = getattr(ray._private.worker.global_worker, "node", None)  # its port is read back from the GCS once up
    try:
        host, port = str(node.node_ip_address), int(node.metrics_export_port)
    except (AttributeError, TypeError, ValueError):  # no node here, or no port
        return []
    if port <= 0:
        return []
    return [f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"]


def stop_serving(started_ray: bool) -> None:
    """Delete the app and wait for its replicas to drain, then shut Serve and Ray down."""
    log.info("stopping: deleting the Serve app (replicas stop consuming, finish in-flight work, close NATS)")
    started = time.monotonic()
    try:
        serve.delete(APP_NAME)  # blocks until the replicas' __del__ have run (graceful shutdown)
    except Exception as exc:  # noqa: BLE001 -- stopping goes on: Ray and NATS must still stop
        log.warning("stopping: the Serve app could not be deleted cleanly (%s: %s)", type(exc).__name__, exc)
    else:
        log.info("stopping: Serve app deleted in %.1f s", time.monotonic() - started)
    if started_ray:
        serve.shutdown()
        ray.shutdown()
        log.info("stopping: Ray stopped")
