"""ESTIMATE of the GPU memory per process for training a qwen2_5_omni judge (LoRA) at 3B and 7B, from
the models' sizes: nothing here ran on a GPU or read real weights.

    python bench/omni_memory.py [--clips-per-gpu 4] [--lora-rank 16] [--gpus 8]

The parameter counts come from building each thinker on the meta device from the architecture
numbers of Qwen/Qwen2.5-Omni-3B and -7B's config.json (SIZES below: check them against yours). Per
process, with bf16 weights, fp32 LoRA adapters + AdamW, activation checkpointing (train/qwen_omni.py
turns it on) and the paper geometry (1 fps, 476 x 644 frames, 9.9 s of sound: TOKENS per clip):

  weights      2 bytes x parameters (DDP: every process holds them all; ZeRO-3: 1 / gpus of them plus
               the one layer being gathered)
  adapters     16 bytes x LoRA parameters (weights, gradients, AdamW's two moments, fp32)
  activations  per clip: the checkpointed input of every layer (tokens x width x 2 bytes, for the
               text decoder, the vision and the audio tower) plus one layer's recomputed working set
               (tokens x (4 width + 3 MLP width) x 2 bytes, doubled for its gradients); the answer is
               read from two rows of the LM head, so no vocabulary-wide logits are kept
  DPO          + the frozen reference (another copy of the weights, no activations kept)

The activations term is the roughest; allocator fragmentation and CUDA context (~1-2 GB) are not in it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# architecture numbers of the thinkers' config.json (text / vision / audio); vocabularies as published
SIZES = {
    "3B": {"text": dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                        num_attention_heads=16, num_key_value_heads=2),
           "out": 2048},
    "7B": {"text": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                        num_attention_heads=28, num_key_value_heads=4),
           "out": 3584},
}
VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16)
AUDIO = dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120)
# per clip at the paper geometry (python bench/qwen_omni_step.py --geometry paper prints the same count):
# 5 temporal groups x 17 x 23 merged patches = 1955 video tokens (x 4 patches in the vision tower),
# 248 audio tokens (990 mel frames, 495 in the audio tower), the prompt
TOKENS, VISION_PATCHES, AUDIO_FRAMES = 2253, 4 * 1955, 495
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def count(size: str, lora_rank: int) -> dict[str, int]:
    import torch
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

    s = SIZES[size]
    cfg = Qwen2_5OmniThinkerConfig(text_config=s["text"], vision_config={**VISION, "out_hidden_size": s["out"]},
                                   audio_config={**AUDIO, "output_dim": s["out"]})
    with torch.device("meta"):
        model = Qwen2_5OmniThinkerForConditionalGeneration(cfg)
    parts = {"text": 0, "vision": 0, "audio": 0, "lm_head": 0}
    lora = 0
    for name, p in model.named_parameters():
        key = ("vision" if ".visual." in name else "audio" if ".audio_tower." in name
               else "lm_head" if name.startswith("lm_head") else "text")
        parts[key] += p.numel()
    for name, m in model.named_modules():
        if ".language_model." in name and name.rsplit(".", 1)[-1] in TEXT_TARGETS:
            lora += lora_rank * (m.in_features + m.out_features)
    t = s["text"]
    biggest_layer = 4 * t["hidden_size"] ** 2 + 3 * t["hidden_size"] * t["intermediate_size"]
    return {**parts, "total": sum(parts.values()), "lora": lora, "layer": biggest_layer}


def activations_per_clip(size: str) -> float:
    t = SIZES[size]["text"]
    h, inter, n = t["hidden_size"], t["intermediate_size"], t["num_hidden_layers"]
    kept = (TOKENS * h * n + VISION_PATCHES * VISION["hidden_size"] * VISION["depth"]
            + AUDIO_FRAMES * AUDIO["d_model"] * AUDIO["encoder_layers"]) * 2
    working = 2 * max(TOKENS * (4 * h + 3 * inter), VISION_PATCHES * (4 * VISION["hidden_size"] + 3 * VISION["intermediate_size"])) * 2
    return kept + working


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips-per-gpu", type=int, default=4, help="clips per process per step (reward: 2 per pair)")
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--gpus", type=int, default=8)
    a = ap.parse_args()
    gb = 1e9
    print(f"ESTIMATE, GB per process: bf16 weights, LoRA rank {a.lora_rank} on the text decoder's "
          f"{'/'.join(TEXT_TARGETS)}, {a.clips_per_gpu} clips per step, activation checkpointing, "
          f"{TOKENS} tokens per clip\n")
    print("| model | parameters (text / vision / audio / LM head) | LoRA parameters | DDP reward/SFT | DDP DPO | "
          f"ZeRO-3 x{a.gpus} reward/SFT | ZeRO-3 x{a.gpus} DPO |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for size in SIZES:
        c = count(size, a.lora_rank)
        weights, adapters = 2 * c["total"], 16 * c["lora"]
        act = a.clips_per_gpu * activations_per_clip(size)
        ddp = weights + adapters + act
        zero = weights / a.gpus + 2 * 2 * c["layer"] + adapters + act  # the gathered layer, prefetched next one
        print(f"| {size} | {c['total'] / 1e9:.2f} B ({c['text'] / 1e9:.2f} / {c['vision'] / 1e9:.2f} / "
              f"{c['audio'] / 1e9:.2f} / {c['lm_head'] / 1e9:.2f}) | {c['lora'] / 1e6:.1f} M | {ddp / gb:.0f} | "
              f"{(ddp + weights) / gb:.0f} | {zero / gb:.0f} | {(zero + weights / a.gpus) / gb:.0f} |")


if __name__ == "__main__":
    main()
