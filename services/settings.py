"""listenpost's configuration: one settings object, read from ``LISTENPOST_*`` env vars.

Nested groups use ``__`` as the delimiter, e.g. ``LISTENPOST_NATS__URL`` or
``LISTENPOST_CAPTIONER__ENGINE``; the Serve config's ``args`` (deploy/serve-config.yaml)
use the same names, nested. Unset NATS URL means "start the embedded nats-server";
unset Ray address means "start a local Ray". docs/settings.md lists every setting
(generated from this module: ``listenpost settings doc``).

Settings are strict, like rule files: an unknown key (``max_replica`` for
``max_replicas``) or an unknown ``LISTENPOST_`` variable is a :class:`SettingsError`
naming it and suggesting the closest known one, never a silently kept default.
"""

from __future__ import annotations

import base64
import difflib
import json
import os
import typing
from abc import abstractmethod
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from dotenv import dotenv_values
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

REAL_MODEL = "Qwen/Qwen3-Omni-30B-A3B-Captioner"
ENV_PREFIX = "LISTENPOST_"
#: ``LISTENPOST_`` variables that are not settings: read by the project's own scripts.
NOT_SETTINGS = frozenset({"LISTENPOST_VENV"})  # scripts/setup.sh: where the virtualenv is
#: Settings that were renamed: the old variable's error names the new one.
RENAMED = {
    "LISTENPOST_INGEST_REPLICAS": "LISTENPOST_INGRESS__REPLICAS",
    "LISTENPOST_INGEST_MAX_IN_FLIGHT": "LISTENPOST_INGRESS__MAX_IN_FLIGHT",
    # Not a plain rename: each key became an object with an id and sources (HttpSettings says how).
    "LISTENPOST_HTTP__API_KEYS": "LISTENPOST_HTTP__KEYS",
}


class SettingsError(ValueError):
    """Settings that cannot be used: every problem, each naming its setting."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid listenpost settings:\n" + "\n".join(f"  {p}" for p in problems))


def _suggestion(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f", did you mean {close[0]!r}?" if close else ""


def _known_keys(model: type[BaseModel], data: Any) -> Any:
    """``data`` for ``model``; an error naming each unknown key, with the closest known one."""
    if isinstance(data, Mapping):
        unknown = [str(key) for key in data if key not in model.model_fields]
        if unknown:
            known = list(model.model_fields)
            hints = {key: _suggestion(key, known) for key in unknown}
            raise PydanticCustomError(
                "unknown_setting",
                "{message}",
                {"message": "; ".join(f"unknown setting {k!r}{h}" for k, h in hints.items()), "hints": hints},
            )
    return data


class _Group(BaseModel):
    """A group of settings: unknown keys are errors that suggest the closest known key."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _only_known_keys(cls, data: Any) -> Any:
        return _known_keys(cls, data)


class _ServeOptions(_Group):
    """How Serve runs a deployment: resources, concurrency and health checks of each replica."""

    num_cpus: float = Field(default=0.1, ge=0, description="CPUs reserved per replica.")
    max_ongoing_requests: PositiveInt = Field(default=5, description="Calls a replica accepts at once.")
    health_check_period_s: PositiveFloat = Field(default=10.0, description="How often Serve checks a replica.")
    health_check_timeout_s: PositiveFloat = Field(
        default=30.0, description="A health check slower than this fails the replica."
    )
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources a replica needs, placing it on nodes that offer them: e.g. "
        '`{"captioner": 1}` with worker nodes started with `--resources \'{"captioner": 1}\'` (ray_cluster.yaml).',
    )

    def deployment_options(self) -> dict[str, Any]:
        """The deployment's ``.options(...)`` (Serve's names)."""
        actor: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.resources:
            actor["resources"] = dict(self.resources)
        return {
            "ray_actor_options": actor,
            "max_ongoing_requests": self.max_ongoing_requests,
            "health_check_period_s": self.health_check_period_s,
            "health_check_timeout_s": self.health_check_timeout_s,
        }


class _FixedReplicas(_ServeOptions):
    replicas: PositiveInt = Field(default=1, description="Replicas of the deployment.")

    def deployment_options(self) -> dict[str, Any]:
        return {**super().deployment_options(), "num_replicas": self.replicas}


class _ScalableReplicas(_FixedReplicas):
    """A CPU deployment that Serve may scale between ``replicas`` and ``max_replicas``.

    Unset ``max_replicas`` keeps the fixed count, so a 2-CPU machine runs what it always ran;
    docs/scaling.md#autoscaling says which signal each deployment scales on and why.
    """

    replicas: PositiveInt = Field(
        default=1, description="Replicas of the deployment; with max_replicas, the fewest the autoscaler keeps."
    )
    max_replicas: PositiveInt | None = Field(
        default=None, description="Most replicas the autoscaler starts; unset: a fixed count of `replicas`."
    )
    upscale_delay_s: float = Field(default=10.0, ge=0, description="Sustained load before adding a replica.")
    downscale_delay_s: float = Field(default=120.0, ge=0, description="Sustained idleness before removing one.")
    # Above Serve's metrics interval (10 s), which it warns about otherwise.
    look_back_period_s: PositiveFloat = Field(default=15.0, description="Window over which load is averaged.")

    @model_validator(mode="after")
    def _max_above_the_floor(self) -> _ScalableReplicas:
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below replicas ({self.replicas})")
        return self

    def deployment_options(self) -> dict[str, Any]:
        """A fixed count, or Serve's autoscaling between the bounds on the deployment's signal."""
        options = super().deployment_options()
        if self.max_replicas is None or self.max_replicas == self.replicas:
            return options
        del options["num_replicas"]  # Serve refuses both
        bounds = {
            "min_replicas": self.replicas,
            "initial_replicas": self.replicas,
            "max_replicas": self.max_replicas,
            "upscale_delay_s": self.upscale_delay_s,
            "downscale_delay_s": self.downscale_delay_s,
            "look_back_period_s": self.look_back_period_s,
        }
        return {**options, "autoscaling_config": {**bounds, **self._scaling_signal()}}

    @abstractmethod
    def _scaling_signal(self) -> dict[str, Any]:
        """What the autoscaler compares with its target: Serve's names (the target, a policy).
        Each scalable deployment says its own (pydantic's model metaclass is an ABCMeta)."""


#: Who connects to NATS, each with its own permissions (services/events/permissions.py):
#: producers (PBX, CRM) publish inputs; the deployments; operators' CLI; admin provisions.
NatsRole = Literal["producer", "ingress", "preprocess", "rules", "notify", "streams", "operator", "admin"]


class NatsAuth(_Group):
    """One NATS identity: user/password, a token, an NKey seed file or a ``.creds`` (JWT) file."""

    user: str | None = Field(default=None, description="User name (with password).")
    password: SecretStr | None = Field(default=None, description="Password of `user`.")
    token: SecretStr | None = Field(default=None, description="Authentication token.")
    nkey_seed_file: Path | None = Field(default=None, description="File holding an NKey seed (`SU...`).")
    creds_file: Path | None = Field(default=None, description="A `.creds` file (user JWT and NKey seed).")

    @model_validator(mode="after")
    def _one_method(self) -> NatsAuth:
        methods = [
            name
            for name, used in (
                ("user/password", self.user is not None or self.password is not None),
                ("token", self.token is not None),
                ("nkey_seed_file", self.nkey_seed_file is not None),
                ("creds_file", self.creds_file is not None),
            )
            if used
        ]
        if len(methods) > 1:
            raise ValueError(f"choose one way to authenticate, not {' and '.join(methods)}")
        if (self.user is None) != (self.password is None):
            raise ValueError("user and password go together")
        return self

    @property
    def empty(self) -> bool:
        return not any((self.user, self.token, self.nkey_seed_file, self.creds_file))


