"""Run `python -m train ARGS` and kill -9 it at one chosen moment (for resume-after-kill tests).

    python -m tests.kill_at MOMENT --dim lip_sync --shards ... (the arguments of python -m train)

The process sends itself SIGKILL from inside the save it interrupts, so the moment is exact:
  cache_write         the tensor cache's tensors file half written
  checkpoint_weights  the first checkpoint's weights written, its optimizer / state not yet
  trainer_state       the second checkpoint's trainer_state.json half written
  rotation            rotation deleting an old checkpoint: one of its files gone
  final_model         the final model's weights half written
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

MOMENTS = ("cache_write", "checkpoint_weights", "trainer_state", "rotation", "final_model")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _cut(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)


def arm(moment: str) -> None:
    if moment == "cache_write":
        import safetensors.torch as st

        real_save = st.save_file

        def save_file(tensors, filename, *a, **k):
            real_save(tensors, filename, *a, **k)
            _cut(Path(filename))
            _die()

        st.save_file = save_file  # train.data imports it at call time
    elif moment == "checkpoint_weights":
        from transformers import Trainer

        Trainer._save_optimizer_and_scheduler = lambda self, output_dir: _die()
    elif moment == "trainer_state":
        from transformers import TrainerState

        real_state = TrainerState.save_to_json
        calls = []

        def save_to_json(self, json_path):
            calls.append(json_path)
            real_state(self, json_path)
            if len(calls) == 2:
                _cut(Path(json_path))
                _die()

        TrainerState.save_to_json = save_to_json
    elif moment == "rotation":
        import transformers.trainer as trainer_module

        real_rotate = trainer_module.rotate_checkpoints

        def rotate_checkpoints(output_dir, save_total_limit=None, **kw):
            ckpts = sorted(Path(output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
            if save_total_limit and len(ckpts) > save_total_limit:
                (ckpts[0] / "model.safetensors").unlink()
                _die()
            return real_rotate(output_dir, save_total_limit=save_total_limit, **kw)

        trainer_module.rotate_checkpoints = rotate_checkpoints
    elif moment == "final_model":
        from train.model import AVJudge
        from train.qwen_omni import QwenOmniJudge

        for judge in (AVJudge, QwenOmniJudge):  # QwenOmniJudge writes its adapters itself
            def save_pretrained(self, save_directory, *a, _real=judge.save_pretrained, **k):
                _real(self, save_directory, *a, **k)
                if "checkpoint-" not in str(save_directory) and "dpo_reference" not in str(save_directory):
                    _cut(Path(save_directory) / "model.safetensors")
                    _die()

            judge.save_pretrained = save_pretrained
    else:
        raise SystemExit(f"unknown moment {moment!r}")


def kill_each_then_finish(args: list[str], cwd: str | Path) -> tuple[list[int], subprocess.CompletedProcess]:
    """`python -m train ARGS` killed at each of MOMENTS in turn (every run must die by SIGKILL), then
    run once more: (how many torn checkpoints each killed run skipped, the last run)."""
    skipped = []
    for moment in MOMENTS:
        proc = subprocess.run([sys.executable, "-m", "tests.kill_at", moment, *args], cwd=cwd,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == -9, (moment, proc.returncode, proc.stderr[-2000:])
        skipped.append(proc.stdout.count("skipping torn checkpoint"))
    return skipped, subprocess.run([sys.executable, "-m", "train", *args], cwd=cwd, capture_output=True, text=True,
                                   timeout=600)


if __name__ == "__main__":
    arm(sys.argv[1])
    from train.__main__ import main

    main(sys.argv[2:])
