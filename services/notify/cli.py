"""``listenpost notify ...``: the notification file, checked and tried; the queue and its dead letters.

    check [FILE]                         validate the file, summarise it (errors: file:line:column: cause)
    routes test [--at TIME] LABEL=VALUE  the receivers an alert with these labels reaches (``amtool config routes test``)
    list [--dlq] [--receiver NAME]       notifications waiting for their receiver, or dead-lettered
    replay ID... | --all [--receiver N]  send dead-lettered notifications again (like ``dlq replay``)
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from services.notify.config import NotifyConfig, NotifyConfigError, check, load
from services.notify.routing import RouteMatch, group_key, muted_by, receiver_muted_by, receivers, route

notify_app = typer.Typer(help="Notifications: who hears about an alert (docs/notifications.md).", no_args_is_help=True)
routes_app = typer.Typer(help="The routing tree.", no_args_is_help=True)
notify_app.add_typer(routes_app, name="routes")
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

FileOpt = Annotated[
    Path | None, typer.Option("--file", "-f", help="The notification file (default: the setting notify.file).")
]
_LABEL = re.compile(r"^([a-zA-Z_][a-zA-Z0-9_]*)=(.*)$")


def _default_file() -> Path:
    from services.settings import Settings

    return Settings().notify.file


def _load_or_exit(path: Path, code: int) -> NotifyConfig:
    try:
        return load(path)
    except NotifyConfigError as exc:
        for error in exc.errors:
            err.print(str(error), highlight=False, markup=False)
        raise typer.Exit(code) from exc


def parse_labels(pairs: list[str]) -> dict[str, str]:
    """``["severity=critical", 'team="qa"']`` -> labels; a quoted value loses its quotes."""
    labels: dict[str, str] = {}
    for pair in pairs:
        found = _LABEL.match(pair)
        if not found:
            raise ValueError(f"{pair!r} is not LABEL=VALUE (a label name is [a-zA-Z_][a-zA-Z0-9_]*)")
        name, value = found.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        labels[name] = value
    return labels


def parse_at(text: str | None) -> datetime:
    """``--at``: an ISO 8601 time; without an offset it is UTC. Default: now."""
    if text is None:
        return datetime.now(UTC)
    at = datetime.fromisoformat(text)
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


@notify_app.command("check")
def notify_check(
    file: Annotated[Path | None, typer.Argument(help="The notification file (default: the setting notify.file).")] = None,
) -> None:
    """Validate the notification file; print every error as file:line:column: cause (exit 1)."""
    path = file or _default_file()
    if not path.is_file():
        err.print(f"{path}: no such file", highlight=False, markup=False)
        raise typer.Exit(2)
    config, errors = check(path)
    for error in errors:
        err.print(str(error), highlight=False, markup=False)
    if config is None:
        raise typer.Exit(1)
    types = Counter(r.type for r in config.receivers.values())
    console.print(
        f"{path}: ok (version {config.version}): {_count(len(config.routes()), 'route')}, "
        f"{_count(len(config.receivers), 'receiver')} ({', '.join(f'{t} {n}' for t, n in sorted(types.items()))}), "
        f"{_count(len(config.inhibit_rules), 'inhibit rule')}, {_count(len(config.time_intervals), 'time interval')}",
        highlight=False,
        markup=False,
    )
    for name in config.unused_receivers():
        console.print(f"warning: receiver {name!r} is not used by any route", highlight=False, markup=False)
    for name in config.unused_time_intervals():
        console.print(f"warning: time interval {name!r} is not used by any route", highlight=False, markup=False)
    from services.notify.receivers import missing_secrets
    from services.notify.receivers.secrets import configured_secrets
    from services.settings import Settings

    secrets = configured_secrets(Settings().notify)
    for receiver in config.receivers.values():
        for name in missing_secrets(receiver.config, secrets):
            console.print(
                f"warning: receiver {receiver.name!r} needs secret {name!r}, which is not configured "
                "(notify.secrets or a file in notify.secrets_dir)",
                highlight=False,
                markup=False,
            )


@routes_app.command("test")
def routes_test(
    labels: Annotated[list[str], typer.Argument(help="The alert's labels: LABEL=VALUE ... (rule and severity included).")],
    file: FileOpt = None,
    at: Annotated[str | None, typer.Option("--at", help="ISO 8601 time for mute/active intervals (no offset: UTC). Default: now.")] = None,
    verify: Annotated[
        str | None, typer.Option("--verify-receivers", help="Exit 1 unless the receivers are exactly these (comma-separated, in order).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The receivers an alert with these labels reaches, in tree order (like `amtool config routes test`)."""
    try:
        alert = parse_labels(labels)
        when = parse_at(at)
    except ValueError as exc:
        err.print(f"error: {exc}", highlight=False, markup=False)
        raise typer.Exit(2) from exc
    config = _load_or_exit(file or _default_file(), 2)
    matches = route(config, alert)
    rows = [_row(m, config, alert, when) for m in matches]
    if as_json:
        sys.stdout.write(json.dumps({"at": when.isoformat(), "labels": alert, "routes": rows}, indent=2) + "\n")
    else:
        console.print(",".join(m.receiver for m in matches), highlight=False, markup=False)
        table = Table(title=f"at {when.isoformat(timespec='minutes')}", title_justify="left")
        for name in ("receiver", "route", "group by", "wait / interval / repeat", "now"):
            table.add_column(name, overflow="fold")
        for row in rows:
            table.add_row(
                row["receiver"],
                row["route"],
                ", ".join(row["group_by"]) or "-",
                row["timing"],
                "sends" if row["muted"] is None else row["muted"],
            )
        console.print(table)
    if verify is not None:
        expected = [r.strip() for r in verify.split(",") if r.strip()]
        got = [m.receiver for m in matches]
        if got != expected:
            err.print(f"expected receivers {','.join(expected)}, got {','.join(got)}", highlight=False, markup=False)
            raise typer.Exit(1)


