"""A bounded fuzz run of every door an input comes in by: 0 crashes, 0 500s, 0 inputs left unfinished.

Four targets, each with real parts (docs/fuzzing.md):

1. HTTP bodies and headers -> the ingress app over a real nats-server: never 500, every
   refusal is ``application/problem+json`` with a title.
2. CloudEvent attributes and ``context`` shapes -> the parse path (binding, adapters,
   ``audio.submitted`` contract): an event, or a :class:`BindingError` / :class:`Poison`
   with a stage, never another exception.
3. Audio files -> the preprocess pipeline: prepared audio, or a specific
   :class:`PreprocessError` with a stage, in bounded time.
4. Inputs on the IN stream -> the Ingress's own handler in a real :class:`PullConsumer`
   (only the captioning model is a stub): each ends captioned or dead-lettered, the first
   time, and :func:`account` balances.

Inputs come from tests/fuzz_inputs.py. The run is derandomized (the same examples on every
run, so CI is repeatable) and bounded by example counts; ``FUZZ_SCALE=N`` multiplies them
and draws new random examples, for a longer hunt by hand. Each finding is a plain test of its
own (docs/fuzzing.md); one still open would be an ``xfail(strict=True)`` test, so it is seen
to turn when fixed (none is open now).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats.errors
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from nats.js import JetStreamContext
from pydantic import SecretStr

from services.captioner.engines.base import CaptionResult
from services.captioner.redaction import RedactionPolicy
from services.events.accounting import account
from services.events.binding import BindingError, decode, event_data_json
from services.events.connection import connect
from services.events.consumer import Poison, PullConsumer, Redelivery
from services.events.deadletter import dead_letter
from services.events.embedded import EmbeddedNatsServer
from services.events.jetstream import provision
from services.events.models import AUDIO_SUBMITTED, AudioRef, AudioSubmitted, ChannelRole, ContextLimits
from services.ingest.adapters import load_adapters
from services.ingest.http import HttpIngest, app_for, http_app
from services.ingest.submitted import parse_submitted
from services.orchestrator.deployment import Ingress
from services.preprocess.channels import MODEL_RATE
from services.preprocess.deployment import Preprocessor
from services.preprocess.errors import PreprocessError
from services.preprocess.gate import PrepareGate
from services.preprocess.pipeline import prepare
from services.preprocess.sources import http_policy, read_object
from services.preprocess.vad import default_detector
from services.settings import ApiKey, HttpSettings, NatsSettings, PreprocessSettings, Settings
from tests.fuzz_inputs import (
    SEED_FORMATS,
    AudioCase,
    HttpRequest,
    NatsMessage,
    Raw,
    audio_files,
    contexts,
    declared_formats,
    http_requests,
    nats_messages,
    nested,
    odds,
    role_lists,
    seed_audio,
    to_json,
)

REPO = Path(__file__).resolve().parents[1]
KEY = "fuzz-key-0123456789-abcdefghijklmnopqrstuvwxyz"
# Rate limits are not under test here: a key with room for every fuzzed request.
HTTP = HttpSettings(keys=[ApiKey(id="fuzz", secret=SecretStr(KEY), sources=["*"], rate_per_s=1e6, burst=1_000_000)])
ADAPTERS = load_adapters(REPO / "adapters")
SCALE = int(os.environ.get("FUZZ_SCALE", "1"))


def fuzz(examples: int, deadline_ms: int | None = None) -> settings:
    """Bounded: a fixed number of examples, the same ones on every run unless FUZZ_SCALE asks for more."""
    return settings(
        max_examples=examples * SCALE,
        derandomize=SCALE == 1,
        database=None,  # nothing written to the work tree
        deadline=deadline_ms,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],  # not "explain": minutes, on a failure
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )


# --- 1. HTTP ------------------------------------------------------------------------------------------

HTTP_STATUSES = {202, 400, 401, 413, 415, 422}


@pytest.fixture(scope="module")
async def ingress(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    """The ingress app in-process (as tests/test_http_ingress.py runs it) over a real nats-server."""
    with EmbeddedNatsServer(tmp_path_factory.mktemp("nats-http")) as server:
        nc = await connect(server.client_settings(), role="admin", name="fuzz-http")
        nats = NatsSettings(url=server.url)
        await provision(nc.jetstream(), nats)
        app_for(HttpIngest(js=nc.jetstream(), nats=nats, http=HTTP, adapters=ADAPTERS))
        # A 500 must come back as an answer to assert on, not as the app's exception.
        transport = httpx.ASGITransport(app=http_app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingress") as client:
            try:
                yield client
            finally:
                del http_app.state.ingest
                await nc.close()


def check_http_answer(request: HttpRequest, reply: httpx.Response) -> None:
    what = f"{request.kind} request {request.body[:200]!r} with headers {request.headers!r}"
    event(f"{request.kind}: {reply.status_code}")
    assert reply.status_code in HTTP_STATUSES, f"{what} answered {reply.status_code}: {reply.text[:500]}"
    if reply.status_code == 202:
        accepted = reply.json()["accepted"]  # an empty batch is a valid batch: nothing to store
        assert isinstance(accepted, list) and all(isinstance(a["id"], str) and isinstance(a["duplicate"], bool) for a in accepted)
        return
    assert reply.headers["content-type"] == "application/problem+json", what
    problem = reply.json()
    assert isinstance(problem["title"], str) and problem["title"], what
    assert isinstance(problem["detail"], str) and problem["detail"], what
    assert problem["status"] == reply.status_code, what


async def post(client: httpx.AsyncClient, request: HttpRequest) -> httpx.Response:
    return await client.post("/events", content=request.body, headers=request.headers)


@fuzz(examples=250, deadline_ms=5000)
@given(request=http_requests(KEY, deep=False))
async def test_http_ingress_never_answers_500(ingress: httpx.AsyncClient, request: HttpRequest) -> None:
    check_http_answer(request, await post(ingress, request))


@fuzz(examples=60, deadline_ms=5000)
@given(request=http_requests(KEY, deep=True).filter(lambda r: r.kind != "batch"))
async def test_http_ingress_answers_deeply_nested_single_events_with_400(
    ingress: httpx.AsyncClient, request: HttpRequest
) -> None:
    """Binary and structured bodies nested up to 3,000 deep: a clear 400, never a RecursionError's 500."""
    check_http_answer(request, await post(ingress, request))


