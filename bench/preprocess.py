"""Preprocessing speed (real-time factor on one core) and peak memory, end to end.

    .venv/bin/python bench/preprocess.py [--minutes 10] [--repeat 3] [--cpu 0] [--out bench/results]

Three recordings of the same synthetic 10-minute two-party call (voice-like
speech from tests/audio_factory.py, which Silero labels speech; hold music; a
dead-air gap; -65 dBFS line noise):

- ``wav16_mono``: 16 kHz 16-bit mono WAV (a down-mixed call);
- ``ulaw8_stereo``: 8 kHz mu-law stereo WAV from a PBX, agent left, customer right, roles given (split);
- ``mp3_44k``: 44.1 kHz stereo MP3 at 128 kbit/s, no roles (down-mixed).

Each case runs in its own process pinned to one CPU (``sched_setaffinity``,
one thread everywhere) and times what a Preprocessor replica does per event:
read the file from disk (``fetch_audio``), then ``prepare`` (sniff, decode,
channels, resample to 16 kHz, VAD, windows, acoustics). The VAD model is
loaded before timing, as a replica does at start. Memory: the peak RSS of the
process (VmHWM) above its RSS before the first run, and the tracemalloc peak of one
run (numpy's buffers included), compared with the encoded bytes plus the
16 kHz float32 samples that preprocessing must hold. A second series runs the
mu-law case at several lengths to show memory growing with the decoded
samples only.

Writes bench/results/preprocess.json and bench/results/preprocess.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


TARGET_RTF = 200.0
ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")}


# --- the recordings ---------------------------------------------------------------------------------


def conversation(minutes: float, seed: int = 7) -> tuple[np.ndarray, dict[str, float]]:
    """A two-party call at 16 kHz stereo, with what was scripted into it."""
    from tests.audio_factory import call, music

    rng = np.random.default_rng(seed)
    duration = minutes * 60.0
    turns, t, channel = [], 0.8, 0
    hold = (duration * 0.4, duration * 0.4 + min(30.0, duration * 0.05))  # agent puts the customer on hold
    dead = (duration * 0.7, duration * 0.7 + min(12.0, duration * 0.02))  # nobody says anything
    while t < duration - 3:
        for gap_start, gap_end in (hold, dead):
            if gap_start <= t < gap_end:
                t = gap_end + 0.5
        length = float(rng.uniform(1.5, 14.0))
        end = min(t + length, duration - 1.0)
        for gap_start, _ in (hold, dead):
            if t < gap_start < end:
                end = gap_start
        if end - t > 0.5:
            turns.append((channel, t, end))
        t = end + float(rng.uniform(-0.8, 1.6))  # negative: the next party starts before this one ends
        channel = 1 - channel
    rendered = call(turns, duration, rate=16_000, noise_dbfs=-65, seed=seed)
    samples = rendered.samples
    lo, hi = (int(x * 16_000) for x in hold)
    samples[lo:hi, 1] += music((hi - lo) / 16_000, 16_000, level=0.05)  # hold music to the customer
    overtalk = sum(e - s for s, e in rendered.overtalk())
    return samples, {
        "turns": len(turns),
        "agent_talk_s": round(rendered.talk_s(0), 1),
        "customer_talk_s": round(rendered.talk_s(1), 1),
        "overtalk_s": round(overtalk, 1),
    }


def write_cases(directory: Path, samples: np.ndarray) -> dict[str, dict[str, Any]]:
    import soxr

    from tests.audio_factory import av_bytes, sndfile_bytes

    mono = samples.mean(axis=1)
    pbx = soxr.resample(samples, 16_000, 8_000).astype(np.float32)
    hifi = soxr.resample(samples, 16_000, 44_100).astype(np.float32)
    cases = {
        "wav16_mono": ("call-16k-mono.wav", sndfile_bytes(mono, 16_000, "WAV", "PCM_16"), []),
        "ulaw8_stereo": ("call-8k-ulaw-stereo.wav", sndfile_bytes(pbx, 8_000, "WAV", "ULAW"), ["agent", "customer"]),
        "mp3_44k": ("call-44k-stereo.mp3", av_bytes(hifi, 44_100, "mp3", bit_rate=128_000), []),
    }
    out = {}
    for name, (filename, data, roles) in cases.items():
        path = directory / filename
        path.write_bytes(data)
        out[name] = {"path": str(path), "roles": roles}
    return out


# --- one case, in a pinned child process ------------------------------------------------------------


def _status_kib(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process, in KiB. (ru_maxrss would not do: Linux carries it
    across exec, so a child started by a big parent reports the parent's size.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def child(path: Path, roles: list[str], repeat: int, cpu: int) -> dict[str, Any]:
    os.sched_setaffinity(0, {cpu})
    from services.events.models import AudioRef, AudioSubmitted, ChannelRole
    from services.preprocess.pipeline import decode_channels, prepare
    from services.preprocess.sources import fetch_audio
    from services.preprocess.vad import SpeechDetector, VadParams, default_detector

    default_vad = VadParams()
    from services.settings import PreprocessSettings

    class TimedDetector(SpeechDetector):
        """The replica's detector, with a stopwatch on the VAD."""

        def __init__(self) -> None:
            self._session = default_detector()._session
            self.seconds = 0.0

        def segments(self, samples: np.ndarray, params: VadParams = default_vad) -> np.ndarray:
            started = time.process_time()
            try:
                return super().segments(samples, params)
            finally:
                self.seconds += time.process_time() - started

    settings = PreprocessSettings(file_roots=[path.parent])
    submitted = AudioSubmitted(
        audio=AudioRef(uri=str(path)), channels=[ChannelRole(index=i, role=r) for i, r in enumerate(roles)]
    )

    # One long-lived loop, as in a replica. (Not asyncio.run: on Python 3.11 it formats the repr of its
    # task, result included, when it restores the SIGINT handler: a transient 4x copy of the audio.)
    loop = asyncio.new_event_loop()

    def run(detector: SpeechDetector) -> tuple[float, float, Any]:
        """Wall and CPU seconds (all threads of the process) of one event's preprocessing."""
        started, cpu_started = time.perf_counter(), time.process_time()
        fetch = fetch_audio(submitted.audio, roots=settings.file_roots, max_bytes=settings.max_bytes)
        data = loop.run_until_complete(fetch)
        prepared = prepare(data, submitted, settings, detector=detector)
        return time.perf_counter() - started, time.process_time() - cpu_started, prepared

    detector = TimedDetector()
    detector.segments(np.zeros(16_000, np.float32) + 0.01)  # warm the ONNX session, as a replica's start does
    baseline_kib = _status_kib("VmRSS")
    walls, cpus, vad = [], [], []
    prepared = None
    for _ in range(repeat):
        detector.seconds = 0.0
        wall, cpu_s, prepared = run(detector)
        walls.append(wall)
        cpus.append(cpu_s)
        vad.append(detector.seconds)
    peak_rss_kib = _status_kib("VmHWM")
    assert prepared is not None
    # Decoding, channel routing and resampling alone (the first stage of prepare), timed apart.
    data = path.read_bytes()
    started = time.process_time()
    _, kept = decode_channels(data, submitted, settings)
    decode_s = time.process_time() - started
    decoded_bytes = sum(c.samples.nbytes for c in kept)
    del kept
    tracemalloc.start()
    run(detector)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    duration = prepared.facts.duration_s
    median = statistics.median(walls)
    cpu_median = statistics.median(cpus)
    a = prepared.acoustics
    return {
        "file": path.name,
        "format": f"{prepared.facts.format}/{prepared.facts.codec}",
        "sample_rate": prepared.facts.sample_rate,
        "channels": prepared.facts.channels,
        "roles": roles,
        "duration_s": duration,
        "encoded_mib": round(len(data) / 2**20, 2),
        "wall_s": {"median": round(median, 3), "min": round(min(walls), 3), "runs": [round(w, 3) for w in walls]},
        "cpu_s": {"median": round(cpu_median, 3), "runs": [round(c, 3) for c in cpus]},
        # Per core: audio seconds per CPU second of the pinned process (equal to the wall-clock figure on an
        # idle machine; unlike it, not inflated when other work shares the core).
        "rtf_one_core": round(duration / cpu_median, 1),
        "rtf_wall": round(duration / median, 1),
        "rtf_wall_best": round(duration / min(walls), 1),
        "stages_cpu_s": {
            "decode_resample": round(decode_s, 3),
            "vad": round(statistics.median(vad), 3),
            "read_windows_acoustics": round(max(cpu_median - decode_s - statistics.median(vad), 0.0), 3),
        },
        "memory_mib": {
            "peak_rss_over_baseline": round((peak_rss_kib - baseline_kib) / 1024, 1),
            "traced_peak": round(traced_peak / 2**20, 1),
            "encoded_plus_decoded_16k": round((len(data) + decoded_bytes) / 2**20, 1),
            "baseline_rss": round(baseline_kib / 1024, 1),
        },
        "windows": len(prepared.windows),
        "acoustics": {
            "speech_ratio": a.speech_ratio,
            "talk_time_s": a.talk_time_s,
            "overtalk_s": a.overtalk_s,
            "dead_air_s": a.dead_air_s,
            "loudness_lufs": a.loudness_lufs,
        },
    }


