"""Scoring throughput of exported judges: x real time, before / after the streaming scorer, and a profile.

    python bench/bench_score.py --scorer EXPORT [--scorer EXPORT ...] VIDEO [VIDEO ...]
                                [--workers 2] [--profile] [--no-before] [--out results.json]
    python bench/bench_score.py --scorer EXPORT --end-to-end [--baseline REV] [--rounds 3] VIDEO [VIDEO ...]
    python bench/bench_score.py --scorer EXPORT --device cuda [--batch-size 256] VIDEO [VIDEO ...]

--end-to-end: `python -m eval score --scorer EXPORT VIDEO ...` as a user runs it, start included, in
this tree and in a git worktree of --baseline (default HEAD, the last commit), alternating for
--rounds rounds so that the load of the machine falls on both alike: wall seconds, user+sys CPU
seconds of the command and all it started (workers, ffmpeg; less sensitive to other jobs than wall),
x real time, and whether the two print the same scores. Then the start in parts, in a fresh process
of each tree: imports (numpy, torch, the eval / train modules), loading the export, FaceMesh's start,
the first clip and the same clip again (its steady cost).

--device cuda: the judge on the GPU, as `eval score --device cuda` runs it: --workers processes decode
and find faces (spawned), this process runs the judge on the windows of several files at once
(--batch-size windows); against one process scoring one file at a time. Where the time goes: the
workers' CPU (decode + face landmarks), the judge's wall seconds here, the wait for windows.

Without videos it scores the embedded demo corpus (perturb.demo_corpus), so it runs on a fresh clone.
One process, the judges loaded once (start-up is timed on its own: it is paid once per batch), then
the same videos are scored by:
  before      the scorer as it was: each window decoded on its own (ffmpeg seeks to the window
              and decodes from the keyframe before it) and a new FaceMesh graph per window, in
              one process (`eval score` before 2026-11-27);
  after, 1    eval.cli.score_videos with one process: the picture decoded once and streamed
              (ffmpeg decodes ahead on its own core), FaceMesh reset per window; once with
              MediaPipe's own graph, once with the default runtime (LiteRT, train/facemesh_litert.py);
  after, N    the same over N forked worker processes (whole files per worker), as `eval score`
              runs by default (one worker per core): MediaPipe's graph with the workers free to
              move between cores (eval score before this change), the graph with each worker pinned
              to a core, LiteRT not pinned, and the default (LiteRT, pinned).
For each: wall seconds, CPU seconds (this process, its workers and every ffmpeg child), x real time
(seconds of video / wall seconds) and the speed-up over the first row in the same run. The scores of
every mode are compared (max |difference|). --profile adds a cProfile table of where the time of
the one-process modes goes (decode, face landmarks, audio features, judge, other).
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# stages of the profile: label -> (file, function) whose cumulative CPU time is that stage (none calls another)
STAGES = {"face finding (FaceMesh landmarks; cascades where it finds none)": (("train/preprocess.py", "_find_face"),),
          "audio features (log-mel)": (("train/preprocess.py", "audio_features"),),
          "judge forward": (("eval/scorer.py", "outputs"),)}


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (ffmpeg, pool workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@contextlib.contextmanager
def legacy_scorer() -> Iterator[None]:
    """The scorer before the streaming rewrite: per-window decode, a fresh FaceMesh graph per window."""
    import train.landmarks as lm
    import train.preprocess as pre
    from perturb.media import probe

    def windows_per_window_decode(path, cfg, hop_seconds=None, min_seconds=1.0, return_info=False):
        info = probe(path)
        dur, win = info.duration, cfg.window_seconds
        out = []
        for s in pre.window_starts(dur, win, hop_seconds, min_seconds):
            frames, audio = pre.load_media(path, cfg, start=s, duration=win)
            inputs, crop_info = pre.make_inputs(frames, audio, cfg, return_info=True)
            out.append((round(s, 3), round(min(s + win, dur), 3), inputs,
                        dict(crop_info, frames=len(frames), audio_s=round(len(audio) / cfg.sr, 3),
                             has_audio=bool(info.has_audio))))
        return out

    def per_config(path, cfgs, hop_seconds=None, min_seconds=1.0, return_info=False):
        return [windows_per_window_decode(path, c, hop_seconds, min_seconds, return_info) for c in cfgs]

    saved = pre.windows_for_configs, lm._mesh_for_new_clip

    def fresh_graph():
        lm._close_mesh()
        return saved[1]()

    pre.windows_for_configs, lm._mesh_for_new_clip = per_config, fresh_graph
    try:
        yield
    finally:
        pre.windows_for_configs, lm._mesh_for_new_clip = saved


@contextlib.contextmanager
def facemesh_runtime(name: str | None) -> Iterator[None]:
    """Run FaceMesh on `name` (train.landmarks.RUNTIMES; None: the default) in this process and in
    the workers it starts."""
    saved = os.environ.pop("AVBENCH_FACEMESH", None)
    if name:
        os.environ["AVBENCH_FACEMESH"] = name
    try:
        yield
    finally:
        os.environ.pop("AVBENCH_FACEMESH", None)
        if saved is not None:
            os.environ["AVBENCH_FACEMESH"] = saved


def children_cpu() -> float:
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return kids.ru_utime + kids.ru_stime


def timed(run: Callable[[], list[dict[str, Any]]], profile: bool = False) -> dict[str, Any]:
    # the profile counts CPU time (time.process_time: every thread of this process), not wall time,
    # so that other work on the machine does not move the stages; ffmpeg's CPU is its children's
    prof = cProfile.Profile(time.process_time) if profile else None
    k0, c0, t0 = children_cpu(), cpu_seconds(), time.perf_counter()
    if prof:
        prof.enable()
    records = run()
    if prof:
        prof.disable()
    out = {"wall": time.perf_counter() - t0, "cpu": cpu_seconds() - c0, "records": records}
    if prof:
        out["stages"] = stage_times(prof, out["cpu"], children_cpu() - k0)
    return out


def stage_times(prof: cProfile.Profile, cpu: float, ffmpeg_cpu: float) -> dict[str, float]:
    """CPU seconds per stage: ffmpeg (its processes), then the profiled functions of this process."""
    stats = pstats.Stats(prof).stats  # {(file, line, function): (calls, primitive calls, own, cumulative, callers)}
    out = {"decode (ffmpeg processes)": ffmpeg_cpu}
    out.update({label: sum(v[3] for (f, _, n), v in stats.items() if any(f.endswith(sf) and n == sn for sf, sn in keys))
                for label, keys in STAGES.items()})
    out["other (probe, windowing, Python)"] = max(0.0, cpu - sum(out.values()))
    return out


def demo_videos(tmp: Path) -> list[str]:
    from perturb.demo_corpus import make_demo_corpus

    return [str(p) for p in make_demo_corpus(tmp, n_sources=4, progress=False)]


# the start of `eval score` in parts, in a fresh process of the tree it runs in (--end-to-end)
PARTS = """
import json, resource, sys, time
rows, last = [], [time.perf_counter(), time.process_time(), 0.0]
def mark(name):
    k = resource.getrusage(resource.RUSAGE_CHILDREN)
    now = [time.perf_counter(), time.process_time(), k.ru_utime + k.ru_stime]
    rows.append([name] + [b - a for a, b in zip(last, now)])
    last[:] = now
