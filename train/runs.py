"""A training run's folder: its checkpoints (which one a re-run resumes from), the weights it starts
from (--init) and what it records about the machine."""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
from pathlib import Path
from typing import Any


def held_out_files(shards: Path | str) -> dict[str, str]:
    """{file name: split} of the val / test sources of a shard build (its card.json; {} without one)."""
    from .data import read_card

    card = read_card(shards) or {}
    return {Path(s.get("file") or s["source_id"]).name: s["split"] for s in card.get("sources", [])
            if s.get("split") in ("val", "test")}


def init_from(model, init: str, shards: Path | str, log) -> dict[str, Any]:
    """Copy the weights of another run's judge (same names and shapes) into model; refuse a run
    pretrained on this dataset's val / test sources. Returns what metrics.json records."""
    from .model import JudgeLoadError, load_weights

    src = Path(init)
    if (src / "model" / "config.json").is_file():
        src = src / "model"
    if not (src / "config.json").is_file():
        raise SystemExit(f"--init {init}: no judge there (no config.json in it or in its model/)")
    run_metrics = src.parent / "metrics.json"
    info = json.loads(run_metrics.read_text()) if run_metrics.is_file() else {}
    used = {Path(s["file"]).name for s in info.get("pretrain_sources") or [] if s.get("windows")}
    held = held_out_files(shards)
    leaked = sorted(used & set(held))
    if leaked:
        raise SystemExit(f"--init {init} was pretrained on val/test sources of {shards}: {leaked}")
    own = model.state_dict()
    try:
        theirs = load_weights(src).state_dict()
    except JudgeLoadError as err:  # e.g. pickled weights only: refused, nothing unpickled
        raise SystemExit(f"--init {init}: {err}") from None
    loaded = {k: v for k, v in theirs.items() if k in own and own[k].shape == v.shape}
    if not loaded:
        raise SystemExit(f"--init {init}: none of its weights fit this model (another architecture?)")
    model.load_state_dict(loaded, strict=False)
    log(f"initialised {len(loaded)} of {len(own)} tensors from {src}")
    return {"init": str(src), "init_tensors": len(loaded), "pretrain_sources": info.get("pretrain_sources"),
            "pretrain_excluded_sources": info.get("excluded_sources")}


# What Trainer._save_checkpoint writes and a resume reads; trainer_state.json comes last, so a
# checkpoint without it (or with it cut short) was interrupted. Rotation (save_total_limit) deletes
# old checkpoints file by file, so a kill there tears an older one: every file is checked.
CHECKPOINT_FILES = ("config.json", "model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json")


def torn_reason(checkpoint: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from, or None when it is complete."""
    missing = [f for f in CHECKPOINT_FILES if not (checkpoint / f).is_file()]
    if missing:
        return f"no {', '.join(missing)}"
    try:
        int(json.loads((checkpoint / "trainer_state.json").read_text())["global_step"])
    except (ValueError, KeyError, TypeError):
        return "trainer_state.json cut short"
    return _nonfinite_checkpoint(checkpoint / "model.safetensors")


def _nonfinite_checkpoint(weights: Path) -> str | None:
    """Why a checkpoint's weights cannot be resumed: unreadable, or NaN / inf in them (a run before
    the loss was checked could save such weights; resuming them trains nothing but NaN)."""
    import torch
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    return f"non-finite weights ({name})"
    except Exception as err:  # safetensors' own error type: a file cut short or not safetensors
        return f"model.safetensors unreadable ({type(err).__name__})"
    return None


def last_complete_checkpoint(ckpt_dir: Path, log=print, remove_torn: bool = True) -> str | None:
    """The newest checkpoint-N whose save finished (None: start over).

    Torn checkpoints -- a kill during a save or during the rotation of old ones -- are logged and
    removed: Trainer would pick the newest folder and fail on it every time, and rotation keeps
    the newest folders, so a torn one left in place could push out the complete ones.
    """
    if not ckpt_dir.is_dir():
        return None
    found = sorted((p for p in ckpt_dir.iterdir() if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)),
                   key=lambda p: int(p.name.split("-")[1]), reverse=True)
    last = None
    for ckpt in found:
        reason = torn_reason(ckpt)
        if reason is None:
            last = last or str(ckpt)
            continue
        why = "not resumable" if reason.startswith(("non-finite", "model.safetensors")) else "its save was interrupted"
        log(f"skipping torn checkpoint {ckpt} ({reason}: {why}); removed")
        if remove_torn:
            shutil.rmtree(ckpt, ignore_errors=True)
    return last


def write_text_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def versions() -> dict[str, str]:
    import accelerate
    import torch
    import transformers
    import trl

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "trl": trl.__version__, "accelerate": accelerate.__version__}


def quiet_library_bars() -> None:
    """No "Writing model shards" / "Loading weights" bars from transformers: one file each, nothing
    to wait for. The training bar (with its ETA) and our preprocessing bars stay."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def run_command(main, name: str) -> None:
    """Run a training command's main(); what the user's data or settings caused ends in one line."""
    import sys

    from perturb.shard_format import ShardFormatError

    from .data import ShardReadError
    from .trainers import NonFiniteLoss

    try:
        main()
    except ShardReadError as err:  # shards or feature shards that cannot be used as given
        sys.exit(f"error: {err}")
    except ShardFormatError as err:  # an invalid or hostile shard: one line, nothing decoded
        sys.exit(f"error: invalid shard: {err}")
    except NonFiniteLoss as err:
        sys.exit(f"error: {name}: {err}")
