"""Caption engines: one audio window in, the Captioner's text out.

Two implementations behind one small interface (:class:`CaptionEngine`):

- ``VllmCaptionEngine`` (:mod:`.vllm_engine`): vLLM's ``AsyncLLM``, continuous batching across
  every window of every event in flight; the production path. It also completes text prompts
  under a JSON schema (the guided facet pass).
- ``TransformersCaptionEngine`` (:mod:`.transformers_engine`): transformers' model and processor,
  talker disabled, with a micro-batcher; the reference path, on GPU or CPU.

Both take float32 mono audio at 16 kHz (preprocessing resamples; vLLM's own resampler only handles
whole-number rate ratios), render the prompt with the model's own chat template, and drain the
windows in flight when they shut down.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.captioner.engines.base import (
    DEFAULT_MAX_WINDOW_S,
    MIN_WINDOW_SAMPLES,
    SAMPLE_RATE,
    CaptionEngine,
    CaptionRequest,
    CaptionResult,
    EngineConfig,
    SamplingConfig,
    TextEngine,
    TextResult,
    TransformersEngineConfig,
    VllmEngineConfig,
    as_mono_float32,
    audio_token_count,
    make_request,
)
from services.captioner.engines.transformers_engine import TransformersCaptionEngine
from services.captioner.engines.vllm_engine import VllmCaptionEngine

_ENGINES: dict[str, tuple[type, type[EngineConfig]]] = {
    "vllm": (VllmCaptionEngine, VllmEngineConfig),
    "transformers": (TransformersCaptionEngine, TransformersEngineConfig),
}


def build_engine(name: str, config: EngineConfig | Mapping[str, Any]) -> CaptionEngine:
    """Engine ``name`` ("vllm" | "transformers") with ``config`` (its config model or a mapping of its fields)."""
    try:
        engine_cls, config_cls = _ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown caption engine {name!r}; choose one of {sorted(_ENGINES)}") from None
    if isinstance(config, config_cls):
        return engine_cls(config)
    if isinstance(config, EngineConfig):
        raise TypeError(f"{name} engine needs {config_cls.__name__}, got {type(config).__name__}")
    return engine_cls(config_cls.model_validate(config))


__all__ = [
    "DEFAULT_MAX_WINDOW_S",
    "MIN_WINDOW_SAMPLES",
    "SAMPLE_RATE",
    "CaptionEngine",
    "CaptionRequest",
    "CaptionResult",
    "EngineConfig",
    "SamplingConfig",
    "TextEngine",
    "TextResult",
    "TransformersCaptionEngine",
    "TransformersEngineConfig",
    "VllmCaptionEngine",
    "VllmEngineConfig",
    "as_mono_float32",
    "audio_token_count",
    "build_engine",
    "make_request",
]
