"""Audio captioning with Qwen3-Omni-30B-A3B-Captioner behind a small engine interface (vLLM or
transformers), the timeline merge of window captions, and facet extraction (docs/facets.md)."""
