"""bench/sync_offsets.py: the clip-level pair table computed from scored clip versions."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import sync_offsets  # noqa: E402

OFFSETS = (-480, -120, 0, 120, 480)


def records(score_of) -> list[dict]:
    return [{"file": f"clip{c}.mp4", "true_ms": float(o), "score": score_of(c, o)}
            for c in range(4) for o in OFFSETS]


def table_row(recs: list[dict]) -> list[str]:
    lines = sync_offsets.clip_pair_table(recs, n_boot=200)
    assert lines[0].startswith("| clip-level pairs") and len(lines) == 3
    return [cell.strip() for cell in lines[2].strip("|").split("|")]


def test_shares_count_untouched_wins_per_shift_and_beyond_160_ms():
    # clip 0's copy shifted by +120 ms beats its untouched version; everything else loses
    def score(c, o):
        return 1.1 if (c, o) == (0, 120) else 1.0 - abs(o) / 1000 - 0.1 * c

    cells = table_row(records(score))
    assert cells[1] == "0.88 (7/8)"          # 120 ms: 8 comparisons, one lost
    assert cells[2] == "1.00 (8/8)"          # 480 ms
    assert cells[3].startswith("1.000 (8/8)")  # beyond 160 ms = the 480 ms ones only
    assert cells[4].startswith("0.938 (15/16)")


def test_spearman_is_over_every_version_and_its_ci_contains_it():
    rng = np.random.default_rng(3)
    base = rng.normal(size=4)
    recs = records(lambda c, o: float(base[c] - abs(o) / 300 + 0.2 * rng.normal()))
    cells = table_row(recs)
    expected = spearmanr([r["score"] for r in recs], [abs(r["true_ms"]) for r in recs]).statistic
    value, ci = cells[5].split(" [")
    lo, hi = (float(v) for v in ci.split("]")[0].split(", "))
    assert float(value) == round(expected, 2)
    assert lo <= float(value) <= hi


def test_a_swapped_copy_carries_the_donor_soundtrack_looped_to_the_clip_length(tmp_path):
    from perturb import media
    from tests.media_fixtures import make_video

    clip = make_video(tmp_path / "clip.mp4", seconds=3.0, seed=1)
    donor = make_video(tmp_path / "donor.mp4", seconds=1.2, seed=2)
    out = sync_offsets.swapped_copy(clip, donor, tmp_path / "swap.mp4")
    sr = media.CANONICAL_SR
    got, own, theirs = (media.decode_audio(p, sr=sr) for p in (out, clip, donor))
    assert abs(len(got) - len(own)) <= sr // 50                      # the clip's length (+- AAC padding)
    assert media.probe(out).duration == pytest.approx(media.probe(clip).duration, abs=0.1)

    def corr(a, b):
        n = min(len(a), len(b))
        return float(np.corrcoef(a[:n], b[:n])[0, 1])

    # the second pass of the loop (from 1.2 s on) is the donor again, and nothing of the clip's own sound
    loop = int(round(1.2 * sr))
    assert corr(got[loop:], theirs) > 0.9
    assert abs(corr(got, own)) < 0.3
