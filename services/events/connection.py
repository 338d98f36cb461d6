"""Connecting to NATS as one role: its identity, TLS, and an inbox only that role may read.

Every connection in listenpost goes through :func:`connect`: the deployments (which reconnect
forever) and the command line (:func:`short_session`, which fails fast with a sentence instead
of a traceback). The identity comes from settings (``nats.roles.<role>`` or ``nats.auth``);
each role's replies arrive on ``_INBOX_<role>.>``, so the server can let a role read its own
replies and nobody else's (deploy/nats-server.conf).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from services.events.errors import EventsError
from services.runtime import read_runtime
from services.settings import NatsAuth, NatsRole, NatsSettings

log = logging.getLogger(__name__)
T = TypeVar("T")


class _QuietTlsClose(logging.Filter):
    """asyncio warns "returning true from eof_received() has no effect when using ssl" whenever a
    TLS connection to nats-server closes (nats-py's protocol returns True): noise, not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received() has no effect when using ssl" not in record.getMessage()


logging.getLogger("asyncio").addFilter(_QuietTlsClose())


class NatsConnectError(EventsError, ConnectionError):
    """A command could not reach or log in to NATS: the message says which and why."""


def inbox_prefix(role: NatsRole) -> str:
    return f"_INBOX_{role}"


def tls_context(cfg: NatsSettings) -> ssl.SSLContext | None:
    """A verifying client TLS context, or None when TLS is not configured."""
    if not cfg.tls:
        return None
    context = ssl.create_default_context(cafile=str(cfg.tls_ca_file) if cfg.tls_ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cfg.tls_cert_file is not None:
        context.load_cert_chain(str(cfg.tls_cert_file), str(cfg.tls_key_file) if cfg.tls_key_file else None)
    return context


def identity_options(auth: NatsAuth) -> dict[str, Any]:
    """nats-py's ``connect`` arguments for one identity (secrets leave their wrappers only here)."""
    if auth.user is not None and auth.password is not None:
        return {"user": auth.user, "password": auth.password.get_secret_value()}
    if auth.token is not None:
        return {"token": auth.token.get_secret_value()}
    if auth.nkey_seed_file is not None:
        return {"nkeys_seed": str(auth.nkey_seed_file)}
    if auth.creds_file is not None:
        return {"user_credentials": str(auth.creds_file)}
    return {}


def connect_options(cfg: NatsSettings, role: NatsRole) -> dict[str, Any]:
    """Everything but callbacks and reconnect policy: servers, identity, TLS, inbox."""
    if not cfg.url:
        raise NatsConnectError("no NATS URL: start `listenpost serve` or set LISTENPOST_NATS__URL")
    options: dict[str, Any] = {
        "servers": cfg.servers,
        "inbox_prefix": inbox_prefix(role),
        **identity_options(cfg.identity(role)),
    }
    context = tls_context(cfg)
    if context is not None:
        options["tls"] = context
        if cfg.tls_server_name:
            options["tls_hostname"] = cfg.tls_server_name
        options["tls_handshake_first"] = cfg.tls_first
    return options


async def connect(
    cfg: NatsSettings,
    *,
    role: NatsRole,
    name: str,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
) -> NATS:
    """Connect as ``role`` with unbounded reconnects: a replica outlives nats-server restarts."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats %s: %s", name, exc)

    async def on_reconnected() -> None:
        log.info("nats %s: reconnected", name)
        if on_reconnect is not None:
            await on_reconnect()

    return await nats.connect(
        **connect_options(cfg, role),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        error_cb=on_error,
        reconnected_cb=on_reconnected,
    )


@asynccontextmanager
async def short_session(
    cfg: NatsSettings, *, role: NatsRole, name: str, connect_timeout_s: float = 10.0
) -> AsyncIterator[NATS]:
    """A connection for a command: fails fast, with the cause in words, when NATS is down or
    refuses the identity (services reconnect forever instead)."""
    errors: list[Exception] = []

    async def remember(exc: Exception) -> None:  # instead of nats-py's traceback per attempt
        errors.append(exc)

    options = connect_options(cfg, role)
    try:
        # nats-py only gives up on a first connect once attempts are bounded above zero, and
        # retries a failed TLS handshake (an untrusted certificate) without end: bound it.
        async with asyncio.timeout(connect_timeout_s):
            nc = await nats.connect(
                **options,
                name=name,
                connect_timeout=5,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.2,
                error_cb=remember,
            )
    except Exception as exc:
        cause = errors[0] if errors else exc  # the first is the cause; later ones are its echoes
        raise NatsConnectError(f"cannot reach NATS at {cfg.url} as {role}: {cause or type(cause).__name__}") from exc
    try:
        yield nc
    finally:
        await nc.close()


def command_settings(option_url: str | None, cfg: NatsSettings, runtime_file: Path | None = None) -> NatsSettings:
    """The NATS a command talks to: its ``--nats`` option, else the setting, else the running
    ``listenpost serve`` (whose embedded server's identities the runtime file leads to)."""
    from services.events.embedded import EmbeddedSecrets  # the embedded server's files

    runtime = read_runtime(runtime_file)
    embedded = runtime if runtime is not None and runtime.secrets_dir is not None else None
    if option_url:
        if embedded is not None and option_url == embedded.nats_url:
            return EmbeddedSecrets(embedded.secrets_dir or Path()).client_settings(cfg, option_url)
        return NatsSettings.model_validate({**cfg.model_dump(), "url": option_url, "auth": cfg.auth})
    if cfg.url:
        return cfg
    if runtime is None:
        raise NatsConnectError("no NATS URL: start `listenpost serve`, pass --nats-url or set LISTENPOST_NATS__URL")
    if embedded is not None:
        return EmbeddedSecrets(embedded.secrets_dir or Path()).client_settings(cfg, runtime.nats_url)
    return cfg.model_copy(update={"url": runtime.nats_url})


async def with_jetstream(
    cfg: NatsSettings, work: Callable[[JetStreamContext], Awaitable[T]], *, name: str, role: NatsRole = "operator"
) -> T:
    """Run one command's ``work`` on a short session (see :func:`short_session`)."""
    async with short_session(cfg, role=role, name=name) as nc:
        return await work(nc.jetstream())
