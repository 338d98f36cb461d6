"""The Captioner Serve deployment: one caption engine per replica, one window per call.

Windows arrive as separate calls so that Serve's autoscaling sees the real
queue and vLLM's continuous batching mixes windows of every event in flight.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray import serve

from services.captioner.engines import CaptionEngine, CaptionResult, SamplingConfig, build_engine
from services.settings import CaptionerSettings, Settings


def engine_config(cap: CaptionerSettings, max_window_s: float) -> dict[str, Any]:
    """The chosen engine's config fields, from settings."""
    sampling = SamplingConfig(
        temperature=cap.temperature, top_p=cap.top_p, top_k=cap.top_k, max_tokens=cap.max_tokens, seed=cap.seed
    )
    common: dict[str, Any] = {"model": cap.model, "max_window_s": max_window_s, "sampling": sampling}
    if cap.engine == "vllm":
        return common | {
            "tensor_parallel_size": cap.tensor_parallel_size,
            "gpu_memory_utilization": cap.gpu_memory_utilization,
            "max_model_len": cap.max_model_len,
            "max_num_seqs": cap.max_num_seqs,
            "dtype": cap.dtype,
            "enforce_eager": cap.enforce_eager,
        }
    dtype = "auto" if cap.dtype in ("auto", "bf16") else cap.dtype
    return common | {"dtype": dtype, "device": "cuda" if cap.num_gpus > 0 else "cpu"}


@serve.deployment(name="Captioner")
class Captioner:
    async def __init__(self, settings: Settings, engine: CaptionEngine | None = None) -> None:
        # `engine` is injectable (tests, other backends); by default it comes from settings.
        cap = settings.captioner
        self._engine = engine or build_engine(cap.engine, engine_config(cap, settings.preprocess.window_s))
        await self._engine.start()

    async def caption(self, samples: np.ndarray, request_id: str) -> CaptionResult:
        return await self._engine.caption(samples, request_id)

    async def check_health(self) -> None:
        await self._engine.check_health()

    async def __del__(self) -> None:
        # Serve has already drained in-flight calls (graceful_shutdown_timeout_s) when this runs.
        await self._engine.shutdown()
