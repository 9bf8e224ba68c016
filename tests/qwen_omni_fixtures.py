"""A tiny random Qwen2.5-Omni thinker and its processor (a word-level tokenizer with Yes / No and the
Omni special tokens, the Qwen2-VL video processor, a 128-bin Whisper feature extractor), saved with
save_pretrained to a folder: what `model: {backbone: qwen2_5_omni, path: ...}` reads, at test size.

    python -m tests.qwen_omni_fixtures /tmp/tiny_qwen_omni     # writes it (about 60k parameters)
"""
from __future__ import annotations

import sys
from pathlib import Path

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>",
            "<|IMAGE|>", "<|VIDEO|>", "<|vision_bos|>", "<|vision_eos|>", "<|vision_pad|>"]
WORDS = ["[UNK]", "Yes", "No", "Is", "the", "speech", "in", "sync", "with", "lips?", "Answer", "or", "No.",
         "system", "user", "assistant", "You", "are", "a", "judge."]


# initial weights' std: at transformers' 0.02 a 2-layer, 32-wide model's last hidden state hardly
# depends on its input (1% of its norm), and the first steps of LoRA push it onto a constant; at
# 0.1 it varies by 4% and training is smooth
STD = 0.1


def tiny_processor():
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2_5OmniProcessor, WhisperFeatureExtractor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    vocab = {w: i for i, w in enumerate(WORDS + SPECIALS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="<|endoftext|>", eos_token="<|im_end|>",
        extra_special_tokens={"image_token": "<|IMAGE|>", "audio_token": "<|AUDIO|>", "video_token": "<|VIDEO|>",
                              "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>",
                              "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>"})
    return Qwen2_5OmniProcessor(image_processor=Qwen2VLImageProcessor(), video_processor=Qwen2VLVideoProcessor(),
                                feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tokenizer)


def tiny_thinker(vocab_size: int, ids: dict[str, int], seed: int = 0):
    """Two decoder layers of width 32, one vision block, one audio layer: ~60k random parameters."""
    import torch
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

    cfg = Qwen2_5OmniThinkerConfig(
        audio_config=dict(num_mel_bins=128, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                          d_model=16, output_dim=32, n_window=50, max_source_positions=1500, initializer_range=STD),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                           fullatt_block_indexes=[0], window_size=112, initializer_range=STD),
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, initializer_range=STD,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}),
        audio_token_index=ids["<|AUDIO|>"], image_token_index=ids["<|IMAGE|>"], video_token_index=ids["<|VIDEO|>"],
        audio_start_token_id=ids["<|audio_bos|>"], audio_end_token_id=ids["<|audio_eos|>"],
        vision_start_token_id=ids["<|vision_bos|>"], vision_end_token_id=ids["<|vision_eos|>"], initializer_range=STD)
    torch.manual_seed(seed)
    return Qwen2_5OmniThinkerForConditionalGeneration(cfg)


def write_tiny_qwen_omni(out: str | Path, seed: int = 0) -> Path:
    """The tiny thinker + processor in `out` (save_pretrained, safetensors); returns out."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out = Path(out)
    proc = tiny_processor()
    vocab = proc.tokenizer.get_vocab()
    tiny_thinker(len(vocab), vocab, seed).save_pretrained(str(out))
    proc.save_pretrained(str(out))
    return out


if __name__ == "__main__":
    print(write_tiny_qwen_omni(sys.argv[1] if len(sys.argv) > 1 else "tiny_qwen_omni"))
