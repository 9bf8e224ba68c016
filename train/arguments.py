"""The judge trainers' Config dataclasses (TRL style: TRL / transformers configs + our fields).

    JudgeArguments      what every judge trainer shares (batch, budget, augmentation, val metrics)
    JudgeRewardConfig   + TRL RewardConfig   (reward: Bradley-Terry on pairs)
    JudgeDPOConfig      + TRL DPOConfig      (dpo: yes/no answer against a frozen reference, SFT warm start)
    JudgeSFTConfig      + TRL SFTConfig      (sft: yes/no cross-entropy)
    JudgeSyncConfig     + TrainingArguments  (self-supervised sync pretraining, train/pretrain.py)

A training YAML (train/configs/*.yaml) gives them in its `train:` section (shared by every trainer)
and in `objectives: <name>:` / `pretrain:` (one trainer's own); `Config.from_sections(yaml, section,
**overrides)` merges the three, in that order. `check_sections` refuses an unknown key in any of
those sections, naming it and the valid ones. Every number has a range (TRAIN_RANGES), checked when
the YAML is loaded (check_train_values), on a command-line override (parse_override) and when a config
is built (JudgeArguments.__post_init__): an error names the key, the value and the range.
"""
from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import transformers
from trl import DPOConfig, RewardConfig, SFTConfig

from .preprocess import check_range, check_values, range_text

# The range of every number of the train:, objectives: and pretrain: sections (and of the configs
# built from them): key -> (lo, hi, why); integer bounds mean integers; None passes wherever a field
# takes None ("unset"). Generous for real use; they stop a typo from asking for a billion-pair batch.
TRAIN_RANGES: dict[str, tuple[float, float, str]] = {
    "batch_size": (1, 4096, "pairs per step, all processes together"),
    "per_device_train_batch_size": (1, 4096, "pairs per step and process"),
    "per_device_eval_batch_size": (1, 4096, "clips per eval step and process"),
    "eval_batch_pairs": (1, 4096, "pairs per batch of the val metrics"),
    "max_steps": (-1, 10_000_000, "optimiser steps; -1: num_train_epochs decides"),
    "num_train_epochs": (0.0, 100_000.0, "passes over the data when max_steps is -1"),
    "max_train_minutes": (0.0, 525_600.0, "minutes, a year at most"),
    "learning_rate": (0.0, 10.0, "optimiser step size"),
    "weight_decay": (0.0, 10.0, "AdamW weight decay"),
    "warmup_steps": (0.0, 10_000_000.0, "steps, or below 1 a share of the steps"),
    "warmup_ratio": (0.0, 1.0, "a share of the steps"),
    "max_grad_norm": (0.0, 1e6, "gradient clipping norm"),
    "gradient_accumulation_steps": (1, 1024, "steps whose gradients add up"),
    "label_smoothing_factor": (0.0, 1.0, "a probability"),
    "logging_steps": (0.0, 10_000_000.0, "steps, or below 1 a share of the steps"),
    "save_steps": (0.0, 10_000_000.0, "steps, or below 1 a share of the steps"),
    "eval_steps": (0.0, 10_000_000.0, "steps, or below 1 a share of the steps"),
    "save_total_limit": (1, 10_000, "checkpoints kept"),
    "dataloader_num_workers": (0, 64, "DataLoader processes"),
    "seed": (0, 2**32 - 1, "numpy takes seeds below 2**32"),
    "margin_scale": (0.0, 100.0, "multiplier of the pair margin"),
    "center_rewards_coefficient": (0.0, 100.0, "weight of the reward centring loss"),
    "beta": (0.0, 100.0, "DPO temperature"),
    "label_smoothing": (0.0, 0.5, "DPO label noise (conservative DPO)"),
    "sft_warmup_steps": (0, 10_000_000, "SFT steps before DPO"),
    "hop_seconds": (0.04, 60.0, "seconds between window starts (pretraining)"),
}
# the same for the fields of train.data.Augment (the `augment:` mapping of those sections)
AUGMENT_RANGES: dict[str, tuple[float, float, str]] = {
    "jitter": (0, 64, "pixels of translation"),
    "flip": (0.0, 1.0, "a probability"),
    "flicker": (0.0, 1.0, "per-frame gain spread"),
    "video_noise": (0.0, 10.0, "noise level of the normalised picture"),
    "freq_mask": (0, 128, "mel bins masked at most"),
    "audio_noise": (0.0, 10.0, "noise level of the normalised log-mel"),
    "time_warp": (0.0, 1.0, "clips stretched by up to 1 + time_warp"),
    "landmark_affine": (0.0, 1.0, "scale / rotation spread of the landmarks"),
    "landmark_noise": (0.0, 1.0, "jitter in eye distances"),
}


