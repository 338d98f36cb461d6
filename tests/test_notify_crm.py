"""CRM write-back: the call summary from a captioned event and its decisions, mapping files
(good and bad, with exact messages), the writer against a real HTTP server on loopback (the
exact request; failures classified; secrets kept out of errors and logs), and the preview CLI."""

from __future__ import annotations

import base64
import json
import socket
import textwrap
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from notify_fixtures import RecordingServer, Reply, capture_http_log, http_server
from typer.testing import CliRunner

from services.captioner.timeline import merge_timeline
from services.cli import app
from services.events.binding import encode_structured, new_event
from services.events.facets import EmotionFacet, SoundEventFacet
from services.events.models import (
    AUDIO_CAPTIONED,
    AUDIO_SUBMITTED,
    Acoustics,
    AudioCaptioned,
    AudioFacts,
    ChannelAcoustics,
    Facets,
    SourceEventRef,
    Window,
)
from services.notify.call_summary import CallSummary, SummaryError, summarise
from services.notify.crm import (
    CrmConfig,
    CrmMapping,
    CrmMappingError,
    CrmMappingLoadError,
    compile_mapping,
    lint_mappings,
    load_mappings,
    payload,
    write,
)
from services.notify.receivers import DeliveryError, Secrets
from services.rules import RuleSet, evaluate, load_ruleset

__all__ = ["http_server"]  # the fixture, imported for pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "crm"
CALLID = "c-1042"
TOKEN = "crm-T0k3n-5ecr3t-0123456789"
PASSWORD = "crm-pa55w0rd-5ecr3t"
ATTRIBUTES = {
    "specversion": "1.0", "id": "cap-77", "source": "/listenpost/ingress", "type": AUDIO_CAPTIONED,
    "time": "2025-03-04T10:16:00Z", "inputid": "sub-77", "callid": CALLID,
}  # fmt: skip
WINDOWS = [
    Window(index=0, start=0.0, end=30.0, channel=0, role="agent",
           caption="The agent greets the caller calmly. Keyboard typing can be heard in the background."),
    Window(index=1, start=0.0, end=30.0, channel=1, role="customer",
           caption="The customer sounds furious about a double charge on the account."),
    Window(index=2, start=25.0, end=48.0, channel=0, role="agent",
           caption="Keyboard typing can be heard in the background. The agent apologises and offers a refund."),
    Window(index=3, start=25.0, end=48.0, channel=1, role="customer",
           caption="The customer, still frustrated, says they have called four times."),
]  # fmt: skip
RULES = """\
apiVersion: listenpost/v1
kind: RuleSet
metadata: {name: cx, owner: cx-ops}
rules:
  - id: angry-customer
    description: The customer is angry.
    priority: 10
    match: {types: [com.listenpost.audio.captioned]}
    when: facets.emotions.exists(e, e.role == "customer" && e.label == "anger" && e.intensity >= 0.6)
    continue: true
    actions:
      - route: {queue: escalations}
      - alert:
          severity: warning
          summary: "Angry customer on call {{ context.callid }}"
          labels: {queue: "{{ context.queue }}"}
  - id: overtalk
    description: Both parties spoke at once, twice or more.
    priority: 20
    match: {types: [com.listenpost.audio.captioned]}
    when: acoustics.overtalk_count >= 2
    actions:
      - tag: {tags: [overtalk, needs-review]}
"""


def channel(index: int, role: str, talk: float, lufs: float) -> ChannelAcoustics:
    return ChannelAcoustics(
        channel=index, role=role, duration_s=48.0, rms_dbfs=-24.0 + index, peak_dbfs=-3.0, silence_ratio=0.4,
        longest_silence_s=6.0, talk_time_s=talk, speech_ratio=round(talk / 48.0, 3), speech_segments=7,
        loudness_lufs=lufs, clipping_ratio=0.0, noise_dbfs=-60.0, snr_db=30.5 - index,
    )  # fmt: skip


