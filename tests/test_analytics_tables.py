"""The rows of `listenpost export`'s tables, from model-valid events (services/analytics/tables.py).

Pure: events are built with the event contracts' models, encoded and decoded as NATS carries
them (binary mode), and turned into rows; every value of every row is asserted. The builders
here are shared with tests/test_analytics_export.py.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest

from services.analytics.errors import RowError
from services.analytics.tables import (
    FILE_SCHEMAS,
    SCHEMA_VERSION,
    SCHEMA_VERSION_KEY,
    SCHEMAS,
    TABLE_KEY,
    TABLES,
    CallIndex,
    Marker,
    StoredEvent,
    Tabulator,
    call_row,
    captioned_rows,
    dead_letter_row,
    decision_row,
    facet_rows,
    range_start,
    read_marker,
    window_rows,
)
from services.analytics.writer import arrow_table
from services.events.binding import decode, encode_binary, event_attributes, event_data_json, new_event
from services.events.deadletter import original_record
from services.events.facets import EmotionFacet, SoundEventFacet
from services.events.models import (
    ALERT_RAISED,
    AUDIO_CAPTIONED,
    AUDIO_FAILED,
    AUDIO_SUBMITTED,
    ROUTE_DECIDED,
    RULES_EVALUATED,
    TAG_ADDED,
    Acoustics,
    AudioCaptioned,
    AudioFacts,
    AudioFailed,
    AudioSubmitted,
    EvaluatedDecision,
    Facets,
    RulesEvaluated,
    SourceEventRef,
    StoredEventRef,
    Window,
)

T0 = datetime(2025, 3, 4, 10, 15, 30, tzinfo=UTC)
SOURCE = "urn:listenpost:test"


# ---------------------------------------------------------------------------- builders (shared)


def stored(
    type: str,
    data: Any,
    *,
    id: str,
    time: datetime | None,
    extensions: Mapping[str, Any] | None = None,
    subject: str | None = None,
    stored_at: datetime | None = None,
) -> StoredEvent:
    """The event as the export's reader sees it: encoded for NATS (binary mode) and decoded."""
    event = new_event(type, SOURCE, data, id=id, subject=subject, extensions=extensions, time=time)
    if time is None:
        event.get_attributes().pop("time", None)
    decoded = decode(*encode_binary(event))
    return StoredEvent(attributes=event_attributes(decoded), data=event_data_json(decoded), stored_at=stored_at)


