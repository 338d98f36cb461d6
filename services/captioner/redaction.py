"""Redaction of identifiers in caption text: ``redact(text, policy) -> Redacted``.

Pure and deterministic. Each enabled detector proposes spans; overlapping proposals are
settled longest first (then by :data:`PRIORITY`), and each kept span is replaced by its
label's placeholder (``[EMAIL]``, ``[PHONE]``, ``[CARD]``, ``[IBAN]``, ``[NATIONAL_ID]``).

Detectors (docs/redaction.md lists formats, limits and measured false positives):

- **email**: the HTML5 spec's "valid e-mail address" grammar, found anywhere in the text; and
  the spoken form "john dot smith at example dot com" when "mail" or "address" comes shortly
  before it (without that cue "looking at google dot com" would be an address);
- **phone**: Google's libphonenumber (``phonenumbers.PhoneNumberMatcher``, leniency VALID):
  international numbers (+country code) for every country, national formats for the
  configured regions;
- **card**: 13-19 digits, in groups split by single spaces or dashes, passing the Luhn check
  (``stdnum.luhn``): "4111 1111 1111 1112" is not a card and stays;
- **iban**: two letters, two check digits and the account, grouped or not, validated by
  ``stdnum.iban`` (country length and mod-97 check);
- **national_id**: the kinds in :data:`NATIONAL_IDS`, each validated by python-stdnum where it
  has a checksum (UK NINO has none: its format and allocation rules only).

Numbers said as words are first rewritten as numerals (:mod:`.spoken_digits`) when the policy
asks, so "four one one one ..." is checked like "4111 ...", and its words are what is replaced.
Digit groups are tried on their boundaries only: within "4111 1111 1111 1111 12 25" the
16-digit card is found although the run has 20 digits (a card may be the first or the last
groups of a run; a national id must be the whole run).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import get_args

import phonenumbers
from stdnum import iban, luhn
from stdnum.de import idnr
from stdnum.es import dni, nie
from stdnum.fr import nir
from stdnum.gb import nhs
from stdnum.it import codicefiscale
from stdnum.nl import bsn
from stdnum.us import ssn

from services.captioner.spoken_digits import normalise
from services.settings import CaptionerSettings, NationalIdKind, RedactLabel

LABELS: tuple[RedactLabel, ...] = get_args(RedactLabel)
NATIONAL_IDS: tuple[NationalIdKind, ...] = get_args(NationalIdKind)
DEFAULT_PLACEHOLDERS: dict[RedactLabel, str] = {
    "email": "[EMAIL]",
    "phone": "[PHONE]",
    "card": "[CARD]",
    "iban": "[IBAN]",
    "national_id": "[NATIONAL_ID]",
}
#: Which label wins two proposals of the same span. A phone number valid in a configured region
#: beats a national id: the mod-11 checks of 10- and 11-digit ids (NHS, IdNr) pass for one number
#: in eleven, so "415-555-2671" would otherwise be an NHS number.
PRIORITY: dict[RedactLabel, int] = {"email": 0, "iban": 1, "card": 2, "phone": 3, "national_id": 4}


@dataclass(frozen=True)
class RedactionPolicy:
    """What to redact and with what; the empty policy (no labels) changes nothing."""

    labels: frozenset[RedactLabel] = frozenset(LABELS)
    placeholders: Mapping[RedactLabel, str] = field(default_factory=lambda: dict(DEFAULT_PLACEHOLDERS))
    phone_regions: tuple[str, ...] = ("US",)
    national_ids: frozenset[NationalIdKind] = frozenset(NATIONAL_IDS)
    spoken_digits: bool = True

    @classmethod
    def from_settings(cls, cap: CaptionerSettings) -> RedactionPolicy:
        return cls(
            labels=frozenset(cap.redact),
            placeholders=DEFAULT_PLACEHOLDERS | cap.redact_placeholders,
            phone_regions=tuple(cap.redact_phone_regions),
            national_ids=frozenset(cap.redact_national_ids),
            spoken_digits=cap.redact_spoken_digits,
        )

    @property
    def enabled(self) -> bool:
        return bool(self.labels)

    def placeholder(self, label: RedactLabel) -> str:
        return self.placeholders.get(label, DEFAULT_PLACEHOLDERS[label])


DEFAULT_POLICY = RedactionPolicy()
OFF = RedactionPolicy(labels=frozenset())


@dataclass(frozen=True, slots=True)
class Replacement:
    """``text[start:end]`` of the input became ``text[out_start:out_end]`` (the placeholder)."""

    label: RedactLabel
    start: int
    end: int
    out_start: int
    out_end: int


@dataclass(frozen=True, slots=True)
class Redacted:
    text: str
    counts: dict[RedactLabel, int]
    replacements: tuple[Replacement, ...] = ()

    def map_span(self, start: int, end: int) -> tuple[int, int]:
        """Where the input's ``[start, end)`` lies in the redacted text (a cut identifier: its whole placeholder)."""
        return self._map(start, is_end=False), self._map(end, is_end=True)

    def _map(self, pos: int, *, is_end: bool) -> int:
        shift = 0
        for r in self.replacements:
            if pos < r.start or (is_end and pos == r.start):
                break
            if pos < r.end or (is_end and pos == r.end):
                return r.out_end if is_end else r.out_start
            shift = r.out_end - r.end
        return pos + shift


