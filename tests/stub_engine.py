"""A caption engine with no model, for tests that exercise the service around the engine
(loaded in the Captioner replica through ``captioner.engine_factory`` = "stub_engine:stub_engine")."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from services.captioner.engines import CaptionResult


class StubEngine:
    name = "stub"
    in_flight = 0

    async def start(self) -> None:
        pass

    async def caption(self, audio: np.ndarray, request_id: str) -> CaptionResult:
        await asyncio.sleep(0.01)
        return CaptionResult(request_id=request_id, text="a caller asks about a bill.", prompt_tokens=40,
                             output_tokens=7, engine_seconds=0.01, engine="stub", finish_reason="stop")  # fmt: skip

    async def check_health(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass


def stub_engine(name: str, config: Any) -> StubEngine:
    return StubEngine()