def _row(match: RouteMatch, config: NotifyConfig, labels: Mapping[str, str], at: datetime) -> dict[str, Any]:
    return {
        "receiver": match.receiver,
        "route": match.path,
        "group_by": ["..."] if match.group_by_all else list(match.group_by),
        "group_key": group_key(match, labels),
        "timing": f"{_seconds(match.group_wait_s)} / {_seconds(match.group_interval_s)} / {_seconds(match.repeat_interval_s)}",
        "mute_time_intervals": list(match.mute_time_intervals),
        "active_time_intervals": list(match.active_time_intervals),
        "muted": muted_by(match, config.time_intervals, at) or _receiver_muted(config, match.receiver, at),
    }


def _receiver_muted(config: NotifyConfig, name: str, at: datetime) -> str | None:
    receiver = config.receivers.get(name)
    return None if receiver is None else receiver_muted_by(receiver, config.time_intervals, at)


def _seconds(value: float) -> str:
    for unit, size in (("h", 3600), ("m", 60)):
        if value >= size and value % size == 0:
            return f"{value / size:g}{unit}"
    return f"{value:g}s"


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def rule_test_routes(path: Path) -> Callable[[Mapping[str, str]], list[str]]:
    """The routing ``listenpost rules test`` lends rule tests (``receivers:`` in an alert expectation)."""
    try:
        config = load(path)
    except NotifyConfigError as exc:
        raise ValueError(str(exc)) from exc
    return lambda labels: receivers(config, labels)


# --- the queue and its dead letters (services/notify/deadletters.py) ----------------------------

NatsUrlOpt = Annotated[str | None, typer.Option("--nats-url", help="Default: settings, else the running `listenpost serve`.")]
ReceiverOpt = Annotated[str | None, typer.Option("--receiver", help="Only this receiver's.")]


