"""listenpost's series in Prometheus text expositions, and what they grew by between two reads.

Ray's endpoint labels every series with its own labels (``WorkerId``, ``NodeAddress``,
``SessionName``, Serve's ``replica``...), so one of our series is many there, one per replica.
They are kept apart here (each with the URL it was read from) until the difference between two
reads is taken, because a replica that restarts starts its counters again from zero: like
PromQL's ``increase``, a count lower than before is a restart, and counts from there.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from services.metrics import METRICS, MetricSpec, exported_names

LabelSet = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class SeriesKey:
    source: str  # the URL the series was read from
    name: str  # the sample name, e.g. ray_listenpost_stage_latency_seconds_bucket
    labels: LabelSet  # every label, sorted: Ray's and Serve's as well as ours


#: Each exported sample name of ours, with its declaration.
SAMPLES: dict[str, MetricSpec] = {name: spec for spec in METRICS for name in exported_names(spec)}


@dataclass(frozen=True)
class Scrape:
    """listenpost's samples from the metrics endpoints read at one moment (or, from
    :func:`increase`, what the counters grew by since an earlier read)."""

    at: float  # when it was read (seconds, monotonic)
    sources: frozenset[str] = frozenset()  # the URLs read
    samples: Mapping[SeriesKey, float] = field(default_factory=dict)
    since: float | None = None  # the earlier read's time, for an increase; None: totals since start

    def series(self, name: str) -> Iterator[tuple[dict[str, str], float]]:
        """The labels and value of every series of sample ``name``."""
        for key, value in self.samples.items():
            if key.name == name:
                yield dict(key.labels), value


class ExpositionError(ValueError):
    """Text that is not Prometheus text exposition."""


def parse_exposition(text: str, *, source: str, at: float) -> Scrape:
    """listenpost's samples in ``text`` (read from ``source`` at ``at``); every other family is left out."""
    samples: dict[SeriesKey, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in SAMPLES:
                    key = SeriesKey(source, sample.name, tuple(sorted(sample.labels.items())))
                    samples[key] = samples.get(key, 0.0) + float(sample.value)
    except (ValueError, TypeError, IndexError) as exc:  # the parser's ways of refusing a line
        raise ExpositionError(f"not Prometheus text exposition ({exc})") from exc
    return Scrape(at=at, sources=frozenset({source}), samples=samples)


def combine(scrapes: Iterable[Scrape]) -> Scrape:
    """One scrape of several endpoints (one per node); no scrape at all is an empty one."""
    scrapes = list(scrapes)
    samples: dict[SeriesKey, float] = {}
    for scrape in scrapes:
        samples.update(scrape.samples)  # keys carry their source: nothing is overwritten
    return Scrape(
        at=max((s.at for s in scrapes), default=0.0),
        sources=frozenset().union(*(s.sources for s in scrapes)),
        samples=samples,
    )


def increase(before: Scrape, after: Scrape) -> Scrape:
    """What each counter and histogram bucket grew by from ``before`` to ``after``.

    Only endpoints read both times count: an endpoint read only now has no earlier count to
    subtract, and its totals since start would pass for the last interval. Gauges are not
    differences; read them from ``after``.
    """
    sources = before.sources & after.sources
    grown: dict[SeriesKey, float] = {}
    for key, value in after.samples.items():
        spec = SAMPLES[key.name]
        if key.source not in sources or spec.kind == "gauge":
            continue
        earlier = before.samples.get(key, 0.0)  # a series new since then (a new replica) started at zero
        grown[key] = value - earlier if value >= earlier else value  # lower: the replica restarted
    return Scrape(at=after.at, sources=sources, samples=grown, since=before.at)
