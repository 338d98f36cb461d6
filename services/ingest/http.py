"""The HTTP CloudEvents ingress: ``POST /events`` stores events in JetStream, then answers.

Sources that cannot publish to NATS post CloudEvents here, in any of the HTTP
binding's modes:

- binary: attributes in ``ce-*`` headers (percent-encoded), the data as body,
  ``Content-Type`` is the ``datacontenttype``;
- structured: one ``application/cloudevents+json`` event;
- batch: ``application/cloudevents-batch+json``, a JSON array of structured events.

An event is answered ``202`` only once JetStream has stored it on
``<prefix>.in.http`` (``Nats-Msg-Id`` derived from source and id, so a client's
retry of an event already stored is acknowledged as ``duplicate`` and not stored
twice). Nothing is stored from a batch with any bad event: the client fixes and
resends it whole, and dedup makes resending the good ones harmless.

Decisions, for clients:

- Authentication: ``Authorization: Bearer <secret>`` of one of ``http.keys``
  (:mod:`services.ingest.auth`). A key may submit only events whose ``source``
  matches one of its patterns (``403`` otherwise), until its ``expires_at``, at
  its ``rate_per_s`` with ``burst`` (``429`` with ``Retry-After``; a batch costs
  one token per event, paid after it is counted). A key with a ``webhook_secret``
  must also sign each request (Standard Webhooks headers). The key's id, never
  its secret, is in logs and on the stored event (extension ``listenpostkeyid``,
  set by the ingress: a client's own value is replaced). An ingress with no keys
  refuses to start unless ``http.allow_anonymous`` is set (and setting both is
  refused as contradictory): an open door must be a choice, not a default.
- No ``/docs``, ``/redoc`` or ``/openapi.json``: the ingress's only clients are
  machines, and the schema need not be served to strangers (``http_app.openapi()``
  gives it offline).
- JSON is nested at most :data:`MAX_JSON_DEPTH` levels in an event (deeper is
  ``400``), and an input's ``context`` is bounded by ``LISTENPOST_INGRESS__MAX_CONTEXT_*``
  (``400``), the same bounds the consumer applies to inputs from NATS.
- Errors are RFC 9457 ``application/problem+json``. ``400``: not a CloudEvent,
  a malformed one, or data its type's contract (or adapter) rejects. ``422``:
  a well-formed event of a type no one here handles (no adapter maps it): the
  request is understood, resending it will not help until an adapter exists.
  A batch answers ``400`` with one entry per bad event in ``errors`` (unless
  every entry shares another status, which is then used); an entry names the
  index, the id and the reason, never echoes the event, and every detail is cut at
  :data:`MAX_DETAIL_CHARS`. ``413``: a body over
  the limit (checked while reading, before it is all buffered) or an event too
  big for a NATS message. ``503`` (with ``Retry-After``): JetStream did not
  store the event; resend, dedup makes it safe. A full input stream is its own
  ``503`` (type ``input-full``, ``Retry-After: 30``), answered at once.
- Events are validated at the door, but stored as received (adapted types
  too): the consumer maps them again with the same adapters, so the raw event
  stays what is kept and replayed.

The app reads its dependencies from ``request.app.state.ingest`` (an
:class:`HttpIngest`); :func:`app_for` sets them and returns the app for a Serve
replica to serve (see its docstring for why deployments must not name the app).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import nats.errors
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse
from nats.js import JetStreamContext
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.events.binding import (
    BindingError,
    CloudEvent,
    MalformedEventError,
    NotACloudEventError,
    decode,
    encode_binary,
    parse_json,
)
from services.events.bounds import StreamFullError
from services.events.claimcheck import submitted_data
from services.events.jetstream import derive_msg_id, publish_event
from services.events.models import (
    AUDIO_SUBMITTED,
    DEFAULT_CONTEXT_LIMITS,
    AudioSubmitted,
    ContextLimitError,
    ContextLimits,
    check_context,
)
from services.ingest.adapters import AdapterError, AdapterSet, load_adapters, summarize
from services.ingest.auth import Caller, Keyring, RateLimited, SourceNotAllowed, Unauthorized, verify_webhook
from services.ingest.errors import IngestError
from services.ingest.live_ws import POLICY, UNAVAILABLE, WsClose, bearer, relay_stream
from services.settings import HttpSettings, NatsSettings, Settings, StreamsSettings

__all__ = [
    "BATCH_CONTENT_TYPE",
    "KEY_ID_EXTENSION",
    "MAX_DETAIL_CHARS",
    "MAX_JSON_DEPTH",
    "PROBLEM_CONTENT_TYPE",
    "STRUCTURED_CONTENT_TYPE",
    "HttpIngest",
    "HttpIngressConfigError",
    "Problem",
    "admit",
    "app_for",
    "http_app",
]

log = logging.getLogger(__name__)

STRUCTURED_CONTENT_TYPE: Final = "application/cloudevents+json"
BATCH_CONTENT_TYPE: Final = "application/cloudevents-batch+json"
PROBLEM_CONTENT_TYPE: Final = "application/problem+json"
PROBLEM_BASE: Final = "urn:listenpost:problem:"  # problem types name, not locate: no docs site to point at
SOURCE_TAG: Final = "http"  # the input subject's last token and the Nats-Msg-Id namespace
# Room for the NATS headers publish_event adds (Nats-Msg-Id) and the protocol's own framing.
_HEADER_OVERHEAD: Final = 128
_RETRY_AFTER_S: Final = 5
#: Extension attribute on a stored event: the id of the key that submitted it (for audit).
KEY_ID_EXTENSION: Final = "listenpostkeyid"
#: Deepest JSON nesting of an event's data (a batch entry: of the entry). Deeper input is
#: refused at the door, before adapters, CEL or a re-encode walk it.
MAX_JSON_DEPTH: Final = 64
#: Longest problem detail: details may quote client input (a bad attribute value), never at length.
MAX_DETAIL_CHARS: Final = 500
_MAX_ECHOED_ID_CHARS: Final = 200
_FULL_RETRY_AFTER_S: Final = 30  # a full input stream drains at captioning speed, not in seconds


class HttpIngressConfigError(IngestError, ValueError):
    """The HTTP ingress settings cannot make a safe ingress; the replica must not start."""


class Problem(IngestError):
    """An RFC 9457 problem: raised anywhere in a request, answered as ``application/problem+json``."""

    def __init__(
        self,
        status: int,
        slug: str | None,
        title: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        extensions: Mapping[str, Any] | None = None,
    ) -> None:
        detail = _clip(detail, MAX_DETAIL_CHARS)
        super().__init__(detail)
        self.status = status
        # None: the status code says it all (RFC 9457's "about:blank").
        self.type = "about:blank" if slug is None else PROBLEM_BASE + slug
        self.title = title
        self.detail = detail
        self.headers = dict(headers or {})
        self.extensions = dict(extensions or {})

    def body(self, instance: str) -> dict[str, Any]:
        return {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "instance": instance,
            **self.extensions,
        }


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _malformed(detail: str) -> Problem:
    return Problem(400, "malformed-event", "Malformed CloudEvent", detail)


def _invalid_data(detail: str) -> Problem:
    return Problem(400, "invalid-data", "Event data rejected", detail)


def _unknown_type(event_type: str) -> Problem:
    return Problem(
        422,
        "unknown-event-type",
        "Unknown event type",
        f"no handler for event type {event_type!r}: send {AUDIO_SUBMITTED} or a type a source adapter maps",
    )


def _too_large(detail: str) -> Problem:
    return Problem(413, "too-large", "Content too large", detail)


_CHALLENGE: Final = 'Bearer realm="listenpost"'


def _unauthorized(exc: Unauthorized) -> Problem:
    challenge = f'{_CHALLENGE}, error="invalid_token"' if exc.invalid_token else _CHALLENGE
    return Problem(401, "unauthorized", "Unauthorized", exc.detail, headers={"WWW-Authenticate": challenge})


def _forbidden_source(exc: SourceNotAllowed) -> Problem:
    return Problem(403, "forbidden-source", "Source not allowed for this key", str(exc))


def _rate_limited(exc: RateLimited) -> Problem:
    return Problem(
        429, "rate-limited", "Too many requests", str(exc), headers={"Retry-After": str(exc.retry_after_s)}
    )


@dataclass
class HttpIngest:
    """What the routes need: JetStream, the settings, the source adapters."""

    js: JetStreamContext
    nats: NatsSettings
    http: HttpSettings
    adapters: AdapterSet = field(default_factory=AdapterSet)
    context_limits: ContextLimits = DEFAULT_CONTEXT_LIMITS
    streams: StreamsSettings = field(default_factory=StreamsSettings)

    def __post_init__(self) -> None:
        if not self.http.keys and not self.http.allow_anonymous:
            raise HttpIngressConfigError(
                "the HTTP ingress has no API keys: set LISTENPOST_HTTP__KEYS (a JSON list of "
                '{"id", "secret", "sources"}), or LISTENPOST_HTTP__ALLOW_ANONYMOUS=true to accept '
                "unauthenticated events on purpose"
            )
        if self.http.keys and self.http.allow_anonymous:
            raise HttpIngressConfigError(
                "http.allow_anonymous is set together with http.keys: choose one "
                "(keys would be pointless if anonymous requests were accepted)"
            )
        self._keyring = Keyring(self.http.keys, time.monotonic())
        self._webhook_keys = {key.id: key.webhook_key() for key in self.http.keys}
        for key in self._keyring.expired(datetime.now(UTC)):
            log.warning("HTTP API key %r expired at %s: requests with it are refused", key.id, key.expires_at)
        log.info(
            "HTTP ingress: %s",
            f"{len(self._keyring)} API key(s): " + ", ".join(repr(k.id) for k in self.http.keys)
            if self.http.keys
            else "anonymous access, any source",
        )

    @classmethod
    def from_settings(cls, js: JetStreamContext, settings: Settings, adapters: AdapterSet | None = None) -> HttpIngest:
        """Build from the one settings object (``http``, ``ingress``, ``adapters`` unless given)."""
        if adapters is None:
            adapter_settings = settings.adapters
            adapters = load_adapters(adapter_settings.directory) if adapter_settings.enabled else AdapterSet()
        return cls(
            js=js,
            nats=settings.nats,
            http=settings.http,
            adapters=adapters,
            context_limits=ContextLimits.from_settings(settings.ingress),
            streams=settings.streams,
        )

    @property
    def subject(self) -> str:
        return self.nats.subject("in", SOURCE_TAG)

    def authenticate(self, authorization: str | None) -> Caller:
        """The caller of a request (before its body is read), rate limit included: 401 or 429."""
        if not self.http.keys:
            return Caller(key=None)  # allow_anonymous, checked at construction
        try:
            caller = self._keyring.identify(authorization, datetime.now(UTC))
            caller.throttle(time.monotonic())
        except Unauthorized as exc:
            raise _unauthorized(exc) from None
        except RateLimited as exc:
            raise _rate_limited(exc) from None
        return caller

    def check_signature(self, caller: Caller, body: bytes, headers: Mapping[str, str]) -> None:
        """A key with a webhook secret signs each request: check it over the body as received."""
        key = self._webhook_keys.get(caller.key_id or "")
        if key is None:
            return
        try:
            verify_webhook(key, body, headers, time.time(), self.http.webhook_tolerance_s)
        except Unauthorized as exc:
            raise _unauthorized(exc) from None

    def nats_connected(self) -> bool:
        # JetStreamContext exposes no public view of its connection's state.
        connection = getattr(self.js, "_nc", None)
        return bool(connection is not None and connection.is_connected)


# --- reading a request ---------------------------------------------------------------


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it passes ``limit`` bytes (never buffered whole first)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise Problem(400, "bad-request", "Bad request", f"invalid Content-Length {declared!r}") from None
        if length > limit:
            raise _too_large(f"body of {length} bytes exceeds the limit of {limit} bytes" + _CLAIM_CHECK)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(f"body exceeds the limit of {limit} bytes" + _CLAIM_CHECK)
    return bytes(body)


_CLAIM_CHECK: Final = (
    "; send large audio as a reference (data.audio.uri or data.audio.object in the NATS object store), not inline"
)


def binding_headers(raw: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
    """The ``ce-*`` and ``Content-Type`` headers, as the event binding reads them."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in raw:
        name = raw_name.decode("latin-1").lower()
        if not (name.startswith("ce-") or name == "content-type"):
            continue
        if name in headers:
            raise _malformed(f"header {name!r} is given more than once")
        try:
            # The binding spec wants non-ASCII percent-encoded; raw bytes would be guessed at.
            headers[name] = raw_value.decode("ascii")
        except UnicodeDecodeError:
            raise _malformed(f"header {name!r} has non-ASCII bytes: percent-encode its UTF-8 value") from None
    return headers


