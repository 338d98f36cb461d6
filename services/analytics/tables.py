"""The five tables of ``listenpost export``: rows from decoded events, and their Arrow schemas.

Pure: no NATS, no files. The shell (:mod:`services.analytics.source`) decodes stored messages
into :class:`StoredEvent` and hands them to a :class:`Tabulator`; the writer
(:mod:`services.analytics.writer`) turns rows into files. Every column is documented in
docs/analytics.md, and a change of a column's name, type or meaning bumps
:data:`SCHEMA_VERSION`, which every parquet file carries in its metadata.

The event data is validated with the event contracts (:mod:`services.events.models`) at this
boundary: an event that does not match its model raises :class:`RowError` and is skipped (and
counted) by the export, never half-written.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final, Literal, get_args

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, ValidationError

from services.analytics.errors import RowError
from services.events.binding import BindingError, decode, event_data_json
from services.events.models import (
    ALERT_RAISED,
    AUDIO_CAPTIONED,
    AUDIO_FAILED,
    ROUTE_DECIDED,
    RULES_EVALUATED,
    TAG_ADDED,
    AudioCaptioned,
    AudioFailed,
    RulesEvaluated,
    SourceEventRef,
)

#: Bumped whenever a column is added, removed, renamed, retyped or changes meaning.
SCHEMA_VERSION: Final = 1
#: Parquet (Arrow schema) metadata keys: which table a file holds, in which schema version.
SCHEMA_VERSION_KEY: Final = b"listenpost.schema_version"
TABLE_KEY: Final = b"listenpost.table"

TableName = Literal["calls", "windows", "facets", "decisions", "dead_letters"]
TABLES: Final[tuple[TableName, ...]] = get_args(TableName)

#: The timings every recording's ``audio.captioned`` carries (services/orchestrator/pipeline.py);
#: one float column each. Others (a live summary's ``audio_s``) stay in ``timings_json``.
TIMING_KEYS: Final = ("preprocess_s", "caption_s", "total_s")

#: Decision types a row's ``kind`` names; any other type on the decision subjects is "other".
DECISION_KINDS: Final = {ROUTE_DECIDED: "route", ALERT_RAISED: "alert", TAG_ADDED: "tag"}

_TIME = pa.timestamp("us", tz="UTC")
_S, _F, _I, _B = pa.string(), pa.float64(), pa.int32(), pa.bool_()
# A list's item named as parquet names it: the schema read back from a file equals this one exactly.
_STRINGS = pa.list_(pa.field("element", _S))


def _required(name: str, kind: pa.DataType) -> pa.Field:
    return pa.field(name, kind, nullable=False)


def _schema(table: TableName, *fields: pa.Field) -> pa.Schema:
    return pa.schema(fields, metadata={SCHEMA_VERSION_KEY: str(SCHEMA_VERSION).encode(), TABLE_KEY: table.encode()})


#: Every call (``audio.captioned``: a recording's, or a live stream's summary).
CALLS: Final = _schema(
    "calls",
    _required("event_id", _S), pa.field("input_id", _S), pa.field("call_id", _S), pa.field("batch_id", _S),
    pa.field("batch_path", _S), pa.field("source", _S), pa.field("queue", _S), pa.field("agent", _S),
    pa.field("stream_id", _S), _required("time", _TIME), _required("date", _S),
    pa.field("duration_s", _F), pa.field("sample_rate", _I), pa.field("channels", _I), pa.field("format", _S),
    pa.field("codec", _S), pa.field("model", _S), pa.field("engine", _S), pa.field("deliveries", _I),
    pa.field("languages", _STRINGS), pa.field("caption", _S),
    pa.field("silence_ratio", _F), pa.field("longest_silence_s", _F), pa.field("dead_air_s", _F), pa.field("peak_dbfs", _F),
    pa.field("speech_ratio", _F), pa.field("non_talk_s", _F), pa.field("overtalk_s", _F), pa.field("overtalk_ratio", _F),
    pa.field("overtalk_count", _I), pa.field("loudness_lufs", _F), pa.field("clipping_ratio", _F), pa.field("snr_db", _F),
    pa.field("talk_time_json", _S), pa.field("context_json", _S), pa.field("timings_json", _S),
    *(pa.field(f"timing_{key}", _F) for key in TIMING_KEYS),
    pa.field("ruleset_version", _S), pa.field("decisions", _I),
)  # fmt: skip
#: Every captioned window of every call.
WINDOWS: Final = _schema(
    "windows",
    _required("event_id", _S), pa.field("call_id", _S), pa.field("batch_id", _S), _required("time", _TIME), _required("date", _S),
    _required("window", _I), pa.field("start_s", _F), pa.field("end_s", _F), pa.field("channel", _I), pa.field("role", _S),
    pa.field("caption", _S), pa.field("prompt_tokens", _I), pa.field("output_tokens", _I), pa.field("engine_s", _F),
)  # fmt: skip
#: Every facet of every call: emotions, sound events, languages.
FACETS: Final = _schema(
    "facets",
    _required("event_id", _S), pa.field("call_id", _S), pa.field("batch_id", _S), _required("time", _TIME), _required("date", _S),
    _required("kind", _S), _required("label", _S), pa.field("role", _S), pa.field("intensity", _F), pa.field("confidence", _F),
    pa.field("window", _I), pa.field("start_s", _F), pa.field("end_s", _F), pa.field("span", _S), pa.field("cue", _S),
    pa.field("hedged", _B),
)  # fmt: skip
#: Every route, alert and tag decision.
DECISIONS: Final = _schema(
    "decisions",
    _required("decision_id", _S), _required("type", _S), _required("kind", _S), pa.field("rule_id", _S),
    pa.field("ruleset_version", _S), pa.field("input_id", _S), pa.field("call_id", _S), pa.field("batch_id", _S),
    pa.field("queue", _S), pa.field("severity", _S), pa.field("fingerprint", _S), pa.field("summary", _S),
    pa.field("labels_json", _S), pa.field("tags", _STRINGS), _required("time", _TIME), _required("date", _S),
    pa.field("site", _S),
)  # fmt: skip
#: Every dead letter (``audio.failed``).
DEAD_LETTERS: Final = _schema(
    "dead_letters",
    _required("event_id", _S), pa.field("original_id", _S), pa.field("original_source", _S), pa.field("original_subject", _S),
    _required("stage", _S), pa.field("reason", _S), pa.field("error", _S), pa.field("deliveries", _I), pa.field("call_id", _S),
    pa.field("batch_id", _S), pa.field("batch_path", _S), _required("time", _TIME), _required("date", _S),
)  # fmt: skip

#: Every table's columns, ``date`` included: what a reader gets with hive partitioning.
SCHEMAS: Final[Mapping[TableName, pa.Schema]] = {
    "calls": CALLS, "windows": WINDOWS, "facets": FACETS, "decisions": DECISIONS, "dead_letters": DEAD_LETTERS,
}  # fmt: skip
#: The partition column: in the path (``date=YYYY-MM-DD``), not inside the files, as hive layouts
#: have it (Spark refuses, and pyarrow cannot merge, a column that is in both).
PARTITION: Final = "date"
#: What each file holds: its table's columns without the partition column.
FILE_SCHEMAS: Final[Mapping[TableName, pa.Schema]] = {
    table: schema.remove(schema.get_field_index(PARTITION)) for table, schema in SCHEMAS.items()
}

Row = dict[str, Any]


@dataclass(frozen=True)
class StoredEvent:
    """One decoded event as its stream stored it: the CloudEvent's attributes (extensions
    included; ``time`` a datetime) and data (the JSON value, read back from its ``dataref`` when
    it was stored by reference), and where and when the stream stored it."""

    attributes: Mapping[str, Any]
    data: Any
    subject: str = ""
    stream: str = ""
    sequence: int = 0
    stored_at: datetime | None = None

    @property
    def type(self) -> str:
        return str(self.attributes.get("type") or "")

    @property
    def id(self) -> str:
        return str(self.attributes.get("id") or "")


@dataclass(frozen=True)
class Marker:
    """What a ``rules.evaluated`` marker says about one captioned event."""

    ruleset_version: str
    decisions: int


# ---------------------------------------------------------------------------- time and dates


def utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive one is taken as UTC (what every listenpost producer writes)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def event_time(event: StoredEvent) -> datetime:
    """The event's own ``time`` (when its producer made it), else when the stream stored it."""
    value = event.attributes.get("time")
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise RowError(f"event {event.id!r} has a 'time' that is not RFC 3339: {value!r}") from exc
    if not isinstance(value, datetime):
        value = event.stored_at
    if value is None:
        raise RowError(f"event {event.id!r} has no 'time' and no stored time")
    return utc(value)


