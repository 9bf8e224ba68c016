"""The qwen2_5_omni judge backbone (train/qwen_omni.py) on a tiny random Qwen2.5-Omni thinker made here
(tests/qwen_omni_fixtures.py): what reaches the thinker is what the official processor makes, the
trainers / export / scorer work unchanged, the weights come from a local path only, and the small
judges' preprocessing (their tensor cache keys) is untouched. No real weights, no GPU: the judge's
quality is not measured here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.qwen_omni_fixtures import write_tiny_qwen_omni
from tests.train_fixtures import write_fixture_shards

ROOT = Path(__file__).resolve().parents[1]
TOWERS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "qkv", "out_proj", "fc1", "fc2"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return write_tiny_qwen_omni(tmp_path_factory.mktemp("tiny_qwen_omni"))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_fixture_shards(tmp_path_factory.mktemp("shards"), sources=4, seconds=2.0, pairs_per_window=2,
                                splits={"train": 0.5, "val": 0.25, "test": 0.25}, seed=3)


def tiny_config(path: Path, base: Path | None, steps: int = 40, train: dict | None = None, **model) -> Path:
    """The tiny judge: 2 s windows at 1 fps of 56 x 56 frames, LoRA on all three towers."""
    section = {"backbone": "qwen2_5_omni", "frame_size": [56, 56], "max_pixels": 56 * 56, "lora_rank": 8,
               "lora_alpha": 8, "lora_towers": ["text", "vision", "audio"], "lora_target_modules": TOWERS, **model}
    if base is not None:
        section["path"] = str(base)
    path.write_text(yaml.safe_dump({
        "dim": "lip_sync", "question": "Is the speech in sync with the lips?", "preprocess": {"window_seconds": 2.0},
        "model": section,
        "train": {"batch_size": 4, "max_steps": steps, "learning_rate": 0.003, "warmup_steps": 0, "logging_steps": 8,
                  "eval_steps": 20, "save_steps": 20, "augment": False, "disable_tqdm": True, "eval_batch_pairs": 4,
                  **(train or {})},
        "objectives": {"dpo": {"sft_warmup_steps": 5, "beta": 0.5}}}))
    return path


def _args(shards, run, conf, cache, objective="reward"):
    return ["--dim", "lip_sync", "--objective", objective, "--shards", str(shards), "--run", str(run),
            "--config", str(conf), "--cache-dir", str(cache)]


def _train(args: list[str]) -> dict:
    """python -m train in a process of its own (it sets OMP_WAIT_POLICY before torch loads: in this
    process, spinning OpenMP threads made the same training ten times slower on a busy machine)."""
    proc = subprocess.run([sys.executable, "-m", "train", *args], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((Path(args[args.index("--run") + 1]) / "metrics.json").read_text())


def _losses(run: Path, objective: str) -> list[float]:
    ckpts = sorted((run / "checkpoints" / objective).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    state = json.loads((ckpts[-1] / "trainer_state.json").read_text())
    return [row["loss"] for row in state["log_history"] if "loss" in row]


def _judge(base: Path, **model):
    from transformers import AutoModel

    from train.config import resolve_preprocess
    from train.model import judge_config_for
    from train.preprocess import PreprocessConfig

    section = {"backbone": "qwen2_5_omni", "path": str(base), "frame_size": [56, 84], "max_pixels": 56 * 84,
               "lora_rank": 4, **model}
    pre = PreprocessConfig.from_dict(resolve_preprocess({"model": section, "preprocess": {"window_seconds": 3.0}}, []))
    return AutoModel.from_config(judge_config_for(pre, dim="lip_sync", question="Is the speech in sync with the lips?",
                                                  plugins=[], **section)), pre


# ------------------------------------------------------------------------------ what reaches the thinker

def test_inputs_and_answer_logits_are_the_official_processors_and_thinkers(base):
    """Frames and samples become exactly what Qwen2_5OmniProcessor makes of them (token layout with the
    audio interleaved every 2 s, 3-D positions, patches, Whisper log-mel), and the judge's logits are
    the full thinker's first-answer-token logits of "No" and "Yes"."""
    import huggingface_hub.constants

    judge, pre = _judge(base)
    assert pre.crop == "full" and pre.fps == 1 and list(pre.crop_size) == [56, 84] and pre.audio_features == "waveform"
    assert huggingface_hub.constants.is_offline_mode()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (pre.n_frames, 56, 84, 3), dtype=np.uint8)
    wave = (0.1 * rng.standard_normal(pre.n_samples)).astype(np.float32)
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float()[None] / 255  # preprocessing's video_norm "unit"
    audio = torch.from_numpy(wave)[None, None]
    official = judge.processor(
        text=[judge.prompt_text()], videos=[frames], audio=[wave], audio_from_video_indices=[0],
        load_audio_from_video=True, return_tensors="pt",
        videos_kwargs={"do_resize": False, "do_sample_frames": False, "fps": 1.0, "cap_pixels_per_frame": False})
    ours = judge.model_inputs(video, audio)
    for key in ("input_ids", "video_grid_thw", "feature_attention_mask"):
        assert torch.equal(official[key], ours[key]), key
    assert (official["pixel_values_videos"] - ours["pixel_values_videos"]).abs().max() < 1e-5
    assert torch.equal(official["input_features"], ours["input_features"])
    positions, _ = judge._thinker.model.get_rope_index(
        official["input_ids"], None, official["video_grid_thw"], official["attention_mask"], True,
        official["feature_attention_mask"].sum(-1), torch.as_tensor(official["video_second_per_grid"]))
    assert torch.equal(positions, ours["position_ids"])
    tokens = judge.processor.tokenizer.convert_ids_to_tokens(official["input_ids"][0])
    assert tokens.count("<|VIDEO|>") == 2 * 3 * 2 and tokens.count("<|AUDIO|>") == 75  # 4 x 6 patches / 4; 3 s
    with torch.no_grad():
        full = judge._thinker(**official, use_audio_in_video=True).logits[0, -1, judge.answer_ids]
        out = judge(video=video, audio=audio)
    assert torch.allclose(out.logits[0], full, atol=1e-5)
    assert torch.allclose(out.decision, out.logits[:, 1] - out.logits[:, 0])
    assert judge.processor.tokenizer.convert_ids_to_tokens(judge.answer_ids) == ["No", "Yes"]


