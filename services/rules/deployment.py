"""The RulesEngine Serve deployment: where decisions leave listenpost.

It consumes CloudEvents from LISTENPOST_OUT (``audio.captioned`` by default)
with its own durable consumer, evaluates router_rules/ on each, and publishes
every decision as a CloudEvent with a deterministic id before acking. Rule files
are re-read when they change; a broken edit is logged and the last good rules
stay active.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any

from nats.aio.msg import Msg
from ray import serve

from services.events.binding import BindingError, decode, event_attributes, event_data_json, new_event
from services.events.consumer import Poison, PullConsumer
from services.events.deadletter import dead_letter
from services.events.jetstream import connect, provision, publish_event
from services.rules import Decision, RuleSet, RuleSetError, evaluate, load_ruleset, rule_files
from services.settings import Settings
from services.telemetry import child_traceparent

log = logging.getLogger(__name__)
_EXTENSION_VALUE = re.compile(r"^[\w.:@/-]{1,128}$")


def decision_event(decision: Decision, input_attributes: dict[str, Any], source: str) -> Any:
    extensions = {
        "inputid": str(input_attributes.get("id", "")),
        "rulesetver": decision.ruleset_version,
        "traceparent": child_traceparent(input_attributes.get("traceparent")),
    }
    callid = decision.data.get("callid") or input_attributes.get("callid")
    if isinstance(callid, str) and _EXTENSION_VALUE.match(callid):
        extensions["callid"] = callid
    return new_event(decision.type, source, decision.data, id=decision.id, subject=decision.rule_id, extensions=extensions)


def files_signature(directory: Any) -> tuple[tuple[str, int, int], ...]:
    """Cheap change detection: names, sizes and mtimes of the rule files."""
    signature = []
    for path in rule_files(directory):
        with contextlib.suppress(OSError):
            stat = path.stat()
            signature.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(signature)


@serve.deployment(name="RulesEngine")
class RulesEngine:
    async def __init__(self, settings: Settings) -> None:
        assert settings.nats.url, "the app builder always sets the NATS URL"
        self._settings = settings
        directory = settings.rules.directory
        # At start there are no last good rules to fall back on: a broken file fails the replica, loudly.
        self._signature = files_signature(directory)
        self._ruleset: RuleSet = load_ruleset(directory)
        self._last_error: str | None = None
        self._nc = await connect(settings.nats.url, name="listenpost-rules")
        self._js = self._nc.jetstream()
        await provision(self._js, settings.nats, settings.rules.subjects(settings.nats))
        self._consumer = PullConsumer(
            self._js,
            stream=settings.nats.out_stream,
            durable=settings.nats.rules_durable,
            handler=self._handle,
            dead_letter=lambda msg, poison: dead_letter(self._js, settings.nats, settings.source, msg, poison),
            max_deliver=settings.nats.max_deliver,
            max_in_flight=64,
            batch=32,
        )
        self._consumer.start()
        self._reloader = asyncio.get_running_loop().create_task(self._watch_rules())

    async def _watch_rules(self) -> None:
        while True:
            await asyncio.sleep(self._settings.rules.reload_interval_s)
            signature = await asyncio.to_thread(files_signature, self._settings.rules.directory)
            if signature != self._signature:
                self._signature = signature
                await asyncio.to_thread(self.reload)

    def reload(self) -> str:
        """Validate the rule files, then swap them in whole; on error keep the last good rules."""
        try:
            ruleset = load_ruleset(self._settings.rules.directory)
        except RuleSetError as exc:
            self._last_error = str(exc)
            log.error("rules not reloaded, keeping version %s:\n%s", self._ruleset.version, exc)
            return self._ruleset.version
        self._ruleset, self._last_error = ruleset, None
        log.info("rules reloaded: version %s, %d rules", ruleset.version, len(ruleset.rules))
        return ruleset.version

    async def _handle(self, msg: Msg) -> None:
        try:
            event = decode(msg.data, msg.headers)
        except BindingError as exc:
            raise Poison("rules", str(exc), error=type(exc).__name__) from exc
        attributes = event_attributes(event)
        try:
            data = event_data_json(event)
        except ValueError as exc:
            raise Poison("rules", f"event data is not JSON: {exc}", error=type(exc).__name__) from exc
        ruleset = self._ruleset  # one ruleset for the whole event, even if a reload lands meanwhile
        evaluation = evaluate(ruleset, attributes, data, prefix=self._settings.nats.subject_prefix)
        for error in evaluation.errors:
            log.warning("rule %s failed on event %s: %s", error.rule_id, event.get_id(), error.message)
        for decision in evaluation.decisions:
            out = decision_event(decision, attributes, self._settings.source)
            await publish_event(self._js, decision.subject, out, msg_id=decision.id)

    async def status(self) -> dict[str, Any]:
        stats = self._consumer.stats
        return {
            "ruleset_version": self._ruleset.version,
            "rules": len(self._ruleset.rules),
            "last_reload_error": self._last_error,
            "acked": stats.acked,
            "dead_lettered": stats.dead_lettered,
        }

    async def check_health(self) -> None:
        if (failure := self._consumer.failure) is not None:
            raise RuntimeError(f"rules consumer loop died: {failure!r}")

    async def __del__(self) -> None:
        self._reloader.cancel()
        await self._consumer.stop()
        await self._nc.drain()
