"""train/: preprocessing, tensor cache, judge model, the three TRL objectives, CLI resume.

Runs on tiny synthetic lip-sync shards (tests/train_fixtures.py): 2 s clips, 64x64.
"""
from __future__ import annotations

import json
import re
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.train_fixtures import (TINY_MODEL, TINY_PREPROCESS, draw_face, speech_like, write_fixture_shards,
                                  write_tiny_config)
from train import data as tdata
from train.data import PairCollator, load_split
from train.model import AVJudge, JudgeConfig, judge_config_for
from train.preprocess import PreprocessConfig, load_media, make_inputs, windows_for
from train.trainers import OBJECTIVES, judge_metrics

torch.set_num_threads(1)  # tiny tensors: one thread is as fast, and does not spin on a shared machine

PRE = PreprocessConfig(**TINY_PREPROCESS)
MODEL = TINY_MODEL


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    return write_fixture_shards(tmp_path_factory.mktemp("shards"), sources=4, seconds=2.0, pairs_per_window=2,
                                splits={"train": 0.75, "val": 0.25}, seed=1)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def pairs(shards, cache_dir):
    # the first build goes through the multi-worker DataLoader path
    return (load_split(shards, "train", PRE, cache_dir, num_workers=2, log=lambda *a: None),
            load_split(shards, "val", PRE, cache_dir, num_workers=0, log=lambda *a: None))


def _model(seed: int = 0) -> AVJudge:
    torch.manual_seed(seed)
    return AVJudge(judge_config_for(PRE, **MODEL))


# ------------------------------------------------------------------------------ preprocessing

def test_preprocess_config_roundtrip_and_fingerprint(tmp_path):
    p = tmp_path / "pre.json"
    PRE.save(p)
    back = PreprocessConfig.load(p)
    assert back == PRE and back.fingerprint() == PRE.fingerprint()
    assert PreprocessConfig.from_dict(PRE.to_dict()) == PRE
    assert PreprocessConfig(**{**PRE.to_dict(), "n_mels": 40}).fingerprint() != PRE.fingerprint()
    assert PRE.mel_per_frame == 4 and PRE.n_frames == 50


def test_make_inputs_shapes_padding_and_fallback():
    rng = np.random.default_rng(0)
    audio, env = speech_like(rng, 1.5)
    frames = draw_face(np.clip(env[::640][:37], 0, 1), rng, size=48)  # 37 frames < 50: padded
    inputs, info = make_inputs(frames, audio, PRE, return_info=True)
    assert inputs["video"].shape == (50, 1, 24, 36) and inputs["video"].dtype == torch.float32
    assert inputs["audio"].shape == (32, 200)
    assert abs(float(inputs["video"].mean())) < 1e-3 and abs(float(inputs["video"].std()) - 1) < 1e-2
    assert info["face_source"] in {"frontal", "profile", "fallback"}
    blank = np.full((50, 40, 40, 3), 128, np.uint8)  # no face anywhere: documented fallback
    _, info = make_inputs(blank, np.zeros(100), PRE, return_info=True)
    assert info["face_source"] == "fallback"


def test_load_media_bytes_and_windows_for(tmp_path):
    from perturb.media import encode_clip

    rng = np.random.default_rng(2)
    audio, env = speech_like(rng, 3.0)
    frames = draw_face(env[: 75 * 640].reshape(75, 640).mean(1) / env.max(), rng, size=64)
    path = tmp_path / "long.mp4"
    encode_clip(frames, audio, path)
    f, a = load_media(path.read_bytes(), PRE)
    assert f.shape[1:] == (64, 64, 3) and abs(len(f) - 75) <= 1 and abs(len(a) - 48000) < 1600
    wins = windows_for(path, PRE, hop_seconds=1.0)
    assert [w[:2] for w in wins] == [(0.0, 2.0), (1.0, 3.0)]
    assert wins[0][2]["video"].shape == (50, 1, 24, 36)


# ------------------------------------------------------------------------------ cache

