"""`eval score` on the local backend vs `--backend ray`, measured in the same run on the same files.

    python bench/bench_score_ray.py --scorer EXPORT [--cpus 2] [--rounds 1] [--out bench/out/score_ray.json] VIDEO|DIR ...

Each run is the whole command (`python -m eval score ... --out`, a fresh output each time) in its own
process, end to end: imports, judges loaded (in every worker / actor), every file scored, records
written. The Ray runs use a local Ray of --cpus CPUs started once beforehand (a cluster is started
once, not per job; its start-up is timed apart), so they pay the actors' start (imports, judge load)
but not Ray's. Other jobs share the cores, so the runs go in ABBA order (local, ray, ray, local) per
round and the ratio is of the medians. The records of both backends are compared (they must be equal).
Prints wall seconds, x real time (seconds of video / wall) and the ray / local ratio, and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval.scale import list_videos, read_records  # noqa: E402


def run(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scorer", action="append", required=True)
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "score_ray.json"))
    a = ap.parse_args()

    import ray

    videos = [v for v, _ in list_videos(a.inputs)]
    t0 = time.perf_counter()
    ray.init(num_cpus=a.cpus, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - t0
    address = ray.get_runtime_context().gcs_address
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    judges = [x for s in a.scorer for x in ("--scorer", s)]
    times: dict[str, list[float]] = {"local": [], "ray": []}
    with tempfile.TemporaryDirectory(prefix="bench_score_ray_") as tmp:
        records = {}
        for r in range(a.rounds):
            for i, backend in enumerate(("local", "ray", "ray", "local")):
                out = Path(tmp) / f"{backend}{r}_{i}" / ("scores.jsonl" if backend == "local" else "store")
                out.parent.mkdir()
                extra = ["--workers", str(a.cpus)] if backend == "local" else \
                    ["--backend", "ray", "--ray-address", address]
                times[backend].append(run([sys.executable, "-m", "eval", "score", *judges, "--out", str(out), "--windows",
                                           *extra, *videos], env))
                records[backend] = read_records(str(out))
                print(f"{backend}: {times[backend][-1]:.1f} s", flush=True)
        seconds = sum(max((w[-1]["end"] for w in rec.get("windows", {}).values() if w), default=0.0)
                      for rec in records["local"].values())
        strip = lambda recs: {p: {k: v for k, v in r.items() if k != "windows"} for p, r in recs.items()}  # noqa: E731
        same = records["local"] == records["ray"]
        same_scores = strip(records["local"]) == strip(records["ray"])
    ray.shutdown()
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"videos": len(videos), "cpus": a.cpus, "ray_start_s": round(ray_start, 2),
              "wall_s": {k: [round(t, 2) for t in v] for k, v in times.items()},
              "median_s": {k: round(v, 2) for k, v in med.items()}, "ray_over_local": round(med["ray"] / med["local"], 3),
              "records_identical": same, "scores_identical": same_scores}
    if seconds:
        result["x_real_time"] = {k: round(seconds / v, 2) for k, v in med.items()}
    print(json.dumps(result, indent=1))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
