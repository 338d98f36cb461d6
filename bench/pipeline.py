"""What the pipeline costs on top of the engine (issue 13).

    .venv/bin/python bench/pipeline.py                       # tiny checkpoint on the CPU build of vLLM
    .venv/bin/python bench/pipeline.py --recordings 48 --seconds 30 --engine-cpus 0-3
    .venv/bin/python bench/pipeline.py --no-trace            # the service without OTLP export

The same windows are captioned twice, at saturation, with the same engine settings:

(a) **engine alone**: the Captioner's engine, built by the deployment's own code from the same
    settings, every window submitted at once; the clock runs from the first submission to the
    last answer;
(b) **the service**: what `listenpost serve` runs (embedded nats-server, Ray Serve, the four
    deployments), every recording published at once as ``audio.submitted`` on NATS; the clock
    runs from the first publish to the last ``audio.captioned`` seen on NATS.

The windows of (a) are cut by the preprocessing core from the same recordings, so both runs
caption exactly the same audio. vLLM's model threads are bound to ``--engine-cpus`` in both runs
(``captioner.cpu_threads_bind``); once everything has started, every other process and thread
(vLLM's scheduler and front end, Ray, the replicas, nats-server, this driver) is pinned to the
remaining cores, as a GPU would leave the CPUs to the pipeline.

Reports, in a table and as JSON plus a plot under bench/results/: audio-seconds per second of
both and their ratio (target: (b) >= 0.95 x (a)); CPU seconds per process group; CPU spent
outside the engine per audio-second, as "x real time per core" (target: 200); and the
per-stage breakdown from the service's own traces (a real OTLP endpoint in this process).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import platform
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from load import speechlike_wav
from otlp_receiver import ExportedSpan, OtlpReceiver
from pydantic import BaseModel, Field

from services.captioner.deployment import make_engine
from services.events.binding import decode, new_event
from services.events.claimcheck import resolve_data
from services.events.connection import connect
from services.events.jetstream import derive_msg_id, publish_event
from services.events.models import AUDIO_CAPTIONED, AUDIO_SUBMITTED, AudioSubmitted
from services.preprocess.pipeline import prepare
from services.settings import CaptionerSettings, NatsSettings, PreprocessSettings, Settings

REPO = Path(__file__).resolve().parents[1]
TARGET_RATIO = 0.95
TARGET_REALTIME_PER_CORE = 200.0
SAMPLE_RATE = 16_000
#: vLLM's own processes: the model's threads and the engine core's scheduler. A GPU replica has both.
ENGINE_GROUPS = ("vllm model (engine cores)", "vllm scheduler")


class Run(BaseModel):
    label: str
    wall_s: float = Field(description="First submission to last caption.")
    windows: int
    audio_s: float = Field(description="Audio seconds in the captioned windows.")
    output_tokens: int
    audio_s_per_s: float
    failed: int = 0
    cpu_s: dict[str, float] = Field(description="CPU seconds (user + system) per process group during the run.")


class Stage(BaseModel):
    span: str
    count: int
    mean_ms: float = Field(description="Mean span duration.")
    ms_per_audio_s: float = Field(description="Summed span time per audio-second captioned.")


class PipelineReport(BaseModel):
    model: str
    tiny: bool
    host: str
    cpus: int
    taken_at: str
    engine_cpus: list[int]
    pipeline_cpus: list[int]
    recordings: int
    recording_s: float
    max_tokens: int
    max_num_seqs: int
    traced: bool
    engine: Run
    service: Run
    ratio: float = Field(description="Service audio-s/s over engine-alone audio-s/s.")
    target_ratio: float = TARGET_RATIO
    pipeline_cpu_s_per_audio_s: float = Field(
        description="CPU seconds of (b) outside vLLM's processes, its front end (measured in (a)) and the "
        "bench driver, per audio-second."
    )
    pipeline_realtime_per_core: float
    target_realtime_per_core: float = TARGET_REALTIME_PER_CORE
    stages: list[Stage]
    note: str = ""


# --- CPU: pinning and accounting -------------------------------------------------------------


def process_group(proc: psutil.Process) -> str:
    """Which part of the stack a process is, from the titles vLLM, Ray and Serve give them."""
    try:
        title = " ".join(proc.cmdline()) or proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "gone"
    if title.startswith("VLLM::Worker"):
        return "vllm model (engine cores)"
    if title.startswith("VLLM::"):
        return "vllm scheduler"
    if proc.pid == os.getpid():
        return "bench driver"
    for deployment in ("Captioner", "Ingress", "Preprocessor", "RulesEngine"):
        if f"ServeReplica:listenpost:{deployment}" in title:
            return deployment
    if "nats-server" in title:
        return "nats-server"
    if "ServeController" in title or "ProxyActor" in title:
        return "serve controller and proxy"
    return "ray system"


def stack() -> list[psutil.Process]:
    me = psutil.Process()
    return [me, *me.children(recursive=True)]


def pin(engine_cpus: set[int], pipeline_cpus: set[int]) -> dict[str, int]:
    """Every thread of vLLM's processes (the model's and the engine core's, whose scheduler
    busy-waits on the model while it runs) on the engine cores, every other one on the rest.

    Threads keep the mask they are created with, so new ones follow their process."""
    pinned: dict[str, int] = defaultdict(int)
    for proc in stack():
        group = process_group(proc)
        cpus = engine_cpus if group in ENGINE_GROUPS else pipeline_cpus
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            for thread in proc.threads():
                with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
                    os.sched_setaffinity(thread.id, cpus)
                    pinned[group] += 1
    return dict(pinned)


def cpu_seconds() -> dict[int, tuple[str, float]]:
    seconds = {}
    for proc in stack():
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            times = proc.cpu_times()
            seconds[proc.pid] = (process_group(proc), times.user + times.system)
    return seconds


def cpu_delta(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    groups: dict[str, float] = defaultdict(float)
    for pid, (group, spent) in after.items():
        groups[group] += spent - before.get(pid, (group, 0.0))[1]
    return {g: round(s, 3) for g, s in sorted(groups.items(), key=lambda kv: -kv[1])}


def parse_cpus(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


# --- the workload ----------------------------------------------------------------------------


def recordings(count: int, seconds: float) -> list[bytes]:
    return [speechlike_wav(seconds, seed) for seed in range(count)]


def submitted_data(recording: bytes, index: int) -> dict[str, Any]:
    return {"audio": {"data_base64": base64.b64encode(recording).decode()}, "context": {"callid": f"pipeline-{index}"}}


def cut_windows(recs: Sequence[bytes], pre: PreprocessSettings) -> list[np.ndarray]:
    """The windows the Preprocessor will cut from these recordings (the same pure function)."""
    windows = []
    for i, rec in enumerate(recs):
        prepared = prepare(rec, AudioSubmitted.model_validate(submitted_data(rec, i)), pre)
        windows += [w.samples for w in prepared.windows]
    return windows


# --- (a) the engine alone --------------------------------------------------------------------


async def engine_alone(
    cap: CaptionerSettings, window_s: float, windows: Sequence[np.ndarray], cpus: tuple[set[int], set[int]]
) -> Run:
    os.environ.update(cap.engine_env())  # what the Captioner replica's runtime_env sets
    engine = make_engine(cap, window_s)
    await engine.start()
    try:
        pin(*cpus)
        await engine.caption(windows[0], "warmup")
        before = cpu_seconds()
        started = time.perf_counter()
        results = await asyncio.gather(*(engine.caption(w, f"engine-{i}") for i, w in enumerate(windows)))
        wall = time.perf_counter() - started
        spent = cpu_delta(before, cpu_seconds())
    finally:
        await engine.shutdown()
    audio_s = sum(w.shape[0] for w in windows) / SAMPLE_RATE
    return Run(
        label="engine alone",
        wall_s=round(wall, 3),
        windows=len(windows),
        audio_s=round(audio_s, 3),
        output_tokens=sum(r.output_tokens for r in results),
        audio_s_per_s=round(audio_s / wall, 3),
        cpu_s=spent,
    )


# --- (b) the service -------------------------------------------------------------------------


async def drive_service(nats: NatsSettings, recs: Sequence[bytes], timeout_s: float) -> tuple[Run, float]:
    """Publish every recording at once and wait for each one's outcome; returns the run and
    the wall-clock start (epoch seconds) for the spans."""
    nc = await connect(nats, role="operator", name="listenpost-bench-pipeline")
    js = nc.jetstream()
    outcomes: dict[str, Any] = {}
    done = asyncio.Event()
    expected: set[str] = set()

    async def on_output(msg: Any) -> None:
        event = decode(msg.data, msg.headers)
        attributes = event.get_attributes()
        input_id = attributes.get("inputid") or attributes.get("originalid")
        if input_id in expected and input_id not in outcomes:
            # A captioned event too large for NATS names its data in the outputs bucket.
            outcomes[input_id] = (event.get_type(), await resolve_data(js, event, buckets=[nats.outputs_bucket]))
            if len(outcomes) == len(expected):
                done.set()

    subs = [await nc.subscribe(nats.subject("captioned"), cb=on_output),
            await nc.subscribe(nats.subject("dlq", ">"), cb=on_output)]  # fmt: skip

    async def submit(index: int, rec: bytes) -> None:
        event = new_event(AUDIO_SUBMITTED, "urn:listenpost:bench", submitted_data(rec, index), id=f"bench-{uuid.uuid4()}")
        expected.add(event.get_id())
        await publish_event(js, nats.subject("in", "bench"), event,
                            msg_id=derive_msg_id("submit", event.get_source(), event.get_id()))  # fmt: skip

    try:
        await submit(-1, recs[0])  # warm-up: first-request costs off the clock
        await asyncio.wait_for(done.wait(), timeout_s)
        expected.clear(), outcomes.clear(), done.clear()
        before, wall_start = cpu_seconds(), time.time()
        started = time.perf_counter()
        await asyncio.gather(*(submit(i, rec) for i, rec in enumerate(recs)))
        await asyncio.wait_for(done.wait(), timeout_s)
        wall = time.perf_counter() - started
        spent = cpu_delta(before, cpu_seconds())
    finally:
        for sub in subs:
            await sub.unsubscribe()
        await nc.drain()
    captioned = [data for kind, data in outcomes.values() if kind == AUDIO_CAPTIONED]
    windows = [w for data in captioned for w in data["windows"]]
    audio_s = sum(w["end"] - w["start"] for w in windows)
    run = Run(
        label="service",
        wall_s=round(wall, 3),
        windows=len(windows),
        audio_s=round(audio_s, 3),
        output_tokens=sum(w["output_tokens"] for w in windows),
        audio_s_per_s=round(audio_s / wall, 3),
        failed=len(outcomes) - len(captioned),
        cpu_s=spent,
    )
    return run, wall_start


def service_run(
    settings: Settings, recs: Sequence[bytes], cpus: tuple[set[int], set[int]], receiver: OtlpReceiver | None
) -> tuple[Run, list[ExportedSpan]]:
    from services.runner import running_service

    env = {"PYTHONPATH": str(REPO)}
    if receiver is not None:
        env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_BSP_SCHEDULE_DELAY": "500"}  # fmt: skip
    with running_service(settings, ray_num_cpus=8, runtime_env={"env_vars": env}) as effective:
        pin(*cpus)
        run, wall_start = asyncio.run(drive_service(effective.nats, recs, timeout_s=600))
        time.sleep(2.0)  # the replicas' span batches
    spans = [s for s in (receiver.spans if receiver else []) if s.start_ns >= wall_start * 1e9]
    return run, spans


def stage_breakdown(spans: Sequence[ExportedSpan], audio_s: float) -> list[Stage]:
    by_name: dict[str, list[float]] = defaultdict(list)
    for span in spans:
        by_name[span.name].append(span.duration_s)
    stages = [
        Stage(
            span=name,
            count=len(durations),
            mean_ms=round(1000 * sum(durations) / len(durations), 2),
            ms_per_audio_s=round(1000 * sum(durations) / audio_s, 3) if audio_s else 0.0,
        )
        for name, durations in by_name.items()
    ]
    return sorted(stages, key=lambda s: -s.ms_per_audio_s)


# --- the report ------------------------------------------------------------------------------

def pipeline_cpu_per_audio_s(engine: Run, service: Run) -> float:
    """CPU outside the engine per audio-second of (b).

    Outside the engine: every process of (b) but vLLM's own and this driver (the producer and
    consumer of the events, not the pipeline), less vLLM's front end (tokenising, audio features,
    detokenising), which runs inside the Captioner replica in (b) and is what the driver spent
    in (a), where the engine's front end was all the driver did.
    """
    outside_b = sum(s for g, s in service.cpu_s.items() if g not in (*ENGINE_GROUPS, "bench driver"))
    front_end = engine.cpu_s.get("bench driver", 0.0)
    return max(0.0, outside_b - front_end) / service.audio_s if service.audio_s else float("nan")


def print_report(report: PipelineReport) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    runs = Table(title=f"the same {report.engine.windows} windows, engine on cores {report.engine_cpus}")
    for column in ("run", "wall s", "windows", "audio s", "output tokens", "audio-s/s", "failed"):
        runs.add_column(column, justify="left" if column == "run" else "right")
    for run in (report.engine, report.service):
        runs.add_row(run.label, f"{run.wall_s:.2f}", str(run.windows), f"{run.audio_s:.0f}", str(run.output_tokens),
                     f"{run.audio_s_per_s:.1f}", str(run.failed))  # fmt: skip
    console.print(runs)
    verdict = "[green]met[/]" if report.ratio >= report.target_ratio else "[red]missed[/]"
    console.print(f"service / engine alone: [bold]{report.ratio:.3f}[/] (target {report.target_ratio}) {verdict}")
    verdict = "[green]met[/]" if report.pipeline_realtime_per_core >= report.target_realtime_per_core else "[red]missed[/]"
    console.print(
        f"outside the engine: {1000 * report.pipeline_cpu_s_per_audio_s:.2f} CPU ms per audio-second = "
        f"[bold]{report.pipeline_realtime_per_core:.0f}x[/] real time per core "
        f"(target {report.target_realtime_per_core:.0f}x) {verdict}"
    )
    cpu = Table(title="CPU seconds by process group")
    cpu.add_column("group")
    cpu.add_column("engine alone", justify="right")
    cpu.add_column("service", justify="right")
    for group in dict.fromkeys([*report.service.cpu_s, *report.engine.cpu_s]):
        cpu.add_row(group, f"{report.engine.cpu_s.get(group, 0):.2f}", f"{report.service.cpu_s.get(group, 0):.2f}")
    console.print(cpu)
    if report.stages:
        stages = Table(title="stages (service traces; spans nest, so shares do not add up)")
        for column in ("span", "count", "mean ms", "ms per audio-s"):
            stages.add_column(column, justify="left" if column == "span" else "right")
        for s in report.stages:
            stages.add_row(s.span, str(s.count), f"{s.mean_ms:.1f}", f"{s.ms_per_audio_s:.2f}")
        console.print(stages)


def plot(report: PipelineReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = [report.engine.label, report.service.label]
    left.bar(labels, [report.engine.audio_s_per_s, report.service.audio_s_per_s], color=["#777", "#3a7"])
    left.axhline(report.engine.audio_s_per_s * report.target_ratio, linestyle="--", color="k")
    left.text(0.5, report.engine.audio_s_per_s * report.target_ratio, f" {report.target_ratio} x engine", va="bottom")
    left.set_ylabel("audio-seconds captioned per second")
    left.set_title(f"ratio {report.ratio:.3f}")
    stages = [s for s in report.stages if s.span != "ingest"][:10][::-1]
    right.barh([s.span for s in stages], [s.ms_per_audio_s for s in stages])
    right.set_xlabel("span ms per audio-second (service)")
    right.set_title("where the time goes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


@contextlib.contextmanager
def otlp(enabled: bool) -> Iterator[OtlpReceiver | None]:
    receiver = OtlpReceiver() if enabled else None
    try:
        yield receiver
    finally:
        if receiver is not None:
            receiver.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="Checkpoint dir (default: build and use the tiny checkpoint).")
    parser.add_argument("--recordings", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=30.0, help="Length of each recording.")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-num-seqs", type=int, default=32)
    parser.add_argument("--engine-cpus", default="0", help="Cores for vLLM's model threads (the rest: everything else).")
    parser.add_argument("--no-trace", action="store_true", help="Run the service without OTLP export.")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/pipeline.json")
    args = parser.parse_args(argv)

    all_cpus = os.sched_getaffinity(0)
    engine_cpus = parse_cpus(args.engine_cpus)
    pipeline_cpus = all_cpus - engine_cpus
    if not engine_cpus <= all_cpus or not pipeline_cpus:
        raise SystemExit(f"--engine-cpus {args.engine_cpus} must leave at least one of cores {sorted(all_cpus)} free")
    model = args.model
    if model is None:
        from services.captioner.tiny_checkpoint import build_tiny_checkpoint

        model = str(build_tiny_checkpoint(REPO / ".cache/models/tiny-qwen3-omni"))
    cap = CaptionerSettings(
        model=model, dtype="float32", enforce_eager=True, max_model_len=2048, max_num_seqs=args.max_num_seqs,
        max_tokens=args.max_tokens, cpu_kvcache_gib=2, seed=0,
        cpu_threads_bind=",".join(str(c) for c in sorted(engine_cpus)),
    )  # fmt: skip
    pre = PreprocessSettings()
    recs = recordings(args.recordings, args.seconds)
    windows = cut_windows(recs, pre)
    print(f"{len(recs)} recordings of {args.seconds:g} s -> {len(windows)} windows")
    cpus = (engine_cpus, pipeline_cpus)

    engine = asyncio.run(engine_alone(cap, pre.window_s, windows, cpus))
    os.sched_setaffinity(0, all_cpus)  # the service's processes start from the whole machine
    with tempfile.TemporaryDirectory() as tmp, otlp(not args.no_trace) as receiver:
        settings = Settings(
            nats=NatsSettings(data_dir=Path(tmp) / "nats", secrets_dir=Path(tmp) / "secrets"),
            captioner=cap,
            preprocess=pre,
        )
        service, spans = service_run(settings, recs, cpus, receiver)
    ratio = service.audio_s_per_s / engine.audio_s_per_s
    per_audio_s = pipeline_cpu_per_audio_s(engine, service)
    report = PipelineReport(
        model=model,
        tiny=Path(model, "LISTENPOST_TINY.md").exists(),
        host=platform.node(),
        cpus=len(all_cpus),
        taken_at=datetime.now(UTC).isoformat(timespec="seconds"),
        engine_cpus=sorted(engine_cpus),
        pipeline_cpus=sorted(pipeline_cpus),
        recordings=len(recs),
        recording_s=args.seconds,
        max_tokens=args.max_tokens,
        max_num_seqs=args.max_num_seqs,
        traced=not args.no_trace,
        engine=engine,
        service=service,
        ratio=round(ratio, 4),
        pipeline_cpu_s_per_audio_s=round(per_audio_s, 6),
        pipeline_realtime_per_core=round(1 / per_audio_s, 1) if per_audio_s > 0 else float("inf"),
        stages=stage_breakdown(spans, service.audio_s),
        note="" if engine.output_tokens == service.output_tokens else "output tokens differ between the runs",
    )
    print_report(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report.model_dump_json(indent=2) + "\n")
    plot(report, args.out.with_suffix(".png"))
    print(f"report: {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":  # vLLM spawns its engine processes: the guard is required
    main()