def decode_single(body: bytes, headers: Mapping[str, str]) -> CloudEvent:
    """Binary or structured mode, with the same strict reading as events from NATS."""
    try:
        return decode(body, headers)
    except NotACloudEventError as exc:
        raise _malformed(
            f"{exc}; send binary mode (ce-specversion, ce-id, ce-source, ce-type headers) "
            f"or structured mode ({STRUCTURED_CONTENT_TYPE})"
        ) from exc
    except BindingError as exc:
        raise _malformed(str(exc)) from exc


def split_batch(body: bytes, max_events: int) -> list[Any]:
    try:
        items = parse_json(body, "batch body is not valid JSON")  # too deep, lone surrogates: refused too
    except MalformedEventError as exc:
        raise _malformed(str(exc)) from exc
    if not isinstance(items, list):
        raise _malformed(f"a {BATCH_CONTENT_TYPE} body is a JSON array, not {type(items).__name__}")
    if len(items) > max_events:
        raise _too_large(f"batch of {len(items)} events exceeds the limit of {max_events} events")
    return items


def decode_batch_item(item: Any) -> CloudEvent:
    if not isinstance(item, dict):
        raise _malformed(f"batch entries are JSON objects (structured events), not {type(item).__name__}")
    check_depth(item, "the event")
    body = json.dumps(item).encode()
    return decode_single(body, {"content-type": STRUCTURED_CONTENT_TYPE})


