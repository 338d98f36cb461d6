"""The Preprocessor Serve deployment: fetch the audio, then run the pure pipeline off the event loop."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError, ObjectNotFoundError
from ray import serve

from services.events.jetstream import connect
from services.events.models import AudioSubmitted, ObjectRef
from services.preprocess.errors import SourceNotFoundError
from services.preprocess.pipeline import PreparedAudio, prepare
from services.preprocess.sources import fetch_audio
from services.settings import Settings

@serve.deployment(name="Preprocessor")
class Preprocessor:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._nc: NATS | None = None
        self._nc_lock = asyncio.Lock()

    async def _get_object(self, ref: ObjectRef) -> bytes:
        async with self._nc_lock:
            if self._nc is None:
                assert self._settings.nats.url, "the app builder always sets the NATS URL"
                self._nc = await connect(self._settings.nats.url, name="listenpost-preprocessor")
        try:
            store = await self._nc.jetstream().object_store(ref.bucket)
            result = await store.get(ref.name)
        except (ObjectNotFoundError, NotFoundError) as exc:
            raise SourceNotFoundError(f"object {ref.bucket}/{ref.name} not found in the NATS object store") from exc
        return bytes(result.data or b"")

    async def prepare(self, submitted: AudioSubmitted) -> PreparedAudio:
        data = await fetch_audio(
            submitted.audio,
            roots=self._settings.preprocess.file_roots,
            max_bytes=self._settings.preprocess.max_bytes,
            get_object=self._get_object,
        )
        # Decoding and resampling are CPU-bound: keep the replica's loop free for other calls.
        return await asyncio.to_thread(prepare, data, submitted, self._settings.preprocess)

    async def __del__(self) -> None:
        if self._nc is not None:
            await self._nc.close()
