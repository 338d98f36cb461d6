"""The default facet extractor: captions in, :class:`~services.events.models.Facets` out.

Pure, deterministic and fast (no model): the lexicon in
:mod:`services.captioner.facets.lexicon` finds the cues, :mod:`.cues` decides whether
each is negated ("no sign of distress"), hedged ("possibly a gunshot") or modified
("increasingly angry"), and :mod:`.roles` decides whose emotion it is. The taxonomy
and scoring are documented in docs/facets.md.

Scoring
-------
- emotion intensity = the cue's base intensity + modifiers ("very" +0.15, "slightly" -0.25),
  clamped to [0.05, 1], times the hedge factor (none 1.0, mild 0.85, strong 0.7);
- emotion confidence = 0.9, 0.7 (mild hedge) or 0.45 (strong hedge);
- sound-event confidence = the cue's base confidence times 1.0 / 0.78 / 0.5 by hedge;
- negated cues are dropped; per window, one emotion per (role, label) and one sound event per
  label is kept: the strongest unhedged mention first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from services.captioner.facets import lexicon as lex
from services.captioner.facets.cues import EMOTIONS, LANGUAGES, SOUNDS, SPEECH, CaptionAnalysis, CueMatch
from services.captioner.facets.roles import RoleResolver
from services.events.facets import EMOTION_LABELS, SOUND_LABELS, EmotionFacet, SoundEventFacet
from services.events.models import Facets, Window

EXTRACTOR = "lexicon"
# music_present needs a music mention at least this sure (a strongly hedged "perhaps faint
# music" is not enough).
MUSIC_PRESENT_MIN_CONFIDENCE = 0.5


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def _evidence(analysis: CaptionAnalysis, cue: CueMatch, window: Window, hedged: bool) -> dict:
    span = analysis.span(cue)
    return {
        "window": window.index,
        "start": window.start,
        "end": window.end,
        "span": analysis.span_text(span),
        "span_start": span[0],
        "span_end": span[1],
        "cue": cue.text,
        "hedged": hedged,
    }


def _stronger(new: EmotionFacet | SoundEventFacet, old: EmotionFacet | SoundEventFacet | None) -> bool:
    if old is None:
        return True
    return _strength(new) > _strength(old)


def _strength(facet: EmotionFacet | SoundEventFacet) -> tuple[bool, float, float]:
    """Unhedged first, then the stronger, then the surer."""
    return (not facet.hedged, getattr(facet, "intensity", 0.0), facet.confidence)


def _window_emotions(analysis: CaptionAnalysis, roles: RoleResolver, window: Window) -> list[EmotionFacet]:
    kept: dict[tuple[str | None, str], EmotionFacet] = {}
    for cue in analysis.find(EMOTIONS):
        if analysis.negated(cue):
            continue
        verdict = roles.verdict(cue)
        if verdict.skip:
            continue
        hedge = analysis.hedge(cue)
        factors = lex.HEDGE_FACTORS[hedge]
        intensity = _clamp(cue.weight + analysis.modifier(cue), 0.05, 1.0) * factors["intensity"]
        facet = EmotionFacet(
            role=verdict.role,
            label=_taxonomy_label(cue.label, EMOTION_LABELS),
            intensity=round(intensity, 2),
            confidence=factors["confidence"],
            **_evidence(analysis, cue, window, hedge != "none"),
        )
        key = (facet.role, facet.label)
        if _stronger(facet, kept.get(key)):
            kept[key] = facet
    return sorted(kept.values(), key=lambda f: f.span_start or 0)


def _window_sounds(analysis: CaptionAnalysis, window: Window) -> list[SoundEventFacet]:
    kept: dict[str, SoundEventFacet] = {}
    for cue in analysis.find(SOUNDS):
        if analysis.negated(cue):
            continue
        hedge = analysis.hedge(cue)
        scale = lex.HEDGE_FACTORS[hedge]["confidence"] / lex.HEDGE_FACTORS["none"]["confidence"]
        facet = SoundEventFacet(
            label=_taxonomy_label(cue.label, SOUND_LABELS),
            confidence=round(cue.weight * scale, 2),
            **_evidence(analysis, cue, window, hedge != "none"),
        )
        if _stronger(facet, kept.get(facet.label)):
            kept[facet.label] = facet
    return sorted(kept.values(), key=lambda f: f.span_start or 0)


def _taxonomy_label(label: str | None, taxonomy: tuple[str, ...]) -> Any:
    """A cue's label, checked against the taxonomy (the lexicon labels its cues with the
    taxonomy's labels); the facet model validates it again."""
    assert label in taxonomy, label
    return label


def _window_languages(analysis: CaptionAnalysis) -> list[str]:
    codes = [
        cue.label
        for cue in analysis.find(LANGUAGES)
        if cue.label and analysis.language_in_context(cue) and not analysis.negated(cue)
    ]
    return list(dict.fromkeys(codes))


def _window_speech(analysis: CaptionAnalysis) -> bool:
    return analysis.has_quotes or any(not analysis.negated(cue) for cue in analysis.find(SPEECH))


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def extract_facets(windows: Sequence[Window]) -> Facets:
    """Facets of a call from its window captions (pure and deterministic).

    Every emotion and sound event points at its window (index, start, end) and the caption
    span that supports it. Windows with empty captions contribute nothing.
    """
    emotions: list[EmotionFacet] = []
    sounds: list[SoundEventFacet] = []
    languages: list[str] = []
    speech = False
    for window in sorted(windows, key=lambda w: (w.start, w.index)):
        if not window.caption.strip():
            continue
        analysis = CaptionAnalysis(window.caption)
        emotions += _window_emotions(analysis, RoleResolver(analysis, window.role), window)
        sounds += _window_sounds(analysis, window)
        window_languages = _window_languages(analysis)
        languages += window_languages
        # A language spoken is speech, even where the caption names no speaking verb.
        speech = speech or bool(window_languages) or _window_speech(analysis)
    return Facets(
        emotions=emotions,
        sound_events=sounds,
        languages=_unique(languages),
        speech_present=speech,
        music_present=any(s.label == "music" and s.confidence >= MUSIC_PRESENT_MIN_CONFIDENCE for s in sounds),
        extractor=EXTRACTOR,
    )


def facets_from_text(caption: str, *, role: str | None = None, start: float = 0.0, end: float = 0.0) -> Facets:
    """Facets of one caption, as if it were the only window (index 0)."""
    return extract_facets([Window(index=0, start=start, end=end, channel=None, role=role, caption=caption)])


__all__ = ["EXTRACTOR", "MUSIC_PRESENT_MIN_CONFIDENCE", "extract_facets", "facets_from_text"]
