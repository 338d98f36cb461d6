"""Claim check: what is too large for a NATS message rides beside the event, not inside it.

Inputs. An ``audio.submitted`` event may leave ``data.audio`` out and name the audio with the
CloudEvents ``dataref`` extension instead: ``nats-object://BUCKET/NAME`` for an object in
the NATS object store, any other URI for a file or an http(s) URL (fetched like
``audio.uri``). Both doors (NATS and HTTP) read it the same way.

Outputs. An event whose encoded message would not fit ``max_payload_bytes`` (a 4-hour
stereo call's ``audio.captioned`` is ~3.8 MB against NATS's 1 MiB) is published with no
data and a ``dataref`` naming an object that holds the data, as :func:`by_reference`
makes it; every reader gets the data back with :func:`resolve_data`, which reads only from
the buckets it is given (a forged ``dataref`` cannot make a consumer read another bucket).
The object's name derives from the event's ``Nats-Msg-Id``, so a redelivery rewrites the same
object instead of leaving a second one. Dead letters use :func:`put_object` the same way for
originals too large to embed (see :mod:`services.events.deadletter`).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Collection
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from cloudevents.core.base import BaseCloudEvent
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import ObjectStoreConfig, StorageType
from nats.js.errors import APIError, BucketNotFoundError, NotFoundError, ObjectDeletedError, ObjectNotFoundError

from services.events.binding import CloudEvent, MalformedEventError, encode_binary, event_data_json, new_event
from services.events.bounds import StreamFullError, stream_full
from services.events.errors import EventsError

log = logging.getLogger(__name__)

#: The ``dataref`` scheme of an object in the NATS object store.
OBJECT_SCHEME = "nats-object"
#: Room for the headers publish_event adds (``Nats-Msg-Id``) and the protocol's framing.
HEADER_ROOM = 128


class ClaimCheckError(EventsError):
    """Data named by a ``dataref`` cannot be read: a bucket not allowed, a missing object, a fault."""


class ClaimCheckUnavailable(ClaimCheckError):
    """The object store did not answer: a transient fault, worth retrying."""


def object_dataref(bucket: str, name: str) -> str:
    """The ``dataref`` of an object in the NATS object store."""
    return f"{OBJECT_SCHEME}://{bucket}/{quote(name)}"


def parse_object_dataref(dataref: str) -> tuple[str, str] | None:
    """``(bucket, name)`` of a ``nats-object://`` reference; None for any other URI."""
    parsed = urlsplit(dataref)
    if parsed.scheme != OBJECT_SCHEME:
        return None
    return parsed.netloc, unquote(parsed.path.lstrip("/"))


def audio_from_dataref(dataref: str) -> dict[str, Any]:
    """The ``dataref`` extension as an ``audio`` location (``object`` or ``uri``)."""
    found = parse_object_dataref(dataref)
    if found is not None:
        return {"object": {"bucket": found[0], "name": found[1]}}
    return {"uri": dataref}


def submitted_data(event: BaseCloudEvent) -> Any:
    """The event's data, with ``audio`` taken from ``dataref`` when the data has none.

    Raises :class:`~services.events.binding.BindingError` when the data is not JSON.
    """
    data = event_data_json(event)
    dataref = event.get_attributes().get("dataref")
    if isinstance(data, dict) and "audio" not in data and isinstance(dataref, str):
        data = {**data, "audio": audio_from_dataref(dataref)}
    return data


# --- large outputs ------------------------------------------------------------------------------


def message_size(body: bytes, headers: dict[str, str]) -> int:
    """Bytes a NATS message with these headers and body counts against ``max_payload``."""
    header_block = len("NATS/1.0\r\n\r\n") + sum(len(k) + len(v) + 4 for k, v in headers.items())
    return len(body) + header_block


def encoded_size(event: BaseCloudEvent) -> int:
    """The size of ``event`` as publish_event sends it (binary mode), before its ``Nats-Msg-Id``."""
    body, headers = encode_binary(event)
    return message_size(body, headers)


async def put_object(
    js: JetStreamContext, bucket: str, name: str, data: bytes, *, ttl_s: float, max_bytes: int, replicas: int = 1
) -> str:
    """Store ``data`` as ``bucket/name`` (made if missing, bounded by ``ttl_s`` and ``max_bytes``,
    with ``replicas`` copies: provisioning normally made it already);
    returns its ``dataref``. Raises :class:`StreamFullError` when the bucket is full."""
    try:
        try:
            store = await js.object_store(bucket)
        except BucketNotFoundError:
            config = ObjectStoreConfig(ttl=ttl_s, max_bytes=max_bytes, storage=StorageType.FILE, replicas=replicas)
            store = await js.create_object_store(bucket, config=config)
        await store.put(name, data)
    except APIError as exc:
        if (limit := stream_full(exc)) is not None:
            raise StreamFullError(f"object-store bucket {bucket}", limit) from exc
        raise
    return object_dataref(bucket, name)


#: Beyond this, a client's audio rides in the object store (claim check), not inline in the event.
INLINE_LIMIT_BYTES = 256 * 1024


