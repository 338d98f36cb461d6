"""Which Ray the service joins (services/runner.py ``start_ray``).

Run in a process of its own: this process has the suite's Ray, and a driver belongs to one
cluster.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

STALE = "127.0.0.1:9"  # nothing listens there (the discard port)

SCRIPT = """
import ray
from services.runner import start_ray
from services.settings import Settings
start_ray(Settings(_env_file=None), num_cpus=1)
print(ray.get_runtime_context().gcs_address)
ray.shutdown()
"""


@pytest.mark.timeout(180)
def test_unset_address_starts_a_new_local_ray_despite_a_stale_current_cluster_file() -> None:
    """``ray.init(address=None)`` would join the cluster that ray_current_cluster names (a test
    cluster or a `ray start` long gone): the CI run it broke said "When connecting to an
    existing cluster, num_cpus and num_gpus must not be provided"."""
    ray_tmp = tempfile.mkdtemp(prefix="lp-ray-")  # short: Ray's socket paths must fit 107 bytes
    (Path(ray_tmp) / "ray").mkdir()
    (Path(ray_tmp) / "ray" / "ray_current_cluster").write_text(STALE)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "LISTENPOST_RAY_ADDRESS")}
    try:
        run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=150, cwd=REPO,
                             env={**env, "RAY_TMPDIR": ray_tmp})  # fmt: skip
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert run.returncode == 0, run.stderr[-3000:]
    address = run.stdout.strip().splitlines()[-1]
    assert address and address != STALE
    assert "Connecting to existing Ray cluster" not in run.stderr
