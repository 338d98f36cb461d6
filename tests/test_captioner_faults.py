"""The vLLM engine dying mid-request: callers get EngineDeadError (the Ingress retries the event).

Its own module: the engine here is killed, so it must not be the one other tests share. The
tiny random-weight checkpoint's output is noise; what is tested is the failure path.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
from captioner_fixtures import noise_window, running_cpu_vllm_engine

from services.captioner.engines import SamplingConfig, VllmCaptionEngine
from services.captioner.errors import EngineDeadError


@pytest.fixture(scope="module")
async def doomed_engine(tiny_checkpoint: Path) -> AsyncIterator[VllmCaptionEngine]:
    async with running_cpu_vllm_engine(
        tiny_checkpoint,
        max_model_len=2048,
        max_num_seqs=8,
        # Long answers: the requests are surely mid-generation when the engine dies.
        sampling=SamplingConfig(max_tokens=1500, min_tokens=1500),
        drain_timeout_s=1,
    ) as engine:
        yield engine


def engine_core_processes() -> list[psutil.Process]:
    """vLLM's engine-core process(es) under this test process (the model runs there)."""
    return [p for p in psutil.Process().children(recursive=True) if p.name().startswith("VLLM::EngineCore")]


async def test_engine_dead_mid_request_fails_every_window_with_engine_dead(doomed_engine: VllmCaptionEngine) -> None:
    await doomed_engine.check_health()
    tasks = [asyncio.create_task(doomed_engine.caption(noise_window(10.0, seed=i), f"evt-x/w{i}")) for i in range(4)]
    # Wait until the engine is generating for all four, then kill its core process.
    while doomed_engine.in_flight < 4 or doomed_engine.batch_stats.peak_running < 4:
        await asyncio.sleep(0.01)
    cores = engine_core_processes()
    assert cores, "no vLLM engine-core process found"
    for core in cores:
        core.kill()

    outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=60)
    # Not a generation error and not a hang: EngineDeadError, which the Ingress naks for redelivery.
    assert all(isinstance(o, EngineDeadError) for o in outcomes), outcomes
    assert all("died while serving 'evt-x/w" in str(o) for o in outcomes)
    assert doomed_engine.in_flight == 0

    with pytest.raises(EngineDeadError, match="dead"):
        await doomed_engine.check_health()  # the Serve health check fails: the replica is replaced
    with pytest.raises(EngineDeadError):
        await doomed_engine.caption(noise_window(1.0), "evt-y/w0")  # later windows fail fast too
