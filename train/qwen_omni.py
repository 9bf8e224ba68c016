"""The `qwen2_5_omni` judge backbone: transformers' Qwen2.5-Omni thinker, fine-tuned with LoRA (peft).

    model: {backbone: qwen2_5_omni, path: /models/Qwen2.5-Omni-7B, lora_rank: 16, ...}

The paper's judges: the clip's frames (config `fps`, default 1 fps, resized to at most `max_pixels`)
and its 16 kHz sound (truncated to `audio_seconds`, default 9.9 s) go to the thinker with the
dimension's question as the user turn, and the judge reads the logits of the first answer token:
logits = [z_No, z_Yes], decision = z_Yes - z_No, so the reward / DPO / SFT objectives, calibration,
export, `eval score`, `eval filter` and `Scorer.reward` see the same contract as train/model.py's.

HOW CLIPS REACH IT. The small judges get crops and log-mels from the tensor cache; this backbone
gets the raw material through the same cache, in a preprocessing mode of its own (resolve_preprocess
fills it in: `preprocess_needs`): crop "full" resized to `crop_size` (a multiple of the vision
patch grid), colour, video_norm "unit" (pixel / 255) and audio_features "waveform" (the samples,
(1, window_seconds x sr)). Inside forward, in torch (differentiable, on the model's device), exactly
what the Qwen2.5-Omni processor does to such frames and samples: CLIP normalisation and the
Qwen2-VL patch layout for the picture, Whisper's log-mel (30 s padding, max - 8 floor) for the
sound. The token layout (chat prompt, video and audio tokens interleaved every 2 s for the
time-aligned rotary positions, `use_audio_in_video`) depends on the clip geometry only: it is made
once by the official processor and reused, with its 3-D position ids, for every batch.

Only the LoRA adapters train (`lora_towers`: which of text / vision / audio get them,
`lora_target_modules`: which linear layers); gradient checkpointing (non-reentrant) and bf16 weights
on a GPU (`weights_dtype: auto`). save_pretrained writes config.json (naming the base model `path`
and a fingerprint of its files) and model.safetensors holding the adapters only; from_pretrained
loads the base from that path (or $AVBENCH_BASE_MODEL), checks the fingerprint, then the adapters.
Nothing is downloaded: every transformers call is local-files-only with HF_HUB_OFFLINE set.
"""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

from .model import JudgeLoadError, JudgeOutput, require_safetensors
from .preprocess import check_values

BACKBONE = "qwen2_5_omni"
MODEL_TYPE = "avbench_qwen_omni_judge"
DOWNLOAD_HINT = ("download the weights first, e.g. `huggingface-cli download Qwen/Qwen2.5-Omni-7B --local-dir "
                 "/models/Qwen2.5-Omni-7B` (or Qwen/Qwen2.5-Omni-3B; https://huggingface.co/Qwen)")
BASE_ENV = "AVBENCH_BASE_MODEL"  # another folder for the base weights of an export (fingerprint checked)
DEFAULT_SYSTEM = ("You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
                  "auditory and visual inputs, as well as generating text and speech.")
TOWERS = {"text": "language_model", "vision": "visual", "audio": "audio_tower"}  # thinker.model.<name>
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# key -> (lo, hi, why), as train.model.MODEL_RANGES (integer bounds: integers)
QWEN_RANGES: dict[str, tuple[float, float, str]] = {
    "fps": (1, 60, "video frames per second fed to the model"),
    "max_pixels": (784, 4_000_000, "pixels per frame at most (Qwen2-VL patches of 28 x 28)"),
    "frame_size": (28, 4096, "height and width frames are resized to before rounding to the patch grid"),
    "audio_seconds": (0.1, 30.0, "seconds of sound (Whisper's 30 s window at most)"),
    "lora_rank": (1, 1024, "LoRA rank"),
    "lora_alpha": (0.0, 1e5, "LoRA scale numerator"),
    "lora_dropout": (0.0, 1.0, "a probability"),
}
_LOCAL = {"local_files_only": True}


def _offline() -> None:
    """Nothing is fetched at run time, whatever else transformers is asked for (huggingface_hub reads
    the variable when imported: its constant is set too)."""
    import huggingface_hub.constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    huggingface_hub.constants.HF_HUB_OFFLINE = True


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 480 * 640) -> tuple[int, int]:
    """Qwen2-VL's frame size rule: each side a multiple of `factor`, near the aspect ratio, the area
    within [min_pixels, max_pixels]."""
    h, w = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = (max(factor, math.floor(height / beta / factor) * factor),
                max(factor, math.floor(width / beta / factor) * factor))
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return int(h), int(w)


