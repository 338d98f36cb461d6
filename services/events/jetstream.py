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
from typing import Any, Literal

from cloudevents.core.base import BaseCloudEvent
from nats.errors import ConnectionClosedError, ConnectionReconnectingError, NoRespondersError, OutboundBufferLimitError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, BucketNotFoundError, NoStreamResponseError, NotFoundError, ServiceUnavailableError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential

from services.events.binding import encode_binary, encode_structured
from services.events.bounds import StreamFullError, stream_full
from services.events.placement import NotProvisionedError, converge_replicas, refusing_placement
from services.settings import (
    EVALUATED_MARKER,
    AuditSettings,
    NatsSettings,
    NotifySettings,
    RetentionSettings,
    Settings,
    StreamsSettings,
)

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


def advisory_subjects(cfg: NatsSettings) -> list[str]:
    """JetStream advisories about input messages that failed for good (see ingest/advisories.py)."""
    return [
        f"$JS.EVENT.ADVISORY.CONSUMER.{kind}.{stream}.*"
        for stream in (cfg.in_stream, cfg.batch_stream)
        for kind in ("MAX_DELIVERIES", "MSG_TERMINATED")
    ]


#: The notifier's status record in the rules status bucket, beside the engines' ``status.<replica>``.
NOTIFIER_STATUS_KEY = "notifier"


def notify_subject(cfg: NatsSettings, kind: Literal["send", "dlq"], receiver: str = ">") -> str:
    """``<prefix>.notify.send.<receiver>`` (queued notifications) or ``<prefix>.notify.dlq.<receiver>``
    (their dead letters); ``>``: every receiver's. A receiver's name is one token: its dots (which
    names may have) are written as ``_``; the message itself names the receiver exactly."""
    return cfg.subject("notify", kind, receiver if receiver in (">", "") else receiver.replace(".", "_"))


def evaluated_subject(cfg: NatsSettings) -> str:
    """``<prefix>.rules.evaluated``: the rules engine's marker that a captioned event's decisions
    are all stored (services/rules/evaluated.py). Inside LISTENPOST_OUT's ``rules.>``, outside
    the ``rules.emit.>`` that rules may emit to."""
    return cfg.subject(EVALUATED_MARKER)


