"""Live streams end to end on the session's service: a file played at real-time pace over NATS
and over the WebSocket door (`listenpost stream`'s client, `--ws`), windows captioned while it
plays, a rule firing on one window, and one summary at the end; the door's refusals
(docs/streams.md)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import HTTP_API_KEY

from services.live_client import Playback, stream_file, stream_file_ws
from services.settings import Settings

pytestmark = pytest.mark.e2e

RATE = 8000
BANG_AT_S = 7.0


def live_file(path: Path, seconds: float = 11.0) -> Path:
    """A hum with a full-scale bang at BANG_AT_S: the bang is what the acoustic rule hears."""
    t = np.arange(int(seconds * RATE)) / RATE
    samples = 0.2 * np.sin(2 * np.pi * 220 * t)
    bang = slice(int(BANG_AT_S * RATE), int((BANG_AT_S + 0.2) * RATE))
    samples[bang] = np.sign(np.sin(2 * np.pi * 90 * t[bang]))  # square wave at full scale
    soundfile.write(str(path), samples.astype(np.float32), RATE, subtype="PCM_16")
    return path


async def test_a_stream_played_live_yields_windows_in_order_an_alert_and_a_summary(service: Settings, tmp_path: Path) -> None:
    result = await asyncio.wait_for(
        stream_file(live_file(tmp_path / "live.wav"), nats=service.nats, play=Playback(stream_id="e2e-live-1", wait_s=90)),
        timeout=150,
    )  # fmt: skip
    failed = [r for r in result.reports if r.kind == "failed"]
    assert not failed, failed
    windows = result.windows
    # 11 s cut into 4 s windows every 2 s: [0,4) [2,6) [4,8) [6,10), then the last [8,11).
    assert [(w.window, w.start, w.end) for w in windows] == [(0, 0.0, 4.0), (1, 2.0, 6.0), (2, 4.0, 8.0), (3, 6.0, 10.0), (4, 8.0, 11.0)]
    assert all(w.data["stream"]["id"] == "e2e-live-1" for w in windows)
    assert windows[-1].data["stream"]["final"] is True
    # Every window arrived before the stream ended (the last one just after): live, not post-call.
    assert [w.at_s < 11.0 + 30 for w in windows] == [True] * 5
    assert windows[0].at_s < windows[-1].at_s
    # The bang is in windows 2 and 3; the rule on live windows fired while the stream played.
    alerts = [r for r in result.reports if r.kind == "decision" and r.data.get("rule_id") == "live-sudden-loud-sound"]
    assert alerts, [r.model_dump(exclude={"data"}) for r in result.reports]
    assert {a.data["labels"]["stream"] for a in alerts} == {"e2e-live-1"}
    peaks = {w.window: w.data["acoustics"]["peak_dbfs"] for w in windows}
    assert peaks[2] >= -1.0 and peaks[3] >= -1.0 and peaks[0] < -10.0
    summaries = [r for r in result.reports if r.kind == "summary"]
    assert len(summaries) == 1
    summary = summaries[0].data
    assert summary["context"]["stream"]["id"] == "e2e-live-1" and summary["context"]["stream"]["ended_by"] == "ended"
    assert summary["audio"]["duration_s"] == pytest.approx(11.0, abs=0.05)
    assert len(summary["windows"]) == 5
    assert summary["acoustics"]["duration_s"] == pytest.approx(11.0, abs=0.1)


# --- the WebSocket door ---------------------------------------------------------------------------


def ws_url(service: Settings) -> str:
    return f"ws://127.0.0.1:{service.http.port}"


async def test_a_stream_played_over_the_websocket_door_gets_its_windows_and_summary_back(service: Settings, tmp_path: Path) -> None:
    result = await asyncio.wait_for(
        stream_file_ws(live_file(tmp_path / "live.wav", seconds=8.0), url=ws_url(service), api_key=HTTP_API_KEY,
                       play=Playback(stream_id="e2e-ws-1", source="urn:test:ws", wait_s=90)),
        timeout=150,
    )  # fmt: skip
    assert not [r for r in result.reports if r.kind == "failed"], result.reports
    # 8 s: [0,4) [2,6) [4,8), none left over; each came back on the socket as it was captioned.
    assert [(w.window, w.start, w.end) for w in result.windows] == [(0, 0.0, 4.0), (1, 2.0, 6.0), (2, 4.0, 8.0)]
    assert any(r.kind == "decision" and r.data.get("rule_id") == "live-sudden-loud-sound" for r in result.reports)
    (summary,) = [r for r in result.reports if r.kind == "summary"]
    assert summary.data["context"]["stream"]["id"] == "e2e-ws-1"


async def test_the_websocket_door_refuses_without_a_key_or_out_of_turn(service: Settings, tmp_path: Path) -> None:
    import websockets

    with pytest.raises(websockets.InvalidStatus) as refused:  # closed before the handshake completes: HTTP 403
        async with websockets.connect(f"{ws_url(service)}/streams/e2e-ws-nokey"):
            pass
    assert refused.value.response.status_code == 403
    headers = {"Authorization": f"Bearer {HTTP_API_KEY}"}
    async with websockets.connect(f"{ws_url(service)}/streams/e2e-ws-turn", additional_headers=headers) as socket:
        await socket.send(b"\x00\x00\x00\x01\x00\x00\x00\x00audio before the start")
        with pytest.raises(websockets.ConnectionClosed):
            await socket.recv()
    assert socket.close_code == 1008 and socket.close_reason == "send the start message (JSON text) before any audio"
    async with websockets.connect(f"{ws_url(service)}/streams/e2e-ws-big", additional_headers=headers) as socket:
        await socket.send('{"codec": "pcm16", "rate": 16000, "channels": 1, "source": "urn:test:ws"}')
        await socket.send(b"\x00\x00\x00\x01\x00\x00\x00\x00" + bytes(service.streams.max_chunk_bytes + 1))
        with pytest.raises(websockets.ConnectionClosed):
            await socket.recv()
    assert socket.close_code == 1009


async def test_an_unknown_codec_over_the_websocket_is_closed_with_the_owners_reason(service: Settings) -> None:
    import websockets

    headers = {"Authorization": f"Bearer {HTTP_API_KEY}"}
    async with websockets.connect(f"{ws_url(service)}/streams/e2e-ws-mp3", additional_headers=headers) as socket:
        await socket.send('{"codec": "mp3", "rate": 16000, "channels": 1, "source": "urn:test:ws"}')
        await socket.send(b"\x00\x00\x00\x01\x00\x00\x00\x00" + bytes(640))
        error = json.loads(await asyncio.wait_for(socket.recv(), 30))
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(socket.recv(), 10)
    assert error["type"] == "error" and "unknown codec 'mp3'" in error["reason"]
    assert socket.close_code == 1008 and "unknown codec 'mp3'" in socket.close_reason


async def test_the_stream_owning_replica_killed_mid_stream_resumes_without_losing_or_repeating_a_window(
    service: Settings, tmp_path: Path
) -> None:
    """The LiveStreams replica is killed while it owns a stream being played live; Serve starts a
    new one, which takes the stream after owner_ack_wait_s and resumes from its checkpoint."""
    import ray
    from ray.util.state import list_actors

    from services.app import APP_NAME

    playing = asyncio.create_task(
        stream_file(live_file(tmp_path / "long.wav", seconds=16.0), nats=service.nats,
                    play=Playback(stream_id="e2e-live-killed", wait_s=120))
    )  # fmt: skip
    async with asyncio.timeout(60):  # until the owner has captioned a window or two
        while True:
            await asyncio.sleep(0.5)
            if await _windows_stored(service, "e2e-live-killed") >= 1:
                break
    (owner,) = [
        a for a in list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")])
        if a.class_name == f"ServeReplica:{APP_NAME}:LiveStreams"
    ]  # fmt: skip
    ray.kill(ray.get_actor(owner.name, namespace="serve"), no_restart=True)
    result = await asyncio.wait_for(playing, timeout=200)
    assert not [r for r in result.reports if r.kind == "failed"], result.reports
    # 16 s in 4 s windows every 2 s: seven windows [0,4) ... [12,16), each stored exactly once.
    stored = await _stored_window_indices(service, "e2e-live-killed")
    assert sorted(stored) == list(range(7)), stored
    (summary,) = [r for r in result.reports if r.kind == "summary"]
    assert len(summary.data["windows"]) == 7
    assert summary.data["audio"]["duration_s"] == pytest.approx(16.0, abs=0.05)


async def _stored_window_indices(service: Settings, stream_id: str) -> list[int]:
    from nats.js.errors import NotFoundError

    from services.events.binding import decode, event_data_json
    from services.events.connection import connect
    from services.events.live import window_subject

    nc = await connect(service.nats, role="operator", name="test-streams-windows")
    try:
        js, found, seq = nc.jetstream(), [], 1
        while True:
            try:
                raw = await js.get_msg(service.nats.out_stream, seq, subject=window_subject(service.nats, stream_id), next=True)
            except NotFoundError:
                return found
            found.append(int(event_data_json(decode(raw.data or b"", raw.headers))["stream"]["window"]))
            seq = int(raw.seq or seq) + 1
    finally:
        await nc.close()


async def _windows_stored(service: Settings, stream_id: str) -> int:
    return len(await _stored_window_indices(service, stream_id))
