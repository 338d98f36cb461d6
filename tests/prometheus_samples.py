"""Prometheus text as Ray's metrics endpoint serves it, for the tests of `listenpost top`'s metrics.

Each series carries Ray's own labels (Component, NodeAddress, SessionName, Version, WorkerId,
JobId) and Serve's (application, deployment, replica) beside ours, and listenpost's families
sit among Ray's, Serve's and vLLM's, which the view must leave alone.

Two reads of one node, two seconds apart (:data:`FIRST`, :data:`SECOND`):

- Ingress replica A observed 4 caption latencies in (1, 2.5] s, then 6 in (0.5, 1] and 2 more in (1, 2.5];
- Ingress replica B observed 2 in (2.5, 5] s, then 2 more in (2.5, 5];
- replica A's first end-to-end (captioned) latencies come between the reads: 3 in (5, 10] s;
- RulesEngine replica R observed 100 rules latencies, and was replaced between the reads by one
  that has observed 4 (R's series is gone; the new one's counts are all within the interval);
- RulesEngine replica B counted the matches: escalate-angry-caller 10 -> 25, tag-hold-music
  4 -> 6 (ruleset v3) and 1 -> 4 (v2), route-billing 7 -> 7;
- windows waiting: A 4 and B 3, then A 3 and B 2.
"""

from __future__ import annotations

import http.server
import threading

from services.metrics import SPECS

SESSION = "session_2026-12-02_14-01-22_318842_4242"
RAY = {"Component": "core_worker", "NodeAddress": "10.0.0.5", "SessionName": SESSION, "Version": "2.60.0", "JobId": "01000000"}
INGRESS_A = {**RAY, "WorkerId": "8c1d5e0f3b7a49e2a1c4d6f8e0b2a4c6d8e0f1a3b5c7d9e1f3a5b7c9", "application": "listenpost",
             "deployment": "Ingress", "replica": "Ingress#a1b2c3"}  # fmt: skip
INGRESS_B = {**RAY, "WorkerId": "1f2e3d4c5b6a79880f1e2d3c4b5a69788f0e1d2c3b4a59687f6e5d4c", "application": "listenpost",
             "deployment": "Ingress", "replica": "Ingress#d4e5f6"}  # fmt: skip
RULES = {**RAY, "WorkerId": "9a8b7c6d5e4f30211f0e9d8c7b6a59483f2e1d0c9b8a79685f4e3d2c", "application": "listenpost",
         "deployment": "RulesEngine", "replica": "RulesEngine#0f9e8d"}  # fmt: skip
#: The RulesEngine replica that replaced RULES between the reads: a new worker, so new labels.
RULES_REPLACED = {**RULES, "WorkerId": "77aa66bb55cc44dd33ee22ff1100998877aa66bb55cc44dd33ee22ff", "replica": "RulesEngine#7c7c7c"}
RULES_B = {**RULES, "WorkerId": "3c3c4d4d5e5e6f6f7a7a8b8b9c9c0d0d1e1e2f2f3a3a4b4b5c5c6d6d", "replica": "RulesEngine#b0b0b0"}

#: Families of Ray, Serve and vLLM on the same endpoint: not ours, left alone.
OTHERS = f"""# HELP ray_node_cpu_utilization Total CPU usage on a ray node
# TYPE ray_node_cpu_utilization gauge
ray_node_cpu_utilization{{InstanceId="",NodeAddress="10.0.0.5",SessionName="{SESSION}",Version="2.60.0",ip="10.0.0.5"}} 37.5
# HELP ray_serve_deployment_request_counter_total The number of queries that have been processed in this replica.
# TYPE ray_serve_deployment_request_counter_total counter
ray_serve_deployment_request_counter_total{{application="listenpost",deployment="Ingress",replica="Ingress#a1b2c3",route="/"}} 12.0
# HELP ray_vllm:num_requests_running Number of requests in model execution batches.
# TYPE ray_vllm:num_requests_running gauge
ray_vllm:num_requests_running{{engine="0",model_name="Qwen/Qwen3-Omni-30B-A3B-Captioner"}} 2.0
# HELP ray_serve_handle_request_latency_ms Request latency
# TYPE ray_serve_handle_request_latency_ms histogram
ray_serve_handle_request_latency_ms_bucket{{application="listenpost",deployment="Captioner",le="100.0"}} 3.0
ray_serve_handle_request_latency_ms_bucket{{application="listenpost",deployment="Captioner",le="+Inf"}} 5.0
ray_serve_handle_request_latency_ms_count{{application="listenpost",deployment="Captioner"}} 5.0
ray_serve_handle_request_latency_ms_sum{{application="listenpost",deployment="Captioner"}} 900.0
"""


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f'{k}="{v}"' for k, v in labels.items())


