"""Time and memory per training step of the qwen2_5_omni judge backbone on the tiny random thinker
(tests/qwen_omni_fixtures.py): forward + backward + AdamW of the Bradley-Terry loss on both sides of
a batch of pairs, at several batch sizes, in a given dtype, on a given device.

    python bench/qwen_omni_step.py [--device cuda] [--dtype bfloat16] [--batches 1 4 16] [--geometry paper|tiny]

The thinker is tiny (about 80k parameters), so this measures what the backbone adds around it: the
patch layout and Whisper log-mel in torch, the token layout (processor) and the 3-D positions, the
vision and audio towers over the clip's tokens, bf16 and LoRA; not the cost of a 3B / 7B model (see
bench/omni_memory.py for that estimate). geometry "paper": 10 s windows at 1 fps of 476 x 644 frames
(the paper's 480 x 640 on the patch grid) and 9.9 s of sound; "tiny": the tests' 2 s of 56 x 56.
Prints one markdown table; peak memory is torch.cuda.max_memory_allocated (CUDA only).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as python -m train: before torch loads (train/__main__.py)

GEOMETRY = {"paper": {"window_seconds": 10.0, "frame_size": [480, 640], "max_pixels": 480 * 640},
            "tiny": {"window_seconds": 2.0, "frame_size": [56, 56], "max_pixels": 56 * 56}}


def main() -> None:
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel

    from tests.qwen_omni_fixtures import write_tiny_qwen_omni
    from train.config import resolve_preprocess
    from train.model import judge_config_for
    from train.preprocess import PreprocessConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--geometry", default="paper", choices=sorted(GEOMETRY))
    ap.add_argument("--steps", type=int, default=5, help="timed steps per batch size (after one warm-up step)")
    args = ap.parse_args()

    geo = GEOMETRY[args.geometry]
    with tempfile.TemporaryDirectory(prefix="tiny_qwen_omni_") as base:
        write_tiny_qwen_omni(base)
        model = {"backbone": "qwen2_5_omni", "path": base, "frame_size": geo["frame_size"],
                 "max_pixels": geo["max_pixels"], "weights_dtype": args.dtype, "lora_rank": 8,
                 "lora_towers": ["text", "vision", "audio"],
                 "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                                         "qkv", "out_proj", "fc1", "fc2"]}
        pre = PreprocessConfig.from_dict(resolve_preprocess(
            {"model": model, "preprocess": {"window_seconds": geo["window_seconds"]}}, []))
        judge = AutoModel.from_config(judge_config_for(pre, dim="lip_sync", question="Is the speech in sync with "
                                                       "the lips?", plugins=[], **model)).to(args.device).train()
    opt = torch.optim.AdamW([p for p in judge.parameters() if p.requires_grad], lr=1e-4)
    video_shape, audio_shape = pre.input_shapes()
    cuda = args.device.startswith("cuda")
    name = torch.cuda.get_device_name(0) if cuda else f"cpu ({torch.get_num_threads()} threads)"
    print(f"qwen2_5_omni judge step on {name}, weights {args.dtype}, geometry {args.geometry}: "
          f"{pre.n_frames} frames of {list(pre.crop_size)}, {audio_shape[-1] / pre.sr:g} s of sound "
          f"({judge.n_audio_samples(audio_shape[-1]) / pre.sr:g} s read); tokens per clip "
          f"{len(judge.layout(pre.n_frames, *pre.crop_size, judge.n_audio_samples(audio_shape[-1]))['input_ids'])}\n")
    print("| pairs per step | clips per step | s per step | pairs/s | peak memory (MiB) |")
    print("|---:|---:|---:|---:|---:|")
    for b in args.batches:
        video = torch.rand(2 * b, *video_shape, device=args.device)
        audio = 0.1 * torch.randn(2 * b, *audio_shape, device=args.device)

        def step() -> None:
            r_c, r_r = judge(video=video, audio=audio).decision.chunk(2)
            loss = -F.logsigmoid(r_c - r_r).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()  # warm-up: kernels, the token layout
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        if cuda:
            torch.cuda.synchronize()
        per = (time.perf_counter() - t0) / args.steps
        mem = f"{torch.cuda.max_memory_allocated() / 2**20:.0f}" if cuda else "-"
        print(f"| {b} | {2 * b} | {per:.3f} | {b / per:.1f} | {mem} |", flush=True)


if __name__ == "__main__":
    main()
