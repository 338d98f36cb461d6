"""Erasing a call: every message, KV entry and audio object that carries its call id.

``listenpost erase --callid ID`` runs :func:`erase_call`, which looks everywhere rather
than where a call's data is expected to be:

- **every stream** but the audit trail (IN, OUT, DLQ, ADVISORIES and any other): each
  stored message is decoded (binary or structured CloudEvent, else JSON) and belongs to
  the call when a ``callid``/``call_id`` field, an extension or any string value equals
  the call id; a dead letter's embedded original is decoded and searched too. A live
  stream's chunks carry no call id: when the call's ``stream.started`` is found, every
  message on that stream's chunk subject goes with it (services/events/live.py);
- **every object store**: objects referenced by those messages (``audio.object``,
  ``dataref``), objects named ``<event id>/...`` after one of the call's events (how
  ``listenpost submit`` names uploads), and objects whose metadata names the call;
- **every KV bucket**, every revision of every key (history and tombstones): keys with a
  token that is the call id or one of the ``key_tokens`` derived from it (the rules'
  debounce streaks are ``streak.<rule>.<sha256(call id)>``: the caller, which may import
  the rules package, passes that hash) and values that mention it. An alert group shared with other calls is rewritten
  without the call's alerts; anything else is removed.

The buckets are searched first and once more at the end. First, because a running notifier
writes its aggregation groups only over the revision it last saw and reads a due group again
before queueing it (services/notify/grouper.py): once the call's groups are gone from the
bucket it queues nothing more of the call, so the notification stream, searched next, holds
all it will. At the end, for what work in flight stored meanwhile (a decision consumed while
the streams were searched).

Stream messages and objects are removed message by message with JetStream's secure
delete (the server overwrites the stored bytes), never with the object store's or KV's
delete, which leave tombstones naming the object or key. KV buckets refuse single-message
deletes (``deny_delete``, which the server will not lift), so a KV key is removed with a
purge filtered on its subject: every revision goes and no tombstone is written, but the
server does not overwrite purged bytes; they leave the disk when their block is compacted,
and until then JetStream encryption at rest is what protects them. The erasure is then recorded in the audit trail,
which keeps records naming the call id (ids only, no content): it is append-only by design.

Matching is on whole values, not substrings: erasing call ``42`` leaves call ``420`` and
a caption that says "42 seconds" alone. A group notification that carries alerts of
several calls is removed whole when one of them is erased.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal
from urllib.parse import unquote

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError
from pydantic import BaseModel, Field

from services.events.audit import Actor, operator_action, record
from services.events.binding import BindingError, decode, event_data_json
from services.events.claimcheck import OBJECT_SCHEME
from services.events.errors import EventsError
from services.events.retention import delete_subject, meta_subject
from services.settings import Settings

log = logging.getLogger(__name__)

_CALL_KEYS = frozenset({"callid", "call_id"})
_KV_PREFIX, _OBJ_PREFIX = "KV_", "OBJ_"
_MAX_DEPTH = 64  # a stored value nested deeper is searched no further (and does not recurse forever)
_KV_ATTEMPTS = 3  # a key rewritten by its owner meanwhile (the notifier) is judged again, this many times
#: A live stream's start (services/events/live.py): ``<prefix>.stream.<id>.started``.
_LIVE_START = re.compile(r"\.stream\.[A-Za-z0-9_-]{1,64}\.started$")


class ErasureError(EventsError):
    """An erasure that cannot start (an empty call id, an unreadable server)."""


class KeyKeptChangingError(EventsError):
    """A KV key written again every time erase was about to rewrite it (reported as not erased)."""


class Removal(BaseModel):
    place: str = Field(description="The stream, KV bucket or object store.")
    kind: Literal["message", "kv", "object"]
    item: str = Field(description="Sequence and subject, key, or object name.")
    action: Literal["deleted", "rewritten"] = "deleted"
    messages: int = Field(default=1, description="Stored messages securely deleted for it.")


class ErasureReport(BaseModel):
    call_id: str
    dry_run: bool = False
    removed: list[Removal] = Field(default_factory=list)
    failed: list[str] = Field(default_factory=list)
    audited: bool = Field(default=False, description="Whether the erasure's audit record was stored.")

    def counts(self) -> dict[str, int]:
        """Items per place: what the audit record keeps (counts, no content)."""
        out: dict[str, int] = {}
        for item in self.removed:
            out[item.place] = out.get(item.place, 0) + 1
        return out

    @property
    def ok(self) -> bool:
        return not self.failed and (self.audited or self.dry_run)


# --- recognising the call's data (pure) --------------------------------------------------


def mentions(value: Any, call_id: str, depth: int = 0) -> bool:
    """Whether a JSON value names the call: a string equal to it, a ``callid``/``call_id``
    field whose value (number or string) is it, or a dead letter's original that does."""
    if depth > _MAX_DEPTH:
        return False
    if isinstance(value, str):
        return value == call_id
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key in _CALL_KEYS and not isinstance(item, (Mapping, list)) and str(item) == call_id:
                return True
            if mentions(item, call_id, depth + 1):
                return True
        original = _embedded_message(value)
        return original is not None and message_mentions(*original, call_id, depth=depth + 1)
    if isinstance(value, list):
        return any(mentions(item, call_id, depth + 1) for item in value)
    return False


