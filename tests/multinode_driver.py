"""listenpost on a real multi-node Ray cluster, driven in a process of its own.

``ray.cluster_utils.Cluster`` starts a head node and worker nodes on this machine, each with
its own raylet, object store and workers, as separate machines would have. The Captioner asks
for the custom resource ``captioner`` (a stand-in for a GPU), which only worker nodes offer,
so it is placed on a worker. Mid-run that worker is removed (its processes killed); Serve
starts the replica again on the other worker, and every event still ends captioned exactly
once.

Run by tests/test_multinode.py (the pytest process already has a Ray of its own):
``python tests/multinode_driver.py WORK_DIR CHECKPOINT_DIR`` prints one JSON line.
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import sys
import time
from pathlib import Path

import ray
from ray._common.utils import reset_ray_address
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from services.app import APP_NAME  # noqa: E402 -- after the path is set
from services.events.connection import connect  # noqa: E402
from services.events.embedded import free_port  # noqa: E402
from services.runner import running_service  # noqa: E402
from services.settings import NatsSettings, PreprocessSettings, RulesSettings, Settings  # noqa: E402
from tests.conftest import tiny_engine_settings  # noqa: E402
from tests.fault_checks import settled, submit_batch  # noqa: E402

CAPTIONER = f"ServeReplica:{APP_NAME}:Captioner"
#: What a worker node offers: the Captioner's stand-in for a GPU.
WORKER_RESOURCES = {"captioner": 1.0}
#: A worker offers no CPUs to schedule on, and the Captioner asks for none: the CPU
#: deployments (which ask for fractions of a CPU) cannot land on a worker and keep the
#: Captioner out of it, as they did with one CPU per worker (a Preprocessor taking half of a
#: worker's only CPU left the Captioner unschedulable: the test's hang, one run in five). On a
#: real cluster the GPU a Captioner asks for is what no CPU deployment can take.
WORKER_CPUS = 0
#: The driver's own bound, under the test's: past it, every thread's stack goes to stderr and the
#: driver exits, so a hang says where it is.
DRIVER_DEADLINE_S = 420.0
STARTED = time.monotonic()


def step(what: str) -> None:
    """A timestamped line on stderr: the test shows the last ones when the driver fails."""
    print(f"[{time.monotonic() - STARTED:6.1f} s] {what}", file=sys.stderr, flush=True)


def captioner_nodes(gcs_address: str) -> list[str]:
    actors = list_actors(address=gcs_address, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)
    return [a.node_id for a in actors if a.class_name == CAPTIONER and a.node_id]


def wait_for_captioner_on(gcs_address: str, node_ids: set[str], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        placed = [n for n in captioner_nodes(gcs_address) if n in node_ids]
        if placed:
            return placed[0]
        time.sleep(1.0)
    raise TimeoutError(f"no Captioner replica on {sorted(node_ids)} after {timeout_s:.0f} s")


def main(work: Path, checkpoint: Path) -> dict[str, object]:
    audio_dir = work / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 6, "gcs_server_port": free_port(), "dashboard_port": free_port(), "ray_client_server_port": free_port(),
        },  # fmt: skip
    )
    first = cluster.add_node(num_cpus=WORKER_CPUS, resources=WORKER_RESOURCES)
    step(f"head and first worker up at {cluster.address}")
    settings = Settings(
        ray_address=cluster.address,
        nats=NatsSettings(data_dir=work / "nats", secrets_dir=work / "secrets", ack_wait_s=15, max_deliver=8,
                          retry_delay_s=1.0, retry_delay_max_s=8.0),  # fmt: skip
        captioner=tiny_engine_settings(checkpoint).model_copy(
            update={"resources": WORKER_RESOURCES, "num_cpus": float(WORKER_CPUS)}
        ),
        preprocess=PreprocessSettings(file_roots=[audio_dir]),
        rules=RulesSettings(directory=REPO / "router_rules"),
    )
    runtime_env = {"env_vars": {"PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}}
    report: dict[str, object] = {}
    try:
        with running_service(settings, runtime_env=runtime_env) as effective:
            step("service running")
            gcs = cluster.address
            head = cluster.head_node.node_id
            report["nodes"] = len(ray.nodes())
            report["first_worker_placed"] = wait_for_captioner_on(gcs, {first.node_id}, 60) == first.node_id
            report["placement"] = {
                a.class_name.rsplit(":", 1)[-1]: "head" if a.node_id == head else "worker"
                for a in list_actors(address=gcs, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)
                if a.class_name.startswith(f"ServeReplica:{APP_NAME}:")
            }
            step(f"placement {report['placement']}")
            second = cluster.add_node(num_cpus=WORKER_CPUS, resources=WORKER_RESOURCES)
            step("second worker up")

            async def run() -> dict[str, object]:
                nc = await connect(effective.nats, role="admin", name="multinode")
                try:
                    ids = await submit_batch(nc, effective, audio_dir, 8)
                    await asyncio.sleep(1.0)
                    removed_at = time.monotonic()
                    cluster.remove_node(first, allow_graceful=False)  # the machine is gone
                    step("first worker removed")
                    moved = await asyncio.to_thread(wait_for_captioner_on, gcs, {second.node_id}, 150)
                    back_after_s = time.monotonic() - removed_at
                    step(f"Captioner back after {back_after_s:.1f} s")
                    ids += await submit_batch(nc, effective, audio_dir, 4)
                    accounting = await settled(nc, effective, ids, timeout_s=150)
                    step("every event settled")
                    return {
                        "moved_to_second_worker": moved == second.node_id,
                        "replica_back_after_s": round(back_after_s, 1),
                        "accounting": accounting.model_dump(),
                    }
                finally:
                    await nc.close()

            report.update(asyncio.run(run()))
            step("stopping the service")
    finally:
        step("shutting the cluster down")
        cluster.shutdown()
        reset_ray_address()  # Cluster wrote /tmp/ray/ray_current_cluster: a later ray.init() would join it
        step("cluster down")
    return report


if __name__ == "__main__":
    faulthandler.dump_traceback_later(DRIVER_DEADLINE_S, exit=True)
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2]))), flush=True)
