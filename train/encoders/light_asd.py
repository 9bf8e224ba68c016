"""Light-ASD as a pretrained audio-visual front-end of the judge.

Light-ASD (Liao et al., "A Light Weight Model for Active Speaker Detection", CVPR 2023; MIT licence)
is an active-speaker network trained on AVA-ActiveSpeaker: it was taught whether a visible face is
the one speaking, so its audio and visual embeddings react to lip-audio alignment. This module
reproduces its layer layout (parameter names included) so the published state dict loads strictly:

    visualEncoder  (B, 1, T, 112, 112) grey face crops -> 3 blocks of (1xkxk spatial, kx1x1 temporal)
                   convolutions, k = 3 and 5 in parallel -> max over space -> (B, T, 128)
    audioEncoder   (B, 1, 13, 4T) MFCCs -> the same blocks on (MFCC, time), pooled 4T -> T -> (B, T, 128)
    GRU            audio + visual embeddings -> forward GRU, then a GRU over the reversed sequence
    lossAV.FC      128 -> [not speaking, speaking] per frame (lossV.FC: the visual-only head)

Weights: `weight/pretrain_AVA_CVPR.model` of https://github.com/Junhua-Liao/Light-ASD (a plain
torch state dict, read with torch.load(weights_only=True): tensors only, no code). A judge trained
from it saves everything in its own safetensors, so the file is needed once, to train.

Inputs (preprocessing `crop: asd`, `crop_size: [112, 112]`, `grayscale`, `video_norm: unit`,
`audio_features: mfcc`): Light-ASD's crop of the face, pixel values / 255 (normalised here as
upstream: (x - 0.4161) / 0.1688), and python_speech_features' 13 MFCCs at 100 frames/s.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import AudioEncoder, VideoEncoder, load_checkpoint, register_audio_encoder, register_video_encoder

DOWNLOAD_HINT = ("download weight/pretrain_AVA_CVPR.model from https://github.com/Junhua-Liao/Light-ASD "
                 "(MIT licence) and give its path")
PIXEL_MEAN, PIXEL_STD = 0.4161, 0.1688  # upstream's normalisation of x / 255
EMBED_DIM = 128


def _bn(width: int, dims: int) -> nn.Module:
    return (nn.BatchNorm3d if dims == 3 else nn.BatchNorm2d)(width, momentum=0.01, eps=0.001)


class _Block(nn.Module):
    """Two parallel (spatial k x k, then temporal k) factorised convolutions, k = 3 and 5, summed,
    then a 1x1 conv. dims 3: video (C, T, H, W); dims 2: audio (C, MFCC, time)."""

    def __init__(self, c_in: int, c_out: int, dims: int, down: bool = False):
        super().__init__()
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        self.relu = nn.ReLU()
        for k in (3, 5):
            p = k // 2
            if dims == 3:
                first = conv(c_in, c_out, (1, k, k), stride=(1, 2, 2) if down else 1, padding=(0, p, p), bias=False)
                second = conv(c_out, c_out, (k, 1, 1), padding=(p, 0, 0), bias=False)
                a, b = f"s_{k}", f"t_{k}"
            else:  # audio: first along the MFCC axis, then along time
                first = conv(c_in, c_out, (k, 1), padding=(p, 0), bias=False)
                second = conv(c_out, c_out, (1, k), padding=(0, p), bias=False)
                a, b = f"m_{k}", f"t_{k}"
            self.add_module(a, first)
            self.add_module(f"bn_{a}", _bn(c_out, dims))
            self.add_module(b, second)
            self.add_module(f"bn_{b}", _bn(c_out, dims))
        self.first_names = ("s" if dims == 3 else "m")
        self.last = conv(c_out, c_out, 1, bias=False)
        self.bn_last = _bn(c_out, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.first_names
        out = 0
        for k in (3, 5):
            y = self.relu(getattr(self, f"bn_{f}_{k}")(getattr(self, f"{f}_{k}")(x)))
            out = out + self.relu(getattr(self, f"bn_t_{k}")(getattr(self, f"t_{k}")(y)))
        return self.relu(self.bn_last(self.last(out)))


class VisualEncoder(nn.Module):
    """(B, 1, T, H, W) normalised grey crops -> (B, T, 128)."""

    def __init__(self):
        super().__init__()
        self.block1 = _Block(1, 32, 3, down=True)
        self.pool1 = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        self.block2 = _Block(32, 64, 3)
        self.pool2 = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        self.block3 = _Block(64, 128, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.pool2(self.block2(self.pool1(self.block1(x)))))  # (B, 128, T, h, w)
        return x.amax(dim=(3, 4)).transpose(1, 2)


class AudioEncoderNet(nn.Module):
    """(B, 1, 13, 4T) MFCCs -> (B, T, 128): time pooled by 2 twice, mean over the MFCC axis."""

    def __init__(self):
        super().__init__()
        self.block1 = _Block(1, 32, 2)
        self.block2 = _Block(32, 64, 2)
        self.block3 = _Block(64, 128, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = lambda t: F.max_pool2d(t, (1, 3), stride=(1, 2), padding=(0, 1))  # noqa: E731
        x = self.block3(pool(self.block2(pool(self.block1(x)))))            # (B, 128, 13, T)
        return x.mean(dim=2).transpose(1, 2)


class BGRU(nn.Module):
    """Light-ASD's "bidirectional" GRU: a forward GRU, then a second GRU over its reversed output."""

    def __init__(self, width: int = EMBED_DIM):
        super().__init__()
        self.gru_forward = nn.GRU(width, width, num_layers=1, batch_first=True)
        self.gru_backward = nn.GRU(width, width, num_layers=1, batch_first=True)
        self.gelu = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gelu(self.gru_forward(x)[0])
        x = torch.flip(self.gru_backward(torch.flip(x, dims=[1]))[0], dims=[1])
        return self.gelu(x)