def stream_configs(
    cfg: NatsSettings,
    *,
    audit: AuditSettings | None = None,
    retention: RetentionSettings | None = None,
    notify: NotifySettings | None = None,
    streams: StreamsSettings | None = None,
) -> list[StreamConfig]:
    audit = audit or AuditSettings()
    retention = retention or RetentionSettings()
    notify = notify or NotifySettings()
    streams = streams or StreamsSettings()
    return [
        # Work-queue retention removes a message once acked; DiscardPolicy.NEW
        # refuses new input when full rather than deleting unconsumed input.
        StreamConfig(
            name=cfg.in_stream,
            subjects=[cfg.subject("in", ">")],
            retention=RetentionPolicy.WORK_QUEUE,
            discard=DiscardPolicy.NEW,
            storage=StorageType.FILE,
            num_replicas=cfg.replicas,
            duplicate_window=cfg.duplicate_window_s,
            max_msg_size=cfg.max_payload_bytes,
            # Without these, discard: new never applies and IN grows until the disk is full.
            max_msgs=cfg.in_max_msgs,
            max_bytes=cfg.in_max_bytes,
        ),
        # Batch inputs (`listenpost batch`): their own stream and durable, so that a quarter's archive
        # waits here, not in front of live inputs. A long dedup window makes a re-run idempotent.
        StreamConfig(
            name=cfg.batch_stream,
            subjects=[cfg.subject("batch", ">")],
            retention=RetentionPolicy.WORK_QUEUE,
            discard=DiscardPolicy.NEW,
            storage=StorageType.FILE,
            num_replicas=cfg.replicas,
            duplicate_window=cfg.batch_duplicate_window_s,
            max_msg_size=cfg.max_payload_bytes,
            max_msgs=cfg.batch_max_msgs,
            max_bytes=cfg.batch_max_bytes,
        ),
        StreamConfig(
            name=cfg.out_stream,
            subjects=[
                cfg.subject("captioned"),
                cfg.subject("routes", ">"),
                cfg.subject("alerts", ">"),
                cfg.subject("tags"),
                cfg.subject("rules", ">"),
                cfg.subject("live", ">"),  # live streams' window events (services/events/live.py)
            ],
            retention=RetentionPolicy.LIMITS,
            # History: the oldest outputs make room for new ones (their inputs are already acked).
            discard=DiscardPolicy.OLD,
            storage=StorageType.FILE,
            num_replicas=cfg.replicas,
            max_age=cfg.out_max_age_s,
            max_msgs=cfg.out_max_msgs,
            max_bytes=cfg.out_max_bytes,
            duplicate_window=cfg.duplicate_window_s,
        ),
        # Dead letters are the only copy of a failed input: a full DLQ refuses new ones (the
        # consumer logs it and the input stays in IN) rather than deleting old ones unseen.
        StreamConfig(
            name=cfg.dlq_stream,
            subjects=[cfg.subject("dlq", ">")],
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.NEW,
            storage=StorageType.FILE,
            num_replicas=cfg.replicas,
            max_age=cfg.dlq_max_age_s,
            max_msgs=cfg.dlq_max_msgs,
            max_bytes=cfg.dlq_max_bytes,
            duplicate_window=cfg.duplicate_window_s,
        ),
        # Advisories are core messages, lost when nobody listens: a stream keeps them.
        StreamConfig(
            name=cfg.advisory_stream,
            subjects=advisory_subjects(cfg),
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=cfg.replicas,
            max_age=cfg.out_max_age_s,
        ),
        # The audit trail: append-only at the server (deny_delete, deny_purge), so no client,
        # listenpost's own erase included, can remove a record; only max_age ages them out.
        StreamConfig(
            name=audit.stream,
            subjects=[cfg.subject("audit", ">")],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=cfg.replicas,
            max_age=audit.max_age_s,
            duplicate_window=cfg.duplicate_window_s,
            deny_delete=True,
            deny_purge=True,
        ),
        # Notifications waiting for their receiver, and those that never reached it. Work-queue
        # retention: the sender's ack removes a delivered one; a dead letter has no consumer, so it
        # stays until `notify replay` (or max_age). Full: a new notification is refused (the alert
        # decision is retried later), never an older one dropped unsent.
        StreamConfig(
            name=notify.stream,
            subjects=[notify_subject(cfg, "send"), notify_subject(cfg, "dlq")],
            retention=RetentionPolicy.WORK_QUEUE,
            discard=DiscardPolicy.NEW,
            storage=StorageType.FILE,
            num_replicas=cfg.replicas,
            max_age=notify.stream_max_age_s,
            max_msgs=notify.max_msgs,
            max_bytes=notify.max_bytes,
            duplicate_window=cfg.duplicate_window_s,
        ),
        # Live audio: chunks and stream starts/ends (services/events/live.py). Limits retention, the
        # oldest going first: live audio is kept only to resume a stream after its owner restarts.
        StreamConfig(
            name=streams.live_stream,
            subjects=[cfg.subject("stream", ">")],
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            storage=StorageType.FILE,
            num_replicas=cfg.replicas,
            max_age=streams.live_max_age_s,
            max_bytes=streams.live_max_bytes,
            max_msg_size=cfg.max_payload_bytes,
            duplicate_window=cfg.duplicate_window_s,
        ),
    ]


