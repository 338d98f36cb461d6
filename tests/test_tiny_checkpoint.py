"""The tiny Qwen3-Omni checkpoint loads through transformers' real code paths.

Its weights are random: anything it generates is noise, never a caption.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from captioner_fixtures import SAMPLE_RATE, noise_window

from services.captioner.prompt import caption_prompt
from services.captioner.tiny_checkpoint import MARKER_FILE, TINY_CHECKPOINT_VERSION, build_tiny_checkpoint


def test_writes_the_real_architecture(tiny_checkpoint: Path) -> None:
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert config["architectures"] == ["Qwen3OmniMoeForConditionalGeneration"]
    assert config["model_type"] == "qwen3_omni_moe"
    assert config["enable_audio_output"] is False
    thinker = config["thinker_config"]
    assert thinker["audio_config"]["n_window"] == 50
    text = thinker["text_config"]
    assert text["head_dim"] == 64
    assert sum(text["rope_parameters"]["mrope_section"]) == text["head_dim"] // 2
    note = (tiny_checkpoint / MARKER_FILE).read_text()
    assert TINY_CHECKPOINT_VERSION in note and "random weights" in note
    size = sum(p.stat().st_size for p in tiny_checkpoint.iterdir())
    assert size < 20 * 2**20


def test_build_is_idempotent(tiny_checkpoint: Path) -> None:
    weights = tiny_checkpoint / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    started = time.perf_counter()
    assert build_tiny_checkpoint(tiny_checkpoint) == tiny_checkpoint
    assert time.perf_counter() - started < 0.5
    assert weights.stat().st_mtime_ns == mtime


def test_rebuilds_a_stale_version(tmp_path: Path) -> None:
    out = build_tiny_checkpoint(tmp_path / "ckpt", seed=1)
    (out / MARKER_FILE).write_text("version: listenpost-tiny-qwen3-omni-v0\n")
    build_tiny_checkpoint(out, seed=1)
    assert TINY_CHECKPOINT_VERSION in (out / MARKER_FILE).read_text()


def test_refuses_to_overwrite_foreign_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        build_tiny_checkpoint(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_transformers_loads_the_model(tiny_checkpoint: Path) -> None:
    from transformers import Qwen3OmniMoeForConditionalGeneration

    model = Qwen3OmniMoeForConditionalGeneration.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    assert not model.has_talker
    assert type(model.thinker).__name__ == "Qwen3OmniMoeThinkerForConditionalGeneration"


def test_processor_turns_10s_into_130_audio_tokens(tiny_checkpoint: Path) -> None:
    from transformers import Qwen3OmniMoeProcessor

    processor = Qwen3OmniMoeProcessor.from_pretrained(tiny_checkpoint)
    prompt = caption_prompt(str(tiny_checkpoint))
    assert prompt.count(processor.audio_token) == 1
    inputs = processor(text=[prompt], audio=[noise_window(10.0)], sampling_rate=SAMPLE_RATE, return_tensors="pt")
    audio_token_id = processor.tokenizer.convert_tokens_to_ids(processor.audio_token)
    # 100 mel frames per second; every 100-frame chunk becomes 13 audio tokens.
    assert int((inputs["input_ids"] == audio_token_id).sum()) == 130
    assert inputs["input_features"].shape == (1, 128, 1000)


def test_prompt_is_the_single_turn_audio_only_template(tiny_checkpoint: Path) -> None:
    assert caption_prompt(str(tiny_checkpoint)) == (
        "<|im_start|>user\n<|audio_start|><|audio_pad|><|audio_end|><|im_end|>\n<|im_start|>assistant\n"
    )
