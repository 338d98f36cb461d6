"""The stream owner's faults and bad input, on a real nats-server (services/streams/service.py).

The owners run in this process with a captioner of the test's own (a delay and a text per
window), so each test controls what the Captioner does: slow, for the drop policy; absent
mid-stream, for a lost owner. Everything else is real: JetStream, the durable consumer of
stream starts, the ordered consumers of chunks, the KV checkpoint, decoding, windows, VAD.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from services.events.binding import decode, event_data_json, new_event
from services.events.connection import connect
from services.events.embedded import EmbeddedNatsServer
from services.events.jetstream import provision_everything, publish_event
from services.events.live import STREAM_ENDED, STREAM_STARTED, StreamStarted, chunk_subject, started_subject, window_subject
from services.metrics import MemoryBackend
from services.settings import NatsSettings, Settings, StreamsSettings
from services.streams.codecs import ChunkFormat, encode_pcm16, format_headers
from services.streams.service import StreamService

RATE = 8000
CHUNK_S = 0.1


@dataclass
class Said:
    """What the test's captioner returns (the fields the owner reads from a CaptionResult)."""

    text: str
    prompt_tokens: int = 10
    output_tokens: int = 5
    engine_seconds: float = 0.01


@dataclass
class Captioner:
    delay_s: float = 0.0
    heard: list[str] = field(default_factory=list)

    async def __call__(self, samples: np.ndarray, request_id: str) -> Said:
        await asyncio.sleep(self.delay_s)
        self.heard.append(request_id)
        return Said(text=f"a hum ({request_id})")


@dataclass
class Env:
    settings: Settings
    admin: NATS

    def with_streams(self, **changes: Any) -> Settings:
        streams = self.settings.streams.model_copy(update=changes)
        return self.settings.model_copy(update={"streams": streams})


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    root = tmp_path / "nats"
    with EmbeddedNatsServer(root / "data", secrets_dir=root / "secrets", tls=False) as server:
        nats = server.client_settings(NatsSettings(ack_wait_s=2.0, max_deliver=5, retry_delay_s=0.2, retry_delay_max_s=1.0))
        streams = StreamsSettings(window_s=2.0, hop_s=1.0, idle_timeout_s=3.0, owner_ack_wait_s=2.0, max_speed=1000.0,
                                  speed_slack_s=1000.0, min_final_s=0.5)  # fmt: skip
        settings = Settings(_env_file=None, nats=nats, streams=streams)
        admin = await connect(nats, role="admin", name="test-streams-admin")
        await provision_everything(admin.jetstream(), settings)
        try:
            yield Env(settings, admin)
        finally:
            await admin.close()


async def start_owner(settings: Settings, captioner: Captioner) -> tuple[StreamService, NATS]:
    nc = await connect(settings.nats, role="streams", name="test-stream-owner")
    service = StreamService(nc.jetstream(), settings, caption=captioner)
    await service.start()
    return service, nc


async def stop_owner(service: StreamService, nc: NATS) -> None:
    await service.stop()
    await nc.close()


