"""The notification receivers' table that ``rules status``, ``status`` and ``top`` print, from the
notifier's status record (services/events/notifier_status.py): per receiver, its deliveries,
failed attempts and dead letters since the notifier started, its queue now, and its last error."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from rich.markup import escape
from rich.table import Table

COLUMNS = ("receiver", "type", "sent", "retried", "dead-lettered", "queued", "dead letters", "last error")


def receivers_table(record: Mapping[str, Any] | None, *, now: float | None = None) -> Table:
    """The table; a caption says when the notifier is off or has not reported."""
    now = time.time() if now is None else now
    if record is None:
        table = Table(title="notification receivers", caption="the notifier has not reported (notify.enabled is off, or it is starting)")
        for column in COLUMNS:
            table.add_column(column)
        return table
    reported = record.get("updated_at")
    ago = f"reported {max(0.0, now - float(reported)):.0f}s ago" if isinstance(reported, int | float) else "never reported"
    groups = record.get("groups")
    caption = f"{ago}; {groups} aggregation group(s)" if isinstance(groups, int) else ago
    if record.get("last_reload_error"):
        caption += f"; notification file error: {record['last_reload_error']}"
    table = Table(title="notification receivers (since the notifier started)", caption=escape(caption))
    for column in COLUMNS:
        table.add_column(column, justify="right" if column in ("sent", "retried", "dead-lettered", "queued", "dead letters") else "left")
    for row in record.get("receiver_status") or []:
        error = row.get("last_error")
        when = row.get("last_error_at")
        last = "none" if not error else f"{error} ({max(0.0, now - float(when)):.0f}s ago)" if isinstance(when, int | float) else str(error)
        table.add_row(
            escape(str(row.get("name", ""))), escape(str(row.get("type", ""))), _count(row.get("sent")), _count(row.get("retried")),
            _count(row.get("dead_lettered")), _count(row.get("queued")), _count(row.get("dead_letters")),
            f"[red]{escape(last)}[/]" if error else last,
        )  # fmt: skip
    return table


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"
