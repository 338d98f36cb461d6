"""Redaction of identifiers in captions: the planted-identifier corpus, spoken digits, offsets, policy from settings."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from services.captioner.redaction import DEFAULT_PLACEHOLDERS, LABELS, RedactionPolicy, redact
from services.captioner.spoken_digits import normalise
from services.settings import CaptionerSettings, Settings, SettingsError

CASES_DIR = Path(__file__).parent / "redaction_cases"


def _cases() -> list[Any]:
    cases = []
    for path in sorted(CASES_DIR.glob("*.yaml")):
        for case in YAML(typ="safe").load(path.read_text()):
            cases.append(pytest.param(case, id=f"{path.stem}: {case['name']}"))
    return cases


def _policy(overrides: dict[str, Any]) -> RedactionPolicy:
    fields: dict[str, Any] = {}
    for key, value in overrides.items():
        if key in ("labels", "national_ids"):
            value = frozenset(value)
        elif key == "phone_regions":
            value = tuple(value)
        elif key == "placeholders":
            value = DEFAULT_PLACEHOLDERS | value
        fields[key] = value
    return RedactionPolicy(**fields)


@pytest.mark.parametrize("case", _cases())
def test_corpus_of_planted_identifiers(case: dict[str, Any]) -> None:
    result = redact(case["text"], _policy(case.get("policy", {})))
    assert result.text == case["expect"]
    assert result.counts == case.get("counts", {})


def test_the_corpus_plants_every_label_and_refuses_look_alikes() -> None:
    cases = [c.values[0] for c in _cases()]
    planted = {label for c in cases for label in c.get("counts", {})}
    assert planted == set(LABELS)
    # Invalid look-alikes (Luhn, IBAN check, id checksums) are in the corpus and stay.
    unchanged = [c for c in cases if c["text"] == c["expect"]]
    assert len(unchanged) >= 10


def test_replacements_map_caption_offsets_to_the_redacted_text() -> None:
    text = "Card 4111 1111 1111 1111 for the furious customer, mail jane.doe@example.com now."
    result = redact(text)
    assert result.text == "Card [CARD] for the furious customer, mail [EMAIL] now."
    furious = text.index("furious")
    a, b = result.map_span(furious, furious + len("furious"))
    assert result.text[a:b] == "furious"
    # A span cutting an identifier widens to its whole placeholder.
    a, b = result.map_span(0, text.index("1111") + 4)
    assert result.text[a:b] == "Card [CARD]"
    a, b = result.map_span(0, len(text))
    assert (a, b) == (0, len(result.text))
    assert [(r.label, text[r.start : r.end]) for r in result.replacements] == [
        ("card", "4111 1111 1111 1111"),
        ("email", "jane.doe@example.com"),
    ]


def test_spoken_digits_become_numerals_and_map_back_to_their_words() -> None:
    text = "Call oh two oh, seven nine four six, oh nine five eight please, or double four."
    spoken = normalise(text)
    assert spoken.text == "Call 020 7946 0958 please, or double four."  # "double four" is too short to rewrite
    start = spoken.text.index("020")
    assert spoken.to_original(start, start + len("020 7946 0958")) == (5, text.index(" please"))
    after = spoken.text.index("please")
    assert spoken.to_original(after, after + 6) == (text.index("please"), text.index("please") + 6)


def test_policy_comes_from_the_captioner_settings() -> None:
    default = RedactionPolicy.from_settings(CaptionerSettings())
    assert default.labels == frozenset(LABELS)
    assert default.phone_regions == ("US",)
    assert default.placeholder("card") == "[CARD]"
    cap = CaptionerSettings(
        redact=["phone"], redact_placeholders={"phone": "<phone>"}, redact_phone_regions=["GB", "IE"], redact_spoken_digits=False
    )
    policy = RedactionPolicy.from_settings(cap)
    assert (policy.labels, policy.phone_regions, policy.spoken_digits) == (frozenset({"phone"}), ("GB", "IE"), False)
    assert redact("Ring 020 7946 0958 or mail a@b.com.", policy).text == "Ring <phone> or mail a@b.com."
    assert not RedactionPolicy.from_settings(CaptionerSettings(redact=[])).enabled


def test_redaction_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTENPOST_CAPTIONER__REDACT", '["card", "iban"]')
    monkeypatch.setenv("LISTENPOST_CAPTIONER__REDACT_PHONE_REGIONS", '["DE"]')
    cap = Settings(_env_file=None).captioner
    assert (cap.redact, cap.redact_phone_regions) == (["card", "iban"], ["DE"])


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REDACT": '["card", "passport"]'}, "captioner.redact.1"),
        (
            {"REDACT_PHONE_REGIONS": '["UK"]'},
            "captioner.redact_phone_regions (LISTENPOST_CAPTIONER__REDACT_PHONE_REGIONS): "
            "Value error, unknown region(s) ['UK']: ISO 3166 alpha-2 codes, upper case, e.g. 'GB'",
        ),
        (
            {"REDACT_PLACEHOLDERS": '{"card": " "}'},
            "captioner.redact_placeholders (LISTENPOST_CAPTIONER__REDACT_PLACEHOLDERS): "
            "Value error, the placeholder of 'card' must be 1 to 64 characters, not ' '",
        ),
        ({"REDACT_NATIONAL_IDS": '["uk_passport"]'}, "captioner.redact_national_ids.0"),
    ],
)
def test_bad_redaction_settings_are_clear_errors(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str) -> None:
    for key, value in env.items():
        monkeypatch.setenv(f"LISTENPOST_CAPTIONER__{key}", value)
    with pytest.raises(SettingsError) as err:
        Settings(_env_file=None)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("text", "expect_end"),
    [
        (" ".join(["1234"] * 5000) + " 4111 1111 1111 1111", "[CARD]"),
        ("a." * 25_000 + " x@example.com", "[EMAIL]"),
        ("four one " * 5000 + "and jane@example.com", "[EMAIL]"),
        ("john dot " * 5000 + "at example dot org, mail john@example.org", "[EMAIL]"),
    ],
    ids=["digit groups", "local-part characters", "spoken digits", "spoken e-mail"],
)
def test_hostile_captions_are_redacted_in_bounded_time(text: str, expect_end: str) -> None:
    started = time.perf_counter()
    result = redact(text)
    assert time.perf_counter() - started < 5.0
    assert result.text.endswith(expect_end)
