"""Rows to files: parquet, JSON lines or CSV, hive-partitioned by date (no NATS).

Two ways to write:

- :class:`ExportWriter`, for ``listenpost export``: ``OUT/<table>/date=YYYY-MM-DD/part-<tag>.<ext>``,
  one file per table and date (``part-<tag>.<n>`` more when a date's file had to be closed
  early to bound open files). A re-export replaces the files of every date in its range, so it
  never duplicates a row and drops rows erased since. ``<tag>`` is ``all``, or ``batch-<id>``
  for an export of one batch. Files are written under hidden temporary names and renamed into
  place at :meth:`ExportWriter.commit`: an export that fails leaves the previous files whole.
- :func:`follow` with a :class:`HourlySink`, for ``--follow``: append-only files by hour,
  ``OUT/<table>/date=YYYY-MM-DD/hour=HH/part-<first seq>-<last seq>.<ext>``, flushed every N
  rows or T seconds, with a checkpoint (``OUT/_follow.json``) of the last stream sequence
  written, from which a restart resumes.

Memory is bounded by the buffers (rows per table and date until a flush), never by the range.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Literal, get_args

import pyarrow as pa
import pyarrow.parquet as pq

from services.analytics.errors import ExportError, RowError
from services.analytics.tables import (
    FILE_SCHEMAS,
    PARTITION,
    SCHEMA_VERSION,
    TABLES,
    Marker,
    Row,
    StoredEvent,
    TableName,
    Tabulator,
    dates_between,
)
from services.files import write_atomically

Format = Literal["parquet", "jsonl", "csv"]
FORMATS: Final[tuple[Format, ...]] = get_args(Format)
#: The follow sink's checkpoint, at the root of its output folder.
FOLLOW_STATE: Final = "_follow.json"
#: The follow sink writes its buffered rows at this many rows, or after this many seconds.
FOLLOW_FLUSH_ROWS: Final = 5_000
FOLLOW_FLUSH_S: Final = 60.0
#: What a batch id may be in a file name; anything else is replaced (batch ids are letters, digits,
#: '-' and '_' anyway). No dot: ``.<n>`` numbers a date's further parts.
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def file_tag(batch: str | None) -> str:
    """The ``<tag>`` of an export's file names: ``all``, or ``batch-<id>`` for one batch's."""
    return "all" if batch is None else "batch-" + _UNSAFE.sub("_", batch)


# ---------------------------------------------------------------------------- encoding


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _plain(value: Any) -> Any:
    """A row value as JSON lines hold it: times as RFC 3339 text, lists as lists."""
    return _rfc3339(value) if isinstance(value, datetime) else value


def _cell(value: Any) -> str:
    """A row value as a CSV cell: empty for null, lists as JSON, booleans as true/false."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return _rfc3339(value)
    if isinstance(value, list):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def arrow_table(table: TableName, rows: list[Row]) -> pa.Table:
    """``rows`` as an Arrow table of ``table``'s file schema (metadata included; the partition
    column left out: the path holds it); a row that does not fit its schema is a bug in
    :mod:`services.analytics.tables`, raised as such."""
    return pa.Table.from_pylist(rows, schema=FILE_SCHEMAS[table])


class _Part:
    """One file being written: a hidden temporary name beside its final one (``*.parquet`` globs
    do not match it), renamed into place by its owner."""

    def __init__(self, final: Path, table: TableName, fmt: Format) -> None:
        self.final, self.table, self.fmt = final, table, fmt
        self.temp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        self.rows = 0
        self._parquet: pq.ParquetWriter | None = None
        self._text: IO[str] | None = None
        self._csv: Any = None

    def write(self, rows: list[Row]) -> None:
        if not rows:
            return
        self.final.parent.mkdir(parents=True, exist_ok=True)
        if self.fmt == "parquet":
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.temp, FILE_SCHEMAS[self.table], compression="zstd")
            self._parquet.write_table(arrow_table(self.table, rows))
        else:
            if self._text is None:
                self._text = open(self.temp, "w", encoding="utf-8", newline="")  # closed in close()
                if self.fmt == "csv":
                    self._csv = csv.writer(self._text, lineterminator="\n")
                    self._csv.writerow(FILE_SCHEMAS[self.table].names)
            if self.fmt == "csv":
                self._csv.writerows([_cell(row[name]) for name in FILE_SCHEMAS[self.table].names] for row in rows)
            else:
                buffer = io.StringIO()
                for row in rows:
                    buffer.write(json.dumps({k: _plain(v) for k, v in row.items() if k != PARTITION}, ensure_ascii=False) + "\n")
                self._text.write(buffer.getvalue())
        self.rows += len(rows)

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None
        if self._text is not None:
            self._text.close()
            self._text = None

    def discard(self) -> None:
        self.close()
        self.temp.unlink(missing_ok=True)
        for folder in (self.final.parent, self.final.parent.parent):  # made for it, and empty: gone too
            with contextlib.suppress(OSError):
                folder.rmdir()

    def publish(self) -> None:
        """Rename into place: atomic, so a reader sees the old file or the new one, never half of one."""
        self.close()
        os.replace(self.temp, self.final)


