"""A caption engine wrapper that fails like a dying engine, for fault tests.

Loaded inside the Captioner replica through ``captioner.engine_factory``
("fault_engine:flaky_engine"). Windows of events whose id starts with
``flaky-`` fail with EngineDeadError on their first attempt, as if the engine
died mid-request; the retry succeeds. Every other window is untouched.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from services.captioner.engines import CaptionEngine, CaptionResult, build_engine
from services.captioner.errors import EngineDeadError

FLAKY_PREFIX = "flaky-"


class FlakyEngine:
    def __init__(self, inner: CaptionEngine) -> None:
        self._inner = inner
        self.name = inner.name
        self._failed: set[str] = set()

    @property
    def in_flight(self) -> int:
        return self._inner.in_flight

    async def start(self) -> None:
        await self._inner.start()

    async def caption(self, audio: np.ndarray, request_id: str) -> CaptionResult:
        if request_id.startswith(FLAKY_PREFIX) and request_id not in self._failed:
            self._failed.add(request_id)
            raise EngineDeadError(f"injected fault: engine died while captioning {request_id}")
        return await self._inner.caption(audio, request_id)

    async def check_health(self) -> None:
        await self._inner.check_health()

    async def shutdown(self) -> None:
        await self._inner.shutdown()


def flaky_engine(name: str, config: dict[str, Any]) -> FlakyEngine:
    return FlakyEngine(build_engine(name, config))