async def audio_reference(
    js: JetStreamContext, data: bytes, *, filename: str, event_id: str, bucket: str, replicas: int, fmt: str | None
) -> dict[str, Any]:
    """The ``audio`` of an ``audio.submitted`` for a client's file: inline when small, else
    uploaded as ``bucket/<event_id>/<filename>`` (the event's ``dataref`` names it). ``fmt``
    is the declared format, which the Preprocessor checks against the bytes; None lets the
    bytes alone decide."""
    if len(data) <= INLINE_LIMIT_BYTES:
        return {"data_base64": base64.b64encode(data).decode(), "format": fmt}
    try:
        # Bind first: the Ingress creates the bucket with its TTL (retention settings), and
        # creating it again with another configuration is an error.
        store = await js.object_store(bucket)
    except BucketNotFoundError:
        store = await js.create_object_store(bucket, config=ObjectStoreConfig(replicas=replicas))
    name = f"{event_id}/{filename}"
    await store.put(name, data)
    return {"object": {"bucket": bucket, "name": name}, "format": fmt}


async def by_reference(
    js: JetStreamContext,
    event: BaseCloudEvent,
    *,
    bucket: str,
    name: str,
    max_payload_bytes: int,
    ttl_s: float,
    max_bytes: int,
    replicas: int = 1,
) -> BaseCloudEvent:
    """``event`` itself when it fits one NATS message; else its data goes to ``bucket/name`` and
    the returned copy carries no data and a ``dataref`` naming it (same id, attributes, type)."""
    size = encoded_size(event)
    if size <= max_payload_bytes - HEADER_ROOM:
        return event
    body, _ = encode_binary(event)  # the data exactly as it would have ridden, in its datacontenttype
    dataref = await put_object(js, bucket, name, body, ttl_s=ttl_s, max_bytes=max_bytes, replicas=replicas)
    attributes = event.get_attributes()
    log.info(
        "event %s (%s) is %d bytes, over the %d-byte NATS payload: data stored as %s",
        event.get_id(), event.get_type(), size, max_payload_bytes, dataref,
    )  # fmt: skip
    extensions = {k: v for k, v in attributes.items() if k not in _CORE and k != "dataref"}
    return new_event(
        event.get_type(),
        event.get_source(),
        None,
        id=event.get_id(),
        subject=event.get_subject(),
        extensions={**extensions, "dataref": dataref},
        datacontenttype=event.get_datacontenttype(),
    )


_CORE = frozenset({"specversion", "id", "source", "type", "time", "datacontenttype", "dataschema", "subject"})


async def read_object(js: JetStreamContext, dataref: str, *, buckets: Collection[str]) -> bytes:
    """The bytes a ``nats-object://`` ``dataref`` names, from one of ``buckets`` only.

    Raises :class:`ClaimCheckError` for another scheme or bucket (before the store is asked
    anything) or a missing object, :class:`ClaimCheckUnavailable` when the store does not answer.
    """
    found = parse_object_dataref(dataref)
    if found is None:
        raise ClaimCheckError(f"dataref {dataref!r} is not a {OBJECT_SCHEME}:// reference")
    bucket, name = found
    if bucket not in buckets:
        raise ClaimCheckError(f"dataref names bucket {bucket!r}, not one read here ({', '.join(buckets)})")
    try:
        store = await js.object_store(bucket)
        result = await store.get(name)
    except BucketNotFoundError as exc:
        raise ClaimCheckError(f"object-store bucket {bucket!r} not found (dataref {dataref})") from exc
    except (ObjectNotFoundError, ObjectDeletedError, NotFoundError) as exc:
        raise ClaimCheckError(f"object {bucket}/{name} not found: it expired or was deleted") from exc
    except (NatsError, TimeoutError, OSError) as exc:
        raise ClaimCheckUnavailable(f"could not read {dataref}: {type(exc).__name__}: {exc}") from exc
    return bytes(result.data or b"")


async def delete_object(js: JetStreamContext, dataref: str) -> None:
    """Delete the object a ``nats-object://`` ``dataref`` names; best effort (it expires anyway)."""
    found = parse_object_dataref(dataref)
    if found is None:
        return
    try:
        await (await js.object_store(found[0])).delete(found[1])
    except (NatsError, TimeoutError, OSError) as exc:
        log.warning("could not delete %s (%s: %s); it expires with its bucket's TTL", dataref, type(exc).__name__, exc)


async def resolve_data(js: JetStreamContext, event: CloudEvent, *, buckets: Collection[str]) -> Any:
    """The event's data as JSON, read from its ``dataref`` object when the event carries none.

    Raises :class:`ClaimCheckError` (or its :class:`ClaimCheckUnavailable`) as :func:`read_object`,
    and :class:`~services.events.binding.BindingError` when the data is not JSON.
    """
    dataref = event.get_attributes().get("dataref")
    if event.get_data() is not None or not isinstance(dataref, str):
        return event_data_json(event)
    body = await read_object(js, dataref, buckets=buckets)
    try:
        return json.loads(body)
    except ValueError as exc:
        raise MalformedEventError(f"data of event {event.get_id()!r} stored at {dataref} is not JSON: {exc}") from exc
