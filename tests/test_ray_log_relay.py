"""Replica log lines that Ray relays to the driver stay out of a command's captured output
(tests/ray_log_relay.py): CI once read a Captioner's log line as the start of ``--json`` output."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner
from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
from ray._private.worker import print_to_stdstream
from ray_log_relay import pin_ray_log_relay


def _log_line(text: str) -> dict[str, object]:
    """What Ray's log monitor hands the driver for one line a replica wrote to its stdout."""
    return {"ip": "10.0.0.9", "pid": 4242, "actor_name": "ServeReplica:listenpost:Captioner", "is_err": False, "lines": [text]}


@click.command()
@click.argument("line")
def replay(line: str) -> None:
    dispatcher.emit(_log_line(line))  # the replica logs while the command runs
    click.echo(json.dumps({"replayed": ["ev-1"]}))


@pytest.fixture
def rays_own_printer() -> Iterator[None]:
    """The dispatcher as ray.init leaves it in a driver that prints its workers' logs."""
    saved = dispatcher.handlers
    dispatcher.handlers = [("ray_print_logs", functools.partial(print_to_stdstream, ignore_prefix=False))]
    yield
    dispatcher.handlers = saved


def test_rays_own_printer_puts_a_replica_line_into_the_commands_output(rays_own_printer: None) -> None:
    result = CliRunner().invoke(replay, ["INFO engine stats, before the relay"])
    assert "INFO engine stats, before the relay" in result.stdout  # what CI tripped over
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.stdout)


def test_the_relayed_line_goes_to_the_process_stdout_and_the_output_stays_json(
    rays_own_printer: None, capfd: pytest.CaptureFixture[str]
) -> None:
    pin_ray_log_relay()
    result = CliRunner().invoke(replay, ["INFO engine stats, after the relay"])
    assert json.loads(result.stdout) == {"replayed": ["ev-1"]}
    assert "INFO engine stats, after the relay" in capfd.readouterr().out
