"""What `listenpost top` reads from Ray's metrics endpoints (services/metricsview/): quantiles
from histogram buckets as PromQL estimates them, the increase between two reads, replicas and
nodes summed, the rules that matched most, and endpoints that cannot be read.

The expected quantiles are worked out by hand in each test's comments (tests/prometheus_samples.py
says what the two reads hold)."""

from __future__ import annotations

import math
import socket

import pytest

from services.metricsview.exposition import ExpositionError, Scrape, combine, increase, parse_exposition
from services.metricsview.quantile import QuantileError, histogram_quantile
from services.metricsview.scrape import MetricsUrlError, metrics_urls, scrape
from services.metricsview.view import LatencyRow, RuleMatches, metrics_view
from tests.prometheus_samples import (
    FIRST,
    INGRESS_A,
    OTHERS,
    SECOND,
    STAGE,
    Endpoint,
    family,
    histogram,
)

INF = math.inf


def read(text: str, at: float, source: str = "http://10.0.0.5:44217/metrics") -> Scrape:
    return parse_exposition(text, source=source, at=at)


def row(rows: list[LatencyRow], stage: str) -> LatencyRow:
    (found,) = [r for r in rows if r.stage == stage]
    return found


# --- histogram_quantile ------------------------------------------------------------------------


def test_a_quantile_is_interpolated_within_its_bucket() -> None:
    buckets = [(0.1, 2.0), (0.5, 6.0), (1.0, 8.0), (INF, 10.0)]
    # rank 5 falls in (0.1, 0.5], which holds observations 3..6: 0.1 + 0.4 * (5 - 2) / 4
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.4)
    # rank 1 in the first bucket, which starts at 0: 0.1 * 1 / 2
    assert histogram_quantile(0.1, buckets) == pytest.approx(0.05)
    # rank 2 is the first bucket's last observation: its upper bound
    assert histogram_quantile(0.2, buckets) == pytest.approx(0.1)
    # rank 9.9 is in +Inf, which has no bound to reach: the largest finite bound
    assert histogram_quantile(0.99, buckets) == 1.0
    assert histogram_quantile(0.5, list(reversed(buckets))) == pytest.approx(0.4)  # any order


def test_nothing_to_estimate_from_is_none() -> None:
    assert histogram_quantile(0.5, [(0.1, 0.0), (INF, 0.0)]) is None  # no observations
    assert histogram_quantile(0.5, [(0.1, 1.0), (1.0, 2.0)]) is None  # no +Inf bucket
    assert histogram_quantile(0.5, [(INF, 3.0)]) is None  # one bucket
    assert histogram_quantile(0.5, []) is None
    with pytest.raises(QuantileError):
        histogram_quantile(1.5, [(0.1, 1.0), (INF, 1.0)])


def test_a_dip_in_cumulative_counts_is_raised_and_a_bound_written_twice_is_one_bucket() -> None:
    # (0.5, 3) dips below (0.1, 5): read as 5, so all 6 are at most 0.5 and rank 3 is in (0, 0.1]: 0.1 * 3 / 5
    assert histogram_quantile(0.5, [(0.1, 5.0), (0.5, 3.0), (INF, 6.0)]) == pytest.approx(0.06)
    # "1" and "1.0" are one bound: 4 at most 1, rank 2: 1.0 * 2 / 4
    assert histogram_quantile(0.5, [(1.0, 2.0), (1.0, 2.0), (INF, 4.0)]) == pytest.approx(0.5)


# --- exposition --------------------------------------------------------------------------------


def test_only_listenpost_series_are_kept_each_with_rays_labels() -> None:
    scrape_ = read(FIRST, at=100.0)
    names = {key.name for key in scrape_.samples}
    assert names == {
        "ray_listenpost_stage_latency_seconds_bucket",
        "ray_listenpost_stage_latency_seconds_count",
        "ray_listenpost_stage_latency_seconds_sum",
        "ray_listenpost_rule_matches_total",
        "ray_listenpost_windows_waiting",
    }
    waiting = list(scrape_.series("ray_listenpost_windows_waiting"))
    assert sorted(value for _, value in waiting) == [3.0, 4.0]  # one series per Ingress replica, not summed yet
    labels = next(labels for labels, value in waiting if value == 4.0)
    assert labels == INGRESS_A  # Ray's and Serve's labels, kept until the view sums across them


