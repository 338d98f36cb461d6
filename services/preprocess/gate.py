"""A replica's admission for prepares: at most ``max_concurrent_prepares`` decode at once,
holding together at most ``max_prepare_memory_bytes``.

Each prepare reads its header (off the loop), reserves the memory it projects and
*waits* for room, then waits for a decoding slot and decodes in a thread. Waiting,
not refusing, because a recording that fits the budget is good input that only
arrived at a busy moment: the Ingress holds its message with ``in_progress``
heartbeats meanwhile. A recording whose own projection is over the whole budget
never fits and is refused at once (stage ``validate``, by :func:`.limits.project`).
Memory is reserved before a slot is taken, so a waiting prepare holds no thread.

Serve's ``max_ongoing_requests`` still bounds the calls a replica accepts, fetching
included (I/O that should overlap); the slots bound the CPU-bound decoding behind it.
"""

from __future__ import annotations

import asyncio
import logging

from services.events.models import AudioSubmitted
from services.preprocess.budget import MemoryBudget, Reservation
from services.preprocess.errors import (
    AudioTooLongError,
    ChannelSecondsError,
    PrepareMemoryBusyError,
    PrepareMemoryError,
    SamplesPerByteError,
)
from services.preprocess.pipeline import PreparedAudio, plan, prepare
from services.preprocess.vad import SpeechDetector
from services.settings import PreprocessSettings

log = logging.getLogger(__name__)
_MB = 1024 * 1024
_LIMITS = (AudioTooLongError, ChannelSecondsError, PrepareMemoryError, PrepareMemoryBusyError, SamplesPerByteError)


class PrepareGate:
    def __init__(self, settings: PreprocessSettings, *, detector: SpeechDetector | None = None) -> None:
        self._settings = settings
        self._detector = detector
        self.budget = MemoryBudget(settings.max_prepare_memory_bytes)
        self._slots = asyncio.Semaphore(settings.max_concurrent_prepares)
        self._freed = asyncio.Condition()
        self.waited = 0  # prepares that had to wait for memory (observability, tests)

    async def prepare(self, data: bytes, submitted: AudioSubmitted) -> PreparedAudio:
        try:
            return await self._prepare(data, submitted)
        except _LIMITS as exc:  # the dead letter says it too; this says it where the replica runs
            log.warning("prepare refused over a limit (%s): %s", type(exc).__name__, exc)
            raise

    async def _prepare(self, data: bytes, submitted: AudioSubmitted) -> PreparedAudio:
        projection = (await asyncio.to_thread(plan, data, submitted, self._settings)).projection
        reservation = await self._reserve(projection.bytes)
        try:
            async with self._slots:
                return await asyncio.to_thread(
                    prepare, data, submitted, self._settings, detector=self._detector, reservation=reservation
                )
        finally:
            reservation.release()
            async with self._freed:
                self._freed.notify_all()

    async def _reserve(self, nbytes: int) -> Reservation:
        reservation = self.budget.try_reserve(nbytes)
        if reservation is not None:
            return reservation
        self.waited += 1
        log.info(
            "prepare waits for memory: it needs %.0f MB, %.0f of the %.0f MB budget are held by other prepares",
            nbytes / _MB, self.budget.used / _MB, self.budget.capacity / _MB,
        )
        async with self._freed:
            while (reservation := self.budget.try_reserve(nbytes)) is None:
                await self._freed.wait()
        return reservation
