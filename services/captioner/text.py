"""Plain-text helpers for captions: normalisation, tokens, sentences and quoted speech.

Every function keeps character offsets into the caption as given (normalisation maps one
character to one character), so facets can point at the exact span that supports them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Typographic quotes and apostrophes -> ASCII, one character for one, so offsets survive.
_NORMALISE = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u00a0": " "})

_TOKEN = re.compile(r"\w+(?:['-]\w+)*|[^\w\s]")

# A sentence ends at . ! ? (and closing quotes/brackets after it) followed by space and a capital,
# digit, quote or bracket; a line break always ends one. Abbreviations do not end sentences.
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s+[\"'(\[A-Z0-9])|\n+")
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "vs", "etc", "e.g", "i.e", "approx", "no", "jr", "sr"})

# Quoted speech: "...", or '...' whose opening quote follows a non-word character (so the
# apostrophe in "customer's" never opens a quote).
_DOUBLE_QUOTED = re.compile(r'"[^"\n]*"')
_SINGLE_QUOTED = re.compile(r"(?<!\w)'[^'\n]{2,}?'(?!\w)")


@dataclass(frozen=True, slots=True)
class Token:
    text: str  # lower-cased
    start: int
    end: int

    @property
    def is_word(self) -> bool:
        return self.text[0].isalnum() or self.text[0] == "_"


def normalise(text: str) -> str:
    """``text`` with typographic quotes as ASCII; same length, same offsets."""
    return text.translate(_NORMALISE)


def tokenize(text: str) -> list[Token]:
    """Words (with inner hyphens and apostrophes: "middle-aged", "doesn't") and single punctuation marks."""
    return [Token(m.group().lower(), m.start(), m.end()) for m in _TOKEN.finditer(text)]


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence, whitespace trimmed, empty ones dropped."""
    spans: list[tuple[int, int]] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        if match.group().startswith("."):
            word = re.search(r"([\w.]+)\.*$", text[start : match.start()])
            if word and word.group(1).lower().rstrip(".") in _ABBREVIATIONS:
                continue
        spans.append((start, match.end()))
        start = match.end()
    spans.append((start, len(text)))
    trimmed = []
    for a, b in spans:
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if b > a:
            trimmed.append((a, b))
    return trimmed


def sentences(text: str) -> list[str]:
    return [text[a:b] for a, b in sentence_spans(text)]


def quote_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of quoted speech, quotes included: what someone says, not what the caption says."""
    spans = [m.span() for m in _DOUBLE_QUOTED.finditer(text)]
    masked = mask(text, spans, "x")
    spans += [m.span() for m in _SINGLE_QUOTED.finditer(masked)]
    return sorted(spans)


def mask(text: str, spans: list[tuple[int, int]], fill: str = " ") -> str:
    """``text`` with every span replaced by ``fill`` characters (offsets unchanged)."""
    chars = list(text)
    for a, b in spans:
        chars[a:b] = fill * (b - a)
    return "".join(chars)


def words(text: str) -> list[str]:
    """Lower-case words only (no punctuation): what near-duplicate checks compare."""
    return [t.text for t in tokenize(text) if t.is_word]


__all__ = ["Token", "mask", "normalise", "quote_spans", "sentence_spans", "sentences", "tokenize", "words"]
