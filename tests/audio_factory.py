"""Test audio made here, from numpy: voice-like speech, calls with a known script, every container.

No recordings and no apt packages: speech is a small formant synthesiser (a
glottal pulse train through five resonators whose targets glide between vowels,
with consonant noise and an intonation contour). Silero VAD labels it speech
(checked in the tests), while tones, alarms and music stay non-speech.
Encoding goes through libsndfile (soundfile) and FFmpeg (PyAV).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import av
import numpy as np
import scipy.signal as ss
import soundfile
import soxr

# F1, F2, F3 of eight vowels (adult male averages, Peterson & Barney 1952).
_VOWELS = np.array(
    [(730, 1090, 2440), (270, 2290, 3010), (530, 1840, 2480), (300, 870, 2240),
     (640, 1190, 2390), (490, 1350, 1690), (660, 1720, 2410), (440, 1020, 2240)],
    dtype=float,
)  # fmt: skip
_BANDWIDTHS = (60, 90, 120, 150, 200)
_BLOCK_S = 0.005  # formant targets move every 5 ms
_SYNTH_RATE = 16_000


def _resonator(freq: float, bandwidth: float, rate: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.exp(-np.pi * bandwidth / rate)
    c = 2 * r * np.cos(2 * np.pi * freq / rate)
    return np.array([1 - c + r * r]), np.array([1.0, -c, r * r])


def speech(seconds: float, rate: int = 16_000, *, seed: int = 0, f0: float = 120.0, level: float = 0.3) -> np.ndarray:
    """Voice-like float32 audio: syllables of 120-240 ms, gliding formants, peak at ``level``.

    Made at 16 kHz (the formant and noise bands are tuned for it) and resampled to ``rate``.
    """
    voice = _speech_16k(seconds, seed=seed, f0=f0, level=level)
    if rate == _SYNTH_RATE:
        return voice
    resampled = soxr.resample(voice, _SYNTH_RATE, rate).astype(np.float32)
    n = int(round(seconds * rate))
    return np.pad(resampled, (0, max(0, n - resampled.shape[0])))[:n]


def _speech_16k(seconds: float, *, seed: int, f0: float, level: float) -> np.ndarray:
    rate = _SYNTH_RATE
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    if n == 0:
        return np.zeros(0, np.float32)
    block = max(1, int(_BLOCK_S * rate))
    blocks = n // block + 1
    formants = np.zeros((blocks, 3))
    amplitude = np.zeros(blocks)
    fricative = np.zeros(blocks)
    b = 0
    while b < blocks:
        length = int(rng.uniform(0.12, 0.24) / _BLOCK_S)
        target = _VOWELS[rng.integers(len(_VOWELS))]
        previous = formants[b - 1] if b and amplitude[b - 1] > 0 else target
        glide = np.minimum(1.0, np.arange(length)[:, None] / max(1.0, length * 0.35))
        stop = min(blocks, b + length)
        formants[b:stop] = (previous * (1 - glide) + target * glide)[: stop - b]
        onset = int(rng.uniform(0.03, 0.08) / _BLOCK_S) if rng.random() < 0.7 else 0
        envelope = np.concatenate([np.zeros(onset), np.sin(np.pi * np.linspace(0.05, 0.95, length - onset)) ** 0.5])
        amplitude[b:stop] = envelope[: stop - b]
        fricative[b : min(blocks, b + onset)] = rng.uniform(0.2, 0.6) if rng.random() < 0.85 else 0.0
        b += length
    t = np.arange(blocks) * _BLOCK_S
    pitch = f0 * (1 + 0.12 * np.sin(2 * np.pi * t / 1.7 + rng.uniform(0, 6)) - 0.05 * ((t % 2.5) / 2.5))
    pitch *= 1 + 0.03 * rng.standard_normal(blocks)
    phase = np.cumsum(np.repeat(pitch, block)[:n] / rate)
    pulses = (np.diff(np.floor(phase), prepend=0) > 0) * (1 + 0.05 * rng.standard_normal(n))
    glottal = np.diff(ss.lfilter([1.0], [1, -1.8, 0.81], pulses), prepend=0)  # tilt, then lip radiation
    glottal += 0.02 * np.std(glottal) * rng.standard_normal(n)  # breath
    source = glottal * np.repeat(amplitude, block)[:n]
    out = np.zeros(n)
    states = [np.zeros(2) for _ in _BANDWIDTHS]
    for i in range(blocks):
        lo, hi = i * block, min(n, (i + 1) * block)
        if lo >= n:
            break
        y = source[lo:hi]
        for k, freq in enumerate((*formants[i], 3500.0, 4500.0)):
            bb, aa = _resonator(freq if freq > 0 else 500.0 * (2 * k + 1), _BANDWIDTHS[k], rate)
            y, states[k] = ss.lfilter(bb, aa, y, zi=states[k])
        out[lo:hi] = y
    band = ss.butter(4, [2500 / (rate / 2), 7000 / (rate / 2)], "band", output="sos")
    out += ss.sosfilt(band, rng.standard_normal(n)) * np.repeat(fricative, block)[:n] * np.std(out) * 3
    return (out / (np.max(np.abs(out)) + 1e-12) * level).astype(np.float32)


def tone(seconds: float, rate: int, freq: float = 440.0, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (level * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def alarm(seconds: float, rate: int, level: float = 0.3) -> np.ndarray:
    """A two-tone beeping alarm: loud, never speech."""
    t = np.arange(int(round(seconds * rate))) / rate
    return (level * np.sin(2 * np.pi * (800 + 300 * (np.floor(t * 4) % 2)) * t)).astype(np.float32)


def music(seconds: float, rate: int, level: float = 0.3) -> np.ndarray:
    """A slowly swelling major chord: sound without speech."""
    t = np.arange(int(round(seconds * rate))) / rate
    chord = sum(np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0)) / 3
    return (level * chord * (0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t))).astype(np.float32)


@dataclass(frozen=True)
class Turn:
    channel: int
    start: float
    end: float


@dataclass(frozen=True)
class Call:
    samples: np.ndarray  # float32 (frames, channels)
    rate: int
    turns: list[Turn]

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / self.rate

    def talk_s(self, channel: int) -> float:
        return sum(t.end - t.start for t in self.turns if t.channel == channel)

    def overtalk(self) -> list[tuple[float, float]]:
        """Intervals where two channels talk at once (turns of one channel never overlap)."""
        spans = []
        for a in self.turns:
            for b in self.turns:
                if a.channel < b.channel and min(a.end, b.end) > max(a.start, b.start):
                    spans.append((max(a.start, b.start), min(a.end, b.end)))
        return sorted(spans)


def call(
    turns: Sequence[tuple[int, float, float]],
    duration_s: float,
    *,
    rate: int = 16_000,
    channels: int = 2,
    noise_dbfs: float | None = None,
    seed: int = 0,
) -> Call:
    """A call with one speaker per channel, each talking exactly in its ``turns`` (channel, start, end)."""
    rng = np.random.default_rng(seed)
    samples = np.zeros((int(round(duration_s * rate)), channels), np.float32)
    for i, (channel, start, end) in enumerate(turns):
        lo = int(round(start * rate))
        voice = speech(end - start, rate, seed=seed * 1000 + i, f0=(110.0, 210.0, 160.0)[channel % 3])
        samples[lo : lo + voice.shape[0], channel] += voice
    if noise_dbfs is not None:
        samples += (10 ** (noise_dbfs / 20) * rng.standard_normal(samples.shape)).astype(np.float32)
    return Call(samples, rate, [Turn(c, s, e) for c, s, e in turns])


# --- containers -------------------------------------------------------------------------------------

# (container, codec, sample format) that FFmpeg writes for each compressed format in the tests.
_AV = {
    "mp3": ("mp3", "libmp3lame", "fltp"),
    "opus": ("ogg", "libopus", "flt"),
    "m4a": ("ipod", "aac", "fltp"),
    "webm": ("webm", "libopus", "flt"),
    "g722-in-wav": ("wav", "g722", "s16"),  # wideband VoIP recorders (format tag 0x028F)
}


def sndfile_bytes(samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str | None = "PCM_16") -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def av_bytes(
    samples: np.ndarray, rate: int, fmt: str, bit_rate: int | None = None, options: dict[str, str] | None = None
) -> bytes:
    """Encode float32 (frames[, channels]) with FFmpeg: ``fmt`` is mp3, opus, m4a or webm."""
    container_name, codec, sample_format = _AV[fmt]
    frames = samples if samples.ndim == 2 else samples[:, None]
    layout = {1: "mono", 2: "stereo"}[frames.shape[1]]
    buf = io.BytesIO()
    with av.open(buf, "w", format=container_name, options=options or {}) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = layout
        if bit_rate:
            stream.bit_rate = bit_rate
        step = 4096
        for lo in range(0, frames.shape[0], step):
            chunk = np.ascontiguousarray(frames[lo : lo + step], dtype=np.float32)
            if sample_format == "s16":
                chunk = np.round(np.clip(chunk, -1, 1) * 32767).astype(np.int16)
            data = chunk.T.copy() if sample_format.endswith("p") else chunk.reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(data, format=sample_format, layout=layout)
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def encode(samples: np.ndarray, rate: int, fmt: str) -> bytes:
    """Bytes of ``samples`` in ``fmt``: wav, flac, vorbis, opus, mp3, m4a or webm."""
    if fmt == "wav":
        return sndfile_bytes(samples, rate)
    if fmt == "flac":
        return sndfile_bytes(samples, rate, "FLAC")
    if fmt == "vorbis":
        return sndfile_bytes(samples, rate, "OGG", "VORBIS")
    return av_bytes(samples, rate, fmt)


def wav_with_header(
    payload: bytes, *, channels: int = 1, rate: int = 8000, bits: int = 16, data_size: int | None = None
) -> bytes:
    """A hand-made PCM WAV, to lie in its header (zero channels, a data chunk longer than the file)."""
    block_align = channels * bits // 8
    fmt = (
        (1).to_bytes(2, "little") + channels.to_bytes(2, "little") + rate.to_bytes(4, "little")
        + (rate * block_align).to_bytes(4, "little") + block_align.to_bytes(2, "little") + bits.to_bytes(2, "little")
    )  # fmt: skip
    size = len(payload) if data_size is None else data_size
    body = b"WAVE" + b"fmt " + len(fmt).to_bytes(4, "little") + fmt + b"data" + size.to_bytes(4, "little") + payload
    return b"RIFF" + (len(body)).to_bytes(4, "little") + body
