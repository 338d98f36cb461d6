"""Finding lexicon cues in one caption, and the context that qualifies them.

A :class:`CaptionAnalysis` tokenises a caption once (quoted speech masked: what a speaker
*says* is not what the caption *describes*) and answers, for any cue it found: is it
negated, is it hedged, how do nearby modifiers change its strength, and which text span
supports it. Scopes are clause-bounded: a negation or hedge reaches to the end of its clause,
through a short comma list ("no anger, fear, or distress") but not into the next clause.
"""

from __future__ import annotations

import bisect
import importlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

from services.captioner.facets import lexicon as lex
from services.captioner.text import Token, mask, normalise, quote_spans, sentence_spans, tokenize

# The parsed form of a pattern (the re module's own parser), read to index fragments by first
# character; internal to re, with no type stubs.
_sre: Any = importlib.import_module("re._constants")
_sre_parser: Any = importlib.import_module("re._parser")

Hedge = Literal["none", "mild", "strong"]
_HEDGE_RANK: dict[Hedge, int] = {"none": 0, "mild": 1, "strong": 2}
#: A hedge cue's label as its strength (the lexicon labels hedges "mild" or "strong").
_HEDGE_STRENGTH: dict[str | None, Hedge] = {"mild": "mild", "strong": "strong"}
_MAX_SPAN_CHARS = 240
_MODIFIER_GAP = frozenset({"a", "an", "the", "more", "most"})


