"""Caption redaction: false positives and speed.

    .venv/bin/python bench/redaction.py [--numbers 20000] [--seed 0] [--out bench/results]

1. **Captions without identifiers**: every caption of tests/facet_cases/*.yaml (written in the
   style of the real captioner) is redacted with the default policy and with phone regions
   US+GB; any replacement there is a false positive.
2. **Random numbers** (seeded): digit strings of 7 to 19 digits, bare and in groups of 3-4
   separated by spaces, in a sentence ("the order number is ... thanks"): the share redacted,
   by label. This is the chance that an order, ticket or account number of that shape is
   taken for an identifier (a card passes the Luhn check one time in ten, so a random
   16-digit number is a "card" one time in ten: for redaction, erring that way is the safe way).
3. **Spoken digit prose**: sentences with number words that are not identifiers.
4. **Speed**: microseconds per caption for the facet-case captions (one core, CPU time).

Results are written to ``<out>/redaction.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from pathlib import Path

from ruamel.yaml import YAML

from services.captioner.redaction import RedactionPolicy, redact

ROOT = Path(__file__).resolve().parent.parent
PROSE = [
    "Oh, one more thing: the two of them argue for five minutes, then one hangs up at seven o'clock.",
    "She counts one, two, three, four, five, six, seven, eight, nine, ten to calm down.",
    "The agent says it will take three to five working days, maybe six or seven at most.",
    "He was put on hold for two minutes, then another four, then nine more before anyone answered.",
    "Room four oh two, floor one, building eight; the meeting is at nine thirty.",
    "Double check the address: number twenty-one, flat three, the second door on the left.",
]


def captions() -> list[str]:
    found = []
    for path in sorted((ROOT / "tests" / "facet_cases").glob("*.yaml")):
        for case in YAML(typ="safe").load(path.read_text()) or []:
            if isinstance(case, dict) and isinstance(case.get("caption"), str):
                found.append(case["caption"])
    return found


def random_number(rng: random.Random, digits: int, grouped: bool) -> str:
    text = str(rng.randint(1, 9)) + "".join(str(rng.randint(0, 9)) for _ in range(digits - 1))
    if not grouped:
        return text
    groups, i = [], 0
    while i < len(text):
        size = rng.choice((3, 4))
        groups.append(text[i : i + size])
        i += size
    return " ".join(groups)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--numbers", type=int, default=20000, help="random numbers per length and grouping")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    policies = {"default (US)": RedactionPolicy(), "US+GB": RedactionPolicy(phone_regions=("US", "GB"))}
    report: dict[str, object] = {}

    texts = captions()
    caption_fp = {}
    for name, policy in policies.items():
        hits = [(t, redact(t, policy)) for t in texts]
        caption_fp[name] = {
            "captions": len(texts),
            "with_a_replacement": sum(1 for _, r in hits if r.counts),
            "examples": [r.text for _, r in hits if r.counts][:5],
        }
    report["facet_case_captions"] = caption_fp
    report["spoken_prose"] = {
        "sentences": len(PROSE),
        "changed": [redact(t).text for t in PROSE if redact(t).counts],
    }

    rng = random.Random(args.seed)
    numbers: dict[str, dict[str, dict[str, float]]] = {}
    for name, policy in policies.items():
        rows: dict[str, dict[str, float]] = {}
        for digits in range(7, 20):
            for grouped in (False, True):
                counts: Counter[str] = Counter()
                for _ in range(args.numbers):
                    result = redact(f"the order number is {random_number(rng, digits, grouped)} thanks", policy)
                    counts.update(result.counts.keys())
                key = f"{digits} digits{' grouped' if grouped else ''}"
                rows[key] = {label: round(n / args.numbers, 4) for label, n in sorted(counts.items())}
        numbers[name] = rows
    report["random_numbers_share_redacted"] = numbers

    policy = RedactionPolicy()
    started = time.process_time()
    rounds = 0
    while time.process_time() - started < 3.0:
        for t in texts:
            redact(t, policy)
        rounds += 1
    cpu = time.process_time() - started
    report["speed"] = {
        "us_per_caption": round(cpu / (rounds * len(texts)) * 1e6, 1),
        "mean_caption_chars": round(sum(map(len, texts)) / len(texts)),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "redaction.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
