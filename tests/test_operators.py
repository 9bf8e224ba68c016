"""Property tests of the registered perturbation operators and their composition.

Every assertion is a measurement on the output (lags, F0, spectral envelope, PSNR, duplicated
frames...), compared with what the params ask for; nothing is compared with stored outputs.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from perturb.clip import Clip
from perturb.media import decode_audio
from perturb.operators import SEVERITY_LEVELS, Compose, OneOf, OperatorContext, SomeOf, replay
from perturb.operators import frames as frames_mod
from perturb.operators import voice as voice_mod
from perturb.operators.frames import PSNR_BANDS, STRENGTH_RANGES, FrameCorruption
from perturb.operators.timing import OFFSET_BANDS_MS, AudioShift, LipDrift
from perturb.operators.voice import SEMITONE_BANDS, VoiceSwap, active_rms

from .fixtures_ops import (FPS, SR, local_lags_ms, lowpass_noise, median_f0, natural_frames, psnr,
                           speech_like_noise, synth_voice, write_wav, xcorr_lag_ms)

N_FRAMES = 20


def audio_clip(audio: np.ndarray) -> Clip:
    """Audio-only clip: the video is a file that is never decoded."""
    return Clip(audio=np.asarray(audio, np.float32), sr=SR, fps=FPS, frames=None,
                video_path="fake.mp4")


@pytest.fixture(scope="module")
def video_frames() -> np.ndarray:
    return natural_frames(N_FRAMES)


def video_clip(frames: np.ndarray) -> Clip:
    """A clip whose picture is still 'the original stream' (frames already decoded)."""
    audio = speech_like_noise(len(frames) / FPS, seed=3)
    return Clip(audio=audio, sr=SR, fps=FPS, frames=frames, video_path="fake.mp4")


def linear_fit(t: np.ndarray, v: np.ndarray) -> tuple[float, float, float]:
    """slope, intercept, R^2 of a least-squares line."""
    slope, intercept = np.polyfit(t, v, 1)
    pred = slope * t + intercept
    r2 = 1.0 - np.sum((v - pred) ** 2) / np.sum((v - v.mean()) ** 2)
    return float(slope), float(intercept), float(r2)


# ------------------------------------------------------------------------------------ audio_shift
@pytest.mark.parametrize("offset_ms", [40.0, -40.0, 137.0, -137.0, 500.0, -500.0])
def test_audio_shift_lag_matches_offset(offset_ms):
    x = speech_like_noise(3.0)
    y = AudioShift().apply(audio_clip(x), {"offset_ms": offset_ms}).audio
    assert len(y) == len(x) and y.dtype == np.float32
    assert abs(xcorr_lag_ms(x, y) - offset_ms) <= 1.0
    k = int(round(abs(offset_ms) * SR / 1000))
    gap = y[:k] if offset_ms > 0 else y[-k:]  # positive = audio delayed: silence comes first
    assert np.all(gap == 0.0)


def context_clip(track: np.ndarray, start: int, end: int, context: int) -> Clip:
    """Window [start, end) of a longer track, with up to `context` samples around it."""
    return Clip(audio=track[start:end].copy(), sr=SR, fps=FPS, video_path="fake.mp4",
                context_before=track[max(0, start - context):start].copy(),
                context_after=track[end:end + context].copy())


@pytest.mark.parametrize("offset_ms", [300.0, -300.0, 1000.0, -1000.0])
def test_audio_shift_reads_context_not_silence(offset_ms):
    """With context, the shifted window is exactly the source's soundtrack offset_ms earlier/later."""
    track = speech_like_noise(6.0, seed=5)
    start, end = 2 * SR, 4 * SR
    y = AudioShift().apply(context_clip(track, start, end, SR), {"offset_ms": offset_ms}).audio
    k = int(round(offset_ms * SR / 1000))
    np.testing.assert_array_equal(y, track[start - k:end - k])
    assert abs(xcorr_lag_ms(track[start:end], y) - offset_ms) <= 1.0


