"""The ``listenpost`` command line."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from services.analytics.cli import export_command, report_command
from services.batch.cli import batch_command
from services.events.cli import audit_app, dlq_app
from services.events.nats_cli import nats_app
from services.notify.cli import notify_app, rule_test_routes
from services.notify.crm_cli import crm_app
from services.preprocess.cli import audio_app
from services.rules.cli import RulesCliHooks, rules_app
from services.settings import Settings, SettingsError

if TYPE_CHECKING:  # the commands import what they use when they run: `listenpost --help` stays quick
    from rich.console import RenderableType

    from services.events.jsstate import Snapshot
    from services.metricsview.exposition import Scrape
    from services.metricsview.view import MetricsView

app = typer.Typer(
    help="listenpost: turn call and media audio into decisions.",
    no_args_is_help=True,
    # `rules test` checks the receivers alerts reach: routing the rules package may not import.
    context_settings={"obj": RulesCliHooks(notify=rule_test_routes)},
)
model_app = typer.Typer(help="Model checkpoints.", no_args_is_help=True)
settings_app = typer.Typer(help="Settings (LISTENPOST_* variables).", no_args_is_help=True)
deploy_app = typer.Typer(help="Deployment files generated from their one source.", no_args_is_help=True)
app.add_typer(model_app, name="model")
app.add_typer(settings_app, name="settings")
app.add_typer(deploy_app, name="deploy")
app.add_typer(rules_app, name="rules")
app.add_typer(notify_app, name="notify")
app.add_typer(crm_app, name="crm")
app.add_typer(audio_app, name="audio")
app.add_typer(dlq_app, name="dlq")
app.add_typer(nats_app, name="nats")
app.add_typer(audit_app, name="audit")
app.command("batch")(batch_command)
app.command("export")(export_command)
app.command("report")(report_command)
app.command("facets")(__import__("services.captioner.cli", fromlist=["facets_command"]).facets_command)

console = Console()
err = Console(stderr=True)

TINY_NOTE = "tiny checkpoint: random weights, its captions are NOISE (proves plumbing, not quality)"


@app.command()
def serve(
    model: Annotated[str | None, typer.Option(help="Hub id or checkpoint dir (default: settings).")] = None,
    engine: Annotated[str | None, typer.Option(help="vllm or transformers (default: settings).")] = None,
    nats_cluster: Annotated[
        int | None,
        typer.Option(help="Run the embedded NATS as a JetStream cluster of this many servers (3 or 5), R3 streams."),
    ] = None,
) -> None:
    """Run listenpost: embedded nats-server (unless LISTENPOST_NATS__URL), local Ray, the Serve app."""
    from services.runner import local_metrics_urls, running_service
    from services.runtime import remove_runtime_file, write_runtime_file

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    overrides = {k: v for k, v in {"model": model, "engine": engine}.items() if v is not None}
    if overrides:
        settings = settings.model_copy(update={"captioner": settings.captioner.model_copy(update=overrides)})
    if nats_cluster is not None:
        settings = _with_nats_cluster(settings, nats_cluster)
    if Path(settings.captioner.model, "LISTENPOST_TINY.md").exists():
        err.print(f"[yellow]warning:[/] {TINY_NOTE}")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with err.status("starting nats, Ray and the Serve app (engine start can take minutes)..."):
        context = running_service(settings)
        effective = context.__enter__()
    try:
        embedded = settings.nats.url is None
        metrics = local_metrics_urls()
        write_runtime_file(effective.nats.url or "", settings.nats.secrets_dir if embedded else None, metrics_urls=metrics)
        table = Table(title="listenpost is running", show_header=False)
        # The URL never holds a secret: credentials in it were moved to nats.auth (SecretStr).
        table.add_row("NATS", (effective.nats.url or "").replace(",", "\n"))
        if effective.nats.replicas > 1:
            table.add_row("streams", f"{effective.nats.replicas} copies each (nats.replicas)")
        if embedded:
            table.add_row("identities", f"{settings.nats.secrets_dir}/<role>.nk (0600; TLS CA ca.pem)")
        table.add_row("model", f"{effective.captioner.model} ({effective.captioner.engine})")
        table.add_row("rules", str(effective.rules.directory))
        for url in metrics:
            table.add_row("metrics", url)
        table.add_row("submit", "listenpost submit FILE.wav")
        table.add_row("stop", "Ctrl-C")
        console.print(table)
        stop.wait()
    finally:
        err.print("stopping...")
        context.__exit__(None, None, None)
        remove_runtime_file()


def _with_nats_cluster(settings: Settings, size: int) -> Settings:
    """``--nats-cluster N``: N embedded servers, and streams with a copy on each of 3 (R3)."""
    from services.settings import NatsSettings

    if settings.nats.url is not None:
        raise typer.BadParameter("--nats-cluster starts an embedded cluster, and LISTENPOST_NATS__URL names a server")
    try:
        cfg = NatsSettings.model_validate(
            {**settings.nats.model_dump(), "auth": settings.nats.auth, "roles": settings.nats.roles,
             "embedded_cluster": size, "replicas": min(size, 3)}  # fmt: skip
        )
    except ValidationError as exc:
        raise typer.BadParameter(f"--nats-cluster {size}: {exc.errors()[0]['msg']}") from None
    return settings.model_copy(update={"nats": cfg})


def _parse_context(pairs: list[str]) -> dict[str, Any]:
    context: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"context must be KEY=VALUE, got {pair!r}")
        context[key] = value
    return context


@app.command()
def submit(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    channels: Annotated[str | None, typer.Option(help="Roles by channel index, e.g. agent,customer.")] = None,
    context: Annotated[list[str], typer.Option("--context", "-c", help="KEY=VALUE, repeatable.")] = [],  # noqa: B006 -- typer reads the default, never mutates it
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the outcome.")] = 600.0,
    nats_url: Annotated[str | None, typer.Option(help="Default: settings, else the running `listenpost serve`.")] = None,
) -> None:
    """Publish an audio.submitted event for FILE, wait for its caption and decisions, print them."""
    from services.client import submit_file
    from services.events.bounds import StreamFullError
    from services.events.cli import command_nats

    settings = Settings()
    nats = command_nats(nats_url, settings.nats)
    ctx = _parse_context(context)
    ctx.setdefault("callid", file.stem)
    roles = [r.strip() for r in channels.split(",")] if channels else None
    try:
        with err.status(f"submitted {file.name}; waiting for caption and decisions..."):
            result = asyncio.run(
                submit_file(
                    file,
                    nats=nats,
                    bucket=settings.preprocess.object_buckets[0],
                    channels=roles,
                    context=ctx,
                    wait_s=timeout,
                )
            )
    except StreamFullError as exc:
        # listenpost is behind, not broken: say so, and exit with sysexits' EX_TEMPFAIL for scripts.
        err.print(f"[red]not submitted:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(75) from None
    if as_json:
        console.print_json(result.model_dump_json())
    else:
        _print_result(result)
    if result.failed is not None or result.captioned is None:
        raise typer.Exit(1)


@app.command()
def stream(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    realtime: Annotated[bool, typer.Option("--realtime/--fast", help="Send at the audio's own pace (--fast: as fast as "
                                           "allowed; the service refuses a stream much faster than real time).")] = True,
    chunk_ms: Annotated[int, typer.Option(min=5, max=1000, help="Audio per chunk, milliseconds.")] = 20,
    stream_id: Annotated[str | None, typer.Option(help="Default: cli-<random>.")] = None,
    channels: Annotated[str | None, typer.Option(help="Roles by channel index, e.g. agent,customer.")] = None,
    context: Annotated[list[str], typer.Option("--context", "-c", help="KEY=VALUE, repeatable.")] = [],  # noqa: B006 -- typer reads the default, never mutates it
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines instead of a live view.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the summary after the last chunk.")] = 120.0,
    nats_url: Annotated[str | None, typer.Option(help="Default: settings, else the running `listenpost serve`.")] = None,
    ws: Annotated[bool, typer.Option("--ws", help="Through the WebSocket door (/streams/{id}) instead of NATS.")] = False,
    ws_url: Annotated[str | None, typer.Option(help="With --ws; default: ws://127.0.0.1:<http.port>.")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="LISTENPOST_API_KEY", help="With --ws: an HTTP ingress key.",
                                                show_default=False)] = None,
) -> None:
    """Play FILE as a live stream over NATS (or a WebSocket with --ws); print each window's caption and each decision as it
    arrives, with its latency from the audio's time, then the stream's summary."""
    from services.events.cli import command_nats
    from services.events.live import StreamIdError
    from services.live_client import LiveReport, Playback, stream_file, stream_file_ws

    settings = Settings()
    if not ws:
        nats = command_nats(nats_url, settings.nats)

    def show(item: LiveReport) -> None:
        if as_json:
            console.print_json(item.model_dump_json(exclude={"data"}))
        elif item.kind == "window":
            console.print(f"[cyan]{item.at_s:7.1f} s[/] window {item.window} [{item.start:.1f}-{item.end:.1f} s] "
                          f"latency {item.latency_s:.1f} s: {escape(item.text[:200])}", highlight=False)  # fmt: skip
        elif item.kind == "decision":
            console.print(f"[yellow]{item.at_s:7.1f} s[/] decision {item.data.get('type', '')}: {escape(item.text)}", highlight=False)
        elif item.kind == "failed":
            err.print(f"[red]{item.at_s:7.1f} s stream failed:[/] {escape(item.text)}", highlight=False)
        else:
            console.print(f"[green]{item.at_s:7.1f} s[/] summary of the stream received", highlight=False)

    try:
        play = Playback(stream_id=stream_id, chunk_ms=chunk_ms, realtime=realtime, context=_parse_context(context),
                        channels=[r.strip() for r in channels.split(",")] if channels else [], wait_s=timeout)  # fmt: skip
        if ws:
            url = ws_url or f"ws://127.0.0.1:{settings.http.port}"
            result = asyncio.run(stream_file_ws(file, url=url, api_key=api_key, play=play, on_report=show))
        else:
            result = asyncio.run(stream_file(file, nats=nats, play=play, on_report=show))
    except (StreamIdError, ValueError, RuntimeError, OSError) as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    windows = result.windows
    latencies = sorted(w.latency_s for w in windows if w.latency_s is not None)
    table = Table(title=f"stream {result.stream_id}: {result.chunks} chunks, {result.audio_s:.1f} s of audio")
    for column in ("windows", "decisions", "latency p50", "latency max", "summary"):
        table.add_column(column)
    table.add_row(
        str(len(windows)), str(sum(r.kind == "decision" for r in result.reports)),
        f"{latencies[len(latencies) // 2]:.2f} s" if latencies else "-", f"{latencies[-1]:.2f} s" if latencies else "-",
        "yes" if any(r.kind == "summary" for r in result.reports) else "no",
    )  # fmt: skip
    if not as_json:
        console.print(table)
    if any(r.kind == "failed" for r in result.reports) or not any(r.kind == "summary" for r in result.reports):
        raise typer.Exit(1)


def _print_result(result: Any) -> None:
    if result.failed is not None:
        data = result.failed.data
        err.print(f"[red]failed[/] at stage {data.get('stage')}: {data.get('reason')}")
        return
    if result.captioned is None:
        err.print(f"[red]no outcome within the timeout[/] for event {result.event_id}")
        return
    data = result.captioned.data
    windows = Table(title=f"audio.captioned {result.captioned.id} ({data['engine']}: {data['model']})")
    for column in ("start", "end", "role", "tokens", "caption"):
        windows.add_column(column, overflow="fold")
    for w in data["windows"]:
        windows.add_row(
            f"{w['start']:.1f}", f"{w['end']:.1f}", str(w.get("role") or w.get("channel") or "mix"),
            str(w["output_tokens"]), w["caption"][:300],
        )  # fmt: skip
    console.print(windows)
    if Path(data["model"], "LISTENPOST_TINY.md").exists():
        console.print(f"[yellow]{TINY_NOTE}[/]")
    ac = data["acoustics"]
    console.print(
        f"duration {ac['duration_s']:.1f} s, silence {ac['silence_ratio']:.0%}, longest silence "
        f"{ac['longest_silence_s']:.1f} s, dead air {ac['dead_air_s']:.1f} s, peak {ac['peak_dbfs']:.1f} dBFS"
    )
    decisions = Table(title="decisions")
    for column in ("type", "subject", "rule", "detail"):
        decisions.add_column(column, overflow="fold")
    for d in result.decisions:
        body = d.data if isinstance(d.data, dict) else {}
        detail = body.get("summary") or body.get("queue") or ", ".join(body.get("tags", [])) or body.get("error", "")
        decisions.add_row(d.type, d.subject, str(body.get("rule_id", "")), str(detail))
    console.print(decisions if result.decisions else "no rule fired")
    console.print(f"elapsed {result.elapsed_s:.1f} s")


@app.command()
def erase(
    callid: Annotated[str, typer.Option("--callid", help="The call id (context.callid / the callid extension).")],
    yes: Annotated[bool, typer.Option("--yes", help="Erase without showing what will go and asking first.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    nats_url: Annotated[str | None, typer.Option(help="Default: settings, else the running `listenpost serve`.")] = None,
) -> None:
    """Erase a call everywhere: its events, decisions, dead letters, audio and rule state.

    Every stream, KV bucket (all revisions) and object store is searched; what carries the
    call id is securely deleted, and the erasure is recorded in the audit trail (docs/privacy.md).
    """
    from services.events.audit import Actor
    from services.events.cli import run_as_operator
    from services.events.erasure import ErasureError, ErasureReport, erase_call
    from services.rules.state import safe_key

    settings = Settings()
    actor = Actor.cli()
    # The rules key a call's debounce streaks by a hash of its id (services/rules/engine.py).
    tokens = [safe_key(callid)]

    def run(dry_run: bool) -> ErasureReport:
        try:
            return run_as_operator(
                nats_url, settings, lambda js: erase_call(js, settings, callid, actor=actor, key_tokens=tokens, dry_run=dry_run)
            )
        except ErasureError as exc:
            err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
            raise typer.Exit(2) from exc

    if not yes:
        found = run(dry_run=True)
        if not found.removed:
            console.print(f"nothing stored carries call id {escape(callid)!r}")
            return
        console.print(_erasure_table(found, title=f"call {callid}: will erase {len(found.removed)} items"))
        if not typer.confirm("Erase them? This cannot be undone", default=False):
            raise typer.Exit(1)
    report = run(dry_run=False)
    if as_json:
        console.print_json(report.model_dump_json())
    else:
        console.print(_erasure_table(report, title=f"call {callid}: erased {len(report.removed)} items"))
    for failure in report.failed:
        err.print(f"[red]not erased:[/] {escape(failure)}", highlight=False)
    if not report.audited:
        err.print("[red]audit:[/] the erasure was not recorded in the audit trail (see the log)")
    if not report.ok:
        raise typer.Exit(1)


def _erasure_table(report: Any, *, title: str) -> Table:
    table = Table(title=title)
    for column in ("where", "kind", "item", "action", "messages"):
        table.add_column(column, overflow="fold")
    for item in report.removed:
        table.add_row(escape(item.place), item.kind, escape(item.item), item.action, str(item.messages))
    return table


def _operator_view(nats_url: str | None) -> Any:
    """The NATS settings a status command reads with (as the operator), or a usage error."""
    from services.events.cli import command_nats

    return command_nats(nats_url, Settings().nats)


async def _read_state(cfg: Any, settings: Settings) -> tuple[Any, list[dict[str, Any]], dict[str, Any] | None]:
    from services.events.connection import with_jetstream
    from services.events.jsstate import snapshot
    from services.events.notifier_status import read_notifier_status
    from services.rules.status import read_status

    async def work(js: Any) -> tuple[Any, list[dict[str, Any]], dict[str, Any] | None]:
        bucket = settings.rules.status_bucket
        return await snapshot(js, settings), await read_status(js, bucket), await read_notifier_status(js, bucket)

    return await with_jetstream(cfg, work, name="listenpost-status")


def _metrics_urls(options: list[str], settings: Settings) -> list[str]:
    """Where the metrics are read: the options, else the setting, else the running `listenpost serve`'s node."""
    from services.metricsview.scrape import MetricsUrlError, metrics_urls
    from services.runtime import read_runtime_metrics_urls

    try:
        return metrics_urls(options or settings.metrics.urls or read_runtime_metrics_urls())
    except MetricsUrlError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from exc


