"""The optional second facet extractor: a structured-output pass through the same vLLM engine.

Each window's caption goes to the engine as a text-only prompt, decoded under a JSON schema
built from the facet taxonomy (guided decoding with xgrammar), so whatever the model writes is
valid JSON of the right shape; it is then validated into the same :class:`Facets` as the
lexicon extractor's. Windows are sent concurrently, so they batch with each other and with the
captions in flight.

Caveats, said plainly: the grammar guarantees the *shape*, not the truth. Qwen3-Omni-Captioner is
fine-tuned to caption audio and its authors say it ignores instructions, so the quality of this
pass on the Captioner is unmeasured; the lexicon extractor stays the default. On the tiny
random-weight checkpoint the output is noise that is nonetheless schema-valid.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError

from services.captioner.engines.base import TextEngine
from services.captioner.errors import GuidedExtractionError
from services.captioner.facets import lexicon as lex
from services.captioner.prompt import text_prompt
from services.events.facets import EMOTION_LABELS, SOUND_LABELS, EmotionFacet, EmotionLabel, SoundEventFacet, SoundLabel
from services.events.models import Facets, Window

EXTRACTOR = "guided"
LANGUAGE_CODES: tuple[str, ...] = tuple(dict.fromkeys(lex.LANGUAGES.values()))
UNKNOWN_ROLE = "unknown"
INTENSITY = {"low": 0.3, "medium": 0.6, "high": 0.9}
CERTAINTY = {"certain": 0.9, "possible": 0.5}

SYSTEM = (
    "You turn one audio caption into facts for routing rules. Report only what the caption says: "
    "emotions of the people speaking (role customer, agent, or unknown), non-speech sound events, "
    "the languages spoken (ISO 639-1 codes), and whether speech and music are present. Skip anything "
    "the caption denies ('no music'); mark what it only suspects ('possibly a gunshot') as hedged or "
    "possible. Quote the supporting words in span. Answer with JSON only."
)


class GuidedLimits(BaseModel):
    """Bounds written into the schema: they also bound how many tokens an answer can take."""

    model_config = ConfigDict(frozen=True)

    max_emotions: PositiveInt = 8
    max_sound_events: PositiveInt = 8
    max_languages: PositiveInt = 4
    max_span_chars: PositiveInt = 160


DEFAULT_LIMITS = GuidedLimits()


class GuidedEmotion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: str
    label: EmotionLabel
    intensity: Literal["low", "medium", "high"]
    hedged: bool
    span: str


class GuidedSound(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: SoundLabel
    certainty: Literal["certain", "possible"]
    span: str


class GuidedWindowFacets(BaseModel):
    """What the model must return for one window (the schema is generated from the same bounds)."""

    model_config = ConfigDict(extra="forbid")

    emotions: list[GuidedEmotion] = Field(default_factory=list)
    sound_events: list[GuidedSound] = Field(default_factory=list)
    languages: list[str] = Field(default_factory=list)
    speech_present: bool
    music_present: bool


def _roles(window: Window) -> list[str]:
    return [window.role, UNKNOWN_ROLE] if window.role else ["customer", "agent", UNKNOWN_ROLE]


def window_schema(window: Window, limits: GuidedLimits = DEFAULT_LIMITS) -> dict[str, Any]:
    """The JSON schema one window's answer is decoded under (enums from the taxonomy)."""
    span = {"type": "string", "maxLength": limits.max_span_chars}

    def obj(properties: dict[str, Any]) -> dict[str, Any]:
        return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}

    emotion = obj(
        {
            "role": {"enum": _roles(window)},
            "label": {"enum": list(EMOTION_LABELS)},
            "intensity": {"enum": list(INTENSITY)},
            "hedged": {"type": "boolean"},
            "span": span,
        }
    )
    sound = obj({"label": {"enum": list(SOUND_LABELS)}, "certainty": {"enum": list(CERTAINTY)}, "span": span})
    return obj(
        {
            "emotions": {"type": "array", "items": emotion, "maxItems": limits.max_emotions},
            "sound_events": {"type": "array", "items": sound, "maxItems": limits.max_sound_events},
            "languages": {"type": "array", "items": {"enum": list(LANGUAGE_CODES)}, "maxItems": limits.max_languages},
            "speech_present": {"type": "boolean"},
            "music_present": {"type": "boolean"},
        }
    )


