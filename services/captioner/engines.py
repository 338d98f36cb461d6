"""Caption engines: one audio window in, the Captioner's text out.

Two implementations behind one small interface:

- ``VllmCaptionEngine``: vLLM's ``AsyncLLM`` (continuous batching; the production path).
- ``TransformersCaptionEngine``: transformers' thinker-only generate, with a micro-batcher that
  gathers concurrent ``caption()`` calls into one batched ``generate`` (reference / fallback path;
  far slower on the real model).

Both take float32 mono audio at 16 kHz (preprocessing resamples; vLLM's own resampler only handles
whole-number rate ratios) and render the prompt with the model's own chat template.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from pydantic import field_validator

from services.captioner.errors import (
    CaptionGenerationError,
    EmptyWindowError,
    EngineDeadError,
    EngineStartError,
    InvalidWindowError,
    WindowTooLongError,
)
from services.captioner.prompt import caption_prompt

if TYPE_CHECKING:
    from vllm.engine.arg_utils import AsyncEngineArgs

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
# The Whisper-style feature extractor reflect-pads by n_fft/2 = 200 samples and fails on shorter
# input (vLLM fails at 160 samples, transformers at 161); one full n_fft window (25 ms) is the
# shortest window both engines turn into at least one audio token.
MIN_WINDOW_SAMPLES = 400
DEFAULT_MAX_WINDOW_S = 30.0  # the Captioner's authors recommend clips of at most 30 s


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


class SamplingConfig(BaseModel):
    """Sampling defaults from the Captioner's official examples; set max_tokens explicitly."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: NonNegativeFloat = 0.6
    top_p: float = Field(default=0.95, gt=0, le=1)
    top_k: int = Field(default=20, description="-1 or 0 disables top-k.")
    max_tokens: PositiveInt = 512
    seed: int | None = None


class EngineConfig(BaseModel):
    """What every engine needs."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model: str = Field(description="Hub id or local checkpoint dir.")
    max_window_s: PositiveFloat = Field(
        default=DEFAULT_MAX_WINDOW_S, description="Longer windows raise WindowTooLongError."
    )
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)


class VllmEngineConfig(EngineConfig):
    tensor_parallel_size: PositiveInt = 1
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    max_model_len: PositiveInt = 4096
    max_num_seqs: PositiveInt = 16
    dtype: str = "auto"
    enforce_eager: bool = False
    limit_mm_per_prompt: dict[str, int] = Field(default_factory=lambda: {"audio": 1, "image": 0, "video": 0})
    log_stats: bool = False
    extra_engine_args: dict[str, Any] = Field(
        default_factory=dict, description="Passed to AsyncEngineArgs as is (e.g. max_num_batched_tokens)."
    )

    def engine_args(self) -> AsyncEngineArgs:
        from vllm.engine.arg_utils import AsyncEngineArgs

        return AsyncEngineArgs(
            model=self.model,
            tensor_parallel_size=self.tensor_parallel_size,
            gpu_memory_utilization=self.gpu_memory_utilization,
            max_model_len=self.max_model_len,
            max_num_seqs=self.max_num_seqs,
            dtype=self.dtype,
            enforce_eager=self.enforce_eager,
            limit_mm_per_prompt=dict(self.limit_mm_per_prompt),
            disable_log_stats=not self.log_stats,
            **self.extra_engine_args,
        )


class TransformersEngineConfig(EngineConfig):
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    device: str = "cpu"
    max_batch_size: PositiveInt = 8
    batch_wait_s: NonNegativeFloat = Field(
        default=0.01, description="How long the micro-batcher waits for more windows after the first."
    )


# ---------------------------------------------------------------------------------------------
# Requests and results
# ---------------------------------------------------------------------------------------------


def as_mono_float32(audio: Any) -> np.ndarray:
    """``audio`` as a contiguous float32 1-D array; raises InvalidWindowError if it cannot be one."""
    array = np.asarray(audio)
    if array.ndim != 1:
        raise InvalidWindowError(f"audio must be mono (1-D), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidWindowError(f"audio must be float samples in [-1, 1], got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise InvalidWindowError("audio holds NaN or infinite samples")
    return array


class CaptionRequest(BaseModel):
    """One window: float32 mono audio at 16 kHz."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    audio: np.ndarray
    request_id: str = Field(min_length=1)

    @field_validator("audio", mode="before")
    @classmethod
    def _mono_float32(cls, value: Any) -> np.ndarray:
        return as_mono_float32(value)

    @property
    def duration_s(self) -> float:
        return self.audio.shape[0] / SAMPLE_RATE


class CaptionResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    request_id: str
    text: str
    prompt_tokens: NonNegativeInt
    output_tokens: NonNegativeInt
    engine_seconds: NonNegativeFloat = Field(description="Time inside the engine (for a batch: the whole batch).")
    engine: str
    finish_reason: str | None = Field(default=None, description="'stop' (end of text) or 'length' (max_tokens).")
    batch_size: PositiveInt | None = Field(default=None, description="Windows generated together (transformers).")


def make_request(audio: np.ndarray, request_id: str, max_window_s: float) -> CaptionRequest:
    """Validate one window against what every engine accepts; raises InvalidWindowError subclasses."""
    # Checked before the model is built: pydantic would wrap InvalidWindowError (a ValueError).
    request = CaptionRequest(audio=as_mono_float32(audio), request_id=request_id)
    n = request.audio.shape[0]
    if n < MIN_WINDOW_SAMPLES:
        raise EmptyWindowError(
            f"window {request_id!r} has {n} samples; at least {MIN_WINDOW_SAMPLES} "
            f"({MIN_WINDOW_SAMPLES / SAMPLE_RATE * 1000:.0f} ms at {SAMPLE_RATE} Hz) are needed for one audio token"
        )
    if n > round(max_window_s * SAMPLE_RATE):
        raise WindowTooLongError(
            f"window {request_id!r} lasts {request.duration_s:.2f} s; the limit is {max_window_s:g} s"
        )
    return request


# ---------------------------------------------------------------------------------------------
# Interface
# ---------------------------------------------------------------------------------------------