@pytest.mark.parametrize("start_ms,end_ms", [(0.0, 800.0), (-600.0, 0.0)])
def test_lip_drift_reads_context_not_silence(start_ms, end_ms):
    """On a ramp with context: out(t) = track(t - d(t)) everywhere in the window, no silent edge."""
    n_track = 6 * SR
    track = (np.arange(n_track, dtype=np.float64) / n_track + 0.1).astype(np.float32)
    start, end = 2 * SR, 4 * SR
    y = LipDrift().apply(context_clip(track, start, end, SR),
                         {"start_ms": start_ms, "end_ms": end_ms}).audio.astype(np.float64)
    assert np.all(y > 0.05)  # every sample came from the track (0 would be padding)
    idx = np.arange(end - start)
    delay_ms = ((start + idx) - (y - 0.1) * n_track) * 1000 / SR
    expected = start_ms + (end_ms - start_ms) * idx / (len(idx) - 1)
    assert np.max(np.abs(delay_ms - expected)) < 0.2


def test_lip_drift_keep_pitch_reads_context():
    """Grain drift with context: a 300 ms start delay reads the speech before the window, no gap."""
    track = speech_like_noise(6.0, seed=7)
    start, end = 2 * SR, 4 * SR
    params = {"start_ms": 300.0, "end_ms": 0.0, "keep_pitch": True}
    y = LipDrift().apply(context_clip(track, start, end, SR), params).audio
    head = slice(0, SR // 10)  # first 100 ms: silence without context
    assert np.sqrt(np.mean(y[head] ** 2)) > 0.5 * np.sqrt(np.mean(track[start - SR // 2:start] ** 2))
    no_context = LipDrift().apply(audio_clip(track[start:end]), params).audio
    assert np.max(np.abs(no_context[head])) < 1e-6
    # first 200 ms, where the delay falls from 300 to 270 ms: read 270-300 ms before the window
    lead = np.zeros(SR // 2, np.float32)
    lag = xcorr_lag_ms(track[start - SR // 2:start + SR // 5], np.concatenate([lead, y[:SR // 5]]))
    assert 265.0 <= lag <= 305.0


@pytest.mark.parametrize("start_ms,end_ms", [(234.771, 0.0), (0.0, -999.9), (-640.5, 0.0), (0.0, 999.9)])
def test_lip_drift_keep_pitch_edges_without_context(start_ms, end_ms):
    """Fractional offsets up to 1 s at a source edge (no context): full length, silence only where
    the delay reads outside the clip, speech everywhere else."""
    x = speech_like_noise(2.0, seed=2)
    y = LipDrift().apply(audio_clip(x), {"start_ms": start_ms, "end_ms": end_ms, "keep_pitch": True}).audio
    assert len(y) == len(x) and np.all(np.isfinite(y))
    edge = int(0.2 * abs(start_ms or end_ms) * SR / 1000)  # well inside the part read from outside
    outside = y[:edge] if start_ms > 0 else y[-edge:] if end_ms < 0 else None
    if outside is not None:
        assert np.max(np.abs(outside)) < 1e-6
    middle = y[len(y) // 2 - SR // 10: len(y) // 2 + SR // 10]
    assert np.sqrt(np.mean(middle ** 2)) > 0.3 * np.sqrt(np.mean(x ** 2))


def test_audio_shift_sampling_bands_and_signs():
    op = AudioShift()
    rng = np.random.default_rng(0)
    for sev in SEVERITY_LEVELS:
        lo, hi = OFFSET_BANDS_MS[sev]
        offs = np.array([op.sample_params(rng, sev)["offset_ms"] for _ in range(200)])
        assert np.all((np.abs(offs) >= lo) & (np.abs(offs) <= hi))
        assert (offs > 0).any() and (offs < 0).any()
        assert op.defect_size({"offset_ms": float(offs[0])}) == pytest.approx(abs(offs[0]))
    with pytest.raises(ValueError):
        op.sample_params(rng, 0)
    with pytest.raises(ValueError):
        op.sample_params(rng, 6)


# -------------------------------------------------------------------------------------- lip_drift
@pytest.mark.parametrize("keep_pitch", [False, True])
@pytest.mark.parametrize("start_ms,end_ms", [(0.0, 300.0), (0.0, -300.0), (300.0, 0.0),
                                             (-250.0, 0.0)])
def test_lip_drift_local_lag_is_linear(start_ms, end_ms, keep_pitch):
    """Windowed lags on speech-band noise. A drift is also a rate change (here <= 3.75 %), which
    decorrelates waveform windows; faster drifts are checked exactly on a ramp below. The
    pitch-keeping (grain) drift follows the same delay line within its 4 ms search tolerance."""
    x = lowpass_noise(8.0)
    dur = len(x) / SR
    y = LipDrift().apply(audio_clip(x), {"start_ms": start_ms, "end_ms": end_ms,
                                         "keep_pitch": keep_pitch}).audio
    assert len(y) == len(x)
    tol = 5.0 if keep_pitch else 2.0
    # windows whose source lies inside the original (no zero padding in them)
    first = 0.3 + max(start_ms, end_ms, 0.0) / 1000
    last = dur - 0.3 + min(start_ms, end_ms, 0.0) / 1000
    centers = np.linspace(first, last, 10)
    search_ms = (min(start_ms, end_ms, 0) - 100, max(start_ms, end_ms, 0) + 100)
    lags = local_lags_ms(x, y, centers, search_ms)
    slope, intercept, r2 = linear_fit(centers, lags)
    assert r2 > 0.99
    assert abs(intercept - start_ms) <= tol
    assert abs(slope * dur + intercept - end_ms) <= tol
    assert abs(slope * dur - (end_ms - start_ms)) <= tol
    if keep_pitch:  # grains overlap-add to unit gain: the level is kept (middle, away from padding)
        mid = slice(len(x) // 4, 3 * len(x) // 4)
        assert 0.85 < np.sqrt(np.mean(y[mid] ** 2) / np.mean(x[mid] ** 2)) < 1.15


@pytest.mark.parametrize("start_ms,end_ms", [(0.0, 1000.0), (-1000.0, 0.0), (640.0, 0.0),
                                             (0.0, -45.0)])
def test_lip_drift_warp_exact_on_ramp(start_ms, end_ms):
    """On a ramp, out(t) = in(t - d(t)) reads d(t) back exactly, even for large, fast drifts."""
    n = 4 * SR
    ramp = np.arange(n, dtype=np.float64) / n
    y = LipDrift().apply(audio_clip(ramp.astype(np.float32)),
                         {"start_ms": start_ms, "end_ms": end_ms}).audio.astype(np.float64)
    idx = np.arange(n)
    inside = y > 0  # samples read from inside the original (not the silent padding)
    delay_ms = (idx - y * n)[inside] * 1000 / SR
    t = idx[inside] / (n - 1)
    expected = start_ms + (end_ms - start_ms) * t
    assert np.max(np.abs(delay_ms - expected)) < 0.05
    assert len(y) == n


@pytest.mark.parametrize("start_ms,end_ms", [(0.0, 600.0), (-400.0, 0.0)])
def test_lip_drift_pitch_side_effect_and_keep_pitch(start_ms, end_ms):
    """Plain drift moves F0 by the documented drift_rate; keep_pitch puts it back, same timing."""
    from perturb.operators.timing import drift_rate

    x = synth_voice(2.5)
    f0 = median_f0(x)
    clip = audio_clip(x)
    plain = LipDrift().apply(clip, {"start_ms": start_ms, "end_ms": end_ms}).audio
    kept = LipDrift().apply(clip, {"start_ms": start_ms, "end_ms": end_ms, "keep_pitch": True}).audio
    assert len(plain) == len(kept) == len(x)
    predicted = 12 * np.log2(drift_rate(len(x), SR, start_ms, end_ms))
    assert abs(predicted) > 2.0
    assert abs(12 * np.log2(median_f0(plain) / f0) - predicted) <= 0.3
    assert abs(12 * np.log2(median_f0(kept) / f0)) <= 0.3

    def envelope(a: np.ndarray) -> np.ndarray:  # 1 ms RMS frames
        e = np.sqrt(np.mean(a[: len(a) // 16 * 16].reshape(-1, 16).astype(np.float64) ** 2, axis=1))
        return e - e.mean()

    assert abs(xcorr_lag_ms(envelope(plain), envelope(kept), sr=1000, max_ms=60)) <= 6.0


def test_lip_drift_sampling():
    op = LipDrift()
    rng = np.random.default_rng(1)
    for sev in SEVERITY_LEVELS:
        lo, hi = OFFSET_BANDS_MS[sev]
        ps = [op.sample_params(rng, sev) for _ in range(100)]
        for p in ps:
            assert 0.0 in (p["start_ms"], p["end_ms"]) and p["keep_pitch"] is False
            assert lo <= op.defect_size(p) <= hi
        growing = [p for p in ps if p["start_ms"] == 0.0]
        shrinking = [p for p in ps if p["end_ms"] == 0.0]
        assert growing and shrinking
        ds = [p["start_ms"] + p["end_ms"] for p in ps]
        assert min(ds) < 0 < max(ds)
    assert LipDrift(keep_pitch=True).sample_params(rng, 3)["keep_pitch"] is True


# ------------------------------------------------------------------------------------- voice_swap
@pytest.fixture(scope="module")
def voice() -> np.ndarray:
    return synth_voice(2.5, f0=140.0)


def _envelope_shift_semitones(x: np.ndarray, y: np.ndarray) -> float:
    """Shift (semitones) along log frequency that best aligns y's long-term spectral envelope
    with x's, over 300-3000 Hz (short Welch segments smear the harmonics into an envelope)."""
    from scipy.signal import welch

    f, px = welch(x, SR, nperseg=96)
    _, py = welch(y, SR, nperseg=96)
    grid = np.arange(np.log2(300.0), np.log2(3000.0), 1 / 120)
    ex = np.interp(grid, np.log2(f[1:]), 10 * np.log10(px[1:]))
    best, best_k = -2.0, 0
    for k in range(-120, 121):
        ey = np.interp(grid + k / 120, np.log2(f[1:]), 10 * np.log10(py[1:]))
        c = np.corrcoef(ex, ey)[0, 1]
        if c > best:
            best, best_k = c, k
    return best_k / 10.0


@pytest.mark.parametrize("semitones", [4.0, -3.0, 7.5])
def test_voice_swap_identity_moves_f0(voice, semitones):
    f0_in = median_f0(voice)
    out = VoiceSwap().apply(audio_clip(voice), {"mode": "identity", "semitones": semitones}).audio
    assert len(out) == len(voice)
    moved = 12 * np.log2(median_f0(out) / f0_in)
    assert abs(moved - semitones) <= 0.5
    level_db = 20 * np.log10(np.sqrt(np.mean(out.astype(np.float64) ** 2))
                             / np.sqrt(np.mean(voice.astype(np.float64) ** 2)))
    assert abs(level_db) <= 1.0
    # without formant_ratio the formants move with the pitch (plain phase vocoder)
    assert abs(_envelope_shift_semitones(voice, out) - semitones) <= 0.75


@pytest.mark.parametrize("semitones,formant_ratio", [(4.0, 1.0), (-3.0, 1.0), (5.0, 2 ** (2.5 / 12))])
def test_voice_swap_formant_ratio(voice, semitones, formant_ratio):
    p = {"mode": "identity", "semitones": semitones, "formant_ratio": formant_ratio}
    out = VoiceSwap().apply(audio_clip(voice), p).audio
    assert len(out) == len(voice)
    assert abs(12 * np.log2(median_f0(out) / median_f0(voice)) - semitones) <= 0.5
    assert abs(_envelope_shift_semitones(voice, out) - 12 * np.log2(formant_ratio)) <= 0.75


def test_voice_swap_identity_sampling():
    op = VoiceSwap()  # no donors: identity only
    rng = np.random.default_rng(2)
    for sev in SEVERITY_LEVELS:
        lo, hi = SEMITONE_BANDS[sev]
        ps = [op.sample_params(rng, sev) for _ in range(100)]
        assert all(p["mode"] == "identity" for p in ps)
        semis = np.array([p["semitones"] for p in ps])
        assert np.all((np.abs(semis) >= lo) & (np.abs(semis) <= hi))
        assert (semis > 0).any() and (semis < 0).any()
        for p in ps:  # formants move in the pitch's direction, never further than it
            r = 2 ** (p["semitones"] / 12)
            assert min(1.0, r) - 1e-3 <= p["formant_ratio"] <= max(1.0, r) + 1e-3
            assert op.defect_size(p) == pytest.approx(abs(p["semitones"]))


@pytest.fixture(scope="module")
def donor_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("donors")
    long_p, short_p, same_p = d / "donor_a.wav", d / "donor_b.wav", d / "src42.wav"
    write_wav(long_p, 3 * synth_voice(4.0, f0=215.0, formants=(400.0, 2000.0, 2900.0), seed=7))
    write_wav(short_p, synth_voice(1.0, f0=100.0, formants=(550.0, 900.0, 2400.0), seed=8))
    write_wav(same_p, synth_voice(4.0, f0=140.0, seed=9))
    return str(long_p), str(short_p), str(same_p)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64), b.astype(np.float64))[0, 1])


def test_voice_swap_donor_segment(voice, donor_files):
    long_p = donor_files[0]
    p = {"mode": "donor", "donor_path": long_p, "donor_start": 0.7, "severity": 3}
    out = VoiceSwap().apply(audio_clip(voice), p).audio
    assert len(out) == len(voice) and out.dtype == np.float32
    donor = decode_audio(long_p)
    start = int(round(0.7 * SR))
    seg = donor[start:start + len(voice)]
    assert _corr(out, seg) > 0.99
    assert abs(_corr(out, voice)) < 0.2
    # loudness matched on the active frames (the donor was written 3x louder)
    assert abs(20 * np.log10(active_rms(out, SR) / active_rms(voice, SR))) <= 0.5


def test_voice_swap_donor_loops_when_short(voice, donor_files):
    short_p = donor_files[1]
    donor = decode_audio(short_p)
    out = VoiceSwap().apply(audio_clip(voice), {"mode": "donor", "donor_path": short_p,
                                                "donor_start": 0.25}).audio
    assert len(out) == len(voice) > len(donor)
    start = int(round(0.25 * SR))
    looped = donor[(start + np.arange(len(voice))) % len(donor)]
    assert _corr(out, looped) > 0.99


def test_voice_swap_donor_sampling_and_exclusion(donor_files):
    long_p, short_p, same_p = donor_files
    op = VoiceSwap(donors=[long_p, short_p, same_p], donor_mode_prob=0.5, exclude=[short_p],
                   clip_duration=2.0).with_context(OperatorContext(source_id="src42"))
    assert op.usable_donors() == [long_p]
    rng = np.random.default_rng(3)
    ps = [op.sample_params(rng, 2) for _ in range(60)]
    modes = {p["mode"] for p in ps}
    assert modes == {"donor", "identity"}
    for p in ps:
        if p["mode"] == "donor":
            assert p["donor_path"] == long_p  # excluded path and the source's own file never drawn
            assert 0.0 <= p["donor_start"] <= 4.0 - 2.0 + 1e-6
            assert p["severity"] == 2 and op.defect_size(p) == 1.0
    only = VoiceSwap(donors=[long_p, same_p], donor_mode_prob=1.0).with_context(OperatorContext(source_id="donor_a"))
    assert only.usable_donors() == [same_p]
    assert {only.sample_params(rng, 1)["donor_path"] for _ in range(10)} == {same_p}
    none_left = VoiceSwap(donors=[same_p], donor_mode_prob=1.0).with_context(OperatorContext(source_id="src42"))
    assert all(none_left.sample_params(rng, 4)["mode"] == "identity" for _ in range(10))


def test_voice_swap_draws_from_the_context_pool(donor_files):
    """Without `donors` the pool comes from the context (the build's other sources + --donors);
    explicit donors win over it; the source's own name is excluded either way."""
    long_p, short_p, same_p = donor_files
    pool = OperatorContext(source_id="src42", split="train", donor_pool=(long_p, same_p))
    assert VoiceSwap().usable_donors() == []
    op = VoiceSwap(donor_mode_prob=1.0).with_context(pool)
    assert op.usable_donors() == [long_p]
    rng = np.random.default_rng(8)
    assert {op.sample_params(rng, 3)["donor_path"] for _ in range(10)} == {long_p}
    assert VoiceSwap(donors=[short_p, same_p]).with_context(pool).usable_donors() == [short_p]
    assert VoiceSwap(donors=[]).with_context(pool).usable_donors() == []


# -------------------------------------------------------------------------------- frame_corruption
def _psnr_draws(kind: str, sev: int, rng: np.random.Generator) -> list[dict]:
    """A few sampled params plus the two ends of the strength range."""
    op = FrameCorruption(kinds=[kind])
    draws = [op.sample_params(rng, sev) for _ in range(3)]
    lo, hi = STRENGTH_RANGES[kind][sev]
    for s in (lo, hi):
        draws.append(dict(draws[0], strength=s))
    return draws


@pytest.mark.parametrize("kind", ["blur", "noise", "block", "color"])
def test_frame_corruption_psnr_bands(video_frames, kind):
    clip = video_clip(video_frames)
    op = FrameCorruption()
    rng = np.random.default_rng(4)
    means = []
    for sev in SEVERITY_LEVELS:
        lo, hi = PSNR_BANDS[kind][sev]
        vals = []
        for p in _psnr_draws(kind, sev, rng):
            out = op.apply(clip, p).frames
            assert out.shape == video_frames.shape and out.dtype == np.uint8
            vals.append(psnr(video_frames, out))
        assert all(lo <= v < hi for v in vals), (kind, sev, vals, (lo, hi))
        means.append(np.mean(vals))
    assert all(a > b for a, b in zip(means, means[1:]))
    # bands are monotone and do not overlap
    bands = [PSNR_BANDS[kind][s] for s in SEVERITY_LEVELS]
    assert all(b1[0] >= b2[1] for b1, b2 in zip(bands, bands[1:]))


def _dup_count(frames: np.ndarray) -> int:
    return int(sum(np.array_equal(frames[i], frames[i - 1]) for i in range(1, len(frames))))


def test_frame_corruption_stutter(video_frames):
    clip = video_clip(video_frames)
    assert _dup_count(video_frames) == 0
    op = FrameCorruption(kinds=["stutter"])
    counts = []
    for sev in SEVERITY_LEVELS:
        per = []
        for seed in range(3):
            p = op.sample_params(np.random.default_rng(seed), sev)
            for s in STRENGTH_RANGES["stutter"][sev]:
                out = op.apply(clip, dict(p, strength=s)).frames
                assert out.shape == video_frames.shape and out.dtype == np.uint8
                # every output frame is an original frame, in the original order (freeze, jump)
                src = [int(np.flatnonzero([np.array_equal(o, f) for f in video_frames])[0])
                       for o in out]
                assert src[0] == 0 and all(b >= a for a, b in zip(src, src[1:]))
                per.append(_dup_count(out))
        counts.append(per)
    assert min(counts[0]) >= 1
    for a, b in zip(counts, counts[1:]):
        assert max(a) <= min(b)
    assert min(counts[-1]) > max(counts[0])


def _changed_box(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(np.any(a != b, axis=(0, 3)))
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def test_frame_corruption_occlusion_fallback(video_frames):
    clip = video_clip(video_frames)
    _, h, w, _ = video_frames.shape
    assert frames_mod.detect_face(video_frames[N_FRAMES // 2]) is None  # no face: fallback box
    op = FrameCorruption(kinds=["occlusion"])
    areas = []
    for sev in SEVERITY_LEVELS:
        p = op.sample_params(np.random.default_rng(sev), sev)
        out = op.apply(clip, p).frames
        assert out.shape == video_frames.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(out[:, : (2 * h) // 3], video_frames[:, : (2 * h) // 3])
        x0, y0, x1, y1 = _changed_box(video_frames, out)
        assert w // 3 <= x0 and x1 <= (2 * w) // 3 and (2 * h) // 3 <= y0 and y1 <= h
        areas.append((x1 - x0) * (y1 - y0) / ((w // 3) * (h - (2 * h) // 3)))
        assert areas[-1] == pytest.approx(p["strength"], abs=0.12)
    assert all(a < b for a, b in zip(areas, areas[1:]))


def test_frame_corruption_occlusion_uses_face(video_frames, monkeypatch):
    face = (30, 10, 40, 50)  # x, y, w, h
    monkeypatch.setattr(frames_mod, "detect_face", lambda frame: face)
    out = FrameCorruption().apply(video_clip(video_frames),
                                  {"kind": "occlusion", "strength": 1.0, "seed": 0, "fill": 16}).frames
    a, b, c, d = frames_mod.MOUTH_BOX_IN_FACE
    fx, fy, fw, fh = face
    x0, y0, x1, y1 = _changed_box(video_frames, out)
    assert abs(x0 - (fx + a * fw)) <= 1 and abs(x1 - (fx + c * fw)) <= 1
    assert abs(y0 - (fy + b * fh)) <= 1 and abs(y1 - (fy + d * fh)) <= 1
    assert np.all(out[:, y0:y1, x0:x1] == 16)


REALVIDS = Path(__file__).resolve().parents[1].parent / "shared" / "realvids" / "clips"
GRID_CLIP = REALVIDS / "LipNet__evaluation_samples_GRID_bbaf2n.mpg"


@pytest.mark.realdata
@pytest.mark.skipif(not GRID_CLIP.is_file(), reason="needs ../shared/realvids")
def test_frame_corruption_occlusion_on_real_face():
    """On a real frontal face the Haar path is taken and the occluder sits on the lower face."""
    from perturb.media import decode_frames

    frames = decode_frames(GRID_CLIP)[30:40]
    face = frames_mod.detect_face(frames[len(frames) // 2])
    assert face is not None
    fx, fy, fw, fh = face
    clip = Clip(audio=np.zeros(SR, np.float32), frames=frames, video_path=str(GRID_CLIP))
    out = FrameCorruption().apply(clip, {"kind": "occlusion", "strength": 0.5, "seed": 0,
                                         "fill": 128}).frames
    x0, y0, x1, y1 = _changed_box(frames, out)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    assert fx + 0.3 * fw <= cx <= fx + 0.7 * fw  # centred horizontally on the face
    assert fy + 0.6 * fh <= cy <= fy + fh  # in the lower face, where the mouth is


def test_frame_corruption_kinds_restrict_sampling():
    rng = np.random.default_rng(5)
    assert {FrameCorruption(kinds=["blur", "color"]).sample_params(rng, 3)["kind"]
            for _ in range(50)} == {"blur", "color"}
    assert {FrameCorruption().sample_params(rng, 3)["kind"] for _ in range(200)} == set(
        frames_mod.KINDS)
    with pytest.raises(ValueError):
        FrameCorruption(kinds=["smudge"]).sample_params(rng, 1)


def test_frame_corruption_defect_size_grows_with_severity():
    rng = np.random.default_rng(6)
    for kind in frames_mod.KINDS:
        op = FrameCorruption(kinds=[kind])
        for sev in SEVERITY_LEVELS:
            for _ in range(10):
                assert sev <= op.defect_size(op.sample_params(rng, sev)) <= sev + 1


# ----------------------------------------------------------------------------------- composition
def test_oneof_draws_both_and_replays():
    clip = audio_clip(speech_like_noise(1.0))
    t = OneOf([AudioShift(), LipDrift()])
    seen = set()
    for seed in range(20):
        out, ops = t(clip, np.random.default_rng(seed), 2)
        assert len(ops) == 1
        seen.add(ops[0]["name"])
        np.testing.assert_array_equal(replay(clip, json.loads(json.dumps(ops))).audio, out.audio)
    assert seen == {"audio_shift", "lip_drift"}


def test_someof_bounds_and_compose(video_frames):
    clip = video_clip(video_frames[:4])
    children = [AudioShift(), LipDrift(), FrameCorruption(kinds=["noise"])]
    t = SomeOf(children, n=(1, 2))
    sizes = set()
    for seed in range(30):
        ops = t.sample(np.random.default_rng(seed), 1)
        assert 1 <= len(ops) <= 2 and len({o["name"] for o in ops}) == len(ops)
        order = [o["name"] for o in ops]
        assert order == [c.name for c in children if c.name in order]
        sizes.add(len(ops))
    assert sizes == {1, 2}
    out, ops = Compose(children)(clip, np.random.default_rng(0), 2)
    assert [o["name"] for o in ops] == ["audio_shift", "lip_drift", "frame_corruption"]
    again = replay(clip, ops)
    np.testing.assert_array_equal(again.audio, out.audio)
    np.testing.assert_array_equal(again.frames, out.frames)


def test_probability_zero_applies_nothing():
    clip = audio_clip(speech_like_noise(1.0))
    rng = np.random.default_rng(0)
    for t in (AudioShift(p=0.0), Compose([AudioShift()], p=0.0), OneOf([LipDrift()], p=0.0),
              SomeOf([AudioShift(), LipDrift()], n=2, p=0.0)):
        out, ops = t(clip, rng, 5)
        assert ops == []
        np.testing.assert_array_equal(out.audio, clip.audio)
        assert out.video_untouched
