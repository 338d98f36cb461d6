"""No planted identifier leaves the Captioner: real audio decoded and windowed, scripted captions,
the ``audio.captioned`` event built by the pipeline, stored in a real nats-server and read back,
and the rules' decisions made from it. Facets are the same as without redaction. A failed
guided facet pass, whose error quotes the model's answer, is logged redacted.

The caption engine is scripted (the tiny checkpoint writes noise): what is under test is what
happens to the captions after the engine, so the engine's words must be known.
"""

from __future__ import annotations

import asyncio
import base64
import json
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats.errors
import numpy as np
import pytest
from nats.js import JetStreamContext

from services.captioner.engines import CaptionResult
from services.captioner.engines.base import TextResult
from services.captioner.facets import extract_facets
from services.captioner.redaction import OFF, RedactionPolicy
from services.events.binding import decode, event_data_json, new_event
from services.events.connection import connect
from services.events.embedded import EmbeddedNatsServer
from services.events.jetstream import provision, publish_event
from services.events.models import AUDIO_CAPTIONED, AUDIO_SUBMITTED, AudioCaptioned, AudioSubmitted, Window
from services.orchestrator.pipeline import caption_submitted
from services.preprocess.pipeline import PreparedAudio, prepare
from services.rules import evaluate, load_ruleset
from services.settings import CaptionerSettings, NatsSettings, PreprocessSettings
from tests.audio_factory import call, sndfile_bytes
from tests.test_captioner_deployment import StubEngine, make_captioner

# What the scripted engine "hears", window by window (cycled): identifiers inside sentences
# that also carry facet cues, so the facets' evidence quotes them too.
CAPTIONS = [
    "The customer, sounding furious, reads out her card number 4111 1111 1111 1111 and her e-mail "
    "jane.doe@example.com. A dog barks twice.",
    "The customer sounds anxious as she gives her phone, +44 20 7946 0958, and her IBAN GB82 WEST 1234 5698 7654 32.",
    "The agent calmly confirms her SSN, 536-90-4399, and reads back four one one one, one one one one, "
    "one one one one, one one one one.",
]
# The planted identifiers as said, and the other forms in which they could leak.
SAID = [
    "4111 1111 1111 1111", "jane.doe@example.com", "+44 20 7946 0958", "GB82 WEST 1234 5698 7654 32",
    "536-90-4399", "four one one one, one one one one",
]  # fmt: skip
PLANTED = [*SAID, "4111111111111111", "7946 0958", "442079460958", "GB82WEST12345698765432", "536904399"]
# Agent on channel 0, customer on channel 1: several windows per channel.
SCRIPT = [(0, 0.5, 9.0), (1, 10.0, 19.0), (0, 20.0, 29.0), (1, 30.0, 39.0)]

RULES = """
- id: angry-customer
  description: alert quoting the evidence
  match: {types: [com.listenpost.audio.captioned]}
  when: 'emotion("customer", ["anger"], 0.5)'
  continue: true
  actions:
    - alert:
        severity: warning
        summary: 'angry customer: "{{ match.span }}"'
        description: '{{ match.caption }}'
- id: export
  description: everything a consumer could export
  match: {types: [com.listenpost.audio.captioned]}
  when: "true"
  actions:
    - emit:
        type: com.acme.call.exported
        subject: rules.emit.crm
        data: {caption: "{{ caption }}", windows: "{{ data.windows }}", facets: "{{ facets }}"}
"""


@pytest.fixture(scope="module")
def recording() -> bytes:
    truth = call(SCRIPT, 40.0, rate=8000, noise_dbfs=-70, seed=3)
    return sndfile_bytes(truth.samples, 8000, "WAV", "PCM_16")


@pytest.fixture
async def js(tmp_path: Path) -> AsyncIterator[tuple[JetStreamContext, NatsSettings]]:
    with EmbeddedNatsServer(tmp_path / "nats") as server:
        cfg = NatsSettings(url=server.url)
        nc = await connect(server.client_settings(), role="admin", name="redaction-test")
        jsc = nc.jetstream()
        await provision(jsc, cfg)
        yield jsc, cfg
        await nc.close()


