"""``listenpost batch SOURCE``: the command, its progress bar and its closing tables."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from services.batch.record import DONE, RunRecord

console = Console()
err = Console(stderr=True)


def batch_command(
    source: Annotated[str, typer.Argument(help="A folder (searched recursively), a CSV/JSONL manifest, or a manifest's http(s) URL.")],
    glob: Annotated[
        str, typer.Option("--glob", help="With a folder: file names to take, e.g. '*.wav' ('/' in it: on the relative path).")
    ] = "*",
    batch_id: Annotated[str | None, typer.Option(help="Default: derived from SOURCE, so running it again continues the batch.")] = None,
    record_path: Annotated[
        Path | None, typer.Option("--record", help="The run record (default: ~/.local/state/listenpost/batches/<id>.json).")
    ] = None,
    rate: Annotated[float, typer.Option(min=0.1, help="Submissions per second, at most.")] = 10.0,
    max_in_flight: Annotated[int, typer.Option(min=1, help="Recordings submitted and not yet back, at most.")] = 32,
    wait: Annotated[float, typer.Option(help="Stop when no result has come for this many seconds (a re-run continues).")] = 600.0,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Submit again the recordings that failed last time.")] = False,
    max_file_mb: Annotated[int, typer.Option(min=1, help="Largest file submitted, MiB.")] = 512,
    nats_url: Annotated[str | None, typer.Option(help="Default: settings, else the running `listenpost serve`.")] = None,
) -> None:
    """Submit every recording of SOURCE at a bounded pace, wait for the results, and write a run record. Resumable:
    run it again (Ctrl-C is safe) and only what has no result yet is submitted."""
    from services.batch.manifest import ManifestRefused
    from services.batch.record import BATCH_ID, RecordMismatch, batch_id_for, default_record_path, load
    from services.batch.runner import BatchOptions, BatchStopped, run_batch
    from services.batch.sources import load_listing
    from services.events.bounds import StreamFullError
    from services.events.cli import command_nats
    from services.settings import Settings

    settings = Settings()
    try:
        listing, label = load_listing(source, pattern=glob)
    except ManifestRefused as exc:
        err.print(f"[red]refused, nothing submitted:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    bid = batch_id or batch_id_for(label)
    if not BATCH_ID.match(bid):
        err.print(f"[red]error:[/] batch id {bid!r}: letters, digits, '-' and '_', at most 64", highlight=False)
        raise typer.Exit(2)
    path = record_path or default_record_path(bid)
    nats = command_nats(nats_url, settings.nats)
    try:
        record = load(path, batch_id=bid, source=label)
    except RecordMismatch as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    record.merge(listing.items, listing.problems)
    for problem in listing.problems:
        err.print(f"[yellow]{escape(problem.where)}:[/] {escape(problem.reason)}", highlight=False, soft_wrap=True)
    done_before = {k for k, item in record.items.items() if item.status in DONE and not (retry_failed and item.status == "failed")}
    todo = len(listing.items) - len({i.key for i in listing.items} & done_before)
    options = BatchOptions(rate=rate, max_in_flight=max_in_flight, wait_s=wait, retry_failed=retry_failed,
                           max_file_bytes=max_file_mb * 2**20, bucket=settings.preprocess.object_buckets[0])  # fmt: skip
    console.print(f"batch [bold]{bid}[/]: {len(listing.items)} recordings in {escape(label)}; {len(done_before)} done before, "
                  f"{todo} to go (run {record.runs + 1}); record {escape(str(path))}", highlight=False)  # fmt: skip
    started = time.monotonic()
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(), TextColumn("[green]captioned {task.fields[captioned]}[/] [red]failed {task.fields[failed]}[/] "
                                          "[dim]skipped {task.fields[skipped]} out {task.fields[out]}[/]"),
        console=err, transient=False,
    )  # fmt: skip
    task = progress.add_task("batch", total=todo, rate="", captioned=0, failed=0, skipped=len(done_before), out=0)

    def on_change(current: RunRecord) -> None:
        counts = current.counts()
        finished = sum(1 for k, item in current.items.items() if item.status in DONE and k not in done_before)
        elapsed = max(time.monotonic() - started, 1e-6)
        progress.update(task, completed=finished, rate=f"{finished / elapsed:.1f}/s", out=counts["submitted"],
                        captioned=counts["captioned"], failed=counts["failed"] + counts["invalid"])  # fmt: skip

    outcome, code = "finished", 0
    try:
        with progress:
            asyncio.run(run_batch(listing.items, record, nats=nats, record_path=path, options=options, on_change=on_change))
    except KeyboardInterrupt:
        outcome, code = "stopped (Ctrl-C): run the same command again to continue", 130
    except BatchStopped as exc:
        outcome, code = f"stopped: {exc}; run the same command again to continue", 75
    except StreamFullError as exc:
        outcome, code = f"stopped: {exc}", 75
    record = load(path, batch_id=bid, source=label)  # as saved, whatever stopped the run
    _print_summary(record, outcome, time.monotonic() - started)
    if code == 0 and (record.counts()["failed"] or record.counts()["invalid"] or record.problems):
        code = 1
    raise typer.Exit(code)


def _print_summary(record: RunRecord, outcome: str, elapsed_s: float) -> None:
    counts = record.counts()
    table = Table(title=f"batch {record.batch_id}: {outcome} ({elapsed_s:.0f} s)")
    for column in ("recordings", "captioned", "failed", "unreadable", "still out", "not yet submitted", "manifest problems"):
        table.add_column(column, justify="right")
    table.add_row(str(len(record.items)), str(counts["captioned"]), str(counts["failed"]), str(counts["invalid"]),
                  str(counts["submitted"]), str(counts["pending"]), str(len(record.problems)))  # fmt: skip
    console.print(table)
    failures = record.failures()
    if failures:
        why = Table(title="failed, by stage and reason")
        for column in ("stage", "reason", "recordings"):
            why.add_column(column)
        for (stage, reason), n in failures.most_common(10):
            why.add_row(stage, escape(reason[:160]), str(n))
        console.print(why)
