"""python -m train --dim lip_sync --objective reward|dpo|sft --shards DIR --run DIR [--config YAML] ...

Trains a judge on the train-* shards, validates on val-*, and writes
    RUN/model/            AVJudge.save_pretrained (config.json + model.safetensors) + preprocessing.json
    RUN/metrics.json      val pairwise accuracy / AUC, steps, times, throughput, data card
    RUN/metrics_<objective>.json  the same, kept per objective
    RUN/checkpoints/<objective>/  Trainer checkpoints (a re-run resumes from the last one)
    RUN/train_config.json the resolved configuration
    RUN/bad_samples.jsonl the broken samples skipped (split, shard, key, reason), one per line

Multi-process (same training, global batch split over processes):
    accelerate launch --multi_gpu --num_processes 2 -m train --dim lip_sync ...    # no GPU: CPU, gloo
    accelerate launch --multi_gpu --num_processes 4 -m train --dim lip_sync ...    # GPUs, nccl
    torchrun --nproc_per_node 2 -m train --dim lip_sync ... --run-dir DIR          # same; --run-dir, not --run
"""
from __future__ import annotations

import os

# Before torch loads OpenMP: worker threads sleep instead of spinning while they wait. On a shared
# 2-core machine spinning threads fight other processes for the cores (measured: 7.6 s vs 1.1 s per
# step with other jobs running); on an idle machine it costs ~25% (0.12 vs 0.09 s per step).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from .config import (card_for_default_config, check_augment, check_augment_against_recipe, load_config, ranged,
                     resolve_preprocess)