def partition_date(moment: datetime) -> str:
    """The date partition (``YYYY-MM-DD``, UTC) of a row at ``moment``."""
    return utc(moment).date().isoformat()


def range_start(since: timedelta, now: datetime) -> datetime:
    """Where an export of the last ``since`` starts: midnight (UTC) of the day ``since`` before
    ``now``. Rounding down to a whole day makes every date partition an export writes whole, so a
    re-export (a daily ``--since 1d``) can replace a date's files without losing its first hours."""
    first = utc(now - since).date()
    return datetime.combine(first, time(0), tzinfo=UTC)


def dates_between(first: date, last: date) -> list[str]:
    """Every date partition from ``first`` to ``last``, both included."""
    return [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]


# ---------------------------------------------------------------------------- values


def _json(value: Any) -> str:
    # Sorted keys, compact: the same value always gives the same text (idempotent files, diffable).
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def _text(value: Any) -> str | None:
    """A context value as a string column: strings as they are, other scalars as text, objects as JSON."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return _json(value)


def _call_id(context: Mapping[str, Any], attributes: Mapping[str, Any]) -> str | None:
    # As the Ingress reads it (services/orchestrator/pipeline.py): context first, then the extension.
    for key in ("callid", "call_id"):
        value = context.get(key)
        if value is not None and value != "":
            return _text(value)
    return _text(attributes.get("callid") or None)


def _batch(context: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``(batch id, path)`` from ``context.batch``, which ``listenpost batch`` sets."""
    batch = context.get("batch")
    if isinstance(batch, Mapping):
        return _text(batch.get("id")), _text(batch.get("path"))
    return None, None


