"""Fetching audio bytes from where an ``audio.submitted`` event points.

Supported here: local paths and ``file://`` URIs (confined to configured
roots), inline ``data_base64``, and the NATS object store.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

from services.events.models import AudioRef, ObjectRef
from services.preprocess.errors import (
    InlineAudioError,
    PathOutsideRootsError,
    SourceNotFoundError,
    SourceTooLargeError,
    UnsupportedSourceError,
)

ObjectGetter = Callable[[ObjectRef], Awaitable[bytes]]


def resolve_local_path(uri: str, roots: Sequence[Path]) -> Path:
    """Map a path or file:// URI to a real path, refusing anything outside ``roots``.

    Symlinks and ``..`` are resolved first, so neither can escape a root.
    """
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise UnsupportedSourceError(f"file:// URI with a remote host is not supported: {uri!r}")
        raw = unquote(parsed.path)
    elif parsed.scheme == "" or (len(parsed.scheme) == 1 and uri[1:3] in (":\\", ":/")):
        raw = uri
    else:
        raise UnsupportedSourceError(f"unsupported audio URI scheme {parsed.scheme!r} in {uri!r}")
    path = Path(raw).expanduser().resolve()
    resolved_roots = [Path(root).expanduser().resolve() for root in roots]
    if not any(path.is_relative_to(root) for root in resolved_roots):
        allowed = ", ".join(str(r) for r in resolved_roots) or "(none configured)"
        raise PathOutsideRootsError(f"audio path {str(path)!r} is outside the allowed roots: {allowed}")
    return path


def read_local(path: Path, max_bytes: int) -> bytes:
    try:
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise SourceNotFoundError(f"audio file not found: {str(path)!r}") from exc
    if not path.is_file():
        raise SourceNotFoundError(f"audio path is not a regular file: {str(path)!r}")
    if size > max_bytes:
        raise SourceTooLargeError(f"audio file {str(path)!r} is {size} bytes, over the limit of {max_bytes}")
    return path.read_bytes()


def decode_inline(data_base64: str, max_bytes: int) -> bytes:
    # base64 is 4/3 of the payload: refuse before decoding a huge string.
    if len(data_base64) * 3 // 4 > max_bytes:
        raise InlineAudioError(f"inline audio is larger than the limit of {max_bytes} bytes")
    try:
        return base64.b64decode(data_base64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InlineAudioError(f"inline audio is not valid base64: {exc}") from exc


async def fetch_audio(
    ref: AudioRef,
    *,
    roots: Sequence[Path],
    max_bytes: int,
    get_object: ObjectGetter | None = None,
) -> bytes:
    """Return the raw (still encoded) audio bytes the reference points at."""
    if ref.data_base64 is not None:
        return decode_inline(ref.data_base64, max_bytes)
    if ref.object is not None:
        if get_object is None:
            raise UnsupportedSourceError("audio in the NATS object store, but no object store is connected")
        data = await get_object(ref.object)
        if len(data) > max_bytes:
            raise SourceTooLargeError(f"object {ref.object.bucket}/{ref.object.name} is over {max_bytes} bytes")
        return data
    assert ref.uri is not None  # AudioRef guarantees exactly one location
    return read_local(resolve_local_path(ref.uri, roots), max_bytes)
