"""Every audio source and every way it fails: local files, http(s) on real local servers, the NATS object
store on a real nats-server, inline base64."""

from __future__ import annotations

import base64
import datetime
import os
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import nats
import pytest

from services.events.embedded import EmbeddedNatsServer
from services.events.models import AudioRef, ObjectRef
from services.events.tls import make_pki
from services.preprocess import sources
from services.preprocess.errors import (
    BlockedAddressError,
    BucketNotAllowedError,
    HttpStatusError,
    InlineAudioError,
    PathOutsideRootsError,
    RedirectError,
    SourceNotFoundError,
    SourceTimeoutError,
    SourceTooLargeError,
    SourceUnavailableError,
    UnsupportedSourceError,
)
from services.preprocess.sources import (
    HttpPolicy,
    fetch_audio,
    http_policy,
    read_local,
    read_object,
    resolve_local_path,
)
from services.settings import PreprocessSettings

AUDIO = b"RIFF-pretend-audio-" * 100

# --- local files -----------------------------------------------------------------------------------


async def test_local_path_and_file_uri(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    path.write_bytes(b"abc")
    assert await fetch_audio(AudioRef(uri=path.as_uri()), roots=[tmp_path], max_bytes=10) == b"abc"
    assert await fetch_audio(AudioRef(uri=str(path)), roots=[tmp_path], max_bytes=10) == b"abc"
    assert await fetch_audio(AudioRef(uri=f"file://localhost{path}"), roots=[tmp_path], max_bytes=10) == b"abc"


async def test_local_failures(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    path.write_bytes(b"abc")
    missing = str(tmp_path / "missing.wav")
    with pytest.raises(SourceNotFoundError, match=f"^audio file {re.escape(repr(missing))} not found under the allowed roots$"):
        await fetch_audio(AudioRef(uri=missing), roots=[tmp_path], max_bytes=10)
    with pytest.raises(SourceNotFoundError, match="not found under the allowed roots"):  # a directory
        await fetch_audio(AudioRef(uri=str(tmp_path)), roots=[tmp_path], max_bytes=10)
    with pytest.raises(SourceTooLargeError, match="is 3 bytes, over the limit of 2"):
        await fetch_audio(AudioRef(uri=str(path)), roots=[tmp_path], max_bytes=2)
    with pytest.raises(UnsupportedSourceError, match="unsupported audio URI scheme 'ftp'"):
        await fetch_audio(AudioRef(uri="ftp://host/a.wav"), roots=[tmp_path], max_bytes=10)
    with pytest.raises(UnsupportedSourceError, match="remote host is not supported"):
        await fetch_audio(AudioRef(uri="file://fileserver/share/a.wav"), roots=[tmp_path], max_bytes=10)
    with pytest.raises(
        PathOutsideRootsError,
        match=r"^local audio files are not accepted here: no roots are configured "
        r"\(LISTENPOST_PREPROCESS__FILE_ROOTS\); refused '.*a\.wav'$",
    ):
        await fetch_audio(AudioRef(uri=str(path)), roots=[], max_bytes=10)


async def test_no_file_roots_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The working directory holds .env and .cache/nats: by default no local file is read at all."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("LISTENPOST_HTTP__API_KEYS='[\"secret\"]'\n")
    roots = PreprocessSettings().file_roots
    assert roots == []
    with pytest.raises(PathOutsideRootsError, match="no roots are configured"):
        await fetch_audio(AudioRef(uri=str(tmp_path / ".env")), roots=roots, max_bytes=10_000)
    with pytest.raises(PathOutsideRootsError, match="no roots are configured"):
        await fetch_audio(AudioRef(uri=".env"), roots=roots, max_bytes=10_000)


def _refusal(uri: str, roots: list[Path]) -> tuple[str, str]:
    """The dead letter's error type and reason for ``uri``, with the URI itself (the event's own input) masked."""
    with pytest.raises(SourceNotFoundError) as caught:
        read_local(uri, roots, 1000)
    return type(caught.value).__name__, str(caught.value).replace(repr(uri), "URI")


def test_file_uri_escaping_its_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "calls"
    root.mkdir()
    secret = tmp_path / "secret.wav"
    secret.write_bytes(b"x")
    (root / "link.wav").symlink_to(secret)
    (tmp_path / "calls-old").mkdir()  # a sibling whose name starts like the root
    (tmp_path / "calls-old" / "a.wav").write_bytes(b"x")
    escaping = [
        (root / "x").as_uri().replace("/calls/x", "/calls/%2E%2E/secret.wav"),
        f"file://{root}/../secret.wav",
        str(root / ".." / "secret.wav"),
        str(root / "link.wav"),
        str(tmp_path / "calls-old" / "a.wav"),
    ]
    for uri in escaping:
        with pytest.raises(SourceNotFoundError, match="not found under the allowed roots"):
            resolve_local_path(uri, [root])


def test_outside_missing_and_escaping_symlink_read_the_same(tmp_path: Path) -> None:
    """A dead letter tells nothing of what lies outside the roots: an existing file outside, a missing one
    inside or out, and a symlink out of the roots (to a file that exists, or not) read exactly alike,
    and never name where a link points."""
    root = tmp_path / "calls"
    root.mkdir()
    outside = tmp_path / "private" / "hr-interview.wav"
    outside.parent.mkdir()
    outside.write_bytes(b"RIFF secret")
    (root / "to-existing.wav").symlink_to(outside)
    (root / "to-missing.wav").symlink_to(tmp_path / "private" / "nothing.wav")
    cases = {
        "outside, exists": str(outside),
        "outside, missing": str(tmp_path / "private" / "nothing.wav"),
        "inside, missing": str(root / "nothing.wav"),
        "symlink out, target exists": str(root / "to-existing.wav"),
        "symlink out, target missing": str(root / "to-missing.wav"),
        "directory": str(root),
    }
    refusals = {name: _refusal(uri, [root]) for name, uri in cases.items()}
    assert set(refusals.values()) == {("SourceNotFoundError", "audio file URI not found under the allowed roots")}
    for uri in (str(root / "to-existing.wav"), str(root / "to-missing.wav")):
        with pytest.raises(SourceNotFoundError) as caught:
            read_local(uri, [root], 1000)
        assert "private" not in str(caught.value)  # where the link points stays unsaid


def test_a_symlink_swapped_in_after_the_check_is_not_followed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Check-then-open race: the file is checked under the root, then replaced by a symlink to a secret
    before it is opened. O_NOFOLLOW refuses the link; the secret is never read."""
    root = tmp_path / "calls"
    root.mkdir()
    secret = tmp_path / "secret.wav"
    secret.write_bytes(b"RIFF secret")
    target = root / "call.wav"
    target.write_bytes(b"RIFF call")
    checked = sources.resolve_local_path

    def check_then_swap(uri: str, roots: list[Path]) -> Path:
        path = checked(uri, roots)  # the check passes on the real file
        target.unlink()
        target.symlink_to(secret)  # ...and the attacker swaps it before the open
        return path

    monkeypatch.setattr(sources, "resolve_local_path", check_then_swap)
    with pytest.raises(SourceNotFoundError, match="not found under the allowed roots") as caught:
        read_local(str(target), [root], 1000)
    assert isinstance(caught.value.__cause__, OSError)  # the open itself failed (ELOOP)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="checks the opened descriptor through /proc")
def test_a_directory_swapped_for_a_symlink_after_the_check_is_caught_on_the_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """O_NOFOLLOW guards only the last component: a directory on the way swapped for a symlink out of the
    roots is caught by checking where the opened descriptor really is."""
    root = tmp_path / "calls"
    (root / "day").mkdir(parents=True)
    (root / "day" / "call.wav").write_bytes(b"RIFF call")
    private = tmp_path / "private"
    private.mkdir()
    (private / "call.wav").write_bytes(b"RIFF secret")
    checked = sources.resolve_local_path

    def check_then_swap(uri: str, roots: list[Path]) -> Path:
        path = checked(uri, roots)
        (root / "day").rename(tmp_path / "day-moved")
        (root / "day").symlink_to(private, target_is_directory=True)
        return path

    monkeypatch.setattr(sources, "resolve_local_path", check_then_swap)
    opened: list[int] = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda *a, **k: opened.append(real_open(*a, **k)) or opened[-1])
    with pytest.raises(SourceNotFoundError, match="not found under the allowed roots"):
        read_local(str(root / "day" / "call.wav"), [root], 1000)
    assert opened  # the open succeeded (through the swapped directory); the descriptor check refused it
    with pytest.raises(OSError):
        os.fstat(opened[0])  # and closed it


def test_a_fifo_under_the_root_does_not_hang_the_reader(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.wav")
    started = time.monotonic()
    with pytest.raises(SourceNotFoundError, match="not found under the allowed roots"):
        read_local(str(tmp_path / "pipe.wav"), [tmp_path], 1000)
    assert time.monotonic() - started < 1.0


# --- inline ----------------------------------------------------------------------------------------


async def test_inline_audio() -> None:
    encoded = base64.b64encode(AUDIO).decode()
    assert await fetch_audio(AudioRef(data_base64=encoded), roots=[], max_bytes=10_000) == AUDIO
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))  # MIME line breaks
    assert await fetch_audio(AudioRef(data_base64=wrapped), roots=[], max_bytes=10_000) == AUDIO
    with pytest.raises(InlineAudioError, match="not valid base64"):
        await fetch_audio(AudioRef(data_base64="@@@"), roots=[], max_bytes=10)
    with pytest.raises(InlineAudioError, match="larger than the limit of 100 bytes"):
        await fetch_audio(AudioRef(data_base64=encoded), roots=[], max_bytes=10_000, max_inline_bytes=100)


# --- http(s) ---------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        query = parse_qs(url.query)
        if url.path == "/audio.wav":
            self._send(200, AUDIO, {"Content-Type": "audio/wav"})
        elif url.path == "/host":
            self._send(200, self.headers["Host"].encode())
        elif url.path == "/redirect":
            self._send(int(query.get("status", ["302"])[0]), headers={"Location": query["to"][0]})
        elif url.path == "/loop":
            self._send(302, headers={"Location": "/loop"})
        elif url.path == "/no-location":
            self._send(302)
        elif url.path == "/missing":
            self._send(404, b"no")
        elif url.path == "/busy":
            self._send(503, b"later")
        elif url.path == "/forbidden":
            self._send(403, b"no")
        elif url.path == "/declared-big":
            self.send_response(200)
            self.send_header("Content-Length", str(50_000_000))
            self.end_headers()
            self.wfile.write(b"x" * 1000)
        elif url.path == "/streamed-big":  # no Content-Length: only the streaming cap can stop it
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"%x\r\n%s\r\n" % (65536, b"y" * 65536))
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
        elif url.path == "/slow":
            time.sleep(1.5)
            self._send(200, AUDIO)
        elif url.path == "/drip":  # a byte every 50 ms: never a read timeout, but endless
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            try:
                for _ in range(1000):
                    self.wfile.write(b"z")
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass
        else:
            self._send(500)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the fetcher hangs up on purpose (size caps, timeouts): no tracebacks in the test output


def _serve(host: str) -> Iterator[int]:
    server = _Server((host, 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def near() -> Iterator[int]:
    """A server on 127.0.0.1, reached as http://localhost:<port> (the allow-listed name)."""
    yield from _serve("127.0.0.1")


@pytest.fixture(scope="module")
def far() -> Iterator[int]:
    """A second server on 127.0.0.2: loopback too, but not allow-listed."""
    yield from _serve("127.0.0.2")


LOCALHOST = HttpPolicy(allow_private=("localhost",), read_timeout_s=0.5, total_timeout_s=5)


async def get(url: str, policy: HttpPolicy = LOCALHOST, max_bytes: int = 1_000_000) -> bytes:
    return await fetch_audio(AudioRef(uri=url), roots=[], max_bytes=max_bytes, http=policy)


async def test_http_fetch_from_an_allow_listed_host(near: int) -> None:
    assert await get(f"http://localhost:{near}/audio.wav") == AUDIO
    # Connected to the checked address, but the server still sees the name it was asked for.
    assert await get(f"http://localhost:{near}/host") == f"localhost:{near}".encode()


async def test_http_follows_redirects_it_may(near: int, far: int) -> None:
    assert await get(f"http://localhost:{near}/redirect?to=/audio.wav") == AUDIO
    both = HttpPolicy(allow_private=("localhost", "127.0.0.2"))
    target = f"http://127.0.0.2:{far}/audio.wav"
    assert await get(f"http://localhost:{near}/redirect?to={target}&status=307", both) == AUDIO
    by_network = HttpPolicy(allow_private=("127.0.0.0/8",))
    assert await get(f"http://127.0.0.2:{far}/audio.wav", by_network) == AUDIO


async def test_redirect_from_allowed_host_to_loopback_is_refused(near: int, far: int) -> None:
    """The allow-listed host redirects to another loopback address: the re-check after the redirect refuses it.

    The same redirect is followed when 127.0.0.2 is allow-listed too (above), so it is the check,
    not an unreachable server, that stops it here.
    """
    target = f"http://127.0.0.2:{far}/audio.wav"
    with pytest.raises(BlockedAddressError, match=r"127\.0\.0\.2 resolves to 127\.0\.0\.2, a loopback address"):
        await get(f"http://localhost:{near}/redirect?to={target}")
    # Even the allowed server's own address is refused under a name that is not allow-listed.
    with pytest.raises(BlockedAddressError, match="127.0.0.1, a loopback address"):
        await get(f"http://localhost:{near}/redirect?to=http://127.0.0.1:{near}/audio.wav")


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1/a.wav", "loopback"),
        ("http://10.1.2.3/a.wav", "private"),
        ("http://192.168.0.10:8080/a.wav", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),  # the cloud metadata endpoint
        ("http://[::1]/a.wav", "loopback"),
        ("http://[::ffff:127.0.0.1]/a.wav", "loopback"),
        ("http://[fe80::1]/a.wav", "link-local"),
        ("http://0.0.0.0/a.wav", "unspecified"),
        ("http://224.0.0.1/a.wav", "multicast"),
        ("http://240.0.0.1/a.wav", "reserved"),
        ("http://100.64.0.1/a.wav", "non-public"),  # carrier-grade NAT
        # IPv6 forms that embed an IPv4 address, which Python 3.11 calls global:
        ("http://[2002:7f00:1::]/a.wav", "loopback"),  # 6to4 of 127.0.0.1
        ("http://[2002:a9fe:a9fe::]/latest/meta-data", "link-local"),  # 6to4 of 169.254.169.254
        ("http://[64:ff9b::a00:1]/a.wav", "private"),  # NAT64 of 10.0.0.1
        ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/a.wav", "loopback"),  # Teredo, client 127.0.0.1
        ("http://[fec0::1]/a.wav", "site-local"),  # deprecated, still routed inside some networks
    ],
)
async def test_private_targets_are_refused_before_connecting(url: str, kind: str) -> None:
    with pytest.raises(BlockedAddressError, match=f"a {kind} address"):
        await get(url, HttpPolicy())


