"""A lip_sync judge with no parameters, as a floor for the learnt ones: does the mouth open when the speech is loud?

    python bench/mouth_energy_baseline.py --shards shards_real/lip_sync \
        --config train/configs/realvids/lip_sync.yaml --cache-dir cache/real [--splits train val test]

Per clip, from the landmark judge's own inputs (the tensor cache of a `frame_encoder: landmarks` config):
the mouth opening is the distance between the inner lips (FaceMesh points 13 and 14, in eye-distance
units), the loudness is the mean log-mel of the bands centred in 300-3400 Hz over each video frame's
mel frames, and the clip's score is their Pearson correlation at lag 0. A pair is won when the
chosen clip's correlation is higher. Nothing is fitted, so every split measures it without bias;
what a learnt judge adds over it is what it learnt. Prints pairwise accuracy per split, and per
severity, operator and source within it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from train.landmarks import POINTS  # noqa: E402
from train.preprocess import PreprocessConfig  # noqa: E402

if TYPE_CHECKING:
    from train.data import PairDataset

UPPER_LIP, LOWER_LIP = POINTS.index(13), POINTS.index(14)  # inner lip midpoints
SPEECH_BAND_HZ = (300.0, 3400.0)


def speech_bands(cfg: PreprocessConfig) -> np.ndarray:
    """Indices of the mel bands (HTK scale, as torchaudio's MelSpectrogram) centred in SPEECH_BAND_HZ."""
    def mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    edges = np.linspace(mel(cfg.f_min), mel(min(cfg.f_max, cfg.sr / 2)), cfg.n_mels + 2)
    centres = 700.0 * (10 ** (edges[1:-1] / 2595.0) - 1.0)
    return np.flatnonzero((centres >= SPEECH_BAND_HZ[0]) & (centres <= SPEECH_BAND_HZ[1]))


def opening_and_loudness(video: torch.Tensor, audio: torch.Tensor, bands: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """video (T, 2 * len(POINTS)) landmark features, audio (n_mels, R*T) log-mel -> per video frame
    (inner-lip opening, mean log-mel of `bands` over the frame's mel frames), each (T,)."""
    points = video.float().numpy().reshape(len(video), -1, 2)
    opening = points[:, LOWER_LIP, 1] - points[:, UPPER_LIP, 1]
    mel = audio.float().numpy()[bands]
    return opening, mel.reshape(len(bands), len(video), -1).mean(axis=(0, 2))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two equal-length series (0 when either is constant)."""
    x, y = a - a.mean(), b - b.mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum() + 1e-12))


def mouth_energy_correlation(video: torch.Tensor, audio: torch.Tensor, bands: np.ndarray) -> float:
    """video (T, 2 * len(POINTS)) landmark features, audio (n_mels, R*T) log-mel -> Pearson r."""
    return pearson(*opening_and_loudness(video, audio, bands))


def pair_wins(pairs: "PairDataset", bands: np.ndarray) -> np.ndarray:
    """1 / 0.5 / 0 per pair: the chosen clip's correlation above / equal to / below the rejected one's."""
    wins = []
    for i in range(len(pairs)):
        c, r = (mouth_energy_correlation(side["video"], side["audio"], bands)
                for side in (pairs.side(i, "chosen"), pairs.side(i, "rejected")))
        wins.append(1.0 if c > r else 0.5 if c == r else 0.0)
    return np.array(wins)


def landmark_arguments(description: str) -> argparse.ArgumentParser:
    """The arguments of the scripts that read a landmark judge's tensor cache (this one, source_offsets)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--shards", required=True)
    ap.add_argument("--config", required=True, help="a training YAML with frame_encoder: landmarks")
    ap.add_argument("--cache-dir")
    ap.add_argument("--splits", nargs="+", default=["train", "val", "test"])
    return ap


def landmark_preprocess(config: str) -> PreprocessConfig:
    """The preprocessing of a training YAML whose judge reads landmarks (SystemExit otherwise)."""
    from train.config import load_config, resolve_preprocess

    conf = load_config("lip_sync", config)
    pre = PreprocessConfig.from_dict(resolve_preprocess(conf, list(conf.get("plugins") or [])))
    if pre.video_input != "landmarks":
        raise SystemExit(f"{config}: needs landmark inputs (model.frame_encoder: landmarks)")
    return pre


def main(argv: list[str] | None = None) -> dict:
    from train.data import load_split

    args = landmark_arguments(__doc__.split("\n\n")[0]).parse_args(argv)
    pre = landmark_preprocess(args.config)
    bands = speech_bands(pre)
    out = {}
    for split in args.splits:
        pairs = load_split(args.shards, split, pre, args.cache_dir)
        wins = pair_wins(pairs, bands)
        groups: dict[str, dict[str, list[float]]] = {"severity": {}, "operator": {}, "source": {}}
        for m, w in zip(pairs.metas, wins):
            for g in groups:
                groups[g].setdefault(str(m.get("source_id" if g == "source" else g)), []).append(w)
        out[split] = {"pairs": len(wins), "pairwise_accuracy": float(wins.mean()),
                      **{f"by_{g}": {k: float(np.mean(v)) for k, v in sorted(d.items())} for g, d in groups.items()}}
        print(f"{split}: {len(wins)} pairs, pairwise accuracy {wins.mean():.3f}; "
              + "; ".join(f"by {g} " + ", ".join(f"{k} {v:.2f}" for k, v in out[split][f"by_{g}"].items())
                          for g in groups))
    return out


if __name__ == "__main__":
    main()