def _embedded_message(value: Mapping[str, Any]) -> tuple[str, dict[str, str], bytes] | None:
    """A dead letter's ``original`` (subject, headers, body_base64) as a message, if it is one."""
    body = value.get("body_base64")
    if not isinstance(body, str) or "headers" not in value:
        return None
    try:
        data = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return None
    headers = value.get("headers")
    return str(value.get("subject") or ""), dict(headers) if isinstance(headers, Mapping) else {}, data


def _decoded(headers: Mapping[str, str] | None, body: bytes) -> tuple[dict[str, Any], Any] | None:
    """(attributes, data) of a CloudEvent; ({}, JSON) of other JSON; None otherwise."""
    try:
        event = decode(body, headers)
        attributes = {k: v for k, v in event.get_attributes().items() if k != "data"}
        try:
            data = event_data_json(event)
        except (BindingError, ValueError):
            data = None
        return attributes, data
    except BindingError:
        pass
    try:
        return {}, json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def message_mentions(subject: str, headers: Mapping[str, str] | None, body: bytes, call_id: str, *, depth: int = 0) -> bool:
    """Whether a stored message carries the call (headers, CloudEvent attributes or data)."""
    for value in (headers or {}).values():
        if value == call_id or unquote(value) == call_id:  # ce- headers are percent-encoded
            return True
    decoded = _decoded(headers, body)
    if decoded is None:
        return False
    attributes, data = decoded
    if any(isinstance(v, str) and v == call_id for v in attributes.values()):
        return True
    return mentions(data, call_id, depth)


@dataclass
class CallRefs:
    """What the call's messages point at: uploaded audio and the ids of its events."""

    objects: set[tuple[str, str]] = field(default_factory=set)
    event_ids: set[str] = field(default_factory=set)
    #: (stream, chunk subject) of the call's live streams: their chunks carry no call id.
    live_audio: set[tuple[str, str]] = field(default_factory=set)

    def add_message(self, headers: Mapping[str, str] | None, body: bytes, depth: int = 0) -> None:
        decoded = _decoded(headers, body)
        if decoded is None or depth > 4:
            return
        attributes, data = decoded
        for name in ("id", "inputid", "originalid"):
            if isinstance(attributes.get(name), str):
                self.event_ids.add(attributes[name])
        dataref = attributes.get("dataref")
        if isinstance(dataref, str) and dataref.startswith(f"{OBJECT_SCHEME}://"):
            bucket, _, name = dataref.removeprefix(f"{OBJECT_SCHEME}://").partition("/")
            self.objects.add((bucket, unquote(name)))
        if not isinstance(data, Mapping):
            return
        audio = data.get("audio")
        ref = audio.get("object") if isinstance(audio, Mapping) else None
        if isinstance(ref, Mapping) and isinstance(ref.get("bucket"), str) and isinstance(ref.get("name"), str):
            self.objects.add((ref["bucket"], ref["name"]))
        source_event = data.get("source_event")
        if isinstance(source_event, Mapping) and isinstance(source_event.get("id"), str):
            self.event_ids.add(source_event["id"])
        original = data.get("original")
        embedded = _embedded_message(original) if isinstance(original, Mapping) else None
        if embedded is not None:
            self.add_message(embedded[1], embedded[2], depth + 1)

    def owns_object(self, bucket: str, name: str, call_id: str, meta: Mapping[str, Any]) -> bool:
        """Referenced by the call's events, named after one of them (``<event id>/file``) or
        after the call (``<call id>.wav``), or with metadata naming the call."""
        if (bucket, name) in self.objects:
            return True
        path = PurePosixPath(name)
        if path.parts and path.parts[0] in self.event_ids and len(path.parts) > 1:
            return True
        return path.stem == call_id or mentions(dict(meta), call_id)


