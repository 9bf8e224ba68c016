"""What multi-face scoring costs a one-face clip: the CPU of scoring each video with this tree's code
(up to 4 faces per window, the default) against another tree (the commit before multi-face scoring)
and against this tree scoring one face per window (which isolates the faces' cost from other changes
between the trees), in the same run; and whether the records agree.

    git worktree add --detach /tmp/old REV
    python bench/multiface_cpu.py --baseline /tmp/old --scorer EXPORT VIDEO [VIDEO ...] [--reps 3]

Each (arm, repeat) is a fresh process with one torch thread that loads the judge, scores the first
video once to warm up (imports, FaceMesh's interpreters), then scores every video
(eval.cli.score_video) and reports the CPU seconds per video of the process and its ffmpeg decodes.
The arms alternate, so a busy machine slows all alike; a ratio is of the medians over repeats of the
summed CPU. The baseline's records must equal this tree's once "faces" is set aside (printed:
records_equal_without_faces), and each one-face video must get one face (faces_per_video).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# run with `python -c` in a tree: the tree's packages come first (its working directory is sys.path[0])
CHILD = """
import json, resource, sys, time
import torch
from eval.cli import load_scorers, score_video

def cpu():  # this process and its finished children (ffmpeg decodes)
    return sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))

torch.set_num_threads(1)
faces = int(sys.argv[1])  # 0: the tree's default (a tree before multi-face scoring has no such setting)
scorers = load_scorers([sys.argv[2]], **({"max_faces": faces} if faces else {}))
score_video(scorers, sys.argv[3])  # warm-up
spent, records = [], []
for v in sys.argv[3:]:
    t0 = cpu()
    records.append(score_video(scorers, v, always_windows=True))
    spent.append(cpu() - t0)
print(json.dumps({"cpu": spent, "records": records}))
"""


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True, help="a checkout of the code to compare with (git worktree)")
    ap.add_argument("--scorer", required=True, help="export folder of the judge")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("videos", nargs="+")
    args = ap.parse_args(argv)
    # (tree, max_faces): this tree with one face isolates the cost of the faces from other changes
    arms = {"baseline": (str(Path(args.baseline).resolve()), 0), "this": (str(ROOT), 0),
            "this_one_face": (str(ROOT), 1)}
    videos = [str(Path(v).resolve()) for v in args.videos]  # the children run in their trees
    runs: dict[str, list[dict]] = {k: [] for k in arms}
    for rep in range(args.reps):
        for name, (tree, faces) in arms.items():
            out = subprocess.run([sys.executable, "-c", CHILD, str(faces), str(Path(args.scorer).resolve()), *videos],
                                 cwd=tree, capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"error: scoring with {tree} failed: {' '.join(out.stderr.split()[-40:])}")
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"# rep {rep} {name}: {sum(runs[name][-1]['cpu']):.2f} CPU s", file=sys.stderr, flush=True)
    total = {k: statistics.median(sum(r["cpu"]) for r in v) for k, v in runs.items()}
    new, old = runs["this"][0]["records"], runs["baseline"][0]["records"]
    stripped = [{k: v for k, v in r.items() if k != "faces"} for r in new]
    res = {"videos": len(args.videos), "reps": args.reps,
           "cpu_s_baseline": round(total["baseline"], 3), "cpu_s_this": round(total["this"], 3),
           "cpu_s_this_one_face": round(total["this_one_face"], 3),
           "ratio": round(total["this"] / total["baseline"], 4),
           "ratio_to_one_face": round(total["this"] / total["this_one_face"], 4),
           "records_equal_without_faces": json.dumps(stripped, sort_keys=True) == json.dumps(old, sort_keys=True),
           "faces_per_video": [len(next(iter(r.get("faces", {}).values()), [])) for r in new],
           "per_video_ratio": [round(statistics.median(r["cpu"][i] for r in runs["this"]) /
                                     statistics.median(r["cpu"][i] for r in runs["baseline"]), 3)
                               for i in range(len(args.videos))]}
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
