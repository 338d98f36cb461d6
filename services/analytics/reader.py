"""An export's files read back as Arrow tables with their declared schemas: the inverse of
:mod:`services.analytics.writer`, for JSON lines and CSV, which carry no schema of their own.

Parquet needs none of this (its files hold their schema; DuckDB reads them directly), so
:func:`export_files` and :func:`read_table` serve ``listenpost report --from`` on a JSON lines or
CSV export. Every column comes back with its type from :data:`FILE_SCHEMAS`, and the ``date``
partition from the path, so the report's queries do not care which format was exported.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json

from services.analytics.errors import ExportError
from services.analytics.tables import FILE_SCHEMAS, PARTITION, SCHEMAS, TABLES, TableName
from services.analytics.writer import FORMATS, Format

#: The most JSON lines or CSV a report reads: they are loaded whole into memory, where DuckDB
#: scans Parquet without loading it.
MAX_TEXT_EXPORT_BYTES: Final = 1024**3

TextFormat = Literal["jsonl", "csv"]


@dataclass(frozen=True)
class ExportFiles:
    """What an export folder holds: its one format, and each table's files in name order."""

    format: Format
    tables: dict[TableName, list[Path]]


def export_files(export_dir: Path) -> ExportFiles | None:
    """The table files in ``export_dir`` (the writer's hidden temporary files and ``_schema.json``
    left out); None when there is none.

    Raises :class:`ExportError` for a folder that holds two formats (a report of half of them would
    silently leave the rest out), and for JSON lines or CSV beyond :data:`MAX_TEXT_EXPORT_BYTES`.
    """
    found: dict[Format, dict[TableName, list[Path]]] = {}
    for table in TABLES:
        for path in sorted((export_dir / table).rglob("*")):
            fmt = path.suffix.removeprefix(".")
            if fmt in FORMATS and path.is_file() and not path.name.startswith("."):
                found.setdefault(fmt, {}).setdefault(table, []).append(path)
    if len(found) > 1:
        held = " and ".join(fmt for fmt in FORMATS if fmt in found)
        raise ExportError(f"{export_dir} holds {held} files: export each format into a folder of its own")
    if not found:
        return None
    fmt, tables = next(iter(found.items()))
    if fmt != "parquet":
        size = sum(path.stat().st_size for files in tables.values() for path in files)
        if size > MAX_TEXT_EXPORT_BYTES:
            raise ExportError(f"{export_dir} holds {size / 1024**3:.1f} GiB of {fmt}, more than the "
                              f"{MAX_TEXT_EXPORT_BYTES / 1024**3:.0f} GiB a report reads into memory: export it as parquet")  # fmt: skip
    return ExportFiles(fmt, tables)


def _partition(path: Path) -> str:
    for part in reversed(path.parent.parts):
        if part.startswith(f"{PARTITION}="):
            return part.removeprefix(f"{PARTITION}=")
    raise ExportError(f"{path} is not in a {PARTITION}=YYYY-MM-DD folder, as listenpost export writes them")


def _is_list(kind: pa.DataType) -> bool:
    return pa.types.is_list(kind) or pa.types.is_large_list(kind)


def _read_jsonl(path: Path, table: TableName) -> pa.Table:
    options = pa_json.ParseOptions(explicit_schema=FILE_SCHEMAS[table], unexpected_field_behavior="ignore")
    return pa_json.read_json(path, parse_options=options)


def _read_csv(path: Path, table: TableName) -> pa.Table:
    schema = FILE_SCHEMAS[table]
    # Lists are JSON text in a cell (writer._cell): read as text, decoded below.
    types = {f.name: (pa.string() if _is_list(f.type) else f.type) for f in schema}
    convert = pa_csv.ConvertOptions(
        column_types=types,
        include_columns=schema.names,
        include_missing_columns=True,  # a column added later reads as null in an older file
        strings_can_be_null=True,
        null_values=[""],
        true_values=["true"],
        false_values=["false"],
    )
    read = pa_csv.read_csv(path, convert_options=convert)
    columns = []
    for f in schema:
        column = read.column(f.name)
        if _is_list(f.type):
            column = pa.chunked_array([pa.array([_list_cell(cell, f.name) for cell in column.to_pylist()], type=f.type)])
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


def _list_cell(cell: str | None, column: str) -> list[str] | None:
    """A list column's cell: a JSON array of strings, or empty for null."""
    if cell is None:
        return None
    value = json.loads(cell)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"column {column}: {cell[:40]!r} is not a JSON array of strings")
    return value


def read_table(files: Sequence[Path], table: TableName, fmt: TextFormat) -> pa.Table:
    """One table's JSON lines or CSV files as an Arrow table of ``SCHEMAS[table]`` (``date`` from
    each file's folder). A file that does not parse as its table's schema raises
    :class:`ExportError` naming it and the cause."""
    read = _read_jsonl if fmt == "jsonl" else _read_csv
    parts = []
    for path in files:
        try:
            part = read(path, table)
        except (pa.ArrowException, ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise ExportError(f"{path}: not a {table} table in {fmt}: {exc}") from None
        day = pa.array([_partition(path)] * part.num_rows, type=pa.string())
        parts.append(part.append_column(PARTITION, day).select(SCHEMAS[table].names))
    if not parts:
        return SCHEMAS[table].empty_table()
    return pa.concat_tables(parts).cast(SCHEMAS[table])
