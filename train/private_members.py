"""The private members of TRL and transformers that train/trainers.py relies on, and their check.

The judge trainers subclass TRL's trainers but skip their text-only __init__ and override some of
their internals (trainers.py module docstring says why). What they touch is not public API: a new
TRL / transformers release may rename or drop it, and an override of a method that no longer
exists is silently never called (telemetry would be sent, TRL's model card written, metrics lost).
So every such member is listed here and checked, by tests/test_objectives.py and at the
construction of every judge trainer: a moved member stops with an error naming it, instead of a
training that runs differently.

The tested versions are pinned in setup.cfg (trl, transformers). To move to a new release: install
it, run `python -m pytest -q tests/test_objectives.py tests/test_train.py`, fix trainers.py
and this list where they name a moved member, then widen the pins.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass


@dataclass(frozen=True)
class PrivateMember:
    """`owner.name` must exist. With `params`: it is a method whose parameters after self are these
    (we override or call it with them). With `reads`: its source mentions `self.<reads>` (it reads
    state that our trainers set, under that name)."""

    owner: str                           # dotted import path of a module or a class
    name: str
    why: str
    params: tuple[str, ...] | None = None
    reads: str | None = None

    @property
    def qualname(self) -> str:
        return f"{self.owner}.{self.name}"


PRIVATE_MEMBERS: tuple[PrivateMember, ...] = (
    PrivateMember("trl.trainer.base_trainer", "_BaseTrainer",
                  "its __init__ (= transformers.Trainer.__init__) replaces the TRL trainers' text-only __init__"),
    PrivateMember("trl.trainer.base_trainer._BaseTrainer", "__init__",
                  "called directly, with Trainer's keyword arguments; it must call self._send_telemetry()",
                  reads="_send_telemetry"),
    PrivateMember("trl.trainer.base_trainer._BaseTrainer", "_send_telemetry",
                  "overridden so that a judge training never phones home", params=()),
    PrivateMember("trl.trainer.utils", "disable_dropout_in_model", "JudgeConfig disable_dropout"),
    PrivateMember("trl.RewardTrainer", "log", "logs the metrics our compute_loss appends to self._metrics",
                  reads="_metrics"),
    PrivateMember("trl.DPOTrainer", "log", "logs the metrics our compute_loss appends to self._metrics",
                  reads="_metrics"),
    PrivateMember("trl.SFTTrainer", "log", "logs the metrics our compute_loss appends to self._metrics",
                  reads="_metrics"),
    PrivateMember("transformers.Trainer", "_save_checkpoint",
                  "overridden to skip TRL's model card (hub / trackio lookups)", params=("model", "trial")),
    PrivateMember("transformers.Trainer", "_set_signature_columns_if_needed",
                  "overridden: our batches are dicts of tensors, not model keyword arguments", params=(),
                  reads="_signature_columns"),
    PrivateMember("transformers.Trainer", "_prepare_inputs", "moves an eval batch to the device", params=("inputs",)),
)


def _resolve(dotted: str) -> object:
    """The module or class at a dotted path (the longest importable module prefix, then attributes)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"cannot import {dotted}")


def _problem(member: PrivateMember) -> str | None:
    try:
        owner = _resolve(member.owner)
    except (ImportError, AttributeError):
        return f"{member.owner} is gone"
    if not hasattr(owner, member.name):
        return "not found"
    obj = getattr(owner, member.name)
    if member.params is not None:
        try:
            names = [p.name for p in inspect.signature(obj).parameters.values()
                     if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        except (TypeError, ValueError):
            return "not a method any more"
        if tuple(names) != member.params:
            return f"parameters are now {tuple(names)}, expected {member.params}"
    if member.reads is not None:
        try:
            source = inspect.getsource(obj)
        except (OSError, TypeError):
            return f"its source cannot be read to check that it uses self.{member.reads}"
        if f"self.{member.reads}" not in source:
            return f"no longer uses self.{member.reads}"
    return None


def private_member_problems() -> list[str]:
    """One line per listed member that moved: 'owner.name: what changed (why we use it)'."""
    out = []
    for member in PRIVATE_MEMBERS:
        problem = _problem(member)
        if problem:
            out.append(f"{member.qualname}: {problem} (used because {member.why})")
    return out


def require_private_members() -> None:
    """Raise RuntimeError naming every moved member, the installed versions and what to do."""
    problems = private_member_problems()
    if problems:
        import transformers
        import trl

        raise RuntimeError(
            f"the installed trl {trl.__version__} / transformers {transformers.__version__} moved private members "
            f"that avbench's judge trainers rely on:\n  " + "\n  ".join(problems) +
            "\nInstall the versions pinned in setup.cfg, or update train/trainers.py and train/private_members.py "
            "(see its docstring).")
