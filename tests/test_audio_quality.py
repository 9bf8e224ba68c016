"""Measured properties of the audio_quality operators (perturb/operators/audio_quality.py).

The generic contract (purity, replay, JSON params, defect growing with severity, audio only) is
tests/test_operator_contract.py's; here each operator's defect is measured on the output.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import welch

from perturb.clip import Clip
from perturb.operators import REGISTRY, OperatorContext
from perturb.operators.audio_quality import (BAND_EDGES, CODEC_KBPS, AdditiveNoise, codec_roundtrip,
                                             room_impulse_response, speech_level)
from perturb.recipe import load_recipe

from .fixtures_ops import SR, synth_voice, write_wav

AUDIO_QUALITY_OPS = ("noise", "clipping", "codec", "band_limit", "reverb", "dropout", "hum")


@pytest.fixture(scope="module")
def voice() -> np.ndarray:
    """2 s of a synthetic voice at a modest level (no peak limiting in the mixes below)."""
    x = synth_voice(2.0, f0=140.0, seed=1).astype(np.float64)
    return (0.1 * x / np.sqrt(np.mean(x * x))).astype(np.float32)


def _clip(audio: np.ndarray) -> Clip:
    return Clip(audio=audio, sr=SR, video_path="fake.mp4", meta={"source_id": "src"})


def _snr_db(x: np.ndarray, y: np.ndarray) -> float:
    noise = y.astype(np.float64) - x
    return 20 * np.log10(speech_level(x, SR) / np.sqrt(np.mean(noise * noise)))


@pytest.mark.parametrize("kind", ["white", "pink"])
@pytest.mark.parametrize("snr", [0.0, 10.0, 25.0])
def test_noise_snr_is_measured_within_1_db(voice, kind, snr):
    y = REGISTRY["noise"]().apply(_clip(voice), {"kind": kind, "snr_db": snr, "seed": 7}).audio
    assert abs(_snr_db(voice, y) - snr) < 1.0


def test_pink_noise_falls_3_db_per_octave():
    from perturb.operators.audio_quality import pink_noise

    f, p = welch(pink_noise(SR * 8, 3), fs=SR, nperseg=4096)
    band = lambda lo: p[(f >= lo) & (f < 2 * lo)].mean()  # noqa: E731
    slopes = [10 * np.log10(band(2 * lo) / band(lo)) for lo in (125, 250, 500, 1000, 2000)]
    assert all(-4.5 < s < -1.5 for s in slopes), slopes


def test_babble_is_other_speakers_at_the_requested_snr(voice, tmp_path):
    donors = []
    for i, f0 in enumerate((110.0, 180.0, 230.0)):
        donors.append(str(tmp_path / f"speaker_{i}.wav"))
        write_wav(donors[-1], synth_voice(3.0, f0=f0, seed=10 + i))
    write_wav(tmp_path / "src.wav", voice)  # named like the source: never drawn
    ctx = OperatorContext(source_id="src", donor_pool=(*donors, str(tmp_path / "src.wav")))
    op = AdditiveNoise(kinds=["babble"]).with_context(ctx)
    params = op.sample_params(np.random.default_rng(0), 4)
    assert params["kind"] == "babble" and 3 <= len(params["donors"]) <= 6
    assert {d["path"] for d in params["donors"]} <= set(donors)
    y = op.apply(_clip(voice), params).audio
    assert abs(_snr_db(voice, y) - params["snr_db"]) < 1.0
    # without donors babble falls back to pink noise (recorded as such)
    assert AdditiveNoise(kinds=["babble"]).with_context(OperatorContext()).sample_params(
        np.random.default_rng(0), 4)["kind"] == "pink"


@pytest.mark.parametrize("fraction", [0.005, 0.03, 0.15])
def test_clipping_clips_the_requested_fraction(voice, fraction):
    y = REGISTRY["clipping"]().apply(_clip(voice), {"fraction": fraction}).audio
    at_rail = np.mean(np.abs(y) >= np.abs(y).max() * (1 - 1e-5))
    assert abs(at_rail - fraction) <= 0.1 * fraction + 2 / len(y)
    assert np.abs(y).max() == pytest.approx(0.98, abs=1e-3)


@pytest.mark.parametrize("codec", ["mp3", "opus"])
def test_codec_bitrate_is_measured_and_the_audio_lines_up(voice, codec):
    x = np.tile(voice, 3)  # 6 s: container overhead small against the payload
    for level in (1, 5):
        kbps = CODEC_KBPS[codec][level]
        y, n_bytes = codec_roundtrip(x, SR, codec, kbps)
        measured = n_bytes * 8 / 1000 / (len(x) / SR)
        assert 0.7 * kbps < measured < 1.3 * kbps, (codec, kbps, measured)
        assert len(y) == len(x)
        # encoder delay removed: the decoded audio correlates best with the input at lag 0
        lags = range(-400, 401, 8)
        c = [np.dot(x[1000:-1000], np.roll(y, -k)[1000:-1000]) for k in lags]
        assert abs(list(lags)[int(np.argmax(c))]) <= 8
    # lower bitrate, larger error
    err = [np.mean((codec_roundtrip(x, SR, codec, CODEC_KBPS[codec][lvl])[0] - x) ** 2) for lvl in (1, 5)]
    assert err[1] > err[0]


def test_codec_operator_uses_the_ladder(voice):
    op = REGISTRY["codec"](codecs=["opus"])
    params = op.sample_params(np.random.default_rng(0), 5)
    assert params == {"codec": "opus", "kbps": 6}
    assert op.defect_size(params) == 5.0


def test_telephone_band_attenuates_outside_300_3400_hz():
    x = (0.05 * np.random.default_rng(0).standard_normal(SR * 4)).astype(np.float32)
    lo, hi = BAND_EDGES[4]
    y = REGISTRY["band_limit"]().apply(_clip(x), {"low_hz": lo, "high_hz": hi}).audio
    f, px = welch(x, fs=SR, nperseg=2048)
    _, py = welch(y, fs=SR, nperseg=2048)
    gain_db = 10 * np.log10(py / px)
    inside = gain_db[(f > 500) & (f < 3000)].mean()
    assert gain_db[(f > 20) & (f < 150)].max() - inside < -30  # (welch removes each segment's mean: no DC bin)
    assert gain_db[(f > 5000)].max() - inside < -30
    assert np.abs(gain_db[(f > 600) & (f < 2800)] - inside).max() < 1.0  # flat pass band


def _schroeder_rt60(h: np.ndarray) -> float:
    """RT60 from the T20 slope (-5 to -25 dB) of the Schroeder backward integral."""
    edc = np.cumsum((h * h)[::-1])[::-1]
    edc_db = 10 * np.log10(edc / edc[0])
    i5, i25 = np.argmax(edc_db <= -5), np.argmax(edc_db <= -25)
    return 3.0 * (i25 - i5) / SR


@pytest.mark.parametrize("rt60", [0.3, 0.8, 1.6])
def test_reverb_rir_decay_matches_rt60_and_adds_a_tail(rt60):
    h = room_impulse_response(SR, rt60, 0.0, seed=5)
    h_tail = h.copy()
    h_tail[0] -= 1.0  # the reverberant part only
    assert _schroeder_rt60(h_tail) == pytest.approx(rt60, rel=0.15)
    assert 10 * np.log10(np.sum(h_tail ** 2)) == pytest.approx(0.0, abs=0.01)  # DRR 0 dB
    # a burst followed by silence: the reverberated output keeps energy after the burst
    burst = np.zeros(SR * 2, np.float32)
    burst[:1600] = np.random.default_rng(1).standard_normal(1600) * 0.1
    y = REGISTRY["reverb"]().apply(_clip(burst), {"rt60": rt60, "drr_db": 0.0, "seed": 5}).audio
    tail = y[1600 + int(0.05 * SR): 1600 + int(0.15 * SR)]
    expected_db = -60 * 0.1 / rt60  # decay at 100 ms (relative to the energy during the burst)
    measured_db = 10 * np.log10(np.mean(tail ** 2) / np.mean(y[:1600] ** 2))
    assert measured_db > -40 and measured_db == pytest.approx(expected_db - 3, abs=6)


def test_dropout_gap_lengths_are_measured(voice):
    x = voice + np.float32(0.01)  # no exact zeros of its own
    gaps = [{"at": 0.1, "ms": 20.0}, {"at": 0.4, "ms": 85.5}, {"at": 0.8, "ms": 200.0}]
    y = REGISTRY["dropout"]().apply(_clip(x), {"gaps": gaps}).audio
    zero = np.concatenate([[0], (y == 0).astype(np.int8), [0]])
    starts, ends = np.flatnonzero(np.diff(zero) == 1), np.flatnonzero(np.diff(zero) == -1)
    measured_ms = (ends - starts) * 1000 / SR
    np.testing.assert_allclose(measured_ms, [g["ms"] for g in gaps], atol=1000 / SR)
    np.testing.assert_allclose(starts / len(x), [g["at"] for g in gaps], atol=1 / len(x))
    np.testing.assert_array_equal(y[y != 0], x[y != 0])


def test_dropout_sampled_gaps_are_20_to_200_ms_and_apart():
    op = REGISTRY["dropout"]()
    for sev in (1, 3, 5):
        for seed in range(5):
            gaps = op.sample_params(np.random.default_rng(seed), sev)["gaps"]
            assert all(20 <= g["ms"] <= 200 for g in gaps)
            n = 2 * SR  # on a 2 s window the gaps do not overlap
            spans = [(g["at"] * n, g["at"] * n + g["ms"] * SR / 1000) for g in gaps]
            assert all(b[0] > a[1] for a, b in zip(spans, spans[1:]))


@pytest.mark.parametrize("freq", [50.0, 60.0])
def test_hum_peaks_at_the_mains_frequency_at_the_requested_snr(voice, freq):
    y = REGISTRY["hum"]().apply(_clip(voice), {"freq_hz": freq, "snr_db": 12.0, "phase": 0.3}).audio
    assert abs(_snr_db(voice, y) - 12.0) < 1.0
    spec = np.abs(np.fft.rfft((y - voice) * np.hanning(len(y))))
    f = np.fft.rfftfreq(len(y), 1 / SR)
    assert f[np.argmax(spec)] == pytest.approx(freq, abs=1.0)
    at_freq = np.abs(f - freq) < 1.0
    gain = [np.abs(np.fft.rfft(s * np.hanning(len(s))))[at_freq].max() for s in (y, voice)]
    assert 20 * np.log10(gain[0] / gain[1]) > 20  # the hum line stands out of the voice's spectrum


@pytest.mark.parametrize("name", AUDIO_QUALITY_OPS)
def test_same_params_same_output_and_the_video_is_untouched(voice, name):
    op = REGISTRY[name]()
    params = op.sample_params(np.random.default_rng(3), 3)
    a, b = op.apply(_clip(voice), params), op.apply(_clip(voice.copy()), params)
    np.testing.assert_array_equal(a.audio, b.audio)
    assert a.video_untouched and a.video_path == "fake.mp4"
    assert not np.array_equal(a.audio, voice)


def test_recipe_draws_every_operator_at_every_level():
    transform = load_recipe("audio_quality").build_transform()
    rng = np.random.default_rng(0)
    seen = {rec["name"] for sev in (1, 3, 5) for _ in range(60) for rec in transform.sample(rng, sev)}
    assert seen == set(AUDIO_QUALITY_OPS)


def test_blank_video_encoder_makes_an_audio_only_judge():
    import torch

    from train.encoders import preprocess_needs
    from train.model import AVJudge, JudgeConfig

    assert preprocess_needs("blank", "mel_conv") == {"crop": "full", "grayscale": True, "audio_features": "logmel"}
    torch.manual_seed(0)
    judge = AVJudge(JudgeConfig(dim="audio_quality", frame_encoder="blank", n_frames=10, crop_size=[8, 8],
                                n_mels=16, max_offset_frames=1, n_segments=1, use_motion=False)).eval()
    audio = torch.randn(2, 16, 40)
    with torch.no_grad():
        d_pictures = [judge.decision_logit(v, audio) for v in (torch.zeros(2, 10, 1, 8, 8), torch.rand(2, 10, 1, 8, 8))]
        d_other_audio = judge.decision_logit(torch.zeros(2, 10, 1, 8, 8), audio.flip(-1) * 3)
    torch.testing.assert_close(d_pictures[0], d_pictures[1])  # the picture does not count
    assert not torch.allclose(d_pictures[0], d_other_audio)


def test_dnsmos_rates_noisy_speech_lower():
    """The DNSMOS baseline (optional `dnsmos` extra; skipped without it) on a clean and a 0 dB noisy voice."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("speechmos")
    from bench import dnsmos_baseline

    model = dnsmos_baseline.DNSMOS()
    clean = synth_voice(3.0, f0=140.0, seed=2).astype(np.float32)
    clean = 0.1 * clean / np.sqrt(np.mean(clean ** 2))
    noisy = clean + 0.1 * np.random.default_rng(0).standard_normal(len(clean)).astype(np.float32)  # 0 dB
    mos_clean, mos_noisy = model(clean), model(noisy)
    assert mos_clean["ovrl"] > mos_noisy["ovrl"] + 0.5 and mos_noisy["bak"] < mos_clean["bak"]