KvDecision = Literal["keep", "delete", "rewrite"]


def kv_decision(key: str, value: bytes | None, call_id: str, key_tokens: Collection[str]) -> tuple[KvDecision, bytes | None]:
    """What becomes of a KV key whose latest value is ``value`` (None: deleted), given that
    some revision of it names the call: a latest value that does not name it is kept (its
    older revisions go), an alert group of several calls keeps the others' alerts, anything
    else goes."""
    if value is None:
        return "delete", None
    try:
        group = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return ("delete", None) if call_id.encode() in value else ("rewrite", value)
    if not mentions(group, call_id) and not any(token in value.decode() for token in key_tokens):
        return "rewrite", value
    if not key.startswith("group."):
        return "delete", None
    alerts = group.get("alerts") if isinstance(group, dict) else None
    if not isinstance(alerts, dict):
        return "delete", None
    kept = {fp: alert for fp, alert in alerts.items() if not mentions(alert, call_id)}
    rewritten = {**group, "alerts": kept}
    # The group's lists of fingerprints (told, held back) go without the erased alerts' too: a
    # fingerprint is derived from the call's labels.
    removed = set(alerts) - set(kept)
    for name, items in group.items():
        if isinstance(items, list) and any(isinstance(item, str) and item in removed for item in items):
            rewritten[name] = [item for item in items if item not in removed]
    text = json.dumps(rewritten)
    if not kept or mentions(rewritten, call_id) or any(token in text for token in key_tokens):
        return "delete", None
    return "rewrite", json.dumps(rewritten, separators=(",", ":"), sort_keys=True).encode()


def key_names_call(key: str, call_id: str, key_tokens: Collection[str]) -> bool:
    """A key built from the call: a token equal to the call id or to one derived from it."""
    tokens = key.split(".")
    return call_id in tokens or any(token in tokens for token in key_tokens)


# --- the shell: scanning and deleting -------------------------------------------------------


async def _all_streams(js: JetStreamContext) -> list[str]:
    names: list[str] = []
    while True:
        page = await js.streams_info(offset=len(names))
        names += [info.config.name for info in page if info.config.name]
        if not page:
            return names


async def _messages(js: JetStreamContext, stream: str, subject: str = ">") -> list[RawStreamMsg]:
    """Every stored message of ``stream`` (on ``subject``), oldest first (direct reads: no
    consumer left behind)."""
    out: list[RawStreamMsg] = []
    seq = 1
    while True:
        try:
            raw = await js.get_msg(stream, seq, subject=subject, next=True)
        except NotFoundError:
            return out
        out.append(raw)
        seq = int(raw.seq or seq) + 1


async def _delete(js: JetStreamContext, stream: str, seq: int, dry_run: bool) -> None:
    if not dry_run:
        await js.delete_msg(stream, seq)


async def erase_call(
    js: JetStreamContext,
    settings: Settings,
    call_id: str,
    *,
    actor: Actor,
    key_tokens: Collection[str] = (),
    dry_run: bool = False,
) -> ErasureReport:
    """Remove every trace of ``call_id`` outside the audit trail, then record the erasure.

    ``key_tokens``: KV key tokens other packages derive from the call id (hashes).
    ``dry_run`` finds and reports without deleting (and records nothing).
    """
    if not call_id.strip():
        raise ErasureError("the call id is empty: nothing to erase")
    report = ErasureReport(call_id=call_id, dry_run=dry_run)
    try:
        streams = await _all_streams(js)
    except (nats.errors.Error, TimeoutError) as exc:
        raise ErasureError(f"cannot list the streams: {exc}") from exc
    refs = CallRefs()
    buckets = [s for s in streams if s.startswith(_KV_PREFIX)]
    event_streams = [s for s in streams if not s.startswith((_KV_PREFIX, _OBJ_PREFIX)) and s != settings.audit.stream]
    # KV first: a running notifier reads its aggregation groups from their bucket again before it
    # queues one (services/notify/grouper.py), so once they are gone it queues nothing more of
    # the call, and the notification stream, searched next, holds all it ever will.
    for stream in buckets:
        await _erase_kv(js, stream, call_id, frozenset(key_tokens), report)
    for stream in event_streams:
        await _erase_messages(js, stream, call_id, refs, report)
    for stream, subject in sorted(refs.live_audio):
        await _erase_live_audio(js, stream, subject, report)
    for stream in (s for s in streams if s.startswith(_OBJ_PREFIX)):
        await _erase_objects(js, stream.removeprefix(_OBJ_PREFIX), call_id, refs, report)
    # Again: a decision of the call consumed while the streams were searched (its group, its
    # firing alert, a rule's streak) was stored after the first pass. (A dry run removed nothing:
    # it would find the same keys twice.)
    if dry_run:
        return report
    for stream in buckets:
        await _erase_kv(js, stream, call_id, frozenset(key_tokens), report)
    rec = operator_action(
        "erase", actor, call_id=call_id,
        details={"removed": report.counts(), "failed": len(report.failed)},
    )  # fmt: skip
    report.audited = await record(js, settings.nats, settings.audit, rec)
    log.info("erased call %s: %d items removed, %d failures", call_id, len(report.removed), len(report.failed))
    return report


