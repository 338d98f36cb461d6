"""``listenpost rules ...``: commands for rule authors and operators.

    lint [DIR]                   check rule files: file:line:column: cause
    test [DIR]                   run the *_test.yaml files next to the rules
    explain EVENT.json           which rules match one event, and why the others do not
    backtest --since 24h         what the rules on disk would have done with stored history
    status                       the running engine's rules version, errors and counters; the notifier's receivers
    silence add|list|expire      silence alerts by label matchers, with an expiry
    schema                       the JSON Schema of rule files, for editors
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from services.rules.errors import RuleSetError
from services.rules.limits import Limits
from services.rules.loader import lint
from services.rules.schema import json_schema_text, parse_duration

if TYPE_CHECKING:
    from services.rules.testing import NotifyLoader

rules_app = typer.Typer(help="Routing and alert rules.", no_args_is_help=True)
silence_app = typer.Typer(help="Silence alerts for a while (stored in NATS KV, shared by every replica).", no_args_is_help=True)
rules_app.add_typer(silence_app, name="silence")
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

DirArg = Annotated[Path, typer.Argument(help="Rule directory.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
NatsOpt = Annotated[str | None, typer.Option("--nats", help="NATS URL (default: settings, then the running `listenpost serve`).")]
T = TypeVar("T")


@dataclass(frozen=True)
class RulesCliHooks:
    """What the ``listenpost`` entry point lends these commands from packages the rules may not
    import (the layers keep deployment packages apart); found as the click context's object."""

    notify: NotifyLoader | None = None  # `rules test`: the receivers an alert reaches


def _settings() -> Any:
    from services.settings import Settings

    return Settings()


def _emit_subjects() -> list[str]:
    return list(_settings().rules.emit_subjects)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


@rules_app.command("lint")
def rules_lint(directory: DirArg = Path("router_rules")) -> None:
    """Check rule files; print every error as file:line:column: cause."""
    try:
        errors = lint(directory, emit_subjects=_emit_subjects())
    except NotADirectoryError as exc:
        err.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(2) from exc
    for error in errors:
        err.print(str(error), highlight=False, markup=False)
    if errors:
        raise typer.Exit(1)
    console.print(f"{directory}: ok")


@rules_app.command("test")
def rules_test(ctx: typer.Context, directory: DirArg = Path("router_rules"), as_json: JsonOpt = False) -> None:
    """Run the rule tests (*_test.yaml) next to the rule files; exit 1 on any failure."""
    from services.rules.testing import run_directory

    settings = _settings()
    if not directory.is_dir():
        err.print(f"{directory}: not a directory", highlight=False, markup=False)
        raise typer.Exit(2)
    hooks = ctx.find_object(RulesCliHooks)
    results = _run(
        run_directory(
            directory,
            emit_subjects=settings.rules.emit_subjects,
            prefix=settings.nats.subject_prefix,
            notify=hooks.notify if hooks is not None else None,
        )
    )
    failed = sum(len(r.errors) for r in results) + sum(1 for r in results for c in r.cases if not c.passed)
    total = sum(len(r.cases) for r in results)
    if as_json:
        _print_json(
            {
                "files": [
                    {
                        "file": str(r.file),
                        "errors": r.errors,
                        "tests": [{"name": c.name, "passed": c.passed, "failures": c.failures} for c in r.cases],
                    }
                    for r in results
                ],
                "tests": total,
                "failed": failed,
            }
        )
    else:
        for result in results:
            for error in result.errors:
                err.print(f"[red]ERROR[/] {error}", highlight=False)
            for case in result.cases:
                mark = "[green]PASS[/]" if case.passed else "[red]FAIL[/]"
                console.print(f"{mark} {result.file.name}: {case.name}", highlight=False)
                for failure in case.failures:
                    console.print(f"       {failure}", highlight=False, markup=False)
        if not results:
            console.print(f"{directory}: no test files (*_test.yaml)")
        console.print(f"{total} tests, {failed} failed" + ("" if failed else ": ok"))
    if failed:
        raise typer.Exit(1)


