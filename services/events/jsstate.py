"""JetStream state as metrics: consumer lag, stream sizes, DLQ depths, object store bytes.

:func:`poll` asks the server (STREAM.INFO and CONSUMER.INFO only, which the ingress role
may do) and returns plain readings; :func:`record` sets them as gauges. The Ingress runs
:func:`poll_forever` every ``LISTENPOST_METRICS__JETSTREAM_POLL_S`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import StreamInfo
from pydantic import BaseModel

from services.events.jetstream import TRANSIENT_NATS_ERRORS, notify_subject
from services.metrics import Recorder, recorder
from services.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reading:
    metric: str
    value: float
    labels: tuple[tuple[str, str], ...] = ()


def current_replicas(info: StreamInfo) -> int:
    """The leader and the followers that are online and caught up (1 on a server without a cluster)."""
    cluster = info.cluster
    if cluster is None or not cluster.replicas:
        return 1 if cluster is None or cluster.leader else 0
    followers = sum(1 for peer in cluster.replicas if peer.current and not peer.offline)
    return (1 if cluster.leader else 0) + followers


async def poll(js: JetStreamContext, settings: Settings) -> list[Reading]:
    """One reading of every stream, durable and bucket listenpost works with."""
    nats, notify = settings.nats, settings.notify
    out: list[Reading] = []
    for stream in (nats.in_stream, nats.batch_stream, nats.out_stream, nats.dlq_stream, nats.advisory_stream, notify.stream):
        info = await js.stream_info(stream)
        state = info.state
        out.append(Reading("listenpost_stream_bytes", state.bytes, (("stream", stream),)))
        out.append(Reading("listenpost_stream_replicas", info.config.num_replicas or 1, (("stream", stream),)))
        out.append(Reading("listenpost_stream_replicas_current", current_replicas(info), (("stream", stream),)))
        out.append(Reading("listenpost_stream_messages", state.messages, (("stream", stream),)))
        if stream == nats.dlq_stream:
            out.append(Reading("listenpost_dlq_messages", state.messages))
    # The notification stream holds the queue and its dead letters: the server counts them by subject.
    by_subject = (await js.stream_info(notify.stream, subjects_filter=notify_subject(nats, "dlq"))).state.subjects or {}
    out.append(Reading("listenpost_notify_dead_letters", sum(by_subject.values())))
    for stream, durable in (
        (nats.in_stream, nats.ingest_durable),
        (nats.batch_stream, nats.batch_durable),
        (nats.advisory_stream, nats.advisory_durable),
        (nats.out_stream, nats.rules_durable),
        (nats.out_stream, notify.queue_durable),
        (notify.stream, notify.send_durable),
        (nats.out_stream, notify.crm_durable),
    ):
        info = await js.consumer_info(stream, durable)
        out.append(Reading("listenpost_consumer_pending_messages", info.num_pending or 0, (("durable", durable),)))
        out.append(Reading("listenpost_consumer_ack_pending_messages", info.num_ack_pending or 0, (("durable", durable),)))
    for bucket in (*settings.preprocess.object_buckets, nats.outputs_bucket, nats.dlq_bucket):
        state = (await js.stream_info(f"OBJ_{bucket}")).state
        out.append(Reading("listenpost_object_store_bytes", state.bytes, (("bucket", bucket),)))
    return out


def record(readings: list[Reading], metrics: Recorder | None = None) -> None:
    m = metrics or recorder()
    for r in readings:
        m.set(r.metric, r.value, **dict(r.labels))


async def poll_forever(js: JetStreamContext, settings: Settings, interval_s: float) -> None:
    """Poll until cancelled; a failed poll is logged and tried again next time."""
    log.info("polling JetStream state for metrics every %g s", interval_s)
    while True:
        try:
            record(await poll(js, settings))
        except TRANSIENT_NATS_ERRORS as exc:
            log.warning("JetStream state not polled (%r); trying again in %g s", exc, interval_s)
        except Exception:  # a metric gap, never a dead Ingress
            log.exception("JetStream state not polled; trying again in %g s", interval_s)
        await asyncio.sleep(interval_s)


# --- a snapshot for operators (`listenpost status`, `listenpost top`) ------------------------


class ConsumerState(BaseModel):
    stream: str
    pending: int
    ack_pending: int
    acked: int  # the consumer's ack floor: how many it has finished, for rates between snapshots


class Snapshot(BaseModel):
    """What JetStream says about listenpost at one moment."""

    at: float
    streams: dict[str, dict[str, int]]
    consumers: dict[str, ConsumerState]
    dlq_messages: int
    object_store_bytes: dict[str, int]


async def snapshot(js: JetStreamContext, settings: Settings) -> Snapshot:
    """Streams, durables and buckets read once (the same server calls as :func:`poll`)."""
    nats = settings.nats
    streams: dict[str, dict[str, int]] = {}
    for stream in (nats.in_stream, nats.batch_stream, nats.out_stream, nats.dlq_stream, nats.advisory_stream):
        info = await js.stream_info(stream)
        streams[stream] = {
            "messages": int(info.state.messages),
            "bytes": int(info.state.bytes),
            "replicas": int(info.config.num_replicas or 1),
            "replicas_current": current_replicas(info),
        }
    consumers: dict[str, ConsumerState] = {}
    for stream, durable in (
        (nats.in_stream, nats.ingest_durable),
        (nats.batch_stream, nats.batch_durable),
        (nats.out_stream, nats.rules_durable),
        (nats.advisory_stream, nats.advisory_durable),
    ):
        info = await js.consumer_info(stream, durable)
        floor = info.ack_floor.consumer_seq if info.ack_floor is not None else 0
        consumers[durable] = ConsumerState(
            stream=stream, pending=info.num_pending or 0, ack_pending=info.num_ack_pending or 0, acked=floor or 0
        )
    buckets = {}
    for bucket in (*settings.preprocess.object_buckets, nats.outputs_bucket, nats.dlq_bucket):
        buckets[bucket] = int((await js.stream_info(f"OBJ_{bucket}")).state.bytes)
    return Snapshot(
        at=time.time(),
        streams=streams,
        consumers=consumers,
        dlq_messages=streams[nats.dlq_stream]["messages"],
        object_store_bytes=buckets,
    )


def rates(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """Messages finished per second by each durable between two snapshots."""
    elapsed = max(after.at - before.at, 1e-9)
    return {
        durable: max(0, state.acked - before.consumers[durable].acked) / elapsed
        for durable, state in after.consumers.items()
        if durable in before.consumers
    }
