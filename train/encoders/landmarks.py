"""The `landmarks` front-end: FaceMesh lip and jaw landmarks (train/landmarks.py extracts them) as the
judge's video input."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..landmarks import N_FEATURES
from .base import VideoEncoder, register_video_encoder


@register_video_encoder("landmarks")
class LandmarkMotion(VideoEncoder):
    """Normalised lip and jaw landmarks (B, T, 114) -> (B, F, T): the coordinates and their frame
    differences (velocity), mixed per frame by a 1x1 conv. Few weights, nothing of the face's look.
    The judge's temporal convolutions then read their motion over time."""

    preprocess_needs = {"video_input": "landmarks", "face_detector": "mediapipe"}
    normalize_input = False  # already normalised per clip (landmark_features)
    input_rank = 3

    def __init__(self, config: Any):
        super().__init__()
        width = int(config.vis_widths[-1])
        self.mix = nn.Sequential(nn.Conv1d(2 * N_FEATURES, width, 1, bias=False), nn.BatchNorm1d(width),
                                 nn.ReLU(inplace=True))
        self.n_features = width

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        x = video.transpose(1, 2)                                       # (B, 114, T)
        vel = torch.cat([torch.zeros_like(x[..., :1]), x[..., 1:] - x[..., :-1]], dim=-1)
        return self.mix(torch.cat([x, vel], dim=1))
