"""Fetching audio bytes from where an ``audio.submitted`` event points.

- local paths and ``file://`` URIs, confined to configured roots (none by default), opened
  without following a final symlink and checked again on the opened descriptor;
- ``http(s)://`` URLs, see :mod:`.http_source`;
- the NATS object store (``object: {bucket, name}``, the claim check);
- inline ``data_base64``.

Each failure is its own :class:`SourceError` subclass with a specific message.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import stat
from collections.abc import Awaitable, Callable, Collection, Sequence
from pathlib import Path
from urllib.parse import ParseResult, unquote, urlparse

from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectDeletedError, ObjectNotFoundError

from services.events.models import AudioRef, ObjectRef
from services.preprocess.errors import (
    BucketNotAllowedError,
    InlineAudioError,
    PathOutsideRootsError,
    SourceNotFoundError,
    SourceTooLargeError,
    SourceUnavailableError,
    UnsupportedSourceError,
)
from services.preprocess.http_source import HttpPolicy, fetch_http
from services.settings import PreprocessSettings

ObjectGetter = Callable[[ObjectRef], Awaitable[bytes]]
FILE_ROOTS_SETTING = "LISTENPOST_PREPROCESS__FILE_ROOTS"

__all__ = [
    "HttpPolicy",
    "ObjectGetter",
    "fetch_audio",
    "http_policy",
    "open_local",
    "read_local",
    "read_object",
    "resolve_local_path",
]


def http_policy(settings: PreprocessSettings) -> HttpPolicy:
    return HttpPolicy(
        allow_private=tuple(settings.http_allow_private),
        connect_timeout_s=settings.http_connect_timeout_s,
        read_timeout_s=settings.http_read_timeout_s,
        total_timeout_s=settings.http_total_timeout_s,
        max_redirects=settings.http_max_redirects,
        ca_file=str(settings.http_ca_file) if settings.http_ca_file else None,
    )


def _parse(uri: str) -> ParseResult:
    try:
        return urlparse(uri)
    except ValueError as exc:  # e.g. "http://[not-an-ip/": a bad URI is the input's fault, not ours
        raise UnsupportedSourceError(f"invalid audio URL: {exc}") from exc


def _local_path(uri: str) -> str:
    """The path a local URI names, as given (``file://`` decoded); other schemes are refused."""
    parsed = _parse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise UnsupportedSourceError(f"file:// URI with a remote host is not supported: {uri!r}")
        raw = unquote(parsed.path)
    elif parsed.scheme == "" or (len(parsed.scheme) == 1 and uri[1:3] in (":\\", ":/")):
        raw = uri
    else:
        raise UnsupportedSourceError(f"unsupported audio URI scheme {parsed.scheme!r} in {uri!r}")
    if "\x00" in raw:
        raise UnsupportedSourceError(f"audio path contains a NUL byte: {uri!r}")
    return raw


def _unavailable(uri: str) -> SourceNotFoundError:
    # One message and one type for a path outside the roots, a missing file, a symlink that leaves
    # the roots, a directory and an unreadable file: a dead letter must not tell an event's author
    # which files exist outside the roots, or where a link points.
    return SourceNotFoundError(f"audio file {uri!r} not found under the allowed roots")


def _roots(roots: Sequence[Path]) -> list[Path]:
    return [Path(root).expanduser().resolve() for root in roots]


def resolve_local_path(uri: str, roots: Sequence[Path]) -> Path:
    """Map a path or file:// URI to a real path under one of ``roots``.

    Symlinks, ``..`` and percent-encoded ``%2E%2E`` are resolved first, so none can escape a
    root. This is the first check only: :func:`read_local` checks again what it opened.
    """
    raw = _local_path(uri)
    if not roots:
        raise PathOutsideRootsError(
            f"local audio files are not accepted here: no roots are configured ({FILE_ROOTS_SETTING}); "
            f"refused {uri!r}"
        )
    path = Path(raw).expanduser().resolve()
    if not any(path.is_relative_to(root) for root in _roots(roots)):
        raise _unavailable(uri)
    return path


def _opened_path(fd: int) -> Path | None:
    """Where the kernel says ``fd`` lies (Linux's /proc), None where it cannot say."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return None


def open_local(uri: str, roots: Sequence[Path]) -> int:
    """A read-only descriptor of the regular file ``uri`` names, verified to lie under ``roots``.

    Checking a path and then opening it races with anyone who can rename in the roots (a
    file swapped for a symlink in between). So the last component is opened with
    ``O_NOFOLLOW`` (a symlink there fails), and what was opened is checked on the
    descriptor itself: the kernel's path of it must lie under a root, and it must be the
    very file (device and inode) that the check resolved. ``O_NONBLOCK``: a FIFO must not
    hang the reader.
    """
    path = resolve_local_path(uri, roots)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:  # missing, a symlink swapped in (ELOOP), permission denied...
        raise _unavailable(uri) from exc
    try:
        opened = os.fstat(fd)
        where = _opened_path(fd)
        inside = where is None or any(where.is_relative_to(root) for root in _roots(roots))
        try:
            checked = os.stat(path, follow_symlinks=False)
            same = (checked.st_dev, checked.st_ino) == (opened.st_dev, opened.st_ino)
        except OSError:
            same = False
        if not (inside and same and stat.S_ISREG(opened.st_mode)):
            raise _unavailable(uri)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_local(uri: str, roots: Sequence[Path], max_bytes: int) -> bytes:
    """The bytes of a local file under ``roots``, at most ``max_bytes``."""
    fd = open_local(uri, roots)
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise SourceTooLargeError(f"audio file {uri!r} is {size} bytes, over the limit of {max_bytes}")
        try:
            # Read what fstat() promised, then check the file did not grow past the limit since.
            # (Never read(max_bytes): Python would allocate the whole limit up front.)
            data = f.read(size)
            while len(data) <= max_bytes and (more := f.read(1 << 20)):
                data += more
        except OSError as exc:
            raise SourceUnavailableError(f"audio file {uri!r} cannot be read: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise SourceTooLargeError(f"audio file {uri!r} is over the limit of {max_bytes} bytes")
    return data


def decode_inline(data_base64: str, max_bytes: int) -> bytes:
    # base64 is 4/3 of the payload: refuse before decoding a huge string.
    if len(data_base64) * 3 // 4 > max_bytes + 3:
        raise InlineAudioError(f"inline audio is larger than the limit of {max_bytes} bytes")
    try:
        data = base64.b64decode("".join(data_base64.split()), validate=True)  # line breaks are common
    except (binascii.Error, ValueError) as exc:
        raise InlineAudioError(f"inline audio is not valid base64: {exc}") from exc
    if len(data) > max_bytes:
        raise InlineAudioError(f"inline audio is larger than the limit of {max_bytes} bytes")
    return data


async def read_object(js: JetStreamContext, ref: ObjectRef, *, max_bytes: int, buckets: Collection[str]) -> bytes:
    """An object from one of the ``buckets`` of the NATS object store; its size is checked
    before it is downloaded. Another bucket is refused before the store is asked anything (the
    event learns nothing of what it holds)."""
    if ref.bucket not in buckets:
        raise BucketNotAllowedError(
            f"object store bucket {ref.bucket!r} is not one audio is read from "
            f"(LISTENPOST_PREPROCESS__OBJECT_BUCKETS: {', '.join(buckets) or 'none'})"
        )
    where = f"{ref.bucket}/{ref.name}"
    try:
        store = await js.object_store(ref.bucket)
        info = await store.get_info(ref.name)
        if (info.size or 0) > max_bytes:
            raise SourceTooLargeError(f"object {where} is {info.size} bytes, over the limit of {max_bytes}")
        result = await store.get(ref.name)
    except BucketNotFoundError as exc:
        raise SourceNotFoundError(f"object store bucket {ref.bucket!r} not found") from exc
    except ObjectDeletedError as exc:
        raise SourceNotFoundError(f"object {where} was deleted from the NATS object store") from exc
    except (ObjectNotFoundError, NotFoundError) as exc:
        raise SourceNotFoundError(f"object {where} not found in the NATS object store") from exc
    except (NatsError, TimeoutError) as exc:
        raise SourceUnavailableError(f"could not read object {where}: {type(exc).__name__}: {exc}") from exc
    return bytes(result.data or b"")


async def fetch_audio(
    ref: AudioRef,
    *,
    roots: Sequence[Path],
    max_bytes: int,
    get_object: ObjectGetter | None = None,
    http: HttpPolicy | None = None,
    max_inline_bytes: int | None = None,
) -> bytes:
    """Return the raw (still encoded) audio bytes the reference points at.

    ``http`` None fetches http(s) URLs with the default policy (public addresses only).
    """
    if ref.data_base64 is not None:
        return decode_inline(ref.data_base64, min(max_bytes, max_inline_bytes or max_bytes))
    if ref.object is not None:
        if get_object is None:
            raise UnsupportedSourceError("audio in the NATS object store, but no object store is connected")
        data = await get_object(ref.object)
        if len(data) > max_bytes:
            raise SourceTooLargeError(f"object {ref.object.bucket}/{ref.object.name} is over {max_bytes} bytes")
        return data
    assert ref.uri is not None  # AudioRef guarantees exactly one location
    if _parse(ref.uri).scheme.lower() in ("http", "https"):
        return await fetch_http(ref.uri, max_bytes=max_bytes, policy=http or HttpPolicy())
    # A large file takes a while to read: keep the event loop free meanwhile.
    return await asyncio.to_thread(read_local, ref.uri, roots, max_bytes)
