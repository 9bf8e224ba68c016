"""Clip-level offset estimates of an exported lip_sync scorer on whole held-out clips.

    python bench/sync_offsets.py --scorer EXPORT (--shards SHARDS [--split test] | --videos FILE...)
                                 [--offsets -400 -200 200 400] [--transcode 'FFMPEG OUTPUT ARGS' [--container mkv]]
                                 [--swaps] [--min 0.5]

For every source of the split (from SHARDS/card.json; the video files are found under the card's
`src` folder), or every file of --videos (footage the judge never saw, e.g. another folder), it
scores the untouched clip and copies whose soundtrack is shifted by each offset
(the audio delayed for positive offsets: it lags the picture; the clip's own soundtrack fills the
shift, cut at the clip's ends; the untouched version is re-muxed the same way, with no shift), and prints a markdown table: estimated offset (ms) and confidence
per clip and shift, the error against the true shift, and the share of untouched clips whose
estimate is within +-1 frame (40 ms) of zero. Copies are made with ffmpeg (video stream copied;
a file whose video stream mp4 cannot carry, e.g. flv1, is re-encoded to h264 first, with a note).
With --transcode every clip is first re-encoded with those ffmpeg output arguments (another codec,
bitrate or size: does the judge hold on footage unlike its training shards?). With --swaps each clip
is also scored with every other clip's soundtrack (a random mismatch, as av_consistency's), against
its untouched version.

It also prints the clip-level pairs: for each |shift|, the share of (untouched clip, shifted copy)
comparisons the untouched clip wins, the same beyond 160 ms, and Spearman(score, |shift|) over all
scored versions with a 95% bootstrap CI that resamples whole clips. The default shifts are the
middles of the lip_sync recipe's five offset bands (40-80 ... 640-1000 ms), both signs.

And what `python -m eval filter` would do with them at --min (default: filter's own default, 0.5):
the share of untouched clips kept and, per |shift|, the share of shifted copies rejected, with
Wilson 95% intervals (filter_table). The records carry each version's clip logit too, so another
calibration can be applied to them later without scoring again.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.real import remove_stale_temporaries  # noqa: E402
from perturb import media  # noqa: E402

# the copies are made in a folder named after this process, so a later run removes what a killed one left
TMP_PREFIX = "avbench_sync_offsets."
TMP_NAME = re.compile(re.escape(TMP_PREFIX) + r"(\d+)\..*")
REENCODE = "-c:v libx264 -crf 18 -c:a aac -b:a 192k"  # for a file whose video stream mp4 cannot carry


def shifted_copy(src: Path, offset_ms: float, out: Path) -> Path:
    """The clip with its audio moved by offset_ms (positive: later), same length, video copied."""
    sr = media.CANONICAL_SR
    track = media.decode_audio(src, sr=sr)
    n = int(round(abs(offset_ms) / 1000 * sr))
    if n == 0:
        moved = track
    elif offset_ms > 0:   # audio later: what was heard at t is now heard at t + offset
        moved = np.concatenate([track[:n][::-1], track[:len(track) - n]])  # mirrored lead-in, no silence
    else:
        moved = np.concatenate([track[n:], track[len(track) - n:][::-1]])
    media.mux_new_audio(src, moved.astype(np.float32), out)
    return out


def swapped_copy(src: Path, donor: Path, out: Path) -> Path:
    """The clip with the soundtrack of `donor` (looped or cut to the clip's length), video copied."""
    length = len(media.decode_audio(src, sr=media.CANONICAL_SR))
    track = np.resize(media.decode_audio(donor, sr=media.CANONICAL_SR), length)
    media.mux_new_audio(src, track.astype(np.float32), out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scorer", required=True)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--shards", help="shards whose card names the sources of --split")
    src.add_argument("--videos", nargs="+", metavar="FILE", help="these video files instead of a split's sources")
    ap.add_argument("--split", default="test")
    ap.add_argument("--offsets", type=float, nargs="*", default=[-800, -480, -240, -120, -60, 60, 120, 240, 480, 800])
    ap.add_argument("--transcode", default=None, metavar="FFMPEG_OUTPUT_ARGS",
                    help="re-encode each clip first (codec robustness), e.g. "
                         "'-vf scale=-2:360 -c:v libx264 -crf 38 -c:a aac -b:a 32k'")
    ap.add_argument("--container", default="mkv", help="container of the --transcode copies")
    ap.add_argument("--plugin", action="append", default=[])
    ap.add_argument("--swaps", action="store_true",
                    help="also score each clip with the soundtrack of every other clip of the split "
                         "(av_consistency's random mismatch) against its untouched version")
    ap.add_argument("--out", default=None, help="also write the records as JSON lines")
    ap.add_argument("--min", type=float, default=None, metavar="P",
                    help="filter threshold for the kept / rejected shares (default: eval filter's, 0.5)")
    args = ap.parse_args(argv)

    from eval.scorer import Scorer

    scorer = Scorer.from_pretrained(args.scorer, plugins=args.plugin)
    files = [Path(v) for v in args.videos] if args.videos else split_files(Path(args.shards), args.split)
    frame_ms = 1000.0 / scorer.cfg.fps
    rows, records, swaps = [], [], []
    remove_stale_temporaries([Path(tempfile.gettempdir())], TMP_NAME)
    with tempfile.TemporaryDirectory(prefix=f"{TMP_PREFIX}{os.getpid()}.") as tmp:
        for f in files:
            source = f
            if args.transcode:  # an argument list, never a shell string
                source = Path(tmp) / f"{f.stem}.{args.container}"
                media.run_ffmpeg(["-i", str(f), *shlex.split(args.transcode), "-y", str(source)])
            try:
                shifted_copy(source, 0.0, Path(tmp) / "probe.mp4")
            except media.MediaError:  # a video stream mp4 cannot carry (flv1 ...): re-encode this file alone
                print(f"# {f.name}: its video cannot be copied into mp4; re-encoded first ({REENCODE})",
                      file=sys.stderr)
                source = Path(tmp) / f"{f.stem}.reencoded.mp4"
                media.run_ffmpeg(["-i", str(f), *shlex.split(REENCODE), "-y", str(source)])
            for off in [0.0, *args.offsets]:
                # the untouched version goes through the same audio re-encode as the shifted ones,
                # so no version differs from another by its audio codec
                clip = shifted_copy(source, off, Path(tmp) / f"{f.stem}_{off:+.0f}.mp4")
                r = scorer.score_file(clip)
                offset = r.get("offset") or {}
                records.append({"file": f.name, "true_ms": off, "offset_ms": offset.get("ms"),
                                "confidence": offset.get("confidence"), "score": r["score"], "logit": r["logit"],
                                "status": r["status"], "windows": len(r["windows"])})
                print(json.dumps(records[-1]), file=sys.stderr, flush=True)
            for donor in files if args.swaps else []:
                if donor != f:
                    r = scorer.score_file(swapped_copy(source, donor, Path(tmp) / f"{f.stem}_swap.mp4"))
                    swaps.append({"file": f.name, "soundtrack_of": donor.name, "score": r["score"],
                                  "logit": r["logit"], "status": r["status"]})
                    print(json.dumps(swaps[-1]), file=sys.stderr, flush=True)
    if args.out:  # aside, then renamed: a kill leaves no half file (make real removes the aside one)
        out = Path(args.out)
        aside = out.with_name(f".{out.name}.tmp{os.getpid()}")
        aside.write_text("".join(json.dumps(r) + "\n" for r in records + swaps))
        os.replace(aside, out)
    offs = [0.0, *args.offsets]
    rows.append("| clip | windows | " + " | ".join(f"{o:+.0f} ms: est (conf), score" for o in offs) + " |")
    rows.append("|---|---|" + "---|" * len(offs))
    for f in files:
        rs = {r["true_ms"]: r for r in records if r["file"] == f.name}
        rows.append(f"| {f.name[:48]} | {rs[0.0]['windows']} | " + " | ".join(
            f"{rs[o]['offset_ms']:+.0f} ({rs[o]['confidence']:.2f}), {rs[o]['score']:.2f}" for o in offs) + " |")
    zero = [r for r in records if r["true_ms"] == 0]
    within = np.mean([abs(r["offset_ms"]) <= frame_ms + 1e-6 for r in zero])
    shifted = [r for r in records if r["true_ms"] != 0]
    err = np.array([r["offset_ms"] - r["true_ms"] for r in shifted])
    print("\n".join(rows))
    print(f"\nuntouched clips with |estimate| <= 1 frame ({frame_ms:.0f} ms): {within:.2f} ({len(zero)} clips)")
    print(f"shifted copies: median |error| {np.median(np.abs(err)):.0f} ms, within +-1 frame "
          f"{np.mean(np.abs(err) <= frame_ms + 1e-6):.2f}, within +-80 ms {np.mean(np.abs(err) <= 80 + 1e-6):.2f} "
          f"({len(shifted)} copies)")
    print(f"scores: untouched {np.mean([r['score'] for r in zero]):.3f}, shifted "
          f"{np.mean([r['score'] for r in shifted]):.3f}; untouched above its shifted copies in "
          f"{np.mean([z['score'] > s['score'] for z in zero for s in shifted if s['file'] == z['file']]):.2f}")
    if shifted:
        print("\n" + "\n".join(clip_pair_table(records)))
    from eval.cli import DEFAULT_MIN

    print("\n" + "\n".join(filter_table(records, DEFAULT_MIN if args.min is None else args.min, swaps)))
    if swaps:
        untouched = {r["file"]: r["score"] for r in zero}
        wins = [untouched[w["file"]] > w["score"] for w in swaps]
        print(f"\nsoundtrack swaps: the untouched clip scores above the clip with another clip's soundtrack in "
              f"{np.mean(wins):.3f} ({sum(wins)}/{len(wins)})")
    return 0


def split_files(shards: Path, split: str) -> list[Path]:
    """The source videos of `split` named by the shards' card.json (under the card's `src` folder)."""
    card = json.loads((shards / "card.json").read_text())
    src_dir = Path(card["src"])
    if not src_dir.is_absolute():
        src_dir = (ROOT / src_dir).resolve()
    return [src_dir / s["file"] for s in card["sources"] if s.get("split") == split]


def filter_table(records: list[dict], threshold: float, swaps: list[dict] | None = None) -> list[str]:
    """Markdown lines: the share of untouched versions `eval filter --min threshold` keeps, and per
    |shift| the share of shifted copies it rejects (a status other than ok also rejects), and of the
    soundtrack swaps when there are any, Wilson 95%."""
    from eval.metrics import wilson

    def kept(r: dict) -> bool:
        return r["score"] >= threshold and r.get("status", "ok") == "ok"

    def cell(hits: list[bool]) -> str:
        lo, hi = wilson(sum(hits), len(hits))
        return f"{np.mean(hits):.2f} ({sum(hits)}/{len(hits)}) [{lo:.2f}, {hi:.2f}]" if hits else "-"

    shifts = sorted({abs(r["true_ms"]) for r in records if r["true_ms"] != 0})
    heads = [f"{o:.0f} ms copies rejected" for o in shifts] + (["soundtrack swaps rejected"] if swaps else [])
    cells = [cell([not kept(r) for r in records if abs(r["true_ms"]) == o]) for o in shifts]
    cells += [cell([not kept(r) for r in swaps])] if swaps else []
    return [f"| filter at --min {threshold:g} | untouched kept | " + " | ".join(heads) + " |",
            "|---|---|" + "---|" * len(heads),
            "| share (n) [Wilson 95%] | " + cell([kept(r) for r in records if r["true_ms"] == 0]) + " | " +
            " | ".join(cells) + " |"]


def clip_pair_table(records: list[dict], beyond_ms: float = 160.0, n_boot: int = 2000) -> list[str]:
    """Markdown lines: untouched-beats-shifted share per |shift| and beyond `beyond_ms`, and
    Spearman(score, |shift|) over every scored version, CI from resampling whole clips."""
    from eval.metrics import spearman

    untouched = {r["file"]: r["score"] for r in records if r["true_ms"] == 0}
    wins: dict[float, list[bool]] = {}
    for r in records:
        if r["true_ms"] != 0:
            wins.setdefault(abs(r["true_ms"]), []).append(untouched[r["file"]] > r["score"])
    far = [w for off, ws in wins.items() if off > beyond_ms for w in ws]
    every = [w for ws in wins.values() for w in ws]
    by_clip: dict[str, list[tuple[float, float]]] = {}
    for r in records:
        by_clip.setdefault(r["file"], []).append((r["score"], abs(r["true_ms"])))
    clips = sorted(by_clip)

    def rho(names) -> float:
        rows = [row for c in names for row in by_clip[c]]
        return spearman([s for s, _ in rows], [o for _, o in rows])

    rng = np.random.default_rng(0)
    boots = [rho(rng.choice(clips, size=len(clips))) for _ in range(n_boot)]
    lo, hi = np.nanpercentile(boots, [2.5, 97.5])
    lines = ["| clip-level pairs: abs shift | " + " | ".join(f"{o:.0f} ms" for o in sorted(wins))
             + f" | > {beyond_ms:.0f} ms | all | Spearman(score, abs shift) [95% CI, clips resampled] |",
             "|---|" + "---|" * (len(wins) + 3)]
    lines.append("| untouched above its copy | " + " | ".join(
        f"{np.mean(wins[o]):.2f} ({sum(wins[o])}/{len(wins[o])})" for o in sorted(wins))
        + f" | {np.mean(far):.3f} ({sum(far)}/{len(far)}) | {np.mean(every):.3f} ({sum(every)}/{len(every)}) | "
        f"{rho(clips):.2f} [{lo:.2f}, {hi:.2f}] ({len(records)} versions of {len(clips)} clips) |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
