"""A real OTLP/HTTP trace endpoint in one thread: what an OpenTelemetry Collector receives.

The SDK's own exporter posts ``ExportTraceServiceRequest`` protobufs to ``/v1/traces``; this
keeps every span it is sent. The traces tests assert on them and ``bench/pipeline.py`` sums
their durations per stage.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

#: Bodies larger than this are refused (the SDK batches at most 512 spans per request).
MAX_BODY_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class ExportedSpan:
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    links: list[str]  # trace ids
    status: int
    resource: dict[str, str]
    start_ns: int = 0
    end_ns: int = 0

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


class OtlpReceiver:
    """POST /v1/traces, protobuf in, protobuf out, on a free loopback port (``url``)."""

    def __init__(self) -> None:
        self.spans: list[ExportedSpan] = []
        self.requests = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if self.path != "/v1/traces" or self.headers["Content-Type"] != "application/x-protobuf":
                    self.send_error(404 if self.path != "/v1/traces" else 415)
                    return
                if length > MAX_BODY_BYTES:
                    self.send_error(413)
                    return
                receiver.accept(ExportTraceServiceRequest.FromString(self.rfile.read(length)))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def accept(self, request: ExportTraceServiceRequest) -> None:
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for s in scope.spans:
                    received.append(ExportedSpan(
                        name=s.name, kind=s.kind, trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex(), attributes={a.key: _value(a.value) for a in s.attributes},
                        links=[link.trace_id.hex() for link in s.links], status=s.status.code,
                        resource=resource, start_ns=s.start_time_unix_nano, end_ns=s.end_time_unix_nano,
                    ))  # fmt: skip
        with self._lock:
            self.requests += 1
            self.spans.extend(received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _value(v: Any) -> Any:
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None
