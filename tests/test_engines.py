"""Caption engines on the tiny random-weight checkpoint: the text they return is noise, not captions.

What is tested is the plumbing: validation, batching, concurrency across events, token
accounting, guided decoding, draining, errors. The vLLM engine starts once for the module
(~30 s on the CPU); its last test shuts it down (draining).
"""

from __future__ import annotations

import asyncio
import json
import pickle
import time
from collections.abc import AsyncIterator
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from captioner_fixtures import noise_window, running_cpu_vllm_engine

from services.captioner.bench import bench_engine, noise_windows, ratios
from services.captioner.engines import (
    MIN_WINDOW_SAMPLES,
    CaptionEngine,
    SamplingConfig,
    TextEngine,
    TransformersCaptionEngine,
    TransformersEngineConfig,
    VllmCaptionEngine,
    VllmEngineConfig,
    audio_token_count,
    build_engine,
    make_request,
)
from services.captioner.engines.base import InFlight
from services.captioner.errors import (
    EmptyWindowError,
    EngineDeadError,
    EngineStartError,
    EngineStoppingError,
    GuidedExtractionError,
    InvalidWindowError,
    WindowTooLongError,
)
from services.captioner.facets.guided import GuidedFacetExtractor, GuidedLimits, parse_window_answer, window_schema
from services.captioner.prompt import text_prompt
from services.events.models import Facets, Window

MAX_TOKENS = 16
# The tiny prompt: 35 text tokens around the audio tokens (13 per second).
TEXT_PROMPT_TOKENS = 35


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("samples", [0, 1, MIN_WINDOW_SAMPLES - 1])
def test_too_short_window_is_empty(samples: int) -> None:
    with pytest.raises(EmptyWindowError):
        make_request(np.zeros(samples, np.float32), "w", max_window_s=30.0)


@pytest.mark.parametrize(("seconds", "limit"), [(30.01, 30.0), (5.5, 5.0)])
def test_window_over_the_limit_is_too_long(seconds: float, limit: float) -> None:
    with pytest.raises(WindowTooLongError, match=f"limit is {limit:g} s"):
        make_request(noise_window(seconds), "w", max_window_s=limit)


def test_window_at_the_limit_passes() -> None:
    request = make_request(noise_window(30.0).astype(np.float64), "w", max_window_s=30.0)
    assert request.audio.dtype == np.float32 and request.duration_s == 30.0


@pytest.mark.parametrize(
    "audio",
    [np.zeros((2, 16000), np.float32), np.zeros(16000, np.int16), np.full(16000, np.nan, np.float32)],
    ids=["stereo", "int16", "nan"],
)
def test_malformed_window_is_invalid(audio: np.ndarray) -> None:
    with pytest.raises(InvalidWindowError):
        make_request(audio, "w", max_window_s=30.0)


@pytest.mark.parametrize(("seconds", "tokens"), [(MIN_WINDOW_SAMPLES / 16000, 1), (3.0, 39), (10.0, 130), (30.0, 390)])
def test_audio_token_count(seconds: float, tokens: int) -> None:
    assert audio_token_count(round(seconds * 16000)) == tokens


async def test_window_that_cannot_fit_max_model_len_is_too_long(tiny_checkpoint: Path) -> None:
    # Checked before the engine is touched: this engine is never started.
    engine = VllmCaptionEngine(
        VllmEngineConfig(model=str(tiny_checkpoint), max_model_len=256, sampling=SamplingConfig(max_tokens=64))
    )
    engine._prompt_text_tokens = TEXT_PROMPT_TOKENS
    with pytest.raises(WindowTooLongError, match="max_model_len is 256"):
        await engine.caption(noise_window(15.0), "long-for-the-context")  # 35 + 195 + 64 > 256
    with pytest.raises(EngineDeadError, match="not started"):
        await engine.caption(noise_window(10.0), "fits")  # 35 + 130 + 64 <= 256


