"""Local pool vs Ray Data backend, measured in the same run on the same corpus.

    python bench/bench_scale_out.py [--sources 12] [--seconds 30] [--cpus 2] [--max-count 16]
                                    [--out bench/out/scale_out.json]

  build       perturb.pipeline.build of the demo corpus (lip_sync), cold (fresh canonical cache and
              staging), local pool of `--cpus` processes vs backend "ray" on a local Ray of `--cpus`
              CPUs; the Ray start-up (ray.init and the workers' first imports) is timed apart: a
              cluster and its workers start once, not per build
  featurize   train.data.featurize of the built shards (the lip_sync training config's
              preprocessing): local (DataLoader of `--cpus` workers) vs Ray (one task per shard);
              --max-count pairs per shard, so that the small corpus gives several shards per CPU
              (a real build has 500 per shard and thousands of shards)
Other jobs share the cores, so the runs go in ABBA order (local, ray, ray, local) and the ratio
is of the medians. Prints pairs/s, the ray / local ratio and per-core rates, and writes them as JSON.
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

from perturb.demo_corpus import make_demo_corpus  # noqa: E402
from perturb.pipeline import build, init_ray  # noqa: E402


def _warm(row: dict) -> dict:
    import perturb.pipeline  # noqa: F401  (what the first real task would import)
    import train.data  # noqa: F401

    return row


def start_ray(cpus: int) -> None:
    import ray.data

    init_ray(num_cpus=cpus, include_dashboard=False)
    ray.data.range(2 * cpus, override_num_blocks=2 * cpus).map(_warm, num_cpus=1).materialize()


def timed(fn, *a, **kw):
    t0 = time.time()
    out = fn(*a, **kw)
    return out, time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sources", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--max-count", type=int, default=16)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "scale_out.json"))
    args = ap.parse_args()

    from train.config import load_config, resolve_preprocess
    from train.data import featurize
    from train.preprocess import PreprocessConfig

    work = Path(tempfile.mkdtemp(prefix="avbench_scale_"))
    try:
        src = work / "demo"
        make_demo_corpus(src, n_sources=args.sources, seconds=args.seconds, progress=False)
        res: dict = {"sources": args.sources, "seconds": args.seconds, "cpus": args.cpus, "max_count": args.max_count}
        kw = dict(seed=0, workers=args.cpus, donors=src / "speech", cards_dir=work / "cards", progress=False,
                  max_count=args.max_count)
        conf = load_config("lip_sync", None)
        pre = PreprocessConfig.from_dict(resolve_preprocess(conf, []))
        times: dict[str, list[float]] = {k: [] for k in ("local", "ray", "featurize_local", "featurize_ray")}
        for i, backend in enumerate(("local", "ray", "ray", "local")):
            if backend == "ray" and "ray_start_s" not in res:
                _, res["ray_start_s"] = timed(start_ray, args.cpus)
            out = work / f"{backend}{i}"  # cold: its own canonical cache and staging
            result, t = timed(build, src, "lip_sync", out=out, backend=backend, **kw)
            times[backend].append(round(t, 2))
            feats, t = timed(featurize, out / "lip_sync", work / f"feat{i}", pre, backend=backend,
                             num_workers=args.cpus, log=lambda *a: None)
            times[f"featurize_{backend}"].append(round(t, 2))
            res.setdefault("pairs", result["card"]["pairs"])
            assert result["card"]["pairs"] == res["pairs"] == feats["pairs"]
            res.setdefault("shards", feats["shards"])
            res.setdefault("pair_mb", round(sum(s["bytes"] for s in result["shards"]) / res["pairs"] / 2 ** 20, 3))
            res.setdefault("feature_mb_per_pair", round(sum(
                p.stat().st_size for p in (work / f"feat{i}").rglob("*.safetensors")) / res["pairs"] / 2 ** 20, 3))
        pairs = res["pairs"]
        res["seconds_each_run"] = times
        for k, ts in times.items():
            res[f"{k}_pairs_per_s"] = round(pairs / sorted(ts)[len(ts) // 2 - 1 + len(ts) % 2], 3)  # lower median time
        res["ray_over_local"] = round(res["ray_pairs_per_s"] / res["local_pairs_per_s"], 3)
        res["featurize_ray_over_local"] = round(res["featurize_ray_pairs_per_s"] / res["featurize_local_pairs_per_s"], 3)
        # a cold cluster: start-up paid by one build
        res["ray_cold_pairs_per_s"] = round(pairs / (res["ray_start_s"] + min(times["ray"])), 3)
        for k in ("local_pairs_per_s", "ray_pairs_per_s", "featurize_local_pairs_per_s", "featurize_ray_pairs_per_s"):
            res[k.replace("_per_s", "_per_core_s")] = round(res[k] / args.cpus, 3)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
