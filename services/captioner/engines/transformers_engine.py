"""The transformers caption engine: the reference path, batched.

``Qwen3OmniMoeForConditionalGeneration`` + ``Qwen3OmniMoeProcessor`` (the seed's loading code),
talker disabled, text only, on GPU or CPU. A micro-batcher gathers concurrent ``caption()``
calls into one batched ``generate``. Far slower than vLLM on the real model (transformers loops
over the MoE experts in Python), which is what the benchmark measures.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import time
from typing import Any

import numpy as np

from services.captioner.engines.base import (
    SAMPLE_RATE,
    CaptionRequest,
    CaptionResult,
    InFlight,
    TransformersEngineConfig,
    make_request,
    root_cause,
)
from services.captioner.errors import CaptionGenerationError, EngineDeadError, EngineStartError
from services.captioner.prompt import caption_prompt


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
        self._flight = InFlight(self.name)

    @property
    def in_flight(self) -> int:
        return self._flight.count

    async def start(self) -> None:
        if self._worker is not None:
            return
        try:
            await asyncio.to_thread(self._load)
        except Exception as exc:
            raise EngineStartError(self.name, exc) from exc
        self._queue = asyncio.Queue()
        self._flight = InFlight(self.name)
        self._worker = asyncio.create_task(self._batch_loop(), name="transformers-caption-batcher")

    def _load(self) -> None:
        import torch
        from transformers import Qwen3OmniMoeForConditionalGeneration, Qwen3OmniMoeProcessor

        dtype = "auto" if self.config.dtype == "auto" else getattr(torch, self.config.dtype)
        # Straight onto an accelerator when accelerate is there (the real checkpoint is ~63 GB:
        # staging it in host memory first is slow); otherwise load, then move.
        direct = self.config.device != "cpu" and importlib.util.find_spec("accelerate") is not None
        placement: dict[str, Any] = {"device_map": self.config.device} if direct else {}
        model = Qwen3OmniMoeForConditionalGeneration.from_pretrained(self.config.model, dtype=dtype, **placement)
        if getattr(model, "has_talker", False):
            model.disable_talker()  # the Captioner answers in text only
        if not direct:
            model = model.to(self.config.device)  # type: ignore[arg-type]  # (.to() is annotated as its decorator's wrapper)
        self._model = model.eval()
        self._processor = Qwen3OmniMoeProcessor.from_pretrained(self.config.model)
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
        async with self._flight.track():
            await queue.put(_Pending(request, future))
            return await future

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
                except Exception as exc:  # noqa: BLE001 -- whatever generate() raised fails this batch's windows, each told why
                    cause = root_cause(exc)
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
                min_new_tokens=min(s.min_tokens, s.max_tokens) or None,
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
        if self._worker is None:
            return
        # Windows already queued or generating finish first (up to drain_timeout_s).
        await self._flight.drain(self.config.drain_timeout_s)
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            try:
                await worker
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 -- the loop's own failure was reported to its callers
                pass
        self._queue = None
        self._model = self._processor = None
        gc.collect()


__all__ = ["TransformersCaptionEngine"]