def captioned_data(**context: Any) -> dict[str, Any]:
    """A realistic audio.captioned data: two channels (agent 0, customer 1), overlapping windows."""
    facets = Facets(
        emotions=[
            EmotionFacet(role="agent", label="calm", intensity=0.5, window=0, start=0.0, end=30.0,
                         span="The agent greets the caller calmly.", cue="calmly"),
            EmotionFacet(role="customer", label="anger", intensity=0.85, window=1, start=0.0, end=30.0,
                         span="The customer sounds furious about a double charge on the account.", cue="furious"),
            EmotionFacet(role="customer", label="frustration", intensity=0.6, confidence=0.8, window=3, start=25.0,
                         end=48.0, span="The customer, still frustrated, says they have called four times.",
                         cue="frustrated"),
        ],
        sound_events=[
            SoundEventFacet(label="keyboard_typing", confidence=0.8, window=0, start=0.0, end=30.0,
                            span="Keyboard typing can be heard in the background.", cue="keyboard typing"),
        ],
        languages=["en"], speech_present=True, music_present=False, extractor="lexicon",
    )  # fmt: skip
    acoustics = Acoustics(
        duration_s=48.0, silence_ratio=0.12, longest_silence_s=3.5, dead_air_s=3.5, peak_dbfs=-1.2,
        channels=[channel(0, "agent", 21.5, -23.1), channel(1, "customer", 24.0, -19.8)],
        speech_ratio=0.88, talk_time_s={"agent": 21.5, "customer": 24.0}, non_talk_s=5.8, longest_non_talk_s=3.5,
        overtalk_s=3.2, overtalk_ratio=0.0667, overtalk_count=2, loudness_lufs=-21.4, clipping_ratio=0.001, snr_db=18.5,
    )  # fmt: skip
    data = AudioCaptioned(
        source_event=SourceEventRef(id="sub-77", source="/acme/pbx", type=AUDIO_SUBMITTED),
        context=context or {"callid": CALLID, "queue": "billing", "customer_tier": "gold"},
        audio=AudioFacts(duration_s=48.0, sample_rate=8000, channels=2, format="wav", codec="pcm_16"),
        windows=WINDOWS, caption=merge_timeline(WINDOWS), facets=facets, acoustics=acoustics,
        model="Qwen/Qwen2-Audio-7B-Instruct", engine="vllm", timings={"fetch": 0.12, "preprocess": 0.4, "caption": 2.8},
    )  # fmt: skip
    return data.model_dump(mode="json")


@pytest.fixture(scope="module")
def ruleset(tmp_path_factory: pytest.TempPathFactory) -> RuleSet:
    directory = tmp_path_factory.mktemp("rules")
    (directory / "cx.yaml").write_text(RULES)
    return load_ruleset(directory)


def decision_events(ruleset: RuleSet, data: dict[str, Any], attributes: dict[str, Any] = ATTRIBUTES) -> list[dict[str, Any]]:
    """The rules engine's decisions on the event, as the CloudEvents it publishes (structured JSON)."""
    out = []
    for decision in evaluate(ruleset, attributes, data).decisions:
        event = new_event(decision.type, "/listenpost/rules", decision.data, id=decision.id, subject=decision.rule_id,
                          extensions={"rulesetver": decision.ruleset_version, "inputid": attributes["id"], "callid": CALLID})  # fmt: skip
        out.append(json.loads(encode_structured(event)[0]))
    return out


@pytest.fixture(scope="module")
def summary(ruleset: RuleSet) -> CallSummary:
    data = captioned_data()
    return summarise(data, ATTRIBUTES, decision_events(ruleset, data))


@pytest.fixture(scope="module")
def generic() -> CrmMapping:
    return load_mappings(SHIPPED)["generic-rest"]


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


HEADER = "apiVersion: listenpost/v1\nkind: CrmMapping\nmetadata: {name: NAME}\n"


def mapping_file(directory: Path, text: str, name: str = "m") -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(HEADER.replace("NAME", name) + textwrap.dedent(text))
    return path


def errors_of(path: Path) -> list[str]:
    return [str(e) for e in lint_mappings(path)]


def expected_body(summary: CallSummary) -> dict[str, Any]:
    """What the shipped generic-rest mapping makes of the realistic call."""
    return {
        "external_id": CALLID,
        "channel": "voice",
        "source": "listenpost",
        "occurred_at": "2025-03-04T10:16:00Z",
        "duration_seconds": 48.0,
        "queue": "billing",
        "languages": ["en"],
        "summary": merge_timeline(WINDOWS),
        "transcript": [
            {"end": w.end, "speaker": w.role, "start": w.start, "text": w.caption} for w in WINDOWS
        ],
        "customer": {"emotion": "anger", "emotions": ["anger", "frustration"], "talk_seconds": 24.0},
        "agent": {"emotion": "calm", "talk_seconds": 21.5},
        "sounds": ["keyboard_typing"],
        "metrics": {"silence_ratio": 0.12, "dead_air_seconds": 3.5, "overtalk_seconds": 3.2, "overtalk_count": 2,
                    "loudness_lufs": -21.4},
        "escalated": True,
        "queues": ["escalations"],
        "tags": ["overtalk", "needs-review"],
        "alerts": [{"rule": "angry-customer", "severity": "warning", "summary": "Angry customer on call c-1042"}],
        "analysis": {"model": "Qwen/Qwen2-Audio-7B-Instruct", "engine": "vllm",
                     "ruleset_version": summary.ruleset_version, "summary_id": summary.summary_id},
    }  # fmt: skip


