"""The backbone registry: a toy encoder of its own file trains, exports and scores through the CLIs;
strict judge configs; Light-ASD's layout and input geometry; the landmark normalisation."""
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

from tests.train_fixtures import write_fixture_shards
from train.encoders import VIDEO_ENCODERS, VideoEncoder, register_video_encoder
from train.model import AVJudge, JudgeConfig, judge_config_for
from train.preprocess import PreprocessConfig

ROOT = Path(__file__).resolve().parents[1]
PRE = dict(window_seconds=2.0, crop_size=[24, 36], n_mels=32, detect_frames=3)
MODEL = dict(aud_widths=[24, 24], emb_dim=24, max_offset_frames=8, n_segments=2, use_pooled=False)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_fixture_shards(tmp_path_factory.mktemp("shards"), sources=4, seconds=2.0, pairs_per_window=2,
                                splits={"train": 0.5, "val": 0.25, "test": 0.25}, seed=3)


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(cwd)})


def test_toy_encoder_trains_exports_and_scores_through_the_clis(shards, tmp_path):
    """Nothing outside tests/toy_encoder.py names the toy backbone: python -m train, eval evaluate and
    eval score find it through --plugin; without it, scoring says which module to import."""
    from eval.__main__ import main as eval_main
    from train.__main__ import main as train_main

    conf = tmp_path / "toy.yaml"
    conf.write_text(yaml.safe_dump({
        "dim": "lip_sync", "preprocess": PRE, "model": {**MODEL, "frame_encoder": "toy_lower_half"},
        "train": {"batch_size": 4, "max_steps": 6, "save_steps": 3, "eval_steps": 3, "logging_steps": 3,
                  "disable_tqdm": True}}))
    run, export = tmp_path / "run", tmp_path / "export"
    m = train_main(["--dim", "lip_sync", "--shards", str(shards), "--run", str(run), "--config", str(conf),
                    "--cache-dir", str(tmp_path / "cache"), "--plugin", "tests.toy_encoder"])
    assert m["steps"] == 6
    saved = json.loads((run / "model" / "config.json").read_text())
    assert saved["frame_encoder"] == "toy_lower_half" and saved["plugins"] == ["tests.toy_encoder"]
    assert eval_main(["evaluate", "--dim", "lip_sync", "--shards", str(shards), "--run", str(run), "--export",
                      str(export), "--report", str(tmp_path / "report"), "--cache-dir", str(tmp_path / "cache"),
                      "--n-boot", "20", "--no-progress", "--plugin", "tests.toy_encoder"]) == 0
    video = tmp_path / "clip.mp4"
    (tmp_path / "samples").mkdir()
    from tests.eval_fixtures import make_video

    make_video(video, 2.0)
    ok = _cli(["-m", "eval", "score", "--plugin", "tests.toy_encoder", "--scorer", str(export), str(video)], tmp_path)
    assert ok.returncode == 0, ok.stderr[-1500:]
    score = json.loads(ok.stdout.strip().splitlines()[-1])["scores"]["lip_sync"]
    assert 0.0 <= score <= 1.0
    missing = _cli(["-m", "eval", "score", "--scorer", str(export), str(video)], tmp_path)
    assert missing.returncode != 0
    assert "toy_lower_half" in missing.stderr and "tests.toy_encoder" in missing.stderr


def test_judge_config_refuses_typos_naming_the_valid_fields():
    with pytest.raises(ValueError, match=r"unknown judge config field\(s\) \['frame_encodr'\].*'frame_encoder'"):
        JudgeConfig(frame_encodr="grid")
    with pytest.raises(ValueError, match="freeze must be one of"):
        JudgeConfig(freeze="half")
    c = JudgeConfig(frame_encoder="grid", freeze=True)
    assert c.freeze == "all"
    again = JudgeConfig.from_dict(c.to_dict())  # what from_pretrained does with config.json
    assert again.frame_encoder == "grid" and again.freeze == "all"


def test_yaml_model_section_typo_stops_training_with_one_line(shards, tmp_path):
    conf = tmp_path / "typo.yaml"
    conf.write_text(yaml.safe_dump({"preprocess": PRE, "model": {**MODEL, "frame_encodr": "grid"}}))
    proc = _cli(["-m", "train", "--dim", "lip_sync", "--shards", str(shards), "--run", str(tmp_path / "r"),
                 "--config", str(conf), "--cache-dir", str(tmp_path / "cache")], tmp_path)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "frame_encodr" in last and "frame_encoder" in last