@dataclass(frozen=True)
class _Reading:
    """One refresh: JetStream's state, the rules engines, and what the metrics endpoints said."""

    state: Snapshot
    rules: list[dict[str, Any]]
    notifier: dict[str, Any] | None  # None: it never reported (off)
    scrape: Scrape | None  # None: no metrics URL
    metrics: MetricsView | None


async def _read_all(cfg: Any, settings: Settings, urls: list[str], previous: Scrape | None, top_rules: int) -> _Reading:
    """JetStream and the metrics endpoints read at once; the metrics over the interval since ``previous``."""
    from services.metricsview.scrape import scrape
    from services.metricsview.view import metrics_view

    if not urls:
        state, rules, notifier = await _read_state(cfg, settings)
        return _Reading(state, rules, notifier, None, None)
    m = settings.metrics
    (state, rules, notifier), (latest, failed) = await asyncio.gather(
        _read_state(cfg, settings),
        scrape(urls, timeout_s=m.scrape_timeout_s, max_bytes=m.scrape_max_bytes, at=time.monotonic()),
    )
    return _Reading(state, rules, notifier, latest, metrics_view(latest, previous, top_rules=top_rules, failed=failed))


def _status_tables(
    state: Any, rules: list[dict[str, Any]], notifier: dict[str, Any] | None, rates: dict[str, float] | None
) -> list[Table]:
    consumers = Table(title="consumers (lag)")
    for column in ("durable", "stream", "pending", "in flight", "finished", "per s"):
        consumers.add_column(column, justify="right" if column not in ("durable", "stream") else "left")
    for durable, c in state.consumers.items():
        rate = f"{rates[durable]:.1f}" if rates is not None and durable in rates else "-"
        consumers.add_row(durable, c.stream, f"{c.pending:,}", f"{c.ack_pending:,}", f"{c.acked:,}", rate)
    streams = Table(title=f"streams (dead letters: {state.dlq_messages:,})")
    for column in ("stream", "messages", "bytes", "copies"):
        streams.add_column(column, justify="left" if column == "stream" else "right")
    for name, sizes in state.streams.items():
        current, wanted = sizes.get("replicas_current", 1), sizes.get("replicas", 1)
        copies = f"{current}/{wanted}" if current >= wanted else f"[red]{current}/{wanted}[/]"
        streams.add_row(name, f"{sizes['messages']:,}", f"{sizes['bytes']:,}", copies)
    for bucket, size in state.object_store_bytes.items():
        streams.add_row(f"bucket {bucket}", "", f"{size:,}", "")
    engines = Table(title="rules engines")
    for column in ("replica", "ruleset", "events / decisions", "errors"):
        engines.add_column(column)
    for r in rules:
        engines.add_row(str(r.get("replica", "")), str(r.get("ruleset_version", "")),
                        f"{r.get('events', 0)} / {r.get('decisions', 0)}", escape(str(r.get("last_reload_error") or "none")))  # fmt: skip
    from services.metricsview.receivers import receivers_table

    return [consumers, streams, engines, receivers_table(notifier)]