def parse_window_answer(text: str, window: Window) -> GuidedWindowFacets:
    """The model's JSON, validated; raises GuidedExtractionError when it is not a valid answer."""
    try:
        # strict=False: the grammar lets control characters into strings, which JSON forbids.
        data = json.loads(text, strict=False)
        answer = GuidedWindowFacets.model_validate(data)
    except (ValueError, ValidationError) as exc:
        raise GuidedExtractionError(f"window {window.index}: the guided answer is not valid facets: {exc}") from exc
    roles = set(_roles(window))
    bad = [e.role for e in answer.emotions if e.role not in roles] + [c for c in answer.languages if c not in LANGUAGE_CODES]
    if bad:
        raise GuidedExtractionError(f"window {window.index}: values outside the schema: {bad}")
    return answer


def _evidence(window: Window, span: str, hedged: bool) -> dict[str, Any]:
    found = window.caption.lower().find(span.lower()) if span.strip() else -1
    offsets = (found, found + len(span)) if found >= 0 else (None, None)
    return {
        "window": window.index,
        "start": window.start,
        "end": window.end,
        "span": span,
        "span_start": offsets[0],
        "span_end": offsets[1],
        "cue": None,
        "hedged": hedged,
    }


def to_facets(answers: Sequence[tuple[Window, GuidedWindowFacets]]) -> Facets:
    """Per-window answers as one :class:`Facets` (same model as the lexicon extractor's)."""
    emotions, sounds, languages = [], [], []
    speech = music = False
    for window, answer in answers:
        for e in answer.emotions:
            hedged = e.hedged
            emotions.append(
                EmotionFacet(
                    role=None if e.role == UNKNOWN_ROLE else e.role,
                    label=e.label,
                    intensity=INTENSITY[e.intensity] * (0.7 if hedged else 1.0),
                    confidence=0.45 if hedged else 0.9,
                    **_evidence(window, e.span, hedged),
                )
            )
        for s in answer.sound_events:
            sounds.append(
                SoundEventFacet(
                    label=s.label, confidence=CERTAINTY[s.certainty], **_evidence(window, s.span, s.certainty != "certain")
                )
            )
        languages += answer.languages
        speech = speech or answer.speech_present
        music = music or answer.music_present
    return Facets(
        emotions=emotions,
        sound_events=sounds,
        languages=list(dict.fromkeys(languages)),
        speech_present=speech,
        music_present=music,
        extractor=EXTRACTOR,
    )


def user_text(window: Window) -> str:
    who = f"the {window.role}'s channel" if window.role else "both speakers mixed"
    return f"Caption of {window.end - window.start:.0f} s of a call ({who}):\n{window.caption.strip()}"


class GuidedFacetExtractor:
    """Facets from captions by guided decoding through a :class:`TextEngine` (the vLLM engine)."""

    def __init__(
        self, engine: TextEngine, model: str, *, max_tokens: int = 1024, limits: GuidedLimits = DEFAULT_LIMITS
    ) -> None:
        self.engine = engine
        self.model = model
        self.max_tokens = max_tokens
        self.limits = limits

    async def _window(self, window: Window, request_id: str) -> GuidedWindowFacets:
        prompt = await asyncio.to_thread(text_prompt, self.model, SYSTEM, user_text(window))
        result = await self.engine.complete(
            prompt,
            request_id=f"{request_id}/facets/w{window.index}",
            max_tokens=self.max_tokens,
            json_schema=window_schema(window, self.limits),
        )
        if result.finish_reason == "length":
            raise GuidedExtractionError(
                f"window {window.index}: the guided answer was cut at max_tokens={self.max_tokens}"
            )
        return parse_window_answer(result.text, window)

    async def extract(self, windows: Sequence[Window], request_id: str = "call") -> Facets:
        captioned = [w for w in sorted(windows, key=lambda w: (w.start, w.index)) if w.caption.strip()]
        answers = await asyncio.gather(*(self._window(w, request_id) for w in captioned))
        return to_facets(list(zip(captioned, answers, strict=True)))


__all__ = [
    "EXTRACTOR",
    "GuidedFacetExtractor",
    "GuidedLimits",
    "GuidedWindowFacets",
    "parse_window_answer",
    "to_facets",
    "window_schema",
]
