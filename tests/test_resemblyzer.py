"""The resemblyzer audio encoder (train/encoders/resemblyzer.py): resemblyzer's own mel, its partials and
its GE2E layout loaded strictly from a random checkpoint of the wheel's layout, kept in the judge's
safetensors, frozen / fine-tuned; the real wheel when installed."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fixtures_ops import synth_voice
from train.encoders import resemblyzer as rz
from train.model import AVJudge, judge_config_for, load_weights
from train.preprocess import PreprocessConfig, audio_features, ge2e_mel

ROOT = Path(__file__).resolve().parents[1]
MODEL = dict(audio_encoder="resemblyzer", vis_widths=[8, 8], aud_widths=[8, 8], emb_dim=8, max_offset_frames=2,
             n_segments=1, head_hidden=8, freeze="all")


def _pre(seconds: float = 2.0) -> PreprocessConfig:
    from train.config import resolve_preprocess

    conf = {"model": MODEL, "preprocess": {"window_seconds": seconds, "fps": 10, "crop_size": [16, 16]}}
    return PreprocessConfig.from_dict(resolve_preprocess(conf, []))


def _checkpoint(path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """The wheel's pretrained.pt layout: step, model_state (GE2E + the loss's similarity scalars), an
    optimizer state; random values."""
    g = torch.Generator().manual_seed(seed)
    state = {k: 0.1 * torch.randn(v.shape, generator=g) for k, v in rz.GE2E().state_dict().items()}
    model_state = {"similarity_weight": torch.tensor([10.0]), "similarity_bias": torch.tensor([-5.0]), **state}
    torch.save({"step": 7, "model_state": model_state, "optimizer_state": {"state": {}, "param_groups": []}}, path)
    return state


def _voice(seconds: float = 2.0, gain: float = 0.05, seed: int = 1) -> np.ndarray:
    x = synth_voice(seconds, f0=140.0, seed=seed).astype(np.float64)
    return (gain * x / np.sqrt(np.mean(x * x))).astype(np.float32)


def test_training_config_fills_resemblyzers_preprocessing():
    from train.config import load_config, resolve_preprocess

    conf = load_config("voice_identity", str(ROOT / "train/configs/realvids/voice_identity_resemblyzer.yaml"))
    pre = PreprocessConfig.from_dict(resolve_preprocess(conf, []))
    assert (pre.audio_features, pre.sr, pre.hop, pre.n_fft, pre.win_length, pre.n_mels) == ("ge2e_mel", 16000, 160,
                                                                                            400, 400, 40)
    assert pre.mel_per_frame == 10 and conf["model"]["audio_encoder"] == "resemblyzer"


def test_ge2e_mel_is_resemblyzers_volume_normalised_slaney_mel():
    pre = _pre()
    quiet = _voice(gain=10 ** (-50 / 20))          # -50 dBFS: raised to -30, as resemblyzer does
    feats = ge2e_mel(quiet, pre)
    assert feats.shape == (40, 201)
    torch.testing.assert_close(feats, ge2e_mel(quiet * 7.0, pre), atol=2e-3, rtol=0)  # both raised to -30 dBFS
    loud = _voice(gain=10 ** (-20 / 20))           # louder than -30 dBFS: kept
    assert float(ge2e_mel(loud, pre).exp().sum() / feats.exp().sum()) == pytest.approx(10.0, rel=1e-3)  # +10 dB
    # a 1 kHz tone lands in the Slaney band around 1 kHz (power stays linear in the band: no log scale mixed in)
    t = np.arange(32000) / 16000
    tone = ge2e_mel((0.1 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), pre)
    import torchaudio

    fb = torchaudio.functional.melscale_fbanks(201, 0.0, 8000.0, 40, 16000, norm="slaney", mel_scale="slaney")
    assert int(tone[:, 100].argmax()) == int(fb[25].argmax()) == 13  # FFT bin 25 = 1 kHz (40 Hz bins)
    assert audio_features(loud, pre).shape == (40, 200)  # one row per 10 ms, cut to the window's frames


def test_partials_follow_resemblyzer():
    assert rz.partial_starts(200) == [0, 77]        # 2 s: the second partial is 77 % covered, kept (>= 75 %)
    assert rz.partial_starts(100) == [0]            # shorter than one partial: padded
    assert rz.partial_starts(500) == [0, 77, 154, 231, 308]
    net = rz.GE2E().eval()
    mel = torch.rand(2, 40, 200)
    with torch.no_grad():
        got = rz.utterance_embedding(net, mel)
        padded = torch.nn.functional.pad(mel, (0, 37)).transpose(1, 2)
        parts = [net(padded[:, s:s + 160]) for s in (0, 77)]
        want = torch.nn.functional.normalize(sum(parts) / 2, dim=1)
    torch.testing.assert_close(got, want)
    assert torch.allclose(got.norm(dim=1), torch.ones(2)) and bool((got >= 0).all())  # ReLU then L2, as GE2E


def test_checkpoint_loads_strictly_and_the_judge_keeps_it_in_safetensors(tmp_path):
    ckpt = tmp_path / "pretrained.pt"
    state = _checkpoint(ckpt)
    pre = _pre()
    judge = AVJudge(judge_config_for(pre, pretrained=str(ckpt), **MODEL))
    (loaded,) = judge.load_pretrained_encoders()
    assert "14 tensors" in loaded and str(ckpt) in loaded
    for k, v in state.items():
        assert torch.equal(judge.audio_encoder.ge2e.state_dict()[k], v)
    judge.eval()
    video, audio = torch.rand(2, pre.n_frames, pre.channels, 16, 16), torch.stack([audio_features(_voice(seed=s), pre)
                                                                         for s in (1, 2)])
    with torch.no_grad():
        before = judge.decision_logit(video, audio)
    judge.save_pretrained(str(tmp_path / "judge"))
    ckpt.unlink()  # the saved judge never needs the .pt again
    assert not list((tmp_path / "judge").glob("*.pt")) and (tmp_path / "judge" / "model.safetensors").is_file()
    again = load_weights(tmp_path / "judge")
    assert json.loads((tmp_path / "judge" / "config.json").read_text())["audio_encoder"] == "resemblyzer"
    for k, v in state.items():
        assert torch.equal(again.audio_encoder.ge2e.state_dict()[k], v)
    with torch.no_grad():
        torch.testing.assert_close(again.decision_logit(video, audio), before)


def test_wrong_files_fail_plainly_and_run_no_code(tmp_path, monkeypatch):
    pre = _pre()
    monkeypatch.setattr(rz, "wheel_weights", lambda: None)  # as without the wheel
    with pytest.raises(ValueError, match="needs pretrained weights.*resemblyzer"):
        AVJudge(judge_config_for(pre, **MODEL)).load_pretrained_encoders()
    with pytest.raises(FileNotFoundError, match="pip install --no-deps resemblyzer"):
        AVJudge(judge_config_for(pre, pretrained=str(tmp_path / "nope.pt"), **MODEL)).load_pretrained_encoders()
    wrong = tmp_path / "wrong.pt"
    state = _checkpoint(wrong)
    torch.save({"model_state": {**state, "lstm.weight_ih_l0": torch.zeros(1024, 80)}}, wrong)
    with pytest.raises(ValueError, match="do not fit resemblyzer's GE2E layout"):
        AVJudge(judge_config_for(pre, pretrained=str(wrong), **MODEL)).load_pretrained_encoders()
    marker = tmp_path / "pwned"

    class Touch:
        def __reduce__(self):
            return (Path.touch, (marker,))

    hostile = tmp_path / "hostile.pt"
    torch.save({"model_state": {"x": Touch()}}, hostile)
    with pytest.raises(ValueError, match="not a resemblyzer checkpoint"):
        rz.read_state_dict(hostile)
    assert not marker.exists()  # weights_only=True: the file's code never ran
    # without `pretrained:`, the wheel's file is used
    ckpt = tmp_path / "wheel.pt"
    _checkpoint(ckpt, seed=4)
    monkeypatch.setattr(rz, "wheel_weights", lambda: ckpt)
    assert str(ckpt) in AVJudge(judge_config_for(pre, **MODEL)).load_pretrained_encoders()[0]


@pytest.mark.parametrize("freeze, trained", [("all", set()), ("partial", {"linear"}), ("none", {"lstm", "linear"})])
def test_freeze_modes_and_the_frozen_embedding_computed_once(freeze, trained):
    pre = _pre()
    judge = AVJudge(judge_config_for(pre, **{**MODEL, "freeze": freeze})).train()
    enc = judge.audio_encoder
    audio = torch.stack([audio_features(_voice(seed=s), pre) for s in (1, 2)])
    out = enc(audio, pre.n_frames)
    assert out.shape == (2, 8, pre.n_frames)
    out.square().sum().backward()
    got = {n.split(".")[0] for n, p in enc.ge2e.named_parameters() if p.grad is not None}
    assert got == trained and enc.proj.weight.grad is not None and enc.timing[0].weight.grad is not None
    memo = enc.ge2e.__dict__.get("_memo")
    if freeze == "all":
        assert memo is not None and len(memo) == 2
        with torch.no_grad():
            direct = rz.utterance_embedding(enc.ge2e, audio.exp())
        torch.testing.assert_close(enc.embedding(audio), direct)
        assert len(memo) == 2                                   # the same windows: nothing new computed
        enc.ge2e.load_state_dict(rz.GE2E().state_dict())          # new weights: old embeddings dropped
        assert "_memo" not in enc.ge2e.__dict__
        # a gradient with respect to the audio (the judge as a reward) goes through the network
        x = audio[:1].clone().requires_grad_(True)
        enc.embedding(x).sum().backward()
        assert x.grad is not None and float(x.grad.abs().sum()) > 0
    else:
        assert memo is None


WHEEL = rz.wheel_weights()


@pytest.mark.skipif(WHEEL is None, reason="needs the resemblyzer wheel (pip install --no-deps resemblyzer==0.1.4)")
def test_the_wheels_weights_load_with_weights_only_and_embed_voices():
    raw = torch.load(WHEEL, map_location="cpu", weights_only=True)
    assert set(raw) == {"step", "model_state", "optimizer_state"}
    net = rz.GE2E()
    net.load_state_dict(rz.read_state_dict(WHEEL), strict=True)
    pre = _pre()
    voices = [ge2e_mel(_voice(seed=s), pre)[:, :200] for s in (1, 2)]
    tone = ge2e_mel((0.05 * np.sin(np.arange(32000) / 3)).astype(np.float32), pre)
    with torch.no_grad():
        e = rz.utterance_embedding(net.eval(), torch.stack([*voices, tone[:, :200]]).exp())
    assert e.shape == (3, 256)
    assert float(e[0] @ e[1]) > float(e[0] @ e[2])  # two takes of one synthetic voice are closer than a tone


@pytest.mark.slow
@pytest.mark.skipif(WHEEL is None or not all(importlib.util.find_spec(m) for m in ("librosa", "webrtcvad")),
                    reason="needs the resemblyzer wheel with its own requirements (librosa, webrtcvad)")
def test_features_and_embedding_equal_resemblyzers_own():
    from resemblyzer import VoiceEncoder
    from resemblyzer.audio import normalize_volume, wav_to_mel_spectrogram

    pre = _pre()
    for gain in (0.003, 0.1):  # below and above resemblyzer's -30 dBFS target
        wav = _voice(gain=gain)
        want = wav_to_mel_spectrogram(normalize_volume(wav, -30, increase_only=True)).T
        np.testing.assert_allclose(ge2e_mel(wav, pre).exp().numpy(), want, rtol=1e-3, atol=1e-6 * want.max())
    wav = _voice(seconds=4.0)
    net = rz.GE2E()
    net.load_state_dict(rz.read_state_dict(WHEEL))
    with torch.no_grad():
        ours = rz.utterance_embedding(net.eval(), ge2e_mel(wav, pre)[None].exp())[0].numpy()
    want = VoiceEncoder("cpu", verbose=False).embed_utterance(wav)
    assert float(np.dot(want, ours)) > 0.999  # resemblyzer's own embedding of the same 4 s