def test_cache_reused_then_invalidated_by_fingerprint(shards, cache_dir, pairs, monkeypatch):
    train, _ = pairs
    assert len(train) == 6 and set(train[0]) == {"chosen", "rejected", "meta"}
    entries = list(Path(cache_dir).glob("train-000000-*"))
    assert len(entries) == 1 and (entries[0] / "tensors.safetensors").is_file()
    assert not list(Path(cache_dir).rglob("*.pt")) and not list(Path(cache_dir).rglob("*.pkl"))

    def no_decode(*a, **k):
        raise AssertionError("mp4 decoded although the cache is valid")

    monkeypatch.setattr(tdata, "preprocess_clip", no_decode)
    again = load_split(shards, "train", PRE, cache_dir, num_workers=0, log=lambda *a: None)
    assert torch.equal(again.tensors["chosen.video"], train.tensors["chosen.video"])

    calls = {"n": 0}
    from train.preprocess import preprocess_clip as real

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(tdata, "preprocess_clip", counting)
    changed = PreprocessConfig(**{**PRE.to_dict(), "n_mels": 24})
    d = load_split(shards, "val", changed, cache_dir, num_workers=0, log=lambda *a: None)
    assert calls["n"] == 2 * len(d) and d[0]["chosen"]["audio"].shape[0] == 24

    clips = train.clips()
    assert len(clips) == 12 and sorted(set(clips.labels)) == [0, 1]


# ------------------------------------------------------------------------------ model

def test_time_warp_stretches_picture_and_sound_together():
    """Augment(time_warp): each clip is stretched by its own factor in [1, 1 + w] from its own start,
    and picture and sound sample the same instants, so an in-sync clip stays in sync."""
    torch.manual_seed(0)
    b, t, r = 64, 50, 4
    aug = tdata.Augment(jitter=0, flip=0, flicker=0, video_noise=0, freq_mask=0, audio_noise=0, time_warp=0.3)
    # every value is its own time stamp, in video frames
    video = torch.arange(t, dtype=torch.float32).view(1, t, 1).repeat(b, 1, 3)
    audio = (torch.arange(t * r, dtype=torch.float32) / r).view(1, 1, -1).repeat(b, 2, 1)
    v, a = aug.time(video, audio)
    assert v.shape == video.shape and a.shape == audio.shape
    torch.testing.assert_close(a[:, 0, ::r], v[:, :, 0])                  # same instants
    rate = v[:, 1:, 0] - v[:, :-1, 0]                                     # source frames per output frame
    stretch = 1 / rate.median(dim=1).values
    assert bool(((stretch >= 1 - 1e-4) & (stretch <= 1.3 + 1e-4)).all()) and float(stretch.std()) > 0.03
    assert float(v.min()) >= 0 and float(v.max()) <= t - 1                # inside the window
    same = tdata.Augment(jitter=0, flip=0, flicker=0, video_noise=0, freq_mask=0, audio_noise=0).time(video, audio)
    assert same[0] is video and same[1] is audio                          # off by default


def test_landmark_affine_maps_each_clips_points_by_its_own_bounded_scale_and_rotation():
    """Augment(landmark_affine=s): every clip's (x, y) points go through one 2x2 map R(angle) diag(sx, sy)
    with sx, sy in [1/(1+s), 1+s] and |angle| <= s/2, drawn per clip; landmark_noise adds jitter of
    that std; both are off by default."""
    from train.config import check_augment
    from train.preprocess import PreprocessConfig

    torch.manual_seed(0)
    b, t, p, s = 200, 50, 57, 0.3
    off = dict(jitter=0, flip=0, flicker=0, video_noise=0, freq_mask=0, audio_noise=0)
    points = torch.randn(b, t, 2 * p)
    out = tdata.Augment(**off, landmark_affine=s).video(points)
    x, y = points.view(b, t * p, 2), out.view(b, t * p, 2)
    m = torch.linalg.lstsq(x, y).solution.transpose(1, 2)                  # y = m @ x per clip
    torch.testing.assert_close(torch.einsum("bij,bnj->bni", m, x), y, atol=1e-4, rtol=1e-4)
    scale = m.norm(dim=1)                                                   # columns of R diag(sx, sy)
    angle = torch.atan2(m[:, 1, 0], m[:, 0, 0])
    assert float(scale.min()) >= 1 / (1 + s) - 1e-4 and float(scale.max()) <= 1 + s + 1e-4
    assert float(angle.abs().max()) <= s / 2 + 1e-4
    assert float(scale.std()) > 0.05 and float(angle.std()) > 0.03         # drawn per clip
    assert float((scale[:, 0] - scale[:, 1]).abs().mean()) > 0.05           # x and y apart
    noisy = tdata.Augment(**off, landmark_noise=0.02).video(points)
    assert abs(float((noisy - points).std()) - 0.02) < 0.002
    assert tdata.Augment(**off).video(points) is points                     # off by default
    # another rank-3 input (a frozen encoder's output) is refused rather than garbled
    conf = {"train": {"augment": {"landmark_affine": 0.3}}, "_path": "x.yaml"}
    with pytest.raises(SystemExit, match="not landmarks"):
        check_augment(conf, PreprocessConfig())
    check_augment(conf, PreprocessConfig(video_input="landmarks", face_detector="mediapipe"))


