"""``listenpost rules test``: unit tests for rules, in the spirit of ``promtool test rules``.

A test file sits next to the rule files (``<name>_test.yaml``)::

    rule_files: [emotional.yaml]        # default: every rule file of the directory
    tests:
      - name: an angry customer is escalated
        silences:                       # optional: active during the test
          - {matchers: ["team=qa"], starts: 0s, ends: 1h}
        steps:
          - at: 0s                      # time since the test began (the engine's clock)
            event:
              type: com.listenpost.audio.captioned    # the default
              data:                     # merged over a neutral captioned event (see CAPTIONED)
                context: {callid: c-1}
                facets:
                  emotions: [{role: customer, label: anger, intensity: 0.8, window: 0, start: 3, end: 9, span: "..."}]
            expect:
              routes: [escalations]
              alerts: [{rule: angry-customer-to-escalations, severity: warning, summary: "..."}]

An alert expectation may also name the ``receivers`` the alert reaches in the notification
routing tree (``notifications:`` at the top of the test file names that file, relative to the
test file; default ``notifications.yaml`` beside it), as ``amtool config routes test`` would
print them::

              alerts: [{rule: gunshot-or-explosion, receivers: [alertmanager, security-pagerduty, security-slack]}]

The rules may not import the notification package (a sibling deployment package): the
``listenpost`` entry point lends the routing as a :data:`NotifyLoader`.

Each step's ``expect`` is strict like promtool's: ``routes``, ``alerts``,
``tags``, ``emits``, ``shadow`` and ``errors`` not listed are expected to be
empty. ``suppressed`` and ``matches`` are checked only when given. The test
runs the engine's own code (:class:`RulesProcessor`) on an in-memory store
with a virtual clock, so debounce, rate limits and silences behave as in
production. Every alert a rule raises is expected: grouping and repeats are the
notifier's (the routes of the notification file), tested with ``notify`` tests.
"""

from __future__ import annotations

import copy
import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.dsl.errors import FileError
from services.dsl.yaml_source import parse_yaml, schema_errors
from services.rules.alerting import Matcher, alert_labels
from services.rules.decisions import DEFAULT_EMIT_SUBJECTS, DEFAULT_PREFIX, Decision
from services.rules.engine import RulesProcessor
from services.rules.errors import RuleSetError
from services.rules.limits import DEFAULT_LIMITS
from services.rules.loader import TEST_SUFFIXES, load_files, rule_files
from services.rules.ruleset import RuleSet
from services.rules.schema import Duration, parse_duration
from services.rules.state import memory_stores

CAPTIONED_TYPE = "com.listenpost.audio.captioned"
#: The neutral captioned event a test's `data` is merged over (maps merge, lists and values replace).
CAPTIONED: dict[str, Any] = {
    "source_event": {"id": "test-input", "source": "/test", "type": "com.listenpost.audio.submitted"},
    "context": {},
    "audio": {"duration_s": 60.0, "sample_rate": 16000, "channels": 2},
    "windows": [],
    "caption": "",
    "facets": {"emotions": [], "sound_events": [], "languages": ["en"], "speech_present": True, "music_present": False},
    "acoustics": {
        "duration_s": 60.0, "silence_ratio": 0.1, "longest_silence_s": 2.0, "dead_air_s": 2.0, "peak_dbfs": -6.0,
        "speech_ratio": 0.8, "overtalk_ratio": 0.02, "overtalk_count": 1, "clipping_ratio": 0.0,
        "loudness_lufs": -20.0, "snr_db": 30.0, "talk_time_s": {"agent": 25.0, "customer": 23.0}, "channels": [],
    },
    "model": "test",
    "engine": "test",
    "timings": {},
}  # fmt: skip
#: An alert's labels (with ``rule`` and ``severity``) -> the receivers it reaches, in tree order.
NotifyRoutes = Callable[[Mapping[str, str]], list[str]]
#: A notification file -> its routing; raises ``ValueError`` (the file's errors) when it does not load.
NotifyLoader = Callable[[Path], NotifyRoutes]
#: The notification file a test file uses unless it names one (``notifications:``).
DEFAULT_NOTIFICATIONS = "notifications.yaml"
#: The virtual clock's start (2024-01-01T00:00:00Z): tests do not depend on today.
EPOCH = 1_704_067_200.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class TestEvent(_Strict):
    __test__ = False  # not a pytest class

    type: str = CAPTIONED_TYPE
    source: str = "/listenpost/test"
    id: str | None = None
    extensions: dict[str, str] = Field(default_factory=dict)
    data: dict[str, Any] | None = None