@dataclass(frozen=True, slots=True)
class _Found:
    label: RedactLabel
    start: int
    end: int


# --- e-mail --------------------------------------------------------------------------

# The HTML5 spec's valid e-mail address (https://html.spec.whatwg.org/#valid-e-mail-address),
# unanchored. A match starts only where a run of local-part characters starts (the lookbehind),
# so a long run without "@" is scanned once, not once per character; leading punctuation (a
# quote before the address) is trimmed afterwards.
_LOCAL = r"A-Za-z0-9.!#$%&'*+/=?^_`{|}~-"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_EMAIL = re.compile(rf"(?<![{_LOCAL}])[{_LOCAL}]+@{_LABEL}(?:\.{_LABEL})*")
_LOCAL_START = re.compile(r"[A-Za-z0-9]")
_TLDS = "com|org|net|edu|gov|mil|int|info|biz|io|co|me|us|uk|ie|de|fr|nl|be|es|it|pt|ch|at|se|no|dk|fi|pl|eu|ca|au|nz|in|jp|cn|br|mx"
# At most 6 joins each side: an attempt from any word reads a few words, never the whole
# caption (so "john dot john dot ..." costs linear time).
_SPOKEN_EMAIL = re.compile(
    r"\b[A-Za-z0-9]+(?:(?:\s+(?:dot|underscore|dash|hyphen)\s+|[._-])[A-Za-z0-9]+){0,6}"
    r"\s+at\s+"
    rf"[A-Za-z0-9-]+(?:\s+dot\s+[A-Za-z0-9-]+){{0,6}}\s+dot\s+(?:{_TLDS})\b",
    re.IGNORECASE,
)
_EMAIL_CUE = re.compile(r"mail|address", re.IGNORECASE)
_EMAIL_CUE_CHARS = 80  # how far before a spoken address its cue may be


def _emails(text: str) -> Iterator[_Found]:
    if "@" in text:
        for m in _EMAIL.finditer(text):
            first = _LOCAL_START.search(text, m.start(), m.end())
            if first is not None and first.start() < text.index("@", m.start()):
                yield _Found("email", first.start(), m.end())
    if " at " in text.lower():
        for m in _SPOKEN_EMAIL.finditer(text):
            if _EMAIL_CUE.search(text, max(0, m.start() - _EMAIL_CUE_CHARS), m.start()):
                yield _Found("email", m.start(), m.end())


# --- phone numbers -------------------------------------------------------------------


def _phones(text: str, regions: tuple[str, ...]) -> Iterator[_Found]:
    # Region "ZZ" (unknown) still finds +country numbers; each listed region adds its national formats.
    for region in regions or ("ZZ",):
        for m in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
            yield _Found("phone", m.start, m.end)


# --- digit groups: cards and numeric national ids --------------------------------------

# A run of digit groups, each split from the next by one space or dash.
_DIGIT_RUN = re.compile(r"(?<![\w])\d+(?:[ -]\d+)*(?![\w])")
_GROUP = re.compile(r"\d+")
_MAX_DIGITS = 19  # the longest thing looked for in a run (a card)


