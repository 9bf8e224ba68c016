"""`python -m eval score` of this checkout against an earlier revision, on the same videos, alternating.

    python bench/ab_score.py --rev REV --scorer EXPORT [--scorer EXPORT ...] [--rounds 4] VIDEO [VIDEO ...]

REV is checked out into a temporary git worktree (removed afterwards) and run with this venv's
Python; each round scores the videos once with REV and once with this checkout, one after the other,
so machine noise hits both alike. For each run: wall seconds of the scoring (from eval score's own
summary line), wall seconds of the whole command (end to end: the start, loading the judges,
included), CPU seconds of the whole command (user + sys of it and its children: start-up, workers,
ffmpeg) and x real time (seconds of video / wall, as `bench/bench_score.py` counts it: the probed
duration of every file). The last lines give the medians, their ratio, and whether the two checkouts
wrote the same records (scores, statuses, offsets).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_score import children_cpu  # noqa: E402  (the finished children's rusage: eval score's run)


def score_once(tree: Path, scorers: list[str], videos: list[str], out: Path) -> dict[str, float]:
    """One `python -m eval score` run from `tree`: scoring wall s (its summary line) and CPU s."""
    cmd = [sys.executable, "-m", "eval", "score", *[a for s in scorers for a in ("--scorer", s)], *videos,
           "--out", str(out)]
    for old in (out, out.with_name(out.name + ".settings.json")):  # else the next round resumes: nothing to score
        old.unlink(missing_ok=True)
    before, t0 = children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=tree, capture_output=True, text=True)
    e2e = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"eval score failed in {tree}:\n{proc.stderr[-2000:]}")
    m = re.search(r"of video in ([\d.]+) s", proc.stdout + proc.stderr)
    if not m:
        raise SystemExit(f"no summary line from eval score in {tree}")
    return {"wall": float(m.group(1)), "e2e": e2e, "cpu": children_cpu() - before}


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """A temporary detached git worktree of `rev`, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="avbench_ab_") as tmp:
        tree = Path(tmp) / "rev"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev],
                       check=True, capture_output=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                           capture_output=True)


def records(path: Path) -> list[tuple]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r["path"], r.get("scores"), r.get("status"), r.get("offset")) for r in rows]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rev", required=True, help="the git revision to compare with (e.g. a commit before a change)")
    ap.add_argument("--scorer", action="append", required=True, metavar="EXPORT")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("videos", nargs="+")
    args = ap.parse_args(argv)

    from perturb.media import probe

    scorers = [str(Path(s).resolve()) for s in args.scorer]
    videos = [str(Path(v).resolve()) for v in args.videos]
    seconds = sum(probe(v).duration or 0.0 for v in videos)
    with worktree(args.rev) as old_tree:
        tmp = old_tree.parent
        runs: dict[str, list[dict[str, float]]] = {args.rev: [], "this checkout": []}
        for i in range(args.rounds):
            for name, tree, tag in ((args.rev, old_tree, "rev"), ("this checkout", ROOT, "this")):
                r = score_once(tree, scorers, videos, tmp / f"{tag}.jsonl")
                runs[name].append(r)
                print(f"round {i + 1} {name}: {r['wall']:.2f} s wall, {r['e2e']:.2f} s end to end, "
                      f"{r['cpu']:.2f} CPU s, {seconds / r['wall']:.1f}x real time", flush=True)
        same = records(tmp / "rev.jsonl") == records(tmp / "this.jsonl")
    print(f"\n{len(videos)} videos, {seconds:.1f} s of video, {args.rounds} rounds (medians)\n")
    print("| checkout | wall s | CPU s | x real time | end-to-end wall s (start included) | x real time end to end |")
    print("|---|---|---|---|---|---|")
    med = {}
    for name, rs in runs.items():
        wall, cpu = statistics.median(r["wall"] for r in rs), statistics.median(r["cpu"] for r in rs)
        e2e = statistics.median(r["e2e"] for r in rs)
        med[name] = (wall, e2e)
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {seconds / wall:.1f} | {e2e:.2f} | {seconds / e2e:.1f} |")
    print(f"\nspeed-up of this checkout over {args.rev}: {med[args.rev][0] / med['this checkout'][0]:.3f}x "
          f"(end to end {med[args.rev][1] / med['this checkout'][1]:.3f}x); records identical: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
