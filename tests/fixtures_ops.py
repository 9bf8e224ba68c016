"""Deterministic synthetic media and measurement helpers for the operator property tests."""
from __future__ import annotations

import wave

import numpy as np
from scipy.signal import lfilter

SR = 16000
FPS = 25


def speech_like_noise(seconds: float = 3.0, sr: int = SR, seed: int = 0) -> np.ndarray:
    """Broadband noise with a syllable-rate (4 Hz) envelope: sharp, unambiguous correlation peaks."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    x = rng.standard_normal(n)
    x = lfilter([1.0], [1.0, -0.6], x)  # a little spectral tilt, like speech
    env = 0.35 + 0.65 * np.abs(np.sin(2 * np.pi * 2.0 * t + rng.uniform(0, np.pi)))
    x = x * env
    return (0.1 * x / np.std(x)).astype(np.float32)


def lowpass_noise(seconds: float = 8.0, cutoff: float = 400.0, sr: int = SR,
                  seed: int = 1) -> np.ndarray:
    """Noise low-passed to the band where most speech energy lives: its waveform stays correlated
    over ~1 ms, so windowed lags survive the few-percent rate change of a drift."""
    from scipy.signal import butter, sosfilt

    rng = np.random.default_rng(seed)
    x = sosfilt(butter(4, cutoff, fs=sr, output="sos"), rng.standard_normal(int(round(seconds * sr))))
    return (0.1 * x / np.std(x)).astype(np.float32)


def _peak_lag(ref: np.ndarray, y: np.ndarray, t0: int, w: int, lag_lo: int, lag_hi: int) -> float:
    """Lag in [lag_lo, lag_hi] samples maximising corr(y[t0:t0+w], ref[t0-lag:t0-lag+w]),
    refined with a parabola through the peak."""
    from scipy.signal import correlate

    lo = max(0, t0 - lag_hi)
    seg = ref[lo:max(lo, min(len(ref), t0 - lag_lo + w))].astype(np.float64)
    cc = correlate(seg, y[t0:t0 + w].astype(np.float64), mode="valid", method="fft")
    j = int(np.argmax(cc))
    off = 0.0
    if 0 < j < len(cc) - 1:
        a, b, c = cc[j - 1], cc[j], cc[j + 1]
        den = a - 2 * b + c
        off = 0.5 * (a - c) / den if den < 0 else 0.0
    return t0 - lo - j - off


def local_lags_ms(ref: np.ndarray, y: np.ndarray, centers_s: np.ndarray,
                  lag_range_ms: tuple[float, float], win_ms: float = 50.0, sr: int = SR) -> np.ndarray:
    """Delay (ms) of y relative to ref in short windows of y centred at centers_s.

    Two stages, because a drifting delay is a rate change that decorrelates long waveform windows:
    a coarse lag in lag_range_ms from 400 ms windows of both signals low-passed to 60 Hz (long
    correlation time, so a few percent of rate change only blurs the peak), then the fine lag from
    a short `win_ms` window of the full-band signals searched within +-15 ms of the coarse one.
    """
    from scipy.signal import butter, sosfiltfilt

    sos = butter(4, 60.0, fs=sr, output="sos")
    ref_lp, y_lp = sosfiltfilt(sos, ref.astype(np.float64)), sosfiltfilt(sos, y.astype(np.float64))
    wc, w = int(0.4 * sr), int(win_ms * sr / 1000)
    lag_lo, lag_hi = (int(round(v * sr / 1000)) for v in lag_range_ms)
    fine_range = int(0.015 * sr)
    out = []
    for c in centers_s:
        mid = int(round(c * sr))
        coarse = int(round(_peak_lag(ref_lp, y_lp, max(0, mid - wc // 2), wc, lag_lo, lag_hi)))
        fine = _peak_lag(ref, y, mid - w // 2, w, coarse - fine_range, coarse + fine_range)
        out.append(fine * 1000.0 / sr)
    return np.asarray(out)


def _resonator(f: float, bw: float, sr: int) -> tuple[list[float], list[float]]:
    r = np.exp(-np.pi * bw / sr)
    theta = 2 * np.pi * f / sr
    return [1.0 - r], [1.0, -2 * r * np.cos(theta), r * r]


def synth_voice(seconds: float = 2.5, f0: float = 140.0, sr: int = SR,
                formants: tuple[float, ...] = (700.0, 1200.0, 2600.0), seed: int = 0) -> np.ndarray:
    """Harmonic glottal-pulse-like voice: F0 with 5 Hz vibrato, -12 dB/octave source, formant
    resonators and a syllable-like (4 Hz) amplitude envelope with short pauses."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    f_inst = f0 * (1.0 + 0.02 * np.sin(2 * np.pi * 5.0 * t) + 0.03 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(f_inst) / sr
    x = np.zeros(n)
    k = 1
    while k * f0 * 1.06 < min(4000.0, sr / 2 - 200):
        x += np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / (k * k) ** 0.75
        k += 1
    for f, bw in zip(formants, (80.0, 100.0, 150.0)):
        b, a = _resonator(f, bw, sr)
        x = lfilter(b, a, x)
    env = np.clip(np.sin(2 * np.pi * 2.0 * t), 0.0, None) ** 0.5  # 4 syllables/s with gaps
    env = 0.05 + 0.95 * env
    x = x * env
    return (0.1 * x / np.sqrt(np.mean(x ** 2))).astype(np.float32)


