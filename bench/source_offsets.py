"""Is each source's own soundtrack in sync? A per-source audio-video offset, measured with no judge.

    python bench/source_offsets.py --shards shards_real/lip_sync \
        --config train/configs/realvids/lip_sync.yaml --cache-dir cache/real [--splits train val test] \
        [--max-lag 12] [--scores FILE ...]

Why: a lip_sync pair says "the original is in sync, its copy shifted by s ms is not". A source whose own
soundtrack is already off by d ms breaks that for the shifts that bring it closer (|d + s| < |d|): there
the shifted copy is the better-synced clip, and a judge that says so is counted wrong.

Per source, over its untouched windows (the chosen sides of its pairs, from the tensor cache of a
`frame_encoder: landmarks` config): the Pearson correlation of the mouth opening with the speech
loudness (bench/mouth_energy_baseline.py's cue) at each lag k, loudness taken k frames after the
opening, averaged over the windows. The peak lag is the estimate: positive = the sound comes later
than the mouth (the audio lags the picture, as `eval score`'s offset_ms). Nothing is fitted, so it is
measured the same way on every split. With --scores (any judge's per-pair logits: an eval report's
scores_<split>.jsonl, or bench/cv_judge.py's held_out_scores.jsonl; several files, e.g. one per seed,
pool), it also prints each source's audio_shift pairwise accuracy per shift direction: a source whose
audio lags (d > 0) loses its pairs with negative shifts, which move it toward sync.

    python bench/source_offsets.py --propose --src ../shared/realvids/clips ../shared/realvids/clips-more \
        --manifest data_cards/manifests/realvids_clips.csv --config train/configs/realvids/lip_sync.yaml \
        --cache-dir cache/real [--out proposals.csv] [--write-manifest] [--tune]

--propose applies the written rule (SyncRule; its thresholds are the named constants below) to every
video under the --src folders that a --manifest lists, in every split alike, from the source files
themselves (their non-overlapping windows, before any correction): the same cue at each lag, and a
bootstrap over the source's windows. A source gets av_offset_ms = its peak lag only when the peak is
clear and stable; rows whose manifest `sync_confidence` is low / medium also get `sync_check` pass (the
cue finds the face in sync, or the rule corrects it) or fail (training only: the build refuses them in
val / test). --write-manifest writes av_offset_ms, av_offset_evidence and sync_check back into each
manifest; --tune prints how candidate thresholds fare on the train split's sources only.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.mouth_energy_baseline import (landmark_arguments, landmark_preprocess,  # noqa: E402
                                         opening_and_loudness, pearson, speech_bands)

if TYPE_CHECKING:
    from train.data import PairDataset, WindowDataset

# The rule that proposes a source's av_offset_ms (--propose), applied to train, val and test alike.
# Tuned on the train split's sources only (--tune; docs/real_footage.md "The sync rule"): of
# the candidates that pass a foreign voice at most MAX_NULL_RATE of the time, the one finding the most
# synthetic offsets; ties go to the stricter peak ratio.
MIN_WINDOWS = 3             # non-overlapping windows: a bootstrap over fewer says nothing
MIN_LAG_MS = 80.0           # two frames at 25 fps: a one-frame peak is within the cue's own jitter
MIN_PEAK_R = 0.3            # 0.2 passed 9-13% of train mouths paired with another source's voice; 0.3: 4%
MIN_PEAK_OVER_ZERO = 2.0    # the peak must beat lag 0 clearly, or moving the sound gains little
MIN_BOOTSTRAP_SHARE = 0.9   # the same sign of peak (or for "in sync": |peak| < MIN_LAG_MS) in 90% of resamples
N_BOOTSTRAP = 1000          # resamples of the source's windows, seeded by its file name
FLAGGED = ("low", "medium")  # manifest sync_confidence values whose rows must pass the check


@dataclass(frozen=True)
class SyncRule:
    min_windows: int = MIN_WINDOWS
    min_lag_ms: float = MIN_LAG_MS
    min_peak_r: float = MIN_PEAK_R
    min_peak_over_zero: float = MIN_PEAK_OVER_ZERO
    min_bootstrap_share: float = MIN_BOOTSTRAP_SHARE


RULE = SyncRule()


@dataclass
class Evidence:
    """What the cue says about one source: its mean lagged-correlation profile and the bootstrap's peaks."""

    windows: int
    peak_lag_ms: float
    r_peak: float
    r_0: float
    at_edge: bool                 # the peak is at +-max_lag: the true one may lie beyond the search
    boot_lags_ms: np.ndarray      # the peak lag of each resample's mean profile


