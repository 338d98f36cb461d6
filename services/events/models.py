"""Pydantic models of the ``data`` of listenpost's CloudEvents (the event contracts).

The CloudEvent envelope (id, source, type, extensions) is the SDK's event, see
:mod:`services.events.binding`; these models validate what rides inside it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.events.errors import EventsError
from services.events.facets import EmotionFacet, SoundEventFacet
from services.settings import IngressSettings

AUDIO_SUBMITTED = "com.listenpost.audio.submitted"
AUDIO_CAPTIONED = "com.listenpost.audio.captioned"
AUDIO_FAILED = "com.listenpost.audio.failed"
ROUTE_DECIDED = "com.listenpost.route.decided"
ALERT_RAISED = "com.listenpost.alert.raised"
TAG_ADDED = "com.listenpost.tag.added"
RULE_SHADOW_MATCHED = "com.listenpost.rule.shadowmatched"
RULE_FAILED = "com.listenpost.rule.failed"
#: The rules engine has published every decision on one ``audio.captioned`` event (the CRM
#: write-back's trigger, services/notify/crm_writer.py).
RULES_EVALUATED = "com.listenpost.rules.evaluated"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ObjectRef(_Strict):
    """An object in the NATS object store (claim check for large audio)."""

    bucket: str = Field(min_length=1)
    name: str = Field(min_length=1)


class AudioRef(_Strict):
    """Where the audio is: exactly one of ``uri``, ``object`` or ``data_base64``."""

    uri: str | None = Field(
        default=None,
        description="A local path or file:// URI under the configured roots, or an http(s):// URL "
        "(public addresses only, unless allow-listed).",
    )
    object: ObjectRef | None = None
    data_base64: str | None = Field(default=None, description="The encoded audio itself, for small clips.")
    format: str | None = Field(
        default=None,
        description="Declared format, e.g. 'wav', 'mp3', 'opus', 'm4a', 'webm' or 'audio/mpeg'; "
        "audio whose content is another format is refused.",
    )

    @model_validator(mode="after")
    def _exactly_one_location(self) -> AudioRef:
        given = [name for name in ("uri", "object", "data_base64") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "audio must have exactly one of 'uri', 'object', 'data_base64' "
                f"(got {', '.join(given) if given else 'none'})"
            )
        return self


class ChannelRole(_Strict):
    index: int = Field(ge=0)
    role: str = Field(min_length=1, pattern=r"^[a-z][a-z0-9_-]*$")


class AudioSubmitted(BaseModel):
    """``data`` of ``com.listenpost.audio.submitted``."""

    model_config = ConfigDict(extra="allow")  # producers may add fields; we keep, not reject them

    audio: AudioRef
    channels: list[ChannelRole] = Field(default_factory=list)
    context: dict[str, Any] = Field(default_factory=dict)
    language: str | None = None

    @model_validator(mode="after")
    def _unique_channels(self) -> AudioSubmitted:
        indexes = [c.index for c in self.channels]
        if len(indexes) != len(set(indexes)):
            raise ValueError(f"channels names an index twice: {indexes}")
        return self


class ContextLimitError(EventsError, ValueError):
    """An input's ``context`` is deeper, wider or bigger than the configured limits."""


@dataclass(frozen=True)
class ContextLimits:
    """Bounds on ``AudioSubmitted.context``: it rides along into every output, so it is
    checked before any work (``LISTENPOST_INGRESS__MAX_CONTEXT_*``)."""

    max_depth: int
    max_keys: int
    max_bytes: int

    @classmethod
    def from_settings(cls, ingress: IngressSettings) -> ContextLimits:
        return cls(
            max_depth=ingress.max_context_depth, max_keys=ingress.max_context_keys, max_bytes=ingress.max_context_bytes
        )


#: The limits of the default settings.
DEFAULT_CONTEXT_LIMITS = ContextLimits.from_settings(IngressSettings())


