"""The three training objectives, as subclasses of TRL's trainers (their Configs: train/arguments.py).

    reward  JudgeRewardTrainer(RewardTrainer) + JudgeRewardConfig(RewardConfig)
            Bradley-Terry on (chosen, rejected) clips: -logsigmoid(r_c - r_r - margin), r = decision_logit.
    dpo     JudgeDPOTrainer(DPOTrainer) + JudgeDPOConfig(DPOConfig)
            per clip, the right answer (yes for originals, no for perturbed) is "chosen", the wrong one
            "rejected"; DPO loss on log-prob ratios policy / frozen reference of the two answers.
    sft     JudgeSFTTrainer(SFTTrainer) + JudgeSFTConfig(SFTConfig)
            yes/no answer of single clips, cross-entropy on the two logits.

WHY SUBCLASS AND OVERRIDE SO MUCH: TRL's trainers are built for language models. Their __init__
loads a tokenizer, requires a `datasets.Dataset` of text / token ids, tokenises it, sets pad
tokens and builds a padding collator, and their losses read per-token log-probs out of a causal LM
head (DPO even asks the model for fused-LM-head outputs: `log_probs`, `entropy`, `is_top1`). None of
that exists for a judge that reads (video, audio) tensors and answers with two logits. So each
subclass
  * skips the text-only __init__ (calls TRL's _BaseTrainer / transformers.Trainer __init__ directly
    with our map-style torch datasets and collators -- there is nothing to tokenise);
  * overrides compute_loss with the same objective on the judge's outputs (the reward and DPO loss
    formulas are TRL's, re-written here because TRL does not expose them as functions: they are
    inlined in compute_loss / _compute_loss next to the token bookkeeping);
and keeps the rest of TRL and transformers: the Config classes and their hyper-parameters (beta,
loss_type, label_smoothing, center_rewards_coefficient...), TRL's metric logging (`_metrics` ->
`log`), and the Trainer machinery (optimiser / scheduler, accelerate + DDP, safetensors checkpoints,
resume_from_checkpoint, progress bar, evaluation on val).

One constructor shape for every trainer (OBJECTIVES maps an objective name to its Trainer and Config,
so python -m train has no per-objective code):

    Trainer(model, args, train_data, val_pairs=None, callbacks=None)

train_data / val_pairs are PairDatasets (the yes/no objectives split them into clips themselves);
args.max_train_minutes adds the time budget; JudgeDPOTrainer runs its SFT warm start and saves / reads
its frozen reference itself (args.sft_warmup_steps, args.resume_from_checkpoint).

What the trainers touch that is private to TRL / transformers is listed in train/private_members.py
and checked when a trainer is built.

Every trainer evaluates the judge the same way on the val pairs (`judge_metrics`): pairwise accuracy
(score(chosen) > score(rejected)) and yes-vs-no AUC on single clips, next to its own val loss.

A NaN / inf training loss stops every trainer before its optimizer step (NonFiniteLoss, one line, in
every process at once), and no checkpoint is written from weights that are not finite.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from accelerate import PartialState
from torch.utils.data import DataLoader
from transformers import TrainerCallback
from trl import DPOTrainer, RewardTrainer, SFTTrainer
from trl.trainer.base_trainer import _BaseTrainer
from trl.trainer.utils import disable_dropout_in_model

from .arguments import (JudgeArguments, JudgeDPOConfig, JudgeRewardConfig, JudgeSFTConfig, JudgeSyncConfig,
                        check_sections)
from .data import ClipCollator, PairCollator, PairDataset, clip_label
from .private_members import require_private_members
from .progress import progress

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


# ---------------------------------------------------------------------------------- metrics

@torch.no_grad()
def pair_decisions(model, pairs: PairDataset, batch_size: int = 32, device=None) -> tuple[np.ndarray, np.ndarray]:
    """decision_logit of every pair's chosen and rejected clip (model in eval mode, no augmentation)."""
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    dc, dr = [], []
    loader = DataLoader(pairs, batch_size=batch_size, shuffle=False, collate_fn=PairCollator(augment=False))
    for b in loader:
        dc.append(model.decision_logit(b["chosen_video"].to(device), b["chosen_audio"].to(device)).float().cpu())
        dr.append(model.decision_logit(b["rejected_video"].to(device), b["rejected_audio"].to(device)).float().cpu())
    model.train(was_training)
    return torch.cat(dc).numpy(), torch.cat(dr).numpy()


