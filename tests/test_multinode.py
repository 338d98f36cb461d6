"""The service on a real multi-node Ray cluster: the Captioner on a worker node, that node lost
mid-run, the replica back on another worker, no event lost or duplicated.

The cluster runs in a process of its own (tests/multinode_driver.py): this process already has
the suite's Ray, and a driver belongs to one cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
def test_the_captioner_runs_on_a_worker_node_and_comes_back_elsewhere_when_it_is_lost(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    log = tmp_path / "driver.log"  # its steps, and every thread's stack if it passes its own deadline
    with log.open("w") as stderr:
        try:
            run = subprocess.run(
                [sys.executable, str(REPO / "tests" / "multinode_driver.py"), str(tmp_path), str(tiny_checkpoint)],
                stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=480, env=env, cwd=REPO,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            pytest.fail("the driver outlived its own deadline; its log ends:\n" + log.read_text()[-6000:])
    assert run.returncode == 0, log.read_text()[-6000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    print("multinode report:", report)  # the figures (time for the replica to come back) with -rP
    assert report["nodes"] == 2  # the head and the first worker, before the second joins
    assert report["first_worker_placed"] is True
    # A head with the CPU deployments, the Captioner on the worker that offers its resource.
    assert report["placement"] == {
        "Ingress": "head", "Preprocessor": "head", "RulesEngine": "head", "LiveStreams": "head", "Captioner": "worker",
    }  # fmt: skip
    assert report["moved_to_second_worker"] is True
    accounting = report["accounting"]
    assert accounting["missing"] == [] and accounting["duplicates"] == {}
    assert accounting["submitted"] == accounting["captioned"] == 12, accounting
