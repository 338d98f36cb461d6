"""The language of files people write: YAML with CEL expressions (rule files, adapter files).

- :mod:`.yaml_source`: YAML parsed with positions, and pydantic errors turned into
  ``file:line:column: cause``;
- :mod:`.celast`: a CEL parser for static analysis (the library exposes no syntax tree);
- :mod:`.cel_checks`: compiling CEL with the library and refusing unknown names at load time;
- :mod:`.errors`: the positioned errors.

Rules (:mod:`services.rules`) and source adapters (:mod:`services.ingest.adapters`) both
build on this layer; it knows nothing of either.
"""
