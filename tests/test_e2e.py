"""End to end, on real parts: nats-server with JetStream, Ray Serve, vLLM (CPU build) with the
tiny Qwen3-Omni checkpoint, and the shipped router_rules/.

The tiny checkpoint has random weights: its captions are noise; what is tested
is that every window is really captioned by the engine and that the events flow.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nats.aio.client import Client as NATS

from services.events.binding import BindingError, decode, encode_binary, event_data_json, new_event
from services.events.connection import connect
from services.events.models import AUDIO_CAPTIONED, AUDIO_FAILED, AUDIO_SUBMITTED
from services.settings import Settings
from tests.conftest import tone, wav_bytes

pytestmark = pytest.mark.e2e
RATE = 16_000


class Outputs:
    """Every CloudEvent published under the subject prefix, indexed by the input it concerns."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self._changed = asyncio.Event()

    async def on_message(self, msg: Any) -> None:
        try:
            event = decode(msg.data, msg.headers)
        except BindingError:
            return
        self.events.append((msg.subject, event))
        self._changed.set()

    def about(self, input_id: str, type_: str) -> list[Any]:
        return [e for _, e in self.events if e.get_type() == type_ and e.get_attributes().get(_link(type_)) == input_id]

    async def wait_for(self, input_id: str, type_: str, timeout: float = 240.0) -> Any:
        async with asyncio.timeout(timeout):
            while not (found := self.about(input_id, type_)):
                self._changed.clear()
                await self._changed.wait()
        return found[0]


def _link(type_: str) -> str:
    return "originalid" if type_ == AUDIO_FAILED else "inputid"


@pytest.fixture(scope="module")
async def nats_client(service: Settings) -> AsyncIterator[tuple[NATS, Outputs]]:
    nc = await connect(service.nats, role="admin", name="e2e-test")
    outputs = Outputs()
    await nc.subscribe(f"{service.nats.subject_prefix}.>", cb=outputs.on_message)
    yield nc, outputs
    await nc.drain()


async def publish_raw(nc: NATS, settings: Settings, body: bytes, headers: dict[str, str] | None) -> None:
    ack = await nc.jetstream().publish(settings.nats.subject("in", "test"), body, headers=headers)
    assert ack.stream == settings.nats.in_stream


async def submit(nc: NATS, settings: Settings, data: dict[str, Any], **extensions: str) -> str:
    event = new_event(AUDIO_SUBMITTED, "urn:test:e2e", data, extensions=extensions or None)
    body, headers = encode_binary(event)
    await publish_raw(nc, settings, body, headers)
    return event.get_id()


def demo_call(path: Path) -> float:
    """12 s: 3 s of tone, 7 s of silence, 2 s of tone: a call with dead air."""
    samples = np.concatenate([tone(3, RATE), np.zeros(7 * RATE, np.float32), tone(2, RATE, 440)])
    path.write_bytes(wav_bytes(samples, RATE))
    return samples.shape[0] / RATE


async def test_event_in_caption_and_decision_out(
    service: Settings, nats_client: tuple[NATS, Outputs], audio_dir: Path
) -> None:
    nc, outputs = nats_client
    duration = demo_call(audio_dir / "call-1.wav")
    input_id = await submit(
        nc,
        service,
        {"audio": {"uri": (audio_dir / "call-1.wav").as_uri()}, "context": {"callid": "call-1", "queue": "billing"}},
        callid="call1",
    )

    captioned = await outputs.wait_for(input_id, AUDIO_CAPTIONED)
    data = event_data_json(captioned)
    windows = sorted(data["windows"], key=lambda w: w["start"])
    assert windows[0]["start"] == 0.0 and windows[-1]["end"] == pytest.approx(duration)
    assert all(a["end"] == pytest.approx(b["start"]) for a, b in itertools.pairwise(windows))
    assert all(w["end"] - w["start"] <= 30.0 for w in windows)
    # Noise from random weights, but produced by the engine: tokens were generated for each window.
    assert all(w["caption"].strip() and w["output_tokens"] > 0 and w["prompt_tokens"] > 0 for w in windows)
    assert data["engine"] == "vllm" and data["model"] == service.captioner.model
    assert data["acoustics"]["longest_silence_s"] == pytest.approx(7.0, abs=0.1)
    assert captioned.get_attributes()["callid"] == "call1"

    # The shipped dead-air rule reacts to the captioned event.
    decision = await outputs.wait_for(captioned.get_id(), "com.listenpost.route.decided")
    decided = event_data_json(decision)
    assert decided["queue"] == "quality" and decided["rule_id"] == "dead-air"

    # The Ingress acks its input once the output is stored, so the ack may trail the output by a moment.
    async with asyncio.timeout(15):
        while True:
            info = await nc.jetstream().consumer_info(service.nats.in_stream, service.nats.ingest_durable)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                break
            await asyncio.sleep(0.2)
    assert info.num_pending == 0 and info.num_ack_pending == 0


