"""Captioning throughput: audio-seconds captioned per engine-second, per engine and concurrency.

For each engine, for each concurrency ``c``, ``c`` windows are submitted at once and the wall
time from the first submission to the last answer is the engine time; throughput is the audio
captioned divided by it. With ``fixed_tokens`` every window generates exactly ``max_tokens``
tokens (vLLM ``min_tokens``, transformers ``min_new_tokens``) so both engines do the same work.
``bench/caption.py`` is the command line; the tests run this on the tiny checkpoint.
"""

from __future__ import annotations

import asyncio
import gc
import os
import platform
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from services.captioner.engines import build_engine
from services.captioner.engines.base import SAMPLE_RATE, CaptionEngine, SamplingConfig

DEFAULT_CONCURRENCY = (1, 8, 32, 128)
TINY_NOTE = "tiny random-weight checkpoint: proves the harness, not the real model's speed"


class BenchPoint(BaseModel):
    engine: str
    concurrency: int
    windows: int
    audio_s: float
    wall_s: float = Field(description="First submission to last answer.")
    audio_s_per_s: float = Field(description="Audio seconds captioned per engine second (the headline).")
    output_tokens: int
    output_tokens_per_s: float
    mean_latency_s: float
    peak_running: int | None = Field(default=None, description="vLLM: most requests in one engine step.")


class BenchReport(BaseModel):
    model: str
    tiny: bool
    device: str
    host: str
    taken_at: str
    window_s: float
    max_tokens: int
    fixed_tokens: bool
    points: list[BenchPoint]
    ratio: dict[str, float] = Field(description="vLLM / transformers throughput per concurrency.")
    note: str = ""


def noise_windows(n: int, window_s: float, seed: int = 0) -> list[np.ndarray]:
    """``n`` distinct windows of quiet noise (content does not change the work: lengths do)."""
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(round(window_s * SAMPLE_RATE))).astype(np.float32) for _ in range(n)]