def check_depth(value: Any, what: str) -> None:
    """Refuse JSON nested deeper than :data:`MAX_JSON_DEPTH`; iterative, so a deep value cannot recurse."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise _malformed(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep")
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


# --- admitting an event ----------------------------------------------------------------


def admit(event: CloudEvent, adapters: AdapterSet, limits: ContextLimits = DEFAULT_CONTEXT_LIMITS) -> None:
    """Refuse at the door what the pipeline could never process."""
    event_type = event.get_type()
    if event_type == AUDIO_SUBMITTED:
        try:
            submitted = AudioSubmitted.model_validate(submitted_data(event))
        except BindingError as exc:
            raise _invalid_data(str(exc)) from exc
        except ValidationError as exc:
            raise _invalid_data(f"invalid {AUDIO_SUBMITTED} data: {summarize(exc)}") from exc
    else:
        adapter = adapters.match(event_type, event.get_source())
        if adapter is None:
            raise _unknown_type(event_type)
        try:
            _, submitted = adapter.adapt(event)
        except AdapterError as exc:
            raise _invalid_data(str(exc)) from exc
    try:
        check_context(submitted.context, limits)
    except ContextLimitError as exc:
        raise _invalid_data(f"invalid {AUDIO_SUBMITTED} data: {exc}") from exc


def stamp(event: CloudEvent, caller: Caller) -> None:
    """Record on the event which key submitted it; a client's own value for the attribute is dropped."""
    attributes = event.get_attributes()  # the SDK event's own dict
    attributes.pop(KEY_ID_EXTENSION, None)
    if caller.key_id is not None:
        attributes[KEY_ID_EXTENSION] = caller.key_id


