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
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.mouth_energy_baseline import (landmark_arguments, landmark_preprocess,  # noqa: E402
                                         opening_and_loudness, pearson, speech_bands)

if TYPE_CHECKING:
    from train.data import PairDataset


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


def main(argv: list[str] | None = None) -> dict:
    from train.data import load_split

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
