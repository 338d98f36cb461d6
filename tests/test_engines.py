"""Caption engines on the tiny random-weight checkpoint: the text they return is noise, not captions.

What is tested is the plumbing: validation, batching, concurrency, token accounting, errors.
The vLLM engine starts once for the module (~30 s on the CPU).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from captioner_fixtures import noise_window, tiny_checkpoint  # noqa: F401

from services.captioner.engines import (
    MIN_WINDOW_SAMPLES,
    CaptionEngine,
    SamplingConfig,
    TransformersCaptionEngine,
    TransformersEngineConfig,
    VllmCaptionEngine,
    VllmEngineConfig,
    build_engine,
    make_request,
)
from services.captioner.errors import (
    EmptyWindowError,
    EngineDeadError,
    EngineStartError,
    InvalidWindowError,
    WindowTooLongError,
)

MAX_TOKENS = 16
# The tiny prompt: 35 text tokens around the audio tokens (13 per second).
TEXT_PROMPT_TOKENS = 35


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("samples", [0, 1, MIN_WINDOW_SAMPLES - 1])
def test_too_short_window_is_empty(samples: int) -> None:
    with pytest.raises(EmptyWindowError):
        make_request(np.zeros(samples, np.float32), "w", max_window_s=30.0)


@pytest.mark.parametrize(("seconds", "limit"), [(30.01, 30.0), (5.5, 5.0)])
def test_window_over_the_limit_is_too_long(seconds: float, limit: float) -> None:
    with pytest.raises(WindowTooLongError, match=f"limit is {limit:g} s"):
        make_request(noise_window(seconds), "w", max_window_s=limit)


def test_window_at_the_limit_passes() -> None:
    request = make_request(noise_window(30.0).astype(np.float64), "w", max_window_s=30.0)
    assert request.audio.dtype == np.float32 and request.duration_s == 30.0


@pytest.mark.parametrize(
    "audio",
    [np.zeros((2, 16000), np.float32), np.zeros(16000, np.int16), np.full(16000, np.nan, np.float32)],
    ids=["stereo", "int16", "nan"],
)
def test_malformed_window_is_invalid(audio: np.ndarray) -> None:
    with pytest.raises(InvalidWindowError):
        make_request(audio, "w", max_window_s=30.0)


def test_build_engine_picks_and_validates_config(tiny_checkpoint: Path) -> None:
    engine = build_engine("transformers", {"model": str(tiny_checkpoint)})
    assert isinstance(engine, TransformersCaptionEngine) and isinstance(engine, CaptionEngine)
    assert isinstance(build_engine("vllm", VllmEngineConfig(model=str(tiny_checkpoint))), VllmCaptionEngine)
    with pytest.raises(ValueError, match="unknown caption engine"):
        build_engine("onnx", {"model": "x"})
    with pytest.raises(TypeError):
        build_engine("vllm", TransformersEngineConfig(model="x"))


# --------------------------------------------------------------------------- transformers


@pytest.fixture(scope="module")
async def transformers_engine(tiny_checkpoint: Path) -> AsyncIterator[TransformersCaptionEngine]:
    engine = TransformersCaptionEngine(
        TransformersEngineConfig(
            model=str(tiny_checkpoint), batch_wait_s=0.05, sampling=SamplingConfig(max_tokens=MAX_TOKENS, seed=0)
        )
    )
    await engine.start()
    yield engine
    await engine.shutdown()


async def test_transformers_batches_concurrent_windows(transformers_engine: TransformersCaptionEngine) -> None:
    first, second = await asyncio.gather(
        transformers_engine.caption(noise_window(10.0, seed=1), "a"),
        transformers_engine.caption(noise_window(3.0, seed=2), "b"),
    )
    assert (first.request_id, second.request_id) == ("a", "b")
    assert first.batch_size == second.batch_size == 2  # one generate() for both
    assert first.prompt_tokens == TEXT_PROMPT_TOKENS + 130
    assert second.prompt_tokens == TEXT_PROMPT_TOKENS + 39
    for result in (first, second):
        assert result.text  # noise from random weights
        assert 0 < result.output_tokens <= MAX_TOKENS
        assert result.engine == "transformers" and result.engine_seconds > 0
    await transformers_engine.check_health()


async def test_transformers_rejects_bad_windows_before_batching(
    transformers_engine: TransformersCaptionEngine,
) -> None:
    with pytest.raises(EmptyWindowError):
        await transformers_engine.caption(np.zeros(0, np.float32), "empty")
    with pytest.raises(WindowTooLongError):
        await transformers_engine.caption(noise_window(31.0), "long")
    assert transformers_engine.in_flight == 0


async def test_transformers_engine_is_dead_after_shutdown(tiny_checkpoint: Path) -> None:
    engine = TransformersCaptionEngine(TransformersEngineConfig(model=str(tiny_checkpoint)))
    with pytest.raises(EngineDeadError):
        await engine.check_health()
    await engine.start()
    await engine.check_health()
    await engine.shutdown()
    with pytest.raises(EngineDeadError):
        await engine.caption(noise_window(1.0), "late")


async def test_start_failure_names_the_cause(tmp_path: Path) -> None:
    for name in ("transformers", "vllm"):
        with pytest.raises(EngineStartError, match=f"{name} engine failed to start: \\w+"):
            await build_engine(name, {"model": str(tmp_path)}).start()


# --------------------------------------------------------------------------- vLLM


@pytest.fixture(scope="module")
async def vllm_engine(tiny_checkpoint: Path) -> AsyncIterator[VllmCaptionEngine]:
    # Read by vLLM's CPU worker when it starts; keeps the KV cache (GiB) small in tests.
    saved = os.environ.get("VLLM_CPU_KVCACHE_SPACE")
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"
    engine = VllmCaptionEngine(
        VllmEngineConfig(
            model=str(tiny_checkpoint),
            max_model_len=2048,
            max_num_seqs=8,
            enforce_eager=True,
            dtype="float32",
            sampling=SamplingConfig(max_tokens=MAX_TOKENS),
        )
    )
    try:
        await engine.start()
        yield engine
    finally:
        await engine.shutdown()
        if saved is None:
            os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
        else:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = saved


async def test_vllm_captions_windows_concurrently(vllm_engine: VllmCaptionEngine) -> None:
    n = 6
    spans: dict[str, tuple[float, float]] = {}
    peak_in_flight = 0

    async def one(i: int):
        started = time.perf_counter()
        result = await vllm_engine.caption(noise_window(10.0, seed=i), f"w{i}")
        spans[result.request_id] = (started, time.perf_counter())
        return result

    async def watch() -> None:
        nonlocal peak_in_flight
        while True:
            peak_in_flight = max(peak_in_flight, vllm_engine.in_flight)
            await asyncio.sleep(0.001)

    watcher = asyncio.create_task(watch())
    wall_started = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.perf_counter() - wall_started
    watcher.cancel()

    assert [r.request_id for r in results] == [f"w{i}" for i in range(n)]
    for result in results:
        assert result.text  # noise from random weights
        assert result.prompt_tokens == TEXT_PROMPT_TOKENS + 130
        assert 0 < result.output_tokens <= MAX_TOKENS
        assert result.engine == "vllm"
    # In flight together: every window started before the first one finished, and the engine
    # time summed over windows far exceeds the wall time (they were not served one by one).
    assert max(s for s, _ in spans.values()) < min(e for _, e in spans.values())
    assert peak_in_flight == n
    assert sum(r.engine_seconds for r in results) > 1.5 * wall
    assert vllm_engine.in_flight == 0


async def test_vllm_rejects_empty_and_too_long_windows(vllm_engine: VllmCaptionEngine) -> None:
    with pytest.raises(EmptyWindowError):
        await vllm_engine.caption(np.zeros(0, np.float32), "empty")
    with pytest.raises(EmptyWindowError):
        await vllm_engine.caption(noise_window(0.01), "10ms")
    with pytest.raises(WindowTooLongError):
        await vllm_engine.caption(noise_window(30.5), "long")
    shortest = await vllm_engine.caption(noise_window(MIN_WINDOW_SAMPLES / 16000), "shortest")
    assert shortest.prompt_tokens == TEXT_PROMPT_TOKENS + 1
    await vllm_engine.check_health()
