"""The embedded demo corpus: files, audio/lip sync of the originals, determinism, distinct speakers."""
from __future__ import annotations

import json
import wave

import numpy as np
import pytest
from scipy.ndimage import uniform_filter

from perturb.demo_corpus import LICENCE, PARAMS_FILE, make_demo_corpus
from perturb.media import decode_audio, decode_frames, probe

FPS, SR = 25, 16000
N, SECONDS = 3, 3.0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    paths = make_demo_corpus(out, n_sources=N, seconds=SECONDS, seed=0, progress=False, n_donors=2)
    decoded = [(decode_audio(p), decode_frames(p)) for p in paths]
    return out, paths, decoded


def _mouth_box(frames: np.ndarray) -> np.ndarray:
    """Grey frames cropped to the box around the spot of largest temporal variance in the lower
    half (away from the frame borders, where shoulders and hair edges sway)."""
    gray = frames.astype(np.float32).mean(axis=-1)
    t, h, w = gray.shape
    var = uniform_filter(gray.std(axis=0), size=7)
    keep = np.zeros_like(var, dtype=bool)
    keep[h * 9 // 16: h - h // 8, w // 5: w - w // 5] = True
    var[~keep] = 0
    y, x = np.unravel_index(np.argmax(var), var.shape)
    r = max(4, h // 12)
    return gray[:, max(0, y - r): y + r + 1, max(0, x - r): x + r + 1]


def _mouth_signal(frames: np.ndarray) -> np.ndarray:
    """Mouth motion: mean pixel change of the mouth box from its median (mostly closed) look."""
    box = _mouth_box(frames)
    return np.abs(box - np.median(box, axis=0)).mean(axis=(1, 2))


def _mouth_darkness(frames: np.ndarray) -> np.ndarray:
    return -_mouth_box(frames).mean(axis=(1, 2))


def _rms_envelope(audio: np.ndarray, n_frames: int) -> np.ndarray:
    spf = SR // FPS
    a = np.zeros(n_frames * spf, np.float32)
    k = min(len(a), len(audio))
    a[:k] = audio[:k]
    return np.sqrt((a.reshape(n_frames, spf) ** 2).mean(axis=1))


def _xcorr(x: np.ndarray, y: np.ndarray, max_lag: int) -> dict[int, float]:
    """Pearson r of x[t + lag] against y[t] for each lag."""
    out = {}
    n = len(x)
    for lag in range(-max_lag, max_lag + 1):
        a = x[max(0, lag): n + min(0, lag)]
        b = y[max(0, -lag): n - max(0, lag)]
        out[lag] = float(np.corrcoef(a, b)[0, 1])
    return out


def _median_f0(audio: np.ndarray) -> float:
    """Autocorrelation F0 (70-400 Hz) over the loudest 40 ms frames."""
    win = 640
    frames = audio[: len(audio) // win * win].reshape(-1, win).astype(np.float64)
    rms = np.sqrt((frames ** 2).mean(axis=1))
    f0s = []
    for fr in frames[rms > np.quantile(rms, 0.6)]:
        fr = fr - fr.mean()
        ac = np.correlate(fr, fr, "full")[win - 1:]
        lo, hi = SR // 400, SR // 70
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.3 * ac[0]:
            f0s.append(SR / lag)
    return float(np.median(f0s))


def test_files_and_manifest(corpus):
    out, paths, decoded = corpus
    assert [p.name for p in paths] == [f"demo_{i:02d}.mp4" for i in range(N)]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [m["path"] for m in manifest] == [p.name for p in paths]
    assert len({m["speaker"] for m in manifest}) == N
    for m in manifest:
        assert m["licence"] == LICENCE and m["source_id"] and m["description"]
    for p, (audio, frames) in zip(paths, decoded):
        info = probe(p)
        assert info.video_codec == "h264" and info.audio_codec == "aac"
        assert info.sample_rate == SR and info.channels == 1
        assert abs(len(frames) - SECONDS * FPS) <= 1
        assert frames.shape[1:] == (128, 128, 3)
        assert abs(len(audio) - SECONDS * SR) <= 0.02 * SECONDS * SR
        assert 0.05 < np.abs(audio).max() <= 1.0
    donors = sorted((out / "speech").glob("donor_*.wav"))
    assert len(donors) == 2
    with wave.open(str(donors[0])) as w:
        assert w.getframerate() == SR and w.getnchannels() == 1
        assert abs(w.getnframes() - SECONDS * SR) <= 1


def test_idempotent(corpus):
    out, paths, _ = corpus
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = make_demo_corpus(out, n_sources=N, seconds=SECONDS, seed=0, progress=False, n_donors=2)
    assert again == paths
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    assert json.loads((out / PARAMS_FILE).read_text())["seed"] == 0


def test_regenerates_on_new_parameters(tmp_path):
    make_demo_corpus(tmp_path, n_sources=2, seconds=1.0, progress=False, n_donors=1)
    paths = make_demo_corpus(tmp_path, n_sources=1, seconds=1.0, progress=False, n_donors=1)
    assert sorted(p.name for p in tmp_path.glob("demo_*.mp4")) == ["demo_00.mp4"] == [p.name for p in paths]
    assert len(json.loads((tmp_path / "manifest.json").read_text())) == 1
    assert json.loads((tmp_path / PARAMS_FILE).read_text())["n_sources"] == 1


def test_lips_in_sync_with_audio(corpus):
    _, _, decoded = corpus
    for audio, frames in decoded:
        mouth = _mouth_signal(frames)
        env = _rms_envelope(audio, len(frames))
        cc = _xcorr(mouth, env, max_lag=6)
        best = max(cc, key=cc.get)
        assert abs(best) <= 1, cc
        assert cc[best] > 0.5, cc
        # a 200 ms offset is clearly worse than sync
        assert max(cc[-5], cc[5]) < cc[best] - 0.3, cc


def test_pauses_present(corpus):
    _, _, decoded = corpus
    for audio, frames in decoded:
        env = _rms_envelope(audio, len(frames))
        quiet = env < 0.05 * env.max()
        # at least one run of >= 3 quiet frames (>= 120 ms) after the start
        runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], quiet[3:].astype(int), [0]]))))[::2]
        assert runs.size and runs.max() >= 3


def test_deterministic(corpus, tmp_path):
    _, _, decoded = corpus
    paths = make_demo_corpus(tmp_path / "a", n_sources=1, seconds=SECONDS, seed=0, progress=False,
                             n_donors=0)
    audio, frames = decode_audio(paths[0]), decode_frames(paths[0])
    np.testing.assert_array_equal(audio, decoded[0][0])
    np.testing.assert_array_equal(frames, decoded[0][1])
    other = make_demo_corpus(tmp_path / "b", n_sources=1, seconds=SECONDS, seed=1, progress=False,
                             n_donors=0)
    a2, f2 = decode_audio(other[0]), decode_frames(other[0])
    n = min(len(a2), len(audio))
    assert not np.array_equal(a2[:n], audio[:n])
    assert not np.array_equal(f2, frames)


def test_speakers_differ(corpus):
    _, _, decoded = corpus
    f0 = [_median_f0(audio) for audio, _ in decoded]
    assert all(70 < f < 300 for f in f0), f0
    for i in range(len(f0)):
        for j in range(i + 1, len(f0)):
            assert abs(np.log(f0[i] / f0[j])) > 0.05, f0
    firsts = [frames[0].astype(np.int16) for _, frames in decoded]
    assert np.abs(firsts[0] - firsts[1]).mean() > 10
