"""Traces across the graph: OpenTelemetry, configured only by the standard ``OTEL_*`` variables.

One trace per input event. The CloudEvent's ``traceparent`` extension (the CloudEvents
distributed-tracing extension, W3C Trace Context) is the parent of the span that consumes it,
and every event listenpost emits carries the ``traceparent`` of the span that published it,
so a downstream consumer (the RulesEngine, or anyone's) continues the same trace.

- :func:`configure_tracing` is called in each deployment's constructor with its own service
  name (``listenpost-ingress``, ``-preprocessor``, ``-captioner``, ``-rules``): Ray Serve
  replicas are separate processes, so each sets up its own provider. With no
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` it does nothing:
  the API's no-op tracer stays in place and a span costs a function call (measured in
  observability/README.md, "Traces").
- The SDK reads everything else itself: ``OTEL_EXPORTER_OTLP_PROTOCOL`` (``http/protobuf``,
  the default, or ``grpc``), ``OTEL_TRACES_SAMPLER``/``_ARG``, ``OTEL_RESOURCE_ATTRIBUTES``,
  ``OTEL_SERVICE_NAME`` (which wins over the deployment's name), headers, timeouts, TLS.
- Messaging spans follow the OpenTelemetry messaging semantic conventions
  (``messaging.system`` = ``nats``): :func:`consume_span` (kind CONSUMER, parent = the
  message's ``traceparent``), :func:`publish_span` (kind PRODUCER, whose context the published
  event carries), :func:`receive_span` (one fetch of a batch: links, not parents).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_PROPAGATOR = TraceContextTextMapPropagator()
_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_STRUCTURED = "application/cloudevents+json"

#: A proxy: it becomes the real tracer once (and if) :func:`configure_tracing` installs a provider.
tracer = trace.get_tracer("listenpost")
_enabled = False


def tracing_enabled() -> bool:
    """True once this process exports spans (work done only for tracing is skipped otherwise)."""
    return _enabled


def engine_tracing_env(env: Mapping[str, str]) -> dict[str, str]:
    """What vLLM's own OTLP tracing needs to export where this process does; {} when it does not trace.

    vLLM takes one ``otlp_traces_endpoint`` (used as is) and reads only
    ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` (default grpc), where the OpenTelemetry spec also lets
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` (a base URL, ``/v1/traces`` appended for HTTP) and
    ``OTEL_EXPORTER_OTLP_PROTOCOL`` (default http/protobuf) speak for traces: so derive both.
    """
    if (env.get("OTEL_TRACES_EXPORTER") or "otlp").strip() == "none":
        return {}
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip()
    endpoint = (env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or "").strip()
    if not endpoint:
        base = (env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "").strip()
        if not base:
            return {}
        endpoint = base if protocol == "grpc" else f"{base.rstrip('/')}/v1/traces"
    return {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": protocol}


def configure_tracing(service_name: str) -> bool:
    """Install an OTLP-exporting tracer provider for this process; False (and nothing done) without an endpoint.

    Idempotent within a process: the first call's service name stays (OpenTelemetry allows one
    global provider per process).
    """
    global _enabled
    if _enabled:
        return True
    if not any(os.environ.get(name) for name in _ENDPOINT_VARIABLES):
        return False
    # Imported here: a process without an endpoint never loads the SDK or an exporter.
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    ).strip()
    exporter: Any
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        exporter = GrpcExporter()
    elif protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        exporter = HttpExporter()
    else:
        log.error("tracing not enabled: OTEL_EXPORTER_OTLP_PROTOCOL=%r is neither 'http/protobuf' nor 'grpc'", protocol)
        return False
    # Resource.create merges OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME; an explicit
    # OTEL_SERVICE_NAME is the operator's choice, so it wins over the deployment's default.
    name = os.environ.get("OTEL_SERVICE_NAME") or service_name
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))  # sampler: OTEL_TRACES_SAMPLER
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _enabled = True
    log.info("tracing on: %s exports spans over OTLP (%s) to %s", name, protocol,
             next(os.environ[v] for v in _ENDPOINT_VARIABLES if os.environ.get(v)))  # fmt: skip
    return True


def shutdown_tracing() -> None:
    """Export the spans still buffered and stop (a replica's shutdown; tests)."""
    global _enabled
    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if callable(shutdown):
        shutdown()
    _enabled = False


# --- trace context -------------------------------------------------------------------


def child_traceparent(parent: str | None) -> str:
    """A new span id in the parent's trace, or a new trace when there is no valid parent."""
    match = _TRACEPARENT.match(parent or "")
    trace_id = match.group(1) if match else secrets.token_hex(16)
    flags = match.group(3) if match else "01"
    return f"00-{trace_id}-{secrets.token_hex(8)}-{flags}"


def traceparent_of(span: Span) -> str | None:
    """The W3C ``traceparent`` of ``span``, or None for a non-recording (no-op) span."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def current_traceparent() -> str | None:
    """The current span's ``traceparent`` (to hand to another replica), None when not tracing."""
    return traceparent_of(trace.get_current_span()) if _enabled else None


def output_traceparent(input_traceparent: str | None) -> str:
    """The ``traceparent`` an output carries: the span producing it, else a child id in the input's trace."""
    return current_traceparent() or child_traceparent(input_traceparent)


def context_from(traceparent: str | None) -> otel_context.Context | None:
    """The remote parent a ``traceparent`` names (None when absent or malformed: a new trace)."""
    if not traceparent or not _TRACEPARENT.match(traceparent):
        return None
    return _PROPAGATOR.extract({"traceparent": traceparent})


def message_traceparent(headers: Mapping[str, str] | None, body: bytes) -> str | None:
    """A NATS message's CloudEvent ``traceparent``: the ``ce-traceparent`` header (binary mode),
    else the structured body's attribute. Only read while tracing (it may parse the body)."""
    lowered = {k.lower(): v for k, v in (headers or {}).items()}
    if "ce-traceparent" in lowered:
        return lowered["ce-traceparent"]
    if "ce-specversion" in lowered or not body.lstrip().startswith(b"{"):
        return None  # binary mode without one, or not JSON: no trace to continue
    if _STRUCTURED not in lowered.get("content-type", _STRUCTURED):
        return None
    try:
        value = json.loads(body).get("traceparent")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def message_id(headers: Mapping[str, str] | None) -> str | None:
    """The id of the event a message carries (binary mode's ``ce-id``), else its ``Nats-Msg-Id``."""
    lowered = {k.lower(): v for k, v in (headers or {}).items()}
    return lowered.get("ce-id") or lowered.get("nats-msg-id")


# --- spans ------------------------------------------------------------------------------


@contextlib.contextmanager
def stage_span(
    name: str, attributes: Mapping[str, Any] | None = None, *, parent: str | None = None, link: str | None = None
) -> Iterator[Span]:
    """An internal span, child of the current one (or of ``parent``, a ``traceparent`` handed over
    from another replica), optionally linked to another trace (``link``, a ``traceparent``).
    Exceptions are recorded and mark the span as an error."""
    if not _enabled:  # the no-op span, without touching the context: the cost of a generator
        yield trace.INVALID_SPAN
        return
    ctx = context_from(parent) if parent else None
    linked = context_from(link) if link else None
    links = [Link(trace.get_current_span(linked).get_span_context())] if linked is not None else None
    with tracer.start_as_current_span(name, context=ctx, links=links, attributes=dict(attributes or {})) as span:
        yield span


@contextlib.contextmanager
def consume_span(
    *, stream: str, durable: str, subject: str, headers: Mapping[str, str] | None, body: bytes, delivery: int
) -> Iterator[Span]:
    """The CONSUMER span of one message (its handling, and its ack, nak or dead letter);
    its parent is the trace the message's event carries."""
    if not _enabled:  # the no-op span: nothing parsed, the context untouched
        yield trace.INVALID_SPAN
        return
    attributes: dict[str, Any] = {
        "messaging.system": "nats",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": subject,
        "messaging.consumer.group.name": durable,
        "messaging.nats.stream": stream,
        "messaging.nats.delivery": delivery,
    }
    if (msg_id := message_id(headers)) is not None:
        attributes["messaging.message.id"] = msg_id
    ctx = context_from(message_traceparent(headers, body))
    with tracer.start_as_current_span(f"process {stream}", context=ctx, kind=SpanKind.CONSUMER,
                                      attributes=attributes) as span:  # fmt: skip
        yield span


@contextlib.contextmanager
def receive_span(*, stream: str, durable: str, messages: Sequence[Any]) -> Iterator[Span]:
    """One fetch of a batch: a root span LINKED to each message's trace (one span, many traces)."""
    links: list[Link] = []
    if _enabled:
        for msg in messages:
            ctx = context_from(message_traceparent(msg.headers, msg.data))
            if ctx is not None:
                links.append(Link(trace.get_current_span(ctx).get_span_context()))
    attributes: dict[str, Any] = {
        "messaging.system": "nats",
        "messaging.operation.type": "receive",
        "messaging.operation.name": "fetch",
        "messaging.consumer.group.name": durable,
        "messaging.nats.stream": stream,
        "messaging.batch.message_count": len(messages),
    }
    with tracer.start_as_current_span(f"receive {stream}", context=otel_context.Context(), kind=SpanKind.CONSUMER,
                                      links=links, attributes=attributes) as span:  # fmt: skip
        yield span


@contextlib.contextmanager
def publish_span(subject: str, msg_id: str) -> Iterator[str | None]:
    """The PRODUCER span of one publish; yields its ``traceparent`` (None when not tracing) for the event."""
    if not _enabled:
        yield None
        return
    attributes: dict[str, Any] = {
        "messaging.system": "nats",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": subject,
        "messaging.message.id": msg_id,
    }
    with tracer.start_as_current_span(f"send {subject}", kind=SpanKind.PRODUCER, attributes=attributes) as span:
        yield traceparent_of(span)


def mark_error(span: Span, error: str, reason: str) -> None:
    """An outcome that is not an exception here (a dead letter, a failed rule) still shows as an error."""
    span.set_status(Status(StatusCode.ERROR, f"{error}: {reason}"))