def _stream_id(context: Mapping[str, Any], attributes: Mapping[str, Any]) -> str | None:
    """A live stream's id: its summary's ``streamid`` extension, else ``context.stream.id`` (which
    the owner adds to a summary's context); None for a recording."""
    if attributes.get("streamid"):
        return _text(attributes["streamid"])
    stream = context.get("stream")
    return _text(stream.get("id")) if isinstance(stream, Mapping) else None


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error.get("loc", ()))
    return f"{where}: {error.get('msg')}" if where else str(error.get("msg"))


# ---------------------------------------------------------------------------- audio.captioned


@dataclass(frozen=True)
class CaptionedRows:
    """The rows one ``audio.captioned`` event gives: its call, its windows, its facets."""

    call: Row
    windows: list[Row]
    facets: list[Row]


def captioned_rows(event: StoredEvent, marker: Marker | None = None) -> CaptionedRows:
    """The rows of one ``audio.captioned`` event; ``marker``: its ``rules.evaluated`` marker, if seen."""
    try:
        data = AudioCaptioned.model_validate(event.data)
    except ValidationError as exc:
        raise RowError(f"audio.captioned {event.id!r} does not match its model: {_first_error(exc)}") from exc
    attributes, context = event.attributes, data.context
    moment = event_time(event)
    day = partition_date(moment)
    call_id = _call_id(context, attributes)
    batch_id, batch_path = _batch(context)
    acoustics, audio = data.acoustics, data.audio
    timings = {f"timing_{key}": data.timings.get(key) for key in TIMING_KEYS}
    call: Row = {
        "event_id": event.id, "input_id": data.source_event.id, "call_id": call_id, "batch_id": batch_id,
        "batch_path": batch_path, "source": data.source_event.source, "queue": _text(context.get("queue")),
        "agent": _text(context.get("agent")), "stream_id": _stream_id(context, attributes), "time": moment, "date": day,
        "duration_s": audio.duration_s, "sample_rate": audio.sample_rate, "channels": audio.channels, "format": audio.format,
        "codec": audio.codec, "model": data.model, "engine": data.engine, "deliveries": data.deliveries,
        "languages": list(data.facets.languages), "caption": data.caption,
        "silence_ratio": acoustics.silence_ratio, "longest_silence_s": acoustics.longest_silence_s,
        "dead_air_s": acoustics.dead_air_s, "peak_dbfs": acoustics.peak_dbfs, "speech_ratio": acoustics.speech_ratio,
        "non_talk_s": acoustics.non_talk_s, "overtalk_s": acoustics.overtalk_s, "overtalk_ratio": acoustics.overtalk_ratio,
        "overtalk_count": acoustics.overtalk_count, "loudness_lufs": acoustics.loudness_lufs,
        "clipping_ratio": acoustics.clipping_ratio, "snr_db": acoustics.snr_db,
        "talk_time_json": _json(acoustics.talk_time_s), "context_json": _json(context), "timings_json": _json(data.timings),
        **timings,
        "ruleset_version": marker.ruleset_version if marker else None, "decisions": marker.decisions if marker else None,
    }  # fmt: skip
    keys = {"event_id": event.id, "call_id": call_id, "batch_id": batch_id, "time": moment, "date": day}
    windows = [
        {**keys, "window": w.index, "start_s": w.start, "end_s": w.end, "channel": w.channel, "role": w.role,
         "caption": w.caption, "prompt_tokens": w.prompt_tokens, "output_tokens": w.output_tokens, "engine_s": w.engine_s}
        for w in data.windows
    ]  # fmt: skip
    facets: list[Row] = []
    for emotion in data.facets.emotions:
        facets.append({
            **keys, "kind": "emotion", "label": emotion.label, "role": emotion.role, "intensity": emotion.intensity,
            "confidence": emotion.confidence, "window": emotion.window, "start_s": emotion.start, "end_s": emotion.end,
            "span": emotion.span, "cue": emotion.cue, "hedged": emotion.hedged,
        })  # fmt: skip
    for sound in data.facets.sound_events:
        facets.append({
            **keys, "kind": "sound_event", "label": sound.label, "role": None, "intensity": None,
            "confidence": sound.confidence, "window": sound.window, "start_s": sound.start, "end_s": sound.end,
            "span": sound.span, "cue": sound.cue, "hedged": sound.hedged,
        })  # fmt: skip
    for code in data.facets.languages:
        facets.append({
            **keys, "kind": "language", "label": code, "role": None, "intensity": None, "confidence": None,
            "window": None, "start_s": None, "end_s": None, "span": None, "cue": None, "hedged": None,
        })  # fmt: skip
    return CaptionedRows(call, windows, facets)