class NatsSettings(_Group):
    """NATS: the server, subjects, streams, consumers and bounded redelivery."""

    url: str | None = Field(
        default=None,
        description="nats:// or tls:// URL of an existing server; unset starts the embedded nats-server. "
        "Credentials written into it (`nats://user:pw@host`) are moved to `auth` so the URL can be shown.",
    )
    auth: NatsAuth = Field(
        default_factory=NatsAuth, description="The identity of every component without its own in `roles`."
    )
    roles: dict[NatsRole, NatsAuth] = Field(
        default_factory=dict,
        description="An identity per role (producer, ingress, preprocess, rules, notify, operator, admin), each with only "
        "the permissions it needs (deploy/nats-server.conf); e.g. LISTENPOST_NATS__ROLES__RULES__CREDS_FILE.",
    )
    tls_ca_file: Path | None = Field(default=None, description="CA that signed the server's certificate (turns TLS on).")
    tls_cert_file: Path | None = Field(default=None, description="Client certificate, for servers that verify clients.")
    tls_key_file: Path | None = Field(default=None, description="Key of the client certificate.")
    tls_server_name: str | None = Field(default=None, description="Name to verify the server's certificate against.")
    tls_first: bool = Field(
        default=False, description="TLS handshake before anything else (the server's `handshake_first`)."
    )
    embedded_tls: bool = Field(
        default=True,
        description="The embedded nats-server speaks TLS with a certificate made at start (loopback only either way).",
    )
    secrets_dir: Path = Field(
        default=Path(".cache/listenpost/nats-secrets"),
        description="Where the embedded nats-server keeps the credentials, certificates and encryption key it "
        "generates (a 0700 folder of 0600 files); local commands read their identity from here.",
    )
    provision_on_start: bool = Field(
        default=True,
        description="Deployments create or update streams, consumers and buckets at start. Set false where an "
        "admin provisions them (`listenpost nats provision`) and the deployments' identities may not.",
    )
    data_dir: Path = Field(
        default=Path(".cache/nats"), description="JetStream storage of the embedded nats-server."
    )
    replicas: int = Field(
        default=1, ge=1, le=5,
        description="Copies of every stream, KV bucket and object store: 3 on a production cluster (one server "
        "may fail with nothing lost), 1 on one server. Provisioning refuses more than the cluster has servers.",
    )
    embedded_cluster: Literal[1, 3, 5] = Field(
        default=1,
        description="Servers the embedded nats-server runs as: 3 or 5 start a JetStream cluster on loopback "
        "(`listenpost serve --nats-cluster 3`), for trying and testing the clustered path on one machine.",
    )
    subject_prefix: str = Field(
        default="listenpost", pattern=r"^[A-Za-z0-9_-]+$", description="First token of every subject listenpost uses."
    )
    in_stream: str = Field(default="LISTENPOST_IN", description="Stream of inputs (`<prefix>.in.>`), work-queue retention.")
    out_stream: str = Field(default="LISTENPOST_OUT", description="Stream of captioned events and decisions (history).")
    dlq_stream: str = Field(default="LISTENPOST_DLQ", description="Stream of dead letters (`<prefix>.dlq.<stage>`).")
    advisory_stream: str = Field(
        default="LISTENPOST_ADVISORIES", description="Stream capturing JetStream's MAX_DELIVERIES advisories."
    )
    advisory_durable: str = Field(default="listenpost-advisories", description="Durable consumer of the advisories.")
    ingest_durable: str = Field(default="listenpost-ingest", description="Durable consumer of the inputs (Ingress).")
    batch_stream: str = Field(
        default="LISTENPOST_BATCH",
        description="Stream of batch inputs (`<prefix>.batch.<batch-id>`, `listenpost batch`), work-queue retention.",
    )
    batch_durable: str = Field(default="listenpost-batch", description="Durable consumer of the batch inputs (Ingress).")
    batch_duplicate_window_s: PositiveFloat = Field(
        default=48 * 3600.0,
        description="Dedup window of batch inputs: a batch re-run within it never submits a recording twice, even one "
        "still in flight.",
    )
    batch_max_msgs: PositiveInt = Field(default=100_000, description="Most batch inputs waiting; beyond it a submission is refused.")
    batch_max_bytes: PositiveInt = Field(default=2 * 1024**3, description="Most bytes of batch inputs waiting.")
    rules_durable: str = Field(default="listenpost-rules", description="Durable consumer of the rules engine.")
    ack_wait_s: PositiveFloat = Field(default=300.0, description="Redelivery if not acked within this time.")
    max_deliver: PositiveInt = Field(default=5, description="Bounded redelivery; never -1 (forever).")
    retry_delay_s: PositiveFloat = Field(default=5.0, description="First delay of a nak on a transient fault.")
    retry_delay_max_s: PositiveFloat = Field(default=60.0, description="Cap of the doubling nak delay.")
    fetch_batch: PositiveInt = Field(default=8, description="Messages asked for per pull.")
    max_payload_bytes: PositiveInt = Field(
        default=1024 * 1024, description="Largest NATS message; larger audio goes to the object store (claim check)."
    )
    out_max_age_s: PositiveFloat = Field(default=7 * 24 * 3600, description="History kept for replays.")
    duplicate_window_s: PositiveFloat = Field(default=600.0, description="JetStream Nats-Msg-Id dedup window.")

    @model_validator(mode="after")
    def _credentials_out_of_url(self) -> NatsSettings:
        """``nats://user:pw@host`` becomes ``nats://host`` plus ``auth``: a URL is shown in banners
        and logs, a secret never is. Every URL of a cluster's list is cleaned the same way."""
        if self.url is None or "@" not in self.url:
            return self
        found: list[NatsAuth] = []
        cleaned: list[str] = []
        for url in self.servers:
            parts = urlsplit(url)
            if parts.username is None:
                cleaned.append(url)
                continue
            user, password = unquote(parts.username), parts.password
            found.append(
                NatsAuth(user=user, password=SecretStr(unquote(password)))
                if password is not None
                else NatsAuth(token=SecretStr(user))
            )
            host = parts.hostname or ""
            netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
            cleaned.append(urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)))
        if not found:
            return self
        if not self.auth.empty:
            raise ValueError("credentials are both in the NATS URL and in nats.auth: keep one")
        if any(auth != found[0] for auth in found[1:]):
            raise ValueError("the NATS URLs carry different credentials: one identity connects to every server")
        self.auth = found[0]
        self.url = ",".join(cleaned)
        return self

    @model_validator(mode="after")
    def _replicas_fit_the_embedded_cluster(self) -> NatsSettings:
        if self.url is None and self.replicas > self.embedded_cluster:
            raise ValueError(
                f"replicas={self.replicas} needs {self.replicas} JetStream servers, and the embedded nats-server "
                f"runs {self.embedded_cluster}: start a cluster (embedded_cluster=3, `listenpost serve "
                "--nats-cluster 3`), point nats.url at one, or set replicas=1"
            )
        return self

    @property
    def servers(self) -> list[str]:
        """The URLs in ``url`` (comma-separated: the seed servers of a cluster; the client learns
        the others from the cluster itself)."""
        return [u.strip() for u in (self.url or "").split(",") if u.strip()]

    def identity(self, role: NatsRole) -> NatsAuth:
        """The identity ``role`` connects with: its own, else the shared one."""
        return self.roles.get(role) or self.auth

    @property
    def tls(self) -> bool:
        return self.tls_ca_file is not None or self.tls_first or (self.url or "").startswith("tls://")

    def subject(self, *tokens: str) -> str:
        return ".".join((self.subject_prefix, *tokens))

    # Bounds on what the streams and buckets may hold (issue 12, "resources are bounded"). Sized for
    # one machine: inputs are small (audio rides by reference), outputs are history. nats-server
    # reserves each max_bytes on disk when a stream is made: the defaults reserve 5.25 GiB in all.
    in_max_msgs: PositiveInt = Field(
        default=100_000, description="Most inputs waiting in the input stream; beyond it a publish is refused "
        "(HTTP 503 with Retry-After), nothing stored is dropped."
    )
    in_max_bytes: PositiveInt = Field(
        default=256 * 1024**2, description="Most bytes of inputs waiting in the input stream (refused beyond, as above)."
    )
    out_max_msgs: PositiveInt = Field(
        default=1_000_000, description="Most captioned events and decisions kept; the oldest go first."
    )
    out_max_bytes: PositiveInt = Field(
        default=2 * 1024**3, description="Most bytes of output history (the oldest go first), and of the outputs "
        "bucket (emptied by out_max_age_s)."
    )
    dlq_max_msgs: PositiveInt = Field(
        default=100_000, description="Most dead letters kept. A full dead-letter stream refuses new ones (logged as "
        "an error): the failed input then stays in the input stream, never silently dropped."
    )
    dlq_max_bytes: PositiveInt = Field(
        default=512 * 1024**2, description="Most bytes of dead letters, and of the dead-letter bucket; refused beyond."
    )
    dlq_max_age_s: PositiveFloat = Field(
        default=30 * 24 * 3600, description="Dead letters (and originals stored by reference) older than this expire."
    )
    outputs_bucket: str = Field(
        default="listenpost-outputs", pattern=r"^[A-Za-z0-9_-]+$",
        description="Object-store bucket for outputs too large for a NATS message (named by the `dataref` attribute).",
    )
    dlq_bucket: str = Field(
        default="listenpost-dlq", pattern=r"^[A-Za-z0-9_-]+$",
        description="Object-store bucket for dead-lettered originals too large to embed in the dead letter.",
    )
    max_handling_s: PositiveFloat = Field(
        default=3600.0, description="Longest a consumer works on one message; then it counts as a failed delivery "
        "(retried, then dead-lettered), so no message is held forever by heartbeats."
    )


