"""Backbones of the judge, registered by name: video encoders and audio encoders.

AVJudge (train/model.py) is

    video (B, T, ...) --video encoder--> (B, F, T) --temporal conv--> v_t (B, D, T)
    audio (B, n_feat, R*T) --audio encoder--> a_t (B, D, T)
    sync profile c_k = mean_t cos(v_t, a_{t+k}) over offsets k --> head --> logits [no, yes]

and the judge config names its encoders (`frame_encoder`, `audio_encoder`). A new backbone is one
registered class in a file of its own; training, the Scorer and the CLIs find it by name:

    from train.encoders import VideoEncoder, register_video_encoder

    @register_video_encoder("my_encoder")
    class MyEncoder(VideoEncoder):
        preprocess_needs = {"crop": "face", "crop_size": (64, 64)}   # PreprocessConfig fields it requires

        def __init__(self, config):                  # config: train.model.JudgeConfig
            super().__init__()
            self.net = ...
            self.n_features = 64                     # F, features per video frame

        def forward(self, video):                    # (B, T, C, H, W) -> (B, F, T)
            ...

A module that is not part of avbench is imported with `--plugin my_pkg.my_encoder` (python -m train,
python -m eval ...), the `plugins:` list of a training YAML, or AVBENCH_PLUGINS=mod1,mod2.

Contract, checked at registration:
  * `preprocess_needs`: dict of PreprocessConfig field -> value. `python -m train` fills these
    into the preprocessing section and refuses a YAML that sets them otherwise.
  * `n_features` (video) after __init__; audio encoders return (B, config.emb_dim, T) directly.
  * `input_rank`: rank of the batched input the encoder reads (5 = (B, T, C, H, W) crops).
  * `frozen`: True when no parameter is trained (the judge then precomputes its output once per
    clip instead of every step, train.data.precompute_video_features); a frozen encoder stays in
    eval mode (its BatchNorm statistics are the pretrained ones).
"""
from __future__ import annotations

import importlib
import os
from typing import Any, Callable, ClassVar, Iterable

import torch
import torch.nn.functional as F
from torch import nn

VIDEO_ENCODERS: dict[str, type["VideoEncoder"]] = {}
AUDIO_ENCODERS: dict[str, type["AudioEncoder"]] = {}
FREEZE_MODES = ("none", "all", "partial")


class _Encoder(nn.Module):
    preprocess_needs: ClassVar[dict[str, Any]] = {}
    # the judge z-scores this encoder's input per clip first (False: the encoder normalises itself)
    normalize_input: ClassVar[bool] = True

    @property
    def frozen(self) -> bool:
        params = list(self.parameters())
        return bool(params) and not any(p.requires_grad for p in params)

    def freeze(self, modules: Iterable[nn.Module] | None = None) -> None:
        """No gradient to `modules` (default: the whole encoder); they stay in eval mode."""
        for m in (modules if modules is not None else [self]):
            m.requires_grad_(False)
            m.__dict__["_avbench_frozen"] = True

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.modules():  # frozen parts keep their pretrained BatchNorm statistics
            if m.__dict__.get("_avbench_frozen"):
                nn.Module.train(m, False)
        return self


class VideoEncoder(_Encoder):
    """(B, T, ...) video input -> (B, n_features, T): one feature vector per video frame."""

    n_features: int
    input_rank: ClassVar[int] = 5
    sees_picture: ClassVar[bool] = True  # False: the judge reads the audio alone (no offset to report)


class AudioEncoder(_Encoder):
    """(B, n_feat, R*T) audio features -> (B, emb_dim, T): one embedding per video frame."""

    def forward(self, audio: torch.Tensor, n_frames: int) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


