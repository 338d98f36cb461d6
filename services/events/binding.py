"""CloudEvents over NATS: the NATS protocol binding, binary and structured modes.

The ``cloudevents`` SDK 2.x (``cloudevents.core``, 2.2 pinned by pyproject) has
HTTP, Kafka, AMQP and RabbitMQ bindings but none for NATS. This module maps the
SDK's v1 event to NATS messages per ``cloudevents/bindings/nats-protocol-binding.md``:

- binary mode: every attribute, ``datacontenttype`` included, is a ``ce-<name>``
  header with a percent-encoded value; the data is the body;
- structured mode: the body is the JSON event format, with header
  ``content-type: application/cloudevents+json; charset=utf-8``.

What the SDK provides, and where we deviate from it:

- ``cloudevents.core.v1.event.CloudEvent`` holds events and validates the core
  attributes. It stamps a missing ``time`` with "now", so on decode we drop it
  again (a receiver must not see a time the producer never set), and its
  extension-name check lacks the spec's 20-character limit, checked here.
- ``cloudevents.core.formats.json.JSONFormat`` writes and reads structured
  bodies (``data_base64`` for bytes) and tells JSON content types apart.
- ``cloudevents.core.bindings.common.decode_header_value`` percent-decodes header
  values and parses ``time``; we first check strictly that the bytes are UTF-8,
  which the spec requires and the SDK's lenient ``unquote`` does not.
  Its ``encode_header_value`` is not used: it escapes every reserved character
  ('/' and ':' included), which Go SDK readers, which never percent-decode,
  would take literally. We escape only what the spec requires (space, '"', '%'
  and anything outside printable ASCII), as the SDK's own HTTP binding does.

Reading accepts the Go SDK's messages (``ce-specversion`` marks binary mode,
``ce-datacontenttype``; structured bodies sent with no headers at all) and the
Java SDK's (``datacontenttype`` in the plain ``content-type`` header).

In memory, data under a JSON ``datacontenttype`` is the decoded JSON value (dict,
list, str, number); other binary-mode data stays ``bytes``. Extension values
read from binary mode are strings: headers carry no types.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, cast
from urllib.parse import quote, unquote_to_bytes

from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings.common import decode_header_value
from cloudevents.core.exceptions import CloudEventValidationError
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import OPTIONAL_ATTRIBUTES, REQUIRED_ATTRIBUTES, CloudEvent

from services.events.errors import EventsError

__all__ = [
    "parse_json",
    "STRUCTURED_CONTENT_TYPE",
    "BindingError",
    "CloudEvent",
    "MalformedEventError",
    "NotACloudEventError",
    "decode",
    "encode_binary",
    "encode_structured",
    "event_attributes",
    "event_data_json",
    "new_event",
]

STRUCTURED_CONTENT_TYPE: Final = "application/cloudevents+json; charset=utf-8"

_PREFIX: Final = "ce-"
_FORMAT: Final = JSONFormat()
_CORE_ATTRIBUTES: Final = frozenset(REQUIRED_ATTRIBUTES + OPTIONAL_ATTRIBUTES)
_EXTENSION_NAME: Final = re.compile(r"[a-z0-9]{1,20}")
# Binding spec 3.1.3.2: printable ASCII passes unescaped except space, '"' and '%'.
_HEADER_SAFE: Final = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in ' "%')
_QUOTED_PAIR: Final = re.compile(r"\\(.)")
_TOO_DEEP: Final = "arrays and objects nested too deeply to read"


class BindingError(EventsError, ValueError):
    """A NATS message could not be mapped to or from a CloudEvent."""


class NotACloudEventError(BindingError):
    """The message is in neither content mode, or lacks required attributes."""


class MalformedEventError(BindingError):
    """The message claims to be a CloudEvent but breaks the spec."""


def new_event(
    type: str,
    source: str,
    data: Any,
    *,
    id: str | None = None,
    subject: str | None = None,
    extensions: Mapping[str, Any] | None = None,
    datacontenttype: str | None = "application/json",
    time: datetime | None = None,
) -> CloudEvent:
    """Build a CloudEvent 1.0; ``id`` defaults to a UUID4 and ``time`` to now (UTC)."""
    attributes: dict[str, Any] = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()) if id is None else id,
        "source": source,
        "type": type,
        "time": datetime.now(UTC) if time is None else time,
    }
    if datacontenttype is not None:
        attributes["datacontenttype"] = datacontenttype
    if subject is not None:
        attributes["subject"] = subject
    for name, value in (extensions or {}).items():
        if name in _CORE_ATTRIBUTES:
            raise MalformedEventError(f"extension attribute {name!r} clashes with a core attribute")
        _check_extension_names([name])
        # Callers pass optional context (callid, ...) as None: an absent attribute says that.
        if value is not None:
            attributes[name] = value
    return _construct(lambda: CloudEvent(attributes, data), had_time=True)


def encode_binary(event: BaseCloudEvent) -> tuple[bytes, dict[str, str]]:
    """Binary mode: ``(body, headers)`` with one ``ce-`` header per attribute."""
    attributes = event.get_attributes()
    _check_extension_names(attributes)
    headers = {_PREFIX + name: _encode_header_value(value) for name, value in attributes.items() if value is not None}
    return _encode_data(event.get_data(), attributes.get("datacontenttype")), headers


def encode_structured(event: BaseCloudEvent) -> tuple[bytes, dict[str, str]]:
    """Structured mode: the JSON event format as body (``data_base64`` for bytes)."""
    _check_extension_names(event.get_attributes())
    return _FORMAT.write(event), {"content-type": STRUCTURED_CONTENT_TYPE}


def decode(body: bytes, headers: Mapping[str, str] | None) -> CloudEvent:
    """Read a CloudEvent from a NATS message in either content mode."""
    # NATS header names are case-insensitive.
    lowered = {name.lower(): value for name, value in (headers or {}).items()}
    content_type = lowered.get("content-type")
    if content_type is not None and content_type.strip().lower().startswith("application/cloudevents"):
        return _decode_structured(body, content_type)
    if _PREFIX + "specversion" in lowered:
        return _decode_binary(body, lowered)
    # The Go SDK (and any publisher from before NATS 2.2 had headers) sends
    # structured mode as a bare JSON body.
    if content_type is None and body.lstrip().startswith(b"{") and b'"specversion"' in body:
        return _decode_structured(body, None)
    raise NotACloudEventError(
        "not a CloudEvent: no 'ce-specversion' header (binary mode) "
        "and no 'application/cloudevents' content type (structured mode)"
    )


def event_data_json(event: BaseCloudEvent) -> Any:
    """The event's data as a JSON value, whether it is held as bytes or already decoded."""
    data = event.get_data()
    # A str under a JSON content type is an already decoded JSON string, not JSON text.
    if isinstance(data, str) and _is_json(event.get_datacontenttype()):
        return data
    if isinstance(data, (bytes, bytearray, str)):
        return parse_json(data, f"data of event {event.get_id()!r} is not JSON")
    return data


