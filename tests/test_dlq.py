"""Dead-letter inspection and replay against a real nats-server with JetStream."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext
from nats.js.errors import ObjectDeletedError, ObjectNotFoundError
from typer.testing import CliRunner

from services.events.binding import encode_binary, encode_structured, new_event
from services.events.cli import dlq_app
from services.events.connection import connect
from services.events.consumer import Poison
from services.events.deadletter import original_record, publish_dead_letter
from services.events.dlq import DeadLetterError, DeadLetterNotFound, list_dead_letters, page_dead_letters, replay
from services.events.embedded import EmbeddedNatsServer
from services.events.jetstream import derive_msg_id, provision, publish_event
from services.events.models import AUDIO_CAPTIONED, AUDIO_FAILED, AUDIO_SUBMITTED, AudioFailed
from services.settings import NatsSettings, Settings

DATA = {"audio": {"uri": "file:///calls/1.wav"}}


class Env:
    def __init__(self, js: JetStreamContext, settings: Settings, url: str) -> None:
        self.js = js
        self.settings = settings
        self.url = url
        self.cfg = settings.nats

    async def fail(
        self, event_id: str, stage: str = "fetch", *, mode: str = "binary", subject_tokens: tuple[str, ...] = ("in", "test")
    ) -> dict[str, Any]:
        """Store an original as a producer would, then dead-letter it as the consumer does.

        Returns the original as it was stored (subject, headers, body).
        """
        event_type = AUDIO_CAPTIONED if subject_tokens == ("captioned",) else AUDIO_SUBMITTED
        event = new_event(event_type, "urn:test:dlq", DATA, id=event_id)
        body, headers = encode_binary(event) if mode == "binary" else encode_structured(event)
        headers["Nats-Msg-Id"] = derive_msg_id("producer", event_id)
        subject = self.cfg.subject(*subject_tokens)
        ack = await self.js.publish(subject, body, headers=headers)
        stored = await self.js.get_msg(ack.stream, ack.seq)
        await self.js.delete_msg(ack.stream, ack.seq)  # consumed, then termed: only the dead letter is left
        original = {"subject": stored.subject, "headers": stored.headers, "body_base64": base64.b64encode(stored.data).decode()}
        failed = AudioFailed(stage=stage, reason=f"{event_id} broke", error="FetchError", deliveries=3, original=original)
        extensions = {"originalid": event_id} if mode == "binary" else None  # (dlq list reads a structured body too)
        letter = new_event(AUDIO_FAILED, "urn:listenpost", failed.model_dump(mode="json"), extensions=extensions)
        await publish_event(self.js, self.cfg.subject("dlq", stage), letter, msg_id=derive_msg_id("dlq", ack.stream, str(ack.seq)))
        return {"subject": stored.subject, "headers": dict(stored.headers or {}), "body": stored.data, "stream": ack.stream}

    async def messages(self, stream: str) -> list[Any]:
        info = await self.js.stream_info(stream)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                out.append(await self.js.get_msg(stream, seq))
            except Exception:  # noqa: BLE001 - deleted sequence
                continue
        return out


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    with EmbeddedNatsServer(tmp_path / "nats") as server:
        nc = await connect(server.client_settings(), role="admin", name="test-dlq")
        settings = Settings(nats=NatsSettings(url=server.url))
        await provision(nc.jetstream(), settings.nats)
        try:
            yield Env(nc.jetstream(), settings, server.url)
        finally:
            await nc.close()


def assert_same_message(replayed: Any, original: dict[str, Any], seq: int, dlq_stream: str) -> None:
    """Same subject, body and headers; only the publish control Nats-Msg-Id is new."""
    assert replayed.subject == original["subject"]
    assert replayed.data == original["body"]
    headers = dict(replayed.headers)
    assert headers.pop("Nats-Msg-Id") == derive_msg_id("replay", dlq_stream, str(seq))
    expected = {k: v for k, v in original["headers"].items() if k != "Nats-Msg-Id"}
    assert headers == expected


async def test_list_shows_stage_reason_and_original_id(env: Env) -> None:
    await env.fail("ev-a", "fetch")
    await env.fail("ev-b", "caption", mode="structured")
    letters = await list_dead_letters(env.js, env.settings)
    assert [(d.seq, d.stage, d.reason, d.original_id, d.replayable) for d in letters] == [
        (1, "fetch", "ev-a broke", "ev-a", True),
        (2, "caption", "ev-b broke", "ev-b", True),  # read from the structured body: no ce-id header
    ]
    assert letters[0].subject == "listenpost.dlq.fetch"
    assert letters[0].original_subject == "listenpost.in.test"
    assert letters[0].deliveries == 3 and letters[0].error == "FetchError"
    assert letters[0].time is not None
    assert "original" not in letters[0].model_dump()  # bodies stay out of listings
    assert [d.original_id for d in await list_dead_letters(env.js, env.settings, stage="caption")] == ["ev-b"]


async def test_replay_one_by_id_republishes_the_original_byte_identical(env: Env) -> None:
    original = await env.fail("ev-a")
    await env.fail("ev-b")
    report = await replay(env.js, env.settings, original_id="ev-a")
    assert report.ok
    [item] = report.replayed
    assert (item.seq, item.original_id, item.stream, item.duplicate) == (1, "ev-a", env.cfg.in_stream, False)

    # The original's own Nats-Msg-Id is still in the dedup window: the replay must not be dropped.
    [republished] = await env.messages(env.cfg.in_stream)
    assert_same_message(republished, original, 1, env.cfg.dlq_stream)
    assert [d.original_id for d in await list_dead_letters(env.js, env.settings)] == ["ev-b"]


async def test_replay_by_seq_and_all(env: Env) -> None:
    originals = [await env.fail(f"ev-{i}", stage) for i, stage in enumerate(["fetch", "caption", "fetch"])]
    report = await replay(env.js, env.settings, seq=2)
    assert [r.original_id for r in report.replayed] == ["ev-1"]

    report = await replay(env.js, env.settings, all=True, stage="fetch")
    assert [r.seq for r in report.replayed] == [1, 3]
    assert await list_dead_letters(env.js, env.settings) == []

    by_id = {m.headers["ce-id"]: m for m in await env.messages(env.cfg.in_stream)}
    for seq, original in zip((1, 2, 3), originals, strict=True):
        event_id = f"ev-{seq - 1}"
        assert_same_message(by_id[event_id], original, seq, env.cfg.dlq_stream)

    assert (await replay(env.js, env.settings, all=True)).replayed == []


async def test_a_rules_dead_letter_goes_back_to_the_output_stream(env: Env) -> None:
    original = await env.fail("cap-1", "rules", subject_tokens=("captioned",))
    report = await replay(env.js, env.settings, all=True)
    assert [(r.stream, r.subject) for r in report.replayed] == [(env.cfg.out_stream, "listenpost.captioned")]
    [republished] = await env.messages(env.cfg.out_stream)
    assert_same_message(republished, original, 1, env.cfg.dlq_stream)


async def test_replaying_again_after_an_interrupted_replay_stores_one_copy(env: Env) -> None:
    await env.fail("ev-a")
    letter = (await list_dead_letters(env.js, env.settings))[0]
    # Simulate a crash between the publish and the delete: publish the replay by hand.
    assert letter.original is not None
    headers = {k: v for k, v in letter.original.headers.items() if k != "Nats-Msg-Id"}
    headers["Nats-Msg-Id"] = derive_msg_id("replay", env.cfg.dlq_stream, "1")
    await env.js.publish(letter.original.subject, letter.original.body(), headers=headers)

    report = await replay(env.js, env.settings, seq=1)
    assert report.replayed[0].duplicate is True
    assert len(await env.messages(env.cfg.in_stream)) == 1
    assert await list_dead_letters(env.js, env.settings) == []


async def test_unreadable_dead_letters_are_listed_and_kept(env: Env) -> None:
    await env.js.publish(env.cfg.subject("dlq", "fetch"), b"garbage", headers={"x": "1"})
    broken = AudioFailed(stage="fetch", reason="r", error="E", original={"subject": "listenpost.in.x"})
    await publish_event(env.js, env.cfg.subject("dlq", "fetch"), new_event(AUDIO_FAILED, "urn:t", broken.model_dump()), msg_id="m2")
    letters = await list_dead_letters(env.js, env.settings)
    assert [(d.seq, d.stage, d.replayable) for d in letters] == [(1, None, False), (2, "fetch", False)]
    assert letters[0].reason.startswith("unreadable dead letter: not a CloudEvent")
    assert letters[1].original_subject == "listenpost.in.x"

    report = await replay(env.js, env.settings, all=True)
    assert [(f.seq, f.error) for f in report.failed] == [
        (1, "no readable original message to republish (unreadable dead letter: not a CloudEvent: no "
            "'ce-specversion' header (binary mode) and no 'application/cloudevents' content type (structured mode))"),
        (2, "no readable original message to republish (r)"),
    ]
    assert not report.ok and len(await list_dead_letters(env.js, env.settings)) == 2


async def test_a_forged_dead_letter_is_not_replayed_onto_another_subject(env: Env) -> None:
    # Anyone who may publish a dead letter must not get a replay to publish a decision, a silence
    # or anything else in listenpost's name: only inputs and what the rules consume are replayed.
    before = (await env.js.stream_info(env.cfg.out_stream)).state.messages
    for seq, subject in enumerate((env.cfg.subject("alerts", "critical"), "elsewhere.in.x", env.cfg.subject("in")), 1):
        forged = new_event("com.listenpost.alert.raised", "urn:attacker", {"summary": "wire the money"})
        body, headers = encode_binary(forged)
        original = {"subject": subject, "headers": headers, "body_base64": base64.b64encode(body).decode()}
        failed = AudioFailed(stage="rules", reason="r", error="E", original=original)
        await publish_event(
            env.js, env.cfg.subject("dlq", "rules"), new_event(AUDIO_FAILED, "urn:t", failed.model_dump()), msg_id=f"m{seq}"
        )
        report = await replay(env.js, env.settings, seq=seq)
        assert [f.error for f in report.failed] == [
            f"not replayed: {subject!r} is not an input of listenpost ({env.cfg.subject('in', '>')}, what the rules "
            f"consume, or {env.cfg.subject('rules', 'evaluated')}); dead letter kept"
        ]
    assert (await env.js.stream_info(env.cfg.out_stream)).state.messages == before  # nothing was published
    assert len(await list_dead_letters(env.js, env.settings)) == 3  # and every letter is kept


async def test_unknown_selections_are_clear_errors(env: Env) -> None:
    await env.fail("ev-a")
    with pytest.raises(DeadLetterNotFound, match=r"^no dead letter of original event id 'nope' in LISTENPOST_DLQ$"):
        await replay(env.js, env.settings, original_id="nope")
    with pytest.raises(DeadLetterNotFound, match=r"^no dead letter with sequence 7 in LISTENPOST_DLQ$"):
        await replay(env.js, env.settings, seq=7)
    with pytest.raises(DeadLetterError, match="choose exactly one"):
        await replay(env.js, env.settings)
    with pytest.raises(DeadLetterError, match="choose exactly one"):
        await replay(env.js, env.settings, seq=1, all=True)
    assert len(await list_dead_letters(env.js, env.settings)) == 1


async def test_cli_list_and_replay(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LISTENPOST_NATS__URL", raising=False)
    await env.fail("ev-a")
    await env.fail("ev-b", "caption")
    runner = CliRunner()

    async def cli(*args: str) -> Any:
        # The commands run their own event loop: keep them off the test's.
        return await asyncio.to_thread(runner.invoke, dlq_app, [*args, "--nats-url", env.url])

    listed = await cli("list", "--json")
    assert listed.exit_code == 0, listed.output
    assert [(d["seq"], d["stage"], d["original_id"]) for d in json.loads(listed.stdout)] == [
        (1, "fetch", "ev-a"), (2, "caption", "ev-b"),
    ]  # fmt: skip
    table = await cli("list")
    assert "ev-a" in table.stdout and "2 dead letters" in table.stdout

    missing = await cli("replay", "--id", "nope")
    assert missing.exit_code == 1
    assert "no dead letter of original event id 'nope' in LISTENPOST_DLQ" in missing.stderr
    assert (await cli("replay")).exit_code == 2
    assert (await cli("replay", "--seq", "1", "--all")).exit_code == 2

    replayed = await cli("replay", "--id", "ev-b", "--json")
    assert replayed.exit_code == 0, replayed.output
    assert [r["original_id"] for r in json.loads(replayed.stdout)["replayed"]] == ["ev-b"]
    assert (await cli("replay", "--all")).exit_code == 0
    assert "no dead letters" in (await cli("list")).stdout


async def test_cli_without_a_reachable_nats_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    # No running `listenpost serve` to ask.
    monkeypatch.setattr("services.runtime.RUNTIME_FILE", Path("/nonexistent/runtime.json"))
    monkeypatch.delenv("LISTENPOST_NATS__URL", raising=False)
    result = await asyncio.to_thread(CliRunner().invoke, dlq_app, ["list"])
    assert result.exit_code == 2
    assert "no NATS URL" in result.stderr
    result = await asyncio.to_thread(CliRunner().invoke, dlq_app, ["list", "--nats-url", "nats://127.0.0.1:1"])
    assert result.exit_code == 2
    assert "cannot reach NATS at nats://127.0.0.1:1" in result.stderr


# --- paging (issue 12: `dlq list` loaded every dead letter with its body) -----------------------


async def test_list_reads_one_page_of_bodies_and_says_how_to_get_the_next(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(55):
        await env.fail(f"ev-{i:02d}", "caption" if i % 5 == 0 else "fetch")
    bodies_read: list[int] = []
    get_msg = env.js.get_msg

    async def counting(stream: str, seq: int | None = None, **kwargs: Any) -> Any:
        bodies_read.append(seq or 0)
        return await get_msg(stream, seq, **kwargs)

    monkeypatch.setattr(env.js, "get_msg", counting)
    page = await page_dead_letters(env.js, env.settings)
    assert [d.seq for d in page.letters] == list(range(1, 51))  # the default page: 50, oldest first
    assert (page.total, page.next_after) == (55, 50)
    assert bodies_read == list(range(1, 51))  # only the bodies shown were read

    bodies_read.clear()
    last = await page_dead_letters(env.js, env.settings, after=50)
    assert [d.original_id for d in last.letters] == [f"ev-{i}" for i in range(50, 55)]
    assert (last.total, last.next_after) == (5, None)
    assert bodies_read == [51, 52, 53, 54, 55]

    caption = await page_dead_letters(env.js, env.settings, stage="caption", limit=4)
    assert [d.original_id for d in caption.letters] == ["ev-00", "ev-05", "ev-10", "ev-15"]
    assert (caption.total, caption.next_after) == (11, 16)
    future = await page_dead_letters(env.js, env.settings, since=datetime.now(UTC) + timedelta(hours=1))
    assert (future.letters, future.total) == ([], 0)
    past = await page_dead_letters(env.js, env.settings, since=datetime.now(UTC) - timedelta(hours=1), limit=2)
    assert ([d.seq for d in past.letters], past.total) == ([1, 2], 55)
    with pytest.raises(DeadLetterError, match="a page holds at least one dead letter, not 0"):
        await page_dead_letters(env.js, env.settings, limit=0)
    # No listing leaves a consumer behind on the DLQ stream.
    assert (await env.js.stream_info(env.cfg.dlq_stream)).state.consumer_count == 0


def unboxed(text: str) -> str:
    """Rich's error panel, as one line of words."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