class _ASDModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.visualEncoder = VisualEncoder()
        self.audioEncoder = AudioEncoderNet()
        self.GRU = BGRU()


class _FC(nn.Module):
    def __init__(self):
        super().__init__()
        self.FC = nn.Linear(EMBED_DIM, 2)


class LightASD(nn.Module):
    """The whole upstream network (same parameter names as its state dict)."""

    def __init__(self):
        super().__init__()
        self.model = _ASDModel()
        self.lossAV = _FC()
        self.lossV = _FC()

    @staticmethod
    def visual_input(video: torch.Tensor) -> torch.Tensor:
        """(B, T, 1, H, W) pixel / 255 -> (B, 1, T, H, W) normalised as upstream."""
        return ((video - PIXEL_MEAN) / PIXEL_STD).transpose(1, 2)

    @staticmethod
    def audio_input(mfcc: torch.Tensor) -> torch.Tensor:
        """(B, 13, 4T) -> (B, 1, 13, 4T)."""
        return mfcc.unsqueeze(1)

    def embed(self, video: torch.Tensor, mfcc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(visual (B, T, 128), audio (B, T, 128)) embeddings."""
        return (self.model.visualEncoder(self.visual_input(video)),
                self.model.audioEncoder(self.audio_input(mfcc)))

    def speaking_logits(self, visual: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """(B, T) logit(speaking) - logit(not speaking) per frame from the two embeddings."""
        out = self.lossAV.FC(self.model.GRU(visual + audio))
        return out[..., 1] - out[..., 0]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The upstream checkpoint: tensors only (weights_only=True runs no code from the file)."""
    state = load_checkpoint(path, "Light-ASD state dict", DOWNLOAD_HINT)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a Light-ASD state dict (expected a dict of tensors); {DOWNLOAD_HINT}")
    return state


def load_into(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, path: str | Path) -> str:
    """Load the `prefix` part of an upstream state dict into module, strictly: every parameter and
    buffer of the module must be in the file with the same shape, and nothing under prefix is left."""
    part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not part:
        raise ValueError(f"{path}: no '{prefix}*' weights: not the Light-ASD checkpoint? {DOWNLOAD_HINT}")
    try:
        module.load_state_dict(part, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: the '{prefix}*' weights do not fit Light-ASD's layout "
                         f"({' '.join(str(err).split())[:300]})") from None
    return f"{prefix}* ({len(part)} tensors) from {path}"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_light_asd(path: str | Path) -> LightASD:
    """The whole upstream network with its weights, strictly, in eval mode."""
    net = LightASD()
    state = read_state_dict(path)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: not Light-ASD's layout ({' '.join(str(err).split())[:300]})") from None
    return net.eval()


# ------------------------------------------------------------------------------ judge encoders

_NEEDS = {"crop": "asd", "crop_size": (112, 112), "grayscale": True, "video_norm": "unit"}


@register_video_encoder("light_asd")
class LightASDVideo(VideoEncoder):
    """Light-ASD's visual encoder: (B, T, 1, 112, 112) pixel / 255 -> (B, 128, T).

    config.freeze: "all" or "partial" keep it frozen (partial trains the audio side only), "none"
    fine-tunes it (slow on a CPU: ~0.2 GMAC per frame)."""

    preprocess_needs = _NEEDS
    normalize_input = False  # upstream's fixed pixel normalisation, not a per-clip z-score
    download_hint = DOWNLOAD_HINT

    def __init__(self, config: Any):
        super().__init__()
        self.net = VisualEncoder()
        self.n_features = EMBED_DIM
        if config.freeze in ("all", "partial"):
            self.freeze()

    def load_pretrained(self, path: str | Path) -> str:
        return load_into(self.net, read_state_dict(path), "model.visualEncoder.", path)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.net(LightASD.visual_input(video)).transpose(1, 2)


@register_audio_encoder("light_asd")
class LightASDAudio(AudioEncoder):
    """Light-ASD's audio encoder on 13 MFCCs (B, 13, 4T) -> (B, 128, T), then a learnt 1x1
    projection to the judge's emb_dim. config.freeze "all" keeps the pretrained part frozen."""

    preprocess_needs = {"audio_features": "mfcc", "n_mfcc": 13}
    normalize_input = False  # trained on raw MFCCs
    download_hint = DOWNLOAD_HINT

    def __init__(self, config: Any):
        super().__init__()
        self.net = AudioEncoderNet()
        self.proj = nn.Conv1d(EMBED_DIM, config.emb_dim, 1)
        if config.freeze == "all":
            self.freeze([self.net])

    def load_pretrained(self, path: str | Path) -> str:
        return load_into(self.net, read_state_dict(path), "model.audioEncoder.", path)

    def forward(self, audio: torch.Tensor, n_frames: int) -> torch.Tensor:
        need = 4 * n_frames
        if audio.shape[-1] < need:
            audio = F.pad(audio, (0, need - audio.shape[-1]), mode="replicate")
        return self.proj(self.net(LightASD.audio_input(audio[..., :need])).transpose(1, 2))
