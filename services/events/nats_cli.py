"""``listenpost nats ...``: provision streams and buckets as an admin; the server's configuration."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from services.events.connection import NatsConnectError, command_settings, with_jetstream
from services.events.jetstream import provision_everything
from services.events.permissions import role_permissions
from services.events.server_config import deploy_config, render
from services.settings import Settings

nats_app = typer.Typer(help="NATS: provisioning, the server configuration, who may do what.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)


@nats_app.command("provision")
def provision_command(
    nats_url: Annotated[str | None, typer.Option("--nats-url", help="Default: settings, else the running serve.")] = None,
) -> None:
    """Create or update every stream, consumer, KV bucket and object store, as the admin role.

    Run it once per deploy (and after changing stream limits) where the deployments run with
    LISTENPOST_NATS__PROVISION_ON_START=false, as the shipped server configuration expects.
    """
    settings = Settings()
    try:
        cfg = command_settings(nats_url, settings.nats)
        asyncio.run(with_jetstream(cfg, lambda js: provision_everything(js, settings), name="listenpost-provision", role="admin"))
    except NatsConnectError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from exc
    console.print(f"provisioned streams, consumers and buckets on {cfg.url}")


@nats_app.command("server-config")
def server_config_command(
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Write to this file (default: print).")] = None,
) -> None:
    """The nats-server configuration for these settings (deploy/nats-server.conf): an NKey user per
    role with its permissions, JetStream encrypted at rest, TLS; secrets as $VARIABLES."""
    settings = Settings()
    text = render(deploy_config(settings), settings)
    if out is None:
        print(text, end="")
        return
    out.write_text(text)
    console.print(f"wrote {out}")


@nats_app.command("permissions")
def permissions_command() -> None:
    """Which subjects each role may publish to and subscribe to."""
    table = Table(title="NATS permissions by role (services/events/permissions.py)")
    for column in ("role", "publish", "subscribe"):
        table.add_column(column, overflow="fold")
    for role, permissions in role_permissions(Settings()).items():
        publish = "\n".join(permissions.publish + [f"deny {s}" for s in permissions.publish_deny])
        table.add_row(role, publish, "\n".join(permissions.subscribe))
    console.print(table)


@nats_app.command("keys")
def keys_command(
    directory: Annotated[Path, typer.Argument(help="Folder for the seed files (made 0700; files 0600).")],
) -> None:
    """Make an NKey per role: its seed in DIRECTORY/<role>.nk for that role's component only, and
    the public keys as the environment deploy/nats-server.conf reads (LISTENPOST_<ROLE>_NKEY)."""
    from services.events.embedded import EmbeddedSecrets
    from services.events.server_config import role_variable

    secrets = EmbeddedSecrets(directory)
    public = secrets.new_nkeys()
    for role, key in public.items():
        print(f"{role_variable(role).name}={key}")
    err.print(f"seeds in {secrets.directory}/<role>.nk (0600): give each only to its component", highlight=False)
