"""A quantile from cumulative histogram buckets, as PromQL's ``histogram_quantile`` estimates it.

The estimate assumes observations are spread evenly within a bucket: it finds the bucket the
rank falls in and interpolates linearly between its bounds (the first bucket starts at 0). A
rank in the ``+Inf`` bucket has no upper bound to interpolate to, so the answer is the largest
finite bound, as in Prometheus (promql/quantile.go, ``BucketQuantile``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable


class QuantileError(ValueError):
    """A quantile outside [0, 1]."""


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of ``buckets`` (upper bound, cumulative count), or None when there is
    nothing to estimate from: no observations, no ``+Inf`` bucket, or fewer than two buckets."""
    if not 0.0 <= q <= 1.0:
        raise QuantileError(f"a quantile is between 0 and 1, got {q}")
    ordered = sorted(buckets)
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        return None
    bounds: list[float] = []
    counts: list[float] = []
    for bound, count in ordered:
        if bounds and bound == bounds[-1]:  # one bound written twice ("1" and "1.0"): one bucket
            counts[-1] += count
        else:
            bounds.append(bound)
            counts.append(count)
    # The difference of two reads with a replica restarted in between can leave a bucket below
    # the one before it; a cumulative count never is, so each is raised to the one before it
    # (Prometheus does the same).
    for i in range(1, len(counts)):
        counts[i] = max(counts[i], counts[i - 1])
    if len(counts) < 2:
        return None
    observations = counts[-1]
    if observations <= 0:
        return None
    rank = q * observations
    b = next(i for i, count in enumerate(counts) if count >= rank)
    if b == len(counts) - 1:
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start, below = (bounds[b - 1], counts[b - 1]) if b > 0 else (0.0, 0.0)
    in_bucket = counts[b] - below
    if in_bucket <= 0:  # q = 0 with an empty first bucket
        return start
    return start + (bounds[b] - start) * (rank - below) / in_bucket
