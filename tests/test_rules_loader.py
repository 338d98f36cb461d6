"""Rule loading: the good files load, every bad file fails with its exact message.

In the style of Alertmanager's config tests: one small file per mistake, the
full ``file:line:column: cause`` asserted, so a change in wording or position
is a conscious decision.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from services.rules import FileError, RuleSetError, lint, load_ruleset, rule_files

CASES = Path(__file__).parent / "rules_cases"
SHIPPED = Path(__file__).parent.parent / "router_rules"

CEL_EXPECTING = (
    "expecting {'[', '{', '(', '.', '-', '!', 'true', 'false', 'null', "
    "NUM_FLOAT, NUM_INT, NUM_UINT, STRING, BYTES, IDENTIFIER}"
)
KNOWN = "(known: event, data, facets, acoustics, context, caption)"
KNOWN_TEMPLATE = "(known: event, data, facets, acoustics, context, caption, match, rule)"

BAD = {
    "alias-bomb": ["bad/alias-bomb/rules.yaml:1:1: too large: more than 100,000 values once aliases are expanded"],
    "deep-nesting": ["bad/deep-nesting/rules.yaml:1:1: too large: lists and maps nested more than 64 deep"],
    "invalid-yaml": [
        (
            "bad/invalid-yaml/rules.yaml:7:51: invalid YAML: expected ',' or ']', but got '}' "
            "(while parsing a flow sequence at line 7, column 20)"
        ),
    ],
    "unknown-field": [
        "bad/unknown-field/rules.yaml:9:5: rules[0].contine: unknown field, did you mean 'continue'?",
    ],
    "duplicate-id": [
        (
            "bad/duplicate-id/b.yaml:11:9: rules[1].id: duplicate rule id 'dead-air' "
            "(first defined at bad/duplicate-id/a.yaml:5:9)"
        ),
    ],
    "cel-syntax": [
        f"bad/cel-syntax/rules.yaml:8:11: rules[0].when: CEL syntax error: 1:26: mismatched input '<EOF>' {CEL_EXPECTING}",
    ],
    "unknown-variable": [
        f"bad/unknown-variable/rules.yaml:8:11: rules[0].when: unknown CEL variable acoustic {KNOWN}",
    ],
    "unknown-function": [
        "bad/unknown-function/rules.yaml:8:11: rules[0].when: unknown CEL function toLower",
    ],
    "bad-mode": [
        "bad/bad-mode/rules.yaml:7:11: rules[0].mode: Input should be 'enforce', 'shadow' or 'disabled' (got 'maybe')",
    ],
    "unknown-action": [
        "bad/unknown-action/rules.yaml:11:9: rules[0].actions[1].page: unknown action (expected one of: route, alert, tag, emit)",
    ],
    "bad-queue": [
        (
            "bad/bad-queue/rules.yaml:10:24: rules[0].actions[0].route.queue: 'quality.review' is not a valid queue name "
            "(a NATS subject token: letters, digits, '-' and '_')"
        ),
    ],
    "unknown-placeholder": [
        (
            "bad/unknown-placeholder/rules.yaml:12:20: rules[0].actions[0].alert.summary: "
            f"unknown template variable 'ctx' in '{{{{ ctx.callid }}}}' {KNOWN_TEMPLATE}"
        ),
    ],
    "empty-file": [
        "bad/empty-file/rules.yaml:1:1: empty file: expected a RuleSet (apiVersion, kind, metadata, rules)",
    ],
    "unknown-field-path": [
        (
            "bad/unknown-field-path/rules.yaml:8:11: rules[0].when: 1:1: unknown field 'silence_ration' of acoustics, "
            "did you mean 'silence_ratio'?"
        ),
    ],
    "template-unknown-field": [
        (
            "bad/template-unknown-field/rules.yaml:12:20: rules[0].actions[0].alert.summary: unknown field "
            "'silense_ratio' of acoustics, did you mean 'silence_ratio'? in '{{ acoustics.silense_ratio }}'"
        ),
        (
            "bad/template-unknown-field/rules.yaml:13:24: rules[0].actions[0].alert.description: unknown field 'time' "
            "of match (known: kind, span, start, end, at, window, role, label, intensity, confidence, caption, windows, "
            "held_s) in '{{ match.time }}'"
        ),
    ],
    "emit-subject": [
        (
            "bad/emit-subject/rules.yaml:10:60: rules[0].actions[0].emit.subject: subject 'crm.callbacks' is outside "
            "the allowed subjects (rules.emit.>; setting LISTENPOST_RULES__EMIT_SUBJECTS)"
        ),
        (
            "bad/emit-subject/rules.yaml:16:60: rules[1].actions[0].emit.subject: 'rules.emit.*' is not a valid subject "
            "(dot-separated tokens of letters, digits, '-', '_'; no wildcards)"
        ),
    ],
    "no-owner": [
        "bad/no-owner/rules.yaml:5:9: rules[0].id: no owner: set `owner` on the rule, or `metadata.owner` for the file",
    ],
    "alert-hygiene": [
        "bad/alert-hygiene/rules.yaml:9:10: rules[0].for: `for` takes exactly one of windows, duration",
        (
            "bad/alert-hygiene/rules.yaml:14:19: rules[0].actions[0].alert.labels: label 'rule' is set by the engine "
            "(built-in labels: rule, severity)"
        ),
        (
            "bad/alert-hygiene/rules.yaml:15:28: rules[0].actions[0].alert.repeat_interval: repeat_interval moved to the "
            "notification routes: rules say what happened, the notification file says who hears about it and how often. "
            "Delete it here and set repeat_interval on the route that takes this rule's alerts in "
            "router_rules/notifications.yaml (docs/notifications.md#grouping)"
        ),
        "bad/alert-hygiene/rules.yaml:16:29: rules[0].actions[0].alert.rate_limit.max: Input should be greater than or equal to 1",
        (
            "bad/alert-hygiene/rules.yaml:21:21: rules[0].actions[1].alert.group_by: group_by moved to the notification "
            "routes: rules say what happened, the notification file says who hears about it and how often. Delete it "
            "here and set group_by on the route that takes this rule's alerts in router_rules/notifications.yaml "
            "(docs/notifications.md#grouping)"
        ),
    ],
    "helper-arity": [
        (
            "bad/helper-arity/rules.yaml:8:11: rules[0].when: 1:1: emotion() takes 3 arguments (role, labels, "
            "min_intensity), got 2; 1:35: facets.emotions is a list: it has no field 'label' (test its items with "
            "exists(), all() or filter())"
        ),
    ],
    # One broken rule must not hide the others' errors, nor a bad header the rules'.
    "many-errors": [
        "bad/many-errors/rules.yaml:1:13: apiVersion: Input should be 'listenpost/v1' (got 'listenpost/v2')",
        "bad/many-errors/rules.yaml:5:9: rules[0].id: 'Dead_Air' is not a valid rule id (lower-case letters, digits and '-')",
        "bad/many-errors/rules.yaml:7:15: rules[0].priority: Input should be a valid integer",
        "bad/many-errors/rules.yaml:12:5: rules[1].when: missing required field",
        "bad/many-errors/rules.yaml:15:14: rules[1].actions: List should have at least 1 item after validation, not 0",
        "bad/many-errors/rules.yaml:21:9: rules[2].actions[0]: an action has exactly one of route, alert, tag, emit (got route, tag)",
        (
            "bad/many-errors/rules.yaml:23:27: rules[2].actions[1].alert.severity: "
            "Input should be 'info', 'warning' or 'critical' (got 'page')"
        ),
        "bad/many-errors/rules.yaml:29:42: rules[3].actions[0].alert.summary: unbalanced '{{' or '}}' in template",
    ],
}


@pytest.fixture
def in_cases(monkeypatch: pytest.MonkeyPatch) -> None:
    # Relative paths keep the asserted messages short and machine-independent.
    monkeypatch.chdir(CASES)


def test_every_bad_case_is_listed() -> None:
    assert sorted(p.name for p in (CASES / "bad").iterdir()) == sorted(BAD)


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_case_fails_with_exact_errors(case: str, in_cases: None) -> None:
    with pytest.raises(RuleSetError) as caught:
        load_ruleset(Path("bad") / case)
    assert [str(e) for e in caught.value.errors] == BAD[case]
    assert str(caught.value).splitlines()[1:] == BAD[case]


@pytest.mark.parametrize("case", sorted(BAD))
def test_lint_reports_the_same_errors(case: str, in_cases: None) -> None:
    assert [str(e) for e in lint(Path("bad") / case)] == BAD[case]


def test_errors_carry_their_parts(in_cases: None) -> None:
    [error] = lint(Path("bad/cel-syntax"))
    assert isinstance(error, FileError)
    assert (error.path, error.line, error.column) == (Path("bad/cel-syntax/rules.yaml"), 8, 11)
    assert error.message.startswith("rules[0].when: CEL syntax error: 1:26: ")


def test_good_directory_loads(in_cases: None) -> None:
    assert lint(Path("good")) == []
    ruleset = load_ruleset(Path("good"))
    # priority first, then file name, then position in the file; crm-escalated has the default 100.
    assert [r.id for r in ruleset.rules] == ["dead-air", "gold-tier", "crm-escalated"]
    # test files, dot files and non-YAML files are not rule files
    assert [p.name for p in ruleset.files] == ["calls.yaml", "crm.yml"]
    dead_air = ruleset.rule("dead-air")
    assert dead_air.mode == "enforce" and not dead_air.spec.continue_
    assert [a.kind for a in dead_air.actions] == ["route", "alert", "tag"]
    gold = ruleset.rule("gold-tier")
    assert gold.mode == "shadow" and gold.spec.continue_
    assert ruleset.rule("crm-escalated").spec.match.sources == ["/crm/*"]
    assert len(ruleset.version) == 12 and int(ruleset.version, 16) >= 0


def test_version_follows_content_not_location(tmp_path: Path) -> None:
    first = load_ruleset(CASES / "good").version
    copy = shutil.copytree(CASES / "good", tmp_path / "copy")
    assert load_ruleset(copy).version == first
    (copy / "crm.yml").write_text((copy / "crm.yml").read_text().replace("escalated.", "escalated!"))
    assert load_ruleset(copy).version != first


def test_missing_directory_is_a_specific_error(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        load_ruleset(tmp_path / "nope")


def test_empty_directory_is_an_empty_ruleset(tmp_path: Path) -> None:
    ruleset = load_ruleset(tmp_path)
    assert ruleset.rules == () and ruleset.files == ()


def test_rule_files_skips_tests_and_hidden(tmp_path: Path) -> None:
    for name in ["b.yml", "a.yaml", "a_test.yaml", "a.test.yml", ".a.yaml", "notes.txt"]:
        (tmp_path / name).write_text("")
    assert [p.name for p in rule_files(tmp_path)] == ["a.yaml", "b.yml"]


def test_shipped_rules_load_cleanly() -> None:
    assert lint(SHIPPED) == []
    ruleset = load_ruleset(SHIPPED)
    ids = [r.id for r in ruleset.rules]
    assert {"dead-air", "gold-tier-priority", "angry-customer-to-escalations"} <= set(ids)
    assert {p.name for p in ruleset.files} == {"contact-centre.yaml", "emotional.yaml", "live.yaml", "quality.yaml", "security.yaml"}


def test_load_sources_matches_the_directory() -> None:
    from services.rules import load_sources

    ruleset = load_ruleset(SHIPPED)
    again = load_sources(dict(ruleset.sources), directory=SHIPPED)
    assert again.version == ruleset.version and [r.id for r in again.rules] == [r.id for r in ruleset.rules]


def test_emit_subjects_come_from_settings(tmp_path: Path) -> None:
    shutil.copy(CASES / "bad" / "emit-subject" / "rules.yaml", tmp_path / "rules.yaml")
    text = (tmp_path / "rules.yaml").read_text()
    (tmp_path / "rules.yaml").write_text(text[: text.index("  - id: wildcard")])
    assert lint(tmp_path, emit_subjects=["crm.>"]) == []
    assert len(lint(tmp_path)) == 1


def test_exported_json_schema_is_current_and_validates_the_shipped_rules() -> None:
    import json

    import jsonschema
    from ruamel.yaml import YAML

    from services.rules.schema import json_schema_text

    committed = (SHIPPED / "rules.schema.json").read_text()
    assert committed == json_schema_text(), "run `listenpost rules schema -o router_rules/rules.schema.json`"
    schema = json.loads(committed)
    for path in rule_files(SHIPPED):
        jsonschema.validate(YAML(typ="safe").load(path.read_text()), schema)
    broken = YAML(typ="safe").load((CASES / "bad" / "unknown-field" / "rules.yaml").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_notification_files_beside_the_rules_are_not_rule_files(tmp_path: Path) -> None:
    from services.rules import load_sources

    shutil.copy(CASES / "good" / "calls.yaml", tmp_path)
    notifications = (SHIPPED / "notifications.yaml").read_text()
    (tmp_path / "notifications.yaml").write_text(notifications)
    (tmp_path / "quoted.yml").write_text('apiVersion: listenpost/v1\nkind: "Notifications"  # who hears\nroute: {}\n')
    assert [p.name for p in rule_files(tmp_path)] == ["calls.yaml"]
    assert lint(tmp_path) == []
    ruleset = load_ruleset(tmp_path)
    assert [p.name for p in ruleset.files] == ["calls.yaml"] and sorted(ruleset.sources) == ["calls.yaml"]
    # A last-good snapshot or a chosen list that holds one skips it too, with the same version.
    again = load_sources({"calls.yaml": (tmp_path / "calls.yaml").read_text(), "notifications.yaml": notifications})
    assert again.version == ruleset.version and [p.name for p in again.files] == ["calls.yaml"]
    # Any other kind is read as a rule file, and says why it is not one.
    (tmp_path / "typo.yaml").write_text("apiVersion: listenpost/v1\nkind: Notification\nroute: {}\n")
    assert [str(e) for e in lint(tmp_path)] == [
        f"{tmp_path}/typo.yaml:1:1: metadata: missing required field",
        f"{tmp_path}/typo.yaml:1:1: rules: missing required field",
        f"{tmp_path}/typo.yaml:2:7: kind: Input should be 'RuleSet' (got 'Notification')",
        f"{tmp_path}/typo.yaml:3:1: route: unknown field, did you mean 'rules'?",
    ]
