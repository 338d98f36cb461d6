"""One call's summary: what a CRM is told once the call is captioned and its rules evaluated.

:func:`summarise` is pure. It takes the ``audio.captioned`` event's data (resolved: a
claim-checked event's data is fetched by the caller), its attributes, and the decisions the
rules engine made on it (route, alert, tag and emit CloudEvents, or :class:`Decision` dumps).
It returns a :class:`CallSummary`:

- who: the call id, the input event's id, source and type, the call's ``context``;
- what was said: the merged caption (the timeline text, near-repeats of overlapping windows
  dropped) and the windows in time order;
- facets per party: the channel role (``agent``, ``customer``...) or ``unknown`` for a
  channel without a role or a down-mix; each party's emotions, its strongest emotion, its
  sounds and its talk time;
- acoustics: talk time per party, silence, dead air, overtalk, loudness, per channel;
- decisions: kind, rule id, ruleset version, queue / severity and summary / tags;
- model, engine, ruleset version(s), times (captioned, decided, stage timings).

CRM mappings (:mod:`services.notify.crm`) read it as ``summary`` in CEL, with its empty
(``None``) fields left out, so ``has(summary.callid)`` says whether the call has an id.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.dsl.mapping import summarize
from services.events.models import (
    ALERT_RAISED,
    AUDIO_CAPTIONED,
    ROUTE_DECIDED,
    RULE_FAILED,
    RULE_SHADOW_MATCHED,
    TAG_ADDED,
    AudioCaptioned,
    AudioFacts,
    Window,
)

__all__ = [
    "UNKNOWN_PARTY",
    "AcousticsSummary",
    "CallSummary",
    "ChannelSummary",
    "DecisionSummary",
    "EmotionMention",
    "PartyFacets",
    "SoundMention",
    "SummaryError",
    "TimelineEntry",
    "summarise",
]

#: The party of a channel without a role, and of a down-mix of all channels.
UNKNOWN_PARTY: Final = "unknown"
#: Decision CloudEvent types and their kinds; other types with a rule id are ``emit``s.
_KINDS: Final = {ROUTE_DECIDED: "route", ALERT_RAISED: "alert", TAG_ADDED: "tag"}
#: Not decisions that acted: a shadow rule's match, a rule's evaluation error.
_NOTICES: Final = frozenset({RULE_SHADOW_MATCHED, RULE_FAILED, "shadow", "error"})
_PARTY_ORDER: Final = ("agent", "customer")


class SummaryError(ValueError):
    """The captioned data or a decision cannot be summarised (the caller's input is wrong)."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TimelineEntry(_Model):
    start: float
    end: float
    party: str
    role: str | None = None
    channel: int | None = None
    caption: str


class EmotionMention(_Model):
    label: str
    intensity: float
    confidence: float
    start: float
    end: float
    span: str
    hedged: bool = False


class SoundMention(_Model):
    label: str
    confidence: float
    party: str
    start: float
    end: float
    span: str


class PartyFacets(_Model):
    """One party's facets: its emotions (in time order) and sounds, and how much it spoke."""

    party: str
    channels: list[int] = Field(default_factory=list, description="Its source channels (none for a down-mix).")
    talk_time_s: float = 0.0
    talk_share: float = Field(default=0.0, description="Its share of all talk time, 0 to 1.")
    emotions: list[EmotionMention] = Field(default_factory=list)
    emotion_labels: list[str] = Field(default_factory=list, description="Distinct, first heard first.")
    top_emotion: str | None = Field(default=None, description="The strongest emotion (intensity, then confidence).")
    top_emotion_intensity: float | None = None
    sound_labels: list[str] = Field(default_factory=list, description="Distinct sounds on its channels, first heard first.")


class ChannelSummary(_Model):
    channel: int | None
    party: str
    role: str | None = None
    talk_time_s: float
    speech_ratio: float
    silence_ratio: float
    rms_dbfs: float
    loudness_lufs: float
    clipping_ratio: float
    snr_db: float | None = None


class AcousticsSummary(_Model):
    duration_s: float
    talk_time_s: dict[str, float] = Field(description="Seconds of speech per party.")
    speech_ratio: float
    silence_ratio: float
    longest_silence_s: float
    dead_air_s: float
    non_talk_s: float
    longest_non_talk_s: float
    overtalk_s: float
    overtalk_ratio: float
    overtalk_count: int
    loudness_lufs: float
    peak_dbfs: float
    clipping_ratio: float
    snr_db: float | None = None
    channels: list[ChannelSummary]


class DecisionSummary(_Model):
    id: str | None = None
    kind: str = Field(description="route, alert, tag or emit.")
    type: str | None = Field(default=None, description="The decision's CloudEvent type.")
    rule_id: str
    ruleset_version: str | None = None
    description: str | None = None
    queue: str | None = Field(default=None, description="route: the queue.")
    severity: str | None = Field(default=None, description="alert: its severity.")
    summary: str | None = Field(default=None, description="alert: its rendered summary.")
    labels: dict[str, str] | None = Field(default=None, description="alert: its labels.")
    fingerprint: str | None = None
    tags: list[str] | None = Field(default=None, description="tag: the tags.")
    time: datetime | None = None


class CallSummary(_Model):
    """What a CRM is told about one call (``summary`` in a CRM mapping's CEL)."""

    summary_id: str = Field(description="Same captioned event and decisions: same id (an idempotency key).")
    callid: str | None = None
    input_id: str = Field(description="The id of the audio.submitted event the call came in as.")
    input_source: str
    input_type: str
    captioned_id: str | None = Field(default=None, description="The audio.captioned event's id.")
    captioned_at: datetime | None = None
    decided_at: datetime | None = Field(default=None, description="The latest decision's time.")
    context: dict[str, Any] = Field(default_factory=dict, description="The call's context (queue, customer tier...).")
    audio: AudioFacts
    duration_s: float
    languages: list[str] = Field(default_factory=list)
    caption: str = Field(description="The merged caption timeline: one `[mm:ss-mm:ss party] text` line per window.")
    timeline: list[TimelineEntry] = Field(description="The windows in time order.")
    parties: list[str] = Field(description="agent, customer, other roles, then unknown: the keys of facets.")
    facets: dict[str, PartyFacets]
    sound_events: list[SoundMention] = Field(default_factory=list)
    speech_present: bool | None = None
    music_present: bool | None = None
    acoustics: AcousticsSummary
    decisions: list[DecisionSummary] = Field(default_factory=list)
    queues: list[str] = Field(default_factory=list, description="The routes' queues, distinct, in decision order.")
    tags: list[str] = Field(default_factory=list, description="Every tag added, distinct, in decision order.")
    model: str
    engine: str
    ruleset_version: str | None = Field(default=None, description="The rule set the decisions were made with.")
    ruleset_versions: list[str] = Field(default_factory=list, description="All of them (a reload can split a call).")
    timings: dict[str, float] = Field(default_factory=dict)
    redactions: dict[str, int] = Field(default_factory=dict)

    def cel_value(self) -> dict[str, Any]:
        """The summary as CRM mappings see it: JSON values, empty (``None``) fields left out."""
        return self.model_dump(mode="json", exclude_none=True)


def summarise(
    captioned_data: Mapping[str, Any],
    captioned_attributes: Mapping[str, Any],
    decisions: Sequence[Mapping[str, Any]],
    *,
    ruleset_version: str | None = None,
) -> CallSummary:
    """The summary of one captioned call and the decisions made on it.

    ``ruleset_version``: the rule set that evaluated the call, when known (a call that no rule
    matched has no decision to tell it). Raises :class:`SummaryError` for data that is not
    ``audio.captioned`` data, or a decision that is not one, or that is about another event.
    """
    event_type = captioned_attributes.get("type")
    if event_type is not None and event_type != AUDIO_CAPTIONED:
        raise SummaryError(f"the event is {event_type!r}, not {AUDIO_CAPTIONED}")
    try:
        data = AudioCaptioned.model_validate(captioned_data)
    except ValidationError as exc:
        raise SummaryError(f"invalid {AUDIO_CAPTIONED} data: {summarize(exc)}") from exc
    captioned_id = _text(captioned_attributes.get("id"))
    decided = [d for i, raw in enumerate(decisions) if (d := _decision(raw, i, captioned_id)) is not None]
    versions = sorted({d.ruleset_version for d in decided if d.ruleset_version} | ({ruleset_version} if ruleset_version else set()))
    callid = captioned_attributes.get("callid") or data.context.get("callid") or data.context.get("call_id")
    windows = {w.index: w for w in data.windows}
    facets = _party_facets(data, windows)
    times = [d.time for d in decided if d.time is not None]
    return CallSummary(
        summary_id=_summary_id(captioned_id or data.source_event.id, decided),
        callid=_text(callid),
        input_id=data.source_event.id,
        input_source=data.source_event.source,
        input_type=data.source_event.type,
        captioned_id=captioned_id,
        captioned_at=captioned_attributes.get("time"),
        decided_at=max(times) if times else None,
        context=dict(data.context),
        audio=data.audio,
        duration_s=data.audio.duration_s,
        languages=list(data.facets.languages),
        caption=data.caption,
        timeline=[_entry(w) for w in sorted(data.windows, key=_time_order)],
        parties=list(facets),
        facets=facets,
        sound_events=[
            SoundMention(label=s.label, confidence=s.confidence, party=_window_party(windows, s.window),
                         start=s.start, end=s.end, span=s.span)
            for s in data.facets.sound_events
        ],  # fmt: skip
        speech_present=data.facets.speech_present,
        music_present=data.facets.music_present,
        acoustics=_acoustics(data),
        decisions=decided,
        queues=_distinct(d.queue for d in decided if d.queue),
        tags=_distinct(t for d in decided for t in d.tags or ()),
        model=data.model,
        engine=data.engine,
        ruleset_version=ruleset_version or (versions[0] if len(versions) == 1 else None),
        ruleset_versions=versions,
        timings=dict(data.timings),
        redactions=dict(data.redactions),
    )


# --- parties ---------------------------------------------------------------------------------


def party(role: str | None) -> str:
    """A channel's party: its role, or ``unknown``."""
    return role or UNKNOWN_PARTY


def _party_key(name: str) -> tuple[int, str]:
    if name in _PARTY_ORDER:
        return (_PARTY_ORDER.index(name), name)
    return (len(_PARTY_ORDER) + (name == UNKNOWN_PARTY), name)


def _window_party(windows: Mapping[int, Window], index: int) -> str:
    window = windows.get(index)
    return party(window.role) if window is not None else UNKNOWN_PARTY


def _party_facets(data: AudioCaptioned, windows: Mapping[int, Window]) -> dict[str, PartyFacets]:
    names = {party(w.role) for w in data.windows} | {party(c.role) for c in data.acoustics.channels}
    names |= {party(e.role) for e in data.facets.emotions}
    talk = _talk_time(data)
    total_talk = sum(talk.values())
    out: dict[str, PartyFacets] = {}
    for name in sorted(names, key=_party_key):
        emotions = sorted((e for e in data.facets.emotions if party(e.role) == name), key=lambda e: (e.start, e.window))
        top = max(emotions, key=lambda e: (e.intensity, e.confidence), default=None)
        sounds = [s.label for s in data.facets.sound_events if _window_party(windows, s.window) == name]
        out[name] = PartyFacets(
            party=name,
            channels=sorted({c.channel for c in data.acoustics.channels if party(c.role) == name and c.channel is not None}),
            talk_time_s=talk.get(name, 0.0),
            talk_share=round(talk.get(name, 0.0) / total_talk, 4) if total_talk else 0.0,
            emotions=[
                EmotionMention(label=e.label, intensity=e.intensity, confidence=e.confidence, start=e.start,
                               end=e.end, span=e.span, hedged=e.hedged)
                for e in emotions
            ],  # fmt: skip
            emotion_labels=_distinct(e.label for e in emotions),
            top_emotion=top.label if top is not None else None,
            top_emotion_intensity=top.intensity if top is not None else None,
            sound_labels=_distinct(sounds),
        )
    return out


def _talk_time(data: AudioCaptioned) -> dict[str, float]:
    talk: dict[str, float] = {}
    for channel in data.acoustics.channels:
        name = party(channel.role)
        talk[name] = round(talk.get(name, 0.0) + channel.talk_time_s, 3)
    return talk


def _acoustics(data: AudioCaptioned) -> AcousticsSummary:
    a = data.acoustics
    return AcousticsSummary(
        duration_s=a.duration_s,
        talk_time_s=dict(sorted(_talk_time(data).items(), key=lambda item: _party_key(item[0]))),
        speech_ratio=a.speech_ratio,
        silence_ratio=a.silence_ratio,
        longest_silence_s=a.longest_silence_s,
        dead_air_s=a.dead_air_s,
        non_talk_s=a.non_talk_s,
        longest_non_talk_s=a.longest_non_talk_s,
        overtalk_s=a.overtalk_s,
        overtalk_ratio=a.overtalk_ratio,
        overtalk_count=a.overtalk_count,
        loudness_lufs=a.loudness_lufs,
        peak_dbfs=a.peak_dbfs,
        clipping_ratio=a.clipping_ratio,
        snr_db=a.snr_db,
        channels=[
            ChannelSummary(
                channel=c.channel, party=party(c.role), role=c.role, talk_time_s=c.talk_time_s,
                speech_ratio=c.speech_ratio, silence_ratio=c.silence_ratio, rms_dbfs=c.rms_dbfs,
                loudness_lufs=c.loudness_lufs, clipping_ratio=c.clipping_ratio, snr_db=c.snr_db,
            )
            for c in a.channels
        ],  # fmt: skip
    )


def _time_order(window: Window) -> tuple[float, int, int]:
    # The order of the merged timeline's lines.
    return (window.start, window.channel if window.channel is not None else -1, window.index)


def _entry(window: Window) -> TimelineEntry:
    return TimelineEntry(
        start=window.start, end=window.end, party=party(window.role), role=window.role, channel=window.channel,
        caption=window.caption.strip(),
    )  # fmt: skip


# --- decisions -------------------------------------------------------------------------------


def _decision(raw: Mapping[str, Any], position: int, captioned_id: str | None) -> DecisionSummary | None:
    """One decision, from its CloudEvent (as a JSON object: attributes and ``data``) or from a
    :class:`~services.rules.decisions.Decision` dump (``kind``, ``data``...); None for a notice
    (a shadow match, a rule error)."""
    where = f"decision {position}"
    if not isinstance(raw, Mapping):
        raise SummaryError(f"{where} is {type(raw).__name__}, not an object")
    data = raw.get("data")
    data = data if isinstance(data, Mapping) else {}
    if "kind" in raw:  # a Decision's model_dump()
        kind, event_type, time, input_id = str(raw["kind"]), _text(raw.get("type")), None, None
        rule_id, version = raw.get("rule_id"), raw.get("ruleset_version")
    elif "type" in raw:  # the CloudEvent: the rule is its subject, the version its `rulesetver`
        event_type, time, input_id = str(raw["type"]), raw.get("time"), _text(raw.get("inputid"))
        kind = "notice" if event_type in _NOTICES else _KINDS.get(event_type, "emit")
        rule_id = data.get("rule_id") or raw.get("subject")
        version = data.get("ruleset_version") or raw.get("rulesetver")
    else:
        raise SummaryError(f"{where} is neither a decision CloudEvent (type, data) nor a decision (kind, data)")
    if kind in _NOTICES or kind == "notice":
        return None
    if not rule_id:
        raise SummaryError(f"{where} ({event_type or kind}) names no rule: not a decision of the rules engine")
    source_event = data.get("source_event")
    about = _text(source_event.get("id")) if isinstance(source_event, Mapping) and kind != "emit" else input_id
    if captioned_id is not None and about is not None and about != captioned_id:
        raise SummaryError(f"{where} ({rule_id}) is about event {about!r}, not the captioned event {captioned_id!r}")
    fields: dict[str, Any] = {
        "id": _text(raw.get("id")), "kind": kind, "type": event_type, "rule_id": str(rule_id),
        "ruleset_version": _text(version), "time": time,
    }  # fmt: skip
    if kind != "emit":  # an emit's data is its author's, with no fields of ours
        fields["description"] = _text(data.get("description"))
    if kind == "route":
        fields["queue"] = _text(data.get("queue"))
    elif kind == "alert":
        fields |= {
            "severity": _text(data.get("severity")), "summary": _text(data.get("summary")),
            "labels": data.get("labels"), "fingerprint": _text(data.get("fingerprint") or raw.get("fingerprint")),
        }  # fmt: skip
    elif kind == "tag":
        fields["tags"] = data.get("tags")
    try:
        return DecisionSummary.model_validate(fields)
    except ValidationError as exc:
        raise SummaryError(f"{where} ({rule_id}): {summarize(exc)}") from exc


def _summary_id(captioned_id: str, decisions: Sequence[DecisionSummary]) -> str:
    body = json.dumps([captioned_id, sorted(d.id or f"{d.rule_id}/{d.kind}" for d in decisions)])
    return hashlib.sha256(body.encode()).hexdigest()[:32]


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _distinct(values: Any) -> list[str]:
    return list(dict.fromkeys(values))