def test_text_that_is_not_an_exposition_is_refused() -> None:
    with pytest.raises(ExpositionError, match="not Prometheus text exposition"):
        read("<html><body>Ray Dashboard</body></html>", at=0.0)


def test_missing_families_give_no_rows() -> None:
    view = metrics_view(read(OTHERS, at=100.0))  # Ray's, Serve's and vLLM's, none of ours yet
    assert view.latency == [] and view.top_rules == [] and view.windows_waiting is None


# --- the view ----------------------------------------------------------------------------------


def test_the_last_interval_sums_replicas_and_takes_what_each_grew_by() -> None:
    view = metrics_view(read(SECOND, at=102.0), read(FIRST, at=100.0))
    assert view.interval_s == 2.0
    # caption: A grew by 6 in (0.5, 1] and 2 in (1, 2.5], B by 2 in (2.5, 5]: 10 in all.
    caption = row(view.latency, "caption")
    assert caption.count == 10
    assert caption.p50_s == pytest.approx(0.5 + 0.5 * 5 / 6)  # rank 5 of the 6 in (0.5, 1]
    assert caption.p99_s == pytest.approx(2.5 + 2.5 * (9.9 - 8) / 2)  # rank 9.9, 8 below 2.5 s, 2 in (2.5, 5]
    # rules: the replaced replica's series is gone, the new one's 4 are all in the interval
    # (3 in (0, 0.01], 1 in (0.01, 0.025]), not its 4 minus the old replica's 100.
    rules = row(view.latency, "rules")
    assert (rules.count, rules.p50_s, rules.p99_s) == (4, pytest.approx(0.01 * 2 / 3), pytest.approx(0.01 + 0.015 * 0.96))
    # preprocess saw nothing new: a row, no quantile.
    assert row(view.latency, "preprocess") == LatencyRow(scope="stage", stage="preprocess", p50_s=None, p99_s=None, count=0)
    # end to end: a series first seen in the second read started at zero: 3 in (5, 10].
    e2e = row(view.latency, "captioned")
    assert (e2e.scope, e2e.count, e2e.p50_s, e2e.p99_s) == ("end_to_end", 3, pytest.approx(7.5), pytest.approx(9.95))
    assert [r.stage for r in view.latency] == ["preprocess", "caption", "rules", "captioned"]  # the order an event meets them
    # windows waiting is a gauge: the latest read (3 + 2), not a difference
    assert view.windows_waiting == 5
    # matches grew: escalate 15, hold music 2 (v3) + 3 (v2); route-billing did not match in the interval
    assert view.top_rules == [RuleMatches(rule_id="escalate-angry-caller", matches=15), RuleMatches(rule_id="tag-hold-music", matches=5)]
    assert metrics_view(read(SECOND, at=102.0), read(FIRST, at=100.0), top_rules=1).top_rules == view.top_rules[:1]


def test_without_an_earlier_read_the_view_is_since_the_replicas_started() -> None:
    view = metrics_view(read(SECOND, at=102.0))
    assert view.interval_s is None
    # caption, cumulative: 6 at most 1 s, 12 at most 2.5 s, 16 at most 5 s.
    caption = row(view.latency, "caption")
    assert caption.count == 16
    assert caption.p50_s == pytest.approx(1.0 + 1.5 * (8 - 6) / 6)  # 1.5
    assert caption.p99_s == pytest.approx(2.5 + 2.5 * (15.84 - 12) / 4)  # 4.9
    assert row(view.latency, "preprocess").p50_s == pytest.approx(0.025 + 0.025 * 3 / 6)
    assert [(r.rule_id, r.matches) for r in view.top_rules] == [("escalate-angry-caller", 25), ("tag-hold-music", 10), ("route-billing", 7)]


