"""A tiny random-weight checkpoint of the real Qwen3-Omni MoE architecture, built offline.

No model hub is reachable in development and CI, yet the captioner must be exercised through the
same loading code paths as Qwen3-Omni-30B-A3B-Captioner (transformers ``from_pretrained``, vLLM
``LLM(model=dir)`` / ``AsyncLLM``). This builds a checkpoint with the same architecture, tokenizer
special tokens, processor and chat-template shape, but a few MB of random weights: whatever it
generates is noise. It proves loading, prompting, batching and plumbing, never caption quality.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import Qwen2Tokenizer, Qwen3OmniMoeConfig, Qwen3OmniMoeProcessor

# Bump when anything below changes what gets written: an existing dir with another marker is rebuilt.
TINY_CHECKPOINT_VERSION = "listenpost-tiny-qwen3-omni-v2"
MARKER_FILE = "LISTENPOST_TINY.md"

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|audio_start|>",
    "<|audio_end|>",
    "<|audio_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|vision_start|>",
    "<|vision_end|>",
]

# Same attribute names as the real checkpoint's tokenizer_config.json: the processor reads them.
TOKENIZER_EXTRA_SPECIAL = {
    "audio_token": "<|audio_pad|>",
    "audio_bos_token": "<|audio_start|>",
    "audio_eos_token": "<|audio_end|>",
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_bos_token": "<|vision_start|>",
    "vision_eos_token": "<|vision_end|>",
}

# Renders like the Qwen3-Omni template for the parts the captioner uses: ChatML turns, one
# <|audio_start|><|audio_pad|><|audio_end|> per audio item, and the assistant generation prompt.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] in ['audio', 'audio_url', 'input_audio'] -%}"
    "{{- '<|audio_start|><|audio_pad|><|audio_end|>' -}}"
    "{%- elif item['type'] in ['image', 'image_url'] -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif item['type'] in ['video', 'video_url'] -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_TRAINING_TEXT = [
    "system user assistant",
    "A man speaks calmly in English over light background noise, then a door closes.",
    "The audio contains a woman's voice, music, laughter, applause and a ringing phone.",
    "Speaker one sounds angry and raises his voice; speaker two answers quietly.",
    "Traffic, wind, rain, birds and footsteps can be heard in an outdoor scene.",
    "The recording is short, clear, noisy, distorted or silent. 0123456789 .,;:!?'\"()-",
]

_BPE_VOCAB_SIZE = 640
_TEXT_HIDDEN = 128
_HEAD_DIM = 64  # vLLM's CPU attention rejects small head sizes (16); 64 works.

_NOTE = f"""# Tiny Qwen3-Omni MoE checkpoint (listenpost)

version: {TINY_CHECKPOINT_VERSION}

