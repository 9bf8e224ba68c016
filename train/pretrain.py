"""python -m train.pretrain --dim lip_sync --src DIR [--src DIR ...] --shards SHARDS --run RUN [--config YAML]

Self-supervised sync pretraining (SyncNet-style). Untouched real videos need no pairs and no labels:
in every window the audio is in sync with the picture, so the judge's two streams learn to pick
the true offset (0) among the 2K+1 of its sync profile (+-max_offset_frames) -- every frame of
every clip teaches sync, where a preference pair teaches one bit. Then

    python -m train --dim lip_sync --init RUN ...     (make train ... INIT=RUN)

fine-tunes reward / dpo / sft judges from it.

Sources: every video under each --src (recursive). The val and test sources of the shards the judge
will be trained and measured on (--shards, its card.json) are left out, by file name, so the
held-out numbers stay held out; the sources used and left out are recorded in RUN/metrics.json.
Windows are config.preprocess.window_seconds long, every `pretrain.hop_seconds` (default 0.5),
preprocessed once into the tensor cache.

Writes RUN/model/ (the judge, save_pretrained + preprocessing.json; its head is untrained) and
RUN/metrics.json (sources, windows, steps, offset accuracy on the val originals of --shards).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train/__main__.py

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from perturb.media import VIDEO_EXTS

from .config import ranged


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m train.pretrain", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", required=True)
    ap.add_argument("--src", action="append", required=True, metavar="DIR",
                    help="folder of untouched real videos (repeatable)")
    ap.add_argument("--shards", default=None,
                    help="the shards the judge is trained / measured on (default shards/<dim>): their val and "
                         "test sources are left out")
    ap.add_argument("--no-split-check", action="store_true",
                    help="pretrain without shards to check against (nothing is left out)")
    ap.add_argument("--run", default=None, help="run directory (default runs/<dim>_pretrain)")
    ap.add_argument("--config", default=None, help="YAML (default train/configs/<dim>.yaml)")
    ap.add_argument("--max-steps", type=ranged("max_steps"), default=None)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--seed", type=ranged("seed"), default=None)
    ap.add_argument("--workers", type=int, default=None, help="preprocessing workers")
    ap.add_argument("--no-resume", action="store_true")
    ap.add_argument("--plugin", action="append", default=[], metavar="MODULE")
    return ap.parse_args(argv)


def find_videos(dirs: list[str]) -> list[Path]:
    out = []
    for d in dirs:
        p = Path(d)
        if not p.is_dir():
            raise SystemExit(f"--src {d}: no such folder")
        out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_EXTS)
    return list(dict.fromkeys(f.resolve() for f in out))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    t_start = time.time()
    args = parse_args(argv)
    from transformers import AutoModel, set_seed

    from .config import card_for_default_config, load_config, resolve_preprocess
    from .runs import held_out_files, last_complete_checkpoint, quiet_library_bars
    from .data import load_split, load_windows, precompute_video_features
    from .encoders import import_plugins
    from .model import judge_config_for
    from .preprocess import PreprocessConfig
    from .trainers import PRETRAINING, offset_estimates

    quiet_library_bars()

    def log(msg: str) -> None:
        print(msg if msg.startswith("[") else f"[pretrain] {msg}", flush=True)

    conf = load_config(args.dim, args.config, card_for_default_config(args.dim, args.config, args.shards), log)
    if (conf.get("model") or {}).get("backbone"):
        raise SystemExit(f"{conf['_path']}: python -m train.pretrain trains the small judges' sync profile; a "
                         f"`backbone:` judge has none (train it with python -m train)")
    plugins = import_plugins([*(conf.get("plugins") or []), *args.plugin])
    pre = PreprocessConfig.from_dict(resolve_preprocess(conf, plugins))
    run = Path(args.run or f"runs/{args.dim}_pretrain")
    shards = Path(args.shards or f"shards/{args.dim}")
    seed = args.seed if args.seed is not None else int(conf.get("seed", 0))
    ckpt_dir = run / "checkpoints" / "sync"
    if args.no_resume:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    last = last_complete_checkpoint(ckpt_dir, log)
    # the YAML's train: + pretrain: sections, then the command line
    trainer_cls, config_cls = PRETRAINING
    overrides: dict[str, Any] = {"seed": seed, "output_dir": str(ckpt_dir), "resume_from_checkpoint": last}
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
    targs = config_cls.from_sections(conf, ("pretrain",), **overrides)

    # ------------------------------------------------------------ sources (val / test kept out)
    videos = find_videos(args.src)
    excluded: list[dict[str, str]] = []
    if not args.no_split_check:
        if not (shards / "card.json").is_file():
            raise SystemExit(f"no {shards}/card.json: pass --shards of the dataset the judge will be measured on "
                             f"(its val / test sources are kept out of pretraining), or --no-split-check")
        held = held_out_files(shards)
        excluded = [{"file": v.name, "split": held[v.name]} for v in videos if v.name in held]
        videos = [v for v in videos if v.name not in held]
        log(f"{len(excluded)} val/test sources of {shards} left out")
    if not videos:
        raise SystemExit("no video to pretrain on")
    data = load_windows(videos, pre, hop=float(targs.hop_seconds),
                        cache_dir=args.cache_dir, num_workers=args.workers, log=log)
    log(f"{len(data)} windows of {sum(1 for s in data.sources if s['windows'])} sources")

    # ------------------------------------------------------------ model
    set_seed(seed)
    model_conf = judge_config_for(pre, dim=args.dim, question=conf.get("question") or "", plugins=plugins,
                                  **conf.get("model", {}))
    model = AutoModel.from_config(model_conf)
    for what in model.load_pretrained_encoders():
        log(f"pretrained: {what}")
    val = load_split(shards, "val", pre, args.cache_dir, num_workers=args.workers, log=log) \
        if (shards / "card.json").is_file() else None
    for ds, keys, ident in ((data, ["video"], [s["sha256"] for s in data.sources]),
                            *(((val, ["chosen.video", "rejected.video"], val.shards),) if val else ())):
        precompute_video_features(model, ds.tensors, keys, [ident, pre.fingerprint()], args.cache_dir, log=log)

    # ------------------------------------------------------------ training
    trainer = trainer_cls(model, targs, data)
    log(f"sync pretraining: {targs.max_steps} steps, batch {targs.batch_size}, "
        f"{sum(p.numel() for p in model.parameters() if p.requires_grad)} trained parameters"
        + (f"; resuming from {last}" if last else ""))
    t0 = time.time()
    out = trainer.train(resume_from_checkpoint=last)
    model = trainer.accelerator.unwrap_model(trainer.model)

    # ------------------------------------------------------------ outputs
    metrics: dict[str, Any] = {
        "dim": args.dim, "objective": "sync_pretraining", "steps": trainer.state.global_step,
        "train_loss": out.training_loss, "train_time_s": round(time.time() - t0, 2),
        "wall_time_s": round(time.time() - t_start, 2), "windows": len(data),
        "pretrain_sources": data.sources, "excluded_sources": excluded, "shards_checked": None if args.no_split_check
        else str(shards), "config": conf.get("_path"), "preprocess_fingerprint": pre.fingerprint(),
    }
    if val is not None:
        orig = [i for i, m in enumerate(val.metas) if int(m.get("chosen_severity", 0) or 0) == 0]
        seen, keep = set(), []
        for i in orig:  # one per original window (several pairs share it)
            k = (val.metas[i].get("source_id"), tuple(val.metas[i].get("window") or ()))
            if k not in seen:
                seen.add(k)
                keep.append(i)
        offs, _ = offset_estimates(model, val.tensors["chosen.video"][keep], val.tensors["chosen.audio"][keep])
        metrics["val_originals"] = len(keep)
        metrics["val_offset_accuracy"] = float((offs == 0).mean()) if len(keep) else None
        metrics["val_offset_within_1"] = float((abs(offs) <= 1).mean()) if len(keep) else None
        log(f"val originals: offset 0 found in {metrics['val_offset_accuracy']:.3f}, within +-1 frame in "
            f"{metrics['val_offset_within_1']:.3f} of {len(keep)} windows")
    target = run / "model"
    shutil.rmtree(target, ignore_errors=True)
    model.save_pretrained(str(target))
    pre.save(target / "preprocessing.json")
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    log(f"wrote {target} and {run / 'metrics.json'} ({metrics['wall_time_s']:.0f}s)")
    return metrics


if __name__ == "__main__":
    from train.runs import run_command

    run_command(main, "sync pretraining")
