"""The encoder registry and base classes: what every front-end (train/encoders/*.py) and a plugin
module build on. It imports no front-end; train/encoders/__init__.py registers the built-ins."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable

import torch
from torch import nn

from perturb.plugins import import_plugins  # noqa: F401  (one plugin mechanism for operators and encoders)

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


def load_checkpoint(path: str | Path, what: str, hint: str) -> Any:
    """A third-party torch checkpoint read with torch.load(weights_only=True): tensors and plain
    containers only, no code from the file runs. FileNotFoundError / ValueError (one line) naming
    `what` ("Light-ASD state dict") and `hint` (where to get the file) otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found at {path}: {hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file, or one that needs code to load
        raise ValueError(f"{path} is not a {what} ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:200]}); {hint}") from None


def conv_bn(conv: nn.Module, width: int, dims: int) -> list[nn.Module]:
    """conv, batch norm (2-d or 1-d), ReLU: the layer the built-in encoders stack."""
    bn = nn.BatchNorm2d(width) if dims == 2 else nn.BatchNorm1d(width)
    return [conv, bn, nn.ReLU(inplace=True)]