def file_windows(path: Path, n: int, window_s: float) -> list[np.ndarray]:
    """``n`` windows cut (cyclically) from a real recording, mixed to mono, resampled to 16 kHz."""
    import soundfile
    import soxr

    audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
    mono = soxr.resample(audio.mean(axis=1), rate, SAMPLE_RATE).astype(np.float32)
    size = round(window_s * SAMPLE_RATE)
    if mono.shape[0] < size:
        mono = np.tile(mono, size // max(1, mono.shape[0]) + 1)
    starts = range(0, mono.shape[0] - size + 1, size) or [0]
    cuts = [mono[s : s + size] for s in starts]
    return [cuts[i % len(cuts)] for i in range(n)]


async def bench_engine(
    engine: CaptionEngine, windows: Sequence[np.ndarray], concurrencies: Sequence[int], *, label: str = ""
) -> list[BenchPoint]:
    """Throughput of a started engine at each concurrency (``windows`` must hold max(concurrencies))."""
    stats = getattr(engine, "batch_stats", None)
    await engine.caption(windows[0], f"{label}warmup")  # first-request costs (graphs, caches) off the clock
    points = []
    for c in concurrencies:
        if stats is not None:
            stats.reset()
        latencies: list[float] = []

        async def one(i: int, started: float, c: int = c, latencies: list[float] = latencies) -> int:
            result = await engine.caption(windows[i], f"{label}c{c}-w{i}")
            latencies.append(time.perf_counter() - started)
            return result.output_tokens

        started = time.perf_counter()
        tokens = await asyncio.gather(*(one(i, started) for i in range(c)))
        wall = time.perf_counter() - started
        audio_s = sum(windows[i].shape[0] for i in range(c)) / SAMPLE_RATE
        points.append(
            BenchPoint(
                engine=engine.name,
                concurrency=c,
                windows=c,
                audio_s=round(audio_s, 3),
                wall_s=round(wall, 4),
                audio_s_per_s=round(audio_s / wall, 3),
                output_tokens=sum(tokens),
                output_tokens_per_s=round(sum(tokens) / wall, 2),
                mean_latency_s=round(sum(latencies) / len(latencies), 4),
                peak_running=stats.peak_running if stats is not None else None,
            )
        )
    return points


def ratios(points: Sequence[BenchPoint], numerator: str = "vllm", denominator: str = "transformers") -> dict[str, float]:
    by = {(p.engine, p.concurrency): p.audio_s_per_s for p in points}
    return {
        str(c): round(by[(numerator, c)] / by[(denominator, c)], 2)
        for (engine, c) in by
        if engine == numerator and (denominator, c) in by and by[(denominator, c)] > 0
    }


def engine_config(
    name: str,
    model: str,
    *,
    max_tokens: int,
    fixed_tokens: bool,
    max_concurrency: int,
    on_gpu: bool,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Each engine sized to take ``max_concurrency`` windows at once."""
    sampling = SamplingConfig(max_tokens=max_tokens, min_tokens=max_tokens if fixed_tokens else 0, seed=0)
    if name == "vllm":
        config: dict[str, Any] = {"model": model, "sampling": sampling, "max_num_seqs": max_concurrency}
        if not on_gpu:
            config |= {"dtype": "float32", "enforce_eager": True}
    else:
        config = {
            "model": model,
            "sampling": sampling,
            "device": "cuda" if on_gpu else "cpu",
            "dtype": "bfloat16" if on_gpu else "float32",
            "max_batch_size": min(max_concurrency, 32),
        }
    return config | (overrides or {}).get(name, {})


async def run_benchmark(
    model: str,
    *,
    engines: Sequence[str] = ("vllm", "transformers"),
    concurrencies: Sequence[int] = DEFAULT_CONCURRENCY,
    window_s: float = 10.0,
    max_tokens: int = 64,
    fixed_tokens: bool = True,
    audio: Path | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> BenchReport:
    """Start each engine in turn (one at a time: the real model fills a GPU), measure, stop it."""
    import torch

    on_gpu = torch.cuda.is_available()
    n = max(concurrencies)
    windows = file_windows(audio, n, window_s) if audio else noise_windows(n, window_s)
    points: list[BenchPoint] = []
    for name in engines:
        config = engine_config(
            name,
            model,
            max_tokens=max_tokens,
            fixed_tokens=fixed_tokens,
            max_concurrency=n,
            on_gpu=on_gpu,
            overrides=overrides,
        )
        engine = build_engine(name, config)
        await engine.start()
        try:
            points += await bench_engine(engine, windows, concurrencies, label=f"{name}-")
        finally:
            await engine.shutdown()
            del engine
            gc.collect()
    tiny = Path(model, "LISTENPOST_TINY.md").exists()
    device = torch.cuda.get_device_name(0) if on_gpu else f"CPU ({os.cpu_count()} cores)"
    return BenchReport(
        model=model,
        tiny=tiny,
        device=device,
        host=platform.node(),
        taken_at=datetime.now(UTC).isoformat(timespec="seconds"),
        window_s=window_s,
        max_tokens=max_tokens,
        fixed_tokens=fixed_tokens,
        points=points,
        ratio=ratios(points),
        note=TINY_NOTE if tiny else "",
    )


def report_lines(report: BenchReport) -> list[str]:
    lines = [
        f"model {report.model}{' (tiny, random weights)' if report.tiny else ''} on {report.device}",
        f"{report.window_s:g} s windows, {report.max_tokens} output tokens each"
        + (" (fixed)" if report.fixed_tokens else " (at most)"),
        f"{'engine':<13}{'conc':>5}{'audio s':>9}{'wall s':>9}{'audio s/s':>11}{'tok/s':>9}{'latency s':>11}{'peak batch':>11}",
    ]
    for p in report.points:
        lines.append(
            f"{p.engine:<13}{p.concurrency:>5}{p.audio_s:>9.1f}{p.wall_s:>9.2f}{p.audio_s_per_s:>11.2f}"
            f"{p.output_tokens_per_s:>9.1f}{p.mean_latency_s:>11.2f}{(p.peak_running if p.peak_running is not None else '-'):>11}"
        )
    if report.ratio:
        lines.append("vLLM / transformers: " + ", ".join(f"c={c}: {r:g}x" for c, r in report.ratio.items()))
    if report.note:
        lines.append(f"note: {report.note}")
    return lines


__all__ = ["BenchPoint", "BenchReport", "bench_engine", "noise_windows", "ratios", "report_lines", "run_benchmark"]