# --- the call summary ----------------------------------------------------------------------------


def test_the_summary_of_a_two_party_call_and_its_decisions(summary: CallSummary, ruleset: RuleSet) -> None:
    assert (summary.callid, summary.input_id, summary.input_source, summary.captioned_id) == (CALLID, "sub-77", "/acme/pbx", "cap-77")
    assert summary.captioned_at == datetime(2025, 3, 4, 10, 16, tzinfo=UTC)
    assert summary.context == {"callid": CALLID, "queue": "billing", "customer_tier": "gold"}
    # The merged timeline says "Keyboard typing..." once: window 2 overlaps window 0 of the same channel.
    assert summary.caption == (
        "[00:00-00:30 agent] The agent greets the caller calmly. Keyboard typing can be heard in the background.\n"
        "[00:00-00:30 customer] The customer sounds furious about a double charge on the account.\n"
        "[00:25-00:48 agent] The agent apologises and offers a refund.\n"
        "[00:25-00:48 customer] The customer, still frustrated, says they have called four times."
    )
    assert [(t.start, t.party, t.channel) for t in summary.timeline] == [
        (0.0, "agent", 0), (0.0, "customer", 1), (25.0, "agent", 0), (25.0, "customer", 1)
    ]  # fmt: skip
    assert summary.parties == ["agent", "customer"]
    customer, agent = summary.facets["customer"], summary.facets["agent"]
    assert (customer.top_emotion, customer.top_emotion_intensity, customer.emotion_labels) == ("anger", 0.85, ["anger", "frustration"])
    assert (customer.channels, customer.talk_time_s, customer.talk_share, customer.sound_labels) == ([1], 24.0, 0.5275, [])
    assert (agent.top_emotion, agent.channels, agent.talk_time_s, agent.sound_labels) == ("calm", [0], 21.5, ["keyboard_typing"])
    assert [(s.label, s.party) for s in summary.sound_events] == [("keyboard_typing", "agent")]
    acoustics = summary.acoustics
    assert acoustics.talk_time_s == {"agent": 21.5, "customer": 24.0}
    assert (acoustics.overtalk_s, acoustics.overtalk_count, acoustics.dead_air_s, acoustics.loudness_lufs) == (3.2, 2, 3.5, -21.4)
    assert [(c.channel, c.party, c.loudness_lufs) for c in acoustics.channels] == [(0, "agent", -23.1), (1, "customer", -19.8)]
    assert [(d.kind, d.rule_id, d.queue, d.severity, d.summary, d.tags) for d in summary.decisions] == [
        ("route", "angry-customer", "escalations", None, None, None),
        ("alert", "angry-customer", None, "warning", "Angry customer on call c-1042", None),
        ("tag", "overtalk", None, None, None, ["overtalk", "needs-review"]),
    ]
    assert summary.decisions[1].labels == {"queue": "billing"}
    assert (summary.queues, summary.tags) == (["escalations"], ["overtalk", "needs-review"])
    assert (summary.ruleset_version, summary.ruleset_versions) == (ruleset.version, [ruleset.version])
    assert (summary.model, summary.engine, summary.languages) == ("Qwen/Qwen2-Audio-7B-Instruct", "vllm", ["en"])
    assert summary.decided_at is not None and summary.timings["caption"] == 2.8


def test_the_summary_id_is_the_same_for_the_same_event_and_decisions(ruleset: RuleSet) -> None:
    data = captioned_data()
    events = decision_events(ruleset, data)
    first, again = summarise(data, ATTRIBUTES, events), summarise(data, ATTRIBUTES, decision_events(ruleset, data))
    assert first.summary_id == again.summary_id
    assert summarise(data, ATTRIBUTES, []).summary_id != first.summary_id
    # The Decision objects themselves (model_dump) summarise the same way as their CloudEvents.
    dumps = [d.model_dump() for d in evaluate(ruleset, ATTRIBUTES, data).decisions]
    from_dumps = summarise(data, ATTRIBUTES, dumps)
    assert from_dumps.summary_id == first.summary_id
    assert [d.model_dump(exclude={"time"}) for d in from_dumps.decisions] == [d.model_dump(exclude={"time"}) for d in first.decisions]