def test_gradient_flows_to_inputs_and_shapes(pairs):
    train, _ = pairs
    m = _model().eval()
    b = PairCollator()([train[0], train[1]])
    v = b["chosen_video"].clone().requires_grad_(True)
    a = b["chosen_audio"].clone().requires_grad_(True)
    out = m(video=v, audio=a, labels=torch.tensor([1, 0]))
    assert out.logits.shape == (2, 2) and out.loss is not None
    assert torch.allclose(m.decision_logit(v, a), out.logits[:, 1] - out.logits[:, 0])
    m.score(v, a).sum().backward()
    assert v.grad is not None and a.grad is not None
    assert float(v.grad.abs().sum()) > 0 and float(a.grad.abs().sum()) > 0
    assert torch.isfinite(v.grad).all() and torch.isfinite(a.grad).all()
    assert 5_000 < sum(p.numel() for p in m.parameters()) < 300_000


def test_save_load_roundtrip_identical_scores(pairs, tmp_path):
    from transformers import AutoModel

    _, val = pairs
    b = PairCollator()([val[0], val[1]])
    for head, encoder in (("mlp", "cnn"), ("monotone", "grid"), ("mlp", "quality")):
        torch.manual_seed(3)
        m = AVJudge(judge_config_for(PRE, **{**MODEL, "head": head, "frame_encoder": encoder}))
        with torch.no_grad():  # move every weight and BN statistic off its initial value
            for t in list(m.parameters()) + [x for n, x in m.named_buffers() if "running" in n]:
                t.add_(0.05 * torch.randn_like(t))
        m.eval()
        out = tmp_path / f"{head}_{encoder}"
        m.save_pretrained(out)
        assert (out / "model.safetensors").is_file()
        for loaded in (AVJudge.from_pretrained(out), AutoModel.from_pretrained(out)):
            loaded.eval()
            assert isinstance(loaded.config, JudgeConfig) and loaded.config.head == head
            with torch.no_grad():
                assert torch.equal(m.score(b["chosen_video"], b["chosen_audio"]),
                                   loaded.score(b["chosen_video"], b["chosen_audio"]))


def test_incompatible_checkpoint_gives_a_plain_error(tmp_path):
    """Weights saved by another architecture (here: a wider head) fail with a message naming the cause."""
    import json as _json

    from train.model import load_weights

    m = AVJudge(judge_config_for(PRE, **{**MODEL, "head": "mlp"}))
    m.save_pretrained(tmp_path)
    cfg = _json.loads((tmp_path / "config.json").read_text())
    cfg["head_hidden"] = int(cfg["head_hidden"]) + 8  # what an older train/model.py would mean
    (tmp_path / "config.json").write_text(_json.dumps(cfg))
    with pytest.raises(RuntimeError, match="trained by an older avbench"):
        load_weights(tmp_path)


def test_grid_frame_encoder_sees_where_the_mouth_moves():
    """GridPool: a patch flickering in one grid cell lights up that cell's |difference| feature only,
    and the grid judge learns far fewer weights than the CNN one (no face templates to memorise)."""
    from train.encoders.frames import GridPool

    t, h, w = 6, 32, 48
    x = torch.zeros(1, t, 1, h, w)
    x[0, 1::2, :, 0:8, 0:12] = 1.0                    # flicker in the top-left cell of a 4 x 4 grid
    pool = GridPool(JudgeConfig(grid_size=(4, 4), channels=1, use_motion=True))
    feats = pool(x)[0].T                              # (T, F): the encoder stacks the frame difference itself
    assert feats.shape == (t, 3 * 16) == (t, pool.n_features)
    motion = feats[:, 32:].view(t, 4, 4)              # the |difference| block
    assert torch.all(motion[1:, 0, 0] == 1.0)
    assert float(motion[:, 1:, :].abs().sum() + motion[:, :, 1:].abs().sum()) == 0.0
    n = {enc: sum(p.numel() for p in AVJudge(judge_config_for(PRE, **{**MODEL, "frame_encoder": enc})).video_encoder.parameters())
         for enc in ("cnn", "grid")}
    assert n["grid"] == 0 < n["cnn"]
    with pytest.raises(ValueError, match="unknown video encoder frame_encoder='resnet'.*'grid'"):
        AVJudge(JudgeConfig(frame_encoder="resnet"))


