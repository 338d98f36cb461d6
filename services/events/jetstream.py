"""JetStream plumbing: connecting, provisioning streams/consumers, publishing events.

Every publish is a JetStream publish that awaits the server's ack (a core
publish while disconnected may be buffered and never sent), and carries a
``Nats-Msg-Id`` so a redelivered input never duplicates an output within the
stream's dedup window.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import nats
from cloudevents.core.base import BaseCloudEvent
from nats.aio.client import Client as NATS
from nats.errors import ConnectionClosedError, ConnectionReconnectingError, NoRespondersError, OutboundBufferLimitError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NoStreamResponseError, NotFoundError, ServiceUnavailableError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from services.events.binding import encode_binary, encode_structured
from services.settings import AuditSettings, NatsSettings, RetentionSettings

log = logging.getLogger(__name__)


# What a nats-server restart looks like from the client: worth retrying, not worth failing an event.
TRANSIENT_NATS_ERRORS: tuple[type[BaseException], ...] = (
    NatsTimeoutError,
    asyncio.TimeoutError,
    NoRespondersError,
    NoStreamResponseError,
    ServiceUnavailableError,
    ConnectionReconnectingError,
    ConnectionClosedError,
    OutboundBufferLimitError,
    OSError,
)


async def connect(url: str, *, name: str, on_reconnect: Callable[[], Awaitable[None]] | None = None) -> NATS:
    """Connect with unbounded reconnects: a replica outlives nats-server restarts."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats %s: %s", name, exc)

    async def on_reconnected() -> None:
        log.info("nats %s: reconnected", name)
        if on_reconnect is not None:
            await on_reconnect()

    return await nats.connect(
        servers=[url],
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        error_cb=on_error,
        reconnected_cb=on_reconnected,
    )


def advisory_subjects(cfg: NatsSettings) -> list[str]:
    """JetStream advisories about input messages that failed for good (see ingest/advisories.py)."""
    return [f"$JS.EVENT.ADVISORY.CONSUMER.{kind}.{cfg.in_stream}.*" for kind in ("MAX_DELIVERIES", "MSG_TERMINATED")]


def stream_configs(
    cfg: NatsSettings, *, audit: AuditSettings | None = None, retention: RetentionSettings | None = None
) -> list[StreamConfig]:
    audit = audit or AuditSettings()
    retention = retention or RetentionSettings()
    return [
        # Work-queue retention removes a message once acked; DiscardPolicy.NEW
        # refuses new input when full rather than deleting unconsumed input.
        StreamConfig(
            name=cfg.in_stream,
            subjects=[cfg.subject("in", ">")],
            retention=RetentionPolicy.WORK_QUEUE,
            discard=DiscardPolicy.NEW,
            storage=StorageType.FILE,
            duplicate_window=cfg.duplicate_window_s,
            max_msg_size=cfg.max_payload_bytes,
        ),
        StreamConfig(
            name=cfg.out_stream,
            subjects=[
                cfg.subject("captioned"),
                cfg.subject("routes", ">"),
                cfg.subject("alerts", ">"),
                cfg.subject("tags"),
                cfg.subject("rules", ">"),
            ],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=cfg.out_max_age_s,
            duplicate_window=cfg.duplicate_window_s,
        ),
        StreamConfig(
            name=cfg.dlq_stream,
            subjects=[cfg.subject("dlq", ">")],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=retention.dlq_max_age_s,
            duplicate_window=cfg.duplicate_window_s,
        ),
        # Advisories are core messages, lost when nobody listens: a stream keeps them.
        StreamConfig(
            name=cfg.advisory_stream,
            subjects=advisory_subjects(cfg),
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            max_age=cfg.out_max_age_s,
        ),
        # The audit trail: append-only at the server (deny_delete, deny_purge), so no client,
        # listenpost's own erase included, can remove a record; only max_age ages them out.
        StreamConfig(
            name=audit.stream,
            subjects=[cfg.subject("audit", ">")],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=audit.max_age_s,
            duplicate_window=cfg.duplicate_window_s,
            deny_delete=True,
            deny_purge=True,
        ),
    ]


def consumer_configs(cfg: NatsSettings, rules_subjects: list[str]) -> dict[str, ConsumerConfig]:
    """Durable pull consumers, keyed by stream. MaxDeliver is always bounded."""
    common: dict[str, Any] = {
        "ack_policy": AckPolicy.EXPLICIT,
        "ack_wait": cfg.ack_wait_s,
        "max_deliver": cfg.max_deliver,
    }
    return {
        cfg.in_stream: ConsumerConfig(
            durable_name=cfg.ingest_durable, filter_subject=cfg.subject("in", ">"), **common
        ),
        cfg.out_stream: ConsumerConfig(
            durable_name=cfg.rules_durable, filter_subjects=rules_subjects, **common
        ),
        cfg.advisory_stream: ConsumerConfig(durable_name=cfg.advisory_durable, **common),
    }


async def provision(
    js: JetStreamContext,
    cfg: NatsSettings,
    rules_subjects: list[str] | None = None,
    *,
    audit: AuditSettings | None = None,
    retention: RetentionSettings | None = None,
) -> None:
    """Create or update the streams and durable consumers; safe to run at every start.

    ``audit`` and ``retention`` default to their default settings: services pass theirs.
    """
    for config in stream_configs(cfg, audit=audit, retention=retention):
        assert config.name is not None, "stream_configs() names every stream"
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            await js.add_stream(config)
            log.info("created stream %s", config.name)
        else:
            await js.update_stream(config)
    subjects = rules_subjects or [cfg.subject("captioned")]
    for stream, consumer in consumer_configs(cfg, subjects).items():
        # Creating a durable with an identical config is a no-op on the server;
        # a changed config is applied as an update.
        await js.add_consumer(stream, consumer)


def derive_msg_id(*parts: str) -> str:
    """A deterministic Nats-Msg-Id from the input's identity and the stage/rule."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]


async def publish_event(
    js: JetStreamContext,
    subject: str,
    event: BaseCloudEvent,
    *,
    msg_id: str,
    mode: Literal["binary", "structured"] = "binary",
    timeout_s: float = 5.0,
    retry_for_s: float = 60.0,
) -> bool:
    """Publish and await the stream's ack. Returns False when JetStream saw a duplicate.

    Retries transient faults (a restarting server) for ``retry_for_s``: the same
    ``Nats-Msg-Id`` makes a retry of a publish that did land harmless.
    """
    body, headers = encode_binary(event) if mode == "binary" else encode_structured(event)
    headers["Nats-Msg-Id"] = msg_id
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(TRANSIENT_NATS_ERRORS),
        stop=stop_after_delay(retry_for_s),
        wait=wait_exponential(multiplier=0.2, max=3.0),
        reraise=True,
    ):
        with attempt:
            ack = await js.publish(subject, body, headers=headers, timeout=timeout_s)
    return not ack.duplicate