NO_METRICS_URL = "metrics: no metrics URL (--metrics-url, LISTENPOST_METRICS__URLS, or a running `listenpost serve`)"


def _metrics_tables(view: MetricsView | None) -> list[RenderableType]:
    """Latency per stage and end to end, windows in flight and the top rules; each URL not read, said plainly."""
    from rich.text import Text

    if view is None:
        return [Text(NO_METRICS_URL, style="dim")]
    problems: list[RenderableType] = [
        Text(f"metrics: could not read {url}: {reason}", style="yellow") for url, reason in view.failed.items()
    ]
    if not view.sources:
        return problems
    window = "last interval" if view.interval_s is not None else "since the replicas started"
    latency = Table(title=f"latency ({window})", caption=None if view.latency else "nothing observed yet")
    for column in ("stage", "p50", "p99", "count"):
        latency.add_column(column, justify="left" if column == "stage" else "right")
    for row in view.latency:
        stage = escape(row.stage if row.scope == "stage" else f"end to end: {row.stage}")
        latency.add_row(stage, _seconds(row.p50_s), _seconds(row.p99_s), f"{row.count:,}")
    in_flight = Table(title="in flight")
    in_flight.add_column("windows waiting for the engine", justify="right")
    in_flight.add_row("-" if view.windows_waiting is None else f"{view.windows_waiting:,}")
    rules = Table(title=f"top rules ({window})", caption=None if view.top_rules else "no rule matched")
    rules.add_column("rule id")
    rules.add_column("matches", justify="right")
    for r in view.top_rules:
        rules.add_row(escape(r.rule_id), f"{r.matches:,}")
    return [latency, in_flight, rules, *problems]


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