def test_quality_stats_frame_encoder_measures_the_corruptions():
    """QualityStats: blur lowers and noise raises the sharpness cells, a repeated frame has the
    lowest motion, a red cast moves the red mean, a flat fill drops the local std."""
    from train.encoders.frames import QualityStats

    g = torch.Generator().manual_seed(0)
    base = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 68, 68, generator=g), 5, stride=1)  # (1, 3, 64, 64)
    enc = QualityStats(JudgeConfig(grid_size=(4, 4), channels=3, use_motion=True))
    n = 16

    def stats(frame: torch.Tensor, prev: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        clip = torch.stack([prev if prev is not None else frame * 0.9, frame], dim=1)  # (1, 2 frames, 3, H, W)
        f = enc(clip)[0, :, 1].view(6, n)            # the second frame's features (its difference to the first)
        return {"red": f[0], "std": f[3], "sharp": f[4], "motion": f[5]}

    ref = stats(base)
    blurred = stats(torch.nn.functional.avg_pool2d(base, 3, stride=1, padding=1, count_include_pad=False))
    noisy = stats(base + 0.05 * torch.randn(base.shape, generator=g))
    assert torch.all(blurred["sharp"] < ref["sharp"]) and torch.all(noisy["sharp"] > ref["sharp"])
    assert torch.all(stats(base, prev=base)["motion"] < ref["motion"])
    cast = base.clone()
    cast[:, 0] += 0.2
    assert torch.allclose(stats(cast)["red"], ref["red"] + 0.2, atol=1e-5)
    filled = base.clone()
    filled[..., :16, :16] = 0.5
    assert stats(filled)["std"][0] < 0.1 * ref["std"][0]
    assert enc.n_features == 6 * n and not list(enc.parameters())


# ------------------------------------------------------------------------------ objectives

def _fixed_loss(trainer, batch) -> float:
    trainer.model.eval()
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, batch))


@pytest.mark.parametrize("objective", ["reward", "dpo", "sft"])
def test_objective_lowers_loss(objective, pairs, tmp_path):
    train, val = pairs
    trainer_cls, config_cls = OBJECTIVES[objective]
    args = config_cls(output_dir=str(tmp_path / "ckpt"), max_steps=12, per_device_train_batch_size=6,
                      learning_rate=3e-3, warmup_steps=0, eval_strategy="no", save_strategy="no",
                      logging_steps=4, disable_tqdm=True, use_cpu=True, augment=False, seed=0)
    trainer = trainer_cls(_model(), args, train, val)  # one constructor shape for every objective
    samples = trainer.train_dataset
    batch = trainer.data_collator([samples[i] for i in range(len(samples))])
    before = _fixed_loss(trainer, batch)
    trainer.train()
    after = _fixed_loss(trainer, batch)
    assert trainer.state.global_step == 12
    assert after < before, (objective, before, after)
    m = judge_metrics(trainer.model, val)
    assert 0.0 <= m["pairwise_accuracy"] <= 1.0 and m["n_pairs"] == len(val)


# ------------------------------------------------------------------------------ CLI + resume

