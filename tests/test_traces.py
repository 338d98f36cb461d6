"""One trace per input event, exported by the real OTLP/HTTP exporter to an OTLP endpoint run here.

The graph runs in-process, without Ray (Ray Serve would add nothing to what is traced: the
spans start in the deployments' own code, which runs here as the plain classes behind
the deployments): the Ingress, Preprocessor, Captioner (a stub model: the one part not real)
and RulesEngine constructed as Serve would, consuming from and publishing to a real
nats-server. The test's endpoint accepts ``POST /v1/traces`` (protobuf
``ExportTraceServiceRequest``), as an OpenTelemetry Collector does.

On today's code before this change there was no span at all, and the decision's
``traceparent`` was a random child id with no span behind it.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nats
import numpy as np
import pytest
from audio_factory import sndfile_bytes, speech
from otlp_receiver import ExportedSpan, OtlpReceiver
from stub_engine import StubEngine

from services import telemetry
from services.captioner.deployment import Captioner
from services.events.binding import new_event
from services.events.embedded import EmbeddedNatsServer
from services.events.jetstream import publish_event
from services.events.models import AUDIO_SUBMITTED
from services.orchestrator.deployment import Ingress
from services.preprocess.deployment import Preprocessor
from services.rules.deployment import RulesEngine
from services.settings import NatsSettings, PreprocessSettings, RulesSettings, Settings

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
INPUT_TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
POISON_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"

RULE = """\
apiVersion: listenpost/v1
kind: RuleSet
metadata: {name: traced, owner: test}
rules:
  - id: every-call
    description: Routes every captioned call, so each input has a decision.
    match:
      types: [com.listenpost.audio.captioned]
    when: acoustics.silence_ratio >= 0.0
    actions:
      - route: {queue: review}