MetricsUrlOption = Annotated[
    list[str],
    typer.Option(
        "--metrics-url",
        help="Ray's metrics endpoint, one per node (repeatable or comma-separated). "
        "Default: LISTENPOST_METRICS__URLS, else the running `listenpost serve`'s node.",
    ),
]
TopRulesOption = Annotated[int, typer.Option(min=1, help="Rules shown, most matches first.")]


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables (for scripts).")] = False,
    nats_url: Annotated[str | None, typer.Option(help="Default: settings, else the running `listenpost serve`.")] = None,
    metrics_url: MetricsUrlOption = [],  # noqa: B006 -- typer reads the default, never mutates it
    top_rules: TopRulesOption = 10,
) -> None:
    """Lag per consumer, stream and bucket sizes, dead letters, the rules engines, and (from the
    metrics) latency since the replicas started, windows in flight and the top rules, read once."""
    from services.events.connection import NatsConnectError

    cfg = _operator_view(nats_url)
    settings = Settings()
    urls = _metrics_urls(metrics_url, settings)
    try:
        reading = asyncio.run(_read_all(cfg, settings, urls, None, top_rules))
    except NatsConnectError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from exc
    if as_json:
        out = {"jetstream": reading.state.model_dump(mode="json"), "rules": reading.rules, "notifier": reading.notifier}
        if reading.metrics is not None:
            out["metrics"] = reading.metrics.model_dump(mode="json")
        console.print_json(json.dumps(out))
        for url, reason in (reading.metrics.failed if reading.metrics is not None else {}).items():
            err.print(f"metrics: could not read {url}: {reason}", highlight=False, soft_wrap=True)
        return
    for table in (*_status_tables(reading.state, reading.rules, reading.notifier, None), *_metrics_tables(reading.metrics)):
        console.print(table)


