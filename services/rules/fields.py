"""What a rule can read: the variables of a condition, their values for one event, and their
shapes (which fields exist, so a typo fails the load).

``context`` and ``data`` are free maps (CRM systems put anything there), so
only their syntax is checked. ``acoustics`` and ``facets`` follow the event
contract of ``com.listenpost.audio.captioned``; ``event`` holds the CloudEvents
attributes and any extension. Keep these lists in step with
``services/events/models.py`` and the facet taxonomy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class Shape:
    """What a value looks like, as far as field checks are concerned (each has a ``name``)."""

    name: str


@dataclass(frozen=True)
class Open(Shape):
    """Anything: no checks below this point."""

    name: str = "value"


@dataclass(frozen=True)
class Scalar(Shape):
    name: str = "value"
    kind: str = "value"  # "string", "number", "bool"


@dataclass(frozen=True)
class Record(Shape):
    name: str
    fields: Mapping[str, Shape] = field(default_factory=dict)
    #: Extra field names that are fine although not listed (CloudEvents extensions).
    extension: re.Pattern[str] | None = None
    extension_hint: str = ""


@dataclass(frozen=True)
class ListOf(Shape):
    name: str
    item: Shape


@dataclass(frozen=True)
class MapOf(Shape):
    """A map with free keys (e.g. a role -> seconds)."""

    name: str
    value: Shape


ANY = Open()
STRING = Scalar("string", "string")
NUMBER = Scalar("number", "number")
BOOL = Scalar("bool", "bool")
INT = Scalar("int", "number")

EMOTION = Record(
    "an emotion (item of facets.emotions)",
    {
        "role": STRING, "label": STRING, "intensity": NUMBER, "window": INT,
        "start": NUMBER, "end": NUMBER, "span": STRING,
    },
)  # fmt: skip
SOUND_EVENT = Record(
    "a sound event (item of facets.sound_events)",
    {
        "label": STRING, "confidence": NUMBER, "window": INT,
        "start": NUMBER, "end": NUMBER, "span": STRING,
    },
)  # fmt: skip
FACETS = Record(
    "facets",
    {
        "emotions": ListOf("facets.emotions", EMOTION),
        "sound_events": ListOf("facets.sound_events", SOUND_EVENT),
        "languages": ListOf("facets.languages", STRING),
        "speech_present": BOOL,
        "music_present": BOOL,
    },
)
ACOUSTICS = Record(
    "acoustics",
    {
        "duration_s": NUMBER, "silence_ratio": NUMBER, "longest_silence_s": NUMBER, "dead_air_s": NUMBER,
        "peak_dbfs": NUMBER, "speech_ratio": NUMBER, "overtalk_ratio": NUMBER, "overtalk_count": INT,
        "clipping_ratio": NUMBER, "loudness_lufs": NUMBER, "snr_db": NUMBER,
        "talk_time_s": MapOf("acoustics.talk_time_s", NUMBER),
        # Per-channel measures grow with the extractor: not checked below the list.
        "channels": ListOf("acoustics.channels", ANY),
    },
)  # fmt: skip
EVENT = Record(
    "event",
    {
        name: STRING
        for name in ("id", "source", "type", "specversion", "subject", "time", "datacontenttype", "dataschema")
    },
    extension=re.compile(r"^[a-z0-9]{1,20}$"),
    extension_hint="a CloudEvents attribute or extension (1-20 lower-case letters or digits; the payload is `data`)",
)

#: The variables of a rule's ``when``.
VARIABLES: Mapping[str, Shape] = {
    "event": EVENT,
    "data": Open("data"),
    "facets": FACETS,
    "acoustics": ACOUSTICS,
    "context": Open("context"),
    "caption": Scalar("caption", "string"),
}

# Attributes that are the event's payload, not its metadata: exposed as `data`.
_PAYLOAD_ATTRIBUTES = ("data", "data_base64")


def rule_variables(event_attributes: Mapping[str, Any], data: Any) -> dict[str, Any]:
    """The values of :data:`VARIABLES` for one event (attributes with extensions, and its data).

    ``facets``, ``acoustics``, ``context`` and ``caption`` are shortcuts into ``data``;
    each is ``{}`` or ``""`` when the event has none.
    """
    payload = data if type(data) is dict or isinstance(data, Mapping) else {}
    get = payload.get
    facets, acoustics, context, caption = get("facets"), get("acoustics"), get("context"), get("caption")
    metadata = dict(event_attributes)
    for name in _PAYLOAD_ATTRIBUTES:
        if name in metadata:
            del metadata[name]
    return {
        "event": metadata,
        "data": data if data is not None else {},
        "facets": facets if facets is not None else {},
        "acoustics": acoustics if acoustics is not None else {},
        "context": context if context is not None else {},
        "caption": caption if caption is not None else "",
    }


#: What an alert template may quote about the match (see evaluate.Evidence).
MATCH = Record(
    "match",
    {
        "kind": STRING, "span": STRING, "start": NUMBER, "end": NUMBER, "at": STRING, "window": INT,
        "role": STRING, "label": STRING, "intensity": NUMBER, "confidence": NUMBER, "caption": STRING,
        "windows": INT, "held_s": NUMBER,
    },
)  # fmt: skip

#: The variables of templates: the condition's, plus ``match`` and ``rule``.
TEMPLATE_VARIABLES: Mapping[str, Shape] = {
    **VARIABLES,
    "match": MATCH,
    "rule": Record("rule", {"id": STRING, "owner": STRING, "description": STRING, "priority": INT}),
}
