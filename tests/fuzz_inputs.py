"""Hostile inputs for the fuzz run (tests/test_fuzz.py): Hypothesis strategies, no assertions.

What a sender controls, drawn as data: HTTP bodies and headers, NATS messages (CloudEvent
attributes in ``ce-*`` headers or a structured body), the ``data`` of ``audio.submitted``
with its ``context``, and the audio bytes themselves (real files made by
``tests/audio_factory.py``, then cut, bit-flipped and given the wrong headers).

JSON is written here as text, not with ``json.dumps`` alone, so that a body can carry
what Python would never write: numbers out of every range (``1e999``, 5,000 digits),
``NaN``, lone UTF-16 surrogates (``"\\ud800"``), nesting thousands deep and bytes that
are not UTF-8.
"""

from __future__ import annotations

import base64
import functools
import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st

from services.events.models import AUDIO_SUBMITTED
from tests.audio_factory import encode, speech

TELEPHONY = "com.acme.telephony.call.recorded"  # mapped by the shipped adapters/ (adapters/*.yaml)
CORE_ATTRIBUTES = ("specversion", "id", "source", "type", "datacontenttype", "dataschema", "subject", "time")


def odds(times: int, out_of: int) -> st.SearchStrategy[bool]:
    """True about ``times`` in ``out_of`` draws. Not ``integers(...) == 0``: Hypothesis favours small
    integers and the first of sampled values, so the common outcome is listed first."""
    return st.sampled_from([False] * (out_of - times) + [True] * times)


# --- JSON with tokens Python would not write ----------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """A JSON token written as is: an out-of-range number, NaN, a lone surrogate, a deep nest."""

    text: str


RAW_TOKENS = (
    "1e999", "-1e999", "1.0e-400", "NaN", "Infinity", "-Infinity", "-0", "1" + "0" * 5000,
    "123456789012345678901234567890", '"\\ud800"', '"\\udfff tail"', '"\\u0000"', '"a\\ud83d"',
)  # fmt: skip


