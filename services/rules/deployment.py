"""The RulesEngine Serve deployment: where decisions leave listenpost.

It consumes CloudEvents from LISTENPOST_OUT (``audio.captioned`` by default,
``LISTENPOST_RULES__CONSUME_SUBJECTS``) with its own durable consumer, runs
them through :class:`~services.rules.engine.RulesProcessor` and publishes every
decision as a CloudEvent with a deterministic id before acking.

- **Errors**: a rule that fails on an event is a ``rule.failed`` event and a
  counter, never a nak. Only infrastructure faults (NATS, KV) raise, so the
  consumer naks and the event is retried (then dead-lettered after MaxDeliver).
- **State** (debounce streaks, rate limits, silences) lives
  in NATS KV buckets the engine creates at start, so restarts and replicas agree.
- **Hot reload**: the rule files are checked every ``reload_interval_s``; a
  good edit is swapped in whole, a broken one is logged with file:line:column
  and the last good rules stay active.
- **Start with a broken directory**: the replica does not fail (a crash loop
  would help no one). It runs the last good rules that a replica stored in KV
  (``ruleset.last-good``), and if there are none it does not consume at all:
  events wait, durably, in the stream until the files are fixed; ``status``
  says why.
- **Status**: every replica writes its status (ruleset version, rule count,
  last error, counters) to the status bucket, which ``listenpost rules status``
  reads; the Ingress's ``status()`` includes it too.
- **Traces**: each event is a ``process`` span (parent: its ``traceparent``) holding
  ``evaluate`` (one ``rule`` span per matched rule), ``alert hygiene`` and ``publish``; each
  decision carries the ``traceparent`` of the PRODUCER span that published it.
- **Evaluated marker**: once every decision on an ``audio.captioned`` event is stored, one
  ``com.listenpost.rules.evaluated`` event on ``<prefix>.rules.evaluated`` says so (where the
  captioned event is, its decisions; services/rules/evaluated.py), then the event is acked. It
  is what the CRM write-back waits for.
- **Audit**: every activation of a rule set (at start, on reload, from the last good
  copy) is recorded in the audit trail as done by ``service:rules`` with its version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
from typing import Any

from nats.aio.msg import Msg
from ray import serve

from services.events.audit import Actor, operator_action, record
from services.events.binding import new_event
from services.events.connection import connect
from services.events.consumer import PullConsumer, Redelivery, stored_age_s
from services.events.deadletter import dead_letter
from services.events.jetstream import ensure_provisioned, evaluated_subject
from services.events.tasks import cancel_and_wait
from services.events.traced import publish_traced
from services.logcontext import configure_replica_logging
from services.rules import Decision, RuleSet, RuleSetError, load_ruleset, load_sources, rule_files
from services.rules.engine import HOPS_EXTENSION, RulesProcessor, hops
from services.rules.evaluated import evaluated_event, wants_marker
from services.rules.inputs import read_input
from services.rules.limits import Limits
from services.rules.metrics import observe_outcome
from services.rules.state import Stores, open_stores
from services.rules.status import LAST_GOOD_KEY, STATUS_PREFIX
from services.settings import Settings
from services.telemetry import configure_tracing, output_traceparent, stage_span

log = logging.getLogger(__name__)
# The cel library logs a warning for every exception a Python helper raises; the
# engine reports those itself (a rule.failed event, a counter, one log line).
logging.getLogger("cel").setLevel(logging.ERROR)
_EXTENSION_VALUE = re.compile(r"^[\w.:@/-]{1,128}$")


def decision_event(decision: Decision, input_attributes: dict[str, Any] | None, source: str) -> Any:
    extensions = {
        "rulesetver": decision.ruleset_version,
        "traceparent": output_traceparent((input_attributes or {}).get("traceparent")),
        HOPS_EXTENSION: str(hops(input_attributes or {}) + 1),
    }
    if input_attributes is not None:
        extensions["inputid"] = str(input_attributes.get("id", ""))
    callid = decision.data.get("callid") or (input_attributes or {}).get("callid")
    if isinstance(callid, str) and _EXTENSION_VALUE.match(callid):
        extensions["callid"] = callid
    return new_event(decision.type, source, decision.data, id=decision.id, subject=decision.rule_id, extensions=extensions)


def activation_record(ruleset: RuleSet, origin: str, replica: str) -> Any:
    """The audit record of a rule set version going live on one replica."""
    return operator_action(
        "ruleset.activate", Actor.service("rules"),
        details={"version": ruleset.version, "rules": len(ruleset.rules), "origin": origin, "replica": replica,
                 "files": sorted(p.name for p in ruleset.files)},
    )  # fmt: skip


def files_signature(directory: Any) -> tuple[tuple[str, int, int], ...]:
    """Cheap change detection: names, sizes and mtimes of the rule files."""
    signature = []
    try:
        paths = rule_files(directory)
    except NotADirectoryError:
        return ()
    for path in paths:
        with contextlib.suppress(OSError):
            stat = path.stat()
            signature.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(signature)


def replica_name() -> str:
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # noqa: BLE001 -- outside Serve (tests, tools)
        return f"{socket.gethostname()}-{os.getpid()}"


@serve.deployment(name="RulesEngine")
class RulesEngine:
    async def __init__(self, settings: Settings) -> None:  # type: ignore[misc]  # Serve awaits an async constructor
        assert settings.nats.url, "the app builder always sets the NATS URL"
        configure_tracing("listenpost-rules")  # OTEL_* only; nothing without an endpoint
        configure_replica_logging()  # an event_id on every line of an event's handling
        self._settings = settings
        cfg = settings.rules
        self._replica = replica_name()
        self._ruleset: RuleSet | None = None
        self._origin: str | None = None  # "files" or "last good (KV)"
        self._loaded_at: float | None = None
        self._last_error: str | None = None
        self._last_error_at: float | None = None
        self._nc = await connect(settings.nats, role="rules", name="listenpost-rules")
        self._js = self._nc.jetstream()
        await ensure_provisioned(self._js, settings)
        self._stores: Stores = await open_stores(
            self._js,
            state_bucket=cfg.state_bucket,
            silence_bucket=cfg.silence_bucket,
            status_bucket=cfg.status_bucket,
            state_ttl_s=cfg.state_ttl_s,
            replicas=settings.nats.replicas,
        )
        self._processor = RulesProcessor(
            self._stores, prefix=settings.nats.subject_prefix, limits=Limits.from_settings(cfg), max_hops=cfg.max_hops
        )
        self._consumer = PullConsumer(
            self._js,
            stream=settings.nats.out_stream,
            durable=settings.nats.rules_durable,
            handler=self._handle,
            dead_letter=lambda msg, poison: dead_letter(self._js, settings.nats, settings.source, msg, poison),
            redelivery=Redelivery.from_settings(settings.nats),
            max_in_flight=64,
            batch=32,
        )
        self._consuming = False
        self._signature = files_signature(cfg.directory)
        await self._initial_load()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._watch_rules(), name="rules-reload"),
            loop.create_task(self._report_status(), name="rules-status"),
        ]

    # --- rules ----------------------------------------------------------------

    def _load_from_files(self) -> RuleSet:
        cfg = self._settings.rules
        return load_ruleset(cfg.directory, emit_subjects=cfg.emit_subjects)

    async def _initial_load(self) -> None:
        try:
            ruleset = await asyncio.to_thread(self._load_from_files)
        except (RuleSetError, NotADirectoryError) as exc:
            self._error(exc)
            log.error("rule files do not load at start:\n%s", exc)
            snapshot = await self._stores.status.get(LAST_GOOD_KEY)
            if snapshot is None:
                log.error("no last good rules in KV either: not consuming until the rule files load")
                await self._write_status()
                return
            cfg = self._settings.rules
            sources = snapshot.value["sources"]
            ruleset = await asyncio.to_thread(
                lambda: load_sources(sources, directory=cfg.directory, emit_subjects=cfg.emit_subjects)
            )
            await self._activate(ruleset, origin="last good (KV)")
            return
        await self._activate(ruleset, origin="files")

    async def _activate(self, ruleset: RuleSet, *, origin: str) -> None:
        self._ruleset, self._origin, self._loaded_at = ruleset, origin, time.time()
        if origin == "files":
            self._last_error = self._last_error_at = None
            await self._stores.status.put(
                LAST_GOOD_KEY, {"version": ruleset.version, "saved_at": self._loaded_at, "sources": dict(ruleset.sources)}
            )
        log.info("rules active: version %s, %d rules, from %s", ruleset.version, len(ruleset.rules), origin)
        await record(self._js, self._settings.nats, self._settings.audit, activation_record(ruleset, origin, self._replica))
        if not self._consuming:
            self._consumer.start()
            self._consuming = True
        await self._write_status()

    def _error(self, exc: BaseException) -> None:
        self._last_error, self._last_error_at = str(exc), time.time()

    async def _watch_rules(self) -> None:
        while True:
            await asyncio.sleep(self._settings.rules.reload_interval_s)
            signature = await asyncio.to_thread(files_signature, self._settings.rules.directory)
            if signature != self._signature:
                self._signature = signature
                try:
                    await self.reload()
                except Exception:
                    log.exception("rules reload failed")

    async def reload(self) -> str | None:
        """Validate the rule files, then swap them in whole; on error keep the last good rules."""
        try:
            ruleset = await asyncio.to_thread(self._load_from_files)
        except (RuleSetError, NotADirectoryError) as exc:
            self._error(exc)
            current = self._ruleset.version if self._ruleset else "none"
            log.error("rules not reloaded, keeping version %s:\n%s", current, exc)
            await self._write_status()
            return self._ruleset.version if self._ruleset else None
        if self._ruleset is not None and ruleset.version == self._ruleset.version and self._origin == "files":
            return ruleset.version
        await self._activate(ruleset, origin="files")
        return ruleset.version

    # --- events -----------------------------------------------------------------

    async def _handle(self, msg: Msg) -> None:
        attributes, data = await read_input(
            self._js, msg.data, msg.headers, buckets=[self._settings.nats.outputs_bucket]
        )
        event_id = attributes.get("id")
        ruleset = self._ruleset  # one ruleset for the whole event, even if a reload lands meanwhile
        assert ruleset is not None, "the consumer starts only once rules are active"
        started = time.perf_counter()
        outcome = await self._processor.process(ruleset, attributes, data)
        if outcome.skipped:
            # %r: the id and any message quoting event values are client text (no forged log lines).
            log.warning("event %r not evaluated: %r", event_id, outcome.skipped)
        for error in outcome.evaluation.errors if outcome.evaluation else []:
            log.warning("rule %s failed on event %r: %r", error.rule_id, event_id, error.message)
        events = [decision_event(d, attributes, self._settings.source) for d in outcome.publish]
        # Concurrent acks, ordered sends: each publish is written to the connection when its
        # coroutine starts, in list order, so the stream keeps the evaluation order.
        with stage_span("publish", {"listenpost.decisions": len(outcome.publish)}):
            await asyncio.gather(
                *(publish_traced(self._js, d.subject, e, msg_id=d.id) for d, e in zip(outcome.publish, events, strict=True))
            )
            if outcome.evaluation is not None and wants_marker(attributes):
                # After every decision is stored, before the ack: a marker means the call is decided.
                await self._publish_evaluated(msg, attributes, ruleset.version, events)
        observe_outcome(outcome, seconds=time.perf_counter() - started, stored_age_s=stored_age_s(msg))

    async def _publish_evaluated(self, msg: Msg, attributes: dict[str, Any], version: str, events: list[Any]) -> None:
        meta = msg.metadata
        marker = evaluated_event(
            attributes, stream=meta.stream, sequence=meta.sequence.stream, ruleset_version=version, decisions=events,
            source=self._settings.source,
        )  # fmt: skip
        await publish_traced(self._js, evaluated_subject(self._settings.nats), marker, msg_id=marker.get_id())

    # --- status -------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        stats = self._consumer.stats
        ruleset = self._ruleset
        return {
            "replica": self._replica,
            "ruleset_version": ruleset.version if ruleset else None,
            "rules": len(ruleset.rules) if ruleset else 0,
            "files": [p.name for p in ruleset.files] if ruleset else [],
            "origin": self._origin,
            "loaded_at": self._loaded_at,
            "last_reload_error": self._last_error,
            "last_reload_error_at": self._last_error_at,
            "consuming": self._consuming,
            "acked": stats.acked,
            "naked": stats.naked,
            "dead_lettered": stats.dead_lettered,
            "counters": self._processor.counters.to_json(),
            "updated_at": time.time(),
        }

    async def _write_status(self) -> None:
        try:
            await self._stores.status.put(f"{STATUS_PREFIX}{_key(self._replica)}", await self.status())
        except Exception:
            log.warning("could not write rules status", exc_info=True)

    async def _report_status(self) -> None:
        while True:
            await asyncio.sleep(self._settings.rules.status_interval_s)
            await self._write_status()

    async def check_health(self) -> None:
        if self._consuming and (failure := self._consumer.failure) is not None:
            raise RuntimeError(f"rules consumer loop died: {failure!r}")

    async def __del__(self) -> None:
        if not hasattr(self, "_tasks"):  # the constructor failed part way (its error is the news)
            if hasattr(self, "_nc"):
                await self._nc.close()
            return
        for task in self._tasks:
            await cancel_and_wait(task)
        with contextlib.suppress(Exception):
            await self._stores.status.delete(f"{STATUS_PREFIX}{_key(self._replica)}")
        if self._consuming:
            await self._consumer.stop()
        # Every publish was awaited, and the consumer has stopped: flush and close.
        # (drain() would wait 30 s on the pull subscription's unread status message.)
        with contextlib.suppress(Exception):
            await self._nc.flush(timeout=2)
        await self._nc.close()


def _key(text: str) -> str:
    return re.sub(r"[^-/_=.a-zA-Z0-9]", "_", text)
