"""bench/fuse_judges.py: late fusion of judges from their eval reports' per-pair logits."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import fuse_judges  # noqa: E402


def write_report(folder: Path, z_fn, seed: int) -> Path:
    """A report folder with scores_val/test.jsonl: 40 windows x 2 operators; z_fn(defect, rng) is the
    judge's logit for a clip of that defect (0 = the original)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for split in ("val", "test"):
        lines = []
        for w in range(40):
            z0 = z_fn(0.0, rng)
            for j, op in enumerate(("audio_shift", "lip_drift")):
                sev = 1 + (w + j) % 5
                defect = 40.0 * 2 ** sev
                meta = {"key": f"src{w % 4}__w{w:03d}__p{j}", "source_id": f"src{w % 4}", "window": [w, w + 2],
                        "kind": "original_vs_perturbed", "operator": op, "severity": sev, "chosen_severity": 0,
                        "defect": defect, "chosen_defect": 0.0}
                lines.append(json.dumps({"meta": meta, "z_chosen": z0, "z_rejected": z_fn(defect, rng)}))
        (folder / f"scores_{split}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_one_report_is_its_own_pairwise_accuracy(tmp_path):
    rep = write_report(tmp_path / "a", lambda d, rng: -d / 100 + rng.normal(0, 1.0), seed=0)
    fused, _ = fuse_judges.fuse([rep])
    pairs = fuse_judges.read_pairs(rep, "test")
    expected = np.mean([p["z_chosen"] > p["z_rejected"] for p in pairs.values()])
    s = fuse_judges.summary(fused)
    assert s["pairwise"] == pytest.approx(expected)
    assert s["n_pairs"] == len(pairs) == 80
    assert s["spearman_defect"]["audio_shift"] < -0.5   # the logit falls with the defect


def test_scale_is_removed_and_independent_errors_average_out(tmp_path):
    # two judges with independent noise; one on a 1000x larger scale: fusion must not let it dominate
    a = write_report(tmp_path / "a", lambda d, rng: -d / 400 + rng.normal(0, 1.0), seed=1)
    b = write_report(tmp_path / "b", lambda d, rng: 1000 * (-d / 400 + rng.normal(0, 1.0)), seed=2)
    acc = {r.name: fuse_judges.summary(fuse_judges.fuse([r])[0])["pairwise"] for r in (a, b)}
    b_unit = write_report(tmp_path / "b_unit", lambda d, rng: -d / 400 + rng.normal(0, 1.0), seed=2)
    fused, scales = fuse_judges.fuse([a, b])
    assert scales[1] / scales[0] == pytest.approx(1000, rel=0.3)
    same = fuse_judges.fuse([a, b_unit])[0]
    assert all(fused[k]["z_chosen"] == pytest.approx(same[k]["z_chosen"]) for k in fused)
    assert fuse_judges.summary(fused)["pairwise"] >= max(acc.values())


def test_reports_of_different_pairs_are_refused(tmp_path):
    a = write_report(tmp_path / "a", lambda d, rng: -d, seed=0)
    b = tmp_path / "b"
    b.mkdir()
    for split in ("val", "test"):
        lines = (a / f"scores_{split}.jsonl").read_text().splitlines()[:10]
        (b / f"scores_{split}.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit, match="same test pairs"):
        fuse_judges.fuse([a, b])