def to_json(value: Any) -> str:
    """JSON text of ``value``; :class:`Raw` parts are written verbatim."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{to_json(k)}:{to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    return json.dumps(value)


def nested(depth: int, kind: str) -> Raw:
    """A value nested ``depth`` deep: lists, objects, or both in turn."""
    if kind == "list":
        return Raw("[" * depth + "1" + "]" * depth)
    if kind == "object":
        return Raw('{"a":' * depth + "1" + "}" * depth)
    return Raw('[{"a":' * (depth // 2) + "1" + "}]" * (depth // 2))


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=24),
    st.sampled_from(RAW_TOKENS).map(Raw),
)
STRING_TOKENS = tuple(token for token in RAW_TOKENS if token.startswith('"'))
keys = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["callid", "call_id", "", "__proto__", "a" * 200]),
    st.sampled_from(STRING_TOKENS).map(Raw),  # a lone surrogate as a key
)


def json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=4)),
        max_leaves=max_leaves,
    )


#: Nesting depths: shallow ones any JSON reader takes, and ones past every recursion limit.
#: The interpreter's limit (about 1,000, less the caller's stack) is where readers break, so that
#: band is drawn often: one parse may pass there and the next, a few frames deeper, fail.
deep_values = st.builds(
    nested,
    st.one_of(st.integers(1, 3000), st.integers(850, 1010), st.integers(250, 300)),
    st.sampled_from(["list", "object", "mixed"]),
)


# --- audio.submitted data and its context ---------------------------------------------------------


def contexts(deep: bool = False) -> st.SearchStrategy[Any]:
    """``context`` shapes: objects small and wide, scalars and lists where an object belongs."""
    shapes = [
        st.dictionaries(keys, json_values(), max_size=6),
        st.dictionaries(st.text(max_size=6), scalars, min_size=50, max_size=200),  # wide
        st.fixed_dictionaries({"callid": st.one_of(st.text(max_size=200), scalars)}),
        st.dictionaries(keys, st.sampled_from(RAW_TOKENS).map(Raw), min_size=1, max_size=4),  # only odd tokens
        json_values(),  # a list, a string, a number: not an object
    ]
    if deep:
        shapes.append(deep_values)
    return st.one_of(*shapes)


roles = st.one_of(st.sampled_from(["agent", "customer", "a_b-1"]), st.text(max_size=10))
channels = st.lists(
    st.fixed_dictionaries({"index": st.one_of(st.integers(-2, 9), scalars), "role": st.one_of(roles, scalars)}),
    max_size=4,
)
audio_formats = st.one_of(
    st.none(), st.sampled_from(["wav", "flac", "mp3", "ogg", "opus", "m4a", "webm", "audio/mpeg", "AUDIO/WAV", ""]),
    st.text(max_size=12),
)  # fmt: skip
audio_refs = st.one_of(
    st.fixed_dictionaries({"uri": st.one_of(st.text(max_size=40), st.sampled_from(
        ["file:///etc/passwd", "/calls/../../etc/shadow", "file://remote/x.wav", "http://[::1/", "ftp://x/y",
         "http://127.0.0.1:1/a.wav", "file:///calls/%2e%2e/%2e%2e/etc/passwd", "C:\\calls\\1.wav", "\x00"]))},
        optional={"format": audio_formats}),
    st.fixed_dictionaries({"data_base64": st.one_of(
        st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()), st.text(max_size=40))},
        optional={"format": audio_formats}),
    st.fixed_dictionaries({"object": st.one_of(
        st.fixed_dictionaries({"bucket": st.text(max_size=10), "name": st.text(max_size=10)}), json_values(4))}),
    st.dictionaries(st.sampled_from(["uri", "object", "data_base64", "format", "extra"]), scalars, max_size=4),
    json_values(4),
)  # fmt: skip


#: Data in the shape the shipped telephony adapter maps (adapters/telephony.yaml).
telephony_data = st.fixed_dictionaries(
    {},
    optional={
        "recording": st.one_of(st.fixed_dictionaries({"url": st.one_of(st.text(max_size=30), scalars)},
                                                     optional={"format": audio_formats}), json_values(4)),
        "call_id": st.one_of(st.text(max_size=20), scalars),
        "channels": st.one_of(st.dictionaries(roles, st.one_of(st.integers(-1, 9), scalars), max_size=3), channels, scalars),
        "customer": st.one_of(st.fixed_dictionaries({"tier": scalars}), scalars),
        "queue": scalars,
        "language": scalars,
    },
)  # fmt: skip


#: Audio references the contract accepts, so that what follows them is what gets tested. (No URL
#: names a host to resolve: a fetch that cannot reach one is retried, rightly, and slowly.)
valid_audio_refs = st.one_of(
    st.fixed_dictionaries({"uri": st.sampled_from(["/calls/1.wav", "file:///calls/2.flac", "https://127.0.0.1/r.mp3"])},
                          optional={"format": st.sampled_from(["wav", "flac", "mp3"])}),
    st.fixed_dictionaries({"data_base64": st.binary(max_size=48).map(lambda b: base64.b64encode(b).decode())}),
    st.fixed_dictionaries({"object": st.fixed_dictionaries({"bucket": st.just("listenpost-audio"), "name": st.just("a")})}),
)  # fmt: skip
valid_roles = st.lists(
    st.fixed_dictionaries({"index": st.integers(0, 9), "role": st.sampled_from(["agent", "customer", "a_b-1"])}),
    max_size=3,
    unique_by=lambda c: c["index"],
)


def _optional_fields(deep: bool) -> dict[str, st.SearchStrategy[Any]]:
    return {
        "context": contexts(deep),
        "language": st.one_of(st.none(), st.text(max_size=8), scalars),
        "extra": json_values(6),
    }


def well_formed_data(deep: bool = False) -> st.SearchStrategy[Any]:
    """``audio.submitted`` data the contract accepts, with hostile values where it accepts anything."""
    return st.fixed_dictionaries({"audio": valid_audio_refs}, optional={"channels": valid_roles, **_optional_fields(deep)})


def submitted_data(deep: bool = False) -> st.SearchStrategy[Any]:
    """The data of an ``audio.submitted`` (or of an adapted type): well-formed with hostile values
    inside (``context``, ``language``, extra fields), near-valid, or anything at all."""
    near_valid = st.fixed_dictionaries(
        {"audio": audio_refs}, optional={"channels": st.one_of(channels, scalars), **_optional_fields(deep)}
    )
    return st.one_of(well_formed_data(deep), near_valid, telephony_data, json_values())


# --- CloudEvent attributes ------------------------------------------------------------------------------

attribute_names = st.one_of(
    st.sampled_from(CORE_ATTRIBUTES),
    st.sampled_from(["callid", "traceparent", "tenant", "x" * 21, "Upper", "has-dash", "under_score", ""]),
    st.from_regex(r"[a-z0-9]{1,24}", fullmatch=True),
)
_header_safe = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
# Header names a NATS or HTTP client can send at all (no ':', space or control characters).
header_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.", min_size=1, max_size=12)
header_values = st.one_of(
    st.text(alphabet=_header_safe, max_size=40),
    st.sampled_from([
        "1.0", "0.3", "", " ", '"1.0"', '"a\\"b"', "%", "%zz", "%FF%FE", "%C3%28", "%00", "%ED%A0%80",
        AUDIO_SUBMITTED, TELEPHONY, "2024-02-30T25:61:00Z", "not-a-time", "1970-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999999+14:00", "application/json", "text/plain", "urn:a:b",
    ]),
    st.binary(max_size=24).map(lambda b: "".join(f"%{x:02X}" for x in b)),  # percent-encoded bytes, UTF-8 or not
    # Raw bytes above ASCII, as a latin-1 string (what an HTTP server hands over); never CR, LF or NUL.
    st.binary(max_size=16).map(lambda b: bytes(x for x in b if x not in b"\r\n\x00").decode("latin-1")),
)  # fmt: skip


@st.composite
def ce_headers(draw: st.DrawFn, event_id: str | None = None) -> dict[str, str]:
    """Binary-mode attributes: usually the required four (often valid), plus random others."""
    headers: dict[str, str] = {}
    shape = draw(st.sampled_from(["well-formed", "well-formed", "fuzzed", "none"]))
    if shape == "well-formed":
        headers["ce-specversion"] = "1.0"
        headers["ce-type"] = draw(st.sampled_from([AUDIO_SUBMITTED, AUDIO_SUBMITTED, TELEPHONY]))
        headers["ce-source"] = "urn:fuzz"
        headers["ce-id"] = draw(st.text(alphabet=_header_safe, min_size=1, max_size=20))
    elif shape == "fuzzed":
        headers["ce-specversion"] = draw(st.one_of(st.just("1.0"), header_values))
        headers["ce-type"] = draw(st.one_of(st.sampled_from([AUDIO_SUBMITTED, TELEPHONY]), header_values))
        headers["ce-source"] = draw(st.one_of(st.just("urn:fuzz"), header_values))
        headers["ce-id"] = draw(header_values)
    if shape != "well-formed" or draw(odds(1, 3)):
        for name, value in draw(st.dictionaries(attribute_names, header_values, max_size=4)).items():
            headers.setdefault("ce-" + name, value)
    if event_id is not None:
        headers["ce-id"] = event_id
    return headers


_TYPICAL = {
    "specversion": st.just("1.0"),
    "id": st.text(min_size=1, max_size=20),
    "source": st.just("urn:fuzz"),
    "type": st.sampled_from([AUDIO_SUBMITTED, AUDIO_SUBMITTED, TELEPHONY]),
    "time": st.just("2024-05-01T12:00:00Z"),
    "datacontenttype": st.just("application/json"),
}


def attribute_values(name: str) -> st.SearchStrategy[Any]:
    typical = _TYPICAL.get(name, st.text(max_size=20))
    return st.one_of(typical, typical, scalars, json_values(4))


@st.composite
def structured_events(draw: st.DrawFn, event_id: str | None = None, deep: bool = False) -> Any:
    """A structured-mode event as a value for :func:`to_json`.

    Two in three are well-formed envelopes (the required attributes right, data the contract
    accepts) whose hostility is inside: ``context``, extra fields, now and then one odd attribute.
    The rest have attributes of every type, and data or ``data_base64`` of any shape.
    """
    event: dict[str, Any] = {}
    if draw(odds(2, 3)):
        event = {name: draw(_TYPICAL[name]) for name in ("specversion", "id", "source")}
        if draw(odds(1, 4)):
            event["type"], event["data"] = TELEPHONY, draw(telephony_data)
        else:
            event["type"], event["data"] = AUDIO_SUBMITTED, draw(well_formed_data(deep))
        for name in ("time", "datacontenttype", "subject"):
            if draw(odds(1, 4)):
                event[name] = draw(_TYPICAL.get(name, st.text(max_size=20)))
        if draw(odds(1, 4)):
            name = draw(attribute_names)
            event[name] = draw(attribute_values(name))
    else:
        for name in CORE_ATTRIBUTES:
            required = name in ("specversion", "id", "source", "type")
            if draw(odds(9, 10) if required else odds(1, 4)):
                event[name] = draw(attribute_values(name))
        for name in draw(st.lists(attribute_names, max_size=3)):
            event.setdefault(name, draw(attribute_values(name)))
        payload = draw(st.sampled_from(["data"] * 7 + ["data_base64"] * 2 + ["none"]))
        if payload == "data":
            event["data"] = draw(submitted_data(deep))
        elif payload == "data_base64":
            event["data_base64"] = draw(st.one_of(st.text(max_size=20), scalars))
    if event_id is not None:
        event["id"] = event_id
    if deep and draw(odds(1, 2)):
        event[draw(st.sampled_from(["data", "extra", "callid"]))] = draw(deep_values)
    return event


# --- HTTP requests ---------------------------------------------------------------------------------------

content_types = st.one_of(
    st.sampled_from([
        "application/cloudevents+json", "application/cloudevents+json; charset=utf-8",
        "application/cloudevents-batch+json", "application/cloudevents+xml", "application/cloudevents",
        "APPLICATION/CLOUDEVENTS+JSON ; x=y", "application/json", "text/json", "application/json; charset=latin-1",
        "application/octet-stream", "audio/wav", "text/plain", "", ";", "multipart/form-data; boundary=x",
    ]),
    header_values,
)  # fmt: skip


@dataclass(frozen=True)
class HttpRequest:
    headers: list[tuple[bytes, bytes]]
    body: bytes
    kind: str  # binary, structured, batch or raw: what the request was drawn as (for failure reports)


def _latin1(pairs: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs.items()]


def _as_bytes(text: str) -> bytes:
    # Lone surrogates cannot be UTF-8: such a body stays as the escape the sender wrote.
    return text.encode("utf-8", "backslashreplace")


@st.composite
def http_requests(draw: st.DrawFn, key: str, deep: bool = True) -> HttpRequest:
    """A POST /events request: binary, structured or batch mode, or anything else at all."""
    kind = draw(st.sampled_from(["binary", "structured", "batch", "raw"]))
    headers: dict[str, str] = {}
    if kind == "binary":
        headers.update(draw(ce_headers()))
        headers["content-type"] = draw(st.one_of(st.just("application/json"), content_types))
        body = draw(st.one_of(
            st.builds(to_json, well_formed_data(deep)), st.builds(to_json, submitted_data(deep)),
            st.binary(max_size=256), st.just(""), st.builds(to_json, deep_values),
        ))  # fmt: skip
    elif kind == "structured":
        headers["content-type"] = draw(st.sampled_from(["application/cloudevents+json", "application/cloudevents+json; charset=utf-8"]))
        body = to_json(draw(structured_events(deep=deep)))
    elif kind == "batch":
        headers["content-type"] = "application/cloudevents-batch+json"
        items = st.one_of(structured_events(deep=False), json_values(4))
        body = draw(st.one_of(st.builds(to_json, st.lists(items, max_size=5)), st.builds(to_json, json_values(6))))
        if deep and draw(odds(1, 5)):
            body = to_json([draw(structured_events()), draw(deep_values)])
    else:
        headers.update(draw(st.dictionaries(header_names, header_values, max_size=3)))
        headers["content-type"] = draw(content_types)
        body = draw(st.one_of(st.binary(max_size=512), st.builds(to_json, json_values())))
    raw = body if isinstance(body, bytes) else _as_bytes(body)
    if draw(odds(1, 10)):  # invalid UTF-8 inside otherwise sensible JSON
        cut = draw(st.integers(0, len(raw)))
        raw = raw[:cut] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"])) + raw[cut:]
    auth = draw(st.sampled_from(["valid"] * 8 + ["missing", "wrong", "scheme"]))
    if auth != "missing":
        token = {"valid": f"Bearer {key}", "wrong": "Bearer not-the-key", "scheme": f"Basic {key}"}[auth]
        headers["authorization"] = token
    pairs = _latin1(headers)
    if draw(odds(1, 20)) and pairs:  # a header given twice
        pairs.append(pairs[0])
    return HttpRequest(pairs, raw, kind)


# --- NATS messages -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NatsMessage:
    body: bytes
    headers: dict[str, str]
    kind: str


@st.composite
def nats_messages(draw: st.DrawFn, event_id: str | None = None, deep: bool = True) -> NatsMessage:
    """An input on ``<prefix>.in.>`` in either content mode, from any producer at all.

    With ``event_id``, a ``ce-id`` header carries it whatever the mode (and a structured
    body uses it too), so the outcome can be accounted for by id.
    """
    kind = draw(st.sampled_from(["binary", "structured", "bare", "junk"]))
    if kind == "binary":
        headers = draw(ce_headers(event_id))
        if draw(st.booleans()):
            headers["content-type"] = draw(content_types)
        body = draw(st.one_of(st.builds(to_json, submitted_data(deep)), st.binary(max_size=128), st.just("")))
    elif kind in ("structured", "bare"):
        # "bare": a structured body without headers, as the Go SDK sends it.
        headers = {"content-type": draw(content_types)} if kind == "structured" else {}
        if event_id is not None:
            headers["ce-id"] = event_id
        body = to_json(draw(structured_events(event_id, deep=deep)))
    else:
        headers = draw(st.dictionaries(header_names, header_values, max_size=3))
        if event_id is not None:
            headers["ce-id"] = event_id
        body = draw(st.binary(max_size=256))
    return NatsMessage(body if isinstance(body, bytes) else _as_bytes(body), headers, kind)


# --- audio files -----------------------------------------------------------------------------------------

SEED_FORMATS = ("wav", "flac", "vorbis", "opus", "mp3", "m4a", "webm")


@functools.cache
def seed_audio(fmt: str) -> bytes:
    """A real recording of a second of speech (stereo 8 kHz WAV, mono 16 kHz for the rest)."""
    if fmt == "wav":
        samples = np.stack([speech(1.0, 8000, seed=1), speech(1.0, 8000, seed=2, f0=210.0)], axis=1)
        return encode(samples, 8000, "wav")
    rate = 48000 if fmt in ("opus", "webm") else 16000
    return encode(speech(1.0, rate, seed=3), rate, fmt)


@dataclass(frozen=True)
class AudioCase:
    data: bytes
    how: str  # the mutation, for failure reports


@st.composite
def audio_files(draw: st.DrawFn) -> AudioCase:
    """Real audio, cut short, bit-flipped, re-headed or spliced; or bytes that only look like audio."""
    fmt = draw(st.sampled_from(SEED_FORMATS))
    seed = seed_audio(fmt)
    how = draw(st.sampled_from(["intact", "truncate", "flip", "header", "splice", "magic", "lying-wav", "random"]))
    if how == "intact":
        data = seed
    elif how == "truncate":
        data = seed[: draw(st.integers(0, len(seed)))]
    elif how == "flip":
        data = bytearray(seed)
        # Flips near the start hit headers and the first frames; the rest anywhere.
        # (Past the 4-byte magic: a flip there only makes bytes of no known kind, which "random" covers.)
        positions = st.one_of(st.integers(4, min(255, len(seed) - 1)), st.integers(4, len(seed) - 1))
        for position, bit in draw(st.lists(st.tuples(positions, st.integers(0, 7)), min_size=1, max_size=16)):
            data[position] ^= 1 << bit
        data = bytes(data)
    elif how == "header":
        start = draw(st.integers(0, 64))
        patch = draw(st.binary(min_size=1, max_size=32))
        data = seed[:start] + patch + seed[start + len(patch) :]
    elif how == "splice":
        other = seed_audio(draw(st.sampled_from(SEED_FORMATS)))
        cut = draw(st.integers(0, min(len(seed), len(other))))
        data = seed[:cut] + other[cut:]  # one format's header, another's body
    elif how == "magic":
        data = seed[:12] + draw(st.binary(max_size=2048))
    elif how == "lying-wav":
        data = lying_wav(
            draw(st.binary(max_size=4096)),
            format_tag=draw(st.sampled_from([1, 1, 3, 6, 7, 0x11, 0x28F, 0xFFFE, 0x1234])),
            channels=draw(st.sampled_from([0, 1, 2, 17, 0xFFFF])),
            rate=draw(st.one_of(st.sampled_from([0, 1, 8000, 48000, 0xFFFFFFFF]), st.integers(0, 0xFFFFFFFF))),
            bits=draw(st.sampled_from([0, 1, 8, 12, 16, 24, 32, 64, 0xFFFF])),
            data_size=draw(st.one_of(st.none(), st.integers(0, 0xFFFFFFFF))),
        )
    else:
        data = draw(st.binary(max_size=4096))
    return AudioCase(data, f"{how} {fmt} ({len(data)} bytes)")


def lying_wav(payload: bytes, *, format_tag: int, channels: int, rate: int, bits: int, data_size: int | None) -> bytes:
    """A WAV whose header says anything at all (tests/audio_factory.py's ``wav_with_header`` keeps its
    fields consistent; here the derived ones wrap around as a 32-bit field would)."""
    block_align = (channels * bits // 8) & 0xFFFF
    fmt = struct.pack("<HHIIHH", format_tag, channels, rate, (rate * block_align) & 0xFFFFFFFF, block_align, bits)
    size = len(payload) if data_size is None else data_size
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", size) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


#: The declared ``audio.format``: mostly none (the content decides), sometimes one that may not match.
declared_formats = st.one_of(
    st.none(), st.none(), st.none(), st.sampled_from(["wav", "flac", "mp3", "ogg", "opus", "m4a", "webm", "audio/mpeg", "x"])
)
#: Channel roles: none, the usual ones, or indexes the recording may not have.
role_lists = st.one_of(
    st.sampled_from([[], [(0, "agent")], [(0, "agent"), (1, "customer")]]),
    st.just([]),
    st.lists(st.tuples(st.integers(0, 8), st.sampled_from(["agent", "customer", "other"])), max_size=3,
             unique_by=lambda t: t[0]),
)  # fmt: skip