def consumer_configs(
    cfg: NatsSettings, rules_subjects: list[str], notify: NotifySettings | None = None, streams: StreamsSettings | None = None
) -> list[tuple[str, ConsumerConfig]]:
    """Durable pull consumers, as (stream, config). MaxDeliver is always bounded."""
    notify = notify or NotifySettings()
    streams = streams or StreamsSettings()
    common: dict[str, Any] = {
        "ack_policy": AckPolicy.EXPLICIT,
        "ack_wait": cfg.ack_wait_s,
        "max_deliver": cfg.max_deliver,
    }
    return [
        (cfg.in_stream, ConsumerConfig(durable_name=cfg.ingest_durable, filter_subject=cfg.subject("in", ">"), **common)),
        (cfg.batch_stream, ConsumerConfig(durable_name=cfg.batch_durable, filter_subject=cfg.subject("batch", ">"), **common)),
        (cfg.out_stream, ConsumerConfig(durable_name=cfg.rules_durable, filter_subjects=rules_subjects, **common)),
        (cfg.advisory_stream, ConsumerConfig(durable_name=cfg.advisory_durable, **common)),
        # Alert decisions, turned into notifications (services/notify/queue.py).
        # Only decisions stored after it is made: a new deployment does not notify a week of history.
        (
            cfg.out_stream,
            ConsumerConfig(
                durable_name=notify.queue_durable,
                filter_subject=cfg.subject("alerts", ">"),
                deliver_policy=DeliverPolicy.NEW,
                **common,
            ),
        ),
        # Evaluated markers, for the CRM write-back (services/notify/crm_writer.py): as for the
        # queue, only calls decided after it is made; attempts counted like the sender's.
        (
            cfg.out_stream,
            ConsumerConfig(
                durable_name=notify.crm_durable,
                filter_subject=evaluated_subject(cfg),
                deliver_policy=DeliverPolicy.NEW,
                **{**common, "max_deliver": notify.max_attempts + NOTIFY_DELIVER_MARGIN},
            ),
        ),
        # Queued notifications. The sender counts attempts itself and dead-letters at max_attempts;
        # the margin lets a crash mid-attempt (redelivered after AckWait) not end it early.
        (
            notify.stream,
            ConsumerConfig(
                durable_name=notify.send_durable,
                filter_subject=notify_subject(cfg, "send"),
                **{**common, "max_deliver": notify.max_attempts + NOTIFY_DELIVER_MARGIN},
            ),
        ),
        # Stream starts: the replica that takes one owns the stream, heart-beating while it is open
        # (a short AckWait: a lost owner's streams move on quickly); each redelivery is a new owner.
        (
            streams.live_stream,
            ConsumerConfig(
                durable_name=streams.durable,
                filter_subject=cfg.subject("stream", "*", "started"),
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=streams.owner_ack_wait_s,
                max_deliver=streams.max_owners,
                max_ack_pending=-1,
            ),
        ),
    ]


#: Deliveries the notification sender's consumer allows beyond notify.max_attempts.
NOTIFY_DELIVER_MARGIN = 2


async def provision(
    js: JetStreamContext,
    cfg: NatsSettings,
    rules_subjects: list[str] | None = None,
    *,
    audit: AuditSettings | None = None,
    retention: RetentionSettings | None = None,
    notify: NotifySettings | None = None,
    streams: StreamsSettings | None = None,
) -> None:
    """Create or update the streams and durable consumers; safe to run at every start.

    ``audit``, ``retention`` and ``notify`` default to their default settings: services pass theirs.
    """
    for config in stream_configs(cfg, audit=audit, retention=retention, notify=notify, streams=streams):
        assert config.name is not None, "stream_configs() names every stream"
        with refusing_placement(f"stream {config.name}", config.num_replicas or 1, config.max_bytes):
            try:
                await js.stream_info(config.name)
            except NotFoundError:
                await js.add_stream(config)
                log.info("created stream %s (%d replicas)", config.name, config.num_replicas or 1)
            else:
                await js.update_stream(config)
    subjects = rules_subjects or [cfg.subject("captioned")]
    for stream, consumer in consumer_configs(cfg, subjects, notify, streams):
        # Creating a durable with an identical config is a no-op on the server;
        # a changed config is applied as an update.
        await js.add_consumer(stream, consumer)


async def ensure_provisioned(js: JetStreamContext, settings: Settings) -> None:
    """At a deployment's start: provision when its settings say it may, else check that an admin
    did, so a missing stream is one sentence at start and not a timeout at the first event."""
    if settings.nats.provision_on_start:
        await provision_everything(js, settings)
        return
    for config in stream_configs(
        settings.nats, audit=settings.audit, retention=settings.retention, notify=settings.notify, streams=settings.streams
    ):
        try:
            await js.stream_info(config.name or "")
        except NotFoundError:
            raise NotProvisionedError(
                f"stream {config.name} does not exist: run `listenpost nats provision` with admin credentials "
                "(LISTENPOST_NATS__PROVISION_ON_START is false, so deployments do not create streams)"
            ) from None


