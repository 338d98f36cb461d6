"""`listenpost status [--json]` and `listenpost top`: an operator's view without Grafana, read from
JetStream as the operator role of a hardened nats-server found through the runtime file."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from services.cli import app
from services.events.connection import connect
from services.events.embedded import EmbeddedNatsServer
from services.events.jetstream import provision_everything
from services.runtime import RUNTIME_FILE, write_runtime_file
from services.settings import Settings


@pytest.fixture
def running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmbeddedNatsServer]:
    monkeypatch.chdir(tmp_path)  # the runtime file is read from the working directory
    with EmbeddedNatsServer(tmp_path / "data", secrets_dir=tmp_path / "secrets", tls=True) as server:
        write_runtime_file(server.url, tmp_path / "secrets", path=RUNTIME_FILE)
        yield server


async def test_status_and_top_show_lag_and_dead_letters(running: EmbeddedNatsServer) -> None:
    settings = Settings(_env_file=None)
    nc = await connect(running.client_settings(), role="admin", name="status-test")
    try:
        js = nc.jetstream()
        await provision_everything(js, settings)
        for i in range(3):
            await js.publish(settings.nats.subject("in", "pbx"), b"{}", headers={"Nats-Msg-Id": f"in-{i}"})
        await js.publish(settings.nats.subject("dlq", "validate"), b"{}", headers={"Nats-Msg-Id": "dl-1"})
    finally:
        await nc.close()

    def cli(*args: str) -> Any:
        return CliRunner().invoke(app, list(args))

    # The commands run their own event loop: from a thread, as a terminal would run them.
    result = await asyncio.to_thread(cli, "status", "--json")
    assert result.exit_code == 0, result.output
    state = json.loads(result.stdout)["jetstream"]
    ingest = state["consumers"][settings.nats.ingest_durable]
    assert (ingest["pending"], ingest["ack_pending"], ingest["acked"]) == (3, 0, 0)
    assert state["dlq_messages"] == 1
    assert state["streams"][settings.nats.in_stream]["messages"] == 3

    table = await asyncio.to_thread(cli, "status")
    assert table.exit_code == 0 and "consumers (lag)" in table.stdout and "dead letters: 1" in table.stdout

    live = await asyncio.to_thread(cli, "top", "--iterations", "2", "--interval", "0.1")
    assert live.exit_code == 0, live.output
    # Off a terminal Live prints its last frame: the second, with rates between the two reads.
    assert "consumers (lag)" in live.stdout and " 0.0 " in live.stdout


def test_status_without_a_service_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 2
    assert "no NATS URL: start `listenpost serve`" in result.output


def test_rates_are_messages_finished_per_second_between_two_reads() -> None:
    from services.events.jsstate import ConsumerState, Snapshot, rates

    def at(t: float, acked: int) -> Snapshot:
        consumer = ConsumerState(stream="S", pending=0, ack_pending=0, acked=acked)
        return Snapshot(at=t, streams={}, consumers={"d": consumer}, dlq_messages=0, object_store_bytes={})

    assert rates(at(100.0, 10), at(102.0, 30)) == {"d": 10.0}
    assert rates(at(100.0, 30), at(101.0, 5)) == {"d": 0.0}  # a recreated consumer: never negative