def check_size(event: CloudEvent, limit: int) -> None:
    body, headers = encode_binary(event)
    size = len(body) + sum(len(k) + len(v) + 4 for k, v in headers.items()) + _HEADER_OVERHEAD
    if size > limit:
        raise _too_large(
            f"event {event.get_id()!r} needs about {size} bytes as a NATS message, over the limit of {limit}"
            + _CLAIM_CHECK
        )


# --- storing ------------------------------------------------------------------------------


_STORE_ERRORS = (nats.errors.Error, asyncio.TimeoutError, OSError)


async def store(ingest: HttpIngest, event: CloudEvent) -> dict[str, Any]:
    """Publish to JetStream and await its ack; ``duplicate`` when the dedup window already had it."""
    msg_id = derive_msg_id(SOURCE_TAG, event.get_source(), event.get_id())
    # Retries inside publish_event end with the client's patience: it resends on 503, dedup makes that safe.
    limit = ingest.http.publish_timeout_s
    stored_new = await publish_event(
        ingest.js, ingest.subject, event, msg_id=msg_id, timeout_s=limit, retry_for_s=limit
    )
    return {"id": event.get_id(), "duplicate": not stored_new}


def _unavailable(exc: BaseException, accepted: list[dict[str, Any]] | None = None) -> Problem:
    extensions = {"accepted": accepted} if accepted else None
    return Problem(
        503,
        "unavailable",
        "Event store unavailable",
        f"the event was not stored ({type(exc).__name__}: {exc or 'no detail'}); resend it: "
        "events already stored are recognised by source and id and not stored twice",
        headers={"Retry-After": str(_RETRY_AFTER_S)},
        extensions=extensions,
    )