class AlertExpectation(_Strict):
    rule: str | None = None
    severity: str | None = None
    summary: str | None = None
    description: str | None = None
    labels: dict[str, str] | None = None
    callid: str | None = None
    receivers: list[str] | None = None  # in the notification routing tree, in order


class RouteExpectation(_Strict):
    queue: str
    rule: str | None = None


class EmitExpectation(_Strict):
    type: str
    subject: str | None = None  # below the prefix
    data: dict[str, Any] | None = None


class ErrorExpectation(_Strict):
    rule: str
    message: str | None = None  # a substring of the error


class SuppressedExpectation(_Strict):
    rule: str
    reason: str


class Expect(_Strict):
    routes: list[str | RouteExpectation] = Field(default_factory=list)
    alerts: list[AlertExpectation] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    emits: list[EmitExpectation] = Field(default_factory=list)
    shadow: list[str] = Field(default_factory=list)
    errors: list[str | ErrorExpectation] = Field(default_factory=list)
    suppressed: list[SuppressedExpectation] | None = None
    matches: list[str] | None = None


class Step(_Strict):
    at: Duration = "0s"
    event: TestEvent
    expect: Expect = Field(default_factory=Expect)

    @model_validator(mode="before")
    @classmethod
    def _no_flush(cls, data: Any) -> Any:
        if isinstance(data, dict) and "flush" in data:
            raise ValueError(
                "flush steps are gone: the rules engine no longer groups alerts (group_by and the group timings "
                "moved to the notification routes); expect each raised alert at its event's step instead"
            )
        return data


class TestSilence(_Strict):
    __test__ = False  # not a pytest class

    matchers: list[str] = Field(min_length=1)
    starts: Duration = "0s"
    ends: Duration


class TestCase(_Strict):
    __test__ = False  # not a pytest class

    name: str = Field(min_length=1)
    silences: list[TestSilence] = Field(default_factory=list)
    steps: list[Step] = Field(min_length=1)


class RuleTestFile(_Strict):
    rule_files: list[str] | None = None
    notifications: str | None = Field(default=None, min_length=1, description="Relative to the test file.")
    tests: list[TestCase]

    def expects_receivers(self) -> bool:
        return any(a.receivers is not None for case in self.tests for step in case.steps for a in step.expect.alerts)


@dataclass
class CaseResult:
    file: Path
    name: str
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class FileResult:
    file: Path
    errors: list[str] = field(default_factory=list)  # the test file or its rules did not load
    cases: list[CaseResult] = field(default_factory=list)


def find_test_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(TEST_SUFFIXES))


