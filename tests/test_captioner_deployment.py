"""The Captioner deployment's settings, options and methods, with a stand-in engine (no model)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError
from ray.serve.config import AutoscalingConfig

from services.captioner.deployment import Captioner, engine_config
from services.captioner.engines.base import CaptionResult, SamplingConfig, TextResult, VllmEngineConfig
from services.captioner.errors import EngineDeadError
from services.events.models import Window
from services.settings import CaptionerSettings, Settings

# The replica class's async __del__ is Serve's shutdown hook; garbage collection of the plain
# objects made here calls it too, and never awaits it.
pytestmark = pytest.mark.filterwarnings("ignore:coroutine 'Captioner.__del__' was never awaited")


def test_autoscaling_is_built_for_requests_that_take_seconds() -> None:
    cap = CaptionerSettings(num_gpus=1, min_replicas=1, max_replicas=4, max_num_seqs=64, target_ongoing_requests=64)
    options = cap.deployment_options()
    AutoscalingConfig(**options["autoscaling_config"])  # Ray accepts it
    scaling = options["autoscaling_config"]
    assert (scaling["min_replicas"], scaling["max_replicas"], scaling["target_ongoing_requests"]) == (1, 4, 64)
    assert scaling["upscale_delay_s"] >= 30 and scaling["downscale_delay_s"] >= 300
    assert options["max_ongoing_requests"] > scaling["target_ongoing_requests"]
    assert options["ray_actor_options"]["num_gpus"] == 1
    assert options["ray_actor_options"]["runtime_env"]["env_vars"] == {}  # no CPU KV-cache setting on a GPU
    assert options["graceful_shutdown_timeout_s"] > cap.drain_timeout_s
    cpu = CaptionerSettings().deployment_options()
    assert cpu["ray_actor_options"]["num_gpus"] == 0
    assert cpu["ray_actor_options"]["runtime_env"]["env_vars"] == {
        "VLLM_CPU_KVCACHE_SPACE": "4",
        "VLLM_CPU_OMP_THREADS_BIND": "auto",
    }
    pinned = CaptionerSettings(cpu_threads_bind="0-3,6").deployment_options()
    assert pinned["ray_actor_options"]["runtime_env"]["env_vars"]["VLLM_CPU_OMP_THREADS_BIND"] == "0-3,6"


@pytest.mark.parametrize("value", ["all", "0-", "0;1", "$(reboot)"])
def test_a_thread_binding_that_vllm_cannot_read_is_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="cpu_threads_bind"):
        CaptionerSettings(cpu_threads_bind=value)


def test_engine_arguments_and_sampling_come_from_settings() -> None:
    cap = CaptionerSettings(
        model="m",
        tensor_parallel_size=2,
        num_gpus=2,
        gpu_memory_utilization=0.8,
        max_model_len=8192,
        max_num_seqs=48,
        dtype="bfloat16",
        limit_mm_per_prompt={"audio": 1},
        temperature=0.3,
        top_k=5,
        max_tokens=300,
    )
    config = VllmEngineConfig.model_validate(engine_config(cap, max_window_s=30.0))
    assert (config.tensor_parallel_size, config.max_model_len, config.max_num_seqs) == (2, 8192, 48)
    assert config.limit_mm_per_prompt == {"audio": 1} and config.dtype == "bfloat16"
    assert config.sampling == SamplingConfig(temperature=0.3, top_p=0.95, top_k=5, max_tokens=300)
    assert SamplingConfig() == SamplingConfig(temperature=0.6, top_p=0.95, top_k=20, max_tokens=512)  # the model card's


def test_settings_refuse_inconsistent_captioner_resources() -> None:
    with pytest.raises(ValidationError, match="tensor_parallel_size 2 needs"):
        CaptionerSettings(num_gpus=1, tensor_parallel_size=2)
    with pytest.raises(ValidationError, match="min_replicas"):
        CaptionerSettings(min_replicas=3, max_replicas=2)


class StubEngine:
    """Answers instantly; counts calls; can be told it is dead."""

    name = "stub"

    def __init__(self) -> None:
        self.config = VllmEngineConfig(model="stub")
        self.dead = False
        self.started = self.stopped = False
        self.completions = 0

    @property
    def in_flight(self) -> int:
        return 0

    async def start(self) -> None:
        self.started = True

    async def caption(self, audio: np.ndarray, request_id: str) -> CaptionResult:
        return CaptionResult(
            request_id=request_id, text="A siren.", prompt_tokens=1, output_tokens=2, engine_seconds=0.1, engine="stub"
        )

    async def complete(self, prompt: str, *, request_id: str, max_tokens: int, json_schema=None) -> TextResult:
        self.completions += 1
        return TextResult(request_id=request_id, text="{not json", prompt_tokens=1, output_tokens=1, engine_seconds=0)

    async def check_health(self) -> None:
        if self.dead:
            raise EngineDeadError("stub engine is dead")

    async def shutdown(self) -> None:
        self.stopped = True


async def make_captioner(engine: StubEngine, **captioner: object) -> object:
    cls = Captioner.func_or_class  # the plain class behind the Serve deployment
    replica = cls.__new__(cls)
    await cls.__init__(replica, Settings(captioner=CaptionerSettings(**captioner)), engine)
    return replica


async def test_replica_health_reports_a_dead_engine_and_shutdown_stops_it() -> None:
    engine = StubEngine()
    replica = await make_captioner(engine)
    assert engine.started
    await replica.check_health()
    result = await replica.caption(np.zeros(16000, np.float32), "evt/w0")
    assert result.request_id == "evt/w0"
    engine.dead = True
    with pytest.raises(EngineDeadError):
        await replica.check_health()
    await replica.__del__()
    assert engine.stopped


async def test_user_config_overrides_sampling_in_place() -> None:
    engine = StubEngine()
    replica = await make_captioner(engine)
    replica.reconfigure({"temperature": 0.2, "max_tokens": 256})
    assert engine.config.sampling.temperature == 0.2 and engine.config.sampling.max_tokens == 256
    assert engine.config.sampling.top_k == 20
    with pytest.raises(ValidationError):
        replica.reconfigure({"temprature": 0.1})


async def test_facets_method_uses_the_configured_extractor_and_falls_back() -> None:
    windows = [Window(index=0, start=0, end=30, channel=None, caption="The customer is furious.")]
    lexicon = await make_captioner(StubEngine())
    assert (await lexicon.facets(windows, "evt")).extractor == "lexicon"
    engine = StubEngine()
    guided = await make_captioner(engine, facets_extractor="guided", model="stub-model")
    # The stub answers invalid JSON: the guided pass fails and the lexicon extractor answers.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("services.captioner.facets.guided.text_prompt", lambda model, system, user: user)
        facets = await guided.facets(windows, "evt")
    assert engine.completions == 1
    assert facets.extractor == "lexicon" and facets.emotions[0].label == "anger"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, {}),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"},
         {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
         {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://c/traces", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://ignored"},
         {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://c/traces", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"}, {}),
    ],
)  # fmt: skip
def test_vllm_traces_where_the_otel_variables_send_ours(env: dict[str, str], expected: dict[str, str]) -> None:
    from services.telemetry import engine_tracing_env

    assert engine_tracing_env(env) == expected


def test_vllm_gets_its_traces_endpoint_only_with_engine_spans_on() -> None:
    cap = CaptionerSettings(model="m")
    assert engine_config(cap, 30.0, "http://c:4318/v1/traces")["extra_engine_args"] == {"otlp_traces_endpoint": "http://c:4318/v1/traces"}
    assert "extra_engine_args" not in engine_config(cap, 30.0, None)
    assert "extra_engine_args" not in engine_config(cap.model_copy(update={"engine_spans": False}), 30.0, "http://c:4318/v1/traces")
