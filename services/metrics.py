"""Every Prometheus metric listenpost exports, declared once (docs/observability.md).

:data:`METRICS` is the one table: the code records through it, the Grafana dashboard
check (tests/test_observability.py) reads the exported names from it, and the docs list it.

Metrics go through ``ray.serve.metrics``, so they appear on Ray's Prometheus endpoint beside
Serve's and vLLM's own; Ray prefixes them ``ray_`` and Prometheus counters get ``_total``
(see :func:`exported_names`). Outside a Ray worker (unit tests, the CLI) a Ray metric has
nowhere to go, so the same calls record into an in-memory :class:`MemoryBackend` that tests
read. Labels are a small fixed set (:data:`LABELS`): stage, reason, rule id, ruleset version,
durable, stream, label; never a call id or an event id, so a series count stays bounded.

This module sits at the base of the layers (it imports nothing of listenpost), so the
events layer's consumer can count what it does.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

log = logging.getLogger(__name__)

Kind = Literal["counter", "gauge", "histogram"]

#: Every label a listenpost metric may carry; each has a bounded set of values.
LABELS = frozenset(
    {"stage", "reason", "rule_id", "ruleset_version", "durable", "stream", "bucket", "label", "outcome", "receiver"}
)

#: What Ray puts before a custom metric's name on its Prometheus endpoint.
RAY_PREFIX = "ray_"

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_ENGINE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_CHARS_BUCKETS = (1.0, 10.0, 25.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1600.0)


@dataclass(frozen=True)
class MetricSpec:
    name: str  # the name recorded; Ray exports it as exported_names(spec)
    kind: Kind
    description: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


METRICS: tuple[MetricSpec, ...] = (
    # --- JetStream consumers (services/events/consumer.py) ---
    MetricSpec("listenpost_events_consumed", "counter", "Messages fetched by a durable consumer.", ("durable",)),
    MetricSpec("listenpost_events_acked", "counter", "Messages acknowledged after their outputs were stored.", ("durable",)),
    MetricSpec("listenpost_events_naked", "counter", "Messages nak'd for redelivery later, by reason.", ("durable", "reason")),
    MetricSpec("listenpost_events_redelivered", "counter", "Messages fetched again (delivery count above one).", ("durable",)),
    MetricSpec(
        "listenpost_events_dead_lettered", "counter", "Messages dead-lettered, by stage and reason.", ("durable", "stage", "reason")
    ),
    # --- latency ---
    MetricSpec(
        "listenpost_stage_latency_seconds",
        "histogram",
        "Time one event spent in a stage (preprocess, caption, rules).",
        ("stage",),
        _LATENCY_BUCKETS,
    ),  # fmt: skip
    MetricSpec(
        "listenpost_end_to_end_latency_seconds",
        "histogram",
        "Input stored to captioned stored (stage=captioned); captioned stored to decision stored (stage=decided).",
        ("stage",),
        _LATENCY_BUCKETS,
    ),  # fmt: skip
    # --- captioning (services/orchestrator) ---
    MetricSpec("listenpost_audio_seconds", "counter", "Seconds of audio captioned."),
    MetricSpec("listenpost_windows", "counter", "Windows sent to the captioner."),
    MetricSpec("listenpost_prompt_tokens", "counter", "Prompt tokens of captioned windows."),
    MetricSpec("listenpost_output_tokens", "counter", "Output tokens of captioned windows."),
    MetricSpec("listenpost_engine_window_seconds", "histogram", "Engine time per window.", (), _ENGINE_BUCKETS),
    MetricSpec("listenpost_windows_waiting", "gauge", "Windows sent to the captioner and not answered yet."),
    # --- quality signals ---
    MetricSpec("listenpost_captions_empty", "counter", "Windows whose caption came back empty."),
    MetricSpec("listenpost_captions_truncated", "counter", "Windows whose caption hit max_tokens."),
    MetricSpec("listenpost_caption_length_chars", "histogram", "Caption length per window, in characters.", (), _CHARS_BUCKETS),
    MetricSpec("listenpost_facets", "counter", "Facets found, per label (facet rate = this / events captioned).", ("label",)),
    MetricSpec("listenpost_events_captioned", "counter", "Events captioned (denominator of facet rates)."),
    MetricSpec("listenpost_windows_no_speech", "counter", "Windows with no speech (the VAD found none)."),
    # --- rules (services/rules) ---
    MetricSpec("listenpost_rule_evaluations", "counter", "Rule conditions run, per ruleset version.", ("ruleset_version",)),
    MetricSpec("listenpost_rule_matches", "counter", "Rule matches.", ("rule_id", "ruleset_version")),
    MetricSpec("listenpost_rule_errors", "counter", "Rule evaluation errors.", ("rule_id", "ruleset_version")),
    MetricSpec(
        "listenpost_alerts",
        "counter",
        "Alerts by outcome: notified, silenced, rate_limited.",
        ("rule_id", "outcome"),
    ),  # fmt: skip
    # --- JetStream state, polled from the server (services/events/jsstate.py) ---
    MetricSpec("listenpost_consumer_pending_messages", "gauge", "Messages not yet delivered to a durable.", ("durable",)),
    MetricSpec("listenpost_consumer_ack_pending_messages", "gauge", "Messages delivered and not yet acked.", ("durable",)),
    MetricSpec("listenpost_stream_bytes", "gauge", "Bytes stored in a stream.", ("stream",)),
    MetricSpec("listenpost_stream_messages", "gauge", "Messages stored in a stream.", ("stream",)),
    MetricSpec("listenpost_dlq_messages", "gauge", "Dead letters stored (the DLQ depth)."),
    MetricSpec("listenpost_stream_replicas", "gauge", "Copies of a stream its configuration asks for.", ("stream",)),
    MetricSpec(
        "listenpost_stream_replicas_current",
        "gauge",
        "Copies of a stream that are up to date: a leader and its current, online followers.",
        ("stream",),
    ),  # fmt: skip
    MetricSpec("listenpost_object_store_bytes", "gauge", "Bytes stored in an object store bucket.", ("bucket",)),
    # --- notifications (services/notify): receivers are named in the notification file, a bounded set ---
    MetricSpec("listenpost_notify_group_joins", "counter", "Alerts joining an aggregation group (one per route they reach)."),
    MetricSpec("listenpost_notify_groups", "gauge", "Aggregation groups the notifier holds (alerts firing or untold)."),
    MetricSpec(
        "listenpost_notifications_deduplicated",
        "counter",
        "Alerts raised again while they fire in their group (same fingerprint): no notification of their own, "
        "told again only at the route's repeat_interval.",
        ("receiver",),
    ),  # fmt: skip
    MetricSpec("listenpost_notifications_queued", "counter", "Notifications queued for a receiver.", ("receiver",)),
    MetricSpec(
        "listenpost_notifications_skipped",
        "counter",
        "Alerts held back before they were told, once per group: inhibited, or muted by time intervals.",
        ("reason",),
    ),
    MetricSpec("listenpost_notifications_sent", "counter", "Notifications a receiver accepted.", ("receiver",)),
    MetricSpec(
        "listenpost_notifications_retried", "counter", "Failed attempts that will be tried again, by reason.", ("receiver", "reason")
    ),
    MetricSpec(
        "listenpost_notifications_dead_lettered", "counter", "Notifications given up on (dead letters), by reason.", ("receiver", "reason")
    ),
    MetricSpec(
        "listenpost_notification_delivery_seconds",
        "histogram",
        "Time from queued to accepted by the receiver, retries included.",
        ("receiver",),
        _LATENCY_BUCKETS,
    ),  # fmt: skip
    MetricSpec("listenpost_notify_dead_letters", "gauge", "Notification dead letters stored (listenpost notify list --dlq)."),
    # --- CRM write-back (services/notify/crm_writer.py): targets are named in the notification file ---
    MetricSpec(
        "listenpost_crm_writes",
        "counter",
        "Call summaries for a CRM target, by outcome: sent, skipped (its `when`), retried, dead_lettered.",
        ("receiver", "outcome"),
    ),  # fmt: skip
    MetricSpec(
        "listenpost_crm_write_seconds",
        "histogram",
        "Time from the call's rules evaluated to its summary accepted by the CRM, retries included.",
        ("receiver",),
        _LATENCY_BUCKETS,
    ),  # fmt: skip
    # --- live streams (services/streams/) ---
    MetricSpec("listenpost_streams_open", "gauge", "Live streams a LiveStreams replica owns now."),
    MetricSpec("listenpost_stream_chunks", "counter", "Live audio chunks read."),
    MetricSpec(
        "listenpost_stream_windows", "counter", "Live windows by outcome: captioned, silent (under the gate), dropped (behind).",
        ("outcome",),
    ),
    MetricSpec("listenpost_stream_chunk_faults", "counter", "Chunks duplicated, out of order or missing, by label.", ("label",)),
    MetricSpec("listenpost_streams_failed", "counter", "Live streams closed for bad input, by reason.", ("reason",)),
    MetricSpec(
        "listenpost_stream_window_latency_seconds", "histogram",
        "From the end of a window in the audio (started_at + end) to its event being stored.", (), _LATENCY_BUCKETS,
    ),
)

SPECS: dict[str, MetricSpec] = {spec.name: spec for spec in METRICS}

# Alert hygiene outcomes (services/rules/alerting.py) and nak reasons: fixed vocabularies.
# Grouping and deduplication are the notifier's (listenpost_notify_group_joins and
# listenpost_notifications_deduplicated), not outcomes of the rules engine.
ALERT_OUTCOMES = ("notified", "silenced", "rate_limited")
REASONS = ("timeout", "too_large", "unsupported", "invalid", "not_found", "unavailable", "retries_exhausted", "error")
#: Why a notification was retried or dead-lettered (services/notify/delivery.py), and why none was made.
DELIVERY_REASONS = (
    "timeout", "unavailable", "rate_limited", "rejected", "retries_exhausted", "expired", "unknown_receiver", "error",
)  # fmt: skip
SKIP_REASONS = ("inhibited", "muted")
#: What became of one call's summary for one CRM target.
CRM_OUTCOMES = ("sent", "skipped", "retried", "dead_lettered")

_REASON_CUES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("retries_exhausted", re.compile(r"gave up after|max_?deliver", re.I)),
    ("timeout", re.compile(r"timeout|timed out|not finished within", re.I)),
    ("too_large", re.compile(r"too (large|long|big)|exceeds|limit", re.I)),
    ("unsupported", re.compile(r"unsupported|unrecogni[sz]ed|could not be decoded|undecodable", re.I)),
    ("not_found", re.compile(r"not found|no such|missing|404", re.I)),
    ("unavailable", re.compile(r"unavailable|refused|dead|backpressure|connection|5\d\d", re.I)),
    ("invalid", re.compile(r"invalid|validation|malformed|not readable|parse|decode", re.I)),
)


def reason_label(error: str, text: str = "") -> str:
    """A free-text failure (its error type and message) as one of :data:`REASONS`."""
    for reason, cue in _REASON_CUES:
        if cue.search(error) or cue.search(text):
            return reason
    return "error"


def exported_names(spec: MetricSpec) -> tuple[str, ...]:
    """The series names Prometheus scrapes for ``spec`` from Ray's endpoint."""
    base = RAY_PREFIX + spec.name
    if spec.kind == "counter":
        return (base + "_total",)
    if spec.kind == "histogram":
        return (base + "_bucket", base + "_sum", base + "_count")
    return (base,)