@pytest.mark.slow
def test_dnsmos_baseline_scores_pairs_and_correlates_with_a_judge_report(tmp_path):
    """bench/dnsmos_baseline.py on tiny shards and a judge report (optional `dnsmos` extra)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("speechmos")
    import json

    from bench import dnsmos_baseline
    from tests.train_fixtures import write_fixture_shards

    shards = write_fixture_shards(tmp_path / "shards", sources=3, splits={"train": 0.34, "test": 0.66})
    report = tmp_path / "report"
    report.mkdir()
    keys = [p["key"] for p in dnsmos_baseline.read_pairs(shards, "test")]
    assert len(keys) == 2
    (report / "scores_test.jsonl").write_text("".join(
        json.dumps({"meta": {"key": k}, "z_chosen": 1.0 + i, "z_rejected": -1.0 - i}) + "\n" for i, k in enumerate(keys)))
    from eval.calibration import TemperatureScaling

    TemperatureScaling(1.0).save(tmp_path / "calibration.json")
    result = dnsmos_baseline.run(shards, "test", report, n_boot=50, calibration=tmp_path / "calibration.json")
    assert result["pairs"] == 2 and result["clips"] == 4 and result["judge_pairs"] == 2
    assert result["judge_pairwise_accuracy"] == 1.0
    assert 0.0 <= result["dnsmos_pairwise_accuracy"] <= 1.0
    assert result["spearman_judge_dnsmos"]["n_clips"] == 4
    groups = {(g["operator"], g["severity"]): g for g in result["judge_per_operator_severity"]}
    every = [g for (_, sev), g in groups.items() if sev == "all"]
    assert len(every) == 1 and every[0]["pairs"] == 2 and every[0]["clips"] == 4 and every[0]["pairwise_accuracy"] == 1.0
    assert "DNSMOS OVRL pairwise accuracy" in dnsmos_baseline.format_result(result)


def test_peak_rows_see_clipping_and_mel_stats_reads_them(voice):
    import torch

    from perturb.operators.audio_quality import hard_clip
    from train.encoders.mel import MelStats
    from train.model import JudgeConfig
    from train.preprocess import PEAK_THRESHOLDS, PreprocessConfig, audio_features

    cfg = PreprocessConfig(window_seconds=2.0, crop="full", audio_features="logmel_peaks", n_mels=32)
    clean, clipped = (audio_features(a, cfg) for a in (voice, hard_clip(voice, 0.05)))
    assert clean.shape == (32 + len(PEAK_THRESHOLDS), cfg.n_frames * cfg.mel_per_frame) == clipped.shape
    share = lambda f: f[32 + 1].mean().item()  # noqa: E731  (samples above 0.8 x the 99.9th percentile)
    assert share(clipped) > 0.05 and share(clipped) > share(clean) + 0.025  # 5 % clipped: all of them at the top
    torch.testing.assert_close(clean[:32], audio_features(voice, PreprocessConfig(window_seconds=2.0, n_mels=32)))
    enc = MelStats(JudgeConfig(n_mels=32, aud_widths=[16], emb_dim=8)).eval()
    out = enc(torch.stack([clean, clipped]), n_frames=cfg.n_frames)
    assert out.shape == (2, 8, cfg.n_frames) and torch.equal(out[..., 0], out[..., -1])  # one embedding per clip


def test_cli_scores_with_a_lip_sync_and_an_audio_only_judge(tmp_path, capsys):
    """`python -m eval score --scorer LS --scorer AQ video`: both scores; an offset only for the judge
    that sees the picture."""
    import json

    import torch

    from eval.__main__ import main
    from tests.eval_fixtures import make_export, make_video
    from train.model import AVJudge, judge_config_for
    from train.preprocess import PreprocessConfig

    lip_sync = make_export(tmp_path / "ls", sync_aux_weight=1.0)  # its profile is trained: it estimates timing
    aq = tmp_path / "aq"
    pre = PreprocessConfig(window_seconds=2.0, crop="full", crop_size=(8, 8), n_mels=16, audio_features="logmel_peaks")
    cfg = judge_config_for(pre, dim="audio_quality", frame_encoder="blank", audio_encoder="mel_stats", aud_widths=[8],
                           emb_dim=8, head_hidden=8, max_offset_frames=1, n_segments=1, use_motion=False, dropout=0.0)
    torch.manual_seed(0)
    AVJudge(cfg).eval().save_pretrained(str(aq))
    pre.save(aq / "preprocessing.json")
    (aq / "calibration.json").write_text(json.dumps({"method": "temperature", "params": {"temperature": 1.0},
                                                     "fitted_on": "val", "n": 10}))
    (aq / "metrics.json").write_text(json.dumps({"dim": "audio_quality", "question": cfg.question}))
    video = make_video(tmp_path / "talk.mp4", 3.0)
    assert main(["score", "--scorer", str(lip_sync), "--scorer", str(aq), str(video)]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(rec["scores"]) == {"lip_sync", "audio_quality"} and all(0 <= v <= 1 for v in rec["scores"].values())
    assert rec["status"] == {"lip_sync": "ok", "audio_quality": "ok"}
    assert set(rec["offset"]) == {"lip_sync"}
