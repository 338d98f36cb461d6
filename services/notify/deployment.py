"""The Notifier Serve deployment: alert decisions become notifications, and are delivered.

It runs :class:`services.notify.service.Notifier` (the queuer and the sender on one NATS
connection, as the ``notify`` role) inside ``listenpost serve`` when ``notify.enabled``:

- **One replica** (settings refuse more): the queuer holds the firing set that inhibition reads.
- **The notification file** (``notify.file``) is checked every ``notify.reload_interval_s``; a
  good edit is used for the next decision, a broken one is logged with its file:line:column
  errors and the last good config stays in use (``status()`` shows the last error). Until the
  file first loads, nothing is consumed: decisions wait in LISTENPOST_OUT.
- **Secrets** come from ``notify.secrets`` and ``notify.secrets_dir``, read once at start. A
  receiver whose secret is missing is reported once at start (and after each reload that
  changes the file); its notifications are dead-lettered (``listenpost notify list --dlq``)
  until the secret is configured and the replica restarted, then ``notify replay``.
- **Health**: ``check_health`` fails when the queuer's or the sender's loop has died, and Serve
  replaces the replica.
- **Shutdown**: stop fetching, let deliveries in flight finish for up to
  ``notify.drain_timeout_s`` (what is left is redelivered later, with the same idempotency
  key), then close NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from ray import serve

from services.events.connection import connect
from services.events.jetstream import ensure_provisioned
from services.events.notifier_status import delete_notifier_status, write_notifier_status
from services.events.tasks import cancel_and_wait
from services.logcontext import configure_replica_logging
from services.notify.config import NotifyConfig
from services.notify.receivers import missing_secrets
from services.notify.receivers.secrets import Secrets, configured_secrets
from services.notify.service import Notifier as NotifierService
from services.notify.status import crm_rows, receiver_status
from services.settings import Settings
from services.telemetry import configure_tracing

log = logging.getLogger(__name__)


def missing_secret_lines(config: NotifyConfig, secrets: Secrets) -> list[str]:
    """One line per receiver that names a secret that is not configured (names only, never values)."""
    lines = []
    for receiver in config.receivers.values():
        names = missing_secrets(receiver.config, secrets)
        if names:
            lines.append(
                f"receiver {receiver.name!r} needs secret(s) {', '.join(repr(n) for n in names)}, not configured "
                "(notify.secrets or a file in notify.secrets_dir): its notifications will be dead-lettered"
            )
    for target in config.crm:
        names = [n for n in target.secret_names() if secrets.get(n) is None]
        if names:
            lines.append(
                f"CRM target {target.name!r} needs secret(s) {', '.join(repr(n) for n in names)}, not configured "
                "(notify.secrets or a file in notify.secrets_dir): its call summaries will be dead-lettered"
            )
    return lines


@serve.deployment(name="Notifier")
class Notifier:
    async def __init__(self, settings: Settings) -> None:  # type: ignore[misc]  # Serve awaits an async constructor
        assert settings.nats.url, "the app builder always sets the NATS URL"
        configure_tracing("listenpost-notify")  # OTEL_* only; nothing without an endpoint
        configure_replica_logging()  # an event_id on every line of an event's handling
        self._settings = settings
        self._secrets = configured_secrets(settings.notify)  # a bad secrets_dir fails the replica: say so at start
        self._nc = await connect(settings.nats, role="notify", name="listenpost-notify")
        self._js = self._nc.jetstream()
        await ensure_provisioned(self._js, settings)
        self._notifier = NotifierService(self._js, settings, secrets=self._secrets)
        self._version: str | None = None
        self._loaded_at: float | None = None
        self._last_error: str | None = None
        self._last_error_at: float | None = None
        self._check_config()  # the first load: logs errors in words, reports missing secrets
        await self._notifier.start()
        loop = asyncio.get_running_loop()
        self._watch = loop.create_task(self._watch_config(), name="notify-reload")
        self._reporting = loop.create_task(self._report_status(), name="notify-status")

    # --- the notification file --------------------------------------------------------------

    def _check_config(self) -> None:
        """Look at the file (no more often than its interval); note what changed."""
        watched = self._notifier.config
        config = watched.get()  # logs a broken file with its file:line:column errors, keeps the last good
        if watched.errors:
            error = "\n".join(str(e) for e in watched.errors)
            if error != self._last_error:
                self._last_error, self._last_error_at = error, time.time()
        elif config is not None:
            self._last_error = self._last_error_at = None
        if config is not None and config.version != self._version:
            self._version, self._loaded_at = config.version, time.time()
            for line in missing_secret_lines(config, self._secrets):
                log.warning("%s", line)

    async def _watch_config(self) -> None:
        while True:
            await asyncio.sleep(self._settings.notify.reload_interval_s)
            try:
                self._check_config()  # on the loop, as the queuer's and sender's own reads: one reader at a time
            except Exception:
                log.exception("notification file check failed")

    # --- status ---------------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        """Receivers (each with its deliveries, failures, last error and queue), the queue's depth
        and the last reload error (for ``rules status``, ``status`` and ``top``)."""
        notify = self._settings.notify
        config = self._notifier.config.last_good.config
        queued: int | None = None
        with contextlib.suppress(Exception):
            info = await self._js.consumer_info(notify.stream, notify.send_durable, timeout=2)
            queued = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        sender = self._notifier.sender
        rows = await receiver_status(self._js, self._settings, config, sender.stats if sender is not None else {})
        writer = self._notifier.crm_writer
        dead = [row.dead_letters for row in rows]
        dead_letters = None if any(d is None for d in dead) else sum(d for d in dead if d is not None)
        return {
            "file": str(notify.file),
            "version": config.version if config else None,
            "loaded_at": self._loaded_at,
            "receivers": sorted(config.receivers) if config else [],
            "receiver_status": [row.model_dump() for row in rows]
            + [row.model_dump() for row in crm_rows(config, writer.stats if writer is not None else {})],
            "groups": len(self._notifier.grouper.store.groups) if self._notifier.grouper is not None else None,
            "missing_secrets": missing_secret_lines(config, self._secrets) if config else [],
            "consuming": self._notifier.consuming,
            "queued": queued,
            "dead_letters": dead_letters,
            "last_reload_error": self._last_error,
            "last_reload_error_at": self._last_error_at,
            "failure": repr(failure) if (failure := self._notifier.failure) is not None else None,
            "updated_at": time.time(),
        }

    async def _report_status(self) -> None:
        """Write :meth:`status` where the commands read it (the rules status bucket, key ``notifier``)."""
        while True:
            await asyncio.sleep(self._settings.notify.status_interval_s)
            try:
                await write_notifier_status(self._js, self._settings.rules.status_bucket, await self.status())
            except Exception as exc:  # noqa: BLE001 - NATS trouble: the next report tries again
                log.warning("notifier status not written: %s: %s", type(exc).__name__, exc)

    async def check_health(self) -> None:
        if (failure := self._notifier.failure) is not None:
            raise RuntimeError(f"notifier loop died: {failure!r}")

    async def __del__(self) -> None:
        if not hasattr(self, "_watch"):  # the constructor failed part way (its error is the news)
            if hasattr(self, "_notifier"):
                with contextlib.suppress(Exception):
                    await self._notifier.stop(drain_timeout_s=0)
            if hasattr(self, "_nc"):
                await self._nc.close()
            return
        await cancel_and_wait(self._watch)
        await cancel_and_wait(self._reporting)
        with contextlib.suppress(Exception):  # a stopped notifier reports nothing rather than stale figures
            await delete_notifier_status(self._js, self._settings.rules.status_bucket)
        # Stop fetching; deliveries in flight finish within the bound, the rest are redelivered later.
        await self._notifier.stop(drain_timeout_s=self._settings.notify.drain_timeout_s)
        with contextlib.suppress(Exception):
            await self._nc.flush(timeout=2)
        await self._nc.close()
