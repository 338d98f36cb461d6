"""An export's files read back as Arrow tables with their declared schemas: the inverse of
:mod:`services.analytics.writer`, for JSON lines and CSV, which carry no schema of their own.

Parquet needs none of this (its files hold their schema; DuckDB reads them directly), so
:func:`export_format` and :func:`read_table` serve ``listenpost report --from`` on a JSON lines or
CSV export. Every column comes back with its type from :data:`FILE_SCHEMAS`, and the ``date``
partition from the path, so the report's queries do not care which format was exported.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json

from services.analytics.errors import ExportError
from services.analytics.tables import FILE_SCHEMAS, PARTITION, SCHEMAS, TABLES, TableName
from services.analytics.writer import FORMATS, Format

#: The suffix of each format's files (``<tag>-<date>[.<n>].<suffix>``).
SUFFIXES: Final[dict[Format, str]] = {fmt: f".{fmt}" for fmt in FORMATS}


def table_files(export_dir: Path, table: TableName, fmt: Format) -> list[Path]:
    """The table's files of one format, in name order (the writer's hidden temporary files excluded)."""
    folder = export_dir / table
    return sorted(p for p in folder.glob(f"**/*{SUFFIXES[fmt]}") if p.is_file() and not p.name.startswith("."))


def export_format(export_dir: Path) -> Format | None:
    """Which format the export in ``export_dir`` was written in; None when it holds no table file.

    Raises :class:`ExportError` for a folder that holds two formats: a report of half of them
    would silently leave the rest out.
    """
    found = [fmt for fmt in FORMATS if any(table_files(export_dir, table, fmt) for table in TABLES)]
    if len(found) > 1:
        raise ExportError(f"{export_dir} holds {' and '.join(found)} files: export each format into a folder of its own")
    return found[0] if found else None


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
            decoded = [None if cell is None else json.loads(cell) for cell in column.to_pylist()]
            column = pa.chunked_array([pa.array(decoded, type=f.type)])
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


def read_table(files: Sequence[Path], table: TableName, fmt: Format) -> pa.Table:
    """One table's JSON lines or CSV files as an Arrow table of ``SCHEMAS[table]`` (``date`` from
    each file's folder). A file that does not parse as its table's schema raises
    :class:`ExportError` naming it and the cause."""
    if fmt == "parquet":
        raise ExportError("parquet files are read by DuckDB directly, not by read_table")
    read = _read_jsonl if fmt == "jsonl" else _read_csv
    parts = []
    for path in files:
        try:
            part = read(path, table)
        except (pa.ArrowInvalid, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ExportError(f"{path}: not a {table} table in {fmt}: {exc}") from None
        day = pa.array([_partition(path)] * part.num_rows, type=pa.string())
        parts.append(part.append_column(PARTITION, day).select(SCHEMAS[table].names))
    if not parts:
        return SCHEMAS[table].empty_table()
    return pa.concat_tables(parts).cast(SCHEMAS[table])
