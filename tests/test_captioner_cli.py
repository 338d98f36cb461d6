"""``listenpost facets``: caption text on stdin, facets out."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from services.cli import app

runner = CliRunner()

CAPTION = (
    "The customer, a woman, sounds increasingly angry and raises her voice, while the agent stays calm. "
    "A siren passes outside. There is no music."
)


def test_facets_json_from_a_plain_caption() -> None:
    result = runner.invoke(app, ["facets", "--json"], input=CAPTION)
    assert result.exit_code == 0, result.output
    facets = json.loads(result.output)
    assert {(e["role"], e["label"]) for e in facets["emotions"]} == {("customer", "anger"), ("agent", "calm")}
    assert [s["label"] for s in facets["sound_events"]] == ["siren"]
    assert facets["speech_present"] is True and facets["music_present"] is False
    assert facets["extractor"] == "lexicon"


def test_facets_from_a_merged_timeline_keep_window_times_and_roles() -> None:
    timeline = "[00:00-00:30 customer] She sounds upset.\n[00:30-01:00 agent] He answers calmly in Spanish.\n"
    result = runner.invoke(app, ["facets", "--json"], input=timeline)
    facets = json.loads(result.output)
    assert [(e["window"], e["start"], e["role"], e["label"]) for e in facets["emotions"]] == [
        (0, 0.0, "customer", "distress"),
        (1, 30.0, "agent", "calm"),
    ]
    assert facets["languages"] == ["es"]


def test_facets_tables_and_role_option() -> None:
    result = runner.invoke(app, ["facets", "--role", "customer"], input="The speaker is terrified. A dog barks.")
    assert result.exit_code == 0, result.output
    assert "customer" in result.output and "fear" in result.output and "dog_bark" in result.output
    assert "speech present" in result.output
