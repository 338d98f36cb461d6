"""Who feels it: the speaker role an emotion cue belongs to.

A window cut from a split channel already has its role (agent or customer): every emotion in
it is that speaker's, unless the caption pins it on someone who is not a party to the call
(a baby crying, a crowd, a dog, voices "in the background"). In a mixed window the role comes
from the caption's own words, with the few rules a reader would use:

- a role word names the role ("the customer", "the caller", "the representative");
- a gender word next to a role binds the two ("the caller, a middle-aged woman", "a male
  agent"), so a later "she" or "the woman" finds the caller;
- "a man" / "a woman" otherwise introduce someone unknown (role None);
- "the speaker" or "the man" without a binding is the only role mentioned so far, if exactly
  one was, else unknown;
- a pronoun is its gender's bound role, else whoever was last mentioned in its sentence,
  else the subject of the sentence before.

An emotion word belongs to the person it modifies ("an angry caller", "In a frustrated
tone, the customer..."), else to the nearest person named before it in its sentence, else to
the subject carried over from the sentence before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from services.captioner.facets import lexicon as lex
from services.captioner.facets.cues import EMOTIONS, SOUNDS, CaptionAnalysis, CueMatch, PhraseTable

Kind = Literal["role", "generic", "pronoun", "human", "animal"]

_ROLES = PhraseTable(((f, role, 1.0) for f, role in lex.ROLE_CUES.items()), lex.ROLE_SKIPS)
_GENERIC = PhraseTable(((f, g or "", 1.0) for f, g in lex.GENERIC_SPEAKERS.items()))
_PRONOUNS = PhraseTable(((f, g or "", 1.0) for f, g in lex.PRONOUNS.items()))
_NON_PARTIES = PhraseTable(((f, kind, 1.0) for f, kind in lex.NON_PARTIES.items()))
_SCENES = PhraseTable.flat(lex.SCENE_SUBJECTS)
_DEFINITE = frozenset({"the", "this", "that", "said"})
_NOUN_PHRASE_LEAD = frozenset({"a", "an", "the", "this", "that", "his", "her", "their", "its"}) | lex.AGE_WORDS
_CLAUSE_OPENERS = frozenset({",", ";", ":", "(", "and", "but", "while", "whereas", "then", "as", "when", "meanwhile"})
# Where the phrase an emotion word starts has ended ("calm while music plays").
_PHRASE_ENDS = lex.CONTRASTS | {"as", "with", "over", "in", "on", "at", "to", "for", "despite", "throughout", "the", "is"}


@dataclass(slots=True)
class Mention:
    kind: Kind
    first: int  # token indexes [first, last)
    last: int
    sentence: int
    gender: str | None = None  # "m" | "f"
    role: str | None = None  # resolved role
    definite: bool = False

    @property
    def is_party(self) -> bool:
        return self.kind in ("role", "generic", "pronoun")


@dataclass(slots=True)
class Verdict:
    """Whose emotion a cue is: ``skip`` drops it (an animal's, or a sound's)."""

    role: str | None
    skip: bool = False


@dataclass
class RoleResolver:
    analysis: CaptionAnalysis
    window_role: str | None = None
    mentions: list[Mention] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.mentions = self._find_mentions()
        self._bind_appositions()
        self._resolve()
        a = self.analysis
        self._emotion_tokens = {i for c in a.find(EMOTIONS) for i in range(a.token_index(c.start), a.token_index(c.end))}
        self._sounds = [(a.token_index(c.start), a.token_index(c.end)) for c in a.find(SOUNDS)]
        self._mention_tokens = {i for m in self.mentions for i in range(m.first, m.last)}
        self._scene_predicates = self._find_scene_predicates()

    # ---------------------------------------------------------------- mentions

    def _find_mentions(self) -> list[Mention]:
        a = self.analysis
        found: list[tuple[CueMatch, Kind, str | None]] = []
        # Tables in priority order (each longest-first): a role phrase beats the generic words in it
        # ("a female caller" is "female" + the role; "customer service agent" is an agent).
        taken: list[tuple[int, int]] = []
        tables: list[tuple[PhraseTable, Kind | None]] = [
            (_ROLES, "role"),
            (_NON_PARTIES, None),
            (_GENERIC, "generic"),
            (_PRONOUNS, "pronoun"),
        ]
        for table, kind in tables:
            for cue in table.find(a.masked, keep_skips=True):
                if any(cue.start < e and s < cue.end for s, e in taken):
                    continue
                taken.append((cue.start, cue.end))
                if cue.label is None:
                    continue  # a skip phrase ("customer service call")
                if kind is None:
                    found.append((cue, "animal" if cue.label == "animal" else "human", None))
                elif kind == "role":
                    found.append((cue, "role", cue.label))
                else:
                    found.append((cue, kind, cue.label or None))
        mentions = []
        for cue, kind, value in sorted(found, key=lambda f: f[0].start):
            first, last = a.token_index(cue.start), a.token_index(cue.end)
            if first >= len(a.tokens):
                continue
            mention = Mention(kind=kind, first=first, last=max(last, first + 1), sentence=a.sentence_of[first])
            if kind == "role":
                mention.role = value
            elif kind in ("generic", "pronoun"):
                mention.gender = value
                mention.definite = first > 0 and a.tokens[first - 1].text in _DEFINITE
            mentions.append(mention)
        return mentions

    def _bind_appositions(self) -> None:
        """Role next to a gender word with only fillers between: the same person."""
        self._gender_role: dict[str, str] = {}
        tokens = self.analysis.tokens
        for i, left in enumerate(self.mentions):
            for right in self.mentions[i + 1 : i + 3]:
                if right.sentence != left.sentence or right.first - left.last > 5:
                    break
                gap = [t.text for t in tokens[left.last : right.first]]
                if not all(g in lex.APPOSITION_FILLERS for g in gap):
                    continue
                pair = {left.kind, right.kind}
                if "role" in pair and pair & {"generic"}:
                    role_m, other = (left, right) if left.kind == "role" else (right, left)
                    other.role = role_m.role
                    if other.gender and role_m.role:
                        self._gender_role.setdefault(other.gender, role_m.role)
                        role_m.gender = other.gender

    def _resolve(self) -> None:
        known: list[str] = []
        last_by_sentence: dict[int, Mention] = {}
        subject_by_sentence: dict[int, Mention] = {}
        for m in self.mentions:
            if m.kind == "generic" and m.role is None:
                if m.definite:
                    m.role = self._gender_role.get(m.gender or "") or (known[0] if len(set(known)) == 1 else None)
            elif m.kind == "pronoun":
                m.role = self._gender_role.get(m.gender or "")
                if m.role is None:
                    before = last_by_sentence.get(m.sentence)
                    if before is None:
                        previous = [s for s in subject_by_sentence if s < m.sentence]
                        before = subject_by_sentence[max(previous)] if previous else None
                    m.role = before.role if before is not None and before.is_party else None
            if m.role:
                known.append(m.role)
            last_by_sentence[m.sentence] = m
            subject_by_sentence.setdefault(m.sentence, m)

    def _find_scene_predicates(self) -> list[tuple[int, int]]:
        """Token ranges predicated of the conversation itself: "The call between X and Y is [tense]"."""
        a = self.analysis
        zones = []
        scenes = a.find(_SCENES)
        scene_tokens = {i for c in scenes for i in range(a.token_index(c.start), a.token_index(c.end))}
        for cue in scenes:
            first, j = a.token_index(cue.start), a.token_index(cue.end)
            sentence_start = a.token_index(a.sentences[a.sentence_of[first]][0]) if first < len(a.tokens) else first
            if first - sentence_start > 2:
                continue  # only a sentence's subject
            while j < len(a.tokens) and (
                a.tokens[j].text in lex.SCENE_PHRASE or j in self._mention_tokens or j in scene_tokens
            ):
                j += 1
            if j < len(a.tokens) and a.tokens[j].text in lex.COPULAS:
                end = j + 1
                while end < len(a.tokens) and not a._breaks_clause(end) and a.tokens[end].text != ",":
                    end += 1
                zones.append((j + 1, end))
        return zones

    # ---------------------------------------------------------------- verdicts

    def _governing(self, cue: CueMatch) -> Mention | None:
        a = self.analysis
        first, last = a.token_index(cue.start), a.token_index(cue.end)
        sentence = a.sentence_of[first]
        before = [m for m in self.mentions if m.last <= first and m.sentence == sentence]
        # "..., sounding satisfied": the sentence's subject.
        lead = [t.text for t in a.tokens[max(0, first - 2) : first]]
        if len(lead) == 2 and lead[0] == "," and lead[1] in lex.SUBJECT_PARTICIPLES and before:
            return next((m for m in before if m.is_party), before[0])
        # "greets the caller in a friendly voice": the subject's voice, unless a possessive says whose.
        manner = self._manner_phrase(first, last)
        if manner is not None and before:
            inside = [m for m in before if m.first >= manner[0] and m.is_party]
            if inside:
                return inside[-1]
            subjects = [m for m in before if m.is_party and self._is_subject(m)]
            return subjects[-1] if subjects else next((m for m in before if m.is_party), before[0])
        # "an angry caller", "In a frustrated tone, the customer ...": the person it modifies.
        after = next((m for m in self.mentions if m.first >= last), None)
        if after is not None and after.sentence == sentence and after.first - last <= 4:
            if self._premodifies(range(last, after.first), sentence_opening=not before):
                return after
        if before:
            return before[-1]
        earlier = [m for m in self.mentions if m.sentence < sentence]
        if earlier:
            previous_sentence = earlier[-1].sentence
            return next(m for m in self.mentions if m.sentence == previous_sentence)
        return None

    def _is_subject(self, m: Mention) -> bool:
        """A mention that opens its clause ("The agent ...", "..., and the caller ..."), not an object."""
        a = self.analysis
        k = m.first - 1
        while k >= 0 and a.tokens[k].text in _NOUN_PHRASE_LEAD:
            k -= 1
        return k < 0 or a.sentence_of[k] != m.sentence or a.tokens[k].text in _CLAUSE_OPENERS

    def _manner_phrase(self, first: int, last: int) -> tuple[int, int] | None:
        """(start, end) tokens of "in/with a ... <manner noun>" around a cue, if it is in one."""
        a = self.analysis
        start = next((k for k in range(first - 1, max(-1, first - 5), -1) if a.tokens[k].text in ("in", "with")), None)
        end = next(
            (k for k in range(last, min(len(a.tokens), last + 3)) if a.tokens[k].text in lex.MANNER_NOUNS), None
        )
        if start is None or end is None or not a.same_clause(start, end):
            # A comma inside the phrase is fine ("in a bright, friendly voice").
            if start is None or end is None or any(a._breaks_clause(k) for k in range(start, end)):
                return None
        return (start, end)

    def _premodifies(self, gap: range, *, sentence_opening: bool) -> bool:
        tokens = self.analysis.tokens
        for k in gap:
            text = tokens[k].text
            if text not in lex.PREMODIFIER_FILLERS and k not in self._emotion_tokens:
                return False
            if text in (",", "and") and not sentence_opening:
                # "The customer is angry, the agent calm" is two people; "angry and upset caller" one.
                nxt = k + 1
                if nxt >= len(tokens) or (nxt not in self._emotion_tokens and tokens[nxt].text not in lex.AGE_WORDS):
                    return False
        return True

    def _describes_a_sound(self, cue: CueMatch, governing: Mention | None) -> bool:
        """"The music is sad": a sound named just before the cue, in its clause, after any person."""
        a = self.analysis
        first = a.token_index(cue.start)
        floor = governing.last if governing is not None and governing.sentence == a.sentence_of[first] else 0
        tokens = a.tokens
        # The sound is the subject ("the music is sad"), not a verb ("she laughs and sounds delighted").
        return any(
            floor <= s < first
            and first - s <= 4
            and a.same_clause(s, first)
            and e < len(tokens)
            and tokens[e].text in lex.COPULAS
            for s, e in self._sounds
        )

    def _modifies_a_thing(self, last: int) -> bool:
        """"calm music", "a gentle, calm atmosphere", "an upbeat electronic dance track"."""
        tokens = self.analysis.tokens
        for k in range(last, min(last + 4, len(tokens))):
            text = tokens[k].text
            if text in lex.NON_SPEAKER_HEADS:
                return True
            if k in self._mention_tokens or not (tokens[k].is_word or text == ",") or text in _PHRASE_ENDS:
                return False
            if text in ("and", "or") and k + 1 not in self._emotion_tokens:
                return False  # "calm and music plays": a new phrase
        return False

    def verdict(self, cue: CueMatch) -> Verdict:
        a = self.analysis
        first = a.token_index(cue.start)
        last = a.token_index(cue.end)
        if self._modifies_a_thing(last):
            return Verdict(None, skip=True)
        if any(s <= first < e for s, e in self._scene_predicates):
            return Verdict(self.window_role)  # the conversation's mood: no one in particular
        governing = self._governing(cue)
        if self._describes_a_sound(cue, governing):
            return Verdict(None, skip=True)
        if governing is not None and governing.kind == "animal":
            return Verdict(None, skip=True)
        if governing is not None and governing.kind == "human":
            return Verdict(None)
        if a.in_background(cue):
            return Verdict(None)
        if self.window_role:
            return Verdict(self.window_role)
        return Verdict(governing.role if governing is not None else None)


__all__ = ["Mention", "RoleResolver", "Verdict"]
