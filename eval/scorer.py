"""Scorer: an exported judge as a calibrated scorer of whole videos, and a differentiable reward.

Usage (two lines):

    from eval import Scorer
    Scorer.from_pretrained("exports/lip_sync").score("video.mp4")   # -> P(yes) in [0, 1]

An export folder (written by `python -m eval evaluate`) holds model.safetensors + config.json
(AVJudge.save_pretrained), preprocessing.json (train.preprocess.PreprocessConfig), calibration.json
(eval.calibration) and metrics.json (dim, question, test metrics).

Long videos: a video of any length, container and rate that ffmpeg reads is cut into the windows
train.preprocess.windows_for returns; each window gets a decision logit z. `score` averages the
window LOGITS and then calibrates the mean (one calibrated probability per video, not a mean of
probabilities: the calibrator was fitted on single-window logits, and a mean logit stays on that
scale); `score_windows` gives the calibrated probability of each window.

`reward(video, audio)` takes preprocessed tensors (what train.preprocess.make_inputs returns, with
or without a batch dimension) and returns calibrated probabilities (B,) that are differentiable
w.r.t. both inputs, for RLHF. Temperature and Platt calibration are applied exactly (torch ops);
an isotonic calibration is piecewise constant in places (zero gradient), so `reward` uses the
temperature fit that is stored with it (calibration.json params.fallback) instead; `score` always
uses the exported calibration itself.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .calibration import Calibrator, IdentityCalibration, load_calibrator


# unbatched ranks of train.preprocess.make_inputs: video (T, C, H, W), audio (n_mels, R*T)
VIDEO_NDIM, AUDIO_NDIM = 4, 2


def _stack_inputs(items: Sequence[dict[str, Any]]):
    """Batch a list of unbatched make_inputs() dicts into {"video": (B,...), "audio": (B,...)}."""
    import torch

    return {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in ("video", "audio")}


class Scorer:
    """A judge + its preprocessing + its calibration. Build with `Scorer.from_pretrained(dir)`."""

    def __init__(self, model, preprocess_cfg, calibrator: Calibrator | None = None,
                 dim: str | None = None, question: str | None = None, batch_size: int = 8,
                 device: str = "cpu", path: str | None = None) -> None:
        self.model = model.eval()
        self.cfg = preprocess_cfg
        self.calibrator = calibrator or IdentityCalibration()
        self.dim = dim or "judge"
        self.question = question
        self.batch_size = int(batch_size)
        self.device = device
        self.path = path

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | None = None, batch_size: int = 8,
                        calibration: str | Path | dict | None = None,
                        plugins: list[str] | None = None) -> "Scorer":
        """Load an export folder. `calibration` overrides calibration.json (a path or a dict);
        `plugins`: modules to import first (judges whose encoders are not part of avbench)."""
        from train.model import load_judge

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"not an exported judge (no config.json): {path}")
        device = device or "cpu"
        model, cfg = load_judge(path, device, plugins)
        if calibration is not None:
            cal = load_calibrator(calibration)
        elif (path / "calibration.json").is_file():
            cal = load_calibrator(path / "calibration.json")
        else:
            cal = IdentityCalibration()
        meta: dict[str, Any] = {}
        if (path / "metrics.json").is_file():
            try:
                meta = json.loads((path / "metrics.json").read_text())
            except json.JSONDecodeError:
                meta = {}
        dim = meta.get("dim") or getattr(model.config, "dim", None) or path.name
        question = meta.get("question") or getattr(model.config, "question", None)
        return cls(model, cfg, cal, dim=dim, question=question, batch_size=batch_size,
                   device=device, path=str(path))

    # ------------------------------------------------------------------ logits
    def logits(self, inputs: Sequence[dict[str, Any]]) -> np.ndarray:
        """Decision logits z (float64 array) of unbatched input dicts, in batches, no grad."""
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(inputs), self.batch_size):
                batch = _stack_inputs(inputs[i: i + self.batch_size])
                z = self.model.decision_logit(batch["video"].to(self.device),
                                              batch["audio"].to(self.device))
                out.append(z.detach().float().cpu().numpy().reshape(-1))
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)

    def windows(self, path: str | Path) -> list[tuple[float, float, dict[str, Any]]]:
        from train.preprocess import windows_for

        wins = windows_for(str(path), self.cfg)
        if not wins:
            raise ValueError(f"no window could be cut from {path}")
        return wins

    def window_logits(self, path: str | Path, windows=None) -> list[tuple[float, float, float]]:
        """[(start, end, z)] for each window of the video."""
        wins = windows if windows is not None else self.windows(path)
        z = self.logits([w[2] for w in wins])
        return [(float(s), float(e), float(v)) for (s, e, _), v in zip(wins, z)]

    def calibrate(self, z) -> np.ndarray:
        return self.calibrator.transform(np.asarray(z, dtype=np.float64).reshape(-1))

    # ------------------------------------------------------------------ scores
    def score_file(self, path: str | Path, windows=None) -> dict[str, Any]:
        """{"score", "logit", "windows": [{"start","end","score"}]} for one video (one decode)."""
        wl = self.window_logits(path, windows)
        z = np.array([w[2] for w in wl])
        probs = self.calibrate(z)
        mean_z = float(z.mean())
        return {"score": float(self.calibrate([mean_z])[0]), "logit": mean_z,
                "windows": [{"start": s, "end": e, "score": float(p)}
                            for (s, e, _), p in zip(wl, probs)]}

    def score(self, path: str | Path) -> float:
        """Calibrated P(yes) of a whole video: calibrate(mean of window logits)."""
        return self.score_file(path)["score"]

    def score_windows(self, path: str | Path) -> list[dict[str, float]]:
        """Calibrated P(yes) of each window: [{"start", "end", "score"}]."""
        return self.score_file(path)["windows"]

    def score_batch(self, paths: Iterable[str | Path], errors: str = "raise") -> list[float]:
        """Scores of several videos; errors="nan" gives nan for a file that cannot be read."""
        out = []
        for p in paths:
            try:
                out.append(self.score(p))
            except Exception:
                if errors != "nan":
                    raise
                out.append(float("nan"))
        return out

    # ------------------------------------------------------------------ reward
    def reward(self, video, audio):
        """Calibrated P(yes) as a differentiable tensor (B,) of preprocessed inputs.

        Accepts make_inputs() tensors with or without the batch dimension. Gradients flow to
        `video` and `audio` (model in eval mode; parameters are not frozen here, freeze them
        yourself if the judge must stay fixed).
        """
        import torch

        video = torch.as_tensor(video)
        audio = torch.as_tensor(audio)
        if video.dim() == VIDEO_NDIM:  # one clip (T, C, H, W) -> (1, T, C, H, W)
            video = video.unsqueeze(0)
        if audio.dim() == AUDIO_NDIM:  # one clip (n_mels, frames) -> (1, n_mels, frames)
            audio = audio.unsqueeze(0)
        z = self.model.decision_logit(video.to(self.device), audio.to(self.device))
        return self.calibrator.differentiable().torch_transform(z.reshape(-1))

    def __repr__(self) -> str:
        return f"Scorer(dim={self.dim!r}, calibration={self.calibrator.method!r}, path={self.path!r})"
