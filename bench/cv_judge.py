"""Cross-validation of a judge config over the sources of the train and val splits (test untouched).

    python bench/cv_judge.py --dim lip_sync --shards shards_real/lip_sync --config CONFIG --work DIR
                             [--folds 5] [--seeds 0 1 2] [--cache-dir DIR] [--add-train SHARDS]
                             [--pretrain-src DIR ...] [-- ARGS FOR python -m train]

Why: the real-footage val split is 128 pairs of 7 sources, so two configs' val accuracies differ by
up to ~0.05 by the sources alone, and a config chosen as the best of many on val is flattered by the
choice. Here the train and val pairs are pooled and re-split by source group (the groups of the
shards' card: a speaker's clips stay together) into K folds; each fold is held out once while
`python -m train` trains on the others, so every train / val pair is judged once by a judge that
never saw its speaker (~4x the pairs of val). The test split is never read.

The tensors come from the tensor cache (the same preprocessing as training); each fold is written as
feature shards (`features.json`) under WORK/folds/<k>/ and trained on with the config and seed given.
--add-train adds the train pairs of other shards (e.g. extra speakers) to every fold's training set.
--pretrain-src DIR (repeatable) measures sync pretraining the same way: for each fold,
`python -m train.pretrain` runs on the untouched source videos of the other folds (the card's `src`
folder, linked under WORK/pretrain/<k>/src) plus every video under each DIR, and the fold's judges
start from it (`--init`); so no held-out speaker is seen by pretraining either (unless a DIR holds it).
Prints, per seed, each fold's held-out pairwise accuracy and the pooled accuracy over all folds, then
the mean and sd of the pooled accuracy over seeds, and the held-out accuracy per source group and per
severity over all seeds (which speakers and offsets the judge fails on); WORK/cv.json keeps them, and
WORK/held_out_scores.jsonl every held-out pair's two logits per seed (for fusions and ensembles).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from train.config import load_config, resolve_preprocess  # noqa: E402
from train.data import (PairDataset, features_manifest, load_split, precompute_video_features,  # noqa: E402
                        read_card, write_entry)
from train.model import load_judge  # noqa: E402
from train.trainers import pair_decisions  # noqa: E402
from train.preprocess import PreprocessConfig  # noqa: E402


def source_groups(shards: str | Path) -> dict[str, str]:
    """source_id -> group, from the shards' card (a source without one is its own group)."""
    sources = (read_card(shards) or {}).get("sources")
    return {s["source_id"]: str(s.get("group") or s["source_id"]) for s in sources if isinstance(s, dict)} \
        if isinstance(sources, list) else {}


def assign_folds(pairs_per_group: dict[str, int], k: int) -> dict[str, int]:
    """group -> fold in 0..k-1, balancing the pairs: largest groups first, each into the fold that has
    the fewest pairs so far (ties: the lower fold). Deterministic, so every config sees the same folds."""
    if len(pairs_per_group) < k:
        raise SystemExit(f"{len(pairs_per_group)} source groups cannot make {k} folds")
    load = [0] * k
    fold = {}
    for group, n in sorted(pairs_per_group.items(), key=lambda gn: (-gn[1], gn[0])):
        fold[group] = int(np.argmin(load))
        load[fold[group]] += n
    return fold


def pooled(datasets: list[PairDataset]) -> tuple[dict[str, torch.Tensor], list[dict], list[str], list[dict]]:
    tensors = {k: torch.cat([d.tensors[k] for d in datasets]) for k in datasets[0].tensors}
    return (tensors, [m for d in datasets for m in d.metas], [k for d in datasets for k in d.keys],
            [i for d in datasets for i in d.info])


def subset(pairs: tuple, index: np.ndarray) -> tuple:
    tensors, metas, keys, info = pairs
    return ({k: t[torch.from_numpy(index)] for k, t in tensors.items()}, [metas[i] for i in index],
            [keys[i] for i in index], [info[i] for i in index])


