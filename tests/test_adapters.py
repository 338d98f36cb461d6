"""Source adapters: loading mapping files (with positioned errors) and mapping events."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from services.events.binding import decode, encode_binary, new_event
from services.events.models import AUDIO_SUBMITTED
from services.ingest.adapters import ADAPTED_FROM, AdapterError, AdapterLoadError, AdapterSet, lint_adapters, load_adapters

REPO = Path(__file__).resolve().parents[1]
TELEPHONY = "com.acme.telephony.call.recorded"
CALL = {
    "recording": {"url": "https://pbx.example/r/42.wav", "format": "wav"},
    "call_id": "c-42",
    "queue": "billing",
    "customer": {"tier": "gold"},
    "channels": {"customer": 1, "agent": 0},
}
HEADER = "apiVersion: listenpost/v1\nkind: AdapterSet\nmetadata: {name: test}\nadapters:\n"


def write(directory: Path, name: str, adapters: str, header: str = HEADER) -> Path:
    path = directory / name
    path.write_text(header + textwrap.dedent(adapters))
    return path


def adapter_yaml(id: str = "a", types: str = "[com.acme.a]", map_: str = "{audio: {uri: data.url}}") -> str:
    return f"  - id: {id}\n    description: d\n    match: {{types: {types}}}\n    map: {map_}\n"


def errors_of(path: Path) -> list[str]:
    return [str(e) for e in lint_adapters(path)]


@pytest.fixture(scope="module")
def shipped() -> AdapterSet:
    return load_adapters(REPO / "adapters")


# --- the shipped example --------------------------------------------------------------------


def test_the_shipped_telephony_adapter_maps_a_recorded_call(shipped: AdapterSet) -> None:
    adapter = shipped.match(TELEPHONY, "urn:acme:pbx:eu-1")
    assert adapter is not None and adapter.id == "acme-call-recorded"
    submitted = adapter.apply({"type": TELEPHONY, "id": "x"}, CALL)
    assert submitted.model_dump(mode="json", exclude_none=True) == {
        "audio": {"uri": "https://pbx.example/r/42.wav", "format": "wav"},
        "channels": [{"index": 0, "role": "agent"}, {"index": 1, "role": "customer"}],
        "context": {"callid": "c-42", "queue": "billing", "customer_tier": "gold"},
    }


def test_optional_fields_are_left_out_and_roles_may_be_a_list(shipped: AdapterSet) -> None:
    adapter = shipped.match(TELEPHONY, "urn:acme:pbx")
    assert adapter is not None
    minimal = {"recording": {"url": "file:///r.wav"}, "call_id": "c-1", "channels": ["agent", None, "customer"]}
    submitted = adapter.apply({}, minimal)
    assert submitted.model_dump(mode="json", exclude_none=True) == {
        "audio": {"uri": "file:///r.wav"},
        "channels": [{"index": 0, "role": "agent"}, {"index": 2, "role": "customer"}],
        "context": {"callid": "c-1"},
    }


def test_adapt_keeps_id_source_time_and_extensions(shipped: AdapterSet) -> None:
    when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    original = new_event(
        TELEPHONY, "urn:acme:pbx", CALL, id="call-42", subject="calls/42",
        extensions={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    )  # fmt: skip
    original.get_attributes()["time"] = when
    # Read back from the wire, as the ingress and the consumer see it.
    event = decode(*encode_binary(original))
    adapted, submitted = shipped.match(TELEPHONY, "urn:acme:pbx").adapt(event)
    attributes = adapted.get_attributes()
    assert (adapted.get_id(), adapted.get_source(), adapted.get_type()) == ("call-42", "urn:acme:pbx", AUDIO_SUBMITTED)
    assert attributes["time"] == when
    assert attributes["subject"] == "calls/42"
    assert attributes["traceparent"] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert attributes["callid"] == "c-42"
    assert attributes[ADAPTED_FROM] == TELEPHONY
    assert adapted.get_data() == submitted.model_dump(mode="json", exclude_none=True)
    assert decode(*encode_binary(adapted)).get_data() == adapted.get_data()  # it travels as is


def test_matching(shipped: AdapterSet, tmp_path: Path) -> None:
    assert shipped.match("com.acme.telephony.call.started", "urn:acme:pbx") is None
    assert shipped.match(AUDIO_SUBMITTED, "urn:acme:pbx") is None
    path = write(
        tmp_path, "a.yaml",
        "  - id: eu\n    description: d\n    match: {types: ['com.acme.*'], sources: ['urn:acme:eu:*']}\n"
        "    map: {audio: {uri: data.url}}\n"
        "  - id: any\n    description: d\n    match: {types: [com.acme.call]}\n    map: {audio: {uri: data.url}}\n",
    )  # fmt: skip
    adapters = load_adapters(path)
    assert adapters.match("com.acme.call", "urn:acme:eu:1").id == "eu"
    assert adapters.match("com.acme.call", "urn:acme:us:1").id == "any"
    assert adapters.match("com.acme.other", "urn:acme:us:1") is None


# --- mapping failures: the event's fault, said clearly ------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"call_id": "c"}, "adapter 'acme-call-recorded': cannot map audio.uri from `data.recording.url`: no such key: recording"),
        ({"recording": {"url": "u"}}, "adapter 'acme-call-recorded': cannot map context.callid from `data.call_id`: no such key: call_id"),
        (
            {"recording": {"url": "u"}, "call_id": "c", "channels": "stereo"},
            "adapter 'acme-call-recorded': channels from `has(data.channels) ? data.channels : null` must be a map "
            "of role to index, a list of roles or a list of {index, role}, not 'stereo'",
        ),
        (
            {"recording": {"url": "u"}, "call_id": "c", "channels": {"agent": "0"}},
            "adapter 'acme-call-recorded': channel index of role 'agent' from `has(data.channels) ? data.channels : "
            "null` is '0', not an integer",
        ),
        (
            {"recording": {"url": "u"}, "call_id": "c", "channels": {"Agent": 0}},
            "adapter 'acme-call-recorded' produced invalid com.listenpost.audio.submitted data: channels[0].role: "
            "String should match pattern '^[a-z][a-z0-9_-]*$'",
        ),
        (
            {"recording": {"url": "u"}, "call_id": {"id": 1}},
            "adapter 'acme-call-recorded': extensions.callid from `data.call_id` is {'id': 1}; extension values are "
            "strings, integers or booleans",
        ),
        (
            {"recording": {"url": "u"}, "call_id": "c", "channels": {"agent": 0, "customer": 0}},
            "adapter 'acme-call-recorded' produced invalid com.listenpost.audio.submitted data: channels names an "
            "index twice: [0, 0]",
        ),
    ],
    ids=["no-recording", "no-call-id", "channels-type", "channel-index", "bad-role", "extension-type", "same-index"],
)
def test_an_event_the_mapping_cannot_map_is_an_adapter_error(shipped: AdapterSet, data: Any, message: str) -> None:
    adapter = shipped.match(TELEPHONY, "urn:acme:pbx")
    assert adapter is not None
    with pytest.raises(AdapterError) as raised:
        adapter.apply({"type": TELEPHONY}, data)
    assert str(raised.value) == message


def test_two_audio_locations_or_bytes_data_are_adapter_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "a.yaml", adapter_yaml(map_="{audio: {uri: data.url, data_base64: data.b64}}"))
    adapter = load_adapters(path).adapters[0]
    with pytest.raises(AdapterError, match=r"audio must have exactly one of 'uri', 'object', 'data_base64' \(got uri, data_base64\)"):
        adapter.apply({}, {"url": "u", "b64": "AA=="})
    assert adapter.apply({}, {"url": "u", "b64": None}).audio.uri == "u"

    binary = new_event("com.acme.a", "urn:t", b"\x00\x01", datacontenttype="application/octet-stream")
    with pytest.raises(AdapterError, match="^adapter 'a': data of event .* is not JSON"):
        adapter.adapt(binary)


def test_event_attributes_are_usable(tmp_path: Path) -> None:
    path = write(
        tmp_path, "a.yaml",
        adapter_yaml(map_="{audio: {object: {bucket: \"'calls'\", name: 'event.id + \".wav\"'}}, context: {from: event.source}}"),
    )  # fmt: skip
    submitted = load_adapters(path).adapters[0].apply({"id": "e1", "source": "urn:s", "type": "com.acme.a"}, {})
    assert submitted.audio.object is not None
    assert (submitted.audio.object.bucket, submitted.audio.object.name) == ("calls", "e1.wav")
    assert submitted.context == {"from": "urn:s"}


# --- files that do not load: every error, with file:line:column ---------------------------------------


def test_schema_errors_are_all_reported_with_positions(tmp_path: Path) -> None:
    path = write(
        tmp_path, "bad.yaml",
        """\
          - id: one
            descripton: typo
            match: {types: [com.listenpost.audio.submitted]}
            map:
              audio: {format: "'wav'"}
              context: {n: 5}
              extensions: {call_id: data.x}
          - id: Two
            description: d
            match: {types: ["*"]}
            map: {audio: {uri: data.url}, extra: 1}
        """,
        header="apiVersion: listenpost/v2\nkind: AdapterSet\nmetadata: {name: Bad_Name}\nadapters:\n",
    )  # fmt: skip
    assert errors_of(path) == [
        f"{path}:1:13: apiVersion: Input should be 'listenpost/v1' (got 'listenpost/v2')",
        f"{path}:3:18: metadata.name: 'Bad_Name' is not a valid name (lower-case letters, digits and '-')",
        f"{path}:5:3: adapters[0].description: missing required field",
        f"{path}:6:3: adapters[0].descripton: unknown field, did you mean 'description'?",
        f"{path}:7:18: adapters[0].match.types: type pattern 'com.listenpost.audio.submitted' matches "
        "listenpost's own types; adapters are for other sources",
        f"{path}:9:12: adapters[0].map.audio: audio needs at least one of 'uri', 'object', 'data_base64'",
        f"{path}:10:18: adapters[0].map.context.n: Input should be a valid string",
        f"{path}:11:18: adapters[0].map.extensions.call_id: extension names are lower-case letters and digits, "
        "at most 20 characters",
        f"{path}:12:7: adapters[1].id: 'Two' is not a valid adapter id (lower-case letters, digits and '-')",
        f"{path}:14:18: adapters[1].match.types: type pattern '*' matches listenpost's own types; adapters are for "
        "other sources",
        f"{path}:15:33: adapters[1].map.extra: unknown field (known: audio, channels, context, language, extensions)",
    ]


def test_cel_errors_point_at_the_expression(tmp_path: Path) -> None:
    path = write(
        tmp_path, "cel.yaml",
        """\
          - id: one
            description: CEL mistakes
            match: {types: [com.acme.a]}
            map:
              audio: {uri: "data.url +"}
              context:
                callid: dta.call_id
                queue: caption.queue
                tier: >
                  has(data.tier)
                    ? data.tier : nul
              language: lower(data.lang)
              channels: data.roles.map(r, r.name)
        """,
    )  # fmt: skip
    errors = errors_of(path)
    assert errors[0].startswith(f"{path}:9:18: adapters[0].map.audio.uri: CEL syntax error: 1:11: mismatched input '<EOF>'")
    assert errors[1:] == [
        f"{path}:11:15: adapters[0].map.context.callid: unknown CEL variable dta (known: event, data)",
        f"{path}:12:14: adapters[0].map.context.queue: unknown CEL variable caption (known: event, data)",
        f"{path}:13:13: adapters[0].map.context.tier: unknown CEL variable nul (known: event, data)",
        f"{path}:16:15: adapters[0].map.language: unknown CEL function lower",
    ]


def test_duplicates_across_files(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", adapter_yaml("one", "[com.acme.a, com.acme.b]"))
    second = write(tmp_path, "b.yaml", adapter_yaml("one", "[com.acme.c]") + adapter_yaml("two", "[com.acme.b]"))
    with pytest.raises(AdapterLoadError) as raised:
        load_adapters(tmp_path)
    assert [str(e) for e in raised.value.errors] == [
        f"{second}:5:7: adapters[0].id: duplicate adapter id 'one' (first defined at {first}:5:7)",
        f"{second}:11:10: adapters[1].match: type 'com.acme.b' from source '*' is already adapted by 'one' "
        f"({first}:7:10)",
    ]
    assert str(raised.value).startswith("2 errors in adapters:\n")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "1:1: empty file: expected an AdapterSet (apiVersion, kind, metadata, adapters)"),
        ("adapters: [\n", "2:1: invalid YAML: expected the node content, but found '<stream end>'"),
        ("- 1\n", "1:1: expected a mapping with apiVersion, kind, metadata, adapters"),
        (
            HEADER.replace("AdapterSet", "RuleSet") + adapter_yaml(),
            "2:7: kind: Input should be 'AdapterSet' (got 'RuleSet')",
        ),
        (
            HEADER + "  - id: x\n    description: d\n    match: {types: []}\n    map: {audio: {uri: data.u}}\n",
            "7:20: adapters[0].match.types: List should have at least 1 item after validation, not 0",
        ),
        (
            HEADER + adapter_yaml(map_="{audio: {object: {bucket: data.b}}}"),
            "8:27: adapters[0].map.audio.object.name: missing required field",
        ),
        (
            HEADER + adapter_yaml(map_="{audio: {uri: data.u}, extensions: {time: data.t}}"),
            "8:46: adapters[0].map.extensions.time: time is a core or reserved attribute, not an extension",
        ),
    ],
    ids=[
        "empty",
        "yaml-syntax",
        "not-a-mapping",
        "wrong-kind",
        "no-types",
        "object-without-name",
        "reserved-extension",
    ],
)
def test_broken_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(text)
    [error] = errors_of(path)
    assert error.startswith(f"{path}:{message}")


def test_a_missing_path_is_an_error_and_dot_files_are_skipped(tmp_path: Path) -> None:
    with pytest.raises(AdapterLoadError, match="adapter file or directory does not exist"):
        load_adapters(tmp_path / "nope")
    (tmp_path / ".swap.yaml").write_text("not: [valid")
    (tmp_path / "notes.txt").write_text("ignored")
    assert len(load_adapters(tmp_path)) == 0


def test_an_alias_bomb_is_refused_not_expanded(tmp_path: Path) -> None:
    # The same YAML layer as rule files: a few hundred bytes may not expand to a million values.
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{name}: &{name} [{', '.join([f'*{prev}'] * 10)}]\n" for prev, name in zip("abcde", "bcdef", strict=True)
    )
    (tmp_path / "bomb.yaml").write_text(bomb)
    assert errors_of(tmp_path) == [f"{tmp_path / 'bomb.yaml'}:1:1: too large: more than 100,000 values once aliases are expanded"]
