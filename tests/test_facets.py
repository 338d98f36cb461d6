"""The lexicon facet extractor on captions written like Qwen3-Omni-Captioner's (tests/facet_cases/)."""

from __future__ import annotations

import time
import typing
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from services.captioner.facets import extract_facets, facets_from_text
from services.captioner.facets import lexicon as lex
from services.captioner.facets.cues import EMOTIONS, SOUNDS, PhraseTable
from services.events.facets import EMOTION_LABELS, SOUND_LABELS, EmotionLabel, SoundLabel
from services.events.models import Facets, Window

CASES_DIR = Path(__file__).parent / "facet_cases"


def load_cases() -> list[dict[str, Any]]:
    yaml = YAML(typ="safe")
    cases = []
    for path in sorted(CASES_DIR.glob("*.yaml")):
        for case in yaml.load(path.read_text()):
            case["file"] = path.name
            cases.append(case)
    return cases


CASES = load_cases()


def key(role: str | None, label: str) -> str:
    return f"{role if role is not None else '~'}/{label}"


def test_there_are_enough_cases_covering_every_facet() -> None:
    assert len(CASES) >= 40
    assert len({c["id"] for c in CASES}) == len(CASES), "case ids must be unique"
    emotions = {label for c in CASES for _, label in c.get("emotions", [])}
    sounds = {label for c in CASES for label in c.get("sounds", [])}
    missing_emotions = set(EMOTION_LABELS) - emotions
    missing_sounds = set(SOUND_LABELS) - sounds
    assert not missing_emotions, f"no case expects {sorted(missing_emotions)}"
    assert not missing_sounds, f"no case expects {sorted(missing_sounds)}"
    assert {c["speech"] for c in CASES} == {True, False} and {c["music"] for c in CASES} == {True, False}
    assert any(c.get("hedged") for c in CASES) and sum("no " in c["caption"].lower() for c in CASES) >= 10
    assert any(c.get("role") for c in CASES) and any(c.get("languages") for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_case(case: dict[str, Any]) -> None:
    window = Window(index=3, start=60.0, end=90.0, channel=None, role=case.get("role"), caption=case["caption"])
    facets = extract_facets([window])

    got_emotions = {key(e.role, e.label): e for e in facets.emotions}
    expected_emotions = {key(role, label) for role, label in case.get("emotions", [])}
    got_sounds = {s.label: s for s in facets.sound_events}
    report = (
        f"[{case['file']}] emotions {sorted(got_emotions)} sounds {sorted(got_sounds)} "
        f"languages {facets.languages} speech {facets.speech_present} music {facets.music_present}"
    )
    assert set(got_emotions) == expected_emotions, report
    assert set(got_sounds) == set(case.get("sounds", [])), report
    assert facets.languages == case.get("languages", []), report
    assert facets.speech_present is case["speech"], report
    assert facets.music_present is case["music"], report

    hedged = set(case.get("hedged", []))
    for name, facet in [*got_emotions.items(), *got_sounds.items()]:
        assert facet.hedged == (name in hedged), f"{name} hedged={facet.hedged}: {facet.span!r}"
    for name, (low, high) in case.get("intensity", {}).items():
        assert low <= got_emotions[name].intensity <= high, f"{name} intensity {got_emotions[name].intensity}"

    # Every facet points at its window and at caption text that holds its cue.
    for facet in [*facets.emotions, *facets.sound_events]:
        assert (facet.window, facet.start, facet.end) == (3, 60.0, 90.0)
        assert facet.span_start is not None and facet.span_end is not None
        assert case["caption"][facet.span_start : facet.span_end] == facet.span
        assert facet.cue and facet.cue.lower() in facet.span.lower()
        assert 0 <= facet.confidence <= 1


# --------------------------------------------------------------------------- behaviour


def windows(*captions: str, roles: tuple[str | None, ...] = ()) -> list[Window]:
    roles = roles or (None,) * len(captions)
    return [
        Window(index=i, start=i * 30.0, end=i * 30.0 + 30.0, channel=None, role=r, caption=c)
        for i, (c, r) in enumerate(zip(captions, roles, strict=True))
    ]


def test_facets_from_several_windows_point_at_their_own_window() -> None:
    facets = extract_facets(
        windows(
            "The customer sounds calm while explaining the problem in English.",
            "",
            "The customer is now furious and a siren passes outside. The agent replies in French.",
        )
    )
    assert [(e.window, e.label) for e in facets.emotions] == [(0, "calm"), (2, "anger")]
    assert [(s.window, s.start, s.end, s.label) for s in facets.sound_events] == [(2, 60.0, 90.0, "siren")]
    assert facets.languages == ["en", "fr"]
    assert facets.extractor == "lexicon"


def test_one_facet_per_role_and_label_per_window_the_strongest() -> None:
    facets = facets_from_text("The caller is annoyed, then extremely frustrated, and possibly irritated.")
    assert len(facets.emotions) == 1
    assert facets.emotions[0].cue == "frustrated" and facets.emotions[0].intensity == pytest.approx(0.85)


def test_no_windows_or_empty_captions_give_empty_facets() -> None:
    for ws in ([], windows("", "   ")):
        facets = extract_facets(ws)
        assert facets == Facets(speech_present=False, music_present=False, extractor="lexicon")


def test_extraction_is_deterministic_and_fast() -> None:
    captions = [c["caption"] for c in CASES]
    ws = windows(*captions)
    started = time.perf_counter()
    first = extract_facets(ws)
    elapsed = time.perf_counter() - started
    assert extract_facets(ws) == first
    assert elapsed < 0.5 * len(captions) / 10, f"{elapsed:.3f} s for {len(captions)} captions"


def test_facets_serialise_to_the_shape_rules_use() -> None:
    data = facets_from_text("The customer is angry. A dog barks.", role=None).model_dump(mode="json")
    emotion = data["emotions"][0]
    assert {"role", "label", "intensity", "window", "start", "end", "span"} <= emotion.keys()
    assert {"label", "confidence", "window", "start", "end", "span"} <= data["sound_events"][0].keys()
    assert {"languages", "speech_present", "music_present"} <= data.keys()


# --------------------------------------------------------------------------- lexicon integrity


def test_lexicon_labels_are_the_taxonomy() -> None:
    assert set(lex.EMOTION_CUES) == set(typing.get_args(EmotionLabel))
    assert set(lex.SOUND_CUES) == set(typing.get_args(SoundLabel))


@pytest.mark.parametrize("table", [EMOTIONS, SOUNDS], ids=["emotions", "sounds"])
def test_skips_shield_the_cues_inside_them(table: PhraseTable) -> None:
    assert table.find("The agent asks him to calm down. A false alarm. The crowd of callers.") == []


def test_every_lexicon_fragment_compiles_and_matches_whole_words() -> None:
    table = PhraseTable.nested(lex.EMOTION_CUES)
    assert [c.label for c in table.find("angry angrily")] == ["anger", "anger"]
    assert table.find("dangerously calmness-free") == []  # no match inside words