def submitted_event(recording: bytes) -> Any:
    data = {
        "audio": {"data_base64": base64.b64encode(recording).decode(), "format": "wav"},
        "channels": [{"index": 0, "role": "agent"}, {"index": 1, "role": "customer"}],
        "context": {"callid": "call-7"},
    }
    return new_event(AUDIO_SUBMITTED, "urn:test:pbx", data)


async def _prepare(submitted: AudioSubmitted) -> PreparedAudio:
    assert submitted.audio.data_base64 is not None
    data = base64.b64decode(submitted.audio.data_base64)
    return await asyncio.to_thread(prepare, data, submitted, PreprocessSettings())


async def _scripted_caption(samples: np.ndarray, request_id: str) -> CaptionResult:
    index = int(request_id.rsplit("/w", 1)[1])
    text = CAPTIONS[index % len(CAPTIONS)]
    return CaptionResult(request_id=request_id, text=text, prompt_tokens=10, output_tokens=40, engine_seconds=0.01, engine="scripted")


async def captioned_event(recording: bytes, policy: RedactionPolicy) -> Any:
    event = submitted_event(recording)
    submitted = AudioSubmitted.model_validate(event_data_json(event))
    return await caption_submitted(
        event, submitted, prepare=_prepare, caption=_scripted_caption, model="scripted", engine="scripted",
        source="urn:listenpost", redaction=policy,
    )  # fmt: skip


async def stored_captioned(jsc: JetStreamContext, cfg: NatsSettings, event: Any) -> tuple[bytes, dict[str, Any]]:
    """Publish like the Ingress, then read back what LISTENPOST_OUT stored: (raw bytes with headers, data)."""
    await publish_event(jsc, cfg.subject("captioned"), event, msg_id=f"captioned-{event.get_id()}")
    sub = await jsc.subscribe(cfg.subject("captioned"), ordered_consumer=True)
    try:
        msg = await sub.next_msg(timeout=5)
    except nats.errors.TimeoutError:
        pytest.fail("the captioned event was not stored")
    finally:
        await sub.unsubscribe()
    raw = msg.data + json.dumps(dict(msg.headers or {})).encode()
    return raw, event_data_json(decode(msg.data, msg.headers))


def decisions(tmp_path: Path, attributes: dict[str, Any], data: dict[str, Any]) -> bytes:
    header = "apiVersion: listenpost/v1\nkind: RuleSet\nmetadata: {name: t, owner: qa}\nrules:\n"
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "rules.yaml").write_text(header + textwrap.indent(RULES, "  "))
    made = evaluate(load_ruleset(tmp_path / "rules"), attributes, data).decisions
    assert sorted(d.kind for d in made) == ["alert", "emit"]
    return json.dumps([{"kind": d.kind, "subject": d.subject, "data": d.data} for d in made]).encode()


def leaks(blob: bytes) -> list[str]:
    text = blob.decode()
    return [p for p in PLANTED if p in text]


async def test_without_redaction_every_planted_identifier_leaks(
    recording: bytes, js: tuple[JetStreamContext, NatsSettings], tmp_path: Path
) -> None:
    """The attack as it is without the step: what the engine hears goes to every consumer."""
    jsc, cfg = js
    raw, data = await stored_captioned(jsc, cfg, await captioned_event(recording, OFF))
    assert len(data["windows"]) >= len(CAPTIONS)
    assert [p for p in leaks(raw) if p in SAID] == SAID
    assert data["redactions"] == {}
    attributes = {"specversion": "1.0", "id": "c-1", "source": "urn:listenpost", "type": AUDIO_CAPTIONED}
    assert "4111 1111 1111 1111" in decisions(tmp_path, attributes, data).decode()


