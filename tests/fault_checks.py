"""What the fault tests share: submitting a batch of generated recordings straight to the
input stream, waiting for every one to settle, and checking exactly-once outcomes from what
the streams hold (services/events/accounting.py)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeoutError

from services.events.accounting import Accounting, account
from services.events.binding import decode, event_data_json, new_event
from services.events.jetstream import derive_msg_id, publish_event
from services.events.models import AUDIO_SUBMITTED
from services.settings import Settings
from tests.conftest import tone, wav_bytes


async def submit_batch(nc: NATS, settings: Settings, audio_dir: Path, count: int, prefix: str = "") -> list[str]:
    ids = []
    for i in range(count):
        path = audio_dir / f"fault-{uuid.uuid4().hex[:8]}.wav"
        path.write_bytes(wav_bytes(tone(1.0 + 0.5 * (i % 3), 8000, 200 + 50 * i), 8000))
        event = new_event(AUDIO_SUBMITTED, "urn:test:faults", {"audio": {"uri": path.as_uri()}},
                          id=f"{prefix}{uuid.uuid4()}")  # fmt: skip
        await publish_event(nc.jetstream(), settings.nats.subject("in", "faults"), event,
                            msg_id=derive_msg_id("submit", event.get_source(), event.get_id()))  # fmt: skip
        ids.append(event.get_id())
    return ids


async def settled(nc: NATS, settings: Settings, ids: list[str], timeout_s: float = 240.0) -> Accounting:
    """Wait until every input has an outcome, then give the accounting (stored outputs only)."""
    async with asyncio.timeout(timeout_s):
        while True:
            result = await account(nc.jetstream(), settings.nats, ids)
            if not result.missing:
                return result
            await asyncio.sleep(2.0)


async def captioned_field(nc: NATS, settings: Settings, ids: list[str], field: str) -> dict[str, object]:
    """``data[field]`` of the stored captioned event of each input."""
    wanted, found = set(ids), {}
    sub = await nc.jetstream().subscribe(settings.nats.subject("captioned"), ordered_consumer=True)
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=1.0)
            except NatsTimeoutError:
                return found
            event = decode(msg.data, msg.headers)
            if event.get_attributes().get("inputid") in wanted:
                found[event.get_attributes()["inputid"]] = event_data_json(event)[field]
    finally:
        await sub.unsubscribe()


def assert_exactly_once_captioned(result: Accounting, ids: list[str]) -> None:
    assert result.submitted == len(ids)
    assert result.duplicates == {}
    assert result.missing == []
    assert result.captioned == len(ids), f"dead-lettered instead of captioned: {result}"
