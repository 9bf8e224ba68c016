"""`python -m eval evaluate`: score val + test with a trained judge, calibrate on val, report on test,
export the calibrated judge.

Inputs: shards `<shards>/<split>-%06d.tar` (+ card.json) read through train.data.load_split, and a
run dir `<run>/model/` (AVJudge.save_pretrained + preprocessing.json) with `<run>/metrics.json`.

Clips and labels. Every pair gives two clips; a clip's label is 1 ("yes, fine") when it is an
original (severity 0) and 0 when it carries any perturbation (graded pairs' milder chosen sides
included). Clips shared by several pairs (an original window paired with several perturbations)
are counted once: key (source_id, window, ops). Pairwise accuracy is over pairs.

Calibration: the three calibrators (temperature, Platt, isotonic) are fitted on the VAL clips only,
at a stated prior P(yes) (`prior`, default 0.5: val clips weighted so that originals and perturbed
clips count equally; eval.calibration), and all reported on TEST (ECE with 15 bins, Brier, NLL,
accuracy at 0.5, before and after), with the test clips weighted to the same prior, so that the
numbers describe the scores as they are meant to be read. Each method's NLL is also cross-validated
on val (folds by source): the report remarks when another method does better there than the exported
one. If val has no clip or a single class, calibration cannot be fitted: the export is then
uncalibrated (method "none") and the report says so.

Small samples: shares (accuracies) get Wilson intervals, AUC a bootstrap interval widened to a
Wilson one (eval.metrics); the report warns when test has fewer than MIN_TEST_PAIRS pairs or
MIN_TEST_ORIGINALS original clips.

Outputs: <report>/report.md, report.json and PNG plots; <export>/ model.safetensors + config.json,
preprocessing.json, calibration.json, metrics.json, README.md (model card).

Whole clips (`--whole-clips`): each pair clip is scored as `python -m eval score` scores a video --
cut into the judge's windows, one clip decision from their evidence (eval.scorer.Scorer.score_file) --
instead of being cut or padded to one window. For pair clips longer than the judge's window (the
av_consistency recipe's 5 s clips, a judge trained on 2 s windows); the calibration is then fitted
on the same clip logits that `score` calibrates.

Broken samples (bad json, a side missing, unreadable mp4) are left out of every number, counted
in report.json "bad_samples" and listed in <report>/bad_samples.jsonl; more than
`max_bad_fraction` of a split stops the evaluation (train.data.TooManyBadSamples).
"""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import metrics as M
from .calibration import (DEFAULT_METHOD, DEFAULT_PRIOR, METHODS, Calibrator, IdentityCalibration,
                          check_prior, fit_calibrator, prior_weights, sigmoid)

N_BOOT = 1000
MIN_TEST_PAIRS = 50      # fewer test pairs, or fewer untouched test clips, and the report warns:
MIN_TEST_ORIGINALS = 10  # its intervals are wide and one source can move every number
CV_FOLDS = 5             # folds (by source) of the cross-validated val NLL that compares the calibrators


# ----------------------------------------------------------------------------- scoring
def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"meta": [it["meta"] for it in items]}
    for side in ("chosen", "rejected"):
        out[side] = {k: torch.stack([torch.as_tensor(it[side][k]) for it in items])
                     for k in ("video", "audio")}
    return out


def score_pairs(model, dataset, batch_size: int = 16, desc: str = "", num_workers: int = 0,
                progress: bool = True, device: str = "cpu") -> list[dict[str, Any]]:
    """[{"meta", "z_chosen", "z_rejected"}] for every pair of a PairDataset (no grad, batched)."""
    import torch
    from torch.utils.data import DataLoader

    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=_collate,
                        num_workers=num_workers)
    it = loader
    if progress and tqdm is not None:
        it = tqdm(loader, desc=f"scoring {desc}".strip(), unit="batch", file=sys.stderr,
                  total=math.ceil(len(dataset) / batch_size) if hasattr(dataset, "__len__") else None)
    model.eval()
    out = []
    with torch.no_grad():
        for batch in it:
            zc = model.decision_logit(batch["chosen"]["video"].to(device),
                                      batch["chosen"]["audio"].to(device)).float().cpu().numpy()
            zr = model.decision_logit(batch["rejected"]["video"].to(device),
                                      batch["rejected"]["audio"].to(device)).float().cpu().numpy()
            for meta, a, b in zip(batch["meta"], zc.reshape(-1), zr.reshape(-1)):
                out.append({"meta": dict(meta), "z_chosen": float(a), "z_rejected": float(b)})
    return out


