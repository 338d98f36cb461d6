"""The native evaluator (services/rules/native.py) against the `cel` library, the reference.

For every expression: the same value, or an error in both (messages are compared
where the native one is meant to repeat the library's). Covered: targeted edge
cases, every shipped rule and generated conditions over random events, and whole
evaluations (decisions, matches, errors, streaks) with and without native programs.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import cel
import pytest

from services.rules import evaluate, load_ruleset, rule_variables
from services.rules.evaluate import Limits
from services.rules.expr import runtime_message
from services.rules.helpers import Facts
from services.rules.native import compile_source

from tests.test_rules_prefilter import EVENT, NO_TIME_LIMITS, outcome, random_condition, random_event, random_rules

REPO = Path(__file__).resolve().parents[1]
_ERROR = "error"

VARS: dict[str, Any] = {
    "facets": {
        "emotions": [
            {"role": "customer", "label": "anger", "intensity": 0.8, "window": 0},
            {"role": "agent", "label": "calm", "intensity": 0.4, "window": 1},
        ],
        "sound_events": [{"label": "alarm", "confidence": 0.7}],
    },
    "acoustics": {"silence_ratio": 0.5, "longest_silence_s": 12.0, "overtalk_count": 3, "nan": math.nan, "talk": {"agent": 1.0}},
    "context": {"callid": "c-1", "customer_tier": "gold", "queue": "billing", "n": None, "ids": [1, 2, 3], "flag": True},
    "caption": "The Customer asks to CANCEL. Thanks\n",
    "event": {"type": "t", "source": "/s"},
    "data": {"x": {"y": [1, 2.5, "a"]}},
}


def _facts(variables: dict[str, Any]) -> Facts:
    facets = variables["facets"] if isinstance(variables["facets"], dict) else {}
    return Facts(facets.get("emotions"), facets.get("sound_events"), variables["caption"], [])


def reference(source: str, variables: dict[str, Any]) -> tuple[str, Any]:
    """("ok", value) or ("error", message) from the library, helpers included."""
    from services.rules.ruleset import EvalContext

    ctx = EvalContext.new()
    ctx.current.facts = _facts(variables)
    ctx.context.update(variables)
    try:
        # The library alone (no load-time field checks): the edge cases read odd fields on purpose.
        return "ok", cel.compile(source).execute(ctx.context)
    except Exception as exc:  # noqa: BLE001
        return _ERROR, runtime_message(exc)


def native(source: str, variables: dict[str, Any]) -> tuple[str, Any]:
    program = compile_source(source)
    assert program is not None, f"not native: {source}"
    try:
        return "ok", program(variables, _facts(variables))
    except Exception as exc:  # noqa: BLE001
        return _ERROR, runtime_message(exc)


def same(a: tuple[str, Any], b: tuple[str, Any]) -> bool:
    if a[0] != b[0]:
        return False
    if a[0] == _ERROR:
        return True
    return _typed(a[1]) == _typed(b[1])


def _typed(value: Any) -> Any:
    # Values compared with their types: 1 and 1.0 and True are different results.
    if isinstance(value, list):
        return ("list", [_typed(v) for v in value])
    if isinstance(value, dict):
        return ("map", {k: _typed(v) for k, v in value.items()})
    if isinstance(value, float) and math.isnan(value):
        return ("double", "nan")
    return (type(value).__name__, value)


EDGE_CASES = [
    # missing fields and null
    "context.nope == 1", "context.nope == 1 && false", "false && context.nope", "context.nope || true",
    "context.nope && true", "true || context.nope", "context.n == null", "context.n.x", "has(context.nope)",
    "has(context.callid)", "has(context.n.x)", "has(facets.emotions.x)", "!context.nope", "context.nope ? 1 : 2",
    "data.x.y[5]", "data.x.y[-1]", "data.x.y[1]", "data.x.y[1.0]", "data.x.y[true]", "data.x['y'][0]", "data.x[1]",
    "data.x['nope']", "data.x.y.z",
    # numbers
    "acoustics.overtalk_count > 2.5", "acoustics.overtalk_count == 3.0", "acoustics.longest_silence_s >= 12",
    "acoustics.silence_ratio < 1", "acoustics.overtalk_count + 1.0 > 0", "acoustics.overtalk_count + 1 == 4",
    "acoustics.silence_ratio * 2.0 == 1.0", "acoustics.silence_ratio * 2 == 1.0", "acoustics.overtalk_count / 0 == 1",
    "acoustics.overtalk_count / 2 == 1", "-7 / 2 == -3", "-7 % 3 == -1", "7 % -3", "5.5 % 2.0", "1.0 / 0.0 > 1.0",
    "9223372036854775807 + 1 > 0", "-(-9223372036854775807 - 1)", "9223372036854775807 * 2", "5 % 0", "acoustics.nan == acoustics.nan", "acoustics.nan < 1.0", "1 < acoustics.nan",
    "-acoustics.overtalk_count", "-acoustics.silence_ratio", "-context.callid", "context.flag == 1", "context.flag == true",
    "true < false", "'a' < 'b'", "'a' < 1", "context.callid > 1", "null < null", "[1] < [2]",
    "9007199254740993 == 9007199254740992.0", "9007199254740993 > 9007199254740992.0",
    # in
    "1 in context.ids", "1.0 in context.ids", "'1' in context.ids", "'callid' in context", "1 in context",
    "true in context", "1.5 in context", "context.ids in ['a', 'b']", "context.flag == 'true'", "context.n != 'x'", "null in context", "'a' in 'abc'", "context.flag in [1, true]",
    "[1, 'a'] == [1.0, 'a']", "acoustics.talk.agent == 1", "acoustics.talk == acoustics.talk", "context.ids == [1, 2, 3.0]",
    # logic and bools
    "1 && true", "true && 1", "1 && false", "false || 1", "1 || true", "context.nope && context.nope2",
    "context.nope || 1", "1 || context.nope", "(context.nope && false) || true", "!1", "1 ? true : false",
    "true ? context.nope : 1", "false ? context.nope : 1",
    # strings
    "caption.contains('CANCEL')", "caption.contains(1)", "caption.startsWith('The')", "caption.endsWith('Thanks\\n')",
    "caption.startsWith(1)", "context.ids.contains(2)", "context.contains('queue')", "caption.lowerAscii().contains('cancel')",
    "'ÀÉ Ab'.lowerAscii() == 'ÀÉ ab'", "size(caption) > 10", "size('héllo') == 6", "'héllo'.size()", "size(context.ids)",
    "context.size()", "size(context.n)", "size(1)",
    # regex
    "caption.matches('(?i)cancel')", "caption.matches('Thanks$')", "caption.matches('^The')", "caption.matches('\\\\bCANCEL\\\\b')",
    "caption.matches('[0-9]+')", "'a1b'.matches('\\\\d')", "''.matches('^$')", "'x\\n'.matches('x$')", "context.n.matches('a')",
    "'a$b'.matches('[$]')", "'ab'.matches('a|^b')",
    # macros
    "facets.emotions.exists(e, e.label == 'anger' && e.intensity >= 0.6)", "facets.emotions.all(e, e.intensity > 0.3)",
    "facets.emotions.exists_one(e, e.role == 'customer')", "facets.emotions.map(e, e.label)",
    "facets.emotions.map(e, e.intensity > 0.5, e.label)", "facets.emotions.filter(e, e.role == 'agent').size() == 1",
    "facets.emotions.exists(e, e.nope == 1)", "facets.emotions.exists(e, e.label == 'anger' || e.nope)",
    "facets.emotions.exists(e, e.label == 'calm' || e.nope)", "facets.emotions.all(e, e.label == 'x' && e.nope)",
    "facets.emotions.exists(e, 1)", "[1, 'a'].exists(v, v > 0)", "['a', 1].exists(v, v > 0)", "[1, 'a'].all(v, v > 0)",
    "[3, 1].exists_one(v, v == 1 || context.nope)", "context.exists(k, k == 'queue')", "caption.exists(c, true)",
    "[1, 2].map(v, v, v)", "[1, 2].filter(v, 1)", "data.x.y.exists(v, v == 'a')",
    "facets.emotions.exists(e, facets.sound_events.exists(s, s.label == 'alarm' && e.label == 'anger'))",
    # helpers, with literal and computed arguments
    "emotion('customer', ['anger'], 0.6)", "emotion('any', 'calm', 0)", "emotion('agent', ['anger'], 0.1)",
    "sound(['alarm'], 0.5)", "sound('alarm', 0.9)", "any_words(caption, ['cancel', 'refund'])",
    "all_words(caption, ['cancel', 'thanks'])", "all_words(caption, 'asks to cancel')", "any_words(context.n, ['a'])",
    "emotion(context.queue, ['anger'], 0.5)", "sound([context.queue], 0.5)", "any_words(caption, [context.queue])",
    "emotion('customer', ['anger'], context.queue)", "emotion('customer', 1, 0.5)", "sound(['alarm'], -1)",
    "any_words(caption, [])",
]  # fmt: skip


@pytest.mark.parametrize("source", EDGE_CASES)
def test_edge_cases_match_the_library(source: str) -> None:
    expected, got = reference(source, VARS), native(source, VARS)
    assert same(got, expected), (source, got, expected)


@pytest.mark.parametrize(
    "source",
    ["context.nope == 1", "context.callid > 1", "-7 / 0 == 1", "data.x.y[5]", "emotion('customer', 1, 0.5)"],
)
def test_error_messages_repeat_the_library(source: str) -> None:
    assert native(source, VARS) == reference(source, VARS)


def test_helpers_with_bad_facets_fail_the_same_way() -> None:
    broken = {**VARS, "facets": {"emotions": [{"label": "anger", "role": "customer", "intensity": "high"}], "sound_events": "x"}}
    for source in ("emotion('customer', ['anger'], 0.5)", "sound(['alarm'], 0.5)", "emotion('any', ['calm'], 0.5)"):
        assert native(source, broken) == reference(source, broken), source


EXACT_FLOORS = [
    "facets.emotions.exists(e, e.label == 'anger' && e.intensity >= 0.6)",
    "facets.emotions.exists(e, e.label in ['anger', 'calm'] && e.intensity > 0.5 && e.role == 'customer')",
    "facets.emotions.exists(e, 0.5 < e.intensity && e.label == 'anger')",
    "facets.sound_events.exists(s, s.label == 'alarm' && s.confidence >= 0.5)",
]
EXACT_FLOOR_FACETS = [
    [{"label": "anger", "role": "customer", "intensity": 0.7}, {"label": "calm", "role": "agent", "intensity": 0.9}],
    [{"label": "anger", "role": "customer", "intensity": 0.6}],
    [{"label": "anger", "role": "agent", "intensity": 0.9}],
    [{"label": "anger", "role": "customer", "intensity": float("nan")}, {"label": "anger", "role": "customer", "intensity": 0.9}],
    [{"label": "anger", "role": "customer", "intensity": 1}],
    [{"label": "anger", "role": "customer", "intensity": "high"}],
    [{"label": "anger", "intensity": 0.9}],
    [{"role": "customer", "intensity": 0.9}, {"label": "anger", "role": "customer", "intensity": 0.8}],
    [{"label": "anger", "role": "customer"}],
    ["not a map"],
    [],
]  # fmt: skip


@pytest.mark.parametrize("source", EXACT_FLOORS)
def test_exact_floor_comprehensions_match_the_library(source: str) -> None:
    # One comparison with the highest value, or the comprehension itself when an item cannot be compared.
    generated, closures = _generated_and_closures(source)
    assert "facts.highest(" in (generated.__doc__ or "") and "exists_floor" in closures.__qualname__
    for items in EXACT_FLOOR_FACETS:
        sounds = [{**i, "label": "alarm", "confidence": i.get("intensity")} if isinstance(i, dict) else i for i in items]
        variables = {**VARS, "facets": {"emotions": items, "sound_events": sounds}}
        expected, got = reference(source, variables), native(source, variables)
        assert same(got, expected), (source, items, got, expected)
        assert _outcome(closures, variables) == _outcome(generated, variables)
        # Without helper facts (no highest() cached per event): the same answers.
        assert _outcome(generated, variables) == _outcome(lambda env, facts: generated(env, None), variables)


def test_unsupported_expressions_stay_with_the_library() -> None:
    for source in ("type(context) == map", "math.greatest([1, 2]) == 2", "caption.split(' ').size() > 1", "1u == 1",
                   "{'a': 1}.a == 1", "caption.matches(context.queue)", "caption.matches('(?=a)')", "string(1) == '1'"):  # fmt: skip
        assert compile_source(source) is None, source


def test_every_shipped_rule_is_native() -> None:
    ruleset = load_ruleset(REPO / "router_rules")
    assert [r.id for r in ruleset.rules if r.native is None] == []


def _event_variables(rng: random.Random) -> dict[str, Any]:
    data = random_event(rng)
    if rng.random() < 0.2:
        data["acoustics"] = rng.choice([{}, {"silence_ratio": 1}, {"silence_ratio": "x"}, {"silence_ratio": None}])
    if rng.random() < 0.1:
        data["context"] = {"callid": "c", "queue": rng.choice([1, None, ["billing"], "billing"])}
    return rule_variables(EVENT, data)


@pytest.mark.parametrize("seed", range(6))
def test_random_conditions_match_the_library(seed: int) -> None:
    rng = random.Random(1000 + seed)
    shipped = [r.condition.source for r in load_ruleset(REPO / "router_rules").rules]
    sources = shipped + [random_condition(rng) for _ in range(60)]
    compared = errors = 0
    for _ in range(40):
        variables = _event_variables(rng)
        for source in sources:
            expected, got = reference(source, variables), native(source, variables)
            assert same(got, expected), (source, variables, got, expected)
            compared += 1
            errors += expected[0] == _ERROR
    assert errors > 0 and compared > errors  # both outcomes were exercised


@pytest.mark.parametrize("seed", range(8))
def test_native_evaluation_equals_the_library_evaluation(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    ruleset = load_ruleset(random_rules(rng, tmp_path, 40))
    assert all(r.native is not None for r in ruleset.rules)
    for _ in range(50):
        data = random_event(rng)
        fast = evaluate(ruleset, EVENT, data, limits=NO_TIME_LIMITS)
        reference_run = evaluate(ruleset, EVENT, data, prefilter=False, batch=False, native=False, limits=NO_TIME_LIMITS)
        assert outcome(fast) == outcome(reference_run), data


def test_shipped_rules_on_the_shipped_tests_events_agree() -> None:
    ruleset = load_ruleset(REPO / "router_rules")
    rng = random.Random(5)
    for _ in range(200):
        data = random_event(rng)
        data["context"]["customer_tier"] = rng.choice(["gold", "silver", 3])
        data["acoustics"].update(longest_silence_s=rng.choice([3.0, 20, 16.5]), clipping_ratio=rng.random() / 20)
        assert outcome(evaluate(ruleset, EVENT, data, limits=NO_TIME_LIMITS)) == outcome(
            evaluate(ruleset, EVENT, data, native=False, limits=NO_TIME_LIMITS)
        )


def test_a_value_cel_cannot_take_still_fails_every_rule(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(
        "apiVersion: listenpost/v1\nkind: RuleSet\nmetadata: {name: r, owner: qa}\nrules:\n"
        "  - {id: a, description: a, match: {types: [com.listenpost.audio.captioned]}, when: 'size(context) > 0', continue: true, actions: [{route: {queue: q}}]}\n"
        "  - {id: b, description: b, match: {types: [com.listenpost.audio.captioned]}, when: 'true', actions: [{route: {queue: q}}]}\n"
    )
    ruleset = load_ruleset(tmp_path)
    data = {"context": {"callid": "c", "ids": {1, 2}}}  # a set: not JSON, not CEL
    result = evaluate(ruleset, EVENT, data)
    assert [e.rule_id for e in result.errors] == ["a", "b"]
    assert outcome(result) == outcome(evaluate(ruleset, EVENT, data, native=False))
    huge = {"context": {"callid": "c", "n": 2**70}}  # the library turns it into a double: it decides
    assert outcome(evaluate(ruleset, EVENT, huge)) == outcome(evaluate(ruleset, EVENT, huge, native=False))


def test_the_library_is_given_only_the_item_fields_rules_read(tmp_path: Path) -> None:
    # A value CEL cannot take, in an item field no rule reads, no longer fails the event: the
    # library is given the fields the rules read of each item, and the native check looks at those.
    (tmp_path / "r.yaml").write_text(
        "apiVersion: listenpost/v1\nkind: RuleSet\nmetadata: {name: r, owner: qa}\nrules:\n"
        "  - {id: a, description: a, match: {types: [com.listenpost.audio.captioned]}, continue: true,"
        " when: 'facets.emotions.exists(e, e.label == \"anger\" && e.intensity > 0.5)', actions: [{route: {queue: q}}]}\n"
        "  - {id: b, description: b, match: {types: [com.listenpost.audio.captioned]}, when: 'size(caption) > 0', actions: [{route: {queue: q}}]}\n"
    )
    ruleset = load_ruleset(tmp_path)
    plan = ruleset.plan(EVENT["type"], EVENT["source"])
    assert dict(plan.item_fields) == {("facets", "emotions"): frozenset({"label", "intensity"})}
    odd = {"label": "anger", "intensity": 0.8, "extra": {1, 2}}  # a set: not JSON, not CEL
    data = {"caption": "x", "facets": {"emotions": [odd]}}
    native_result, library_result = evaluate(ruleset, EVENT, data), evaluate(ruleset, EVENT, data, native=False)
    assert [m.rule_id for m in native_result.matches] == ["a", "b"] and native_result.errors == []
    assert outcome(native_result) == outcome(library_result)
    # In a field a rule reads, it still fails every rule, natively as in the library.
    read = {"caption": "x", "facets": {"emotions": [{"label": {1}, "intensity": 0.8}]}}
    assert [e.rule_id for e in evaluate(ruleset, EVENT, read).errors] == ["a", "b"]
    assert outcome(evaluate(ruleset, EVENT, read)) == outcome(evaluate(ruleset, EVENT, read, native=False))


def test_native_errors_are_rule_errors_with_guardrails(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(
        "apiVersion: listenpost/v1\nkind: RuleSet\nmetadata: {name: r, owner: qa}\nrules:\n"
        "  - {id: a, description: a, match: {types: [com.listenpost.audio.captioned]}, when: 'context.nope > 1', continue: true, actions: [{route: {queue: q}}]}\n"
        "  - {id: b, description: b, match: {types: [com.listenpost.audio.captioned]}, when: 'false', actions: [{route: {queue: q}}]}\n"
    )
    ruleset = load_ruleset(tmp_path)
    assert all(r.native is not None for r in ruleset.rules)
    result = evaluate(ruleset, EVENT, {"context": {}})
    assert [(e.rule_id, e.message) for e in result.errors] == [("a", "no such key: nope")]
    spent = evaluate(ruleset, EVENT, {"context": {}}, limits=Limits(max_event_ms=-1.0))
    assert [e.rule_id for e in spent.errors] == ["a", "b"]
    slow = evaluate(ruleset, EVENT, {"context": {"nope": 2}}, limits=Limits(max_rule_ms=-1.0))
    assert [e.message.split(",")[1].strip() for e in slow.errors] == ["over the limit of -1 ms"] * 2


# --- generated code (services/rules/codegen.py) ------------------------------------


def _outcome(program: Any, variables: dict[str, Any]) -> tuple[str, Any]:
    """("ok", typed value) or ("error", message): messages compared exactly."""
    try:
        return "ok", _typed(program(variables, _facts(variables)))
    except Exception as exc:  # noqa: BLE001
        return _ERROR, runtime_message(exc)


def _generated_and_closures(source: str) -> tuple[Any, Any]:
    generated, closures = compile_source(source), compile_source(source, inline=False)
    assert generated is not None and closures is not None, source
    return generated, closures


@pytest.mark.parametrize("seed", range(3))
def test_generated_code_gives_the_closures_values_and_errors(seed: int) -> None:
    # The closures are the generated code's specification: same value and type, or the
    # same error message, on the edge cases and on random conditions and events.
    rng = random.Random(2000 + seed)
    sources = EDGE_CASES + [random_condition(rng) for _ in range(80)]
    programs = {source: _generated_and_closures(source) for source in sources}
    inlined = sum(g is not c for g, c in programs.values())
    assert inlined > len(sources) // 2  # most conditions do get generated code
    for variables in [VARS] + [_event_variables(rng) for _ in range(25)]:
        for source, (generated, closures) in programs.items():
            assert _outcome(generated, variables) == _outcome(closures, variables), (source, variables)


def test_shipped_conditions_run_as_generated_code() -> None:
    for rule in load_ruleset(REPO / "router_rules").rules:
        assert rule.native is not None and rule.native.__name__ == "when", rule.id
        assert "def when(env, facts):" in (rule.native.__doc__ or "")


def test_literals_cannot_inject_code() -> None:
    # Literals and field names reach the source only through repr() (or as constants).
    hostile = '"\\"\\"\\"); import os; os._exit(3); (\\"\\"\\"\\n\'"'
    for source in (f"context.queue == {hostile}", f"context.queue != {hostile} && true", f"{hostile} in context",
                   f"context.queue in [{hostile}, 'billing']", f"any_words(caption, [{hostile}])"):  # fmt: skip
        generated, _ = _generated_and_closures(source)
        assert generated is not compile_source(source, inline=False)
        assert same(native(source, VARS), reference(source, VARS)), source


def test_a_condition_too_deep_to_generate_keeps_its_closures() -> None:
    # Python allows 20 nested `try` blocks; a chain of 40 `&&` keeps the closures, exactly.
    source = " && ".join(["has(context.queue)"] * 39 + ["context.queue == 'billing'"])
    program = compile_source(source)
    assert program is not None and program.__name__ == "logic"
    assert same(native(source, VARS), reference(source, VARS)) and native(source, VARS) == ("ok", True)
    shorter = " && ".join(["has(context.queue)"] * 9 + ["context.queue == 'billing'"])
    assert compile_source(shorter).__name__ == "when"  # type: ignore[union-attr]
