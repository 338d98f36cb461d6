"""Session fixtures: one tiny checkpoint, and one running service (nats-server, Ray, Serve, vLLM).

Starting Ray Serve with the vLLM engine takes about a minute, so the running
service is shared by every end-to-end test in the session.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile

from services.captioner.tiny_checkpoint import build_tiny_checkpoint
from services.settings import CaptionerSettings, NatsSettings, PreprocessSettings, RulesSettings, Settings

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("models") / "tiny-qwen3-omni")


@pytest.fixture(scope="session")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audio")


def tiny_engine_settings(model: Path) -> CaptionerSettings:
    """The vLLM engine, sized for the CPU build and a 2-core machine."""
    return CaptionerSettings(
        engine="vllm",
        model=str(model),
        dtype="float32",
        enforce_eager=True,
        max_model_len=2048,
        max_num_seqs=16,
        max_tokens=24,
        cpu_kvcache_gib=1,
        num_cpus=0.5,
        seed=0,
    )


@pytest.fixture(scope="session")
def service(tiny_model: Path, audio_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    from services.runner import running_service

    settings = Settings(
        nats=NatsSettings(data_dir=tmp_path_factory.mktemp("nats"), ack_wait_s=60, max_deliver=3),
        captioner=tiny_engine_settings(tiny_model),
        preprocess=PreprocessSettings(file_roots=[audio_dir]),
        rules=RulesSettings(directory=REPO / "router_rules"),
    )
    with running_service(settings, ray_num_cpus=8) as effective:
        yield effective


def tone(seconds: float, rate: int, freq: float = 220.0, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (level * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def wav_bytes(samples: np.ndarray, rate: int, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()