def test_registration_checks_the_contract():
    with pytest.raises(TypeError, match="must subclass"):
        register_video_encoder("not_an_encoder")(torch.nn.Linear)

    class Bad(VideoEncoder):
        preprocess_needs = ["crop"]

    with pytest.raises(TypeError, match="preprocess_needs must be a dict"):
        register_video_encoder("bad_needs")(Bad)
    with pytest.raises(ValueError, match="already registered"):
        register_video_encoder("grid")(type("Other", (VideoEncoder,), {}))
    assert {"cnn", "grid", "quality", "light_asd", "landmarks"} <= set(VIDEO_ENCODERS)


def test_training_fills_and_checks_the_encoders_preprocessing_needs(tmp_path):
    from train.config import resolve_preprocess

    filled = resolve_preprocess({"model": {"frame_encoder": "light_asd", "audio_encoder": "light_asd"},
                                 "preprocess": {"window_seconds": 2.0}}, [])
    cfg = PreprocessConfig.from_dict(filled)
    assert (cfg.crop, cfg.crop_size, cfg.video_norm, cfg.audio_features, cfg.n_mfcc) == \
        ("asd", (112, 112), "unit", "mfcc", 13)
    with pytest.raises(SystemExit, match="crop: 'mouth' conflicts.*crop: 'asd'"):
        resolve_preprocess({"model": {"frame_encoder": "light_asd", "audio_encoder": "light_asd"},
                            "preprocess": {"crop": "mouth"}}, [])


# ------------------------------------------------------------------------------ Light-ASD

LIGHT_ASD = ROOT.parent / "shared" / "pretrained" / "light-asd" / "pretrain_AVA_CVPR.model"
ASD_MODEL = dict(frame_encoder="light_asd", audio_encoder="light_asd", emb_dim=16, max_offset_frames=4,
                 n_segments=1, use_pooled=False, head="monotone", freeze="all")


def _asd_pre() -> PreprocessConfig:
    from train.config import resolve_preprocess

    return PreprocessConfig.from_dict(resolve_preprocess({"model": ASD_MODEL, "preprocess": {"window_seconds": 0.4}}, []))


def _random_light_asd_checkpoint(path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with the upstream file's keys and shapes (saved as upstream does, with torch.save)."""
    from train.encoders.light_asd import LightASD

    torch.manual_seed(seed)
    net = LightASD()
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn_like(t) * 0.1 + (1.0 if t.dim() == 1 else 0.0))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    torch.save(state, path)
    return state


def test_light_asd_loads_strictly_and_keeps_upstream_geometry(tmp_path):
    ckpt = tmp_path / "pretrain_AVA_CVPR.model"
    state = _random_light_asd_checkpoint(ckpt)
    assert len(state) == 192 and sum(v.numel() for k, v in state.items() if "num_batches" not in k and
                                     "running" not in k) == 1_021_636
    pre = _asd_pre()
    judge = AVJudge(judge_config_for(pre, pretrained=str(ckpt), **ASD_MODEL))
    loaded = judge.load_pretrained_encoders()
    assert len(loaded) == 2 and all(str(ckpt) in s for s in loaded)
    assert torch.equal(judge.video_encoder.net.block1.s_3.weight, state["model.visualEncoder.block1.s_3.weight"])
    assert torch.equal(judge.audio_encoder.net.block3.bn_last.running_var, state["model.audioEncoder.block3.bn_last.running_var"])
    # frozen: no gradient, and BatchNorm keeps the pretrained statistics in training mode
    assert judge.video_encoder.frozen
    judge.train()
    assert not judge.video_encoder.net.training and not judge.audio_encoder.net.training
    assert all(not p.requires_grad for p in judge.video_encoder.parameters())
    assert any(p.requires_grad for p in judge.audio_encoder.proj.parameters())
    # input geometry: T frames of 112x112 grey crops, 4 MFCC frames of 13 per video frame
    t = pre.n_frames
    video, audio = torch.rand(2, t, 1, 112, 112), torch.randn(2, 13, 4 * t)
    v, a = judge.embed_video(video), judge.embed_audio(audio, t)
    assert v.shape == (2, 16, t) and a.shape == (2, 16, t)
    feats = judge.encode_video_frames(video)
    assert feats.shape == (2, t, 128)
    # precomputed frozen features give the same decision as the raw crops
    judge.eval()
    with torch.no_grad():
        assert torch.allclose(judge.decision_logit(video, audio), judge.decision_logit(feats, audio), atol=1e-5)


