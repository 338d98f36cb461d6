"""``listenpost dlq ...``: look at dead letters and replay them once the cause is fixed."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, TypeVar

import typer
from nats.js import JetStreamContext
from rich.console import Console
from rich.table import Table

from services.events.connection import NatsConnectError, command_settings, with_jetstream
from services.events.dlq import PAGE_SIZE, DeadLetterError, DeadLetterPage, ReplayReport, page_dead_letters, replay
from services.settings import Settings

dlq_app = typer.Typer(help="Dead letters: events that failed for good, kept whole for replay.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)

T = TypeVar("T")

NatsUrl = Annotated[
    str | None, typer.Option("--nats-url", help="Default: settings, else the running `listenpost serve`.")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _run(option: str | None, settings: Settings, work: Callable[[JetStreamContext], Awaitable[T]]) -> T:
    """Run ``work`` as the operator on the NATS this command is pointed at; a sentence, not a
    traceback, when NATS cannot be reached or refuses the identity."""
    try:
        cfg = command_settings(option, settings.nats)
        return asyncio.run(with_jetstream(cfg, work, name="listenpost-dlq"))
    except NatsConnectError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from exc


_SINCE = re.compile(r"([0-9]+)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``--since``: a duration back from now (``90m``, ``24h``, ``7d``, ``1d12h``) or an ISO 8601 time."""
    parts = _SINCE.findall(text)
    if parts and "".join(n + u for n, u in parts) == text:
        return (now or datetime.now(UTC)) - timedelta(seconds=sum(int(n) * _UNIT_S[u] for n, u in parts))
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is neither a duration (90m, 24h, 7d) nor an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


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
    start = parse_since(since) if since is not None else None
    settings = Settings()
    page = _run(
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
    shown = f", showing {letters[0].seq}..{letters[-1].seq}" if total > len(letters) else ""
    table = Table(title=f"{stream}: {count}{shown}")
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
        report = _run(nats_url, settings, work)
    except DeadLetterError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from exc
    if as_json:
        console.print_json(report.model_dump_json())
    else:
        _print_report(report)
    if not report.ok:
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
