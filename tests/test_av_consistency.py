"""av_consistency operators, measured: tempo and pitch ratios, SNR, filter attenuation,
time shift, mismatch donors (recorded, same split, similar voice), determinism."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from perturb.clip import Clip
from perturb.operators import OperatorContext, get_operator, replay
from perturb.operators.av_consistency import (BandFilter, PitchChange, SemanticSwap, SnrNoise, SoundtrackSwap,
                                              TempoChange, voice_descriptor)
from perturb.operators.timing import AudioShift
from perturb.pipeline import donor_splits
from perturb.recipe import load_recipe

from .fixtures_ops import SR, speech_like_noise, synth_voice, write_wav, xcorr_lag_ms

SEVERITIES = (1, 2, 3, 4, 5)


def _clip(track: np.ndarray, context_s: float = 1.0) -> Clip:
    """The middle of `track` as a window, with context_s of it on each side."""
    a = int(context_s * SR)
    return Clip(audio=track[a:len(track) - a].copy(), sr=SR, video_path="w.mp4", meta={"source_id": "src"},
                context_before=track[:a].copy(), context_after=track[len(track) - a:].copy())


def _bursts(seconds: float, period: float = 0.25, f: float = 300.0) -> np.ndarray:
    """60 ms Hann-windowed tone bursts every `period` s (a clock whose ticks can be timed)."""
    n = int(seconds * SR)
    x = np.zeros(n)
    g = int(0.06 * SR)
    burst = np.hanning(g) * np.sin(2 * np.pi * f * np.arange(g) / SR)
    for start in np.arange(0.02, seconds - 0.07, period):
        i = int(start * SR)
        x[i:i + g] += burst
    return (0.3 * x).astype(np.float32)


def _burst_times(x: np.ndarray) -> np.ndarray:
    """Centres (s) of the bursts: maxima of the 20 ms-smoothed envelope above half its peak."""
    from scipy.signal import find_peaks

    env = np.convolve(np.abs(x), np.ones(int(0.02 * SR)) / (0.02 * SR), mode="same")
    peaks, _ = find_peaks(env, height=0.5 * env.max(), distance=int(0.1 * SR))
    return peaks / SR


def _peak_hz(x: np.ndarray) -> float:
    """Frequency of the largest spectral peak (zero-padded FFT, Hann)."""
    n = 8 * len(x)
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), n))
    return float(np.argmax(spec) * SR / n)


def _tone(f: float, seconds: float = 1.0) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * f * np.arange(int(seconds * SR)) / SR)).astype(np.float32)


def _db(a: np.ndarray, b: np.ndarray) -> float:
    """Power of b relative to a, in dB, away from the ends (filter transients)."""
    m = len(a) // 10
    return float(10 * np.log10(np.mean(b[m:-m].astype(np.float64) ** 2) / np.mean(a[m:-m].astype(np.float64) ** 2)))


# ----------------------------------------------------------------------------- tempo, pitch
@pytest.mark.parametrize("severity", SEVERITIES)
def test_tempo_ratio_is_measured_in_the_output_and_in_the_documented_range(severity):
    op = TempoChange()
    clip = _clip(_bursts(6.0))
    for seed in (0, 1):
        rate = op.sample_params(np.random.default_rng(seed), severity)["rate"]
        assert 0.75 <= rate <= 0.9 or 1.1 <= rate <= 1.33
        out = op.apply(clip, {"rate": rate})
        assert len(out.audio) == len(clip.audio)
        spacing = np.median(np.diff(_burst_times(out.audio)))
        assert spacing == pytest.approx(0.25 / rate, rel=0.03)


def test_tempo_change_keeps_the_pitch():
    clip = _clip(_tone(440.0, 6.0))
    out = TempoChange().apply(clip, {"rate": 1.25})
    assert _peak_hz(out.audio) == pytest.approx(440.0, rel=0.01)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_pitch_ratio_is_measured_on_a_tone(severity):
    op = PitchChange()
    params = op.sample_params(np.random.default_rng(severity), severity)
    assert 2.0 <= abs(params["semitones"]) <= 6.0
    out = op.apply(_clip(_tone(440.0, 3.0), 0.0), params)
    assert _peak_hz(out.audio) == pytest.approx(440.0 * 2 ** (params["semitones"] / 12), rel=0.01)


def _envelope_period(x: np.ndarray, lo: float = 0.15, hi: float = 0.4) -> float:
    """Period (s) of the amplitude envelope: its autocorrelation peak in [lo, hi] s, parabola-refined."""
    env = np.convolve(np.abs(x.astype(np.float64)), np.ones(int(0.02 * SR)) / (0.02 * SR), mode="same")
    env = env - env.mean()
    ac = np.fft.irfft(np.abs(np.fft.rfft(env, 2 * len(env))) ** 2)[:len(env)]
    a, b = int(lo * SR), int(hi * SR)
    j = a + int(np.argmax(ac[a:b]))
    y0, y1, y2 = ac[j - 1], ac[j], ac[j + 1]
    return (j + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)) / SR


def _envelope(x: np.ndarray) -> np.ndarray:
    return np.convolve(np.abs(x.astype(np.float64)), np.ones(int(0.02 * SR)) / (0.02 * SR), mode="same")


@pytest.mark.parametrize("semitones", [-6.0, -2.0, 3.0, 6.0])
def test_pitch_change_keeps_the_tempo(semitones):
    """Envelope lags at the start, middle and end of the window stay ~0: no tempo change (a 10 %
    one would move the two ends 200 ms apart on this 4 s window)."""
    clip = _clip(_bursts(4.0), 0.0)
    out = PitchChange().apply(clip, {"semitones": semitones}).audio
    assert len(out) == len(clip.audio)
    env_in, env_out = _envelope(clip.audio), _envelope(out)
    for centre in (0.6, 2.0, 3.4):
        a, b = int((centre - 0.5) * SR), int((centre + 0.5) * SR)
        assert abs(xcorr_lag_ms(env_in[a:b], env_out[a:b], max_ms=120.0)) <= 30.0


def test_tempo_change_is_measured_by_envelope_period_too():
    clip = _clip(_bursts(6.0))
    for rate in (0.76, 1.3):
        out = TempoChange().apply(clip, {"rate": rate}).audio
        assert _envelope_period(out, 0.15, 0.4) == pytest.approx(0.25 / rate, rel=0.02)


# ----------------------------------------------------------------------------- noise, filter
@pytest.mark.parametrize("severity", SEVERITIES)
def test_snr_is_within_one_db_of_the_request(severity):
    op = SnrNoise()
    clip = _clip(synth_voice(3.0, seed=severity), 0.0)
    params = op.sample_params(np.random.default_rng(severity), severity)
    assert 15 - 3 * severity <= params["snr_db"] <= 18 - 3 * severity
    out = op.apply(clip, params)
    noise = out.audio.astype(np.float64) - clip.audio
    measured = 10 * np.log10(np.mean(clip.audio.astype(np.float64) ** 2) / np.mean(noise ** 2))
    assert abs(measured - params["snr_db"]) < 1.0
    assert not np.array_equal(op.apply(clip, {**params, "noise_seed": params["noise_seed"] + 1}).audio, out.audio)


@pytest.mark.parametrize("kind", ["lowpass", "highpass", "bandpass"])
def test_filter_passes_its_band_and_attenuates_outside(kind):
    op = BandFilter()
    params = next(p for seed in range(50) for p in [op.sample_params(np.random.default_rng(seed), 5)]
                  if p["kind"] == kind)
    lo, hi = params["low_hz"] or None, params["high_hz"] or None
    inside = np.sqrt((lo or 100.0) * (hi or 8000.0)) if kind == "bandpass" else (hi / 4 if kind == "lowpass" else lo * 4)
    outside = [f for f in ((lo / 4) if lo else None, (hi * 2) if hi and hi * 2 < 7900 else None) if f]
    assert outside
    tone = _tone(inside)
    assert abs(_db(tone, op.apply(_clip(tone, 0.0), params).audio)) < 1.0
    for f in outside:
        tone = _tone(f)
        assert _db(tone, op.apply(_clip(tone, 0.0), params).audio) < -20.0


def test_filter_removes_more_of_the_band_at_higher_severity():
    op = BandFilter()
    for kind_seed in range(10):
        p1 = op.sample_params(np.random.default_rng(kind_seed), 1)
        p5 = op.sample_params(np.random.default_rng(kind_seed), 5)
        assert p1["kind"] == p5["kind"] and p5["octaves"] > p1["octaves"]
        kept = lambda p: np.log2((p["high_hz"] or 8000.0) / (p["low_hz"] or 100.0))
        assert kept(p1) == pytest.approx(np.log2(80) - p1["octaves"], abs=1e-3)
        assert kept(p5) < kept(p1)


# ----------------------------------------------------------------------------- time shift
def test_recipe_time_shift_is_at_least_one_second_measured_by_cross_correlation():
    recipe = load_recipe("av_consistency")
    transform = recipe.build_transform()
    shift = next(leaf for leaf in transform.leaves() if leaf.name == "audio_shift")
    assert transform.audio_context_seconds() >= 2.0  # the pipeline cuts this much context: no silent gap
    clip = _clip(speech_like_noise(8.0, seed=5), 2.0)
    for severity in SEVERITIES:
        params = shift.sample_params(np.random.default_rng(severity), severity)
        out = shift.apply(clip, params)
        lag = xcorr_lag_ms(clip.audio, out.audio, max_ms=2500.0)
        assert abs(lag) >= 1000.0 and lag == pytest.approx(params["offset_ms"], abs=1.0)
        assert np.abs(out.audio).min() >= 0 and np.count_nonzero(out.audio) == len(out.audio)  # no gap
    with pytest.raises(ValueError, match="offset_range_ms"):
        AudioShift(offset_range_ms=[2000, 1000])


# ----------------------------------------------------------------------------- mismatch
F0S = (90.0, 110.0, 135.0, 160.0, 200.0, 250.0, 300.0)


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> tuple[str, ...]:
    """Seven donor voices, median F0 90-300 Hz."""
    folder = tmp_path_factory.mktemp("donors")
    paths = []
    for i, f0 in enumerate(F0S):
        path = folder / f"donor_{int(f0)}.wav"
        write_wav(path, synth_voice(3.0, f0=f0, seed=10 + i))
        paths.append(str(path))
    return tuple(paths)


def _context(pool, f0: float = 140.0) -> OperatorContext:
    clip = _clip(synth_voice(4.0, f0=f0, seed=1))
    return OperatorContext(source_id="src", split="val", donor_pool=pool, clip=clip, source_path="src.mp4")


def test_voice_descriptor_measures_median_f0():
    for f0 in (95.0, 140.0, 220.0):
        assert voice_descriptor(synth_voice(3.0, f0=f0, seed=2), SR) == pytest.approx(12 * np.log2(f0 / 100), abs=0.7)


def test_mismatch_records_the_donor_and_plays_its_soundtrack(pool):
    from perturb.operators.voice import donor_audio

    context = _context(pool)
    for cls in (SoundtrackSwap, SemanticSwap):
        op = cls().with_context(context)
        params = op.sample_params(np.random.default_rng(0), 3)
        assert params["donor_path"] in pool and params["donor_id"] == Path(params["donor_path"]).stem
        assert json.loads(json.dumps(params)) == params
        out = op.apply(context.clip, params)
        donor = donor_audio(params["donor_path"], SR)
        start = int(round(params["donor_start"] * SR))
        seg = np.resize(np.roll(donor, -start), len(out.audio))
        assert abs(np.corrcoef(seg, out.audio)[0, 1]) > 0.99
        np.testing.assert_array_equal(replay(context.clip, [{"name": cls.name, "params": params}]).audio, out.audio)


def test_donor_segment_fits_in_the_donor_without_looping(pool):
    from perturb.operators.voice import donor_duration

    context = _context(pool)  # 2 s window, 3 s donors
    for cls in (SoundtrackSwap, SemanticSwap):
        op = cls().with_context(context)
        for seed in range(20):
            params = op.sample_params(np.random.default_rng(seed), 1 + seed % 5)
            assert params["donor_start"] + context.clip.duration <= donor_duration(params["donor_path"])


def test_semantic_donor_is_closer_in_voice_than_a_random_donor(pool):
    context = _context(pool, f0=140.0)
    own = voice_descriptor(context.clip.extended_audio(), SR)
    rand, sem = SoundtrackSwap().with_context(context), SemanticSwap().with_context(context)
    desc = {p: voice_descriptor(synth_voice(3.0, f0=f0, seed=10 + i), SR) for i, (p, f0) in enumerate(zip(pool, F0S))}

    def distances(op):
        return [abs(desc[op.sample_params(np.random.default_rng(seed), sev)["donor_path"]] - own)
                for seed in range(20) for sev in SEVERITIES]

    d_sem, d_rand = distances(sem), distances(rand)
    assert np.mean(d_sem) < np.mean(d_rand) - 1.0
    assert max(d_sem) <= sorted(abs(d - own) for d in desc.values())[3] + 1e-6  # closer half (4 of 7)
    # severity grades the distance: a stronger mismatch is a more different voice
    for op in (rand, sem):
        mean_at = [np.mean([op.defect_size(op.sample_params(np.random.default_rng(s), sev)) for s in range(20)])
                   for sev in SEVERITIES]
        assert mean_at[-1] > mean_at[0]


def test_mismatch_never_draws_the_source_itself(pool, tmp_path):
    own = tmp_path / "src.wav"
    write_wav(own, synth_voice(3.0, f0=140.0, seed=1))
    context = _context((*pool, str(own)))
    for cls in (SoundtrackSwap, SemanticSwap):
        op = cls().with_context(context)
        drawn = {op.sample_params(np.random.default_rng(s), sev)["donor_path"] for s in range(10) for sev in SEVERITIES}
        assert str(own) not in drawn


def test_external_donors_are_split_like_sources():
    paths = [f"/d/speaker_{i:02d}.wav" for i in range(16)]
    fractions = {"train": 0.6, "val": 0.2, "test": 0.2}
    split = donor_splits(paths, fractions, seed=0)
    assert sorted(p for s in split.values() for p in s) == sorted(paths)  # each file in exactly one split
    assert all(split[s] for s in fractions)
    assert len(split["train"]) > len(split["test"])
    assert donor_splits(paths, {"train": 0.8, "val": 0.2, "test": 0.0}, seed=0)["test"] == ()
    assert donor_splits(paths, fractions, seed=0) == split  # deterministic


# ----------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("name", ["soundtrack_swap", "semantic_swap", "tempo_change", "pitch_change",
                                  "snr_noise", "band_filter"])
def test_same_params_same_output(name, pool):
    context = _context(pool)
    op = get_operator(name)().with_context(context)
    params = op.sample_params(np.random.default_rng(3), 4)
    a = op.apply(context.clip, params).audio
    b = get_operator(name)().apply(context.clip, json.loads(json.dumps(params))).audio  # fresh operator, JSON record
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, context.clip.audio)


# ----------------------------------------------------------------------------- in a build
def test_build_draws_mismatch_donors_from_the_pair_s_own_split_only(tmp_path):
    """Sources and --donors files alike: every donor a pair records belongs to the pair's split."""
    import yaml

    from perturb.pipeline import build

    from .media_fixtures import make_video
    from .test_pipeline import read_samples

    src, donors = tmp_path / "src", tmp_path / "donors"
    src.mkdir()
    donors.mkdir()
    for i in range(5):
        make_video(src / f"spk{i}.mp4", seconds=2.2, seed=i)
    for i, f0 in enumerate(F0S[:6]):
        write_wav(donors / f"voice_{i}.wav", synth_voice(2.5, f0=f0, seed=20 + i))
    recipe = tmp_path / "mismatch.yaml"
    recipe.write_text(yaml.safe_dump({
        "dim": "av_consistency", "question": "Does this soundtrack belong to this video?", "pairs_per_window": 6,
        "transform": {"one_of": [{"op": "soundtrack_swap"}, {"op": "semantic_swap"}]},
        "splits": {"train": 0.6, "val": 0.2, "test": 0.2}}))
    result = build(src, "av_consistency", out=tmp_path / "out", seed=3, workers=1, recipe=recipe,
                   window_seconds=2.0, donors=donors, cards_dir=None, progress=False)
    split_of = {s.source_id: s.split for s in result["sources"]}
    external = donor_splits(sorted(str(p.resolve()) for p in donors.glob("*.wav")),
                            {"train": 0.6, "val": 0.2, "test": 0.2}, seed=3)
    split_of.update({Path(p).stem: split for split, paths in external.items() for p in paths})
    used: dict[str, set[str]] = {}
    records = [json.loads(files["json"]) for files in read_samples(tmp_path / "out" / "av_consistency").values()]
    assert len(records) == 30
    for meta in records:
        params = meta["ops"][0]["params"]
        assert params["donor_id"] == Path(params["donor_path"]).stem != meta["source_id"]
        assert split_of[params["donor_id"]] == meta["split"]
        used.setdefault(params["donor_id"], set()).add(meta["split"])
    assert all(len(splits) == 1 for splits in used.values())
    assert any(d.startswith("voice_") for d in used) and any(d.startswith("spk") for d in used)


def test_recipe_is_the_paper_s_negative_mix():
    tree = load_recipe("av_consistency").build_transform()
    mix = {child.name: w for child, w in zip(tree.children, tree.weights)}
    assert mix == pytest.approx({"soundtrack_swap": 0.25, "semantic_swap": 0.18, "audio_shift": 0.17,
                                 "tempo_change": 0.15, "pitch_change": 0.10, "snr_noise": 0.10, "band_filter": 0.05})
