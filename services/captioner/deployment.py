"""The Captioner Serve deployment: one caption engine per replica, one window per call.

Windows arrive as separate calls so that Serve's autoscaling sees the real queue and vLLM's
continuous batching mixes windows of every event in flight. Replicas scale on windows in flight
(``CaptionerSettings.deployment_options()``); a dead engine fails the health check so Serve replaces the replica;
shutdown drains the windows in flight before the engine stops.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveInt
from ray import serve

from services.captioner.engines import CaptionEngine, CaptionResult, SamplingConfig, build_engine
from services.captioner.engines.base import ConfigurableEngine, TextEngine
from services.captioner.errors import GuidedExtractionError
from services.captioner.facets import extract_facets
from services.captioner.facets.guided import GuidedFacetExtractor
from services.captioner.redaction import RedactionPolicy, redact
from services.events.models import Facets, Window
from services.logcontext import configure_replica_logging, event_context
from services.settings import CaptionerSettings, Settings
from services.telemetry import configure_tracing, engine_tracing_env, stage_span, tracing_enabled

log = logging.getLogger(__name__)


def sampling_config(cap: CaptionerSettings) -> SamplingConfig:
    return SamplingConfig(
        temperature=cap.temperature, top_p=cap.top_p, top_k=cap.top_k, max_tokens=cap.max_tokens, seed=cap.seed
    )


def engine_config(cap: CaptionerSettings, max_window_s: float, traces_endpoint: str | None = None) -> dict[str, Any]:
    """The chosen engine's config fields, from settings; ``traces_endpoint``: where vLLM exports
    its own spans (see :func:`services.telemetry.engine_tracing_env`), if ``engine_spans``."""
    common: dict[str, Any] = {
        "model": cap.model,
        "max_window_s": max_window_s,
        "sampling": sampling_config(cap),
        "drain_timeout_s": cap.drain_timeout_s,
    }
    if cap.engine == "vllm":
        return common | {
            "tensor_parallel_size": cap.tensor_parallel_size,
            "gpu_memory_utilization": cap.gpu_memory_utilization,
            "max_model_len": cap.max_model_len,
            "max_num_seqs": cap.max_num_seqs,
            "max_num_batched_tokens": cap.max_num_batched_tokens,
            "dtype": cap.dtype,
            "enforce_eager": cap.enforce_eager,
            "limit_mm_per_prompt": dict(cap.limit_mm_per_prompt),
        } | ({"extra_engine_args": {"otlp_traces_endpoint": traces_endpoint}} if traces_endpoint and cap.engine_spans else {})
    dtype = "auto" if cap.dtype in ("auto", "bf16") else cap.dtype
    return common | {
        "dtype": dtype,
        "device": "cuda" if cap.num_gpus > 0 else "cpu",
        "max_batch_size": cap.max_batch_size,
        "batch_wait_s": cap.batch_wait_s,
    }


def make_engine(cap: CaptionerSettings, max_window_s: float) -> CaptionEngine:
    """The engine from settings: a configured factory (import path) or a built-in engine.

    When this process traces and ``engine_spans`` is on, vLLM's tracing is pointed at the same
    endpoint (its engine processes inherit the environment set here)."""
    factory = build_engine
    if cap.engine_factory:
        module, _, name = cap.engine_factory.partition(":")
        factory = getattr(importlib.import_module(module), name)
    tracing = engine_tracing_env(os.environ) if cap.engine == "vllm" and cap.engine_spans and tracing_enabled() else {}
    os.environ.update(tracing)
    return factory(cap.engine, engine_config(cap, max_window_s, tracing.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")))


class SamplingOverrides(BaseModel):
    """``user_config`` of the Captioner deployment: sampling changed in place, no restart."""

    model_config = ConfigDict(extra="forbid")

    temperature: NonNegativeFloat | None = None
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = None
    max_tokens: PositiveInt | None = None
    seed: int | None = None


@serve.deployment(name="Captioner")
class Captioner:
    async def __init__(self, settings: Settings, engine: CaptionEngine | None = None) -> None:  # type: ignore[misc]  # Serve awaits an async constructor
        # `engine` is injectable (tests, other backends); by default it comes from settings.
        configure_tracing("listenpost-captioner")  # OTEL_* only; nothing without an endpoint
        configure_replica_logging()  # an event_id on every line of an event's handling
        self._settings = settings.captioner
        self._redaction = RedactionPolicy.from_settings(settings.captioner)
        self._engine = engine or make_engine(settings.captioner, settings.preprocess.window_s)
        await self._engine.start()

    async def caption(
        self, samples: np.ndarray, request_id: str, traceparent: str | None = None, event_id: str | None = None
    ) -> CaptionResult:
        """``traceparent``: the caller's ``caption window`` span, parent of this replica's ``engine``
        span; ``event_id``: the input's, for this replica's log lines."""
        with event_context(event_id), stage_span("engine", {"listenpost.engine": self._engine.name}, parent=traceparent):
            return await self._engine.caption(samples, request_id)

    async def facets(
        self, windows: list[Window], request_id: str, traceparent: str | None = None, event_id: str | None = None
    ) -> Facets:
        with event_context(event_id), stage_span("guided facets", parent=traceparent):
            return await self._facets(windows, request_id)

    async def _facets(self, windows: list[Window], request_id: str) -> Facets:
        """Facets of a call's captioned windows, by the configured extractor.

        The guided extractor runs through this replica's engine; if it fails the lexicon
        extractor answers (facets are never the reason an event is lost).
        """
        engine = self._engine
        if self._settings.facets_extractor == "guided" and isinstance(engine, TextEngine):
            extractor = GuidedFacetExtractor(engine, self._settings.model, max_tokens=self._settings.guided_max_tokens)
            try:
                return await extractor.extract(windows, request_id)
            except GuidedExtractionError as exc:
                # The error may quote the model's answer, and so the caption: redacted like captions.
                reason = redact(str(exc), self._redaction).text
                log.warning("guided facets failed for %s, using the lexicon extractor: %s", request_id, reason)
        return extract_facets(windows)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Sampling overrides from the deployment's ``user_config`` (``serve deploy`` applies them live)."""
        overrides = SamplingOverrides.model_validate(user_config or {}).model_dump(exclude_none=True)
        engine = self._engine
        if not isinstance(engine, ConfigurableEngine) or not overrides:
            return
        sampling = engine.config.sampling.model_copy(update=overrides)
        engine.config = engine.config.model_copy(update={"sampling": sampling})
        log.info("captioner sampling now %s", sampling)

    async def stats(self) -> dict[str, Any]:
        stats = getattr(self._engine, "stats", None)
        return stats() if callable(stats) else {"engine": self._engine.name, "in_flight": self._engine.in_flight}

    async def check_health(self) -> None:
        # Raises EngineDeadError when the engine loop has died: Serve then replaces the replica.
        await self._engine.check_health()

    async def __del__(self) -> None:
        # Serve has stopped routing here and waited for calls in flight (graceful_shutdown_timeout_s);
        # the engine drains whatever is still running before it stops.
        await self._engine.shutdown()