@pytest.mark.parametrize(
    ("path", "error", "message"),
    [
        ("/missing", SourceNotFoundError, "audio URL not found: HTTP 404"),
        ("/busy", HttpStatusError, "HTTP 503 Service Unavailable"),
        ("/forbidden", HttpStatusError, "HTTP 403 Forbidden"),
        ("/declared-big", SourceTooLargeError, "is 50000000 bytes, over the limit of 1000000"),
        ("/streamed-big", SourceTooLargeError, "is over the limit of 1000000 bytes"),
        ("/loop", RedirectError, "more than 5 redirects"),
        ("/no-location", RedirectError, "has no Location"),
        ("/redirect?to=file:///etc/passwd", RedirectError, "only http\\(s\\) is followed"),
        ("/slow", SourceTimeoutError, "timed out fetching .* ReadTimeout"),
        ("/drip", SourceTimeoutError, "took longer than 1 s"),
    ],
)
async def test_http_failures(near: int, path: str, error: type[Exception], message: str) -> None:
    policy = HttpPolicy(allow_private=("localhost",), read_timeout_s=0.5, total_timeout_s=1.0)
    with pytest.raises(error, match=message) as caught:
        await get(f"http://localhost:{near}{path}", policy)
    assert caught.value.stage == "fetch"
    if error is HttpStatusError:
        assert caught.value.retryable == (path == "/busy")