@rules_app.command("explain")
def rules_explain(
    event_file: Annotated[Path, typer.Argument(help="A CloudEvent (structured JSON) or captioned event data.")],
    rules: Annotated[Path, typer.Option("--rules", help="Rule directory.")] = Path("router_rules"),
    as_json: JsonOpt = False,
) -> None:
    """Which rules match one event; for the others, the clause that failed."""
    from services.rules.explain import event_from_json, explain
    from services.rules.loader import load_ruleset

    settings = _settings()
    try:
        value = json.loads(event_file.read_text())
    except (OSError, ValueError) as exc:
        err.print(f"{event_file}: {exc}", highlight=False, markup=False)
        raise typer.Exit(2) from exc
    try:
        ruleset = load_ruleset(rules, emit_subjects=settings.rules.emit_subjects)
    except (RuleSetError, NotADirectoryError) as exc:
        err.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(1) from exc
    attributes, data = event_from_json(value)
    report = explain(ruleset, attributes, data, prefix=settings.nats.subject_prefix, limits=Limits.from_settings(settings.rules))
    if as_json:
        _print_json(report.to_json())
        return
    console.print(
        f"rules {report.ruleset_version} on {attributes.get('type')} {attributes.get('id')} "
        f"(source {attributes.get('source')})",
        highlight=False,
    )
    colours = {"matched": "green", "shadow": "cyan", "error": "red", "pending": "yellow"}
    width = max((len(item.rule_id) for item in report.rules), default=10)
    for item in report.rules:
        colour = colours.get(item.status, "dim" if item.status in ("not applicable", "not reached", "disabled") else "")
        status = f"{item.status:<14}"
        status = f"[{colour}]{status}[/]" if colour else status
        mode = "" if item.mode == "enforce" else f" ({item.mode})"
        console.print(f"{item.priority:>5}  {item.rule_id:<{width}}  {status} ", end="", highlight=False)
        if item.actions:
            console.print("; ".join(_action_text(a) for a in item.actions) + mode, highlight=False, markup=False)
        else:
            console.print(item.reason + mode, highlight=False, markup=False)
        if item.evidence.get("span"):
            at = f" at {item.evidence['at']}" if item.evidence.get("at") else ""
            console.print(f"{'':>{width + 9}}  evidence{at}: \"{item.evidence['span']}\"", highlight=False, markup=False)


def _action_text(action: dict[str, Any]) -> str:
    kind = action["kind"]
    if kind == "route":
        return f"route -> {action.get('queue')}"
    if kind == "alert":
        return f"alert {action.get('severity')}: {action.get('summary')}"
    if kind == "tag":
        return f"tag {', '.join(action.get('tags', []))}"
    if kind == "shadow":
        return "would: " + ", ".join(a["kind"] + (f" {a['queue']}" if "queue" in a else "") for a in action.get("actions", []))
    return f"{kind} {action.get('subject', '')}"