@dataclass
class Decision:
    verdict: str                  # "corrected" (av_offset_ms proposed), "in sync" or "unclear"
    av_offset_ms: float | None
    bootstrap: float              # share of resamples agreeing: same sign of peak, or |peak| < min lag (in sync)
    reason: str                   # why unclear ("" otherwise)


def lagged_correlations(opening: np.ndarray, loudness: np.ndarray, max_lag: int) -> np.ndarray:
    """(2 * max_lag + 1,) Pearson r of opening[t] with loudness[t + k], k = -max_lag .. max_lag."""
    n = len(opening)
    out = np.zeros(2 * max_lag + 1)
    for i, k in enumerate(range(-max_lag, max_lag + 1)):
        out[i] = pearson(opening[max(0, -k): n - max(0, k)], loudness[max(0, k): n - max(0, -k)])
    return out


def source_profiles(pairs: "PairDataset", bands: np.ndarray, max_lag: int) -> dict[str, tuple[int, np.ndarray]]:
    """source_id -> (untouched windows, their mean lagged-correlation profile). Each window counts once
    (its pairs share the chosen side); a chosen side with operators of its own (graded pairs) is left out."""
    seen, profiles = set(), {}
    for i, m in enumerate(pairs.metas):
        key = (m.get("source_id"), tuple(m.get("window") or ()))
        if key in seen or m.get("chosen_ops"):
            continue
        seen.add(key)
        side = pairs.side(i, "chosen")
        opening, loudness = opening_and_loudness(side["video"], side["audio"], bands)
        profiles.setdefault(str(m.get("source_id")), []).append(lagged_correlations(opening, loudness, max_lag))
    return {s: (len(p), np.mean(p, axis=0)) for s, p in profiles.items()}


def shift_direction_accuracy(pairs: "PairDataset", score_files: list[str]) -> dict[str, dict[str, list[float]]]:
    """source_id -> {"s<0": wins, "s>0": wins} of these pairs' audio_shift pairs, over every file's
    records (a record names its pair by meta.key or key; records of other pairs are skipped)."""
    ops = {k: (m.get("source_id"), (m.get("ops") or [{}])[0]) for k, m in zip(pairs.keys, pairs.metas)}
    out: dict[str, dict[str, list[float]]] = {}
    for path in score_files:
        for line in Path(path).read_text().splitlines():
            rec = json.loads(line)
            source, op = ops.get((rec.get("meta") or {}).get("key") or rec.get("key"), (None, {}))
            if op.get("name") != "audio_shift":
                continue
            way = "s<0" if op["params"]["offset_ms"] < 0 else "s>0"
            won = 1.0 if rec["z_chosen"] > rec["z_rejected"] else 0.5 if rec["z_chosen"] == rec["z_rejected"] else 0.0
            out.setdefault(str(source), {"s<0": [], "s>0": []})[way].append(won)
    return out


# ----------------------------------------------------------------------------- the rule (--propose)
def window_series(windows: "WindowDataset", bands: np.ndarray) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """file name -> [(mouth opening, speech loudness) per window], from load_windows' untouched windows."""
    out: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for i, m in enumerate(windows.metas):
        out.setdefault(m["source"], []).append(
            opening_and_loudness(windows.tensors["video"][i].float(), windows.tensors["audio"][i].float(), bands))
    return out


def window_profiles(series: list[tuple[np.ndarray, np.ndarray]], max_lag: int) -> np.ndarray:
    """(windows, 2 * max_lag + 1) lagged correlations, one row per window."""
    return np.array([lagged_correlations(o, loud, max_lag) for o, loud in series]).reshape(len(series), 2 * max_lag + 1)


def evidence(profiles: np.ndarray, ms: float, seed_text: str, n_boot: int = N_BOOTSTRAP) -> Evidence:
    """The cue's estimate from per-window profiles (windows, 2L+1): the mean profile's peak, and the
    peak of n_boot resamples of the windows (with replacement; seeded by seed_text)."""
    n, width = profiles.shape
    max_lag = (width - 1) // 2
    mean = profiles.mean(axis=0)
    k = int(np.argmax(mean))
    rng = np.random.default_rng(int(hashlib.sha256(seed_text.encode()).hexdigest()[:12], 16))
    boot = np.argmax(profiles[rng.integers(0, n, (n_boot, n))].mean(axis=1), axis=1) - max_lag
    return Evidence(windows=n, peak_lag_ms=(k - max_lag) * ms, r_peak=float(mean[k]), r_0=float(mean[max_lag]),
                    at_edge=abs(k - max_lag) == max_lag, boot_lags_ms=boot * ms)


