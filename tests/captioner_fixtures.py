"""Fixtures shared by the captioner tests (a pytest plugin: tests/conftest.py loads it)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.captioner.tiny_checkpoint import build_tiny_checkpoint

SAMPLE_RATE = 16_000


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random-weight Qwen3-Omni checkpoint (its output is noise), built once per test session.

    A fixed path under the session's base temp dir, and the build is idempotent: another test
    session on the same base dir reuses it.
    """
    return build_tiny_checkpoint(tmp_path_factory.getbasetemp() / "tiny-qwen3-omni")


def noise_window(seconds: float, seed: int = 0) -> np.ndarray:
    """Quiet white noise, float32 mono at 16 kHz."""
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(round(seconds * SAMPLE_RATE))).astype(np.float32)


@contextlib.asynccontextmanager
async def running_cpu_vllm_engine(model: Path, **config: Any) -> AsyncIterator[Any]:
    """A started vLLM engine on the CPU build, sized for tests; shut down and env restored after.

    ``config`` overrides VllmEngineConfig fields (max_model_len, sampling, ...).
    """
    from services.captioner.engines import VllmCaptionEngine, VllmEngineConfig

    # Read by vLLM's CPU worker when it starts; keeps the KV cache (GiB) small in tests.
    saved = os.environ.get("VLLM_CPU_KVCACHE_SPACE")
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"
    fields: dict[str, Any] = {"model": str(model), "enforce_eager": True, "dtype": "float32", **config}
    engine = VllmCaptionEngine(VllmEngineConfig(**fields))
    try:
        await engine.start()
        yield engine
    finally:
        await engine.shutdown()
        if saved is None:
            os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
        else:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = saved