def score_pair_clips(model, cfg, shards: str | Path, split: str, progress: bool = True, device: str = "cpu",
                     max_bad_fraction: float | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """([{"meta", "z_chosen", "z_rejected"}], bad samples) for every pair of a split, each clip scored
    whole as `eval score` scores a video (Scorer.score_file's clip logit); a clip shared by several
    pairs (a window's original) is scored once."""
    import hashlib
    import tempfile

    from perturb.shard_format import BadSample, location_name
    from train.data import SIDES, check_bad_share, iter_raw_pairs

    from .scorer import Scorer

    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    scorer = Scorer(model, cfg, device=device)
    logit_of: dict[str, float] = {}
    pairs, bad = [], []
    items = iter_raw_pairs(shards, split)
    if progress and tqdm is not None:
        items = tqdm(items, desc=f"scoring {split} (whole clips)", unit="pair", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="avbench_clips_") as tmp:
        def clip_logit(data: bytes) -> float:
            digest = hashlib.sha256(data).hexdigest()
            if digest not in logit_of:
                clip = Path(tmp) / "clip.mp4"
                clip.write_bytes(data)
                try:
                    logit_of[digest] = float(scorer.score_file(clip)["logit"])
                except Exception as err:  # the reason names the member, not this temporary file
                    text = str(err).replace(str(clip), "the clip").strip()
                    raise BadSample(text.splitlines()[-1] if text else type(err).__name__) from None
            return logit_of[digest]

        for item in items:
            if "bad" in item:
                bad.append({"split": split, **item["bad"]})
                continue
            try:
                z = {}
                for side in SIDES:
                    z[side] = clip_logit(item[f"{side}.mp4"])
            except BadSample as err:  # an unreadable clip is one bad sample, as in the tensor cache
                bad.append({"split": split, "shard": location_name(item["url"]), "key": item["key"],
                            "reason": f"{side}.mp4: {err}"})
                continue
            pairs.append({"meta": dict(item["meta"], __key__=item["key"]), "z_chosen": z["chosen"],
                          "z_rejected": z["rejected"]})
    check_bad_share(split, bad, len(pairs) + len(bad), max_bad_fraction)
    return pairs, bad


# ----------------------------------------------------------------------------- clip records
def _op_name(ops: Sequence[dict[str, Any]] | None) -> str | None:
    return "+".join(r["name"] for r in ops) if ops else None


def clip_records(pairs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Deduplicated single clips of pairs: {key, z, label, severity, operator, defect, source_id}."""
    seen: dict[str, dict[str, Any]] = {}
    for p in pairs:
        m = p["meta"]
        sides = (
            ("chosen", p["z_chosen"], int(m.get("chosen_severity", 0) or 0), m.get("chosen_ops") or [],
             m.get("chosen_defect", 0.0)),
            ("rejected", p["z_rejected"], int(m.get("severity", 1) or 1), m.get("ops") or [],
             m.get("defect")),
        )
        for side, z, sev, ops, defect in sides:
            if sev == 0:
                ops, defect = [], 0.0
            key = json.dumps([m.get("source_id"), m.get("window"), ops], sort_keys=True, default=str)
            if key in seen:
                continue
            operator = None
            if sev > 0:
                operator = m.get("operator") if side == "rejected" else (_op_name(ops) or m.get("operator"))
            seen[key] = {"key": key, "z": float(z), "label": 1 if sev == 0 else 0, "severity": sev,
                         "operator": operator, "defect": None if defect is None else float(defect),
                         "source_id": m.get("source_id"), "kind": m.get("kind")}
    return list(seen.values())


def _za(records, field="z"):
    return np.array([r[field] for r in records], dtype=np.float64)


def _labels(records):
    return np.array([r["label"] for r in records], dtype=np.float64)


# ----------------------------------------------------------------------------- calibration
def fit_calibrators(val_clips: Sequence[dict[str, Any]], prior: float | None = DEFAULT_PRIOR
                    ) -> tuple[dict[str, Calibrator], str | None]:
    """All three calibrators fitted on val clips only, at `prior`; (calibrators, warning or None)."""
    z, y = _za(val_clips), _labels(val_clips)
    if len(z) == 0 or len(np.unique(y)) < 2:
        why = "no val clips" if len(z) == 0 else f"val has a single class (label {int(y[0])})"
        warning = f"calibration not fitted ({why}): scores are uncalibrated sigmoid(z)"
        return {m: IdentityCalibration() for m in METHODS}, warning
    return {m: fit_calibrator(m, z, y, fitted_on="val", prior=prior) for m in METHODS}, None


def calibration_table(cals: dict[str, Calibrator], clips: Sequence[dict[str, Any]],
                      prior: float | None = DEFAULT_PRIOR) -> dict[str, dict[str, Any]]:
    """ECE, Brier, NLL and accuracy at 0.5 of each calibrator on `clips` weighted to `prior`."""
    z, y = _za(clips), _labels(clips)
    w = prior_weights(y, prior)
    out = {}
    for name, cal in [("none", IdentityCalibration()), *cals.items()]:
        p = cal.transform(z) if len(z) else np.zeros(0)
        out[name] = {"ece": M.ece(p, y, w=w), "brier": M.brier(p, y, w=w), "nll": M.nll(p, y, w=w),
                     "accuracy_at_0.5": M.accuracy(p, y, w=w), "method": cal.method,
                     "params": cal.params, "n_fit": cal.n}
    return out


def cross_validated_nll(val_clips: Sequence[dict[str, Any]], prior: float | None = DEFAULT_PRIOR,
                        folds: int = CV_FOLDS) -> dict[str, float] | None:
    """Each method's NLL on val (weighted to `prior`) when every clip is calibrated by a fit on the
    other folds (folds by source, so a source's windows are never fitted and judged at once): an
    honest comparison of the methods on val, where the in-sample NLL always favours isotonic.
    None when val has fewer than two sources."""
    sources = sorted({str(r.get("source_id")) for r in val_clips})
    if len(sources) < 2:
        return None
    fold_of = {s: i % min(folds, len(sources)) for i, s in enumerate(sources)}
    fold = np.array([fold_of[str(r.get("source_id"))] for r in val_clips])
    z, y = _za(val_clips), _labels(val_clips)
    out = {}
    for m in METHODS:
        p = np.full(len(z), np.nan)
        for k in np.unique(fold):
            fit = fold != k
            if len(np.unique(y[fit])) < 2:  # a fold whose rest holds one class: nothing to fit, left out
                continue
            p[~fit] = fit_calibrator(m, z[fit], y[fit], prior=prior).transform(z[~fit])
        ok = np.isfinite(p)
        out[m] = M.nll(p[ok], y[ok], w=prior_weights(y[ok], prior)) if ok.any() else float("nan")
    return out


def calibration_remark(cv: dict[str, float] | None, exported: str, val_clips: Sequence[dict[str, Any]] = ()
                       ) -> str | None:
    """One line when another method has a lower cross-validated val NLL than the exported one; it
    names val's size, since a few sources make that comparison noisy."""
    if not cv or not math.isfinite(cv.get(exported, float("nan"))):
        return None
    best = min((m for m in cv if math.isfinite(cv[m])), key=lambda m: cv[m])
    if best == exported or cv[exported] - cv[best] < 1e-3:
        return None
    size = (f" over {len({str(r.get('source_id')) for r in val_clips})} val sources, {len(val_clips)} clips"
            if val_clips else "")
    return (f"{best} calibration has a lower cross-validated val NLL than the exported {exported} "
            f"({cv[best]:.3f} vs {cv[exported]:.3f}{size}); `--calibration {best}` exports it")


def small_sample_warnings(test: dict[str, Any]) -> list[str]:
    """Warnings when test is too small for its numbers to be read closely."""
    out = []
    if test.get("n_pairs", 0) < MIN_TEST_PAIRS:
        out.append(f"test has {test.get('n_pairs', 0)} pairs (< {MIN_TEST_PAIRS}): wide intervals, "
                   "and a single source can move every number")
    if test.get("n_originals", 0) < MIN_TEST_ORIGINALS:
        out.append(f"test has {test.get('n_originals', 0)} untouched clips (< {MIN_TEST_ORIGINALS}): "
                   "the scores of in-sync footage rest on very few clips")
    return out


# ----------------------------------------------------------------------------- the report
def split_summary(pairs, clips, cal: Calibrator, n_boot: int = N_BOOT,
                  prior: float | None = DEFAULT_PRIOR) -> dict[str, Any]:
    """Counts and headline numbers of a split; accuracy at 0.5 with the clips weighted to `prior`."""
    zc, zr = _za(pairs, "z_chosen"), _za(pairs, "z_rejected")
    z, y = _za(clips), _labels(clips)
    p = cal.transform(z) if len(z) else np.zeros(0)
    return {
        "n_pairs": len(pairs), "n_clips": len(clips), "n_originals": int(y.sum()),
        "n_perturbed": int(len(y) - y.sum()),
        "pairwise_accuracy": M.pairwise_accuracy_with_ci(zc, zr),
        "auc": M.auc_with_ci(z, y, n_boot=n_boot),
        "accuracy_at_0.5": M.accuracy_with_ci(p, y, w=prior_weights(y, prior)),
        "mean_score_originals": float(p[y == 1].mean()) if (y == 1).any() else float("nan"),
        "mean_score_perturbed": float(p[y == 0].mean()) if (y == 0).any() else float("nan"),
    }


# params that name which variant of an operator made a pair (frame_corruption kind, voice_swap mode,
# tts_replace engine, vocoder_resynth vocoder)
VARIANT_PARAMS = ("kind", "mode", "engine", "vocoder")


def _variant(meta: dict[str, Any]) -> tuple[str, str] | None:
    """(operator, variant) of a pair's rejected side (e.g. frame_corruption, blur); None when it has none."""
    for op in meta.get("ops") or []:
        for name in VARIANT_PARAMS:
            value = (op.get("params") or {}).get(name)
            if isinstance(value, str):
                return str(op.get("name")), value
    return None


def _pair_group_acc(pairs, key, cal: Calibrator | None = None) -> dict[Any, dict[str, Any]]:
    """Pairwise accuracy per group of pairs; with `cal`, also "ece": the calibrated ECE over the
    group's clips (its originals and its perturbed sides, so both classes are there) as they are,
    unweighted: a group's share of originals is part of what its row describes."""
    groups: dict[Any, list] = {}
    for p in pairs:
        groups.setdefault(key(p["meta"]), []).append(p)
    out = {}
    for g, ps in groups.items():
        out[g] = {"n_pairs": len(ps), "pairwise_accuracy": M.pairwise_accuracy(_za(ps, "z_chosen"), _za(ps, "z_rejected"))}
        if cal is not None:
            clips = clip_records(ps)
            out[g]["ece"] = M.ece(cal.transform(_za(clips)), _labels(clips)) if clips else float("nan")
    return out


def build_report(val_pairs: Sequence[dict[str, Any]], test_pairs: Sequence[dict[str, Any]],
                 dim: str = "", default_method: str = DEFAULT_METHOD, n_boot: int = N_BOOT,
                 prior: float | None = DEFAULT_PRIOR) -> tuple[dict[str, Any], dict[str, Calibrator]]:
    """All numbers of the report (pure: scored pairs in, dict out) and the calibrators (fit on val
    at `prior`; the test calibration numbers are computed at the same prior)."""
    if default_method not in METHODS:
        raise ValueError(f"--calibration must be one of {METHODS}, got {default_method!r}")
    prior = check_prior(prior)
    val_clips, test_clips = clip_records(val_pairs), clip_records(test_pairs)
    cals, warning = fit_calibrators(val_clips, prior)
    cal = cals[default_method]
    zt = _za(test_clips)
    probs = cal.transform(zt) if len(zt) else np.zeros(0)
    for r, p in zip(test_clips, probs):
        r["score"] = float(p)
        r["score_raw"] = float(sigmoid(np.array([r["z"]]))[0])

    per_op = M.group_table([r for r in test_clips if r["severity"] > 0], "operator")
    op_pairs = _pair_group_acc(test_pairs, lambda m: m.get("operator"), cal)
    for row in per_op:
        row["operator"] = row.pop("group")
        row.update(op_pairs.get(row["operator"], {"n_pairs": 0, "pairwise_accuracy": float("nan"), "ece": float("nan")}))
    per_sev = M.group_table(test_clips, "severity")
    sev_pairs = _pair_group_acc(test_pairs, lambda m: int(m.get("severity", 0)), cal)
    for row in per_sev:
        row["severity"] = row.pop("group")
        row.update(sev_pairs.get(row["severity"], {"n_pairs": 0, "pairwise_accuracy": float("nan"), "ece": float("nan")}))
    per_op_sev = M.group_table([r for r in test_clips if r["severity"] > 0],
                               lambda r: f"{r['operator']}|{r['severity']}")
    op_sev_pairs = _pair_group_acc(test_pairs, lambda m: f"{m.get('operator')}|{int(m.get('severity', 0))}", cal)
    for row in per_op_sev:
        group = row.pop("group")
        op, sev = group.rsplit("|", 1)
        row["operator"], row["severity"] = op, int(sev)
        row.update(op_sev_pairs.get(group, {"n_pairs": 0, "pairwise_accuracy": float("nan"), "ece": float("nan")}))
    kinds = _pair_group_acc(test_pairs, lambda m: m.get("kind"))
    variants = _pair_group_acc(test_pairs, _variant)
    variants.pop(None, None)  # pairs whose operator has no variant

    cv = cross_validated_nll(val_clips, prior) if warning is None else None
    test = split_summary(test_pairs, test_clips, cal, n_boot=n_boot, prior=prior) if test_pairs else {}
    report = {
        "dim": dim,
        "calibration": {"default": default_method if warning is None else "none",
                        "requested": default_method, "fitted_on": "val", "prior": prior,
                        "n_val_clips": len(val_clips), "warning": warning,
                        "test": calibration_table(cals, test_clips, prior),
                        "val": calibration_table(cals, val_clips, prior),
                        "val_cv_nll": cv, "remark": calibration_remark(cv, default_method, val_clips)},
        "val": split_summary(val_pairs, val_clips, cal, n_boot=n_boot, prior=prior) if val_pairs else {},
        "test": test,
        "warnings": small_sample_warnings(test),
        "per_kind": [{"kind": k, **v} for k, v in sorted(kinds.items(), key=lambda kv: str(kv[0]))],
        "per_operator": per_op,
        "per_severity": per_sev,
        "per_operator_severity": per_op_sev,
        "per_variant": [{"operator": op, "variant": v, **r} for (op, v), r in sorted(variants.items())],
        "ladder": M.ladder_correlations(test_clips, score="score", n_boot=min(n_boot, 500)),
    }
    return report, cals


# ----------------------------------------------------------------------------- plots
def make_plots(report_dir: Path, test_clips: Sequence[dict[str, Any]], cals: dict[str, Calibrator],
               default_method: str, prior: float | None = DEFAULT_PRIOR) -> list[str]:
    """reliability.png (test clips weighted to `prior`), score_hist.png, score_vs_severity.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    z, y = _za(test_clips), _labels(test_clips)
    if len(z) == 0:
        return files
    w = prior_weights(y, prior)
    # reliability diagrams
    maps = [("none (sigmoid z)", IdentityCalibration()), *[(m, c) for m, c in cals.items()]]
    fig, axes = plt.subplots(1, len(maps), figsize=(4 * len(maps), 4), squeeze=False)
    for ax, (name, cal) in zip(axes[0], maps):
        p = cal.transform(z)
        bins = M.reliability_bins(p, y, w=w)
        centers = [(b["lo"] + b["hi"]) / 2 for b in bins if b["n"]]
        accs = [b["accuracy"] for b in bins if b["n"]]
        confs = [b["confidence"] for b in bins if b["n"]]
        ax.bar(centers, accs, width=1 / M.N_BINS, edgecolor="k", alpha=0.6, label="fraction original")
        ax.plot(confs, accs, "o", color="C3", ms=4, label="mean score")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set_title(f"{name}\nECE {M.ece(p, y, w=w):.3f}  Brier {M.brier(p, y, w=w):.3f}", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("predicted P(yes)")
    axes[0][0].set_ylabel("observed fraction yes (original)" + (f", at prior {prior:g}" if prior else ""))
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(report_dir / "reliability.png", dpi=100)
    plt.close(fig)
    files.append("reliability.png")

    # histograms originals vs perturbed
    cal = cals[default_method]
    p = cal.transform(z)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    bins = np.linspace(0, 1, 26)
    axes[0].hist(p[y == 1], bins=bins, alpha=0.6, label=f"originals (n={int((y == 1).sum())})", density=True)
    axes[0].hist(p[y == 0], bins=bins, alpha=0.6, label=f"perturbed (n={int((y == 0).sum())})", density=True)
    axes[0].set_xlabel(f"calibrated score ({default_method})")
    axes[0].legend(fontsize=8)
    zb = np.linspace(z.min() - 1e-6, z.max() + 1e-6, 31)
    axes[1].hist(z[y == 1], bins=zb, alpha=0.6, label="originals", density=True)
    axes[1].hist(z[y == 0], bins=zb, alpha=0.6, label="perturbed", density=True)
    axes[1].set_xlabel("decision logit z")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(report_dir / "score_hist.png", dpi=100)
    plt.close(fig)
    files.append("score_hist.png")

    # score vs severity / defect per operator
    ops = sorted({r["operator"] for r in test_clips if r["severity"] > 0 and r["operator"]})
    orig = [r for r in test_clips if r["severity"] == 0]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, op in enumerate(ops):
        rs = orig + [r for r in test_clips if r["operator"] == op and r["severity"] > 0]
        sevs = sorted({r["severity"] for r in rs})
        means = [np.mean([r["score"] for r in rs if r["severity"] == s]) for s in sevs]
        axes[0].plot(sevs, means, "o-", color=f"C{i % 10}", label=op)
        d = np.array([0.0 if r["severity"] == 0 else (r["defect"] if r["defect"] is not None else np.nan)
                      for r in rs])
        axes[1].scatter(d, [r["score"] for r in rs], s=10, alpha=0.6, color=f"C{i % 10}", label=op)
    axes[0].set_xlabel("severity (0 = original)")
    axes[0].set_ylabel("mean calibrated score")
    axes[0].set_ylim(0, 1)
    axes[1].set_xlabel("defect size (operator units; 0 = original)")
    axes[1].set_ylabel("calibrated score")
    axes[1].set_ylim(0, 1)
    if ops:
        axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(report_dir / "score_vs_severity.png", dpi=100)
    plt.close(fig)
    files.append("score_vs_severity.png")
    return files


# ----------------------------------------------------------------------------- markdown
def _prior_note(prior: float | None) -> str:
    if prior is None:
        return " (fitted at val's own share of originals: no stated prior)"
    return (f", fitted at prior P(yes) = {prior:g}" +
            (" (0.5 = yes and no equally likely)" if prior == 0.5 else ""))


def _warning_lines(report: dict[str, Any]) -> list[str]:
    """The report's small-sample warnings as markdown quotes (and a blank line), or nothing."""
    warnings = report.get("warnings") or []
    return [f"> WARNING: {w}" for w in warnings] + ([""] if warnings else [])


def _ci(d: dict[str, Any] | None) -> str:
    if not d:
        return "-"
    return f"{M.fmt(d.get('value'))} (95% CI {M.fmt(d.get('ci95'))})"


def report_markdown(report: dict[str, Any], plots: Sequence[str]) -> str:
    t, cal = report.get("test", {}), report["calibration"]
    lines = [f"# Judge evaluation: `{report['dim']}`", ""]
    if report.get("question"):
        lines += [f"Question: **{report['question']}**", ""]
    lines += [f"- run: `{report.get('run')}`; shards: `{report.get('shards')}`",
              f"- test: {t.get('n_pairs', 0)} pairs, {t.get('n_clips', 0)} distinct clips "
              f"({t.get('n_originals', 0)} originals, {t.get('n_perturbed', 0)} perturbed); "
              f"calibration fitted on val only ({cal['n_val_clips']} clips)",
              f"- default calibration: **{cal['default']}**" + _prior_note(cal.get("prior")), ""]
    if cal.get("warning"):
        lines += [f"> WARNING: {cal['warning']}", ""]
    lines += _warning_lines(report)
    if cal.get("remark"):
        lines += [f"> Note: {cal['remark']}", ""]
    if any((report.get("bad_samples") or {}).values()):
        lines += ["> Broken samples left out (listed in bad_samples.jsonl): "
                  + ", ".join(f"{n} {split}" for split, n in report["bad_samples"].items()), ""]
    lines += ["## Test summary", "", "| metric | value |", "|---|---|",
              f"| pairwise accuracy (chosen > rejected) | {_ci(t.get('pairwise_accuracy'))} |",
              f"| AUC originals vs perturbed | {_ci(t.get('auc'))} |",
              f"| accuracy at 0.5 (calibrated, at the prior) | {_ci(t.get('accuracy_at_0.5'))} |",
              f"| mean score originals / perturbed | {M.fmt(t.get('mean_score_originals'))} / "
              f"{M.fmt(t.get('mean_score_perturbed'))} |", "",
              "Intervals: Wilson for accuracies (they stay open at 100 %), AUC's bootstrap interval widened "
              "to at least a Wilson one.", ""]
    v = report.get("val") or {}
    if v:
        lines += [f"Val (calibration set): pairwise accuracy {_ci(v.get('pairwise_accuracy'))}, "
                  f"AUC {_ci(v.get('auc'))}.", ""]
    cv = cal.get("val_cv_nll") or {}
    lines += ["## Calibration (test; fitted on val)", "",
              (f"Computed with the test clips weighted to the calibration's prior P(yes) = {cal['prior']:g} "
               "(originals and perturbed clips counting as the prior says, whatever their numbers)."
               if cal.get("prior") else "Computed on the test clips as they are (no stated prior)."), "",
              M.md_table([{"method": k, **r, "cv": cv.get(k)} for k, r in cal["test"].items()],
                         ["method", "ece", "brier", "nll", "accuracy_at_0.5", "cv"],
                         ["calibration", "ECE (15 bins)", "Brier", "NLL", "acc@0.5",
                          f"val NLL, cross-validated ({CV_FOLDS} folds by source)"]), ""]
    lines += ["## Per pair kind", "",
              M.md_table(report["per_kind"], ["kind", "n_pairs", "pairwise_accuracy"]), ""]
    lines += ["## Per operator (perturbed test clips)", "",
              M.md_table(report["per_operator"], ["operator", "n", "mean_score", "accuracy", "n_pairs",
                                                  "pairwise_accuracy", "ece"],
                         ["operator", "clips", "mean score", "acc@0.5", "pairs", "pairwise acc",
                          "ECE (its pairs' clips)"]), ""]
    lines += ["## Per severity (0 = originals)", "",
              M.md_table(report["per_severity"], ["severity", "n", "mean_score", "accuracy", "n_pairs",
                                                  "pairwise_accuracy", "ece"],
                         ["severity", "clips", "mean score", "acc@0.5", "pairs (rejected sev)",
                          "pairwise acc", "ECE (its pairs' clips)"]), ""]
    lines += ["## Per operator and severity", "",
              M.md_table(report["per_operator_severity"], ["operator", "severity", "n", "mean_score",
                                                           "accuracy", "n_pairs", "pairwise_accuracy", "ece"]), ""]
    ladder_rows = [{"operator": op, **r} for op, r in report["ladder"].items()]
    lines += ["## Score vs defect size along each operator's ladder (originals at defect 0)", "",
              "Spearman rho between calibrated score and defect size; it should be negative "
              "(the score falls as the defect grows).", "",
              M.md_table(ladder_rows, ["operator", "n", "spearman_defect", "spearman_defect_ci95",
                                       "spearman_severity", "kendall_defect", "falls_with_defect"],
                         ["operator", "clips", "Spearman (defect)", "95% CI", "Spearman (severity)",
                          "Kendall (defect)", "falls?"]), ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- export
USAGE = ('from eval import Scorer\n'
         'Scorer.from_pretrained("{export}").score("video.mp4")')


def _n_sources(card: dict[str, Any]) -> Any:
    s = card.get("sources")
    return len(s) if isinstance(s, list) else s


def _card_facts(card: dict[str, Any]) -> list[str]:
    """The model card's lines about one data card."""
    facts = [
        ("recipe", "recipe"), ("recipe sha", "recipe_sha"), ("seed", "seed"),
        ("window (s)", "window_seconds"), ("pairs", "pairs"), ("graded pairs", "graded_pairs"),
        ("pairs per split", "counts_per_split"), ("pairs per operator", "counts_per_operator"),
        ("source folder", "src"), ("rebuild", "command"),
    ]
    lines = []
    for label, key in facts:
        if card.get(key) not in (None, "", {}, []):
            v = card[key]
            lines.append(f"- {label}: `{v}`" if key == "command" else f"- {label}: {v}")
    if card.get("sources") is not None:
        lines.append(f"- sources: {_n_sources(card)}")
    if card.get("licence_note"):
        lines.append(f"- licence: {card['licence_note']}")
    return lines


def model_card(dim: str, question: str | None, report: dict[str, Any], card: dict[str, Any] | None,
               export_dir: str, cal: Calibrator, eval_card: dict[str, Any] | None = None) -> str:
    from .scorer import trained_on_demo_corpus

    t = report.get("test", {})
    cal_row = report["calibration"]["test"].get(cal.method if cal.method != "none" else "none", {})
    lines = [f"# avbench judge: `{dim}`", "",
             f"Answers the question: **{question or '(see data card)'}** with a calibrated "
             "probability of *yes* in [0, 1] for a talking video (any length, container and rate "
             "ffmpeg reads).", "",
             "## Usage", "", "```python", USAGE.format(export=export_dir), "```", "",
             "Command line: `python -m eval score --scorer " + export_dir + " video.mp4` "
             "(one JSON line per video; `--windows` for per-window scores).", "",
             "Long videos are cut into windows of "
             f"{report.get('window_seconds', '?')} s; the video score is the calibrated mean of "
             "the window logits. `Scorer.reward(video, audio)` is a differentiable reward on "
             "preprocessed tensors (for RLHF).", "",
             "## Training data", ""]
    if trained_on_demo_corpus(card):
        lines += ["**Trained on the synthetic demo corpus: for checking the pipeline, not for real footage.** "
                  "`python -m eval score` warns when it scores files from elsewhere; real judges: "
                  "`--scorer <dim>` (packaged) or `make real DIM=<dim>`.", ""]
    if card:
        lines += _card_facts(card) + ["", "The full data card is in metrics.json (\"data_card\").", ""]
    if eval_card:
        scored = "each clip scored whole, as `eval score` scores a video" if report.get("whole_clips") else \
            "each clip cut or padded to the judge's window"
        lines += ["## Evaluation data", "", f"The val / test pairs below come from another build ({scored}):", ""]
        lines += _card_facts(eval_card) + ["", "Its data card is in metrics.json (\"eval_data_card\").", ""]
    lines += ["## Test metrics", ""]
    lines += _warning_lines(report)
    lines += ["| metric | value |", "|---|---|",
              f"| pairwise accuracy | {_ci(t.get('pairwise_accuracy'))} |",
              f"| AUC originals vs perturbed | {_ci(t.get('auc'))} |",
              f"| accuracy at 0.5 | {_ci(t.get('accuracy_at_0.5'))} |",
              f"| ECE (15 bins), {cal.method} | {M.fmt(cal_row.get('ece'))} |",
              f"| Brier, {cal.method} | {M.fmt(cal_row.get('brier'))} |",
              f"| test pairs / clips | {t.get('n_pairs', 0)} / {t.get('n_clips', 0)} |", "",
              f"Calibration: `{cal.method}` fitted on the validation split ({cal.n} clips){_prior_note(cal.prior)}, "
              "stored in calibration.json (\"prior\"); ECE and Brier above are computed at the same prior "
              "(test clips reweighted). `python -m eval filter` keeps a file at score >= 0.5 by default.", ""]
    if report["calibration"].get("remark"):
        lines += [f"Note: {report['calibration']['remark']}.", ""]
    ladder = report.get("ladder") or {}
    if ladder:
        lines += ["Score vs defect size (Spearman, should be negative): " + ", ".join(
            f"{op} {M.fmt(r['spearman_defect'])}" for op, r in ladder.items()), ""]
    lines += ["## Limits", "",
              "- Trained on synthetic perturbations of real talking videos: it detects the defects "
              "its operators simulate, at the severities in the data card; other failure modes of "
              "generated video are out of distribution and may be scored unreliably.",
              "- Scores are calibrated on the validation split of the same distribution; on other "
              "footage (other faces, languages, framing, codecs) recalibrate before trusting the "
              "probabilities; rankings transfer better than absolute values.",
              "- Needs a visible face and speech; for videos without a detectable face the crop "
              "falls back to a fixed talking-head framing (see preprocessing.json).",
              "- Not a measure of overall video quality; one judge answers one question.", ""]
    return "\n".join(lines)


def export(run_dir: Path, export_dir: Path, model, cfg, cal: Calibrator, report: dict[str, Any],
           card: dict[str, Any] | None, run_metrics: dict[str, Any] | None,
           eval_card: dict[str, Any] | None = None) -> None:
    """Write the export folder; card is the training data's, eval_card the test pairs' when they come
    from another build."""
    export_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(export_dir))
    src_pre = run_dir / "model" / "preprocessing.json"
    if src_pre.is_file():
        shutil.copyfile(src_pre, export_dir / "preprocessing.json")
    else:
        cfg.save(export_dir / "preprocessing.json")
    cal.save(export_dir / "calibration.json")
    dim, question = report["dim"], report.get("question")
    metrics = {"dim": dim, "question": question, "calibration": cal.to_dict(),
               "test": report.get("test"), "val": report.get("val"),
               "calibration_table_test": report["calibration"]["test"],
               "ladder": report.get("ladder"), "per_operator": report.get("per_operator"),
               "per_severity": report.get("per_severity"),
               "data_card": card, "train": run_metrics, **({"eval_data_card": eval_card} if eval_card else {})}
    (export_dir / "metrics.json").write_text(json.dumps(_jsonable(metrics), indent=1, sort_keys=True) + "\n")
    (export_dir / "README.md").write_text(model_card(dim, question, report, card, str(export_dir), cal, eval_card))


def _jsonable(o):
    """NaN/inf -> None, numpy -> python, tuples -> lists (report.json stays strict JSON)."""
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (np.floating, float)):
        f = float(o)
        return f if math.isfinite(f) else None
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.bool_):
        return bool(o)
    return o


# ----------------------------------------------------------------------------- driver
def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None


def evaluate(dim: str, shards: str | Path, run: str | Path, export_dir: str | Path,
             report_dir: str | Path, calibration: str = DEFAULT_METHOD,
             cache_dir: str | Path | None = None, batch_size: int = 16, n_boot: int = N_BOOT,
             device: str = "cpu", progress: bool = True, workers: int | None = None,
             max_bad_fraction: float | None = None, whole_clips: bool = False,
             prior: float | None = DEFAULT_PRIOR) -> dict[str, Any]:
    """The whole `evaluate` command; returns the report dict (whole_clips, prior: see the module docstring)."""
    from perturb.shard_format import is_url
    from train.data import (DEFAULT_MAX_BAD_FRACTION, TooManyBadSamples, check_location, has_split, load_split,
                            read_card, write_bad_samples)
    from train.model import load_judge

    t0 = time.time()
    shards, run = (shards if is_url(shards) else Path(shards)), Path(run)  # shards: a folder or an fsspec URL
    export_dir, report_dir = Path(export_dir), Path(report_dir)
    model_dir = run / "model"
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"no trained judge at {model_dir} (run `make train DIM={dim}` first)")
    # a missing folder or an unreachable URL is one line before anything is loaded or written
    if not is_url(shards) and not shards.is_dir():
        raise FileNotFoundError(f"no shards folder {shards} (run `make shards DIM={dim}` first)")
    check_location(shards, ("val", "test"))
    model, cfg = load_judge(model_dir, device)
    run_metrics = _read_json(run / "metrics.json")
    # the data the judge was trained on (recorded by train) and the data it is evaluated on: the same
    # card unless the test pairs come from another build (make real's av_consistency: 5 s clips)
    eval_card = read_card(shards)
    card = (run_metrics or {}).get("data_card") or eval_card

    scored, bad = {}, {}
    bad_file = report_dir / "bad_samples.jsonl"
    bad_limit = DEFAULT_MAX_BAD_FRACTION if max_bad_fraction is None else max_bad_fraction
    for split in ("val", "test"):
        if not has_split(shards, split):
            print(f"[eval] no {split} shards in {shards}", file=sys.stderr)
            scored[split] = []
            continue
        try:
            if whole_clips:
                scored[split], bad[split] = score_pair_clips(model, cfg, shards, split, progress=progress,
                                                             device=device, max_bad_fraction=bad_limit)
                continue
            ds = load_split(str(shards), split, cfg, cache_dir=str(cache_dir) if cache_dir else None,
                            num_workers=workers, log=lambda *a: print(*a, file=sys.stderr),
                            max_bad_fraction=bad_limit)
        except TooManyBadSamples as err:
            write_bad_samples(bad_file, [b for v in bad.values() for b in v] + err.bad)
            raise
        bad[split] = ds.bad
        scored[split] = score_pairs(model, ds, batch_size=batch_size, desc=split, progress=progress,
                                    device=device)
    write_bad_samples(bad_file, [b for v in bad.values() for b in v])
    if not scored["test"]:
        raise RuntimeError(f"no test pairs in {shards}: nothing to report on")
    report, cals = build_report(scored["val"], scored["test"], dim=dim, default_method=calibration,
                                n_boot=n_boot, prior=prior)
    for line in report["warnings"]:
        print(f"[eval] warning: {line}", file=sys.stderr)
    if report["calibration"]["remark"]:
        print(f"[eval] note: {report['calibration']['remark']}", file=sys.stderr)
    question = (card or {}).get("question") or next(
        (p["meta"].get("question") for p in scored["test"] if p["meta"].get("question")), None)
    report.update({"question": question, "run": str(run), "shards": str(shards),
                   "export": str(export_dir), "window_seconds": cfg.window_seconds, "whole_clips": whole_clips,
                   "preprocess_fingerprint": cfg.fingerprint(),
                   "bad_samples": {split: len(v) for split, v in bad.items()}})
    report_dir.mkdir(parents=True, exist_ok=True)
    test_clips = clip_records(scored["test"])
    chosen = cals[calibration] if report["calibration"]["warning"] is None else IdentityCalibration()
    for r in test_clips:
        r["score"] = float(chosen.transform([r["z"]])[0])
    plots = make_plots(report_dir, test_clips, cals, calibration, prior=report["calibration"]["prior"])
    report["plots"] = plots
    report["wall_s"] = round(time.time() - t0, 2)
    (report_dir / "report.json").write_text(json.dumps(_jsonable(report), indent=1, sort_keys=True) + "\n")
    (report_dir / "report.md").write_text(report_markdown(report, plots))
    for split in ("val", "test"):   # per-pair logits: fusion and re-analysis without re-scoring (bench/)
        (report_dir / f"scores_{split}.jsonl").write_text("".join(
            json.dumps(_jsonable({"meta": {k: p["meta"].get(k) for k in (
                "source_id", "window", "kind", "operator", "severity", "chosen_severity", "defect",
                "chosen_defect")} | {"key": p["meta"].get("key") or p["meta"].get("__key__")},  # the sample key
                "z_chosen": p["z_chosen"], "z_rejected": p["z_rejected"]})) + "\n"
            for p in scored[split]))
    export(run, export_dir, model, cfg, chosen, report, card, run_metrics,
           eval_card=eval_card if eval_card and eval_card != card else None)
    return report
