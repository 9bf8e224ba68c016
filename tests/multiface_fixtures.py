"""Fixtures for tests/test_multiface.py: clips of demo heads side by side, and a judge with no weights
that hears sync the way bench/mouth_energy_baseline.py does (mouth opening against loudness)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from perturb.demo_corpus import make_source
from perturb.media import encode_clip
from train.landmarks import POINTS
from train.preprocess import PreprocessConfig

FPS = 25
UPPER_LIP, LOWER_LIP = POINTS.index(13), POINTS.index(14)  # inner lip midpoints
K = 8                                                      # offsets of the profile, each way (320 ms)


def landmark_config() -> PreprocessConfig:
    """The preprocessing of the real lip_sync judge (FaceMesh landmarks, 2 s windows)."""
    return PreprocessConfig(window_seconds=2.0, face_detector="mediapipe", video_input="landmarks")


def two_heads(path: Path, seconds: float = 4.0, shift_frames: int = 0, size: int = 128, leave: bool = False,
              heads: int = 2) -> Path:
    """Demo heads side by side (speaker 0 on the left, speaker 1 on the right, each mouth driven by its
    own speech) with the LEFT head's speech as the soundtrack, delayed by shift_frames (positive: the
    audio lags). leave: the right head slides out of the picture over the second half."""
    n = int(round(seconds * FPS))
    srcs = [make_source(0, i, seconds, size=size) for i in range(heads)]
    frames = np.concatenate([s[1][:n] for s in srcs], axis=2)
    if leave and heads > 1:
        for f in range(n // 2, n):
            dx = int((f - n // 2 + 1) / (n - n // 2) * size * 1.2)
            right = frames[f, :, size:].copy()
            frames[f, :, size:] = right[:, :1].mean(axis=1, keepdims=True).astype(np.uint8)  # plain background
            keep = max(0, size - dx)
            frames[f, :, size + dx:] = right[:, :keep]
    audio = srcs[0][2]
    d = int(round(shift_frames * 16000 / FPS))
    if d > 0:
        audio = np.concatenate([np.zeros(d, np.float32), audio[:-d]])
    elif d < 0:
        audio = np.concatenate([audio[-d:], np.zeros(-d, np.float32)])
    encode_clip(frames, audio, path)
    return path


class MouthEnergyJudge(nn.Module):
    """A judge with no parameters: the sync profile is the Pearson correlation of the inner-lip opening
    with the speech-band loudness at each offset k (loudness k frames later), the decision how far the
    profile at 0 stands above its mean. It estimates timing (Scorer.estimates_timing)."""

    def __init__(self, cfg: PreprocessConfig) -> None:
        super().__init__()
        self.config = SimpleNamespace(sync_aux_weight=1.0, use_pooled=False, max_offset_frames=K)
        self.mel_per_frame = cfg.mel_per_frame
        self.bands = slice(4, 24)  # mel bins of roughly 300-3400 Hz with the default 40 bins

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> SimpleNamespace:
        b, t = video.shape[:2]
        pts = video.reshape(b, t, -1, 2)
        opening = pts[:, :, LOWER_LIP, 1] - pts[:, :, UPPER_LIP, 1]                     # (B, T)
        loud = audio[:, self.bands].reshape(b, -1, t, self.mel_per_frame).mean(dim=(1, 3))  # (B, T)
        prof = torch.stack([self._corr(opening, loud, k) for k in range(-K, K + 1)], dim=-1)[:, None]
        return SimpleNamespace(decision=self.decision_from_profile(prof), profile=prof)

    @staticmethod
    def _corr(x: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
        t = x.shape[1]
        xs, ys = (x[:, : t - k], y[:, k:]) if k >= 0 else (x[:, -k:], y[:, : t + k])
        xs, ys = xs - xs.mean(1, keepdim=True), ys - ys.mean(1, keepdim=True)
        return (xs * ys).sum(1) / ((xs * xs).sum(1) * (ys * ys).sum(1) + 1e-9).sqrt()

    def decision_from_profile(self, prof: torch.Tensor) -> torch.Tensor:
        return 10.0 * (prof[:, 0, K] - prof[:, 0].mean(-1))
