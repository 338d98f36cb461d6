"""Metrics declarations, the consumer's and the JetStream poller's metrics against a real
nats-server, the self-alert rules under a real promtool, and the dashboard's metric names.

The Prometheus binaries come from Debian's `prometheus` package, unpacked into
.cache/prometheus by scripts/setup.sh (no system service).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from services.events.binding import new_event
from services.events.connection import connect
from services.events.consumer import Poison, PullConsumer, Redelivery, RetryLater
from services.events.deadletter import dead_letter
from services.events.embedded import EmbeddedNatsServer
from services.events.facets import EmotionFacet, SoundEventFacet
from services.events.jetstream import provision_everything, publish_event
from services.events.jsstate import poll, record
from services.events.models import (
    AUDIO_SUBMITTED,
    Acoustics,
    AudioCaptioned,
    AudioFacts,
    ChannelAcoustics,
    Facets,
    SourceEventRef,
    Window,
)  # fmt: skip
from services.metrics import METRICS, MemoryBackend, MetricsError, all_exported_names, reason_label
from services.orchestrator.metrics import observe_captioned
from services.rules.alerting import Suppressed
from services.rules.decisions import Decision, DecisionKind
from services.rules.engine import Outcome
from services.rules.evaluate import Evaluation, RuleError, RuleMatch
from services.rules.metrics import observe_outcome
from services.settings import NatsSettings, Settings

REPO = Path(__file__).resolve().parents[1]
OBSERVABILITY = REPO / "observability"
SETTINGS = Settings(_env_file=None)

#: Names the dashboard may use that Ray Serve exports itself (not in services/metrics.py).
SERVE_NAMES = frozenset({
    "ray_serve_deployment_replica_healthy",
    "ray_serve_deployment_request_counter_total",
    # The autoscaler's target count and its policy's raw wish (docs/scaling.md#autoscaling).
    "ray_serve_autoscaling_target_replicas",
    "ray_serve_autoscaling_desired_replicas",
})  # fmt: skip


def promtool() -> str:
    found = REPO / ".cache/prometheus/usr/bin/promtool"
    if found.exists():
        return str(found)
    on_path = shutil.which("promtool")
    if on_path is None:
        pytest.fail("promtool not found: run scripts/setup.sh (it unpacks Debian's prometheus into .cache/prometheus)")
    return on_path




# --- declarations ------------------------------------------------------------------


def test_every_metric_follows_prometheus_naming_and_bounded_labels() -> None:
    names = [spec.name for spec in METRICS]
    assert len(names) == len(set(names))
    for spec in METRICS:
        assert re.fullmatch(r"listenpost_[a-z_]+", spec.name), spec.name
        assert not spec.name.endswith("_total"), f"{spec.name}: Ray adds _total to counters"
        assert spec.description.endswith("."), spec.name
        assert not {"id", "event_id", "call_id", "callid", "input_id"} & set(spec.labels), spec.name
        if spec.kind == "histogram":
            assert spec.buckets == tuple(sorted(spec.buckets)) and spec.buckets, spec.name
    assert "ray_listenpost_events_dead_lettered_total" in all_exported_names()
    assert "ray_listenpost_stage_latency_seconds_bucket" in all_exported_names()


def test_a_metric_recorded_against_its_declaration_is_refused(memory: MemoryBackend) -> None:
    from services.metrics import recorder

    with pytest.raises(MetricsError, match=r"^metric listenpost_nope is not declared in services/metrics.py$"):
        recorder().inc("listenpost_nope")
    with pytest.raises(MetricsError, match=r"^metric listenpost_windows_waiting is a gauge, not a counter$"):
        recorder().inc("listenpost_windows_waiting")
    # An event id as a label is what bounded labels forbid.
    with pytest.raises(MetricsError, match=r"takes labels \['durable'\], got \['durable', 'event_id'\]$"):
        recorder().inc("listenpost_events_acked", durable="d", event_id="0b9c...")


def test_free_text_reasons_map_to_a_fixed_vocabulary() -> None:
    assert reason_label("UnsupportedFormatError", "audio could not be decoded: unrecognised audio format") == "unsupported"
    assert reason_label("retry", "gave up after 8 deliveries: RuntimeError: boom") == "retries_exhausted"
    assert reason_label("HandlingTimeout", "not finished within max_handling_s=3 s") == "timeout"
    assert reason_label("ValidationError", "invalid audio.submitted data") == "invalid"
    assert reason_label("KeyError", "something odd") == "error"


# --- the consumer, on a real nats-server ---------------------------------------------


@pytest.fixture
async def js(tmp_path: Path) -> AsyncIterator[tuple[JetStreamContext, NatsSettings]]:
    with EmbeddedNatsServer(tmp_path / "nats") as server:
        cfg = NatsSettings(url=server.url, ack_wait_s=2, max_deliver=2, retry_delay_s=0.1)
        nc = await connect(server.client_settings(), role="admin", name="metrics-test")
        jsc = nc.jetstream()
        await provision_everything(jsc, Settings(_env_file=None, nats=cfg))
        yield jsc, cfg
        await nc.close()


async def test_the_consumer_counts_consumed_acked_naked_redelivered_and_dead_lettered(js, memory: MemoryBackend) -> None:
    jsc, cfg = js
    for n in range(3):
        event = new_event("com.listenpost.audio.submitted", "urn:test", {"n": n})
        await publish_event(jsc, cfg.subject("in", "t"), event, msg_id=event.get_id())

    async def handler(msg: Msg) -> None:
        n = json.loads(msg.data)["n"] if msg.data.startswith(b"{") else None
        if n is None:
            n = int(json.loads(msg.data.decode()).get("data", {}).get("n", 0))
        if n == 1:
            raise Poison("decode-audio", "audio could not be decoded: unrecognised audio format")
        if n == 2 and msg.metadata.num_delivered == 1:
            raise RetryLater("engine restarting: connection refused")

    consumer = PullConsumer(
        jsc, stream=cfg.in_stream, durable=cfg.ingest_durable, handler=handler,
        dead_letter=lambda msg, poison: dead_letter(jsc, cfg, "urn:test", msg, poison),
        redelivery=Redelivery(cfg.max_deliver, heartbeat_s=0.5, retry_delay_s=0.1, retry_delay_max_s=0.2),
    )  # fmt: skip
    consumer.start()
    try:
        async with asyncio.timeout(20):
            while consumer.stats.acked < 2 or consumer.stats.dead_lettered < 1:
                await asyncio.sleep(0.05)
    finally:
        await consumer.stop(drain_timeout_s=5)
    durable = cfg.ingest_durable
    assert memory.get("listenpost_events_consumed", durable=durable) == 4  # 3 + one redelivery
    assert memory.get("listenpost_events_redelivered", durable=durable) == 1
    assert memory.get("listenpost_events_acked", durable=durable) == 2
    assert memory.get("listenpost_events_naked", durable=durable, reason="unavailable") == 1
    assert memory.get("listenpost_events_dead_lettered", durable=durable, stage="decode-audio", reason="unsupported") == 1


# --- the JetStream poller, as the ingress role on a hardened server ---------------------


async def test_the_poller_reads_lag_sizes_and_dlq_depth_as_the_ingress_role(tmp_path: Path, memory: MemoryBackend) -> None:
    root = tmp_path / "hardened"
    with EmbeddedNatsServer(root / "data", secrets_dir=root / "secrets", tls=True, settings=SETTINGS) as server:
        cfg = server.client_settings()
        admin = await connect(cfg, role="admin", name="metrics-admin")
        await provision_everything(admin.jetstream(), SETTINGS)
        event = new_event("com.listenpost.audio.submitted", "urn:test", {"n": 1})
        await publish_event(admin.jetstream(), SETTINGS.nats.subject("in", "t"), event, msg_id=event.get_id())
        await admin.close()

        # Before issue 13 the ingress role could not read the rules engine's consumer: the
        # server answered CONSUMER.INFO with a permissions violation (a timeout to the client).
        ingress = await connect(cfg, role="ingress", name="metrics-ingress")
        try:
            readings = await asyncio.wait_for(poll(ingress.jetstream(), SETTINGS.model_copy(update={"nats": cfg})), 20)
        finally:
            await ingress.close()
    record(readings)
    nats = SETTINGS.nats
    assert memory.get("listenpost_consumer_pending_messages", durable=nats.ingest_durable) == 1
    assert memory.get("listenpost_consumer_ack_pending_messages", durable=nats.ingest_durable) == 0
    assert memory.get("listenpost_consumer_pending_messages", durable=nats.rules_durable) == 0
    assert memory.get("listenpost_stream_messages", stream=nats.in_stream) == 1
    assert memory.get("listenpost_stream_bytes", stream=nats.in_stream) > 0
    assert memory.get("listenpost_dlq_messages") == 0
    assert memory.get("listenpost_object_store_bytes", bucket=nats.outputs_bucket) == 0


# --- what one captioned event and one rules outcome record ------------------------------

MAX_TOKENS = 64


def channel(index: int | None, talk_time_s: float) -> ChannelAcoustics:
    return ChannelAcoustics(
        channel=index, role=None if index is None else ("agent", "customer")[index], duration_s=30.0, rms_dbfs=-24.0,
        peak_dbfs=-3.0, silence_ratio=0.3, longest_silence_s=2.0, talk_time_s=talk_time_s,
    )  # fmt: skip


def captioned(windows: list[Window], channels: list[ChannelAcoustics], facets: Facets, *, speech_ratio: float) -> AudioCaptioned:
    return AudioCaptioned(
        source_event=SourceEventRef(id="in-1", source="urn:test", type=AUDIO_SUBMITTED),
        context={}, audio=AudioFacts(duration_s=30.0, sample_rate=8000, channels=max(1, len(channels))),
        windows=windows, caption=" ".join(w.caption for w in windows), facets=facets,
        acoustics=Acoustics(duration_s=30.0, silence_ratio=0.3, longest_silence_s=2.0, dead_air_s=0.0, peak_dbfs=-3.0,
                            channels=channels, speech_ratio=speech_ratio),
        model="tiny", engine="vllm", timings={"preprocess_s": 0.25, "caption_s": 1.5, "total_s": 1.8},
    )  # fmt: skip


def window(index: int, channel: int | None, caption: str, output_tokens: int) -> Window:
    return Window(index=index, start=0.0, end=10.0, channel=channel, caption=caption, prompt_tokens=100,
                  output_tokens=output_tokens, engine_s=0.02 * (index + 1))  # fmt: skip


def emotion(label: str, index: int) -> EmotionFacet:
    return EmotionFacet.model_validate({"role": "agent", "label": label, "intensity": 0.8, "window": index, "start": 0.0,
                                        "end": 10.0, "span": "..."})  # fmt: skip


def test_a_captioned_event_records_its_quality_signals(memory: MemoryBackend) -> None:
    # A two-channel call: the agent (channel 0) speaks, the customer's channel (1) has no speech.
    stereo = captioned(
        [
            window(0, 0, "The agent greets the caller.", 8),
            window(1, 0, "", 0),  # empty
            window(2, 0, "x" * 300, MAX_TOKENS),  # the engine stopped at max_tokens: truncated
            window(3, 1, "Silence on the line.", MAX_TOKENS - 1),  # one token short of the cap: whole
            window(4, 1, "   ", 1),  # whitespace only: empty
        ],
        [channel(0, 12.0), channel(1, 0.0)],
        # Anger twice in one call is one call with anger: a facet rate is per event captioned.
        Facets(emotions=[emotion("anger", 0), emotion("anger", 2), emotion("calm", 0)],
               sound_events=[SoundEventFacet(label="keyboard_typing", confidence=0.8, window=0, start=0.0, end=10.0, span="...")]),
        speech_ratio=0.4,
    )  # fmt: skip
    # A down-mixed call in which the VAD found nobody speaking: all its windows are no-speech.
    mono = captioned([window(0, None, "A dial tone.", 4)], [channel(None, 0.0)], Facets(emotions=[emotion("anger", 0)]), speech_ratio=0.0)
    observe_captioned(stereo, max_tokens=MAX_TOKENS, input_to_stored_s=2.5)
    observe_captioned(mono, max_tokens=MAX_TOKENS, input_to_stored_s=None)

    assert memory.get("listenpost_events_captioned") == 2
    assert memory.get("listenpost_windows") == 6
    assert memory.get("listenpost_audio_seconds") == 60.0
    assert memory.get("listenpost_captions_empty") == 2
    assert memory.get("listenpost_captions_truncated") == 1
    assert memory.get("listenpost_windows_no_speech") == 3  # channel 1's two windows and the silent down-mix's one
    assert memory.get("listenpost_caption_length_chars") == [28, 0, 300, 20, 3, 12]
    assert (memory.get("listenpost_facets", label="anger"), memory.get("listenpost_facets", label="calm")) == (2, 1)
    assert memory.get("listenpost_facets", label="keyboard_typing") == 1
    assert memory.total("listenpost_facets") == 4
    assert memory.get("listenpost_prompt_tokens") == 600
    assert memory.get("listenpost_output_tokens") == 8 + MAX_TOKENS + MAX_TOKENS - 1 + 1 + 4
    assert memory.get("listenpost_engine_window_seconds") == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1, 0.02])
    assert memory.get("listenpost_stage_latency_seconds", stage="preprocess") == [0.25, 0.25]
    assert memory.get("listenpost_stage_latency_seconds", stage="caption") == [1.5, 1.5]
    assert memory.get("listenpost_end_to_end_latency_seconds", stage="captioned") == [2.5]  # unknown for the other


def decision(kind: DecisionKind, rule_id: str, n: int = 0) -> Decision:
    return Decision(id=f"{rule_id}-{kind}-{n}", kind=kind, type=f"com.listenpost.{kind}", subject=f"listenpost.{kind}",
                    rule_id=rule_id, ruleset_version="v7", data={})  # fmt: skip


def test_a_rules_outcome_records_matches_errors_and_alert_outcomes(memory: MemoryBackend) -> None:
    evaluation = Evaluation(
        ruleset_version="v7", decisions=[], evaluated=6,
        matches=[RuleMatch("dead-air", "enforce"), RuleMatch("angry", "enforce"), RuleMatch("cancellation-risk", "shadow")],
        errors=[RuleError("broken", "division by zero")],
    )  # fmt: skip
    outcome = Outcome(
        evaluation=evaluation,
        publish=[decision("alert", "dead-air"), decision("alert", "dead-air", 1), decision("route", "angry")],
        suppressed=[Suppressed(decision("alert", "angry"), "silenced", "silence s-1"),
                    Suppressed(decision("alert", "screaming"), "rate_limited", "30 per 1m")],
    )  # fmt: skip
    observe_outcome(outcome, seconds=0.004, stored_age_s=0.5)
    # A second event of the same rule set, then one the loop guard skipped (not evaluated).
    observe_outcome(Outcome(evaluation=Evaluation("v7", [], [RuleMatch("dead-air", "enforce")], [], evaluated=6),
                            publish=[decision("alert", "dead-air", 2)]), seconds=0.003, stored_age_s=None)  # fmt: skip
    observe_outcome(Outcome(evaluation=None, publish=[], skipped="rule loop"), seconds=0.001, stored_age_s=0.2)

    assert memory.get("listenpost_rule_evaluations", ruleset_version="v7") == 12
    assert memory.get("listenpost_rule_matches", rule_id="dead-air", ruleset_version="v7") == 2
    assert memory.get("listenpost_rule_matches", rule_id="angry", ruleset_version="v7") == 1
    assert memory.get("listenpost_rule_matches", rule_id="cancellation-risk", ruleset_version="v7") is None  # shadow
    assert memory.get("listenpost_rule_errors", rule_id="broken", ruleset_version="v7") == 1
    assert memory.get("listenpost_alerts", rule_id="dead-air", outcome="notified") == 3
    assert memory.get("listenpost_alerts", rule_id="angry", outcome="silenced") == 1
    assert memory.get("listenpost_alerts", rule_id="screaming", outcome="rate_limited") == 1
    assert memory.get("listenpost_alerts", rule_id="angry", outcome="notified") is None  # a route is no alert
    assert memory.total("listenpost_alerts") == 5
    assert memory.get("listenpost_stage_latency_seconds", stage="rules") == [0.004, 0.003, 0.001]
    # Decided end to end only when something was stored (the skipped event publishes nothing).
    assert memory.get("listenpost_end_to_end_latency_seconds", stage="decided") == [0.5]


# --- self-alerts and dashboard ---------------------------------------------------------------


def test_self_alert_rules_pass_promtool_check_and_unit_tests() -> None:
    tool = promtool()
    checked = subprocess.run([tool, "check", "rules", str(OBSERVABILITY / "alerts.yaml")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    alerts = re.findall(r"- alert: (\w+)", (OBSERVABILITY / "alerts.yaml").read_text())
    assert f"SUCCESS: {len(alerts)} rules found" in checked.stdout  # promtool read every rule the file has
    tested = subprocess.run([tool, "test", "rules", str(OBSERVABILITY / "alerts_test.yaml")], capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_has_a_runbook() -> None:
    readme = (OBSERVABILITY / "README.md").read_text()
    alerts = re.findall(r"- alert: (\w+)", (OBSERVABILITY / "alerts.yaml").read_text())
    assert "ListenpostStreamUnderReplicated" in alerts and len(alerts) == len(set(alerts))
    for alert in alerts:
        assert f"### {alert}" in readme, f"no runbook for {alert} in observability/README.md"


_PROMQL_WORDS = frozenset(
    {"sum", "max", "min", "avg", "rate", "increase", "delta", "by", "without", "on", "and", "or", "unless",
     "histogram_quantile", "topk", "scalar", "vector", "le", "offset", "bool", "count"}
)  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords,
    label names (inside braces or by/on lists) or label values (strings)."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\b(by|on|without|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    return {w for w in re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", expr) if w not in _PROMQL_WORDS}


def test_the_dashboard_uses_only_metrics_the_service_exports() -> None:
    exported = all_exported_names() | SERVE_NAMES
    (dashboard,) = sorted((OBSERVABILITY / "grafana").glob("*.json"))
    exprs = [t["expr"] for p in json.loads(dashboard.read_text())["panels"] for t in p.get("targets", [])]
    used = set().union(*(metric_names(e) for e in exprs))
    assert used - exported == set(), f"{dashboard.name} uses metrics no one exports"
    # ... and every family listenpost declares is on the dashboard somewhere.
    families = {n.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") for n in used}
    missing = {s.name for s in METRICS if not any(f.startswith("ray_" + s.name) for f in families)}
    assert missing == set()
    alert_rules = (OBSERVABILITY / "alerts.yaml").read_text()
    alert_exprs = re.findall(r"expr: \|?\n?((?:.+\n)+?)\s+(?:for|labels):", alert_rules)
    assert alert_exprs and set().union(*(metric_names(e) for e in alert_exprs)) <= exported


def test_the_name_check_catches_an_unknown_metric() -> None:
    assert metric_names('sum by (durable) (rate(ray_listenpost_typo_total{durable="x"}[5m]))') == {"ray_listenpost_typo_total"}