def _with_js(option: str | None, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work`` as the operator; a sentence, not a traceback, when NATS is out of reach."""
    from services.events.connection import NatsConnectError, command_settings, with_jetstream

    try:
        cfg = command_settings(option, _settings().nats)
        return _run(with_jetstream(cfg, work, name="listenpost-rules-cli"))
    except NatsConnectError as exc:
        err.print(str(exc))
        raise typer.Exit(2) from exc


@rules_app.command("backtest")
def rules_backtest(
    since: Annotated[str, typer.Option("--since", help="How far back, e.g. 24h, 7d, 90m.")] = "24h",
    rules: Annotated[Path, typer.Option("--rules", help="Rule directory to try.")] = Path("router_rules"),
    nats_url: NatsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Replay stored captioned events through the rules on disk; report what each rule would have done.

    No side effects: nothing is published, no state is written.
    """
    from services.events.errors import EventsError
    from services.rules.backtest import backtest
    from services.rules.inputs import read_input
    from services.rules.loader import load_ruleset

    settings = _settings()
    try:
        since_s = parse_duration(since)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    try:
        ruleset = load_ruleset(rules, emit_subjects=settings.rules.emit_subjects)
    except (RuleSetError, NotADirectoryError) as exc:
        err.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(1) from exc

    async def work(js: Any) -> Any:
        async def decode_msg(body: bytes, headers: Any) -> tuple[dict[str, Any], Any]:
            try:  # as the engine reads it: a captioned event stored by reference is read back
                return await read_input(js, body, headers, buckets=[settings.nats.outputs_bucket])
            except EventsError as exc:
                raise ValueError(str(exc)) from exc

        return await backtest(
            js, ruleset,
            stream=settings.nats.out_stream, subjects=settings.rules.subjects(settings.nats),
            since_s=since_s, since_text=since, prefix=settings.nats.subject_prefix,
            limits=Limits.from_settings(settings.rules), decode=decode_msg,
        )  # fmt: skip

    report = _with_js(nats_url, work)
    if as_json:
        _print_json(report.to_json())
        return
    console.print(
        f"backtest of rules {report.ruleset_version}: {report.events} events since {since} "
        f"({report.first_event_at or '-'} .. {report.last_event_at or '-'})",
        highlight=False,
    )
    width = max((len(r) for r in report.rules), default=10)
    for rule_id, t in report.rules.items():
        parts = [f"matched {t.matched}"]
        if t.shadow:
            parts.append(f"shadow {t.shadow}")
        if t.errors:
            parts.append(f"errors {t.errors} (last: {t.last_error})")
        if t.routes:
            parts.append("routes " + ", ".join(f"{q}:{n}" for q, n in t.routes.items()))
        if t.alerts_raised or t.alerts_suppressed:
            held = ", ".join(f"{r} {n}" for r, n in t.alerts_suppressed.items())
            parts.append(f"alerts raised {t.alerts_raised}" + (f", held back: {held}" if held else ""))
        if t.tags:
            parts.append("tags " + ", ".join(f"{k}:{n}" for k, n in t.tags.items()))
        if t.emits:
            parts.append("emits " + ", ".join(f"{k}:{n}" for k, n in t.emits.items()))
        console.print(f"  {rule_id:<{width}}  " + "; ".join(parts), highlight=False, markup=False)
    if report.undecodable:
        console.print(f"{report.undecodable} stored messages were not CloudEvents and were skipped")


def _status_impl(nats_url: str | None, as_json: bool) -> None:
    from services.events.notifier_status import read_notifier_status
    from services.metricsview.receivers import receivers_table
    from services.rules.status import read_status

    settings = _settings()
    bucket = settings.rules.status_bucket

    async def read(js: Any) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        return await read_status(js, bucket), await read_notifier_status(js, bucket)

    records, notifier = _with_js(nats_url, read)
    if as_json:
        _print_json({"engines": records, "notifier": notifier})
        return
    now = time.time()
    if not records:
        console.print("no rules engine has reported its status (is the service running?)")
        if notifier is not None:
            console.print(receivers_table(notifier, now=now))
        raise typer.Exit(1)
    for record in records:
        table = Table(title=f"rules engine {record.get('replica')}", show_header=False)
        table.add_row("ruleset version", str(record.get("ruleset_version")))
        table.add_row("rules", f"{record.get('rules')} from {record.get('origin')} ({', '.join(record.get('files', []))})")
        table.add_row("loaded", _ago(record.get("loaded_at"), now))
        table.add_row("consuming", str(record.get("consuming")))
        error = record.get("last_reload_error")
        table.add_row("last reload error", f"[red]{error}[/] ({_ago(record.get('last_reload_error_at'), now)})" if error else "none")
        counters = record.get("counters", {})
        table.add_row("events / decisions", f"{counters.get('events', 0)} / {counters.get('decisions', 0)}")
        failing = {k: v for k, v in counters.get("rules", {}).items() if v.get("errors")}
        table.add_row("rule errors", ", ".join(f"{k}: {v['errors']} ({v.get('last_error')})" for k, v in failing.items()) or "none")
        table.add_row("reported", _ago(record.get("updated_at"), now))
        console.print(table)
    # Where the alerts went: the notifier's receivers (a caption when it is off).
    console.print(receivers_table(notifier, now=now))


@rules_app.command("status")
def rules_status(nats_url: NatsOpt = None, as_json: JsonOpt = False) -> None:
    """The running engine's active rules (version), last reload error and counters, per replica."""
    _status_impl(nats_url, as_json)


def _ago(epoch: Any, now: float) -> str:
    if not isinstance(epoch, int | float):
        return "never"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))
    return f"{stamp} ({max(0.0, now - epoch):.0f}s ago)"