DEPTHS = [*range(900, 1010), 1500, 5000, 100_000]


@pytest.mark.parametrize("mode", ["structured", "binary"])
async def test_http_nesting_past_the_parser_limit_is_a_400(ingress: httpx.AsyncClient, mode: str) -> None:
    """Found by this fuzz run: json.loads raises RecursionError (not ValueError) past ~1,000 levels,
    which the binding let through and the app answered with a 500. Below the parser's limit the
    ingress may take the event; past it the answer is a 400 that says why."""
    for depth in DEPTHS:
        data = f'{{"audio":{{"uri":"/calls/1.wav"}},"context":{{"deep":{nested(depth, "object").text}}}}}'
        if mode == "structured":
            body = f'{{"specversion":"1.0","id":"d{depth}","source":"urn:fuzz","type":"{AUDIO_SUBMITTED}","data":{data}}}'
            headers = {"content-type": "application/cloudevents+json"}
        else:
            body = data
            headers = {"ce-specversion": "1.0", "ce-id": f"d{depth}", "ce-source": "urn:fuzz", "ce-type": AUDIO_SUBMITTED,
                       "content-type": "application/json"}  # fmt: skip
        reply = await ingress.post("/events", content=body, headers={**headers, "authorization": f"Bearer {KEY}"})
        assert reply.status_code in (202, 400), f"depth {depth}: {reply.status_code} {reply.text[:300]}"
        if depth >= 1500:
            assert reply.status_code == 400, f"depth {depth}: {reply.status_code} {reply.text[:300]}"
            problem = reply.json()
            assert problem["title"] == "Malformed CloudEvent"
            assert "nested too deeply" in problem["detail"], problem["detail"]


SURROGATE_DETAIL = "it holds a lone UTF-16 surrogate (\\ud800), which is no Unicode character"
SURROGATE = Raw('"\\ud800"')  # the JSON escape, as a sender writes it
ENVELOPE = {"specversion": "1.0", "id": "s", "source": "urn:fuzz", "type": AUDIO_SUBMITTED}


