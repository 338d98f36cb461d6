"""Source adapters: declarative mappings from other CloudEvent types to ``audio.submitted``.

Telephony and CRM systems announce recordings in their own event types. Rather
than asking each to speak listenpost's contract, an adapter file (YAML, owned by
whoever integrates the source) says how to build ``audio.submitted`` data from
theirs. Every target field is a CEL expression over ``event`` (the attributes,
extensions included) and ``data``::

    apiVersion: listenpost/v1
    kind: AdapterSet
    metadata: {name: acme-telephony, owner: telephony}
    adapters:
      - id: acme-call-recorded
        description: ACME PBX finished recording a call.
        match: {types: [com.acme.telephony.call.recorded], sources: ["*"]}
        map:
          audio: {uri: data.recording.url}
          channels: data.channels          # {role: index}, [role, ...] or [{index, role}]
          context:
            callid: data.call_id
            queue: "has(data.queue) ? data.queue : null"   # null: leave the field out
          extensions: {callid: data.call_id}

Files are checked like rule files (strict schema, CEL compiled at load, every
error reported as ``file:line:column: cause``). A missing field in an event is
an :class:`AdapterError` naming the adapter, the target field and the
expression, never a silently empty value: a field that may be absent must say so
with ``has()``.

The adapted event keeps the original's ``id`` and ``source`` (so JetStream
dedup and correlation still work), takes the type ``audio.submitted`` and
records the original type in the ``adaptedfrom`` extension.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from services.dsl.cel_checks import new_context, runtime_message
from services.dsl.errors import FileError, LoadError
from services.dsl.mapping import (
    CelField,
    Expr,
    FieldEvaluationError,
    Metadata,
    StrictSpec,
    assign,
    check_name,
    compile_fields,
    loaded_or_raise,
    read_documents,
    short,
    summarize,
)
from services.dsl.yaml_source import Loc, YamlDocument, schema_errors
from services.events.binding import CloudEvent, MalformedEventError, event_data_json, new_event
from services.events.models import AUDIO_SUBMITTED, AudioSubmitted
from services.ingest.errors import IngestError

__all__ = [
    "ADAPTED_FROM",
    "API_VERSION",
    "KIND",
    "Adapter",
    "AdapterError",
    "AdapterLoadError",
    "AdapterSet",
    "lint_adapters",
    "load_adapters",
    "summarize",
]

API_VERSION = "listenpost/v1"
KIND = "AdapterSet"
#: Extension attribute on an adapted event: the type it was adapted from.
ADAPTED_FROM = "adaptedfrom"
#: The names an adapter's expressions may use.
VARIABLES = ("event", "data")

_EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")
_CORE_ATTRIBUTES = frozenset(
    {"specversion", "id", "source", "type", "datacontenttype", "dataschema", "subject", "time", "data", "data_base64"}
)


class AdapterError(IngestError, ValueError):
    """An event that its adapter cannot turn into ``audio.submitted`` (the event's fault)."""


class AdapterLoadError(IngestError, LoadError):
    """Adapter files that did not load: every error found, each with file:line:column."""

    what = "adapters"


# --- the file format (envelope, expressions, strictness: services.dsl.mapping) -------------


class MatchSpec(StrictSpec):
    types: list[str] = Field(min_length=1)
    sources: list[str] = Field(default_factory=lambda: ["*"], min_length=1)

    @field_validator("types")
    @classmethod
    def _not_ours(cls, v: list[str]) -> list[str]:
        # An adapter for our own input type would rewrite every submitted event.
        for pattern in v:
            if fnmatchcase(AUDIO_SUBMITTED, pattern) or pattern.startswith("com.listenpost."):
                raise ValueError(
                    f"type pattern {pattern!r} matches listenpost's own types; adapters are for other sources"
                )
        return v


class ObjectMap(StrictSpec):
    bucket: Expr
    name: Expr


class AudioMap(StrictSpec):
    uri: Expr | None = None
    object: ObjectMap | None = None
    data_base64: Expr | None = None
    format: Expr | None = None

    @model_validator(mode="after")
    def _some_location(self) -> AudioMap:
        # At run time exactly one must yield a value; a map naming none can never work.
        if self.uri is None and self.object is None and self.data_base64 is None:
            raise ValueError("audio needs at least one of 'uri', 'object', 'data_base64'")
        return self


class MapSpec(StrictSpec):
    audio: AudioMap
    channels: Expr | None = None
    context: dict[str, Expr] = Field(default_factory=dict)
    language: Expr | None = None
    extensions: dict[str, Expr] = Field(default_factory=dict)

    @field_validator("extensions")
    @classmethod
    def _extension_names(cls, v: dict[str, Expr]) -> dict[str, Expr]:
        for name in v:
            # ctx["field"]: the error points at this key rather than at the whole mapping.
            if name in _CORE_ATTRIBUTES or name == ADAPTED_FROM:
                raise PydanticCustomError(
                    "reserved_extension", "{field} is a core or reserved attribute, not an extension", {"field": name}
                )
            if not _EXTENSION_NAME.fullmatch(name):
                raise PydanticCustomError(
                    "extension_name",
                    "extension names are lower-case letters and digits, at most 20 characters",
                    {"field": name},
                )
        return v


class AdapterSpec(StrictSpec):
    id: str
    description: str = Field(min_length=1)
    match: MatchSpec
    map: MapSpec

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return check_name(v, "adapter id")


class AdapterFileSpec(StrictSpec):
    """The envelope; adapters are validated one by one so one broken adapter hides no other error."""

    api_version: Literal["listenpost/v1"] = Field(alias="apiVersion")
    kind: Literal["AdapterSet"]
    metadata: Metadata
    adapters: list[Any]


# --- compiled adapters ------------------------------------------------------------


@dataclass(frozen=True)
class Adapter:
    """One compiled adapter: which events it takes and how it maps them."""

    spec: AdapterSpec
    path: Path
    position: int
    fields: tuple[CelField, ...]

    @property
    def id(self) -> str:
        return self.spec.id

    def matches(self, event_type: str, source: str) -> bool:
        match = self.spec.match
        return any(fnmatchcase(event_type, p) for p in match.types) and any(
            fnmatchcase(source, p) for p in match.sources
        )

    def apply(self, attributes: Mapping[str, Any], data: Any) -> AudioSubmitted:
        """Map one event's attributes and (JSON) data to ``audio.submitted`` data."""
        return self._map(attributes, data)[0]

    def adapt(self, event: CloudEvent) -> tuple[CloudEvent, AudioSubmitted]:
        """The ``audio.submitted`` event for ``event``: same id and source, new type and data."""
        try:
            data = event_data_json(event)
        except MalformedEventError as exc:
            raise AdapterError(f"adapter {self.id!r}: {exc}") from exc
        attributes = dict(event.get_attributes())
        submitted, extensions = self._map(attributes, data)
        kept = {
            name: value
            for name, value in attributes.items()
            if name not in _CORE_ATTRIBUTES and name not in extensions and value is not None
        }
        adapted = new_event(
            AUDIO_SUBMITTED,
            event.get_source(),
            submitted.model_dump(mode="json", exclude_none=True),
            id=event.get_id(),
            subject=event.get_subject(),
            extensions={**kept, **extensions, ADAPTED_FROM: event.get_type()},
        )
        # new_event stamps "now"; the adapted event happened when the original did, or at no stated time.
        if attributes.get("time") is not None:
            adapted.get_attributes()["time"] = attributes["time"]
        else:
            adapted.get_attributes().pop("time", None)
        return adapted, submitted

    def _map(self, attributes: Mapping[str, Any], data: Any) -> tuple[AudioSubmitted, dict[str, Any]]:
        variables = {
            "event": {k: v for k, v in attributes.items() if k not in ("data", "data_base64")},
            "data": data if data is not None else {},
        }
        try:
            context = new_context(variables)
        except Exception as exc:
            raise AdapterError(f"adapter {self.id!r}: event cannot be given to CEL: {runtime_message(exc)}") from exc
        out: dict[str, Any] = {}
        extensions: dict[str, Any] = {}
        for field in self.fields:
            try:
                value = field.run(context)
            except FieldEvaluationError as exc:
                raise AdapterError(f"adapter {self.id!r}: {exc}") from exc
            if value is None:  # `null`: the author chose to leave the field out
                continue
            if field.target == "channels":
                value = self._channels(value, field)
            if field.target.startswith("extensions."):
                extensions[field.target.removeprefix("extensions.")] = self._extension(value, field)
                continue
            assign(out, field.target.split("."), value)
        out.setdefault("audio", {})
        try:
            submitted = AudioSubmitted.model_validate(out)
        except ValidationError as exc:
            raise AdapterError(
                f"adapter {self.id!r} produced invalid {AUDIO_SUBMITTED} data: {summarize(exc)}"
            ) from exc
        return submitted, extensions

    def _channels(self, value: Any, field: CelField) -> list[dict[str, Any]]:
        # Sources describe channel roles three ways; all become [{index, role}].
        if isinstance(value, Mapping):
            pairs = [(index, role) for role, index in value.items()]
        elif isinstance(value, list) and all(isinstance(v, str) or v is None for v in value):
            pairs = [(index, role) for index, role in enumerate(value) if role is not None]
        elif isinstance(value, list) and all(isinstance(v, Mapping) for v in value):
            return [dict(v) for v in value]
        else:
            raise AdapterError(
                f"adapter {self.id!r}: channels from `{field.source}` must be a map of role to index, "
                f"a list of roles or a list of {{index, role}}, not {short(value)}"
            )
        for index, role in pairs:
            if isinstance(index, bool) or not isinstance(index, int):
                raise AdapterError(
                    f"adapter {self.id!r}: channel index of role {role!r} from `{field.source}` "
                    f"is {short(index)}, not an integer"
                )
        return [{"index": index, "role": role} for index, role in sorted(pairs, key=lambda p: p[0])]

    def _extension(self, value: Any, field: CelField) -> str | int | bool:
        if not isinstance(value, str | int | bool):
            raise AdapterError(
                f"adapter {self.id!r}: {field.target} from `{field.source}` is {short(value)}; "
                "extension values are strings, integers or booleans"
            )
        return value


@dataclass(frozen=True)
class AdapterSet:
    """Every loaded adapter, in file-name then file order (the order that breaks ties)."""

    adapters: tuple[Adapter, ...] = ()
    files: tuple[Path, ...] = ()

    def match(self, event_type: str, source: str) -> Adapter | None:
        # Our own input type is never adapted, whatever a file says (the schema forbids it too).
        if event_type == AUDIO_SUBMITTED:
            return None
        return next((a for a in self.adapters if a.matches(event_type, source)), None)

    def __len__(self) -> int:
        return len(self.adapters)


# --- loading -----------------------------------------------------------------------


def load_adapters(path: Path) -> AdapterSet:
    """Load a file or every ``*.yaml`` of a directory; raise :class:`AdapterLoadError` with all errors."""
    return loaded_or_raise(_load(path), AdapterLoadError)


def lint_adapters(path: Path) -> list[FileError]:
    """Every error in the adapter files, sorted; empty when they load."""
    return _load(path)[1]


def _load(path: Path) -> tuple[AdapterSet, list[FileError]]:
    files, docs, errors = read_documents(path, "adapter", "an AdapterSet (apiVersion, kind, metadata, adapters)")
    loaded: list[tuple[Adapter, YamlDocument]] = []
    for doc in docs:
        file_adapters, file_errors = _load_file(doc.path, doc)
        loaded.extend(file_adapters)
        errors.extend(file_errors)
    errors.extend(_duplicates(loaded))
    adapters = tuple(adapter for adapter, _ in loaded)
    return AdapterSet(adapters=adapters, files=tuple(files)), sorted(errors, key=FileError.sort_key)


def _load_file(path: Path, doc: YamlDocument) -> tuple[list[tuple[Adapter, YamlDocument]], list[FileError]]:
    errors: list[FileError] = []
    try:
        raw_adapters: Any = AdapterFileSpec.model_validate(doc.data).adapters
    except ValidationError as exc:
        errors = schema_errors(doc, exc, (), AdapterFileSpec)
        raw_adapters = doc.data.get("adapters") if isinstance(doc.data, dict) else None
        if not isinstance(raw_adapters, list):
            return [], errors
    adapters: list[tuple[Adapter, YamlDocument]] = []
    for index, raw in enumerate(raw_adapters):
        loc: Loc = ("adapters", index)
        try:
            spec = AdapterSpec.model_validate(raw)
        except ValidationError as exc:
            errors.extend(schema_errors(doc, exc, loc, AdapterSpec))
            continue
        fields, field_errors = _compile_fields(doc, loc, spec.map)
        errors.extend(field_errors)
        if not field_errors:
            adapters.append((Adapter(spec=spec, path=path, position=index, fields=fields), doc))
    return adapters, errors


def _compile_fields(doc: YamlDocument, loc: Loc, spec: MapSpec) -> tuple[tuple[CelField, ...], list[FileError]]:
    sources: list[tuple[Loc, str]] = []
    audio = spec.audio
    for name in ("uri", "data_base64", "format"):
        if (value := getattr(audio, name)) is not None:
            sources.append((("audio", name), value))
    if audio.object is not None:
        sources.append((("audio", "object", "bucket"), audio.object.bucket))
        sources.append((("audio", "object", "name"), audio.object.name))
    if spec.channels is not None:
        sources.append((("channels",), spec.channels))
    sources += [(("context", key), value) for key, value in spec.context.items()]
    if spec.language is not None:
        sources.append((("language",), spec.language))
    sources += [(("extensions", key), value) for key, value in spec.extensions.items()]
    # Names are checked against `event` and `data` only. Unlike a rule's condition, fields are
    # not checked against the captioned-event schema: adapters read other systems' data.
    return compile_fields(doc, sources, VARIABLES, prefix=(*loc, "map"))


def _duplicates(loaded: list[tuple[Adapter, YamlDocument]]) -> list[FileError]:
    errors: list[FileError] = []
    first_id: dict[str, tuple[Adapter, YamlDocument]] = {}
    first_match: dict[tuple[str, str], tuple[Adapter, YamlDocument]] = {}
    for adapter, doc in loaded:
        loc: Loc = ("adapters", adapter.position)
        if adapter.id in first_id:
            other, other_doc = first_id[adapter.id]
            where = _at(other, other_doc, "id")
            errors.append(doc.error((*loc, "id"), f"duplicate adapter id {adapter.id!r} (first defined at {where})"))
            continue
        first_id[adapter.id] = (adapter, doc)
        # The same (type, source) pattern twice: the second adapter could never run.
        for event_type in adapter.spec.match.types:
            for source in adapter.spec.match.sources:
                key = (event_type, source)
                if key in first_match:
                    other, other_doc = first_match[key]
                    errors.append(
                        doc.error(
                            (*loc, "match"),
                            f"type {event_type!r} from source {source!r} is already adapted by "
                            f"{other.id!r} ({_at(other, other_doc, 'match')})",
                        )
                    )
                else:
                    first_match[key] = (adapter, doc)
    return errors


def _at(adapter: Adapter, doc: YamlDocument, field: str) -> str:
    pos = doc.position(("adapters", adapter.position, field))
    return f"{adapter.path}:{pos.line}:{pos.column}"
