"""Rules engine speed: evaluation throughput per core, and end-to-end latency on NATS.

    .venv/bin/python bench/rules.py [--events 4000] [--seconds 20] [--rate 100] [--cpu N] [--out bench/results]

1. **Evaluation only** (one process pinned to one CPU, no I/O): events per second
   through :func:`services.rules.evaluate` with the 10 shipped rules
   (router_rules/) and with 200 rules (the shipped ones plus 190 generated
   variants of them: per-queue emotion and silence rules, sound alerts, caption
   words, CEL ``exists`` rules, a few ``for:`` rules; most say
   ``continue: true`` so that first-match-wins does not cut evaluation short).
   Two 200-rule sets: ``mixed`` (with 5 % ``for:`` rules and 10 % CEL
   ``exists`` comprehensions) and ``stateless`` (the same intents written with
   the helpers only, no ``for:``).
   Events are realistic captioned calls, seeded: 1-6 time slots of split
   agent/customer windows with ~150-character captions, 2-8 emotion facets,
   0-3 sound events, the full acoustics, CRM context; 60 % ordinary calls, the
   rest angry, distressed, security and quality cases.
   Three ways to evaluate, same rules, same events; every condition is evaluated by the
   ``cel`` library in all three:

   - ``engine`` (library + pre-filter): what the service runs: the trigger pre-filter
     skips rules whose trigger facts the event lacks, the library is given only the
     fields the candidate rules read (one CEL context per rule set and thread, reused),
     and the rules evaluated for every event run in one library call (a batch);
   - ``no-prefilter``: the same without the pre-filter (every applicable rule runs);
   - ``naive``: a fresh CEL context per event with every variable converted
     (and cel.stdlib registered), every applicable rule executed.

   Rates are reported on CPU time of the pinned process (what one core can do;
   this machine is shared, so wall time is noisier) and on wall time.

2. **End to end** (captioned event stored -> decision stored): an embedded
   nats-server, and the RulesEngine deployment's own class started without Ray
   (its PullConsumer, RulesProcessor, NATS KV state and publishing: the code a
   replica runs), 200 rules. Captioned events are published at ``--rate``
   per second; a final catch-all tag rule makes every event end with a
   decision. Latency is the difference between the JetStream stored times of
   the captioned event and of its first and its last decision (both are the
   server's clock).

Writes bench/results/rules.json and bench/results/rules.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from services.dsl.cel_checks import new_context
from services.rules import evaluate, load_ruleset, rule_variables
from services.rules.ruleset import RuleSet

REPO = Path(__file__).resolve().parents[1]

CAPTIONED = "com.listenpost.audio.captioned"
#: Events per second one core must evaluate with 200 rules (mixed): a GPU Captioner replica
#: produces a few captioned calls per second, a live stream a window every few seconds.
TARGET_PER_S = 5_000
QUEUES = [f"q{i}" for i in range(12)] + ["billing", "sales", "claims", "support"]
TIERS = ["gold"] * 2 + ["platinum"] + ["silver"] * 6 + ["bronze"] * 6 + [None] * 5
WORDS = "the customer asks about an invoice and the agent explains the plan options calmly with some pauses".split()
KEYWORDS = ["cancel", "refund", "manager", "lawyer", "complaint", "close my account", "switch provider"]
CALM = ["calm", "neutral", "joy"]


# --- events ---------------------------------------------------------------------------


def caption(rng: random.Random, n: int = 25, keyword: bool = False) -> str:
    words = [rng.choice(WORDS) for _ in range(n)]
    if keyword:
        words.insert(rng.randrange(len(words)), rng.choice(KEYWORDS))
    return " ".join(words).capitalize() + "."


def realistic_event(rng: random.Random, i: int) -> tuple[dict[str, Any], dict[str, Any]]:
    kind = rng.choices(["ordinary", "angry", "distress", "security", "quality"], [60, 15, 5, 5, 15])[0]
    slots = rng.randint(1, 6)
    windows, emotions, sounds = [], [], []
    for s in range(slots):
        for channel, role in ((0, "agent"), (1, "customer")):
            index = len(windows)
            windows.append(
                {"index": index, "start": 30.0 * s, "end": 30.0 * (s + 1), "channel": channel, "role": role,
                 "caption": caption(rng, keyword=rng.random() < 0.01), "prompt_tokens": 400, "output_tokens": 40, "engine_s": 0.4}
            )  # fmt: skip
    for _ in range(rng.randint(2, 8)):
        w = rng.choice(windows)
        label = rng.choice(CALM)
        intensity = rng.uniform(0.2, 0.9)
        if kind == "angry" and w["role"] == "customer" and rng.random() < 0.7:
            label, intensity = rng.choice(["anger", "frustration"]), rng.uniform(0.5, 0.95)
        elif kind == "distress" and rng.random() < 0.6:
            label, intensity = rng.choice(["distress", "fear", "sadness"]), rng.uniform(0.5, 0.95)
        elif rng.random() < 0.1:
            label, intensity = "frustration", rng.uniform(0.2, 0.5)
        emotions.append({"role": w["role"], "label": label, "intensity": round(intensity, 2), "window": w["index"],
                         "start": w["start"] + 2, "end": w["start"] + 8, "span": caption(rng, 6)})  # fmt: skip
    for _ in range(rng.randint(0, 3) if kind != "security" else rng.randint(1, 3)):
        w = rng.choice(windows)
        label = rng.choice(["music", "dog_bark", "applause", "keyboard"])
        if kind == "security":
            label = rng.choice(["glass_breaking", "alarm", "gunshot", "screaming", "siren"])
        sounds.append({"label": label, "confidence": round(rng.uniform(0.4, 0.95), 2), "window": w["index"],
                       "start": w["start"] + 5, "end": w["start"] + 6, "span": "a sound in the background"})  # fmt: skip
    duration = 30.0 * slots
    silence = rng.uniform(0.45, 0.7) if kind == "quality" and rng.random() < 0.5 else rng.uniform(0.02, 0.25)
    acoustics = {
        "duration_s": duration, "silence_ratio": round(silence, 3),
        "longest_silence_s": round(rng.uniform(5.0, 25.0) if kind == "quality" else rng.uniform(0.5, 8.0), 1),
        "dead_air_s": round(duration * silence * 0.5, 1), "peak_dbfs": round(rng.uniform(-12, -0.1), 1),
        "speech_ratio": round(1 - silence, 3),
        "overtalk_ratio": round(rng.uniform(0.16, 0.3) if kind == "quality" and rng.random() < 0.4 else rng.uniform(0.0, 0.1), 3),
        "overtalk_count": rng.randint(0, 15), "clipping_ratio": round(rng.uniform(0.0, 0.03) if kind == "quality" else 0.0, 4),
        "loudness_lufs": round(rng.uniform(-30, -14), 1), "snr_db": round(rng.uniform(10, 40), 1),
        "talk_time_s": {"agent": round(duration * 0.4, 1), "customer": round(duration * 0.4, 1)},
        "channels": [
            {"channel": c, "role": r, "duration_s": duration, "rms_dbfs": -22.0, "peak_dbfs": -3.0, "silence_ratio": 0.3,
             "longest_silence_s": 4.0, "talk_time_s": duration * 0.4}
            for c, r in ((0, "agent"), (1, "customer"))
        ],
    }  # fmt: skip
    data = {
        "source_event": {"id": f"sub-{i}", "source": "/crm", "type": "com.listenpost.audio.submitted"},
        "context": {"callid": f"call-{i}", "queue": rng.choice(QUEUES), **({"customer_tier": t} if (t := rng.choice(TIERS)) else {})},
        "audio": {"duration_s": duration, "sample_rate": 8000, "channels": 2, "format": "wav"},
        "windows": windows,
        "caption": " ".join(w["caption"] for w in windows),
        "facets": {"emotions": emotions, "sound_events": sounds, "languages": ["en"], "speech_present": True, "music_present": False},
        "acoustics": acoustics,
        "model": "Qwen/Qwen3-Omni-30B-A3B-Captioner",
        "engine": "vllm",
        "timings": {"preprocess_s": 0.2, "caption_s": 2.1},
    }
    attributes = {
        "specversion": "1.0", "id": f"cap-{i}", "source": "urn:listenpost", "type": CAPTIONED,
        "datacontenttype": "application/json", "callid": f"call-{i}", "inputid": f"sub-{i}",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }  # fmt: skip
    return attributes, data


# --- rules ------------------------------------------------------------------------------


#: Rule mixes for the generated rules: "mixed" has `for:` rules and CEL `exists` comprehensions;
#: "stateless" writes the same intents with the helpers only (what the docs recommend).
PROFILES = {
    "mixed": [30, 15, 10, 10, 20, 10, 5],
    "stateless": [40, 15, 10, 0, 25, 10, 0],
}


def generated_rules(rng: random.Random, count: int, profile: str = "mixed") -> str:
    """`count` rules in the style of the shipped ones, with varied thresholds and queues."""
    lines = ["apiVersion: listenpost/v1", "kind: RuleSet", "metadata: {name: generated, owner: bench}", "rules:"]
    for i in range(count):
        queue = rng.choice(QUEUES)
        kind = rng.choices(["emotion", "sound", "words", "exists", "acoustics", "context", "debounce"], PROFILES[profile])[0]
        threshold = round(rng.uniform(0.3, 0.9), 2)
        if kind == "emotion":
            labels = rng.sample(["anger", "frustration", "distress", "fear", "sadness"], rng.randint(1, 2))
            when = f'context.queue == "{queue}" && emotion("{rng.choice(["customer", "any"])}", {json.dumps(labels)}, {threshold})'
        elif kind == "sound":
            labels = rng.sample(["glass_breaking", "alarm", "gunshot", "screaming", "siren", "explosion", "crying"], 2)
            when = f"sound({json.dumps(labels)}, {threshold})"
        elif kind == "words":
            when = f"any_words(caption, {json.dumps(rng.sample(KEYWORDS, 2))})"
        elif kind == "exists":
            label = rng.choice(["anger", "frustration", "fear"])
            when = f'facets.emotions.exists(e, e.label == "{label}" && e.role == "customer" && e.intensity >= {threshold})'
        elif kind == "acoustics":
            field, value = rng.choice([("silence_ratio", threshold), ("overtalk_ratio", threshold / 3), ("clipping_ratio", threshold / 50)])
            when = f'context.queue == "{queue}" && has(acoustics.{field}) && acoustics.{field} > {round(value, 4)}'
        elif kind == "context":
            tier = rng.choice(["gold", "platinum"])
            when = f'has(context.customer_tier) && context.customer_tier == "{tier}" && context.queue == "{queue}"'
        else:
            when = f'emotion("customer", ["anger", "frustration"], {threshold})'
        extra = "    for: {windows: 2}\n" if kind == "debounce" else ""
        mode = "shadow" if rng.random() < 0.1 else "enforce"
        lines.append(
            f"  - id: gen-{i}\n    description: generated {kind} rule {i}\n    priority: {rng.randint(50, 900)}\n"
            f"    mode: {mode}\n    continue: {str(rng.random() < 0.9).lower()}\n"
            f"    match: {{types: [{CAPTIONED}]}}\n    when: {json.dumps(when)}\n{extra}"
            f"    actions:\n      - route: {{queue: {queue}}}\n"
            f'      - alert: {{severity: warning, summary: "gen-{i} on {{{{ context.callid }}}}", '
            f'labels: {{callid: "{{{{ context.callid }}}}"}}}}'
        )
    return "\n".join(lines) + "\n"


CATCH_ALL = f"""apiVersion: listenpost/v1
kind: RuleSet
metadata: {{name: zz-bench, owner: bench}}
rules:
  - id: bench-seen
    description: Every event ends with this tag (the end-to-end benchmark's marker).
    priority: 100000
    match: {{types: [{CAPTIONED}]}}
    when: "true"
    actions: [{{tag: {{tags: [bench-seen]}}}}]
"""


def rule_directory(base: Path, count: int, *, catch_all: bool = False, profile: str = "mixed") -> Path:
    directory = base / f"rules-{count}-{profile}{'-e2e' if catch_all else ''}"
    directory.mkdir(parents=True)
    for path in (REPO / "router_rules").glob("*.yaml"):
        if not path.name.endswith("_test.yaml"):
            shutil.copy(path, directory / path.name)
    shipped = len(load_ruleset(directory).rules)
    if count > shipped:
        (directory / "generated.yaml").write_text(generated_rules(random.Random(7), count - shipped, profile))
    if catch_all:
        (directory / "zz-bench.yaml").write_text(CATCH_ALL)
    return directory


# --- evaluation only ------------------------------------------------------------------------


def naive(ruleset: RuleSet, attributes: dict[str, Any], data: Any) -> int:
    """The baseline: a fresh context per event, every variable converted, every applicable rule run."""
    context = new_context(rule_variables(attributes, data))
    matched = 0
    for rule in ruleset.plan(attributes["type"], attributes["source"]).rules:
        try:
            matched += rule.program.execute(context) is True
        except Exception:  # noqa: BLE001 -- an error is not a match, as the engine counts it
            pass
    return matched


def throughput(ruleset: RuleSet, events: list[tuple[dict[str, Any], Any]], mode: str, repeat: int) -> dict[str, Any]:
    def once() -> tuple[float, float, int, int, int]:
        decisions = evaluated = skipped = 0
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for attributes, data in events:
            if mode == "naive":
                decisions += naive(ruleset, attributes, data)
            else:
                result = evaluate(ruleset, attributes, data, prefilter=(mode == "engine"))
                decisions += len(result.decisions)
                evaluated += result.evaluated
                skipped += result.skipped
        return time.process_time() - cpu0, time.perf_counter() - wall0, decisions, evaluated, skipped

    for attributes, data in events[:200]:  # warm up: plans, contexts
        evaluate(ruleset, attributes, data)
    runs = [once() for _ in range(repeat)]
    cpu, wall, decisions, evaluated, skipped = min(runs, key=lambda r: r[0])
    n = len(events)
    return {
        "mode": mode,
        "events": n,
        "events_per_s_cpu": round(n / cpu, 1),
        "events_per_s_wall": round(n / wall, 1),
        "us_per_event_cpu": round(cpu / n * 1e6, 2),
        "rules_evaluated_per_event": round(evaluated / n, 1) if mode != "naive" else None,
        "rules_skipped_per_event": round(skipped / n, 1) if mode != "naive" else None,
        "decisions_per_event": round(decisions / n, 2) if mode != "naive" else None,
        "repeats": repeat,
    }


# --- end to end -----------------------------------------------------------------------------


async def end_to_end(rules: Path, *, seconds: float, rate: float, workdir: Path) -> dict[str, Any]:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    from services.events.binding import encode_binary, new_event
    from services.events.embedded import EmbeddedNatsServer
    from services.rules.deployment import RulesEngine
    from services.settings import NatsSettings, RulesSettings, Settings

    rng = random.Random(11)
    with EmbeddedNatsServer(workdir / "nats") as server:
        settings = Settings(
            nats=NatsSettings(url=server.url, subject_prefix="bench"),
            rules=RulesSettings(directory=rules, reload_interval_s=5.0),
        )
        cls = RulesEngine.func_or_class
        engine = cls.__new__(cls)
        await engine.__init__(settings)
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        sent: list[str] = []
        try:
            total = int(seconds * rate)
            start = time.perf_counter()
            for i in range(total):
                attributes, data = realistic_event(rng, i)
                event = new_event(
                    CAPTIONED,
                    "urn:listenpost",
                    data,
                    id=f"e2e-{i}-{uuid.uuid4().hex[:6]}",
                    extensions={"callid": attributes["callid"]},
                )
                body, headers = encode_binary(event)
                headers["Nats-Msg-Id"] = event.get_id()
                await js.publish("bench.captioned", body, headers=headers)
                sent.append((event.get_id(), time.perf_counter() - start))
                delay = start + (i + 1) / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            publish_s = time.perf_counter() - start
            # Wait until every event has its final decision.
            deadline = time.time() + 60
            while time.time() < deadline:
                info = await js.consumer_info(settings.nats.out_stream, settings.nats.rules_durable)
                if info.num_pending == 0 and info.num_ack_pending == 0:
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.5)
            status = await engine.status()
            # Read the stream back: stored times of each captioned event and its decisions.
            stored: dict[str, float] = {}
            first: dict[str, float] = {}
            last: dict[str, float] = {}
            sub = await js.pull_subscribe(
                "bench.>", stream=settings.nats.out_stream,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=30.0),
            )  # fmt: skip
            end_seq = (await js.stream_info(settings.nats.out_stream)).state.last_seq
            seq = 0
            while seq < end_seq:
                for msg in await sub.fetch(512, timeout=5.0):
                    seq = msg.metadata.sequence.stream
                    at = msg.metadata.timestamp.timestamp()
                    headers = msg.headers or {}
                    if msg.subject == "bench.captioned":
                        stored[headers.get("ce-id", "")] = at
                    elif headers.get("ce-inputid"):
                        key = headers["ce-inputid"]
                        first.setdefault(key, at)
                        last[key] = max(last.get(key, at), at)
        finally:
            await nc.drain()
            await engine.__del__()

            class Stopped(cls):
                def __del__(self) -> None:
                    pass

            engine.__class__ = Stopped
    first_ms = sorted((first[k] - stored[k]) * 1000 for k in stored if k in first)
    last_ms = sorted((last[k] - stored[k]) * 1000 for k in stored if k in last)
    warm = {k for k, at in sent if at >= 2.0}  # after the first 2 s: plans, contexts and KV keys exist
    warm_last_ms = sorted((last[k] - stored[k]) * 1000 for k in stored if k in last and k in warm)
    return {
        "rules": status["rules"],
        "rate_per_s": rate,
        "seconds": seconds,
        "events": len(sent),
        "publish_s": round(publish_s, 2),
        "events_with_decisions": len(last_ms),
        "first_decision_ms": _percentiles(first_ms),
        "last_decision_ms": _percentiles(last_ms),
        "last_decision_ms_after_2s": _percentiles(warm_last_ms),
        "dead_lettered": status["dead_lettered"],
        "note": "RulesEngine class started without Ray (its consumer, processor, NATS KV and publishing); "
        "latency = JetStream stored time of the decision minus that of the captioned event",
    }


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None}

    def pct(p: float) -> float:
        return round(values[min(len(values) - 1, int(p * len(values)))], 2)

    return {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": round(values[-1], 2), "mean": round(statistics.fmean(values), 2)}


# --- main -------------------------------------------------------------------------------------


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    modes = ["engine", "no-prefilter", "naive"]
    groups = list(dict.fromkeys((r["rules"], r["profile"]) for r in result["throughput"]))
    counts = groups
    width = 0.8 / len(counts)
    for j, (count, profile) in enumerate(groups):
        rates = [
            next(
                r["events_per_s_cpu"]
                for r in result["throughput"]
                if (r["rules"], r["profile"]) == (count, profile) and r["mode"] == m
            )
            for m in modes
        ]
        bars = left.bar([i + j * width for i in range(len(modes))], rates, width, label=f"{count} rules ({profile})")
        left.bar_label(bars, fmt="%.0f", fontsize=8)
    left.axhline(TARGET_PER_S, color="red", linestyle="--", linewidth=1, label=f"target {TARGET_PER_S:,}/s (200 rules, mixed)")
    labels = ["engine\n(library + pre-filter)", "library,\nno pre-filter", "naive\n(fresh context)"]
    left.set_xticks([i + width * (len(counts) - 1) / 2 for i in range(len(modes))], labels)
    left.set_ylabel("events/s on one core (CPU time)")
    left.set_yscale("log")
    left.set_title("evaluation only")
    left.legend(fontsize=8)
    e2e = result.get("end_to_end") or []
    for item in e2e:
        p = item["last_decision_ms"]
        right.bar([f"{item['rules']} rules\np50", f"{item['rules']} rules\np99"], [p["p50"], p["p99"]])
    right.set_ylabel("ms, captioned stored -> last decision stored")
    right.set_title(f"end to end on NATS ({e2e[0]['rate_per_s'] if e2e else '?'} events/s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0, help="end-to-end run length")
    parser.add_argument("--rate", type=float, default=100.0, help="end-to-end captioned events per second")
    # The last CPU by default: Linux steers most interrupts to CPU 0, which makes it the noisiest.
    last_cpu = (os.cpu_count() or 1) - 1
    parser.add_argument("--cpu", type=int, default=last_cpu, help="CPU to pin the evaluation to (-1: no pinning)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--only-e2e", action="store_true", help="keep the evaluation figures of an earlier rules.json")
    args = parser.parse_args()
    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    rng = random.Random(3)
    events = [realistic_event(rng, i) for i in range(args.events)]
    work = Path(tempfile.mkdtemp(prefix="rules-bench-"))
    result: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(), "pinned_cpu": args.cpu},
        "events": {"count": len(events), "mean_windows": round(statistics.fmean(len(d["windows"]) for _, d in events), 1),
                   "mean_emotions": round(statistics.fmean(len(d["facets"]["emotions"]) for _, d in events), 1),
                   "mean_caption_chars": round(statistics.fmean(len(d["caption"]) for _, d in events))},  # fmt: skip
        "throughput": [],
    }
    try:
        if args.only_e2e:
            result["throughput"] = json.loads((args.out / "rules.json").read_text())["throughput"]
        for count, profile in () if args.only_e2e else ((10, "shipped"), (200, "stateless"), (200, "mixed")):
            ruleset = load_ruleset(rule_directory(work, count, profile="mixed" if profile == "shipped" else profile))
            for mode in ("engine", "no-prefilter", "naive"):
                sample = events if mode != "naive" or count <= 10 else events[: max(500, len(events) // 4)]
                row = {"rules": len(ruleset.rules), "profile": profile, **throughput(ruleset, sample, mode, args.repeat)}
                result["throughput"].append(row)
                print(f"{row['rules']:>4} rules {profile:<9} {mode:<13} {row['events_per_s_cpu']:>9.0f} events/s/core (cpu)  "
                      f"{row['events_per_s_wall']:>9.0f} (wall)  {row['us_per_event_cpu']:>8.1f} us/event  "
                      f"evaluated/event {row['rules_evaluated_per_event']}", flush=True)  # fmt: skip
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        if not args.skip_e2e:
            result["end_to_end"] = []
            for count in (200,):
                directory = rule_directory(work, count, catch_all=True, profile="mixed")
                e2e = asyncio.run(end_to_end(directory, seconds=args.seconds, rate=args.rate, workdir=work / f"e2e-{count}"))
                result["end_to_end"].append(e2e)
                f, last = e2e["first_decision_ms"], e2e["last_decision_ms"]
                warm = e2e["last_decision_ms_after_2s"]
                print(f"end to end, {e2e['rules']} rules at {e2e['rate_per_s']:.0f} events/s ({e2e['events']} events): "
                      f"first decision p50 {f['p50']} ms p99 {f['p99']} ms; last decision p50 {last['p50']} ms p99 {last['p99']} ms; "
                      f"after the first 2 s: last decision p50 {warm['p50']} ms p99 {warm['p99']} ms", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rules.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out / "rules.png")
    print(f"wrote {args.out / 'rules.json'} and {args.out / 'rules.png'}")


if __name__ == "__main__":
    main()