import numpy; mark("import numpy")
import torch; mark("import torch")
torch.set_num_threads(1)
import eval.cli as cli, train.preprocess, train.landmarks; mark("import eval.cli, train.preprocess, train.landmarks")
scorers = cli.load_scorers(sys.argv[1:2]); mark("load the export (and what it imports)")
loaded = sorted(m for m in ("transformers", "trl") if m in sys.modules)
from train.landmarks import _mesh_for_new_clip
_mesh_for_new_clip(); mark("FaceMesh start")
first = cli.score_video(scorers, sys.argv[2]); mark("first clip (decode, landmarks, judge)")
again = cli.score_video(scorers, sys.argv[2]); mark("the same clip again")
print(json.dumps({"rows": rows, "loaded": loaded, "same": first == again}))
"""


def end_to_end(args) -> int:
    """`python -m eval score` of this tree against args.baseline, alternating (bench/ab_score.py), then
    the start in parts in a fresh process of each (module doc)."""
    import subprocess

    from bench import ab_score

    if not args.videos:
        raise SystemExit("error: --end-to-end needs videos")
    scorers = [str(Path(s).resolve()) if Path(s).exists() else s for s in args.scorer]
    ab_score.main(["--rev", args.baseline, *[a for s in scorers for a in ("--scorer", s)], "--rounds",
                   str(args.rounds), *args.videos])
    parts = {}
    with ab_score.worktree(args.baseline) as old:
        for name, tree in ((args.baseline, old), ("this checkout", ROOT)):
            for r in range(args.rounds):  # alternating, as the runs above; each row's median is kept
                done = subprocess.run([sys.executable, "-c", PARTS, scorers[0], str(Path(args.videos[0]).resolve())],
                                      cwd=tree, check=True, capture_output=True, text=True)
                parts.setdefault(name, []).append(json.loads(done.stdout.strip().splitlines()[-1]))
    import statistics

    names = list(parts)
    print(f"\nThe start of `eval score` in parts, fresh processes ({args.rounds} each, medians; load average "
          f"{os.getloadavg()[0]:.1f}): wall s / CPU s of the process / CPU s of its ffmpeg\n")
    print("| part | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for i, row in enumerate(parts[names[0]][0]["rows"]):
        cells = [" / ".join(f"{statistics.median(p['rows'][i][j] for p in parts[n]):.2f}" for j in (1, 2, 3))
                 for n in names]
        print(f"| {row[0]} | " + " | ".join(cells) + " |")
    print("\nimported when scoring: " + "; ".join(
        f"{n}: {', '.join(parts[n][0]['loaded']) or 'neither transformers nor trl'}" for n in names))
    return 0


def on_gpu(args) -> int:
    """The judge on args.device, windows of several files batched (module doc), against one process."""
    from eval.cli import default_workers, load_scorers, score_videos
    from eval.scorer import Scorer
    from perturb.media import probe

    scorers = load_scorers(args.scorer, device=args.device, batch_size=args.batch_size)
    videos = args.videos
    seconds = sum(probe(v).duration or 0.0 for v in videos)
    workers = args.workers or default_workers()
    judge = {"wall": 0.0, "windows": 0}
    real = Scorer.precompute

    def timed_precompute(self, inputs):  # the judge's share: wall seconds here, GPU work included
        t0 = time.perf_counter()
        real(self, inputs)
        judge["wall"] += time.perf_counter() - t0
        judge["windows"] += len(inputs)

    Scorer.precompute = timed_precompute
    try:
        list(score_videos(scorers, videos[:1], workers=1, batch_files=True))  # warm-up: the GPU's first kernels
        judge.update(wall=0.0, windows=0)
        rows = []
        for name, n in ((f"1 process (decode, landmarks, judge on {args.device} in turn)", 1),
                        (f"{workers} worker processes decode and find faces, windows batched to {args.device}", workers)):
            judge.update(wall=0.0, windows=0)
            res = timed(lambda: list(score_videos(scorers, videos, workers=n, batch_files=True)), profile=n == 1)
            res.update(name=name, judge=dict(judge))
            rows.append(res)
            print(f"[bench_score] {name}: {res['wall']:.2f} s wall", file=sys.stderr)
    finally:
        Scorer.precompute = real
    print(f"{len(videos)} videos, {seconds:.1f} s of video on {args.device}, judge batch {args.batch_size} windows; "
          f"{os.cpu_count()} CPUs\n")
    print("| mode | wall s | x real time | judge s (wall, here) | windows judged | CPU s (this process + workers + ffmpeg) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['wall']:.2f} | {seconds / r['wall']:.1f} | {r['judge']['wall']:.2f} | "
              f"{r['judge']['windows']} | {r['cpu']:.2f} |")
    if "stages" in rows[0]:
        print("\nWhere the CPU time of the one-process mode goes (CPU s):\n")
        for label, v in rows[0]["stages"].items():
            print(f"- {label}: {v:.2f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scorer", action="append", required=True, metavar="EXPORT")
    ap.add_argument("videos", nargs="*")
    ap.add_argument("--workers", type=int, default=0, help="workers of the parallel mode (default: one per core)")
    ap.add_argument("--profile", action="store_true", help="where the time goes, before and after")
    ap.add_argument("--no-before", action="store_true", help="skip the `before` baseline")
    ap.add_argument("--out", default=None, help="also write the results as JSON")
    ap.add_argument("--end-to-end", action="store_true",
                    help="the whole command, start included, this tree against --baseline, alternating")
    ap.add_argument("--baseline", default="HEAD", help="git revision --end-to-end compares with (default HEAD)")
    ap.add_argument("--rounds", type=int, default=3, help="--end-to-end: runs of each tree")
    ap.add_argument("--device", default="cpu", help="torch device of the judge (cuda: windows batched)")
    ap.add_argument("--batch-size", type=int, default=8, help="judge batch in windows (--device cuda: e.g. 256)")
    ap.add_argument("--batched", action="store_true", help="the --device cuda comparison on any device (a CPU check)")
    args = ap.parse_args(argv)
    if args.end_to_end:
        return end_to_end(args)
    if args.batched or str(args.device).startswith("cuda"):
        return on_gpu(args)

    from eval.cli import default_workers, load_scorers, score_videos
    from perturb.media import probe

    import torch

    torch.set_num_threads(1)  # as `eval score` on CPU (eval/cli.py _workers)
    t0 = time.perf_counter()
    scorers = load_scorers(args.scorer)
    startup = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="avbench_bench_score_") as tmp:
        videos = args.videos or demo_videos(Path(tmp))
        seconds = sum(probe(v).duration or 0.0 for v in videos)
        workers = args.workers or default_workers()
        modes: list[tuple[str, Callable[[], list]]] = []

        def scored(n: int, runtime: str | None = None, pin: bool = True, paths: list | None = None
                   ) -> Callable[[], list]:
            def run() -> list:
                with facemesh_runtime(runtime):
                    return list(score_videos(scorers, paths or videos, workers=n, pin_cores=pin))
            return run

        if workers > 1:  # first: its workers are forked, which MediaPipe allows only before its first use here
            modes.append((f"after, {workers} worker processes, MediaPipe graph, not pinned",
                          scored(workers, "mediapipe", pin=False)))
            modes.append((f"after, {workers} worker processes, MediaPipe graph, pinned to cores",
                          scored(workers, "mediapipe")))
            modes.append((f"after, {workers} worker processes, LiteRT FaceMesh, not pinned", scored(workers, pin=False)))
            modes.append((f"after, {workers} worker processes (eval score's default here: LiteRT FaceMesh, "
                          "pinned to cores)", scored(workers)))
        # warm-up of this process: its first FaceMesh graph and torch's first forward are paid once
        modes.append(("warm-up", lambda: [*scored(1, "mediapipe", paths=videos[:1])(), *scored(1, paths=videos[:1])()]))
        if not args.no_before:
            def before() -> list:
                with legacy_scorer(), facemesh_runtime("mediapipe"):
                    return list(score_videos(scorers, videos, workers=1))
            modes.append(("before (per-window decode, new FaceMesh graph per window)", before))
        modes.append(("after, 1 process, MediaPipe graph (streamed decode, FaceMesh reset per window)",
                      scored(1, "mediapipe")))
        modes.append(("after, 1 process, LiteRT FaceMesh", scored(1)))
        results = []
        for name, run in modes:
            res = timed(run, profile=args.profile and "worker processes" not in name)
            res["name"] = name
            if name != "warm-up":
                results.append(res)
            print(f"[bench_score] {name}: {res['wall']:.2f} s wall", file=sys.stderr)
        results.sort(key=lambda r: (not r["name"].startswith("before"), "worker processes" in r["name"]))

    dims = [s.dim for s in scorers]
    base = results[0]
    print(f"{len(videos)} videos, {seconds:.1f} s of video; judges: {', '.join(dims)}; "
          f"{os.cpu_count()} CPUs; start-up (imports + loading the judges, once per batch) {startup:.1f} s\n")
    print("| mode | wall s | CPU s | x real time (video s / wall s) | speed-up vs first row "
          "| max abs score diff vs first row |")
    print("|---|---|---|---|---|---|")
    for r in results:
        diff = max((abs(a["scores"].get(d, 0) - b["scores"].get(d, 0))
                    for a, b in zip(base["records"], r["records"]) for d in dims), default=0.0)
        print(f"| {r['name']} | {r['wall']:.2f} | {r['cpu']:.2f} | {seconds / r['wall']:.1f} | "
              f"{base['wall'] / r['wall']:.2f} | {diff:.4f} |")
    if args.profile:
        print("\nWhere the CPU time of one process goes (CPU seconds; cProfile with a CPU clock, "
              "ffmpeg from its rusage):\n")
        prof = [r for r in results if "stages" in r]
        print("| stage | " + " | ".join(r["name"].split(" (")[0] for r in prof) + " |")
        print("|---|" + "---|" * len(prof))
        for label in prof[0]["stages"]:
            print(f"| {label} | " + " | ".join(f"{r['stages'][label]:.2f}" for r in prof) + " |")
    for res in results:
        for r in res["records"]:
            if "error" in r:
                print(f"failed ({res['name']}): {r['path']}: {r['error']}", file=sys.stderr)
    if args.out:
        Path(args.out).write_text(json.dumps({"videos": videos, "seconds": seconds, "startup": startup, "modes": [
            {k: v for k, v in r.items() if k != "records"} for r in results]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