def decide(ev: Evidence, rule: SyncRule = RULE) -> Decision:
    """The rule: a correction of the peak lag when every threshold holds, "in sync" when the peak is
    clear and within min_lag_ms of 0, else "unclear" (no correction; a flagged row fails the check)."""
    lag = ev.peak_lag_ms
    late_or_early = abs(lag) >= rule.min_lag_ms
    share = float(np.mean(np.sign(ev.boot_lags_ms) == np.sign(lag)) if late_or_early
                  else np.mean(np.abs(ev.boot_lags_ms) < rule.min_lag_ms))
    why = []
    if ev.windows < rule.min_windows:
        why.append(f"{ev.windows} windows < {rule.min_windows}")
    if ev.r_peak < rule.min_peak_r:
        why.append(f"r at peak {ev.r_peak:.3f} < {rule.min_peak_r:g}")
    if late_or_early and ev.at_edge:
        why.append("peak at the edge of the search")
    if late_or_early and ev.r_peak < rule.min_peak_over_zero * max(ev.r_0, 0.0):
        why.append(f"r at peak < {rule.min_peak_over_zero:g}x r at 0")
    if share < rule.min_bootstrap_share:
        why.append(f"bootstrap {share:.0%} < {rule.min_bootstrap_share:.0%}")
    if why:
        return Decision("unclear", None, share, "; ".join(why))
    return Decision("corrected", lag, share, "") if late_or_early else Decision("in sync", None, share, "")


def evidence_text(ev: Evidence, d: Decision) -> str:
    """The manifest's av_offset_evidence (the data card prints it beside the correction)."""
    return f"peak r {ev.r_peak:.2f}, r at 0 {ev.r_0:.2f}, bootstrap {d.bootstrap:.0%}, {ev.windows} windows"


def read_rows(manifest: Path) -> tuple[list[str], list[dict[str, str]]]:
    """A CSV manifest's columns (as written) and rows (column -> text)."""
    reader = csv.DictReader(io.StringIO(manifest.read_text(encoding="utf-8-sig"), newline=""))
    return list(reader.fieldnames or []), [dict(r) for r in reader]


def write_rows(manifest: Path, columns: list[str], rows: list[dict[str, str]]) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    manifest.write_text(out.getvalue(), encoding="utf-8")


def propose_rows(series: dict[str, list[tuple[np.ndarray, np.ndarray]]], rows: dict[str, dict[str, str]],
                 max_lag: int, ms: float, rule: SyncRule = RULE) -> list[dict[str, Any]]:
    """One record per measured file the manifests list: the evidence, the decision and, for flagged rows
    (sync_confidence low / medium), the sync check."""
    out = []
    for name in sorted((f for f in series if f in rows), key=lambda f: (rows[f].get("split") or "~", f)):
        row = rows[name]
        flagged = (row.get("sync_confidence") or "").strip().lower() in FLAGGED
        rec: dict[str, Any] = {"file": name, "split": row.get("split") or "", "windows": len(series[name]),
                               "peak_lag_ms": None, "r_peak": None, "r_0": None, "bootstrap": None,
                               "decision": "unclear", "reason": "no full window", "av_offset_ms": None, "evidence": ""}
        if series[name]:
            ev = evidence(window_profiles(series[name], max_lag), ms, name)
            d = decide(ev, rule)
            rec.update(peak_lag_ms=ev.peak_lag_ms, r_peak=round(ev.r_peak, 3), r_0=round(ev.r_0, 3),
                       bootstrap=round(d.bootstrap, 3), decision=d.verdict, reason=d.reason,
                       av_offset_ms=d.av_offset_ms, evidence=evidence_text(ev, d))
        rec["sync_check"] = ("pass" if rec["decision"] != "unclear" else "fail") if flagged else ""
        out.append(rec)
    return out