def write_fold(out: Path, pairs: tuple, held_out: np.ndarray, extra: tuple | None, pre: PreprocessConfig,
               source: str, source_digest: str) -> dict[str, int]:
    """Feature shards of one fold: `train` = the pairs not held out (+ extra), `val` = the held-out ones.
    source_digest names the pair shards the tensors came from (their sha256s)."""
    rows, counts = [], {}
    for split, index in (("train", np.flatnonzero(~held_out)), ("val", np.flatnonzero(held_out))):
        parts = [subset(pairs, index)]
        if split == "train" and extra is not None:
            parts.append(extra)
        for j, (t, m, ks, inf) in enumerate(parts):
            name = f"{split}-{j:06d}"
            # what the entry holds, as a pair shard's sha256 would say it: caches keyed by it (a frozen
            # encoder's outputs) must not mix two folds
            digest = hashlib.sha256("\n".join([source_digest, *ks]).encode()).hexdigest()
            write_entry(out / name, t, {"file": name, "sha256": digest, "split": split}, ks, m, inf, pre)
            rows.append({"split": split, "entry": name, "shard": name, "sha256": digest, "count": len(ks)})
        counts[split] = sum(len(p[2]) for p in parts)
    (out / "features.json").write_text(json.dumps(features_manifest(pre, rows, source), indent=1))
    return counts