def init_fields(config_cls: type) -> set[str]:
    """The keyword arguments a Config dataclass accepts."""
    return {f.name for f in fields(config_cls) if f.init}


def check_keys(where: str, section: Any, valid: set[str], elsewhere: Mapping[str, set[str]] | None = None) -> None:
    """ValueError naming the unknown keys of one YAML section, a close match, and the valid keys.

    `elsewhere` ({section name: its valid keys}) says where a key valid in another section belongs."""
    if section is None:
        return
    if not isinstance(section, Mapping):
        raise ValueError(f"{where}: must be a mapping of keys to values, not {type(section).__name__}")
    unknown = sorted(set(section) - valid)
    if not unknown:
        return
    hints = []
    for key in unknown:
        homes = [name for name, keys in (elsewhere or {}).items() if key in keys]
        close = difflib.get_close_matches(str(key), sorted(valid), n=1)
        if homes:
            hints.append(f"{key!r} belongs under {' / '.join(homes)}")
        elif close:
            hints.append(f"did you mean {close[0]!r} for {key!r}?")
    hint = f" ({'; '.join(hints)})" if hints else ""
    raise ValueError(f"{where}: unknown key(s) {unknown}{hint}; valid keys: {sorted(valid)}")


def check_augment(where: str, augment: Any) -> None:
    """ValueError unless `augment` is true, false, None or a mapping of Augment fields within AUGMENT_RANGES."""
    if augment is None or isinstance(augment, bool):
        return
    if not isinstance(augment, Mapping):
        raise ValueError(f"{where}: augment must be true, false or a mapping of {', '.join(AUGMENT_RANGES)}, "
                         f"got {augment!r}")
    check_keys(f"{where}: augment", augment, set(AUGMENT_RANGES))
    check_values(f"{where}: augment", dict(augment), AUGMENT_RANGES)


def check_train_values(conf: Mapping[str, Any]) -> None:
    """ValueError naming the section, key, value and range of a number outside TRAIN_RANGES in a
    training YAML's seed, train:, objectives: and pretrain: sections (run check_sections first)."""
    if conf.get("seed") is not None:
        check_range("seed", "seed", conf["seed"], TRAIN_RANGES["seed"])
    sections = [("train", conf.get("train")), ("pretrain", conf.get("pretrain")),
                *((f"objectives: {name}", section) for name, section in (conf.get("objectives") or {}).items())]
    for where, section in sections:
        check_values(where, section, TRAIN_RANGES, none_ok=True)
        check_augment(where, (section or {}).get("augment"))
        warmup = (section or {}).get("sft_warmup_args")
        if warmup is not None:
            check_values(f"{where}: sft_warmup_args", warmup, TRAIN_RANGES, none_ok=True)
            check_augment(f"{where}: sft_warmup_args", warmup.get("augment"))


def parse_override(name: str, text: str) -> int | float:
    """A command-line override of the config field `name` (--max-steps, --seed) within TRAIN_RANGES;
    argparse.ArgumentTypeError (argparse's one-line usage error) otherwise."""
    import argparse

    lo, hi, _ = TRAIN_RANGES[name]
    try:
        value = int(text) if isinstance(lo, int) and isinstance(hi, int) else float(text)
        return check_range("", name, value, TRAIN_RANGES[name])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if isinstance(lo, int) else 'a number'} "
                                         f"in {range_text(TRAIN_RANGES[name])}") from None


