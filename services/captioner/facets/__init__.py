"""Facets: structured facts for rules (emotions per speaker, sound events, languages), read from
the window captions.

- :mod:`.extract` is the default extractor (pure, deterministic, no model);
- :mod:`.lexicon` holds its cue tables, :mod:`.cues` the negation/hedge analysis,
  :mod:`.roles` whose emotion a cue is;
- :mod:`.guided` is the optional JSON-schema-guided pass through the vLLM engine.

The facet records and their taxonomy are part of the event contract:
:mod:`services.events.facets`. docs/facets.md documents both.
"""

from services.captioner.facets.extract import EXTRACTOR, extract_facets, facets_from_text

__all__ = ["EXTRACTOR", "extract_facets", "facets_from_text"]