class PreprocessSettings(_ScalableReplicas):
    """Fetching, decoding, windowing and measuring audio (``LISTENPOST_PREPROCESS__*``)."""

    num_cpus: float = Field(default=0.5, ge=0, description="CPUs reserved per Preprocessor replica.")
    max_ongoing_requests: PositiveInt = Field(
        default=64, description="Recordings a replica prepares at once (decoding runs in threads)."
    )
    target_ongoing_requests: PositiveFloat = Field(
        default=8.0,
        description="Recordings in preparation per replica the autoscaler aims at (with max_replicas): the "
        "Ingress calls it, so Serve counts them.",
    )

    # Windows handed to the model
    window_s: PositiveFloat = Field(default=30.0, le=30.0, description="Longest window handed to the model.")
    window_min_pause_s: PositiveFloat = Field(default=0.2, description="Shortest gap in speech that a cut may use.")
    window_overlap_s: float = Field(
        default=1.0, ge=0, description="Overlap of two windows where no pause was found and a cut splits speech "
        "(at most a quarter of window_s)."
    )
    min_window_s: PositiveFloat = Field(
        default=0.5, description="Shorter windows are padded with silence to this length (the model's minimum)."
    )
    channel_mode: Literal["split", "mix"] = Field(
        default="split", description="split: keep channels with roles apart; mix: always down-mix to mono."
    )
    # Limits
    max_duration_s: PositiveFloat = Field(default=4 * 3600.0, description="Longest recording accepted.")
    max_bytes: PositiveInt = Field(default=512 * 1024 * 1024, description="Largest encoded recording accepted.")
    max_inline_bytes: PositiveInt = Field(default=8 * 1024 * 1024, description="Largest inline data_base64 audio.")
    max_channels: PositiveInt = Field(default=16, description="Most channels a recording may have.")
    max_channel_seconds: PositiveFloat = Field(
        default=2 * 4 * 3600.0,
        description="Most channel-seconds a recording may decode to: the channels kept (each role-named "
        "channel, or 1 for a down-mix) times its duration. Counted while decoding; 28,800 is a 4-hour stereo call "
        "(1.8 GB at 16 kHz float32).",
    )
    max_samples_per_byte: PositiveFloat = Field(
        default=1000.0,
        description="Most decoded samples (frames x channels) per encoded byte, from the header and counted "
        "while decoding. Real codecs stay below ~145 (Opus at 6 kbit/s); a FLAC of constant subframes "
        "(a decompression bomb) reaches 4,500 and more.",
    )
    max_concurrent_prepares: PositiveInt = Field(
        default=4,
        description="Recordings a replica decodes at once (CPU-bound threads); more wait. "
        "max_ongoing_requests bounds the calls a replica accepts, fetching included.",
    )
    max_prepare_memory_bytes: PositiveInt = Field(
        default=4 * 1024**3,
        description="Memory a replica's prepares may hold together: each reserves its encoded bytes plus its "
        "projected 16 kHz float32 before decoding and waits for room; one whose own projection is larger is "
        "refused (stage validate).",
    )
    min_sample_rate: PositiveInt = Field(default=4_000, description="Lowest sample rate accepted.")
    max_sample_rate: PositiveInt = Field(default=192_000, description="Highest sample rate accepted.")
    silent_audio_dbfs: float = Field(
        default=-60.0, description="Recordings whose loudest 20 ms is quieter than this are refused as all-silent."
    )
    # Acoustics
    silence_dbfs: float = Field(default=-45.0, description="Frames quieter than this count as silence.")
    dead_air_min_s: PositiveFloat = Field(default=2.0, description="Silences at least this long count as dead air.")
    overtalk_min_s: PositiveFloat = Field(default=0.5, description="Overlaps at least this long count as overtalk.")
    clip_level: float = Field(
        default=0.98, gt=0, le=1.0, description="Samples at or above this magnitude count as clipped "
        "(0.98: the loudest mu-law code is 0.9803)."
    )
    # Voice activity (Silero VAD)
    vad_threshold: float = Field(default=0.5, gt=0, lt=1, description="Speech probability that starts speech.")
    vad_min_speech_s: float = Field(default=0.25, ge=0, description="Shorter bursts are not speech.")
    vad_min_silence_s: float = Field(default=0.1, ge=0, description="Shorter gaps do not end a speech segment.")
    vad_pad_s: float = Field(default=0.03, ge=0, description="Speech segments are widened by this on each side.")
    vad_gate_dbfs: float | None = Field(
        default=-60.0, description="Stretches quieter than this are not scored by the VAD (speed); null scores all."
    )
    # Sources
    file_roots: list[Path] = Field(
        default_factory=list,
        description="Directories local paths and file:// URIs must lie under (symlinks resolved, checked again on "
        "the opened file). None by default: local files are refused until a directory of recordings is named "
        "(never the working directory, which holds `.env` and `.cache/nats`). `listenpost submit` does not need "
        "one: it sends the audio inline or through the object store.",
    )
    object_buckets: list[str] = Field(
        default_factory=lambda: ["listenpost-audio"],
        min_length=1,
        description="NATS object-store buckets audio may be read from (claim check); `listenpost submit` "
        "uploads to the first. An event naming another bucket is dead-lettered.",
    )
    http_allow_private: list[str] = Field(
        default_factory=list,
        description="Host names or networks (CIDR) that http(s) sources may reach although they are private, "
        "loopback or link-local; by default only public addresses are fetched.",
    )
    http_connect_timeout_s: PositiveFloat = Field(default=5.0, description="Time to connect to an http(s) source.")
    http_read_timeout_s: PositiveFloat = Field(default=15.0, description="Longest wait for the next bytes.")
    http_total_timeout_s: PositiveFloat = Field(default=300.0, description="Longest time for a whole download.")
    http_max_redirects: int = Field(default=5, ge=0, description="Redirects followed, each re-checked.")
    http_ca_file: Path | None = Field(
        default=None, description="CA bundle to verify https sources with (an internal CA); unset: the default."
    )

    @model_validator(mode="after")
    def _rates_in_order(self) -> PreprocessSettings:
        if self.min_sample_rate > self.max_sample_rate:
            raise ValueError("min_sample_rate is above max_sample_rate")
        return self

    def _scaling_signal(self) -> dict[str, Any]:
        # Serve's own policy: the Ingress calls the Preprocessor, so Serve counts its recordings.
        return {"target_ongoing_requests": self.target_ongoing_requests}


#: What caption redaction can replace (services/captioner/redaction.py, docs/redaction.md).
RedactLabel = Literal["email", "phone", "card", "iban", "national_id"]
#: The national ids redaction knows (each a format, most with a checksum: docs/redaction.md).
NationalIdKind = Literal["us_ssn", "gb_nino", "gb_nhs", "de_idnr", "nl_bsn", "es_dni", "fr_nir", "it_codicefiscale"]


