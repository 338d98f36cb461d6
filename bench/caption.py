"""Captioner benchmark: audio-seconds captioned per engine-second, vLLM against transformers.

    .venv/bin/python bench/caption.py --model /path/to/Qwen3-Omni-30B-A3B-Captioner
    .venv/bin/python bench/caption.py --tiny            # the tiny random-weight checkpoint

Runs each engine in turn at concurrency 1, 8, 32 and 128 windows (every window of a level
submitted at once), prints the table and the vLLM / transformers ratio, and writes the report
as JSON under bench/results/. On the tiny checkpoint the figures prove the harness only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]



def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="Checkpoint dir or hub id of the Captioner.")
    which.add_argument("--tiny", action="store_true", help="Build and use the tiny random-weight checkpoint.")
    parser.add_argument("--engines", default="vllm,transformers", help="Comma-separated, in run order.")
    parser.add_argument("--concurrency", default="1,8,32,128", help="Windows in flight per level.")
    parser.add_argument("--window-s", type=float, default=10.0, help="Seconds of audio per window (<= 30).")
    parser.add_argument("--max-tokens", type=int, default=64, help="Output tokens per window.")
    parser.add_argument("--free-length", action="store_true", help="Let windows stop early (default: fixed length).")
    parser.add_argument("--audio", type=Path, help="Cut windows from this recording instead of noise.")
    parser.add_argument("--vllm-arg", action="append", default=[], metavar="KEY=JSON", help="Extra vLLM config field.")
    parser.add_argument("--out", type=Path, help="Report path (default: bench/results/caption-<device>.json).")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # read by the CPU build of vLLM only
    from services.captioner.bench import report_lines, run_benchmark

    model = args.model
    if args.tiny:
        from services.captioner.tiny_checkpoint import build_tiny_checkpoint

        model = str(build_tiny_checkpoint(REPO / ".cache" / "models" / "tiny-qwen3-omni"))
    vllm_overrides = {k: json.loads(v) for k, v in (a.split("=", 1) for a in args.vllm_arg)}
    report = asyncio.run(
        run_benchmark(
            model,
            engines=[e.strip() for e in args.engines.split(",") if e.strip()],
            concurrencies=[int(c) for c in args.concurrency.split(",")],
            window_s=args.window_s,
            max_tokens=args.max_tokens,
            fixed_tokens=not args.free_length,
            audio=args.audio,
            overrides={"vllm": vllm_overrides},
        )
    )
    print("\n".join(report_lines(report)))
    kind = "tiny-cpu" if report.tiny and "CPU" in report.device else report.device.lower().replace(" ", "-")
    out = args.out or REPO / "bench" / "results" / f"caption-{kind}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.model_dump_json(indent=2) + "\n")
    print(f"report: {out}")


if __name__ == "__main__":  # vLLM spawns its engine process: the guard is required
    main()
