"""The vLLM caption engine: ``AsyncLLM`` in-process, continuous batching across every caller.

Every ``caption()`` call is its own vLLM request, so windows of all events in flight share the
engine's batches; a stat logger records how many requests each engine step actually ran
together (the proof that they were batched, and a number to watch in production).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.captioner.engines.base import (
    SAMPLE_RATE,
    CaptionResult,
    InFlight,
    TextResult,
    VllmEngineConfig,
    audio_token_count,
    make_request,
    root_cause,
)
from services.captioner.errors import (
    CaptionGenerationError,
    EmptyWindowError,
    EngineDeadError,
    EngineStartError,
    EngineStoppingError,
    WindowTooLongError,
)
from services.captioner.prompt import caption_prompt, caption_prompt_text_tokens
from services.telemetry import current_traceparent


def _is_too_short_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if "too short to be represented" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@dataclass
class BatchStats:
    """What vLLM's scheduler ran, step by step: requests running together, and waiting."""

    steps: int = 0
    running_sum: int = 0
    peak_running: int = 0
    peak_waiting: int = 0

    def record(self, running: int, waiting: int) -> None:
        self.steps += 1
        self.running_sum += running
        self.peak_running = max(self.peak_running, running)
        self.peak_waiting = max(self.peak_waiting, waiting)

    def reset(self) -> None:
        self.steps = self.running_sum = self.peak_running = self.peak_waiting = 0

    def snapshot(self) -> dict[str, float]:
        return {
            "steps": self.steps,
            "peak_running": self.peak_running,
            "peak_waiting": self.peak_waiting,
            "mean_running": round(self.running_sum / self.steps, 2) if self.steps else 0.0,
        }

    def logger_factory(self) -> Any:
        """A vLLM ``StatLoggerFactory`` feeding this object (vLLM calls it in this process)."""
        from vllm.v1.metrics.loggers import StatLoggerBase

        stats = self

        class _BatchStatLogger(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                pass

            def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0) -> None:
                if scheduler_stats is not None:
                    stats.record(scheduler_stats.num_running_reqs, scheduler_stats.num_waiting_reqs)

            def log_engine_initialized(self) -> None:
                pass

        return _BatchStatLogger


def engine_trace_headers(otlp_traces_endpoint: str | None, traceparent: str | None) -> dict[str, str] | None:
    """vLLM warns about (and drops) trace headers when its own tracing is off: send them only when it is on."""
    return {"traceparent": traceparent} if otlp_traces_endpoint and traceparent else None