class CaptionerSettings(_ServeOptions):
    """The Captioner deployment: engine, engine arguments, sampling, autoscaling, facets."""

    engine: Literal["vllm", "transformers"] = Field(
        default="vllm", description="vllm: the production engine; transformers: the reference engine."
    )
    model: str = Field(default=REAL_MODEL, description="Hub id or local checkpoint path.")
    # Resources and autoscaling. A window takes seconds: scale on sustained queue depth, and keep
    # replicas warm (starting one loads ~63 GB of weights).
    num_gpus: float = Field(default=0.0, ge=0, description="GPUs per replica; 0 runs the CPU engine.")
    num_cpus: float = Field(default=0.5, ge=0, description="CPUs reserved per replica.")
    min_replicas: int = Field(default=1, ge=0, description="Keep >= 1: a cold start takes minutes.")
    max_replicas: int = Field(default=1, ge=1, description="Most replicas the autoscaler starts.")
    target_ongoing_requests: PositiveFloat = Field(
        default=32.0, description="Windows in flight per replica the autoscaler aims at: about max_num_seqs."
    )
    max_ongoing_requests: PositiveInt = Field(
        default=256, description="Windows a replica accepts at once (the rest queue in the caller)."
    )
    upscale_delay_s: float = Field(default=30.0, ge=0, description="Sustained load before adding a replica.")
    downscale_delay_s: float = Field(default=600.0, ge=0, description="Sustained idleness before removing one.")
    look_back_period_s: PositiveFloat = Field(default=30.0, description="Window over which load is averaged.")
    drain_timeout_s: PositiveFloat = Field(
        default=120.0, description="On shutdown, how long windows in flight may take to finish."
    )
    health_check_period_s: PositiveFloat = Field(default=10.0, description="How often Serve checks a replica.")
    health_check_timeout_s: PositiveFloat = Field(
        default=60.0, description="A health check slower than this fails the replica (the engine may be busy)."
    )
    # vLLM engine arguments.
    tensor_parallel_size: PositiveInt = Field(default=1, description="GPUs one engine spans (vLLM tensor parallel).")
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="Share of GPU memory vLLM may use (weights and KV cache)."
    )
    max_model_len: PositiveInt = Field(default=4096, description="Longest prompt + caption in tokens (~13 per s of audio).")
    max_num_seqs: PositiveInt = Field(default=32, description="Windows one engine batches at once.")
    max_num_batched_tokens: PositiveInt | None = Field(default=None, description="None: vLLM's default.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto", description="Weights' dtype; float32 on a CPU."
    )
    enforce_eager: bool = Field(default=False, description="No CUDA graphs / compilation: faster start, slower decode.")
    limit_mm_per_prompt: dict[str, int] = Field(
        default_factory=lambda: {"audio": 1, "image": 0, "video": 0},
        description="Items per prompt; one audio clip, no images or video (saves encoder memory).",
    )
    cpu_kvcache_gib: PositiveInt = Field(default=4, description="KV cache of the CPU build of vLLM.")
    engine_spans: bool = Field(
        default=True,
        description="vLLM's own request spans (queue, prefill, decode times), children of each window's `engine` "
        "span, exported where the OTEL_* variables send listenpost's; nothing without an endpoint.",
    )
    cpu_threads_bind: str = Field(
        default="auto",
        pattern=r"^(auto|nobind|[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*)$",
        description=(
            "CPU build of vLLM: the cores its model threads are bound to (VLLM_CPU_OMP_THREADS_BIND), "
            "e.g. `0-3`, so the pipeline keeps the other cores; `auto`: vLLM chooses; `nobind`: no binding."
        ),
    )
    # transformers engine.
    max_batch_size: PositiveInt = Field(default=8, description="transformers: windows per generate().")
    batch_wait_s: float = Field(default=0.05, ge=0, description="transformers: wait for more windows.")
    # Sampling: the model card's defaults.
    temperature: float = Field(default=0.6, ge=0, description="Sampling temperature (the model card's).")
    top_p: float = Field(default=0.95, gt=0, le=1, description="Nucleus sampling (the model card's).")
    top_k: int = Field(default=20, description="Top-k sampling (the model card's).")
    max_tokens: PositiveInt = Field(default=512, description="Longest caption per window; a longer one is cut.")
    seed: int | None = Field(default=None, description="Sampling seed (reproducible captions); unset: random.")
    # Facets.
    facets_extractor: Literal["lexicon", "guided"] = Field(
        default="lexicon", description="lexicon: fast, deterministic; guided: a JSON-schema pass through vLLM."
    )
    guided_max_tokens: PositiveInt = Field(default=1024, description="Longest guided-decoding answer per window.")
    engine_factory: str | None = Field(
        default=None,
        description="Import path 'module:callable' of (engine name, config dict) -> CaptionEngine; "
        "replaces the built-in engines (other backends, fault injection in tests).",
    )
    # Redaction of identifiers in captions (docs/redaction.md). On by default: call captions are
    # personal data, and an identifier that reaches LISTENPOST_OUT is copied to every consumer.
    redact: list[RedactLabel] = Field(
        default_factory=lambda: list(typing.get_args(RedactLabel)),
        description="Identifiers replaced by a typed placeholder before captions leave the Captioner "
        "(email, phone, card, iban, national_id); an empty list turns redaction off.",
    )
    redact_placeholders: dict[RedactLabel, str] = Field(
        default_factory=dict,
        description="Placeholder per label instead of the default [EMAIL], [PHONE], [CARD], [IBAN], [NATIONAL_ID].",
    )
    redact_phone_regions: list[str] = Field(
        default_factory=lambda: ["US"],
        description="Countries (ISO 3166 alpha-2) whose national phone formats are recognised; "
        "numbers written with +country code are recognised for every country (an empty list: only those).",
    )
    redact_national_ids: list[NationalIdKind] = Field(
        default_factory=lambda: list(typing.get_args(NationalIdKind)),
        description="National ids recognised when national_id is redacted: us_ssn, gb_nino, gb_nhs, de_idnr, "
        "nl_bsn, es_dni (and NIE), fr_nir, it_codicefiscale.",
    )
    redact_spoken_digits: bool = Field(
        default=True,
        description="Also read digits said as words ('four one one one ...', 'double four') as numbers.",
    )

    @field_validator("redact_placeholders")
    @classmethod
    def _placeholders(cls, value: dict[str, str]) -> dict[str, str]:
        for label, placeholder in value.items():
            if not placeholder.strip() or len(placeholder) > 64:
                raise ValueError(f"the placeholder of {label!r} must be 1 to 64 characters, not {placeholder!r}")
        return value

    @field_validator("redact_phone_regions")
    @classmethod
    def _phone_regions(cls, value: list[str]) -> list[str]:
        from phonenumbers import SUPPORTED_REGIONS  # here: only this check needs the phone metadata

        unknown = [r for r in value if r not in SUPPORTED_REGIONS]
        if unknown:
            raise ValueError(f"unknown region(s) {unknown}: ISO 3166 alpha-2 codes, upper case, e.g. 'GB'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CaptionerSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})")
        if self.num_gpus > 0 and self.engine == "vllm" and self.tensor_parallel_size > self.num_gpus:
            raise ValueError(
                f"tensor_parallel_size {self.tensor_parallel_size} needs as many GPUs per replica; "
                f"num_gpus is {self.num_gpus:g}"
            )
        return self

    def engine_env(self) -> dict[str, str]:
        """Environment the engine's process needs (vLLM reads these at import)."""
        if self.num_gpus > 0:
            return {}
        return {"VLLM_CPU_KVCACHE_SPACE": str(self.cpu_kvcache_gib), "VLLM_CPU_OMP_THREADS_BIND": self.cpu_threads_bind}

    def deployment_options(self) -> dict[str, Any]:
        """Resources, autoscaling, draining and health checks.

        A window takes seconds to caption and a replica minutes to start (weights load), so the
        autoscaler aims each replica at about one full vLLM batch of windows in flight
        (target_ongoing_requests ~ max_num_seqs), waits for sustained load before adding one and
        keeps replicas warm for long after it goes; max_ongoing_requests lets a replica queue more
        than a batch so the engine never waits for its next window.
        """
        options = super().deployment_options()
        options["ray_actor_options"].update({"num_gpus": self.num_gpus, "runtime_env": {"env_vars": self.engine_env()}})
        return {
            **options,
            "autoscaling_config": {
                "min_replicas": self.min_replicas,
                "initial_replicas": max(self.min_replicas, 1),
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
                "upscale_delay_s": self.upscale_delay_s,
                "downscale_delay_s": self.downscale_delay_s,
                "look_back_period_s": self.look_back_period_s,
            },
            # Serve stops routing to a stopping replica, waits this long for its calls, then runs
            # __del__ (which drains the engine itself): a little more than the engine's drain.
            "graceful_shutdown_timeout_s": self.drain_timeout_s + 30,
        }