def test_a_count_lower_than_before_is_a_restart_in_place() -> None:
    def text(observed: dict[float, int]) -> str:
        return family(STAGE, "histogram", histogram(STAGE, {**INGRESS_A, "stage": "caption"}, observed))

    # The same labels, 40 observations and then 4: it counted again from zero, so 4 are new (not -36).
    view = metrics_view(read(text({1.0: 3, 2.5: 1}), at=110.0), read(text({1.0: 40}), at=100.0))
    caption = row(view.latency, "caption")
    assert caption.count == 4 and caption.p50_s == pytest.approx(0.5 + 0.5 * 2 / 3)  # rank 2 of the 3 in (0.5, 1]


def test_nodes_are_summed_and_a_node_read_only_now_is_left_out_of_the_interval() -> None:
    one, two = "http://10.0.0.5:44217/metrics", "http://10.0.0.6:44217/metrics"
    both = combine([read(SECOND, at=102.0, source=one), read(SECOND, at=102.0, source=two)])
    assert row(metrics_view(both).latency, "caption").count == 32  # 16 on each node
    assert metrics_view(both).windows_waiting == 10
    # Node two was not read the first time: its totals since start are not the last interval's.
    view = metrics_view(both, read(FIRST, at=100.0, source=one))
    assert row(view.latency, "caption").count == 10
    assert view.windows_waiting == 10  # a gauge: every node read now
    assert increase(read(FIRST, at=100.0, source=one), both).sources == {one}


def test_no_endpoint_read_is_an_empty_view_naming_why() -> None:
    view = metrics_view(Scrape(at=1.0), read(FIRST, at=0.0), failed={"http://x:1/metrics": "cannot connect"})
    assert (view.latency, view.top_rules, view.windows_waiting, view.sources) == ([], [], None, [])
    assert view.failed == {"http://x:1/metrics": "cannot connect"}


# --- reading the endpoints ---------------------------------------------------------------------


def test_metrics_urls_from_options_and_settings() -> None:
    assert metrics_urls(["node1:44217,http://node2:44217/metrics", " ", "node1:44217"]) == [
        "http://node1:44217/metrics",
        "http://node2:44217/metrics",
    ]
    assert metrics_urls(["https://ray.example/federate/"]) == ["https://ray.example/federate/"]
    assert metrics_urls(["http://node3:9000/"]) == ["http://node3:9000/metrics"]
    for wrong in ("ftp://node1:44217", "http://", "http://[::1", "node1:99999"):
        with pytest.raises(MetricsUrlError, match="not a metrics URL"):
            metrics_urls([wrong])


async def test_endpoints_are_read_together_and_each_failure_is_named() -> None:
    with (
        Endpoint([SECOND]) as good,
        Endpoint([SECOND], status=404) as missing,
        Endpoint(["# " + "x" * 300_000]) as large,
        Endpoint(["<html>Ray Dashboard</html>"]) as html,
        Endpoint([SECOND], delay_s=1.5) as slow,
    ):
        urls = [good.url, missing.url, large.url, html.url, slow.url, closed_url()]
        latest, failed = await scrape(urls, timeout_s=0.5, max_bytes=200_000, at=5.0)
    assert latest.sources == {good.url} and latest.at == 5.0
    assert row(metrics_view(latest).latency, "caption").count == 16
    assert failed == {
        missing.url: "HTTP 404 Not Found",
        large.url: "the answer is larger than 200,000 bytes",
        html.url: failed[html.url],
        slow.url: "no answer within 0.5 s",
        urls[-1]: failed[urls[-1]],
    }
    assert failed[html.url].startswith("not Prometheus text exposition")
    assert failed[urls[-1]].startswith("cannot connect")


def closed_url() -> str:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/metrics"