class VllmCaptionEngine:
    """vLLM ``AsyncLLM``: concurrent ``caption()`` calls are batched by vLLM's scheduler."""

    name = "vllm"

    def __init__(self, config: VllmEngineConfig) -> None:
        self.config = config
        self.batch_stats = BatchStats()
        self._engine: Any = None  # vllm.v1.engine.async_llm.AsyncLLM once started
        self._prompt: str | None = None
        self._prompt_text_tokens = 0
        self._flight = InFlight(self.name)
        self._vllm_ids: set[str] = set()
        self._seeded_requests = True

    @property
    def in_flight(self) -> int:
        return self._flight.count

    async def start(self) -> None:
        if self._engine is not None:
            return
        try:
            from vllm.v1.engine.async_llm import AsyncLLM

            self._prompt = await asyncio.to_thread(caption_prompt, self.config.model)
            self._prompt_text_tokens = await asyncio.to_thread(caption_prompt_text_tokens, self.config.model)
            # Building the engine blocks for tens of seconds (process spawn, weight load, warm-up):
            # keep the event loop free meanwhile. AsyncLLM starts its output handler lazily on the
            # first request, inside the running loop.
            self._engine = await asyncio.to_thread(
                AsyncLLM.from_engine_args,
                self.config.engine_args(),
                stat_loggers=[self.batch_stats.logger_factory()],
            )
        except Exception as exc:
            raise EngineStartError(self.name, exc) from exc
        self._flight = InFlight(self.name)
        # vLLM 0.32's CPU runner crashes the engine when a request with its own seed is split by
        # chunked prefill ("CPU Generator does not use offset"): on the CPU the seed is the
        # engine's (set in engine_args), not the request's.
        from vllm.platforms import current_platform

        self._seeded_requests = not current_platform.is_cpu()

    def _sampling_params(self, *, max_tokens: int | None = None, json_schema: dict[str, Any] | None = None) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        s = self.config.sampling
        return SamplingParams(
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            max_tokens=max_tokens or s.max_tokens,
            min_tokens=0 if json_schema else min(s.min_tokens, max_tokens or s.max_tokens),
            seed=s.seed if self._seeded_requests else None,
            structured_outputs=StructuredOutputsParams(json=json_schema) if json_schema else None,
            # Only the final output is used: skip streaming intermediate deltas.
            output_kind=RequestOutputKind.FINAL_ONLY,
        )

    def _check_fits(self, n_samples: int, request_id: str) -> None:
        """The window's prompt and the longest answer must fit max_model_len (vLLM would reject it)."""
        needed = self._prompt_text_tokens + audio_token_count(n_samples) + self.config.sampling.max_tokens
        if needed > self.config.max_model_len:
            raise WindowTooLongError(
                f"window {request_id!r} needs {needed} tokens (audio, prompt and max_tokens "
                f"{self.config.sampling.max_tokens}); the engine's max_model_len is {self.config.max_model_len}"
            )

    async def _generate(self, prompt: dict[str, Any], params: Any, request_id: str) -> tuple[Any, float]:
        """The final RequestOutput of one request and its engine time; errors mapped to ours."""
        engine = self._engine
        if engine is None:
            raise EngineDeadError("vllm engine is not started")
        from vllm.v1.engine.exceptions import EngineDeadError as VllmEngineDeadError

        # vLLM needs ids unique among requests in flight; a redelivered message may reuse one.
        vllm_id = f"{request_id}-{uuid.uuid4().hex[:8]}"
        final = None
        async with self._flight.track():
            self._vllm_ids.add(vllm_id)
            started = time.perf_counter()
            try:
                async for output in engine.generate(prompt, params, request_id=vllm_id, trace_headers=self._trace_headers()):
                    final = output
            except VllmEngineDeadError as exc:
                raise EngineDeadError(f"vllm engine died while serving {request_id!r}: {exc}") from exc
            except Exception as exc:
                if _is_too_short_error(exc):
                    raise EmptyWindowError(f"window {request_id!r} is too short for one audio token") from exc
                cause = root_cause(exc)
                raise CaptionGenerationError(f"vllm failed on {request_id!r}: {type(cause).__name__}: {cause}") from exc
            finally:
                self._vllm_ids.discard(vllm_id)
            elapsed = time.perf_counter() - started
        if final is None or not final.outputs:
            raise CaptionGenerationError(f"vllm returned no output for {request_id!r}")
        if final.outputs[0].finish_reason == "abort" and self._flight.closing:
            raise EngineStoppingError(f"vllm engine stopped before {request_id!r} finished")
        return final, elapsed

    def _trace_headers(self) -> dict[str, str] | None:
        """The current span's context for vLLM's own request spans (its OTLP tracing, when the
        engine has an ``otlp_traces_endpoint`` in ``extra_engine_args``), so they join the input's trace."""
        return engine_trace_headers(self.config.extra_engine_args.get("otlp_traces_endpoint"), current_traceparent())

    async def caption(self, audio: np.ndarray, request_id: str) -> CaptionResult:
        request = make_request(audio, request_id, self.config.max_window_s)
        self._check_fits(request.audio.shape[0], request.request_id)
        prompt = {"prompt": self._prompt, "multi_modal_data": {"audio": (request.audio, SAMPLE_RATE)}}
        final, elapsed = await self._generate(prompt, self._sampling_params(), request.request_id)
        completion = final.outputs[0]
        return CaptionResult(
            request_id=request.request_id,
            text=completion.text,
            prompt_tokens=len(final.prompt_token_ids or ()),
            output_tokens=len(completion.token_ids),
            engine_seconds=elapsed,
            engine=self.name,
            finish_reason=completion.finish_reason,
        )

    async def complete(
        self, prompt: str, *, request_id: str, max_tokens: int, json_schema: dict[str, Any] | None = None
    ) -> TextResult:
        """A text-only completion through the same engine (and batches) as the captions.

        With ``json_schema``, decoding is constrained to JSON valid under it (xgrammar).
        """
        final, elapsed = await self._generate(
            {"prompt": prompt}, self._sampling_params(max_tokens=max_tokens, json_schema=json_schema), request_id
        )
        completion = final.outputs[0]
        return TextResult(
            request_id=request_id,
            text=completion.text,
            prompt_tokens=len(final.prompt_token_ids or ()),
            output_tokens=len(completion.token_ids),
            engine_seconds=elapsed,
            finish_reason=completion.finish_reason,
        )

    def stats(self) -> dict[str, Any]:
        return {"engine": self.name, "in_flight": self.in_flight, **self.batch_stats.snapshot()}

    async def check_health(self) -> None:
        engine = self._engine
        if engine is None:
            raise EngineDeadError("vllm engine is not started")
        try:
            await engine.check_health()
        except Exception as exc:
            raise EngineDeadError(f"vllm engine is dead: {type(exc).__name__}: {exc}") from exc

    async def shutdown(self) -> None:
        engine = self._engine
        if engine is None:
            return
        if not await self._flight.drain(self.config.drain_timeout_s) and self._vllm_ids:
            # Out of time: abort what is left so its callers get EngineStoppingError (and retry).
            await engine.abort(list(self._vllm_ids))
            await asyncio.sleep(0)
        self._engine = None
        # Stop AsyncLLM's output handler here, in its loop, first: otherwise it sees the engine-core
        # process go away during shutdown and logs a spurious "EngineDeadError".
        handler = getattr(engine, "output_handler", None)
        if handler is not None and not handler.done():
            handler.cancel()
        # Stopping the engine-core process takes seconds: not on the event loop.
        await asyncio.to_thread(engine.shutdown)


__all__ = ["BatchStats", "VllmCaptionEngine"]