@pytest.mark.parametrize(
    ("mode", "body", "detail"),
    [
        ("structured", to_json({**ENVELOPE, "id": SURROGATE, "data": {"audio": {"uri": "/a.wav"}}}),
         "structured body is not valid JSON: " + SURROGATE_DETAIL),
        ("binary", to_json({"audio": {"uri": "/a.wav"}, "context": {"note": SURROGATE}}),
         "data is not valid JSON for datacontenttype 'application/json': " + SURROGATE_DETAIL),
        ("batch", to_json([{**ENVELOPE, "data": {"audio": {"uri": "/a.wav"}, "context": {SURROGATE: 1}}}]),
         "batch body is not valid JSON: " + SURROGATE_DETAIL),
    ],
)  # fmt: skip
async def test_http_a_lone_surrogate_is_a_400(ingress: httpx.AsyncClient, mode: str, body: str, detail: str) -> None:
    """Found by this fuzz run: JSON may escape a lone UTF-16 surrogate ("\\ud800"); json.loads takes it,
    and encoding the event for NATS then raised UnicodeEncodeError: a 500 at the door, and a crash
    wherever such an event was re-encoded."""
    headers = {
        "structured": {"content-type": "application/cloudevents+json"},
        "binary": {"ce-specversion": "1.0", "ce-id": "s", "ce-source": "urn:fuzz", "ce-type": AUDIO_SUBMITTED,
                   "content-type": "application/json"},
        "batch": {"content-type": "application/cloudevents-batch+json"},
    }[mode]  # fmt: skip
    reply = await ingress.post("/events", content=body, headers={**headers, "authorization": f"Bearer {KEY}"})
    assert reply.status_code == 400, reply.text
    assert reply.headers["content-type"] == "application/problem+json"
    problem = reply.json()
    assert problem["detail"] == detail  # a batch is refused whole: its body cannot be read


async def test_http_batch_nested_past_the_parser_limit_is_a_400(ingress: httpx.AsyncClient) -> None:
    for depth in DEPTHS:
        body = "[" + nested(depth, "list").text + "]"
        reply = await ingress.post(
            "/events",
            content=body,
            headers={"content-type": "application/cloudevents-batch+json", "authorization": f"Bearer {KEY}"},
        )
        assert reply.status_code == 400, f"depth {depth}: {reply.status_code} {reply.text[:300]}"
        assert reply.headers["content-type"] == "application/problem+json"


# --- 2. The parse path -------------------------------------------------------------------------------


@fuzz(examples=600, deadline_ms=2000)
@given(message=nats_messages(deep=True))
def test_parse_gives_an_event_or_a_specific_refusal(message: NatsMessage) -> None:
    what = f"{message.kind} message {message.body[:200]!r} with headers {message.headers!r}"
    try:
        decode(message.body, message.headers)
    except BindingError as exc:
        assert str(exc), what
    try:
        parsed, submitted = parse_submitted(message.body, message.headers, ADAPTERS)
    except Poison as exc:
        event(f"{message.kind}: refused at {exc.stage}")
        assert exc.stage in ("decode-event", "validate"), what
        assert exc.reason and exc.error, what
        return
    event(f"{message.kind}: accepted")
    assert isinstance(submitted, AudioSubmitted), what
    assert parsed.get_type() == AUDIO_SUBMITTED, what
    assert isinstance(parsed.get_id(), str) and parsed.get_id(), what


BINARY = {"ce-specversion": "1.0", "ce-id": "s", "ce-source": "urn:fuzz", "ce-type": AUDIO_SUBMITTED}


@pytest.mark.parametrize(
    ("body", "headers", "stage"),
    [
        (b'{"audio":{"uri":"/a.wav"},"context":{"k":"\\ud800"}}', {**BINARY, "ce-datacontenttype": "application/json"},
         "decode-event"),
        # No datacontenttype: the binding keeps the bytes, and reading them as JSON is the contract's check.
        (b'{"audio":{"uri":"/a.wav"},"context":{"k":"\\ud800"}}', BINARY, "validate"),
        # The surrogate's bytes, UTF-8-encoded, rather than escaped: json.loads passes them through too.
        (json.dumps({**ENVELOPE, "id": "\ud800"}, ensure_ascii=False).encode("utf-8", "surrogatepass"),
         {"content-type": "application/cloudevents+json"}, "decode-event"),
    ],
)  # fmt: skip
def test_parse_refuses_a_lone_surrogate_as_a_malformed_event(body: bytes, headers: dict[str, str], stage: str) -> None:
    with pytest.raises(Poison) as refused:
        parse_submitted(body, headers, ADAPTERS)
    assert refused.value.stage == stage
    assert refused.value.error == "MalformedEventError"
    assert refused.value.reason.endswith(SURROGATE_DETAIL)