def _input_full(exc: StreamFullError, accepted: list[dict[str, Any]] | None = None) -> Problem:
    # Its own type and a longer wait than a blip: the Ingress must first work through what is queued.
    return Problem(
        503,
        "input-full",
        "Input stream full",
        f"the input stream is full ({exc.limit}): the event was not stored; resend it after Retry-After seconds",
        headers={"Retry-After": str(_FULL_RETRY_AFTER_S)},
        extensions={"accepted": accepted} if accepted else None,
    )


# --- the app ----------------------------------------------------------------------------------

http_app = FastAPI(
    title="listenpost ingress",
    description="CloudEvents in over HTTP (binary, structured and batch modes), stored in NATS JetStream.",
    version="1",
    # Not served: the schema is for integrators (http_app.openapi()), not for whoever can reach the port.
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)


def app_for(ingest: HttpIngest | None) -> FastAPI:
    """The app with its dependencies set: what a Serve replica's ``__serve_build_asgi_app__`` returns.

    A function, not the app object, is what deployment code should refer to:
    Ray cloudpickles deployment classes by value, and with them any app object
    they name, which Starlette's ``State`` cannot survive (it recurses in
    ``__getattr__`` on unpickling). ``@serve.ingress(http_app)`` fails the same way.
    """
    http_app.state.ingest = ingest  # None: every request answers 503 "not configured"
    return http_app


def _ingest(request: Request) -> HttpIngest:
    ingest = getattr(request.app.state, "ingest", None)
    if ingest is None:
        raise Problem(
            503, "not-configured", "Ingress not configured", "the HTTP ingress is not enabled on this replica"
        )
    return ingest


