"""The fast path (pre-filter: skip rules whose trigger facts an event lacks; batches: many
conditions in one CEL call) never changes a result.

Random rule sets and random events, some malformed on purpose, evaluated with
and without the pre-filter: the decisions, matches and errors must be equal.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from services.rules import Limits, evaluate, load_ruleset

EMOTIONS = ["anger", "frustration", "fear", "distress", "sadness", "calm", "neutral", "joy"]
SOUNDS = ["glass_breaking", "alarm", "siren", "gunshot", "screaming", "crying", "music", "dog_bark"]
WORDS = ["cancel", "refund", "manager", "lawyer", "account", "close my account", "thanks"]
# Time limits off: on a loaded machine a slow rule would be an error in one run only.
NO_TIME_LIMITS = Limits(max_rule_ms=600_000, max_event_ms=600_000)
EVENT = {"specversion": "1.0", "id": "e", "source": "/s", "type": "com.listenpost.audio.captioned"}


def _labels(rng: random.Random, pool: list[str]) -> str:
    return "[" + ", ".join(f'"{x}"' for x in rng.sample(pool, rng.randint(1, 3))) + "]"


def random_condition(rng: random.Random, depth: int = 0) -> str:
    kind = rng.randrange(10 if depth < 2 else 7)
    if kind == 0:
        return f'emotion("{rng.choice(["customer", "agent", "any"])}", {_labels(rng, EMOTIONS)}, {rng.choice([0.0, 0.5, 0.8])})'
    if kind == 1:
        return f"sound({_labels(rng, SOUNDS)}, {rng.choice([0.0, 0.5, 0.9])})"
    if kind == 2:
        return f"{rng.choice(['any_words', 'all_words'])}(caption, {_labels(rng, WORDS)})"
    if kind == 3:
        return f'facets.emotions.exists(e, e.label in {_labels(rng, EMOTIONS)} && e.intensity >= {rng.choice([0.1, 0.6])})'
    if kind == 4:
        return f'facets.sound_events.exists(s, s.label == "{rng.choice(SOUNDS)}")'
    if kind == 5:
        return f"acoustics.silence_ratio > {rng.choice([0.1, 0.4, 0.9])}"
    if kind == 6:
        return f'context.queue == "{rng.choice(["billing", "sales"])}"'
    left, right = random_condition(rng, depth + 1), random_condition(rng, depth + 1)
    if kind == 7:
        return f"({left}) && ({right})"
    if kind == 8:
        return f"({left}) || ({right})"
    return f"!({left})"


def random_rules(rng: random.Random, directory: Path, count: int) -> Path:
    lines = ["apiVersion: listenpost/v1", "kind: RuleSet", "metadata: {name: random, owner: qa}", "rules:"]
    for i in range(count):
        mode = rng.choice(["enforce", "enforce", "shadow", "disabled"])
        extra = "    continue: true\n" if rng.random() < 0.7 else ""
        extra += "    for: {windows: 2}\n" if rng.random() < 0.15 else ""
        lines.append(
            f"  - id: r{i}\n    description: r{i}\n    priority: {rng.randint(1, 50)}\n    mode: {mode}\n"
            f"    match: {{types: [com.listenpost.audio.captioned]}}\n    when: {random_condition(rng)!r}\n{extra}"
            f"    actions: [{{route: {{queue: q{i}}}}}]"
        )
    (directory / "rules.yaml").write_text("\n".join(lines) + "\n")
    return directory


def random_event(rng: random.Random) -> dict[str, Any]:
    def emotion() -> Any:
        if rng.random() < 0.08:
            # Malformed, or a value the graded keys cannot compare (the rules must decide, and fail).
            return rng.choice([
                "not a map", {"role": "customer"}, {"label": 3, "intensity": 0.5},
                {"role": "customer", "label": "anger", "intensity": "high"}, {"role": "agent", "label": "fear", "intensity": 1},
                {"role": "customer", "label": "distress"}, {"role": "customer", "label": "anger", "intensity": float("nan")},
                {"role": "customer", "label": "anger", "intensity": True, "window": 1},
            ])  # fmt: skip
        return {
            "role": rng.choice(["customer", "agent", None]),
            "label": rng.choice(EMOTIONS),
            "intensity": rng.random(),
            "window": rng.randrange(3),
        }

    def sound() -> Any:
        if rng.random() < 0.08:
            return rng.choice([
                {"confidence": 0.5}, {"label": "alarm", "confidence": "high"}, {"label": "siren", "confidence": 1},
                {"label": "gunshot", "window": 0}, {"label": "screaming", "confidence": float("nan"), "window": 2},
            ])  # fmt: skip
        return {"label": rng.choice(SOUNDS), "confidence": rng.random(), "window": rng.randrange(3)}

    facets: Any = {"emotions": [emotion() for _ in range(rng.randrange(4))], "sound_events": [sound() for _ in range(rng.randrange(3))]}
    if rng.random() < 0.05:
        facets = rng.choice([{}, {"emotions": "none"}, {"sound_events": None, "emotions": []}])
    caption = " ".join(rng.choice(WORDS + ["the", "customer", "Cancel.", "REFUND", "manager's"]) for _ in range(rng.randrange(12)))
    windows = [
        {
            "index": i,
            "start": 15.0 * i,
            "end": 15.0 * (i + 1),
            "channel": 1,
            "role": "customer",
            "caption": rng.choice(WORDS),
        }
        for i in range(3)
    ]
    return {
        "context": {"callid": "c", **({"queue": rng.choice(["billing", "sales"])} if rng.random() < 0.8 else {})},
        "caption": caption if rng.random() > 0.03 else 42,
        "facets": facets,
        "acoustics": {"silence_ratio": rng.random()},
        "windows": windows,
    }


def outcome(result: Any) -> Any:
    return (
        [(d.id, d.kind, d.rule_id, d.data) for d in result.decisions],
        result.matches,
        result.errors,
        {k: v.to_json() for k, v in result.streaks.items()},
    )


@pytest.mark.parametrize("seed", range(12))
def test_prefilter_never_changes_the_outcome(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    ruleset = load_ruleset(random_rules(rng, tmp_path, 40))
    skipped = 0
    for _ in range(60):
        data = random_event(rng)
        fast = evaluate(ruleset, EVENT, data, limits=NO_TIME_LIMITS)
        full = evaluate(ruleset, EVENT, data, prefilter=False, batch=False, limits=NO_TIME_LIMITS)
        assert outcome(fast) == outcome(full), data
        skipped += fast.skipped
    assert skipped > 0  # the pre-filter did skip rules


FOR_RULES = """apiVersion: listenpost/v1
kind: RuleSet
metadata: {name: floors, owner: qa}
rules:
  - id: angry
    description: angry for two windows
    match: {types: [com.listenpost.audio.captioned]}
    when: emotion("customer", ["anger"], 0.6)
    for: {windows: 2}
    actions: [{route: {queue: escalations}}]