def judge_metrics(model, pairs: PairDataset, batch_size: int = 32, device=None) -> dict[str, Any]:
    """Pairwise accuracy (ties count half), single-clip yes/no AUC and accuracy at score 0.5, per-group accuracy."""
    from sklearn.metrics import roc_auc_score

    dc, dr = pair_decisions(model, pairs, batch_size, device)
    win = (dc > dr).astype(float) + 0.5 * (dc == dr)
    yc = np.array([clip_label(m, "chosen") for m in pairs.metas])
    scores = np.concatenate([dc, dr])
    labels = np.concatenate([yc, np.zeros_like(yc)])
    out: dict[str, Any] = {
        "pairwise_accuracy": float(win.mean()),
        "auc": float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else None,
        "clip_accuracy": float(((scores > 0).astype(int) == labels).mean()),
        "n_pairs": int(len(dc)),
        "n_clips": int(len(scores)),
    }
    for group in ("severity", "operator", "kind"):
        vals = [str(m.get(group)) for m in pairs.metas]
        out[f"pairwise_accuracy_by_{group}"] = {
            g: round(float(win[[v == g for v in vals]].mean()), 4) for g in sorted(set(vals))}
    return out


@torch.no_grad()
def offset_estimates(model, videos: torch.Tensor, audios: torch.Tensor, batch_size: int = 32,
                     device=None) -> tuple[np.ndarray, np.ndarray]:
    """(estimated offset in frames, peak evidence) per clip from the whole-window sync profile:
    argmax_k c_k - K (positive = the audio lags the picture), and how far the peak stands above the
    profile's median in units of its spread (SyncNet's "confidence")."""
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    k_max = model.config.max_offset_frames
    offs, confs = [], []
    for i in range(0, len(videos), batch_size):
        prof = model(video=videos[i:i + batch_size].float().to(device),
                     audio=audios[i:i + batch_size].float().to(device)).profile[:, 0].float().cpu()
        offs.append(prof.argmax(-1) - k_max)
        confs.append((prof.amax(-1) - prof.median(-1).values) / prof.std(-1).clamp_min(1e-6))
    model.train(was_training)
    return torch.cat(offs).numpy(), torch.cat(confs).numpy()


# ---------------------------------------------------------------------------------- shared

class TimeBudget(TrainerCallback):
    """Stop training (with a final checkpoint) once the wall-time budget is spent."""

    def __init__(self, seconds: float):
        self.seconds, self.t0 = seconds, None

    def on_train_begin(self, args, state, control, **kw):
        self.t0 = time.time()

    def on_step_end(self, args, state, control, **kw):
        if self.t0 is not None and time.time() - self.t0 > self.seconds:
            print(f"[train] time budget of {self.seconds / 60:.1f} min spent at step {state.global_step}", flush=True)
            control.should_training_stop = True
            control.should_save = True
        return control


