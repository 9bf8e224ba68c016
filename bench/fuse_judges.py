"""Late fusion of judges measured on the same shards: pairwise accuracy of the summed logits.

    python bench/fuse_judges.py REPORT [REPORT ...] [--label NAME]

Each REPORT is a `python -m eval evaluate` report folder (its scores_val.jsonl / scores_test.jsonl
hold every pair's logits). Each judge's logit is divided by its standard deviation over the val
clips (so no judge dominates by scale; no labels are used), the scaled logits are averaged, and the
fused judge is measured as eval reports a single one: val pairwise accuracy, and on test pairwise
accuracy overall, per severity, per operator and beyond 160 ms (severity >= 3), and
Spearman(logit, defect) per operator over the test clips. With one REPORT it reproduces that report's pairwise numbers.
Used for the fused rows of BENCHMARKS.md (landmarks + light_asd, and seed ensembles).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr


def read_pairs(report: Path, split: str) -> dict[str, dict]:
    path = report / f"scores_{split}.jsonl"
    if not path.exists():
        raise SystemExit(f"{path} is missing: re-run python -m eval evaluate for {report}")
    return {r["meta"]["key"]: r for r in map(json.loads, path.read_text().splitlines())}


def clip_logits(pairs: dict[str, dict]) -> dict[tuple, tuple[float, float, str | None]]:
    """One entry per clip: (source, window, side) -> (logit, defect, operator). A window's original is
    the chosen side of several pairs and is counted once."""
    out = {}
    for key, p in pairs.items():
        m = p["meta"]
        where = (m["source_id"], tuple(m["window"]))
        out[(*where, "original")] = (p["z_chosen"], m.get("chosen_defect") or 0.0, None)
        out[(*where, key)] = (p["z_rejected"], m["defect"], m["operator"])
    return out


def fuse(reports: list[Path], split: str = "test") -> tuple[dict[str, dict], list[float]]:
    """Average of the val-std-scaled logits of each judge, per pair of `split`."""
    pairs, scales = [], []
    for rep in reports:
        val = read_pairs(rep, "val")
        z_val = np.array([z for z, _, _ in clip_logits(val).values()])
        scales.append(float(z_val.std()) or 1.0)
        pairs.append(val if split == "val" else read_pairs(rep, split))
    keys = sorted(set.intersection(*(set(t) for t in pairs)))
    if not keys or any(len(t) != len(keys) for t in pairs):
        raise SystemExit(f"the reports were not measured on the same {split} pairs (same shards?)")
    fused = {}
    for k in keys:
        fused[k] = dict(pairs[0][k], z_chosen=float(np.mean([t[k]["z_chosen"] / s for t, s in zip(pairs, scales)])),
                        z_rejected=float(np.mean([t[k]["z_rejected"] / s for t, s in zip(pairs, scales)])))
    return fused, scales


def summary(pairs: dict[str, dict]) -> dict[str, object]:
    rows = list(pairs.values())
    win = np.array([r["z_chosen"] > r["z_rejected"] for r in rows], dtype=float)
    sev = np.array([r["meta"]["severity"] for r in rows])
    ops = np.array([r["meta"]["operator"] for r in rows])
    out: dict[str, object] = {"n_pairs": len(rows), "pairwise": float(win.mean()),
                              "beyond_160ms": float(win[sev >= 3].mean()) if (sev >= 3).any() else None}
    out["per_severity"] = {int(s): float(win[sev == s].mean()) for s in sorted(set(sev))}
    out["per_operator"] = {str(o): float(win[ops == o].mean()) for o in sorted(set(ops))}
    clips = clip_logits(pairs)
    spearman = {}
    for op in sorted(set(ops)):
        pts = [(z, d) for (_, _, side), (z, d, o) in clips.items() if o == op or side == "original"]
        z, d = np.array(pts).T
        spearman[str(op)] = float(spearmanr(z, d).statistic)
    out["spearman_defect"] = spearman
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+", type=Path)
    ap.add_argument("--label", default=None, help="row name (default: the report folder names joined by +)")
    args = ap.parse_args(argv)
    fused, scales = fuse(args.reports)
    s = summary(fused)
    val = summary(fuse(args.reports, "val")[0])["pairwise"]
    label = args.label or "+".join(r.name for r in args.reports)
    print(json.dumps({"label": label, "val_std": scales, "val_pairwise": val, **s}, indent=1))
    sev = " / ".join(f"{v:.2f}" for v in s["per_severity"].values())
    ops = ", ".join(f"{k} {v:.2f}" for k, v in s["per_operator"].items())
    rho = ", ".join(f"{k} {v:.2f}" for k, v in s["spearman_defect"].items())
    print(f"| {label} | {val:.3f} | {s['pairwise']:.3f} | {s['beyond_160ms']:.3f} | {sev} | {ops} | {rho} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
