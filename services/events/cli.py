"""``listenpost dlq ...``: look at dead letters and replay them once the cause is fixed;
``listenpost audit list``: read the audit trail."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import nats
import typer
from nats.js import JetStreamContext
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from services.events.audit import ACTIONS, AuditError, list_records, parse_since
from services.events.dlq import DeadLetter, DeadLetterError, ReplayReport, list_dead_letters, replay
from services.runtime import command_nats_url
from services.settings import Settings

dlq_app = typer.Typer(help="Dead letters: events that failed for good, kept whole for replay.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)

T = TypeVar("T")

NatsUrl = Annotated[
    str | None, typer.Option("--nats-url", help="Default: settings, else the running `listenpost serve`.")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _url(option: str | None, settings: Settings) -> str:
    url = command_nats_url(option, settings.nats.url)
    if not url:
        err.print("[red]error:[/] no NATS URL: start `listenpost serve` or set LISTENPOST_NATS__URL")
        raise typer.Exit(2)
    return url


def _run(url: str, work: Callable[[JetStreamContext], Awaitable[T]]) -> T:
    async def main() -> T:
        errors: list[Exception] = []

        async def remember(exc: Exception) -> None:  # instead of nats-py's traceback per attempt
            errors.append(exc)

        # A command line fails fast when NATS is down (services reconnect forever instead).
        # nats-py only gives up on a first connect once attempts are bounded above zero.
        try:
            nc = await nats.connect(
                servers=[url],
                name="listenpost-dlq",
                connect_timeout=5,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.2,
                error_cb=remember,
            )
        except Exception as exc:
            cause = errors[-1] if errors else exc
            err.print(f"[red]error:[/] cannot reach NATS at {url}: {cause}", highlight=False)
            raise typer.Exit(2) from exc
        try:
            return await work(nc.jetstream())
        finally:
            await nc.close()

    return asyncio.run(main())


@dlq_app.command("list")
def dlq_list(
    as_json: AsJson = False,
    stage: Annotated[str | None, typer.Option(help="Only this stage (fetch, caption, rules...).")] = None,
    nats_url: NatsUrl = None,
) -> None:
    """List dead letters, oldest first: sequence, time, stage, reason and the original event id."""
    settings = Settings()
    letters = _run(_url(nats_url, settings), lambda js: list_dead_letters(js, settings, stage=stage))
    if as_json:
        console.print_json(json.dumps([letter.model_dump(mode="json") for letter in letters]))
        return
    if not letters:
        console.print(f"no dead letters in {settings.nats.dlq_stream}")
        return
    console.print(_letters_table(letters, settings.nats.dlq_stream))


def _letters_table(letters: list[DeadLetter], stream: str) -> Table:
    table = Table(title=f"{stream}: {len(letters)} dead letter{'s' if len(letters) != 1 else ''}")
    for column in ("seq", "time", "stage", "original id", "subject", "reason"):
        table.add_column(column, overflow="fold")
    for letter in letters:
        table.add_row(
            str(letter.seq),
            letter.time.strftime("%Y-%m-%d %H:%M:%S") if letter.time else "",
            letter.stage or "?",
            letter.original_id or "",
            letter.original_subject or "",
            letter.reason if letter.replayable else f"{letter.reason} (not replayable)",
        )
    return table


@dlq_app.command("replay")
def dlq_replay(
    original_id: Annotated[str | None, typer.Option("--id", help="The failed event's CloudEvents id.")] = None,
    seq: Annotated[int | None, typer.Option("--seq", help="The dead letter's DLQ sequence (see `dlq list`).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every dead letter (of --stage, if given).")] = False,
    stage: Annotated[str | None, typer.Option(help="With --all or --id: only this stage.")] = None,
    as_json: AsJson = False,
    nats_url: NatsUrl = None,
) -> None:
    """Republish dead letters' original messages, then delete the dead letters.

    Run it once the cause is fixed: a replayed event that fails again is dead-lettered again.
    """
    if sum((original_id is not None, seq is not None, all_)) != 1:
        raise typer.BadParameter("give exactly one of --id, --seq or --all")
    if stage is not None and seq is not None:
        raise typer.BadParameter("--stage goes with --all or --id, not --seq")
    settings = Settings()

    async def work(js: JetStreamContext) -> ReplayReport:
        return await replay(js, settings, seq=seq, original_id=original_id, all=all_, stage=stage)

    try:
        report = _run(_url(nats_url, settings), work)
    except DeadLetterError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from exc
    if as_json:
        console.print_json(report.model_dump_json())
    else:
        _print_report(report)
    if report.unaudited:
        err.print(f"[red]audit:[/] {report.unaudited} replay(s) not recorded in the audit trail (see the log)")
    if not report.ok or report.unaudited:
        raise typer.Exit(1)


def _print_report(report: ReplayReport) -> None:
    if report.replayed:
        table = Table(title=f"replayed {len(report.replayed)}")
        for column in ("seq", "original id", "subject", "stored in", "note"):
            table.add_column(column, overflow="fold")
        for item in report.replayed:
            note = "already republished earlier" if item.duplicate else ""
            stored = f"{item.stream} #{item.stream_seq}"
            table.add_row(str(item.seq), item.original_id or "", item.subject, stored, note)
        console.print(table)
    elif not report.failed:
        console.print("no dead letters to replay")
    for failure in report.failed:
        what = f"{failure.seq} ({failure.original_id or 'no id'})"
        err.print(f"[red]not replayed[/] {what}: {failure.error}", highlight=False)


# --- audit -----------------------------------------------------------------------------

audit_app = typer.Typer(help="The audit trail: who submitted, replayed, silenced, activated or erased what.",
                        no_args_is_help=True)  # fmt: skip


@audit_app.command("list")
def audit_list(
    since: Annotated[str, typer.Option(help="How far back: 30m, 24h, 7d, or an ISO time.")] = "24h",
    action: Annotated[str | None, typer.Option(help=f"Only this action ({', '.join(ACTIONS)}).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many records, oldest first.")] = 10_000,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON record per line instead of a table.")] = False,
    nats_url: NatsUrl = None,
) -> None:
    """Audit records since a time, oldest first: when, who, what, and the ids it touched."""
    settings = Settings()
    try:
        start = parse_since(since)
        records = _run(
            _url(nats_url, settings),
            lambda js: list_records(js, settings.nats, settings.audit, since=start, action=action, limit=limit),
        )
    except AuditError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from exc
    if as_json:
        for rec in records:
            print(rec.model_dump_json())
        return
    if not records:
        console.print(f"no audit records in {settings.audit.stream} since {start:%Y-%m-%d %H:%M:%S} UTC")
        return
    table = Table(title=f"{settings.audit.stream}: {len(records)} record{'s' if len(records) != 1 else ''}")
    for column in ("seq", "time (UTC)", "actor", "action", "call id", "event", "details"):
        table.add_column(column, overflow="fold")
    for rec in records:
        event = " ".join(x for x in (rec.source, rec.event_id) if x)
        details = ", ".join(f"{k}={json.dumps(v, sort_keys=True)}" for k, v in rec.details.items())
        table.add_row(str(rec.seq), f"{rec.time:%Y-%m-%d %H:%M:%S}", escape(str(rec.actor)), rec.action,
                      escape(rec.call_id or ""), escape(event), escape(details))  # fmt: skip
    console.print(table)