class StepProgress(TrainerCallback):
    """Where the progress bar is off (output to a log file), one line per logging step with the
    steps done, the time so far and about how long is left."""

    def __init__(self):
        self.t0 = None

    def on_train_begin(self, args, state, control, **kw):
        self.t0, self.first = time.time(), state.global_step  # resumed runs: time only this run's steps

    def on_log(self, args, state, control, **kw):
        if self.t0 is not None and state.max_steps and state.global_step > self.first:
            done, total = state.global_step - self.first, state.max_steps - self.first
            print(f"[train] step {progress(done, total, time.time() - self.t0)}", flush=True)


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN / inf loss or weights; the message is one line. Raised before the
    optimizer step that would spread it and before any checkpoint of it is written."""


def nonfinite_weights(model) -> list[str]:
    """Names of the parameters and buffers of model that hold NaN or inf."""
    return [n for n, t in [*model.named_parameters(), *model.named_buffers()]
            if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def replace_dir(new: Path, target: Path) -> None:
    """Put folder `new` at `target`, replacing what is there; `target` is never half-written."""
    old = target.with_name(f".{target.name}.old{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    for pattern in (f".{target.name}.old*", f".{target.name}.tmp*"):  # this run's, and a killed run's
        for leftover in target.parent.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)


def _clips(data):
    """Single clips out of pairs (a PairDataset); other datasets (windows) already are clips."""
    return data.clips() if data is not None and hasattr(data, "clips") else data


class _JudgeTrainerMixin:
    """What the judge trainers share: one constructor shape, construction without text processing,
    eval on the val pairs, timing, the time budget.

    Every trainer is built as `Trainer(model, args, train_data, val_pairs=None, callbacks=None)`:
    train_data and val_pairs are PairDatasets (train.data.load_split); a trainer whose samples are
    single clips (clip_samples) splits them into clips itself. val_pairs also feed the judge metrics.
    """

    clip_samples = True     # a training sample is one clip (the yes/no objectives), not a pair
    pairs_per_sample = 0.5  # for the throughput in metrics.json: a clip is half a pair

    def __init__(self, model, args, train_data, val_pairs=None, callbacks=None):
        train, val = (_clips(train_data), _clips(val_pairs)) if self.clip_samples else (train_data, val_pairs)
        callbacks = list(callbacks or [])
        if args.max_train_minutes:
            callbacks.append(TimeBudget(float(args.max_train_minutes) * 60))
        if args.disable_tqdm:
            callbacks.append(StepProgress())
        self._judge_init(model, args, train, val, self._collator(args), val_pairs, callbacks)

    def _collator(self, args):
        return ClipCollator(augment=args.augment)

    def _judge_init(self, model, args, train_dataset, eval_dataset, data_collator, eval_pairs, callbacks):
        require_private_members()  # a TRL / transformers release that moved them: stop here, saying which
        if args.disable_dropout:
            disable_dropout_in_model(model)
        # transformers.Trainer.__init__ (through TRL's _BaseTrainer) -- NOT RewardTrainer / DPOTrainer /
        # SFTTrainer.__init__, which tokenise text datasets and load a tokenizer (module docstring).
        _BaseTrainer.__init__(self, model=model, args=args, data_collator=data_collator,
                              train_dataset=train_dataset, eval_dataset=eval_dataset, callbacks=callbacks)
        # state TRL's own methods (log, training_step) expect
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._total_train_tokens = 0
        self._tp_size = 1
        self.maybe_activation_offload_context = contextlib.nullcontext()
        self.can_return_loss = True
        self.label_names = []
        self.eval_pairs = eval_pairs
        self.timing = {"data_s": 0.0, "step_s": 0.0, "eval_s": 0.0}
        self.last_judge_metrics: dict[str, Any] = {}
        self.warm_start = {"steps": 0, "time_s": 0.0}  # what ran before this trainer's own steps (DPO: SFT)

    def _send_telemetry(self):  # never phone home from a judge training (often offline)
        return

    def _save_checkpoint(self, model, trial):  # skip TRL's model-card writing (hub / trackio lookups)
        # a finite loss can still come with non-finite gradients; weights that went NaN are never resumable
        bad = nonfinite_weights(self.accelerator.unwrap_model(self.model))
        if bad:
            raise NonFiniteLoss(f"weights {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} are not finite at "
                                f"step {self.state.global_step}: training stopped, no checkpoint written (lower "
                                f"the learning rate)")
        return transformers.Trainer._save_checkpoint(self, model, trial)

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = []

    # timing: data loading vs compute
    def get_batch_samples(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = super().get_batch_samples(*args, **kwargs)
        self.timing["data_s"] += time.perf_counter() - t0
        return out

    def training_step(self, *args, **kwargs):
        t0 = time.perf_counter()
        with self.maybe_activation_offload_context:
            out = transformers.Trainer.training_step(self, *args, **kwargs)
        self.timing["step_s"] += time.perf_counter() - t0
        self._check_loss(out)
        return out

    def _check_loss(self, loss: torch.Tensor) -> None:
        """NonFiniteLoss, in every process at once, when a process's loss is NaN / inf: raised before the
        optimizer step, so the weights and every checkpoint stay finite. transformers would only leave
        the loss out of its log and step on. (Non-finite inputs never get here: load_split skips them.)"""
        here = (~torch.isfinite(loss.detach())).any().float().reshape(1)
        bad = here
        if self.accelerator.num_processes > 1:  # one process's NaN reaches every one through the gradients
            bad = self.accelerator.reduce(here.clone(), "sum")
        if bad.item():
            value = loss.detach().float().sum().item() if here.item() else "not finite in another process"
            raise NonFiniteLoss(f"training loss is {value} at step {self.state.global_step + 1}: training stopped "
                                f"before the optimizer step, no checkpoint written (lower the learning rate or "
                                f"margin_scale)")

    # eval: the objective's own loss on val, plus the judge metrics on the val pairs
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        # TRL's evaluate() tokenises / precomputes reference log-probs of text datasets: nothing to do here
        return transformers.Trainer.evaluate(self, eval_dataset, ignore_keys, metric_key_prefix)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        t0 = time.perf_counter()
        coll = self.data_collator
        aug, coll.aug = coll.aug, None  # never augment val
        try:
            output = super().evaluation_loop(dataloader, description, prediction_loss_only=True,
                                             ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        finally:
            coll.aug = aug
        if self.eval_pairs is not None and len(self.eval_pairs):
            # every rank scores all val pairs with the unwrapped model (no DDP collective): same numbers
            jm = judge_metrics(self.accelerator.unwrap_model(self.model), self.eval_pairs,
                               self.args.eval_batch_pairs, self.args.device)
            self.last_judge_metrics = jm
            for k in ("pairwise_accuracy", "auc", "clip_accuracy"):
                if jm[k] is not None:
                    output.metrics[f"{metric_key_prefix}_{k}"] = jm[k]
        self.timing["eval_s"] += time.perf_counter() - t0
        return output

    def _add_aux(self, loss, outputs, mode):
        """The model's auxiliary sync loss (config.sync_aux_weight; 0 = off) joins every objective."""
        if outputs.aux_loss is None:
            return loss
        self._metrics[mode]["sync_aux_loss"].append(self._gather_mean(outputs.aux_loss))
        return loss + outputs.aux_loss

    def _mode(self) -> str:
        return "train" if self.model.training else "eval"

    def _gather_mean(self, x: torch.Tensor) -> float:
        return self.accelerator.gather(x.detach().float().mean().reshape(1)).mean().item()