def call_row(event: StoredEvent, marker: Marker | None = None) -> Row:
    """The ``calls`` row of one ``audio.captioned`` event."""
    return captioned_rows(event, marker).call


def window_rows(event: StoredEvent) -> list[Row]:
    """The ``windows`` rows of one ``audio.captioned`` event, in window order."""
    return captioned_rows(event).windows


def facet_rows(event: StoredEvent) -> list[Row]:
    """The ``facets`` rows of one ``audio.captioned`` event: emotions, then sound events, then languages."""
    return captioned_rows(event).facets


def read_marker(event: StoredEvent) -> tuple[str, Marker]:
    """``(captioned event id, marker)`` of a ``rules.evaluated`` event."""
    try:
        data = RulesEvaluated.model_validate(event.data)
    except ValidationError as exc:
        raise RowError(f"rules.evaluated {event.id!r} does not match its model: {_first_error(exc)}") from exc
    return data.captioned.id, Marker(ruleset_version=data.ruleset_version, decisions=len(data.decisions))


# ---------------------------------------------------------------------------- decisions


class CallIndex:
    """The batch of each call seen so far, for decisions: their events carry the call's id and
    the captioned event's id, not its context. Only batch calls are kept (any other call has no
    batch to find), at most ``max_entries`` of each kind, the least recently seen going first:
    memory stays bounded in a long ``--follow``."""

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self._max = max_entries
        self._by_event: OrderedDict[str, str] = OrderedDict()
        self._by_call: OrderedDict[str, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_event)

    def add(self, event_id: str, call_id: str | None, batch_id: str | None) -> None:
        if batch_id is None:
            return
        self._put(self._by_event, event_id, batch_id)
        if call_id is not None:
            self._put(self._by_call, call_id, batch_id)

    def batch_for(self, input_id: str | None, call_id: str | None) -> str | None:
        """The batch of the captioned event ``input_id``, else of the call ``call_id`` (a live
        rule's decision answers a window event, which no row names)."""
        if input_id is not None and input_id in self._by_event:
            return self._by_event[input_id]
        return self._by_call.get(call_id) if call_id is not None else None

    def _put(self, index: OrderedDict[str, str], key: str, value: str) -> None:
        index[key] = value
        index.move_to_end(key)
        while len(index) > self._max:
            index.popitem(last=False)


