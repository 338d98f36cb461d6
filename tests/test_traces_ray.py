"""The replicas export their spans under Ray Serve: each deployment's replica (its own process)
configures tracing from the OTEL_* variables it is given (through the runtime_env, as an
operator sets them for `listenpost serve`) and exports to the OTLP/HTTP endpoint the session runs.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from conftest import tone, wav_bytes
from otlp_receiver import OtlpReceiver

from services.events.binding import encode_binary, new_event
from services.events.connection import connect
from services.events.models import AUDIO_SUBMITTED
from services.settings import Settings

TRACE_ID = "5bf92f3577b34da6a3ce929d0e0e4736"
pytestmark = pytest.mark.e2e
SERVICES = {"listenpost-ingress", "listenpost-preprocessor", "listenpost-captioner", "listenpost-rules"}


async def test_every_replica_exports_its_spans_in_the_input_trace(
    service: Settings, otlp_receiver: OtlpReceiver, audio_dir: Path
) -> None:
    """The session's service runs with OTEL_* in its replicas' environment (tests/conftest.py)."""
    settings, receiver = service, otlp_receiver
    (audio_dir / "traced.wav").write_bytes(wav_bytes(np.concatenate([tone(3, 8000), np.zeros(8000 * 6, np.float32)]), 8000))
    nc = await connect(settings.nats, role="admin", name="traces-test")
    try:
        event = new_event(AUDIO_SUBMITTED, "urn:test:traces", {"audio": {"uri": (audio_dir / "traced.wav").as_uri()}},
                          extensions={"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"})  # fmt: skip
        body, headers = encode_binary(event)
        await nc.jetstream().publish(settings.nats.subject("in", "test"), body, headers=headers)
        expected = {
            ("listenpost-ingress", "process LISTENPOST_IN"), ("listenpost-preprocessor", "decode"),
            ("listenpost-captioner", "engine"), ("listenpost-rules", "process LISTENPOST_OUT"),
            ("listenpost-rules", "evaluate"),
        }  # fmt: skip

        def exported() -> set[tuple[str, str]]:
            return {(s.resource["service.name"], s.name) for s in receiver.spans if s.trace_id == TRACE_ID}

        # A span is exported when it ends (batched every 200 ms): a parent after its children.
        async with asyncio.timeout(240):
            while not expected <= exported():
                await asyncio.sleep(0.5)
        # vLLM's own request span (captioner.engine_spans, on by default) joins the trace under the
        # window's engine span: vLLM was given the same endpoint and the span as trace headers.
        async with asyncio.timeout(60):
            while not any(s.name == "llm_request" for s in receiver.spans if s.trace_id == TRACE_ID):
                await asyncio.sleep(0.5)
    finally:
        await nc.close()
    assert SERVICES <= {service for service, _ in exported()}
    spans = {s.span_id: s for s in receiver.spans if s.trace_id == TRACE_ID}
    vllm = [s for s in spans.values() if s.name == "llm_request"]
    assert vllm and all(spans[s.parent_id].name == "engine" for s in vllm)
    assert all(s.attributes.get("gen_ai.usage.completion_tokens", 1) > 0 for s in vllm)