@app.command()
def top(
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between refreshes.")] = 2.0,
    iterations: Annotated[int, typer.Option(min=0, help="Stop after this many refreshes (0: until Ctrl-C).")] = 0,
    nats_url: Annotated[str | None, typer.Option(help="Default: settings, else the running `listenpost serve`.")] = None,
    metrics_url: MetricsUrlOption = [],  # noqa: B006 -- typer reads the default, never mutates it
    top_rules: TopRulesOption = 10,
) -> None:
    """A live view: lag and throughput per consumer, dead letters, stream sizes, rules engines
    (from JetStream), and p50/p99 latency per stage and end to end, windows in flight and the
    rules that matched most over the last interval (from Ray's metrics endpoints).

    The first refresh has no earlier read of the metrics, so it shows totals since the replicas
    started. An endpoint that cannot be read is named, and the JetStream tables are still shown.
    Tokens, engine saturation and longer windows are in the Grafana dashboard
    (observability/grafana/listenpost.json).
    """
    from rich.console import Group
    from rich.live import Live

    from services.events.connection import NatsConnectError
    from services.events.jsstate import rates

    cfg = _operator_view(nats_url)
    settings = Settings()
    urls = _metrics_urls(metrics_url, settings)
    previous: _Reading | None = None
    count = 0
    try:
        with Live(console=console, refresh_per_second=4, transient=False) as live:
            while True:
                reading = asyncio.run(_read_all(cfg, settings, urls, previous.scrape if previous else None, top_rules))
                per_s = rates(previous.state, reading.state) if previous is not None else None
                tables = _status_tables(reading.state, reading.rules, reading.notifier, per_s)
                live.update(Group(*tables, *_metrics_tables(reading.metrics)))
                previous, count = reading, count + 1
                if iterations and count >= iterations:
                    break
                time.sleep(interval)
    except NatsConnectError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from exc
    except KeyboardInterrupt:
        pass