def _need_path(path: Any) -> Path:
    if not path:
        raise ValueError(f"backbone {BACKBONE} needs `path:`, a local folder with the Qwen2.5-Omni weights "
                         f"(nothing is downloaded at run time): {DOWNLOAD_HINT}")
    p = Path(str(path)).expanduser()
    if not (p / "config.json").is_file():
        raise ValueError(f"backbone {BACKBONE}: no model at path {p} (no config.json there): {DOWNLOAD_HINT}")
    return p


def preprocess_needs(model: dict[str, Any]) -> dict[str, Any]:
    """The preprocessing this backbone reads (train.config.resolve_preprocess fills it in): whole
    frames in colour at `fps`, pixel / 255, resized to the patch grid within `max_pixels`; the
    waveform. ValueError, one line, for a missing weights folder or a number out of range."""
    QwenOmniJudgeConfig.check_fields(model)
    check_values("model", model, QWEN_RANGES)
    _need_path(model.get("path"))
    fh, fw = model.get("frame_size", (480, 640))
    h, w = smart_resize(int(fh), int(fw), max_pixels=int(model.get("max_pixels", 480 * 640)))
    return {"crop": "full", "grayscale": False, "video_norm": "unit", "audio_features": "waveform",
            "fps": int(model.get("fps", 1)), "crop_size": [h, w]}


def base_fingerprint(path: str | Path) -> str:
    """What identifies the base weights without reading 15 GB: config.json, and the name, size, first
    and last MiB of every safetensors file (another fine-tune differs there)."""
    h = hashlib.sha256()
    for f in sorted(Path(path).iterdir()):
        if f.name != "config.json" and not f.name.endswith(".safetensors"):
            continue
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            fh.seek(max(0, size - (1 << 20)))
            h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


