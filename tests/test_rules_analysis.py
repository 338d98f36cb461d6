"""The CEL syntax tree and what the loader learns from it: fields, triggers, projections, clauses."""

from __future__ import annotations

import cel
import pytest

from services.dsl import celast
from services.dsl.cel_checks import unknown_variables
from services.rules.analysis import FloorTest, analyse, conjuncts
from services.rules.expr import ExpressionError, compile_condition

# Expressions the library compiles; the analysis parser must read every one.
CORPUS = [
    'facets.emotions.exists(e, e.role == "customer" && e.label in ["anger", "frustration"] && e.intensity >= 0.6)',
    'has(context.customer_tier) && context.customer_tier in ["gold", "platinum"]',
    'caption.lowerAscii().matches("cancel(l?ing|l?ation)?\\\\b.*(account|contract)")',
    "a ? b : c ? d : -1u",
    "!x.y[0].z && !!true",
    '{"a": 1, 2: [1, 2,]}.size() > 0',
    "r'\\d+' + b'x' == '''a\nb'''",
    ".5 + 1e3 + 0x1F + 3.0e-2",
    "math.greatest([1, 2]) == 2 && strings.quote('x') != ''",
    "x.map(e, e * 2).filter(e, e > 1).all(e, e < 10)",
    "[1, 2, 3].map(x, x > 1, x * 2)",
    "type(context) == map && int('1') == 1 && uint(1) == 1u",
    "'\\u00e9\\x41\\101\\n' + \"\\\"\" != ''",
    "a.b.c(d, e).f[g] - -h * i / j % k",
    "// a comment\nx > 1 // another\n",
    "size(caption) > 0 || caption.size() == 0",
]


@pytest.mark.parametrize("source", CORPUS)
def test_parser_reads_what_the_library_compiles(source: str) -> None:
    cel.compile(source)  # the library's verdict first
    tree = celast.parse(source)
    assert source[tree.start : tree.end].strip() == source[tree.start : tree.end]  # spans cover tokens, not blanks
    assert tree.end - tree.start > 0


def test_literals_and_spans() -> None:
    tree = celast.parse('x.y == "a\\tb" && r"\\d" != b"\\x41" && 7u > 0x10')
    lits = [n for n in celast.walk(tree) if isinstance(n, celast.Lit)]
    assert [(lit.kind, lit.value) for lit in lits] == [("string", "a\tb"), ("string", "\\d"), ("bytes", b"A"), ("uint", 7), ("int", 16)]
    [left, right] = conjuncts(tree)[:2]
    source = 'x.y == "a\\tb" && r"\\d" != b"\\x41" && 7u > 0x10'
    assert source[left.start : left.end] == 'x.y == "a\\tb"'
    paren = celast.parse("(a || b) && c")
    assert [("(a || b) && c"[n.start : n.end]) for n in conjuncts(paren)] == ["(a || b)", "c"]


@pytest.mark.parametrize("source", ["x >", "(a", "a..b", "[1,, 2]", "a ? b", "1 + ", "'unterminated", "a $ b", "if"])
def test_parser_rejects_garbage(source: str) -> None:
    with pytest.raises(celast.CelSyntaxError):
        celast.parse(source)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "acoustics.silence_ration > 0.4",
            "1:1: unknown field 'silence_ration' of acoustics, did you mean 'silence_ratio'?",
        ),
        ("acoustics.zzz > 0.4", "1:1: unknown field 'zzz' of acoustics (known: duration_s, silence_ratio,"),
        (
            "facets.emotions.label == 'anger'",
            "1:1: facets.emotions is a list: it has no field 'label' (test its items with exists(), all() or filter())",
        ),
        ("facets.emotions.exists(e, e.lable == 'anger')", "1:27: unknown field 'lable' of e, did you mean 'label'?"),
        (
            "facets.sound_events.exists(s, s.intensity > 0.5)",
            "1:31: unknown field 'intensity' of s (known: label, confidence, window, start, end, span)",
        ),
        ("facets.emotions[0].rol == 'x'", "1:1: unknown field 'rol' of facets.emotions[...], did you mean 'role'?"),
        ("caption.text == 'x'", "1:1: caption is a string: it has no field 'text'"),
        (
            "has(acoustics.overtalk_ratoi)",
            "1:5: unknown field 'overtalk_ratoi' of acoustics, did you mean 'overtalk_ratio'?",
        ),
        (
            "event.call_id == 'x'",
            "1:1: unknown field 'call_id' of event (expected a CloudEvents attribute or extension",
        ),
        ("emotion('customer', ['anger'])", "1:1: emotion() takes 3 arguments (role, labels, min_intensity), got 2"),
        ("emotion('customer', ['anger'], '0.6')", "1:32: emotion(): min_intensity must be number, got string"),
        ("sound(3, 0.5)", "1:7: sound(): labels must be string or list of strings, got number"),
        ("any_words(caption, [1, 2])", "1:20: any_words(): words must be string or list of strings, got list"),
        ("lists.range(1000000).size() > 0", "lists.range is not allowed in rules"),
        ("math.nope(1) > 0", "unknown CEL function"),
        (
            "data.a.exists(x, data.b.exists(y, data.c.exists(z, x == y && y == z)))",
            "comprehensions nested 3 deep (at most 2)",
        ),
    ],
)
def test_static_checks(source: str, message: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_condition(source)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "source",
    [
        "context.anything.goes.here == 1 && data.whatever[0] == 2",  # free maps
        "event.callid == 'c' && event.rulesetver != '' && event.type.startsWith('com.')",  # extensions
        "acoustics.talk_time_s.customer > 10.0 && acoustics.channels[0].whatever > 1",
        "facets.emotions.exists(e, e.role == 'customer') && facets.languages.exists(l, l == 'en')",
        "data.facets.emotions.exists(e, e.x == 1)",  # under data: not checked
        "[{'label': 1}].exists(facets, facets.label == 1)",  # a bound name shadows the variable
        "data.a.exists(x, data.b.exists(y, x == y))",  # depth 2 is fine
    ],
)
def test_static_checks_leave_the_free_parts_alone(source: str) -> None:
    compile_condition(source)