def proposal_table(records: list[dict[str, Any]], max_lag: int, ms: float) -> str:
    lines = ["| split | source | windows | peak lag (ms) | r at peak | r at 0 | bootstrap | decision | "
             "av_offset_ms | sync check (low / medium rows) |", "|" + "---|" * 10]
    for r in records:
        decision = r["decision"] + (f": {r['reason']}" if r["reason"] else "")
        offset = "" if r["av_offset_ms"] is None else f"{r['av_offset_ms']:+g}"
        if r["peak_lag_ms"] is None:
            cue = "- | - | - | -"
        else:
            edge = " (edge)" if abs(r["peak_lag_ms"]) >= max_lag * ms - 1e-6 else ""
            cue = f"{r['peak_lag_ms']:+.0f}{edge} | {r['r_peak']:.2f} | {r['r_0']:.2f} | {r['bootstrap']:.0%}"
        lines.append(f"| {r['split'] or '-'} | {r['file']} | {r['windows']} | {cue} | {decision} | {offset} | "
                     f"{r['sync_check'] or '-'} |")
    return "\n".join(lines)


SYNTHETIC_MS = (-200.0, -120.0, 120.0, 200.0)  # --tune: offsets given to the train sources measured in sync
TUNE_GRID = {"min_peak_r": (0.1, 0.15, 0.2, 0.25, 0.3), "min_peak_over_zero": (1.5, 2.0, 3.0),
             "min_bootstrap_share": (0.8, 0.9, 0.95)}
MAX_NULL_RATE = 0.05        # --tune: a rule may pass at most 5% of faces paired with another source's voice


def tune(series: dict[str, list[tuple[np.ndarray, np.ndarray]]], train: list[str], max_lag: int, ms: float,
         base: SyncRule = RULE) -> list[dict[str, Any]]:
    """Every candidate of TUNE_GRID (the other thresholds as `base`) on the train sources only:
    - corrected: the real train sources it would correct;
    - recall: of the train sources with >= min_windows windows measured in sync, each given the
      SYNTHETIC_MS offsets (its profile translated), the share it corrects to within one frame;
    - null: of every ordered pair of those train sources, one's mouth with the other's voice (window i
      with window i), the share it does not call unclear (a correction or "in sync" for a foreign voice)."""
    shift = int(max(abs(d) for d in SYNTHETIC_MS) / ms)
    ext = max_lag + shift
    real = {f: evidence(window_profiles(series[f], max_lag), ms, f) for f in train}
    usable = [f for f in train if real[f].windows >= base.min_windows]
    synthetic = []
    for f in usable:
        if abs(real[f].peak_lag_ms) >= base.min_lag_ms:
            continue
        wide = window_profiles(series[f], ext)
        for d in SYNTHETIC_MS:
            k = int(round(d / ms))  # the sound k frames later: r_d(lag) = r(lag - k)
            ev = evidence(wide[:, ext - max_lag - k: ext + max_lag + 1 - k], ms, f"{f}|{d:+g}")
            synthetic.append((ev, real[f].peak_lag_ms + d))
    null = [evidence(window_profiles([(o, series[b][i % len(series[b])][1]) for i, (o, _) in enumerate(series[a])],
                                     max_lag), ms, f"{a}|{b}") for a in usable for b in usable if a != b]
    out = []
    for r in TUNE_GRID["min_peak_r"]:
        for z in TUNE_GRID["min_peak_over_zero"]:
            for b in TUNE_GRID["min_bootstrap_share"]:
                rule = replace(base, min_peak_r=r, min_peak_over_zero=z, min_bootstrap_share=b)
                found = [h.av_offset_ms is not None and abs(h.av_offset_ms - want) <= ms
                         for h, want in ((decide(ev, rule), want) for ev, want in synthetic)]
                passed = [decide(ev, rule).verdict != "unclear" for ev in null]
                out.append({"min_peak_r": r, "min_peak_over_zero": z, "min_bootstrap_share": b,
                            "corrected": sorted(f for f in train if decide(real[f], rule).verdict == "corrected"),
                            "recall": float(np.mean(found)) if found else float("nan"),
                            "null": float(np.mean(passed)) if passed else float("nan"),
                            "n_synthetic": len(synthetic), "n_null": len(null), "rule": rule == RULE})
    return out