def test_frozen_features_cached_for_other_clips_are_encoded_again(tmp_path):
    """precompute_video_features keys its cache by what the caller says the inputs are; an entry
    holding another number of clips (a mislabelled identity) is not used for these clips."""
    from train.data import precompute_video_features

    ckpt = tmp_path / "pretrain_AVA_CVPR.model"
    _random_light_asd_checkpoint(ckpt)
    pre = _asd_pre()
    judge = AVJudge(judge_config_for(pre, pretrained=str(ckpt), **ASD_MODEL))
    judge.load_pretrained_encoders()
    t = pre.n_frames
    few = {"chosen.video": torch.rand(2, t, 1, 112, 112)}
    more = {"chosen.video": torch.rand(3, t, 1, 112, 112)}
    judge.eval()
    with torch.no_grad():
        expected = judge.encode_video_frames(more["chosen.video"]).half()
    logs = []
    for tensors in (few, more):  # the same identity for both: a stale key
        assert precompute_video_features(judge, tensors, ["chosen.video"], ["same shards"], tmp_path / "cache",
                                         log=logs.append)
    assert few["chosen.video"].shape == (2, t, 128)
    assert more["chosen.video"].shape == (3, t, 128)
    torch.testing.assert_close(more["chosen.video"], expected)
    assert any("encoding again" in line for line in logs)


def test_light_asd_wrong_files_fail_plainly(tmp_path):
    from train.encoders.light_asd import load_light_asd

    pre = _asd_pre()
    missing = AVJudge(judge_config_for(pre, pretrained=str(tmp_path / "nope.model"), **ASD_MODEL))
    with pytest.raises(FileNotFoundError, match="Junhua-Liao/Light-ASD"):
        missing.load_pretrained_encoders()
    no_path = AVJudge(judge_config_for(pre, **ASD_MODEL))
    with pytest.raises(ValueError, match="needs pretrained weights.*Light-ASD"):
        no_path.load_pretrained_encoders()
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a Light-ASD state dict"):
        load_light_asd(garbage)
    state = _random_light_asd_checkpoint(tmp_path / "full.model")
    wrong = tmp_path / "wrong.model"
    state["model.visualEncoder.block1.s_3.weight"] = torch.zeros(32, 1, 1, 5, 5)
    torch.save(state, wrong)
    judge = AVJudge(judge_config_for(pre, pretrained=str(wrong), **ASD_MODEL))
    with pytest.raises(ValueError, match="do not fit Light-ASD's layout"):
        judge.load_pretrained_encoders()
    marker = tmp_path / "pwned"

    class Touch:
        def __reduce__(self):
            return (Path.touch, (marker,))

    hostile = tmp_path / "hostile.model"
    torch.save({"x": Touch()}, hostile)
    with pytest.raises(ValueError, match="not a Light-ASD state dict"):
        load_light_asd(hostile)
    assert not marker.exists()  # weights_only=True: the file's code never ran


@pytest.mark.skipif(not LIGHT_ASD.is_file(), reason="needs ../shared/pretrained/light-asd")
def test_real_light_asd_checkpoint_loads_strictly():
    from train.encoders.light_asd import load_light_asd

    net = load_light_asd(LIGHT_ASD)
    assert sum(p.numel() for p in net.parameters()) == 1_021_636
    with torch.no_grad():
        ve, ae = net.embed(torch.rand(1, 10, 1, 112, 112), torch.randn(1, 13, 40))
        assert net.speaking_logits(ve, ae).shape == (1, 10)


def test_asd_crop_geometry_is_light_asds():
    from train.preprocess import crop_boxes

    box = np.array([[100.0, 50.0, 180.0, 150.0]])                # 80 x 100: s = 50, centre (140, 100)
    x0, y0, x1, y1 = crop_boxes(box, (400, 400), PreprocessConfig(crop="asd", crop_size=(112, 112)))[0]
    assert np.allclose([x0, x1], [140 - 35, 140 + 35]) and np.allclose([y0, y1], [100 - 15, 100 + 55])