def compile_fragment(fragment: str, *, hyphen_boundary: bool = True) -> re.Pattern[str]:
    """A lexicon fragment as a whole-word, case-insensitive regex (a space matches any whitespace)."""
    body = fragment.replace(" ?", r"\s*").replace(" ", r"\s+")
    edge = r"\w-" if hyphen_boundary else r"\w"
    return re.compile(rf"(?<![{edge}])(?:{body})(?![{edge}])", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class CueMatch:
    label: str | None  # None: a skip phrase (matched only to shield shorter cues)
    weight: float
    start: int  # character offsets in the caption
    end: int
    text: str


class PhraseTable:
    """Fragments -> (label, weight); finds leftmost-longest, non-overlapping matches.

    Each fragment is tried only where it can start: at a word boundary whose character is one
    its pattern can begin with. The same matches as running every pattern over the whole text
    (tests/test_facets_cues_index.py checks it against that), about ten times faster on long
    captions, where scanning each of the ~250 patterns over the caption was the Ingress's
    largest cost per window (bench/README.md, pipeline).
    """

    def __init__(
        self, entries: Iterable[tuple[str, str | None, float]], skips: Iterable[str] = (), *, hyphen_boundary: bool = True
    ) -> None:
        self._entries = [
            (compile_fragment(fragment, hyphen_boundary=hyphen_boundary), label, weight)
            for fragment, label, weight in [*entries, *((s, None, 0.0) for s in skips)]
        ]
        firsts = [first_characters(pattern) for pattern, _, _ in self._entries]
        everywhere = [i for i, chars in enumerate(firsts) if chars is None]
        starters = sorted({c for chars in firsts if chars is not None for c in chars})
        #: Entry indices (ascending, as the matches' tie order) worth trying at a character.
        self._by_first: dict[str, list[int]] = {
            c: sorted({*everywhere, *(i for i, chars in enumerate(firsts) if chars is not None and c in chars)})
            for c in starters
        }
        self._everywhere = everywhere
        self._all = list(range(len(self._entries)))
        edge = r"\w-" if hyphen_boundary else r"\w"
        # Where any fragment may start: a boundary, then (unless one fragment may start with
        # anything) one of the starting characters; any non-ASCII character is tried with every fragment.
        head = "[\\s\\S]" if everywhere else f"[{''.join(re.escape(c) for c in starters)}\\x80-\\U0010ffff]"
        self._candidates = re.compile(rf"(?<![{edge}])(?={head})", re.IGNORECASE)

    @classmethod
    def nested(cls, table: Mapping[str, Mapping[str, float]], skips: Iterable[str] = ()) -> PhraseTable:
        """From {label: {fragment: weight}}."""
        return cls(((f, label, w) for label, cues in table.items() for f, w in cues.items()), skips)

    @classmethod
    def flat(cls, table: Mapping[str, object] | Iterable[str], skips: Iterable[str] = ()) -> PhraseTable:
        """From {fragment: label} (or just fragments, labelled by themselves)."""
        if isinstance(table, Mapping):
            return cls(((f, str(label) if label is not None else "", 1.0) for f, label in table.items()), skips)
        return cls(((f, f, 1.0) for f in table), skips)

    def find(self, text: str, *, keep_skips: bool = False) -> list[CueMatch]:
        found = []
        resume_at: dict[int, int] = {}  # per pattern, as its own finditer: no match inside its last one
        for candidate in self._candidates.finditer(text):
            at = candidate.start()
            char = text[at]
            indices = self._by_first.get(char.lower(), self._everywhere) if char.isascii() else self._all
            for i in indices:
                if at < resume_at.get(i, 0):
                    continue
                pattern, label, weight = self._entries[i]
                m = pattern.match(text, at)
                if m is not None:
                    found.append((at, -(m.end() - at), m.end(), label, weight))
                    resume_at[i] = m.end()
        found.sort(key=lambda f: (f[0], f[1]))
        chosen: list[CueMatch] = []
        taken_until = -1
        for start, _, end, label, weight in found:
            if start < taken_until:
                continue  # overlaps a longer (or earlier) match
            taken_until = end
            chosen.append(CueMatch(label, weight, start, end, text[start:end]))
        return chosen if keep_skips else [c for c in chosen if c.label is not None]


def first_characters(pattern: re.Pattern[str]) -> frozenset[str] | None:
    """The lower-case ASCII characters a match of ``pattern`` can begin with; None: any (or unknown)."""
    try:
        parsed = _sre_parser.parse(pattern.pattern, pattern.flags)
    except re.error:
        return None
    chars = _first(list(parsed))
    if chars is None or not all(c.isascii() for c in chars):
        return None
    return frozenset(chars)


def _first(items: list[tuple[Any, Any]]) -> set[str] | None:
    """First characters of a parsed sequence; None when it may start with anything or match empty."""
    for op, arg in items:
        if op in (_sre.ASSERT, _sre.ASSERT_NOT, _sre.AT):
            continue  # zero width: the next item starts the match
        if op is _sre.LITERAL:
            return {chr(arg).lower()}
        if op is _sre.IN:
            chars: set[str] = set()
            for kind, value in arg:
                if kind is _sre.LITERAL:
                    chars.add(chr(value).lower())
                elif kind is _sre.RANGE and value[1] - value[0] < 64:
                    chars.update(chr(c).lower() for c in range(value[0], value[1] + 1))
                else:
                    return None  # a negated set, a category: anything
            return chars
        if op is _sre.SUBPATTERN:
            return _first(list(arg[-1]))
        if op is _sre.BRANCH:
            union: set[str] = set()
            for branch in arg[1]:
                first = _first(list(branch))
                if first is None:
                    return None
                union |= first
            return union
        if op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT) and arg[0] >= 1:
            return _first(list(arg[2]))
        return None
    return None


def _hedge_table() -> PhraseTable:
    return PhraseTable(((f, strength, 1.0) for f, strength in lex.HEDGES.items()), lex.HEDGE_SKIPS)


def _modifier_table() -> PhraseTable:
    return PhraseTable(((f, "mod", delta) for f, delta in (lex.AMPLIFIERS | lex.DOWNTONERS).items()))


