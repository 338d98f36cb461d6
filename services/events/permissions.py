"""Who may publish and subscribe to what: one set of NATS permissions per role.

Least privilege, subject by subject. A producer (a PBX, a CRM, a webhook relay) may only
submit inputs and upload their audio, so it cannot forge a decision on LISTENPOST_OUT or add a
silence that mutes every alert. Each deployment may touch only the streams, consumers and
buckets it works with; the operators' command line reads everything and writes only what its
commands do; ``admin`` provisions streams and buckets and is used by nothing at run time.

JetStream is driven by subjects too, so the permissions name its API subjects: a pull consumer
needs ``$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>`` and ``$JS.ACK.<stream>.<durable>.>``; a
KV bucket ``B`` is the stream ``KV_B`` written on ``$KV.B.>``; an object store ``B`` is the stream
``OBJ_B`` written on ``$O.B.>``. Every role reads replies on its own inbox prefix
(``_INBOX_<role>``, see services/events/connection.py), never another role's.

The shipped server configuration (deploy/nats-server.conf) and the embedded server's are both
rendered from :func:`role_permissions` (services/events/server_config.py), so they cannot drift.
"""

from __future__ import annotations

from typing import get_args

from pydantic import BaseModel

from services.events.jetstream import NOTIFIER_STATUS_KEY, evaluated_subject, notify_subject
from services.settings import NatsRole, Settings

ROLES: tuple[NatsRole, ...] = get_args(NatsRole)


class Permissions(BaseModel):
    """Subjects a role may publish to and subscribe to (nats-server ``allow`` and ``deny`` lists)."""

    publish: list[str]
    subscribe: list[str]
    publish_deny: list[str] = []


def _api(*tokens: str) -> str:
    return ".".join(("$JS.API", *tokens))


def _stream_reader(stream: str) -> list[str]:
    """Read a stream: its info, single messages (direct or not), and ordered consumers of it."""
    return [
        _api("STREAM.INFO", stream),
        _api("STREAM.NAMES"),  # nats-py finds a subject's stream before it subscribes (object reads)
        _api("STREAM.MSG.GET", stream),
        _api("DIRECT.GET", stream),
        _api("DIRECT.GET", stream, ">"),
        _api("CONSUMER.CREATE", stream),
        _api("CONSUMER.CREATE", stream, ">"),
        _api("CONSUMER.DELETE", stream, ">"),
        _api("CONSUMER.INFO", stream, ">"),
        # Pulls from its own ephemeral consumers (which ack nothing: no $JS.ACK, so a reader
        # cannot acknowledge a durable's messages away).
        _api("CONSUMER.MSG.NEXT", stream, ">"),
        f"$JS.FC.{stream}.>",  # flow-control replies of ordered consumers
    ]


def _durable(stream: str, durable: str) -> list[str]:
    """Consume a stream through one provisioned durable pull consumer (no creating others)."""
    return [
        _api("STREAM.INFO", stream),
        _api("CONSUMER.INFO", stream, durable),
        _api("CONSUMER.MSG.NEXT", stream, durable),
        f"$JS.ACK.{stream}.{durable}.>",
    ]


def _kv_reader(bucket: str) -> list[str]:
    return _stream_reader(f"KV_{bucket}")


def _kv_writer(bucket: str) -> list[str]:
    return [*_kv_reader(bucket), f"$KV.{bucket}.>"]


def _object_reader(bucket: str) -> list[str]:
    return _stream_reader(f"OBJ_{bucket}")


def _object_uploader(bucket: str) -> list[str]:
    """Add objects to a bucket. nats-py reads an object's metadata (does the name exist?) with
    STREAM.MSG.GET, which the server cannot narrow to metadata: an uploader can read the bucket.
    Producers that must not see each other's audio get a bucket each (SECURITY.md)."""
    stream = f"OBJ_{bucket}"
    return [
        _api("STREAM.INFO", stream),
        _api("STREAM.MSG.GET", stream),
        _api("DIRECT.GET", stream, f"$O.{bucket}.M.>"),
        f"$O.{bucket}.C.>",
        f"$O.{bucket}.M.>",
    ]


def _object_deleter(bucket: str) -> list[str]:
    """Replace objects (nats-py purges the old chunks) and delete them for good (a secure delete
    of each chunk and of the metadata: services/events/retention.py)."""
    stream = f"OBJ_{bucket}"
    return [*_object_uploader(bucket), _api("STREAM.PURGE", stream), _api("STREAM.MSG.DELETE", stream)]