def test_weights_come_from_a_local_path_and_settings_are_checked_in_one_line(base, tmp_path):
    from train.config import resolve_preprocess

    def stop(model: dict, train: dict | None = None) -> str:
        with pytest.raises(SystemExit) as err:
            resolve_preprocess({"_path": "c.yaml", "model": {"backbone": "qwen2_5_omni", **model}}, [])
        return str(err.value)

    for message in (stop({}), stop({"path": str(tmp_path / "nothing")})):
        assert "\n" not in message and "huggingface-cli download Qwen/Qwen2.5-Omni-7B" in message
        assert "nothing is downloaded" in message or "no model at path" in message
    assert "unknown qwen2_5_omni config field(s) ['lora_rnak']" in stop({"path": str(base), "lora_rnak": 4})
    assert "fps must be an integer in [1, 60]" in stop({"path": str(base), "fps": 0.5})
    from train.config import check_augment
    from train.preprocess import PreprocessConfig

    pre = PreprocessConfig.from_dict(resolve_preprocess({"model": {"backbone": "qwen2_5_omni", "path": str(base)}}, []))
    assert list(pre.crop_size) == [476, 644] and pre.n_frames == 5  # 480 x 640 on the 28-pixel grid; 5 s at 1 fps
    with pytest.raises(ValueError, match="over 353894400 values per clip"):  # whole frames, but not at 60 fps
        PreprocessConfig(fps=60, window_seconds=30.0, crop="full", crop_size=[476, 644], grayscale=False)
    with pytest.raises(SystemExit, match="set augment: false"):
        check_augment({"train": {}}, pre)  # augmentation is on by default
    check_augment({"train": {"augment": False}}, pre)
    with pytest.raises(ValueError, match="name no linear layer of the audio tower"):
        _judge(base, lora_towers=["audio"], lora_target_modules=["q_proj_typo"])
    from train.pretrain import main as pretrain_main

    with pytest.raises(SystemExit, match="a `backbone:` judge has none"):  # no sync profile to pretrain
        pretrain_main(["--dim", "lip_sync", "--src", str(tmp_path), "--no-split-check",
                       "--config", str(tiny_config(tmp_path / "tiny.yaml", base))])


