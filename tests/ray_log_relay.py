"""Relay the Ray replicas' log lines to this process's own stdout and stderr, never into a
command's captured output.

Ray's driver prints each replica's log lines to whatever ``sys.stdout`` is at that moment.
A ``CliRunner`` swaps ``sys.stdout`` while a command runs, so when the session's service was
up, a Captioner's log line landed at the front of ``listenpost dlq replay --json``'s output and
the test could not parse it (CI, tests/test_dlq.py::test_cli_list_pages). ``sys.__stdout__``
is file descriptor 1, which pytest's fd capture still collects, so the lines stay in a failed
test's report. tests/test_ray_log_relay.py shows it.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest

_HANDLER = "ray_print_logs"  # the name ray._private.worker.connect registers its printer under


def _relay(data: dict[str, Any]) -> None:
    from ray._private.worker import print_worker_logs

    sink = sys.__stderr__ if data["is_err"] else sys.__stdout__
    if sink is None:  # no such stream at all (pythonw): nothing to print to
        return
    print_worker_logs(data, sink)
    sink.flush()


def pin_ray_log_relay() -> None:
    """Replace Ray's printer with ``_relay`` if this process is a Ray driver that prints logs."""
    if "ray" not in sys.modules:
        return
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    with dispatcher._lock:
        dispatcher.handlers = [(name, _relay if name == _HANDLER else handler) for name, handler in dispatcher.handlers]


@pytest.fixture(autouse=True)
def _ray_logs_to_the_process_streams() -> None:
    """Every test: a Ray started since the last one (ray.init registers its printer anew)."""
    pin_ray_log_relay()