@fuzz(examples=300, deadline_ms=2000)
@given(context=contexts(deep=False))
def test_context_shapes_are_kept_or_refused_as_invalid_data(context: Any) -> None:
    body = to_json({"specversion": "1.0", "id": "c", "source": "urn:fuzz", "type": AUDIO_SUBMITTED,
                    "data": {"audio": {"uri": "/calls/1.wav"}, "context": context}})  # fmt: skip
    headers = {"content-type": "application/cloudevents+json"}
    try:
        _, submitted = parse_submitted(body.encode("utf-8", "backslashreplace"), headers, ADAPTERS)
    except Poison as exc:
        assert exc.stage in ("decode-event", "validate"), exc
        return
    # What goes out again in audio.captioned must serialise, and as it came: JSON has no NaN or
    # infinity, so a number out of range (1e999) or a NaN literal goes out as null.
    assert json.loads(json.dumps(submitted.model_dump(mode="json")["context"])) == finite(submitted.context)


def finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


# --- 3. Audio ------------------------------------------------------------------------------------------

PREPROCESS = PreprocessSettings()
AUDIO_BOUND_S = 10.0  # per input; a second of audio prepares in well under one


@pytest.fixture(scope="module")
def vad() -> None:
    """Load Silero VAD once, so its start-up is not counted against the first example."""
    default_detector()
    for fmt in SEED_FORMATS:
        seed_audio(fmt)


def submitted_for(fmt: str | None, roles: list[tuple[int, str]]) -> AudioSubmitted:
    return AudioSubmitted(
        audio=AudioRef(data_base64="AA==", format=fmt), channels=[ChannelRole(index=i, role=r) for i, r in roles]
    )


@fuzz(examples=500, deadline_ms=int(AUDIO_BOUND_S * 1000))
@given(case=audio_files(), fmt=declared_formats, roles=role_lists)
def test_audio_is_prepared_or_refused_with_a_stage(
    vad: None, case: AudioCase, fmt: str | None, roles: list[tuple[int, str]]
) -> None:
    started = time.perf_counter()
    try:
        prepared = prepare(case.data, submitted_for(fmt, roles), PREPROCESS)
    except PreprocessError as exc:
        event(f"refused: {type(exc).__name__}")
        assert type(exc) is not PreprocessError, f"{case.how}: the bare base class says nothing: {exc}"
        assert exc.stage in ("decode-audio", "validate"), f"{case.how}: {type(exc).__name__} stage {exc.stage}"
        assert str(exc), case.how
    else:
        event("prepared")
        assert prepared.windows, case.how
        for window in prepared.windows:
            assert window.samples.dtype == np.float32 and window.samples.ndim == 1, case.how
            assert np.isfinite(window.samples).all(), case.how
        # (>= 0: one sample at 8 kHz is 0.000125 s, which the facts round to 0.0.)
        assert math.isfinite(prepared.facts.duration_s) and prepared.facts.duration_s >= 0, case.how
    assert time.perf_counter() - started < AUDIO_BOUND_S, case.how


# --- 4. The Ingress consumer: every input finishes ------------------------------------------------------


@dataclass
class ConsumerEnv:
    js: JetStreamContext
    settings: Settings
    root: Path
    captioned_windows: list[tuple[str, int]] = field(default_factory=list)


@pytest.fixture(scope="module")
async def consumer_env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ConsumerEnv]:
    root = tmp_path_factory.mktemp("calls")
    for fmt in SEED_FORMATS:
        (root / f"call.{fmt}").write_bytes(seed_audio(fmt))
    with EmbeddedNatsServer(tmp_path_factory.mktemp("nats-consumer")) as server:
        # Short AckWait and retry delays: an input that is retried shows within the test's time.
        nats = NatsSettings(url=server.url, ack_wait_s=10, max_deliver=3, retry_delay_s=0.05, retry_delay_max_s=0.2)
        settings = Settings(nats=nats, preprocess=PreprocessSettings(file_roots=[root]))
        nc = await connect(server.client_settings(), role="admin", name="fuzz-consumer")
        js = nc.jetstream()
        await provision(js, nats, settings.rules.subjects(nats))
        try:
            yield ConsumerEnv(js, settings, root)
        finally:
            await nc.close()