class QwenOmniJudgeConfig(PretrainedConfig):
    """The judge: base weights (`path`), prompt, input geometry, LoRA. Numbers checked (QWEN_RANGES)."""

    model_type = MODEL_TYPE

    def __init__(self, dim: str = "lip_sync", question: str = "Is the speech in sync with the lips?",
                 backbone: str = BACKBONE, path: str | None = None, base_fingerprint: str | None = None,
                 system_prompt: str = DEFAULT_SYSTEM, prompt_suffix: str = " Answer Yes or No.",
                 yes_token: str = "Yes", no_token: str = "No",
                 fps: int = 1, max_pixels: int = 480 * 640, frame_size: list[int] | tuple[int, int] = (480, 640),
                 audio_seconds: float = 9.9,
                 n_frames: int = 10, crop_size: list[int] | tuple[int, int] = (476, 644), sr: int = 16000,
                 n_samples: int = 160000,
                 lora_rank: int = 16, lora_alpha: float = 32.0, lora_dropout: float = 0.05,
                 lora_target_modules: list[str] | tuple[str, ...] = TEXT_TARGETS,
                 lora_towers: list[str] | tuple[str, ...] = ("text",),
                 checkpoint_activations: bool = True, weights_dtype: str = "auto",
                 plugins: list[str] | tuple[str, ...] = (), **kwargs):
        self.check_fields(kwargs)
        check_values("model", {"fps": fps, "max_pixels": max_pixels, "frame_size": list(frame_size),
                               "audio_seconds": audio_seconds, "lora_rank": lora_rank, "lora_alpha": lora_alpha,
                               "lora_dropout": lora_dropout}, QWEN_RANGES)
        if backbone != BACKBONE:
            raise ValueError(f"model: backbone must be {BACKBONE!r}, got {backbone!r}")
        bad = sorted(set(lora_towers) - set(TOWERS)) if isinstance(lora_towers, (list, tuple)) else [lora_towers]
        if bad or not lora_towers:
            raise ValueError(f"model: lora_towers must be a non-empty list of {sorted(TOWERS)}, got {lora_towers!r}")
        if not isinstance(lora_target_modules, (list, tuple)) or not lora_target_modules or \
                not all(isinstance(m, str) and m.isidentifier() for m in lora_target_modules):
            raise ValueError(f"model: lora_target_modules must be a list of linear layer names, got "
                             f"{lora_target_modules!r}")
        if weights_dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise ValueError(f"model: weights_dtype must be auto | bfloat16 | float16 | float32, got {weights_dtype!r}")
        if not isinstance(checkpoint_activations, bool):
            raise ValueError(f"model: checkpoint_activations must be true or false, got {checkpoint_activations!r}")
        self.dim, self.question, self.backbone = dim, question, backbone
        self.path = str(path) if path else None
        self.base_fingerprint = base_fingerprint
        self.system_prompt, self.prompt_suffix = str(system_prompt), str(prompt_suffix)
        self.yes_token, self.no_token = str(yes_token), str(no_token)
        self.fps, self.max_pixels = int(fps), int(max_pixels)
        self.frame_size = [int(v) for v in frame_size]
        self.audio_seconds = float(audio_seconds)
        self.n_frames, self.crop_size = int(n_frames), [int(v) for v in crop_size]
        self.sr, self.n_samples = int(sr), int(n_samples)
        self.lora_rank, self.lora_alpha, self.lora_dropout = int(lora_rank), float(lora_alpha), float(lora_dropout)
        self.lora_target_modules = [str(m) for m in lora_target_modules]
        self.lora_towers = [str(t) for t in lora_towers]
        self.checkpoint_activations = checkpoint_activations
        self.weights_dtype = weights_dtype
        self.plugins = [str(m) for m in plugins]
        kwargs.setdefault("id2label", {0: "no", 1: "yes"})
        kwargs.setdefault("label2id", {"no": 0, "yes": 1})
        super().__init__(**kwargs)

    @staticmethod
    def check_fields(section: dict[str, Any]) -> None:
        """ValueError naming the keys of a model section (or config.json) that are no field of this config."""
        import inspect

        from .model import _BASE_CONFIG_KEYS

        fields = {p for p in inspect.signature(QwenOmniJudgeConfig.__init__).parameters if p not in ("self", "kwargs")}
        unknown = sorted(set(section) - fields - _BASE_CONFIG_KEYS)
        if unknown:
            raise ValueError(f"unknown {BACKBONE} config field(s) {unknown}; valid fields: {sorted(fields)}")

    @classmethod
    def for_preprocess(cls, pre, **model_kwargs) -> "QwenOmniJudgeConfig":
        """A config whose input geometry is what the PreprocessConfig `pre` gives; the base weights must
        be at `path` (their fingerprint is recorded)."""
        path = _need_path(model_kwargs.get("path"))
        if pre.audio_features != "waveform" or pre.video_norm != "unit" or pre.crop != "full" or pre.grayscale:
            raise ValueError(f"backbone {BACKBONE} reads whole colour frames and the waveform: preprocess must be "
                             f"{preprocess_needs(model_kwargs)} (train.config.resolve_preprocess fills it in)")
        model_kwargs = {**model_kwargs, "path": str(path.resolve())}
        return cls(n_frames=pre.n_frames, crop_size=list(pre.crop_size), sr=pre.sr, n_samples=pre.n_samples,
                   base_fingerprint=base_fingerprint(path), **model_kwargs)

    def torch_dtype_for(self, device_has_cuda: bool) -> torch.dtype:
        name = self.weights_dtype
        if name == "auto":
            name = "bfloat16" if device_has_cuda else "float32"
        return getattr(torch, name)


def whisper_log_mel(wave: torch.Tensor, mel_filters: torch.Tensor, n_fft: int, hop: int, n_pad: int) -> torch.Tensor:
    """(B, N) samples -> (B, n_mels, n_pad // hop) log-mel exactly as WhisperFeatureExtractor (torch path,
    padding "max_length") computes it, differentiable: zero-padded to n_pad samples, |STFT|^2 of a
    Hann window (last frame dropped), mel, log10 floored at the clip's max - 8, (x + 4) / 4."""
    x = F.pad(wave.float(), (0, max(0, n_pad - wave.shape[-1])))[..., :n_pad]
    window = torch.hann_window(n_fft, device=x.device)
    stft = torch.stft(x, n_fft, hop, window=window, return_complex=True)
    power = (stft[..., :-1].abs() ** 2).contiguous()
    log_spec = torch.clamp(mel_filters.T.to(x.device) @ power, min=1e-10).log10()
    floor = log_spec.amax(dim=(1, 2), keepdim=True) - 8.0
    return (torch.maximum(log_spec, floor) + 4.0) / 4.0


