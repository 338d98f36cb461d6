"""`listenpost batch`: an archive of recordings submitted at a bounded pace, resumably, with a
run record of what came back (docs/batch.md).

- :mod:`services.batch.manifest`: what to submit, from a folder or a CSV/JSONL manifest (pure).
- :mod:`services.batch.record`: the run record, the state a re-run continues from (pure + a file).
- :mod:`services.batch.runner`: submission and result collection over NATS (the shell).
"""