def test_unknown_variables_respect_scopes() -> None:
    assert unknown_variables("[1].exists(x, x > 0) && x > 0", ["caption"]) == ["x"]
    assert unknown_variables("[1].exists(x, x > 0) && math.greatest([1]) == 1 && type(caption) == string", ["caption"]) == []


@pytest.mark.parametrize(
    ("source", "trigger"),
    [
        # A literal floor grades the keys: the largest of 0.25, 0.5, 0.75 not above it.
        ('emotion("customer", ["anger", "frustration"], 0.6)', {"emotion:anger@0.5", "emotion:frustration@0.5"}),
        ('emotion("any", "fear", 0.6) && context.queue == "x"', {"emotion:fear@0.5"}),
        ('emotion("any", "fear", 0.2)', {"emotion:fear"}),  # below the lowest grade
        ('emotion("any", "fear", 0.75)', {"emotion:fear@0.75"}),
        ('emotion("any", "fear", 0.99)', {"emotion:fear@0.75"}),
        ('emotion("any", "fear", -0.5)', {"emotion:fear"}),  # not a literal number
        ('emotion("any", "fear", context.floor)', {"emotion:fear"}),
        ('sound(["gunshot"], 0.5) || sound("siren", 0.3)', {"sound:gunshot@0.5", "sound:siren@0.25"}),
        ('sound(["gunshot"], 0.5) || acoustics.silence_ratio > 0.5', None),  # one side can hold alone
        ('!sound(["gunshot"], 0.5)', None),
        ('sound(["a", "b", "c"], 0.5) && emotion("any", "x", 0.1)', {"emotion:x"}),  # the narrower
        ('facets.emotions.exists(e, e.label == "anger" && e.intensity > 0.5)', {"emotion:anger@0.5"}),
        ('facets.emotions.exists(e, 0.8 <= e.intensity && e.role == "x" && e.label in ["a", "b"])', {"emotion:a@0.75", "emotion:b@0.75"}),
        ('facets.emotions.exists(e, e.label == "anger" && e.start > 0.5)', {"emotion:anger"}),  # not the graded field
        ('facets.sound_events.exists(s, s.label == "alarm" && s.confidence >= 0.3)', {"sound:alarm@0.25"}),
        ('facets.emotions.exists(e, e.label == "anger" || e.intensity > 0.5)', None),
        ('facets.emotions.exists(e, e.label == "anger")', {"emotion:anger"}),
        ('facets.sound_events.exists(s, "alarm" == s.label || s.label in ["siren"])', {"sound:alarm", "sound:siren"}),
        ('facets.emotions.exists(e, e.intensity > 0.5)', None),
        ('facets.emotions.all(e, e.label == "anger")', None),  # true on an empty list
        ('data.facets.emotions.exists(e, e.label == "anger")', None),
        ('any_words(caption, ["Close my account", "refund"])', {"word:close", "word:refund"}),
        ('all_words(caption, ["refund", "manager"])', {"word:refund"}),
        ('any_words(data.caption, ["refund"])', None),
        ('any_words(caption, labels)'.replace("labels", "context.words"), None),
        ("true", None),
    ],
)
def test_triggers(source: str, trigger: set[str] | None) -> None:
    analysis, findings = analyse(source)
    assert findings == []
    assert analysis.trigger == (frozenset(trigger) if trigger is not None else None)