# ---------------------------------------------------------------------------------- reward

class JudgeRewardTrainer(_JudgeTrainerMixin, RewardTrainer):
    """Bradley-Terry reward training of the judge's decision logit on (chosen, rejected) pairs."""

    _tag_names = ["trl", "reward-trainer", "avbench-judge"]
    clip_samples = False
    pairs_per_sample = 1.0

    def _collator(self, args: JudgeRewardConfig):
        return PairCollator(augment=args.augment, margin_scale=args.margin_scale)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = self._mode()
        video = torch.cat([inputs["chosen_video"], inputs["rejected_video"]])
        audio = torch.cat([inputs["chosen_audio"], inputs["rejected_audio"]])
        in_sync = torch.cat([inputs["chosen_label"], inputs["rejected_label"]]).bool()  # originals
        outputs = model(video=video, audio=audio, in_sync=in_sync)  # one forward for both sides (DDP-friendly)
        r_c, r_r = outputs.decision.chunk(2)
        margin = inputs.get("margin")
        margin = margin.to(r_c.dtype) if margin is not None else torch.zeros_like(r_c)
        loss = -F.logsigmoid(r_c - r_r - margin).mean()
        if self.args.center_rewards_coefficient:
            loss = loss + self.args.center_rewards_coefficient * torch.mean((r_c + r_r) ** 2)
        loss = self._add_aux(loss, outputs, mode)
        with torch.no_grad():
            self._metrics[mode]["accuracy"].append(self._gather_mean((r_c > r_r).float()))
            self._metrics[mode]["margin"].append(self._gather_mean(r_c - r_r))
            self._metrics[mode]["mean_reward"].append(self._gather_mean(outputs.decision))
        return (loss, outputs) if return_outputs else loss


# ---------------------------------------------------------------------------------- DPO