def _register(table: dict[str, type], base: type, kind: str, name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise TypeError(f"{kind} {name!r}: {cls!r} must subclass train.encoders.{base.__name__}")
        if not isinstance(getattr(cls, "preprocess_needs", {}), dict):
            raise TypeError(f"{kind} {name!r}: preprocess_needs must be a dict of PreprocessConfig fields")
        if name in table and table[name] is not cls:
            raise ValueError(f"{kind} {name!r} is already registered by {table[name].__module__}."
                             f"{table[name].__name__}")
        cls.name = name
        table[name] = cls
        return cls

    return deco


def register_video_encoder(name: str) -> Callable[[type], type]:
    """Class decorator: make a VideoEncoder available as `frame_encoder: <name>`."""
    return _register(VIDEO_ENCODERS, VideoEncoder, "video encoder", name)


def register_audio_encoder(name: str) -> Callable[[type], type]:
    """Class decorator: make an AudioEncoder available as `audio_encoder: <name>`."""
    return _register(AUDIO_ENCODERS, AudioEncoder, "audio encoder", name)


def import_plugins(modules: Iterable[str] | str | None = None) -> list[str]:
    """Import modules that register encoders: the given ones and those of $AVBENCH_PLUGINS."""
    names = [modules] if isinstance(modules, str) else list(modules or [])
    names += [m for m in os.environ.get("AVBENCH_PLUGINS", "").split(",") if m.strip()]
    done = []
    for name in dict.fromkeys(n.strip() for n in names if n.strip()):
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ImportError(f"cannot import plugin module {name!r}: {err}") from err
        done.append(name)
    return done


def _lookup(table: dict[str, type], kind: str, key: str, name: str, plugins: list[str]) -> type:
    if name not in table:
        hint = (f"; this judge was trained with plugins {plugins}: pass --plugin MODULE or set "
                f"AVBENCH_PLUGINS" if plugins else "; a backbone of your own is imported with --plugin MODULE")
        raise ValueError(f"unknown {kind} {key}={name!r}: registered are {sorted(table)}{hint}")
    return table[name]


def video_encoder_class(name: str, plugins: list[str] | None = None) -> type["VideoEncoder"]:
    return _lookup(VIDEO_ENCODERS, "video encoder", "frame_encoder", name, plugins or [])


def audio_encoder_class(name: str, plugins: list[str] | None = None) -> type["AudioEncoder"]:
    return _lookup(AUDIO_ENCODERS, "audio encoder", "audio_encoder", name, plugins or [])


def preprocess_needs(frame_encoder: str, audio_encoder: str, plugins: list[str] | None = None) -> dict[str, Any]:
    """The PreprocessConfig fields both encoders need (a conflict between them is an error)."""
    needs: dict[str, Any] = {}
    for cls in (video_encoder_class(frame_encoder, plugins), audio_encoder_class(audio_encoder, plugins)):
        for k, v in cls.preprocess_needs.items():
            if k in needs and needs[k] != v:
                raise ValueError(f"encoders {frame_encoder!r} and {audio_encoder!r} need different "
                                 f"preprocessing {k}: {needs[k]!r} vs {v!r}")
            needs[k] = v
    return needs


# ------------------------------------------------------------------------------ per-frame encoders

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


def _conv_bn(conv: nn.Module, width: int, dims: int) -> list[nn.Module]:
    bn = nn.BatchNorm2d(width) if dims == 2 else nn.BatchNorm1d(width)
    return [conv, bn, nn.ReLU(inplace=True)]


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
            layers += _conv_bn(conv, w, 2)
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


# ------------------------------------------------------------------------------ audio

@register_audio_encoder("mel_conv")
class MelConv(AudioEncoder):
    """log-mel (B, n_mels, R*T) -> conv1d, conv1d with stride R (one step per video frame) -> (B, D, T)."""

    preprocess_needs = {"audio_features": "logmel"}

    def __init__(self, config: Any):
        super().__init__()
        a0, a1, d = config.aud_widths[0], config.aud_widths[-1], config.emb_dim
        self.mel_per_frame = config.mel_per_frame
        self.layers = nn.Sequential(
            *_conv_bn(nn.Conv1d(config.n_mels, a0, 5, padding=2, bias=False), a0, 1),
            *_conv_bn(nn.Conv1d(a0, a1, config.mel_per_frame, stride=config.mel_per_frame, bias=False), a1, 1),
            *_conv_bn(nn.Conv1d(a1, d, 3, padding=1, bias=False), d, 1),
            nn.Dropout(config.dropout),
            nn.Conv1d(d, d, 3, padding=1),
        )

    def forward(self, audio: torch.Tensor, n_frames: int) -> torch.Tensor:
        need = n_frames * self.mel_per_frame
        if audio.shape[-1] < need:
            audio = F.pad(audio, (0, need - audio.shape[-1]))
        return self.layers(audio[..., :need])



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
        from .preprocess import PEAK_THRESHOLDS

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


from . import landmarks, light_asd  # noqa: E402,F401  (register the built-in front-ends)
