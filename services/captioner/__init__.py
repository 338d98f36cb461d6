"""Audio captioning with Qwen3-Omni-30B-A3B-Captioner behind a small engine interface (vLLM or transformers)."""