@runtime_checkable
class CaptionEngine(Protocol):
    name: str

    @property
    def in_flight(self) -> int:
        """Requests accepted and not yet answered."""
        ...

    async def start(self) -> None: ...

    async def caption(self, audio: np.ndarray, request_id: str) -> CaptionResult: ...

    async def check_health(self) -> None:
        """Return if the engine can serve; raise EngineDeadError if its loop died."""
        ...

    async def shutdown(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# vLLM
# ---------------------------------------------------------------------------------------------


def _is_too_short_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if "too short to be represented" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _root_cause(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


class VllmCaptionEngine:
    """vLLM ``AsyncLLM``: concurrent ``caption()`` calls are batched by vLLM's scheduler."""

    name = "vllm"

    def __init__(self, config: VllmEngineConfig) -> None:
        self.config = config
        self._engine: Any = None  # vllm.v1.engine.async_llm.AsyncLLM once started
        self._prompt: str | None = None
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def start(self) -> None:
        if self._engine is not None:
            return
        try:
            from vllm.v1.engine.async_llm import AsyncLLM

            self._prompt = await asyncio.to_thread(caption_prompt, self.config.model)
            # Building the engine blocks for tens of seconds (process spawn, weight load, warm-up):
            # keep the event loop free meanwhile. AsyncLLM starts its output handler lazily on the
            # first request, inside the running loop.
            self._engine = await asyncio.to_thread(AsyncLLM.from_engine_args, self.config.engine_args())
        except Exception as exc:
            raise EngineStartError(self.name, exc) from exc

    def _sampling_params(self) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        s = self.config.sampling
        return SamplingParams(
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            max_tokens=s.max_tokens,
            seed=s.seed,
            # Only the final output is used: skip streaming intermediate deltas.
            output_kind=RequestOutputKind.FINAL_ONLY,
        )

    async def caption(self, audio: np.ndarray, request_id: str) -> CaptionResult:
        request = make_request(audio, request_id, self.config.max_window_s)
        engine = self._engine
        if engine is None:
            raise EngineDeadError("vllm engine is not started")
        from vllm.v1.engine.exceptions import EngineDeadError as VllmEngineDeadError

        prompt = {"prompt": self._prompt, "multi_modal_data": {"audio": (request.audio, SAMPLE_RATE)}}
        # vLLM needs ids unique among requests in flight; a redelivered message may reuse one.
        vllm_request_id = f"{request.request_id}-{uuid.uuid4().hex[:8]}"
        final = None
        self._in_flight += 1
        started = time.perf_counter()
        try:
            async for output in engine.generate(prompt, self._sampling_params(), request_id=vllm_request_id):
                final = output
        except VllmEngineDeadError as exc:
            raise EngineDeadError(f"vllm engine died while captioning {request.request_id!r}") from exc
        except Exception as exc:
            if _is_too_short_error(exc):
                raise EmptyWindowError(f"window {request.request_id!r} is too short for one audio token") from exc
            cause = _root_cause(exc)
            raise CaptionGenerationError(
                f"vllm failed on {request.request_id!r}: {type(cause).__name__}: {cause}"
            ) from exc
        finally:
            self._in_flight -= 1
        elapsed = time.perf_counter() - started
        if final is None or not final.outputs:
            raise CaptionGenerationError(f"vllm returned no output for {request.request_id!r}")
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

    async def check_health(self) -> None:
        engine = self._engine
        if engine is None:
            raise EngineDeadError("vllm engine is not started")
        try:
            await engine.check_health()
        except Exception as exc:
            raise EngineDeadError(f"vllm engine is dead: {exc}") from exc

    async def shutdown(self) -> None:
        engine, self._engine = self._engine, None
        if engine is None:
            return
        # Stop AsyncLLM's output handler here, in its loop, first: otherwise it sees the engine-core
        # process go away during shutdown and logs a spurious "EngineDeadError".
        handler = getattr(engine, "output_handler", None)
        if handler is not None and not handler.done():
            handler.cancel()
        # Stopping the engine-core process takes seconds: not on the event loop.
        await asyncio.to_thread(engine.shutdown)


# ---------------------------------------------------------------------------------------------
# transformers
# ---------------------------------------------------------------------------------------------


class _Pending:
    __slots__ = ("future", "request")

    def __init__(self, request: CaptionRequest, future: asyncio.Future[CaptionResult]) -> None:
        self.request = request
        self.future = future


class TransformersCaptionEngine:
    """transformers thinker-only generate; concurrent ``caption()`` calls share one batched generate."""

    name = "transformers"

    def __init__(self, config: TransformersEngineConfig) -> None:
        self.config = config
        self._model: Any = None
        self._processor: Any = None
        self._prompt: str | None = None
        self._eos_ids: list[int] = []
        self._pad_id: int | None = None
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def start(self) -> None:
        if self._worker is not None:
            return
        try:
            await asyncio.to_thread(self._load)
        except Exception as exc:
            raise EngineStartError(self.name, exc) from exc
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._batch_loop(), name="transformers-caption-batcher")

    def _load(self) -> None:
        import torch
        from transformers import AutoProcessor, Qwen3OmniMoeForConditionalGeneration

        dtype = "auto" if self.config.dtype == "auto" else getattr(torch, self.config.dtype)
        model = Qwen3OmniMoeForConditionalGeneration.from_pretrained(self.config.model, dtype=dtype)
        if getattr(model, "has_talker", False):
            model.disable_talker()  # the Captioner answers in text only
        self._model = model.to(self.config.device).eval()
        self._processor = AutoProcessor.from_pretrained(self.config.model)
        self._prompt = caption_prompt(self.config.model)

        eos = model.generation_config.eos_token_id
        eos_ids = [eos] if isinstance(eos, int) else list(eos or ())
        # The composite model's generate() hard-codes the real vocab's <|im_end|> (151645) as the
        # thinker's eos; take it from the checkpoint's config instead so any vocab works.
        if model.config.im_end_token_id not in eos_ids:
            eos_ids.insert(0, model.config.im_end_token_id)
        self._eos_ids = eos_ids
        self._pad_id = self._processor.tokenizer.pad_token_id

    async def caption(self, audio: np.ndarray, request_id: str) -> CaptionResult:
        request = make_request(audio, request_id, self.config.max_window_s)
        worker, queue = self._worker, self._queue
        if worker is None or queue is None:
            raise EngineDeadError("transformers engine is not started")
        if worker.done():
            raise EngineDeadError("transformers engine's batching loop has stopped")
        future: asyncio.Future[CaptionResult] = asyncio.get_running_loop().create_future()
        self._in_flight += 1
        try:
            await queue.put(_Pending(request, future))
            return await future
        finally:
            self._in_flight -= 1

    async def _next_batch(self, queue: asyncio.Queue[_Pending]) -> list[_Pending]:
        batch = [await queue.get()]
        deadline = time.monotonic() + self.config.batch_wait_s
        while len(batch) < self.config.max_batch_size:
            timeout = deadline - time.monotonic()
            try:
                batch.append(queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(queue.get(), timeout))
            except (asyncio.QueueEmpty, TimeoutError):
                break
        # Callers that gave up meanwhile need no generation.
        return [p for p in batch if not p.future.done()]

    async def _batch_loop(self) -> None:
        assert self._queue is not None
        queue = self._queue
        batch: list[_Pending] = []
        try:
            while True:
                batch = await self._next_batch(queue)
                if not batch:
                    continue
                try:
                    results = await asyncio.to_thread(self._generate, [p.request for p in batch])
                except Exception as exc:
                    cause = _root_cause(exc)
                    error = CaptionGenerationError(
                        f"transformers generate failed for a batch of {len(batch)}: {type(cause).__name__}: {cause}"
                    )
                    error.__cause__ = exc
                    for pending in batch:
                        if not pending.future.done():
                            pending.future.set_exception(error)
                else:
                    for pending, result in zip(batch, results, strict=True):
                        if not pending.future.done():
                            pending.future.set_result(result)
                batch = []
        finally:
            # Shutdown or a crash of this loop: nobody will answer the waiting callers any more.
            leftovers = batch + [queue.get_nowait() for _ in range(queue.qsize())]
            for pending in leftovers:
                if not pending.future.done():
                    pending.future.set_exception(EngineDeadError("transformers engine stopped"))

    def _generate(self, requests: list[CaptionRequest]) -> list[CaptionResult]:
        import torch

        model, processor, s = self._model, self._processor, self.config.sampling
        inputs = processor(
            text=[self._prompt] * len(requests),
            audio=[r.audio for r in requests],
            sampling_rate=SAMPLE_RATE,
            padding=True,
            return_tensors="pt",
        ).to(model.device)
        inputs["input_features"] = inputs["input_features"].to(model.dtype)

        sampling: dict[str, Any] = {"do_sample": s.temperature > 0}
        if s.temperature > 0:
            sampling.update(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k if s.top_k > 0 else None)
        started = time.perf_counter()
        with torch.inference_mode():
            if s.seed is not None:
                torch.manual_seed(s.seed)
            # The thinker alone: text out, plain generate() kwargs (the composite model's
            # generate() renames them thinker_* and defaults to 1024 new tokens).
            output = model.thinker.generate(
                **inputs,
                max_new_tokens=s.max_tokens,
                eos_token_id=self._eos_ids,
                pad_token_id=self._pad_id,
                **sampling,
            )
        elapsed = time.perf_counter() - started

        prompt_len = inputs["input_ids"].shape[1]
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        results = []
        for i, request in enumerate(requests):
            generated = output[i, prompt_len:].tolist()
            stop = next((j for j, tok in enumerate(generated) if tok in self._eos_ids), None)
            kept = generated if stop is None else generated[: stop + 1]
            results.append(
                CaptionResult(
                    request_id=request.request_id,
                    text=processor.decode(kept, skip_special_tokens=True),
                    prompt_tokens=int(prompt_tokens[i]),
                    output_tokens=len(kept),
                    engine_seconds=elapsed,
                    engine=self.name,
                    finish_reason="length" if stop is None else "stop",
                    batch_size=len(requests),
                )
            )
        return results

    async def check_health(self) -> None:
        if self._worker is None:
            raise EngineDeadError("transformers engine is not started")
        if self._worker.done():
            exc = None if self._worker.cancelled() else self._worker.exception()
            raise EngineDeadError(f"transformers engine's batching loop has stopped: {exc!r}") from exc

    async def shutdown(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            try:
                await worker
            except (asyncio.CancelledError, Exception):  # the loop's own failure was reported to callers
                pass
        self._queue = None
        self._model = self._processor = None
        gc.collect()


# ---------------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------------

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
    "TransformersCaptionEngine",
    "TransformersEngineConfig",
    "as_mono_float32",
    "VllmCaptionEngine",
    "VllmEngineConfig",
    "build_engine",
    "make_request",
]
