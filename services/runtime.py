"""The runtime file: how a running ``listenpost serve`` tells local commands where it listens.

``listenpost serve`` writes it once the service is up and removes it on exit; the commands
that talk to NATS (``submit``, ``dlq``, ``rules status/backtest/silence``) read it when no
URL is given, and ``top``/``status`` the local Ray node's metrics endpoint. It holds the URLs
and, for the embedded server, the folder of the identities it generated (0600 files there):
never a secret itself. A leaf module (nothing of ours imported),
so reading it costs nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ValidationError

RUNTIME_FILE = Path(".cache/listenpost/runtime.json")


class Runtime(BaseModel):
    nats_url: str
    pid: int
    #: The embedded server's secrets folder (services/events/embedded.py), when it is embedded.
    secrets_dir: Path | None = None
    #: The local Ray node's Prometheus endpoint (``listenpost top`` reads latency and rule matches there).
    metrics_urls: list[str] = []


def write_runtime_file(
    nats_url: str, secrets_dir: Path | None = None, path: Path | None = None, *, metrics_urls: Sequence[str] = ()
) -> None:
    """Record where the embedded (or configured) NATS server and Ray's metrics endpoint listen, for local commands."""
    path = path or RUNTIME_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    runtime = Runtime(
        nats_url=nats_url,
        pid=os.getpid(),
        secrets_dir=secrets_dir.resolve() if secrets_dir else None,
        metrics_urls=list(metrics_urls),
    )
    path.write_text(runtime.model_dump_json(exclude_defaults=True))


def remove_runtime_file(path: Path | None = None) -> None:
    (path or RUNTIME_FILE).unlink(missing_ok=True)


def read_runtime(path: Path | None = None) -> Runtime | None:
    """The running ``listenpost serve``, or None when none is running."""
    try:
        return Runtime.model_validate(json.loads((path or RUNTIME_FILE).read_text()))
    except (OSError, ValueError, ValidationError):
        return None


def read_runtime_nats_url(path: Path | None = None) -> str | None:
    """The NATS URL of the running ``listenpost serve``, or None when none is running."""
    runtime = read_runtime(path)
    return runtime.nats_url if runtime else None


def read_runtime_metrics_urls(path: Path | None = None) -> list[str]:
    """The local Ray node's metrics endpoint of the running ``listenpost serve``; [] when none is running."""
    runtime = read_runtime(path)
    return list(runtime.metrics_urls) if runtime else []
