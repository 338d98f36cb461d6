"""Session fixtures: one tiny checkpoint, and one running service (nats-server, Ray, Serve, vLLM).

Starting Ray Serve with the vLLM engine takes about a minute, so the running
service is shared by every end-to-end test in the session.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
from pydantic import SecretStr

from services.events.embedded import EmbeddedNatsServer, free_port
from services.metrics import MemoryBackend, use_backend
from services.settings import (
    ApiKey,
    CaptionerSettings,
    HttpSettings,
    NatsSettings,
    NotifySettings,
    PreprocessSettings,
    RulesSettings,
    Settings,
)

REPO = Path(__file__).resolve().parents[1]
HTTP_API_KEY = "test-key-0123456789-abcdefghijklmnopqrstuv"
#: The session service's webhook receiver signs with this (the Standard Webhooks examples' secret).
NOTIFY_SIGNING_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


#: The captioner fixtures (the tiny checkpoint, a running CPU vLLM engine), for every test module.
pytest_plugins = ["captioner_fixtures", "hard_exit", "ray_log_relay"]

def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that start and stop their own Ray in this process (``own_ray``) run first: once the
    session's service has started Ray here, theirs would be the same instance, and stopping
    their app would delete the session's."""
    items.sort(key=lambda item: item.get_closest_marker("own_ray") is None)  # stable: the rest keep their order


@pytest.fixture
def memory() -> Iterator[MemoryBackend]:
    """Metrics recorded in memory (services/metrics.py) instead of through Ray, for the test."""
    backend = MemoryBackend()
    use_backend(backend)
    yield backend
    use_backend(None)


@pytest.fixture(scope="session")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audio")


def tiny_engine_settings(model: Path) -> CaptionerSettings:
    """The vLLM engine, sized for the CPU build and a 2-core machine."""
    return CaptionerSettings(
        engine="vllm",
        model=str(model),
        dtype="float32",
        enforce_eager=True,
        max_model_len=2048,
        max_num_seqs=16,
        max_tokens=24,
        cpu_kvcache_gib=1,
        num_cpus=0.5,
        seed=0,
    )


@pytest.fixture(scope="session")
def rules_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shipped router_rules/ that the running service reads; tests may edit it
    (and must restore it)."""
    directory = tmp_path_factory.mktemp("rules") / "router_rules"
    shutil.copytree(REPO / "router_rules", directory)
    return directory


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNatsServer]:
    """The session's nats-server (file-backed JetStream); fault tests kill and restart it.

    Hardened as `listenpost serve` runs it: TLS with a CA made here, an NKey identity per role
    with only that role's permissions, JetStream encrypted at rest. So every end-to-end and
    fault test runs against a TLS, permission-checked server (issue 12).
    """
    root = tmp_path_factory.mktemp("nats")
    with EmbeddedNatsServer(root / "data", secrets_dir=root / "secrets", tls=True) as server:
        yield server


@pytest.fixture(scope="session")
def otlp_receiver() -> Iterator[Any]:
    """A real OTLP/HTTP endpoint (tests/test_traces.py) that the session's service exports spans to."""
    from otlp_receiver import OtlpReceiver

    endpoint = OtlpReceiver()
    yield endpoint
    endpoint.close()


@pytest.fixture(scope="session")
def notify_receiver() -> Iterator[Any]:
    """A local HTTP server (tests/notify_fixtures.py) that the session service's Notifier delivers
    every alert to (tests/test_notify_e2e.py)."""
    from notify_fixtures import RecordingServer

    server = RecordingServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def notify_settings(tmp_path_factory: pytest.TempPathFactory, notify_receiver: Any) -> NotifySettings:
    """The Notifier on, with a notification file that sends every alert to one signed webhook,
    its URL and signing key given as secrets (as an operator configures them)."""
    path = tmp_path_factory.mktemp("notify") / "notifications.yaml"
    path.write_text(
        """apiVersion: listenpost/v1
kind: Notifications
route:
  receiver: e2e-webhook
  group_by: [callid]
  group_wait: 1s
receivers:
  - name: e2e-webhook
    type: webhook
    url_secret: e2e-webhook-url
    signing_secret: e2e-webhook-signing
"""
    )
    secrets = {"e2e-webhook-url": f"{notify_receiver.url}/hook", "e2e-webhook-signing": NOTIFY_SIGNING_SECRET}
    return NotifySettings(enabled=True, file=path, secrets={k: SecretStr(v) for k, v in secrets.items()}, reload_interval_s=1.0)


@pytest.fixture(scope="session")
def service(
    tiny_checkpoint: Path,
    audio_dir: Path,
    rules_dir: Path,
    nats_server: EmbeddedNatsServer,
    otlp_receiver: Any,
    notify_settings: NotifySettings,
) -> Iterator[Settings]:
    """The whole service, as `listenpost serve` runs it, with fault-test-friendly timings:
    two Ingress replicas share the durable consumer; short AckWait and retry delays. The
    Notifier runs too, delivering every alert to ``notify_receiver``."""
    from services.runner import running_service

    settings = Settings(
        nats=nats_server.client_settings(
            NatsSettings(data_dir=nats_server.data_dir, ack_wait_s=15, max_deliver=8, retry_delay_s=1.0, retry_delay_max_s=8.0)
        ),
        captioner=tiny_engine_settings(tiny_checkpoint).model_copy(update={"engine_factory": "fault_engine:flaky_engine"}),
        preprocess=PreprocessSettings(file_roots=[audio_dir]),
        rules=RulesSettings(directory=rules_dir, reload_interval_s=0.5),
        notify=notify_settings,
        ingress={"replicas": 2},
        # Short live windows, and a lost stream owner noticed quickly (tests/test_streams_e2e.py).
        streams={"window_s": 4.0, "hop_s": 2.0, "idle_timeout_s": 6.0, "owner_ack_wait_s": 6.0},
        http=HttpSettings(
            enabled=True,
            port=free_port(),
            keys=[ApiKey(id="e2e", secret=SecretStr(HTTP_API_KEY), sources=["urn:test:*"])],
        ),
    )
    # Replicas import tests/fault_engine.py (the injectable engine factory).
    # Every replica traces, as an operator turns it on: only OTEL_* variables (observability/README.md).
    runtime_env = {
        "env_vars": {
            "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.url,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        }
    }
    with running_service(settings, ray_num_cpus=8, runtime_env=runtime_env) as effective:
        yield effective


def tone(seconds: float, rate: int, freq: float = 220.0, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (level * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def wav_bytes(samples: np.ndarray, rate: int, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()
