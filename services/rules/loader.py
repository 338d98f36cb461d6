"""Load a rule directory: strict parse of every file, then cross-reference checks.

Modelled on Alertmanager's config package: each file is parsed and validated
on its own (YAML, then schema, then CEL and templates), then the checks that
span files (duplicate rule ids) run over the whole set. Every error found is
reported with file:line:column, not just the first one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from services.dsl.errors import FileError
from services.dsl.yaml_source import Loc, YamlDocument, parse_yaml, schema_errors
from services.rules.decisions import DEFAULT_EMIT_SUBJECTS, subject_allowed
from services.rules.errors import RuleSetError
from services.rules.expr import DataTemplate, ExpressionError, Template, compile_condition
from services.rules.ruleset import CompiledAction, CompiledRule, RuleSet
from services.rules.schema import AlertSpec, EmitSpec, RuleFileSpec, RuleSpec

RULE_SUFFIXES = (".yaml", ".yml")
# Test files (given events, expected decisions) sit beside the rules, in the
# spirit of promtool's rule tests; they are not rules.
TEST_SUFFIXES = ("_test.yaml", "_test.yml", ".test.yaml", ".test.yml")
VERSION_LENGTH = 12
#: Files of other kinds that live beside the rules and are not rules: the notification
#: routing tree (services/notify) reads ``kind: Notifications``.
OTHER_KINDS = frozenset({"Notifications"})
# A top-level `kind:` line: enough to tell the kind without parsing the file (a file that
# hides its kind in flow style is read as a rule file, and its errors say why).
_KIND_LINE = re.compile(r"^kind:[ \t]*(['\"]?)([A-Za-z][A-Za-z0-9]*)\1[ \t]*(?:#.*)?$", re.MULTILINE)


def declared_kind(text: str) -> str | None:
    """The ``kind`` a YAML file declares on a top-level line, if any."""
    found = _KIND_LINE.search(text)
    return found.group(2) if found else None


def _other_kind(path: Path) -> bool:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False  # read as a rule file: its error is reported there
    return declared_kind(text) in OTHER_KINDS


def rule_files(directory: Path) -> list[Path]:
    """The rule files of a directory, in the order that breaks priority ties: YAML files that
    are neither tests nor files of another kind (``kind: Notifications``)."""
    if not directory.is_dir():
        raise NotADirectoryError(f"rules directory {directory} does not exist or is not a directory")
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file()
        and p.name.endswith(RULE_SUFFIXES)
        and not p.name.endswith(TEST_SUFFIXES)
        and not p.name.startswith(".")  # editors' temp and swap files
        and not _other_kind(p)
    )


def load_ruleset(directory: Path, *, emit_subjects: Sequence[str] = DEFAULT_EMIT_SUBJECTS) -> RuleSet:
    """Load and compile every rule file in ``directory``.

    ``emit_subjects``: subject patterns (below the prefix) that ``emit`` actions may use.
    Raises :class:`RuleSetError` with all errors of all files, or
    ``NotADirectoryError`` when the directory is missing.
    """
    ruleset, errors = _load(_read(directory), emit_subjects)
    if errors:
        raise RuleSetError(errors)
    return ruleset


def load_sources(
    sources: Mapping[str, str], *, directory: Path = Path("."), emit_subjects: Sequence[str] = DEFAULT_EMIT_SUBJECTS
) -> RuleSet:
    """Load rule files given as name -> text (a replica's last good rules, kept in NATS KV)."""
    files = [(directory / name, text.encode()) for name, text in sorted(sources.items())]
    ruleset, errors = _load(files, emit_subjects)
    if errors:
        raise RuleSetError(errors)
    return ruleset


def load_files(paths: Sequence[Path], *, emit_subjects: Sequence[str] = DEFAULT_EMIT_SUBJECTS) -> RuleSet:
    """Load a chosen list of rule files (``rules test`` with ``rule_files:``)."""
    ruleset, errors = _load([(path, path.read_bytes()) for path in paths], emit_subjects)
    if errors:
        raise RuleSetError(errors)
    return ruleset


def lint(directory: Path, *, emit_subjects: Sequence[str] = DEFAULT_EMIT_SUBJECTS) -> list[FileError]:
    """Every error in the rule directory, sorted by file, line and column; empty when it loads."""
    return _load(_read(directory), emit_subjects)[1]


def _read(directory: Path) -> list[tuple[Path, bytes]]:
    return [(path, path.read_bytes()) for path in rule_files(directory)]


def _load(files: list[tuple[Path, bytes]], emit_subjects: Sequence[str]) -> tuple[RuleSet, list[FileError]]:
    errors: list[FileError] = []
    loaded: list[tuple[CompiledRule, YamlDocument]] = []
    digest = hashlib.sha256()
    sources: dict[str, str] = {}
    # Not rules (notifications.yaml in a last-good snapshot or in a test's chosen list).
    files = [(path, raw) for path, raw in files if declared_kind(raw.decode("utf-8", errors="replace")) not in OTHER_KINDS]
    for path, raw in files:
        # Names are hashed too: renaming a file can reorder priority ties.
        digest.update(path.name.encode() + b"\0" + raw + b"\0")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            errors.append(FileError(path, 1, 1, f"not UTF-8 text: {exc.reason} at byte {exc.start}"))
            continue
        sources[path.name] = text
        rules, file_errors = load_file(path, text, emit_subjects=emit_subjects)
        loaded.extend(rules)
        errors.extend(file_errors)
    errors.extend(_duplicate_ids(loaded))
    files_order = {path: i for i, (path, _) in enumerate(files)}
    ordered = sorted((rule for rule, _ in loaded), key=lambda r: (r.spec.priority, files_order[r.path], r.position))
    ruleset = RuleSet(
        version=digest.hexdigest()[:VERSION_LENGTH],
        rules=tuple(ordered),
        files=tuple(path for path, _ in files),
        sources=sources,
    )
    return ruleset, sorted(errors, key=FileError.sort_key)


def load_file(
    path: Path, text: str, *, emit_subjects: Sequence[str] = DEFAULT_EMIT_SUBJECTS
) -> tuple[list[tuple[CompiledRule, YamlDocument]], list[FileError]]:
    """One file: the rules that compiled (with their document, for later checks) and its errors."""
    try:
        doc = parse_yaml(path, text)
    except FileError as exc:
        return [], [exc]
    if doc.data is None:
        return [], [FileError(path, 1, 1, "empty file: expected a RuleSet (apiVersion, kind, metadata, rules)")]
    try:
        header = RuleFileSpec.model_validate(doc.data)
    except ValidationError as exc:
        errors = schema_errors(doc, exc, (), RuleFileSpec)
        # Still check the rules if the list itself is fine: report everything at once.
        raw_rules = doc.data.get("rules") if isinstance(doc.data, dict) else None
        if not isinstance(raw_rules, list):
            return [], errors
        metadata = doc.data.get("metadata") if isinstance(doc.data, dict) else None
        file_owner = metadata.get("owner") if isinstance(metadata, dict) else None
    else:
        errors = []
        raw_rules = header.rules
        file_owner = header.metadata.owner

    rules: list[tuple[CompiledRule, YamlDocument]] = []
    for index, raw in enumerate(raw_rules):
        loc: Loc = ("rules", index)
        try:
            spec = RuleSpec.model_validate(raw)
        except ValidationError as exc:
            errors.extend(schema_errors(doc, exc, loc, RuleSpec))
            continue
        rule, rule_errors = _compile_rule(doc, loc, index, spec, file_owner, emit_subjects)
        errors.extend(rule_errors)
        if rule is not None:
            rules.append((rule, doc))
    return rules, errors


def _compile_rule(
    doc: YamlDocument, loc: Loc, index: int, spec: RuleSpec, file_owner: Any, emit_subjects: Sequence[str]
) -> tuple[CompiledRule | None, list[FileError]]:
    errors: list[FileError] = []
    condition = None
    try:
        condition = compile_condition(spec.when)
    except ExpressionError as exc:
        errors.append(doc.error((*loc, "when"), str(exc)))
    owner = spec.owner or (file_owner if isinstance(file_owner, str) and file_owner else None)
    if owner is None:
        errors.append(doc.error((*loc, "id"), "no owner: set `owner` on the rule, or `metadata.owner` for the file"))

    actions: list[CompiledAction] = []
    for i, action in enumerate(spec.actions):
        action_loc = (*loc, "actions", i, action.kind)
        if isinstance(action.spec, EmitSpec):
            if not subject_allowed(action.spec.subject, list(emit_subjects)):
                errors.append(
                    doc.error(
                        (*action_loc, "subject"),
                        f"subject {action.spec.subject!r} is outside the allowed subjects "
                        f"({', '.join(emit_subjects) or 'none'}; setting LISTENPOST_RULES__EMIT_SUBJECTS)",
                    )
                )
            data = _data_template(doc, (*action_loc, "data"), action.spec.data, errors)
            if data is not None:
                actions.append(CompiledAction(index=i, spec=action, data=data))
            continue
        if not isinstance(action.spec, AlertSpec):
            actions.append(CompiledAction(index=i, spec=action))
            continue
        summary = _template(doc, (*action_loc, "summary"), action.spec.summary, errors)
        description = (
            _template(doc, (*action_loc, "description"), action.spec.description, errors)
            if action.spec.description is not None
            else None
        )
        labels = [
            (name, _template(doc, (*action_loc, "labels", name), value, errors))
            for name, value in sorted(action.spec.labels.items())
        ]
        compiled_labels = tuple((name, t) for name, t in labels if t is not None)
        if summary is not None and len(compiled_labels) == len(labels):
            actions.append(
                CompiledAction(index=i, spec=action, summary=summary, description=description, labels=compiled_labels)
            )
    if errors or condition is None or owner is None:
        return None, errors
    rule = CompiledRule(spec=spec, path=doc.path, position=index, condition=condition, actions=tuple(actions), owner=owner)
    return rule, []


def _data_template(doc: YamlDocument, loc: Loc, value: Any, errors: list[FileError]) -> DataTemplate | None:
    before = len(errors)

    def check(v: Any, at: Loc) -> None:
        if isinstance(v, str):
            _template(doc, at, v, errors)
        elif isinstance(v, dict):
            for key, item in v.items():
                check(item, (*at, key))
        elif isinstance(v, list):
            for j, item in enumerate(v):
                check(item, (*at, j))

    check(value, loc)
    if len(errors) > before:
        return None
    try:
        return DataTemplate.parse(value)
    except ExpressionError as exc:
        errors.append(doc.error(loc, str(exc)))
        return None


def _template(doc: YamlDocument, loc: Loc, source: str, errors: list[FileError]) -> Template | None:
    try:
        return Template.parse(source)
    except ExpressionError as exc:
        errors.append(doc.error(loc, str(exc)))
        return None


def _duplicate_ids(loaded: list[tuple[CompiledRule, YamlDocument]]) -> list[FileError]:
    # Ids name decisions, metrics and silences: one id must mean one rule,
    # whichever file it lives in.
    first: dict[str, tuple[CompiledRule, YamlDocument]] = {}
    errors = []
    for rule, doc in loaded:
        if rule.id not in first:
            first[rule.id] = (rule, doc)
            continue
        other, other_doc = first[rule.id]
        where = other_doc.position(("rules", other.position, "id"))
        errors.append(
            doc.error(
                ("rules", rule.position, "id"),
                f"duplicate rule id {rule.id!r} (first defined at {other.path}:{where.line}:{where.column})",
            )
        )
    return errors


# --- pydantic errors -> file positions ------------------------------------------