@dataclass(frozen=True, slots=True)
class _Digits:
    """Whole groups ``[i, j)`` of a run: their digits, sizes, separators and text span."""

    digits: str
    sizes: tuple[int, ...]
    separators: str
    start: int
    end: int
    whole: bool  # the whole run
    edge: bool  # the run's first or last groups


def _group_spans(text: str) -> Iterator[_Digits]:
    """Every sequence of whole groups of every digit run, up to _MAX_DIGITS digits."""
    for run in _DIGIT_RUN.finditer(text):
        groups = list(_GROUP.finditer(text, run.start(), run.end()))
        for i in range(len(groups)):
            digits = ""
            for j in range(i, len(groups)):
                digits += groups[j].group()
                if len(digits) > _MAX_DIGITS:
                    break
                seps = "".join(text[groups[k].end()] for k in range(i, j))
                sizes = tuple(len(g.group()) for g in groups[i : j + 1])
                whole = i == 0 and j == len(groups) - 1
                edge = i == 0 or j == len(groups) - 1
                yield _Digits(digits, sizes, seps, groups[i].start(), groups[j].end(), whole, edge)


def _card_grouping(sizes: tuple[int, ...]) -> bool:
    """Groups as cards are printed and read out: fours (the last may be shorter), or Amex/Diners 4-6-5 / 4-6-4."""
    return sizes in ((4, 6, 5), (4, 6, 4)) or (all(n == 4 for n in sizes[:-1]) and 1 <= sizes[-1] <= 4)


def _is_card(d: _Digits) -> bool:
    if not (13 <= len(d.digits) <= 19 and luhn.is_valid(d.digits)):
        return False
    # A whole run in any grouping; part of a run only if it starts or ends the run in card
    # groups ("4111 1111 1111 1111 12 25": a card and its expiry). Any 13-19 digits cut from a
    # longer number would pass the Luhn check one time in ten.
    return d.whole or (d.edge and _card_grouping(d.sizes))


def _same_separator(d: _Digits) -> bool:
    return len(set(d.separators)) <= 1


# Numeric national ids: the digit count, an extra check of the grouping, and the validator.
_NUMERIC_IDS: dict[NationalIdKind, tuple[int, Callable[[_Digits], bool], Callable[[str], bool]]] = {
    # Written 123-45-6789 (or with spaces): a bare 9-digit number is too often something else.
    "us_ssn": (9, lambda d: d.sizes == (3, 2, 4) and _same_separator(d), ssn.is_valid),
    "gb_nhs": (10, lambda d: d.sizes in ((10,), (3, 3, 4)) and set(d.separators) <= {" "}, nhs.is_valid),
    "nl_bsn": (9, _same_separator, bsn.is_valid),
    "de_idnr": (11, _same_separator, idnr.is_valid),
    "fr_nir": (15, lambda d: True, nir.is_valid),
}

# National ids with letters: a pattern, then the validator.
_NINO = re.compile(
    # Two prefix letters (D, F, I, Q, U, V never; O never second; BG, GB, KN, NK, NT, TN, ZZ not
    # allocated), six digits, suffix A-D. HMRC publishes no checksum.
    # Upper case only: "at 12 34 56 a" is not one.
    r"\b(?!(?:BG|GB|KN|NK|NT|TN|ZZ))[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"
)
_DNI = re.compile(r"\b(?:\d{8}|[XYZ][ -]?\d{7})[ -]?[A-Z]\b", re.IGNORECASE)
_CODICE_FISCALE = re.compile(r"\b[A-Z]{6}[0-9LMNPQRSTUV]{2}[A-Z][0-9LMNPQRSTUV]{2}[A-Z][0-9LMNPQRSTUV]{3}[A-Z]\b", re.IGNORECASE)


def _compact(text: str) -> str:
    return re.sub(r"[ -]", "", text).upper()


def _valid_dni(text: str) -> bool:
    compact = _compact(text)
    return (nie.is_valid(compact) if compact[0] in "XYZ" else dni.is_valid(compact))


