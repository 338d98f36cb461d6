"""Notification tests' helpers: sample notifications, and a real HTTP server on loopback that
records every request and answers what the test scripted."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from services.notify.model import Alert, Notification

STARTED = datetime(2025, 3, 4, 10, 15, 0, tzinfo=UTC)
CREATED = datetime(2025, 3, 4, 10, 16, 30, tzinfo=UTC)


def firing_alert(**update: object) -> Alert:
    values: dict[str, object] = {
        "fingerprint": "3f9a1c0e7b2d4a55",
        "labels": {"rule": "angry-customer", "severity": "warning", "queue": "billing"},
        "annotations": {"summary": "Angry customer on call c-1042", "description": "Anger held over two windows."},
        "starts_at": STARTED,
        "generator_url": "https://listenpost.example/explain/in-77",
        "rule_id": "angry-customer",
        "ruleset_version": "rs-12",
        "decision_id": "dec-1",
        "input_id": "in-77",
        "callid": "c-1042",
        "caption_span": "I have called four times & nobody <fixes> it",
    }
    values.update(update)
    return Alert.model_validate(values)


def resolved_alert(**update: object) -> Alert:
    values: dict[str, object] = {
        "fingerprint": "77e0b5d1c2a39f10",
        "status": "resolved",
        "labels": {"rule": "long-hold", "severity": "critical", "queue": "billing"},
        "annotations": {"summary": "Caller on hold for 12 minutes"},
        "starts_at": STARTED,
        "ends_at": datetime(2025, 3, 4, 10, 16, 0, tzinfo=UTC),
        "rule_id": "long-hold",
        "decision_id": "dec-2",
    }
    values.update(update)
    return Alert.model_validate(values)


def notification(*alerts: Alert, receiver: str = "ops") -> Notification:
    return Notification(
        receiver=receiver,
        group_key="{}/{queue=\"billing\"}",
        group_labels={"queue": "billing"},
        alerts=list(alerts) or [firing_alert()],
        created_at=CREATED,
    )


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float = 0.0  # time.monotonic() when it arrived
    status: int = 0  # what the server answered


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


class RecordingServer:
    """A real HTTP/1.1 server on 127.0.0.1 (``port`` 0: any free one): records requests, answers
    the scripted replies in order (then ``default_reply``), and counts the requests it is
    answering at once (``peak_in_flight``)."""

    def __init__(self, port: int = 0) -> None:
        self.requests: list[Request] = []
        self.replies: list[Reply] = []
        self.default_reply = Reply()  # once the scripted replies are used up
        #: Requests being answered now, and the most there ever were (a concurrency limit's test).
        self.in_flight = 0
        self.peak_in_flight = 0
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                # Counted from arrival until the answer starts: a client that waits for it before
                # its next request is never seen twice, whatever the threads' timing.
                with owner._lock:
                    owner.in_flight += 1
                    owner.peak_in_flight = max(owner.peak_in_flight, owner.in_flight)
                try:
                    length = int(self.headers.get("content-length") or 0)
                    body = self.rfile.read(length)
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    request = Request(self.command, self.path, headers, body, time.monotonic())
                    with owner._lock:
                        owner.requests.append(request)
                        reply = owner.replies.pop(0) if owner.replies else owner.default_reply
                    request.status = reply.status
                    if reply.delay_s:
                        time.sleep(reply.delay_s)
                finally:
                    with owner._lock:
                        owner.in_flight -= 1
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up first (a timeout test)

            do_PUT = do_PATCH = do_POST  # the CRM writer's methods

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http_server() -> Iterator[RecordingServer]:
    server = RecordingServer()
    try:
        yield server
    finally:
        server.close()


def capture_http_log(caplog: pytest.LogCaptureFixture) -> None:
    """Capture every log line, httpx's request lines included: a library imported earlier in the
    session (vLLM's, Ray's dependencies) may have set httpx's own level to WARNING."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="httpx")
