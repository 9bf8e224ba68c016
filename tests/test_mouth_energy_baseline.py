"""bench/mouth_energy_baseline.py: the no-parameter lip_sync floor (mouth opening vs speech loudness)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import mouth_energy_baseline as base  # noqa: E402

from train.data import PairDataset  # noqa: E402
from train.landmarks import N_FEATURES  # noqa: E402
from train.preprocess import PreprocessConfig  # noqa: E402


def test_speech_bands_are_the_mel_bands_centred_in_300_to_3400_hz():
    cfg = PreprocessConfig(n_mels=40)
    bands = base.speech_bands(cfg)
    assert 10 < len(bands) < 40 and np.all(np.diff(bands) == 1)        # one contiguous run
    assert bands[0] > 0 and bands[-1] < 39                             # neither the lowest nor the highest band
    assert len(base.speech_bands(PreprocessConfig(n_mels=80))) > len(bands)


def test_the_in_sync_clip_wins_and_a_shift_loses():
    rng = np.random.default_rng(0)
    t, r, n_mels, shift = 50, 4, 40, 6
    cfg = PreprocessConfig(n_mels=n_mels)
    bands = base.speech_bands(cfg)
    n_pairs = 8
    video = torch.zeros(n_pairs, t, N_FEATURES)
    chosen_audio = torch.zeros(n_pairs, n_mels, r * t)
    rejected_audio = torch.zeros(n_pairs, n_mels, r * t)
    for i in range(n_pairs):
        syllables = np.convolve(rng.random(t + shift) > 0.6, np.ones(3), mode="same").astype(np.float32)
        opening = torch.from_numpy(syllables[:t])
        pts = video[i].view(t, -1, 2)
        pts[:, base.LOWER_LIP, 1] = opening / 2                           # the lips part symmetrically
        pts[:, base.UPPER_LIP, 1] = -opening / 2
        loud = torch.from_numpy(np.repeat(syllables, r))
        chosen_audio[i, bands] = loud[: r * t]
        rejected_audio[i, bands] = loud[r * shift: r * (t + shift)]     # the sound 6 frames early
    assert base.mouth_energy_correlation(video[0], chosen_audio[0], bands) > 0.99
    def pairs(chosen: torch.Tensor, rejected: torch.Tensor) -> PairDataset:
        return PairDataset({"chosen.video": video, "chosen.audio": chosen, "rejected.video": video,
                            "rejected.audio": rejected}, [{} for _ in range(n_pairs)], [str(i) for i in range(n_pairs)])

    assert base.pair_wins(pairs(chosen_audio, rejected_audio), bands).tolist() == [1.0] * n_pairs
    assert base.pair_wins(pairs(rejected_audio, chosen_audio), bands).tolist() == [0.0] * n_pairs
