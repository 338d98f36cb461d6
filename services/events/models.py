"""Pydantic models of the ``data`` of listenpost's CloudEvents (the event contracts).

The CloudEvent envelope (id, source, type, extensions) is the SDK's event, see
:mod:`services.events.binding`; these models validate what rides inside it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

AUDIO_SUBMITTED = "com.listenpost.audio.submitted"
AUDIO_CAPTIONED = "com.listenpost.audio.captioned"
AUDIO_FAILED = "com.listenpost.audio.failed"
ROUTE_DECIDED = "com.listenpost.route.decided"
ALERT_RAISED = "com.listenpost.alert.raised"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ObjectRef(_Strict):
    """An object in the NATS object store (claim check for large audio)."""

    bucket: str = Field(min_length=1)
    name: str = Field(min_length=1)


class AudioRef(_Strict):
    """Where the audio is: exactly one of ``uri``, ``object`` or ``data_base64``."""

    uri: str | None = None
    object: ObjectRef | None = None
    data_base64: str | None = None
    format: str | None = Field(default=None, description="Declared container/codec hint, e.g. 'wav'.")

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


class SourceEventRef(BaseModel):
    id: str
    source: str
    type: str


class AudioFacts(BaseModel):
    duration_s: float
    sample_rate: int = Field(description="Rate of the recording as received.")
    channels: int
    format: str | None = None


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
    channel: int | None
    role: str | None
    duration_s: float
    rms_dbfs: float
    peak_dbfs: float
    silence_ratio: float
    longest_silence_s: float
    talk_time_s: float


class Acoustics(BaseModel):
    duration_s: float
    silence_ratio: float = Field(description="Share of the call where no channel is above the silence floor.")
    longest_silence_s: float
    dead_air_s: float
    peak_dbfs: float
    channels: list[ChannelAcoustics]


class Facets(BaseModel):
    """Structured facts for rules. Filled by the facet extractor (issue 4)."""

    emotions: list[dict[str, Any]] = Field(default_factory=list)
    sound_events: list[dict[str, Any]] = Field(default_factory=list)
    languages: list[str] = Field(default_factory=list)
    speech_present: bool | None = None
    music_present: bool | None = None


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


Stage = Literal["decode-event", "validate", "fetch", "decode-audio", "preprocess", "caption", "publish", "rules", "retry"]


class AudioFailed(BaseModel):
    """``data`` of ``com.listenpost.audio.failed`` (the dead-letter record)."""

    stage: Stage
    reason: str
    error: str = Field(description="Exception type, for grouping failures.")
    deliveries: int | None = None
    original: dict[str, Any] = Field(
        description="The original message: subject, headers and body (base64), so it can be replayed."
    )