def test_small_judges_cache_keys_are_unchanged():
    """The preprocessing fingerprints (tensor cache keys) of the small judges, as before this backbone."""
    from train.config import load_config, resolve_preprocess
    from train.preprocess import PreprocessConfig

    assert PreprocessConfig().fingerprint() == "2e9c4b5ee2079e0d"
    assert PreprocessConfig(window_seconds=2.0, crop="face", crop_size=(64, 64), grayscale=False,
                            audio_features="logmel_peaks", n_mels=64).fingerprint() == "b23c6b433bfaf1ad"
    conf = load_config("lip_sync", str(ROOT / "train" / "configs" / "realvids" / "lip_sync_light_asd.yaml"))
    assert PreprocessConfig.from_dict(resolve_preprocess(conf, [])).fingerprint() == "d76410a2311196b4"


def test_zero3_config_is_an_accelerate_config_for_8_gpus():
    from accelerate.commands.config.config_args import load_config_from_file

    c = load_config_from_file(str(ROOT / "train" / "accelerate" / "zero3_8gpu.yaml"))
    assert str(c.distributed_type).endswith("DEEPSPEED") and c.num_processes == 8 and c.mixed_precision == "bf16"
    assert c.deepspeed_config["zero_stage"] == 3


# ------------------------------------------------------------------------------ train, resume, export, score

