"""A real Prometheus scrapes the running service (Ray's metrics endpoint) after a few events,
one of them dead-lettered, and finds listenpost's metric families with sane values.

Prometheus is Debian's binary, unpacked by scripts/setup.sh into .cache/prometheus; the test
writes its config and runs it on a free port, no system service.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.events.binding import encode_binary, new_event
from services.events.connection import connect
from services.events.embedded import free_port
from services.events.models import AUDIO_SUBMITTED
from services.settings import Settings
from tests.conftest import tone, wav_bytes

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]
PROMETHEUS = REPO / ".cache/prometheus/usr/bin/prometheus"
CALLID = "metrics-e2e-call"

#: Families this workload must produce: two good calls of the same call id, each a tone then as
#: long a silence (no speech for the VAD; the shipped rule dead-air matches and raises the same
#: alert twice, the second a duplicate for the notifier), one undecodable input, the shipped rules,
#: the Notifier delivering to the test's webhook. Families it cannot produce are left out: naks and
#: redeliveries (no fault), empty or truncated captions and facets (they depend on what the tiny
#: checkpoint writes), skipped or failed notifications, CRM writes (no target).
MUST_APPEAR = (
    "ray_listenpost_events_consumed_total",
    "ray_listenpost_events_acked_total",
    "ray_listenpost_events_dead_lettered_total",
    "ray_listenpost_stage_latency_seconds_bucket",
    "ray_listenpost_end_to_end_latency_seconds_bucket",
    "ray_listenpost_audio_seconds_total",
    "ray_listenpost_windows_total",
    "ray_listenpost_prompt_tokens_total",
    "ray_listenpost_output_tokens_total",
    "ray_listenpost_engine_window_seconds_bucket",
    "ray_listenpost_windows_waiting",
    "ray_listenpost_caption_length_chars_bucket",
    "ray_listenpost_events_captioned_total",
    "ray_listenpost_windows_no_speech_total",
    "ray_listenpost_rule_evaluations_total",
    "ray_listenpost_rule_matches_total",
    "ray_listenpost_alerts_total",
    "ray_listenpost_consumer_pending_messages",
    "ray_listenpost_consumer_ack_pending_messages",
    "ray_listenpost_stream_bytes",
    "ray_listenpost_stream_messages",
    "ray_listenpost_dlq_messages",
    "ray_listenpost_object_store_bytes",
    "ray_listenpost_stream_replicas",
    "ray_listenpost_stream_replicas_current",
    "ray_listenpost_notify_dead_letters",
    "ray_listenpost_notify_group_joins_total",
    "ray_listenpost_notify_groups",
    "ray_listenpost_notifications_deduplicated_total",
    "ray_listenpost_notifications_queued_total",
    "ray_listenpost_notifications_sent_total",
    "ray_listenpost_notification_delivery_seconds_bucket",
)


def metrics_port() -> int:
    import ray

    return int(ray._private.worker.global_worker.node.metrics_export_port)


@pytest.fixture(scope="module")
def prometheus(service: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # The project's own unpacked copy, else one on PATH (a git worktree has no .cache of its own).
    binary = str(PROMETHEUS) if PROMETHEUS.exists() else shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found: run scripts/setup.sh (it unpacks Debian's prometheus into .cache/prometheus)")
    root = tmp_path_factory.mktemp("prometheus")
    config = root / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 2s}\n"
        "scrape_configs:\n"
        f"  - job_name: ray\n    static_configs: [{{targets: ['127.0.0.1:{metrics_port()}']}}]\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={root / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=(root / "prometheus.log").open("w"),
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:  # until it serves queries
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (root / "prometheus.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def query(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=10) as reply:
        body = json.load(reply)
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def names_seen(base: str) -> set[str]:
    """listenpost's metric names Prometheus has stored, stale series included: Ray drops a gauge
    a while after it was last set (windows_waiting, once the work is done), and an instant query
    then no longer finds it, though the service did export it."""
    selector = urllib.parse.urlencode({"match[]": '{__name__=~"ray_listenpost_.+"}'})
    url = f"{base}/api/v1/label/__name__/values?{selector}"
    with urllib.request.urlopen(url, timeout=10) as reply:
        body = json.load(reply)
    assert body["status"] == "success", body
    return set(body["data"])


def value(base: str, expr: str) -> float:
    found = query(base, expr)
    return float(found[0]["value"][1]) if found else float("nan")


async def test_prometheus_scrapes_every_family_after_a_few_events(service: Settings, prometheus: str, audio_dir: Path) -> None:
    call = audio_dir / "metrics-call.wav"
    # Half silence: the shipped dead-air rule (silence_ratio > 0.4) matches and raises an alert.
    call.write_bytes(wav_bytes(np.concatenate([tone(2, 16_000), np.zeros(2 * 16_000, np.float32)]), 16_000))
    broken = audio_dir / "metrics-broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio at all")
    nc = await connect(service.nats, role="admin", name="metrics-e2e")
    try:
        for uri in (call.as_uri(), call.as_uri(), broken.as_uri()):
            # One call id for both: the same alert (rule and labels) raised twice.
            event = new_event(AUDIO_SUBMITTED, "urn:test:metrics", {"audio": {"uri": uri}, "context": {"callid": CALLID}})
            body, headers = encode_binary(event)
            await nc.jetstream().publish(service.nats.subject("in", "test"), body, headers=headers)
    finally:
        await nc.drain()

    # Ray reports custom metrics every few seconds; the poller every jetstream_poll_s.
    deadline = time.monotonic() + 240
    missing: list[str] = list(MUST_APPEAR)
    while time.monotonic() < deadline:
        missing = [n for n in MUST_APPEAR if n not in names_seen(prometheus)]
        dead = value(prometheus, 'sum(ray_listenpost_events_dead_lettered_total{stage="decode-audio"})')
        # The JetStream gauges come from a poll every jetstream_poll_s: wait for one after the outputs.
        polled = min(value(prometheus, "max(ray_listenpost_dlq_messages)"),
                     value(prometheus, 'max(ray_listenpost_stream_bytes{stream="LISTENPOST_OUT"})'))  # fmt: skip
        if not missing and dead >= 1 and polled > 0 and value(prometheus, "sum(ray_listenpost_events_captioned_total)") >= 2:
            break
        await asyncio.sleep(3)
    assert missing == []
    assert value(prometheus, 'sum(ray_listenpost_events_dead_lettered_total{stage="decode-audio",reason="unsupported"})') >= 1
    assert value(prometheus, "sum(ray_listenpost_events_captioned_total)") >= 2
    assert value(prometheus, "sum(ray_listenpost_audio_seconds_total)") >= 8.0 - 0.01
    assert value(prometheus, "sum(ray_listenpost_windows_total)") >= 2
    assert value(prometheus, "sum(ray_listenpost_output_tokens_total)") > 0
    assert value(prometheus, 'sum(ray_listenpost_stage_latency_seconds_count{stage="caption"})') >= 2
    p50 = 'histogram_quantile(0.5, sum by (le) (ray_listenpost_stage_latency_seconds_bucket{stage="caption"}))'
    assert 0 < value(prometheus, p50) < 300
    assert value(prometheus, "max(ray_listenpost_dlq_messages)") >= 1
    assert value(prometheus, "sum(ray_listenpost_windows_no_speech_total)") >= 2
    assert value(prometheus, 'sum(ray_listenpost_rule_matches_total{rule_id="dead-air"})') >= 2
    assert value(prometheus, 'sum(ray_listenpost_alerts_total{rule_id="dead-air",outcome="notified"})') >= 2
    assert value(prometheus, 'sum(ray_listenpost_notifications_deduplicated_total{receiver="e2e-webhook"})') >= 1
    assert value(prometheus, 'sum(ray_listenpost_notifications_sent_total{receiver="e2e-webhook"})') >= 1
    assert value(prometheus, 'max(ray_listenpost_stream_bytes{stream="LISTENPOST_OUT"})') > 0
    # Never an id as a label: every label name is from the bounded set (plus Serve's and Ray's own).
    for series in query(prometheus, '{__name__=~"ray_listenpost_.+"}'):
        labels = set(series["metric"]) - {"__name__", "instance", "job", "le", "deployment", "replica", "application",
                                         "Component", "NodeAddress", "SessionName", "WorkerId", "Version", "JobId",
                                         "otel_scope_name"}  # fmt: skip
        # receiver: a name from the notification file (bounded like rule ids).
        assert labels <= {"durable", "stage", "reason", "rule_id", "ruleset_version", "outcome", "stream", "bucket", "label",
                          "receiver"}, series  # fmt: skip
    # What `listenpost top` shows, read from the same live endpoint Prometheus scrapes, agrees with it.
    view = await top_view()
    assert view.failed == {} and view.sources
    caption = next(row for row in view.latency if row.scope == "stage" and row.stage == "caption")
    assert caption.count >= 2 and caption.p50_s is not None and 0 < caption.p50_s < 300
    assert caption.count >= value(prometheus, 'sum(ray_listenpost_stage_latency_seconds_count{stage="caption"})')


async def top_view() -> Any:
    from services.metricsview.scrape import scrape
    from services.metricsview.view import metrics_view
    from services.runner import local_metrics_urls

    latest, failed = await scrape(local_metrics_urls(), timeout_s=5, max_bytes=32 * 2**20, at=time.time())
    return metrics_view(latest, failed=failed)