def test_build_engine_picks_and_validates_config(tiny_checkpoint: Path) -> None:
    engine = build_engine("transformers", {"model": str(tiny_checkpoint)})
    assert isinstance(engine, TransformersCaptionEngine) and isinstance(engine, CaptionEngine)
    vllm = build_engine("vllm", VllmEngineConfig(model=str(tiny_checkpoint)))
    assert isinstance(vllm, VllmCaptionEngine) and isinstance(vllm, TextEngine)
    with pytest.raises(ValueError, match="unknown caption engine"):
        build_engine("onnx", {"model": "x"})
    with pytest.raises(TypeError):
        build_engine("vllm", TransformersEngineConfig(model="x"))


def test_engine_args_come_from_config() -> None:
    config = VllmEngineConfig(
        model="m",
        tensor_parallel_size=2,
        gpu_memory_utilization=0.85,
        max_model_len=8192,
        max_num_seqs=64,
        max_num_batched_tokens=16384,
        dtype="bfloat16",
        limit_mm_per_prompt={"audio": 1},
    )
    args = config.engine_args()
    assert (args.tensor_parallel_size, args.gpu_memory_utilization, args.max_model_len) == (2, 0.85, 8192)
    assert (args.max_num_seqs, args.max_num_batched_tokens, args.dtype) == (64, 16384, "bfloat16")
    assert args.limit_mm_per_prompt == {"audio": 1}
    assert args.structured_outputs_config.disable_any_whitespace


def test_errors_survive_pickling() -> None:
    # Errors cross Ray process boundaries (replica -> Ingress, constructor -> controller).
    start = EngineStartError("vllm", OSError("no such model"))
    again = pickle.loads(pickle.dumps(start))
    assert type(again) is EngineStartError and str(again) == str(start) == "vllm engine failed to start: OSError: no such model"
    for error in (EngineDeadError("dead"), EngineStoppingError("stopping"), WindowTooLongError("long")):
        assert str(pickle.loads(pickle.dumps(error))) == str(error)
    assert issubclass(EngineStoppingError, EngineDeadError)  # transient: the Ingress retries it


async def test_in_flight_tracker_drains_and_times_out() -> None:
    flight = InFlight("test")
    release = asyncio.Event()

    async def window() -> None:
        async with flight.track():
            await release.wait()

    task = asyncio.create_task(window())
    await asyncio.sleep(0)
    assert flight.count == 1
    assert await flight.drain(0.05) is False  # still running at the timeout
    with pytest.raises(EngineStoppingError):
        async with flight.track():
            pass
    release.set()
    await task
    assert await flight.drain(1.0) is True and flight.count == 0


async def test_start_failure_names_the_cause(tmp_path: Path) -> None:
    for name in ("transformers", "vllm"):
        with pytest.raises(EngineStartError, match=f"{name} engine failed to start: \\w+"):
            await build_engine(name, {"model": str(tmp_path)}).start()


# --------------------------------------------------------------------------- transformers


@pytest.fixture(scope="module")
async def transformers_engine(tiny_checkpoint: Path) -> AsyncIterator[TransformersCaptionEngine]:
    engine = TransformersCaptionEngine(
        TransformersEngineConfig(
            model=str(tiny_checkpoint), batch_wait_s=0.05, sampling=SamplingConfig(max_tokens=MAX_TOKENS, seed=0)
        )
    )
    await engine.start()
    yield engine
    await engine.shutdown()


async def test_transformers_batches_concurrent_windows(transformers_engine: TransformersCaptionEngine) -> None:
    first, second = await asyncio.gather(
        transformers_engine.caption(noise_window(10.0, seed=1), "a"),
        transformers_engine.caption(noise_window(3.0, seed=2), "b"),
    )
    assert (first.request_id, second.request_id) == ("a", "b")
    assert first.batch_size == second.batch_size == 2  # one generate() for both
    assert first.prompt_tokens == TEXT_PROMPT_TOKENS + 130
    assert second.prompt_tokens == TEXT_PROMPT_TOKENS + 39
    for result in (first, second):
        assert result.text  # noise from random weights
        assert 0 < result.output_tokens <= MAX_TOKENS
        assert result.engine == "transformers" and result.engine_seconds > 0
    await transformers_engine.check_health()


async def test_transformers_rejects_bad_windows_before_batching(
    transformers_engine: TransformersCaptionEngine,
) -> None:
    with pytest.raises(EmptyWindowError):
        await transformers_engine.caption(np.zeros(0, np.float32), "empty")
    with pytest.raises(WindowTooLongError):
        await transformers_engine.caption(noise_window(31.0), "long")
    assert transformers_engine.in_flight == 0