def histogram(metric: str, labels: dict[str, str], observed: dict[float, int]) -> str:
    """A histogram series as Ray writes it: ``observed`` is how many observations fell in the
    bucket up to each bound (not cumulative), every bound of the declaration is written."""
    name = f"ray_{metric}"
    lines, total = [], 0
    for bound in (*SPECS[metric].buckets, float("inf")):
        total += observed.get(bound, 0)
        le = "+Inf" if bound == float("inf") else repr(bound)
        lines.append(f"{name}_bucket{{{_labels({**labels, 'le': le})}}} {float(total)}")
    lines.append(f"{name}_count{{{_labels(labels)}}} {float(total)}")
    lines.append(f"{name}_sum{{{_labels(labels)}}} {sum(b * n for b, n in observed.items() if b != float('inf'))}")
    return "\n".join(lines) + "\n"


def family(metric: str, kind: str, body: str) -> str:
    spec = SPECS[metric]
    exported = f"ray_{metric}_total" if kind == "counter" else f"ray_{metric}"
    return f"# HELP {exported} {spec.description}\n# TYPE {exported} {kind}\n{body}"


def counter(metric: str, labels: dict[str, str], value: float) -> str:
    return f"ray_{metric}_total{{{_labels(labels)}}} {float(value)}\n"


def gauge(metric: str, labels: dict[str, str], value: float) -> str:
    return f"ray_{metric}{{{_labels(labels)}}} {float(value)}\n"


STAGE = "listenpost_stage_latency_seconds"
E2E = "listenpost_end_to_end_latency_seconds"
MATCHES = "listenpost_rule_matches"
WAITING = "listenpost_windows_waiting"


def _matches(escalate: int, hold_v3: int, hold_v2: int, billing: int) -> str:
    return family(MATCHES, "counter", "".join((
        counter(MATCHES, {**RULES_B, "rule_id": "escalate-angry-caller", "ruleset_version": "v3"}, escalate),
        counter(MATCHES, {**RULES_B, "rule_id": "tag-hold-music", "ruleset_version": "v3"}, hold_v3),
        counter(MATCHES, {**RULES_B, "rule_id": "tag-hold-music", "ruleset_version": "v2"}, hold_v2),
        counter(MATCHES, {**RULES_B, "rule_id": "route-billing", "ruleset_version": "v3"}, billing),
    )))  # fmt: skip


FIRST = OTHERS + family(STAGE, "histogram", "".join((
    histogram(STAGE, {**INGRESS_A, "stage": "preprocess"}, {0.05: 6}),
    histogram(STAGE, {**INGRESS_A, "stage": "caption"}, {2.5: 4}),
    histogram(STAGE, {**INGRESS_B, "stage": "caption"}, {5.0: 2}),
    histogram(STAGE, {**RULES, "stage": "rules"}, {0.01: 50, 0.025: 40, 0.05: 10}),
))) + _matches(10, 4, 1, 7) + family(WAITING, "gauge", gauge(WAITING, INGRESS_A, 4) + gauge(WAITING, INGRESS_B, 3))  # fmt: skip

SECOND = OTHERS + family(STAGE, "histogram", "".join((
    histogram(STAGE, {**INGRESS_A, "stage": "preprocess"}, {0.05: 6}),
    histogram(STAGE, {**INGRESS_A, "stage": "caption"}, {1.0: 6, 2.5: 6}),
    histogram(STAGE, {**INGRESS_B, "stage": "caption"}, {5.0: 4}),
    histogram(STAGE, {**RULES_REPLACED, "stage": "rules"}, {0.01: 3, 0.025: 1}),
))) + family(E2E, "histogram", histogram(E2E, {**INGRESS_A, "stage": "captioned"}, {10.0: 3})) + _matches(
    25, 6, 4, 7) + family(WAITING, "gauge", gauge(WAITING, INGRESS_A, 3) + gauge(WAITING, INGRESS_B, 2))  # fmt: skip


# --- a metrics endpoint for the tests ----------------------------------------------------------


class Endpoint:
    """A tiny HTTP server answering every GET with the next of ``bodies`` (the last one again
    once they run out), as a Ray node's metrics agent answers Prometheus; ``status`` and
    ``delay_s`` make it fail."""

    def __init__(self, bodies: list[str | bytes], *, status: int = 200, delay_s: float = 0.0) -> None:
        self.bodies = [b if isinstance(b, bytes) else b.encode() for b in bodies]
        self.requests = 0
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the name http.server calls
                body = endpoint.bodies[min(endpoint.requests, len(endpoint.bodies) - 1)]
                endpoint.requests += 1
                if delay_s:
                    threading.Event().wait(delay_s)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the reader gave up (too large, too slow): its test
                    pass

            def log_message(self, *args: object) -> None:  # quiet
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Endpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
