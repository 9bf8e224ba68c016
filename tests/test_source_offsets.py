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


# ----------------------------------------------------------------------------- the rule (--propose)
def _series(lag: int, n: int = 4, t: int = 50, noise: float = 0.3, seed: int = 0, foreign: bool = False):
    """n windows of (mouth opening, loudness) whose sound comes `lag` frames after the mouth opens
    (foreign: the loudness of other syllables, a voice that is not this face's)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        syl = np.convolve(rng.random(t + 20) > 0.6, np.ones(3), mode="same").astype(np.float64)
        other = np.convolve(rng.random(t + 20) > 0.6, np.ones(3), mode="same").astype(np.float64)
        voice = other if foreign else syl
        out.append((syl[10: 10 + t], voice[10 - lag: 10 - lag + t] + noise * rng.standard_normal(t)))
    return out


def _decide(series, max_lag: int = 12, rule=so.RULE):
    ev = so.evidence(so.window_profiles(series, max_lag), 40.0, "x")
    return ev, so.decide(ev, rule)


def test_the_rule_corrects_a_clear_stable_lag_and_nothing_else():
    ev, d = _decide(_series(3))                                         # sound 120 ms late, clear in every window
    assert (d.verdict, d.av_offset_ms) == ("corrected", 120.0) and d.bootstrap >= so.MIN_BOOTSTRAP_SHARE
    assert ev.r_peak >= so.MIN_PEAK_R and ev.r_peak >= so.MIN_PEAK_OVER_ZERO * ev.r_0
    assert _decide(_series(-4))[1].av_offset_ms == -160.0               # early sound: a negative offset
    for lag in (0, 1, -1):                                              # within a frame: in sync, nothing to move
        assert _decide(_series(lag))[1].verdict == "in sync"
    few = _decide(_series(3, n=so.MIN_WINDOWS - 1))[1]                  # too few windows to resample
    assert few.verdict == "unclear" and few.av_offset_ms is None and "windows" in few.reason
    foreign = _decide(_series(0, n=6, foreign=True, seed=3))[1]         # another voice: no peak worth trusting
    assert foreign.verdict == "unclear" and foreign.av_offset_ms is None
    # the thresholds are the rule's: a peak that barely beats lag 0 is not corrected
    ev, _ = _decide(_series(3))
    assert so.decide(ev, so.SyncRule(min_peak_over_zero=ev.r_peak / max(ev.r_0, 1e-3) + 1)).verdict == "unclear"


def test_propose_writes_offsets_evidence_and_sync_checks_into_the_manifest(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,group,sync_confidence,av_offset_ms,split\n"
                        "late.mp4,g1,,,test\n"
                        "old.mp4,g2,,80,train\n"              # an earlier correction the rule does not confirm
                        "sure.mp4,g3,LOW,,val\n"
                        "film.mp4,g4,medium,,train\n"
                        "short.mp4,g5,,,train\n")
    series = {"late.mp4": _series(3), "old.mp4": _series(0, seed=1), "sure.mp4": _series(0, seed=2),
              "film.mp4": _series(0, n=6, foreign=True, seed=3), "short.mp4": [], "unlisted.mp4": _series(3)}
    rows = {f: {"split": s, "sync_confidence": c} for f, s, c in
            (("late.mp4", "test", ""), ("old.mp4", "train", ""), ("sure.mp4", "val", "LOW"),
             ("film.mp4", "train", "medium"), ("short.mp4", "train", ""))}
    records = so.propose_rows(series, rows, max_lag=12, ms=40.0)
    by = {r["file"]: r for r in records}
    assert set(by) == set(rows)                                         # only what the manifest lists
    assert by["late.mp4"]["av_offset_ms"] == 120.0 and by["old.mp4"]["av_offset_ms"] is None
    assert (by["sure.mp4"]["sync_check"], by["film.mp4"]["sync_check"], by["late.mp4"]["sync_check"]) == ("pass", "fail", "")
    assert by["short.mp4"]["decision"] == "unclear" and by["short.mp4"]["windows"] == 0
    table = so.proposal_table(records, 12, 40.0)
    assert "| test | late.mp4 | 4 | +120 |" in table and "| corrected | +120 | - |" in table

    changes = so.write_proposals([str(manifest)], records)
    assert any("old.mp4: av_offset_ms 80 -> (empty)" in c for c in changes)
    from perturb.pipeline import read_manifest
    after = read_manifest(manifest)
    assert after["late.mp4"]["av_offset_ms"] == "120" and after["old.mp4"]["av_offset_ms"] == ""
    assert after["late.mp4"]["av_offset_evidence"].startswith(f"peak r {by['late.mp4']['r_peak']:.2f}, r at 0 ")
    assert after["late.mp4"]["av_offset_evidence"].endswith("bootstrap 100%, 4 windows")
    assert (after["sure.mp4"]["sync_check"], after["film.mp4"]["sync_check"]) == ("pass", "fail")
    assert after["late.mp4"]["group"] == "g1" and after["film.mp4"]["split"] == "train"    # the rest as it was
    assert so.write_proposals([str(manifest)], records) == []           # the same proposals again: no change


def test_tuning_reports_each_candidate_on_train_sources_only():
    series = {f"in_sync_{i}": _series(0, n=5, seed=10 + i) for i in range(3)}
    series["late"] = _series(3, n=5, seed=20)
    rows = so.tune(series, sorted(series), max_lag=12, ms=40.0)
    assert len(rows) == np.prod([len(v) for v in so.TUNE_GRID.values()])
    rule = next(r for r in rows if r["rule"])
    assert rule["corrected"] == ["late"]
    assert rule["n_synthetic"] == 3 * len(so.SYNTHETIC_MS) and rule["recall"] == 1.0  # clean synthetic offsets
    assert rule["n_null"] == 4 * 3 and rule["null"] <= so.MAX_NULL_RATE          # mouths with other sources' voices
    assert "| the rule |" in so.tune_table(rows)
