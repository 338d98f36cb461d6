"""listenpost's configuration: one settings object, read from ``LISTENPOST_*`` env vars.

Nested groups use ``__`` as the delimiter, e.g. ``LISTENPOST_NATS__URL`` or
``LISTENPOST_CAPTIONER__ENGINE``. Unset NATS URL means "start the embedded
nats-server"; unset Ray address means "start a local Ray".
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, PositiveFloat, PositiveInt
from pydantic_settings import BaseSettings, SettingsConfigDict

REAL_MODEL = "Qwen/Qwen3-Omni-30B-A3B-Captioner"


class NatsSettings(BaseModel):
    url: str | None = Field(
        default=None, description="nats:// URL of an existing server; unset starts the embedded nats-server."
    )
    data_dir: Path = Field(
        default=Path(".cache/nats"), description="JetStream storage of the embedded nats-server."
    )
    subject_prefix: str = Field(default="listenpost", pattern=r"^[A-Za-z0-9_-]+$")
    in_stream: str = "LISTENPOST_IN"
    out_stream: str = "LISTENPOST_OUT"
    dlq_stream: str = "LISTENPOST_DLQ"
    ingest_durable: str = "listenpost-ingest"
    rules_durable: str = "listenpost-rules"
    ack_wait_s: PositiveFloat = Field(default=300.0, description="Redelivery if not acked within this time.")
    max_deliver: PositiveInt = Field(default=5, description="Bounded redelivery; never -1 (forever).")
    max_payload_bytes: PositiveInt = Field(default=1024 * 1024)
    out_max_age_s: PositiveFloat = Field(default=7 * 24 * 3600, description="History kept for replays.")
    duplicate_window_s: PositiveFloat = Field(default=600.0, description="JetStream Nats-Msg-Id dedup window.")

    def subject(self, *tokens: str) -> str:
        return ".".join((self.subject_prefix, *tokens))


class PreprocessSettings(BaseModel):
    window_s: PositiveFloat = Field(default=30.0, le=30.0, description="Longest window handed to the model.")
    min_window_s: PositiveFloat = Field(default=0.5, description="Shorter tails are merged into the previous window.")
    channel_mode: Literal["split", "mix"] = Field(
        default="split", description="split: keep channels with roles apart; mix: always down-mix to mono."
    )
    max_duration_s: PositiveFloat = Field(default=4 * 3600.0)
    max_bytes: PositiveInt = Field(default=512 * 1024 * 1024, description="Largest encoded recording accepted.")
    num_cpus: float = Field(default=0.5, ge=0, description="CPUs reserved per Preprocessor replica.")
    silence_dbfs: float = Field(default=-45.0, description="Frames quieter than this count as silence.")
    file_roots: list[Path] = Field(
        default_factory=lambda: [Path.cwd()], description="Local paths and file:// URIs must lie under one of these."
    )


class CaptionerSettings(BaseModel):
    engine: Literal["vllm", "transformers"] = "vllm"
    model: str = Field(default=REAL_MODEL, description="Hub id or local checkpoint path.")
    num_gpus: float = Field(default=0.0, ge=0, description="GPUs per replica; 0 runs the CPU engine.")
    num_cpus: float = Field(default=0.5, ge=0)
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    target_ongoing_requests: PositiveFloat = 32.0
    max_ongoing_requests: PositiveInt = 256
    tensor_parallel_size: PositiveInt = 1
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    max_model_len: PositiveInt = 4096
    max_num_seqs: PositiveInt = 32
    dtype: str = "auto"
    enforce_eager: bool = False
    temperature: float = Field(default=0.6, ge=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    top_k: int = 20
    max_tokens: PositiveInt = 512
    seed: int | None = None
    cpu_kvcache_gib: PositiveInt = Field(default=4, description="KV cache of the CPU build of vLLM.")

    def engine_env(self) -> dict[str, str]:
        """Environment the engine's process needs (vLLM reads these at import)."""
        return {"VLLM_CPU_KVCACHE_SPACE": str(self.cpu_kvcache_gib)} if self.num_gpus == 0 else {}


class RulesSettings(BaseModel):
    directory: Path = Field(default=Path("router_rules"))
    consume_subjects: list[str] = Field(
        default_factory=lambda: ["captioned"],
        description="Subjects (below the prefix) of LISTENPOST_OUT that the rules engine evaluates.",
    )
    reload_interval_s: PositiveFloat = Field(default=2.0, description="How often rule files are checked.")

    def subjects(self, nats: NatsSettings) -> list[str]:
        return [nats.subject(s) for s in self.consume_subjects]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LISTENPOST_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    ray_address: str | None = Field(default=None, description="Ray cluster address; unset starts a local Ray.")
    source: str = Field(default="urn:listenpost", description="CloudEvents `source` of events we emit.")
    nats: NatsSettings = Field(default_factory=NatsSettings)
    preprocess: PreprocessSettings = Field(default_factory=PreprocessSettings)
    captioner: CaptionerSettings = Field(default_factory=CaptionerSettings)
    rules: RulesSettings = Field(default_factory=RulesSettings)
    ingest_max_in_flight: PositiveInt = Field(default=16, description="Events in flight per ingress replica.")
