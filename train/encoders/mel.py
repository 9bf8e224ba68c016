"""Built-in audio encoders of the log-mel: mel_conv (per video frame) and mel_stats (clip statistics)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import AudioEncoder, conv_bn, register_audio_encoder


@register_audio_encoder("mel_conv")
class MelConv(AudioEncoder):
    """log-mel (B, n_mels, R*T) -> conv1d, conv1d with stride R (one step per video frame) -> (B, D, T)."""

    preprocess_needs = {"audio_features": "logmel"}

    def __init__(self, config: Any):
        super().__init__()
        a0, a1, d = config.aud_widths[0], config.aud_widths[-1], config.emb_dim
        self.mel_per_frame = config.mel_per_frame
        self.layers = nn.Sequential(
            *conv_bn(nn.Conv1d(config.n_mels, a0, 5, padding=2, bias=False), a0, 1),
            *conv_bn(nn.Conv1d(a0, a1, config.mel_per_frame, stride=config.mel_per_frame, bias=False), a1, 1),
            *conv_bn(nn.Conv1d(a1, d, 3, padding=1, bias=False), d, 1),
            nn.Dropout(config.dropout),
            nn.Conv1d(d, d, 3, padding=1),
        )

    def forward(self, audio: torch.Tensor, n_frames: int) -> torch.Tensor:
        need = n_frames * self.mel_per_frame
        if audio.shape[-1] < need:
            audio = F.pad(audio, (0, need - audio.shape[-1]))
        return self.layers(audio[..., :need])


@register_audio_encoder("mel_conv_pool")
class MelConvPool(MelConv):
    """mel_conv's per-frame embeddings summarised over the clip by their mean and their max (a short
    stretch unlike the rest, one synthetic word, is not averaged away), then a linear layer; the same
    embedding for every frame (judges of the soundtrack as a whole: speech_realism)."""

    def __init__(self, config: Any):
        super().__init__(config)
        self.pool = nn.Linear(2 * config.emb_dim, config.emb_dim)

    def forward(self, audio: torch.Tensor, n_frames: int) -> torch.Tensor:
        h = super().forward(audio, n_frames)
        return self.pool(torch.cat([h.mean(-1), h.amax(-1)], dim=1)).unsqueeze(-1).expand(-1, -1, n_frames)


@register_audio_encoder("mel_stats")
class MelStats(AudioEncoder):
    """For audio quality: clip-level statistics of the log-mel, measured rather than learned, then a
    small MLP; the same embedding for every frame (a quality defect covers the clip, and the head
    reads the pooled embedding). Per mel band: mean (spectral shape: band limits, codec cut-offs,
    hum lines), std and 10th / 90th percentiles over time (noise floor, lost modulation depth:
    noise, reverberation) and mean |frame-to-frame change| (smearing by reverberation); over the
    frames' mean level: the 1st / 5th / 10th / 50th / 90th percentiles and the lowest (gaps of
    digital silence: dropouts); from the peak rows of `logmel_peaks` (train/preprocess.py), the share
    of samples piled up at the top over the clip and in its worst frame (clipping). Few parameters to
    fit to a few dozen speakers, as QualityStats."""

    preprocess_needs = {"audio_features": "logmel_peaks"}
    normalize_input = False  # the log-mel is normalised by preprocessing; the peak rows are shares
    QUANTILES = (0.01, 0.05, 0.1, 0.5, 0.9)

    def __init__(self, config: Any):
        super().__init__()
        from ..preprocess import PEAK_THRESHOLDS

        self.n_mels = config.n_mels
        n_stats = 5 * config.n_mels + len(self.QUANTILES) + 1 + 2 * len(PEAK_THRESHOLDS)
        hidden = config.aud_widths[-1]
        self.mlp = nn.Sequential(nn.BatchNorm1d(n_stats), nn.Linear(n_stats, hidden), nn.ReLU(inplace=True),
                                 nn.Dropout(config.dropout), nn.Linear(hidden, config.emb_dim))

    @classmethod
    def stats(cls, audio: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, frames) log-mel -> (B, 5 * n_mels + 6) clip statistics."""
        q = torch.quantile(audio, audio.new_tensor([0.1, 0.9]), dim=-1)          # (2, B, n_mels)
        delta = (audio[..., 1:] - audio[..., :-1]).abs().mean(-1)
        level = audio.mean(1)                                                    # (B, frames)
        lq = torch.quantile(level, level.new_tensor(cls.QUANTILES), dim=-1).T    # (B, 5)
        return torch.cat([audio.mean(-1), audio.std(-1), q[0], q[1], delta, lq, level.amin(-1, keepdim=True)], dim=1)

    def forward(self, audio: torch.Tensor, n_frames: int) -> torch.Tensor:
        mel, peaks = audio[:, :self.n_mels], audio[:, self.n_mels:]
        # clipped share over the clip and in its worst frame
        feats = torch.cat([self.stats(mel), peaks.mean(-1), peaks.amax(-1)], dim=1)
        return self.mlp(feats).unsqueeze(-1).expand(-1, -1, n_frames)