class _DecisionData(BaseModel):
    """The fields of a decision's data that the table reads (services/rules/decisions.py); the
    rest (description, owner, evidence) is not the table's business."""

    model_config = ConfigDict(extra="allow")

    source_event: SourceEventRef | None = None
    rule_id: str | None = None
    ruleset_version: str | None = None
    queue: str | None = None
    severity: str | None = None
    summary: str | None = None
    labels: dict[str, Any] | None = None
    fingerprint: str | None = None
    tags: list[str] | None = None
    callid: Any = None


def decision_row(event: StoredEvent, calls: CallIndex | None = None) -> Row:
    """The ``decisions`` row of one route, alert or tag decision; ``calls`` finds its batch."""
    try:
        data = _DecisionData.model_validate(event.data)
    except ValidationError as exc:
        raise RowError(f"decision {event.id!r} ({event.type}) does not match its model: {_first_error(exc)}") from exc
    attributes = event.attributes
    kind = DECISION_KINDS.get(event.type, "other")
    input_id = _text(attributes.get("inputid")) or (data.source_event.id if data.source_event else None)
    call_id = _text(attributes.get("callid")) or _text(data.callid)
    labels = {name: _text(value) for name, value in (data.labels or {}).items()}
    moment = event_time(event)
    return {
        "decision_id": event.id, "type": event.type, "kind": kind,
        "rule_id": data.rule_id or _text(attributes.get("subject")),
        "ruleset_version": _text(attributes.get("rulesetver")) or data.ruleset_version,
        "input_id": input_id, "call_id": call_id,
        "batch_id": calls.batch_for(input_id, call_id) if calls is not None else None,
        "queue": data.queue if kind == "route" else labels.get("queue"),
        "severity": data.severity, "fingerprint": data.fingerprint, "summary": data.summary,
        "labels_json": _json(labels) if data.labels is not None else None,
        "tags": list(data.tags) if data.tags is not None else None,
        "time": moment, "date": partition_date(moment), "site": labels.get("site"),
    }  # fmt: skip


# ---------------------------------------------------------------------------- dead letters


@dataclass(frozen=True)
class _Original:
    """What a dead letter's ``original`` tells of the event that failed."""

    id: str | None = None
    source: str | None = None
    call_id: str | None = None
    batch_id: str | None = None
    batch_path: str | None = None


def _header(headers: Mapping[str, Any], name: str) -> str | None:
    for key, value in headers.items():
        if str(key).lower() == name and isinstance(value, str) and value:  # NATS header names: any case
            return value
    return None


def _read_original(original: Mapping[str, Any], batch_subject: str) -> _Original:
    """The failed event's id, source, call and batch: from its decoded body, else its ``ce-``
    headers (the body may be why it failed), else (an original too large to embed, kept by
    reference) only the batch its subject names."""
    headers = original.get("headers")
    headers = headers if isinstance(headers, Mapping) else {}
    attributes: Mapping[str, Any] = {}
    context: Mapping[str, Any] = {}
    body = original.get("body_base64")
    if isinstance(body, str):
        try:
            failed = decode(base64.b64decode(body, validate=True), {str(k): str(v) for k, v in headers.items()})
        except (BindingError, binascii.Error, ValueError):
            failed = None
        if failed is not None:
            attributes = failed.get_attributes()
            try:
                data = event_data_json(failed)
            except BindingError:
                data = None
            if isinstance(data, Mapping) and isinstance(data.get("context"), Mapping):
                context = data["context"]
    batch_id, batch_path = _batch(context)
    subject = original.get("subject")
    if batch_id is None and isinstance(subject, str) and subject.startswith(batch_subject + "."):
        batch_id = subject[len(batch_subject) + 1 :] or None  # `<prefix>.batch.<batch id>` (services/batch/)
    return _Original(
        id=_text(attributes.get("id")) or _header(headers, "ce-id"),
        source=_text(attributes.get("source")) or _header(headers, "ce-source"),
        call_id=_call_id(context, attributes) or _header(headers, "ce-callid"),
        batch_id=batch_id,
        batch_path=batch_path,
    )