def tune_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| min r at peak | peak / r at 0 | bootstrap | train sources corrected | synthetic offsets found "
             f"| foreign voice passed (<= {MAX_NULL_RATE:g}) | |", "|" + "---|" * 7]
    for t in rows:
        lines.append(f"| {t['min_peak_r']:g} | {t['min_peak_over_zero']:g} | {t['min_bootstrap_share']:.0%} | "
                     f"{', '.join(t['corrected']) or '-'} | {t['recall']:.2f} ({t['n_synthetic']}) | "
                     f"{t['null']:.3f} ({t['n_null']}){'' if t['null'] <= MAX_NULL_RATE else ' too many'} | "
                     f"{'the rule' if t['rule'] else ''} |")
    return "\n".join(lines)


def _listed(manifests: Sequence[str]) -> dict[str, tuple[int, dict[str, str]]]:
    """file name -> (index of its manifest, row as read_manifest gives it); a file in two manifests: SystemExit."""
    from perturb.pipeline import ManifestError, read_manifest

    out: dict[str, tuple[int, dict[str, str]]] = {}
    for i, m in enumerate(manifests):
        try:
            rows = read_manifest(m)
        except (ManifestError, OSError) as err:  # a user's file: one line, no traceback
            raise SystemExit(f"source_offsets --propose: {err}") from None
        for name, row in rows.items():
            if name in out:
                raise SystemExit(f"{name} is listed in {manifests[out[name][0]]} and {m}: one row per file")
            out[name] = (i, {k: str(v or "") for k, v in row.items()})
    return out


def write_proposals(manifests: Sequence[str], records: list[dict[str, Any]]) -> list[str]:
    """av_offset_ms / av_offset_evidence (corrections only) and sync_check (flagged rows) of `records`
    into each manifest's rows (columns added where missing); returns one line per change."""
    by_file = {r["file"]: r for r in records}
    changes = []
    for m in map(Path, manifests):
        columns, rows = read_rows(m)
        changed = False
        for row in rows:
            name = Path((row.get("file") or row.get("path") or "").replace("\\", "/")).name
            rec = by_file.get(name)
            if rec is None:
                continue
            new = {"av_offset_ms": "" if rec["av_offset_ms"] is None else f"{rec['av_offset_ms']:g}",
                   "av_offset_evidence": rec["evidence"] if rec["av_offset_ms"] is not None else "",
                   "sync_check": rec["sync_check"]}
            for col, value in new.items():
                if (row.get(col) or "") != value:
                    changes.append(f"{m.name}: {name}: {col} {row.get(col) or '(empty)'} -> {value or '(empty)'}")
                    row[col] = value
                    columns += [col] if col not in columns else []  # a column only where some row needs it
                    changed = True
        if changed:
            write_rows(m, columns, [{c: r.get(c) or "" for c in columns} for r in rows])
    return changes


