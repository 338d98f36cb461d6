"""The facet taxonomy and the facet records that rules read (``facets.emotions``, ``facets.sound_events``).

The taxonomy is fixed and documented in docs/facets.md; the cues that find each label are in
:mod:`services.captioner.facets.lexicon`. Adding a label is a contract change: rules, the
lexicon and the guided-decoding schema all read these.

They are part of the event contract (``facets`` of ``audio.captioned``, see
:mod:`services.events.models`): the captioner fills them, rules read them.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, Field

EmotionLabel = Literal[
    "anger",  # angry, furious, shouting, hostile
    "frustration",  # frustrated, annoyed, impatient, exasperated
    "sadness",  # sad, tearful, sobbing, disappointed
    "fear",  # afraid, scared, terrified, panicked
    "anxiety",  # anxious, nervous, worried, tense
    "distress",  # distressed, upset, desperate, frantic, pleading
    "confusion",  # confused, puzzled, unsure
    "surprise",  # surprised, astonished, startled
    "joy",  # happy, cheerful, delighted, pleased, relieved
    "calm",  # calm, composed, patient(ly), reassuring, polite
    "neutral",  # neutral, matter-of-fact, flat, unemotional
]
SoundLabel = Literal[
    "siren",
    "alarm",
    "glass_breaking",
    "gunshot",
    "explosion",
    "impact",  # bang, thud, crash
    "screaming",
    "crying",
    "laughter",
    "dog_bark",
    "music",
    "applause",
    "crowd",  # chatter, murmur, cheering, a busy room
    "phone_ringing",
    "beep",  # beeps, chimes, dial tones
    "door",
    "footsteps",
    "car_horn",
    "traffic",
    "keyboard_typing",
    "breathing",  # heavy, laboured or rapid breathing, panting
    "wind",
    "rain",
    "thunder",
    "static",  # line noise, crackling, distortion, a poor connection
]
EMOTION_LABELS: tuple[str, ...] = get_args(EmotionLabel)
SOUND_LABELS: tuple[str, ...] = get_args(SoundLabel)


class FacetEvidence(BaseModel):
    """Where a facet comes from: a window and the caption text that supports it."""

    window: int = Field(description="Index of the window whose caption supports the facet.")
    start: float = Field(description="Window start (s): captions carry no finer timing.")
    end: float = Field(description="Window end (s).")
    span: str = Field(description="The supporting caption text (the sentence, or clause, holding the cue).")
    span_start: int | None = Field(default=None, ge=0, description="Character offset of `span` in the window's caption.")
    span_end: int | None = Field(default=None, ge=0)
    cue: str | None = Field(default=None, description="The word(s) that matched, e.g. 'furious'.")
    hedged: bool = Field(default=False, description="The caption hedges ('possibly', 'seems', 'what sounds like').")


class EmotionFacet(FacetEvidence):
    role: str | None = Field(description="'customer', 'agent' (or another channel role); None when unknown.")
    label: EmotionLabel
    intensity: float = Field(ge=0, le=1, description="How strong the emotion is said to be; hedges lower it.")
    confidence: float = Field(default=0.9, ge=0, le=1, description="How sure the caption is (hedges lower it).")


class SoundEventFacet(FacetEvidence):
    label: SoundLabel
    confidence: float = Field(ge=0, le=1)


__all__ = [
    "EMOTION_LABELS",
    "SOUND_LABELS",
    "EmotionFacet",
    "EmotionLabel",
    "FacetEvidence",
    "SoundEventFacet",
    "SoundLabel",
]