def role_permissions(settings: Settings) -> dict[NatsRole, Permissions]:
    """Every role's permissions for these settings (prefix, stream, bucket and durable names)."""
    nats, rules, notify, live = settings.nats, settings.rules, settings.notify, settings.streams
    prefix = nats.subject_prefix
    inputs = nats.subject("in", ">")
    batch_inputs = nats.subject("batch", ">")  # `listenpost batch` (services/batch/)
    captioned = nats.subject("captioned")
    dead_letters = nats.subject("dlq", ">")
    audit = nats.subject("audit", ">")
    decisions = [
        nats.subject("routes", ">"),
        nats.subject("alerts", ">"),
        nats.subject("tags"),
        *(nats.subject(s) for s in rules.emit_subjects),
    ]
    audio_buckets = settings.preprocess.object_buckets
    notify_send, notify_dlq = notify_subject(nats, "send"), notify_subject(nats, "dlq")
    event_streams = [
        nats.in_stream, nats.batch_stream, nats.out_stream, nats.dlq_stream, nats.advisory_stream, notify.stream, live.live_stream,
    ]  # fmt: skip
    live_audio = nats.subject("stream", ">")  # stream starts, chunks and ends (services/events/live.py)
    streams = [*event_streams, settings.audit.stream]
    kv_buckets = [
        rules.state_bucket, rules.silence_bucket, rules.status_bucket, notify.firing_bucket, notify.groups_bucket, live.state_bucket,
    ]  # fmt: skip
    object_buckets = [*audio_buckets, nats.outputs_bucket, nats.dlq_bucket]

    def inbox(role: NatsRole) -> str:
        return f"_INBOX_{role}.>"

    ingress = [
        inputs,  # the HTTP door publishes inputs it admitted
        live_audio,  # the WebSocket door (/streams/{id}) publishes the live audio it admitted
        captioned,
        dead_letters,
        audit,
        *_durable(nats.in_stream, nats.ingest_durable),
        *_durable(nats.batch_stream, nats.batch_durable),
        *_durable(nats.advisory_stream, nats.advisory_durable),
        *(_api("STREAM.INFO", s) for s in streams),
        # The metrics poller (services/events/jsstate.py) reads the rules engine's and notifier's lag too.
        _api("CONSUMER.INFO", nats.out_stream, nats.rules_durable),
        _api("CONSUMER.INFO", nats.out_stream, notify.queue_durable),
        _api("CONSUMER.INFO", notify.stream, notify.send_durable),
        _api("CONSUMER.INFO", nats.out_stream, notify.crm_durable),
        # An advisory names an input by sequence: read it to dead-letter it, then remove it.
        *(_api(op, s) for s in (nats.in_stream, nats.batch_stream) for op in ("STREAM.MSG.GET", "STREAM.MSG.DELETE")),
        # Large captions and dead letters' originals by reference (a redelivery replaces the
        # object: purge); uploaded audio deleted once it has served (retention).
        *_object_deleter(nats.outputs_bucket),
        *_object_deleter(nats.dlq_bucket),
        *(p for b in audio_buckets for p in _object_deleter(b)),
    ]
    rules_engine = [
        *(_api("STREAM.INFO", s) for s in streams),  # checks at start that an admin provisioned them
        *decisions,
        # Shadow matches and rule errors (services/rules/decisions.py), and the marker that an
        # event's decisions are all stored.
        nats.subject("rules", "shadow"),
        nats.subject("rules", "errors"),
        evaluated_subject(nats),
        dead_letters,
        audit,
        *_durable(nats.out_stream, nats.rules_durable),
        *_kv_writer(rules.state_bucket),
        *_kv_writer(rules.status_bucket),
        *_kv_reader(rules.silence_bucket),
        *_object_reader(nats.outputs_bucket),  # captions too large for a message
        *_object_deleter(nats.dlq_bucket),  # originals too large for a dead letter
    ]
    # The notifier: alert decisions in through its own durable, notifications queued, sent
    # (through its other durable) or dead-lettered, and the alerts firing now; the CRM writer's
    # evaluated markers through a third, the captioned event each names read by sequence (its
    # caption by reference too). No other stream, no decision, no input.
    notifier = [
        *(_api("STREAM.INFO", s) for s in streams),  # checks at start that an admin provisioned them
        notify_send,
        notify_dlq,
        # A decision or a message that can never be read, a CRM write given up: the events' DLQ.
        nats.subject("dlq", "notify"),
        nats.subject("dlq", "crm"),
        nats.subject("dlq", "retry"),
        *_durable(nats.out_stream, notify.queue_durable),
        *_durable(notify.stream, notify.send_durable),
        *_durable(nats.out_stream, notify.crm_durable),
        _api("STREAM.MSG.GET", nats.out_stream),
        *_object_reader(nats.outputs_bucket),
        *_kv_writer(notify.firing_bucket),
        *_kv_writer(notify.groups_bucket),
        # Its status, where `rules status` / `status` / `top` read it: one key of the status bucket.
        _api("STREAM.INFO", f"KV_{rules.status_bucket}"),
        f"$KV.{rules.status_bucket}.{NOTIFIER_STATUS_KEY}",
    ]
    # `dlq replay` republishes inputs, what the rules consume and evaluated markers (a CRM write
    # given up); `notify replay`, notifications.
    # The LiveStreams owners: stream starts through their durable, each stream's chunks read
    # from its position (ordered consumers), windows and summaries out, and where each stream is.
    stream_owner = [
        *(_api("STREAM.INFO", s) for s in streams),
        *_durable(live.live_stream, live.durable),
        *_stream_reader(live.live_stream),
        nats.subject("live", "captioned", ">"),
        captioned,
        nats.subject("dlq", "stream"),
        dead_letters,
        audit,
        *_kv_writer(live.state_bucket),
        # The summary is made of the stream's window events as stored (a resumed owner has them all).
        *_stream_reader(nats.out_stream),
        *_object_deleter(nats.outputs_bucket),  # a summary too large for a message
        *_object_deleter(nats.dlq_bucket),
    ]
    replayable = [inputs, batch_inputs, *(nats.subject(s) for s in rules.consume_subjects), evaluated_subject(nats), notify_send]
    # `listenpost stream` plays a file as a live stream.
    replayable.append(live_audio)
    operator = [
        *replayable,
        audit,
        _api("STREAM.NAMES"),
        _api("STREAM.LIST"),
        _api("INFO"),
        # Reads everything (dlq list, audit list, backtest, status, erase's search) ...
        *(p for s in streams for p in _stream_reader(s)),
        *(p for b in kv_buckets for p in _kv_reader(b)),
        *(p for b in object_buckets for p in _object_reader(b)),
        # ... writes silences, replays originals held by reference, and erases a call: secure
        # deletes in the event streams and buckets (never in the audit stream), KV purges.
        *_kv_writer(rules.silence_bucket),
        *(p for b in object_buckets for p in _object_deleter(b)),
        *(_api("STREAM.MSG.DELETE", s) for s in event_streams),
        *(_api("STREAM.MSG.DELETE", f"OBJ_{b}") for b in object_buckets),
        *(_api("STREAM.PURGE", f"KV_{b}") for b in kv_buckets),
        *(f"$KV.{b}.>" for b in kv_buckets),
    ]
    table: dict[NatsRole, Permissions] = {
        "producer": Permissions(
            publish=[inputs, batch_inputs, live_audio, *(p for b in audio_buckets[:1] for p in _object_uploader(b))],
            subscribe=[inbox("producer")],
            # The HTTP door's subject: what arrives there carries the API key that was checked.
            publish_deny=[nats.subject("in", "http")],
        ),
        # The WebSocket door relays the stream's window events and decisions back to its client.
        "ingress": Permissions(
            publish=ingress,
            subscribe=[
                inbox("ingress"), nats.subject("live", "captioned", ">"), nats.subject("alerts", ">"),
                nats.subject("routes", ">"), captioned, nats.subject("dlq", "stream"),
            ],  # fmt: skip
        ),
        "preprocess": Permissions(
            publish=[p for b in audio_buckets for p in _object_reader(b)], subscribe=[inbox("preprocess")]
        ),
        "rules": Permissions(publish=rules_engine, subscribe=[inbox("rules")]),
        "notify": Permissions(publish=notifier, subscribe=[inbox("notify")]),
        "streams": Permissions(publish=stream_owner, subscribe=[inbox("streams")]),
        # `listenpost submit` watches the outcome of what it sent as core messages.
        "operator": Permissions(publish=operator, subscribe=[inbox("operator"), f"{prefix}.>"]),
        "admin": Permissions(publish=[">"], subscribe=[">"]),
    }
    return {
        role: Permissions(publish=_unique(p.publish), subscribe=_unique(p.subscribe), publish_deny=p.publish_deny)
        for role, p in table.items()
    }


def _unique(subjects: list[str]) -> list[str]:
    return list(dict.fromkeys(subjects))
