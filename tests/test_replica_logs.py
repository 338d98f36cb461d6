"""The replicas' logs, as the Ray dashboard shows them: Serve's per-replica log files, JSON lines,
and every line written while an event is handled names that event (``event_id``), in each
deployment it passes through."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import ray

from services.events.connection import connect
from services.logcontext import current_event_id, event_context
from services.settings import Settings
from tests.fault_checks import assert_exactly_once_captioned, settled, submit_batch


def test_the_event_context_is_per_task_and_restored() -> None:
    async def handle(event_id: str) -> list[str | None]:
        seen = []
        with event_context(event_id):
            await asyncio.sleep(0)
            seen.append(current_event_id())
            seen.append(await asyncio.to_thread(current_event_id))  # threads inherit it
        seen.append(current_event_id())
        return seen

    async def both() -> list[list[str | None]]:
        return list(await asyncio.gather(handle("a"), handle("b")))

    assert asyncio.run(both()) == [["a", "a", None], ["b", "b", None]]
    with event_context(None):
        assert current_event_id() is None


def serve_log_lines() -> list[dict[str, Any]]:
    session = Path(ray._private.worker._global_node.get_session_dir_path())  # type: ignore[attr-defined]
    lines = []
    for path in sorted((session / "logs" / "serve").glob("replica_*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
    return lines


@pytest.mark.e2e
async def test_every_deployment_logs_json_lines_naming_the_event(service: Settings, audio_dir: Path) -> None:
    nc = await connect(service.nats, role="admin", name="replica-logs")
    try:
        ids = await submit_batch(nc, service, audio_dir, 1)
        assert_exactly_once_captioned(await settled(nc, service, ids), ids)
    finally:
        await nc.close()
    (event_id,) = ids
    async with asyncio.timeout(30):  # Serve's file handler flushes on its own schedule
        while True:
            about = [line for line in serve_log_lines() if line.get("event_id") == event_id]
            # Serve names a replica's deployment <app>_<Deployment>.
            by_deployment: dict[str, list[str]] = {}
            for line in about:
                by_deployment.setdefault(str(line.get("deployment")).rsplit("_", 1)[-1], []).append(line["message"])
            if {"Ingress", "Preprocessor"} <= set(by_deployment):
                break
            await asyncio.sleep(0.5)
    assert any(m.startswith("prepared 1 windows from 1.0 s of wav audio") for m in by_deployment["Preprocessor"])
    assert any(m.startswith("captioned: 1 windows from 1.0 s of audio") for m in by_deployment["Ingress"])
    assert all(line.get("replica") and line.get("levelname") for line in about), about