def dead_letter_row(event: StoredEvent, *, batch_subject: str = "listenpost.batch") -> Row:
    """The ``dead_letters`` row of one ``audio.failed`` event. ``batch_subject``: the batch inputs'
    subject without its last token (``<prefix>.batch``), whose last token names the batch."""
    try:
        data = AudioFailed.model_validate(event.data)
    except ValidationError as exc:
        raise RowError(f"audio.failed {event.id!r} does not match its model: {_first_error(exc)}") from exc
    original = _read_original(data.original, batch_subject)
    subject = data.original.get("subject")
    moment = event_time(event)
    return {
        "event_id": event.id, "original_id": _text(event.attributes.get("originalid")) or original.id,
        "original_source": original.source, "original_subject": subject if isinstance(subject, str) else None,
        "stage": data.stage, "reason": data.reason, "error": data.error, "deliveries": data.deliveries,
        "call_id": original.call_id, "batch_id": original.batch_id, "batch_path": original.batch_path,
        "time": moment, "date": partition_date(moment),
    }  # fmt: skip


# ---------------------------------------------------------------------------- routing events to tables


@dataclass
class Tabulated:
    """What one stored event gives: rows (table, row), and a marker when it was one."""

    rows: list[tuple[TableName, Row]] = field(default_factory=list)
    marker: tuple[str, Marker] | None = None


class Tabulator:
    """Turns each stored event into the rows of its tables, with an export's filters and joins.

    - ``start``: rows before it are left out (the range of the export);
    - ``batch``: only rows of that batch (decisions: through ``calls``);
    - ``markers``: the ``rules.evaluated`` markers already read (captioned id -> marker), for
      the calls' ruleset version and decision count;
    - ``calls``: the batch of every batch call tabulated, for later decisions (filled here).

    Event types without a table (live windows, shadow matches, emits) give no rows.
    """

    def __init__(
        self,
        *,
        start: datetime | None = None,
        batch: str | None = None,
        markers: Mapping[str, Marker] | None = None,
        calls: CallIndex | None = None,
        batch_subject: str = "listenpost.batch",
    ) -> None:
        self.start = utc(start) if start is not None else None
        self.batch = batch
        self.markers = markers if markers is not None else {}
        self.calls = calls if calls is not None else CallIndex()
        self.batch_subject = batch_subject

    def rows(self, event: StoredEvent) -> Tabulated:
        """The rows of ``event``; raises :class:`RowError` for an event its model refuses."""
        kind = event.type
        if kind == AUDIO_CAPTIONED:
            found = captioned_rows(event, self.markers.get(event.id))
            if not self._wanted(found.call):
                return Tabulated()
            call = found.call
            self.calls.add(event.id, call["call_id"], call["batch_id"])
            return Tabulated(
                [("calls", call), *(("windows", r) for r in found.windows), *(("facets", r) for r in found.facets)]
            )
        if kind in DECISION_KINDS:
            row = decision_row(event, self.calls)
            return Tabulated([("decisions", row)] if self._wanted(row) else [])
        if kind == AUDIO_FAILED:
            row = dead_letter_row(event, batch_subject=self.batch_subject)
            return Tabulated([("dead_letters", row)] if self._wanted(row) else [])
        if kind == RULES_EVALUATED:
            return Tabulated(marker=read_marker(event))
        return Tabulated()

    def _wanted(self, row: Row) -> bool:
        if self.start is not None and row["time"] < self.start:
            return False
        return self.batch is None or row["batch_id"] == self.batch