class RulesSettings(_FixedReplicas):
    """The RulesEngine deployment: rule files, their state in NATS KV, evaluation limits."""

    directory: Path = Field(default=Path("router_rules"), description="Rule files (*.yaml), re-read when they change.")
    consume_subjects: list[str] = Field(
        default_factory=lambda: ["captioned", "live.captioned.>"],
        description="Subjects (below the prefix) of LISTENPOST_OUT that the rules engine evaluates: recordings' and "
        "live streams' windows.",
    )
    reload_interval_s: PositiveFloat = Field(default=2.0, description="How often rule files are checked.")
    emit_subjects: list[str] = Field(
        default_factory=lambda: ["rules.emit.>"],
        description="Subject patterns (below the prefix) that `emit` actions may publish to; a stream must hold them.",
    )
    state_bucket: str = Field(default="LISTENPOST_RULES_STATE", description="KV: debounce streaks, rate limits.")
    silence_bucket: str = Field(default="LISTENPOST_RULES_SILENCES", description="KV: silences.")
    status_bucket: str = Field(default="LISTENPOST_RULES_STATUS", description="KV: replica status, last good rules.")
    state_ttl_s: PositiveFloat = Field(default=7 * 24 * 3600.0, description="State not rewritten this long expires.")
    status_interval_s: PositiveFloat = Field(default=5.0, description="How often a replica writes its status to KV.")
    max_caption_chars: PositiveInt = Field(default=100_000, description="Longer captions are cut before evaluation.")
    max_list_items: PositiveInt = Field(default=1_000, description="Longer windows/facet lists are cut.")
    max_rule_ms: PositiveFloat = Field(default=250.0, description="A rule slower than this on one event is an error.")
    max_event_ms: PositiveFloat = Field(default=2_000.0, description="Rules not evaluated within this are errors.")
    max_rule_iterations: PositiveInt = Field(
        default=100_000,
        description="Comprehension steps a rule may take on one event (its loops times the list sizes, counted "
        "before it runs: about 1 µs each); a rule over it is an error, so no event holds the engine.",
    )
    max_hops: PositiveInt = Field(default=3, description="Events that went through this many rule engines are dropped.")

    def subjects(self, nats: NatsSettings) -> list[str]:
        return [nats.subject(s) for s in self.consume_subjects]

    @model_validator(mode="after")
    def _marker_is_not_a_rule_subject(self) -> RulesSettings:
        # The engine's own `rules.evaluated` marker: evaluating it would decide on a marker (and mark
        # that too), and an emit there would forge one.
        for name in ("consume_subjects", "emit_subjects"):
            covering = [p for p in getattr(self, name) if _subject_covers(p, EVALUATED_MARKER)]
            if covering:
                raise ValueError(
                    f"{name} {covering[0]!r} takes in {EVALUATED_MARKER!r}, the rules engine's own marker that an event "
                    "is evaluated: name narrower subjects"
                )
        return self


class StreamsSettings(_FixedReplicas):
    """The LiveStreams deployment: live audio cut into sliding windows, captioned as they close
    (docs/streams.md)."""

    enabled: bool = Field(default=True, description="Run the LiveStreams deployment (live audio over NATS and WebSocket).")
    window_s: PositiveFloat = Field(default=10.0, le=30.0, description="Length of each window (the model hears at most 30 s).")
    hop_s: PositiveFloat = Field(default=5.0, description="Time between window starts; below window_s, windows overlap.")
    gate_dbfs: float | None = Field(
        default=-50.0, description="A window whose loudest 20 ms is below this level is silent: counted, not captioned. "
        "Unset: every window is captioned."
    )
    min_final_s: PositiveFloat = Field(default=1.0, description="Shortest last window captioned at the end of a stream.")
    max_streams: PositiveInt = Field(default=16, description="Streams one replica owns at once; more wait for a replica.")
    max_waiting_windows: PositiveInt = Field(
        default=4, description="Windows of one stream waiting for the Captioner; beyond it the drop policy acts."
    )
    drop_policy: Literal["oldest", "alternate"] = Field(
        default="oldest", description="When the Captioner is behind: drop the oldest waiting window, or every other new one."
    )
    max_speed: PositiveFloat = Field(default=1.5, description="Audio per second of sending accepted (1 = real time).")
    speed_slack_s: PositiveFloat = Field(default=3.0, description="Audio a sender may be ahead of real time (its buffer).")
    idle_timeout_s: PositiveFloat = Field(default=30.0, description="A stream with no chunk for this long is closed.")
    max_chunk_bytes: PositiveInt = Field(default=64 * 1024, description="Largest chunk payload accepted.")
    max_held_chunks: PositiveInt = Field(
        default=50, description="Chunks held while waiting for a missing one; beyond it the missing one is counted lost."
    )
    max_stream_s: PositiveFloat = Field(default=4 * 3600.0, description="Longest a stream may stay open.")
    stray_check_s: PositiveFloat = Field(
        default=15.0, description="How often chunks for a stream that is not open (never started, or ended) are looked for."
    )
    summary: bool = Field(default=True, description="Publish one audio.captioned summary of each stream at its end.")
    live_stream: str = Field(default="LISTENPOST_LIVE", description="JetStream stream of live chunks (`<prefix>.stream.>`).")
    live_max_age_s: PositiveFloat = Field(default=3600.0, description="Chunks are kept this long (resuming after a restart).")
    live_max_bytes: PositiveInt = Field(default=1024**3, description="Most bytes of chunks kept; the oldest go first.")
    durable: str = Field(default="listenpost-streams", description="Durable consumer of stream starts (who owns which stream).")
    owner_ack_wait_s: PositiveFloat = Field(
        default=15.0, description="A stream whose owner stops heart-beating for this long moves to another replica."
    )
    max_owners: PositiveInt = Field(default=10, description="Owners a stream may have (restarts) before it is dead-lettered.")
    state_bucket: str = Field(default="LISTENPOST_STREAMS_STATE", description="KV: each open stream's last captioned window.")

    @model_validator(mode="after")
    def _hop_within_window(self) -> StreamsSettings:
        if self.hop_s > self.window_s:
            raise ValueError(f"hop_s ({self.hop_s:g}) is longer than window_s ({self.window_s:g}): audio between windows would be lost")
        return self


#: The rules engine's evaluated marker, below the subject prefix (services/rules/evaluated.py).
EVALUATED_MARKER = "rules.evaluated"


def _subject_covers(pattern: str, subject: str) -> bool:
    """Whether the NATS subject pattern (``*``, ``>``) matches ``subject``."""
    parts, tokens = pattern.split("."), subject.split(".")
    for i, part in enumerate(parts):
        if part == ">":
            return len(tokens) > i
        if i >= len(tokens) or part not in ("*", tokens[i]):
            return False
    return len(parts) == len(tokens)


class NotifySettings(_FixedReplicas):
    """Notifications: who hears about an alert (the routing tree, receivers, inhibition, time intervals), and the Notifier deployment."""

    enabled: bool = Field(
        default=False,
        description="Run the Notifier deployment in `listenpost serve` (off unless asked for: the shipped "
        "notification file names secrets that must be configured first, docs/notifications.md).",
    )
    replicas: PositiveInt = Field(
        default=1,
        description="Replicas of the Notifier: exactly 1. Inhibition reads the firing set that one queuer holds "
        "in memory; several replicas would each see only part of it.",
    )
    drain_timeout_s: PositiveFloat = Field(
        default=20.0,
        description="On shutdown, how long deliveries in flight may take to finish; the rest are redelivered "
        "after a restart (same idempotency key).",
    )

    file: Path = Field(
        default=Path("router_rules/notifications.yaml"),
        description="The notification file (`kind: Notifications`, docs/notifications.md); the rules loader skips it.",
    )
    secrets: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Receivers' secrets by the names the notification file uses (webhook URLs, tokens, SMTP "
        'passwords), e.g. `{"slack-ops": "https://hooks.slack.com/..."}`; never written in the file itself.',
    )
    secrets_dir: Path | None = Field(
        default=None,
        description="A folder of secrets, one per file named as the notification file names it (a mounted "
        "Kubernetes secret); `secrets` wins over a file of the same name.",
    )
    crm_mappings_dir: Path = Field(
        default=Path("crm"),
        description="CRM mapping files (`kind: CrmMapping`, *.yaml): how a call's summary becomes a CRM's request "
        "(docs/notifications.md, CRM write-back).",
    )
    reload_interval_s: PositiveFloat = Field(
        default=5.0, description="How often the notification file is checked for changes (a broken edit keeps the last good)."
    )
    # Delivery (services/notify/delivery.py, queue.py, sender.py): the LISTENPOST_NOTIFY stream holds
    # queued notifications (`<prefix>.notify.send.<receiver>`) and dead letters (`<prefix>.notify.dlq.<receiver>`).
    stream: str = Field(
        default="LISTENPOST_NOTIFY",
        description="Stream of queued notifications and their dead letters (work-queue retention: a sent "
        "notification leaves it; a dead letter stays until replayed, or stream_max_age_s).",
    )
    queue_durable: str = Field(
        default="listenpost-notify-queue", description="Durable consumer of alert decisions (LISTENPOST_OUT) that queues notifications."
    )
    send_durable: str = Field(default="listenpost-notify-send", description="Durable consumer of queued notifications (the sender).")
    crm_durable: str = Field(
        default="listenpost-notify-crm",
        description="Durable consumer of the rules engine's evaluated markers (LISTENPOST_OUT, `<prefix>.rules.evaluated`): "
        "the CRM write-back of each decided call to the notification file's `crm` targets.",
    )
    firing_bucket: str = Field(
        default="LISTENPOST_NOTIFY_FIRING",
        description="KV: the alerts firing now, which inhibition rules read (kept across restarts of the notifier).",
    )
    firing_s: PositiveFloat = Field(
        default=3600.0,
        description="How long an alert fires after it was last raised (decisions are events: nothing says when what "
        "they describe ended): it inhibits others, and stays in its aggregation group, until then; then it is "
        "resolved. Also the firing bucket's TTL.",
    )
    groups_bucket: str = Field(
        default="LISTENPOST_NOTIFY_GROUPS",
        description="KV: the aggregation groups (which alerts each route's groups hold, what was told and when), "
        "kept across restarts of the notifier.",
    )
    flush_interval_s: PositiveFloat = Field(
        default=1.0, description="How often the notifier looks for aggregation groups due (group_wait, group_interval)."
    )
    status_interval_s: PositiveFloat = Field(
        default=5.0, description="How often the notifier writes its status (receivers, queue) for `rules status`, `status` and `top`."
    )
    max_msgs: PositiveInt = Field(
        default=100_000, description="Most notifications and dead letters in the stream; beyond it a new one is refused "
        "(the alert decision is retried later), nothing stored is dropped."
    )
    max_bytes: PositiveInt = Field(default=256 * 1024**2, description="Most bytes in the notification stream (refused beyond).")
    stream_max_age_s: PositiveFloat = Field(
        default=30 * 24 * 3600.0, description="Dead letters older than this expire from the notification stream."
    )
    max_attempts: PositiveInt = Field(
        default=8, description="Delivery attempts of one notification before it is dead-lettered."
    )
    max_age_s: PositiveFloat = Field(
        default=24 * 3600.0,
        description="A notification not delivered this long after it was queued (or replayed) is dead-lettered, "
        "however many attempts it had: stale news is not sent late.",
    )
    backoff_base_s: PositiveFloat = Field(default=2.0, description="Delay before the second attempt; doubled for each one after.")
    backoff_max_s: PositiveFloat = Field(
        default=300.0, description="Longest delay between attempts (a receiver's Retry-After may ask for more)."
    )
    retry_after_max_s: PositiveFloat = Field(
        default=3600.0, description="Longest Retry-After honoured; a receiver asking more is dead-lettered at once."
    )
    concurrency: PositiveInt = Field(default=4, description="Deliveries in flight to one receiver at once.")
    max_in_flight: PositiveInt = Field(
        default=64, description="Notifications the sender holds at once, all receivers together (waiting for a slot included)."
    )

    @field_validator("replicas")
    @classmethod
    def _one_replica(cls, value: int) -> int:
        if value != 1:
            raise ValueError(
                f"the Notifier runs exactly 1 replica, not {value}: inhibition needs the one queuer that holds the "
                "firing set (raise concurrency or max_in_flight to send more at once)"
            )
        return value

    def deployment_options(self) -> dict[str, Any]:
        # Serve waits this long for __del__, which drains deliveries for up to drain_timeout_s.
        return {**super().deployment_options(), "graceful_shutdown_timeout_s": self.drain_timeout_s + 10}

    @model_validator(mode="after")
    def _bounded_delivery(self) -> NotifySettings:
        if self.max_age_s >= self.stream_max_age_s:
            raise ValueError(
                f"max_age_s ({self.max_age_s:g} s) must be shorter than stream_max_age_s ({self.stream_max_age_s:g} s), "
                "or the stream would expire a queued notification before the sender dead-letters it"
            )
        if self.backoff_base_s > self.backoff_max_s:
            raise ValueError("backoff_base_s must not exceed backoff_max_s")
        return self