def video_patches(video: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, patch: int, temporal: int,
                  merge: int) -> torch.Tensor:
    """(B, T, C, H, W) pixels / 255 -> (B * patches, C * temporal * patch * patch), the Qwen2-VL video
    processor's normalisation and patch layout (T padded to a multiple of `temporal` with the last frame)."""
    v = (video.float() - mean.view(1, 1, -1, 1, 1)) / std.view(1, 1, -1, 1, 1)
    if pad := -v.shape[1] % temporal:
        v = torch.cat([v, v[:, -1:].expand(-1, pad, -1, -1, -1)], dim=1)
    b, t, c, h, w = v.shape
    gt, gh, gw = t // temporal, h // patch, w // patch
    v = v.reshape(b, gt, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    v = v.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    return v.reshape(b * gt * gh * gw, c * temporal * patch * patch)


class QwenOmniJudge(PreTrainedModel):
    """Qwen2.5-Omni thinker + LoRA, answering the judge's yes / no question (module docstring)."""

    config_class = QwenOmniJudgeConfig
    base_model_prefix = "judge"
    main_input_name = "video"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Qwen2_5OmniDecoderLayer", "Qwen2_5OmniVisionBlock", "Qwen2_5OmniAudioEncoderLayer"]

    def __init__(self, config: QwenOmniJudgeConfig, base_path: str | Path | None = None):
        super().__init__(config)
        self.post_init()  # before the base weights arrive: nothing of theirs is re-initialised
        _offline()
        from peft import LoraConfig, get_peft_model
        from transformers import Qwen2_5OmniProcessor, Qwen2_5OmniThinkerForConditionalGeneration

        path = _need_path(base_path or config.path)
        dtype = config.torch_dtype_for(torch.cuda.is_available())
        # safetensors only: a weights folder is input from elsewhere, and pickled weights would run code
        thinker = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(str(path), dtype=dtype, use_safetensors=True,
                                                                            **_LOCAL)
        thinker.config.use_cache = False
        self.processor = Qwen2_5OmniProcessor.from_pretrained(str(path), **_LOCAL)
        self._check_geometry(path)
        self.answer_ids = [self._single_token(config.no_token), self._single_token(config.yes_token)]
        targets = self._lora_targets(thinker)
        lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=targets, bias="none")
        self.thinker = get_peft_model(thinker, lora)
        if config.checkpoint_activations:
            self.activation_checkpointing_enable()
        fe, vp = self.processor.feature_extractor, self.processor.video_processor
        self.register_buffer("mel_filters", torch.as_tensor(fe.mel_filters, dtype=torch.float32), persistent=False)
        self.register_buffer("pixel_mean", torch.tensor(vp.image_mean, dtype=torch.float32), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(vp.image_std, dtype=torch.float32), persistent=False)
        self._layouts: dict[tuple, dict[str, torch.Tensor]] = {}

    # ------------------------------------------------------------------ construction helpers
    def _single_token(self, text: str) -> int:
        ids = self.processor.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"model: answer token {text!r} is {len(ids)} tokens for this tokenizer, not one "
                             f"(set yes_token / no_token)")
        return int(ids[0])

    def _check_geometry(self, path: Path) -> None:
        vp = self.processor.video_processor
        grid = vp.patch_size * vp.merge_size
        if any(v % grid for v in self.config.crop_size):
            raise ValueError(f"model: frames of {self.config.crop_size} pixels do not fit the {grid} x {grid} patch "
                             f"grid of {path} (resolve_preprocess rounds frame_size to it)")

    def _lora_targets(self, thinker) -> str:
        """A regex for peft: the named linear layers inside the chosen towers; ValueError when a tower
        has none of them (naming the linear layers it has)."""
        c = self.config
        names = "|".join(sorted(set(c.lora_target_modules)))
        towers = "|".join(TOWERS[t] for t in c.lora_towers)
        for t in c.lora_towers:
            prefix = f"model.{TOWERS[t]}."
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in thinker.named_modules()
                             if n.startswith(prefix) and isinstance(m, torch.nn.Linear)})
            if not set(c.lora_target_modules) & set(linear):
                raise ValueError(f"model: lora_target_modules {c.lora_target_modules} name no linear layer of the "
                                 f"{t} tower (its layers: {linear})")
        return rf"model\.({towers})\..*\.({names})"

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None,
                                        every_n_layers: int = 1, offload: bool = False) -> None:
        # non-reentrant: the frozen embeddings give no input that requires grad
        kwargs = {"use_reentrant": False, **(activation_checkpointing_kwargs or {})}
        self._thinker.activation_checkpointing_enable(kwargs, every_n_layers=every_n_layers, offload=offload)

    def _init_weights(self, module):  # the base weights are loaded, the adapters initialised by peft
        return

    def load_pretrained_encoders(self) -> list[str]:
        """What python -m train logs: the base weights were read when the judge was built."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return [f"{BACKBONE} base weights from {self.config.path} ({total} parameters); LoRA rank "
                f"{self.config.lora_rank} on {'+'.join(self.config.lora_towers)}: {trainable} trainable"]

    # ------------------------------------------------------------------ inputs
    @property
    def _thinker(self):
        return self.thinker.get_base_model()

    def prompt_text(self) -> str:
        """The chat (ChatML, as Qwen2.5-Omni's template writes it) up to the answer's first token."""
        c, tok = self.config, self.processor.tokenizer
        return (f"<|im_start|>system\n{c.system_prompt}<|im_end|>\n<|im_start|>user\n"
                f"{tok.vision_bos_token}{tok.video_token}{tok.vision_eos_token}{c.question}{c.prompt_suffix}"
                f"<|im_end|>\n<|im_start|>assistant\n")

    def n_audio_samples(self, n: int) -> int:
        return min(n, int(round(self.config.audio_seconds * self.config.sr)))

    def layout(self, n_frames: int, height: int, width: int, n_audio: int) -> dict[str, torch.Tensor]:
        """Token ids, 3-D position ids, video grid and valid audio-feature frames of one clip of this
        geometry, made once by the official processor (every clip of a batch shares them)."""
        key = (n_frames, height, width, n_audio)
        if key not in self._layouts:
            import numpy as np

            out = self.processor(
                text=[self.prompt_text()], videos=[np.zeros((n_frames, height, width, 3), np.uint8)],
                audio=[np.zeros(n_audio, np.float32)], audio_from_video_indices=[0], load_audio_from_video=True,
                videos_kwargs={"do_resize": False, "do_sample_frames": False, "fps": float(self.config.fps),
                               "cap_pixels_per_frame": False},
                return_tensors="pt")
            fmask = out["feature_attention_mask"]
            spg = torch.as_tensor(out["video_second_per_grid"], dtype=torch.float32)
            pos, _ = self._thinker.model.get_rope_index(out["input_ids"], None, out["video_grid_thw"],
                                                        out["attention_mask"], True, fmask.sum(-1), spg)
            self._layouts[key] = {"input_ids": out["input_ids"][0], "position_ids": pos[:, 0],
                                  "video_grid_thw": out["video_grid_thw"][0], "video_second_per_grid": spg[0],
                                  "audio_frames": fmask.sum(-1)[0], "feature_frames": torch.tensor(fmask.shape[1])}
        return self._layouts[key]

    def model_inputs(self, video: torch.Tensor, audio: torch.Tensor) -> dict[str, Any]:
        """The thinker's keyword arguments for a batch: video (B, T, 3, H, W) pixel / 255, audio (B, 1, N)."""
        b, t, _, h, w = video.shape
        n_audio = self.n_audio_samples(audio.shape[-1])
        lay = self.layout(t, h, w, n_audio)
        dev = video.device
        vp, fe = self.processor.video_processor, self.processor.feature_extractor
        pixels = video_patches(video, self.pixel_mean, self.pixel_std, vp.patch_size, vp.temporal_patch_size,
                               vp.merge_size)
        feats = whisper_log_mel(audio.reshape(b, -1)[:, :n_audio], self.mel_filters, fe.n_fft, fe.hop_length,
                                fe.n_samples)
        frames = int(lay["feature_frames"])
        fmask = (torch.arange(frames, device=dev) < lay["audio_frames"].to(dev)).long().expand(b, -1)
        ids = lay["input_ids"].to(dev)
        dtype = self._thinker.dtype
        return {"input_ids": ids.expand(b, -1), "attention_mask": torch.ones(b, len(ids), dtype=torch.long, device=dev),
                "position_ids": lay["position_ids"].to(dev)[:, None].expand(-1, b, -1),
                "pixel_values_videos": pixels.to(dtype), "video_grid_thw": lay["video_grid_thw"].to(dev).expand(b, -1),
                "video_second_per_grid": lay["video_second_per_grid"].to(dev).expand(b),
                "input_features": feats[..., :frames].to(dtype), "feature_attention_mask": fmask,
                "use_audio_in_video": True, "use_cache": False}

    # ------------------------------------------------------------------ the judge contract
    def forward(self, video: torch.Tensor, audio: torch.Tensor, labels: torch.Tensor | None = None,
                in_sync: torch.Tensor | None = None, return_dict: bool = True, **kwargs) -> JudgeOutput:
        """logits (B, 2) = the first answer token's [z_No, z_Yes]; loss = CE(labels) when given."""
        thinker = self._thinker
        hidden = thinker.model(**self.model_inputs(video, audio)).last_hidden_state[:, -1]
        # two rows of the LM head, not the whole vocabulary (152k logits per position)
        logits = hidden.float() @ thinker.lm_head.weight[self.answer_ids].float().T
        loss = F.cross_entropy(logits, labels.long()) if labels is not None else None
        return JudgeOutput(loss=loss, logits=logits, decision=logits[:, 1] - logits[:, 0])

    def decision_logit(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """(B,) z_yes - z_no: > 0 means the judge answers yes."""
        return self.forward(video, audio).decision

    def score(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """(B,) P(yes) = sigmoid(z_yes - z_no)."""
        return torch.sigmoid(self.decision_logit(video, audio))

    # ------------------------------------------------------------------ adapters only on disk
    @staticmethod
    def is_adapter_key(name: str) -> bool:
        return ".lora_" in name

    def adapter_state(self, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        sd = state_dict if state_dict is not None else self.state_dict()
        return {k: v.detach().cpu().contiguous() for k, v in sd.items() if self.is_adapter_key(k)}

    def save_pretrained(self, save_directory, state_dict=None, is_main_process: bool = True, **kwargs) -> None:
        """config.json (base path + fingerprint) and model.safetensors with the LoRA adapters only."""
        from safetensors.torch import save_file

        if not is_main_process:
            return
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(str(out))
        save_file(self.adapter_state(state_dict), str(out / "model.safetensors"), metadata={"format": "pt"})

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """A state dict of adapters (what save_pretrained writes) loads as complete: the base weights
        come from `path`, so they are not missing."""
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if self.is_adapter_key(k)]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"adapter keys mismatch: missing {missing[:4]}, unexpected {result.unexpected_keys[:4]}")
        return torch.nn.modules.module._IncompatibleKeys(missing, result.unexpected_keys)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, output_loading_info=False,
                        **kwargs):
        """The judge saved in a folder: its base weights from config.path (or $AVBENCH_BASE_MODEL), checked
        against the recorded fingerprint, then its adapters. JudgeLoadError (one line) when the base
        is missing or is another model."""
        from safetensors.torch import load_file

        folder = Path(pretrained_model_name_or_path)
        require_safetensors(folder)
        if config is None:
            config = cls.config_class.from_json_file(str(folder / "config.json"))
        base = Path(os.environ.get(BASE_ENV) or config.path or folder / "no base model recorded")
        if not (base / "config.json").is_file():
            raise JudgeLoadError(f"{folder}: the judge's base model {base} is not there: the judge holds LoRA "
                                 f"adapters on Qwen2.5-Omni; {DOWNLOAD_HINT}, then put it at {config.path} or set "
                                 f"{BASE_ENV}=DIR")
        found = base_fingerprint(base)
        if config.base_fingerprint and found != config.base_fingerprint:
            raise JudgeLoadError(f"{folder}: {base} holds another model than the one the judge was trained on "
                                 f"(fingerprint {found}, expected {config.base_fingerprint}): point {BASE_ENV} "
                                 f"at the base model it was trained on")
        model = cls(config, base_path=base)
        theirs = load_file(str(folder / "model.safetensors"))
        own = model.adapter_state()
        missing = sorted(set(own) - set(theirs))
        unexpected = sorted(set(theirs) - set(own))
        mismatched = sorted(k for k in set(own) & set(theirs) if own[k].shape != theirs[k].shape)
        if mismatched:
            raise RuntimeError(f"size mismatch for {mismatched[0]}: {list(theirs[mismatched[0]].shape)} in the file, "
                               f"{list(own[mismatched[0]].shape)} in the model")
        model.load_state_dict({k: v for k, v in theirs.items() if k in own}, strict=False)
        model.eval()
        if output_loading_info:
            return model, {"missing_keys": missing, "unexpected_keys": unexpected, "mismatched_keys": [],
                           "error_msgs": []}
        return model


def config_for(pre, **model_kwargs) -> QwenOmniJudgeConfig:
    """train.model.judge_config_for's branch for this backbone."""
    return QwenOmniJudgeConfig.for_preprocess(pre, **model_kwargs)


try:  # AutoConfig / AutoModel on a run's model/ folder or an export of this backbone
    AutoConfig.register(MODEL_TYPE, QwenOmniJudgeConfig)
    AutoModel.register(QwenOmniJudgeConfig, QwenOmniJudge)
except ValueError:  # already registered (module reloaded)
    pass