async def test_transformers_shutdown_drains_windows_in_flight(tiny_checkpoint: Path) -> None:
    engine = TransformersCaptionEngine(
        TransformersEngineConfig(
            model=str(tiny_checkpoint), max_batch_size=2, sampling=SamplingConfig(max_tokens=24, min_tokens=24)
        )
    )
    with pytest.raises(EngineDeadError):
        await engine.check_health()
    await engine.start()
    await engine.check_health()
    # Four windows, two batches: the second batch is still queued when shutdown begins.
    tasks = [asyncio.create_task(engine.caption(noise_window(2.0, seed=i), f"d{i}")) for i in range(4)]
    while engine.in_flight < 4:
        await asyncio.sleep(0.005)
    shutdown = asyncio.create_task(engine.shutdown())
    await asyncio.sleep(0)
    with pytest.raises(EngineStoppingError):
        await engine.caption(noise_window(1.0), "late")
    results = await asyncio.gather(*tasks)
    await shutdown
    assert [r.output_tokens for r in results] == [24] * 4  # every window finished, none lost
    with pytest.raises(EngineDeadError):
        await engine.caption(noise_window(1.0), "after")


# --------------------------------------------------------------------------- vLLM


@pytest.fixture(scope="module")
async def vllm_engine(tiny_checkpoint: Path) -> AsyncIterator[VllmCaptionEngine]:
    async with running_cpu_vllm_engine(
        tiny_checkpoint,
        max_model_len=4096,
        max_num_seqs=16,
        sampling=SamplingConfig(max_tokens=MAX_TOKENS),
        drain_timeout_s=60,
    ) as engine:
        yield engine


async def test_vllm_captions_windows_concurrently(vllm_engine: VllmCaptionEngine) -> None:
    n = 6
    spans: dict[str, tuple[float, float]] = {}
    peak_in_flight = 0

    async def one(i: int):
        started = time.perf_counter()
        result = await vllm_engine.caption(noise_window(10.0, seed=i), f"w{i}")
        spans[result.request_id] = (started, time.perf_counter())
        return result

    async def watch() -> None:
        nonlocal peak_in_flight
        while True:
            peak_in_flight = max(peak_in_flight, vllm_engine.in_flight)
            await asyncio.sleep(0.001)

    watcher = asyncio.create_task(watch())
    wall_started = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.perf_counter() - wall_started
    watcher.cancel()

    assert [r.request_id for r in results] == [f"w{i}" for i in range(n)]
    for result in results:
        assert result.text  # noise from random weights
        assert result.prompt_tokens == TEXT_PROMPT_TOKENS + 130
        assert 0 < result.output_tokens <= MAX_TOKENS
        assert result.engine == "vllm"
    # In flight together: every window started before the first one finished, and the engine
    # time summed over windows far exceeds the wall time (they were not served one by one).
    assert max(s for s, _ in spans.values()) < min(e for _, e in spans.values())
    assert peak_in_flight == n
    assert sum(r.engine_seconds for r in results) > 1.5 * wall
    assert vllm_engine.in_flight == 0


async def test_vllm_batches_windows_of_several_events_together(vllm_engine: VllmCaptionEngine) -> None:
    """Three events' windows in flight at once, as the Ingress sends them; the scheduler ran them
    in the same engine steps (more requests per step than any one event has windows)."""
    events = {"evt-a": [10.0, 10.0, 10.0, 10.0, 4.5], "evt-b": [10.0, 10.0, 7.0], "evt-c": [10.0] * 6}
    vllm_engine.batch_stats.reset()

    async def caption_event(event_id: str, lengths: list[float]) -> list:
        return await asyncio.gather(
            *(vllm_engine.caption(noise_window(s, seed=i), f"{event_id}/w{i}") for i, s in enumerate(lengths))
        )

    results = await asyncio.gather(*(caption_event(e, lengths) for e, lengths in events.items()))
    stats = vllm_engine.batch_stats.snapshot()

    for (event_id, lengths), captions in zip(events.items(), results, strict=True):
        assert [c.request_id for c in captions] == [f"{event_id}/w{i}" for i in range(len(lengths))]
        for caption, seconds in zip(captions, lengths, strict=True):
            assert caption.prompt_tokens == TEXT_PROMPT_TOKENS + audio_token_count(round(seconds * 16000))
            assert 0 < caption.output_tokens <= MAX_TOKENS and caption.engine_seconds > 0
    total = sum(len(v) for v in events.values())  # 14 windows, max_num_seqs 16
    assert stats["peak_running"] > max(len(v) for v in events.values()), stats
    assert stats["peak_running"] >= total - 2, stats  # (nearly) all of them in one step
    assert stats["mean_running"] > 2, stats


