"""``listenpost export OUT``: the output streams as tables (parquet, JSON lines or CSV), with a
progress bar, and a table of the rows written at the end (docs/analytics.md)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.analytics.tables import SCHEMA_VERSION, TABLES, TableName
from services.analytics.writer import FOLLOW_FLUSH_ROWS, FOLLOW_FLUSH_S, FORMATS, Format

if TYPE_CHECKING:
    from services.settings import Settings

#: ``--follow``'s flush bounds: rows buffered (the memory it holds) and seconds between flushes.
MAX_FLUSH_ROWS: Final = 1_000_000
MIN_FLUSH_S: Final = 1.0
MAX_FLUSH_S: Final = 3600.0

console = Console()
err = Console(stderr=True)


def parse_since(text: str) -> timedelta:
    """``--since``: a duration such as 7d, 36h or 90m (services/dsl/durations.py), above zero."""
    from services.dsl.durations import parse_duration

    try:
        seconds = parse_duration(text.strip())
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from None
    if seconds <= 0:
        raise typer.BadParameter(f"{text!r} is no time at all", param_hint="--since")
    return timedelta(seconds=seconds)


def parse_flush_every(text: str) -> float:
    """``--flush-every``: a duration from 1 s to 1 h (services/dsl/durations.py), in seconds."""
    from services.dsl.durations import parse_duration

    try:
        seconds = parse_duration(text.strip())
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--flush-every") from None
    if not MIN_FLUSH_S <= seconds <= MAX_FLUSH_S:
        raise typer.BadParameter(f"{text!r} is outside 1s..1h: files at most an hour apart, and no more than one a second",
                                 param_hint="--flush-every")  # fmt: skip
    return seconds


def parse_format(text: str) -> Format:
    value = text.strip().lower()
    if value not in FORMATS:
        raise typer.BadParameter(f"{text!r} is none of {', '.join(FORMATS)}", param_hint="--format")
    return value


def export_command(
    out: Annotated[Path, typer.Argument(help="Folder to write the tables into (made if missing).")],
    since: Annotated[
        str, typer.Option("--since", help="How far back: 7d, 36h, 90m... (from midnight UTC of that day, so every date is whole).")
    ] = "7d",
    batch: Annotated[
        str | None, typer.Option("--batch", help="Only this batch's calls, decisions and dead letters (`listenpost batch`).")
    ] = None,
    format: Annotated[str, typer.Option("--format", help=f"One of {', '.join(FORMATS)}.")] = "parquet",
    follow: Annotated[
        bool,
        typer.Option("--follow", help="Keep going: append files by hour as events are stored, until Ctrl-C (a re-run resumes)."),
    ] = False,
    flush_rows: Annotated[
        int | None,
        typer.Option("--flush-rows", min=1, max=MAX_FLUSH_ROWS,
                     help=f"With --follow: write files at this many rows buffered (default {FOLLOW_FLUSH_ROWS:,}, its memory bound)."),
    ] = None,
    flush_every: Annotated[
        str | None,
        typer.Option("--flush-every", help=f"With --follow: write files at least this often, e.g. 30s, 5m (default {FOLLOW_FLUSH_S:g}s)."),
    ] = None,
    nats_url: Annotated[str | None, typer.Option("--nats-url", help="Default: settings, else the running `listenpost serve`.")] = None,
) -> None:
    """Export calls, windows, facets, decisions and dead letters from the output streams as tables partitioned by date.

    Running it again replaces the files of every date in range: no row is written twice."""
    from services.events.cli import command_nats
    from services.settings import Settings

    span, fmt = parse_since(since), parse_format(format)
    if not follow and (flush_rows is not None or flush_every is not None):
        raise typer.BadParameter("--flush-rows and --flush-every are for --follow: a one-off export writes each date's files once",
                                 param_hint="--flush-rows/--flush-every")  # fmt: skip
    flush_s = parse_flush_every(flush_every) if flush_every is not None else FOLLOW_FLUSH_S
    settings = Settings()
    settings = settings.model_copy(update={"nats": command_nats(nats_url, settings.nats)})
    if follow:
        _follow(settings, out, span, batch, fmt, flush_rows=flush_rows or FOLLOW_FLUSH_ROWS, flush_s=flush_s)
    else:
        _export(settings, out, span, batch, fmt)


def _progress() -> tuple[Progress, TaskID]:
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err, transient=True,
    )  # fmt: skip
    return progress, progress.add_task("messages read", total=0)


def _export(settings: Settings, out: Path, since: timedelta, batch: str | None, fmt: Format) -> None:
    from services.analytics.errors import ExportError
    from services.analytics.source import export
    from services.events.connection import NatsConnectError, with_jetstream

    progress, task = _progress()

    def advance(read: int, total: int) -> None:
        if total:
            progress.update(task, total=(progress.tasks[task].total or 0) + total)
        if read:
            progress.advance(task, read)

    try:
        with progress:
            report = asyncio.run(
                with_jetstream(
                    settings.nats,
                    lambda js: export(js, settings, out, since=since, batch=batch, fmt=fmt, progress=advance),
                    name="listenpost-export",
                    role="operator",
                )
            )
    except (NatsConnectError, ExportError, OSError) as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    table = Table(title=f"export to {escape(str(out))} ({fmt}, schema v{SCHEMA_VERSION}) since {report.start:%Y-%m-%d %H:%M} UTC"
                  + (f", batch {escape(batch)}" if batch else ""))  # fmt: skip
    columns: tuple[tuple[str, Literal["left", "right"]], ...] = (
        ("table", "left"), ("rows", "right"), ("dates", "right"), ("files", "right"), ("old files removed", "right"),
    )  # fmt: skip
    for column, justify in columns:
        table.add_column(column, justify=justify)
    for name in TABLES:
        done = report.tables[name]
        table.add_row(name, str(done.rows), str(len(done.dates)), str(len(done.files)), str(done.removed))
    console.print(table)
    console.print(f"{report.read} messages read, {report.markers} rules.evaluated markers", highlight=False)
    kept = sorted({day for done in report.tables.values() for day in done.kept})
    if kept:
        console.print(f"kept the existing files of {', '.join(kept)}: the stream no longer holds the start of that day", highlight=False)
    counted = ((report.unreadable, "unreadable messages"), (report.skipped, "events their model refuses"))
    skipped = [f"{n} {what}" for n, what in counted if n]
    if skipped:
        err.print(f"[yellow]skipped {' and '.join(skipped)} (the log names each)[/]", highlight=False)


def _follow(settings: Settings, out: Path, since: timedelta, batch: str | None, fmt: Format, *, flush_rows: int, flush_s: float) -> None:
    from services.analytics.errors import ExportError
    from services.analytics.source import follow_streams
    from services.analytics.writer import FlushReport, FollowReport
    from services.events.connection import NatsConnectError, connect

    totals: dict[TableName, int] = dict.fromkeys(TABLES, 0)

    def flushed(done: FlushReport) -> None:
        for name, n in done.rows.items():
            totals[name] += n
        if done.files:
            written = ", ".join(f"{name} {n}" for name, n in done.rows.items())
            err.print(f"wrote {len(done.files)} file(s): {written}", highlight=False)

    async def run() -> FollowReport:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            # Where the loop cannot take signals (Windows; a thread), Ctrl-C interrupts without the last
            # flush: the checkpoint still makes the next run exact.
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stop.set)
        try:
            # Reconnects without end once connected (a follow outlives a nats-server restart), but
            # the first connect is bounded: nats-py would otherwise retry it forever.
            async with asyncio.timeout(15.0):
                nc = await connect(settings.nats, role="operator", name="listenpost-export")
        except TimeoutError as exc:
            raise NatsConnectError(f"cannot reach NATS at {settings.nats.url} as operator within 15 s") from exc
        try:
            err.print(f"following into {escape(str(out))} ({fmt}, files every {flush_s:g} s or {flush_rows:,} rows); "
                      "Ctrl-C stops after writing what was read", highlight=False)  # fmt: skip
            return await follow_streams(nc.jetstream(), settings, out, since=since, stop=stop, batch=batch, fmt=fmt,
                                        on_flush=flushed, flush_rows=flush_rows, flush_s=flush_s)  # fmt: skip
        finally:
            await nc.close()

    try:
        report = asyncio.run(run())
    except (NatsConnectError, ExportError, OSError) as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    table = Table(title=f"follow into {escape(str(out))} ({fmt}, schema v{SCHEMA_VERSION}): stopped")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name in TABLES:
        table.add_row(name, str(report.rows[name]))
    console.print(table)
    console.print(f"{report.events} events read, {report.files} files in {report.flushes} flushes", highlight=False)


def report_command(
    out: Annotated[Path, typer.Argument(help="The HTML file to write (one self-contained page).")],
    since: Annotated[str, typer.Option("--since", help="How far back: 7d, 36h, 90m... (from midnight UTC of that day).")] = "7d",
    batch: Annotated[str | None, typer.Option("--batch", help="Only this batch (`listenpost batch`).")] = None,
    export_dir: Annotated[
        Path | None,
        typer.Option("--from", help="Render an existing export (parquet, jsonl or csv) instead of exporting from NATS first."),
    ] = None,
    title: Annotated[str | None, typer.Option(help="The report's title.")] = None,
    nats_url: Annotated[str | None, typer.Option("--nats-url", help="Default: settings, else the running `listenpost serve`.")] = None,
) -> None:
    """Render a self-contained HTML report (volume, emotions by party and queue, acoustics, decisions by rule, dead
    letters by stage, top caption phrases per facet): the output streams are exported to a temporary folder first
    (docs/report.md)."""
    import tempfile

    from services.analytics.errors import ExportError
    from services.analytics.report import DEFAULT_TITLE, render_report
    from services.events.cli import command_nats
    from services.settings import Settings

    span = parse_since(since)
    with tempfile.TemporaryDirectory(prefix="listenpost-report-") as tmp:
        source = export_dir
        if source is None:
            settings = Settings()
            source = Path(tmp)
            _export(settings.model_copy(update={"nats": command_nats(nats_url, settings.nats)}), source, span, batch, "parquet")
        label = since + (f", batch {batch}" if batch else "")
        try:
            summary = render_report(source, out, title=title or DEFAULT_TITLE, since_label=label)
        except (ExportError, OSError) as exc:
            err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
            raise typer.Exit(2) from None
    console.print(
        f"wrote {escape(str(out))} ({summary.bytes // 1024} KiB): {summary.calls} calls, {summary.decisions} decisions, "
        f"{summary.dead_letters} dead letters, {summary.sections} sections with data"
        + (f" (no data: {', '.join(summary.empty_sections)})" if summary.empty_sections else ""),
        highlight=False,
    )
