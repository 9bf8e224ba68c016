"""The judge's layers without transformers: what scoring needs to load an exported judge and run it.

train.model.AVJudge is these layers (JudgeLayers) on transformers' PreTrainedModel, which training,
saving and the Auto classes use; importing transformers costs seconds of CPU, more than scoring a
short clip. JudgeNet is the same layers on a plain nn.Module, with the same parameter names, and
load_plain builds it from an export's config.json and reads model.safetensors directly, so
`eval score` (eval/scorer.py) starts without transformers; an export it does not recognise as a
plain AVJudge folder (another architecture or dtype, sharded or missing weights, keys of a newer
transformers) goes through train.model.load_weights as before, which also says what is wrong.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .encoders import FREEZE_MODES, audio_encoder_class, video_encoder_class
from .preprocess import check_values

N_SUMMARY = 3  # features per sync profile fed to the head (JudgeLayers.profile_summary)

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

# The judge's config fields (train.model.JudgeConfig's arguments, in its order)
JUDGE_FIELDS = ("dim", "question", "n_frames", "crop_size", "channels", "n_mels", "mel_per_frame", "vis_widths",
                "stem_stride", "aud_widths", "emb_dim", "temporal_kernel", "max_offset_frames", "n_segments",
                "use_motion", "use_pooled", "head_hidden", "dropout", "normalize_inputs", "audio_norm",
                "head_features", "head", "frame_encoder", "audio_encoder", "pretrained", "freeze", "plugins",
                "grid_size", "sync_aux_weight", "sync_aux_temperature")


def check_judge_fields(given: dict[str, Any]) -> dict[str, Any]:
    """The judge's config fields (every name of JUDGE_FIELDS) checked and converted: each number
    against MODEL_RANGES, flags, lists and choices; a ValueError naming the field otherwise."""
    check_values("model", {k: given[k] for k in MODEL_RANGES}, MODEL_RANGES)
    for name in ("use_motion", "use_pooled", "normalize_inputs"):
        if not isinstance(given[name], bool):  # bool("false") would be True
            raise ValueError(f"model: {name} must be true or false, got {given[name]!r}")
    crop_size, grid_size = given["crop_size"], given["grid_size"]
    if any(not isinstance(v, (list, tuple)) or len(v) != 2 for v in (crop_size, grid_size)):
        raise ValueError(f"model: crop_size and grid_size must be [rows, columns], got {crop_size!r}, {grid_size!r}")
    for name in ("vis_widths", "aud_widths", "plugins"):
        if not isinstance(given[name], (list, tuple)):
            raise ValueError(f"model: {name} must be a list, got {given[name]!r}")
    head_features, head = given["head_features"], given["head"]
    if head_features not in ("summary", "profile", "both"):
        raise ValueError(f"head_features must be summary | profile | both, got {head_features!r}")
    if head not in ("mlp", "linear", "monotone"):
        raise ValueError(f"head must be mlp | linear | monotone, got {head!r}")
    if head == "monotone" and (head_features != "summary" or given["use_pooled"]):
        raise ValueError("head 'monotone' needs head_features 'summary' and use_pooled false")
    freeze = given["freeze"]
    freeze = {True: "all", False: "none"}.get(freeze, freeze) if isinstance(freeze, bool) else str(freeze)
    if freeze not in FREEZE_MODES:
        raise ValueError(f"freeze must be one of {FREEZE_MODES} (or true / false), got {freeze!r}")
    ints = ("n_frames", "channels", "n_mels", "mel_per_frame", "stem_stride", "emb_dim", "temporal_kernel",
            "max_offset_frames", "n_segments", "head_hidden")
    out = {name: given[name] for name in JUDGE_FIELDS}
    out.update({k: int(given[k]) for k in ints})
    out.update({k: [int(v) for v in given[k]] for k in ("crop_size", "vis_widths", "aud_widths", "grid_size")})
    out.update({k: bool(given[k]) for k in ("use_motion", "use_pooled", "normalize_inputs")})
    out.update({k: float(given[k]) for k in ("dropout", "sync_aux_weight", "sync_aux_temperature")})
    # encoder names are checked against the registries when the judge is built (plugins may
    # register theirs after this config is read)
    out.update(frame_encoder=str(given["frame_encoder"]), audio_encoder=str(given["audio_encoder"]),
               pretrained=str(given["pretrained"]) if given["pretrained"] else None, freeze=freeze,
               plugins=[str(m) for m in given["plugins"]])
    return out


@dataclass
class JudgeResult:
    """JudgeNet's forward output: train.model.JudgeOutput's fields, without transformers' ModelOutput."""

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