def write_schema_file(out: Path, table: TableName) -> Path:
    """``OUT/<table>/_schema.json``: the schema version and the type of every column of the files,
    for readers of JSON lines and CSV (which carry no schema); the same text on every export."""
    path = out / table / "_schema.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(
        {"table": table, "schema_version": SCHEMA_VERSION, "partitioning": {"style": "hive", "columns": [PARTITION]},
         "columns": [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in FILE_SCHEMAS[table]]},
        indent=2,
    )  # fmt: skip
    if not path.exists() or path.read_text(encoding="utf-8") != text + "\n":
        path.write_text(text + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- the export


@dataclass(frozen=True)
class DateSpan:
    """The dates an export owns for one table: every date partition from ``first`` to ``last``
    is replaced by what this export found (nothing: its old files go). ``first_partial``: the
    stream no longer holds the start of ``first`` (retention), so its existing files, written
    when it still did, are kept rather than replaced by less."""

    first: date
    last: date
    first_partial: bool = False


@dataclass
class TableReport:
    """What an export wrote for one table."""

    rows: int = 0
    files: list[Path] = field(default_factory=list)
    dates: set[str] = field(default_factory=set)
    removed: int = 0  # old files of dates in the range that this export replaced or emptied
    kept: list[str] = field(default_factory=list)  # partial dates whose existing files were kept


class ExportWriter:
    """Writes one export: rows buffered per table and date, flushed at ``flush_rows`` into the
    date's file (a parquet row group, or appended lines); at most ``max_open`` files open at once.
    Nothing is visible in ``out`` before :meth:`commit`."""

    def __init__(self, out: Path, fmt: Format, *, tag: str = "all", flush_rows: int = 10_000, max_open: int = 64) -> None:
        if fmt not in FORMATS:
            raise ExportError(f"format {fmt!r} is none of {', '.join(FORMATS)}")
        if flush_rows < 1 or max_open < 1:
            raise ExportError("flush_rows and max_open must be at least 1")
        self.out, self.fmt, self.tag = out, fmt, tag
        self.flush_rows, self.max_open = flush_rows, max_open
        self._buffers: dict[tuple[TableName, str], list[Row]] = {}
        self._buffered = 0
        self._open: OrderedDict[tuple[TableName, str], _Part] = OrderedDict()
        self._parts: dict[tuple[TableName, str], list[_Part]] = {}
        self._done = False

    def __enter__(self) -> ExportWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if not self._done:
            self.abort()

    def add(self, table: TableName, row: Row) -> None:
        key = (table, row["date"])
        buffer = self._buffers.setdefault(key, [])
        buffer.append(row)
        self._buffered += 1
        if len(buffer) >= self.flush_rows:
            self._flush(key)
        elif self._buffered >= 4 * self.flush_rows:
            # Many dates each under the threshold: bound the total too.
            for other in list(self._buffers):
                self._flush(other)

    def _name(self, n: int) -> str:
        ext = self.fmt
        # ".<n>", not "-<n>": batch "b" must not take batch "b-1"'s files for its own second part.
        return f"part-{self.tag}.{ext}" if n == 0 else f"part-{self.tag}.{n}.{ext}"

    def _flush(self, key: tuple[TableName, str]) -> None:
        rows = self._buffers.pop(key, [])
        if not rows:
            return
        self._buffered -= len(rows)
        part = self._open.get(key)
        if part is None:
            while len(self._open) >= self.max_open:
                _, oldest = self._open.popitem(last=False)
                oldest.close()  # later rows of its date go to a next part
            parts = self._parts.setdefault(key, [])
            table, day = key
            part = _Part(self.out / table / f"date={day}" / self._name(len(parts)), table, self.fmt)
            parts.append(part)
            self._open[key] = part
        self._open.move_to_end(key)
        part.write(rows)

    def _family(self) -> re.Pattern[str]:
        """The names of files this export replaces: a full export's replace every export's (it
        holds every row of the date, a batch's included); a batch export's only its own."""
        ext = re.escape(self.fmt)
        if self.tag == "all":
            return re.compile(rf"part-.+\.{ext}")
        return re.compile(rf"part-{re.escape(self.tag)}(\.[0-9]+)?\.{ext}")

    def commit(self, spans: Mapping[TableName, DateSpan | None]) -> dict[TableName, TableReport]:
        """Put the files in place and remove the old ones of every date in ``spans`` (a table without
        a span: only the dates it has rows for)."""
        for key in list(self._buffers):
            self._flush(key)
        for part in self._open.values():
            part.close()
        self._open.clear()
        family = self._family()
        report: dict[TableName, TableReport] = {table: TableReport() for table in TABLES}
        for table in TABLES:
            span = spans.get(table)
            written = {day for (t, day) in self._parts if t == table}
            owned = set(dates_between(span.first, span.last)) if span is not None else set()
            for day in sorted(owned | written):
                folder = self.out / table / f"date={day}"
                old = [p for p in folder.iterdir() if p.is_file() and family.fullmatch(p.name)] if folder.is_dir() else []
                new = self._parts.get((table, day), [])
                if span is not None and span.first_partial and day == span.first.isoformat() and old:
                    for part in new:
                        part.discard()
                    report[table].kept.append(day)
                    continue
                for part in new:
                    part.publish()
                    report[table].files.append(part.final)
                    report[table].rows += part.rows
                    report[table].dates.add(day)
                finals = {part.final.name for part in new}
                for path in old:
                    if path.name not in finals:
                        path.unlink(missing_ok=True)
                        report[table].removed += 1
            if report[table].rows or (self.out / table).is_dir():
                write_schema_file(self.out, table)
        self._done = True
        return report

    def abort(self) -> None:
        """Drop every temporary file: the output folder stays as it was."""
        for parts in self._parts.values():
            for part in parts:
                with contextlib.suppress(OSError):
                    part.discard()
        self._open.clear()
        self._buffers.clear()
        self._done = True


# ---------------------------------------------------------------------------- follow


class FollowStateError(ExportError):
    """The follow checkpoint exists but cannot be read: a restart would not know where to resume."""


_SEQ_RANGE = re.compile(r"part-([0-9]+)-([0-9]+)\.[a-z]+")


@dataclass
class FlushReport:
    """One flush of the follow sink."""

    rows: dict[TableName, int] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    sequences: dict[str, int] = field(default_factory=dict)


class HourlySink:
    """The append-only sink of ``--follow``: rows buffered per table, date and hour; flushed every
    ``flush_rows`` rows or ``flush_s`` seconds into new files named by the stream sequences they
    hold, then the checkpoint (``_follow.json``: the last sequence read of each stream) is
    written. A restart resumes after the checkpoint and first removes files a flush wrote after it
    (a crash between the files and the checkpoint), so no row is written twice.

    ``streams``: which stream each table's rows come from (the dead letters' is the DLQ).
    """

    def __init__(
        self,
        out: Path,
        fmt: Format,
        *,
        streams: Mapping[TableName, str],
        flush_rows: int = FOLLOW_FLUSH_ROWS,
        flush_s: float = FOLLOW_FLUSH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if fmt not in FORMATS:
            raise ExportError(f"format {fmt!r} is none of {', '.join(FORMATS)}")
        self.out, self.fmt, self.streams = out, fmt, dict(streams)
        self.flush_rows, self.flush_s, self._clock = flush_rows, flush_s, clock
        self._buffers: dict[tuple[TableName, str, str], list[tuple[int, Row]]] = {}
        self._calls: dict[str, Row] = {}  # buffered calls rows by event id: a marker fills them in
        self._rows = 0
        self._read: dict[str, int] = {}  # last sequence read, per stream
        self._flushed_at = clock()
        self.checkpoint = self._load_state()
        self._read.update(self.checkpoint)

    @property
    def state_path(self) -> Path:
        return self.out / FOLLOW_STATE

    def _load_state(self) -> dict[str, int]:
        if not self.state_path.exists():
            return {}
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
            return {str(k): int(v) for k, v in state["sequences"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise FollowStateError(f"{self.state_path} is not a follow checkpoint ({exc}): move it away to start over") from exc

    def remove_unrecorded(self) -> list[Path]:
        """Delete files written after the checkpoint (their rows will be read again)."""
        removed: list[Path] = []
        for table in TABLES:
            last = self.checkpoint.get(self.streams[table], 0)
            for path in (self.out / table).glob("date=*/hour=*/part-*"):
                match = _SEQ_RANGE.fullmatch(path.name)
                if match and int(match.group(1)) > last:
                    path.unlink(missing_ok=True)
                    removed.append(path)
        return removed

    def add(self, table: TableName, row: Row, *, sequence: int) -> None:
        key = (table, row["date"], f"{row['time'].hour:02d}")
        self._buffers.setdefault(key, []).append((sequence, row))
        self._rows += 1
        if table == "calls":
            self._calls[row["event_id"]] = row

    def patch_call(self, captioned_id: str, marker: Marker) -> bool:
        """Fill in a buffered call's ruleset version and decision count from its marker (the
        marker comes after its call; a call already flushed keeps nulls)."""
        row = self._calls.get(captioned_id)
        if row is None:
            return False
        row["ruleset_version"], row["decisions"] = marker.ruleset_version, marker.decisions
        return True

    def note(self, stream: str, sequence: int) -> None:
        """``sequence`` of ``stream`` was read (rows or not): the checkpoint may move past it."""
        self._read[stream] = max(self._read.get(stream, 0), sequence)

    def due(self) -> bool:
        if self._rows >= self.flush_rows:
            return True
        moved = self._read != self.checkpoint
        return (self._rows > 0 or moved) and self._clock() - self._flushed_at >= self.flush_s

    def flush(self) -> FlushReport:
        report = FlushReport()
        for (table, day, hour), items in sorted(self._buffers.items()):
            first, last = min(s for s, _ in items), max(s for s, _ in items)
            part = _Part(self.out / table / f"date={day}" / f"hour={hour}" / f"part-{first:012d}-{last:012d}.{self.fmt}", table, self.fmt)
            part.write([row for _, row in items])
            part.publish()
            report.files.append(part.final)
            report.rows[table] = report.rows.get(table, 0) + len(items)
            write_schema_file(self.out, table)
        self._buffers.clear()
        self._calls.clear()
        self._rows = 0
        self._flushed_at = self._clock()
        if self._read != self.checkpoint:
            state = {"schema_version": SCHEMA_VERSION, "format": self.fmt, "sequences": self._read}
            write_atomically(self.state_path, (json.dumps(state) + "\n").encode())
            self.checkpoint = dict(self._read)
        report.sequences = dict(self.checkpoint)
        return report


@dataclass
class FollowReport:
    """What a follow run wrote, all flushes together."""

    rows: dict[TableName, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    files: int = 0
    events: int = 0
    skipped: int = 0
    flushes: int = 0


async def follow(
    events: AsyncIterable[StoredEvent | None],
    sink: HourlySink,
    tabulator: Tabulator,
    *,
    on_flush: Callable[[FlushReport], None] | None = None,
) -> FollowReport:
    """Write ``events`` into ``sink`` until they end (the reader stops them), flushing as the sink
    says it is due and once at the end. ``None`` items are idle ticks: a time-based flush runs
    on them when no event comes."""
    report = FollowReport()

    def flush() -> None:
        done = sink.flush()
        report.flushes += 1
        report.files += len(done.files)
        for table, n in done.rows.items():
            report.rows[table] += n
        if on_flush is not None:
            on_flush(done)

    try:
        async for event in events:
            if event is not None:
                report.events += 1
                try:
                    found = tabulator.rows(event)
                except RowError:
                    report.skipped += 1
                else:
                    for table, row in found.rows:
                        sink.add(table, row, sequence=event.sequence)
                    if found.marker is not None:
                        sink.patch_call(*found.marker)
                sink.note(event.stream, event.sequence)
            if sink.due():
                flush()
    finally:
        flush()
    return report
