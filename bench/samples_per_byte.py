"""Decoded samples per encoded byte of real codecs, to choose ``max_samples_per_byte``.

    .venv/bin/python bench/samples_per_byte.py [--seconds 20] [--out bench/results]

Encodes 20 seconds of each signal (voice-like speech from tests/audio_factory.py
with -65 dBFS line noise; a two-party call whose gaps are digital silence; hold
music) in the codecs calls arrive in, at common rates and bit rates, decodes each
with listenpost's own decoder and prints decoded samples (frames x channels, at the
rate the decoder outputs: Opus always decodes at 48 kHz) per encoded byte. The
highest legitimate figure bounds the setting from below; the hostile FLAC of
constant subframes (tests/hostile_audio.py) shows where it must stay below.

Writes bench/results/samples_per_byte.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from services.preprocess.decode import open_audio  # noqa: E402
from tests.audio_factory import av_bytes, call, music, sndfile_bytes, speech  # noqa: E402
from tests.hostile_audio import constant_flac  # noqa: E402


def signals(seconds: float, rate: int, channels: int) -> dict[str, np.ndarray]:
    noise = (10 ** (-65 / 20) * np.random.default_rng(1).standard_normal((int(seconds * rate), channels)))
    voice = np.stack([speech(seconds, rate, seed=c) for c in range(channels)], axis=1) + noise
    turns = [(i % channels, t, t + 4.0) for i, t in enumerate(np.arange(0.5, seconds - 5, 6.0))]
    gappy = call(turns, seconds, rate=rate, channels=channels).samples  # silence between turns is exact zeros
    tune = np.repeat(music(seconds, rate)[:, None], channels, axis=1)
    return {"speech+noise": voice.astype(np.float32), "call, digital-zero gaps": gappy, "music": tune}


def encodings(samples: np.ndarray, rate: int) -> dict[str, bytes]:
    out = {
        "wav pcm16": sndfile_bytes(samples, rate),
        "wav mu-law": sndfile_bytes(samples, rate, "WAV", "ULAW"),
        "flac": sndfile_bytes(samples, rate, "FLAC"),
        "vorbis": sndfile_bytes(samples, rate, "OGG", "VORBIS"),
    }
    for kbps in (8, 16, 32):
        if rate <= 24000 or kbps >= 32:  # LAME refuses 8 kbit/s at 44.1/48 kHz
            out[f"mp3 {kbps}k"] = av_bytes(samples, rate, "mp3", bit_rate=kbps * 1000)
    if rate in (8000, 16000, 48000):
        for kbps in (6, 12, 24):
            out[f"opus {kbps}k"] = av_bytes(samples, rate, "opus", bit_rate=kbps * 1000)
    return out


def decoded_samples(data: bytes) -> int:
    with open_audio(data) as reader:
        return sum(block.size for block in reader.blocks())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    rows = []
    for rate, channels in ((8000, 1), (8000, 2), (16000, 1), (44100, 2), (48000, 2)):
        for signal, samples in signals(args.seconds, rate, channels).items():
            for codec, data in encodings(samples, rate).items():
                ratio = decoded_samples(data) / len(data)
                rows.append({"rate": rate, "channels": channels, "signal": signal, "codec": codec,
                             "bytes": len(data), "samples_per_byte": round(ratio, 2)})
                print(f"{rate:>6} Hz x{channels} {signal:<24} {codec:<11} {len(data):>9} B {ratio:8.2f}")
    for seconds, rate, channels, size in ((4 * 3600, 16000, 1, 65535), (4 * 3600, 48000, 8, 65535)):
        data = constant_flac(seconds, rate, channels)
        ratio = seconds * rate * channels / len(data)
        rows.append({"rate": rate, "channels": channels, "signal": "hostile: constant subframes, 4 h",
                     "codec": f"flac, {size}-frame blocks", "bytes": len(data), "samples_per_byte": round(ratio, 2)})
        print(f"{rate:>6} Hz x{channels} hostile constant FLAC, 4 h  {len(data):>9} B {ratio:8.0f}")
    legit = max(r["samples_per_byte"] for r in rows if not r["signal"].startswith("hostile"))
    print(f"highest legitimate: {legit:.1f} samples per byte")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "samples_per_byte.json").write_text(json.dumps({"seconds": args.seconds, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