def run_child(path: str, roles: list[str], repeat: int, cpu: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", path, "--roles", ",".join(roles), "--repeat", str(repeat),
               "--cpu", str(cpu)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **ONE_THREAD}, check=False)
    if done.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- report -----------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import av
    import onnxruntime
    import soundfile
    import soxr

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "versions": {"av": av.__version__, "libsndfile": soundfile.__libsndfile_version__,
                     "soxr": soxr.__version__, "onnxruntime": onnxruntime.__version__},  # fmt: skip
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (speed, memory) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = [c["case"] for c in result["cases"]]
    rtf = [c["rtf_one_core"] for c in result["cases"]]
    wall = [c["rtf_wall"] for c in result["cases"]]
    x = np.arange(len(names))
    bars = speed.bar(x - 0.2, rtf, 0.4, color="#4c72b0", label="audio s per CPU s (pinned process)")
    walls = speed.bar(x + 0.2, wall, 0.4, color="#a1c9f4", label="audio s per wall s (median)")
    speed.set_xticks(x, names)
    speed.axhline(TARGET_RTF, color="black", linestyle="--", linewidth=1, label=f"target {TARGET_RTF:.0f}x")
    speed.bar_label(bars, [f"{r:.0f}x" for r in rtf])
    speed.bar_label(walls, [f"{r:.0f}x" for r in wall])
    speed.set_ylabel("real-time factor, one core (higher is faster)")
    speed.set_title(f"{result['minutes']:.0f}-minute call, end to end")
    speed.legend(loc="lower right", fontsize=8)
    scaling = result["memory_scaling"]
    minutes = [s["minutes"] for s in scaling]
    memory.plot(minutes, [s["traced_peak_mib"] for s in scaling], "o-", label="traced peak (one run)")
    memory.plot(minutes, [s["rss_over_baseline_mib"] for s in scaling], "s-", label="peak RSS over baseline")
    memory.plot(minutes, [s["encoded_plus_decoded_16k_mib"] for s in scaling], "k--",
                label="encoded bytes + 16 kHz samples")  # fmt: skip
    memory.set_xlabel("call length, minutes (8 kHz mu-law stereo, split)")
    memory.set_ylabel("MiB")
    memory.set_title("peak memory against call length")
    memory.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cpu", type=int, default=0, help="the one CPU each case is pinned to")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--roles", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        roles = [r for r in args.roles.split(",") if r]
        print(json.dumps(child(Path(args.child), roles, args.repeat, args.cpu)))
        return

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="listenpost-bench-") as tmp:
        print(f"making a {args.minutes:g}-minute call (synthetic speech, three encodings)...", flush=True)
        samples, script = conversation(args.minutes)
        cases = write_cases(Path(tmp), samples)
        results = []
        for name, case in cases.items():
            print(f"  {name}...", flush=True)
            results.append({"case": name, **run_child(case["path"], case["roles"], args.repeat, args.cpu)})
        scaling = []
        from tests.audio_factory import sndfile_bytes

        for fraction in (0.25, 0.5, 1.0):
            part = samples[: int(samples.shape[0] * fraction)]
            path = Path(tmp) / f"scale-{fraction}.wav"
            import soxr

            path.write_bytes(sndfile_bytes(soxr.resample(part, 16_000, 8_000).astype(np.float32), 8_000, "WAV", "ULAW"))
            print(f"  memory at {args.minutes * fraction:g} min...", flush=True)
            r = run_child(str(path), ["agent", "customer"], 1, args.cpu)
            scaling.append({
                "minutes": args.minutes * fraction,
                "traced_peak_mib": r["memory_mib"]["traced_peak"],
                "rss_over_baseline_mib": r["memory_mib"]["peak_rss_over_baseline"],
                "encoded_plus_decoded_16k_mib": r["memory_mib"]["encoded_plus_decoded_16k"],
            })  # fmt: skip
    result = {
        "benchmark": "preprocess",
        "what": "fetch from disk + prepare (decode, channels, 16 kHz soxr, Silero VAD, windows, acoustics), one core",
        "target_rtf": TARGET_RTF,
        "minutes": args.minutes,
        "repeat": args.repeat,
        "machine": machine(),
        "script": script,
        "cases": results,
        "memory_scaling": scaling,
        "met_target": all(c["rtf_one_core"] >= TARGET_RTF for c in results),
        "bench_s": round(time.perf_counter() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "preprocess.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out / "preprocess.png")

    print(f"\n{'case':14} {'format':22} {'wall s':>7} {'cpu s':>6} {'RTF/core':>9} {'decode':>7} {'vad':>6} "
          f"{'rest':>6} {'RSS+ MiB':>9} {'traced':>7} {'enc+16k':>8}")  # fmt: skip
    for c in results:
        st, mem = c["stages_cpu_s"], c["memory_mib"]
        print(f"{c['case']:14} {c['format']:22} {c['wall_s']['median']:7.2f} {c['cpu_s']['median']:6.2f} "
              f"{c['rtf_one_core']:8.0f}x "
              f"{st['decode_resample']:7.2f} {st['vad']:6.2f} {st['read_windows_acoustics']:6.2f} "
              f"{mem['peak_rss_over_baseline']:9.1f} {mem['traced_peak']:7.1f} "
              f"{mem['encoded_plus_decoded_16k']:8.1f}")  # fmt: skip
    print("\nmemory by length (mu-law stereo):", ", ".join(
        f"{s['minutes']:g} min: traced {s['traced_peak_mib']} MiB (enc+16k {s['encoded_plus_decoded_16k_mib']})"
        for s in scaling))  # fmt: skip
    print(f"target {TARGET_RTF:.0f}x per core: {'met' if result['met_target'] else 'NOT met'}; "
          f"wrote {args.out / 'preprocess.json'} and {args.out / 'preprocess.png'}")


if __name__ == "__main__":
    main()