@notify_app.command("list")
def notify_list(
    dlq: Annotated[bool, typer.Option("--dlq", help="Dead letters (given up on) instead of the queue.")] = False,
    receiver: ReceiverOpt = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Entries per page.")] = 50,
    after: Annotated[int, typer.Option("--after", min=0, help="Start after this stream sequence (the next page).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    nats_url: NatsUrlOpt = None,
) -> None:
    """Notifications waiting for their receiver (or, with --dlq, given up on), oldest first."""
    from services.events.cli import run_as_operator, shown
    from services.notify.deadletters import page_entries
    from services.settings import Settings

    settings = Settings()
    page = run_as_operator(
        nats_url, settings, lambda js: page_entries(js, settings, dead=dlq, receiver=receiver, after=after, limit=limit),
        name="listenpost-notify",
    )  # fmt: skip
    if as_json:
        sys.stdout.write(json.dumps([e.model_dump(mode="json") for e in page.entries], indent=2) + "\n")
        return
    what = "dead letters" if dlq else "queued notifications"
    if not page.entries:
        console.print(f"no {what}{f' of {receiver}' if receiver else ''} in {settings.notify.stream}", highlight=False)
        return
    now = datetime.now(UTC)
    table = Table(title=f"{settings.notify.stream}: {page.total} {what}", title_justify="left")
    for column in ("id", "receiver", "alerts", "attempts", "last error", "age"):
        table.add_column(column, overflow="fold")
    for entry in page.entries:
        error = entry.last_error or entry.reason
        if entry.status is not None and entry.response_excerpt and entry.response_excerpt not in error:
            error += f" [{entry.status}: {entry.response_excerpt}]"
        if entry.last_error and entry.reason:
            error += f"; {entry.reason}"
        age = entry.age_s(now)
        table.add_row(
            f"{entry.seq}\n{shown(entry.notification_id) or '?'}",
            shown(entry.receiver) or "?",
            f"{entry.alerts}: {shown(entry.summary)}" if entry.alerts else "-",
            str(entry.attempts) if entry.attempts is not None else "-",
            shown(error) or "-",
            _seconds(round(age)) if age is not None else "?",
        )
    console.print(table)
    if page.next_after is not None:
        console.print(f"more: listenpost notify list{' --dlq' if dlq else ''} --after {page.next_after}", highlight=False)


@notify_app.command("replay")
def notify_replay(
    ids: Annotated[
        list[str] | None, typer.Argument(help="Dead letters: stream sequences or notification ids (see `notify list --dlq`).")
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every dead letter (of --receiver, if given).")] = False,
    receiver: ReceiverOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    nats_url: NatsUrlOpt = None,
) -> None:
    """Send dead-lettered notifications again, then delete the dead letters.

    Run it once the receiver is fixed: a notification that fails again is dead-lettered again.
    """
    from services.events.cli import print_replay_report, run_as_operator
    from services.events.dlq import DeadLetterError
    from services.notify.deadletters import replay_notifications
    from services.settings import Settings

    if bool(ids) == all_:
        raise typer.BadParameter("give dead letter ids, or --all")
    settings = Settings()
    try:
        report = run_as_operator(
            nats_url, settings,
            lambda js: replay_notifications(js, settings, ids=ids or (), all=all_, receiver=receiver),
            name="listenpost-notify",
        )  # fmt: skip
    except DeadLetterError as exc:
        err.print(f"error: {exc}", highlight=False, markup=False)
        raise typer.Exit(1) from exc
    if as_json:
        sys.stdout.write(report.model_dump_json(indent=2) + "\n")
    else:
        print_replay_report(report)
    if report.unaudited:
        err.print(f"audit: {report.unaudited} replay(s) not recorded in the audit trail (see the log)", highlight=False)
    if not report.ok or report.unaudited:
        raise typer.Exit(1)