async def _erase_messages(js: JetStreamContext, stream: str, call_id: str, refs: CallRefs, report: ErasureReport) -> None:
    try:
        messages = await _messages(js, stream)
    except (nats.errors.Error, TimeoutError) as exc:
        report.failed.append(f"{stream}: not read ({exc})")
        return
    for raw in messages:
        body = raw.data or b""
        if not message_mentions(raw.subject or "", raw.headers, body, call_id):
            continue
        refs.add_message(raw.headers, body)
        if _LIVE_START.search(raw.subject or ""):
            refs.live_audio.add((stream, (raw.subject or "").removesuffix(".started")))
        try:
            await _delete(js, stream, int(raw.seq or 0), report.dry_run)
        except (nats.errors.Error, TimeoutError) as exc:
            report.failed.append(f"{stream} #{raw.seq}: not deleted ({exc})")
            continue
        report.removed.append(Removal(place=stream, kind="message", item=f"#{raw.seq} {raw.subject}"))


async def _erase_live_audio(js: JetStreamContext, stream: str, subject: str, report: ErasureReport) -> None:
    """A live stream of the call: its chunks (and its end), found by the subject its start named."""
    try:
        messages = await _messages(js, stream, subject)
    except (nats.errors.Error, TimeoutError) as exc:
        report.failed.append(f"{stream} {subject}: not read ({exc})")
        return
    for raw in messages:
        try:
            await _delete(js, stream, int(raw.seq or 0), report.dry_run)
        except (nats.errors.Error, TimeoutError) as exc:
            report.failed.append(f"{stream} #{raw.seq}: not deleted ({exc})")
            continue
    if messages:
        report.removed.append(Removal(place=stream, kind="message", item=f"{subject} (live audio)", messages=len(messages)))


async def _erase_objects(js: JetStreamContext, bucket: str, call_id: str, refs: CallRefs, report: ErasureReport) -> None:
    try:
        store = await js.object_store(bucket)
        objects = await store.list(ignore_deletes=True)
    except NotFoundError:  # nats-py: an empty store lists as "not found"
        return
    except (nats.errors.Error, TimeoutError) as exc:
        report.failed.append(f"object store {bucket}: not listed ({exc})")
        return
    for info in objects:
        name = info.name or ""
        meta = {"description": info.description or "", "headers": dict(info.headers or {})}
        if not refs.owns_object(bucket, name, call_id, meta):
            continue
        stream = f"{_OBJ_PREFIX}{bucket}"
        try:
            count = 0
            for subject in (f"$O.{bucket}.C.{info.nuid}", meta_subject(bucket, name)):
                count += await delete_subject(js, stream, subject, dry_run=report.dry_run)
        except (nats.errors.Error, TimeoutError) as exc:
            report.failed.append(f"object {bucket}/{name}: not deleted ({exc})")
            continue
        report.removed.append(Removal(place=bucket, kind="object", item=name, messages=count))