def hum(seconds: float, level: float = 0.2) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (level * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def chunks_of(samples: np.ndarray) -> list[tuple[int, int, bytes]]:
    """``(seq, timestamp_ms, payload)`` of 100 ms chunks."""
    n = int(CHUNK_S * RATE)
    return [(k + 1, round(i / RATE * 1000), encode_pcm16(samples[i:i + n])) for k, i in enumerate(range(0, len(samples), n))]


async def play(env: Env, stream_id: str, chunks: Iterable[tuple[int, int, bytes]], *, fmt: ChunkFormat | None = None,
               end: bool = True, pace_s: float = 0.0, context: dict[str, Any] | None = None) -> None:  # fmt: skip
    js = env.admin.jetstream()
    nats = env.settings.nats
    started = StreamStarted(stream_id=stream_id, started_at=datetime.now(UTC), context=context or {"site": "test"})
    await publish_event(js, started_subject(nats, stream_id),
                        new_event(STREAM_STARTED, "urn:test", started.model_dump(mode="json"), id=f"start-{stream_id}",
                                  extensions={"streamid": stream_id}), msg_id=f"start-{stream_id}")  # fmt: skip
    fmt = fmt or ChunkFormat(codec="pcm16", sample_rate=RATE, channels=1)
    for seq, timestamp_ms, payload in chunks:
        await js.publish(chunk_subject(nats, stream_id), payload, headers=format_headers(seq, timestamp_ms, fmt))
        if pace_s:
            await asyncio.sleep(pace_s)
    if end:
        await publish_event(js, chunk_subject(nats, stream_id),
                            new_event(STREAM_ENDED, "urn:test", {"stream_id": stream_id}, extensions={"streamid": stream_id}),
                            msg_id=f"end-{stream_id}")  # fmt: skip


async def stored(env: Env, subject: str) -> list[dict[str, Any]]:
    """The data of every event stored on ``subject`` in LISTENPOST_OUT or the DLQ, oldest first."""
    js = env.admin.jetstream()
    stream = env.settings.nats.dlq_stream if ".dlq." in subject else env.settings.nats.out_stream
    found, seq = [], 1
    while True:
        try:
            raw = await js.get_msg(stream, seq, subject=subject, next=True)
        except NotFoundError:
            return found
        found.append(event_data_json(decode(raw.data or b"", raw.headers)))
        seq = int(raw.seq or seq) + 1


async def summary_of(env: Env, stream_id: str, timeout_s: float = 30.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout_s):
        while True:
            for data in await stored(env, env.settings.nats.subject("captioned")):
                if data["context"].get("stream", {}).get("id") == stream_id:
                    return data
            await asyncio.sleep(0.2)


async def dead_letter_of(env: Env, stream_id: str, timeout_s: float = 20.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout_s):
        while True:
            for data in await stored(env, env.settings.nats.subject("dlq", "stream")):
                if stream_id in json.dumps(data.get("original", {})):
                    return data
            await asyncio.sleep(0.2)


# --- the happy path, and faults in the chunks ----------------------------------------------------


async def test_windows_in_order_with_offsets_then_one_summary(env: Env, memory: MemoryBackend) -> None:
    service, nc = await start_owner(env.settings, Captioner())
    try:
        await play(env, "s-plain", chunks_of(hum(5.0)))
        summary = await summary_of(env, "s-plain")
    finally:
        await stop_owner(service, nc)
    windows = await stored(env, window_subject(env.settings.nats, "s-plain"))
    # 5 s in 2 s windows every 1 s: [0,2) [1,3) [2,4) [3,5), then nothing left for a last one.
    assert [(w["stream"]["window"], w["stream"]["start"], w["stream"]["end"]) for w in windows] == [
        (0, 0.0, 2.0), (1, 1.0, 3.0), (2, 2.0, 4.0), (3, 3.0, 5.0),
    ]  # fmt: skip
    assert windows[0]["windows"][0]["caption"] == "a hum (s-plain/w0c0)"
    assert summary["context"]["stream"] == {"id": "s-plain", "ended_by": "ended", "dropped_windows": 0, "silent_windows": 0,
                                            "duplicates": 0, "out_of_order": 0, "missing": 0, "gap_s": 0.0, "overlap_s": 0.0}
    assert summary["audio"]["duration_s"] == pytest.approx(5.0)
    assert summary["acoustics"]["duration_s"] == pytest.approx(5.0, abs=0.05)  # the windows' new parts tile the stream
    assert [w["start"] for w in summary["windows"]] == [0.0, 1.0, 2.0, 3.0]
    assert memory.get("listenpost_stream_windows", outcome="captioned") == 4
    assert memory.get("listenpost_stream_chunks") == 50


async def test_out_of_order_duplicated_and_missing_chunks_are_handled_and_counted(env: Env, memory: MemoryBackend) -> None:
    chunks = chunks_of(hum(4.0))
    # 3 before 2, chunk 5 twice, chunk 8 never sent.
    order = [chunks[0], chunks[2], chunks[1], chunks[3], chunks[4], chunks[4], chunks[5], chunks[6], *chunks[8:]]
    service, nc = await start_owner(env.with_streams(max_held_chunks=3), Captioner())
    try:
        await play(env, "s-faulty", order)
        summary = await summary_of(env, "s-faulty")
    finally:
        await stop_owner(service, nc)
    stream = summary["context"]["stream"]
    assert (stream["duplicates"], stream["out_of_order"], stream["missing"]) == (1, 1, 1)
    assert stream["gap_s"] == pytest.approx(CHUNK_S)  # the lost chunk's 100 ms became silence, in its place
    assert summary["audio"]["duration_s"] == pytest.approx(4.0)
    windows = await stored(env, window_subject(env.settings.nats, "s-faulty"))
    assert [w["stream"]["start"] for w in windows] == [0.0, 1.0, 2.0]  # offsets stay true
    assert memory.get("listenpost_stream_chunk_faults", label="duplicates") == 1
    assert memory.get("listenpost_stream_chunk_faults", label="missing") == 1


async def test_a_sender_that_disappears_is_closed_by_the_idle_timeout(env: Env) -> None:
    service, nc = await start_owner(env.settings, Captioner())
    try:
        await play(env, "s-gone", chunks_of(hum(3.0)), end=False)
        summary = await summary_of(env, "s-gone", timeout_s=20)
    finally:
        await stop_owner(service, nc)
    assert summary["context"]["stream"]["ended_by"] == "idle"
    assert summary["audio"]["duration_s"] == pytest.approx(3.0)


async def test_a_captioner_that_is_behind_makes_the_drop_policy_act_and_the_drops_are_reported(env: Env, memory: MemoryBackend) -> None:
    slow = Captioner(delay_s=1.5)  # 1.5 s per window against a window every second of audio
    settings = env.with_streams(max_waiting_windows=1, drop_policy="oldest", max_speed=1.5, speed_slack_s=3.0)
    service, nc = await start_owner(settings, slow)
    try:
        await play(env, "s-behind", chunks_of(hum(10.0)), pace_s=CHUNK_S)  # real time
        summary = await summary_of(env, "s-behind", timeout_s=60)
    finally:
        await stop_owner(service, nc)
    dropped = summary["context"]["stream"]["dropped_windows"]
    windows = await stored(env, window_subject(env.settings.nats, "s-behind"))
    assert dropped >= 2
    assert len(windows) + dropped == 9  # every window was captioned or dropped, none queued without bound
    assert windows[-1]["stream"]["dropped_windows"] == dropped  # each event says how many went before it
    assert memory.get("listenpost_stream_windows", outcome="dropped") == dropped
    indices = [w["stream"]["window"] for w in windows]
    assert indices == sorted(indices) and len(set(indices)) == len(indices)


async def lose_the_owner_once_stored(
    env: Env, settings: Settings, stream_id: str, *, seconds: float, windows: int
) -> tuple[Captioner, asyncio.Task[None]]:
    """A first owner (a slow Captioner) takes a stream played at real-time pace and is lost once
    ``windows`` of its windows are stored; the sender goes on. Returns that Captioner and the sender."""
    first = Captioner(delay_s=0.3)
    service, nc = await start_owner(settings, first)
    sender = asyncio.create_task(play(env, stream_id, chunks_of(hum(seconds)), pace_s=CHUNK_S))
    try:
        async with asyncio.timeout(30):
            while len(await stored(env, window_subject(env.settings.nats, stream_id))) < windows:
                await asyncio.sleep(0.1)
    finally:
        await stop_owner(service, nc)  # the replica is gone: its stream is not acked
    return first, sender


async def test_a_stream_whose_owner_is_lost_resumes_without_losing_or_repeating_a_window(env: Env) -> None:
    first, sender = await lose_the_owner_once_stored(env, env.settings, "s-moved", seconds=8.0, windows=2)
    second = Captioner()
    service, nc = await start_owner(env.settings, second)
    try:
        await sender
        summary = await summary_of(env, "s-moved", timeout_s=40)
    finally:
        await stop_owner(service, nc)
    windows = await stored(env, window_subject(env.settings.nats, "s-moved"))
    counts = Counter(w["stream"]["window"] for w in windows)
    assert sorted(counts) == list(range(7)) and set(counts.values()) == {1}, counts  # [0,2) ... [6,8), each once
    assert [w["stream"]["start"] for w in windows] == [float(i) for i in range(7)]
    # The second owner captioned only what the first had not stored.
    captioned_first = {int(r.split("/w")[1].split("c")[0]) for r in first.heard}
    captioned_second = {int(r.split("/w")[1].split("c")[0]) for r in second.heard}
    assert captioned_second and not captioned_second & {w for w in captioned_first if counts[w] and w < min(captioned_second)}
    assert len(summary["windows"]) == 7


async def test_a_new_owner_catches_up_on_a_stream_stored_to_its_end_without_dropping_a_window(env: Env) -> None:
    """The owner is lost and the sender finishes before a new owner takes the stream: every window,
    the last ones cut at the end included, is audio stored before the takeover and waits for the
    Captioner rather than meeting the drop policy (the replica-kill e2e test once lost window 2
    so: the end's windows were offered as live ones)."""
    settings = env.with_streams(max_waiting_windows=1, drop_policy="oldest")
    _, sender = await lose_the_owner_once_stored(env, settings, "s-stored", seconds=10.5, windows=1)
    await sender  # the whole stream, its end included, is stored before anyone owns it again
    second = Captioner(delay_s=0.3)
    service, nc = await start_owner(settings, second)
    try:
        summary = await summary_of(env, "s-stored", timeout_s=60)
    finally:
        await stop_owner(service, nc)
    windows = await stored(env, window_subject(env.settings.nats, "s-stored"))
    counts = Counter(w["stream"]["window"] for w in windows)
    assert sorted(counts) == list(range(10)) and set(counts.values()) == {1}, counts  # [0,2) ... [8,10), [9,10.5)
    assert summary["context"]["stream"]["dropped_windows"] == 0


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"Listenpost-Codec": "mp3"}, "unknown codec 'mp3' (expected one of: pcm16, mulaw, alaw, opus)"),
        ({"Listenpost-Rate": "96000"}, "sample rate 96000 Hz is out of range for pcm16 (8000-48000 Hz)"),
        ({"Listenpost-Codec": "mulaw", "Listenpost-Rate": "16000"}, "mulaw"),
    ],
)
async def test_a_chunk_in_a_format_the_stream_cannot_carry_ends_it_with_a_dead_letter(
    env: Env, headers: dict[str, str], reason: str
) -> None:
    service, nc = await start_owner(env.settings, Captioner())
    stream_id = f"s-bad-{abs(hash(reason)) % 10_000}"
    try:
        await play(env, stream_id, [], end=False)
        base = format_headers(1, 0, ChunkFormat(codec="pcm16", sample_rate=RATE, channels=1))
        await env.admin.jetstream().publish(chunk_subject(env.settings.nats, stream_id), encode_pcm16(hum(0.1)),
                                            headers={**base, **headers})  # fmt: skip
        letter = await dead_letter_of(env, stream_id)
        assert service.failure is None  # the replica goes on
    finally:
        await stop_owner(service, nc)
    assert letter["stage"] == "stream"
    assert reason in letter["reason"], letter["reason"]


