"""A backbone defined outside avbench, as a researcher would write one: this file is all it takes.

Registered by importing this module (`--plugin tests.toy_encoder`); tests/test_backbones.py trains it
with `python -m train`, exports it with `python -m eval evaluate` and scores files with
`python -m eval score`.
"""
from __future__ import annotations

import torch

from train.encoders import VideoEncoder, register_video_encoder


@register_video_encoder("toy_lower_half")
class LowerHalfBrightness(VideoEncoder):
    """Per frame: mean brightness of the crop's lower half and its change since the previous frame."""

    preprocess_needs = {"crop": "mouth", "grayscale": True}

    def __init__(self, config):
        super().__init__()
        self.n_features = 2

    def forward(self, video: torch.Tensor) -> torch.Tensor:      # (B, T, 1, H, W) -> (B, 2, T)
        level = video[..., video.shape[-2] // 2:, :].mean(dim=(2, 3, 4))
        change = torch.cat([torch.zeros_like(level[:, :1]), level[:, 1:] - level[:, :-1]], dim=1)
        return torch.stack([level, change], dim=1)