def bucket_configs(settings: Settings) -> tuple[list[KeyValueConfig], list[ObjectStoreConfig]]:
    """The KV buckets (rule state, silences, status) and the object stores of large outputs and
    dead letters' originals (the audio buckets: :func:`~services.events.retention.provision_audio_buckets`)."""
    rules, nats = settings.rules, settings.nats
    stored: dict[str, Any] = {"storage": StorageType.FILE, "replicas": nats.replicas}
    kv = [
        KeyValueConfig(bucket=rules.state_bucket, history=1, ttl=rules.state_ttl_s, **stored),
        KeyValueConfig(bucket=rules.silence_bucket, history=1, **stored),
        KeyValueConfig(bucket=rules.status_bucket, history=1, **stored),
        # An alert stops firing (for inhibition) when its key expires.
        KeyValueConfig(bucket=settings.notify.firing_bucket, history=1, ttl=settings.notify.firing_s, **stored),
        # Aggregation groups are dropped by the notifier when their last alert resolved: no TTL,
        # which could drop a group before it told its resolved alerts.
        KeyValueConfig(bucket=settings.notify.groups_bucket, history=1, **stored),
        # Where each open stream is (its last captioned window): a stream's key outlives it by a day at most.
        KeyValueConfig(bucket=settings.streams.state_bucket, history=1, ttl=settings.streams.max_stream_s + 86400, **stored),
    ]
    objects = [
        # An object lives as long as the event or dead letter that names it.
        ObjectStoreConfig(bucket=nats.outputs_bucket, ttl=nats.out_max_age_s, max_bytes=nats.out_max_bytes, **stored),
        ObjectStoreConfig(bucket=nats.dlq_bucket, ttl=nats.dlq_max_age_s, max_bytes=nats.dlq_max_bytes, **stored),
    ]
    return kv, objects


async def provision_everything(js: JetStreamContext, settings: Settings) -> None:
    """Streams, consumers, KV buckets and object stores: what an admin provisions once, before
    deployments whose identities may not create them start (``listenpost nats provision``)."""
    from services.events.retention import provision_audio_buckets

    nats = settings.nats
    await provision(
        js, nats, settings.rules.subjects(nats), audit=settings.audit, retention=settings.retention, notify=settings.notify,
        streams=settings.streams,
    )
    await provision_audio_buckets(js, settings.preprocess.object_buckets, settings.retention, replicas=nats.replicas)
    kv, objects = bucket_configs(settings)
    for kv_config in kv:
        assert kv_config.bucket is not None
        with refusing_placement(f"KV bucket {kv_config.bucket}", nats.replicas):
            try:
                await js.key_value(kv_config.bucket)
            except BucketNotFoundError:
                await js.create_key_value(kv_config)
                log.info("created KV bucket %s", kv_config.bucket)
            else:
                await converge_replicas(js, f"KV_{kv_config.bucket}", nats.replicas)
    for obj_config in objects:
        assert obj_config.bucket is not None
        with refusing_placement(f"object store {obj_config.bucket}", nats.replicas):
            try:
                await js.object_store(obj_config.bucket)
            except BucketNotFoundError:
                await js.create_object_store(obj_config.bucket, config=obj_config)
                log.info("created object store %s", obj_config.bucket)
            else:
                await converge_replicas(js, f"OBJ_{obj_config.bucket}", nats.replicas)


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
    ``Nats-Msg-Id`` makes a retry of a publish that did land harmless. Raises
    :class:`~services.events.bounds.StreamFullError` at once when the stream is full.
    """
    body, headers = encode_binary(event) if mode == "binary" else encode_structured(event)
    headers["Nats-Msg-Id"] = msg_id
    try:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_transient),
            stop=stop_after_delay(retry_for_s),
            wait=wait_exponential(multiplier=0.2, max=3.0),
            reraise=True,
        ):
            with attempt:
                ack = await js.publish(subject, body, headers=headers, timeout=timeout_s)
    except APIError as exc:
        if (limit := stream_full(exc)) is not None:
            raise StreamFullError(subject, limit) from exc
        raise
    return not ack.duplicate


def _transient(exc: BaseException) -> bool:
    # A full stream answers 503 like a restarting one, but waiting does not empty it.
    return isinstance(exc, TRANSIENT_NATS_ERRORS) and stream_full(exc) is None