@settings_app.command("doc")
def settings_doc(
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Write to this file (default: print).")] = None,
    check: Annotated[bool, typer.Option("--check", help="Exit 1 when the file is not current.")] = False,
) -> None:
    """The reference of every setting (docs/settings.md), generated from the settings model."""
    from services.settings import settings_markdown

    text = settings_markdown()
    if check:
        target = out or Path("docs/settings.md")
        if not target.exists() or target.read_text() != text:
            err.print(f"{target} is not current: run `listenpost settings doc -o {target}`", highlight=False)
            raise typer.Exit(1)
        console.print(f"{target}: current")
    elif out is not None:
        out.write_text(text)
        console.print(f"wrote {out}")
    else:
        print(text, end="")


@deploy_app.command("kubernetes")
def deploy_kubernetes(
    root: Annotated[Path, typer.Option("--root", help="The repository (default: the working directory).")] = Path("."),
    check: Annotated[bool, typer.Option("--check", help="Exit 1 when a generated block is not current.")] = False,
) -> None:
    """Write the generated blocks of deploy/kubernetes/: the RayService's serveConfigV2 (from
    deploy/serve-config.yaml) and the NATS Helm values' users and permissions."""
    from services.kubernetes import stale_files, write_files

    settings = Settings()
    if check:
        stale = stale_files(root, settings)
        for path in stale:
            err.print(f"{path} is not current: run `listenpost deploy kubernetes`", highlight=False)
        if stale:
            raise typer.Exit(1)
        console.print("deploy/kubernetes: current")
        return
    changed = write_files(root, settings)
    console.print("\n".join(f"wrote {p}" for p in changed) or "deploy/kubernetes: already current")


@model_app.command("build-tiny")
def build_tiny(directory: Annotated[Path, typer.Argument(help="Where to write the checkpoint.")]) -> None:
    """Write a tiny random-weight Qwen3-Omni checkpoint, offline (for tests and CPU demos)."""
    from services.captioner.tiny_checkpoint import build_tiny_checkpoint

    with err.status("building tiny Qwen3-Omni checkpoint..."):
        out = build_tiny_checkpoint(directory)
    console.print(f"wrote {out}")
    console.print(f"[yellow]{TINY_NOTE}[/]")


def main() -> None:
    try:
        app()
    except SettingsError as exc:  # a typo in the environment: say which, no traceback
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