async def test_an_oversized_chunk_ends_the_stream_with_a_dead_letter(env: Env) -> None:
    service, nc = await start_owner(env.with_streams(max_chunk_bytes=1000), Captioner())
    try:
        await play(env, "s-huge", [(1, 0, encode_pcm16(hum(1.0)))], end=False)  # 16,000 bytes
        letter = await dead_letter_of(env, "s-huge")
    finally:
        await stop_owner(service, nc)
    assert letter["reason"] == "stream s-huge: chunk of 16,000 bytes is larger than the 1,000 bytes allowed"


async def test_a_stream_faster_than_real_time_is_refused(env: Env) -> None:
    service, nc = await start_owner(env.with_streams(max_speed=1.5, speed_slack_s=2.0), Captioner())
    try:
        await play(env, "s-fast", chunks_of(hum(30.0)), end=False)  # 30 s of audio in well under a second
        letter = await dead_letter_of(env, "s-fast")
    finally:
        await stop_owner(service, nc)
    assert "real time" in letter["reason"], letter["reason"]


async def test_a_started_event_that_is_not_valid_is_dead_lettered(env: Env) -> None:
    service, nc = await start_owner(env.settings, Captioner())
    try:
        await publish_event(env.admin.jetstream(), started_subject(env.settings.nats, "s-wrong"),
                            new_event(STREAM_STARTED, "urn:test", {"stream_id": "another-one"}, id="start-wrong"),
                            msg_id="start-wrong")  # fmt: skip
        letter = await dead_letter_of(env, "start-wrong")
    finally:
        await stop_owner(service, nc)
    assert letter["reason"] == "stream.started for 'another-one' published on the subject of 's-wrong'"


