"""Cold start (issue 13): `scripts/serve.sh` to ready and to its first caption, and one Captioner replica.

    .venv/bin/python bench/coldstart.py                 # both, once each
    .venv/bin/python bench/coldstart.py --runs 3        # medians of three

1. **`scripts/serve.sh`**, as a user runs it (the venv already built): from the command to the
   "listenpost is running" banner (embedded nats-server, Ray, the four deployments, the engine),
   then `listenpost submit` of one short call until its caption, then Ctrl-C until the process
   has exited.
2. **One Captioner replica** on a running Ray: `serve.run` of the Captioner deployment alone,
   with the deployment's own options, until the replica is healthy (the actor's process, imports,
   weights, the engine's start), split from the engine's own start measured in-process.

On a CPU the engine is the tiny checkpoint: these figures are the machinery's, not the 30B
model's loading time (see bench/README.md). Writes bench/results/coldstart.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import soundfile
from pydantic import BaseModel, Field

REPO = Path(__file__).resolve().parents[1]
READY_BANNER = "listenpost is running"


class ServeStart(BaseModel):
    to_ready_s: float = Field(description="`bash scripts/serve.sh` to the ready banner.")
    to_first_caption_s: float = Field(description="`listenpost submit` of a 3 s call, to its caption.")
    stop_s: float = Field(description="Ctrl-C to the process's exit.")


class ReplicaStart(BaseModel):
    replica_s: float = Field(description="serve.run of the Captioner alone to a healthy replica.")
    engine_in_process_s: float = Field(
        description="The engine's own start in this process: vLLM's imports, its engine processes, weights, KV cache."
    )


class ColdStartReport(BaseModel):
    host: str
    cpus: int
    taken_at: str
    model: str
    serve: list[ServeStart]
    replica: list[ReplicaStart]
    median: dict[str, float]


def short_call(path: Path) -> Path:
    t = np.arange(3 * 16_000) / 16_000
    samples = (0.3 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    buf = io.BytesIO()
    soundfile.write(buf, samples, 16_000, format="WAV", subtype="PCM_16")
    path.write_bytes(buf.getvalue())
    return path


def serve_start(call: Path, timeout_s: float = 900) -> ServeStart:
    """One `scripts/serve.sh` from cold (no Ray running), as a user types it."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    started = time.monotonic()
    proc = subprocess.Popen(
        ["bash", "scripts/serve.sh"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True,  # Ctrl-C below goes to it alone
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if READY_BANNER in line:
                break
            if time.monotonic() - started > timeout_s:
                raise TimeoutError("serve.sh did not get ready")
        else:
            raise RuntimeError(f"serve.sh exited ({proc.wait()}) before it was ready")
        ready = time.monotonic() - started
        submitted = time.monotonic()
        subprocess.run(
            [str(REPO / ".venv/bin/listenpost"), "submit", str(call), "--timeout", "300"],
            cwd=REPO, check=True, capture_output=True, timeout=330,
        )  # fmt: skip
        first_caption = time.monotonic() - submitted
        stopping = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=300)
        return ServeStart(
            to_ready_s=round(ready, 2), to_first_caption_s=round(first_caption, 2), stop_s=round(time.monotonic() - stopping, 2)
        )
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def replica_start(model: str) -> ReplicaStart:
    import ray
    from ray import serve

    from services.captioner.deployment import Captioner, make_engine
    from services.settings import CaptionerSettings, NatsSettings, Settings

    cap = CaptionerSettings(model=model, dtype="float32", enforce_eager=True, max_model_len=2048, cpu_kvcache_gib=1)
    settings = Settings(nats=NatsSettings(url="nats://127.0.0.1:1"), captioner=cap)  # the Captioner never uses NATS
    ray.init(address="local", num_cpus=4, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})  # never a stale cluster
    try:
        started = time.monotonic()
        serve.run(Captioner.options(**cap.deployment_options()).bind(settings), name="coldstart",
                  route_prefix=None)  # fmt: skip
        replica = time.monotonic() - started
        serve.delete("coldstart")
        serve.shutdown()
    finally:
        ray.shutdown()

    async def engine_start() -> float:
        os.environ.update(cap.engine_env())
        engine = make_engine(cap, 30.0)
        began = time.monotonic()
        await engine.start()
        took = time.monotonic() - began
        await engine.shutdown()
        return took

    return ReplicaStart(replica_s=round(replica, 2), engine_in_process_s=round(asyncio.run(engine_start()), 2))


def print_report(report: ColdStartReport) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"cold start ({report.cpus} CPUs, {Path(report.model).name})")
    table.add_column("what")
    table.add_column("median s", justify="right")
    table.add_column("runs", justify="right")
    runs = {
        "serve.sh to ready": [r.to_ready_s for r in report.serve],
        "ready to first caption": [r.to_first_caption_s for r in report.serve],
        "Ctrl-C to exit": [r.stop_s for r in report.serve],
        "one Captioner replica to healthy": [r.replica_s for r in report.replica],
        "  of which the engine's own start": [r.engine_in_process_s for r in report.replica],
    }
    for what, values in runs.items():
        if values:
            table.add_row(what, f"{statistics.median(values):.1f}", ", ".join(f"{v:.1f}" for v in values))
    Console().print(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--skip-serve", action="store_true", help="Only the Captioner replica.")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/coldstart.json")
    args = parser.parse_args(argv)

    from services.captioner.tiny_checkpoint import build_tiny_checkpoint

    model = str(build_tiny_checkpoint(REPO / ".cache/models/tiny-qwen3-omni"))
    serve_runs: list[ServeStart] = []
    replica_runs: list[ReplicaStart] = []
    with tempfile.TemporaryDirectory() as tmp:
        call = short_call(Path(tmp) / "call.wav")
        for i in range(args.runs):
            if not args.skip_serve:
                serve_runs.append(serve_start(call))
                print(f"run {i + 1}: {serve_runs[-1]}", file=sys.stderr)
            replica_runs.append(replica_start(model))
            print(f"run {i + 1}: {replica_runs[-1]}", file=sys.stderr)
    fields = {
        "to_ready_s": [r.to_ready_s for r in serve_runs],
        "to_first_caption_s": [r.to_first_caption_s for r in serve_runs],
        "stop_s": [r.stop_s for r in serve_runs],
        "replica_s": [r.replica_s for r in replica_runs],
        "engine_in_process_s": [r.engine_in_process_s for r in replica_runs],
    }
    report = ColdStartReport(
        host=platform.node(),
        cpus=os.cpu_count() or 0,
        taken_at=datetime.now(UTC).isoformat(timespec="seconds"),
        model=model,
        serve=serve_runs,
        replica=replica_runs,
        median={k: round(statistics.median(v), 2) for k, v in fields.items() if v},
    )
    print_report(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report.model_dump_json(indent=2) + "\n")
    print(f"report: {args.out}")


if __name__ == "__main__":  # vLLM spawns its engine processes: the guard is required
    main()
