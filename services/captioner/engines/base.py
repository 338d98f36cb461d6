"""What every caption engine shares: configuration, window validation, results, the interface,
and the in-flight tracker that lets an engine drain before it shuts down."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, field_validator

from services.captioner.errors import EmptyWindowError, EngineStoppingError, InvalidWindowError, WindowTooLongError

if TYPE_CHECKING:
    from vllm.engine.arg_utils import AsyncEngineArgs

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
HOP_LENGTH = 160  # the feature extractor's hop: 100 mel frames per second
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
    min_tokens: NonNegativeInt = Field(
        default=0, description="Generate at least this many tokens (benchmarks fix the length with min = max)."
    )
    seed: int | None = None


class EngineConfig(BaseModel):
    """What every engine needs."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model: str = Field(description="Hub id or local checkpoint dir.")
    max_window_s: PositiveFloat = Field(
        default=DEFAULT_MAX_WINDOW_S, description="Longer windows raise WindowTooLongError."
    )
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    drain_timeout_s: NonNegativeFloat = Field(
        default=60.0, description="shutdown() waits this long for windows in flight before it stops the engine."
    )


class VllmEngineConfig(EngineConfig):
    tensor_parallel_size: PositiveInt = 1
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    max_model_len: PositiveInt = 4096
    max_num_seqs: PositiveInt = 16
    max_num_batched_tokens: PositiveInt | None = None
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    enforce_eager: bool = False
    limit_mm_per_prompt: dict[str, int] = Field(default_factory=lambda: {"audio": 1, "image": 0, "video": 0})
    log_stats: bool = False
    extra_engine_args: dict[str, Any] = Field(default_factory=dict, description="Passed to AsyncEngineArgs as is.")

    def engine_args(self) -> AsyncEngineArgs:
        from vllm.config import StructuredOutputsConfig
        from vllm.engine.arg_utils import AsyncEngineArgs

        optional: dict[str, Any] = {}
        if self.max_num_batched_tokens:
            optional["max_num_batched_tokens"] = self.max_num_batched_tokens
        if self.sampling.seed is not None:
            optional["seed"] = self.sampling.seed  # the engine's own seed (see VllmCaptionEngine.start)
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
            # Guided decoding (the structured facet pass) emits compact JSON: a grammar that allows
            # any whitespace lets a weak model pad forever and run out of tokens (xgrammar: the backend
            # that takes this option and every schema feature the pass uses).
            structured_outputs_config=StructuredOutputsConfig(backend="xgrammar", disable_any_whitespace=True),
            **optional,
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


def audio_token_count(n_samples: int) -> int:
    """Audio tokens Qwen3-Omni's audio encoder makes of ``n_samples`` at 16 kHz.

    100 mel frames per second; every full 100-frame chunk gives 13 tokens and the remainder
    goes through the encoder's three stride-2 convolutions (as the processor computes it).
    """
    frames = n_samples // HOP_LENGTH
    rest = frames % 100
    conv = (rest - 1) // 2 + 1
    return ((conv - 1) // 2 + 1 - 1) // 2 + 1 + (frames // 100) * 13


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


class TextResult(BaseModel):
    """A text-only completion (the guided facet pass)."""

    model_config = ConfigDict(frozen=True)

    request_id: str
    text: str
    prompt_tokens: NonNegativeInt
    output_tokens: NonNegativeInt
    engine_seconds: NonNegativeFloat
    finish_reason: str | None = None


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


def root_cause(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


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

    async def shutdown(self) -> None:
        """Stop taking windows, let those in flight finish (up to the config's drain_timeout_s), stop."""
        ...


@runtime_checkable
class ConfigurableEngine(Protocol):
    """An engine whose config (and so its sampling) can be replaced while it runs."""

    config: EngineConfig


@runtime_checkable
class TextEngine(Protocol):
    """An engine that also completes text prompts, optionally under a JSON schema (guided decoding)."""

    async def complete(
        self, prompt: str, *, request_id: str, max_tokens: int, json_schema: dict[str, Any] | None = None
    ) -> TextResult: ...


# ---------------------------------------------------------------------------------------------
# Draining
# ---------------------------------------------------------------------------------------------


class InFlight:
    """Counts requests in flight; once closed, refuses new ones and lets the rest drain."""

    def __init__(self, engine: str) -> None:
        self._engine = engine
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.closing = False

    @property
    def count(self) -> int:
        return self._count

    @asynccontextmanager
    async def track(self) -> AsyncIterator[None]:
        if self.closing:
            raise EngineStoppingError(f"{self._engine} engine is shutting down; retry the window elsewhere")
        self._count += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._count -= 1
            if self._count == 0:
                self._idle.set()

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new requests and wait for those in flight; False if some were still running at the timeout."""
        self.closing = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            log.warning("%s engine: %d window(s) still in flight after %.0f s of draining", self._engine, self._count, timeout_s)
            return False
        return True


__all__ = [
    "DEFAULT_MAX_WINDOW_S",
    "MIN_WINDOW_SAMPLES",
    "SAMPLE_RATE",
    "CaptionEngine",
    "CaptionRequest",
    "CaptionResult",
    "EngineConfig",
    "InFlight",
    "SamplingConfig",
    "TextEngine",
    "TextResult",
    "TransformersEngineConfig",
    "VllmEngineConfig",
    "as_mono_float32",
    "audio_token_count",
    "make_request",
    "root_cause",
]