@rules_app.command("schema")
def rules_schema(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file (default: stdout).")] = None,
    check: Annotated[bool, typer.Option("--check", help="Exit 1 if --output differs from the current schema.")] = False,
) -> None:
    """The JSON Schema of rule files, for editors (yaml-language-server, VS Code, IntelliJ)."""
    text = json_schema_text()
    if output is None:
        sys.stdout.write(text)
        return
    if check:
        if not output.exists() or output.read_text() != text:
            err.print(f"{output} is out of date: run `listenpost rules schema -o {output}`")
            raise typer.Exit(1)
        console.print(f"{output}: up to date")
        return
    output.write_text(text)
    console.print(f"wrote {output}")


# --- silences -------------------------------------------------------------------


async def _silences(js: Any) -> Any:
    from services.rules.alerting import Silences
    from services.rules.state import open_bucket

    return Silences(await open_bucket(js, _settings().rules.silence_bucket))


@silence_app.command("add")
def silence_add(
    matchers: Annotated[list[str], typer.Argument(help="Label matchers: team=qa, rule=~'dead-.*', severity!=info.")],
    duration: Annotated[str, typer.Option("--duration", "-d", help="How long, e.g. 2h.")] = "1h",
    comment: Annotated[str, typer.Option("--comment", "-c", help="Why.")] = "",
    author: Annotated[str, typer.Option("--author", "-a", help="Who.")] = "",
    nats_url: NatsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Silence the alerts whose labels (and `rule`, `severity`) match every matcher, for a while."""
    from services.rules.alerting import Matcher

    try:
        parsed = [Matcher.parse(m) for m in matchers]
        seconds = parse_duration(duration)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc

    async def work(js: Any) -> Any:
        silences = await _silences(js)
        silence = await silences.add(parsed, ends_at=time.time() + seconds, comment=comment, created_by=author)
        return silence, await _audit_silence(js, "silence.add", silence)

    silence, audited = _with_js(nats_url, work)
    if as_json:
        _print_json(silence.model_dump())
    else:
        console.print(f"silence {silence.id}: {' '.join(str(m) for m in silence.matchers)} until {_when(silence.ends_at)}")
    _audit_warning(audited)


@silence_app.command("list")
def silence_list(
    show_all: Annotated[bool, typer.Option("--all", help="Include expired silences.")] = False,
    nats_url: NatsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Active and pending silences (and expired ones with --all)."""

    async def work(js: Any) -> Any:
        return await (await _silences(js)).stored()

    now = time.time()
    silences = [s for s in _with_js(nats_url, work) if show_all or s.state(now) != "expired"]
    if as_json:
        _print_json([{**s.model_dump(), "state": s.state(now)} for s in silences])
        return
    if not silences:
        console.print("no silences")
    for x in silences:
        matchers = " ".join(str(m) for m in x.matchers)
        console.print(
            f"{x.id}  {x.state(now):<8} {matchers}  from {_when(x.starts_at)} until {_when(x.ends_at)}"
            + (f"  by {x.created_by}" if x.created_by else "") + (f": {x.comment}" if x.comment else ""),
            highlight=False, markup=False,
        )


@silence_app.command("expire")
def silence_expire(silence_id: Annotated[str, typer.Argument(help="The silence's id.")], nats_url: NatsOpt = None) -> None:
    """End a silence now."""

    async def work(js: Any) -> Any:
        silence = await (await _silences(js)).expire(silence_id)
        return silence, await _audit_silence(js, "silence.expire", silence)

    try:
        silence, audited = _with_js(nats_url, work)
    except KeyError as exc:
        err.print(f"no silence {silence_id}")
        raise typer.Exit(1) from exc
    console.print(f"silence {silence.id} expired at {_when(silence.ends_at)}")
    _audit_warning(audited)


async def _audit_silence(js: Any, action: Any, silence: Any) -> bool:
    """Record a silence added or expired in the audit trail: who, which matchers, until when."""
    from services.events.audit import Actor, operator_action, record

    settings = _settings()
    details = {
        "silence_id": silence.id, "matchers": [str(m) for m in silence.matchers],
        "starts_at": silence.starts_at, "ends_at": silence.ends_at, "created_by": silence.created_by,
    }  # fmt: skip
    return await record(js, settings.nats, settings.audit, operator_action(action, Actor.cli(), details=details))


def _audit_warning(audited: bool) -> None:
    if not audited:
        err.print("audit: this change was made but not recorded in the audit trail (see the log)")
        raise typer.Exit(1)


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))