def event_attributes(event: BaseCloudEvent) -> dict[str, Any]:
    """All attributes, extensions included, as a new dict (``time`` stays a datetime)."""
    return dict(event.get_attributes())


def _decode_structured(body: bytes, content_type: str | None) -> CloudEvent:
    media_type = content_type.split(";", 1)[0].strip().lower() if content_type else _FORMAT.CONTENT_TYPE
    if media_type != _FORMAT.CONTENT_TYPE:
        raise MalformedEventError(
            f"unsupported structured content type {content_type!r}: only {_FORMAT.CONTENT_TYPE} is read"
        )
    parsed = parse_json(body, "structured body is not valid JSON")
    if not isinstance(parsed, dict):
        raise MalformedEventError(f"structured body must be a JSON object, not {type(parsed).__name__}")
    attributes = {name: value for name, value in parsed.items() if name not in ("data", "data_base64")}
    _check_attributes(attributes, "structured")
    if "data_base64" in parsed:
        # The SDK's b64decode drops stray characters silently; corrupt audio must not pass.
        try:
            base64.b64decode(parsed["data_base64"], validate=True)
        except (ValueError, TypeError) as exc:
            raise MalformedEventError("data_base64 is not valid base64") from exc
    # JSONFormat parses the body again: the first parse is for errors that say what is wrong.
    return _construct(lambda: cast(CloudEvent, _FORMAT.read(CloudEvent, body)), had_time="time" in attributes)


def _decode_binary(body: bytes, headers: Mapping[str, str]) -> CloudEvent:
    attributes: dict[str, Any] = {}
    for header, raw in headers.items():
        if header.startswith(_PREFIX):
            name = header.removeprefix(_PREFIX)
            attributes[name] = _decode_header_value(name, raw)
    if "datacontenttype" not in attributes and "content-type" in headers:
        # The Java SDK puts datacontenttype in content-type, as the HTTP binding does.
        attributes["datacontenttype"] = headers["content-type"]
    _check_attributes(attributes, "binary")
    data = _decode_data(body, attributes.get("datacontenttype"))
    return _construct(lambda: CloudEvent(attributes, data), had_time="time" in attributes)


def _check_attributes(attributes: Mapping[str, Any], mode: str) -> None:
    missing = [name for name in REQUIRED_ATTRIBUTES if name not in attributes]
    if missing:
        raise NotACloudEventError(f"{mode}-mode message is missing required attribute(s): {', '.join(missing)}")
    if attributes["specversion"] != "1.0":
        raise MalformedEventError(f"unsupported specversion {attributes['specversion']!r}: only '1.0' is read")
    _check_extension_names(attributes)


