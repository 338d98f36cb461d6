"""Fault tests with real processes: each submits events, breaks something, and proves that
every event was captioned exactly once (none lost, none duplicated downstream).

They run on the shared session service and leave it healthy: the most disruptive
(restarting the whole service) goes last.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import ray
from fault_engine import FLAKY_PREFIX
from nats.aio.client import Client as NATS
from ray import serve
from ray.util.state import list_actors

from services.app import APP_NAME
from services.events.connection import connect
from services.events.embedded import EmbeddedNatsServer
from services.runner import deploy_app
from services.settings import Settings
from tests.fault_checks import assert_exactly_once_captioned, captioned_field, settled, submit_batch

pytestmark = pytest.mark.e2e


@pytest.fixture
async def nc(service: Settings) -> AsyncIterator[NATS]:
    client = await connect(service.nats, role="admin", name="fault-test")
    yield client
    await client.close()


async def test_engine_failing_transiently_is_retried_not_lost(
    service: Settings, nc: NATS, audio_dir: Path
) -> None:
    ids = await submit_batch(nc, service, audio_dir, 4, prefix=FLAKY_PREFIX)
    assert_exactly_once_captioned(await settled(nc, service, ids), ids)
    # Each flaky event failed once in the engine and was captioned on JetStream's redelivery.
    deliveries = await captioned_field(nc, service, ids, "deliveries")
    assert deliveries == dict.fromkeys(ids, 2)


async def test_ingress_replica_killed_mid_request(service: Settings, nc: NATS, audio_dir: Path) -> None:
    ids = await submit_batch(nc, service, audio_dir, 6)
    await asyncio.sleep(0.5)
    replicas = [
        a for a in list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")])
        if a.class_name == f"ServeReplica:{APP_NAME}:Ingress"
    ]  # fmt: skip
    assert len(replicas) == service.ingress.replicas
    ray.kill(ray.get_actor(replicas[0].name, namespace="serve"), no_restart=True)
    # Messages the dead replica held are redelivered after AckWait; Serve starts a new replica.
    assert_exactly_once_captioned(await settled(nc, service, ids), ids)


async def test_nats_server_killed_and_restarted(
    service: Settings, nc: NATS, audio_dir: Path, nats_server: EmbeddedNatsServer
) -> None:
    ids = await submit_batch(nc, service, audio_dir, 6)
    await asyncio.sleep(0.5)
    nats_server.kill()  # SIGKILL: no flush, as a crash
    await asyncio.sleep(3)
    nats_server.start()  # same port, same JetStream store
    assert_exactly_once_captioned(await settled(nc, service, ids), ids)
    # The consumers are not just alive but still fed: new events after the restart flow too.
    later = await submit_batch(nc, service, audio_dir, 2)
    assert_exactly_once_captioned(await settled(nc, service, later), later)


async def test_whole_service_restarted_mid_run(
    service: Settings, nc: NATS, audio_dir: Path, nats_server: EmbeddedNatsServer
) -> None:
    ids = await submit_batch(nc, service, audio_dir, 6)
    await asyncio.sleep(1.0)
    await asyncio.to_thread(serve.delete, APP_NAME)  # every deployment, the engine included
    nats_server.kill()
    nats_server.start()
    await asyncio.to_thread(deploy_app, service)  # as `listenpost serve` deploys it, HTTP route included
    assert_exactly_once_captioned(await settled(nc, service, ids), ids)