def merge(base: Any, override: Any) -> Any:
    """Maps merge recursively; anything else in ``override`` replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = merge(base.get(key), value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(override)


async def run_directory(
    directory: Path,
    *,
    emit_subjects: Sequence[str] = DEFAULT_EMIT_SUBJECTS,
    prefix: str = DEFAULT_PREFIX,
    notify: NotifyLoader | None = None,
) -> list[FileResult]:
    return [
        await run_file(path, directory, emit_subjects=emit_subjects, prefix=prefix, notify=notify)
        for path in find_test_files(directory)
    ]


async def run_file(
    path: Path,
    directory: Path,
    *,
    emit_subjects: Sequence[str] = DEFAULT_EMIT_SUBJECTS,
    prefix: str = DEFAULT_PREFIX,
    notify: NotifyLoader | None = None,
) -> FileResult:
    result = FileResult(file=path)
    try:
        doc = parse_yaml(path, path.read_text(encoding="utf-8"))
        spec = RuleTestFile.model_validate(doc.data)
    except FileError as exc:
        result.errors.append(str(exc))
        return result
    except ValidationError as exc:
        result.errors.extend(str(e) for e in schema_errors(doc, exc, (), RuleTestFile))
        return result
    try:
        files = _select_rule_files(path, directory, spec.rule_files)
        ruleset = load_files(files, emit_subjects=emit_subjects)
    except (RuleSetError, FileNotFoundError, NotADirectoryError) as exc:
        result.errors.append(f"{path}: rules did not load: {exc}")
        return result
    routes: NotifyRoutes | None = None
    if spec.expects_receivers():
        notifications = path.parent / (spec.notifications or DEFAULT_NOTIFICATIONS)
        if notify is None:
            result.errors.append(f"{path}: alerts expect receivers, but no notification routing is lent here (run `listenpost rules test`)")
            return result
        try:
            routes = notify(notifications)
        except ValueError as exc:
            result.errors.append(f"{path}: notifications did not load: {exc}")
            return result
    for case in spec.tests:
        result.cases.append(await run_case(path, ruleset, case, prefix=prefix, receivers=routes))
    return result


def _select_rule_files(test_file: Path, directory: Path, patterns: list[str] | None) -> list[Path]:
    available = rule_files(directory)
    if patterns is None:
        return available
    chosen: list[Path] = []
    for pattern in patterns:
        hits = [p for p in available if fnmatch.fnmatchcase(p.name, pattern)]
        if not hits:
            raise FileNotFoundError(f"rule_files: no rule file in {directory} matches {pattern!r}")
        chosen.extend(h for h in hits if h not in chosen)
    return chosen


async def run_case(
    path: Path, ruleset: RuleSet, case: TestCase, *, prefix: str = DEFAULT_PREFIX, receivers: NotifyRoutes | None = None
) -> CaseResult:
    result = CaseResult(file=path, name=case.name)
    clock = [EPOCH]
    processor = RulesProcessor(memory_stores(), prefix=prefix, limits=DEFAULT_LIMITS, clock=lambda: clock[0], silence_refresh_s=0.0)
    for silence in case.silences:
        try:
            matchers = [Matcher.parse(m) for m in silence.matchers]
        except ValueError as exc:
            result.failures.append(f"silence: {exc}")
            return result
        await processor.silences.add(
            matchers, starts_at=EPOCH + parse_duration(silence.starts), ends_at=EPOCH + parse_duration(silence.ends), now=EPOCH
        )
    slug = re.sub(r"[^a-z0-9]+", "-", case.name.lower()).strip("-") or "test"
    for number, step in enumerate(case.steps, start=1):
        clock[0] = EPOCH + parse_duration(step.at)
        where = f"step {number} (event at {step.at})"
        published: list[Decision] = []
        suppressed: list[tuple[str, str]] = []
        matches: list[str] = []
        attributes, data = _event(step.event, f"{slug}-{number}", clock[0])
        outcome = await processor.process(ruleset, attributes, data, now=clock[0])
        published.extend(outcome.publish)
        suppressed = [(s.decision.rule_id, s.reason) for s in outcome.suppressed]
        if outcome.evaluation is not None:
            matches = [m.rule_id for m in outcome.evaluation.matches if m.mode == "enforce"]
        problems = compare(step.expect, published, suppressed, matches, prefix, receivers=receivers)
        result.failures.extend(f"{where}: {problem}" for problem in problems)
    return result


def _event(event: TestEvent, default_id: str, now: float) -> tuple[dict[str, Any], Any]:
    data: Any = event.data
    if event.type == CAPTIONED_TYPE:
        data = merge(CAPTIONED, event.data or {})
    attributes = {
        "specversion": "1.0",
        "id": event.id or default_id,
        "source": event.source,
        "type": event.type,
        "time": datetime.fromtimestamp(now, tz=UTC).isoformat().replace("+00:00", "Z"),
        **event.extensions,
    }
    return attributes, data


def compare(
    expect: Expect,
    published: list[Decision],
    suppressed: list[tuple[str, str]],
    matches: list[str],
    prefix: str,
    *,
    receivers: NotifyRoutes | None = None,
) -> list[str]:
    problems: list[str] = []

    def check(what: str, expected: list[Any], got: list[Any], same: Any) -> None:
        if len(expected) != len(got) or not all(same(e, g) for e, g in zip(expected, got, strict=False)):
            problems.append(f"{what}: expected {_show(expected)}, got {_show(got)}")

    routes = [d for d in published if d.kind == "route"]
    check(
        "routes",
        [e if isinstance(e, str) else e.model_dump(exclude_none=True) for e in expect.routes],
        [{"queue": d.data["queue"], "rule": d.rule_id} for d in routes],
        lambda e, g: (e == g["queue"]) if isinstance(e, str) else all(g.get(k) == v for k, v in e.items()),
    )
    alerts = [d for d in published if d.kind == "alert"]
    check(
        "alerts",
        [e.model_dump(exclude_none=True) for e in expect.alerts],
        [_alert_view(d, receivers) for d in alerts],
        lambda e, g: all(g.get(k) == v for k, v in e.items()),
    )
    check("tags", list(expect.tags), [t for d in published if d.kind == "tag" for t in d.data["tags"]], lambda e, g: e == g)
    emits = [d for d in published if d.kind == "emit"]
    check(
        "emits",
        [e.model_dump(exclude_none=True) for e in expect.emits],
        [{"type": d.type, "subject": d.subject.removeprefix(prefix + "."), "data": d.data} for d in emits],
        lambda e, g: all(g.get(k) == v for k, v in e.items()),
    )
    check("shadow", list(expect.shadow), [d.rule_id for d in published if d.kind == "shadow"], lambda e, g: e == g)
    errors = [(d.rule_id, str(d.data.get("error", ""))) for d in published if d.kind == "error"]
    check(
        "errors",
        [e if isinstance(e, str) else e.model_dump(exclude_none=True) for e in expect.errors],
        [{"rule": r, "message": m} for r, m in errors],
        lambda e, g: e == g["rule"] if isinstance(e, str) else e["rule"] == g["rule"] and e.get("message", "") in g["message"],
    )
    if expect.suppressed is not None:
        check(
            "suppressed",
            [e.model_dump() for e in expect.suppressed],
            [{"rule": r, "reason": why} for r, why in suppressed],
            lambda e, g: e == g,
        )
    if expect.matches is not None:
        check("matches", list(expect.matches), matches, lambda e, g: e == g)
    return problems


def _alert_view(d: Decision, receivers: NotifyRoutes | None = None) -> dict[str, Any]:
    view = {
        "rule": d.rule_id,
        "severity": d.data.get("severity"),
        "summary": d.data.get("summary"),
        "description": d.data.get("description"),
        "labels": d.data.get("labels"),
    }
    if d.data.get("callid") is not None:
        view["callid"] = d.data["callid"]
    if receivers is not None:
        view["receivers"] = receivers(alert_labels(d))
    return view


def _show(items: list[Any]) -> str:
    import json

    return json.dumps(items, sort_keys=True, default=str)


__all__ = [
    "CAPTIONED",
    "CaseResult",
    "FileResult",
    "NotifyLoader",
    "NotifyRoutes",
    "RuleTestFile",
    "merge",
    "run_directory",
    "run_file",
    "find_test_files",
]

