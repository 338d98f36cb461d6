"""Events that try to freeze the rules engine: a backtracking regex, and a condition that takes seconds."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from services.rules import Limits, evaluate, load_ruleset
from services.rules.engine import RulesProcessor
from services.rules.state import memory_stores

EVENT = {"type": "com.listenpost.audio.captioned", "source": "urn:listenpost", "id": "evt-1", "specversion": "1.0"}


def _rules(directory: Path, *whens: str) -> Path:
    (directory / "rules.yaml").write_text(
        "apiVersion: listenpost/v1\nkind: RuleSet\nmetadata: {name: hostile, owner: qa}\nrules:\n"
        + "".join(
            f"  - id: r{i}\n    description: d\n    continue: true\n    match: {{types: [{EVENT['type']}]}}\n"
            f"    when: {when!r}\n    actions: [{{tag: {{tags: [t{i}]}}}}]\n"
            for i, when in enumerate(whens)
        )
    )
    return directory


def test_matches_runs_in_linear_time_on_a_backtracking_pattern(tmp_path: Path) -> None:
    # Python's `re` takes seconds on this at 26 characters, and doubles per character.
    ruleset = load_ruleset(_rules(tmp_path, 'context.name.matches("^(a+)+$")'))
    for length in (26, 10_000):
        started = time.perf_counter()
        result = evaluate(ruleset, EVENT, {"context": {"name": "a" * length + "!"}})
        assert time.perf_counter() - started < 0.5
        assert result.matches == [] and result.errors == []


async def test_a_rule_that_would_take_seconds_on_an_event_is_refused_before_it_runs(tmp_path: Path) -> None:
    # One comprehension over 1,000 x 1,000 facet items: about a second in the library, which
    # cannot be interrupted once it runs, and holds the engine's event loop all that time.
    slow = "facets.emotions.all(a, facets.emotions.all(b, a.intensity + b.intensity >= 0.0))"
    ruleset = load_ruleset(_rules(tmp_path, slow, "true"))
    items = [{"role": "customer", "label": "calm", "intensity": 0.5, "window": 0} for _ in range(1000)]
    data = {"context": {"callid": "c-1"}, "facets": {"emotions": items, "sound_events": []}}
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)
    outcome = await RulesProcessor(memory_stores()).process(ruleset, EVENT, data)
    done.set()
    await ticking
    assert outcome.evaluation is not None
    assert [(e.rule_id, e.message) for e in outcome.evaluation.errors] == [
        ("r0", "not evaluated: its comprehensions would take about 1,001,000 steps on this event, over the limit of 100,000")
    ]
    assert [d.kind for d in outcome.publish] == ["error", "tag"]  # the other rule still ran
    assert max(gaps) < 0.2, f"the event loop waited {max(gaps):.2f} s"
    # The same rule on an ordinary call (8 items: 72 steps) runs as before.
    few = {**data, "facets": {"emotions": items[:8], "sound_events": []}}
    assert [m.rule_id for m in evaluate(ruleset, EVENT, few).matches] == ["r0", "r1"]
    # The limit is a setting (LISTENPOST_RULES__MAX_RULE_ITERATIONS).
    assert evaluate(ruleset, EVENT, few, limits=Limits(max_rule_iterations=50)).errors[0].rule_id == "r0"


def test_comprehension_steps_multiply_nested_loops_by_the_events_list_sizes() -> None:
    from services.rules.analysis import analyse
    from services.rules.limits import comprehension_steps

    values = {"facets": {"emotions": [{}] * 10, "sound_events": [{}] * 3}, "context": {"ids": list(range(50))}}

    def steps(source: str) -> int:
        analysis, findings = analyse(source)
        assert not findings, findings
        return comprehension_steps(analysis.loops, values, unknown_size=1000)

    assert steps('emotion("customer", ["anger"], 0.5)') == 0
    assert steps('facets.emotions.exists(e, e.label == "anger")') == 10
    assert steps("facets.emotions.exists(a, facets.sound_events.exists(b, a.window == b.window))") == 10 * (1 + 3)
    assert steps("context.ids.exists(i, i > 3) || facets.emotions.all(e, e.intensity < 1.0)") == 50 + 10
    assert steps("[1, 2, 3].exists(x, facets.emotions.exists(e, e.window == x))") == 3 * (1 + 10)
    assert steps("facets.emotions.filter(e, e.intensity > 0.5).exists(e, e.role == 'customer')") == 10 + 1000
    assert steps("context.missing.exists(x, x > 1)") == 0  # fails on its own, at once