async def test_cli_list_pages(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LISTENPOST_NATS__URL", raising=False)
    for i in range(55):
        await env.fail(f"ev-{i:02d}")
    runner = CliRunner()

    async def cli(*args: str) -> Any:
        return await asyncio.to_thread(runner.invoke, dlq_app, [*args, "--nats-url", env.url])

    first = await cli("list")
    assert first.exit_code == 0, first.output
    assert "LISTENPOST_DLQ: 55 dead letters, showing 1..50" in first.stdout
    assert "ev-49" in first.stdout and "ev-50" not in first.stdout
    assert "5 more: listenpost dlq list --after 50" in first.stdout
    second = await cli("list", "--after", "50", "--json")
    assert [d["original_id"] for d in json.loads(second.stdout)] == [f"ev-{i}" for i in range(50, 55)]
    recent = await cli("list", "--since", "1h", "--limit", "3", "--json")
    assert [d["seq"] for d in json.loads(recent.stdout)] == [1, 2, 3]
    both = await cli("list", "--since", "1h", "--after", "3")
    assert both.exit_code == 2 and "give --after or --since, not both" in unboxed(both.output)
    bad = await cli("list", "--since", "yesterday")
    assert bad.exit_code == 2
    assert "--since 'yesterday' is neither a duration (30m, 24h, 7d) nor an ISO time" in unboxed(bad.output)
    replayed = await cli("replay", "--all", "--json")  # works through the pages
    assert len(json.loads(replayed.stdout)["replayed"]) == 55


# --- originals too large to embed (issue 12: "a dead letter ... stores the original by reference") --


async def test_an_original_too_large_to_embed_is_stored_by_reference_and_replayed_from_there(env: Env) -> None:
    # The largest input the stream takes: base64 makes it ~1.3 MiB, over NATS's 1 MiB payload.
    data = {"audio": {"uri": "file:///calls/1.wav"}, "context": {"pad": "x" * 900_000}}
    big = new_event(AUDIO_SUBMITTED, "urn:test:dlq", data, id="ev-big")
    body, headers = encode_binary(big)
    ack = await env.js.publish(env.cfg.subject("in", "test"), body, headers=headers)
    stored = await env.js.get_msg(ack.stream, ack.seq)
    await env.js.delete_msg(ack.stream, ack.seq)
    # Before issue 12 this raised nats' MaxPayloadError: the input could never be dead-lettered.
    await publish_dead_letter(
        env.js, env.cfg, "urn:listenpost", poison=Poison("validate", "context too deep"), stream=ack.stream,
        sequence=ack.seq, original=original_record(stored.subject, stored.headers, stored.data), deliveries=1,
    )  # fmt: skip
    [letter] = await list_dead_letters(env.js, env.settings)
    assert letter.original_id == "ev-big" and letter.replayable
    assert letter.original_ref == f"nats-object://listenpost-dlq/{env.cfg.in_stream}/{ack.seq}"
    assert letter.original_subject == "listenpost.in.test"
    raw = await env.js.get_msg(env.cfg.dlq_stream, letter.seq)
    assert len(raw.data) < 2000  # the dead letter itself stays small

    report = await replay(env.js, env.settings, seq=letter.seq)
    assert report.ok, report.failed
    [republished] = await env.messages(env.cfg.in_stream)
    assert republished.data == stored.data
    assert {k: v for k, v in republished.headers.items() if k != "Nats-Msg-Id"} == dict(stored.headers)
    store = await env.js.object_store("listenpost-dlq")
    with pytest.raises((ObjectNotFoundError, ObjectDeletedError)):  # replayed: the stored original is removed
        await store.get(f"{env.cfg.in_stream}/{ack.seq}")


async def test_a_forged_reference_cannot_make_a_replay_read_another_bucket(env: Env) -> None:
    audio = await env.js.create_object_store("listenpost-audio")
    record = {"subject": "listenpost.in.test", "headers": {}, "body_base64": base64.b64encode(b"secret").decode()}
    await audio.put("calls/1.json", json.dumps(record).encode())
    forged = AudioFailed(stage="fetch", reason="forged", error="X",
                         original={"subject": "listenpost.in.test", "ref": "nats-object://listenpost-audio/calls/1.json"})  # fmt: skip
    letter = new_event(AUDIO_FAILED, "urn:forger", forged.model_dump(mode="json"))
    await publish_event(env.js, env.cfg.subject("dlq", "fetch"), letter, msg_id="forged")
    report = await replay(env.js, env.settings, all=True)
    assert [f.error for f in report.failed] == [
        "original not readable: dataref names bucket 'listenpost-audio', not one read here (listenpost-dlq); "
        "dead letter kept"
    ]
    assert (await env.js.stream_info(env.cfg.in_stream)).state.messages == 0


def test_client_text_in_the_dead_letter_table_cannot_drive_the_terminal() -> None:
    from io import StringIO

    from rich.console import Console

    from services.events.cli import _letters_table, shown
    from services.events.dlq import DeadLetter, DeadLetterPage

    hostile = "ev-1\x1b[2J\x1b[31m[bold]forged[/bold]\r\n"
    assert shown(hostile) == "ev-1\\x1b[2J\\x1b[31m\\[bold]forged\\[/bold]\\r\\n"
    letter = DeadLetter(seq=1, time=None, subject="listenpost.dlq.parse", stage="parse", reason=hostile,
                        original_id=hostile, original_subject="listenpost.in.x", replayable=True)  # fmt: skip
    out = StringIO()
    Console(file=out, width=400, force_terminal=True, color_system=None).print(
        _letters_table(DeadLetterPage(letters=[letter], total=1), "LISTENPOST_DLQ")
    )
    text = out.getvalue()
    assert "\x1b[2J" not in text and "\r" not in text
    assert "\\x1b[2J\\x1b[31m[bold]forged[/bold]\\r\\n" in text