def test_shadow_matches_and_rule_errors_are_not_decisions(summary: CallSummary, ruleset: RuleSet) -> None:
    data = captioned_data()
    notice = {"specversion": "1.0", "id": "n-1", "source": "/listenpost/rules", "type": "com.listenpost.rule.shadowmatched",
              "subject": "trial", "data": {"rule_id": "trial", "actions": []}}  # fmt: skip
    with_notice = summarise(data, ATTRIBUTES, [*decision_events(ruleset, data), notice])
    assert [d.id for d in with_notice.decisions] == [d.id for d in summary.decisions]
    assert summarise(data, ATTRIBUTES, [{"kind": "error", "rule_id": "r", "data": {}}]).decisions == []


def test_a_down_mix_is_the_unknown_party_and_a_call_without_rules_has_no_version() -> None:
    data = captioned_data()
    data["windows"] = [{**w, "channel": None, "role": None} for w in data["windows"]]
    data["acoustics"]["channels"] = [{**data["acoustics"]["channels"][0], "channel": None, "role": None}]
    data["facets"]["emotions"] = [{**e, "role": None} for e in data["facets"]["emotions"]]
    summary = summarise(data, {}, [])
    assert summary.parties == ["unknown"]
    assert summary.facets["unknown"].top_emotion == "anger" and summary.facets["unknown"].channels == []
    assert summary.acoustics.talk_time_s == {"unknown": 21.5}
    assert (summary.captioned_id, summary.ruleset_version, summary.decisions) == (None, None, [])
    assert summarise(data, {}, [], ruleset_version="rs-12").ruleset_version == "rs-12"
    # CEL sees no empty fields: has() tells whether the call has one.
    assert "ruleset_version" not in summary.cel_value() and "captioned_at" not in summary.cel_value()


def test_summary_refuses_wrong_data_and_decisions_about_another_event(ruleset: RuleSet) -> None:
    data = captioned_data()
    with pytest.raises(SummaryError, match=r"^invalid com.listenpost.audio.captioned data: caption: Field required$"):
        summarise({k: v for k, v in data.items() if k != "caption"}, ATTRIBUTES, [])
    with pytest.raises(SummaryError, match=r"^the event is 'com.listenpost.audio.submitted', not com.listenpost.audio.captioned$"):
        summarise(data, {**ATTRIBUTES, "type": AUDIO_SUBMITTED}, [])
    other = decision_events(ruleset, data, {**ATTRIBUTES, "id": "cap-99"})
    with pytest.raises(SummaryError) as caught:
        summarise(data, ATTRIBUTES, other)
    assert str(caught.value) == "decision 0 (angry-customer) is about event 'cap-99', not the captioned event 'cap-77'"
    with pytest.raises(SummaryError, match=r"^decision 0 is neither a decision CloudEvent \(type, data\) nor a decision \(kind, data\)$"):
        summarise(data, ATTRIBUTES, [{"data": {}}])
    with pytest.raises(SummaryError, match=r"^decision 0 \(com.acme.thing\) names no rule: not a decision of the rules engine$"):
        summarise(data, ATTRIBUTES, [{"type": "com.acme.thing", "data": {}}])


# --- mapping files -------------------------------------------------------------------------------


def test_the_shipped_generic_rest_mapping(summary: CallSummary, generic: CrmMapping) -> None:
    assert errors_of(SHIPPED) == []
    request = payload(summary, generic, base_url="https://crm.example/api/")
    assert request.method == "PATCH"
    assert request.url == "https://crm.example/api/interactions/c-1042"
    assert request.headers == {"accept": "application/json", "content-type": "application/json", "idempotency-key": summary.summary_id}
    assert json.loads(request.body) == expected_body(summary)
    # The same summary gives the same bytes (CEL maps have no order: their keys are sorted).
    assert payload(summary, generic, base_url="https://crm.example/api/").body == request.body
    assert list(json.loads(request.body)["transcript"][0]) == ["end", "speaker", "start", "text"]


def test_a_call_without_an_id_fails_naming_the_mapping_field_and_expression(generic: CrmMapping, ruleset: RuleSet) -> None:
    data = captioned_data(queue="billing")
    no_id = summarise(data, {k: v for k, v in ATTRIBUTES.items() if k != "callid"}, [])
    with pytest.raises(CrmMappingError) as caught:
        payload(no_id, generic)
    assert str(caught.value) == "crm mapping 'generic-rest': cannot map request.params.callid from `summary.callid`: no such key: callid"


