"""Fetching audio over http(s) without becoming a proxy into the private network (SSRF).

Every hop is checked before it is requested: the host is resolved, and each
address must be public (not private, loopback, link-local, multicast,
reserved or unspecified) unless the host name or the address's network is
allow-listed. The request then goes to the address that was checked (the
URL's host stays in the Host header and in TLS SNI, so certificates are
verified against the name), so a DNS answer that changes between check and
connect (rebinding) cannot redirect it. Redirects are followed by hand, up
to a limit, and each target is checked the same way. Proxies from the
environment are ignored: the checks assume a direct connection.

The body is streamed with a byte cap; connect, read and total timeouts bound
a slow or stalled server.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from dataclasses import dataclass, field

import httpx

from services.preprocess.errors import (
    BlockedAddressError,
    HttpStatusError,
    RedirectError,
    SourceNotFoundError,
    SourceTimeoutError,
    SourceTooLargeError,
    SourceUnavailableError,
    UnsupportedSourceError,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_REDIRECTS = {301, 302, 303, 307, 308}


@dataclass(frozen=True)
class HttpPolicy:
    """Where and how long http(s) sources may be fetched (from PreprocessSettings.http_*)."""

    allow_private: tuple[str, ...] = ()  # host names, or networks in CIDR form ("10.0.0.0/8", "127.0.0.1/32")
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 15.0
    total_timeout_s: float = 300.0
    max_redirects: int = 5
    ca_file: str | None = None  # CA bundle for https (an internal CA); None: the system's trust store
    _names: frozenset[str] = field(init=False, repr=False)
    _networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        names, networks = set(), []
        for entry in self.allow_private:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                names.add(_normal_host(entry))
        object.__setattr__(self, "_names", frozenset(names))
        object.__setattr__(self, "_networks", tuple(networks))

    def allows(self, host: str, address: IPAddress) -> bool:
        return _kind(address) is None or _normal_host(host) in self._names or any(address in n for n in self._networks)


def _normal_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


def shown(url: httpx.URL | str) -> str:
    """A URL fit for logs and dead letters: no user:password, no query (presigned URLs carry secrets there)."""
    try:
        parsed = httpx.URL(url) if isinstance(url, str) else url
        return repr(str(parsed.copy_with(userinfo=b"", query=None, fragment=None)))
    except (httpx.InvalidURL, TypeError, ValueError):
        return "<invalid URL>"


#: NAT64's well-known prefix: 64:ff9b::a9fe:a9fe reaches 169.254.169.254 through a NAT64 gateway.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _kind(address: IPAddress) -> str | None:
    """Why an address is not public, or None when it is."""
    if isinstance(address, ipaddress.IPv6Address):
        # IPv6 forms that carry an IPv4 address are judged by it (::ffff:127.0.0.1 is 127.0.0.1;
        # Python 3.11 calls 6to4 2002::/16 and NAT64 global whatever they embed).
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return _kind(embedded)
        if address.is_site_local:  # fec0::/10: deprecated, still routed inside some networks
            return "site-local"
    for kind, flag in (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("unspecified", address.is_unspecified),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
    ):
        if flag:
            return kind
    return None if address.is_global else "non-public"


async def resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise SourceUnavailableError(f"could not resolve host {host!r}: {exc}") from exc
    # Scope ids ("fe80::1%eth0") are not part of the address.
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))


async def _checked_requests(client: httpx.AsyncClient, url: httpx.URL, policy: HttpPolicy) -> list[httpx.Request]:
    """GETs of ``url``, one per resolved address, each pinned to an address that passed the policy."""
    if url.scheme not in ("http", "https"):
        raise UnsupportedSourceError(f"unsupported audio URI scheme {url.scheme!r} in {shown(url)}")
    if not url.host:
        raise UnsupportedSourceError(f"http(s) URL without a host: {shown(url)}")
    port = url.port or (443 if url.scheme == "https" else 80)
    addresses = await resolve(url.host, port)
    for address in addresses:
        if not policy.allows(url.host, address):
            raise BlockedAddressError(
                f"refusing to fetch {shown(url)}: {url.host} resolves to {address}, a {_kind(address)} address "
                "(allow it with http_allow_private)"
            )
    host_header = url.netloc.decode("ascii").rsplit("@", 1)[-1]
    headers = {"Host": host_header, "Accept": "audio/*, video/webm, application/octet-stream;q=0.9, */*;q=0.5"}
    sni = {"sni_hostname": url.raw_host.decode("ascii")}
    return [client.build_request("GET", url.copy_with(host=str(a)), headers=headers, extensions=sni) for a in addresses]


async def _send(client: httpx.AsyncClient, requests: list[httpx.Request]) -> httpx.Response:
    """Send to the first address that accepts a connection (a dual-stack name may have a dead IPv6)."""
    for request in requests[:-1]:
        try:
            return await client.send(request, stream=True)
        except httpx.ConnectError:
            continue
    return await client.send(requests[-1], stream=True)


async def fetch_http(url: str, *, max_bytes: int, policy: HttpPolicy) -> bytes:
    """The body at ``url``, following at most ``policy.max_redirects`` checked redirects."""
    timeout = httpx.Timeout(
        connect=policy.connect_timeout_s, read=policy.read_timeout_s, write=policy.read_timeout_s,
        pool=policy.connect_timeout_s,
    )  # fmt: skip
    try:
        current = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise UnsupportedSourceError(f"invalid audio URL: {exc}") from exc
    try:
        async with asyncio.timeout(policy.total_timeout_s):
            verify = ssl.create_default_context(cafile=policy.ca_file) if policy.ca_file else True
            async with httpx.AsyncClient(
                follow_redirects=False, trust_env=False, timeout=timeout, verify=verify
            ) as client:
                for _ in range(policy.max_redirects + 1):
                    response = await _send(client, await _checked_requests(client, current, policy))
                    try:
                        if response.status_code not in _REDIRECTS:
                            return await _body(response, current, max_bytes)
                        location = response.headers.get("location")
                        if not location:
                            raise RedirectError(f"HTTP {response.status_code} from {shown(current)} has no Location")
                    finally:
                        await response.aclose()
                    try:
                        current = current.join(location)
                    except httpx.InvalidURL as exc:
                        raise RedirectError(f"redirect from {shown(current)} to an invalid URL: {exc}") from exc
                    if current.scheme not in ("http", "https"):
                        raise RedirectError(
                            f"refusing a redirect to {current.scheme}:// ({shown(current)}): only http(s) is followed"
                        )
                raise RedirectError(f"more than {policy.max_redirects} redirects fetching {shown(url)}")
    except TimeoutError as exc:
        raise SourceTimeoutError(f"fetching {shown(url)} took longer than {policy.total_timeout_s:.0f} s") from exc
    except httpx.TimeoutException as exc:
        raise SourceTimeoutError(f"timed out fetching {shown(current)}: {type(exc).__name__}") from exc
    except (httpx.TransportError, OSError) as exc:
        raise SourceUnavailableError(f"could not fetch {shown(current)}: {type(exc).__name__}: {exc}") from exc


async def _body(response: httpx.Response, url: httpx.URL, max_bytes: int) -> bytes:
    status = response.status_code
    if status in (404, 410):
        raise SourceNotFoundError(f"audio URL not found: HTTP {status} from {shown(url)}")
    if not 200 <= status < 300:
        raise HttpStatusError(f"HTTP {status} {response.reason_phrase} from {shown(url)}", status)
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise SourceTooLargeError(f"audio at {shown(url)} is {declared} bytes, over the limit of {max_bytes}")
    body = bytearray()
    async for chunk in response.aiter_bytes():  # decoded: a compressed bomb still meets the cap
        body += chunk
        if len(body) > max_bytes:
            raise SourceTooLargeError(f"audio at {shown(url)} is over the limit of {max_bytes} bytes")
    return bytes(body)
