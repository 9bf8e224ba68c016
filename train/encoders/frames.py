"""Built-in video encoders that read each frame's pixels: cnn, grid, quality, and blank (no picture)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import VideoEncoder, conv_bn, register_video_encoder


class PerFrameEncoder(VideoEncoder):
    """Applies `frame_features` to every frame; with config.use_motion the frame difference is
    stacked onto the frame's channels first (what moves, not only what is there)."""

    def __init__(self, config: Any):
        super().__init__()
        self.use_motion = bool(config.use_motion)

    @staticmethod
    def in_channels(config: Any) -> int:
        return config.channels * (2 if config.use_motion else 1)

    def frame_features(self, x: torch.Tensor) -> torch.Tensor:  # (N, C', H, W) -> (N, F)
        raise NotImplementedError

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        b, t = video.shape[:2]
        x = video
        if self.use_motion:
            diff = torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:] - x[:, :-1]], dim=1)
            x = torch.cat([x, diff], dim=2)
        return self.frame_features(x.flatten(0, 1)).view(b, t, -1).transpose(1, 2)


@register_video_encoder("cnn")
class CNNFrames(PerFrameEncoder):
    """A small 2D CNN per frame (patchify stem, then stride-2 convs, 2x2 pooled): learns its features.
    Needs many speakers: on a few dozen it memorises faces (BENCHMARKS.md)."""

    def __init__(self, config: Any):
        super().__init__(config)
        layers, prev = [], self.in_channels(config)
        for i, w in enumerate(config.vis_widths):
            # the stem is a patchify conv (kernel = stride): 4x cheaper on CPU than a strided 5x5
            conv = (nn.Conv2d(prev, w, config.stem_stride, stride=config.stem_stride, bias=False) if i == 0
                    else nn.Conv2d(prev, w, 3, stride=2, padding=1, bias=False))
            layers += conv_bn(conv, w, 2)
            prev = w
        self.layers = nn.Sequential(*layers, nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten())
        self.n_features = prev * 4

    def frame_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@register_video_encoder("grid")
class GridPool(PerFrameEncoder):
    """Parameter-free: mean of every channel (frame, and frame difference with use_motion) over a
    gh x gw grid, plus the mean |frame difference| per cell: where the mouth region darkens /
    moves, not what the face looks like. With only the temporal convolutions left to learn, the
    judge cannot memorise faces, which is what a CNN on a few dozen training speakers does instead
    of learning sync."""

    def __init__(self, config: Any):
        super().__init__(config)
        self.grid = tuple(int(v) for v in config.grid_size)
        self.in_ch = self.in_channels(config)
        self.motion_channels = config.channels if config.use_motion else 0
        self.n_features = (self.in_ch + self.motion_channels) * self.grid[0] * self.grid[1]

    def frame_features(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [F.adaptive_avg_pool2d(x, self.grid)]
        if self.motion_channels:
            pooled.append(F.adaptive_avg_pool2d(x[:, -self.motion_channels:].abs(), self.grid))
        return torch.cat(pooled, dim=1).flatten(1)


@register_video_encoder("quality")
class QualityStats(PerFrameEncoder):
    """Parameter-free, for picture quality: per cell of a gh x gw grid, from the frame channels, each
    channel's mean (colour casts, occluding fills), the local standard deviation (flat fills), log
    mean |Laplacian| (sharpness: blur lowers it, noise and blocking raise it) and log mean |frame
    difference| (frozen / repeated frames: zero). What a corruption changes is measured directly,
    so the judge does not have to learn it from the faces of a few dozen training speakers."""

    def __init__(self, config: Any):
        super().__init__(config)
        self.grid = tuple(int(v) for v in config.grid_size)
        self.channels = int(config.channels)
        self.n_features = (self.channels + 3) * self.grid[0] * self.grid[1]

    def frame_features(self, x: torch.Tensor) -> torch.Tensor:
        c = self.channels
        frame = x[:, :c]
        pool = lambda t: F.adaptive_avg_pool2d(t, self.grid)  # noqa: E731
        mean = pool(frame)
        std = (pool(frame ** 2) - mean ** 2).clamp_min(0).mean(1, keepdim=True).add(1e-6).sqrt()
        # built here, not kept as a buffer: from_pretrained leaves unsaved buffers uninitialised
        kernel = frame.new_tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).expand(c, 1, 3, 3)
        lap = F.conv2d(F.pad(frame, (1, 1, 1, 1), mode="replicate"), kernel, groups=c)
        sharp = pool(lap.abs()).mean(1, keepdim=True).add(1e-3).log()
        if x.shape[1] > c:  # frame difference channels present (use_motion)
            motion = pool(x[:, c:2 * c].abs()).mean(1, keepdim=True).add(1e-3).log()
        else:
            motion = torch.zeros_like(sharp)
        return torch.cat([mean, std, sharp, motion], dim=1).flatten(1)


@register_video_encoder("blank")
class Blank(VideoEncoder):
    """No picture: a constant zero feature per frame, for judges of the soundtrack alone
    (audio_quality). The judge then reads the pooled audio embedding (use_pooled); the video is
    still decoded for the frame count, at the cheapest crop ("full", grey, crop_size from the config)."""

    preprocess_needs = {"crop": "full", "grayscale": True}
    normalize_input = False
    sees_picture = False

    def __init__(self, config: Any):
        super().__init__()
        self.n_features = 1

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return video.new_zeros(video.shape[0], 1, video.shape[1])
