"""CRM write-back: one call's summary, sent to a CRM as the CRM's own request.

A CRM mapping (YAML, ``kind: CrmMapping``, in ``notify.crm_mappings_dir``) says how a
:class:`~services.notify.call_summary.CallSummary` becomes a request: the method, the path
(a template whose ``{name}`` parameters are CEL expressions, URL-escaped), query parameters,
headers and a JSON body whose leaves are CEL expressions over ``summary``::

    apiVersion: listenpost/v1
    kind: CrmMapping
    metadata: {name: generic-rest, owner: cx-systems}
    request:
      method: PATCH
      path: /interactions/{callid}
      params: {callid: summary.callid}
      headers: {Idempotency-Key: summary.summary_id}
    body:
      external_id: summary.callid
      summary: summary.caption
      queue: "has(summary.context.queue) ? summary.context.queue : null"   # null: leave it out
      escalated: "summary.decisions.exists(d, d.kind == 'route' && d.queue == 'escalations')"

Files are read like source adapters (:mod:`services.dsl.mapping`): strict schema, CEL compiled
at load, every error as ``file:line:column: cause``. At run time a field that fails (a missing
key: ``summary.callid`` of a call without an id) is a :class:`CrmMappingError` naming the
mapping, the field and the expression, never an empty value; ``null`` leaves a body key, a
query parameter or a header out.

A CRM target (:class:`CrmConfig`, a receiver-like configuration of type ``crm``) says where:
the base URL (``url``, or ``url_secret`` when the URL is a credential), the auth (bearer or
basic, from secrets), the mapping. :func:`payload` builds the request (pure); :func:`write`
makes one attempt, classified like every receiver's (:mod:`.receivers.base`): connection
errors, timeouts, 408/425/429 and 5xx are retryable, other answers are not.

When a summary is sent (after its captioned event's rules are evaluated) is the delivery
service's business, not this module's.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Final, Literal, NamedTuple, Self
from urllib.parse import quote, urlencode

import httpx
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, PositiveFloat, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from services.dsl.cel_checks import CEL_FUNCTIONS, compile_checked, new_context, runtime_message
from services.dsl.errors import FileError, LoadError
from services.dsl.mapping import (
    CelField,
    Expr,
    FieldEvaluationError,
    Metadata,
    StrictSpec,
    check_name,
    compile_fields,
    loaded_or_raise,
    read_documents,
    short,
)
from services.dsl.yaml_source import Loc, YamlDocument, format_loc, schema_errors
from services.notify.call_summary import CallSummary
from services.notify.receivers.base import RECEIVER_NAME, Delivery, DeliveryError, SecretName, post
from services.notify.receivers.secrets import MissingSecret, SecretSource, reveal

__all__ = [
    "API_VERSION",
    "KIND",
    "BasicAuth",
    "BearerAuth",
    "CrmConfig",
    "CrmMapping",
    "CrmMappingError",
    "CrmMappingLoadError",
    "CrmRequest",
    "compile_mapping",
    "lint_mappings",
    "load_mappings",
    "payload",
    "preview",
    "resolve_mapping",
    "write",
]

API_VERSION: Final = "listenpost/v1"
KIND: Final = "CrmMapping"
#: The one variable a mapping's expressions read.
VARIABLES: Final = ("summary",)
#: Bounds: a body's maps and lists nested at most this deep, its expressions at most this many,
#: the values an expression yields nested at most this deep, the body at most this many bytes.
MAX_BODY_DEPTH: Final = 8
MAX_BODY_FIELDS: Final = 500
MAX_VALUE_DEPTH: Final = 32
MAX_BODY_BYTES: Final = 4 * 1024 * 1024
DEFAULT_BODY_BYTES: Final = 256 * 1024

Method = Literal["POST", "PUT", "PATCH"]
ContentType = Literal["application/json", "application/merge-patch+json"]

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_PARAM_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# RFC 3986 path characters, and the template's braces.
_PATH = re.compile(r"^(?:/[A-Za-z0-9._~!$&'()*+,;=:@%{}-]*)*$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")
_RESERVED_HEADERS: Final = frozenset(
    {"authorization", "content-type", "content-length", "host", "user-agent", "transfer-encoding", "connection"}
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class CrmMappingError(ValueError):
    """A mapping that failed on one summary (a missing field, a value of the wrong type, a body too large)."""


class CrmMappingLoadError(LoadError):
    """CRM mapping files that did not load: every error found, each with file:line:column."""

    what = "CRM mappings"


# --- the file format ----------------------------------------------------------------------------


class RequestSpec(StrictSpec):
    method: Method = "POST"
    path: str = Field(default="", description="Appended to the target's URL; `{name}` is a parameter from `params`.")
    params: dict[str, Expr] = Field(default_factory=dict, description="Path parameters: CEL, URL-escaped.")
    query: dict[str, Expr] = Field(default_factory=dict, description="Query parameters: CEL; null leaves one out.")
    headers: dict[str, Expr] = Field(default_factory=dict, description="Headers: CEL; null leaves one out.")
    content_type: ContentType = "application/json"

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if v and not _PATH.fullmatch(v):
            raise ValueError(
                f"{v!r} is not a URL path: it starts with '/' and holds no spaces, '?' or '#' (use `query` for parameters)"
            )
        return v


class CrmMappingSpec(StrictSpec):
    """A mapping file; ``body`` is checked and compiled field by field (errors at each)."""

    api_version: Literal["listenpost/v1"] = Field(alias="apiVersion")
    kind: Literal["CrmMapping"]
    metadata: Metadata
    request: RequestSpec = Field(default_factory=RequestSpec)
    body: dict[str, Any] = Field(min_length=1, description="The JSON body: maps and lists whose leaves are CEL.")
    max_body_bytes: int = Field(default=DEFAULT_BODY_BYTES, ge=2, le=MAX_BODY_BYTES)


# --- compiled mappings ----------------------------------------------------------------------------

#: A compiled body: a field (leaf), or maps and lists of them.
Node = CelField | dict[str, "Node"] | list["Node"]


class CrmRequest(NamedTuple):
    """What would be sent: the method, the URL (the target's base, then the mapped path and
    query), the headers (lower-case names) and the JSON body."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class CrmMapping:
    """One compiled mapping."""

    spec: CrmMappingSpec
    path: Path
    params: tuple[CelField, ...]
    query: tuple[CelField, ...]
    headers: tuple[CelField, ...]
    body: Node
    label: str = ""  # what errors call it; the name unless inline

    def __repr__(self) -> str:
        return f"CrmMapping(name={self.name!r}, path={str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.label or self.spec.metadata.name

    def request(self, summary: CallSummary, *, base_url: str = "") -> CrmRequest:
        """The request for ``summary`` (:class:`CrmMappingError` when a field fails)."""
        try:
            context = new_context({"summary": summary.cel_value()})
        except Exception as exc:  # the library refuses some values (none of a CallSummary's, so far)
            raise CrmMappingError(f"crm mapping {self.name!r}: summary cannot be given to CEL: {runtime_message(exc)}") from exc
        spec = self.spec.request
        path = spec.path
        for field in self.params:
            value = self._param(field, self._run(field, context))
            path = path.replace("{" + field.target.removeprefix("request.params.") + "}", value)
        query = {}
        for field in self.query:
            if (value := self._run(field, context)) is not None:
                query[field.target.removeprefix("request.query.")] = self._scalar(field, value, "a query parameter")
        headers: dict[str, str] = {"accept": "application/json", "content-type": spec.content_type}
        for field in self.headers:
            if (value := self._run(field, context)) is not None:
                text = self._scalar(field, value, "a header")
                if _CONTROL.search(text):
                    raise self._error(field, f"is {short(text)}: a header holds no control characters (line breaks)")
                headers[field.target.removeprefix("request.headers.").lower()] = text
        body = self._body(self.body, context)
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        if len(data) > self.spec.max_body_bytes:
            raise CrmMappingError(
                f"crm mapping {self.name!r}: the body is {len(data):,} bytes, more than max_body_bytes ({self.spec.max_body_bytes:,})"
            )
        url = base_url.rstrip("/") + path + (f"?{urlencode(query, quote_via=quote)}" if query else "")
        return CrmRequest(spec.method, url, headers, data)

    def _run(self, field: CelField, context: Any) -> Any:
        try:
            return field.run(context)
        except FieldEvaluationError as exc:
            raise CrmMappingError(f"crm mapping {self.name!r}: {exc}") from exc

    def _error(self, field: CelField, message: str) -> CrmMappingError:
        return CrmMappingError(f"crm mapping {self.name!r}: {field.target} from `{field.source}` {message}")

    def _param(self, field: CelField, value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise self._error(field, f"is {short(value)}: a path parameter is a string or an integer")
        text = str(value)
        if text in ("", ".", ".."):
            raise self._error(field, f"is {text!r}: a path parameter is a name, not an empty or dot segment")
        return quote(text, safe="")

    def _scalar(self, field: CelField, value: Any, what: str) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str | int) or (isinstance(value, float) and math.isfinite(value)):
            return str(value)
        raise self._error(field, f"is {short(value)}: {what} is a string, a number or a boolean")

    def _body(self, node: Node, context: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, child in node.items():
                if (value := self._body(child, context)) is not None:
                    out[key] = value
            return out
        if isinstance(node, list):
            return [self._body(child, context) for child in node]
        return self._json(node, self._run(node, context), 0)

    def _json(self, field: CelField, value: Any, depth: int) -> Any:
        """A CEL value as JSON: timestamps as RFC 3339, durations as seconds, map keys sorted."""
        if depth > MAX_VALUE_DEPTH:
            raise self._error(field, f"yields values nested more than {MAX_VALUE_DEPTH} deep")
        if value is None or isinstance(value, bool | int | str):
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise self._error(field, f"is {value}: JSON has no infinities or NaN")
            return value
        if isinstance(value, datetime):
            value = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
            return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
        if isinstance(value, timedelta):
            return value.total_seconds()
        if isinstance(value, Mapping):
            # A CEL map has no order of its own: sorted keys keep the same summary's body the same bytes.
            out = {}
            for key, item in sorted(value.items(), key=lambda kv: str(kv[0])):
                if not isinstance(key, str):
                    raise self._error(field, f"yields a map with the key {short(key)}: JSON keys are strings")
                out[key] = self._json(field, item, depth + 1)
            return out
        if isinstance(value, list | tuple):
            return [self._json(field, item, depth + 1) for item in value]
        raise self._error(field, f"yields {type(value).__name__} {short(value)}, which JSON cannot hold")


# --- loading -----------------------------------------------------------------------------------


def load_mappings(path: Path) -> dict[str, CrmMapping]:
    """The mappings of a file, or of every ``*.yaml`` of a directory, by name;
    :class:`CrmMappingLoadError` with every error."""
    return loaded_or_raise(_load(path), CrmMappingLoadError)


def lint_mappings(path: Path) -> list[FileError]:
    """Every error in the mapping files, sorted; empty when they load."""
    return _load(path)[1]


def _load(path: Path) -> tuple[dict[str, CrmMapping], list[FileError]]:
    _, docs, errors = read_documents(path, "CRM mapping", "a CrmMapping (apiVersion, kind, metadata, request, body)")
    mappings: dict[str, CrmMapping] = {}
    where: dict[str, str] = {}
    for doc in docs:
        mapping, file_errors = _compile(doc)
        errors.extend(file_errors)
        if mapping is None:
            continue
        position = doc.position(("metadata", "name"))
        if mapping.name in mappings:
            message = f"duplicate mapping name {mapping.name!r} (first defined at {where[mapping.name]})"
            errors.append(doc.error(("metadata", "name"), message))
            continue
        mappings[mapping.name] = mapping
        where[mapping.name] = f"{doc.path}:{position.line}:{position.column}"
    return mappings, sorted(errors, key=FileError.sort_key)


def compile_mapping(data: Mapping[str, Any], origin: Path, *, label: str = "") -> CrmMapping:
    """A mapping from plain data (an inline mapping); errors are reported at ``origin`` and the
    field's location (``<crm x>:1:1: body.y: ...``: plain data has no lines)."""
    doc = YamlDocument(path=origin, text="", data=dict(data), root=dict(data))
    mapping, errors = _compile(doc)
    if errors or mapping is None:
        raise CrmMappingLoadError(errors)
    return replace(mapping, label=label) if label else mapping


def _compile(doc: YamlDocument) -> tuple[CrmMapping | None, list[FileError]]:
    # The schema, the body's shape and every expression are checked whatever fails first, so
    # one mistake hides no other.
    spec: CrmMappingSpec | None = None
    errors: list[FileError] = []
    try:
        spec = CrmMappingSpec.model_validate(doc.data)
    except ValidationError as exc:
        errors = schema_errors(doc, exc, (), CrmMappingSpec)
    raw: dict[str, Any] = doc.data if isinstance(doc.data, dict) else {}
    request: dict[str, Any] = raw["request"] if isinstance(raw.get("request"), dict) else {}
    if isinstance(request.get("path", ""), str) and isinstance(request.get("params", {}), dict):
        errors += _path_errors(doc, request.get("path", ""), request.get("params", {}))
    if isinstance(request.get("headers"), dict):
        errors += _header_errors(doc, request["headers"])
    sources: list[tuple[Loc, str]] = [
        (("request", part, key), source)
        for part in ("params", "query", "headers") if isinstance(request.get(part), dict)
        for key, source in request[part].items() if isinstance(source, str) and source
    ]  # fmt: skip
    body_sources: list[tuple[Loc, str]] = []
    if isinstance(raw.get("body"), dict):
        errors += _body_sources(doc, raw["body"], ("body",), 1, body_sources)
    if len(body_sources) > MAX_BODY_FIELDS:
        errors.append(doc.error(("body",), f"more than {MAX_BODY_FIELDS} expressions"))
    fields, compile_errors = compile_fields(doc, sources + body_sources, VARIABLES)
    errors += compile_errors
    if errors or spec is None:
        return None, errors
    by_target = {f.target: f for f in fields}
    parts = {part: tuple(f for f in fields if f.target.startswith(f"request.{part}.")) for part in ("params", "query", "headers")}
    mapping = CrmMapping(
        spec=spec, path=doc.path, params=parts["params"], query=parts["query"], headers=parts["headers"],
        body=_body_tree(spec.body, ("body",), by_target),
    )  # fmt: skip
    return mapping, []


def _path_errors(doc: YamlDocument, path: str, params: Mapping[str, Any]) -> list[FileError]:
    """The path template's parameters against ``params``: each defined, each used."""
    errors = []
    used = set()
    for found in _PLACEHOLDER.finditer(path):
        name = found.group(1)
        if not _PARAM_NAME.fullmatch(name):
            errors.append(doc.error(("request", "path"), f"{{{name}}}: a parameter name is lower-case letters, digits and '_'"))
        elif name not in params:
            errors.append(doc.error(("request", "path"), f"{{{name}}} has no expression in request.params"))
        used.add(name)
    rest = _PLACEHOLDER.sub("", path)
    if "{" in rest or "}" in rest:
        errors.append(doc.error(("request", "path"), "unbalanced '{' or '}'"))
    for name in params:
        if name not in used:
            errors.append(doc.error(("request", "params", name), "not used in request.path", key=True))
    return errors


def _header_errors(doc: YamlDocument, headers: Mapping[str, Any]) -> list[FileError]:
    errors = []
    for name in headers:
        loc = ("request", "headers", name)
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            errors.append(doc.error(loc, "not a header name (letters, digits and !#$%&'*+.^_`|~-)", key=True))
        elif name.lower() in _RESERVED_HEADERS:
            errors.append(doc.error(loc, "a header the writer sets (auth, content type), not a mapping", key=True))
    return errors


def _body_sources(doc: YamlDocument, value: Any, loc: Loc, depth: int, out: list[tuple[Loc, str]]) -> list[FileError]:
    """The body's expressions with their locations (into ``out``), and its shape's errors."""
    if isinstance(value, str):
        if not value.strip():
            return [doc.error(loc, "an empty expression")]
        out.append((loc, value))
        return []
    if isinstance(value, dict | list) and depth > MAX_BODY_DEPTH:
        return [doc.error(loc, f"maps and lists nested more than {MAX_BODY_DEPTH} deep")]
    errors: list[FileError] = []
    if isinstance(value, dict):
        for key, child in value.items():
            if not isinstance(key, str) or not key:
                errors.append(doc.error(loc, f"the key {short(key)} is not a non-empty string"))
                continue
            errors += _body_sources(doc, child, (*loc, key), depth + 1, out)
        return errors
    if isinstance(value, list):
        for index, child in enumerate(value):
            errors += _body_sources(doc, child, (*loc, index), depth + 1, out)
        return errors
    if value is None:
        shown = "an empty value"
    elif isinstance(value, bool):
        shown = f"the boolean {str(value).lower()}"
    elif isinstance(value, int | float):
        shown = f"the number {value}"
    else:
        shown = f"{type(value).__name__} {short(value)}"
    message = f"expected a CEL expression (a string), a map or a list, not {shown}; a constant is CEL in quotes too: "
    return [doc.error(loc, message + "\"true\", \"42\", \"'text'\"", key=True)]


def _body_tree(value: Any, loc: Loc, fields: Mapping[str, CelField]) -> Node:
    if isinstance(value, dict):
        return {key: _body_tree(child, (*loc, key), fields) for key, child in value.items()}
    if isinstance(value, list):
        return [_body_tree(child, (*loc, index), fields) for index, child in enumerate(value)]
    return fields[format_loc(loc)]


# --- the target ----------------------------------------------------------------------------------


class _Auth(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BearerAuth(_Auth):
    type: Literal["bearer"]
    token_secret: SecretName = Field(description="Sends `Authorization: Bearer <secret>`.")


class BasicAuth(_Auth):
    type: Literal["basic"]
    username: str = Field(min_length=1, pattern=r"^[^:\x00-\x1f]+$")
    password_secret: SecretName


class CrmConfig(BaseModel):
    """A CRM target: where a call's summary goes, how it authenticates, which mapping shapes it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=RECEIVER_NAME, description="What logs, errors and metrics call the target.")
    type: Literal["crm"] = "crm"
    url: HttpUrl | None = Field(default=None, description="The CRM's base URL; the mapping's path is appended.")
    url_secret: SecretName | None = Field(default=None, description="The secret holding the base URL (instead of url).")
    method: Method | None = Field(default=None, description="Overrides the mapping's request.method.")
    auth: Annotated[BearerAuth | BasicAuth, Field(discriminator="type")] | None = None
    mapping: str | dict[str, Any] = Field(
        description="The name of a mapping in notify.crm_mappings_dir, or an inline mapping (request, body, max_body_bytes)."
    )
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers (not secrets).")
    timeout_s: PositiveFloat = Field(default=10.0, description="One attempt's time limit, connecting included.")
    when: str | None = Field(
        default=None,
        min_length=1,
        description="CEL over `summary` (a boolean): only the calls for which it is true are written; default every call.",
    )

    _inline: CrmMapping | None = PrivateAttr(default=None)
    _when: CelField | None = PrivateAttr(default=None)

    @field_validator("mapping")
    @classmethod
    def _mapping_name(cls, value: str | dict[str, Any]) -> str | dict[str, Any]:
        return check_name(value, "mapping name") if isinstance(value, str) else value

    @field_validator("when")
    @classmethod
    def _when_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            compile_checked(value, VARIABLES, CEL_FUNCTIONS)  # an ExpressionError is a ValueError: reported at `when`
        return value

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.url is None) == (self.url_secret is None):
            raise ValueError("set exactly one of url and url_secret")
        if self.url is not None and (self.url.query or self.url.fragment):
            raise ValueError("url is a base URL: no query or fragment (the mapping sets the query)")
        reserved = sorted(h for h in self.headers if h.lower() in _RESERVED_HEADERS)
        if reserved:
            raise ValueError(f"headers may not set {', '.join(reserved)}: the writer sets them")
        if self.when is not None:
            self._when = CelField("when", self.when, compile_checked(self.when, VARIABLES, CEL_FUNCTIONS))
        if not isinstance(self.mapping, str):
            envelope = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "inline"}}
            try:
                self._inline = compile_mapping(
                    {**envelope, **self.mapping}, Path(f"<crm {self.name}: inline mapping>"), label=f"{self.name} (inline)"
                )
            except CrmMappingLoadError as exc:
                # ctx["field"]: a file's error points at `mapping`.
                errors = "; ".join(e.message for e in exc.errors)
                raise PydanticCustomError("inline_mapping", "inline mapping: {errors}", {"field": "mapping", "errors": errors}) from None
        return self

    def wants(self, summary: CallSummary) -> bool:
        """Whether ``when`` lets this call through (:class:`CrmMappingError` when it fails or is not a boolean)."""
        if self._when is None:
            return True
        try:
            value = self._when.run(new_context({"summary": summary.cel_value()}))
        except FieldEvaluationError as exc:
            raise CrmMappingError(f"crm target {self.name!r}: {exc}") from exc
        if not isinstance(value, bool):
            raise CrmMappingError(f"crm target {self.name!r}: when `{self.when}` is {short(value)}, not a boolean")
        return value

    def secret_names(self) -> list[str]:
        """The secrets the target names (check them at load)."""
        names = [self.url_secret] if self.url_secret else []
        if isinstance(self.auth, BearerAuth):
            names.append(self.auth.token_secret)
        elif isinstance(self.auth, BasicAuth):
            names.append(self.auth.password_secret)
        return sorted(names)


def resolve_mapping(config: CrmConfig, mappings: Mapping[str, CrmMapping]) -> CrmMapping:
    """The target's mapping: its inline one, or the one of that name (:class:`KeyError` with the known names)."""
    if config._inline is not None:
        return config._inline
    assert isinstance(config.mapping, str)
    if config.mapping not in mappings:
        known = ", ".join(sorted(mappings)) or "none"
        raise KeyError(f"CRM mapping {config.mapping!r} is not loaded (loaded: {known})")
    return mappings[config.mapping]


def payload(summary: CallSummary, mapping: CrmMapping, *, base_url: str = "") -> CrmRequest:
    """The request for ``summary`` (no network): ``(method, url, headers, body)``. The URL is
    ``base_url`` followed by the mapped path and query; without a base, the path alone."""
    return mapping.request(summary, base_url=base_url)


def preview(summary: CallSummary, mapping: CrmMapping, config: CrmConfig | None = None) -> CrmRequest:
    """What :func:`write` would send, with every secret shown by its name: a base URL from
    ``url_secret`` as ``<secret 'name'>``, the auth header as ``Bearer <secret 'name'>``."""
    base = ""
    if config is not None:
        base = str(config.url) if config.url is not None else f"<secret {config.url_secret!r}>"
    request = payload(summary, mapping, base_url=base)
    headers = {**{k.lower(): v for k, v in (config.headers if config else {}).items()}, **request.headers}
    if config is not None and isinstance(config.auth, BearerAuth):
        headers["authorization"] = f"Bearer <secret {config.auth.token_secret!r}>"
    elif config is not None and isinstance(config.auth, BasicAuth):
        headers["authorization"] = f"Basic <{config.auth.username} and secret {config.auth.password_secret!r}>"
    method = (config.method if config is not None else None) or request.method
    return request._replace(method=method, headers=headers)


async def write(
    summary: CallSummary,
    config: CrmConfig,
    secrets: SecretSource,
    client: httpx.AsyncClient,
    *,
    mappings: Mapping[str, CrmMapping] | None = None,
    idempotency_key: str | None = None,
) -> Delivery:
    """One attempt to send ``summary`` to the target; :class:`DeliveryError` when it fails.

    ``mappings``: the loaded mapping files (default: those of the setting
    ``notify.crm_mappings_dir``, read now). A missing secret, an unknown mapping or a mapping
    that fails on this summary is not retryable: another attempt would fail the same way.
    ``idempotency_key``: sent as ``Idempotency-Key`` unless the mapping (or the target's
    ``headers``) sets that header itself.
    """
    started = time.monotonic()
    try:
        mapping = resolve_mapping(config, mappings if mappings is not None else _default_mappings(config))
    except (KeyError, CrmMappingLoadError) as exc:
        raise DeliveryError(config.name, exc.args[0] if isinstance(exc, KeyError) else str(exc), retryable=False) from None
    auth: httpx.Auth | None = None
    try:
        base = reveal(secrets, config.url_secret) if config.url_secret else str(config.url)
        token = reveal(secrets, config.auth.token_secret) if isinstance(config.auth, BearerAuth) else None
        if isinstance(config.auth, BasicAuth):
            auth = httpx.BasicAuth(config.auth.username, reveal(secrets, config.auth.password_secret))
    except MissingSecret as exc:
        raise DeliveryError(config.name, str(exc), retryable=False) from None
    if config.url_secret and not _base_url(base):
        raise DeliveryError(
            config.name, f"secret {config.url_secret!r} is not an http(s) base URL without query or fragment", retryable=False
        )
    try:
        request = payload(summary, mapping, base_url=base)
    except CrmMappingError as exc:
        raise DeliveryError(config.name, str(exc), retryable=False) from None
    headers = {**{k.lower(): v for k, v in config.headers.items()}, **request.headers}
    if idempotency_key is not None:
        headers.setdefault("idempotency-key", idempotency_key)
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    response = await post(
        client, receiver=config.name, url=request.url, content=request.body, headers=headers, timeout_s=config.timeout_s,
        url_secret=config.url_secret, auth=auth, method=config.method or request.method,
    )  # fmt: skip
    return Delivery(config.name, "crm", status=response.status_code, elapsed_s=time.monotonic() - started)


def _base_url(text: str) -> bool:
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL:
        return False
    return url.scheme in ("http", "https") and bool(url.host) and not url.query and not url.fragment


def _default_mappings(config: CrmConfig) -> Mapping[str, CrmMapping]:
    if config._inline is not None:
        return {}
    from services.settings import Settings

    return load_mappings(Settings().notify.crm_mappings_dir)