def captioned_data(
    *,
    context: dict[str, Any],
    input_id: str = "in-1",
    duration_s: float = 60.0,
    captions: Sequence[str] = ("A calm greeting.",),
    window_s: float = 30.0,
    emotions: Sequence[tuple[str | None, str, float, int]] = (),
    sounds: Sequence[tuple[str, int]] = (),
    languages: Sequence[str] = (),
    dead_air_s: float = 0.0,
    overtalk_s: float = 0.0,
    talk_time: Mapping[str, float] | None = None,
    timings: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """A model-valid ``audio.captioned`` data: one window per caption, ``window_s`` apart, on
    channel 1 (customer); emotions as (role, label, intensity, window); sounds as (label, window)."""
    windows = [
        Window(index=i, start=i * window_s, end=(i + 1) * window_s, channel=1, role="customer", caption=text,
               prompt_tokens=100 + i, output_tokens=20 + i, engine_s=0.5)
        for i, text in enumerate(captions)
    ]  # fmt: skip
    facets = Facets(
        emotions=[
            EmotionFacet(role=role, label=label, intensity=intensity, confidence=0.75, window=w, start=w * window_s,
                         end=(w + 1) * window_s, span=f"sounds {label}", cue=label)  # type: ignore[arg-type]
            for role, label, intensity, w in emotions
        ],
        sound_events=[
            SoundEventFacet(label=label, confidence=0.5, window=w, start=w * window_s, end=(w + 1) * window_s,
                            span=f"a {label}", hedged=True)  # type: ignore[arg-type]
            for label, w in sounds
        ],
        languages=list(languages),
        speech_present=True,
        extractor="lexicon",
    )  # fmt: skip
    acoustics = Acoustics(
        duration_s=duration_s, silence_ratio=0.25, longest_silence_s=3.5, dead_air_s=dead_air_s, peak_dbfs=-1.5,
        channels=[], speech_ratio=0.5, talk_time_s=dict(talk_time or {"agent": 12.0, "customer": 18.0}),
        non_talk_s=30.0, overtalk_s=overtalk_s, overtalk_ratio=round(overtalk_s / duration_s, 4), overtalk_count=2 if overtalk_s else 0,
        loudness_lufs=-23.0, clipping_ratio=0.001, snr_db=25.0,
    )  # fmt: skip
    data = AudioCaptioned(
        source_event=SourceEventRef(id=input_id, source="urn:pbx", type=AUDIO_SUBMITTED),
        context=context,
        audio=AudioFacts(duration_s=duration_s, sample_rate=8000, channels=2, format="wav", codec="pcm_16"),
        windows=windows,
        caption=" ".join(captions),
        facets=facets,
        acoustics=acoustics,
        model="qwen3-omni-captioner",
        engine="vllm",
        timings=dict(timings if timings is not None else {"preprocess_s": 0.5, "caption_s": 2.0, "total_s": 2.75}),
        deliveries=1,
    )
    return data.model_dump(mode="json")


def decision_data(
    kind: str, *, rule: str, version: str, input_id: str, callid: str | None, **params: Any
) -> dict[str, Any]:
    """A decision's data as services/rules/decisions.py builds it."""
    data: dict[str, Any] = {
        "source_event": {"id": input_id, "source": SOURCE, "type": AUDIO_CAPTIONED}, "rule_id": rule,
        "description": f"{rule} matched", "owner": "cx-ops", "ruleset_version": version, **params,
    }  # fmt: skip
    if callid is not None:
        data["callid"] = callid
    data["evidence"] = {"kind": kind}
    return data


DECISION_TYPES = {"route": ROUTE_DECIDED, "alert": ALERT_RAISED, "tag": TAG_ADDED}


def decision_event(
    kind: str, *, id: str, rule: str, version: str, input_id: str, callid: str | None, time: datetime, **params: Any
) -> StoredEvent:
    extensions = {"rulesetver": version, "inputid": input_id, **({"callid": callid} if callid else {})}
    data = decision_data(kind, rule=rule, version=version, input_id=input_id, callid=callid, **params)
    return stored(DECISION_TYPES[kind], data, id=id, time=time, extensions=extensions, subject=rule)


def marker_data(captioned_id: str, version: str, decisions: int, callid: str | None = None) -> dict[str, Any]:
    data = RulesEvaluated(
        captioned=StoredEventRef(id=captioned_id, stream="LISTENPOST_OUT", sequence=1),
        callid=callid,
        ruleset_version=version,
        decisions=[EvaluatedDecision(type=ROUTE_DECIDED, id=f"d{i}", subject="r") for i in range(decisions)],
    )
    return data.model_dump(mode="json", exclude_none=True)


def submitted_original(subject: str, *, id: str, context: dict[str, Any], callid: str | None = None) -> dict[str, object]:
    """A dead letter's ``original``: an ``audio.submitted`` input as it was stored (binary mode)."""
    data = AudioSubmitted.model_validate({"audio": {"uri": "https://pbx.example/rec.wav"}, "context": context})
    event = new_event(AUDIO_SUBMITTED, "urn:pbx", data.model_dump(mode="json", exclude_none=True), id=id,
                      extensions={"callid": callid} if callid else None)  # fmt: skip
    body, headers = encode_binary(event)
    return original_record(subject, headers, body)


def failed_data(stage: str, reason: str, error: str, original: dict[str, object], deliveries: int | None = 3) -> dict[str, Any]:
    return AudioFailed(stage=stage, reason=reason, error=error, deliveries=deliveries, original=original).model_dump(mode="json")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- calls, windows, facets


RECORDING_CONTEXT = {"callid": "c-100", "queue": "billing", "agent": "alice", "batch": {"id": "b-1", "path": "2025/a.wav"}}


def recording() -> StoredEvent:
    data = captioned_data(
        context=RECORDING_CONTEXT,
        captions=("A calm agent greets.", "The customer shouts angrily."),
        emotions=[("customer", "anger", 0.9, 1)],
        sounds=[("siren", 0)],
        languages=["en", "es"],
        dead_air_s=4.5,
        overtalk_s=6.0,
    )
    return stored(AUDIO_CAPTIONED, data, id="cap-1", time=T0, extensions={"inputid": "in-1", "callid": "c-100"})


def test_a_recording_gives_its_call_row() -> None:
    row = call_row(recording(), Marker(ruleset_version="v7", decisions=2))
    assert row == {
        "event_id": "cap-1", "input_id": "in-1", "call_id": "c-100", "batch_id": "b-1", "batch_path": "2025/a.wav",
        "source": "urn:pbx", "queue": "billing", "agent": "alice", "stream_id": None, "time": T0, "date": "2025-03-04",
        "duration_s": 60.0, "sample_rate": 8000, "channels": 2, "format": "wav", "codec": "pcm_16",
        "model": "qwen3-omni-captioner", "engine": "vllm", "deliveries": 1, "languages": ["en", "es"],
        "caption": "A calm agent greets. The customer shouts angrily.",
        "silence_ratio": 0.25, "longest_silence_s": 3.5, "dead_air_s": 4.5, "peak_dbfs": -1.5, "speech_ratio": 0.5,
        "non_talk_s": 30.0, "overtalk_s": 6.0, "overtalk_ratio": 0.1, "overtalk_count": 2, "loudness_lufs": -23.0,
        "clipping_ratio": 0.001, "snr_db": 25.0,
        "talk_time_json": '{"agent":12.0,"customer":18.0}',
        "context_json": '{"agent":"alice","batch":{"id":"b-1","path":"2025/a.wav"},"callid":"c-100","queue":"billing"}',
        "timings_json": '{"caption_s":2.0,"preprocess_s":0.5,"total_s":2.75}',
        "timing_preprocess_s": 0.5, "timing_caption_s": 2.0, "timing_total_s": 2.75,
        "ruleset_version": "v7", "decisions": 2,
    }  # fmt: skip
    assert list(row) == SCHEMAS["calls"].names
    # No marker seen: the rules' version and count are unknown, not zero.
    unmarked = call_row(recording())
    assert (unmarked["ruleset_version"], unmarked["decisions"]) == (None, None)


def test_a_recording_gives_a_row_per_window_and_per_facet() -> None:
    keys = {"event_id": "cap-1", "call_id": "c-100", "batch_id": "b-1", "time": T0, "date": "2025-03-04"}
    assert window_rows(recording()) == [
        {**keys, "window": 0, "start_s": 0.0, "end_s": 30.0, "channel": 1, "role": "customer", "caption": "A calm agent greets.",
         "prompt_tokens": 100, "output_tokens": 20, "engine_s": 0.5},
        {**keys, "window": 1, "start_s": 30.0, "end_s": 60.0, "channel": 1, "role": "customer",
         "caption": "The customer shouts angrily.", "prompt_tokens": 101, "output_tokens": 21, "engine_s": 0.5},
    ]  # fmt: skip
    assert facet_rows(recording()) == [
        {**keys, "kind": "emotion", "label": "anger", "role": "customer", "intensity": 0.9, "confidence": 0.75, "window": 1,
         "start_s": 30.0, "end_s": 60.0, "span": "sounds anger", "cue": "anger", "hedged": False},
        {**keys, "kind": "sound_event", "label": "siren", "role": None, "intensity": None, "confidence": 0.5, "window": 0,
         "start_s": 0.0, "end_s": 30.0, "span": "a siren", "cue": None, "hedged": True},
        {**keys, "kind": "language", "label": "en", "role": None, "intensity": None, "confidence": None, "window": None,
         "start_s": None, "end_s": None, "span": None, "cue": None, "hedged": None},
        {**keys, "kind": "language", "label": "es", "role": None, "intensity": None, "confidence": None, "window": None,
         "start_s": None, "end_s": None, "span": None, "cue": None, "hedged": None},
    ]  # fmt: skip


def test_a_live_summary_names_its_stream_and_keeps_its_own_timings_as_json() -> None:
    # As services/streams/owner.py publishes it: context.stream added, the streamid extension,
    # the audio's seconds as its only timing.
    context = {"site": "lobby", "callid": "live-7", "stream": {"id": "cam-1", "ended_by": "end", "dropped_windows": 0}}
    data = captioned_data(context=context, input_id="start-cam-1", duration_s=20.0, captions=("A hum.",), window_s=20.0,
                          talk_time={"all": 0.0}, timings={"audio_s": 20.0})  # fmt: skip
    data["audio"].update(format="stream", codec="pcm16", sample_rate=16000, channels=1)
    extensions = {"streamid": "cam-1", "inputid": "start-cam-1", "callid": "live-7"}
    event = stored(AUDIO_CAPTIONED, data, id="sum-1", time=T0, extensions=extensions)
    row = call_row(event)
    assert {k: row[k] for k in ("call_id", "stream_id", "source", "format", "codec", "sample_rate", "channels", "batch_id",
                                "queue", "agent", "timings_json", "timing_preprocess_s", "timing_caption_s",
                                "timing_total_s", "talk_time_json", "languages")} == {
        "call_id": "live-7", "stream_id": "cam-1", "source": "urn:pbx", "format": "stream", "codec": "pcm16",
        "sample_rate": 16000, "channels": 1, "batch_id": None, "queue": None, "agent": None,
        "timings_json": '{"audio_s":20.0}', "timing_preprocess_s": None, "timing_caption_s": None, "timing_total_s": None,
        "talk_time_json": '{"all":0.0}', "languages": [],
    }  # fmt: skip
    # No streamid extension (an older summary): context.stream.id still names it.
    bare = stored(AUDIO_CAPTIONED, data, id="sum-2", time=T0)
    assert call_row(bare)["stream_id"] == "cam-1"


def test_a_call_with_no_context_takes_its_call_id_from_the_extension() -> None:
    data = captioned_data(context={}, captions=())
    row = call_row(stored(AUDIO_CAPTIONED, data, id="cap-9", time=T0, extensions={"callid": "c-9"}))
    assert {k: row[k] for k in ("call_id", "batch_id", "batch_path", "queue", "agent", "stream_id", "context_json", "caption")} == {
        "call_id": "c-9", "batch_id": None, "batch_path": None, "queue": None, "agent": None, "stream_id": None,
        "context_json": "{}", "caption": "",
    }  # fmt: skip
    assert window_rows(stored(AUDIO_CAPTIONED, data, id="cap-9", time=T0)) == []
    # Neither: no call id at all. A number in the context is written as text.
    assert call_row(stored(AUDIO_CAPTIONED, data, id="cap-10", time=T0))["call_id"] is None
    numbered = captioned_data(context={"call_id": 42, "queue": 7})
    row = call_row(stored(AUDIO_CAPTIONED, numbered, id="cap-11", time=T0))
    assert (row["call_id"], row["queue"]) == ("42", "7")


def test_a_call_without_time_takes_when_it_was_stored() -> None:
    data = captioned_data(context={})
    later = T0 + timedelta(hours=15)  # the next day in UTC
    row = call_row(stored(AUDIO_CAPTIONED, data, id="cap-12", time=None, stored_at=later))
    assert (row["time"], row["date"]) == (later, "2025-03-05")
    with pytest.raises(RowError, match="no 'time'"):
        call_row(stored(AUDIO_CAPTIONED, data, id="cap-13", time=None))


def test_an_event_its_model_refuses_is_a_row_error() -> None:
    with pytest.raises(RowError, match=r"audio.captioned 'bad' does not match its model: acoustics: Field required"):
        call_row(stored(AUDIO_CAPTIONED, {k: v for k, v in captioned_data(context={}).items() if k != "acoustics"}, id="bad", time=T0))
    with pytest.raises(RowError, match="audio.failed"):
        dead_letter_row(stored(AUDIO_FAILED, {"stage": "nowhere", "reason": "x", "error": "E", "original": {}}, id="f", time=T0))
    with pytest.raises(RowError, match="rules.evaluated"):
        read_marker(stored(RULES_EVALUATED, {"captioned": {}}, id="m", time=T0))


# ---------------------------------------------------------------------------- decisions


def test_decision_rows_of_a_route_an_alert_and_a_tag() -> None:
    calls = CallIndex()
    calls.add("cap-1", "c-100", "b-1")
    route = decision_event("route", id="d-route", rule="angry-customer", version="v7", input_id="cap-1", callid="c-100",
                           time=T0, queue="escalations")  # fmt: skip
    alert = decision_event("alert", id="d-alert", rule="angry-customer", version="v7", input_id="cap-1", callid="c-100",
                           time=T0, severity="warning", summary="Angry customer on c-100",
                           labels={"queue": "billing", "site": "hq", "team": "escalations"}, fingerprint="f" * 64)  # fmt: skip
    tag = decision_event("tag", id="d-tag", rule="qa-sample", version="v7", input_id="cap-1", callid=None, time=T0, tags=["qa", "sample"])
    common = {"rule_id": "angry-customer", "ruleset_version": "v7", "input_id": "cap-1", "call_id": "c-100", "batch_id": "b-1",
              "time": T0, "date": "2025-03-04"}  # fmt: skip
    assert decision_row(route, calls) == {
        **common, "decision_id": "d-route", "type": ROUTE_DECIDED, "kind": "route", "queue": "escalations", "severity": None,
        "fingerprint": None, "summary": None, "labels_json": None, "tags": None, "site": None,
    }  # fmt: skip
    assert decision_row(alert, calls) == {
        **common, "decision_id": "d-alert", "type": ALERT_RAISED, "kind": "alert", "queue": "billing", "severity": "warning",
        "fingerprint": "f" * 64, "summary": "Angry customer on c-100",
        "labels_json": '{"queue":"billing","site":"hq","team":"escalations"}', "tags": None, "site": "hq",
    }  # fmt: skip
    # No call id anywhere: the captioned event's id still finds the batch.
    assert decision_row(tag, calls) == {
        **common, "rule_id": "qa-sample", "call_id": None, "decision_id": "d-tag", "type": TAG_ADDED, "kind": "tag",
        "queue": None, "severity": None, "fingerprint": None, "summary": None, "labels_json": None, "tags": ["qa", "sample"],
        "site": None,
    }  # fmt: skip
    assert list(decision_row(route, calls)) == SCHEMAS["decisions"].names


def test_a_decision_finds_its_batch_by_call_and_none_without_its_call() -> None:
    calls = CallIndex()
    calls.add("cap-1", "c-100", "b-1")
    calls.add("cap-2", "c-200", None)  # not in a batch: not kept
    window_decision = decision_event("alert", id="d-1", rule="r", version="v1", input_id="window-event", callid="c-100",
                                     time=T0, severity="critical", summary="s", labels={}, fingerprint="f")  # fmt: skip
    row = decision_row(window_decision, calls)
    assert (row["batch_id"], row["labels_json"], row["site"], row["queue"]) == ("b-1", "{}", None, None)
    other = decision_event("route", id="d-2", rule="r", version="v1", input_id="cap-2", callid="c-200", time=T0, queue="q")
    assert decision_row(other, calls)["batch_id"] is None and len(calls) == 1
    assert decision_row(other)["batch_id"] is None


def test_the_call_index_forgets_the_oldest_beyond_its_bound() -> None:
    calls = CallIndex(max_entries=2)
    for n in range(3):
        calls.add(f"cap-{n}", f"c-{n}", "b")
    assert [calls.batch_for(f"cap-{n}", None) for n in range(3)] == [None, "b", "b"]


def test_a_marker_gives_its_version_and_decision_count() -> None:
    event = stored(RULES_EVALUATED, marker_data("cap-1", "v7", 3, callid="c-100"), id="m-1", time=T0)
    assert read_marker(event) == ("cap-1", Marker(ruleset_version="v7", decisions=3))


# ---------------------------------------------------------------------------- dead letters


def test_a_failure_names_the_input_its_batch_and_its_call() -> None:
    original = submitted_original("listenpost.batch.b-1", id="in-77", context={"batch": {"id": "b-1", "path": "x/missing.wav"},
                                                                                "callid": "c-77"})  # fmt: skip
    event = stored(AUDIO_FAILED, failed_data("fetch", "HTTP 404 for https://pbx.example/rec.wav", "FetchError", original),
                   id="dl-1", time=T0, extensions={"originalid": "in-77", "inputid": "in-77"})  # fmt: skip
    row = dead_letter_row(event)
    assert row == {
        "event_id": "dl-1", "original_id": "in-77", "original_source": "urn:pbx", "original_subject": "listenpost.batch.b-1",
        "stage": "fetch", "reason": "HTTP 404 for https://pbx.example/rec.wav", "error": "FetchError", "deliveries": 3,
        "call_id": "c-77", "batch_id": "b-1", "batch_path": "x/missing.wav", "time": T0, "date": "2025-03-04",
    }  # fmt: skip
    assert list(row) == SCHEMAS["dead_letters"].names


def test_a_failure_whose_body_is_unreadable_or_held_by_reference() -> None:
    # The body is why it failed: the ce- headers still name it.
    unreadable = {"subject": "listenpost.in.pbx", "headers": {"CE-ID": "in-5", "ce-source": "urn:pbx", "ce-specversion": "1.0",
                                                              "ce-type": AUDIO_SUBMITTED, "ce-callid": "c-5"},
                  "body_base64": base64.b64encode(b"{not json").decode()}  # fmt: skip
    row = dead_letter_row(stored(AUDIO_FAILED, failed_data("decode-event", "not JSON", "MalformedEventError", unreadable, None),
                                 id="dl-2", time=T0))  # fmt: skip
    assert {k: row[k] for k in ("original_id", "original_source", "call_id", "batch_id", "deliveries")} == {
        "original_id": "in-5", "original_source": "urn:pbx", "call_id": "c-5", "batch_id": None, "deliveries": None,
    }  # fmt: skip
    # Too large to embed: only its subject is left, and it names the batch.
    by_ref = {"subject": "lp.batch.b-9", "ref": "nats-object://LISTENPOST_DLQ_ORIGINALS/LISTENPOST_BATCH/4", "size": 2_000_000}
    row = dead_letter_row(stored(AUDIO_FAILED, failed_data("caption", "too long", "WindowTooLongError", by_ref), id="dl-3",
                                 time=T0, extensions={"originalid": "in-9"}), batch_subject="lp.batch")  # fmt: skip
    assert {k: row[k] for k in ("original_id", "original_source", "original_subject", "batch_id", "batch_path", "call_id")} == {
        "original_id": "in-9", "original_source": None, "original_subject": "lp.batch.b-9", "batch_id": "b-9",
        "batch_path": None, "call_id": None,
    }  # fmt: skip


# ---------------------------------------------------------------------------- the tabulator and the schemas


def test_the_tabulator_filters_by_start_and_batch_and_joins_markers() -> None:
    other = stored(AUDIO_CAPTIONED, captioned_data(context={"batch": {"id": "b-2", "path": "o.wav"}}), id="cap-2", time=T0)
    early = stored(AUDIO_CAPTIONED, captioned_data(context=RECORDING_CONTEXT), id="cap-0", time=T0 - timedelta(days=2))
    route = decision_event("route", id="d-1", rule="r", version="v7", input_id="cap-1", callid="c-100", time=T0, queue="q")
    marker = stored(RULES_EVALUATED, marker_data("cap-1", "v7", 1), id="m-1", time=T0)
    failed = stored(AUDIO_FAILED, failed_data("fetch", "404", "FetchError", submitted_original("listenpost.in.x", id="i", context={})),
                    id="dl-1", time=T0)  # fmt: skip
    tabulator = Tabulator(start=T0 - timedelta(hours=1), batch="b-1", markers={"cap-1": Marker("v7", 1)})
    assert tabulator.rows(early).rows == [] and tabulator.rows(other).rows == []
    found = tabulator.rows(recording())
    assert [table for table, _ in found.rows] == ["calls", "windows", "windows", "facets", "facets", "facets", "facets"]
    assert (found.rows[0][1]["ruleset_version"], found.rows[0][1]["decisions"]) == ("v7", 1)
    assert [(t, r["batch_id"]) for t, r in tabulator.rows(route).rows] == [("decisions", "b-1")]
    assert tabulator.rows(failed).rows == []  # not in the batch
    assert tabulator.rows(marker).marker == ("cap-1", Marker("v7", 1))
    assert tabulator.rows(stored("com.listenpost.stream.captioned", {}, id="w", time=T0)).rows == []
    everything = Tabulator()
    assert [t for t, _ in everything.rows(failed).rows] == ["dead_letters"]


def test_every_row_fits_its_table_schema() -> None:
    rows = captioned_rows(recording(), Marker("v7", 2))
    route = decision_event("route", id="d", rule="r", version="v", input_id="cap-1", callid=None, time=T0, queue="q")
    failed = stored(AUDIO_FAILED, failed_data("fetch", "404", "E", submitted_original("listenpost.in.x", id="i", context={})),
                    id="f", time=T0)  # fmt: skip
    by_table = {"calls": [rows.call], "windows": rows.windows, "facets": rows.facets, "decisions": [decision_row(route)],
                "dead_letters": [dead_letter_row(failed)]}  # fmt: skip
    assert set(by_table) == set(TABLES)
    for table, table_rows in by_table.items():
        arrow = arrow_table(table, table_rows)  # type: ignore[arg-type]
        # Files hold every column but the partition column, which their path holds.
        assert arrow.schema.equals(FILE_SCHEMAS[table], check_metadata=True)
        assert FILE_SCHEMAS[table].names == [name for name in SCHEMAS[table].names if name != "date"]
        assert arrow.schema.metadata == {SCHEMA_VERSION_KEY: str(SCHEMA_VERSION).encode(), TABLE_KEY: table.encode()}
        assert arrow.num_rows == len(table_rows)
    assert SCHEMAS["calls"].field("time").type == pa.timestamp("us", tz="UTC")
    assert SCHEMAS["calls"].field("languages").type == pa.list_(pa.field("element", pa.string()))


@pytest.mark.parametrize(
    ("since", "now", "start"),
    [
        (timedelta(days=7), datetime(2025, 3, 4, 10, 0, tzinfo=UTC), datetime(2025, 2, 25, tzinfo=UTC)),
        (timedelta(hours=36), datetime(2025, 3, 4, 10, 0, tzinfo=UTC), datetime(2025, 3, 2, tzinfo=UTC)),
        (timedelta(minutes=90), datetime(2025, 3, 4, 1, 0, tzinfo=UTC), datetime(2025, 3, 3, tzinfo=UTC)),
        (timedelta(minutes=90), datetime(2025, 3, 4, 13, 0, tzinfo=UTC), datetime(2025, 3, 4, tzinfo=UTC)),
    ],
)
def test_a_range_starts_at_midnight_utc(since: timedelta, now: datetime, start: datetime) -> None:
    assert range_start(since, now) == start
