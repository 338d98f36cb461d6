"""What listenpost's Prometheus metrics say, read without Prometheus (``listenpost top``/``status``).

:mod:`.scrape` reads Ray's metrics endpoints (bounded), :mod:`.exposition` keeps listenpost's
series from the text and takes the difference between two reads, :mod:`.quantile` estimates
a quantile from histogram buckets as Prometheus does, and :mod:`.view` turns it into rows:
latency per stage and end to end, windows in flight, the rules that matched most.

A shared-layer package: it reads the metric names from :mod:`services.metrics` and nothing else
of listenpost's, so the command line (and anything below it) can use it.
"""