from .runs import init_from, last_complete_checkpoint, quiet_library_bars, versions, write_text_atomically

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", required=True, help="lip_sync | voice_identity | video_quality | ...")
    ap.add_argument("--objective", default="reward",
                    help="reward | dpo | sft: a name in train.trainers.OBJECTIVES (default reward)")
    ap.add_argument("--shards", default=None, help="pair or feature shards: folder or fsspec URL (default shards/<dim>)")
    ap.add_argument("--run", "--run-dir", dest="run", default=None,
                    help="run directory (default runs/<dim>); spell it --run-dir under torchrun, whose own "
                         "parser takes --run for an abbreviation of its --run-path")
    ap.add_argument("--config", default=None, help="YAML (default train/configs/<dim>.yaml)")
    ap.add_argument("--max-steps", type=ranged("max_steps"), default=None)
    ap.add_argument("--cache-dir", default=None, help="tensor cache (default cache/tensors or $AVBENCH_CACHE)")
    ap.add_argument("--seed", type=ranged("seed"), default=None)
    ap.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints (start over)")
    ap.add_argument("--workers", type=int, default=None, help="preprocessing DataLoader workers")
    ap.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                    help="import MODULE first (it registers encoders of its own); repeatable")
    ap.add_argument("--init", default=None, metavar="RUN",
                    help="start from the weights of another run (e.g. python -m train.pretrain's RUN or RUN/model)")
    ap.add_argument("--max-bad-fraction", type=float, default=None,
                    help="broken samples (bad json, a side missing, unreadable mp4) are skipped and listed in "
                         "RUN/bad_samples.jsonl; stop when more than this share of a split is bad "
                         "(default 0.05; 1 = never stop)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    t_start = time.time()
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch
    from accelerate import PartialState
    from transformers import set_seed

    from transformers import AutoModel

    from perturb.shard_format import is_url

    from .data import (DEFAULT_MAX_BAD_FRACTION, ShardReadError, TooManyBadSamples, check_location, load_split,
                       precompute_video_features, read_card, write_bad_samples)
    from .device import describe_device
    from .encoders import import_plugins
    from .model import MODEL_VERSION, judge_config_for
    from .preprocess import PreprocessConfig
    from .trainers import OBJECTIVES, NonFiniteLoss, judge_metrics, nonfinite_weights, replace_dir

    quiet_library_bars()

    # cpu=True when there is no GPU: under torchrun / `accelerate launch --multi_gpu` this makes the
    # processes a gloo (MULTI_CPU) group; without it accelerate sees LOCAL_RANK, finds no CUDA and
    # silently runs every process as a separate single-process job.
    state = PartialState(cpu=not torch.cuda.is_available())
    main_proc = state.is_main_process
    world = state.num_processes

    def log(msg: str) -> None:
        if main_proc:
            print(msg if msg.startswith("[") else f"[train] {msg}", flush=True)

    if args.objective not in OBJECTIVES:
        raise SystemExit(f"--objective {args.objective!r}: unknown; registered: {sorted(OBJECTIVES)}")
    shards = args.shards if is_url(args.shards or "") else Path(args.shards or f"shards/{args.dim}")  # folder or URL
    run = Path(args.run or f"runs/{args.dim}")
    conf = load_config(args.dim, args.config, card_for_default_config(args.dim, args.config, shards), log)
    plugins = import_plugins([*(conf.get("plugins") or []), *args.plugin])
    try:  # before anything is created or removed: a URL that does not answer, a folder without the splits
        missing = [s for s in ("train", "val") if s not in check_location(shards, ("train", "val"))]
    except ShardReadError as err:
        raise SystemExit(f"error: {err}") from None
    if missing:
        raise SystemExit(f"error: no {' or '.join(missing)} shards ({missing[0]}-*.tar, or feature shards with "
                         f"features.json) in {shards}")
    ckpt_dir = run / "checkpoints" / args.objective  # objectives sharing a run dir never resume each other
    if args.no_resume and main_proc and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    state.wait_for_everyone()
    run.mkdir(parents=True, exist_ok=True)
    if state.device.type == "cpu":  # processes share the cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))

    # ---------------------------------------------------------------- data
    try:  # the ranges are checked on load; here what depends on several fields (sr, hop and fps)
        pre = PreprocessConfig.from_dict(resolve_preprocess(conf, plugins))
    except ValueError as err:
        raise SystemExit(f"{conf['_path']}: {err}") from None
    check_augment(conf, pre)
    card = read_card(shards)
    t0 = time.time()
    bad_file = run / "bad_samples.jsonl"
    max_bad = DEFAULT_MAX_BAD_FRACTION if args.max_bad_fraction is None else args.max_bad_fraction
    loaded = []
    with state.main_process_first():  # rank 0 builds the cache, the others then read it
        try:
            for split in ("train", "val"):
                loaded.append(load_split(shards, split, pre, args.cache_dir, num_workers=args.workers, log=log,
                                         max_bad_fraction=max_bad))
        except TooManyBadSamples as err:
            if main_proc:
                write_bad_samples(bad_file, [b for d in loaded for b in d.bad] + err.bad)
            raise SystemExit(f"error: too many bad samples: {err} (all listed in {bad_file}; "
                             f"--max-bad-fraction sets the limit)") from None
    train_pairs, val_pairs = loaded
    if main_proc:
        write_bad_samples(bad_file, train_pairs.bad + val_pairs.bad)
    if train_pairs.bad or val_pairs.bad:
        log(f"skipped {len(train_pairs.bad)} train and {len(val_pairs.bad)} val bad samples (listed in {bad_file})")
    preprocess_s = time.time() - t0
    win = {tuple(m.get("window") or ()) for m in train_pairs.metas[:50]}
    lens = {round(w[1] - w[0], 2) for w in win if len(w) == 2}
    if lens and any(abs(x - pre.window_seconds) > 0.05 for x in lens):
        log(f"warning: shard windows are {sorted(lens)} s, preprocessing pads/cuts to {pre.window_seconds} s")
    log(f"data: {len(train_pairs)} train pairs, {len(val_pairs)} val pairs from {shards} "
        f"(preprocessing {preprocess_s:.1f}s, crops: {train_pairs.face_sources})")

    # ---------------------------------------------------------------- model
    seed = args.seed if args.seed is not None else int(conf.get("seed", 0))
    set_seed(seed)
    question = conf.get("question") or (train_pairs.metas[0].get("question") if train_pairs.metas else "")
    try:
        model_conf = judge_config_for(pre, dim=args.dim, question=question, plugins=plugins, **conf.get("model", {}))
        model = AutoModel.from_config(model_conf)
        if not args.init:  # an --init run carries the pretrained weights already
            for what in model.load_pretrained_encoders():
                log(f"pretrained: {what}")
    except (ValueError, FileNotFoundError) as err:  # a typo in the model section, a missing weights file
        raise SystemExit(f"{conf['_path']}: model: {err}") from None
    init_info = init_from(model, args.init, shards, log) if args.init else {}
    with state.main_process_first():  # a frozen video encoder runs once per clip, not every step
        for ds in (train_pairs, val_pairs):
            precompute_video_features(model, ds.tensors, ["chosen.video", "rejected.video"],
                                      [ds.shards, pre.fingerprint()], args.cache_dir, log=log)

    # ---------------------------------------------------------------- trainer
    trainer_cls, config_cls = OBJECTIVES[args.objective]

    # Resume only checkpoints made from the same data, preprocessing and model (max_steps may change).
    resume_key = hashlib.sha256(json.dumps(
        {"objective": args.objective, "preprocess": pre.fingerprint(), "model": conf.get("model", {}),
         "init": init_info.get("init"),
         "model_version": MODEL_VERSION,
         "seed": seed, "train_shards": train_pairs.shards}, sort_keys=True, default=str).encode()).hexdigest()[:16]
    key_file = ckpt_dir / "resume_key.txt"
    last = None if args.no_resume else last_complete_checkpoint(ckpt_dir, log, remove_torn=main_proc)
    if last and (not key_file.is_file() or key_file.read_text().strip() != resume_key):
        log(f"checkpoints in {ckpt_dir} come from other data / preprocessing / model settings: starting over")
        last = None
        if main_proc:
            shutil.rmtree(ckpt_dir)
    state.wait_for_everyone()
    if main_proc:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomically(key_file, resume_key)

    # the YAML's train: + objectives: <objective>: sections, then the command line
    overrides: dict[str, Any] = {"seed": seed, "output_dir": str(ckpt_dir), "resume_from_checkpoint": last}
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
    try:  # what TrainingArguments / TRL refuse (an lr_scheduler_type, ...) is the YAML's fault too
        training_args = config_cls.from_sections(conf, ("objectives", args.objective), **overrides)
    except ValueError as err:
        raise SystemExit(f"{conf['_path']}: {err}") from None
    check_augment_against_recipe(conf["_path"], training_args.augment, card)
    try:  # a NaN / inf loss (DPO's SFT warm start runs in the constructor) stops in one line
        trainer = trainer_cls(model, training_args, train_pairs, val_pairs)

        if last:
            log(f"resuming from {last} (delete {ckpt_dir} or pass --no-resume to start over)")
        else:
            log(f"training {args.objective} judge for {args.dim}: {training_args.max_steps} steps, global batch "
                f"{training_args.batch_size} ({world} process(es)), {sum(p.numel() for p in model.parameters())} "
                f"parameters")
        t_train = time.time()
        train_out = trainer.train(resume_from_checkpoint=last)
        train_s = time.time() - t_train
        bad_weights = nonfinite_weights(trainer.accelerator.unwrap_model(trainer.model))
        if bad_weights:  # the last step's update: never evaluated, never saved as the judge
            raise NonFiniteLoss(f"weights {', '.join(bad_weights[:3])} are not finite after step "
                                f"{trainer.state.global_step}: no judge written (lower the learning rate)")
    except NonFiniteLoss as err:
        raise SystemExit(f"error: {args.objective}: {err}") from None

    # ---------------------------------------------------------------- final eval + outputs
    jm = judge_metrics(trainer.accelerator.unwrap_model(trainer.model), val_pairs, training_args.eval_batch_pairs,
                       training_args.device)
    steps_run = trainer.state.global_step - (int(Path(last).name.split("-")[-1]) if last else 0)
    per_step = training_args.batch_size * trainer.pairs_per_sample  # pairs per step
    timing = trainer.timing
    busy = timing["data_s"] + timing["step_s"]
    metrics = {
        "dim": args.dim, "objective": args.objective,
        "val_pairwise_accuracy": jm["pairwise_accuracy"], "val_auc": jm["auc"],
        "val_clip_accuracy": jm["clip_accuracy"],
        "val_pairwise_accuracy_by_severity": jm["pairwise_accuracy_by_severity"],
        "val_pairwise_accuracy_by_operator": jm["pairwise_accuracy_by_operator"],
        "val_pairwise_accuracy_by_kind": jm["pairwise_accuracy_by_kind"],
        "steps": trainer.state.global_step, "steps_this_run": steps_run,
        "resumed_from": last, "global_batch": training_args.batch_size, "world_size": world,
        "wall_time_s": round(time.time() - t_start, 2), "train_time_s": round(train_s, 2),
        "sft_warmup_steps": trainer.warm_start["steps"],
        "sft_warmup_time_s": round(trainer.warm_start["time_s"], 2),
        "preprocess_time_s": round(preprocess_s, 2),
        "train_pairs_per_s": round(steps_run * per_step / max(train_s, 1e-9), 2),
        "data_loading_share": round(timing["data_s"] / busy, 4) if busy else None,
        "compute_share": round(timing["step_s"] / busy, 4) if busy else None,
        "eval_time_s": round(timing["eval_s"], 2),
        "train_loss": train_out.training_loss,
        "n_train_pairs": len(train_pairs), "n_val_pairs": len(val_pairs),
        "bad_samples": {"train": len(train_pairs.bad), "val": len(val_pairs.bad)},
        "bad_samples_file": str(bad_file),
        "crops": {"train": train_pairs.face_sources, "val": val_pairs.face_sources},
        "preprocess_fingerprint": pre.fingerprint(),
        "device": str(training_args.device), "device_name": describe_device(training_args.device),
        "torch_threads": torch.get_num_threads(),
        "versions": versions(), "config": conf.get("_path"),
        "data_card": card, **init_info,
    }
    if main_proc:
        out = run / "model"
        tmp = run / f".model.tmp{os.getpid()}"  # written aside, then swapped in: eval never reads half a model
        shutil.rmtree(tmp, ignore_errors=True)
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(str(tmp))
        pre.save(tmp / "preprocessing.json")
        if card is not None:
            (tmp / "data_card.json").write_text(json.dumps(card, indent=2))
        replace_dir(tmp, out)
        (run / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
        (run / f"metrics_{args.objective}.json").write_text(json.dumps(metrics, indent=2, default=str))
        (run / "train_config.json").write_text(json.dumps(
            {"config": conf, "objective": args.objective, "shards": str(shards),
             "training_args": training_args.to_dict(), "preprocess": pre.to_dict(),
             "model": model_conf.to_dict()}, indent=2, default=str))
        auc = f"{jm['auc']:.3f}" if isinstance(jm.get("auc"), float) else "n/a (one class)"
        log(f"val pairwise accuracy {jm['pairwise_accuracy']:.3f}, AUC {auc}, "
            f"{trainer.state.global_step} steps in {train_s:.0f}s; wrote {out} and {run / 'metrics.json'}")
    state.wait_for_everyone()
    return metrics


if __name__ == "__main__":
    from train.runs import run_command

    run_command(main, "training")
