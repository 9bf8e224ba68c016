"""`python -m eval leaderboard`: generators ranked by the judges, the table the AVBench paper reports.

    python -m eval leaderboard --scorer lip_sync --scorer av_consistency [--out leaderboard] \\
        MODEL_A_DIR NAME=s3://bucket/model_b/ ...        # one folder or URL prefix of videos per model
    python -m eval leaderboard --scorer lip_sync --csv videos.csv    # columns path,model

Every video is scored once (records already in --scores are reused; new ones are added there, so a
re-run only scores what is new), then per model and dimension:
  mean      mean calibrated score of the videos the judge could judge (status ok), with a
            percentile-bootstrap 95% CI over those videos (--n-boot, --seed)
  >=0.5     share of them scoring at least 0.5 (what `eval filter` keeps by default)
  std, min, max
  judged    videos with status ok; not judged: no_face, too_short, no_audio, unreadable (each counted;
            they are left out of the statistics above, their score says little)
Written to OUT/: leaderboard.md (models ranked by the mean of their dimension means, then one line
per model and dimension), leaderboard.csv (that second table), leaderboard.json and leaderboard.png
(a radar of the models' means across the dimensions; with fewer than 3 dimensions, bars with the CIs).
The markdown also goes to stdout.

--scores: a .jsonl file (as `eval score --out` writes it, OUT.settings.json beside it naming the
judges) with the local backend; a folder or URL record store (eval/scale.py) with --backend ray.
Default OUT/scores.jsonl, OUT/records.
"""
from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np

NOT_JUDGED = ("no_face", "too_short", "no_audio", "unreadable")
THRESHOLD = 0.5
COLUMNS = ["model", "dim", "videos", "judged", "mean", "ci95_lo", "ci95_hi", "share_ge_0.5", "std", "min", "max",
           *(f"n_{s}" for s in NOT_JUDGED)]


def add_parser(sub) -> None:
    import argparse

    p = sub.add_parser("leaderboard", help="rank generators: every model's videos scored, statistics per dimension",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__)
    p.add_argument("--scorer", action="append", required=True, metavar="DIR", help="export (repeat per dimension)")
    p.add_argument("models", nargs="*", metavar="[NAME=]DIR|URL",
                   help="one folder or URL prefix of videos per model (named after its last part unless NAME=)")
    p.add_argument("--csv", default=None, metavar="FILE", help="videos and their models: a CSV with columns path,model")
    p.add_argument("--out", default="leaderboard", help="folder for leaderboard.md / .csv / .json / .png")
    p.add_argument("--scores", default=None,
                   help="records to reuse and extend: a .jsonl of `eval score --out` (local backend), or a record "
                        "store folder / URL (--backend ray); default OUT/scores.jsonl, OUT/records")
    p.add_argument("--overwrite", action="store_true", help="score every video again: empty --scores first")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the 95%% CIs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (a judge with encoders of its own); repeatable")
    p.add_argument("--device", default=None)
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="processes (local) or scorer actors (ray) scoring files in parallel (default: one per core)")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: worker processes here; ray: scorer actors on a Ray cluster (docs/scale_out.md)")
    p.add_argument("--ray-address", default=None, help="Ray cluster (default: RAY_ADDRESS, else a local Ray)")