def test_bad_mapping_files_report_every_error_at_its_line(tmp_path: Path) -> None:
    path = mapping_file(tmp_path, """\
        reqest: {method: PATCH}
        request:
          method: GET
          path: /contacts/{contact}/calls/{call}
          params:
            contact: summary.context.customer_id
            unused: summary.callid
          headers:
            Authorization: "'x'"
            Bad Header: "'x'"
        body:
          id: summry.callid
          bad: "summary.callid +"
          flag: true
          count: 42
          empty:
          func: summary.caption.shout()
          deep: {a: {b: {c: {d: {e: {f: {g: {h: x}}}}}}}}
        """)  # fmt: skip
    p = str(path)
    assert errors_of(path) == [
        f"{p}:4:1: reqest: unknown field, did you mean 'request'?",
        f"{p}:6:11: request.method: Input should be 'POST', 'PUT' or 'PATCH' (got 'GET')",
        f"{p}:7:9: request.path: {{call}} has no expression in request.params",
        f"{p}:10:5: request.params.unused: not used in request.path",
        f"{p}:12:5: request.headers.Authorization: a header the writer sets (auth, content type), not a mapping",
        f"{p}:13:5: request.headers.Bad Header: not a header name (letters, digits and !#$%&'*+.^_`|~-)",
        f"{p}:15:7: body.id: unknown CEL variable summry (known: summary)",
        f"{p}:16:8: body.bad: CEL syntax error: 1:17: mismatched input '<EOF>' expecting {{'[', '{{', '(', '.', '-', '!', "
        "'true', 'false', 'null', NUM_FLOAT, NUM_INT, NUM_UINT, STRING, BYTES, IDENTIFIER}",
        f"{p}:17:3: body.flag: expected a CEL expression (a string), a map or a list, not the boolean true; "
        "a constant is CEL in quotes too: \"true\", \"42\", \"'text'\"",
        f"{p}:18:3: body.count: expected a CEL expression (a string), a map or a list, not the number 42; "
        "a constant is CEL in quotes too: \"true\", \"42\", \"'text'\"",
        f"{p}:19:3: body.empty: expected a CEL expression (a string), a map or a list, not an empty value; "
        "a constant is CEL in quotes too: \"true\", \"42\", \"'text'\"",
        f"{p}:20:9: body.func: unknown CEL function shout",
        f"{p}:21:37: body.deep.a.b.c.d.e.f.g: maps and lists nested more than 8 deep",
    ]
    with pytest.raises(CrmMappingLoadError, match=r"^13 errors in CRM mappings:\n"):
        load_mappings(path)


def test_bad_files_in_a_folder(tmp_path: Path) -> None:
    mapping_file(tmp_path, "body: {a: summary.callid}\n", name="dup")
    (tmp_path / "dup2.yaml").write_text(HEADER.replace("NAME", "dup") + "body: {a: summary.callid}\n")
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "other.yaml").write_text("apiVersion: listenpost/v1\nkind: AdapterSet\nmetadata: {name: other}\nbody: {}\n")
    (tmp_path / "path.yaml").write_text(HEADER.replace("NAME", "path") + 'request: {path: "/a b?x=1"}\nbody: {a: summary.callid}\n')
    (tmp_path / "notes.txt").write_text("not a mapping")
    d = str(tmp_path)
    assert errors_of(tmp_path) == [
        f"{d}/dup2.yaml:3:18: metadata.name: duplicate mapping name 'dup' (first defined at {d}/dup.yaml:3:18)",
        f"{d}/empty.yaml:1:1: empty file: expected a CrmMapping (apiVersion, kind, metadata, request, body)",
        f"{d}/other.yaml:2:7: kind: Input should be 'CrmMapping' (got 'AdapterSet')",
        f"{d}/other.yaml:4:7: body: Dictionary should have at least 1 item after validation, not 0",
        f"{d}/path.yaml:4:17: request.path: '/a b?x=1' is not a URL path: it starts with '/' and holds no spaces, "
        "'?' or '#' (use `query` for parameters)",
    ]
    assert errors_of(tmp_path / "missing") == [f"{d}/missing:1:1: CRM mapping file or directory does not exist"]