def propose_main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    from perturb.pipeline import VIDEO_EXTS
    from train.data import load_windows

    ap = argparse.ArgumentParser(description="--propose: the manifest's av_offset_ms by the written rule "
                                 "(module docstring), from the source files; never from a judge")
    ap.add_argument("--propose", action="store_true", required=True)
    ap.add_argument("--src", nargs="+", action="extend", required=True, help="folders of the videos (recursive)")
    ap.add_argument("--manifest", nargs="+", action="extend", required=True,
                    help="CSV manifests listing them (split, sync_confidence); only listed files are measured")
    ap.add_argument("--config", required=True, help="a training YAML with frame_encoder: landmarks")
    ap.add_argument("--cache-dir")
    ap.add_argument("--hop", type=float, help="seconds between windows (default: the window: no overlap, so "
                    "the bootstrap resamples independent windows)")
    ap.add_argument("--max-lag", type=int, default=12, help="frames each way (12 at 25 fps: +-480 ms)")
    ap.add_argument("--workers", type=int, default=None, help="decoding processes (default: up to 4)")
    ap.add_argument("--out", help="CSV of the table")
    ap.add_argument("--write-manifest", action="store_true",
                    help="write av_offset_ms, av_offset_evidence and sync_check into the manifests")
    ap.add_argument("--tune", action="store_true", help="also the candidate thresholds on the train split's sources")
    args = ap.parse_args(argv)
    pre = landmark_preprocess(args.config)
    bands, ms = speech_bands(pre), 1000.0 / pre.fps
    listed = _listed(args.manifest)
    paths = sorted({p for folder in args.src for p in Path(folder).rglob("*")
                    if p.is_file() and p.suffix.lower() in VIDEO_EXTS and p.name in listed}, key=lambda p: p.name)
    missing = sorted(set(listed) - {p.name for p in paths})
    if missing:
        print(f"note: {len(missing)} manifest rows name no video under {' '.join(args.src)} "
              f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}); not measured", file=sys.stderr)
    if not paths:
        raise SystemExit("source_offsets --propose: no listed video under " + " ".join(args.src))
    windows = load_windows(paths, pre, hop=args.hop or pre.window_seconds, cache_dir=args.cache_dir,
                           num_workers=args.workers, log=lambda *a: print(*a, file=sys.stderr))
    series = window_series(windows, bands)
    series.update({p.name: [] for p in paths if p.name not in series})  # no full window: unclear
    records = propose_rows(series, {f: row for f, (_, row) in listed.items()}, args.max_lag, ms)
    print(proposal_table(records, args.max_lag, ms))
    corrected = [r for r in records if r["av_offset_ms"] is not None]
    print(f"\nthe rule ({RULE}): {len(corrected)} of {len(records)} sources corrected"
          + "".join(f"\n  {r['split'] or '-'} {r['file']}: {r['av_offset_ms']:+g} ms ({r['evidence']})"
                    for r in corrected))
    failed = [r for r in records if r["sync_check"] == "fail"]
    for r in failed:
        print(f"  sync check failed: {r['file']} ({r['reason']}): training only"
              + (f"; it is pinned to {r['split']}: the build will refuse it there" if r["split"] in ("val", "test") else ""))
    if args.out:
        cols = ["file", "split", "windows", "peak_lag_ms", "r_peak", "r_0", "bootstrap", "decision", "reason",
                "av_offset_ms", "evidence", "sync_check"]
        write_rows(Path(args.out), cols, [{c: "" if r[c] is None else r[c] for c in cols} for r in records])
    if args.write_manifest:
        for line in write_proposals(args.manifest, records) or ["manifests unchanged"]:
            print(line)
    if args.tune:
        train = [r["file"] for r in records if r["split"] == "train" and r["windows"]]
        print(f"\ncandidate thresholds on the {len(train)} train sources (max lag +-{args.max_lag * ms:.0f} ms, "
              f"min lag {RULE.min_lag_ms:g} ms, >= {RULE.min_windows} windows):\n")
        print(tune_table(tune({f: series[f] for f in train}, train, args.max_lag, ms)))
    return records


def main(argv: list[str] | None = None) -> dict | list[dict[str, Any]]:
    from train.data import load_split

    if "--propose" in (sys.argv[1:] if argv is None else argv):
        return propose_main(argv)
    ap = landmark_arguments(__doc__.split("\n\n")[0])
    ap.add_argument("--max-lag", type=int, default=12, help="frames each way (12 at 25 fps: +-480 ms)")
    ap.add_argument("--scores", nargs="*", default=[],
                    help="per-pair logits: scores_<split>.jsonl of eval reports, held_out_scores.jsonl of cv_judge")
    args = ap.parse_args(argv)
    pre = landmark_preprocess(args.config)
    bands, ms = speech_bands(pre), 1000.0 / pre.fps
    out: dict[str, dict] = {}
    print("| split | source | windows | peak lag (ms) | r at peak | r at 0 | audio_shift acc: s < 0 / s > 0 (pair scores) |")
    print("|---|---|---|---|---|---|---|")
    for split in args.splits:
        pairs = load_split(args.shards, split, pre, args.cache_dir, log=lambda *a: None)
        ways = shift_direction_accuracy(pairs, args.scores) if args.scores else {}
        for source, (n, prof) in sorted(source_profiles(pairs, bands, args.max_lag).items()):
            lag = int(np.argmax(prof)) - args.max_lag
            acc = {w: (float(np.mean(v)), len(v)) for w, v in ways.get(source, {}).items() if v}
            out.setdefault(split, {})[source] = {"windows": n, "peak_lag_ms": lag * ms, "r_peak": float(prof.max()),
                                                 "r_0": float(prof[args.max_lag]), "profile": prof.round(4).tolist(),
                                                 "shift_accuracy": acc}
            cell = " / ".join(f"{acc[w][0]:.2f} ({acc[w][1]})" if w in acc else "-" for w in ("s<0", "s>0"))
            print(f"| {split} | {source} | {n} | {lag * ms:+.0f}{' (edge)' if abs(lag) == args.max_lag else ''} | "
                  f"{prof.max():.2f} | {prof[args.max_lag]:.2f} | {cell if acc else '-'} |")
    return out


if __name__ == "__main__":
    main()