def _lettered_ids(text: str, kinds: frozenset[NationalIdKind]) -> Iterator[_Found]:
    checks: list[tuple[NationalIdKind, re.Pattern[str], Callable[[str], bool]]] = [
        ("gb_nino", _NINO, lambda s: True),
        ("es_dni", _DNI, _valid_dni),
        ("it_codicefiscale", _CODICE_FISCALE, lambda s: codicefiscale.is_valid(_compact(s))),
    ]
    for kind, pattern, valid in checks:
        if kind in kinds:
            for m in pattern.finditer(text):
                if valid(m.group()):
                    yield _Found("national_id", m.start(), m.end())


def _numbers(text: str, labels: frozenset[RedactLabel], kinds: frozenset[NationalIdKind]) -> Iterator[_Found]:
    numeric = {kind: rule for kind, rule in _NUMERIC_IDS.items() if kind in kinds} if "national_id" in labels else {}
    for d in _group_spans(text):
        if "card" in labels and _is_card(d):
            yield _Found("card", d.start, d.end)
        for length, grouping, valid in numeric.values():
            # An id is said as one number: the whole run, never a piece of a longer one.
            if d.whole and len(d.digits) == length and grouping(d) and valid(d.digits):
                yield _Found("national_id", d.start, d.end)
                break


# --- IBAN ------------------------------------------------------------------------------

_IBAN_START = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}")
_ALNUM_GROUP = re.compile(r"[A-Za-z0-9]+")
_IBAN_MAX = 34


def _ibans(text: str) -> Iterator[_Found]:
    for start in _IBAN_START.finditer(text):
        # The groups from here (one space or dash between them), longest candidate first.
        ends: list[int] = []
        chars = 0
        pos = start.start()
        while (group := _ALNUM_GROUP.match(text, pos)) is not None:
            chars += len(group.group())
            if chars > _IBAN_MAX:
                break
            ends.append(group.end())
            if group.end() + 1 < len(text) and text[group.end()] in " -":
                pos = group.end() + 1
            else:
                break
        for end in reversed(ends):
            compact = _compact(text[start.start() : end])
            if len(compact) >= 15 and iban.is_valid(compact):
                yield _Found("iban", start.start(), end)
                break


# --- the whole pass ----------------------------------------------------------------------


def _find(text: str, policy: RedactionPolicy) -> list[_Found]:
    labels = policy.labels
    found: list[_Found] = []
    if "email" in labels:
        found += _emails(text)
    if "iban" in labels:
        found += _ibans(text)
    if labels & {"card", "national_id"}:
        found += _numbers(text, labels, policy.national_ids)
    if "national_id" in labels:
        found += _lettered_ids(text, policy.national_ids)
    if "phone" in labels:
        found += _phones(text, policy.phone_regions)
    return found


def _settle(found: list[_Found]) -> list[_Found]:
    """Non-overlapping spans: longest first, then by PRIORITY; in text order."""
    kept: list[_Found] = []
    for f in sorted(found, key=lambda f: (f.start - f.end, PRIORITY[f.label], f.start)):
        if all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: f.start)


def redact(text: str, policy: RedactionPolicy = DEFAULT_POLICY) -> Redacted:
    """``text`` with every identifier the policy names replaced by its placeholder, and how many of each."""
    if not policy.enabled or not text:
        return Redacted(text, {})
    if policy.spoken_digits:
        spoken = normalise(text)
        found = [_Found(f.label, *spoken.to_original(f.start, f.end)) for f in _find(spoken.text, policy)]
    else:
        found = _find(text, policy)
    pieces: list[str] = []
    replacements: list[Replacement] = []
    cursor = out = 0
    for f in _settle(found):
        placeholder = policy.placeholder(f.label)
        pieces.append(text[cursor : f.start])
        out += f.start - cursor
        replacements.append(Replacement(f.label, f.start, f.end, out, out + len(placeholder)))
        pieces.append(placeholder)
        out += len(placeholder)
        cursor = f.end
    pieces.append(text[cursor:])
    counts = Counter(r.label for r in replacements)
    return Redacted("".join(pieces), {label: counts[label] for label in LABELS if counts[label]}, tuple(replacements))


__all__ = [
    "DEFAULT_PLACEHOLDERS",
    "DEFAULT_POLICY",
    "LABELS",
    "NATIONAL_IDS",
    "OFF",
    "PRIORITY",
    "Redacted",
    "RedactionPolicy",
    "Replacement",
    "redact",
]
