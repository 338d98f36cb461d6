"""The rows ``listenpost top`` shows from the metrics: latency per stage and end to end (p50,
p99), windows in flight in the Captioner, and the rules that matched most.

Each is summed across replicas and nodes, as the Grafana dashboard's queries sum them
(observability/grafana/listenpost.json): ``histogram_quantile(q, sum by (le, stage) (...))``,
``sum(ray_listenpost_windows_waiting)``, ``topk(n, sum by (rule_id) (...))``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Literal

from pydantic import BaseModel, Field

from services.metrics import SPECS, exported_names
from services.metricsview.exposition import Scrape, increase
from services.metricsview.quantile import histogram_quantile

Scope = Literal["stage", "end_to_end"]

#: The latency histograms, each with the rows' scope; the stages come from their ``stage`` label.
LATENCY: tuple[tuple[Scope, str], ...] = (
    ("stage", "listenpost_stage_latency_seconds"),
    ("end_to_end", "listenpost_end_to_end_latency_seconds"),
)
#: Stages in the order an event meets them; any other stage follows, by name.
STAGE_ORDER = ("preprocess", "caption", "rules", "captioned", "decided")


class LatencyRow(BaseModel):
    scope: Scope
    stage: str
    p50_s: float | None = Field(description="None: nothing observed in the window.")
    p99_s: float | None
    count: int = Field(description="Observations in the window.")


class RuleMatches(BaseModel):
    rule_id: str
    matches: int


class MetricsView(BaseModel):
    """What the metrics say over a window: the last interval, or everything since the replicas
    started when there is no earlier read (``interval_s`` None)."""

    interval_s: float | None
    latency: list[LatencyRow]
    windows_waiting: int | None = Field(description="Windows sent to the Captioner, not answered yet; None: not reported.")
    top_rules: list[RuleMatches]
    sources: list[str] = Field(description="The metrics URLs read.")
    failed: dict[str, str] = Field(default_factory=dict, description="The metrics URLs not read, with why.")


def metrics_view(
    latest: Scrape, previous: Scrape | None = None, *, top_rules: int = 10, failed: dict[str, str] | None = None
) -> MetricsView:
    """The view of ``latest``: over the interval since ``previous``, or since start without one;
    ``failed``: the URLs not read this time, with why (kept in the view for ``status --json``)."""
    window = increase(previous, latest) if previous is not None else latest
    return MetricsView(
        interval_s=latest.at - previous.at if previous is not None else None,
        latency=[row for scope, name in LATENCY for row in latency_rows(window, scope, name)],
        windows_waiting=windows_waiting(latest),
        top_rules=rule_matches(window)[:top_rules],
        sources=sorted(latest.sources),
        failed=dict(failed or {}),
    )


def latency_rows(window: Scrape, scope: Scope, metric: str) -> list[LatencyRow]:
    """One row per stage of histogram ``metric``; none when the endpoints do not export it."""
    bucket_name, _, count_name = exported_names(SPECS[metric])
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for labels, value in window.series(bucket_name):
        if (bound := _bound(labels.get("le"))) is not None:
            buckets[labels.get("stage", "")][bound] += value
    counts: dict[str, float] = defaultdict(float)
    for labels, value in window.series(count_name):
        counts[labels.get("stage", "")] += value
    rows = []
    for stage in sorted(buckets.keys() | counts.keys(), key=_stage_order):
        pairs = list(buckets[stage].items())
        total = buckets[stage].get(float("inf"), counts[stage])
        rows.append(
            LatencyRow(
                scope=scope,
                stage=stage,
                p50_s=histogram_quantile(0.5, pairs),
                p99_s=histogram_quantile(0.99, pairs),
                count=round(total),
            )
        )
    return rows


def windows_waiting(latest: Scrape) -> int | None:
    """Windows in flight in every Ingress replica together (a gauge: the latest read, not a difference)."""
    (name,) = exported_names(SPECS["listenpost_windows_waiting"])
    values = [value for _, value in latest.series(name)]
    return round(sum(values)) if values else None


def rule_matches(window: Scrape) -> list[RuleMatches]:
    """Rules that matched in the window, most matches first (ties by rule id); every ruleset version together."""
    (name,) = exported_names(SPECS["listenpost_rule_matches"])
    totals: dict[str, float] = defaultdict(float)
    for labels, value in window.series(name):
        totals[labels.get("rule_id", "")] += value
    ranked = sorted(((round(n), rule) for rule, n in totals.items() if round(n) > 0), key=lambda x: (-x[0], x[1]))
    return [RuleMatches(rule_id=rule, matches=n) for n, rule in ranked]


def _stage_order(stage: str) -> tuple[int, str]:
    return (STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER), stage)


def _bound(le: str | None) -> float | None:
    try:
        return float(le) if le is not None else None  # "+Inf" reads as inf
    except ValueError:
        return None