def test_train_resume_evaluate_export_and_score(base, shards, tmp_path):
    """python -m train (reward) lowers its loss and resumes from its checkpoint; python -m eval evaluate
    exports adapters + the base path; python -m eval score gives a calibrated score, eval filter the
    same; Scorer.reward is differentiable; loading refuses a missing or another base model in one line."""
    from eval.__main__ import main as eval_main
    from eval.scorer import Scorer
    from tests.eval_fixtures import make_video
    from train.model import JudgeLoadError

    run, export, cache = tmp_path / "run", tmp_path / "export", tmp_path / "cache"
    args = _args(shards, run, tiny_config(tmp_path / "tiny.yaml", base), cache)
    m = _train(args)
    losses = _losses(run, "reward")
    assert m["steps"] == 40 and len(losses) == 5 and losses[-1] < 0.5 * losses[0], losses
    m2 = _train(args + ["--max-steps", "44"])
    assert m2["resumed_from"].endswith("checkpoint-40") and m2["steps"] == 44 and m2["steps_this_run"] == 4

    assert eval_main(["evaluate", "--dim", "lip_sync", "--shards", str(shards), "--run", str(run), "--export",
                      str(export), "--report", str(tmp_path / "report"), "--cache-dir", str(cache), "--n-boot", "20",
                      "--no-progress"]) == 0
    saved = json.loads((export / "config.json").read_text())
    assert saved["backbone"] == "qwen2_5_omni" and saved["path"] == str(base.resolve())
    from safetensors.torch import load_file

    adapters = load_file(str(export / "model.safetensors"))
    assert adapters and all(".lora_" in k for k in adapters)  # the adapters only, never the base weights
    assert json.loads((export / "calibration.json").read_text())["method"] != "none"

    video = tmp_path / "clip.mp4"
    make_video(video, 3.0)
    proc = subprocess.run([sys.executable, "-m", "eval", "score", "--scorer", str(export), str(video)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    cli_score = json.loads(proc.stdout.strip().splitlines()[0])["scores"]["lip_sync"]
    scorer = Scorer.from_pretrained(export)
    rec = scorer.score_file(video)
    assert rec["status"] == "ok" and 0.0 < rec["score"] < 1.0 and abs(rec["score"] - cli_score) < 1e-4
    assert rec["score"] == pytest.approx(float(scorer.calibrate([rec["logit"]])[0]))  # calibrated clip logit
    assert eval_main(["filter", "--scorer", str(export), "--min", "0", "--out-dir", str(tmp_path / "kept"),
                      str(video)]) == 0
    kept = (tmp_path / "kept" / "kept.txt").read_text().split()
    assert kept[0] == str(video) and float(kept[1].split("=")[1]) == pytest.approx(rec["score"], abs=1e-5)

    # the reward's gradient reaches the frames and the samples (through a calibration with a slope: the
    # one fitted on these 3 val clips may be flat)
    rewarder = Scorer.from_pretrained(export, calibration={"method": "temperature", "params": {"temperature": 2.0}})
    x = scorer.windows(video)[0][2]
    v, a = x["video"].clone().requires_grad_(True), x["audio"].clone().requires_grad_(True)
    reward = rewarder.reward(v, a)
    reward.sum().backward()
    assert reward.shape == (1,) and 0 < float(reward.detach()) < 1
    assert v.grad.abs().sum() > 0 and a.grad.abs().sum() > 0 and torch.isfinite(a.grad).all()

    os.environ["AVBENCH_BASE_MODEL"] = str(tmp_path / "elsewhere")
    try:
        with pytest.raises(JudgeLoadError) as err:
            Scorer.from_pretrained(export)
        assert "\n" not in str(err.value) and "huggingface-cli download" in str(err.value)
        os.environ["AVBENCH_BASE_MODEL"] = str(write_tiny_qwen_omni(tmp_path / "other", seed=1))
        with pytest.raises(JudgeLoadError, match="holds another model than the one the judge was trained on"):
            Scorer.from_pretrained(export)
    finally:
        del os.environ["AVBENCH_BASE_MODEL"]


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["sft", "dpo"])
def test_yes_no_objectives_lower_their_loss(objective, base, shards, tmp_path):
    run = tmp_path / "run"
    m = _train(_args(shards, run, tiny_config(tmp_path / "tiny.yaml", base), tmp_path / "cache", objective))
    losses = _losses(run, objective)
    assert m["steps"] == 40 and losses[-1] < losses[0], losses
    assert all(".lora_" in k for k in __import__("safetensors.torch").torch.load_file(str(run / "model" /
                                                                                       "model.safetensors")))
    if objective == "dpo":  # the frozen reference is a judge folder of its own: config + adapters
        assert (run / "checkpoints" / "dpo" / "dpo_reference" / "model.safetensors").is_file()


@pytest.mark.slow
def test_two_cpu_processes_run_the_same_training(base, shards, tmp_path):
    """accelerate launch --multi_gpu --num_processes 2 on a machine without GPUs: gloo, global batch split."""
    run = tmp_path / "run"
    conf = tiny_config(tmp_path / "tiny.yaml", base, steps=8)
    proc = subprocess.run([str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu",
                           "--num_processes", "2", "-m", "train", *_args(shards, run, conf, tmp_path / "cache")],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 8 and metrics["global_batch"] == 4
    assert all(".lora_" in k for k in __import__("safetensors.torch").torch.load_file(str(run / "model" /
                                                                                       "model.safetensors")))


@pytest.mark.slow
def test_kill_9_at_any_save_then_the_same_command_finishes(base, shards, tmp_path):
    """As for the small judges (tests/test_train.py): killed while writing the tensor cache, a
    checkpoint's weights, a trainer_state.json, during rotation and while writing the final model,
    then the same command runs to the end."""
    from tests.kill_at import kill_each_then_finish
    from train.qwen_omni import QwenOmniJudge

    run = tmp_path / "run"
    conf = tiny_config(tmp_path / "tiny.yaml", base, steps=8, train={"save_steps": 2, "eval_steps": 3, "logging_steps": 2})
    skipped, proc = kill_each_then_finish([*_args(shards, run, conf, tmp_path / "cache"), "--workers", "0"], ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 8 and metrics["resumed_from"].endswith("checkpoint-8")
    assert skipped == [0, 0, 1, 1, 1] and "skipping torn checkpoint" not in proc.stdout
    QwenOmniJudge.from_pretrained(str(run / "model"))
    assert not list(run.glob(".model*"))