# --- chunks nobody will read ---------------------------------------------------------------------


async def test_chunks_for_a_stream_never_started_or_already_ended_are_reported_once(env: Env, memory: MemoryBackend) -> None:
    from services.streams.strays import report_strays

    settings = env.with_streams(idle_timeout_s=0.5)
    service, nc = await start_owner(settings, Captioner())
    js = env.admin.jetstream()
    fmt = ChunkFormat(codec="pcm16", sample_rate=RATE, channels=1)
    try:
        await play(env, "s-done", chunks_of(hum(2.0)))
        await summary_of(env, "s-done")
        # One chunk after the end of s-done; three for s-ghost, which no one started.
        await js.publish(chunk_subject(env.settings.nats, "s-done"), encode_pcm16(hum(0.1)), headers=format_headers(21, 2000, fmt))
        for seq in (1, 2, 3):
            await js.publish(chunk_subject(env.settings.nats, "s-ghost"), encode_pcm16(hum(0.1)),
                             headers=format_headers(seq, (seq - 1) * 100, fmt))  # fmt: skip
        await asyncio.sleep(0.6)  # past the idle timeout: a late start would have come by now
        state = await nc.jetstream().key_value(settings.streams.state_bucket)
        reported = await report_strays(nc.jetstream(), settings, state)
        again = await report_strays(nc.jetstream(), settings, state)  # nothing new since
    finally:
        await stop_owner(service, nc)
    assert sorted((s.stream_id, s.chunks, s.why) for s in reported) == [
        ("s-done", 1, "after the stream ended"), ("s-ghost", 3, "never started"),
    ]  # fmt: skip
    assert again == []
    letters = {d["original"]["subject"]: d for d in await stored(env, env.settings.nats.subject("dlq", "stream"))}
    ghost = letters["listenpost.stream.s-ghost"]
    assert ghost["stage"] == "stream" and ghost["error"] == "StrayChunks"
    assert ghost["reason"] == "3 chunk(s) on listenpost.stream.s-ghost for stream 's-ghost', which was never started: nobody reads them"
    assert "had already ended" in letters["listenpost.stream.s-done"]["reason"]
    assert memory.get("listenpost_streams_failed", reason="stray-chunks") == 2


