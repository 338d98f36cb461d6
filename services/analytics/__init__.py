"""`listenpost export`: the output streams as tidy tables for analysts (docs/analytics.md).

- :mod:`services.analytics.tables`: decoded events -> rows of five tables, and their schemas (pure).
- :mod:`services.analytics.writer`: rows -> parquet, JSON lines or CSV files partitioned by date,
  replaced whole on a re-export; the hourly append-only sink of ``--follow`` (files, no NATS).
- :mod:`services.analytics.reader`: JSON lines and CSV files -> Arrow tables typed by their schema (the report).
- :mod:`services.analytics.source`: reading LISTENPOST_OUT and LISTENPOST_DLQ over NATS (the shell).
- :mod:`services.analytics.cli`: the command.
"""
