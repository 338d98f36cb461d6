"""Reading Ray's metrics endpoints (one per node), bounded in time and size.

An endpoint that cannot be read is a :class:`ScrapeError` with a reason in plain words; the
others are still read, so ``listenpost top`` shows what it can and says which URL failed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from urllib.parse import SplitResult, urlsplit

import httpx

from services.metricsview.exposition import ExpositionError, Scrape, combine, parse_exposition

#: The classic text format: what prometheus_client's parser reads (not OpenMetrics).
ACCEPT = "text/plain; version=0.0.4"


class ScrapeError(Exception):
    """A metrics endpoint not read: unreachable, too slow, too large, or not Prometheus text."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"{url}: {reason}")


class MetricsUrlError(ValueError):
    """A metrics URL that is not one: not http(s), no host, a port out of range."""


def metrics_urls(values: Iterable[str]) -> list[str]:
    """URLs from options and settings: comma-separated lists split, ``host:port`` taken as
    ``http://host:port/metrics``, duplicates dropped (a node read twice would count twice)."""
    out: list[str] = []
    for value in values:
        for part in value.split(","):
            url = part.strip()
            if not url:
                continue
            if "://" not in url:
                url = f"http://{url}"
            if _checked(url).path in ("", "/"):
                url = url.rstrip("/") + "/metrics"
            if url not in out:
                out.append(url)
    return out


def _checked(url: str) -> SplitResult:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- read to check it: out of range raises here, not in the socket layer
    except ValueError as exc:
        raise MetricsUrlError(f"not a metrics URL: {url} ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MetricsUrlError(f"not a metrics URL: {url} (expected http://HOST:PORT/metrics)")
    return parts


async def fetch_exposition(client: httpx.AsyncClient, url: str, *, max_bytes: int) -> str:
    """The body of ``url``; more than ``max_bytes`` is refused while it arrives, never held."""
    async with client.stream("GET", url, headers={"Accept": ACCEPT}) as reply:
        if reply.status_code != 200:
            raise ScrapeError(url, f"HTTP {reply.status_code} {reply.reason_phrase}".strip())
        body = bytearray()
        async for chunk in reply.aiter_bytes():
            body += chunk
            if len(body) > max_bytes:
                raise ScrapeError(url, f"the answer is larger than {max_bytes:,} bytes")
    return body.decode("utf-8", errors="replace")


async def scrape_one(client: httpx.AsyncClient, url: str, *, timeout_s: float, max_bytes: int, at: float) -> Scrape:
    """``url`` read and parsed within ``timeout_s`` in all (a slow trickle is cut off too)."""
    try:
        text = await asyncio.wait_for(fetch_exposition(client, url, max_bytes=max_bytes), timeout_s)
        return parse_exposition(text, source=url, at=at)
    except (TimeoutError, httpx.TimeoutException) as exc:
        raise ScrapeError(url, f"no answer within {timeout_s:g} s") from exc
    except httpx.ConnectError as exc:
        raise ScrapeError(url, f"cannot connect ({str(exc) or 'refused'})") from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise ScrapeError(url, f"{type(exc).__name__}: {exc}") from exc
    except ExpositionError as exc:
        raise ScrapeError(url, str(exc)) from exc


async def scrape(urls: Sequence[str], *, timeout_s: float, max_bytes: int, at: float) -> tuple[Scrape, dict[str, str]]:
    """Every URL read at once: what was read, combined, and why each other URL was not."""
    # Metrics endpoints are on the cluster's own network: a proxy from the environment is not for them.
    async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False, trust_env=False) as client:
        results = await asyncio.gather(
            *(scrape_one(client, url, timeout_s=timeout_s, max_bytes=max_bytes, at=at) for url in urls), return_exceptions=True
        )
    read: list[Scrape] = []
    failed: dict[str, str] = {}
    for url, result in zip(urls, results, strict=True):
        if isinstance(result, ScrapeError):
            failed[url] = result.reason
        elif isinstance(result, BaseException):
            raise result
        else:
            read.append(result)
    return combine(read) if read else Scrape(at=at), failed
