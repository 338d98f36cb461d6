"""`listenpost status [--json]` and `listenpost top`: an operator's view without Grafana, read from
JetStream as the operator role of a hardened nats-server found through the runtime file, and from
Ray's metrics endpoint (here a tiny HTTP server serving what Ray's would: tests/prometheus_samples.py)."""

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
from tests.prometheus_samples import FIRST, SECOND, Endpoint
from tests.test_metricsview import closed_url


@pytest.fixture
def running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmbeddedNatsServer]:
    monkeypatch.chdir(tmp_path)  # the runtime file is read from the working directory
    with EmbeddedNatsServer(tmp_path / "data", secrets_dir=tmp_path / "secrets", tls=True) as server:
        write_runtime_file(server.url, tmp_path / "secrets", path=RUNTIME_FILE)
        yield server


async def provision(server: EmbeddedNatsServer, settings: Settings) -> None:
    """Streams and consumers, 3 inputs waiting and 1 dead letter."""
    nc = await connect(server.client_settings(), role="admin", name="status-test")
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


def cells(output: str, first: str) -> list[str]:
    """The cells of the table row whose first cell is ``first``."""
    for line in output.splitlines():
        found = [c.strip() for c in line.strip().strip("│┃").split("│")]
        if found and found[0] == first:
            return found
    raise AssertionError(f"no row {first!r} in:\n{output}")


async def test_status_and_top_show_lag_and_dead_letters(running: EmbeddedNatsServer) -> None:
    settings = Settings(_env_file=None)
    await provision(running, settings)

    # The commands run their own event loop: from a thread, as a terminal would run them.
    result = await asyncio.to_thread(cli, "status", "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    state = body["jetstream"]
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
    # No metrics URL anywhere: the JetStream view, and a word on where the metrics would come from.
    assert "metrics" not in body and "no metrics URL" in live.stdout


async def test_top_shows_latency_windows_in_flight_and_top_rules_from_the_metrics(running: EmbeddedNatsServer) -> None:
    await provision(running, Settings(_env_file=None))
    with Endpoint([FIRST, SECOND]) as metrics:
        live = await asyncio.to_thread(cli, "top", "--iterations", "2", "--interval", "0.1", "--metrics-url", metrics.url)
        assert metrics.requests == 2
    assert live.exit_code == 0, live.output
    out = live.stdout
    # The last frame: what grew between the two reads (tests/test_metricsview.py works the numbers out).
    assert "consumers (lag)" in out and "latency (last interval)" in out and "top rules (last interval)" in out
    assert cells(out, "caption") == ["caption", "917 ms", "4.88 s", "10"]
    assert cells(out, "rules") == ["rules", "7 ms", "24 ms", "4"]
    assert cells(out, "preprocess") == ["preprocess", "-", "-", "0"]
    assert cells(out, "end to end: captioned") == ["end to end: captioned", "7.50 s", "9.95 s", "3"]
    assert "windows waiting for the engine" in out and cells(out, "5") == ["5"]
    assert cells(out, "escalate-angry-caller") == ["escalate-angry-caller", "15"]
    assert cells(out, "tag-hold-music") == ["tag-hold-music", "5"]
    assert "route-billing" not in out  # no match in the interval

    # status reads once: totals since the replicas started; its default URL is the runtime file's.
    with Endpoint([SECOND]) as metrics:
        write_runtime_file(running.url, Path("secrets").resolve(), path=RUNTIME_FILE, metrics_urls=[metrics.url])
        result = await asyncio.to_thread(cli, "status", "--json")
    assert result.exit_code == 0, result.output
    view = json.loads(result.stdout)["metrics"]
    assert view["interval_s"] is None and view["sources"] == [metrics.url] and view["failed"] == {}
    caption = next(r for r in view["latency"] if r["stage"] == "caption")
    assert (caption["count"], caption["p50_s"], caption["p99_s"]) == (16, 1.5, pytest.approx(4.9))
    assert view["windows_waiting"] == 5
    assert view["top_rules"][0] == {"rule_id": "escalate-angry-caller", "matches": 25}


async def test_a_metrics_url_that_cannot_be_read_is_named_and_jetstream_still_shown(running: EmbeddedNatsServer) -> None:
    await provision(running, Settings(_env_file=None))
    url = closed_url()
    live = await asyncio.to_thread(cli, "top", "--iterations", "1", "--metrics-url", url)
    assert live.exit_code == 0, live.output
    words = " ".join(live.stdout.split())
    assert "consumers (lag)" in words and "dead letters: 1" in words
    assert f"metrics: could not read {url}: cannot connect" in words
    assert "Traceback" not in live.output

    result = await asyncio.to_thread(cli, "status", "--json", "--metrics-url", url)
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["jetstream"]["dlq_messages"] == 1
    assert body["metrics"]["failed"][url].startswith("cannot connect") and body["metrics"]["latency"] == []
    assert f"could not read {url}" in " ".join(result.stderr.split())

    wrong = await asyncio.to_thread(cli, "top", "--iterations", "1", "--metrics-url", "ftp://node1:44217")
    assert wrong.exit_code == 2 and "not a metrics URL: ftp://node1:44217" in wrong.output and "Traceback" not in wrong.output


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
