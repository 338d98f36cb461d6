"""What a batch submits: one :class:`BatchItem` per recording, from a folder or a manifest.

Pure functions on text and paths: nothing here talks to NATS. A manifest row that cannot be
used is a :class:`RowProblem` with its line number, and the rest of the manifest goes on; a
manifest that is not CSV or JSONL at all raises :class:`ManifestRefused` before anything is
submitted.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urljoin, urlsplit

from pydantic import BaseModel, Field

#: Columns (CSV) and keys (JSONL) a manifest row may have. Any other is reported, once, and
#: ignored; ``context.<key>`` columns add free context keys.
KNOWN_COLUMNS = frozenset(
    {"path", "url", "callid", "call_id", "queue", "agent", "customer_tier", "channels", "language", "format", "context"}
)

#: The context keys the known columns fill (``call_id`` is an alias: rules read ``context.callid``).
_CONTEXT_COLUMNS = {"callid": "callid", "call_id": "callid", "queue": "queue", "agent": "agent", "customer_tier": "customer_tier"}

_ROLE = re.compile(r"^[a-z][a-z0-9_-]*$")
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
MAX_ROWS = 1_000_000


class ManifestRefused(ValueError):
    """The manifest as a whole cannot be read: nothing is submitted."""


class BatchItem(BaseModel):
    """One recording to submit. ``key`` names it in the run record and in the event id: the
    path relative to the source folder, the path as written in the manifest, or the URL."""

    key: str
    path: Path | None = None
    url: str | None = None
    where: str = Field(description="Where it came from, for messages: 'manifest.csv:12' or the path.")
    context: dict[str, Any] = Field(default_factory=dict)
    channels: list[str] = Field(default_factory=list)
    language: str | None = None
    format: str | None = None


class RowProblem(BaseModel):
    """A row (or file) left out, and why."""

    where: str
    reason: str


class Listing(BaseModel):
    items: list[BatchItem]
    problems: list[RowProblem] = Field(default_factory=list)


def from_folder(folder: Path, pattern: str = "*") -> Listing:
    """Every file under ``folder`` (recursively) whose name matches ``pattern`` (a glob on the
    file name, or on the relative path when it holds a ``/``), in a stable order."""
    if not folder.is_dir():
        raise ManifestRefused(f"{folder}: not a folder")
    on_path = "/" in pattern
    items = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        relative = path.relative_to(folder).as_posix()
        if not fnmatch.fnmatch(relative if on_path else path.name, pattern):
            continue
        items.append(BatchItem(key=relative, path=path, where=relative))
    return Listing(items=items)


def from_manifest_text(text: str, *, name: str, base: Path | str) -> Listing:
    """Rows of a CSV or JSONL manifest (by ``name``'s suffix). Relative paths resolve against
    ``base``: the manifest's folder, or its URL when it was fetched over http(s)."""
    suffix = PurePosixPath(urlsplit(name).path).suffix.lower()
    rows: Iterable[tuple[int, dict[str, Any] | RowProblem]]
    header: set[str] | None = None
    if suffix == ".csv":
        header, rows = _csv_rows(text, name)
    elif suffix in (".jsonl", ".ndjson"):
        rows = _jsonl_rows(text, name)
    else:
        raise ManifestRefused(
            f"{name}: a manifest is CSV (.csv) or JSON Lines (.jsonl, .ndjson), not {suffix or 'a file without a suffix'}"
        )
    items: list[BatchItem] = []
    problems: list[RowProblem] = []
    unknown_reported: set[str] = set()
    for line, row in rows:
        where = f"{name}:{line}"
        if isinstance(row, RowProblem):
            problems.append(row)
            continue
        # CSV: the header's columns (line 1), whether or not a row fills them; JSONL: each new key.
        columns = header if header is not None else set(row)
        for column in sorted(columns - KNOWN_COLUMNS - unknown_reported):
            if not column.startswith("context."):
                unknown_reported.add(column)
                known = ", ".join(sorted(KNOWN_COLUMNS))
                problems.append(RowProblem(where=f"{name}:1" if header is not None else where,
                                           reason=f"unknown column {column!r} ignored (known: {known}, context.<key>)"))  # fmt: skip
        try:
            items.append(_item(row, where=where, base=base))
        except ValueError as exc:
            problems.append(RowProblem(where=where, reason=str(exc)))
    if len(items) + len(problems) > MAX_ROWS:
        raise ManifestRefused(f"{name}: more than {MAX_ROWS} rows; split it into several batches")
    return Listing(items=items, problems=problems)


def _csv_rows(text: str, name: str) -> tuple[set[str], Iterator[tuple[int, dict[str, Any] | RowProblem]]]:
    if "\x00" in text[:4096]:
        raise ManifestRefused(f"{name}: binary data, not a CSV manifest")
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        header = reader.fieldnames
    except csv.Error as exc:
        raise ManifestRefused(f"{name}: not CSV ({exc})") from exc
    if not header or not ({"path", "url"} & {h.strip() for h in header}):
        raise ManifestRefused(f"{name}: a CSV manifest's first line names its columns, one of them 'path' or 'url' (got {header!r})")
    return {h.strip() for h in header}, _csv_iter(reader, name)


def _csv_iter(reader: csv.DictReader[str], name: str) -> Iterator[tuple[int, dict[str, Any] | RowProblem]]:
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield reader.line_num, RowProblem(where=f"{name}:{reader.line_num}", reason=f"not CSV: {exc}")
            continue
        if None in row:  # more cells than the header names
            yield (
                reader.line_num,
                RowProblem(
                    where=f"{name}:{reader.line_num}",
                    reason=f"{len(row[None]) if isinstance(row[None], list) else 1} more cells than the header has columns",
                ),
            )
            continue
        yield reader.line_num, {k.strip(): v.strip() for k, v in row.items() if isinstance(v, str) and v.strip() != ""}


def _jsonl_rows(text: str, name: str) -> list[tuple[int, dict[str, Any] | RowProblem]]:
    rows: list[tuple[int, dict[str, Any] | RowProblem]] = []
    seen_object = False
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            if not seen_object:  # the first row decides: is this JSON Lines at all?
                raise ManifestRefused(f"{name}:{line}: not JSON Lines ({exc.msg})") from exc
            rows.append((line, RowProblem(where=f"{name}:{line}", reason=f"not JSON: {exc.msg} at column {exc.colno}")))
            continue
        if not isinstance(row, dict):
            if not seen_object:
                raise ManifestRefused(f"{name}:{line}: not JSON Lines of objects (a {type(row).__name__})")
            rows.append((line, RowProblem(where=f"{name}:{line}", reason=f"a row is a JSON object, not a {type(row).__name__}")))
            continue
        seen_object = True
        rows.append((line, row))
    return rows


def _item(row: dict[str, Any], *, where: str, base: Path | str) -> BatchItem:
    path, url = row.get("path"), row.get("url")
    if (path is None) == (url is None):
        raise ValueError("a row names its recording by exactly one of 'path' or 'url'" if path else "no 'path' or 'url'")
    context: dict[str, Any] = {}
    for column, key in _CONTEXT_COLUMNS.items():
        if column in row:
            context[key] = row[column]
    free = row.get("context")
    if free is not None:
        if not isinstance(free, dict):
            raise ValueError("'context' is an object of context keys")
        context.update(free)
    context.update({k.removeprefix("context."): v for k, v in row.items() if k.startswith("context.") and k != "context."})
    channels = row.get("channels") or []
    if isinstance(channels, str):
        channels = [c.strip() for c in channels.split(",")]
    if not isinstance(channels, list) or not all(isinstance(c, str) and (c == "" or _ROLE.match(c)) for c in channels):
        raise ValueError(f"'channels' lists a role per channel, e.g. agent,customer (got {row.get('channels')!r})")
    language, fmt = row.get("language"), row.get("format")
    common: dict[str, Any] = {"where": where, "context": context, "channels": channels, "language": language, "format": fmt}
    if url is not None:
        return BatchItem(key=_url(str(url), base), url=_url(str(url), base), **common)
    text = str(path)
    if isinstance(base, str):  # a manifest fetched over http(s): its paths are relative URLs
        return BatchItem(key=urljoin(base, text), url=urljoin(base, text), **common)
    resolved = Path(text) if Path(text).is_absolute() else base / text
    return BatchItem(key=text, path=resolved, **common)


def _url(url: str, base: Path | str) -> str:
    full = urljoin(base, url) if isinstance(base, str) else url
    if urlsplit(full).scheme not in ("http", "https"):
        raise ValueError(f"'url' is an http(s) URL (got {url!r})")
    return full


def describe(items: Iterable[BatchItem]) -> str:
    items = list(items)
    urls = sum(1 for i in items if i.url)
    return f"{len(items)} recordings" + (f" ({urls} by URL)" if urls else "")