# ----------------------------------------------------------------------------- inputs
def model_videos(models: Sequence[str], csv_file: str | None) -> list[tuple[str, str]]:
    """[(model, video)] from NAME=LOCATION / LOCATION arguments and a path,model CSV; ValueError in words."""
    from .scale import list_videos

    named: dict[str, str] = {}
    for m in models:
        name, sep, loc = m.partition("=")
        if not sep or "://" in name or "/" in name:  # a plain location (which may hold '=' after its scheme)
            name, loc = m.rstrip("/").rsplit("/", 1)[-1], m
        if name in named:
            raise ValueError(f"two models are named {name!r}: name them NAME=LOCATION")
        named[name] = loc
    out: list[tuple[str, str]] = []
    for name, loc in named.items():
        videos = list_videos([loc])
        if not videos:
            raise ValueError(f"{loc}: no video found (extensions of perturb.media.VIDEO_EXTS)")
        out += [(name, v) for v, _ in videos]
    if csv_file:
        with open(csv_file, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        if rows and not {"path", "model"} <= set(rows[0]):
            raise ValueError(f"{csv_file}: needs the columns path,model (has {', '.join(rows[0])})")
        out += [(r["model"], r["path"]) for r in rows if r.get("path") and r.get("model")]
    if not out:
        raise ValueError("no model given: name one folder or URL prefix per model, or --csv FILE (path,model)")
    return out


# ----------------------------------------------------------------------------- scoring
def _score_local(scorers: Sequence, videos: Sequence[str], scores: str, args) -> None:
    """Score the videos not yet in the JSONL `scores` with the local worker pool, each record appended
    there as it finishes (resumed and checked as `eval score --out` does: other judges are refused)."""
    import contextlib

    from tqdm import tqdm

    from .cli import _open_score_out, _workers, score_videos
    from .scale import local_copies, rename, trim_windows

    out, done = _open_score_out(SimpleNamespace(out=scores, overwrite=args.overwrite, windows=False), scorers,
                                [s.dim for s in scorers])
    todo = [v for v in videos if v not in done]
    if todo:
        print(f"# scoring {len(todo)} of {len(videos)} videos ({len(videos) - len(todo)} already in {scores})",
              file=sys.stderr)
    try:
        with local_copies(todo) as local, tqdm(total=len(todo), desc="scoring", unit="video",
                                               disable=not sys.stderr.isatty()) as bar:
            back = {local[v]: v for v in todo}
            with contextlib.closing(score_videos(scorers, [local[v] for v in todo], workers=_workers(args),
                                                 always_windows=True, plugins=args.plugin)) as records:
                for rec in records:
                    rec = rename(rec, rec["path"], back[rec["path"]])
                    trim_windows(rec, False)
                    out.write(json.dumps(rec) + "\n")
                    bar.update()
    finally:
        out.close()


def score_all(scorers: Sequence, videos: Sequence[str], scores: str, args) -> dict[str, dict[str, Any]]:
    """{video: record} for every video, the records in `scores` reused (and the new ones added there)."""
    from .scale import read_records, run_store

    videos = list(dict.fromkeys(videos))
    if args.backend == "ray":
        store, *_ = run_store(scorers, videos, scores, False, args)
        return store.records
    Path(scores).parent.mkdir(parents=True, exist_ok=True)
    _score_local(scorers, videos, scores, args)
    return read_records(scores)


# ----------------------------------------------------------------------------- statistics
def model_stats(records: Sequence[dict[str, Any]], dim: str, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Statistics of one model on one dimension (module docstring); videos not judged are counted only."""
    from .metrics import bootstrap_ci

    status = [("unreadable" if "error" in r and dim not in r.get("scores", {})
               else r.get("status", {}).get(dim, "unreadable")) for r in records]
    x = np.array([r["scores"][dim] for r, st in zip(records, status) if st == "ok"], dtype=np.float64)
    row: dict[str, Any] = {"dim": dim, "videos": len(records), "judged": len(x)}
    if len(x):
        lo, hi = bootstrap_ci(np.mean, x, n_boot=n_boot, seed=seed)
        row.update(mean=float(x.mean()), ci95_lo=lo, ci95_hi=hi, **{"share_ge_0.5": float(np.mean(x >= THRESHOLD))},
                   std=float(x.std(ddof=1)) if len(x) > 1 else 0.0, min=float(x.min()), max=float(x.max()))
    else:
        row.update({k: math.nan for k in ("mean", "ci95_lo", "ci95_hi", "share_ge_0.5", "std", "min", "max")})
    for s in NOT_JUDGED:
        row[f"n_{s}"] = sum(st == s for st in status)
    other = len(records) - row["judged"] - sum(row[f"n_{s}"] for s in NOT_JUDGED)
    if other:  # a status this table does not know yet (a newer scorer): counted with unreadable, said so
        row["n_unreadable"] += other
    return row


def leaderboard(pairs: Sequence[tuple[str, str]], records: dict[str, dict[str, Any]], dims: Sequence[str],
                n_boot: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """One row per model and dimension, the models ranked by the mean of their dimension means."""
    by_model: dict[str, list[dict[str, Any]]] = {}
    for model, video in pairs:
        by_model.setdefault(model, []).append(records[video])
    rows = {m: [{"model": m, **model_stats(recs, d, n_boot, seed)} for d in dims] for m, recs in by_model.items()}

    def rank_key(m: str) -> float:
        means = [r["mean"] for r in rows[m] if math.isfinite(r["mean"])]
        return -float(np.mean(means)) if means else math.inf

    return [r for m in sorted(rows, key=rank_key) for r in rows[m]]


# ----------------------------------------------------------------------------- outputs
def markdown(rows: Sequence[dict[str, Any]], dims: Sequence[str]) -> str:
    from .metrics import fmt, md_table

    models = list(dict.fromkeys(r["model"] for r in rows))
    cell = {(r["model"], r["dim"]): r for r in rows}
    summary = []
    for rank, m in enumerate(models, 1):
        line = {"rank": rank, "model": m}
        for d in dims:
            r = cell[(m, d)]
            line[d] = f"{fmt(r['mean'])} [{fmt(r['ci95_lo'])}, {fmt(r['ci95_hi'])}]"
        summary.append(line)
    detail = [{**r, "ci95": [r["ci95_lo"], r["ci95_hi"]],
               "not judged": ", ".join(f"{s} {r[f'n_{s}']}" for s in NOT_JUDGED if r[f"n_{s}"]) or "-"}
              for r in rows]
    return "\n".join([
        "# Leaderboard", "",
        ("Mean calibrated score [bootstrap 95% CI] of the videos each judge could judge (status ok); "
         "models ranked by the mean of their dimension means."), "",
        md_table(summary, ["rank", "model", *dims]), "",
        "## Per model and dimension", "",
        md_table(detail, ["model", "dim", "videos", "judged", "mean", "ci95", "share_ge_0.5", "std", "min", "max",
                          "not judged"],
                 ["model", "dim", "videos", "judged", "mean", "95% CI", ">= 0.5", "std", "min", "max", "not judged"]),
        ""])


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([(f"{r[c]:.6f}" if isinstance(r[c], float) else r[c]) for c in COLUMNS])
    return buf.getvalue()


def plot(rows: Sequence[dict[str, Any]], dims: Sequence[str], path: Path) -> None:
    """A radar of each model's mean per dimension (3 or more dimensions), else bars with the 95% CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    cell = {(r["model"], r["dim"]): r for r in rows}
    if len(dims) >= 3:
        angles = np.linspace(0, 2 * np.pi, len(dims), endpoint=False).tolist()
        fig, ax = plt.subplots(figsize=(6, 6), subplot_kw={"polar": True})
        for m in models:
            vals = [cell[(m, d)]["mean"] for d in dims]
            ax.plot(angles + angles[:1], vals + vals[:1], marker="o", label=m)
            ax.fill(angles + angles[:1], vals + vals[:1], alpha=0.1)
        ax.set_xticks(angles)
        ax.set_xticklabels(dims)
        ax.set_ylim(0, 1)
        ax.set_rlabel_position(180 / len(dims))  # the radial scale between two axes, off their labels
    else:
        fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(models) * len(dims) + 2), 4))
        width = 0.8 / len(dims)
        for j, d in enumerate(dims):
            means = np.array([cell[(m, d)]["mean"] for m in models])
            err = np.array([[means[i] - cell[(m, d)]["ci95_lo"], cell[(m, d)]["ci95_hi"] - means[i]]
                            for i, m in enumerate(models)]).T
            ax.bar(np.arange(len(models)) + j * width, means, width, yerr=err, capsize=4, label=d)
        ax.set_xticks(np.arange(len(models)) + 0.4 - width / 2)
        ax.set_xticklabels(models)
        ax.set_ylim(0, 1)
        ax.set_ylabel("mean calibrated score (95% CI)")
    ax.legend(loc="upper right", bbox_to_anchor=(1.3, 1.1) if len(dims) >= 3 else None, fontsize="small")
    ax.set_title("Leaderboard", pad=24 if len(dims) >= 3 else 6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cmd_leaderboard(args) -> int:
    from .cli import _until_stopped

    return _until_stopped(_cmd_leaderboard, args)


def _cmd_leaderboard(args) -> int:
    from .cli import load_scorers

    out = Path(args.out)
    try:
        pairs = model_videos(args.models, args.csv)
    except (ValueError, OSError, KeyError) as err:
        raise SystemExit(f"error: {err}") from None
    scorers = load_scorers(args.scorer, device=args.device, batch_size=args.batch_size,
                           max_faces=getattr(args, "max_faces", None))
    dims = [s.dim for s in scorers]
    out.mkdir(parents=True, exist_ok=True)
    scores = args.scores or str(out / ("records" if args.backend == "ray" else "scores.jsonl"))
    if args.backend == "local" and not scores.endswith(".jsonl"):
        raise SystemExit(f"error: --scores {scores}: the local backend reads and extends a .jsonl file (a record "
                         f"store folder or URL goes with --backend ray)")
    records = score_all(scorers, [v for _, v in pairs], scores, args)
    missing = [v for _, v in pairs if v not in records]
    if missing:  # stopped before the end: no table from part of the videos
        raise SystemExit(f"error: {len(missing)} videos have no record in {scores}; re-run to score them")
    rows = leaderboard(pairs, records, dims, n_boot=args.n_boot, seed=args.seed)
    md = markdown(rows, dims)
    (out / "leaderboard.md").write_text(md)
    (out / "leaderboard.csv").write_text(csv_text(rows))
    finite = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()} for r in rows]
    (out / "leaderboard.json").write_text(json.dumps({"dims": dims, "scores": scores, "rows": finite}, indent=1) + "\n")
    plot(rows, dims, out / "leaderboard.png")
    sys.stdout.write(md)
    print(f"# leaderboard: {len({m for m, _ in pairs})} models, {len(pairs)} videos; {out}/leaderboard.md, "
          f".csv, .json, .png", file=sys.stderr)
    return 0