def all_exported_names() -> frozenset[str]:
    return frozenset(name for spec in METRICS for name in exported_names(spec))


class MetricsError(ValueError):
    """A metric recorded against its declaration (unknown name, wrong kind or labels)."""


class Backend(Protocol):
    def record(self, spec: MetricSpec, value: float, labels: Mapping[str, str]) -> None: ...


class MemoryBackend:
    """Keeps what was recorded (counters add, gauges replace, histograms list observations)."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
        self._lock = threading.Lock()

    def record(self, spec: MetricSpec, value: float, labels: Mapping[str, str]) -> None:
        key = (spec.name, tuple(sorted(labels.items())))
        with self._lock:
            if spec.kind == "counter":
                self.values[key] = self.values.get(key, 0.0) + value
            elif spec.kind == "gauge":
                self.values[key] = value
            else:
                self.values.setdefault(key, []).append(value)

    def get(self, name: str, **labels: str) -> Any:
        return self.values.get((name, tuple(sorted(labels.items()))))

    def total(self, name: str) -> float:
        """A counter summed over all its label values."""
        return sum(v for (n, _), v in self.values.items() if n == name)


class RayBackend:
    """``ray.serve.metrics`` objects, made on first use (they need a running Ray worker)."""

    def __init__(self) -> None:
        self._made: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _metric(self, spec: MetricSpec) -> Any:
        with self._lock:
            found = self._made.get(spec.name)
            if found is None:
                from ray.serve import metrics as serve_metrics  # a Ray worker only

                keys: Any = spec.labels  # Ray annotates tag_keys as a 1-tuple; any tuple works

                if spec.kind == "counter":
                    found = serve_metrics.Counter(spec.name, spec.description, tag_keys=keys)
                elif spec.kind == "gauge":
                    found = serve_metrics.Gauge(spec.name, spec.description, tag_keys=keys)
                else:
                    found = serve_metrics.Histogram(spec.name, spec.description, boundaries=list(spec.buckets), tag_keys=keys)
                self._made[spec.name] = found
            return found

    def record(self, spec: MetricSpec, value: float, labels: Mapping[str, str]) -> None:
        metric = self._metric(spec)
        tags = dict(labels)
        if spec.kind == "counter":
            metric.inc(value, tags=tags)
        elif spec.kind == "gauge":
            metric.set(value, tags=tags)
        else:
            metric.observe(value, tags=tags)


class Recorder:
    """Records against :data:`METRICS`; a metric never breaks the work it measures."""

    def __init__(self, backend: Backend | None = None) -> None:
        self._backend = backend

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = _default_backend()
        return self._backend

    def _record(self, name: str, kind: Kind, value: float, labels: Mapping[str, str]) -> None:
        spec = check(name, kind, labels)
        try:
            self.backend.record(spec, float(value), {k: str(v) for k, v in labels.items()})
        except Exception:  # a metrics fault is logged, the event goes on
            log.exception("metric %s not recorded", name)

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        if value > 0:  # Prometheus counters only go up; zero adds nothing
            self._record(name, "counter", value, labels)

    def set(self, name: str, value: float, **labels: str) -> None:
        self._record(name, "gauge", value, labels)

    def observe(self, name: str, value: float, **labels: str) -> None:
        self._record(name, "histogram", max(0.0, value), labels)


def check(name: str, kind: Kind, labels: Mapping[str, str]) -> MetricSpec:
    """The declaration of ``name``, if it is recorded as declared."""
    spec = SPECS.get(name)
    if spec is None:
        raise MetricsError(f"metric {name} is not declared in services/metrics.py")
    if spec.kind != kind:
        raise MetricsError(f"metric {name} is a {spec.kind}, not a {kind}")
    if set(labels) != set(spec.labels):
        raise MetricsError(f"metric {name} takes labels {sorted(spec.labels)}, got {sorted(labels)}")
    return spec


def _default_backend() -> Backend:
    try:
        import ray

        in_ray = ray.is_initialized()
    except ImportError:
        in_ray = False
    return RayBackend() if in_ray else MemoryBackend()


_RECORDER = Recorder()


def recorder() -> Recorder:
    """The process's recorder: Ray metrics in a Ray worker, memory elsewhere."""
    return _RECORDER


def use_backend(backend: Backend | None) -> Recorder:
    """Point the process's recorder at ``backend`` (tests); None: choose again on next use."""
    _RECORDER._backend = backend
    return _RECORDER
