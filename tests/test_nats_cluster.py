"""Clustered NATS: a real three-node JetStream cluster of nats-servers on loopback (the embedded
cluster `listenpost serve --nats-cluster 3` starts), streams and buckets with three copies,
refusals where the servers cannot hold them, and the whole service surviving the loss of a
stream's leader and of any server while events flow.
"""

from __future__ import annotations

import asyncio
import contextlib
import stat
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from typer.testing import CliRunner

from services.cli import app as cli_app
from services.events.accounting import count_by_header
from services.events.connection import connect
from services.events.embedded import EmbeddedNatsCluster, EmbeddedNatsServer, find_nats_server, free_port
from services.events.jetstream import TRANSIENT_NATS_ERRORS, NotProvisionedError, bucket_configs, provision_everything, stream_configs
from services.events.jsstate import poll, snapshot
from services.settings import NatsSettings, PreprocessSettings, RulesSettings, Settings
from tests.conftest import tiny_engine_settings
from tests.fault_checks import assert_exactly_once_captioned, settled, submit_batch


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNatsCluster]:
    root = tmp_path_factory.mktemp("nats-cluster")
    with EmbeddedNatsCluster(root / "data", secrets_dir=root / "secrets") as running:
        yield running


def on_cluster(cluster: EmbeddedNatsCluster, replicas: int = 3, **nats: object) -> Settings:
    """Settings that reach ``cluster`` (every role's identity) with ``replicas`` copies per stream."""
    cfg = NatsSettings.model_validate({"url": cluster.url, "replicas": replicas, **nats})
    return Settings(nats=cluster.client_settings(cfg))


@pytest.fixture
async def admin(cluster: EmbeddedNatsCluster) -> AsyncIterator[NATS]:
    nc = await connect(on_cluster(cluster).nats, role="admin", name="cluster-test")
    yield nc
    await nc.close()


def every_stream(settings: Settings) -> list[str]:
    kv, objects = bucket_configs(settings)
    return [
        *(c.name or "" for c in stream_configs(settings.nats, notify=settings.notify)),
        *(f"KV_{c.bucket}" for c in kv),
        *(f"OBJ_{c.bucket}" for c in objects),
        *(f"OBJ_{b}" for b in settings.preprocess.object_buckets),
    ]


async def replica_counts(nc: NATS, streams: list[str]) -> dict[str, int]:
    js = nc.jetstream()
    return {name: (await js.stream_info(name)).config.num_replicas for name in streams}


# --- settings and the command line -------------------------------------------------------


def test_r3_on_the_single_embedded_server_is_refused_by_the_settings() -> None:
    with pytest.raises(ValueError, match=r"replicas=3 needs 3 JetStream servers, and the embedded nats-server runs 1"):
        NatsSettings(replicas=3)
    assert NatsSettings(replicas=3, embedded_cluster=3).replicas == 3
    assert NatsSettings(replicas=3, url="tls://a:4222,tls://b:4222,tls://c:4222").servers == [
        "tls://a:4222", "tls://b:4222", "tls://c:4222",
    ]  # fmt: skip


def test_every_url_of_a_cluster_list_is_cleaned_of_its_credentials() -> None:
    cfg = NatsSettings(url="nats://svc:s3cret@a:4222, nats://svc:s3cret@b:4222")
    assert cfg.url == "nats://a:4222,nats://b:4222"
    assert cfg.auth.user == "svc" and cfg.auth.password is not None
    assert "s3cret" not in repr(cfg)
    with pytest.raises(ValueError, match="the NATS URLs carry different credentials"):
        NatsSettings(url="nats://svc:one@a:4222,nats://svc:two@b:4222")


def test_serve_refuses_a_cluster_that_cannot_outlive_a_server() -> None:
    result = CliRunner().invoke(cli_app, ["serve", "--nats-cluster", "2"])
    assert result.exit_code == 2
    assert "--nats-cluster 2: Input should be 1, 3 or 5" in result.output


# --- the embedded cluster ----------------------------------------------------------------


def test_each_server_has_its_own_store_and_a_0600_config_with_password_protected_routes(
    cluster: EmbeddedNatsCluster,
) -> None:
    assert [n.server_name for n in cluster.nodes] == ["listenpost-1", "listenpost-2", "listenpost-3"]
    assert len({n.data_dir for n in cluster.nodes}) == 3 and len(cluster.url.split(",")) == 3
    for node in cluster.nodes:
        config = cluster.secrets.config_file(node.server_name)
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        text = config.read_text()
        assert f'server_name: "{node.server_name}"' in text and "nats-route://route:" in text