class IngressSettings(_ScalableReplicas):
    """The Ingress deployment (the orchestrator): its replicas share one durable consumer."""

    max_ongoing_requests: PositiveInt = Field(
        default=100, description="HTTP requests and status calls a replica accepts at once."
    )
    max_in_flight: PositiveInt = Field(
        default=64,
        description="Events in flight per replica. The engine batches only windows of events in flight: with "
        "one-window events, replicas x max_in_flight must exceed the Captioner's max_num_seqs x replicas, or its "
        "batches never fill (bench/README.md, pipeline). Each event in flight holds its decoded windows.",
    )
    batch_max_in_flight: PositiveInt = Field(
        default=4,
        description="Batch inputs in flight per replica (docs/batch.md). Kept well below max_in_flight: batch work "
        "takes few of the Captioner's batch slots, so live and event-driven inputs keep priority.",
    )
    # Bounds on an input's `context`, checked at the HTTP door and again on every input consumed
    # (a 300-level context used to be accepted and fail only after captioning, five times).
    max_context_bytes: PositiveInt = Field(
        default=16 * 1024, description="Largest `context` of an input, as compact JSON (UTF-8 bytes)."
    )
    max_context_depth: PositiveInt = Field(
        default=8, description="Deepest nesting of objects and lists in an input's `context` (the context itself is 1)."
    )
    max_context_keys: PositiveInt = Field(
        default=256, description="Most keys in an input's `context`, counted in every nested object."
    )
    target_backlog: PositiveFloat = Field(
        default=64.0,
        description="Input messages (waiting in the stream and in flight) per replica the autoscaler aims at, "
        "with max_replicas: about max_in_flight, a replica holding all it may.",
    )

    def _scaling_signal(self) -> dict[str, Any]:
        """The input durable's backlog.

        The Ingress pulls from NATS, so Serve sees no requests to it and its own policy would
        never scale it: each replica reports the backlog (``record_autoscaling_stats``) and
        services/orchestrator/autoscaling.py turns it into a replica count. Serve applies the
        bounds and delays, as for every deployment.
        """
        return {
            "policy": {
                "policy_function": "services.orchestrator.autoscaling:BacklogPolicy",
                "policy_kwargs": {"target_per_replica": self.target_backlog},
            }
        }


#: Shortest bearer secret an API key may have: 32 characters of `openssl rand -base64 32` are ~190 bits.
MIN_API_KEY_CHARS = 32
# Standard Webhooks: signing secrets are 24 to 64 random bytes, base64, written with this prefix.
_WEBHOOK_SECRET_PREFIX = "whsec_"
_WEBHOOK_SECRET_BYTES = (24, 64)


