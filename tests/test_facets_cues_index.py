"""The phrase tables' start index finds exactly what every pattern run over the whole text finds."""

from __future__ import annotations

import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

from services.captioner.facets import cues, lexicon
from services.captioner.facets.cues import CueMatch, PhraseTable, first_characters

TABLES = {name: getattr(cues, name) for name in
          ("EMOTIONS", "SOUNDS", "NEGATIONS", "POST_NEGATIONS", "HEDGES", "MODIFIERS", "BACKGROUND", "SPEECH", "LANGUAGES")}  # fmt: skip


def every_pattern_everywhere(table: PhraseTable, text: str) -> list[CueMatch]:
    """The definition: each pattern's own finditer, then leftmost-longest, non-overlapping."""
    found = [
        (m.start(), -(m.end() - m.start()), m.end(), label, weight)
        for pattern, label, weight in table._entries
        for m in pattern.finditer(text)
    ]
    found.sort(key=lambda f: (f[0], f[1]))
    chosen, taken_until = [], -1
    for start, _, end, label, weight in found:
        if start >= taken_until:
            taken_until = end
            chosen.append(CueMatch(label, weight, start, end, text[start:end]))
    return chosen


def _words() -> list[str]:
    words = ["the", "a", "not", "very", "angry", "Angry", "calm", "-", ",", ".", "glass", "breaking", "siren", "in",
             "background", "English-speaking", "ſad", "KNOCK", "éclat", "İ", "non-angry", "un", "tone", "loud"]  # fmt: skip
    for table in (lexicon.EMOTION_CUES, lexicon.SOUND_CUES):
        for cues_of_label in table.values():
            words += [re.sub(r"[^\w\s'-]", "", f).strip() for f in cues_of_label]
    words += list(lexicon.NEGATIONS) + list(lexicon.HEDGES) + list(lexicon.LANGUAGES)
    return [w for w in words if w]


WORDS = _words()
SEPARATORS = [" ", "  ", "-", ", ", ".", "\n", "'", ""]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(WORDS), st.sampled_from(SEPARATORS)), max_size=40),
       st.sampled_from(sorted(TABLES)))  # fmt: skip
@example([("she is", " "), ("ſad", " "), ("KNOCKs", "")], "EMOTIONS")  # "ſ" is an "s" to re.IGNORECASE
@example([("a", " "), ("ſiren", ".")], "SOUNDS")
def test_the_index_finds_what_every_pattern_finds(parts: list[tuple[str, str]], table: str) -> None:
    text = "".join(w + sep for w, sep in parts)
    assert TABLES[table].find(text, keep_skips=True) == every_pattern_everywhere(TABLES[table], text)


def test_first_characters_of_fragments() -> None:
    assert first_characters(re.compile(r"(?<![\w-])(?:angr(y|ier))", re.I)) == {"a"}
    assert first_characters(re.compile(r"(?<![\w-])(?:(police|Ambulance)\s+siren)", re.I)) == {"p", "a"}
    assert first_characters(re.compile(r"(?<![\w-])(?:[b-d]og)", re.I)) == {"b", "c", "d"}
    # Anything that may match empty or start with a class of characters is tried everywhere.
    assert first_characters(re.compile(r"(?:(un)?happy)", re.I)) is None
    assert first_characters(re.compile(r"(?:\w+ly)", re.I)) is None
    assert first_characters(re.compile(r"(?:[^x]yz)", re.I)) is None


def test_a_table_with_a_fragment_that_can_start_anywhere_still_finds_it() -> None:
    table = PhraseTable([("(un)?happy", "sad", 1.0), ("calm", "calm", 1.0)])
    assert [(c.label, c.text) for c in table.find("Unhappy, calm, happy")] == [("sad", "Unhappy"), ("calm", "calm"), ("sad", "happy")]


def test_a_pattern_never_matches_inside_its_own_last_match() -> None:
    # As its own finditer: "a b a" matches at 2 and, overlapping, at 6; the second does not count,
    # even though the first lost to "x a".
    table = PhraseTable([("x a", "q", 1.0), ("a b a", "p", 1.0)])
    text = "x a b a b a"
    assert table.find(text) == every_pattern_everywhere(table, text)
    assert [c.label for c in table.find(text)] == ["q"]