Built offline by `services.captioner.tiny_checkpoint.build_tiny_checkpoint` with **random
weights**. The architecture, tokenizer special tokens, processor and chat template follow
Qwen3-Omni-30B-A3B-Captioner so that transformers and vLLM load it through their real code
paths. Everything it generates is **noise from random weights**: use it to test loading,
prompting, batching and plumbing, never to judge caption quality.
"""


def _is_complete(out_dir: Path) -> bool:
    marker = out_dir / MARKER_FILE
    if not marker.is_file() or TINY_CHECKPOINT_VERSION not in marker.read_text():
        return False
    required = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
    return all((out_dir / name).is_file() for name in required)


def _build_tokenizer() -> Qwen2Tokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    # Train a byte-level BPE in-process; special tokens first so they get the lowest, stable ids.
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_BPE_VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_TRAINING_TEXT, trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]

    # Qwen2Tokenizer rebuilds the Qwen pre-tokenizer (regex split + byte level) around this vocab.
    return Qwen2Tokenizer(
        vocab=state["vocab"],
        merges=merges,  # type: ignore[arg-type]  # (a, b) pairs: accepted, though annotated as strings
        unk_token=None,  # type: ignore[arg-type]  # no unknown token: byte-level BPE covers every byte
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=TOKENIZER_EXTRA_SPECIAL,
        model_max_length=32768,
    )


def _build_processor(tokenizer: Qwen2Tokenizer) -> Qwen3OmniMoeProcessor:
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3OmniMoeProcessor,
        Qwen3VLVideoProcessor,
        WhisperFeatureExtractor,
    )

    # The real checkpoint's feature extractor: 128 mel bins at 16 kHz, 10 ms hop, 300 s chunk cap.
    feature_extractor = WhisperFeatureExtractor(
        feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=300, n_fft=400
    )
    return Qwen3OmniMoeProcessor(
        # Qwen3-Omni's vision tower uses 16-pixel patches (Qwen2-VL's default is 14).
        image_processor=Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2),
        video_processor=Qwen3VLVideoProcessor(),
        feature_extractor=feature_extractor,
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )


def _build_config(tokenizer: Qwen2Tokenizer) -> Qwen3OmniMoeConfig:
    from transformers import Qwen3OmniMoeConfig

    def token_id(token: str) -> int:
        found = tokenizer.convert_tokens_to_ids(token)
        assert isinstance(found, int), token  # one token, one id
        return found

    ids = {tok: token_id(tok) for tok in SPECIAL_TOKENS}

    def single_id(word: str) -> int:
        # The role names are single tokens in the real vocab; in this tiny one they may not be.
        return tokenizer.encode(word, add_special_tokens=False)[0]

    vocab_size = -(-len(tokenizer) // 64) * 64
    text_config = dict(
        vocab_size=vocab_size,
        hidden_size=_TEXT_HIDDEN,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=_TEXT_HIDDEN // _HEAD_DIM,
        num_key_value_heads=1,
        head_dim=_HEAD_DIM,
        max_position_embeddings=32768,
        moe_intermediate_size=64,
        num_experts=4,
        num_experts_per_tok=2,
        decoder_sparse_step=1,
        norm_topk_prob=True,
        # mrope sections (t, h, w) must sum to head_dim / 2.
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": [8, 12, 12],
            "interleaved": True,
            "mrope_interleaved": True,
        },
        # Fields the real config.json carries that vLLM reads and transformers' defaults omit.
        tie_word_embeddings=False,
        use_qk_norm=True,
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
    )
    audio_config = dict(
        num_mel_bins=128,
        encoder_layers=2,
        encoder_attention_heads=1,
        encoder_ffn_dim=128,
        d_model=64,
        output_dim=_TEXT_HIDDEN,
        downsample_hidden_size=32,
        n_window=50,  # the processor assumes 100-frame chunks
        n_window_infer=800,
        conv_chunksize=500,
        max_source_positions=1500,
    )
    vision_config = dict(
        depth=1,
        hidden_size=64,
        intermediate_size=128,
        num_heads=1,
        in_channels=3,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=_TEXT_HIDDEN,
        num_position_embeddings=2304,
        deepstack_visual_indexes=[0],
        # Read by vLLM, present in the real config.json.
        image_size=768,
        in_chans=3,
        spatial_patch_size=16,
        apply_vit_abs_pos_embed=True,
        tokens_per_second=2,
    )
    thinker_config = dict(
        audio_config=audio_config,
        vision_config=vision_config,
        text_config=text_config,
        position_id_per_seconds=13,
        audio_token_id=ids["<|audio_pad|>"],
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        audio_start_token_id=ids["<|audio_start|>"],
        audio_end_token_id=ids["<|audio_end|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        user_token_id=single_id("user"),
        tie_word_embeddings=False,
    )
    return Qwen3OmniMoeConfig(
        thinker_config=thinker_config,
        enable_audio_output=False,  # the Captioner is text-out only: no talker / code2wav weights
        im_start_token_id=ids["<|im_start|>"],
        im_end_token_id=ids["<|im_end|>"],
        system_token_id=single_id("system"),
        user_token_id=single_id("user"),
        assistant_token_id=single_id("assistant"),
        architectures=["Qwen3OmniMoeForConditionalGeneration"],
    )


def _replace_dir(built: Path, out_dir: Path) -> None:
    if out_dir.exists():
        if (out_dir / MARKER_FILE).is_file():
            shutil.rmtree(out_dir)  # an older or partial build of ours
        elif any(out_dir.iterdir()):
            raise FileExistsError(f"{out_dir} holds files that are not a listenpost tiny checkpoint")
        else:
            out_dir.rmdir()
    try:
        built.rename(out_dir)
    except OSError:
        # A concurrent build may have won the race; its result is as good as ours.
        if not _is_complete(out_dir):
            raise


def build_tiny_checkpoint(out_dir: Path, *, seed: int = 0) -> Path:
    """Write a random-weight Qwen3-Omni MoE checkpoint into ``out_dir`` and return it.

    Idempotent: a complete checkpoint with the current version marker is reused as is. The
    build goes to a sibling temp dir first, so a crash never leaves a half-written checkpoint
    that looks complete.
    """
    out_dir = Path(out_dir)
    if _is_complete(out_dir):
        return out_dir

    import torch
    from transformers import GenerationConfig, Qwen3OmniMoeForConditionalGeneration

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        tokenizer = _build_tokenizer()
        processor = _build_processor(tokenizer)
        config = _build_config(tokenizer)

        torch.manual_seed(seed)
        model = Qwen3OmniMoeForConditionalGeneration(config)
        model = model.to(torch.float32).eval()  # type: ignore[arg-type]  # (.to() is annotated as its decorator's wrapper)
        eos_ids = [config.im_end_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")]
        model.generation_config = GenerationConfig(
            eos_token_id=eos_ids,
            pad_token_id=tokenizer.pad_token_id,
            temperature=0.6,
            top_p=0.95,
            top_k=20,
            do_sample=True,
        )
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        # The marker is written last: its presence (with the version) means "complete".
        (tmp / MARKER_FILE).write_text(_NOTE)

        # mkdtemp makes a 0700 dir; a checkpoint is read by other processes (vLLM workers, Ray).
        tmp.chmod(0o755)
        for path in tmp.iterdir():
            path.chmod(0o644)
        _replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


__all__ = ["TINY_CHECKPOINT_VERSION", "build_tiny_checkpoint"]