async def test_http_errors_never_show_credentials_or_query_strings(near: int) -> None:
    """Reasons go to the dead-letter stream: no user:password, no presigned-URL signature in them."""
    url = f"http://user:secret@localhost:{near}/missing?X-Amz-Signature=secret"
    with pytest.raises(SourceNotFoundError) as caught:
        await get(url)
    assert "secret" not in str(caught.value) and f"localhost:{near}/missing" in str(caught.value)


async def test_http_unreachable_and_unresolvable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]  # nothing listens once the probe closes
    with pytest.raises(SourceUnavailableError, match="could not fetch .* ConnectError") as caught:
        await get(f"http://localhost:{closed_port}/a.wav")
    assert caught.value.retryable
    with pytest.raises(SourceUnavailableError, match="could not resolve host 'no-such-host.invalid'"):
        await get("http://no-such-host.invalid/a.wav")
    with pytest.raises(UnsupportedSourceError, match="invalid audio URL"):
        await get("http://[not-an-ip/a.wav")


def test_http_policy_from_settings() -> None:
    policy = http_policy(PreprocessSettings(http_allow_private=["calls.internal", "10.0.0.0/8"], http_max_redirects=2))
    assert policy.max_redirects == 2
    import ipaddress

    assert policy.allows("calls.internal", ipaddress.ip_address("10.9.9.9"))
    assert policy.allows("other.internal", ipaddress.ip_address("10.9.9.9"))
    assert not policy.allows("other.internal", ipaddress.ip_address("192.168.1.1"))
    assert policy.allows("example.com", ipaddress.ip_address("93.184.216.34"))