def test_mfcc_matches_python_speech_features_definition():
    """Frames every 10 ms (the last zero-padded); c0 is the log energy of each pre-emphasised,
    int16-scaled 25 ms frame; a louder copy moves c0 by log(gain^2) and nothing else."""
    from train.preprocess import mfcc

    cfg = PreprocessConfig()
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal(16000 + 77)).astype(np.float32)
    m = mfcc(x, cfg).double()
    assert m.shape == (13, 1 + int(np.ceil((len(x) - 400) / 160)))
    s = x.astype(np.float64) * 32768
    s = np.append(s[0], s[1:] - 0.97 * s[:-1])
    for i in (0, 5, 37):
        frame = s[i * 160: i * 160 + 400]
        energy = (np.abs(np.fft.rfft(frame, 512)) ** 2 / 512).sum()
        assert abs(m[0, i].item() - np.log(energy)) < 1e-3
    louder = mfcc(3 * x, cfg).double()
    assert torch.allclose(louder[0] - m[0], torch.full_like(m[0], float(np.log(9))), atol=1e-3)
    assert torch.allclose(louder[1:], m[1:], atol=1e-3)


# ------------------------------------------------------------------------------ landmarks

def test_landmark_features_remove_pose_scale_and_the_speakers_shape():
    from train.landmarks import N_FEATURES, landmark_features

    rng = np.random.default_rng(0)
    face = rng.uniform(0, 100, (468, 2))
    t = 20
    lms = np.repeat(face[None], t, 0)
    lms[:, 14, 1] += 10 * np.sin(np.arange(t))                    # the inner lower lip moves
    feats = landmark_features(lms)
    assert feats.shape == (t, N_FEATURES)
    assert torch.allclose(feats.mean(0), torch.zeros(N_FEATURES), atol=1e-5)   # clip mean shape removed
    # a rolled, scaled, moved head gives the same features
    ang, scale, shift = np.deg2rad(np.linspace(-20, 20, t)), 1.7, np.array([40.0, -15.0])
    rot = np.stack([np.stack([np.cos(ang), -np.sin(ang)], -1), np.stack([np.sin(ang), np.cos(ang)], -1)], 1)
    posed = np.einsum("tij,tpj->tpi", rot, lms) * scale + shift
    assert torch.allclose(landmark_features(posed), feats, atol=1e-4)
    # and only the moving point's coordinates vary over time
    from train.landmarks import POINTS

    moving = POINTS.index(14)
    std = feats.view(t, -1, 2).std(0)
    assert std[moving, 1] > 0.05 and float(std.sum() - std[moving].sum()) < 1e-4


_FORKED_FACE_MESH = """
import multiprocessing, sys
import numpy as np
from train.landmarks import face_landmarks
from train.preprocess import PreprocessConfig, load_media

def run(video):
    frames = load_media(video, PreprocessConfig())[0][:10] if video else np.full((6, 96, 96, 3), 128, np.uint8)
    return face_landmarks(frames)[1]["detected"]

if __name__ == "__main__":
    with multiprocessing.get_context("fork").Pool(1) as pool:   # as DataLoader workers run it
        print(pool.map(run, [sys.argv[1]])[0])
"""
REAL_FACE = Path(__file__).resolve().parents[2] / "shared/realvids/clips/Talking-Face_PC-AVS__misc_Audio_Source_00015.mp4"


@pytest.mark.parametrize("runtime", ["mediapipe", "litert"])
@pytest.mark.parametrize("video", ["", "real"], ids=["no_face", "real_face"])
def test_face_mesh_start_up_noise_stays_off_stderr_in_worker_processes(video, runtime):
    """MediaPipe's C++ side (and LiteRT's) writes start-up notices straight to fd 2 when its detector
    and its landmark model start (in every preprocessing worker: hundreds of lines per run);
    face_landmarks keeps them off while FaceMesh works."""
    pytest.importorskip("mediapipe")
    if runtime == "litert":
        pytest.importorskip("ai_edge_litert")
    if video == "real":
        if not REAL_FACE.is_file():
            pytest.skip("../shared/realvids is absent (a real face starts the landmark model)")
        video = str(REAL_FACE)
    out = subprocess.run([sys.executable, "-c", _FORKED_FACE_MESH, video], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=120,
                         env={**os.environ, "AVBENCH_FACEMESH": runtime})
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) == (10 if video else 0)   # faces found on the real frames only
    assert out.stderr == ""


