"""Helper functions for rule authors, callable in ``when``.

    emotion(role, labels, min_intensity)   some emotion of `role` ("any": any role, or none)
                                           with a label in `labels` at or above `min_intensity`
    sound(labels, min_confidence)          some sound event with a label in `labels` at or above
                                           `min_confidence`
    any_words(text, words)                 `text` contains at least one of `words`
    all_words(text, words)                 `text` contains every one of `words`

`labels` and `words` are a string or a list of strings. Words match whole
words, case-insensitively; a "word" may be a phrase ("call back"), which
matches those words in that order.

The helpers read the event's facets from the Python side, so they cost about
a microsecond instead of converting every facet into CEL, and they record
*evidence* (the facet's span, time and window, or the caption window holding
a word) that alert templates quote as ``{{ match.span }}``, ``{{ match.at }}``.
The engine also knows their literal arguments: a rule on
``emotion("customer", ["anger"], 0.6)`` is not even evaluated on an event
without anger (see :mod:`services.rules.analysis`).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.rules.errors import RulesError


@dataclass(frozen=True)
class HelperSpec:
    params: tuple[str, ...]
    kinds: tuple[tuple[str, ...], ...]  # accepted literal kinds, per parameter
    trigger: str | None  # what the pre-filter may index on
    doc: str


_TEXT = ("string",)
_LABELS = ("string", "list of strings")
_NUMBER = ("number",)
HELPERS: Mapping[str, HelperSpec] = {
    "emotion": HelperSpec(
        ("role", "labels", "min_intensity"), (_TEXT, _LABELS, _NUMBER), "emotion",
        'emotion("customer", ["anger", "frustration"], 0.6): an emotion of that role ("any" for any) at or above the intensity',
    ),
    "sound": HelperSpec(
        ("labels", "min_confidence"), (_LABELS, _NUMBER), "sound",
        'sound(["glass_breaking", "gunshot"], 0.5): a sound event with one of the labels at or above the confidence',
    ),
    "any_words": HelperSpec(
        ("text", "words"), (_TEXT, _LABELS), "any_words",
        'any_words(caption, ["cancel", "call back"]): at least one of the words or phrases, whole words, any case',
    ),
    "all_words": HelperSpec(
        ("text", "words"), (_TEXT, _LABELS), "all_words",
        'all_words(caption, ["refund", "manager"]): every one of the words or phrases, whole words, any case',
    ),
}  # fmt: skip

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*", re.UNICODE)
# The same words for ASCII text, at C speed: an apostrophe joins two letters or digits
# or else separates; every other character that is not a letter or digit separates.
_STRAY_APOSTROPHE = re.compile(r"'(?![a-z0-9])|(?<![a-z0-9])'")
_ASCII_SEPARATORS = str.maketrans({chr(c): " " for c in range(128) if not chr(c).isalnum() and chr(c) != "'"})


def words_of(text: str) -> list[str]:
    """Lower-case words, the unit of any_words/all_words and of the word index."""
    lowered = text.lower()
    if lowered.isascii():
        if "'" in lowered:
            lowered = _STRAY_APOSTROPHE.sub(" ", lowered)
        return lowered.translate(_ASCII_SEPARATORS).split()
    return _WORD.findall(lowered)


def _normalised(text: str) -> str:
    return " " + " ".join(words_of(text)) + " "


def _spaced(text: str) -> str:
    """Like _normalised(), except that words may be apart by more than one space (ASCII
    text: no splitting and joining). ``" word "`` is in it exactly when it is in
    _normalised(); a phrase of several words needs _normalised()."""
    lowered = text.lower()
    if not lowered.isascii():
        return _normalised(text)
    if "'" in lowered:
        lowered = _STRAY_APOSTROPHE.sub(" ", lowered)
    return " " + lowered.translate(_ASCII_SEPARATORS) + " "


class HelperError(RulesError, ValueError):
    """A helper called with values it cannot use: a rule error, never a silent false."""


def _labels(value: Any, what: str) -> Sequence[str]:
    if type(value) is str:
        return (value,)
    if type(value) is list and all(type(v) is str for v in value):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return value
    raise HelperError(f"{what} must be a string or a list of strings, got {type(value).__name__}")


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise HelperError(f"{what} must be a number, got {type(value).__name__}")
    return float(value)


def clock(seconds: Any) -> str:
    """63.2 -> "01:03": the time in the call, as a person reads it."""
    t = type(seconds)
    if t is not float and t is not int and (not isinstance(seconds, int | float) or isinstance(seconds, bool)):
        return ""
    if not math.isfinite(seconds):
        return ""
    whole = int(seconds) if seconds > 0 else 0
    text = _CLOCK_TEXT.get(whole)
    if text is None:
        hours, rest = divmod(whole, 3600)
        minutes, secs = divmod(rest, 60)
        text = f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"
        if whole < 86_400:  # the first day of calls: a bounded table, filled as seen
            _CLOCK_TEXT[whole] = text
    return text


_CLOCK_TEXT: dict[int, str] = {}


@functools.lru_cache(maxsize=1024)
def _phrase_pattern(phrase_words: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(r"\b" + r"\W+".join(re.escape(w) for w in phrase_words) + r"\b", re.IGNORECASE)


def _span_around(text: str, phrase_words: list[str], width: int = 160) -> str:
    """The sentence (or a slice of the text) around the first occurrence of the phrase."""
    if not phrase_words:
        return text[:width]
    found = _phrase_pattern(tuple(phrase_words)).search(text)
    if not found:
        return text[:width]
    start = max(text.rfind(".", 0, found.start()) + 1, found.start() - width // 2, 0)
    end_dot = text.find(".", found.end())
    end = min(end_dot + 1 if end_dot != -1 else len(text), found.end() + width // 2)
    return text[start:end].strip()


#: The value a facet item reaches, per kind: an emotion's intensity, a sound's confidence.
GRADED_FIELD = {"emotion": "intensity", "sound": "confidence"}
#: The list of ``facets`` that holds the items of each kind.
FACET_LIST = {"emotion": "emotions", "sound": "sound_events"}


def highest(items: Any, field: str, role: str | None, labels: Collection[str]) -> float:
    """The highest ``field`` of the items with a label in ``labels`` (and of ``role``, unless
    None); -inf when none; +inf when some item cannot be compared (not a map, a label or
    role that is not a string, a value that is not a double, or NaN): then only the rule
    itself can tell, and fail visibly if it must."""
    if type(items) is not list:
        return math.inf
    best = -math.inf
    for item in items:
        value = item_value(item, field, role, labels)
        if value is not None and value > best:
            if value == math.inf:
                return value
            best = value
    return best


def item_value(item: Any, field: str, role: str | None, labels: Collection[str]) -> float | None:
    """What one item contributes to :func:`highest`: its ``field`` (a double), None when it
    does not count (another label or role), +inf when it cannot be compared."""
    if type(item) is not dict:
        return math.inf
    label = item["label"] if "label" in item else None  # (not .get(): a call, and twice the time)
    if type(label) is not str:
        return math.inf
    if label not in labels:
        return None
    if role is not None:
        own = item["role"] if "role" in item else None
        if type(own) is not str:
            return math.inf  # `e.role == "x"` would fail on it
        if own != role:
            return None
    value = item[field] if field in item else None
    if type(value) is not float or value != value:  # (the library fails on NaN in an order)
        return math.inf
    return value


class Facts:
    """What the helpers read about one event, or one window of it (for ``for:`` rules).

    Built from plain Python data; the word index of the caption is built on
    first use only. Helpers append :attr:`evidence` (cleared per rule).
    """

    __slots__ = (
        "caption", "emotions", "evidence", "sounds", "windows", "_highest", "_norm", "_quoted", "_spaced", "_valid",
    )  # fmt: skip

    def __init__(self, emotions: Any, sounds: Any, caption: Any, windows: Sequence[Mapping[str, Any]]) -> None:
        self.emotions = emotions
        self.sounds = sounds
        self.caption = caption
        self.windows = windows
        self.evidence: list[dict[str, Any]] = []
        self._norm: dict[str, str] = {}  # text -> _normalised(text), built on first use
        self._spaced: dict[str, str] = {}  # text -> _spaced(text)
        self._valid: set[str] = set()  # facet lists already checked (`_items`): once per event
        self._highest: dict[tuple[str, str | None, Collection[str]], float] | None = None
        #: Evidence already built, by facet item (its id: items live as long as these facts)
        #: or by (text, phrase): rules that match the same item or words share one record.
        self._quoted: dict[Any, dict[str, Any]] | None = None

    # --- the helpers ---------------------------------------------------------

    def emotion(self, role: Any, labels: Any, min_intensity: Any) -> bool:
        if not isinstance(role, str):
            raise HelperError(f"emotion(): role must be a string, got {type(role).__name__}")
        return self.emotion_of(role, _labels(labels, "emotion(): labels"), _number(min_intensity, "emotion(): min_intensity"))

    def emotion_of(self, role: str, wanted: Collection[str], floor: float) -> bool:
        """emotion() with checked arguments."""
        for item in self._items(self.emotions, "facets.emotions"):
            label = item.get("label")
            # A label that is not a string is never wanted (and may not be hashable).
            if type(label) is not str or label not in wanted or (role != "any" and item.get("role") != role):
                continue
            intensity = _number(item.get("intensity"), f"intensity of emotion {item.get('label')!r}")
            if intensity >= floor:
                self.evidence.append(self._item_evidence(item, "emotion", "intensity", intensity))
                return True
        return False

    def sound(self, labels: Any, min_confidence: Any) -> bool:
        return self.sound_of(_labels(labels, "sound(): labels"), _number(min_confidence, "sound(): min_confidence"))

    def sound_of(self, wanted: Collection[str], floor: float) -> bool:
        """sound() with checked arguments."""
        for item in self._items(self.sounds, "facets.sound_events"):
            label = item.get("label")
            if type(label) is not str or label not in wanted:
                continue
            confidence = _number(item.get("confidence"), f"confidence of sound event {item.get('label')!r}")
            if confidence >= floor:
                self.evidence.append(self._item_evidence(item, "sound", "confidence", confidence))
                return True
        return False

    def any_words(self, text: Any, words: Any) -> bool:
        return self._words(text, words, "any_words", all_of=False)

    def all_words(self, text: Any, words: Any) -> bool:
        return self._words(text, words, "all_words", all_of=True)

    def highest(self, kind: str, role: str | None, labels: Collection[str]) -> float:
        """:func:`highest` over this view's emotions or sound events, once per (kind, role, labels)."""
        key = (kind, role, labels)
        if self._highest is None:
            self._highest = {}
        best = self._highest.get(key)
        if best is None:
            best = self._highest[key] = highest(self.emotions if kind == "emotion" else self.sounds, GRADED_FIELD[kind], role, labels)
        return best

    # --- internals -----------------------------------------------------------

    def _items(self, value: Any, what: str) -> list[Mapping[str, Any]]:
        if what in self._valid:
            return value
        if not isinstance(value, list):
            raise HelperError(f"{what} is {'missing' if value is None else type(value).__name__}, not a list")
        for item in value:
            if type(item) is not dict and not isinstance(item, Mapping):
                raise HelperError(f"an item of {what} is a {type(item).__name__}, not a map")
        self._valid.add(what)
        return value

    def _item_evidence(self, item: Mapping[str, Any], kind: str, field: str, value: float) -> dict[str, Any]:
        """What a rule that matched ``item`` quotes (one record per item, shared: read-only)."""
        if self._quoted is None:
            self._quoted = {}
        key = id(item)
        evidence = self._quoted.get(key)
        if evidence is None:
            evidence = self._quoted[key] = item_evidence(item, kind, field, value)
        return evidence

    def _words(self, text: Any, words: Any, name: str, *, all_of: bool) -> bool:
        if not isinstance(text, str):
            raise HelperError(f"{name}(): text must be a string, got {type(text).__name__}")
        return self.phrases_in(text, [words_of(p) for p in _labels(words, f"{name}(): words")], all_of=all_of)

    def phrases_in(self, text: str, phrases: Sequence[list[str]], *, all_of: bool) -> bool:
        """any_words()/all_words() with the text checked and the phrases split into words."""
        spaced = self._spaced.get(text)
        if spaced is None:
            spaced = self._spaced[text] = _spaced(text)
        found = [p for p in phrases if p and self._has_phrase(text, spaced, p)]
        ok = len(found) == len(phrases) if all_of else bool(found)
        if ok and found:
            if self._quoted is None:
                self._quoted = {}
            key = (text, *found[0])
            evidence = self._quoted.get(key)
            if evidence is None:
                evidence = self._quoted[key] = self._word_evidence(text, found[0])
            self.evidence.append(evidence)
        return ok

    def _has_phrase(self, text: str, spaced: str, phrase: list[str]) -> bool:
        if len(phrase) == 1:
            return f" {phrase[0]} " in spaced
        if phrase[0] not in spaced:
            return False
        norm = self._norm.get(text)
        if norm is None:
            norm = self._norm[text] = _normalised(text)
        return f" {' '.join(phrase)} " in norm

    def _word_evidence(self, text: str, phrase: list[str]) -> dict[str, Any]:
        evidence: dict[str, Any] = {"kind": "words", "label": " ".join(phrase)}
        if text == self.caption:
            # Quote the window that holds the words: its caption and time.
            for window in self.windows:
                if not isinstance(window, Mapping):
                    continue
                caption = window.get("caption")
                # The phrase's first word as a substring is necessary (words_of() lowers and
                # splits): only such captions are worth splitting into words.
                if (
                    isinstance(caption, str)
                    and phrase[0] in caption.lower()
                    and f" {' '.join(phrase)} " in _normalised(caption)
                ):
                    return {**evidence, **_quote(window, window=window, span=_span_around(caption, phrase))}
        return {**evidence, "span": _span_around(text, phrase)}


_QUOTED = ("label", "role", "span", "start", "end")


def item_evidence(item: Mapping[str, Any], kind: str, field: str, value: float) -> dict[str, Any]:
    """What emotion() or sound() records when ``item`` matches (``field``: its value's name)."""
    return {"kind": kind, **_quote(item), field: value}


def _quote(item: Mapping[str, Any], window: Mapping[str, Any] | None = None, span: str | None = None) -> dict[str, Any]:
    """What evidence repeats of a facet item (or of a ``window``, with its ``span``)."""
    out: dict[str, Any] = {}
    for key in _QUOTED:
        if key == "span" and span is not None:
            value = span
        elif key in item:
            value = item[key]
            if value is None:
                continue
        else:
            continue
        out[key] = value
    index = (item["window"] if "window" in item else None) if window is None else window.get("index")
    if index is not None:
        out["window"] = index
    if window is not None and isinstance(window.get("caption"), str):
        out["caption"] = window["caption"]
    if "start" in out:
        out["at"] = clock(out["start"])
    return out