async def test_erasing_a_call_removes_its_live_streams_chunks_and_windows(env: Env) -> None:
    from services.events.audit import Actor
    from services.events.erasure import erase_call

    service, nc = await start_owner(env.settings, Captioner())
    try:
        await play(env, "s-private", chunks_of(hum(3.0)), context={"callid": "c-private"})
        await summary_of(env, "s-private")
    finally:
        await stop_owner(service, nc)
    js = env.admin.jetstream()
    live = env.settings.streams.live_stream
    assert (await js.stream_info(live, subjects_filter=chunk_subject(env.settings.nats, "s-private"))).state.subjects
    operator = await connect(env.settings.nats, role="operator", name="test-erase-live")
    try:
        report = await erase_call(operator.jetstream(), env.settings, "c-private", actor=Actor.cli())
    finally:
        await operator.close()
    assert report.ok, report.failed
    chunks = [r for r in report.removed if r.item == "listenpost.stream.s-private (live audio)"]
    assert chunks and chunks[0].messages == 31  # 30 chunks and the end
    assert not (await js.stream_info(live, subjects_filter="listenpost.stream.s-private.>")).state.subjects
    assert not (await js.stream_info(live, subjects_filter=chunk_subject(env.settings.nats, "s-private"))).state.subjects
    assert await stored(env, window_subject(env.settings.nats, "s-private")) == []