async def _erase_kv(
    js: JetStreamContext, stream: str, call_id: str, key_tokens: frozenset[str], report: ErasureReport
) -> None:
    bucket = stream.removeprefix(_KV_PREFIX)
    prefix = f"$KV.{bucket}."
    try:
        messages = await _messages(js, stream)
    except (nats.errors.Error, TimeoutError) as exc:
        report.failed.append(f"KV {bucket}: not read ({exc})")
        return
    # KV buckets refuse single-message deletes (deny_delete, which cannot be lifted), so their
    # keys are purged: every revision, with no tombstone naming the key.
    secure = not (await js.stream_info(stream)).config.deny_delete
    revisions: dict[str, list[RawStreamMsg]] = {}
    for raw in messages:
        revisions.setdefault((raw.subject or "").removeprefix(prefix), []).append(raw)
    for key, history in revisions.items():
        try:
            done = await _erase_key(js, stream, bucket, key, history, call_id, key_tokens,
                                    secure=secure, dry_run=report.dry_run)  # fmt: skip
        except (nats.errors.Error, TimeoutError, KeyKeptChangingError) as exc:
            report.failed.append(f"KV {bucket} {key}: not erased ({exc})")
            continue
        if done is not None:
            decision, count = done
            report.removed.append(
                Removal(place=bucket, kind="kv", item=key, messages=count,
                        action="rewritten" if decision == "rewrite" else "deleted")
            )  # fmt: skip


def _kv_plan(
    key: str, history: list[RawStreamMsg], call_id: str, key_tokens: frozenset[str]
) -> tuple[KvDecision, bytes | None] | None:
    """What becomes of a key with these revisions (None: it does not carry the call)."""
    if key_names_call(key, call_id, key_tokens):
        return "delete", None
    if not any(_value_mentions(raw.data or b"", call_id) for raw in history):
        return None
    last = history[-1]
    deleted = (last.headers or {}).get("KV-Operation") in ("DEL", "PURGE")
    return kv_decision(key, None if deleted else (last.data or b""), call_id, key_tokens)


async def _erase_key(
    js: JetStreamContext,
    stream: str,
    bucket: str,
    key: str,
    history: list[RawStreamMsg],
    call_id: str,
    key_tokens: frozenset[str],
    *,
    secure: bool,
    dry_run: bool,
) -> tuple[KvDecision, int] | None:
    """Erase one key; what was done to it and how many stored revisions it had (None: it does
    not carry the call)."""
    subject = f"$KV.{bucket}.{key}"
    for _ in range(_KV_ATTEMPTS):
        plan = _kv_plan(key, history, call_id, key_tokens)
        if plan is None:
            return None
        decision, new_value = plan
        if dry_run:
            return decision, len(history)
        try:
            if decision == "rewrite" and new_value is not None and not secure:
                await _rewrite_key(js, stream, bucket, key, new_value, last=int(history[-1].seq or 0))
            else:
                await _remove_revisions(js, stream, subject, history, secure=secure)
                if decision == "rewrite" and new_value is not None:
                    # Every revision that named the call is gone; the others' alerts are written anew.
                    await (await js.key_value(bucket)).create(key, new_value)
        except KeyWrongLastSequenceError:
            # Written since it was read (a running notifier keeping its group): judge it again.
            history = await _messages(js, stream, subject)
            continue
        return decision, len(history)
    raise KeyKeptChangingError(f"it changed {_KV_ATTEMPTS} times while it was being erased; run erase again")


async def _rewrite_key(js: JetStreamContext, stream: str, bucket: str, key: str, value: bytes, *, last: int) -> None:
    """The new value over the latest revision, then every older revision purged. The key is
    never absent meanwhile (a running notifier that reads its group in between sees the old
    value or the new one, never none, and does not forget the group), and a write made since
    the key was read fails here (KeyWrongLastSequenceError) rather than being overwritten."""
    await (await js.key_value(bucket)).update(key, value, last=last)
    request = json.dumps({"filter": f"$KV.{bucket}.{key}", "keep": 1}).encode()
    await js._api_request(f"{js._prefix}.STREAM.PURGE.{stream}", request, timeout=5.0)


async def _remove_revisions(
    js: JetStreamContext, stream: str, subject: str, history: list[RawStreamMsg], *, secure: bool
) -> None:
    if secure:
        for raw in history:
            await js.delete_msg(stream, int(raw.seq or 0))
        return
    # A filtered purge: the server drops every message on the subject and writes no marker.
    # (nats-py's purge_stream() sends no filter; the API request is the documented one.)
    request = json.dumps({"filter": subject}).encode()
    await js._api_request(f"{js._prefix}.STREAM.PURGE.{stream}", request, timeout=5.0)


def _value_mentions(value: bytes, call_id: str) -> bool:
    try:
        parsed = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return call_id.encode() in value  # not JSON: the bytes are all there is to search
    return mentions(parsed, call_id)
