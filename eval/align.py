"""Agreement between judge scores and human ratings (`python -m eval align`).

Scores: the output of `python -m eval score` (JSON lines {"path", "scores": {dim: p}} or its CSV
form with a `path` column and one column per dimension). Lines with an "error" are skipped.

Ratings CSV, one of two formats, told apart by the header:

  Absolute ratings (e.g. MOS):       path,rating
                                     clips/a.mp4,4.2
      -> SRCC (Spearman), PLCC (Pearson), KRCC (Kendall tau-b) with bootstrap 95 % CIs.
  A/B preferences:                   path_a,path_b,preferred
                                     clips/a.mp4,clips/b.mp4,a
      preferred is "a" or "b" (case-insensitive; "=" / "tie" rows are counted as ties and left
      out of the agreement, "skip" rows -- a rater passed on the pair, `python -m eval.app` -- are
      counted as skipped and left out) -> pairwise agreement (fraction of pairs where the preferred
      video has the higher score; equal scores count 1/2) with a bootstrap 95 % CI.

Several rows may rate the same path (their ratings are averaged for absolute ratings). Paths are
matched exactly, then by resolved absolute path, then by file name when that name is unique
among the scored videos. Ratings whose video has no score are reported as "unmatched".
"""
from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics as M


def read_scores(path: str | Path) -> dict[str, dict[str, float]]:
    """{video path: {dim: score}} from score's JSON lines or CSV output."""
    path = Path(path)
    out: dict[str, dict[str, float]] = {}
    text = path.read_text()
    if path.suffix.lower() == ".csv":
        for row in csv.DictReader(text.splitlines()):
            if row.get("error"):
                continue
            scores = {}
            for k, v in row.items():
                if k in ("path", "error") or v in (None, ""):
                    continue
                try:
                    scores[k] = float(v)
                except ValueError:
                    continue
            out[row["path"]] = scores
        return out
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        rec = json.loads(line)
        if rec.get("error") and not rec.get("scores"):
            continue
        out[rec["path"]] = {k: float(v) for k, v in (rec.get("scores") or {}).items()
                            if v is not None}
    return out


def read_ratings(path: str | Path) -> tuple[str, list[dict[str, str]]]:
    """("mos", rows with path, rating) or ("ab", rows with path_a, path_b, preferred)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
        header = set(rows[0].keys()) if rows else set()
    if not rows:
        raise ValueError(f"no rows in ratings file {path}")
    if {"path", "rating"} <= header:
        return "mos", rows
    if {"path_a", "path_b", "preferred"} <= header:
        return "ab", rows
    raise ValueError(f"ratings CSV needs the header 'path,rating' or 'path_a,path_b,preferred'; "
                     f"got {sorted(header)}")


class _Matcher:
    def __init__(self, scored: dict[str, float]) -> None:
        self.exact = scored
        self.resolved = {os.path.realpath(p): s for p, s in scored.items()}
        names = defaultdict(list)
        for p, s in scored.items():
            names[os.path.basename(p)].append(s)
        self.by_name = {n: v[0] for n, v in names.items() if len(v) == 1}

    def get(self, p: str) -> float | None:
        if p in self.exact:
            return self.exact[p]
        r = os.path.realpath(p)
        if r in self.resolved:
            return self.resolved[r]
        return self.by_name.get(os.path.basename(p))


def pick_dim(scores: dict[str, dict[str, float]], dim: str | None) -> str:
    dims = sorted({d for s in scores.values() for d in s})
    if dim:
        if dim not in dims:
            raise ValueError(f"dimension {dim!r} not in scores (have {dims})")
        return dim
    if len(dims) != 1:
        raise ValueError(f"scores hold several dimensions {dims}: pass --dim")
    return dims[0]


def align(scores_path: str | Path, ratings_path: str | Path, dim: str | None = None,
          n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Correlations (absolute ratings) or pairwise agreement (A/B) with bootstrap 95 % CIs."""
    all_scores = read_scores(scores_path)
    dim = pick_dim(all_scores, dim)
    m = _Matcher({p: s[dim] for p, s in all_scores.items() if dim in s})
    kind, rows = read_ratings(ratings_path)
    out: dict[str, Any] = {"dim": dim, "kind": kind, "scores": str(scores_path),
                           "ratings": str(ratings_path), "n_boot": n_boot}
    if kind == "mos":
        ratings: dict[str, list[float]] = defaultdict(list)
        for r in rows:
            ratings[r["path"].strip()].append(float(r["rating"]))
        xs, ys, unmatched = [], [], []
        for p, rs in ratings.items():
            s = m.get(p)
            if s is None or not np.isfinite(s):
                unmatched.append(p)
                continue
            xs.append(s)
            ys.append(float(np.mean(rs)))
        x, y = np.array(xs), np.array(ys)
        out.update({"n": len(x), "unmatched": unmatched})
        for name, fn in (("srcc", M.spearman), ("plcc", M.pearson), ("krcc", M.kendall)):
            lo, hi = M.bootstrap_ci(fn, x, y, n_boot=n_boot, seed=seed)
            out[name] = {"value": fn(x, y), "ci95": [lo, hi]}
        return out
    sa, sb, unmatched, ties, skipped = [], [], [], 0, 0
    for r in rows:
        pref = r["preferred"].strip().lower()
        if pref == "skip":  # no judgement at all, not even "the same"
            skipped += 1
            continue
        a, b = m.get(r["path_a"].strip()), m.get(r["path_b"].strip())
        if a is None or b is None:
            unmatched.append([r["path_a"], r["path_b"]])
            continue
        if pref in ("a", "b"):
            # orient each pair as (preferred, other)
            sa.append(a if pref == "a" else b)
            sb.append(b if pref == "a" else a)
        elif pref in ("=", "tie", "same", "none", ""):
            ties += 1
        else:
            raise ValueError(f"preferred must be 'a' or 'b', got {r['preferred']!r}")
    x, y = np.array(sa), np.array(sb)
    lo, hi = M.bootstrap_ci(M.pairwise_accuracy, x, y, n_boot=n_boot, seed=seed)
    out.update({"n": len(x), "human_ties": ties, "skipped": skipped, "unmatched": unmatched,
                "pairwise_agreement": {"value": M.pairwise_accuracy(x, y), "ci95": [lo, hi]}})
    return out