@pytest.mark.parametrize(
    ("body", "headers", "stage", "reason"),
    [
        (b"hello, not an event", {}, "decode-event", "not a CloudEvent"),
        (None, "no-audio", "validate", "audio\n  Field required"),
        (None, "bad-audio", "decode-audio", "audio could not be decoded"),
    ],
    ids=["not-a-cloudevent", "no-audio", "undecodable-audio"],
)
async def test_poison_is_dead_lettered_and_next_event_still_processed(
    service: Settings,
    nats_client: tuple[NATS, Outputs],
    audio_dir: Path,
    body: bytes | None,
    headers: Any,
    stage: str,
    reason: str,
) -> None:
    nc, outputs = nats_client
    marker = str(uuid.uuid4())
    if headers == "no-audio":
        event = new_event(AUDIO_SUBMITTED, "urn:test:e2e", {"context": {"callid": "x"}}, id=marker)
        body, headers = encode_binary(event)
    elif headers == "bad-audio":
        junk = base64.b64encode(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10).decode()
        event = new_event(AUDIO_SUBMITTED, "urn:test:e2e", {"audio": {"data_base64": junk}}, id=marker)
        body, headers = encode_binary(event)
    else:
        headers = {"x-marker": marker}
    assert body is not None
    await publish_raw(nc, service, body, headers)

    async with asyncio.timeout(60):
        while True:
            failed = [
                e for s, e in outputs.events
                if e.get_type() == AUDIO_FAILED and marker in str(event_data_json(e)["original"]["headers"])
            ]  # fmt: skip
            if failed:
                break
            await asyncio.sleep(0.2)
    data = event_data_json(failed[0])
    assert data["stage"] == stage
    assert reason in data["reason"]
    assert base64.b64decode(data["original"]["body_base64"]) == body

    # The poison did not block the consumer: a good event right after it is captioned.
    path = audio_dir / f"after-{marker}.wav"
    path.write_bytes(wav_bytes(tone(1.5, 8000), 8000))
    input_id = await submit(nc, service, {"audio": {"uri": path.as_uri()}})
    captioned = await outputs.wait_for(input_id, AUDIO_CAPTIONED)
    assert event_data_json(captioned)["windows"]


async def test_http_ingress_through_serve_reaches_the_pipeline(
    service: Settings, nats_client: tuple[NATS, Outputs], audio_dir: Path
) -> None:
    """POST /events on the Serve HTTP proxy: stored in JetStream before the 202, then captioned."""
    import httpx

    from tests.conftest import HTTP_API_KEY

    _, outputs = nats_client
    path = audio_dir / "http-call.wav"
    path.write_bytes(wav_bytes(tone(2.0, 16000), 16000))
    event_id = f"http-{uuid.uuid4()}"
    headers = {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": "urn:test:http",
        "ce-type": AUDIO_SUBMITTED,
        "content-type": "application/json",
    }
    body = {"audio": {"uri": path.as_uri()}, "context": {"callid": "http-1"}}
    url = f"http://127.0.0.1:{service.http.port}/events"
    async with httpx.AsyncClient(timeout=30) as client:
        refused = await client.post(url, json=body, headers=headers)
        accepted = await client.post(url, json=body, headers={**headers, "authorization": f"Bearer {HTTP_API_KEY}"})
    assert refused.status_code == 401 and refused.headers["content-type"].startswith("application/problem+json")
    assert accepted.status_code == 202 and accepted.json()["accepted"][0]["id"] == event_id
    captioned = await outputs.wait_for(event_id, AUDIO_CAPTIONED)
    assert event_data_json(captioned)["context"]["callid"] == "http-1"


async def test_telephony_event_is_adapted_and_captioned(
    service: Settings, nats_client: tuple[NATS, Outputs], audio_dir: Path
) -> None:
    """A PBX's own event type, mapped by adapters/telephony.yaml (no code), flows end to end."""
    nc, outputs = nats_client
    path = audio_dir / "pbx-call.wav"
    stereo = np.stack([tone(2.0, 8000, 300), tone(2.0, 8000, 500)], axis=1)
    path.write_bytes(wav_bytes(stereo, 8000, subtype="ULAW"))
    event = new_event(
        "com.acme.telephony.call.recorded",
        "urn:acme:pbx",
        {"call_id": "pbx-7", "queue": "billing", "recording": {"url": path.as_uri()},
         "channels": {"agent": 0, "customer": 1}},
    )  # fmt: skip
    body, headers = encode_binary(event)
    await publish_raw(nc, service, body, headers)
    captioned = await outputs.wait_for(event.get_id(), AUDIO_CAPTIONED)
    data = event_data_json(captioned)
    assert data["context"]["callid"] == "pbx-7"
    assert {w["role"] for w in data["windows"]} == {"agent", "customer"}