def check_context(context: Mapping[str, Any], limits: ContextLimits) -> None:
    """Raise :class:`ContextLimitError` when ``context`` crosses a limit.

    The walk is iterative and stops at the first limit crossed: a hostile context
    costs no more than its own size, and no recursion (a deep one must not raise
    RecursionError where a clear refusal is due). Size is measured last, as compact
    JSON, once depth and key count are known to be small.
    """
    keys = 0
    stack: list[tuple[Any, int]] = [(context, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limits.max_depth:
            raise ContextLimitError(f"context is nested more than {limits.max_depth} levels deep (the limit)")
        if isinstance(value, Mapping):
            keys += len(value)
            if keys > limits.max_keys:
                raise ContextLimitError(f"context has more than {limits.max_keys} keys (the limit, counting nested objects)")
            stack.extend((item, depth + 1) for item in value.values() if isinstance(item, Mapping | list))
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value if isinstance(item, Mapping | list))
    size = len(json.dumps(context, ensure_ascii=False, separators=(",", ":"), default=str).encode())
    if size > limits.max_bytes:
        raise ContextLimitError(f"context is {size} bytes as JSON, over the limit of {limits.max_bytes}")


class SourceEventRef(BaseModel):
    id: str
    source: str
    type: str


class AudioFacts(BaseModel):
    duration_s: float
    sample_rate: int = Field(description="Rate of the recording as received.")
    channels: int = Field(description="Channels of the recording as received.")
    format: str | None = Field(default=None, description="Container: wav, flac, ogg, mp3, m4a, aac, webm, aiff, caf, sph (NIST SPHERE).")
    codec: str | None = Field(default=None, description="Codec or sample encoding, e.g. pcm_16, ulaw, opus, aac.")


class Window(BaseModel):
    index: int
    start: float
    end: float
    channel: int | None = Field(description="Source channel, None when channels were mixed.")
    role: str | None = None
    caption: str = ""
    prompt_tokens: int = 0
    output_tokens: int = 0
    engine_s: float = 0.0


class ChannelAcoustics(BaseModel):
    """Acoustics of one kept channel (or of the down-mix), measured on the 16 kHz signal the model hears;
    peak and clipping on the samples as received."""

    channel: int | None = Field(description="Source channel; None for a down-mix of all channels.")
    role: str | None = Field(description="The role the event gave this channel (agent, customer...), if any.")
    duration_s: float
    rms_dbfs: float = Field(description="RMS level over the whole channel, dB full scale.")
    peak_dbfs: float = Field(description="Largest sample magnitude as received, dB full scale.")
    silence_ratio: float = Field(description="Share of 20 ms frames quieter than the silence floor (silence_dbfs).")
    longest_silence_s: float = Field(description="Longest run of frames quieter than the silence floor.")
    talk_time_s: float = Field(description="Seconds of speech (Silero VAD).")
    speech_ratio: float = Field(default=0.0, description="talk_time_s / duration_s.")
    speech_segments: int = Field(default=0, description="Number of separate stretches of speech.")
    loudness_lufs: float = Field(
        default=-70.0, description="Integrated loudness (ITU-R BS.1770-4, LUFS); -70 when nothing is louder."
    )
    clipping_ratio: float = Field(
        default=0.0, description="Share of samples as received at or above the clip level (|x| >= clip_level)."
    )
    noise_dbfs: float | None = Field(
        default=None, description="Background level: median RMS of 20 ms frames without speech, dB full scale."
    )
    snr_db: float | None = Field(
        default=None, description="Speech-to-noise ratio estimate (speech frames against noise_dbfs, capped at "
        "100); null when the channel has no speech.",
    )


class Acoustics(BaseModel):
    """Acoustics of the call, for rules (``acoustics.*``). Per-channel detail is in ``channels``."""

    duration_s: float
    silence_ratio: float = Field(description="Share of the call where no channel is above the silence floor.")
    longest_silence_s: float = Field(description="Longest stretch where no channel is above the silence floor.")
    dead_air_s: float = Field(description="Total of the silences (as above) lasting at least dead_air_min_s.")
    peak_dbfs: float = Field(description="Largest sample magnitude of any channel as received, dB full scale.")
    channels: list[ChannelAcoustics]
    speech_ratio: float = Field(default=0.0, description="Share of the call where someone speaks (Silero VAD).")
    talk_time_s: dict[str, float] = Field(
        default_factory=dict,
        description="Seconds of speech per role; channels without a role are keyed ch<N>, a down-mix 'all'.",
    )
    non_talk_s: float = Field(default=0.0, description="Seconds where nobody speaks (silence, hold music, noise).")
    longest_non_talk_s: float = Field(default=0.0, description="Longest stretch where nobody speaks.")
    overtalk_s: float = Field(
        default=0.0, description="Seconds where two or more channels speak at once; 0 for a down-mix."
    )
    overtalk_ratio: float = Field(default=0.0, description="overtalk_s / duration_s.")
    overtalk_count: int = Field(
        default=0, description="Episodes of overtalk lasting at least overtalk_min_s (backchannels are shorter)."
    )
    loudness_lufs: float = Field(
        default=-70.0, description="Integrated loudness of all kept channels together (BS.1770-4, LUFS)."
    )
    clipping_ratio: float = Field(default=0.0, description="Clipping ratio of the most clipped channel.")
    snr_db: float | None = Field(
        default=None, description="SNR estimate of the noisiest channel with speech; null when nobody speaks."
    )


class Facets(BaseModel):
    """Structured facts for rules, extracted from the window captions (docs/facets.md).

    Every emotion and sound event points at its window (index and times) and the caption
    span that supports it. ``speech_present`` / ``music_present`` are None only when no
    extractor ran.
    """

    emotions: list[EmotionFacet] = Field(default_factory=list)
    sound_events: list[SoundEventFacet] = Field(default_factory=list)
    languages: list[str] = Field(default_factory=list, description="ISO 639-1 codes (yue for Cantonese), first seen first.")
    speech_present: bool | None = None
    music_present: bool | None = None
    extractor: str | None = Field(default=None, description="'lexicon' or 'guided'; None when none ran.")


class AudioCaptioned(BaseModel):
    """``data`` of ``com.listenpost.audio.captioned``."""

    source_event: SourceEventRef
    context: dict[str, Any]
    audio: AudioFacts
    windows: list[Window]
    caption: str
    facets: Facets
    acoustics: Acoustics
    model: str
    engine: str
    timings: dict[str, float]
    deliveries: int = Field(default=1, description="JetStream deliveries the input needed; >1 means it was retried.")
    redactions: dict[str, int] = Field(
        default_factory=dict,
        description="Identifiers replaced in the captions, by label (email, phone, card, iban, national_id); "
        "empty when none were found or redaction is off (docs/redaction.md).",
    )


Stage = Literal[
    "decode-event", "validate", "fetch", "decode-audio", "preprocess", "caption", "publish", "rules", "notify", "crm", "retry", "stream"
]


class AudioFailed(BaseModel):
    """``data`` of ``com.listenpost.audio.failed`` (the dead-letter record)."""

    stage: Stage
    reason: str
    error: str = Field(description="Exception type, for grouping failures.")
    deliveries: int | None = None
    original: dict[str, Any] = Field(
        description="The original message: subject, headers and body (base64), so it can be replayed."
    )


class StoredEventRef(BaseModel):
    """An event stored in a stream: its id, and where a reader fetches it (a get by sequence)."""

    id: str = Field(min_length=1)
    stream: str = Field(min_length=1)
    sequence: int = Field(ge=1, description="Its stream sequence.")


class EvaluatedDecision(BaseModel):
    """One decision published on the evaluated event, as its CloudEvent's JSON (what
    ``services.notify.call_summary.summarise`` reads): the rule is ``subject``."""

    type: str
    id: str
    subject: str | None = Field(default=None, description="The rule id.")
    time: str | None = None
    rulesetver: str | None = None
    inputid: str | None = None
    data: dict[str, Any] = Field(
        default_factory=dict, description="The decision's data, without its evidence; empty for an `emit` (its author's data)."
    )


class RulesEvaluated(BaseModel):
    """``data`` of ``com.listenpost.rules.evaluated``: one captioned event's rules were evaluated and
    every decision on it published (shadow matches and rule errors are not listed)."""

    captioned: StoredEventRef
    callid: str | None = None
    ruleset_version: str
    decisions: list[EvaluatedDecision] = Field(default_factory=list)
