"""``listenpost dlq ...``: look at dead letters and replay them once the cause is fixed;
``listenpost audit list``: read the audit trail."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, TypeVar

import typer
from nats.js import JetStreamContext
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from services.events.audit import ACTIONS, AuditError, list_records, parse_since
from services.events.connection import NatsConnectError, command_settings, with_jetstream
from services.events.dlq import PAGE_SIZE, DeadLetterError, DeadLetterPage, ReplayReport, page_dead_letters, replay
from services.settings import NatsSettings, Settings

dlq_app = typer.Typer(help="Dead letters: events that failed for good, kept whole for replay.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)

T = TypeVar("T")

NatsUrl = Annotated[
    str | None, typer.Option("--nats-url", help="Default: settings, else the running `listenpost serve`.")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def command_nats(option: str | None, cfg: NatsSettings) -> NatsSettings:
    """The NATS a command talks to (:func:`command_settings`), or a sentence and exit status 2."""
    try:
        return command_settings(option, cfg)
    except NatsConnectError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None


def run_as_operator(
    option: str | None, settings: Settings, work: Callable[[JetStreamContext], Awaitable[T]], *, name: str = "listenpost-dlq"
) -> T:
    """Run ``work`` as the operator on the NATS this command is pointed at; a sentence, not a
    traceback, when NATS cannot be reached or refuses the identity."""
    try:
        cfg = command_settings(option, settings.nats)
        return asyncio.run(with_jetstream(cfg, work, name=name))
    except NatsConnectError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from exc


def _since(text: str) -> datetime:
    """``--since`` of a command: the audit trail's grammar, a usage error when it does not parse."""
    try:
        return parse_since(text)
    except AuditError as exc:
        raise typer.BadParameter(str(exc)) from None


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def shown(text: str | None) -> str:
    """Client-supplied text (ids, subjects, reasons quoting input) as a terminal shows it safely:
    control characters (an ANSI escape, a carriage return) visible as escapes, Rich markup inert."""
    return escape(_CONTROL.sub(lambda m: repr(m.group())[1:-1], text or ""))


@dlq_app.command("list")
def dlq_list(
    as_json: AsJson = False,
    stage: Annotated[str | None, typer.Option(help="Only this stage (fetch, caption, rules...).")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Dead letters per page.")] = PAGE_SIZE,
    after: Annotated[
        int | None, typer.Option("--after", min=0, help="Start after this DLQ sequence (the next page).")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only those stored since: 24h, 7d, or an ISO 8601 time.")
    ] = None,
    nats_url: NatsUrl = None,
) -> None:
    """List dead letters, oldest first, a page at a time: sequence, time, stage, reason and the original event id."""
    if after is not None and since is not None:
        raise typer.BadParameter("give --after or --since, not both")
    start = _since(since) if since is not None else None
    settings = Settings()
    page = run_as_operator(
        nats_url,
        settings,
        lambda js: page_dead_letters(js, settings, stage=stage, after=after or 0, since=start, limit=limit),
    )
    if as_json:
        console.print_json(json.dumps([letter.model_dump(mode="json") for letter in page.letters]))
        return
    if not page.letters:
        console.print(f"no dead letters in {settings.nats.dlq_stream}")
        return
    console.print(_letters_table(page, settings.nats.dlq_stream))
    if page.next_after is not None:
        more = page.total - len(page.letters)
        console.print(f"{more} more: listenpost dlq list --after {page.next_after}", highlight=False)


def _letters_table(page: DeadLetterPage, stream: str) -> Table:
    letters, total = page.letters, page.total
    count = f"{total} dead letter{'s' if total != 1 else ''}"
    span = f", showing {letters[0].seq}..{letters[-1].seq}" if total > len(letters) else ""
    table = Table(title=f"{stream}: {count}{span}")
    for column in ("seq", "time", "stage", "original id", "subject", "reason"):
        table.add_column(column, overflow="fold")
    for letter in letters:
        table.add_row(
            str(letter.seq),
            letter.time.strftime("%Y-%m-%d %H:%M:%S") if letter.time else "",
            shown(letter.stage) or "?",
            shown(letter.original_id),
            shown(letter.original_subject),
            shown(letter.reason if letter.replayable else f"{letter.reason} (not replayable)"),
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
        report = run_as_operator(nats_url, settings, work)
    except DeadLetterError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from exc
    if as_json:
        console.print_json(report.model_dump_json())
    else:
        print_replay_report(report)
    if report.unaudited:
        err.print(f"[red]audit:[/] {report.unaudited} replay(s) not recorded in the audit trail (see the log)")
    if not report.ok or report.unaudited:
        raise typer.Exit(1)


def print_replay_report(report: ReplayReport) -> None:
    if report.replayed:
        table = Table(title=f"replayed {len(report.replayed)}")
        for column in ("seq", "original id", "subject", "stored in", "note"):
            table.add_column(column, overflow="fold")
        for item in report.replayed:
            note = "already republished earlier" if item.duplicate else ""
            stored = f"{item.stream} #{item.stream_seq}"
            table.add_row(str(item.seq), shown(item.original_id), shown(item.subject), stored, note)
        console.print(table)
    elif not report.failed:
        console.print("no dead letters to replay")
    for failure in report.failed:
        what = f"{failure.seq} ({shown(failure.original_id) or 'no id'})"
        err.print(f"[red]not replayed[/] {what}: {shown(failure.error)}", highlight=False)


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
        records = run_as_operator(
            nats_url,
            settings,
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
