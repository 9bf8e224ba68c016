"""`python -m eval score` and `python -m eval filter`: exported judges applied to video files.

score: one JSON line per video on stdout (and in --out: .jsonl, or .csv with columns path, one per
dimension, status, error):
    {"path": "a.mp4", "scores": {"lip_sync": 0.91}, "status": {"lip_sync": "ok"},
     "offset": {"lip_sync": {"ms": 0.0, "confidence": 0.41}}}
    {"path": "long.mp4", "scores": {...}, "status": {...}, "windows": {"lip_sync": [{"start": 0.0, "end": 5.0, "score": 0.8}, ...]}}
    {"path": "bad.mp4", "scores": {}, "status": {"lip_sync": "unreadable"}, "error": "unreadable media: ..."}
"status" says whether the judge could judge the file: ok | no_audio | too_short | no_face (eval/scorer.py)
| unreadable. "offset" is the estimated audio offset (positive: the audio lags the picture) and its
confidence, for judges that compare audio and picture over offsets. "windows" is present for videos
longer than one window, or always with --windows. A file that cannot be read or scored gives a line
with "error" and the batch goes on. Exit status: 0 when at least one video was scored (or none was
given), 1 when every video failed.

filter: scores the videos (files, or folders searched recursively for video extensions), keeps
those whose score is >= --min on every dimension and whose status is ok (or listed in
--keep-status), and writes OUT_DIR/kept.txt and OUT_DIR/rejected.txt: one line per video,
tab-separated: path, then dim=score for each dimension, then status=... when it is not ok (and
error=... for a file that failed, which is rejected). `cut -f1 kept.txt` gives the paths.
--min is a number for every dimension, or DIM=NUMBER (repeatable) per dimension.
"""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

from perturb.media import VIDEO_EXTS  # the shared media layer


def load_scorers(dirs: Sequence[str], device: str | None = None, batch_size: int = 8) -> list:
    from .scorer import Scorer

    try:  # keep stderr readable: no "Loading weights" bar per judge
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover
        pass
    scorers, seen = [], {}
    for d in dirs:
        try:
            s = Scorer.from_pretrained(d, device=device, batch_size=batch_size)
        except Exception as exc:
            raise SystemExit(f"error: cannot load the judge in {d}: {type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:300]}")
        base = s.dim
        seen[base] = seen.get(base, 0) + 1
        if seen[base] > 1:  # two judges of the same dimension: keep both, suffix the second
            s.dim = f"{base}_{seen[base]}"
        scorers.append(s)
    return scorers


def _cfg_key(cfg) -> str:
    try:
        return str(cfg.fingerprint())
    except Exception:
        try:
            return json.dumps(cfg.to_dict(), sort_keys=True, default=str)
        except Exception:
            return str(id(cfg))


def score_video(scorers: Sequence, path: str, always_windows: bool = False) -> dict[str, Any]:
    """One output record for one video; decodes once per distinct preprocessing config."""
    rec: dict[str, Any] = {"path": path, "scores": {}, "status": {}}
    windows_out: dict[str, list] = {}
    offsets: dict[str, dict[str, float]] = {}
    cache: dict[str, Any] = {}
    errors = []
    for s in scorers:
        try:
            key = _cfg_key(s.cfg)
            if key not in cache:
                cache[key] = s.windows(path)
            r = s.score_file(path, windows=cache[key])
            rec["scores"][s.dim] = r["score"]
            rec["status"][s.dim] = r.get("status", "ok")
            if "offset_ms" in r:
                offsets[s.dim] = {"ms": r["offset_ms"], "confidence": round(r["offset_confidence"], 4)}
            if always_windows or len(r["windows"]) > 1:
                windows_out[s.dim] = r["windows"]
        except Exception as exc:  # a bad file must not stop the batch
            msg = " ".join(str(exc).split()) or type(exc).__name__
            errors.append(f"{type(exc).__name__}: {msg}")
            rec["status"][s.dim] = "unreadable"
    if offsets:
        rec["offset"] = offsets
    if windows_out:
        rec["windows"] = windows_out
    if errors:
        rec["error"] = errors[0] if len(set(errors)) == 1 else "; ".join(dict.fromkeys(errors))
    return rec