def test_parameters_are_escaped_nulls_left_out_and_values_bounded(tmp_path: Path, summary: CallSummary) -> None:
    path = mapping_file(tmp_path, """\
        request:
          method: PUT
          path: /contacts/{contact}/calls/{call}
          params: {contact: "summary.context.customer_tier + '/../admin'", call: "42"}
          query: {source: "'listen post'", missing: "null", escalated: "size(summary.queues) > 0"}
          headers: {X-Call: summary.callid, X-None: "null"}
        body:
          kept: summary.callid
          left_out: "null"
          list: ["summary.callid", "null"]
          when: "timestamp('2025-03-04T10:16:00Z')"
          took: "duration('90s')"
        """)  # fmt: skip
    request = payload(summary, load_mappings(path)["m"], base_url="https://crm.example")
    assert request.method == "PUT"
    assert request.url == "https://crm.example/contacts/gold%2F..%2Fadmin/calls/42?source=listen%20post&escalated=true"
    assert request.headers["x-call"] == CALLID and "x-none" not in request.headers
    assert json.loads(request.body) == {"kept": CALLID, "list": [CALLID, None], "when": "2025-03-04T10:16:00Z", "took": 90.0}
    assert payload(summary, load_mappings(path)["m"]).url.startswith("/contacts/")

    def failure(body: str, request: str = "") -> str:
        mapping = compile_mapping({"apiVersion": "listenpost/v1", "kind": "CrmMapping", "metadata": {"name": "t"},
                                   "request": json.loads(request or "{}"), "body": {"x": body}}, Path("<t>"))  # fmt: skip
        with pytest.raises(CrmMappingError) as caught:
            payload(summary, mapping)
        return str(caught.value)

    assert failure("b'ab'") == "crm mapping 't': body.x from `b'ab'` yields bytes b'ab', which JSON cannot hold"
    assert failure("{1: 'a'}") == "crm mapping 't': body.x from `{1: 'a'}` yields a map with the key 1: JSON keys are strings"
    assert failure("'x'", '{"path": "/c/{id}", "params": {"id": "\'..\'"}}') == (
        "crm mapping 't': request.params.id from `'..'` is '..': a path parameter is a name, not an empty or dot segment"
    )
    assert failure("'x'", '{"headers": {"X-Evil": "\'a\\\\r\\\\nb\'"}}') == (
        "crm mapping 't': request.headers.X-Evil from `'a\\r\\nb'` is 'a\\r\\nb': a header holds no control characters (line breaks)"
    )
    assert failure("summary.caption + 1") == (
        "crm mapping 't': cannot map body.x from `summary.caption + 1`: Unsupported operation: string + int"
    )
    small = compile_mapping({"apiVersion": "listenpost/v1", "kind": "CrmMapping", "metadata": {"name": "small"},
                             "body": {"caption": "summary.caption"}, "max_body_bytes": 100}, Path("<t>"))  # fmt: skip
    with pytest.raises(CrmMappingError, match=r"^crm mapping 'small': the body is 3\d\d bytes, more than max_body_bytes \(100\)$"):
        payload(summary, small)


def test_a_target_takes_an_inline_mapping_and_checks_it() -> None:
    config = CrmConfig(name="crm-inline", url="https://crm.example/v1", mapping={"body": {"id": "summary.callid"}})
    assert config.secret_names() == []
    with pytest.raises(ValueError) as caught:
        CrmConfig(name="crm-inline", url="https://crm.example/v1", mapping={"body": {"id": "summry.callid"}})
    assert "inline mapping: body.id: unknown CEL variable summry (known: summary)" in str(caught.value)
    with pytest.raises(ValueError, match="set exactly one of url and url_secret"):
        CrmConfig(name="x", mapping="generic-rest")
    with pytest.raises(ValueError, match="headers may not set Authorization: the writer sets them"):
        CrmConfig(name="x", url="https://crm.example", mapping="generic-rest", headers={"Authorization": "x"})
    with pytest.raises(ValueError, match="url is a base URL: no query or fragment"):
        CrmConfig(name="x", url="https://crm.example/?k=1", mapping="generic-rest")
    both = CrmConfig(name="x", url_secret="crm-url", mapping="generic-rest", auth={"type": "bearer", "token_secret": "crm-token"})
    assert both.secret_names() == ["crm-token", "crm-url"]


# --- the writer, against a real HTTP server -------------------------------------------------------