async def test_vllm_rejects_empty_and_too_long_windows(vllm_engine: VllmCaptionEngine) -> None:
    with pytest.raises(EmptyWindowError):
        await vllm_engine.caption(np.zeros(0, np.float32), "empty")
    with pytest.raises(EmptyWindowError):
        await vllm_engine.caption(noise_window(0.01), "10ms")
    with pytest.raises(WindowTooLongError):
        await vllm_engine.caption(noise_window(30.5), "long")
    shortest = await vllm_engine.caption(noise_window(MIN_WINDOW_SAMPLES / 16000), "shortest")
    assert shortest.prompt_tokens == TEXT_PROMPT_TOKENS + 1
    await vllm_engine.check_health()


async def test_vllm_guided_decoding_returns_schema_valid_json(vllm_engine: VllmCaptionEngine, tiny_checkpoint: Path) -> None:
    """Random weights under a JSON schema still write JSON valid under it: the grammar, not the
    model, guarantees the shape. The content is noise."""
    window = Window(index=0, start=0, end=30, channel=0, role="customer", caption="The customer is angry.")
    schema = window_schema(window, GuidedLimits(max_emotions=2, max_sound_events=2, max_span_chars=24))
    prompt = text_prompt(str(tiny_checkpoint), "Answer in JSON.", window.caption)
    results = await asyncio.gather(
        *(vllm_engine.complete(prompt, request_id=f"json{i}", max_tokens=1500, json_schema=schema) for i in range(3))
    )
    # Random weights may emit bytes that are not whole UTF-8 characters: each decodes to U+FFFD,
    # so a string can count more characters here than the grammar counted. Everything else holds.
    unbounded_strings = json.loads(json.dumps(schema).replace('"maxLength": 24', '"minLength": 0'))
    for result in results:
        assert result.finish_reason == "stop", result
        jsonschema.validate(json.loads(result.text, strict=False), unbounded_strings)
        parse_window_answer(result.text, window)


async def test_vllm_guided_facet_extractor_gives_facets(vllm_engine: VllmCaptionEngine, tiny_checkpoint: Path) -> None:
    windows = [
        Window(index=0, start=0, end=30, channel=0, role="agent", caption="The agent speaks calmly."),
        Window(index=1, start=0, end=30, channel=1, role="customer", caption="A siren wails; the caller is scared."),
        Window(index=2, start=30, end=40, channel=1, role="customer", caption=""),
    ]
    limits = GuidedLimits(max_emotions=2, max_sound_events=2, max_languages=2, max_span_chars=24)
    extractor = GuidedFacetExtractor(vllm_engine, str(tiny_checkpoint), max_tokens=1500, limits=limits)
    facets = await extractor.extract(windows, "evt-guided")
    assert isinstance(facets, Facets) and facets.extractor == "guided"
    assert isinstance(facets.speech_present, bool) and isinstance(facets.music_present, bool)
    for facet in [*facets.emotions, *facets.sound_events]:
        assert facet.window in (0, 1)  # the empty window is not asked about
        assert len(facet.span.replace("\ufffd", "")) <= 24  # (see the test above)
    for emotion in facets.emotions:
        assert emotion.role == {0: "agent", 1: "customer"}[emotion.window] or emotion.role is None

    cut = GuidedFacetExtractor(vllm_engine, str(tiny_checkpoint), max_tokens=2, limits=limits)
    with pytest.raises(GuidedExtractionError, match="cut at max_tokens=2"):
        await cut.extract(windows[:1], "evt-cut")