def _check_extension_names(names: Iterable[str]) -> None:
    for name in names:
        if name not in _CORE_ATTRIBUTES and not _EXTENSION_NAME.fullmatch(name):
            raise MalformedEventError(
                f"extension attribute {name!r} is invalid: names are lower-case letters and digits, at most 20 characters"
            )


def _construct(make: Callable[[], CloudEvent], *, had_time: bool) -> CloudEvent:
    try:
        event = make()
    except CloudEventValidationError as exc:
        details = "; ".join(str(error) for errors in exc.errors.values() for error in errors)
        raise MalformedEventError(f"invalid CloudEvent: {details}") from exc
    except (ValueError, TypeError) as exc:  # a bad 'time' or data_base64 inside JSONFormat.read
        raise MalformedEventError(f"invalid CloudEvent: {exc}") from exc
    except RecursionError as exc:  # JSONFormat.read parses the body again, a few frames deeper than we did
        raise MalformedEventError(f"structured body is not valid JSON: {_TOO_DEEP}") from exc
    if not had_time:
        # get_attributes() is the SDK event's own dict: this undoes its made-up time.
        event.get_attributes().pop("time", None)
    return event


def _encode_header_value(value: Any) -> str:
    if isinstance(value, datetime):
        text = _rfc3339(value)
    elif isinstance(value, bool):  # canonical CloudEvents booleans, not Python's "True"
        text = "true" if value else "false"
    elif isinstance(value, (bytes, bytearray)):
        text = base64.b64encode(value).decode("ascii")
    else:
        text = str(value)
    return quote(text, safe=_HEADER_SAFE)


def _decode_header_value(name: str, raw: str) -> Any:
    value = raw.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        # Older spec versions allowed RFC 7230 quoted strings; readers must still accept them.
        value = _QUOTED_PAIR.sub(r"\1", value[1:-1])
    try:
        unquote_to_bytes(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedEventError(f"header 'ce-{name}' is not percent-encoded UTF-8: {raw!r}") from exc
    try:
        return decode_header_value(name, value)
    except ValueError as exc:
        raise MalformedEventError(f"header 'ce-{name}' has an invalid value {raw!r}: {exc}") from exc


def _encode_data(data: Any, content_type: str | None) -> bytes:
    if data is None:
        return b""
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    # A JSON value, a str included, is serialised as structured mode would hold
    # it, so both modes carry the same value (the SDK's write_data differs).
    if content_type is None or _is_json(content_type):
        return json.dumps(data, ensure_ascii=False, default=_json_default).encode("utf-8")
    if isinstance(data, str):
        return data.encode("utf-8")
    raise MalformedEventError(
        f"data of type {type(data).__name__} needs a JSON datacontenttype or bytes, not {content_type!r}"
    )


def _decode_data(body: bytes, content_type: str | None) -> Any:
    if not body:
        return None
    if content_type is None or not _is_json(content_type):
        return bytes(body)
    return parse_json(body, f"data is not valid JSON for datacontenttype {content_type!r}")


def parse_json(text: str | bytes | bytearray, refusal: str) -> Any:
    """``json.loads``, with every way the text can be unreadable raised as one MalformedEventError
    that starts with ``refusal``.

    Two of them are not ValueErrors: nesting past the interpreter's recursion limit (about
    1,000 levels, less the caller's own stack) raises RecursionError; and a lone UTF-16
    surrogate (``"\\ud800"``, or its bytes in the body) parses into a str that no UTF-8
    encoder takes, so the event could never be stored, forwarded or logged as JSON.
    """
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise MalformedEventError(f"{refusal}: {exc}") from exc
    except RecursionError as exc:
        raise MalformedEventError(f"{refusal}: {_TOO_DEEP}") from exc
    # In ASCII text only a \u escape can bring one in (json.loads also reads UTF-16 and 32 bodies,
    # and passes encoded surrogates through): skip the check for the common plain-ASCII body.
    if isinstance(text, str) or b"\\u" in text or not text.isascii():
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            surrogate = f"\\u{ord(exc.object[exc.start]):04x}"
            raise MalformedEventError(
                f"{refusal}: it holds a lone UTF-16 surrogate ({surrogate}), which is no Unicode character"
            ) from exc
        except RecursionError as exc:
            raise MalformedEventError(f"{refusal}: {_TOO_DEEP}") from exc
    return value


def _is_json(content_type: str | None) -> bool:
    # The JSON event format reads an absent datacontenttype as application/json.
    if content_type is None:
        return True
    return _FORMAT.JSON_CONTENT_TYPE_PATTERN.match(content_type.strip().lower()) is not None


def _rfc3339(moment: datetime) -> str:
    text = moment.isoformat()
    return text.removesuffix("+00:00") + "Z" if text.endswith("+00:00") else text


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return _rfc3339(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