def _write_out(records: list[dict[str, Any]], out: str, dims: list[str]) -> None:
    out_p = Path(out)
    out_p.parent.mkdir(parents=True, exist_ok=True)
    if out_p.suffix.lower() == ".csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["path", *dims, "status", "error"])
        for r in records:
            odd = sorted({st for st in r.get("status", {}).values() if st != "ok"})
            w.writerow([r["path"], *[("" if r["scores"].get(d) is None else f"{r['scores'][d]:.6f}")
                                     for d in dims], ",".join(odd) or "ok", r.get("error", "")])
        out_p.write_text(buf.getvalue())
    else:
        out_p.write_text("".join(json.dumps(r) + "\n" for r in records))


def cmd_score(args) -> int:
    scorers = load_scorers(args.scorer, device=args.device, batch_size=args.batch_size)
    dims = [s.dim for s in scorers]
    records = []
    for p in args.videos:
        rec = score_video(scorers, p, always_windows=args.windows)
        records.append(rec)
        sys.stdout.write(json.dumps(rec) + "\n")
        sys.stdout.flush()
    if args.out:
        _write_out(records, args.out, dims)
    n_ok = sum(1 for r in records if "error" not in r)
    if records and n_ok == 0:
        print(f"all {len(records)} videos failed", file=sys.stderr)
        return 1
    return 0


def expand_sources(srcs: Iterable[str]) -> list[str]:
    out = []
    for s in srcs:
        p = Path(s)
        if p.is_dir():
            out += sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_EXTS)
        else:
            out.append(s)
    return out


def parse_min(values: Sequence[str] | None, dims: Sequence[str]) -> dict[str, float]:
    """Per-dimension thresholds: default 0.5; a plain number sets all; DIM=X overrides one."""
    thr = {d: 0.5 for d in dims}
    for v in values or []:
        if "=" not in v:
            thr = {d: float(v) for d in dims}
    for v in values or []:
        if "=" in v:
            d, x = v.split("=", 1)
            if d not in thr:
                raise ValueError(f"--min {v}: unknown dimension {d!r} (have {list(dims)})")
            thr[d] = float(x)
    return thr


def cmd_filter(args) -> int:
    scorers = load_scorers(args.scorer, device=args.device, batch_size=args.batch_size)
    dims = [s.dim for s in scorers]
    thr = parse_min(args.min, dims)
    keep_status = {st.strip() for v in (args.keep_status or []) for st in v.split(",") if st.strip()}
    videos = expand_sources(args.src)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kept, rejected = [], []
    for p in videos:
        rec = score_video(scorers, p)
        cols = [f"{d}={rec['scores'][d]:.6f}" for d in dims if d in rec["scores"]]
        odd = sorted({st for st in rec["status"].values() if st != "ok"})
        cols += [f"status={','.join(odd)}"] if odd else []
        if "error" in rec:
            rejected.append("\t".join([p, *cols, "error=" + rec["error"].replace("\t", " ")]))
            continue
        ok = all(rec["scores"][d] >= thr[d] for d in dims) and all(st in keep_status for st in odd)
        (kept if ok else rejected).append("\t".join([p, *cols]))
    (out_dir / "kept.txt").write_text("".join(line + "\n" for line in kept))
    (out_dir / "rejected.txt").write_text("".join(line + "\n" for line in rejected))
    print(json.dumps({"kept": len(kept), "rejected": len(rejected), "min": thr,
                      "kept_file": str(out_dir / "kept.txt"),
                      "rejected_file": str(out_dir / "rejected.txt")}))
    return 0


def cmd_align(args) -> int:
    from .align import align

    res = align(args.scores, args.ratings, dim=args.dim, n_boot=args.n_boot, seed=args.seed)
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0