def ingress_handler(env: ConsumerEnv) -> Callable[[Any], Any]:
    """``Ingress._handle`` itself, on a stand-in for the replica: the Preprocessor's own ``prepare``
    (fetch, decode, VAD) runs in-process; only the captioning model is a stub that records windows."""
    pre = Preprocessor.func_or_class.__new__(Preprocessor.func_or_class)  # the deployment's class, not started by Serve
    pre._settings, pre._http, pre._gate = env.settings, http_policy(env.settings.preprocess), PrepareGate(env.settings.preprocess)

    async def get_object(ref: Any) -> bytes:
        cfg = env.settings.preprocess
        return await read_object(env.js, ref, max_bytes=cfg.max_bytes, buckets=cfg.object_buckets)

    pre._get_object = get_object  # type: ignore[method-assign]  # the replica's own NATS connection, here the test's

    async def caption(samples: np.ndarray, request_id: str) -> CaptionResult:
        assert samples.dtype == np.float32 and samples.ndim == 1 and samples.shape[0] >= MODEL_RATE // 10
        env.captioned_windows.append((request_id, samples.shape[0]))
        return CaptionResult(request_id=request_id, text="a caller speaks.", prompt_tokens=1, output_tokens=3,
                             engine_seconds=0.0, engine="fuzz-stub")  # fmt: skip

    replica = Ingress.func_or_class.__new__(Ingress.func_or_class)
    replica._settings, replica._adapters, replica._js = env.settings, ADAPTERS, env.js
    replica._context_limits = ContextLimits.from_settings(env.settings.ingress)
    replica._redaction = RedactionPolicy.from_settings(env.settings.captioner)
    replica._caption = caption  # type: ignore[method-assign]  # only the model is a stub
    replica._prepare = pre.prepare  # type: ignore[method-assign]
    return replica._handle


_ids = itertools.count()


@st.composite
def consumer_inputs(draw: st.DrawFn) -> NatsMessage:
    """Anything a producer may publish (as in target 2), or an audio.submitted whose audio is real
    (inline, intact or mutated, or a file under the roots) with a fuzzed context."""
    placeholder = "@@fuzz-id@@"
    if draw(odds(1, 3)):
        message = draw(nats_messages(event_id=placeholder, deep=False))
    else:
        where = draw(st.sampled_from(["intact", "mutated", "file"]))
        if where == "intact":
            audio = {"data_base64": base64.b64encode(seed_audio(draw(st.sampled_from(SEED_FORMATS)))).decode()}
        elif where == "mutated":
            audio = {"data_base64": base64.b64encode(draw(audio_files()).data).decode()}
        else:
            audio = {"uri": f"file://{{root}}/call.{draw(st.sampled_from(SEED_FORMATS))}"}
        if draw(st.booleans()):
            audio["format"] = draw(declared_formats)
        data: dict[str, Any] = {"audio": audio, "context": draw(contexts(deep=False))}
        if roles := draw(role_lists):
            data["channels"] = [{"index": i, "role": r} for i, r in roles]
        headers = {"ce-specversion": "1.0", "ce-id": placeholder, "ce-source": "urn:fuzz", "ce-type": AUDIO_SUBMITTED,
                   "content-type": "application/json"}  # fmt: skip
        message = NatsMessage(to_json(data).encode("utf-8", "backslashreplace"), headers, "submitted")
    return message


def with_id(message: NatsMessage, event_id: str, root: Path) -> NatsMessage:
    body = message.body.replace(b"@@fuzz-id@@", event_id.encode()).replace(b"{root}", str(root).encode())
    headers = {k: (event_id if v == "@@fuzz-id@@" else v) for k, v in message.headers.items()}
    return NatsMessage(body, headers, message.kind)


async def dead_letters(js: JetStreamContext, cfg: NatsSettings, ids: set[str]) -> dict[str, dict[str, Any]]:
    """The dead letters of ``ids``: stage, reason, error and deliveries by input id."""
    found: dict[str, dict[str, Any]] = {}
    sub = await js.subscribe(cfg.subject("dlq", ">"), ordered_consumer=True)
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except nats.errors.TimeoutError:  # the stream is read to its end
                return found
            letter = decode(msg.data, msg.headers)
            if letter.get_extension("originalid") in ids:
                found[letter.get_extension("originalid")] = event_data_json(letter)
    finally:
        await sub.unsubscribe()


