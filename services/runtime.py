"""The runtime file: how a running ``listenpost serve`` tells local commands where it listens.

``listenpost serve`` writes it once the service is up and removes it on exit; the commands
that talk to NATS (``submit``, ``dlq``, ``rules status/backtest/silence``) read it when no
URL is given. A leaf module (nothing of ours imported), so reading it costs nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

RUNTIME_FILE = Path(".cache/listenpost/runtime.json")


def write_runtime_file(nats_url: str, path: Path | None = None) -> None:
    """Record where the embedded (or configured) NATS server listens, for local commands."""
    path = path or RUNTIME_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"nats_url": nats_url, "pid": os.getpid()}))


def remove_runtime_file(path: Path | None = None) -> None:
    (path or RUNTIME_FILE).unlink(missing_ok=True)


def read_runtime_nats_url(path: Path | None = None) -> str | None:
    """The NATS URL of the running ``listenpost serve``, or None when none is running."""
    try:
        return str(json.loads((path or RUNTIME_FILE).read_text())["nats_url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def command_nats_url(option: str | None, configured: str | None, path: Path | None = None) -> str | None:
    """The NATS URL a command uses: its option, else the setting, else the running service's."""
    return option or configured or read_runtime_nats_url(path)
