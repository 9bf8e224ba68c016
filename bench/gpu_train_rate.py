"""Pairs/s one accelerator trains on from feature shards: the consumer side of the scaling estimate.

    python bench/gpu_train_rate.py [--batches 64 256 1024] [--steps 30] [--device cuda]

Feature shards hold the preprocessed tensors, so a training step is the judge alone: this times
forward + backward + AdamW of the lip_sync judge (train/configs/lip_sync.yaml, its model and
preprocessing) on random tensors of the feature shards' shapes, both sides of each pair, with
the Bradley-Terry loss of the reward objective (TRL's bookkeeping left out), and prints
pairs/s per batch size as JSON. Needs torch, transformers and pyyaml only (no TRL); where the
imageio-ffmpeg wheel is missing, set AVBENCH_FFMPEG=/bin/true (nothing is decoded).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    import torch
    import torch.nn.functional as F
    import yaml

    from train.encoders import preprocess_needs
    from train.model import AVJudge, judge_config_for
    from train.preprocess import PreprocessConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    conf = yaml.safe_load((ROOT / "train" / "configs" / "lip_sync.yaml").read_text())
    model_conf = conf.get("model") or {}
    pre = {**(conf.get("preprocess") or {}),
           **preprocess_needs(model_conf.get("frame_encoder", "cnn"), model_conf.get("audio_encoder", "mel_conv"), [])}
    cfg = judge_config_for(PreprocessConfig.from_dict(pre), dim="lip_sync", **model_conf)
    dev = torch.device(args.device)
    model = AVJudge(cfg).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    res = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "torch": torch.__version__,
           "params": sum(p.numel() for p in model.parameters()),
           "pair_shape": {"video": [cfg.n_frames, cfg.channels, *cfg.crop_size],
                          "audio": [cfg.n_mels, cfg.n_frames * cfg.mel_per_frame]}, "rates": {}}
    for batch in args.batches:
        video = torch.randn(2 * batch, cfg.n_frames, cfg.channels, *cfg.crop_size, device=dev)
        audio = torch.randn(2 * batch, cfg.n_mels, cfg.n_frames * cfg.mel_per_frame, device=dev)
        in_sync = torch.arange(2 * batch, device=dev) < batch  # the chosen sides are originals

        def step() -> None:
            out = model(video, audio, in_sync=in_sync)
            z = out.decision
            loss = -F.logsigmoid(z[:batch] - z[batch:]).mean() + (out.aux_loss if out.aux_loss is not None else 0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for _ in range(3):
            step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.time()
        for _ in range(args.steps):
            step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = time.time() - t0
        res["rates"][batch] = {"pairs_per_s": round(batch * args.steps / dt, 1), "step_s": round(dt / args.steps, 4),
                               "input_mb_per_pair": round((video[0].numel() + audio[0].numel()) * 2 * 2 / 2 ** 20, 3)}
        print(json.dumps({batch: res["rates"][batch]}), flush=True)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
