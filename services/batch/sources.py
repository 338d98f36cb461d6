"""SOURCE of ``listenpost batch``: a folder, a manifest file, or a manifest at an http(s) URL."""

from __future__ import annotations

from pathlib import Path

import httpx

from services.batch.manifest import MAX_MANIFEST_BYTES, Listing, ManifestRefused, from_folder, from_manifest_text


def load_listing(source: str, *, pattern: str = "*", timeout_s: float = 30.0) -> tuple[Listing, str]:
    """The recordings SOURCE names, and SOURCE as the run record keeps it (a folder or file
    resolved to an absolute path: the same archive, wherever the command runs from)."""
    if source.startswith(("http://", "https://")):
        return from_manifest_text(_fetch(source, timeout_s), name=source, base=source), source
    path = Path(source).expanduser().resolve()
    if path.is_dir():
        return from_folder(path, pattern), str(path)
    if not path.is_file():
        raise ManifestRefused(f"{source}: no such folder or manifest file")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ManifestRefused(f"{source}: larger than {MAX_MANIFEST_BYTES // 2**20} MiB; split it into several batches")
    return from_manifest_text(_text(path.read_bytes(), source), name=source, base=path.parent), str(path)


def _fetch(url: str, timeout_s: float) -> str:
    try:
        with httpx.stream("GET", url, timeout=timeout_s, follow_redirects=True) as response:
            response.raise_for_status()
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_MANIFEST_BYTES:
                    raise ManifestRefused(f"{url}: larger than {MAX_MANIFEST_BYTES // 2**20} MiB")
    except httpx.HTTPError as exc:
        raise ManifestRefused(f"{url}: could not be fetched ({exc})") from exc
    return _text(bytes(body), url)


def _text(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestRefused(f"{name}: not UTF-8 text (byte {exc.start}): a manifest is CSV or JSON Lines") from exc
