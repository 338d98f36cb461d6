"""Claim check: large audio rides beside the event, not inside it.

An ``audio.submitted`` event may leave ``data.audio`` out and name the audio with the
CloudEvents ``dataref`` extension instead: ``nats-object://BUCKET/NAME`` for an object in
the NATS object store, any other URI for a file or an http(s) URL (fetched like
``audio.uri``). Both doors (NATS and HTTP) read it the same way.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote, urlsplit

from cloudevents.core.base import BaseCloudEvent

from services.events.binding import event_data_json

#: The ``dataref`` scheme of an object in the NATS object store.
OBJECT_SCHEME = "nats-object"


def object_dataref(bucket: str, name: str) -> str:
    """The ``dataref`` of an object in the NATS object store."""
    return f"{OBJECT_SCHEME}://{bucket}/{quote(name)}"


def audio_from_dataref(dataref: str) -> dict[str, Any]:
    """The ``dataref`` extension as an ``audio`` location (``object`` or ``uri``)."""
    parsed = urlsplit(dataref)
    if parsed.scheme == OBJECT_SCHEME:
        return {"object": {"bucket": parsed.netloc, "name": unquote(parsed.path.lstrip("/"))}}
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