"""


def _call(*emotions: dict[str, Any]) -> dict[str, Any]:
    windows = [{"index": i, "start": 30.0 * i, "end": 30.0 * (i + 1), "channel": 1, "role": "customer", "caption": "x"} for i in range(3)]
    return {"context": {"callid": "c"}, "caption": "x", "facets": {"emotions": list(emotions), "sound_events": []}, "windows": windows}


def test_a_for_rule_below_its_floor_is_not_walked_but_errors_still_show(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(FOR_RULES)
    ruleset = load_ruleset(tmp_path)
    below = _call({"role": "customer", "label": "anger", "intensity": 0.55, "window": 0})
    result = evaluate(ruleset, EVENT, below)
    assert result.evaluated == 0 and result.streaks["angry"].windows == 0
    assert outcome(result) == outcome(evaluate(ruleset, EVENT, below, prefilter=False, batch=False))
    # An intensity that is not a number cannot be compared: the rule runs, and fails visibly.
    broken = _call({"role": "customer", "label": "anger", "intensity": "high", "window": 0})
    result = evaluate(ruleset, EVENT, broken)
    assert [e.message for e in result.errors] == ["intensity of emotion 'anger' must be a number, got str"]
    # At the floor in two windows in a row: it fires.
    held = _call(*({"role": "customer", "label": "anger", "intensity": 0.6, "window": i} for i in (0, 1)))
    assert [m.rule_id for m in evaluate(ruleset, EVENT, held).matches] == ["angry"]


def test_a_for_rule_with_a_floor_skips_windows_below_it_and_quotes_the_first_reaching_item(tmp_path: Path) -> None:
    # `emotion("customer", ["anger"], 0.6)` is false in a window whose highest customer anger
    # is below 0.6 (not evaluated there); where it holds, the window's first such item is quoted.
    (tmp_path / "rules.yaml").write_text(FOR_RULES)
    ruleset = load_ruleset(tmp_path)
    items = [
        {"role": "customer", "label": "anger", "intensity": 0.5, "window": 0, "span": "low"},
        {"role": "customer", "label": "anger", "intensity": 0.7, "window": 0, "span": "first"},
        {"role": "customer", "label": "anger", "intensity": 0.9, "window": 0, "span": "higher"},
        {"role": "agent", "label": "anger", "intensity": 0.9, "window": 1, "span": "agent"},
        {"role": "customer", "label": "anger", "intensity": 0.8, "window": 1, "span": "second"},
    ]
    result = evaluate(ruleset, EVENT, _call(*items))
    assert [m.rule_id for m in result.matches] == ["angry"]
    assert result.actions[0].data["evidence"]["span"] == "first" and result.actions[0].data["evidence"]["windows"] == 2
    assert outcome(result) == outcome(evaluate(ruleset, EVENT, _call(*items), prefilter=False, batch=False))
    # An item that is not a double in a window: the condition runs there (and fails visibly on
    # a string; an int is a number to the helper).
    broken = evaluate(ruleset, EVENT, _call({"role": "customer", "label": "anger", "intensity": "high", "window": 1}, *items))
    assert [e.message for e in broken.errors] == ["intensity of emotion 'anger' must be a number, got str"]
    whole = _call(*items[:3], {"role": "customer", "label": "anger", "intensity": 1, "window": 1, "span": "int"})
    assert outcome(evaluate(ruleset, EVENT, whole)) == outcome(evaluate(ruleset, EVENT, whole, prefilter=False, batch=False))


def test_a_trigger_word_inside_another_is_looked_for_first(tmp_path: Path) -> None:
    # "cancellation" cannot be in a caption without "cancel": it is looked for only then.
    (tmp_path / "rules.yaml").write_text(
        "apiVersion: listenpost/v1\nkind: RuleSet\nmetadata: {name: words, owner: qa}\nrules:\n"
        + "".join(
            f"  - id: {name}\n    description: {name}\n    match: {{types: [t]}}\n    continue: true\n"
            f"    when: 'any_words(caption, [\"{word}\"])'\n    actions: [{{route: {{queue: {name}}}}}]\n"
            for name, word in (("long", "cancellation"), ("short", "cancel"), ("other", "refund"))
        )
    )
    ruleset = load_ruleset(tmp_path)
    plan = ruleset.plan("t", "/s")
    assert [(w, inside) for w, _, inside in plan.word_keys] == [("cancel", None), ("refund", None), ("cancellation", "word:cancel")]
    # (A substring test: "cancel" is in "cancellation", so its rule runs there, and is false.)
    cases = (("a Cancellation please", ["long"], 2), ("cancel it", ["short"], 1), ("a refund", ["other"], 1), ("nothing", [], 0))
    for caption, routed, evaluated in cases:
        result = evaluate(ruleset, {"type": "t", "source": "/s", "id": "e"}, {"caption": caption})
        assert [d.subject.rsplit(".", 1)[1] for d in result.actions] == routed, caption
        assert result.evaluated == evaluated, caption  # what the pre-filter let through


def test_a_rule_below_its_floor_is_skipped_and_what_it_reads_is_not_converted(tmp_path: Path) -> None:
    from services.rules.conditions import EventRun

    (tmp_path / "rules.yaml").write_text(
        "apiVersion: listenpost/v1\nkind: RuleSet\nmetadata: {name: floors, owner: qa}\nrules:\n"
        "  - id: very-angry\n    description: d\n    match: {types: [com.listenpost.audio.captioned]}\n"
        "    when: 'facets.emotions.exists(e, e.label == \"anger\" && e.intensity >= 0.7)'\n"
        "    actions: [{route: {queue: escalations}}]\n"
    )
    ruleset = load_ruleset(tmp_path)
    below = _call({"role": "customer", "label": "anger", "intensity": 0.6, "window": 0})  # a candidate (@0.5), below 0.7
    run = EventRun(ruleset, EVENT, below, NO_TIME_LIMITS)
    assert [r.id for r in run.rules] == ["very-angry"] and run.proved_false == {0}
    assert "facets" not in run.needed  # the library is not given what only a rule proved false reads
    result = evaluate(ruleset, EVENT, below)
    assert (result.evaluated, result.skipped, result.matches) == (0, 1, [])
    assert outcome(result) == outcome(evaluate(ruleset, EVENT, below, prefilter=False, batch=False))
    reached = _call({"role": "customer", "label": "anger", "intensity": 0.7, "window": 0})
    assert [m.rule_id for m in evaluate(ruleset, EVENT, reached).matches] == ["very-angry"]
    # An intensity that cannot be compared proves nothing: the rule runs, and fails visibly.
    broken = _call({"role": "customer", "label": "anger", "intensity": "high", "window": 0})
    assert EventRun(ruleset, EVENT, broken, NO_TIME_LIMITS).proved_false == frozenset()
    assert outcome(evaluate(ruleset, EVENT, broken)) == outcome(evaluate(ruleset, EVENT, broken, prefilter=False, batch=False))