INPUTS_PER_EXAMPLE = 16


@fuzz(examples=5)
@given(messages=st.lists(consumer_inputs(), min_size=INPUTS_PER_EXAMPLE, max_size=INPUTS_PER_EXAMPLE))
async def test_every_input_is_captioned_or_dead_lettered_the_first_time(
    vad: None, consumer_env: ConsumerEnv, messages: list[NatsMessage]
) -> None:
    env, cfg = consumer_env, consumer_env.settings.nats
    batch = [with_id(m, f"fz-{next(_ids)}", env.root) for m in messages]
    ids = [m.headers["ce-id"] for m in batch]
    for message in batch:
        await env.js.publish(cfg.subject("in", "fuzz"), message.body, headers={**message.headers, "Nats-Msg-Id": message.headers["ce-id"]})
    consumer = PullConsumer(
        env.js, stream=cfg.in_stream, durable=cfg.ingest_durable, handler=ingress_handler(env),
        dead_letter=lambda msg, poison: dead_letter(env.js, cfg, env.settings.source, msg, poison),
        redelivery=Redelivery.from_settings(cfg), max_in_flight=4, batch=8,
    )  # fmt: skip
    consumer.start()
    try:
        async with asyncio.timeout(60):
            while consumer.stats.acked + consumer.stats.dead_lettered < len(batch):
                await asyncio.sleep(0.05)
    finally:
        await consumer.stop(drain_timeout_s=10)
    info = await env.js.consumer_info(cfg.in_stream, cfg.ingest_durable)
    assert (info.num_pending, info.num_ack_pending) == (0, 0), "inputs left on the stream"

    accounting = await account(env.js, cfg, ids)
    assert accounting.balanced, accounting
    assert accounting.captioned == consumer.stats.acked and accounting.dead_lettered == consumer.stats.dead_lettered
    # Each bad input was refused with its own reason, once: none went through retries ("retry" is
    # where a bug's exception ends), and nothing was redelivered.
    letters = await dead_letters(env.js, cfg, set(ids))
    retried = {i: (letter["reason"], letter["error"]) for i, letter in letters.items() if letter["stage"] == "retry"}
    assert not retried, retried
    assert consumer.stats.naked == 0
    logging.getLogger(__name__).info(
        "fuzz: %d inputs, %d captioned, %d dead-lettered (%s)", len(batch), accounting.captioned,
        accounting.dead_lettered, ", ".join(sorted({letter["stage"] for letter in letters.values()})),
    )  # fmt: skip


async def test_a_deeply_nested_context_is_refused_before_any_work(vad: None, consumer_env: ConsumerEnv) -> None:
    env, cfg = consumer_env, consumer_env.settings.nats
    event_id = f"fz-deep-{next(_ids)}"
    data = to_json({"audio": {"uri": f"file://{env.root}/call.wav"}, "context": nested(300, "object")})
    headers = {"ce-specversion": "1.0", "ce-id": event_id, "ce-source": "urn:fuzz", "ce-type": AUDIO_SUBMITTED,
               "content-type": "application/json", "Nats-Msg-Id": event_id}  # fmt: skip
    await env.js.publish(cfg.subject("in", "fuzz"), data.encode(), headers=headers)
    windows_before = len(env.captioned_windows)
    consumer = PullConsumer(
        env.js, stream=cfg.in_stream, durable=cfg.ingest_durable, handler=ingress_handler(env),
        dead_letter=lambda msg, poison: dead_letter(env.js, cfg, env.settings.source, msg, poison),
        redelivery=Redelivery.from_settings(cfg),
    )  # fmt: skip
    consumer.start()
    try:
        async with asyncio.timeout(30):
            while consumer.stats.acked + consumer.stats.dead_lettered < 1:
                await asyncio.sleep(0.05)
    finally:
        await consumer.stop(drain_timeout_s=10)
    letter = (await dead_letters(env.js, cfg, {event_id}))[event_id]
    assert letter["stage"] in ("decode-event", "validate"), letter
    assert letter["deliveries"] == 1, letter
    assert len(env.captioned_windows) == windows_before, "captioned before being refused"
