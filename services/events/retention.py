"""Retention of uploaded audio: deleted once its input is done with, unless asked to keep it.

An input's audio may sit in the NATS object store (``audio.object`` or a ``dataref``
claim check). With ``LISTENPOST_RETENTION__KEEP_AUDIO_S=0`` (the default) the Ingress
deletes that object once the input's ``audio.captioned`` is stored. A dead-lettered
input's audio is kept by default, so ``dlq replay`` can process it again; it then
ages out with the buckets' TTL (``audio_max_age_s``), which settings check is no
shorter than the DLQ's age. Audio named by a file path or URL is not ours: left alone.

Objects are removed message by message with JetStream's secure delete (the stored
bytes are overwritten), not with the object store's delete, which leaves a metadata
tombstone naming the object (see :func:`erase_object`).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator, Collection

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import ObjectStoreConfig, RawStreamMsg, StorageType
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError

from services.events.models import AudioSubmitted, ObjectRef
from services.events.placement import refusing_placement
from services.settings import RetentionSettings

log = logging.getLogger(__name__)


def object_stream(bucket: str) -> str:
    return f"OBJ_{bucket}"


def meta_subject(bucket: str, name: str) -> str:
    """The object store's metadata subject of an object (its name, base64url)."""
    return f"$O.{bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"


def owned_audio(submitted: AudioSubmitted, buckets: Collection[str]) -> ObjectRef | None:
    """The uploaded object an input's audio is, when it lies in one of listenpost's buckets."""
    ref = submitted.audio.object
    return ref if ref is not None and ref.bucket in buckets else None


def delete_after(outcome: str, retention: RetentionSettings) -> bool:
    """Whether an input's audio goes now that the input is ``captioned`` or ``dead-lettered``."""
    if retention.keep_audio_s > 0:
        return False
    return outcome == "captioned" or (outcome == "dead-lettered" and not retention.keep_dead_lettered_audio)


async def erase_object(js: JetStreamContext, bucket: str, name: str) -> int:
    """Securely delete every message of an object (chunks and metadata); returns how many.

    0 when the object is not there (already deleted, or never uploaded).
    """
    stream = object_stream(bucket)
    try:
        store = await js.object_store(bucket)
        info = await store.get_info(name, show_deleted=True)
    except (BucketNotFoundError, ObjectNotFoundError, NotFoundError):
        return 0
    subjects = [f"$O.{bucket}.C.{info.nuid}", meta_subject(bucket, name)]
    removed = 0
    for subject in subjects:
        removed += await delete_subject(js, stream, subject)
    return removed


async def messages_on(js: JetStreamContext, stream: str, subject: str) -> AsyncIterator[RawStreamMsg]:
    """Every stored message of ``stream`` on ``subject``, oldest first (all revisions of a key)."""
    seq = 1
    while True:
        try:
            raw = await js.get_msg(stream, seq, subject=subject, next=True)
        except NotFoundError:
            return
        yield raw
        seq = int(raw.seq or seq) + 1


async def delete_subject(js: JetStreamContext, stream: str, subject: str, *, dry_run: bool = False) -> int:
    """Securely delete every message of ``stream`` on ``subject`` (all revisions); how many
    (with ``dry_run``, how many there are)."""
    removed = 0
    async for raw in messages_on(js, stream, subject):
        if not dry_run:
            # The server's default (no_erase false) overwrites the message's bytes on disk.
            await js.delete_msg(stream, int(raw.seq or 0))
        removed += 1
    return removed


async def release_audio(
    js: JetStreamContext,
    submitted: AudioSubmitted,
    *,
    outcome: str,
    retention: RetentionSettings,
    buckets: Collection[str],
    event_id: str,
) -> bool:
    """Delete an input's uploaded audio if retention says it goes after ``outcome``.

    Never raises: the input's outcome is already stored, and an object left behind still
    expires with its bucket's TTL. Returns whether an object was deleted.
    """
    ref = owned_audio(submitted, buckets)
    if ref is None or not delete_after(outcome, retention):
        return False
    try:
        removed = await erase_object(js, ref.bucket, ref.name)
    except (nats.errors.Error, TimeoutError, OSError) as exc:
        log.warning(
            "audio of %s (%s/%s) not deleted after it was %s (%s); it expires with the bucket's TTL",
            event_id, ref.bucket, ref.name, outcome, exc,
        )  # fmt: skip
        return False
    if removed:
        log.info("deleted the audio of %s (%s/%s): input %s", event_id, ref.bucket, ref.name, outcome)
    return removed > 0


async def provision_audio_buckets(
    js: JetStreamContext, buckets: Collection[str], retention: RetentionSettings, *, replicas: int = 1
) -> None:
    """Create the audio buckets (``replicas`` copies each), or set their TTL: no audio object
    outlives ``audio_ttl_s()``."""
    ttl = retention.audio_ttl_s()
    for bucket in buckets:
        with refusing_placement(f"object store {bucket}", replicas):
            try:
                info = await js.stream_info(object_stream(bucket))
            except NotFoundError:
                await js.create_object_store(bucket, ObjectStoreConfig(ttl=ttl, storage=StorageType.FILE, replicas=replicas))
                log.info("created object store %s (objects expire after %g s)", bucket, ttl)
                continue
            if (info.config.max_age, info.config.num_replicas) != (ttl, replicas):
                await js.update_stream(info.config.evolve(max_age=ttl, num_replicas=replicas))
                log.info("object store %s: objects expire after %g s, %d replicas", bucket, ttl, replicas)