async def test_write_patches_the_crm_with_a_bearer_token_from_a_secret(
    http_server: RecordingServer, client: httpx.AsyncClient, summary: CallSummary, generic: CrmMapping,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    capture_http_log(caplog)
    config = CrmConfig(name="crm-acme", url=f"{http_server.url}/api/v2", mapping="generic-rest",
                       auth={"type": "bearer", "token_secret": "crm-token"}, headers={"X-Api-Version": "2024-10"})  # fmt: skip
    delivery = await write(summary, config, Secrets({"crm-token": TOKEN}), client, mappings={"generic-rest": generic})
    assert (delivery.receiver, delivery.type, delivery.status, delivery.requests) == ("crm-acme", "crm", 200, 1)
    (request,) = http_server.requests
    assert (request.method, request.path) == ("PATCH", "/api/v2/interactions/c-1042")
    headers = {k: v for k, v in request.headers.items() if k not in ("host", "accept-encoding", "connection", "content-length")}
    assert headers == {
        "accept": "application/json",
        "content-type": "application/json",
        "idempotency-key": summary.summary_id,
        "authorization": f"Bearer {TOKEN}",
        "user-agent": "listenpost-notify/1",
        "x-api-version": "2024-10",
    }
    assert json.loads(request.body) == expected_body(summary)
    assert "HTTP Request: PATCH" in caplog.text and TOKEN not in caplog.text


async def test_a_url_from_a_secret_basic_auth_and_a_put(http_server: RecordingServer, client: httpx.AsyncClient,
                                                         summary: CallSummary, generic: CrmMapping) -> None:  # fmt: skip
    config = CrmConfig(name="crm-acme", url_secret="crm-url", method="PUT", mapping="generic-rest",
                       auth={"type": "basic", "username": "listenpost", "password_secret": "crm-password"})  # fmt: skip
    secrets = Secrets({"crm-url": f"{http_server.url}/tenants/t-9", "crm-password": PASSWORD})
    await write(summary, config, secrets, client, mappings={"generic-rest": generic})
    (request,) = http_server.requests
    assert (request.method, request.path) == ("PUT", "/tenants/t-9/interactions/c-1042")
    assert request.headers["authorization"] == "Basic " + base64.b64encode(f"listenpost:{PASSWORD}".encode()).decode()


@pytest.mark.parametrize(
    ("reply", "retryable", "retry_after", "message"),
    [
        (Reply(500, b"boom"), True, None, "answered HTTP 500 Internal Server Error: boom"),
        (Reply(429, b"slow down", {"retry-after": "7"}), True, 7.0, "answered HTTP 429 Too Many Requests: slow down (retry after 7 s)"),
        (Reply(400, b'{"error": "unknown field escalated"}'), False, None,
         'answered HTTP 400 Bad Request: {"error": "unknown field escalated"}'),
        (Reply(404, b"no such interaction"), False, None, "answered HTTP 404 Not Found: no such interaction"),
    ],
)  # fmt: skip
async def test_failures_are_classified_like_every_receiver(
    http_server: RecordingServer, client: httpx.AsyncClient, summary: CallSummary, generic: CrmMapping,
    reply: Reply, retryable: bool, retry_after: float | None, message: str,
) -> None:  # fmt: skip
    http_server.replies.append(reply)
    config = CrmConfig(name="crm-acme", url_secret="crm-url", mapping="generic-rest")
    secret_url = f"{http_server.url}/hooks/{TOKEN}"
    with pytest.raises(DeliveryError) as caught:
        await write(summary, config, Secrets({"crm-url": secret_url}), client, mappings={"generic-rest": generic})
    error = caught.value
    assert (error.retryable, error.retry_after_s, error.status) == (retryable, retry_after, reply.status)
    host = http_server.url.removeprefix("http://")
    assert str(error) == f"receiver 'crm-acme': http://{host} (URL of secret 'crm-url') {message}"
    assert TOKEN not in str(error) and TOKEN not in repr(error)


async def test_nothing_is_sent_when_a_secret_the_mapping_or_the_server_is_missing(
    http_server: RecordingServer, client: httpx.AsyncClient, summary: CallSummary, generic: CrmMapping,
) -> None:  # fmt: skip
    config = CrmConfig(name="crm-acme", url=http_server.url, mapping="generic-rest", auth={"type": "bearer", "token_secret": "nope"})
    with pytest.raises(DeliveryError) as caught:
        await write(summary, config, Secrets(), client, mappings={"generic-rest": generic})
    assert (str(caught.value), caught.value.retryable) == ("receiver 'crm-acme': secret 'nope' is not configured", False)
    with pytest.raises(DeliveryError) as caught:
        await write(summary, config.model_copy(update={"mapping": "other"}), Secrets(), client, mappings={"generic-rest": generic})
    assert str(caught.value) == "receiver 'crm-acme': CRM mapping 'other' is not loaded (loaded: generic-rest)"
    no_id = summarise(captioned_data(queue="billing"), {}, [])
    with pytest.raises(DeliveryError) as caught:
        await write(no_id, CrmConfig(name="crm-acme", url=http_server.url, mapping="generic-rest"), Secrets(), client,
                    mappings={"generic-rest": generic})  # fmt: skip
    assert caught.value.retryable is False and "cannot map request.params.callid from `summary.callid`" in str(caught.value)
    with pytest.raises(DeliveryError) as caught:
        await write(summary, CrmConfig(name="crm-acme", url_secret="u", mapping="generic-rest"), Secrets({"u": "not a url"}),
                    client, mappings={"generic-rest": generic})  # fmt: skip
    assert str(caught.value) == "receiver 'crm-acme': secret 'u' is not an http(s) base URL without query or fragment"
    assert http_server.requests == []
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DeliveryError) as caught:
        await write(summary, CrmConfig(name="crm-acme", url=f"http://127.0.0.1:{port}", mapping="generic-rest"), Secrets(),
                    client, mappings={"generic-rest": generic})  # fmt: skip
    assert caught.value.retryable is True and "could not reach" in str(caught.value)