def test_cli_writes_run_and_resumes(shards, cache_dir, pairs, tmp_path, capsys):
    from train.__main__ import main

    cfg = write_tiny_config(tmp_path / "tiny.yaml")
    run = tmp_path / "run"
    common = ["--dim", "lip_sync", "--objective", "reward", "--shards", str(shards), "--run", str(run),
              "--config", str(cfg), "--cache-dir", str(cache_dir)]
    m1 = main(common + ["--max-steps", "4"])
    assert m1["steps"] == 4 and m1["resumed_from"] is None
    assert (run / "model" / "model.safetensors").is_file() and (run / "model" / "preprocessing.json").is_file()
    assert PreprocessConfig.load(run / "model" / "preprocessing.json") == PRE
    saved = json.loads((run / "metrics.json").read_text())
    for k in ("val_pairwise_accuracy", "val_auc", "steps", "wall_time_s", "train_pairs_per_s",
              "data_loading_share", "compute_share", "objective", "data_card"):
        assert k in saved, k
    assert saved["data_card"]["recipe"] == "lip_sync_fixture"
    assert saved["train_pairs_per_s"] > 0 and saved["device"] == "cpu"
    assert saved["device_name"].endswith(f"{len(os.sched_getaffinity(0))} cores (cpu)")  # what it ran on, in words

    # no progress bar in a log (stderr is not a terminal here): progress lines with the time left instead
    assert re.search(r"\[train\] step 4/4 \(100%\), [0-9hms]+, about 0s left", capsys.readouterr().out)
    m2 = main(common + ["--max-steps", "6"])  # interrupted-run stand-in: continue from checkpoint-4
    assert m2["resumed_from"].endswith("checkpoint-4")
    assert m2["steps"] == 6 and m2["steps_this_run"] == 2
    out = capsys.readouterr().out
    assert "resuming from" in out and "[train] step 2/2 (100%)" in out  # this run's steps, not the resumed ones'

    state = json.loads((run / "checkpoints" / "reward" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6


def test_progress_lines_say_how_long_is_left():
    from train.progress import duration, progress

    assert [duration(x) for x in (0.4, 59.6, 61, 3599, 3725)] == ["0s", "1m00s", "1m01s", "59m59s", "1h02m"]
    assert progress(25, 100, 30.0) == "25/100 (25%), 30s, about 1m30s left"
    assert progress(7, None, 12.2) == "7/?, 12s"  # no total: no estimate


def _tear(ckpt: Path, how: str) -> None:
    """What a kill leaves: mid-save (weights written, the rest not yet), or trainer_state.json cut short."""
    if how == "mid_save":
        for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
            (ckpt / name).unlink(missing_ok=True)
    else:
        state = (ckpt / "trainer_state.json").read_text()
        (ckpt / "trainer_state.json").write_text(state[: len(state) // 2])


def test_resume_skips_torn_checkpoints(shards, cache_dir, pairs, tmp_path, capsys):
    """A torn newer checkpoint does not hide a complete older one; a torn one alone means start
    over; either way the re-run finishes, says which checkpoint it skipped, and removes it."""
    import shutil

    from train.__main__ import main

    run = tmp_path / "run"
    ckpts = run / "checkpoints" / "reward"
    common = ["--dim", "lip_sync", "--objective", "reward", "--shards", str(shards), "--run", str(run),
              "--config", str(write_tiny_config(tmp_path / "tiny.yaml")), "--cache-dir", str(cache_dir)]
    main(common + ["--max-steps", "4"])
    shutil.copytree(ckpts / "checkpoint-4", ckpts / "checkpoint-6")
    _tear(ckpts / "checkpoint-6", "mid_save")
    capsys.readouterr()
    m = main(common + ["--max-steps", "6"])
    out = capsys.readouterr().out
    assert m["resumed_from"].endswith("checkpoint-4") and m["steps"] == 6 and m["steps_this_run"] == 2
    assert "skipping torn checkpoint" in out and "checkpoint-6" in out
    assert json.loads((ckpts / "checkpoint-6" / "trainer_state.json").read_text())["global_step"] == 6

    for ckpt in ckpts.glob("checkpoint-*"):
        _tear(ckpt, "cut_state")
    m = main(common + ["--max-steps", "4"])
    assert m["resumed_from"] is None and m["steps"] == 4 and m["steps_this_run"] == 4
    assert sorted(p.name for p in ckpts.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


@pytest.mark.slow
def test_kill_9_at_any_save_then_the_same_command_finishes(shards, tmp_path):
    """`python -m train` killed (SIGKILL, tests/kill_at.py) while writing the tensor cache, a
    checkpoint's weights, a trainer_state.json, during checkpoint rotation and while writing the
    final model -- one after the other -- then the same command runs to the end."""
    from tests.kill_at import kill_each_then_finish
    from train.model import AVJudge

    run = tmp_path / "run"
    args = ["--dim", "lip_sync", "--shards", str(shards), "--run", str(run), "--config",
            str(write_tiny_config(tmp_path / "tiny.yaml")), "--cache-dir", str(tmp_path / "cache"),
            "--workers", "0", "--max-steps", "8"]
    skipped, proc = kill_each_then_finish(args, Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 8 and metrics["resumed_from"].endswith("checkpoint-8")
    # the torn checkpoint of each killed save was skipped by the next run
    assert skipped == [0, 0, 1, 1, 1] and "skipping torn checkpoint" not in proc.stdout
    AVJudge.from_pretrained(str(run / "model"))
    assert not list(run.glob(".model*"))
