"""Ray's own doors (issue 12): every node of the shipped cluster config starts with token
authentication, and a Ray started that way refuses its dashboard and Jobs API to a caller
without the token. (Ray's Jobs API runs any code it is sent: an open dashboard is a shell.)"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from services.events.embedded import free_port

REPO = Path(__file__).resolve().parents[1]


def ray_start_problems(text: str, where: str) -> list[str]:
    """Each `ray start` in a config that does not run with token authentication."""
    problems = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        if re.search(r"\bray start\b", line) and "RAY_AUTH_MODE=token" not in line:
            exposed = " (and its dashboard on every interface)" if "--dashboard-host=0.0.0.0" in line else ""
            problems.append(f"{where}: `ray start` without RAY_AUTH_MODE=token{exposed}: {line.strip()}")
    return problems


def shipped_configs() -> list[Path]:
    return [REPO / "ray_cluster.yaml", *sorted((REPO / "deploy").rglob("*.yaml"))]


def test_every_shipped_ray_start_uses_token_authentication() -> None:
    configs = shipped_configs()
    assert REPO / "ray_cluster.yaml" in configs
    problems = [p for path in configs for p in ray_start_problems(path.read_text(), path.name)]
    assert problems == []
    cluster = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    assert "/opt/listenpost-secrets/ray_auth_token" in cluster["file_mounts"]
    starts = cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]
    assert sum("RAY_AUTH_TOKEN_PATH=/opt/listenpost-secrets/ray_auth_token" in c for c in starts) == 2
    # Kubernetes files (deploy/kubernetes/, when present) set the mode on every Ray container.
    for path in sorted((REPO / "deploy").rglob("*.yaml")):
        text = path.read_text()
        if "rayStartParams" in text:
            assert "RAY_AUTH_MODE" in text, f"{path}: Ray pods without RAY_AUTH_MODE=token"


def test_the_check_catches_an_open_dashboard() -> None:
    open_head = "- ray start --head --port=6379 --dashboard-host=0.0.0.0"
    assert ray_start_problems(open_head, "x.yaml") == [
        "x.yaml: `ray start` without RAY_AUTH_MODE=token (and its dashboard on every interface): " + open_head
    ]


def _get(url: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:  # not listening yet
        return 0


@pytest.mark.timeout(180)
def test_a_ray_started_with_token_auth_refuses_its_jobs_api_without_the_token() -> None:
    token = secrets.token_hex(24)
    temp_dir = tempfile.mkdtemp(prefix="lp-ray-")  # short: Ray's socket paths must fit 107 bytes
    port, dashboard = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    ray = Path(sys.executable).with_name("ray")
    head = subprocess.Popen(
        [str(ray), "start", "--head", f"--port={port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         "--num-cpus=1", "--include-dashboard=true", "--block", f"--temp-dir={temp_dir}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{dashboard}"
        deadline = time.monotonic() + 120
        while _get(f"{base}/api/version", token) != 200:
            assert time.monotonic() < deadline, "the Ray head did not start"
            assert head.poll() is None, "ray start exited"
            time.sleep(0.5)
        for path in ("/api/jobs/", "/api/version"):  # the Jobs API runs code: the door that matters
            assert _get(base + path, None) == 401, path  # no token: not authenticated
            assert _get(base + path, "not-the-token") == 403, path
            assert _get(base + path, token) == 200, path
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)