async def test_no_planted_identifier_reaches_the_stream_or_the_decisions(
    recording: bytes, js: tuple[JetStreamContext, NatsSettings], tmp_path: Path
) -> None:
    jsc, cfg = js
    policy = RedactionPolicy.from_settings(CaptionerSettings())  # the defaults: everything, region US
    event = await captioned_event(recording, policy)
    raw, data = await stored_captioned(jsc, cfg, event)
    assert leaks(raw) == []
    assert "[CARD]" in data["caption"] and "[NATIONAL_ID]" in data["caption"]
    windows = len(data["windows"])
    per_cycle = {0: {"card": 1, "email": 1}, 1: {"phone": 1, "iban": 1}, 2: {"national_id": 1, "card": 1}}
    expected: dict[str, int] = {}
    for index in range(windows):
        for label, n in per_cycle[index % len(CAPTIONS)].items():
            expected[label] = expected.get(label, 0) + n
    assert data["redactions"] == {k: expected[k] for k in ("email", "phone", "card", "iban", "national_id") if k in expected}
    assert data["windows"][0]["caption"] == (
        "The customer, sounding furious, reads out her card number [CARD] and her e-mail [EMAIL]. A dog barks twice."
    )
    attributes = {"specversion": "1.0", "id": event.get_id(), "source": "urn:listenpost", "type": AUDIO_CAPTIONED}
    made = decisions(tmp_path, attributes, data)
    assert leaks(made) == []
    assert b"angry customer: \\\"The customer, sounding furious, reads out her card number [CARD]" in made


async def test_facets_are_those_of_the_raw_captions_with_their_quotes_redacted(recording: bytes) -> None:
    event = await captioned_event(recording, RedactionPolicy())
    data = AudioCaptioned.model_validate(event_data_json(event))
    raw_windows = [w.model_copy(update={"caption": CAPTIONS[w.index % len(CAPTIONS)]}) for w in data.windows]
    raw = extract_facets([Window.model_validate(w.model_dump()) for w in raw_windows])
    assert raw.emotions and raw.sound_events  # the captions do carry cues

    def facts(items: list[Any]) -> list[dict[str, Any]]:
        return [item.model_dump(exclude={"span", "span_start", "span_end"}) for item in items]

    assert facts(data.facets.emotions) == facts(raw.emotions)
    assert facts(data.facets.sound_events) == facts(raw.sound_events)
    assert data.facets.model_dump(exclude={"emotions", "sound_events"}) == raw.model_dump(exclude={"emotions", "sound_events"})
    # Each quote is the redacted caption at the redacted offsets, and hides what it quoted.
    captions = {w.index: w.caption for w in data.windows}
    quoted = [*data.facets.emotions, *data.facets.sound_events]
    assert any("[CARD]" in f.span for f in quoted)
    for f in quoted:
        assert f.span_start is not None and f.span_end is not None
        assert captions[f.window][f.span_start : f.span_end] == f.span
        assert leaks(f.span.encode()) == []
    # Acoustics and audio facts are untouched by redaction.
    plain = AudioCaptioned.model_validate(event_data_json(await captioned_event(recording, OFF)))
    assert (data.acoustics, data.audio) == (plain.acoustics, plain.audio)


class _QuotingEngine(StubEngine):
    """Answers the guided pass with JSON that quotes the caption in a field the schema forbids."""

    async def complete(self, prompt: str, *, request_id: str, max_tokens: int, json_schema: object = None) -> TextResult:
        answer = {"emotions": [], "sound_events": [], "languages": [], "speech_present": True, "music_present": False,
                  "quote": "her card is 4111 1111 1111 1111"}  # fmt: skip
        return TextResult(request_id=request_id, text=json.dumps(answer), prompt_tokens=1, output_tokens=1, engine_seconds=0)


@pytest.mark.filterwarnings("ignore:coroutine 'Captioner.__del__' was never awaited")
async def test_a_failed_guided_pass_logs_its_error_redacted(caplog: pytest.LogCaptureFixture) -> None:
    windows = [Window(index=0, start=0, end=30, channel=None, caption="The customer is furious: 4111 1111 1111 1111.")]
    replica: Any = await make_captioner(_QuotingEngine(), facets_extractor="guided", model="stub-model")
    with pytest.MonkeyPatch.context() as patch, caplog.at_level("WARNING", logger="services.captioner.deployment"):
        patch.setattr("services.captioner.facets.guided.text_prompt", lambda model, system, user: user)
        facets = await replica.facets(windows, "evt")
    assert facets.extractor == "lexicon"
    [record] = [r for r in caplog.records if r.name == "services.captioner.deployment"]
    message = record.getMessage()
    assert message.startswith("guided facets failed for evt, using the lexicon extractor: window 0: the guided answer is not valid facets")
    assert "input_value='her card is [CARD]'" in message
    assert "4111" not in message
