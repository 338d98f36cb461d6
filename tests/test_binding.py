"""The CloudEvents NATS binding: both content modes, other SDKs' messages, errors."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from services.events.binding import (
    STRUCTURED_CONTENT_TYPE,
    BindingError,
    MalformedEventError,
    NotACloudEventError,
    decode,
    encode_binary,
    encode_structured,
    event_attributes,
    event_data_json,
    new_event,
)

SUBJECT = "Zoë – café ☎"
EXTENSIONS = {"callid": "call-42", "rulesetver": "2024.7"}
BINARY_HEADERS = {"ce-specversion": "1.0", "ce-id": "evt-1", "ce-source": "/pbx/eu-1", "ce-type": "com.listenpost.audio.submitted"}
STRUCTURED = {"Content-Type": "application/cloudevents+json"}
ENCODERS = pytest.mark.parametrize("encode", [encode_binary, encode_structured], ids=["binary", "structured"])


def _event(data: Any, datacontenttype: str | None = "application/json") -> Any:
    return new_event(
        "com.listenpost.audio.submitted",
        "/listenpost/ingest",
        data,
        id="evt-1",
        subject=SUBJECT,
        extensions=EXTENSIONS,
        datacontenttype=datacontenttype,
    )


def _structured_body(**attributes: Any) -> bytes:
    base = {"specversion": "1.0", "id": "evt-1", "source": "/pbx/eu-1", "type": "com.listenpost.audio.submitted"}
    return json.dumps({**base, **attributes}).encode()


@ENCODERS
@pytest.mark.parametrize(
    ("data", "datacontenttype"),
    [
        ({"audio": {"uri": "s3://calls/42.wav"}, "context": {"queue": "billing"}}, "application/json"),
        ([1, "zwei", None], "application/json"),
        (b"\x00\xffRIFF", "audio/wav"),
        (None, "application/json"),
    ],
    ids=["json-object", "json-array", "bytes", "no-data"],
)
def test_round_trip(encode: Any, data: Any, datacontenttype: str) -> None:
    event = _event(data, datacontenttype)

    decoded = decode(*encode(event))

    assert decoded.get_data() == data
    assert event_attributes(decoded) == event_attributes(event)


def test_binary_headers_carry_every_attribute_percent_encoded() -> None:
    body, headers = encode_binary(_event(b"\x00\xffRIFF", "audio/wav"))

    assert body == b"\x00\xffRIFF"
    assert headers["ce-datacontenttype"] == "audio/wav"
    assert headers["ce-subject"] == "Zo%C3%AB%20%E2%80%93%20caf%C3%A9%20%E2%98%8E"
    assert all(value.isascii() and value.isprintable() and " " not in value for value in headers.values())
    # Only what the spec requires is escaped: sources and times stay readable (and Go-compatible).
    assert headers["ce-source"] == "/listenpost/ingest"
    assert headers["ce-time"].endswith("Z") and ":" in headers["ce-time"]
    assert {headers["ce-callid"], headers["ce-rulesetver"]} == {"call-42", "2024.7"}


@pytest.mark.parametrize(
    ("value", "header"),
    [('say "hi" 100%', "say%20%22hi%22%20100%25"), ("Euro € 😀", "Euro%20%E2%82%AC%20%F0%9F%98%80"), (True, "true")],
)
def test_binary_header_values(value: Any, header: str) -> None:
    _, headers = encode_binary(new_event("t", "/s", None, extensions={"note": value}))

    assert headers["ce-note"] == header


def test_json_data_in_binary_mode_is_the_serialised_value() -> None:
    body, _ = encode_binary(_event({"caption": "Zoë"}))

    assert json.loads(body) == {"caption": "Zoë"}


def test_structured_mode_writes_json_format_with_data_base64() -> None:
    body, headers = encode_structured(_event(b"\x00\xffRIFF", "audio/wav"))

    assert headers == {"content-type": STRUCTURED_CONTENT_TYPE}
    document = json.loads(body)
    assert document["data_base64"] == base64.b64encode(b"\x00\xffRIFF").decode()
    assert "data" not in document
    assert document["subject"] == SUBJECT
    assert document["callid"] == "call-42"


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "Application/CloudEvents+JSON; charset=UTF-8"},
        {"CONTENT-TYPE": "application/cloudevents+json"},
        {"content-type": "application/cloudevents+json", "ce-specversion": "1.0"},
    ],
    ids=["mixed-case", "upper-name", "wins-over-ce-headers"],
)
def test_structured_mode_recognised_by_content_type_in_any_case(headers: dict[str, str]) -> None:
    event = decode(_structured_body(data={"ok": True}), headers)

    assert event.get_source() == "/pbx/eu-1"
    assert event.get_data() == {"ok": True}


def test_go_sdk_binary_message() -> None:
    # Go's nats_jetstream writes ce-datacontenttype and does not percent-encode ASCII values.
    headers = {**BINARY_HEADERS, "Ce-Datacontenttype": "application/json", "ce-time": "2018-04-05T03:56:24Z"}

    event = decode(b'{"audio": {"uri": "s3://calls/1.wav"}}', headers)

    assert event.get_datacontenttype() == "application/json"
    assert event.get_time() == datetime(2018, 4, 5, 3, 56, 24, tzinfo=UTC)
    assert event.get_data() == {"audio": {"uri": "s3://calls/1.wav"}}


def test_go_sdk_structured_message_without_headers() -> None:
    event = decode(_structured_body(data={"ok": True}), None)

    assert event.get_id() == "evt-1"
    assert event.get_data() == {"ok": True}


def test_java_sdk_binary_message_with_plain_content_type() -> None:
    headers = {**BINARY_HEADERS, "content-type": "application/json; charset=utf-8", "ce-callid": "call%2042"}

    event = decode(b'{"k": 1}', headers)

    assert event.get_datacontenttype() == "application/json; charset=utf-8"
    assert event.get_extension("callid") == "call 42"
    assert event_data_json(event) == {"k": 1}


def test_ce_datacontenttype_wins_over_plain_content_type() -> None:
    headers = {**BINARY_HEADERS, "content-type": "text/plain", "ce-datacontenttype": "audio/wav"}

    assert decode(b"RIFF", headers).get_datacontenttype() == "audio/wav"


def test_binary_decode_accepts_quoted_strings_and_lower_case_hex() -> None:
    headers = {**BINARY_HEADERS, "ce-subject": '"caf%c3%a9 \\"au lait\\""'}

    assert decode(b"", headers).get_subject() == 'café "au lait"'


def test_missing_time_stays_missing() -> None:
    # The SDK would stamp "now"; a receiver must not see a time the producer never set.
    assert "time" not in event_attributes(decode(b"", BINARY_HEADERS))
    assert "time" not in event_attributes(decode(_structured_body(), STRUCTURED))


def test_new_event_defaults() -> None:
    event = new_event("com.listenpost.route.decided", "/listenpost/rules", {"route": "billing"}, extensions={"callid": None})

    assert len(event.get_id()) == 36
    assert event.get_time() is not None and event.get_time().tzinfo is not None
    assert event.get_datacontenttype() == "application/json"
    assert "callid" not in event_attributes(event)


@pytest.mark.parametrize(
    ("data", "datacontenttype", "expected"),
    [
        (b'{"a": 1}', "application/json", {"a": 1}),
        ({"a": 1}, "application/json", {"a": 1}),
        ("already decoded", "application/json", "already decoded"),
        ('{"a": 1}', "text/plain", {"a": 1}),
        (None, "application/json", None),
    ],
)
def test_event_data_json(data: Any, datacontenttype: str, expected: Any) -> None:
    assert event_data_json(_event(data, datacontenttype)) == expected


def test_event_attributes_is_a_copy() -> None:
    event = _event(None)
    attributes = event_attributes(event)
    attributes["callid"] = "changed"

    assert attributes["rulesetver"] == "2024.7"
    assert event.get_extension("callid") == "call-42"


NOT_A_CLOUD_EVENT = (
    "not a CloudEvent: no 'ce-specversion' header (binary mode) and no 'application/cloudevents' content type (structured mode)"
)
BAD_EXTENSION = "extension attribute 'call_id' is invalid: names are lower-case letters and digits, at most 20 characters"


@pytest.mark.parametrize(
    ("body", "headers", "error", "message"),
    [
        (b'{"a": 1}', None, NotACloudEventError, NOT_A_CLOUD_EVENT),
        (b"RIFF", {"content-type": "audio/wav"}, NotACloudEventError, NOT_A_CLOUD_EVENT),
        (
            b"",
            {"ce-specversion": "1.0", "ce-type": "t"},
            NotACloudEventError,
            "binary-mode message is missing required attribute(s): id, source",
        ),
        (
            b'{"specversion": "1.0", "id": "1"}',
            STRUCTURED,
            NotACloudEventError,
            "structured-mode message is missing required attribute(s): source, type",
        ),
        (
            b'{"specversion": ',
            STRUCTURED,
            MalformedEventError,
            "structured body is not valid JSON: Expecting value: line 1 column 17 (char 16)",
        ),
        (b"[]", STRUCTURED, MalformedEventError, "structured body must be a JSON object, not list"),
        (
            _structured_body(),
            {"content-type": "application/cloudevents-batch+json"},
            MalformedEventError,
            "unsupported structured content type 'application/cloudevents-batch+json': "
            "only application/cloudevents+json is read",
        ),
        (
            _structured_body(specversion="0.3"),
            STRUCTURED,
            MalformedEventError,
            "unsupported specversion '0.3': only '1.0' is read",
        ),
        (
            b"",
            {**BINARY_HEADERS, "ce-specversion": "2.0"},
            MalformedEventError,
            "unsupported specversion '2.0': only '1.0' is read",
        ),
        (b"", {**BINARY_HEADERS, "ce-call_id": "42"}, MalformedEventError, BAD_EXTENSION),
        (_structured_body(call_id="42"), STRUCTURED, MalformedEventError, BAD_EXTENSION),
        (
            b"",
            {**BINARY_HEADERS, "ce-averyveryverylongname": "x"},
            MalformedEventError,
            "extension attribute 'averyveryverylongname' is invalid: "
            "names are lower-case letters and digits, at most 20 characters",
        ),
        (
            b"",
            {**BINARY_HEADERS, "ce-subject": "%C0%A0"},
            MalformedEventError,
            "header 'ce-subject' is not percent-encoded UTF-8: '%C0%A0'",
        ),
        (
            b"",
            {**BINARY_HEADERS, "ce-time": "2018-04-05T03:56:24"},
            MalformedEventError,
            "invalid CloudEvent: Attribute 'time' must be timezone aware",
        ),
        (
            b"{not json",
            {**BINARY_HEADERS, "ce-datacontenttype": "application/json"},
            MalformedEventError,
            "data is not valid JSON for datacontenttype 'application/json': "
            "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        ),
        (
            _structured_body(data_base64="AP9SS!!UZG"),
            STRUCTURED,
            MalformedEventError,
            "data_base64 is not valid base64",
        ),
    ],
    ids=[
        "no-mode",
        "plain-audio",
        "binary-missing",
        "structured-missing",
        "bad-json",
        "not-object",
        "batch",
        "structured-specversion",
        "binary-specversion",
        "binary-extension",
        "structured-extension",
        "long-extension",
        "overlong-utf8",
        "naive-time",
        "bad-json-data",
        "bad-base64",
    ],
)
def test_decode_errors(body: bytes, headers: dict[str, str] | None, error: type[BindingError], message: str) -> None:
    with pytest.raises(error) as raised:
        decode(body, headers)

    assert str(raised.value) == message
    assert isinstance(raised.value, ValueError)


def test_invalid_extension_name_is_refused_on_build_and_encode() -> None:
    with pytest.raises(MalformedEventError) as raised:
        new_event("t", "/s", None, extensions={"call_id": "42"})
    assert str(raised.value) == BAD_EXTENSION

    event = new_event("t", "/s", None)
    # get_attributes() is the SDK event's live dict: a caller can still smuggle a bad name in.
    event.get_attributes()["averyveryverylongname"] = "x"
    for encode in (encode_binary, encode_structured):
        with pytest.raises(MalformedEventError, match="'averyveryverylongname' is invalid"):
            encode(event)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"extensions": {"id": "x"}}, "extension attribute 'id' clashes with a core attribute"),
        ({"subject": ""}, "invalid CloudEvent: Attribute 'subject' must not be empty"),
    ],
)
def test_new_event_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(MalformedEventError) as raised:
        new_event("t", "/s", None, **kwargs)

    assert str(raised.value) == message


def test_non_json_data_needs_bytes() -> None:
    with pytest.raises(MalformedEventError) as raised:
        encode_binary(_event({"a": 1}, "audio/wav"))

    assert str(raised.value) == "data of type dict needs a JSON datacontenttype or bytes, not 'audio/wav'"


def test_claim_check_dataref_round_trips_and_fills_in_the_audio() -> None:
    from services.events.claimcheck import audio_from_dataref, object_dataref, submitted_data

    ref = object_dataref("listenpost-audio", "calls/2026 12/é#1.wav")
    assert ref == "nats-object://listenpost-audio/calls/2026%2012/%C3%A9%231.wav"
    assert audio_from_dataref(ref) == {"object": {"bucket": "listenpost-audio", "name": "calls/2026 12/é#1.wav"}}
    assert audio_from_dataref("https://pbx.example/r/1.wav") == {"uri": "https://pbx.example/r/1.wav"}
    event = new_event("com.listenpost.audio.submitted", "urn:pbx", {"context": {"callid": "c"}}, extensions={"dataref": ref})
    assert submitted_data(event) == {"context": {"callid": "c"}, "audio": audio_from_dataref(ref)}
    # Audio in the data wins: the dataref is then only a hint for other consumers.
    inline = new_event("com.listenpost.audio.submitted", "urn:pbx", {"audio": {"uri": "a.wav"}}, extensions={"dataref": ref})
    assert submitted_data(inline) == {"audio": {"uri": "a.wav"}}
