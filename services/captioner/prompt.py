"""The Captioner's prompt: one user turn holding one audio clip and no text, rendered by the model's own template."""

from __future__ import annotations

from functools import lru_cache

# The Captioner takes no text instruction: the audio item alone is the whole request.
CAPTION_MESSAGES: list[dict] = [{"role": "user", "content": [{"type": "audio"}]}]


@lru_cache(maxsize=8)
def caption_prompt(model: str) -> str:
    """Prompt text for one audio clip, as ``model``'s chat template renders it (cached per model).

    ``model`` is a hub id or a local checkpoint dir. The text holds exactly one
    ``<|audio_start|><|audio_pad|><|audio_end|>`` group, which the engine expands to the
    clip's audio tokens.
    """
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model)
    prompt = processor.apply_chat_template(CAPTION_MESSAGES, tokenize=False, add_generation_prompt=True)
    if processor.audio_token not in prompt:
        raise ValueError(f"chat template of {model!r} rendered no audio placeholder: {prompt!r}")
    return prompt


__all__ = ["CAPTION_MESSAGES", "caption_prompt"]
