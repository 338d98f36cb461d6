"""Prompts, rendered by the model's own chat template.

- The caption prompt: one user turn holding one audio clip and no text (the Captioner takes no
  instruction: the audio item alone is the whole request).
- Text prompts (system + user text, no audio): the guided-decoding facet pass.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

CAPTION_MESSAGES: list[dict] = [{"role": "user", "content": [{"type": "audio"}]}]


@lru_cache(maxsize=8)
def _processor(model: str) -> Any:
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(model)


@lru_cache(maxsize=8)
def caption_prompt(model: str) -> str:
    """Prompt text for one audio clip, as ``model``'s chat template renders it (cached per model).

    ``model`` is a hub id or a local checkpoint dir. The text holds exactly one
    ``<|audio_start|><|audio_pad|><|audio_end|>`` group, which the engine expands to the
    clip's audio tokens.
    """
    processor = _processor(model)
    prompt = processor.apply_chat_template(CAPTION_MESSAGES, tokenize=False, add_generation_prompt=True)
    if processor.audio_token not in prompt:
        raise ValueError(f"chat template of {model!r} rendered no audio placeholder: {prompt!r}")
    return prompt


@lru_cache(maxsize=8)
def caption_prompt_text_tokens(model: str) -> int:
    """Tokens of the caption prompt other than the audio's (the placeholder becomes those)."""
    processor = _processor(model)
    ids = processor.tokenizer(caption_prompt(model), add_special_tokens=False)["input_ids"]
    return len(ids) - 1


def text_prompt(model: str, system: str, user: str) -> str:
    """A text-only single-turn prompt (no audio), as ``model``'s chat template renders it."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return _processor(model).apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


__all__ = ["CAPTION_MESSAGES", "caption_prompt", "caption_prompt_text_tokens", "text_prompt"]