@pytest.mark.parametrize(
    ("source", "item_fields"),
    [
        ('facets.emotions.exists(e, e.label == "anger" && e.intensity >= 0.6)', {("facets", "emotions"): {"label", "intensity"}}),
        ('facets.emotions.exists(e, has(e.role)) || facets.emotions.all(f, f.span != "")', {("facets", "emotions"): {"role", "span"}}),
        ("data.windows.map(w, w.caption).size() > 0", {("data", "windows"): {"caption"}}),
        ('facets.emotions.exists(e, e.tags.exists(t, t == "x"))', {("facets", "emotions"): {"tags"}}),
        ("facets.emotions.exists(e, [1].exists(e, e > 0))", {("facets", "emotions"): set()}),  # the inner e is not an item
        # Items used whole: compared, returned by filter(), or the list read outside a comprehension.
        ("facets.emotions.exists(e, e == {})", {}),
        ('facets.emotions.filter(e, e.label == "a")[0].intensity > 0.5', {}),
        ('facets.emotions.exists(e, e.label == "a") && size(facets.emotions) > 1', {}),
        ('facets.exists(k, k == "emotions")', {}),
    ],
)
def test_item_fields_name_the_fields_read_of_each_item(source: str, item_fields: dict[tuple[str, str], set[str]]) -> None:
    analysis, _ = analyse(source)
    assert {path: set(fields) for path, fields in analysis.item_fields.items()} == item_fields


def test_projections_name_the_fields_read() -> None:
    analysis, _ = analyse(
        "acoustics.silence_ratio > 0.1 && has(acoustics.dead_air_s) && size(context) > 0"
        " && facets.emotions.exists(e, e.label == 'x') && caption != ''"
    )
    assert dict(analysis.projections) == {
        "acoustics": frozenset({"silence_ratio", "dead_air_s"}),
        "context": None,  # used whole
        "facets": frozenset({"emotions"}),
        "caption": None,
    }
    assert analysis.variables == {"acoustics", "context", "facets", "caption"}
    assert dict(analyse("math.greatest([acoustics.a_b, 1.0]) > 0.0")[0].projections) == {"acoustics": frozenset({"a_b"})}


@pytest.mark.parametrize(
    ("source", "requires"),
    [
        ('context.queue == "q1" && emotion("customer", ["anger"], 0.5)', [{"context.queue:q1"}, {"emotion:anger@0.5"}]),
        ('has(context.tier) && context.tier == "gold" && context.queue == "q1"', [{"context.tier:gold"}, {"context.queue:q1"}]),
        ('context.queue == "q1" || emotion("customer", ["anger"], 0.5)', [{"context.queue:q1", "emotion:anger@0.5"}]),
        ("acoustics.silence_ratio > 0.4 && true", []),
    ],
)
def test_requires_is_every_conjunct_trigger(source: str, requires: list[set[str]]) -> None:
    analysis, _ = analyse(source)
    assert [set(keys) for keys in analysis.requires] == requires
    assert analysis.trigger is None or analysis.trigger in analysis.requires


@pytest.mark.parametrize(
    ("source", "floors"),
    [
        (
            'emotion("customer", ["anger", "frustration"], 0.6)',
            [FloorTest("emotion", "customer", frozenset({"anger", "frustration"}), 0.6)],
        ),
        (
            'emotion("any", "fear", 0.3) && sound(["alarm"], 0.5)',
            [FloorTest("emotion", None, frozenset({"fear"}), 0.3), FloorTest("sound", None, frozenset({"alarm"}), 0.5)],
        ),
        (
            'facets.emotions.exists(e, e.label == "anger" && e.intensity > 0.7 && e.role == "agent")',
            [FloorTest("emotion", "agent", frozenset({"anger"}), 0.7)],
        ),
        (
            'facets.sound_events.exists(s, s.label in ["alarm", "siren"] && 0.4 <= s.confidence)',
            [FloorTest("sound", None, frozenset({"alarm", "siren"}), 0.4)],
        ),
        ('emotion(context.role, ["anger"], 0.6)', []),  # the role is not a literal
        ('emotion("customer", ["anger"], context.floor)', []),
        ('!emotion("customer", ["anger"], 0.6)', []),
        ('emotion("customer", ["anger"], 0.6) || sound(["alarm"], 0.5)', []),  # neither is necessary
        ('facets.emotions.exists(e, e.label == "anger" || e.intensity > 0.7)', []),
    ],
)
def test_floors_are_the_necessary_facet_thresholds(source: str, floors: list[FloorTest]) -> None:
    analysis, findings = analyse(source)
    assert findings == []
    assert list(analysis.floors) == floors
