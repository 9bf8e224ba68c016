"""Metrics for judges: calibration (ECE, Brier), discrimination (AUC, pairwise accuracy),
correlations (Spearman / Pearson / Kendall), per-group tables, Wilson intervals for shares and a
paired bootstrap CI helper.

Conventions: `p` are probabilities of "yes" (the clip is fine), `y` are 0/1 labels (1 = original /
fine). ECE is the binary-calibration ECE on P(yes) with 15 equal-width bins over [0, 1]:
sum_b |B_b|/N * |mean(y in B_b) - mean(p in B_b)| (the last bin includes p = 1).
Functions return float("nan") where a metric is undefined (one class only, constant input, n < 2)
rather than raising, so that reports can always be written.

Weights `w` (optional, per sample): the calibration metrics and accuracy are then weighted means, as
on a sample reweighted to a stated prior (eval.calibration.prior_weights: the test clips weighted so
that originals carry the calibration's prior).

Intervals: a share (accuracy, pairwise accuracy) gets a Wilson score interval, which stays open at
0 % and 100 % (a bootstrap of 20 correct out of 20 resamples nothing but 100 %); with weights its n
is Kish's effective sample size (sum w)^2 / sum w^2. AUC's interval is its bootstrap interval widened
to at least the Wilson interval over min(n_pos, n_neg) comparisons (auc_with_ci).
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Callable, Iterable, Sequence

import numpy as np

N_BINS = 15
NAN = float("nan")


def _arr(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _weights(w, n: int) -> np.ndarray:
    return np.ones(n) if w is None else _arr(w)


def reliability_bins(p, y, n_bins: int = N_BINS, w=None) -> list[dict[str, float]]:
    """Equal-width bins over [0, 1]: [{lo, hi, n, weight, confidence (mean p), accuracy (mean y)}],
    means weighted by `w`."""
    p, y = _arr(p), _arr(y)
    w = _weights(w, len(p))
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        m = idx == b
        n, wt = int(m.sum()), float(w[m].sum())
        out.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": n, "weight": wt,
                    "confidence": float(np.average(p[m], weights=w[m])) if wt > 0 else NAN,
                    "accuracy": float(np.average(y[m], weights=w[m])) if wt > 0 else NAN})
    return out


def ece(p, y, n_bins: int = N_BINS, w=None) -> float:
    """Expected calibration error of P(yes) with `n_bins` equal-width bins (weighted by `w`)."""
    p, y = _arr(p), _arr(y)
    if len(p) == 0:
        return NAN
    bins = reliability_bins(p, y, n_bins, w)
    total = sum(b["weight"] * abs(b["accuracy"] - b["confidence"]) for b in bins if b["weight"] > 0)
    return float(total / sum(b["weight"] for b in bins))


def brier(p, y, w=None) -> float:
    p, y = _arr(p), _arr(y)
    return float(np.average((p - y) ** 2, weights=_weights(w, len(p)))) if len(p) else NAN


def nll(p, y, eps: float = 1e-12, w=None) -> float:
    p, y = np.clip(_arr(p), eps, 1 - eps), _arr(y)
    if not len(p):
        return NAN
    return float(-np.average(y * np.log(p) + (1 - y) * np.log(1 - p), weights=_weights(w, len(p))))


def auc(scores, y) -> float:
    """ROC AUC of `scores` for label 1 (NaN when only one class is present)."""
    s, y = _arr(scores), _arr(y)
    if len(s) == 0 or len(np.unique(y)) < 2:
        return NAN
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s))


def pairwise_accuracy(s_chosen, s_rejected) -> float:
    """Fraction of pairs where the chosen clip scores higher (ties count 1/2)."""
    a, b = _arr(s_chosen), _arr(s_rejected)
    if len(a) == 0:
        return NAN
    return float(np.mean((a > b) + 0.5 * (a == b)))


def accuracy(p, y, threshold: float = 0.5, w=None) -> float:
    """Accuracy of the decision p >= threshold -> yes (1), weighted by `w`."""
    p, y = _arr(p), _arr(y)
    return float(np.average((p >= threshold) == (y > 0.5), weights=_weights(w, len(p)))) if len(p) else NAN


def _constant(x: np.ndarray) -> bool:
    return len(x) < 2 or bool(np.all(x == x[0]))


def spearman(x, y) -> float:
    x, y = _arr(x), _arr(y)
    if len(x) < 2 or _constant(x) or _constant(y):
        return NAN
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def pearson(x, y) -> float:
    x, y = _arr(x), _arr(y)
    if len(x) < 2 or _constant(x) or _constant(y):
        return NAN
    from scipy.stats import pearsonr

    return float(pearsonr(x, y).statistic)


def kendall(x, y) -> float:
    x, y = _arr(x), _arr(y)
    if len(x) < 2 or _constant(x) or _constant(y):
        return NAN
    from scipy.stats import kendalltau

    return float(kendalltau(x, y).statistic)


def correlations(x, y) -> dict[str, float]:
    return {"srcc": spearman(x, y), "plcc": pearson(x, y), "krcc": kendall(x, y), "n": len(_arr(x))}


def bootstrap_ci(stat: Callable[..., float], *arrays, n_boot: int = 1000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) CI of stat(*arrays), resampling rows jointly (paired).

    Resamples where the statistic is undefined (NaN) are dropped; (nan, nan) if none is defined.
    """
    arrs = [np.asarray(a) for a in arrays]
    n = len(arrs[0])
    if n == 0 or any(len(a) != n for a in arrs):
        return (NAN, NAN)
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        v = stat(*[a[idx] for a in arrs])
        if v is not None and np.isfinite(v):
            vals.append(v)
    if not vals:
        return (NAN, NAN)
    lo, hi = np.percentile(vals, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return (float(lo), float(hi))


def with_ci(stat: Callable[..., float], *arrays, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """{"value", "ci95": [lo, hi], "n"} for stat over arrays."""
    lo, hi = bootstrap_ci(stat, *arrays, n_boot=n_boot, seed=seed)
    return {"value": stat(*[np.asarray(a) for a in arrays]), "ci95": [lo, hi],
            "n": int(len(arrays[0]))}


def wilson(k: float, n: float, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval (95 % by default) of a share k / n; (nan, nan) when n is 0. Unlike a
    bootstrap or the normal approximation it does not collapse at k = 0 or k = n (20 / 20 gives
    [0.839, 1])."""
    if not n > 0:
        return (NAN, NAN)
    phat = min(max(k / n, 0.0), 1.0)
    denom = 1.0 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def effective_n(w) -> float:
    """Kish's effective sample size (sum w)^2 / sum w^2 of weights w."""
    w = _arr(w)
    return float(w.sum() ** 2 / (w ** 2).sum()) if len(w) and (w ** 2).sum() > 0 else 0.0


def share_with_ci(hits, w=None) -> dict[str, Any]:
    """{"value", "ci95", "n", "interval": "wilson"} of a share: hits are 0 / 1 (or 1/2 for a tie),
    weighted by `w` (the interval then uses the effective n)."""
    h = _arr(hits)
    if not len(h):
        return {"value": NAN, "ci95": [NAN, NAN], "n": 0, "interval": "wilson"}
    ww = _weights(w, len(h))
    value = float(np.average(h, weights=ww))
    n_eff = len(h) if w is None else effective_n(ww)
    lo, hi = wilson(value * n_eff, n_eff)
    return {"value": value, "ci95": [lo, hi], "n": int(len(h)), "interval": "wilson"}


def pairwise_accuracy_with_ci(s_chosen, s_rejected) -> dict[str, Any]:
    """Pairwise accuracy (ties 1/2) with its Wilson interval over the pairs."""
    a, b = _arr(s_chosen), _arr(s_rejected)
    return share_with_ci((a > b) + 0.5 * (a == b))


def accuracy_with_ci(p, y, threshold: float = 0.5, w=None) -> dict[str, Any]:
    """Accuracy at `threshold` (weighted by `w`) with its Wilson interval."""
    p, y = _arr(p), _arr(y)
    return share_with_ci((p >= threshold) == (y > 0.5), w)


def auc_with_ci(scores, y, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """AUC with the hull of its bootstrap interval and the Wilson interval of a share over
    min(n_pos, n_neg) comparisons: as many disjoint (positive, negative) pairs as the sample holds,
    whose share has a larger variance than the AUC's (all pairs), so the interval errs wide, and it
    stays open at AUC 1 where every bootstrap resample gives 1."""
    s, y = _arr(scores), _arr(y)
    out = with_ci(auc, s, y, n_boot=n_boot, seed=seed)
    n_min = int(min((y > 0.5).sum(), (y <= 0.5).sum()))
    if math.isfinite(out["value"]) and n_min > 0:
        wlo, whi = wilson(out["value"] * n_min, n_min)
        blo, bhi = out["ci95"]
        out["ci95"] = [min(wlo, blo) if math.isfinite(blo) else wlo, max(whi, bhi) if math.isfinite(bhi) else whi]
    out["interval"] = "bootstrap, widened to Wilson over min(n_pos, n_neg)"
    return out


# ----------------------------------------------------------------------------- group tables
def group_table(records: Sequence[dict[str, Any]], key: str | Callable[[dict], Any],
                score: str = "score", label: str = "label", threshold: float = 0.5
                ) -> list[dict[str, Any]]:
    """Per-group rows {group, n, mean_score, std_score, accuracy, positive_rate} over clip records.

    accuracy: decision score >= threshold against `label`; groups sorted by their key.
    """
    groups: dict[Any, list[dict]] = defaultdict(list)
    for r in records:
        g = key(r) if callable(key) else r.get(key)
        groups[g].append(r)
    rows = []
    for g in sorted(groups, key=lambda v: (v is None, str(type(v)), v if v is not None else 0)):
        rs = groups[g]
        s = _arr([r[score] for r in rs])
        y = _arr([r[label] for r in rs])
        rows.append({"group": g, "n": len(rs), "mean_score": float(s.mean()),
                     "std_score": float(s.std()), "accuracy": accuracy(s, y, threshold),
                     "positive_rate": float(y.mean())})
    return rows


def ladder_correlations(records: Sequence[dict[str, Any]], score: str = "score",
                        value: str = "defect", n_boot: int = 0) -> dict[str, dict[str, Any]]:
    """Per operator: Spearman(score, defect size) along its ladder, originals included at defect 0.

    Originals are records with severity 0 (operator None); they join every operator's ladder.
    A good judge has a negative rho (score falls as the defect grows). Also Spearman against the
    severity level itself.
    """
    originals = [r for r in records if int(r.get("severity", 0)) == 0]
    ops = sorted({r["operator"] for r in records if int(r.get("severity", 0)) > 0 and r.get("operator")})
    out = {}
    for op in ops:
        rs = originals + [r for r in records if r.get("operator") == op and int(r.get("severity", 0)) > 0]
        s = _arr([r[score] for r in rs])
        d = _arr([(0.0 if int(r.get("severity", 0)) == 0 else (r.get(value) if r.get(value) is not None else NAN)) for r in rs])
        sev = _arr([r.get("severity", 0) for r in rs])
        ok = np.isfinite(d)
        row: dict[str, Any] = {
            "n": int(len(rs)), "n_originals": len(originals),
            "spearman_defect": spearman(s[ok], d[ok]),
            "spearman_severity": spearman(s, sev),
            "kendall_defect": kendall(s[ok], d[ok]),
        }
        if n_boot:
            row["spearman_defect_ci95"] = list(bootstrap_ci(spearman, s[ok], d[ok], n_boot=n_boot))
        row["falls_with_defect"] = bool(row["spearman_defect"] < 0) if math.isfinite(row["spearman_defect"]) else None
        out[op] = row
    return out


def fmt(v: Any, digits: int = 3) -> str:
    """Compact number formatting for markdown tables."""
    if v is None:
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "nan" if not math.isfinite(v) else f"{v:.{digits}f}"
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return f"[{fmt(v[0], digits)}, {fmt(v[1], digits)}]"
    return str(v)


def md_table(rows: Iterable[dict[str, Any]], columns: Sequence[str], headers: Sequence[str] | None = None
             ) -> str:
    rows = list(rows)
    headers = list(headers or columns)
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c)) for c in columns) + " |")
    return "\n".join(lines)