def check_sections(conf: Mapping[str, Any], objective_configs: Mapping[str, type], pretrain_config: type) -> None:
    """Refuse an unknown key in the YAML's train:, objectives: and pretrain: sections (ValueError)."""
    own = {**{f"objectives: {name}": init_fields(c) for name, c in objective_configs.items()},
           "pretrain": init_fields(pretrain_config)}
    shared = set.intersection(*own.values())  # train: feeds every trainer
    check_keys("train", conf.get("train"), shared, elsewhere=own)
    objectives = conf.get("objectives")
    check_keys("objectives", objectives, set(objective_configs))
    for name, section in (objectives or {}).items():
        check_keys(f"objectives: {name}", section, own[f"objectives: {name}"])
    check_keys("pretrain", conf.get("pretrain"), own["pretrain"])


@dataclass
class JudgeArguments:
    r"""What every judge trainer shares, on top of transformers' `TrainingArguments` and TRL's configs.

    Every number (ours and the TrainingArguments / TRL fields a YAML sets) must lie in its TRAIN_RANGES
    range, e.g. batch_size 1..4096, max_steps -1..10**7, learning_rate 0..10, seed 0..2**32-1; the
    augment mapping's in AUGMENT_RANGES. A value outside is a ValueError naming it and the range.

    Parameters:
        > Batch and length of a training (the YAML's `train:` section)

        batch_size (`int` or `None`, *optional*, defaults to `None`):
            Global training batch, all processes together: each process gets
            `per_device_train_batch_size = max(1, batch_size // number of processes)`, so a step sees the
            same data on one process or on several (`accelerate launch`). `None`: `per_device_train_batch_size`
            as given (then `batch_size` becomes it times the number of processes).
        max_steps (`int`, *optional*, defaults to `300`):
            Optimiser steps (`python -m train --max-steps` overrides it).
        max_train_minutes (`float` or `None`, *optional*, defaults to `None`):
            Wall-time budget of `train()`: once spent, training stops after the current step and saves a
            checkpoint (a re-run resumes from it). `None`: no budget.

        > Data

        augment (`bool` or `dict`, *optional*, defaults to `True`):
            Augment the training clips: `True`, `False`, or a dict of `train.data.Augment` fields (ranges:
            AUGMENT_RANGES). Val clips are never augmented.
        dataloader_num_workers (`int`, *optional*, defaults to `0`):
            The tensor cache lives in memory: DataLoader workers would only add inter-process copies.

        > Evaluation (every `eval_steps` on the val pairs, and once more at the end into metrics.json)

        eval_batch_pairs (`int`, *optional*, defaults to `32`):
            Batch (pairs) of the judge metrics: pairwise accuracy, yes-vs-no AUC, clip accuracy.

        > Model

        disable_dropout (`bool`, *optional*, defaults to `False`):
            Zero the judge's dropout (TRL's reward / DPO configs default to `True`: dropout regularises the
            small judge).

    Defaults that differ from transformers' TrainingArguments (its default in brackets):
        max_steps 300 (-1: num_train_epochs), per_device_train_batch_size 16 (8),
        per_device_eval_batch_size 32 (8), learning_rate 2e-3 (5e-5: sized for pretrained language
        models, far too small for a judge trained from scratch), weight_decay 1e-4 (0),
        lr_scheduler_type "cosine" ("linear"), warmup_steps 0.05 (0; below 1 it is a fraction of the
        steps), logging_steps 10 (500), save_steps 50 (500), save_total_limit 2 (None),
        eval_strategy "steps" ("no"), eval_steps 50 (None), seed 0 (42),
        remove_unused_columns False (True: our batches are dicts of tensors, not model keyword
        arguments), ddp_find_unused_parameters False (None), activation_checkpointing and its alias
        gradient_checkpointing False (None; TRL: True) -- a 100k-parameter model keeps no activations
        worth recomputing, use_cpu None = True when no GPU is present (False), disable_tqdm None = off
        unless stderr is a terminal or AVBENCH_TQDM is set (None = from the log level).
        Against TRL's configs also: bf16 False (TRL: None = bf16 where supported; slower and lossy for
        this model on CPU), max_length None (TRL: 1024 tokens; there is no text).
    """

    batch_size: int | None = field(default=None, metadata={
        "help": "Global training batch, split over the processes (None: per_device_train_batch_size as given)."})
    max_train_minutes: float | None = field(default=None, metadata={
        "help": "Wall-time budget: stop (with a checkpoint) once spent. None: no budget."})
    augment: Any = field(default=True, metadata={
        "help": "Augment training clips: true, false, or a dict of train.data.Augment fields."})
    eval_batch_pairs: int = field(default=32, metadata={"help": "Batch size of the val judge metrics."})
    disable_dropout: bool = field(default=False, metadata={"help": "Zero the dropout of the model."})
    max_steps: int = 300
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.05
    per_device_train_batch_size: int = 16
    per_device_eval_batch_size: int = 32
    activation_checkpointing: bool | None = False
    gradient_checkpointing: bool | None = False
    bf16: bool | None = False
    report_to: Any = "none"
    remove_unused_columns: bool = False
    logging_steps: float = 10
    save_strategy: str = "steps"
    save_steps: float = 50
    save_total_limit: int | None = 2
    eval_strategy: str = "steps"
    eval_steps: float | None = 50
    dataloader_num_workers: int = 0
    ddp_find_unused_parameters: bool | None = False
    seed: int = 0
    use_cpu: bool | None = None
    disable_tqdm: bool | None = None

    def __post_init__(self):
        for name, bounds in TRAIN_RANGES.items():
            if getattr(self, name, None) is not None:
                check_range(type(self).__name__, name, getattr(self, name), bounds)
        check_augment(type(self).__name__, self.augment)
        if self.use_cpu is None:
            self.use_cpu = not torch.cuda.is_available()
        if self.disable_tqdm is None:  # a log file would fill with progress bars
            self.disable_tqdm = not sys.stderr.isatty() and not os.environ.get("AVBENCH_TQDM")
        super().__post_init__()  # TRL's / TrainingArguments' (sets up the processes)
        world = max(1, self.world_size)
        if self.batch_size is None:
            self.batch_size = self.per_device_train_batch_size * world
        else:
            self.per_device_train_batch_size = max(1, int(self.batch_size) // world)

    @classmethod
    def section_kwargs(cls, conf: Mapping[str, Any], section: Sequence[str],
                       overrides: Mapping[str, Any]) -> dict[str, Any]:
        """The keyword arguments of this config from a training YAML: `train:`, then the section at
        path `section` (("objectives", "dpo") or ("pretrain",)), then `overrides`."""
        own: Any = conf
        for key in section:
            own = (own or {}).get(key)
        kw = {**(conf.get("train") or {}), **(own or {}), **overrides}
        check_keys(f"{cls.__name__} (train + {': '.join(section)})", kw, init_fields(cls))
        return kw

    @classmethod
    def from_sections(cls, conf: Mapping[str, Any], section: Sequence[str], **overrides: Any):
        """This config from a training YAML (see section_kwargs); overrides are python -m train's flags."""
        return cls(**cls.section_kwargs(conf, section, overrides))


@dataclass
class JudgeRewardConfig(JudgeArguments, RewardConfig):
    r"""RewardConfig for the judge's decision logit on (chosen, rejected) pairs.

    Parameters:
        margin_scale (`float`, *optional*, defaults to `0.1`):
            The Bradley-Terry margin is the pair's json `margin` (severity gap) times this (0: plain BT).
        center_rewards_coefficient (`float` or `None`, *optional*, defaults to `0.01`, TRL: `None`):
            Keeps decision_logit about 0-centred, so that its sign reads yes / no.
    """

    margin_scale: float = field(default=0.1, metadata={"help": "Multiplier of the pair margin (0 = plain BT)."})
    center_rewards_coefficient: float | None = 0.01
    max_length: int | None = None


@dataclass
class JudgeSFTConfig(JudgeArguments, SFTConfig):
    """SFTConfig (loss_type nll | dft, label_smoothing_factor) for the yes/no answer of a clip."""

    max_length: int | None = None


# what the SFT warm start of a DPO config built without a YAML (sft_warmup_args None) takes from it
SFT_WARMUP_SHARED = ("seed", "batch_size", "learning_rate", "weight_decay", "lr_scheduler_type", "warmup_steps",
                     "logging_steps", "augment", "use_cpu", "disable_tqdm")


@dataclass
class JudgeDPOConfig(JudgeArguments, DPOConfig):
    r"""DPOConfig (beta, loss_type, loss_weights, label_smoothing) for the yes/no answer of a clip.

    Parameters:
        beta (`float`, *optional*, defaults to `0.5`, TRL: `0.1`):
            Two answers, not thousands of tokens: a larger beta keeps the policy near the reference.

        > SFT warm start (the usual SFT -> DPO pipeline)

        sft_warmup_steps (`int`, *optional*, defaults to `0`):
            SFT steps on the same data before DPO; the warm judge is both the policy's start and the frozen
            reference (a random-init reference adds its arbitrary per-clip log-ratios to the scores). The
            reference is saved in `output_dir/dpo_reference`; a resumed run (`resume_from_checkpoint`) reads
            it back and skips the warm start. 0: DPO from the model as given, which is also the reference.
        sft_warmup_args (`dict` or `None`, *optional*, defaults to `None`):
            JudgeSFTConfig keyword arguments of the warm start (its max_steps, output_dir, saving and eval
            are set by the trainer). `from_sections` fills it from the YAML's `train:` and `objectives: sft:`
            sections; `None`: JudgeSFTConfig's defaults with this config's SFT_WARMUP_SHARED fields (seed,
            batch, learning-rate schedule, augmentation, logging).
    """

    beta: float = 0.5
    max_length: int | None = None
    sft_warmup_steps: int = field(default=0, metadata={
        "help": "SFT steps before DPO; the warm judge is the policy's start and the frozen reference."})
    sft_warmup_args: dict[str, Any] | None = field(default=None, metadata={
        "help": "JudgeSFTConfig keyword arguments of the warm start (None: this config's shared ones)."})

    @classmethod
    def section_kwargs(cls, conf: Mapping[str, Any], section: Sequence[str],
                       overrides: Mapping[str, Any]) -> dict[str, Any]:
        kw = super().section_kwargs(conf, section, overrides)
        if kw.get("sft_warmup_steps") and kw.get("sft_warmup_args") is None:
            kw["sft_warmup_args"] = JudgeSFTConfig.section_kwargs(conf, ("objectives", "sft"), overrides)
        return kw

    def sft_warmup_config(self) -> JudgeSFTConfig:
        """The JudgeSFTConfig of the warm start: no checkpoints, no eval, no time budget (as before the
        DPO steps), its own output folder."""
        kw = dict(self.sft_warmup_args) if self.sft_warmup_args is not None else \
            {k: getattr(self, k) for k in SFT_WARMUP_SHARED}
        kw.update(max_steps=self.sft_warmup_steps, output_dir=os.path.join(self.output_dir, "sft_warmup"),
                  save_strategy="no", eval_strategy="no", max_train_minutes=None, resume_from_checkpoint=None)
        return JudgeSFTConfig(**kw)



@dataclass
class JudgeSyncConfig(JudgeArguments, transformers.TrainingArguments):
    r"""Self-supervised sync pretraining (train/pretrain.py): TrainingArguments + the windows' hop.

    The loss is the judge's offset cross-entropy (AVJudge.sync_aux_loss: offset 0 among the 2K+1 of
    the whole-window profile, temperature model.config.sync_aux_temperature) on untouched clips.

    Parameters:
        hop_seconds (`float`, *optional*, defaults to `0.5`):
            Seconds between window starts in a clip.
        eval_strategy (`str`, *optional*, defaults to `"no"`):
            No pairs to evaluate: the offset accuracy on the val originals is measured at the end.
        max_steps (`int`, *optional*, defaults to `600`).
        per_device_train_batch_size (`int`, *optional*, defaults to `32`).
    """

    hop_seconds: float = field(default=0.5, metadata={"help": "Seconds between window starts in a clip."})
    eval_strategy: str = "no"
    max_steps: int = 600
    per_device_train_batch_size: int = 32