async def test_write_reads_the_mappings_folder_of_the_settings(
    http_server: RecordingServer, client: httpx.AsyncClient, summary: CallSummary, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("LISTENPOST_NOTIFY__CRM_MAPPINGS_DIR", str(SHIPPED))
    await write(summary, CrmConfig(name="crm-acme", url=http_server.url, mapping="generic-rest"), Secrets(), client)
    assert http_server.requests[0].path == "/interactions/c-1042"


# --- listenpost crm preview / check ---------------------------------------------------------------

runner = CliRunner()


def cli(*args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture
def call_files(tmp_path: Path, ruleset: RuleSet) -> tuple[Path, Path]:
    data = captioned_data()
    captioned = tmp_path / "captioned.json"
    captioned.write_text(json.dumps({**ATTRIBUTES, "datacontenttype": "application/json", "data": data}))
    decisions = tmp_path / "decisions.jsonl"
    decisions.write_text("\n".join(json.dumps(e) for e in decision_events(ruleset, data)) + "\n")
    return captioned, decisions


def test_preview_prints_the_request(call_files: tuple[Path, Path], summary: CallSummary) -> None:
    captioned, decisions = call_files
    result = cli("crm", "preview", str(captioned), "--decisions", str(decisions), "--mapping", str(SHIPPED / "generic-rest.yaml"))
    assert result.exit_code == 0, result.output
    head, body = result.output.split("\n\n", 1)
    assert head.splitlines() == [
        "PATCH /interactions/c-1042",
        "accept: application/json",
        "content-type: application/json",
        f"idempotency-key: {summary.summary_id}",
    ]
    assert json.loads(body) == expected_body(summary)


def test_preview_with_a_target_shows_secrets_by_name_only(
    call_files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, summary: CallSummary,
) -> None:  # fmt: skip
    monkeypatch.setenv("LISTENPOST_NOTIFY__SECRETS", json.dumps({"crm-url": "https://crm.example/t/SECRETPATH", "crm-token": TOKEN}))
    monkeypatch.setenv("LISTENPOST_NOTIFY__CRM_MAPPINGS_DIR", str(SHIPPED))
    target = tmp_path / "target.yaml"
    target.write_text("name: crm-acme\ntype: crm\nurl_secret: crm-url\nmapping: generic-rest\n"
                      "auth: {type: bearer, token_secret: crm-token}\n")
    captioned, decisions = call_files
    result = cli("crm", "preview", str(captioned), "--decisions", str(decisions), "--target", str(target), "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert (shown["method"], shown["url"]) == ("PATCH", "<secret 'crm-url'>/interactions/c-1042")
    assert shown["headers"]["authorization"] == "Bearer <secret 'crm-token'>"
    assert shown["body"] == expected_body(summary)
    assert TOKEN not in result.output and "SECRETPATH" not in result.output


def test_preview_and_check_errors(call_files: tuple[Path, Path], tmp_path: Path) -> None:
    captioned, _ = call_files
    claim_checked = tmp_path / "claim.json"
    claim_checked.write_text(json.dumps({**ATTRIBUTES, "dataref": "nats://listenpost-outputs/cap-77"}))
    result = runner.invoke(app, ["crm", "preview", str(claim_checked), "--mapping", str(SHIPPED / "generic-rest.yaml")])
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"error: {claim_checked}: the event has no data (dataref 'nats://listenpost-outputs/cap-77'); "
        "a claim-checked event's data must be fetched and passed"
    )
    target = tmp_path / "target.yaml"
    target.write_text("name: crm-acme\nurl: https://crm.example\nmaping: generic-rest\n")
    result = runner.invoke(app, ["crm", "preview", str(captioned), "--target", str(target)])
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        f"{target}:1:1: mapping: missing required field",
        f"{target}:3:1: maping: unknown field, did you mean 'mapping'?",
    ]
    bad = mapping_file(tmp_path, "body: {a: summry.callid}\n", name="bad")
    result = runner.invoke(app, ["crm", "check", str(bad)])
    assert (result.exit_code, result.output.strip()) == (1, f"{bad}:4:11: body.a: unknown CEL variable summry (known: summary)")
    result = cli("crm", "check", str(SHIPPED))
    assert (result.exit_code, result.output.strip()) == (0, f"{SHIPPED}: ok: 1 mapping (generic-rest)")