def pretrain_fold(args: argparse.Namespace, out: Path, groups: list[str]) -> Path:
    """python -m train.pretrain on the card's sources of `groups` (train / val splits only) and the
    --pretrain-src folders; returns its run folder."""
    card = read_card(args.shards) or {}
    if not isinstance(card.get("sources"), list) or not card.get("src"):
        raise SystemExit(f"--pretrain-src needs the shards' card with its sources and src folder ({args.shards})")
    src = out / "src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    for s in card["sources"]:
        if s.get("split") in ("train", "val") and str(s.get("group") or s["source_id"]) in groups:
            video = Path(card["src"], s["file"]).resolve()
            if not video.is_file():
                raise SystemExit(f"source video {video} not found (the card's src is relative to the folder "
                                 f"the shards were built from: run there)")
            (src / Path(s["file"]).name).symlink_to(video)  # a build of several folders names files below src
    run = out / "run"
    cmd = [sys.executable, "-m", "train.pretrain", "--dim", args.dim, "--src", str(src),
           *[a for d in args.pretrain_src for a in ("--src", d)], "--no-split-check", "--run", str(run),
           "--no-resume", *(["--config", args.config] if args.config else []),
           *(["--cache-dir", args.cache_dir] if args.cache_dir else [])]
    with open(out / "pretrain.log", "w") as fh:
        if subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode:
            raise SystemExit(f"sync pretraining for {out.name} failed; see {out / 'pretrain.log'}")
    print(f"[cv] pretrained {run} on {len(list(src.iterdir()))} sources + {args.pretrain_src}", flush=True)
    return run


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dim", required=True)
    ap.add_argument("--shards", required=True, help="pair shards with train and val splits and a card")
    ap.add_argument("--config", help="training YAML (default train/configs/<dim>.yaml)")
    ap.add_argument("--work", required=True, help="folder for the folds' feature shards and runs")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cache-dir", help="tensor cache (as python -m train --cache-dir)")
    ap.add_argument("--add-train", help="shards whose train pairs join every fold's training set")
    ap.add_argument("--pretrain-src", action="append", default=[], metavar="DIR",
                    help="sync-pretrain each fold on the other folds' sources + the videos under DIR (repeatable)")
    args = ap.parse_args(argv)

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one "Loading weights" bar per fold and seed otherwise
    conf = load_config(args.dim, args.config)
    plugins = list(conf.get("plugins") or [])
    for i, a in enumerate(train_args[:-1]):
        if a == "--plugin":
            plugins.append(train_args[i + 1])
    for module in plugins:
        __import__(module)
    pre = PreprocessConfig.from_dict(resolve_preprocess(conf, plugins))
    loaded = [load_split(args.shards, split, pre, args.cache_dir) for split in ("train", "val")]
    if args.add_train:
        loaded.append(load_split(args.add_train, "train", pre, args.cache_dir))
    pairs, extra = pooled(loaded[:2]), pooled(loaded[2:]) if args.add_train else None
    source_digest = " ".join(sh["sha256"] for d in loaded for sh in d.shards)
    groups = source_groups(args.shards)
    group_of = [groups.get(m["source_id"], m["source_id"]) for m in pairs[1]]
    fold_of_group = assign_folds({g: group_of.count(g) for g in set(group_of)}, args.folds)
    fold_of_pair = np.array([fold_of_group[g] for g in group_of])

    work = Path(args.work)
    results: dict = {"dim": args.dim, "shards": str(args.shards), "config": conf["_path"], "folds": args.folds,
                     "add_train": args.add_train, "train_args": train_args, "fold_groups": {}, "seeds": {}}
    for k in range(args.folds):
        results["fold_groups"][k] = sorted(g for g, f in fold_of_group.items() if f == k)
        counts = write_fold(work / "folds" / str(k), pairs, fold_of_pair == k, extra, pre, str(args.shards),
                            source_digest)
        print(f"[cv] fold {k}: {counts['val']} held-out pairs of {len(results['fold_groups'][k])} source group(s), "
              f"{counts['train']} train pairs", flush=True)
    init = {k: pretrain_fold(args, work / "pretrain" / str(k), [g for g, f in fold_of_group.items() if f != k])
            for k in range(args.folds)} if args.pretrain_src else {}
    results["pretrain_src"] = args.pretrain_src
    wins_by: dict[str, dict[str, list[float]]] = {"group": {}, "severity": {}}
    # written fold by fold: a kill keeps the held-out scores of what finished
    with open(work / "held_out_scores.jsonl", "w") as scores_file:
        for seed in args.seeds:
            accs, ns = [], []
            for k in range(args.folds):
                run = work / "runs" / f"fold{k}_s{seed}"
                cmd = [sys.executable, "-m", "train", "--dim", args.dim, "--shards", str(work / "folds" / str(k)),
                       "--run", str(run), "--seed", str(seed), "--no-resume",
                       *(["--config", args.config] if args.config else []),
                       *(["--init", str(init[k])] if k in init else []),
                       *(["--cache-dir", args.cache_dir] if args.cache_dir else []), *train_args]
                log = run.with_suffix(".log")
                log.parent.mkdir(parents=True, exist_ok=True)
                with open(log, "w") as fh:
                    if subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode:
                        raise SystemExit(f"training fold {k} seed {seed} failed; see {log}")
                metrics = json.loads((run / "metrics.json").read_text())
                accs.append(metrics["val_pairwise_accuracy"])
                ns.append(metrics["n_val_pairs"])
                print(f"[cv] seed {seed}, fold {k + 1}/{args.folds}: held-out pairwise {accs[-1]:.3f} "
                      f"({metrics['wall_time_s']:.0f} s)", flush=True)
                # the held-out pairs as training read them, so a frozen encoder's outputs come from the
                # cache its run wrote (keyed by the same shards) instead of being encoded again
                held = load_split(work / "folds" / str(k), "val", pre, log=lambda *a: None)
                model, _ = load_judge(run / "model", plugins=plugins)
                precompute_video_features(model, held.tensors, ["chosen.video", "rejected.video"],
                                          [held.shards, pre.fingerprint()], args.cache_dir, log=lambda *a: None)
                dc, dr = pair_decisions(model, held)
                for key, meta, win, zc, zr in zip(held.keys, held.metas, (dc > dr) + 0.5 * (dc == dr), dc, dr):
                    group = groups.get(meta["source_id"], meta["source_id"])
                    wins_by["group"].setdefault(group, []).append(float(win))
                    wins_by["severity"].setdefault(str(meta.get("severity")), []).append(float(win))
                    scores_file.write(json.dumps({
                        "seed": seed, "fold": k, "key": key, "group": group,
                        "source_id": meta["source_id"], "severity": meta.get("severity"), "operator": meta.get("operator"),
                        "z_chosen": float(zc), "z_rejected": float(zr)}) + "\n")
                scores_file.flush()
            pool = float(np.dot(accs, ns) / sum(ns))
            results["seeds"][seed] = {"fold_accuracy": accs, "fold_pairs": ns, "pooled": pool}
            print(f"[cv] seed {seed}: folds {' '.join(f'{a:.3f}' for a in accs)}; pooled {pool:.3f} ({sum(ns)} pairs)",
                  flush=True)
    pools = [r["pooled"] for r in results["seeds"].values()]
    results["pooled_mean"] = float(np.mean(pools))
    results["pooled_sd"] = float(np.std(pools, ddof=1)) if len(pools) > 1 else 0.0
    print(f"[cv] pooled pairwise accuracy over {len(pools)} seed(s): {results['pooled_mean']:.3f} "
          f"(sd {results['pooled_sd']:.3f})")
    for by, wins in wins_by.items():
        results[f"by_{by}"] = {key: {"accuracy": float(np.mean(w)), "pair_judgements": len(w)}
                               for key, w in sorted(wins.items())}
        print(f"[cv] held-out accuracy by {by} (all seeds): " + ", ".join(
            f"{key} {r['accuracy']:.2f} ({r['pair_judgements']})" for key, r in results[f"by_{by}"].items()))
    (work / "cv.json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