@http_app.exception_handler(Problem)
async def _problem_response(request: Request, problem: Problem) -> JSONResponse:
    instance = f"urn:uuid:{uuid.uuid4()}"  # quoted in logs too, so a client's report can be found
    level = logging.WARNING if problem.status >= 500 else logging.INFO
    # %r: the path and the detail may carry client text; repr escapes newlines and
    # terminal escapes, so no client can write a line of its own into the log.
    log.log(
        level,
        "%s %r -> %s %s (%s, key %s): %r",
        request.method, request.url.path, problem.status, problem.type, instance,
        _key_label(getattr(request.state, "key_id", None)), problem.detail,
    )  # fmt: skip
    return JSONResponse(
        problem.body(instance), status_code=problem.status, headers=problem.headers, media_type=PROBLEM_CONTENT_TYPE
    )


@http_app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    # Unknown routes and methods answer in the same format as everything else.
    problem = Problem(exc.status_code, None, str(exc.detail), str(exc.detail), headers=exc.headers)
    return await _problem_response(request, problem)


@http_app.exception_handler(Exception)
async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %r failed", request.method, request.url.path, exc_info=exc)
    problem = Problem(500, None, "Internal Server Error", "the event may not have been stored; resend it")
    return await _problem_response(request, problem)


@http_app.get("/healthz")
async def healthz(request: Request) -> dict[str, str]:
    """Ready when this replica can store events (for load balancers; no key needed)."""
    ingest = _ingest(request)
    if not ingest.nats_connected():
        raise Problem(503, "unavailable", "Event store unavailable", "not connected to NATS")
    return {"status": "ok"}


@http_app.post(
    "/events",
    status_code=202,
    responses={
        202: {"description": "Stored in JetStream: `{accepted: [{id, duplicate}]}`"},
        400: {"description": "Malformed event or rejected data", "content": {PROBLEM_CONTENT_TYPE: {}}},
        401: {"description": "Missing, invalid or expired API key, or a bad signature", "content": {PROBLEM_CONTENT_TYPE: {}}},
        403: {"description": "The key may not submit for the event's source", "content": {PROBLEM_CONTENT_TYPE: {}}},
        413: {"description": "Body or event too large", "content": {PROBLEM_CONTENT_TYPE: {}}},
        415: {"description": "Unsupported CloudEvents format", "content": {PROBLEM_CONTENT_TYPE: {}}},
        422: {"description": "Event type not handled", "content": {PROBLEM_CONTENT_TYPE: {}}},
        429: {"description": "The key's rate limit; see Retry-After", "content": {PROBLEM_CONTENT_TYPE: {}}},
        503: {"description": "Not stored; retry", "content": {PROBLEM_CONTENT_TYPE: {}}},
    },
)
async def post_events(request: Request) -> JSONResponse:
    """Accept CloudEvents (binary, structured or batch mode); answer once JetStream has stored them."""
    ingest = _ingest(request)
    caller = ingest.authenticate(request.headers.get("authorization"))
    request.state.key_id = caller.key_id
    media_type = _media_type(request.headers.get("content-type"))
    if media_type == BATCH_CONTENT_TYPE:
        body = await read_limited(request, ingest.http.max_batch_bytes)
        ingest.check_signature(caller, body, request.headers)
        items = split_batch(body, ingest.http.max_batch_events)
        caller.charge(len(items) - 1)  # the first event was paid at the door
        events = _admit_batch(ingest, caller, items)
    elif media_type.startswith("application/cloudevents") and media_type != STRUCTURED_CONTENT_TYPE:
        raise Problem(
            415,
            "unsupported-media-type",
            "Unsupported CloudEvents format",
            f"{media_type!r} is not read: use {STRUCTURED_CONTENT_TYPE}, {BATCH_CONTENT_TYPE} or binary mode",
        )
    else:
        body = await read_limited(request, ingest.http.max_body_bytes)
        ingest.check_signature(caller, body, request.headers)
        event = decode_single(body, binding_headers(request.scope["headers"]))
        check_depth(event.get_data(), "the event's data")
        _admit_one(ingest, caller, event)
        events = [event]
    accepted = await _store_all(ingest, events)
    duplicates = sum(1 for a in accepted if a["duplicate"])
    log.info("stored %d event(s) (%d duplicate) from key %s", len(accepted), duplicates, _key_label(caller.key_id))
    return JSONResponse({"accepted": accepted}, status_code=202)