class JudgeLayers:
    """The judge's layers and forward (train/model.py's docstring: the judge contract), mixed into
    AVJudge (transformers) and JudgeNet (plain torch); `output_class` is what forward returns."""

    output_class: type = JudgeResult

    def _build_layers(self, config) -> None:
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
                in_sync: torch.Tensor | None = None, return_dict: bool = True, **kwargs):
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
        return self.output_class(loss=loss, aux_loss=aux, logits=logits, decision=logits[:, 1] - logits[:, 0], profile=prof)

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


class PlainJudgeConfig:
    """A judge's config as JudgeNet reads it: the checked JUDGE_FIELDS as attributes (JudgeConfig's
    names), plus the dtype the weights are stored in."""

    model_type = "avbench_judge"

    def __init__(self, fields: dict[str, Any], dtype: str = "float32") -> None:
        self.__dict__.update(check_judge_fields(fields))
        self.dtype = dtype

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class JudgeNet(JudgeLayers, nn.Module):
    """AVJudge's layers on a plain nn.Module (same parameter names, same forward): load_plain's judge."""

    output_class = JudgeResult

    def __init__(self, config: PlainJudgeConfig) -> None:
        nn.Module.__init__(self)
        self.config = config
        self._build_layers(config)


# config.json keys transformers writes for an AVJudge besides its fields; any other key makes
# load_plain leave the folder to transformers' loader (which knows what a newer version writes)
_SAVED_KEYS = {"architectures", "dtype", "torch_dtype", "id2label", "label2id", "model_type", "transformers_version"}
_MAX_CONFIG_BYTES = 1 << 20


def plain_config(model_dir: str | Path) -> PlainJudgeConfig | None:
    """The config of a plain AVJudge folder (its config.json names AVJudge, float32 weights, every
    judge field and nothing unknown), or None. A field out of range raises ValueError, as JudgeConfig."""
    path = Path(model_dir) / "config.json"
    try:
        if path.stat().st_size > _MAX_CONFIG_BYTES:
            return None
        d = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(d, dict) or d.get("model_type") != "avbench_judge" or d.get("architectures") != ["AVJudge"]:
        return None
    dtype = d.get("dtype", d.get("torch_dtype")) or "float32"
    if dtype != "float32" or set(d) - _SAVED_KEYS - set(JUDGE_FIELDS) or set(JUDGE_FIELDS) - set(d):
        return None
    return PlainJudgeConfig({k: d[k] for k in JUDGE_FIELDS}, dtype)


def load_plain(model_dir: str | Path, device: str | torch.device = "cpu") -> JudgeNet | None:
    """The judge of an export or run folder as a JudgeNet in eval mode, its weights read from
    model.safetensors; None when the folder is not a plain AVJudge one (plain_config) or its weights
    do not fit the layers exactly (a missing, extra, reshaped or non-float32 tensor): train.model's
    load_weights then loads it, or says what is wrong."""
    from safetensors import safe_open

    cfg = plain_config(model_dir)
    weights = Path(model_dir) / "model.safetensors"
    if cfg is None or not weights.is_file():
        return None
    model = JudgeNet(cfg)
    expected = model.state_dict()
    with safe_open(str(weights), framework="pt") as fh:
        names = set(fh.keys())
        if names != set(expected):
            return None
        state = {k: fh.get_tensor(k) for k in names}
    if any(v.dtype != expected[k].dtype or v.shape != expected[k].shape for k, v in state.items()):
        return None
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