"""


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[OtlpReceiver]:
    endpoint = OtlpReceiver()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_always_on")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    yield endpoint
    telemetry.shutdown_tracing()
    endpoint.close()


def handle(**methods: Any) -> Any:
    """A stand-in for a Serve DeploymentHandle: ``handle.method.remote(...)`` calls the replica in-process."""
    return SimpleNamespace(**{name: SimpleNamespace(remote=fn) for name, fn in methods.items()})


async def construct(deployment: Any, *args: Any) -> Any:
    cls = deployment.func_or_class  # the plain class behind the Serve deployment, constructed as Serve does
    replica = cls.__new__(cls)
    init = cls.__init__(replica, *args)
    if asyncio.iscoroutine(init):
        await init
    return replica


async def stop(replica: Any) -> None:
    """What Serve does at shutdown: await the async __del__ (then keep the GC from calling it again)."""
    await replica.__del__()

    class Stopped(type(replica)):  # type: ignore[misc]
        def __del__(self) -> None:
            pass

    replica.__class__ = Stopped


def by_id(spans: list[ExportedSpan]) -> dict[str, ExportedSpan]:
    return {s.span_id: s for s in spans}


def parent_name(span: ExportedSpan, index: dict[str, ExportedSpan]) -> str | None:
    return index[span.parent_id].name if span.parent_id in index else None


async def test_one_trace_from_input_event_to_decision(receiver: OtlpReceiver, tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "traced.yaml").write_text(RULE)
    audio = sndfile_bytes(np.concatenate([speech(3.0, 8000, seed=1), np.zeros(8000, np.float32)]), 8000)
    with EmbeddedNatsServer(tmp_path / "nats") as server:
        settings = Settings(
            nats=NatsSettings(url=server.url, ack_wait_s=10, max_deliver=2, retry_delay_s=0.05),
            preprocess=PreprocessSettings(),
            rules=RulesSettings(directory=rules, reload_interval_s=5, status_interval_s=5),
        )
        nc = await nats.connect(server.url)
        decisions: list[Any] = []
        dead_letters: list[Any] = []
        await nc.subscribe(f"{settings.nats.subject_prefix}.routes.>", cb=collect(decisions))
        await nc.subscribe(f"{settings.nats.subject_prefix}.dlq.>", cb=collect(dead_letters))

        preprocessor = await construct(Preprocessor, settings)
        captioner = await construct(Captioner, settings, StubEngine())
        engine = await construct(RulesEngine, settings)
        ingress = await construct(
            Ingress, settings,
            handle(prepare=preprocessor.prepare),
            handle(caption=captioner.caption, facets=captioner.facets),
            handle(status=engine.status),
        )  # fmt: skip
        try:
            assert telemetry.tracing_enabled()
            js = nc.jetstream()
            submitted = {"audio": {"data_base64": base64.b64encode(audio).decode(), "format": "wav"},
                         "context": {"callid": "call-1"}}  # fmt: skip
            good = new_event(AUDIO_SUBMITTED, "urn:test", submitted, id="in-1",
                             extensions={"traceparent": INPUT_TRACEPARENT})  # fmt: skip
            await publish_event(js, settings.nats.subject("in", "test"), good, msg_id="in-1")
            poison = new_event(AUDIO_SUBMITTED, "urn:test", {"audio": {"data_base64": "bm90IGF1ZGlv"}}, id="in-2",
                               extensions={"traceparent": f"00-{POISON_TRACE_ID}-00f067aa0ba902b7-01"})  # fmt: skip
            await publish_event(js, settings.nats.subject("in", "test"), poison, msg_id="in-2", mode="structured")
            async with asyncio.timeout(60):
                while not decisions or not dead_letters:
                    await asyncio.sleep(0.1)
        finally:
            await stop(ingress)
            await stop(engine)
            await stop(captioner)
            await stop(preprocessor)
            await nc.close()

    telemetry.shutdown_tracing()  # flushes what the batch processor still holds
    deadline = time.monotonic() + 10
    while not any(s.name == "send " + decisions[0].subject for s in receiver.spans) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)

    # The decision continues the input's trace, from the span that published it.
    [decision] = decisions
    decision_tp = decision.headers["ce-traceparent"]
    assert decision_tp.split("-")[1] == TRACE_ID
    trace = [s for s in receiver.spans if s.trace_id == TRACE_ID]
    index = by_id(trace)
    assert index[decision_tp.split("-")[2]].name == f"send {decision.subject}"
    # One process here: the first deployment constructed set the provider (each Serve replica sets its own).
    assert {(s.resource["service.name"], s.resource["deployment.environment"]) for s in trace} == {
        ("listenpost-preprocessor", "test")  # OTEL_RESOURCE_ATTRIBUTES
    }

    def one(name: str, parent: str | None) -> ExportedSpan:
        found = [s for s in trace if s.name == name and parent_name(s, index) == parent]
        assert len(found) == 1, (name, parent, [(s.name, parent_name(s, index)) for s in trace])
        return found[0]

    # Ingest: consume (parent: the event's traceparent, a remote span), parse, stages, publish.
    ingest = one("process LISTENPOST_IN", None)
    assert ingest.parent_id == "00f067aa0ba902b7" and ingest.kind == 5  # SPAN_KIND_CONSUMER
    assert ingest.attributes == {
        "messaging.system": "nats", "messaging.operation.type": "process", "messaging.operation.name": "process",
        "messaging.destination.name": "listenpost.in.test", "messaging.consumer.group.name": settings.nats.ingest_durable,
        "messaging.nats.stream": "LISTENPOST_IN", "messaging.nats.delivery": 1, "messaging.message.id": "in-1",
        "listenpost.outcome": "acked",
    }  # fmt: skip
    one("parse", ingest.name)
    one("preprocess", ingest.name)
    one("prepare", "preprocess")
    one("fetch", "prepare")
    one("decode", "prepare")
    one("resample", "decode")  # 8 kHz in, 16 kHz to the model
    one("vad", "prepare")
    one("acoustics", "prepare")
    caption = one("caption", ingest.name)
    windows = [s for s in trace if s.name == "caption window"]
    assert windows and all(parent_name(w, index) == "caption" for w in windows)
    assert len(windows) == caption.attributes["listenpost.windows"]
    w = windows[0]
    assert (w.attributes["gen_ai.usage.input_tokens"], w.attributes["gen_ai.usage.output_tokens"]) == (40, 7)
    assert w.attributes["listenpost.engine_s"] == 0.01 and w.attributes["listenpost.queue_s"] >= 0
    assert sorted(s.parent_id for s in trace if s.name == "engine") == sorted(x.span_id for x in windows)
    one("facets", ingest.name)
    publish = one("publish", ingest.name)
    send_captioned = one("send listenpost.captioned", "publish")
    assert send_captioned.kind == 4  # SPAN_KIND_PRODUCER

    # Rules: consumed as a child of the producer span the captioned event carried.
    rules_span = one("process LISTENPOST_OUT", "send listenpost.captioned")
    assert rules_span.attributes["messaging.consumer.group.name"] == settings.nats.rules_durable
    evaluate = one("evaluate", rules_span.name)
    rule = one("rule", "evaluate")
    assert rule.attributes["listenpost.rule.id"] == "every-call" and evaluate.attributes["listenpost.rules.matched"] == 1
    one("alert hygiene", rules_span.name)
    one(f"send {decision.subject}", one("publish", rules_span.name).name)
    assert publish.span_id != rules_span.span_id

    # The poison input: its own trace, consumed, then dead-lettered (an error), and the dead
    # letter carries that trace on.
    poison_trace = [s for s in receiver.spans if s.trace_id == POISON_TRACE_ID]
    pindex = by_id(poison_trace)
    [consumed] = [s for s in poison_trace if s.name == "process LISTENPOST_IN"]
    assert consumed.attributes["listenpost.outcome"] == "dead-lettered" and consumed.status == 2  # STATUS_CODE_ERROR
    [letter] = [s for s in poison_trace if s.name == "dead-letter"]
    assert pindex[letter.parent_id] is consumed and letter.status == 2 and letter.links == [POISON_TRACE_ID]
    assert (letter.attributes["listenpost.stage"], letter.attributes["listenpost.error"]) == ("decode-audio", "UnsupportedFormatError")
    # (The TERMINATED advisory tries the same dead letter again; JetStream drops it as a duplicate.)
    [dead] = [d for d in dead_letters if d.subject == "listenpost.dlq.decode-audio"]
    assert dead.headers["ce-traceparent"].split("-")[1] == POISON_TRACE_ID
    assert pindex[dead.headers["ce-traceparent"].split("-")[2]].name == f"send {dead.subject}"

    # A fetched batch is one receive span, linked (not parented) to the traces of its messages.
    receives = [s for s in receiver.spans if s.name == "receive LISTENPOST_IN"]
    assert receives and all(not s.parent_id for s in receives)
    assert {TRACE_ID, POISON_TRACE_ID} <= {t for s in receives for t in s.links}


def collect(into: list[Any]) -> Any:
    async def received(msg: Any) -> None:
        into.append(msg)

    return received


def test_vllm_gets_the_trace_only_when_its_own_tracing_is_on() -> None:
    from services.captioner.engines.vllm_engine import engine_trace_headers

    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert engine_trace_headers("http://collector:4317", tp) == {"traceparent": tp}
    assert engine_trace_headers(None, tp) is None  # vLLM would log "tracing disabled" per request
    assert engine_trace_headers("http://collector:4317", None) is None  # listenpost not tracing


def test_no_endpoint_means_no_provider_and_no_op_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert telemetry.configure_tracing("listenpost-test") is False
    assert not telemetry.tracing_enabled()
    with telemetry.stage_span("x") as span:
        assert not span.is_recording() and telemetry.current_traceparent() is None
    with telemetry.publish_span("listenpost.captioned", "id") as traceparent:
        assert traceparent is None
    # Outputs still carry a traceparent in the input's trace (a child id, no span behind it).
    assert telemetry.output_traceparent(INPUT_TRACEPARENT).split("-")[1] == TRACE_ID
