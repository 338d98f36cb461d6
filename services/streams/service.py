"""The streams service without Serve: the durable consumer of stream starts, and the owner it
hands each to. The LiveStreams deployment wraps it (services/streams/deployment.py); tests run
it in-process against a real nats-server with a captioner of their own."""

from __future__ import annotations

import asyncio
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from services.captioner.redaction import RedactionPolicy
from services.events.consumer import Poison, PullConsumer, Redelivery
from services.events.deadletter import dead_letter
from services.events.tasks import cancel_and_wait
from services.preprocess.vad import default_detector
from services.settings import Settings
from services.streams.measure import WindowMeasurer
from services.streams.owner import Caption, StreamOwner
from services.streams.strays import sweep_forever


class StreamService:
    def __init__(self, js: JetStreamContext, settings: Settings, *, caption: Caption) -> None:
        self._js = js
        self._settings = settings
        self._caption = caption
        self.owner: StreamOwner | None = None
        self._consumer: PullConsumer | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        cfg, nats = self._settings.streams, self._settings.nats
        state = await self._js.key_value(cfg.state_bucket)
        self.owner = StreamOwner(
            self._js, self._settings, caption=self._caption, state=state,
            measurer=WindowMeasurer(default_detector(), self._settings.preprocess),
            redaction=RedactionPolicy.from_settings(self._settings.captioner),
        )  # fmt: skip
        self._consumer = PullConsumer(
            self._js,
            stream=cfg.live_stream,
            durable=cfg.durable,
            handler=self.owner.own,
            dead_letter=self._dead_letter,
            # A stream is one long handling: heartbeats keep it this replica's; each redelivery is
            # a new owner (bounded by max_owners); it may stay open max_stream_s.
            redelivery=Redelivery(
                max_deliver=cfg.max_owners, heartbeat_s=cfg.owner_ack_wait_s / 3, retry_delay_s=nats.retry_delay_s,
                retry_delay_max_s=nats.retry_delay_max_s, max_handling_s=cfg.max_stream_s + cfg.idle_timeout_s + 60,
            ),  # fmt: skip
            max_in_flight=cfg.max_streams,
            batch=1,
        )
        self._consumer.start()
        self._sweeper = asyncio.get_running_loop().create_task(sweep_forever(self._js, self._settings, state), name="stray-chunks")

    async def _dead_letter(self, msg: Msg, poison: Poison) -> None:
        await dead_letter(self._js, self._settings.nats, self._settings.source, msg, poison)

    def resubscribe(self) -> None:
        if self._consumer is not None:
            self._consumer.resubscribe()

    @property
    def failure(self) -> BaseException | None:
        return self._consumer.failure if self._consumer is not None else None

    def status(self) -> dict[str, Any]:
        return {
            "open_streams": self.owner.open_streams if self.owner else 0,
            "acked": self._consumer.stats.acked if self._consumer else 0,
        }

    async def stop(self) -> None:
        """Streams in flight are cancelled un-acked: each goes to the next owner after owner_ack_wait_s."""
        await cancel_and_wait(self._sweeper)
        if self._consumer is not None:
            await self._consumer.stop(0.0, cancel=True)
