"""Fixtures for tests/test_eval.py: a tiny randomly initialised judge exported like `evaluate` does,
and small generated talking videos (perturb.media.encode_clip)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from perturb.media import encode_clip


def make_video(path: Path, seconds: float, seed: int = 0, size: int = 64) -> Path:
    """A moving mouth box driven by a bursty tone: uint8 frames (T, 64, 64, 3) + 16 kHz audio."""
    rng = np.random.default_rng(seed)
    t = int(round(seconds * 25))
    env = np.clip(np.sin(np.linspace(0, 7 * np.pi * seconds, t)) + rng.normal(0, 0.2, t), 0, 1)
    frames = np.full((t, size, size, 3), 90, np.uint8)
    frames[..., 0] = rng.integers(60, 200)
    for k, e in enumerate(env):
        h = 1 + int(e * size * 0.15)
        frames[k, int(size * 0.7) - h: int(size * 0.7) + h, size // 3: 2 * size // 3] = 20
    n = int(round(seconds * 16000))
    tt = np.arange(n) / 16000
    audio = (0.3 * np.interp(tt, np.arange(t) / 25, env) * np.sin(2 * np.pi * 150 * tt)).astype(np.float32)
    encode_clip(frames, audio, path)
    return path


def make_export(out: Path, dim: str = "lip_sync", seed: int = 0, calibration: dict | None = None,
                crop: str = "full", window_seconds: float = 5.0, **model) -> Path:
    """A small random AVJudge + preprocessing.json + calibration.json + metrics.json in `out`;
    `model` overrides judge config fields."""
    import torch

    from train.model import AVJudge, judge_config_for
    from train.preprocess import PreprocessConfig

    pre = PreprocessConfig(window_seconds=window_seconds, crop=crop, crop_size=(16, 16), n_mels=16)
    cfg = judge_config_for(pre, dim=dim, **{**dict(vis_widths=(4, 4), aud_widths=(8, 8), emb_dim=8, head_hidden=8,
                                                   max_offset_frames=2, n_segments=1, dropout=0.0), **model})
    torch.manual_seed(seed)
    model = AVJudge(cfg).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    pre.save(out / "preprocessing.json")
    cal = calibration or {"method": "temperature", "params": {"temperature": 2.0},
                          "fitted_on": "val", "n": 10}
    (out / "calibration.json").write_text(json.dumps(cal))
    (out / "metrics.json").write_text(json.dumps({"dim": dim, "question": cfg.question}))
    return out
