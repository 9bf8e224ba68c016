"""Pairs per second of the shard builder against two baselines, measured in the same run.

    python bench/bench_shards.py [--src ../shared/realvids/clips] [--dims lip_sync video_quality]

For every dimension it times, on the same clips and the same number of pairs:
  avbench   `perturb.pipeline.build` with 1 and 2 worker processes (cold staging, real work)
  floor     plain ffmpeg per pair: stream-copy remux of the window for audio recipes;
            decode + h264/aac encode of the window for video recipes (no perturbation at all)
  moviepy   a straightforward moviepy implementation of the same pairs (subclip, shift the
            audio / blur the frames, write_videofile), on a subset of clips (it is slow)
and prints pairs/s and the ratios avbench / floor and avbench / moviepy as a markdown table.

It also measures two costs no build of canonical shards can avoid, to bound the ratio to the floor
(CPU seconds of the ffmpeg children, from their rusage):
  canonical CPU-s   decode + h264 encode of every window (one ffmpeg run per source, as a cold
                    build does): a cold build on 2 cores takes at least half of it
  AAC CPU-s / side  encoding one new 16 kHz soundtrack of a window (a 3-track mux minus a 1-track
                    mux, over 2, with the sources' own speech): every audio-only side with ops
                    pays it (one per pair, two per graded pair), warm or cold
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_score import children_cpu  # noqa: E402  (ffmpeg CPU: the finished children's rusage)
from perturb import media  # noqa: E402
from perturb.pipeline import build, find_sources, plan_windows  # noqa: E402
from perturb.recipe import load_recipe  # noqa: E402


def windows_of(src: Path, window: float) -> list[tuple[str, float, float, tuple[int, int]]]:
    out = []
    for s in find_sources(src):
        try:
            info = media.probe(s.path)
        except media.MediaError:
            continue
        if not (info.has_video and info.has_audio and info.duration):
            continue
        size = media.canonical_size(info.width, info.height)
        out += [(s.path, a, b, size) for a, b in plan_windows(info.duration, window)]
    return out


def run_floor(windows, pairs_per_window: int, video: bool, tmp: Path) -> float:
    t0 = time.perf_counter()
    for i, (path, a, b, size) in enumerate(windows):
        for j in range(pairs_per_window):
            out = tmp / f"floor_{i}_{j}.mp4"
            if video:
                args = ["-ss", f"{a}", "-t", f"{b - a}", "-i", path, "-vf", f"scale={size[0]}:{size[1]}",
                        *media.H264_ARGS, *media.AAC_ARGS, "-y", str(out)]
            else:
                args = ["-ss", f"{a}", "-t", f"{b - a}", "-i", path, "-c", "copy", "-y", str(out)]
            media.run_ffmpeg(args)
    return time.perf_counter() - t0


def canonical_cpu(windows, tmp: Path) -> float:
    """CPU seconds of canonicalising every window, one ffmpeg run per source (what a cold build does)."""
    by_source: dict[str, list] = {}
    for path, a, b, size in windows:
        by_source.setdefault(path, []).append(((a, b), size))
    t0 = children_cpu()
    for k, (path, spans) in enumerate(by_source.items()):
        media.canonicalise_windows(path, tmp / f"canon_{k}", [w for w, _ in spans], spans[0][1])
    return children_cpu() - t0


def aac_cpu_per_side(canonical_dir: Path, tmp: Path, repeats: int = 3) -> float:
    """CPU seconds one more AAC soundtrack adds to a window's mux (3 tracks minus 1 track, over 2),
    averaged over the first window of every cached source with its own soundtrack (the AAC
    encoder's cost depends on the signal: speech costs about twice what white noise does)."""
    import numpy as np

    cost = {1: 0.0, 3: 0.0}
    entries = sorted(e for e in canonical_dir.iterdir() if (e / "window_0000.mp4").is_file())
    for entry in entries:
        window_file = entry / "window_0000.mp4"
        seconds = media.probe(window_file).duration or 5.0
        track = np.fromfile(entry / "audio.f32", dtype=np.float32)[: int(seconds * media.CANONICAL_SR)]
        for n in cost:
            t0 = children_cpu()
            for _ in range(repeats):
                media.mux_audio_tracks([(window_file, track, tmp / f"aac_{i}.mp4") for i in range(n)])
            cost[n] += (children_cpu() - t0) / repeats / len(entries)
    return (cost[3] - cost[1]) / 2


def run_moviepy(windows, pairs_per_window: int, video: bool, tmp: Path) -> float:
    import numpy as np
    from moviepy import AudioArrayClip, VideoFileClip

    t0 = time.perf_counter()
    for i, (path, a, b, size) in enumerate(windows):
        with VideoFileClip(path) as full:
            clip = full.subclipped(a, b).resized(new_size=size).with_fps(25)
            for j in range(pairs_per_window):
                out = tmp / f"mp_{i}_{j}.mp4"
                if video:
                    import cv2

                    result = clip.image_transform(lambda f: cv2.GaussianBlur(f, (0, 0), 2.0))
                else:
                    sound = clip.audio.to_soundarray(fps=16000)
                    shift = int(0.2 * 16000)
                    shifted = np.zeros_like(sound)
                    shifted[shift:] = sound[:-shift]
                    result = clip.with_audio(AudioArrayClip(shifted, fps=16000))
                result.write_videofile(str(out), codec="libx264", audio_codec="aac", preset="veryfast",
                                       logger=None, audio_fps=16000)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default=str(ROOT.parent / "shared" / "realvids" / "clips"))
    ap.add_argument("--dims", nargs="+", default=["lip_sync", "video_quality"])
    ap.add_argument("--moviepy-windows", type=int, default=8, help="windows timed for moviepy (slow)")
    args = ap.parse_args()
    src = Path(args.src)
    if not src.is_dir():
        print(f"no clips at {src}: nothing to measure")
        return 1
    rows = []
    for dim in args.dims:
        recipe = load_recipe(dim)
        video = dim == "video_quality"
        windows = windows_of(src, recipe.window_seconds)
        n_pairs = len(windows) * recipe.pairs_per_window
        with tempfile.TemporaryDirectory() as tmp_s:
            tmp = Path(tmp_s)
            timings = {}
            for workers in (1, 2):
                out = tmp / f"ours{workers}"
                t0 = time.perf_counter()
                result = build(src, dim, out=out, workers=workers, cards_dir=None, progress=False)
                timings[f"avbench_w{workers}"] = time.perf_counter() - t0
                assert result["card"]["pairs"] == n_pairs, (result["card"]["pairs"], n_pairs)
                # warm: a second recipe / seed over the same sources reuses the canonical windows
                t0 = time.perf_counter()
                build(src, dim, out=out, workers=workers, seed=1, cards_dir=None, progress=False)
                timings[f"avbench_w{workers}_warm"] = time.perf_counter() - t0
                if workers == 2:
                    aac_side = aac_cpu_per_side(out / ".canonical", tmp)
                    encoded_sides = result["card"]["pairs"] + result["card"]["graded_pairs"]  # graded: both sides
                shutil.rmtree(out)
            canon_cpu = canonical_cpu(windows, tmp)
            timings["floor"] = run_floor(windows, recipe.pairs_per_window, video, tmp)
            sub = windows[: args.moviepy_windows]
            mp_s = run_moviepy(sub, recipe.pairs_per_window, video, tmp)
        rate = {k: n_pairs / v for k, v in timings.items()}
        rate["moviepy"] = len(sub) * recipe.pairs_per_window / mp_s
        row = {"dim": dim, "pairs": n_pairs, "windows": len(windows)}
        row.update({f"{k} pairs/s": round(v, 3) for k, v in rate.items()})
        for k in ("avbench_w1", "avbench_w2", "avbench_w1_warm", "avbench_w2_warm"):
            row[f"{k} / floor"] = round(rate[k] / rate["floor"], 2)
            row[f"{k} / moviepy"] = round(rate[k] / rate["moviepy"], 2)
        # bounds on 2 cores: a cold build cannot take less than canonical CPU / 2, and no build of
        # audio-only pairs less than (rejected sides x AAC CPU) / 2 (at least one new side per pair)
        row["canonical CPU-s"] = round(canon_cpu, 2)
        row["AAC CPU-s / side"] = round(aac_side, 4)
        row["cold / floor, bound on 2 cores"] = round(timings["floor"] / (canon_cpu / 2), 2)
        if not video:
            row["warm / floor, bound on 2 cores"] = round(timings["floor"] / (encoded_sides * aac_side / 2), 2)
        row["w2 / w1 (cold)"] = round(rate["avbench_w2"] / rate["avbench_w1"], 2)
        row["w2 / w1 (warm)"] = round(rate["avbench_w2_warm"] / rate["avbench_w1_warm"], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| measure | " + " | ".join(r["dim"] for r in rows) + " |\n|---|" + "---|" * len(rows))
    for metric in list(rows[0])[1:]:
        print(f"| {metric} | " + " | ".join(str(r.get(metric, "")) for r in rows) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