@http_app.websocket("/streams/{stream_id}")
async def stream_socket(websocket: WebSocket, stream_id: str) -> None:
    """Live audio over a WebSocket, relayed to the stream's NATS subjects (services/ingest/live_ws.py)."""
    ingest: HttpIngest | None = websocket.app.state.ingest
    if ingest is None or not ingest.streams.enabled:
        await websocket.close(code=UNAVAILABLE, reason="live streams are not enabled here")
        return
    authorization, subprotocol = bearer(websocket)
    try:
        caller = ingest.authenticate(authorization)
    except Problem as exc:
        await websocket.close(code=POLICY, reason=exc.detail[:120])
        return

    def check_source(source: str) -> None:
        try:
            caller.check_source(source)
        except SourceNotAllowed as exc:
            raise WsClose(POLICY, str(exc)) from None

    log.info("live stream %r over WebSocket from key %s", stream_id, _key_label(caller.key_id))
    await relay_stream(websocket, stream_id, js=ingest.js, nats=ingest.nats, max_chunk_bytes=ingest.streams.max_chunk_bytes,
                       check_source=check_source, subprotocol=subprotocol)  # fmt: skip


def _key_label(key_id: str | None) -> str:
    return repr(key_id) if key_id is not None else "none"


def _admit_one(ingest: HttpIngest, caller: Caller, event: CloudEvent) -> None:
    """Source first: a key learns nothing about what adapters make of another's events."""
    try:
        caller.check_source(event.get_source())
    except SourceNotAllowed as exc:
        raise _forbidden_source(exc) from None
    admit(event, ingest.adapters, ingest.context_limits)
    stamp(event, caller)
    check_size(event, ingest.nats.max_payload_bytes)


def _admit_batch(ingest: HttpIngest, caller: Caller, items: list[Any]) -> list[CloudEvent]:
    events: list[CloudEvent] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            event = decode_batch_item(item)
            _admit_one(ingest, caller, event)
        except Problem as problem:
            # Index, id and reason only: the entry never echoes the event (its data may be secrets or megabytes).
            entry: dict[str, Any] = {"pointer": f"/{index}"}
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                entry["id"] = _clip(item["id"], _MAX_ECHOED_ID_CHARS)
            entry.update({"type": problem.type, "status": problem.status, "detail": problem.detail})
            errors.append(entry)
        else:
            events.append(event)
    if errors:
        statuses = {e["status"] for e in errors}
        status = statuses.pop() if len(statuses) == 1 else 400
        count = len(errors)
        raise Problem(
            status,
            "invalid-batch",
            "Invalid events in batch",
            f"{count} of {len(items)} event{'s' if len(items) != 1 else ''} rejected; nothing was stored",
            extensions={"errors": errors},
        )
    return events


async def _store_all(ingest: HttpIngest, events: list[CloudEvent]) -> list[dict[str, Any]]:
    # Concurrent publishes share the connection's round trips; every ack is still awaited.
    results = await asyncio.gather(*(store(ingest, event) for event in events), return_exceptions=True)
    accepted = [r for r in results if isinstance(r, dict)]
    failures = [r for r in results if isinstance(r, BaseException)]
    for failure in failures:
        if not isinstance(failure, (*_STORE_ERRORS, StreamFullError)):
            raise failure
    if full := [f for f in failures if isinstance(f, StreamFullError)]:
        log.warning("input stream full: %d of %d events refused (%s)", len(failures), len(events), full[0].limit)
        raise _input_full(full[0], accepted)
    if failures:
        log.warning("could not store %d of %d events: %r", len(failures), len(events), failures[0])
        raise _unavailable(failures[0], accepted)
    return accepted