# --- the NATS object store -------------------------------------------------------------------------


BUCKETS = ["calls"]


@pytest.fixture(scope="module")
async def object_store(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[object]:
    with EmbeddedNatsServer(tmp_path_factory.mktemp("nats-objects")) as server:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        store = await js.create_object_store("calls")
        await store.put("call-1.wav", AUDIO)
        other = await js.create_object_store("billing-exports")
        await other.put("customers.csv", b"name,iban\n")
        yield js
        await nc.close()


async def test_object_store_source(object_store: object) -> None:
    js = object_store
    ref = ObjectRef(bucket="calls", name="call-1.wav")
    assert await read_object(js, ref, max_bytes=10_000, buckets=BUCKETS) == AUDIO

    async def get_object(r: ObjectRef) -> bytes:
        return await read_object(js, r, max_bytes=10_000, buckets=BUCKETS)

    got = await fetch_audio(AudioRef(object=ref), roots=[], max_bytes=10_000, get_object=get_object)
    assert got == AUDIO


async def test_object_store_failures(object_store: object) -> None:
    js = object_store
    with pytest.raises(SourceNotFoundError, match="object calls/nope.wav not found in the NATS object store"):
        await read_object(js, ObjectRef(bucket="calls", name="nope.wav"), max_bytes=10_000, buckets=BUCKETS)
    with pytest.raises(SourceNotFoundError, match="object store bucket 'nobucket' not found"):
        await read_object(js, ObjectRef(bucket="nobucket", name="a.wav"), max_bytes=10_000, buckets=[*BUCKETS, "nobucket"])
    with pytest.raises(SourceTooLargeError, match=f"object calls/call-1.wav is {len(AUDIO)} bytes, over the limit"):
        await read_object(js, ObjectRef(bucket="calls", name="call-1.wav"), max_bytes=100, buckets=BUCKETS)
    with pytest.raises(UnsupportedSourceError, match="no object store is connected"):
        await fetch_audio(AudioRef(object=ObjectRef(bucket="calls", name="x")), roots=[], max_bytes=10)


# --- https: the connection goes to the checked address, the certificate is checked against the name ----


def _certificates(tmp: Path, name: str) -> tuple[Path, Path, Path]:
    """A throwaway CA (ca.pem) and a server certificate for ``name`` (cert.pem, key.pem)."""
    return make_pki(ca_name="listenpost test CA", server_name=name, dns_names=[name], ip_addresses=[],
                   valid_for=datetime.timedelta(hours=1)).write(tmp)


@pytest.mark.parametrize(("cert_name", "ok"), [("localhost", True), ("calls.example", False)])
async def test_https_verifies_the_name_while_connecting_to_the_checked_address(
    tmp_path: Path, cert_name: str, ok: bool
) -> None:
    import ssl

    ca, cert, key = _certificates(tmp_path, cert_name)
    server = _Server(("127.0.0.1", 0), _Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        policy = HttpPolicy(allow_private=("localhost",), ca_file=str(ca))
        url = f"https://localhost:{server.server_address[1]}/host"
        if ok:
            assert await get(url, policy) == f"localhost:{server.server_address[1]}".encode()
        else:
            with pytest.raises(SourceUnavailableError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
                await get(url, policy)
    finally:
        server.shutdown()
        server.server_close()


async def test_an_object_in_another_bucket_is_refused_without_asking_the_store(object_store: object) -> None:
    js = object_store
    # The bucket exists and holds the object: the event still learns nothing of it.
    for name in ("customers.csv", "nothing-here"):
        with pytest.raises(BucketNotAllowedError) as caught:
            await read_object(js, ObjectRef(bucket="billing-exports", name=name), max_bytes=10_000, buckets=BUCKETS)
        assert str(caught.value) == (
            "object store bucket 'billing-exports' is not one audio is read from (LISTENPOST_PREPROCESS__OBJECT_BUCKETS: calls)"
        )
        assert caught.value.stage == "fetch" and not caught.value.retryable
