"""Outputs too large for a NATS message go by the object store and ``dataref``, on a real nats-server.

A 4-hour stereo call is 960 windows of 30 s; its ``audio.captioned`` is ~3.8 MB against NATS's
1 MiB payload. Before issue 12 its publish failed (nats' MaxPayloadError) on every delivery,
and the input was retried, then dead-lettered, with its captions lost.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from nats.js import JetStreamContext

from services.events.binding import encode_binary, new_event
from services.events.claimcheck import HEADER_ROOM
from services.events.connection import connect
from services.events.consumer import Poison
from services.events.embedded import EmbeddedNatsServer
from services.events.errors import EventsError
from services.events.jetstream import provision, publish_event
from services.events.models import AUDIO_CAPTIONED
from services.orchestrator.publish import publish_captioned
from services.rules import load_ruleset
from services.rules.backtest import backtest
from services.rules.inputs import read_input
from services.settings import NatsSettings

RULES = """apiVersion: listenpost/v1
kind: RuleSet
metadata: {name: t, owner: qa}
rules:
  - id: alarm
    description: an alarm anywhere in the call
    match: {types: [com.listenpost.audio.captioned]}
    when: 'sound(["alarm"], 0.5)'
    actions:
      - route: {queue: security}
"""


def four_hour_call(windows: int = 960) -> dict[str, Any]:
    caption = "The customer explains the billing problem again, slowly and at length. " * 50  # ~3.6 KB
    return {
        "context": {"callid": "c-4h"},
        "caption": "",
        "windows": [
            {"index": i, "start": 30.0 * (i // 2), "end": 30.0 * (i // 2 + 1), "channel": i % 2, "caption": caption}
            for i in range(windows)
        ],
        "facets": {"emotions": [], "sound_events": [{"label": "alarm", "confidence": 0.9, "window": windows - 1}]},
        "acoustics": {"silence_ratio": 0.1},
    }


def captioned_event(data: dict[str, Any]) -> Any:
    return new_event(AUDIO_CAPTIONED, "urn:listenpost", data, extensions={"inputid": "in-4h", "callid": "c-4h"})


@pytest.fixture
async def js(tmp_path: Path) -> AsyncIterator[tuple[JetStreamContext, NatsSettings]]:
    with EmbeddedNatsServer(tmp_path / "nats") as server:
        nc = await connect(server.client_settings(), role="admin", name="test-outputs")
        cfg = NatsSettings(url=server.url)
        await provision(nc.jetstream(), cfg)
        try:
            yield nc.jetstream(), cfg
        finally:
            await nc.close()


async def test_a_captioned_event_over_the_payload_limit_is_published_by_reference(js: Any, tmp_path: Path) -> None:
    jsc, cfg = js
    data = four_hour_call()
    event = captioned_event(data)
    assert len(encode_binary(event)[0]) > 3_400_000
    with pytest.raises(nats.errors.MaxPayloadError):  # what the Ingress did before: publish it whole
        await publish_event(jsc, cfg.subject("captioned"), event, msg_id="whole")

    assert await publish_captioned(jsc, cfg, event, input_source="urn:pbx", input_id="in-4h")
    info = await jsc.stream_info(cfg.out_stream)
    stored = await jsc.get_msg(cfg.out_stream, info.state.last_seq)
    assert not stored.data  # the data rides beside the event
    dataref = stored.headers["ce-dataref"]
    assert dataref.startswith("nats-object://listenpost-outputs/captioned/")
    assert (stored.headers["ce-id"], stored.headers["ce-inputid"], stored.headers["ce-callid"]) == (
        event.get_id(), "in-4h", "c-4h",
    )  # fmt: skip
    assert stored.headers["ce-datacontenttype"] == "application/json"

    # Every reader gets the data back: the rules engine's input parsing (also used by backtest)...
    attributes, resolved = await read_input(jsc, stored.data or b"", stored.headers, buckets=[cfg.outputs_bucket])
    assert resolved == data and attributes["id"] == event.get_id()

    # ...and a redelivered input rewrites the same object; its repeat event is dropped by dedup.
    assert not await publish_captioned(jsc, cfg, event, input_source="urn:pbx", input_id="in-4h")
    objects = await (await jsc.object_store(cfg.outputs_bucket)).list()
    assert [o.name for o in objects] == [dataref.removeprefix("nats-object://listenpost-outputs/")]

    # rules backtest reads it as the engine does.
    async def decode(body: bytes, headers: Any) -> tuple[dict[str, Any], Any]:
        try:
            return await read_input(jsc, body, headers, buckets=[cfg.outputs_bucket])
        except EventsError as exc:
            raise ValueError(str(exc)) from exc

    (tmp_path / "rules.yaml").write_text(RULES)
    report = await backtest(
        jsc, load_ruleset(tmp_path), stream=cfg.out_stream, subjects=[cfg.subject("captioned")],
        since_s=3600, since_text="1h", prefix=cfg.subject_prefix, decode=decode,
    )  # fmt: skip
    assert (report.events, report.undecodable) == (1, 0)
    assert dict(report.rules["alarm"].routes) == {"security": 1}


async def test_a_captioned_event_that_fits_stays_inline(js: Any) -> None:
    jsc, cfg = js
    event = captioned_event(four_hour_call(windows=4))
    assert await publish_captioned(jsc, cfg, event, input_source="urn:pbx", input_id="in-small")
    stored = await jsc.get_msg(cfg.out_stream, (await jsc.stream_info(cfg.out_stream)).state.last_seq)
    assert "ce-dataref" not in stored.headers and stored.data == encode_binary(event)[0]
    assert len(stored.data) < cfg.max_payload_bytes - HEADER_ROOM


async def test_a_forged_dataref_cannot_make_the_rules_engine_read_another_bucket(js: Any) -> None:
    jsc, cfg = js
    audio = await jsc.create_object_store("listenpost-audio")
    await audio.put("calls/1.json", b'{"context": {"secret": true}}')
    forged = new_event(
        AUDIO_CAPTIONED, "urn:forger", None, extensions={"dataref": "nats-object://listenpost-audio/calls/1.json"}
    )
    body, headers = encode_binary(forged)
    with pytest.raises(Poison) as refused:
        await read_input(jsc, body, headers, buckets=[cfg.outputs_bucket])
    assert refused.value.stage == "rules"
    assert refused.value.reason == (
        "event data not readable: dataref names bucket 'listenpost-audio', not one read here (listenpost-outputs)"
    )
    gone = new_event(AUDIO_CAPTIONED, "urn:x", None, extensions={"dataref": "nats-object://listenpost-outputs/nope"})
    await jsc.create_object_store(cfg.outputs_bucket)
    with pytest.raises(Poison, match=r"^rules: event data not readable: object listenpost-outputs/nope not found"):
        await read_input(jsc, *encode_binary(gone), buckets=[cfg.outputs_bucket])
