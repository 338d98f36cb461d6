"""The replicas export their spans under Ray Serve: each deployment's replica (its own process)
configures tracing from the OTEL_* variables it is given (through the runtime_env, as an
operator sets them for `listenpost serve`) and exports to the OTLP/HTTP endpoint the test runs.

The caption model is a stub (tests/stub_engine.py): the engine is not what is traced here.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, tone, wav_bytes
from test_traces import OtlpReceiver

from services.events.binding import encode_binary, new_event
from services.events.connection import connect
from services.events.embedded import EmbeddedNatsServer
from services.events.models import AUDIO_SUBMITTED
from services.settings import NatsSettings, PreprocessSettings, RulesSettings, Settings

TRACE_ID = "5bf92f3577b34da6a3ce929d0e0e4736"
SERVICES = {"listenpost-ingress", "listenpost-preprocessor", "listenpost-captioner", "listenpost-rules"}


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    endpoint = OtlpReceiver()
    yield endpoint
    endpoint.server.shutdown()


@pytest.fixture(scope="module")
def traced_service(receiver: OtlpReceiver, audio_dir: Path, rules_dir: Path, nats_server: EmbeddedNatsServer) -> Iterator[Settings]:
    from services.runner import running_service

    settings = Settings(
        nats=nats_server.client_settings(NatsSettings(data_dir=nats_server.data_dir)),
        captioner={"engine": "transformers", "engine_factory": "stub_engine:stub_engine", "num_gpus": 0},
        preprocess=PreprocessSettings(file_roots=[audio_dir]),
        rules=RulesSettings(directory=rules_dir),
    )
    env = {
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    with running_service(settings, ray_num_cpus=8, runtime_env={"env_vars": env}) as effective:
        yield effective


async def test_every_replica_exports_its_spans_in_the_input_trace(
    traced_service: Settings, receiver: OtlpReceiver, audio_dir: Path
) -> None:
    settings = traced_service
    (audio_dir / "traced.wav").write_bytes(wav_bytes(np.concatenate([tone(3, 8000), np.zeros(8000 * 6, np.float32)]), 8000))
    nc = await connect(settings.nats, role="admin", name="traces-test")
    try:
        event = new_event(AUDIO_SUBMITTED, "urn:test:traces", {"audio": {"uri": (audio_dir / "traced.wav").as_uri()}},
                          extensions={"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"})  # fmt: skip
        body, headers = encode_binary(event)
        await nc.jetstream().publish(settings.nats.subject("in", "test"), body, headers=headers)
        async with asyncio.timeout(240):
            while {s.resource["service.name"] for s in receiver.spans if s.trace_id == TRACE_ID} != SERVICES:
                await asyncio.sleep(0.5)
    finally:
        await nc.close()
    names = {(s.resource["service.name"], s.name) for s in receiver.spans if s.trace_id == TRACE_ID}
    assert {
        ("listenpost-ingress", "process LISTENPOST_IN"), ("listenpost-preprocessor", "decode"),
        ("listenpost-captioner", "engine"), ("listenpost-rules", "process LISTENPOST_OUT"),
        ("listenpost-rules", "evaluate"),
    } <= names  # fmt: skip