def dpo_losses(delta: torch.Tensor, loss_type: str, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-example DPO losses from delta = (logp_c - ref_c) - (logp_r - ref_r), as in TRL's DPOTrainer."""
    if loss_type == "sigmoid":
        return (-F.logsigmoid(beta * delta) * (1 - label_smoothing)
                - F.logsigmoid(-beta * delta) * label_smoothing)
    if loss_type == "robust":
        return ((-F.logsigmoid(beta * delta) * (1 - label_smoothing) + F.logsigmoid(-beta * delta) * label_smoothing)
                / (1 - 2 * label_smoothing))
    if loss_type == "hinge":
        return torch.relu(1 - beta * delta)
    if loss_type == "ipo":
        return (delta - 1 / (2 * beta)) ** 2
    raise ValueError(f"unsupported DPO loss_type {loss_type!r} (sigmoid, robust, hinge, ipo)")


class JudgeDPOTrainer(_JudgeTrainerMixin, DPOTrainer):
    """DPO over the yes/no answer: chosen answer = the right one for the clip, reference = frozen copy
    of the model as it starts (after the SFT warm start of args.sft_warmup_steps, if any)."""

    _tag_names = ["trl", "dpo", "avbench-judge"]

    def __init__(self, model, args: JudgeDPOConfig, train_data: PairDataset, val_pairs: PairDataset | None = None,
                 callbacks=None):
        resuming = args.resume_from_checkpoint
        warm = {"steps": 0, "time_s": 0.0}
        if args.sft_warmup_steps and not resuming:
            t0 = time.time()
            _log(f"SFT warm start: {args.sft_warmup_steps} steps")
            sft = JudgeSFTTrainer(model, args.sft_warmup_config(), train_data)
            sft.train()
            model = sft.accelerator.unwrap_model(sft.model)
            del sft
            warm = {"steps": args.sft_warmup_steps, "time_s": time.time() - t0}
        # on resume the policy weights come from the checkpoint, the reference from its folder
        ref = _dpo_reference(model, Path(args.output_dir) / "dpo_reference", resuming)
        super().__init__(model, args, train_data, val_pairs, callbacks)
        self.warm_start = warm
        self.ref_model = ref.to(self.args.device).eval().requires_grad_(False)
        self.beta = args.beta
        self.loss_types = args.loss_type if isinstance(args.loss_type, list) else [args.loss_type]
        self.loss_weights = args.loss_weights or [1.0] * len(self.loss_types)
        self.label_smoothing = args.label_smoothing

    @staticmethod
    def answer_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(right answer), log p(wrong answer) from the [no, yes] logits."""
        logp = F.log_softmax(logits.float(), dim=-1)
        right = labels.long().view(-1, 1)
        return logp.gather(1, right).squeeze(1), logp.gather(1, 1 - right).squeeze(1)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = self._mode()
        outputs = model(video=inputs["video"], audio=inputs["audio"], in_sync=inputs["labels"].bool())
        chosen_logps, rejected_logps = self.answer_logps(outputs.logits, inputs["labels"])
        with torch.no_grad():
            ref_logits = self.ref_model(video=inputs["video"], audio=inputs["audio"]).logits
            ref_chosen_logps, ref_rejected_logps = self.answer_logps(ref_logits, inputs["labels"])
        chosen_logratios = chosen_logps - ref_chosen_logps
        rejected_logratios = rejected_logps - ref_rejected_logps
        delta = chosen_logratios - rejected_logratios
        loss = sum(w * dpo_losses(delta, t, self.beta, self.label_smoothing).mean()
                   for t, w in zip(self.loss_types, self.loss_weights))
        loss = self._add_aux(loss, outputs, mode)
        with torch.no_grad():
            rc, rr = self.beta * chosen_logratios, self.beta * rejected_logratios
            self._metrics[mode]["rewards/chosen"].append(self._gather_mean(rc))
            self._metrics[mode]["rewards/rejected"].append(self._gather_mean(rr))
            self._metrics[mode]["rewards/accuracies"].append(self._gather_mean((rc > rr).float()))
            self._metrics[mode]["rewards/margins"].append(self._gather_mean(rc - rr))
            self._metrics[mode]["answer_accuracy"].append(self._gather_mean((chosen_logps > rejected_logps).float()))
        return (loss, outputs) if return_outputs else loss


# ---------------------------------------------------------------------------------- SFT

class JudgeSFTTrainer(_JudgeTrainerMixin, SFTTrainer):
    """Supervised yes/no answers of single clips: cross-entropy on the judge's two logits.

    SFTTrainer is text-only (it tokenises prompt/completion text and trains the LM head on the
    completion tokens); what carries over is the objective -- NLL of the target answer given the
    input, here the one-token answer "yes"/"no" given the clip -- and SFTConfig's loss options
    (loss_type nll | dft, label_smoothing_factor).
    """

    _tag_names = ["trl", "sft", "avbench-judge"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = self._mode()
        outputs = model(video=inputs["video"], audio=inputs["audio"], in_sync=inputs["labels"].bool())
        labels = inputs["labels"].long()
        logp = F.log_softmax(outputs.logits.float(), dim=-1)
        eps = self.args.label_smoothing_factor
        nll = -logp.gather(1, labels.view(-1, 1)).squeeze(1)
        per = (1 - eps) * nll - eps * logp.mean(dim=-1) if eps else nll
        if self.args.loss_type == "dft":  # Dynamic Fine-Tuning: weight by the (detached) target prob
            per = per * torch.exp(-nll).detach()
        loss = self._add_aux(per.mean(), outputs, mode)
        with torch.no_grad():
            self._metrics[mode]["answer_accuracy"].append(
                self._gather_mean((outputs.logits.argmax(-1) == labels).float()))
        return (loss, outputs) if return_outputs else loss


# ---------------------------------------------------------------------------------- sync pretraining

class JudgeSyncTrainer(_JudgeTrainerMixin, _BaseTrainer):
    """Offset contrastive training (SyncNet-style) of the judge's two streams on single clips
    (train_data: a train.data.WindowDataset of untouched windows)."""

    _tag_names = ["avbench-judge", "sync-pretraining"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(video=inputs["video"], audio=inputs["audio"])
        in_sync = torch.ones(len(inputs["video"]), dtype=torch.bool, device=outputs.profile.device)
        loss = self.accelerator.unwrap_model(model).sync_aux_loss(outputs.profile, in_sync)
        with torch.no_grad():
            k_max = (outputs.profile.shape[-1] - 1) // 2
            hit = (outputs.profile[:, 0].argmax(-1) == k_max).float()
            self._metrics[self._mode()]["offset_accuracy"].append(self._gather_mean(hit))
        return (loss, outputs) if return_outputs else loss


# objective name (python -m train --objective, the YAML's objectives: keys) -> (Trainer, Config)
OBJECTIVES: dict[str, tuple[type[_JudgeTrainerMixin], type[JudgeArguments]]] = {
    "reward": (JudgeRewardTrainer, JudgeRewardConfig),
    "dpo": (JudgeDPOTrainer, JudgeDPOConfig),
    "sft": (JudgeSFTTrainer, JudgeSFTConfig),
}
PRETRAINING = (JudgeSyncTrainer, JudgeSyncConfig)  # python -m train.pretrain; the YAML's pretrain: section


def check_config_sections(conf: dict[str, Any]) -> None:
    """ValueError naming an unknown key (and the valid ones) of a training YAML's train:, objectives:
    or pretrain: section."""
    check_sections(conf, {name: config for name, (_, config) in OBJECTIVES.items()}, PRETRAINING[1])


# ---------------------------------------------------------------------------------- helpers

def _log(msg: str) -> None:
    if PartialState().is_main_process:
        print(f"[train] {msg}", flush=True)


def _dpo_reference(model, path: Path, resuming: str | None):
    """The frozen DPO reference = the initial model. Saved beside the checkpoints when training
    starts (aside, then renamed: a kill mid-save leaves no half reference), and read back when
    resuming, so a resumed run compares against the same reference."""
    from .model import load_weights

    state = PartialState()
    if resuming and (path / "model.safetensors").is_file():
        _log(f"DPO reference from {path}")
    else:
        if state.is_main_process:
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(str(tmp))
            replace_dir(tmp, path)
        state.wait_for_everyone()
    return load_weights(path)