def webhook_secret_key(text: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret (``whsec_`` + base64 of 24-64 bytes): the bytes.

    One decoding for the secrets the HTTP ingress verifies with and those the webhook receiver
    signs with. The ValueError says what is wrong, never the secret."""
    if not text.startswith(_WEBHOOK_SECRET_PREFIX):
        raise ValueError(f"must start with {_WEBHOOK_SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(text.removeprefix(_WEBHOOK_SECRET_PREFIX), validate=True)
    except ValueError:
        raise ValueError(f"is not base64 after {_WEBHOOK_SECRET_PREFIX!r}") from None
    low, high = _WEBHOOK_SECRET_BYTES
    if not low <= len(key) <= high:
        raise ValueError(f"is {len(key)} bytes, {low} to {high} are required")
    return key


def _read_secret(path: Path, what: str, key_id: str) -> SecretStr:
    """A secret kept in a file (a mounted Kubernetes secret): its content, surrounding whitespace stripped."""
    try:
        return SecretStr(path.read_text(encoding="utf-8").strip())
    except (OSError, UnicodeDecodeError) as exc:
        cause = exc.strerror if isinstance(exc, OSError) else exc
        raise ValueError(f"key {key_id!r}: cannot read {what} {str(path)!r}: {cause}") from None


class ApiKey(_Group):
    """One HTTP API key: who holds it, which event sources it may submit for, until when, how fast."""

    id: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Names the key in logs, problems and on stored events (never the secret).",
    )
    secret: SecretStr | None = Field(
        default=None, description=f"The bearer token, at least {MIN_API_KEY_CHARS} characters; or secret_file."
    )
    secret_file: Path | None = Field(default=None, description="File holding the bearer token (read at start).")
    sources: list[str] = Field(
        min_length=1,
        description="Glob patterns (fnmatch, case-sensitive; `*` also matches `/`) of the CloudEvents `source` "
        "this key may submit events for, e.g. `urn:pbx:site-a/*`.",
    )
    expires_at: AwareDatetime | None = Field(
        default=None, description="After this instant (ISO 8601 with an offset) the key is refused."
    )
    rate_per_s: PositiveFloat = Field(default=20.0, description="Events per second this key may submit (per replica).")
    burst: PositiveInt = Field(default=100, description="Events this key may submit at once before rate_per_s applies.")
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="Standard Webhooks signing secret (`whsec_` + base64 of 24-64 bytes): when set, every request "
        "with this key must also be signed (webhook-id, webhook-timestamp, webhook-signature headers).",
    )
    webhook_secret_file: Path | None = Field(default=None, description="File holding the webhook secret.")

    @model_validator(mode="before")
    @classmethod
    def _not_a_bare_secret(cls, data: Any) -> Any:
        if isinstance(data, str | SecretStr):
            raise ValueError(
                "a key is an object naming who holds it and what it may submit, not a bare secret: "
                '{"id": "pbx-a", "secret": "...", "sources": ["urn:pbx:a/*"]}'
            )
        return data

    @model_validator(mode="after")
    def _secrets(self) -> ApiKey:
        if self.secret is not None and self.secret_file is not None:
            raise ValueError(f"key {self.id!r}: set secret or secret_file, not both")
        if self.secret_file is not None:
            self.secret = _read_secret(self.secret_file, "secret_file", self.id)
        if self.secret is None:
            raise ValueError(f"key {self.id!r}: no secret: set secret or secret_file")
        if len(self.secret.get_secret_value()) < MIN_API_KEY_CHARS:
            raise ValueError(
                f"key {self.id!r}: the secret has {len(self.secret.get_secret_value())} characters, at least "
                f"{MIN_API_KEY_CHARS} are required (make one with `openssl rand -base64 32`)"
            )
        if self.webhook_secret is not None and self.webhook_secret_file is not None:
            raise ValueError(f"key {self.id!r}: set webhook_secret or webhook_secret_file, not both")
        if self.webhook_secret_file is not None:
            self.webhook_secret = _read_secret(self.webhook_secret_file, "webhook_secret_file", self.id)
        if self.webhook_secret is not None:
            self.webhook_key()  # refuse a malformed secret now, not on the first request
        return self

    def webhook_key(self) -> bytes | None:
        """The HMAC key of the webhook secret: the base64 after ``whsec_``, decoded."""
        if self.webhook_secret is None:
            return None
        try:
            return webhook_secret_key(self.webhook_secret.get_secret_value())
        except ValueError as exc:
            raise ValueError(f"key {self.id!r}: webhook_secret {exc}") from None


class HttpSettings(_Group):
    """The HTTP CloudEvents ingress (``POST /events`` on the Ingress deployment)."""

    enabled: bool = Field(default=False, description="Serve POST /events; off unless asked for.")
    host: str = Field(default="127.0.0.1", description="Where the Serve HTTP proxy listens (0.0.0.0: all interfaces).")
    port: int = Field(default=8000, ge=1, le=65535, description="Port of the Serve HTTP proxy.")
    keys: list[ApiKey] = Field(
        default_factory=list,
        description="API keys (JSON list of objects): `id`, `secret` or `secret_file`, `sources` (glob patterns "
        "of the event sources the key may submit for), optional `expires_at`, `rate_per_s`, `burst`, "
        "`webhook_secret` or `webhook_secret_file`. See docs/ingestion.md.",
    )
    allow_anonymous: bool = Field(
        default=False,
        description="Accept requests without a key, for any source. Only valid with no keys: an ingress "
        "with neither refuses to start rather than silently run open.",
    )
    webhook_tolerance_s: PositiveFloat = Field(
        default=300.0, description="Signed requests whose webhook-timestamp is further from now than this are refused."
    )
    max_body_bytes: PositiveInt = Field(
        default=1024 * 1024, description="Largest body of a single event (binary or structured mode)."
    )
    max_batch_bytes: PositiveInt = Field(default=4 * 1024 * 1024, description="Largest body of a batch.")
    max_batch_events: PositiveInt = Field(default=100, description="Most events in one batch.")
    publish_timeout_s: PositiveFloat = Field(
        default=10.0, description="How long to wait for JetStream to store an event before answering 503."
    )

    @model_validator(mode="before")
    @classmethod
    def _no_unbound_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "api_keys" in data:
            raise PydanticCustomError(
                "replaced_setting",
                "api_keys is replaced by keys: every key now has an id and the sources it may submit for, "
                'e.g. [{"id": "pbx-a", "secret": "...", "sources": ["urn:pbx:a/*"]}] (see docs/ingestion.md)',
            )
        return data

    @model_validator(mode="after")
    def _distinct_keys(self) -> HttpSettings:
        ids = [key.id for key in self.keys]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(f"key id(s) {', '.join(map(repr, twice))} used more than once: ids name keys in logs")
        secrets = [key.secret.get_secret_value() for key in self.keys if key.secret is not None]
        if len(secrets) != len(set(secrets)):
            raise ValueError("two keys share one secret: a request could not tell which key it holds")
        return self


class AdapterSettings(_Group):
    """Source adapters: declarative mappings from other CloudEvent types to audio.submitted."""

    enabled: bool = Field(default=True, description="Load the adapter files in `directory`.")
    directory: Path = Field(default=Path("adapters"), description="Adapter files (*.yaml); must exist when enabled.")


class AuditSettings(_Group):
    """The audit trail: who submitted, replayed, silenced, activated or erased what (append-only stream)."""

    stream: str = Field(
        default="LISTENPOST_AUDIT",
        description="Append-only stream of audit records (`<prefix>.audit.<action>`); deletes and purges are refused.",
    )
    max_age_s: PositiveFloat = Field(
        default=400 * 24 * 3600.0, description="How long audit records are kept (the only way one leaves the stream)."
    )
    publish_retry_s: PositiveFloat = Field(
        default=10.0,
        description="How long storing a record is retried (a restarting server) before it is given up and logged "
        "as an error; the action it records is not undone or held back.",
    )


class RetentionSettings(_Group):
    """How long uploaded audio is kept (events: nats.out_max_age_s; dead letters: nats.dlq_max_age_s)."""

    keep_audio_s: float = Field(
        default=0.0,
        ge=0,
        description="0: delete an uploaded audio object (object store) once its input is captioned; N > 0: keep "
        "it, and let the bucket expire objects N seconds after upload.",
    )
    keep_dead_lettered_audio: bool = Field(
        default=True,
        description="Keep a dead-lettered input's audio so `dlq replay` can process it again (it then ages out "
        "with audio_max_age_s); false deletes it with the refusal, and a replay fails at fetch.",
    )
    audio_max_age_s: PositiveFloat = Field(
        default=30 * 24 * 3600.0,
        description="With keep_audio_s 0: the object-store buckets' TTL, the most any audio object lives "
        "(uploaded but never submitted, waiting, or kept for a dead letter's replay).",
    )
    def audio_ttl_s(self) -> float:
        """The object-store buckets' TTL: keep_audio_s when audio is kept, else audio_max_age_s."""
        return self.keep_audio_s if self.keep_audio_s > 0 else self.audio_max_age_s


class LogSettings(_Group):
    """The replicas' logs (``LISTENPOST_LOGS__*``): Serve's per-replica log files, which the Ray
    dashboard shows by deployment and replica; listenpost's own lines join them."""

    encoding: Literal["JSON", "TEXT"] = Field(
        default="JSON",
        description="JSON: one object per line with the deployment, replica, Serve request id and the `event_id` "
        "of the event being handled (for a log shipper, and to filter one event's lines); TEXT: Serve's text format.",
    )
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="Lowest level written.")

    def serve_logging_config(self) -> dict[str, Any]:
        """A deployment's ``logging_config`` (Serve's names)."""
        return {"encoding": self.encoding, "log_level": self.level}


class MetricsSettings(_Group):
    """Prometheus metrics (services/metrics.py, docs/observability.md)."""

    jetstream_poll_s: float = Field(
        default=15.0,
        ge=0,
        description="How often the Ingress reads JetStream state (consumer lag, stream and bucket sizes, DLQ "
        "depth) into gauges; 0 turns the poller off.",
    )
    urls: list[str] = Field(
        default_factory=list,
        description="Ray's metrics endpoints, one per node (`http://NODE:PORT/metrics`; `NODE:PORT` will do), that "
        "`listenpost top` and `status` read latency, windows in flight and rule matches from. Empty: the local "
        "node's, which the running `listenpost serve` records in its runtime file.",
    )
    scrape_timeout_s: PositiveFloat = Field(default=3.0, description="Longest time to read one metrics endpoint.")
    scrape_max_bytes: PositiveInt = Field(
        default=32 * 1024 * 1024, description="A metrics endpoint's answer larger than this is refused (not read)."
    )