def test_a_server_without_the_route_password_cannot_join(cluster: EmbeddedNatsCluster, tmp_path: Path) -> None:
    """A local process that joined as a route would see every message: the route port refuses it."""
    assert cluster.nodes[0].cluster is not None
    route_port = cluster.nodes[0].cluster.port
    log = tmp_path / "intruder.log"
    intruder = subprocess.Popen(
        [str(find_nats_server()), "-a", "127.0.0.1", "-p", str(free_port()), "--cluster_name", "listenpost",
         "--cluster", f"nats://127.0.0.1:{free_port()}", "--routes", f"nats-route://127.0.0.1:{route_port}",
         "-l", str(log)],
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while "Authorization Violation" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, f"the route was not refused: {log.read_text()[-1000:]}"
            time.sleep(0.2)
    finally:
        intruder.terminate()
        intruder.wait()


async def test_provisioning_makes_three_copies_of_everything_and_is_idempotent(
    cluster: EmbeddedNatsCluster, admin: NATS
) -> None:
    settings = on_cluster(cluster)
    await provision_everything(admin.jetstream(), settings)
    await provision_everything(admin.jetstream(), settings)  # a second deployment's start: no change, no error
    counts = await replica_counts(admin, every_stream(settings))
    assert counts and set(counts.values()) == {3}, counts
    info = await admin.jetstream().stream_info(settings.nats.in_stream)
    assert info.cluster is not None and info.cluster.leader in {n.server_name for n in cluster.nodes}
    assert len(info.cluster.replicas or []) == 2
    # What `listenpost status` prints in its copies column.
    state = await snapshot(admin.jetstream(), settings)
    assert {name: (s["replicas_current"], s["replicas"]) for name, s in state.streams.items()} == dict.fromkeys(
        (settings.nats.in_stream, settings.nats.batch_stream, settings.nats.out_stream, settings.nats.dlq_stream,
         settings.nats.advisory_stream), (3, 3)
    )


async def test_more_replicas_than_servers_are_refused_in_words(cluster: EmbeddedNatsCluster, admin: NATS) -> None:
    settings = on_cluster(cluster, replicas=5, subject_prefix="r5", in_stream="R5_IN")
    with pytest.raises(NotProvisionedError) as refused:
        await provision_everything(admin.jetstream(), settings)
    assert str(refused.value) == (
        "stream R5_IN cannot have 5 replicas (nats.replicas): the NATS cluster has fewer than 5 JetStream servers "
        "to hold them; lower LISTENPOST_NATS__REPLICAS or add servers"
    )


async def test_r3_on_one_server_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    with EmbeddedNatsServer(tmp_path / "nats") as server:
        cfg = server.client_settings(NatsSettings(replicas=3, embedded_cluster=3))
        nc = await connect(cfg, role="admin", name="single")
        try:
            with pytest.raises(NotProvisionedError) as refused:
                await provision_everything(nc.jetstream(), Settings(nats=cfg))
            assert (await nc.jetstream().account_info()).streams == 0
        finally:
            await nc.close()
    assert str(refused.value) == (
        "stream LISTENPOST_IN cannot have 3 replicas (nats.replicas): the NATS server is not clustered, JetStream "
        "runs on one server; set LISTENPOST_NATS__REPLICAS=1, or connect to a cluster of at least 3 servers"
    )


async def test_raising_replicas_gives_existing_streams_and_buckets_three_copies(tmp_path: Path) -> None:
    with EmbeddedNatsCluster(tmp_path / "data", secrets_dir=tmp_path / "secrets") as fresh:
        nc = await connect(on_cluster(fresh).nats, role="admin", name="converge")
        try:
            await provision_everything(nc.jetstream(), on_cluster(fresh, replicas=1))
            streams = every_stream(on_cluster(fresh))
            assert set((await replica_counts(nc, streams)).values()) == {1}
            await provision_everything(nc.jetstream(), on_cluster(fresh, replicas=3))
            assert set((await replica_counts(nc, streams)).values()) == {3}
        finally:
            await nc.close()


async def copies(nc: NATS, settings: Settings, stream: str) -> float:
    readings = await poll(nc.jetstream(), settings)
    (value,) = [r.value for r in readings if r.metric == "listenpost_stream_replicas_current" and ("stream", stream) in r.labels]
    return value


async def wait_for_copies(nc: NATS, settings: Settings, stream: str, wanted: int, timeout_s: float = 60.0) -> None:
    """Until ``stream`` has ``wanted`` current copies; a request cut by the client's own failover
    (it may have been connected to the server just killed) is asked again."""
    async with asyncio.timeout(timeout_s):
        while True:
            with contextlib.suppress(*TRANSIENT_NATS_ERRORS):
                if await copies(nc, settings, stream) == wanted:
                    return
            await asyncio.sleep(0.5)


async def test_the_copies_metric_sees_a_server_go_and_come_back(cluster: EmbeddedNatsCluster, admin: NATS) -> None:
    settings = on_cluster(cluster)
    await provision_everything(admin.jetstream(), settings)
    stream = settings.nats.dlq_stream
    await wait_for_copies(admin, settings, stream, 3)
    info = await admin.jetstream().stream_info(stream)
    follower = next(n for n in cluster.nodes if info.cluster and n.server_name != info.cluster.leader)
    follower.kill()
    try:
        await wait_for_copies(admin, settings, stream, 2)
    finally:
        follower.start()
    await wait_for_copies(admin, settings, stream, 3)


# --- the whole service on the cluster ----------------------------------------------------


CLUSTER_APP = "listenpost-on-cluster"


@pytest.fixture(scope="module")
def service_on_cluster(
    cluster: EmbeddedNatsCluster, service: Settings, tiny_checkpoint: Path, audio_dir: Path, rules_dir: Path
) -> Iterator[Settings]:
    """A second Serve app in the session's Ray (``service`` started it), on the cluster's streams."""
    from ray import serve

    from services.app import build_app
    from services.runner import provision_as_admin

    settings = on_cluster(
        cluster, ack_wait_s=15, max_deliver=8, retry_delay_s=1.0, retry_delay_max_s=8.0
    ).model_copy(
        update={
            "captioner": tiny_engine_settings(tiny_checkpoint),
            "preprocess": PreprocessSettings(file_roots=[audio_dir]),
            "rules": RulesSettings(directory=rules_dir),
        }
    )
    provision_as_admin(settings)
    serve.run(build_app(settings), name=CLUSTER_APP, route_prefix=None)
    try:
        yield settings
    finally:
        serve.delete(CLUSTER_APP)


@pytest.mark.e2e
async def test_the_service_loses_nothing_when_the_stream_leader_and_then_any_server_are_killed(
    cluster: EmbeddedNatsCluster, service_on_cluster: Settings, audio_dir: Path
) -> None:
    settings = service_on_cluster
    nc = await connect(settings.nats, role="admin", name="cluster-faults")
    try:
        js = nc.jetstream()
        ids = await submit_batch(nc, settings, audio_dir, 6)
        await asyncio.sleep(0.5)
        leader = (await js.stream_info(settings.nats.in_stream)).cluster
        assert leader is not None and leader.leader
        node = cluster.node(leader.leader)
        node.kill()  # SIGKILL of the input stream's leader, while events are in flight
        ids += await submit_batch(nc, settings, audio_dir, 4)  # published while a new leader is elected
        await asyncio.sleep(2)
        node.start()
        # Then any server: the one that leads the output stream now.
        out = (await js.stream_info(settings.nats.out_stream)).cluster
        assert out is not None and out.leader
        other = cluster.node(out.leader)
        other.kill()
        ids += await submit_batch(nc, settings, audio_dir, 4)
        await asyncio.sleep(2)
        other.start()
        assert_exactly_once_captioned(await settled(nc, settings, ids), ids)
        # Nothing duplicated further downstream either: every decision stored once.
        for subject in ("routes.>", "alerts.>", "tags", "rules.evaluated"):
            stored = await count_by_header(js, settings.nats.subject(*subject.split(".")), "ce-id")
            assert all(n == 1 for n in stored.values()), {k: n for k, n in stored.items() if n > 1}
        # The cluster recovers: every stream has its three current copies again.
        for stream in (settings.nats.in_stream, settings.nats.out_stream, settings.nats.dlq_stream):
            await wait_for_copies(nc, settings, stream, 3)
    finally:
        await nc.close()


def test_the_route_password_is_never_in_what_commands_show(cluster: EmbeddedNatsCluster) -> None:
    """What commands and banners show of a cluster is its URLs and settings: never the route password."""
    assert cluster.nodes[0].cluster is not None
    password = cluster.nodes[0].cluster.password
    assert password not in cluster.url
    assert password not in repr(cluster.client_settings()) and password not in str(on_cluster(cluster).model_dump())
