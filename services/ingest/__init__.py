"""The doors events come in by, besides the NATS stream itself.

- :mod:`.http`: ``POST /events`` (CloudEvents over HTTP: binary, structured, batches),
  authenticated, size-capped, stored in JetStream before the ``202``;
- :mod:`.auth`: API keys bound to event sources, expiry, per-key rate limits, webhook signatures;
- :mod:`.adapters`: source adapters, YAML files that map other systems' event types to
  ``audio.submitted`` with CEL;
- :mod:`.submitted`: an input message as ``audio.submitted`` (decoded, adapted, validated),
  what the orchestrator runs on every message it consumes.
"""
