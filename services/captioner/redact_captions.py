"""Redaction of a call's captions and of the caption text its facets quote.

Facets are read from the raw captions (so their labels, intensities and confidences are
exactly what they would be without redaction), then their evidence is redacted with the
captions: a span that points into its window's caption (``span_start``/``span_end``) becomes
the same stretch of the redacted caption, offsets moved; a span that does not (the guided
extractor quotes what the model wrote) is redacted on its own. Only the caption text changes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from services.captioner.redaction import LABELS, Redacted, RedactionPolicy, redact
from services.events.facets import FacetEvidence
from services.events.models import Facets, Window
from services.settings import RedactLabel

_Evidence = TypeVar("_Evidence", bound=FacetEvidence)


@dataclass(frozen=True, slots=True)
class RedactedCaptions:
    windows: list[Window]
    facets: Facets
    counts: dict[RedactLabel, int]  # identifiers replaced, by label (captions, and quotes found only in facets)


def _evidence(item: _Evidence, raw: str | None, redacted: Redacted | None, policy: RedactionPolicy, counts: Counter[str]) -> _Evidence:
    update: dict[str, object] = {}
    a, b = item.span_start, item.span_end
    if raw is not None and redacted is not None and a is not None and b is not None and raw[a:b].lower() == item.span.lower():
        a, b = redacted.map_span(a, b)
        update |= {"span": redacted.text[a:b], "span_start": a, "span_end": b}
    else:
        span = redact(item.span, policy)
        counts.update(span.counts)
        update |= {"span": span.text, "span_start": None, "span_end": None} if span.counts else {}
    if item.cue:
        update["cue"] = redact(item.cue, policy).text
    return item.model_copy(update=update)


def redact_captions(windows: Sequence[Window], facets: Facets, policy: RedactionPolicy) -> RedactedCaptions:
    """``windows`` and ``facets`` with every identifier the policy names replaced; facts unchanged."""
    if not policy.enabled:
        return RedactedCaptions(list(windows), facets, {})
    results = {w.index: redact(w.caption, policy) for w in windows}
    raw = {w.index: w.caption for w in windows}
    counts: Counter[str] = Counter()
    for r in results.values():
        counts.update(r.counts)
    redacted_windows = [w.model_copy(update={"caption": results[w.index].text}) for w in windows]
    redacted_facets = facets.model_copy(
        update={
            "emotions": [_evidence(e, raw.get(e.window), results.get(e.window), policy, counts) for e in facets.emotions],
            "sound_events": [
                _evidence(s, raw.get(s.window), results.get(s.window), policy, counts) for s in facets.sound_events
            ],
        }
    )
    return RedactedCaptions(redacted_windows, redacted_facets, {label: counts[label] for label in LABELS if counts[label]})


__all__ = ["RedactedCaptions", "redact_captions"]