class Settings(BaseSettings):
    """Every setting of listenpost (``LISTENPOST_*``; see docs/settings.md)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", env_file=".env", extra="forbid")

    ray_address: str | None = Field(
        default=None, description="Ray cluster address (`auto`: the one `ray start` began on this node); unset starts a new local Ray."
    )
    source: str = Field(default="urn:listenpost", description="CloudEvents `source` of events we emit.")
    nats: NatsSettings = Field(default_factory=NatsSettings)
    ingress: IngressSettings = Field(default_factory=IngressSettings)
    preprocess: PreprocessSettings = Field(default_factory=PreprocessSettings)
    captioner: CaptionerSettings = Field(default_factory=CaptionerSettings)
    rules: RulesSettings = Field(default_factory=RulesSettings)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    streams: StreamsSettings = Field(default_factory=StreamsSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    adapters: AdapterSettings = Field(default_factory=AdapterSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    logs: LogSettings = Field(default_factory=LogSettings)

    def __init__(self, **values: Any) -> None:
        env_file = values.get("_env_file", self.model_config.get("env_file"))
        problems = unknown_variables(os.environ, env_file if isinstance(env_file, str | Path) else None)
        if problems:
            raise SettingsError(problems)
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SettingsError(_problems(exc)) from None

    @model_validator(mode="before")
    @classmethod
    def _only_known_keys(cls, data: Any) -> Any:
        return _known_keys(cls, data)

    @model_validator(mode="after")
    def _dead_letters_replayable(self) -> Settings:
        # A dead letter whose audio expired first cannot be replayed: say so at start, not at replay.
        audio_ttl, dlq_age = self.retention.audio_ttl_s(), self.nats.dlq_max_age_s
        if self.retention.keep_dead_lettered_audio and audio_ttl < dlq_age:
            raise ValueError(
                f"audio expires after {audio_ttl:g} s but dead letters are kept {dlq_age:g} s: raise "
                "retention.audio_max_age_s (or keep_audio_s), lower nats.dlq_max_age_s, or set "
                "retention.keep_dead_lettered_audio false"
            )
        return self


def capacity_warnings(settings: Settings) -> list[str]:
    """Valid settings that leave capacity unused, each in words and naming what to change."""
    warnings = []
    # An autoscaled Ingress grows with the backlog: its most replicas are what it can hold.
    ingress_replicas = settings.ingress.max_replicas or settings.ingress.replicas
    in_flight = ingress_replicas * settings.ingress.max_in_flight
    batch = settings.captioner.max_num_seqs * settings.captioner.max_replicas
    if settings.captioner.engine == "vllm" and in_flight < batch:
        warnings.append(
            f"the Ingress holds at most {in_flight} events in flight (ingress.replicas, or its max_replicas when it "
            f"autoscales, x ingress.max_in_flight) but the Captioner batches up to {batch} windows "
            "(captioner.max_num_seqs x captioner.max_replicas): with short calls the engine's batches cannot fill; "
            "raise ingress.max_in_flight or ingress.replicas (ingress.max_replicas when it autoscales)"
        )
    return warnings


def _problems(exc: ValidationError) -> list[str]:
    """Each error as ``group.key (LISTENPOST_GROUP__KEY): cause``."""
    out: list[str] = []
    for err in exc.errors(include_url=False):
        loc = tuple(str(part) for part in err["loc"])
        if err["type"] == "unknown_setting":
            out.extend(f"{_where((*loc, key))}: unknown setting{hint}" for key, hint in err["ctx"]["hints"].items())
            continue
        message = err["msg"]
        if err["type"] == "literal_error":
            message += f" (got {err['input']!r})"
        out.append(f"{_where(loc)}: {message}")
    return out


def _where(loc: tuple[str, ...]) -> str:
    """``captioner.max_replicas (LISTENPOST_CAPTIONER__MAX_REPLICAS)``: as written in a Serve
    config's ``args`` and as an environment variable."""
    return f"{'.'.join(loc)} ({ENV_PREFIX}{'__'.join(loc).upper()})" if loc else "settings"


def env_names() -> tuple[frozenset[str], tuple[str, ...]]:
    """Every ``LISTENPOST_`` variable that is a setting, and the prefixes below which any name
    is one (a map setting's keys, e.g. ``LISTENPOST_CAPTIONER__LIMIT_MM_PER_PROMPT__AUDIO``)."""
    names: set[str] = set()
    open_prefixes: list[str] = []
    for name, annotation in _leaves(Settings, ENV_PREFIX):
        names.add(name)
        if typing.get_origin(annotation) is dict or annotation is dict:
            open_prefixes.append(name + "__")
    return frozenset(names), tuple(open_prefixes)


def _leaves(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, Any]]:
    for field_name, info in model.model_fields.items():
        name = prefix + field_name.upper()
        yield name, info.annotation
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            yield from _leaves(info.annotation, name + "__")


def unknown_variables(environ: Mapping[str, str], env_file: str | Path | None = None) -> list[str]:
    """The problems of ``LISTENPOST_`` variables (in ``environ`` and the ``.env`` file) that are
    no setting, each with the closest setting."""
    found = [key for key in environ if key.upper().startswith(ENV_PREFIX)]
    if env_file is not None and Path(env_file).is_file():
        found += [key for key in dotenv_values(env_file) if key.upper().startswith(ENV_PREFIX)]
    names, open_prefixes = env_names()
    problems = []
    for key in dict.fromkeys(found):
        upper = key.upper()
        if upper in names or upper in NOT_SETTINGS or upper.startswith(open_prefixes):
            continue
        if upper in RENAMED:
            problems.append(f"{key}: this setting is now {RENAMED[upper]}")
        else:
            close = difflib.get_close_matches(upper[len(ENV_PREFIX) :], [n[len(ENV_PREFIX) :] for n in names], n=1)
            problems.append(f"{key}: unknown setting" + (f", did you mean {ENV_PREFIX}{close[0]}?" if close else ""))
    return problems


# --- the reference (docs/settings.md) --------------------------------------------------------


def settings_markdown() -> str:
    """docs/settings.md: every setting, its variable, type, default and description."""
    lines = [
        "# Settings",
        "",
        "<!-- Generated from services/settings.py by `listenpost settings doc -o docs/settings.md`;",
        "     tests/test_settings_and_deploy.py fails when it is not current. Edit the code, not this file. -->",
        "",
        "Every setting is an environment variable with the prefix `LISTENPOST_` (groups nested with",
        "`__`), or the same name, nested, in the `args` of a Serve config (deploy/serve-config.yaml):",
        "`LISTENPOST_CAPTIONER__MAX_REPLICAS=4` is `args: {captioner: {max_replicas: 4}}`. A `.env` file in",
        "the working directory is read too. Lists and maps take JSON (`LISTENPOST_PREPROCESS__FILE_ROOTS='[\"/calls\"]'`).",
        "",
        "Settings are strict: an unknown key, or a `LISTENPOST_` variable that is no setting, is an error",
        "naming it and the closest setting. The one exception is `LISTENPOST_VENV`, read by",
        "scripts/setup.sh.",
        "",
    ]
    groups: list[tuple[str, type[BaseModel]]] = []
    top = []
    for name, info in Settings.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            groups.append((name, info.annotation))
        else:
            top.append((name, info))
    lines += ["## General", "", *_table([(ENV_PREFIX + n.upper(), i) for n, i in top])]
    for group, model in groups:
        doc = (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else ""
        lines += [f"## {group}", "", *([doc, ""] if doc else [])]
        lines += _table(list(_rows(model, f"{ENV_PREFIX}{group.upper()}__")))
    return "\n".join(lines).rstrip() + "\n"


def _rows(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, Any]]:
    """A group's settings, nested groups (``nats.auth``) and maps of them (``nats.roles``) spelled out."""
    for name, info in model.model_fields.items():
        annotation, variable = info.annotation, prefix + name.upper()
        args = typing.get_args(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _rows(annotation, variable + "__")
        elif typing.get_origin(annotation) is dict and isinstance(args[1], type) and issubclass(args[1], BaseModel):
            yield variable, info
            yield from _rows(args[1], variable + "__<" + "\\|".join(typing.get_args(args[0])).upper() + ">__")
        else:
            yield variable, info


def _table(rows: list[tuple[str, Any]]) -> list[str]:
    out = ["| variable | type | default | description |", "|---|---|---|---|"]
    for name, info in rows:
        out.append(f"| `{name}` | {_type_name(info.annotation)} | {_default(info)} | {info.description or ''} |")
    return [*out, ""]


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is dict and isinstance(typing.get_args(annotation)[1], type):
        key, value = typing.get_args(annotation)
        keys = " \\| ".join(typing.get_args(key)) or key.__name__
        return f"map of {keys} to {value.__name__}"
    if typing.get_origin(annotation) is Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation))
    text = getattr(annotation, "__name__", None) if typing.get_origin(annotation) is None else None
    text = text or str(annotation).replace("typing.", "").replace("pathlib.", "").replace("pydantic.types.", "").replace(f"{__name__}.", "")
    return text.replace("|", "\\|")


def _default(info: Any) -> str:
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, Path):
        return "the working directory" if value == Path.cwd() else f"`{value}`"
    if isinstance(value, list) and value and all(isinstance(v, Path) for v in value):
        return "[the working directory]" if value == [Path.cwd()] else f"`{[str(v) for v in value]}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list | dict):
        return f"`{json.dumps(value)}`"
    if isinstance(value, float) and value.is_integer() and value >= 3600:
        return f"`{value:g}`"
    return f"`{value}`"
