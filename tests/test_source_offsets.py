"""bench/source_offsets.py: each source's own audio-video offset from its untouched windows, no judge."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import source_offsets as so  # noqa: E402
from mouth_energy_baseline import LOWER_LIP, UPPER_LIP  # noqa: E402

from train.data import PairDataset  # noqa: E402
from train.landmarks import N_FEATURES  # noqa: E402
from train.preprocess import PreprocessConfig  # noqa: E402


def _windows(lags: dict[str, int], per_source: int = 4, t: int = 50, r: int = 4, n_mels: int = 40) -> PairDataset:
    """Untouched windows whose sound comes lags[source] frames after the mouth opens (noisy syllables)."""
    rng = np.random.default_rng(0)
    bands = so.speech_bands(PreprocessConfig(n_mels=n_mels))
    video, audio, metas = [], [], []
    for source, lag in lags.items():
        for w in range(per_source):
            syllables = np.convolve(rng.random(t + 20) > 0.6, np.ones(3), mode="same").astype(np.float32)
            pts = torch.zeros(t, N_FEATURES).view(t, -1, 2)
            pts[:, LOWER_LIP, 1] = torch.from_numpy(syllables[10: 10 + t]) / 2
            pts[:, UPPER_LIP, 1] = -torch.from_numpy(syllables[10: 10 + t]) / 2
            loud = syllables[10 - lag: 10 - lag + t] + 0.3 * rng.standard_normal(t).astype(np.float32)
            mel = torch.zeros(n_mels, r * t)
            mel[bands] = torch.from_numpy(np.repeat(loud, r))
            video.append(pts.reshape(t, -1))
            audio.append(mel)
            metas.append({"source_id": source, "window": [w, w + 2],
                          "ops": [{"name": "audio_shift", "params": {"offset_ms": 200.0 if w % 2 else -200.0}}]})
    v, a = torch.stack(video), torch.stack(audio)
    return PairDataset({"chosen.video": v, "chosen.audio": a, "rejected.video": v, "rejected.audio": a},
                       metas, [f"k{i}" for i in range(len(metas))])


def test_the_peak_lag_is_each_sources_own_offset_with_the_sign_of_eval_scores_offset():
    pairs = _windows({"late_sound": 3, "early_sound": -2, "in_sync": 0})
    bands = so.speech_bands(PreprocessConfig(n_mels=40))
    profiles = so.source_profiles(pairs, bands, max_lag=6)
    lags = {s: int(np.argmax(p)) - 6 for s, (_, p) in profiles.items()}
    assert lags == {"late_sound": 3, "early_sound": -2, "in_sync": 0}
    assert all(n == 4 for n, _ in profiles.values())
    n, prof = profiles["late_sound"]
    assert prof.max() > prof[6] + 0.3                                   # off by 3 frames: lag 0 correlates far less


def test_shift_direction_accuracy_pools_score_files_by_source_and_sign(tmp_path):
    pairs = _windows({"a": 0, "b": 0}, per_source=2)
    # pairs k0 (a, -200 ms), k1 (a, +200), k2 (b, -200), k3 (b, +200); the judge loses a's negative shift
    z = {"k0": (0.0, 1.0), "k1": (1.0, 0.0), "k2": (1.0, 0.0), "k3": (1.0, 0.0), "other": (0.0, 1.0)}
    report = tmp_path / "scores_test.jsonl"
    report.write_text("".join(json.dumps({"meta": {"key": k}, "z_chosen": c, "z_rejected": r}) + "\n"
                              for k, (c, r) in z.items()))
    cv = tmp_path / "held_out_scores.jsonl"                             # cv_judge's records name the pair at top level
    cv.write_text(json.dumps({"key": "k1", "z_chosen": -1.0, "z_rejected": 0.0}) + "\n")
    acc = so.shift_direction_accuracy(pairs, [str(report), str(cv)])
    assert acc == {"a": {"s<0": [0.0], "s>0": [1.0, 0.0]}, "b": {"s<0": [1.0], "s>0": [1.0]}}
