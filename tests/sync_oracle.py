"""A lip_sync judge that needs no training, for tests that need a judge which really measures sync.

Registered by importing this module (an export made by `make_oracle_export` names it in its
config.json `plugins`; a process that did not import it needs `--plugin tests.sync_oracle`, as a
user's plugin judge does: nothing an export names is imported on its say-so). The video encoder is the mouth crop's
darkness per frame (an open mouth is dark), the audio encoder the speech loudness per video frame,
each centred over the window; the temporal convolution of AVJudge is wired to pass the darkness
through, so the sync profile at offset k is the share of frames where mouth and loudness move
the same way at that lag, and the monotone head (as initialised) gives a higher decision the
nearer the profile's peak is to offset 0. On the demo corpus' talking heads the darkness and the
loudness correlate at 0.6-0.9 at lag 0 and near 0 elsewhere.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from train.encoders import (
    AudioEncoder,
    VideoEncoder,
    register_audio_encoder,
    register_video_encoder,
)


def _centred(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(dim=-1, keepdim=True)


@register_video_encoder("oracle_mouth_darkness")
class MouthDarkness(VideoEncoder):
    """(B, T, 1, H, W) grey mouth crops -> (B, 1, T): darkness of the crop's lower two thirds, centred."""

    preprocess_needs = {"crop": "mouth", "grayscale": True}
    normalize_input = False

    def __init__(self, config):
        super().__init__()
        self.n_features = 1

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return _centred(-video[..., video.shape[-2] // 3:, :].mean(dim=(2, 3, 4))).unsqueeze(1)


@register_audio_encoder("oracle_loudness")
class Loudness(AudioEncoder):
    """(B, n_mels, R*T) log-mel -> (B, D, T): the mean log-mel per video frame, centred, in channel 0."""

    preprocess_needs = {"audio_features": "logmel"}
    normalize_input = False

    def __init__(self, config):
        super().__init__()
        self.emb_dim = config.emb_dim

    def forward(self, audio: torch.Tensor, n_frames: int) -> torch.Tensor:
        r = max(audio.shape[-1] // n_frames, 1)
        loud = audio[..., :r * n_frames].reshape(audio.shape[0], audio.shape[1], n_frames, r).mean(dim=(1, 3))
        out = audio.new_zeros(audio.shape[0], self.emb_dim, n_frames)
        out[:, 0] = _centred(loud)
        return out


def make_oracle_export(out: Path, window_seconds: float = 4.0, max_offset_frames: int = 20,
                       calibration: dict | None = None) -> Path:
    """An export folder of the oracle judge (model.safetensors, config, preprocessing, calibration, metrics)."""
    from train.model import AVJudge, judge_config_for
    from train.preprocess import PreprocessConfig

    pre = PreprocessConfig(window_seconds=window_seconds, crop="mouth", crop_size=(24, 36), grayscale=True, n_mels=32)
    cfg = judge_config_for(pre, dim="lip_sync", frame_encoder="oracle_mouth_darkness", audio_encoder="oracle_loudness",
                           plugins=["tests.sync_oracle"], emb_dim=4, max_offset_frames=max_offset_frames,
                           n_segments=1, use_pooled=False, head="monotone", dropout=0.0, temporal_kernel=3)
    model = AVJudge(cfg).eval()
    with torch.no_grad():  # the temporal convolution passes the darkness through: relu(x) - relu(-x) = x
        conv1, conv2 = model.vis_temporal[0], model.vis_temporal[-1]
        conv1.weight.zero_()
        conv1.weight[0, 0, conv1.kernel_size[0] // 2] = 1.0
        conv1.weight[1, 0, conv1.kernel_size[0] // 2] = -1.0
        conv2.weight.zero_()
        conv2.bias.zero_()
        conv2.weight[0, 0, 1], conv2.weight[0, 1, 1] = 1.0, -1.0
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    pre.save(out / "preprocessing.json")
    cal = calibration or {"method": "platt", "params": {"a": 1.0, "b": 0.0}, "fitted_on": "val", "n": 10, "prior": 0.5}
    (out / "calibration.json").write_text(json.dumps(cal))
    (out / "metrics.json").write_text(json.dumps({"dim": "lip_sync", "question": cfg.question}))
    return out