async def test_bench_harness_measures_both_engines(
    vllm_engine: VllmCaptionEngine, transformers_engine: TransformersCaptionEngine
) -> None:
    windows = noise_windows(4, 5.0)
    points = [
        *await bench_engine(vllm_engine, windows, [1, 4], label="bench-"),
        *await bench_engine(transformers_engine, windows, [1, 4], label="bench-"),
    ]
    assert [(p.engine, p.concurrency) for p in points] == [
        ("vllm", 1), ("vllm", 4), ("transformers", 1), ("transformers", 4),
    ]  # fmt: skip
    for p in points:
        assert p.audio_s == 5.0 * p.concurrency and p.wall_s > 0 and p.audio_s_per_s > 0
    assert points[1].peak_running == 4
    assert set(ratios(points)) == {"1", "4"}


async def test_both_engines_caption_windows_of_a_preprocessed_call(
    vllm_engine: VllmCaptionEngine, transformers_engine: TransformersCaptionEngine
) -> None:
    """Real windows end to end: a two-party call -> preprocessing -> both engines -> timeline, facets."""
    from audio_factory import call, sndfile_bytes

    from services.captioner.facets import extract_facets
    from services.captioner.timeline import merge_timeline
    from services.events.models import AudioSubmitted
    from services.preprocess.pipeline import prepare
    from services.settings import PreprocessSettings

    recording = call([(0, 0.5, 6.0), (1, 6.5, 12.0), (0, 12.5, 20.0)], 21.0, rate=8000)
    submitted = AudioSubmitted.model_validate(
        {"audio": {"data_base64": "AA=="}, "channels": [{"index": 0, "role": "agent"}, {"index": 1, "role": "customer"}]}
    )
    prepared = prepare(sndfile_bytes(recording.samples, recording.rate), submitted, PreprocessSettings())
    assert {w.role for w in prepared.windows} == {"agent", "customer"}
    for engine in (vllm_engine, transformers_engine):
        results = await asyncio.gather(
            *(engine.caption(w.samples, f"evt-call/w{w.index}") for w in prepared.windows)
        )
        windows = [
            Window(index=w.index, start=w.start, end=w.end, channel=w.channel, role=w.role, caption=r.text,
                   prompt_tokens=r.prompt_tokens, output_tokens=r.output_tokens, engine_s=r.engine_seconds)
            for w, r in zip(prepared.windows, results, strict=True)
        ]  # fmt: skip
        for w, r in zip(prepared.windows, results, strict=True):
            assert r.prompt_tokens == TEXT_PROMPT_TOKENS + audio_token_count(w.samples.shape[0]), engine.name
            assert r.output_tokens > 0 and r.engine == engine.name
        timeline = merge_timeline(windows)
        assert " agent]" in timeline and " customer]" in timeline
        facets = extract_facets(windows)  # of noise captions: whatever it finds, it is well-formed
        assert facets.extractor == "lexicon" and all(e.role in ("agent", "customer") for e in facets.emotions)


async def test_vllm_shutdown_drains_windows_in_flight(vllm_engine: VllmCaptionEngine) -> None:
    """Last vLLM test: shuts the module's engine down while windows are in flight."""
    long = SamplingConfig(max_tokens=48, min_tokens=48)
    vllm_engine.config = vllm_engine.config.model_copy(update={"sampling": long})
    tasks = [asyncio.create_task(vllm_engine.caption(noise_window(5.0, seed=i), f"drain{i}")) for i in range(6)]
    while vllm_engine.in_flight < 6:
        await asyncio.sleep(0.005)
    shutdown = asyncio.create_task(vllm_engine.shutdown())
    await asyncio.sleep(0)
    with pytest.raises(EngineStoppingError):
        await vllm_engine.caption(noise_window(1.0), "late")
    results = await asyncio.gather(*tasks)
    await shutdown
    assert [r.output_tokens for r in results] == [48] * 6  # all finished, none lost
    with pytest.raises(EngineDeadError):
        await vllm_engine.check_health()
    with pytest.raises(EngineDeadError, match="not started"):
        await vllm_engine.caption(noise_window(1.0), "after")