def median_f0(x: np.ndarray, sr: int = SR, fmin: float = 50.0, fmax: float = 500.0,
              frame_ms: float = 40.0, hop_ms: float = 10.0) -> float:
    """Median F0 over voiced frames by YIN (cumulative mean normalised difference), parabolic peak."""
    n = int(sr * frame_ms / 1000)
    hop = int(sr * hop_ms / 1000)
    tau_min, tau_max = int(sr / fmax), int(sr / fmin)
    energies, f0s = [], []
    for start in range(0, len(x) - n - tau_max, hop):
        frame = x[start:start + n + tau_max].astype(np.float64)
        energies.append(np.mean(frame[:n] ** 2))
        d = np.array([np.sum((frame[:n] - frame[tau:tau + n]) ** 2) for tau in range(tau_max + 1)])
        cmnd = np.ones_like(d)
        cmnd[1:] = d[1:] * np.arange(1, tau_max + 1) / np.maximum(np.cumsum(d[1:]), 1e-12)
        seg = cmnd[tau_min:tau_max]
        below = np.where(seg < 0.15)[0]
        if len(below):
            i = below[0]
            while i + 1 < len(seg) and seg[i + 1] < seg[i]:
                i += 1
        else:
            i = int(np.argmin(seg))
            if seg[i] > 0.4:
                f0s.append(np.nan)
                continue
        tau = tau_min + i
        if 1 <= tau < tau_max:
            a, b, c = cmnd[tau - 1], cmnd[tau], cmnd[tau + 1]
            den = a - 2 * b + c
            tau = tau + (0.5 * (a - c) / den if den > 0 else 0.0)
        f0s.append(sr / tau)
    energies, f0s = np.array(energies), np.array(f0s)
    voiced = (energies > 0.1 * energies.max()) & np.isfinite(f0s)
    return float(np.median(f0s[voiced]))


def xcorr_lag_ms(ref: np.ndarray, y: np.ndarray, sr: int = SR, max_ms: float = 1200.0) -> float:
    """Lag (ms) by which y is delayed relative to ref, from the full cross-correlation peak."""
    from scipy.signal import correlate, correlation_lags

    c = correlate(y.astype(np.float64), ref.astype(np.float64), mode="full", method="fft")
    lags = correlation_lags(len(y), len(ref), mode="full")
    keep = np.abs(lags) <= max_ms * sr / 1000
    return float(lags[keep][np.argmax(c[keep])] * 1000.0 / sr)


def natural_frames(n_frames: int = 20, h: int = 96, w: int = 96, seed: int = 0) -> np.ndarray:
    """Natural-ish RGB video: smooth colour gradients, 1/f texture, a patch of stripes and a
    moving shaded disc, deterministic."""
    import cv2

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    base = np.stack([
        90 + 60 * xx / w + 20 * np.sin(yy / 13.0),
        110 + 50 * yy / h,
        140 - 50 * xx / w + 15 * np.cos((xx + yy) / 17.0),
    ], axis=-1)
    # 1/f^1.5 amplitude spectrum: natural-image statistics, seen through a camera's soft optics
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    radius = np.sqrt(fx ** 2 + fy ** 2)
    spec = rng.standard_normal((h, w)) + 1j * rng.standard_normal((h, w))
    spec = spec / np.maximum(radius, 1.0 / max(h, w)) ** 1.5
    tex = np.real(np.fft.ifft2(spec))
    tex = 30 * tex / tex.std()
    stripes = 10 * np.sin(2 * np.pi * xx / 8.0) * (yy > h * 0.7)  # a patch of fine detail
    frames = np.empty((n_frames, h, w, 3), dtype=np.uint8)
    for i in range(n_frames):
        img = base + (tex + stripes)[..., None] * np.array([1.0, 0.9, 0.8])
        cx, cy = 20 + 2.5 * i, 30 + 1.5 * i
        r2 = (xx - cx) ** 2 + (yy - cy) ** 2
        disc = r2 < 14 ** 2
        shade = 200 - 0.3 * r2
        img[disc] = np.stack([shade, shade * 0.6, shade * 0.4], axis=-1)[disc]
        frames[i] = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return frames


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB over every pixel of every frame (8-bit peak)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def write_wav(path, audio: np.ndarray, sr: int = SR) -> None:
    """16-bit mono PCM WAV of float audio in [-1, 1]."""
    pcm = np.clip(np.round(np.asarray(audio) * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())
