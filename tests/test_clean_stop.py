"""A clean stop (issue 13): Ctrl-C must not stop the embedded nats-server before the app has drained.

A terminal's Ctrl-C sends SIGINT to the whole foreground process group. ``listenpost serve``
handles it and stops in order (services/runner.py); Ray's processes block it; nats-server, a
child in the same group, used to stop at once, so draining replicas met "Connection refused".
Here a real ``listenpost serve``-like process (its own session, as a shell job is) runs a real
embedded nats-server and gets a group SIGINT, as from a terminal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

CHILD = textwrap.dedent(
    """
    import signal, sys, threading, time
    from services.events.embedded import EmbeddedNatsServer

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())  # as `listenpost serve` does
    with EmbeddedNatsServer(sys.argv[1]) as server:
        print("ready", flush=True)
        stop.wait(60)
        time.sleep(1.0)  # what draining the app takes, at least
        print(f"after ctrl-c: signal seen {stop.is_set()}, nats-server running {server.running}", flush=True)
    """
)


def test_ctrl_c_reaches_the_service_and_not_its_nats_server(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path / "nats")],
        stdout=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        os.killpg(child.pid, signal.SIGINT)  # the terminal's Ctrl-C: every process of the group
        report = child.stdout.readline().strip()
        assert child.wait(30) == 0
    finally:
        if child.poll() is None:
            child.kill()
    assert report == "after ctrl-c: signal seen True, nats-server running True"