def test_face_tracking_restarts_for_each_clip():
    """face_landmarks keeps one FaceMesh graph per process (a new graph pays for its first frames
    again) but resets its tracking per clip: a clip's landmarks do not depend on what came before."""
    pytest.importorskip("mediapipe")
    if not REAL_FACE.is_file():
        pytest.skip("../shared/realvids is absent (tracking needs a real face)")
    from train.landmarks import face_landmarks
    from train.preprocess import load_media

    frames = load_media(str(REAL_FACE), PreprocessConfig())[0]
    first = face_landmarks(frames[60:80])[0]
    face_landmarks(frames[:30])                 # tracking would carry this clip's last face into the next
    again = face_landmarks(frames[60:80])[0]
    assert first is not None and np.array_equal(first, again)


# ------------------------------------------------------------------------------ sync pretraining

def test_sync_pretraining_keeps_val_test_sources_out_and_inits_a_judge(shards, tmp_path):
    """python -m train.pretrain trains on untouched videos' windows, leaves the shards' val/test
    sources out (by file name), records what it used; python -m train --init starts from it and
    refuses a pretraining run that saw a held-out source."""
    from tests.train_fixtures import write_fixture_videos
    from train.__main__ import main as train_main
    from train.pretrain import main as pretrain_main

    src = tmp_path / "videos"
    videos = write_fixture_videos(src, sources=3, seconds=3.0, seed=5)
    card = json.loads((shards / "card.json").read_text())
    held = dict(card, sources=[{"file": videos[2].name, "source_id": "x", "split": "test"}])
    labelled = tmp_path / "shards"
    labelled.mkdir()
    for f in shards.iterdir():
        (labelled / f.name).write_bytes(f.read_bytes())
    (labelled / "card.json").write_text(json.dumps(held))
    conf = tmp_path / "grid.yaml"
    model = {**MODEL, "frame_encoder": "grid", "grid_size": [4, 4], "sync_aux_temperature": 10.0}
    conf.write_text(yaml.safe_dump({"dim": "lip_sync", "preprocess": PRE, "model": model,
                                    "train": {"batch_size": 8, "learning_rate": 0.003, "logging_steps": 10,
                                              "disable_tqdm": True, "save_steps": 20},
                                    "pretrain": {"hop_seconds": 0.5}}))
    run = tmp_path / "pre"
    m = pretrain_main(["--dim", "lip_sync", "--src", str(src), "--shards", str(labelled), "--run", str(run),
                       "--config", str(conf), "--cache-dir", str(tmp_path / "cache"), "--max-steps", "40",
                       "--workers", "0"])
    used = {s["file"] for s in m["pretrain_sources"]}
    assert used == {videos[0].name, videos[1].name}
    assert m["excluded_sources"] == [{"file": videos[2].name, "split": "test"}]
    assert m["windows"] == 2 * 3                                  # 3 s clips, 2 s windows every 0.5 s
    assert (run / "model" / "model.safetensors").is_file()
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["val_offset_within_1"] is not None

    t = train_main(["--dim", "lip_sync", "--shards", str(labelled), "--run", str(tmp_path / "fine"), "--config",
                    str(conf), "--cache-dir", str(tmp_path / "cache"), "--init", str(run), "--max-steps", "2"])
    assert t["init"].endswith("model") and t["init_tensors"] > 0
    assert {s["file"] for s in t["pretrain_sources"]} == used
    leaky = json.loads((run / "metrics.json").read_text())
    leaky["pretrain_sources"].append({"file": videos[2].name, "windows": 3})
    (run / "metrics.json").write_text(json.dumps(leaky))
    with pytest.raises(SystemExit, match="pretrained on val/test sources"):
        train_main(["--dim", "lip_sync", "--shards", str(labelled), "--run", str(tmp_path / "fine2"), "--config",
                    str(conf), "--cache-dir", str(tmp_path / "cache"), "--init", str(run), "--max-steps", "2"])
