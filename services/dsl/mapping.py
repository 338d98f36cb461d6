"""Declarative mappings: YAML files whose fields are CEL expressions.

Source adapters (other systems' events -> ``audio.submitted``, :mod:`services.ingest.adapters`)
and CRM mappings (a call's summary -> a CRM's request, :mod:`services.notify.crm`) are both
files of this shape: an envelope (``apiVersion``, ``kind``, ``metadata``) and target fields,
each a CEL expression over named variables. What they share lives here:

- the strict schema base, the expression type and ``metadata``;
- finding the files of a directory and reading one as positioned YAML;
- compiling every expression at load, each error at its ``file:line:column``;
- :class:`CelField`, one compiled field, whose failures at run time name the target and the
  expression (a missing field is an error, never a silently empty value).
"""

from __future__ import annotations

import re
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import cel
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from services.dsl.cel_checks import CEL_FUNCTIONS, compile_checked, runtime_message
from services.dsl.errors import DslError, ExpressionError, FileError, LoadError
from services.dsl.yaml_source import Loc, YamlDocument, format_loc, parse_yaml

__all__ = [
    "NAME",
    "SUFFIXES",
    "CelField",
    "Expr",
    "FieldEvaluationError",
    "Metadata",
    "StrictSpec",
    "assign",
    "check_name",
    "compile_fields",
    "loaded_or_raise",
    "mapping_files",
    "read_document",
    "read_documents",
    "short",
    "summarize",
]

T = TypeVar("T")
SUFFIXES = (".yaml", ".yml")
#: Names of files' contents and of their entries: lower-case letters, digits and '-'.
NAME = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


class StrictSpec(BaseModel):
    # Like rule files: unknown fields and type coercion are mistakes worth reporting.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


Expr = typing.Annotated[str, Field(min_length=1)]


class Metadata(StrictSpec):
    name: str
    owner: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "name")


def check_name(value: str, what: str) -> str:
    """``value`` if it is a :data:`NAME`; a ``ValueError`` saying it is not a valid ``what``."""
    if not NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid {what} (lower-case letters, digits and '-')")
    return value


class FieldEvaluationError(DslError, ValueError):
    """A field's expression failed on one input: names the target and the expression."""

    def __init__(self, target: str, source: str, cause: str) -> None:
        super().__init__(f"cannot map {target} from `{source}`: {cause}")
        self.target = target
        self.source = source
        self.cause = cause


@dataclass(frozen=True)
class CelField:
    """One compiled field: ``target`` is what messages call it (``audio.uri``, ``body.summary``)."""

    target: str
    source: str
    program: cel.Program

    def run(self, context: cel.Context) -> Any:
        try:
            return self.program.execute(context)
        except Exception as exc:  # the library raises many types; each becomes one sentence
            raise FieldEvaluationError(self.target, self.source, runtime_message(exc)) from exc


def mapping_files(path: Path, what: str) -> list[Path]:
    """``path`` if it is a file, else its ``*.yaml``/``*.yml`` files (not hidden), sorted;
    :class:`FileError` when it does not exist."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileError(path, 1, 1, f"{what} file or directory does not exist")
    return sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(SUFFIXES) and not p.name.startswith("."))


def read_document(path: Path, expected: str) -> YamlDocument:
    """One file as positioned YAML; :class:`FileError` when it is not UTF-8, not YAML or empty
    (``expected`` says what it should hold: ``an AdapterSet (apiVersion, kind, ...)``)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileError(path, 1, 1, f"not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    doc = parse_yaml(path, text)
    if doc.data is None:
        raise FileError(path, 1, 1, f"empty file: expected {expected}")
    return doc


def read_documents(path: Path, what: str, expected: str) -> tuple[list[Path], list[YamlDocument], list[FileError]]:
    """The files of ``path`` (:func:`mapping_files`) and those that read as YAML
    (:func:`read_document`), with the errors of the others."""
    try:
        files = mapping_files(path, what)
    except FileError as exc:
        return [], [], [exc]
    docs: list[YamlDocument] = []
    errors: list[FileError] = []
    for file in files:
        try:
            docs.append(read_document(file, expected))
        except FileError as exc:
            errors.append(exc)
    return files, docs, errors


def loaded_or_raise(result: tuple[T, list[FileError]], error: type[LoadError]) -> T:
    """What a load (``(value, errors)``) gave; ``error`` with every error if there were any."""
    value, errors = result
    if errors:
        raise error(errors)
    return value


def compile_fields(
    doc: YamlDocument, sources: Iterable[tuple[Loc, str]], variables: Sequence[str], *, prefix: Loc = ()
) -> tuple[tuple[CelField, ...], list[FileError]]:
    """Compile each ``(location, expression)`` with names checked against ``variables`` (CEL's
    own functions only); an error is reported at ``prefix + location`` in ``doc``. A field's
    ``target`` is its location, spelt as messages spell it (``context.queue``)."""
    fields: list[CelField] = []
    errors: list[FileError] = []
    for target, source in sources:
        try:
            program = compile_checked(source, variables, CEL_FUNCTIONS)
        except ExpressionError as exc:
            errors.append(doc.error((*prefix, *target), str(exc)))
            continue
        fields.append(CelField(target=format_loc(target), source=source, program=program))
    return tuple(fields), errors


def assign(out: dict[str, Any], path: Sequence[str], value: Any) -> None:
    """``out[path[0]][path[1]]... = value``, creating the maps on the way."""
    for part in path[:-1]:
        out = out.setdefault(part, {})
    out[path[-1]] = value


def summarize(exc: ValidationError) -> str:
    """A pydantic error as one line: ``audio: cause; channels[0].role: cause``."""
    parts = []
    for err in exc.errors(include_url=False):
        where = format_loc(tuple(err["loc"]))
        message = str((err.get("ctx") or {}).get("error", err["msg"]))
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def short(value: Any) -> str:
    """``repr(value)``, cut to 60 characters: values quoted in messages."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