# Built once at import: the tables are constant data.
EMOTIONS = PhraseTable.nested(lex.EMOTION_CUES, lex.EMOTION_SKIPS)
SOUNDS = PhraseTable.nested(lex.SOUND_CUES, lex.SOUND_SKIPS)
NEGATIONS = PhraseTable.flat(lex.NEGATIONS, lex.NEGATION_SKIPS)
POST_NEGATIONS = PhraseTable.flat(lex.POST_NEGATIONS)
HEDGES = _hedge_table()
MODIFIERS = _modifier_table()
BACKGROUND = PhraseTable.flat(lex.BACKGROUND_MARKERS)
SPEECH = PhraseTable.flat(lex.SPEECH_CUES, lex.SPEECH_SKIPS)
# Languages allow a hyphen after the name ("English-speaking"); the context check decides.
LANGUAGES = PhraseTable(((f, code, 1.0) for f, code in lex.LANGUAGES.items()), hyphen_boundary=False)
_LANGUAGE_NOT = re.compile(rf"^\s*-?\s*(?:{lex.LANGUAGE_NOT})(?!\w)", re.IGNORECASE)


class CaptionAnalysis:
    """One caption, tokenised once; answers questions about the cues found in it."""

    def __init__(self, caption: str) -> None:
        self.text = normalise(caption)
        self.quotes = quote_spans(self.text)
        # Cues are looked for in the caption's own words: quoted speech is blanked out.
        self.masked = mask(self.text, self.quotes)
        self.tokens: list[Token] = tokenize(self.masked)
        self._starts = [t.start for t in self.tokens]
        self.sentences = sentence_spans(self.masked)
        sentence_starts = [a for a, _ in self.sentences]
        self.sentence_of = [max(0, bisect.bisect_right(sentence_starts, t.start) - 1) for t in self.tokens]
        self._negation_scopes = [
            (self.token_index(c.end), self._scope_end(self.token_index(c.end), c)) for c in NEGATIONS.find(self.masked)
        ]
        self._post_negations = [self.token_index(c.start) for c in POST_NEGATIONS.find(self.masked)]
        self._hedge_scopes = [
            (self.token_index(c.start), self._scope_end(self.token_index(c.end), c, after_cue_comma=True), _HEDGE_STRENGTH[c.label])
            for c in HEDGES.find(self.masked)
        ]
        modifiers = MODIFIERS.find(self.masked)
        self._modifiers = [(self.token_index(c.end), c.weight) for c in modifiers]
        self._modifier_tokens = {
            i for c in modifiers for i in range(self.token_index(c.start), self.token_index(c.end))
        }
        self._background = [self.token_index(c.start) for c in BACKGROUND.find(self.masked)]

    # ---------------------------------------------------------------- positions

    def token_index(self, offset: int) -> int:
        """Index of the first token starting at or after ``offset`` (len(tokens) at the end)."""
        return bisect.bisect_left(self._starts, offset)

    def find(self, table: PhraseTable) -> list[CueMatch]:
        return table.find(self.masked)

    def _breaks_clause(self, i: int) -> bool:
        text = self.tokens[i].text
        if text in lex.CLAUSE_BREAKS or text in lex.CONTRASTS:
            return True
        return text == "and" and i + 1 < len(self.tokens) and self.tokens[i + 1].text in lex.CLAUSE_STARTERS

    def _scope_end(self, i: int, cue: CueMatch, *, after_cue_comma: bool = False) -> int:
        """Token index where the scope of a cue ending before token ``i`` ends (exclusive)."""
        n = len(self.tokens)
        if i >= n:
            return i
        sentence = self.sentence_of[min(i, n - 1)]
        if after_cue_comma and self.tokens[i].text == ",":
            i += 1  # "Possibly, a siren..."
        j = i
        while j < n and self.sentence_of[j] == sentence:
            if self._breaks_clause(j):
                break
            if self.tokens[j].text == ",":
                chunk = []
                k = j + 1
                while k < n and self.sentence_of[k] == sentence and self.tokens[k].text != "," and not self._breaks_clause(k):
                    chunk.append(self.tokens[k].text)
                    k += 1
                # A comma list goes on ("no anger, fear, or panic in her voice"); a new clause
                # ("..., and she is upset") does not.
                if chunk and chunk[0] not in lex.SUBJECT_PARTICIPLES and (len(chunk) <= 3 or chunk[0] in ("or", "nor")):
                    j += 1
                    continue
                break
            j += 1
        return j

    def same_clause(self, a: int, b: int) -> bool:
        """No clause break or comma between tokens a and b (a <= b)."""
        return all(self.tokens[k].text != "," and not self._breaks_clause(k) for k in range(a, b))

    # ---------------------------------------------------------------- qualifiers

    def negated(self, cue: CueMatch) -> bool:
        first, last = self.token_index(cue.start), self.token_index(cue.end)
        if any(a <= first < b for a, b in self._negation_scopes):
            return True
        # "... anger is absent": a post-negation a few words on, in the same clause.
        return any(last <= p <= last + 4 and self.same_clause(last, p) for p in self._post_negations)

    def hedge(self, cue: CueMatch) -> Hedge:
        first = self.token_index(cue.start)
        found: Hedge = "none"
        for a, b, strength in self._hedge_scopes:
            if a <= first < b and _HEDGE_RANK[strength] > _HEDGE_RANK[found]:
                found = strength
        return found

    def modifier(self, cue: CueMatch) -> float:
        """Sum of the amplifier/downtoner deltas right before the cue ("very", "a hint of",
        "extremely visibly"): only other modifiers or an article may stand between."""
        first = self.token_index(cue.start)
        return sum(
            delta
            for end, delta in self._modifiers
            if first - 3 <= end <= first
            and all(k in self._modifier_tokens or self.tokens[k].text in _MODIFIER_GAP for k in range(end, first))
        )

    def in_background(self, cue: CueMatch) -> bool:
        """A background marker ("in the background") in the cue's clause, before or after it."""
        first = self.token_index(cue.start)
        return any(self._clause_of(first) == self._clause_of(b) for b in self._background)

    def _clause_of(self, i: int) -> tuple[int, int]:
        n = len(self.tokens)
        a = i
        while a > 0 and self.tokens[a - 1].text != "," and not self._breaks_clause(a - 1):
            a -= 1
        b = i
        while b < n and self.tokens[b].text != "," and not self._breaks_clause(b):
            b += 1
        return (a, b)

    # ---------------------------------------------------------------- evidence

    def span(self, cue: CueMatch) -> tuple[int, int]:
        """Character span supporting the cue: its sentence, or its clause when the sentence is long."""
        for a, b in self.sentences:
            if a <= cue.start < b:
                if b - a <= _MAX_SPAN_CHARS:
                    return a, b
                ta, tb = self._clause_of(self.token_index(cue.start))
                start = self.tokens[ta].start if ta < len(self.tokens) else cue.start
                end = self.tokens[tb - 1].end if tb - 1 < len(self.tokens) and tb > ta else cue.end
                return min(start, cue.start), max(end, cue.end)
        return cue.start, cue.end

    def span_text(self, span: tuple[int, int]) -> str:
        return self.text[span[0] : span[1]]

    # ---------------------------------------------------------------- languages

    def language_in_context(self, cue: CueMatch) -> bool:
        """A language name used for what is spoken, not an accent or a style."""
        if _LANGUAGE_NOT.match(self.masked[cue.end : cue.end + 24]):
            return False
        first, last = self.token_index(cue.start), self.token_index(cue.end)
        token = self.tokens[first].text if first < len(self.tokens) else ""
        # "English-speaking", "Spanish-language": the hyphenated tail is the context.
        if "-" in token and token.split("-", 1)[1] in lex.LANGUAGE_AFTER | {"speaking", "language", "speaker"}:
            return True
        before = [t.text for t in self.tokens[max(0, first - 3) : first] if t.is_word][-2:]
        after = [t.text for t in self.tokens[last : last + 2] if t.is_word][:1]
        return bool(set(before) & lex.LANGUAGE_BEFORE or set(after) & lex.LANGUAGE_AFTER)

    @cached_property
    def has_quotes(self) -> bool:
        return bool(self.quotes)


__all__ = [
    "BACKGROUND",
    "EMOTIONS",
    "LANGUAGES",
    "SOUNDS",
    "SPEECH",
    "CaptionAnalysis",
    "CueMatch",
    "Hedge",
    "PhraseTable",
    "compile_fragment",
]
