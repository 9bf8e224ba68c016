"""Degraded speech recording and delivery (dimension `audio_quality`): audio-only operators.

Every operator here only touches the soundtrack (`modifies = "audio"`), so the writer stream-copies
the video. Levels are relative to the speech: SNRs use the active speech level (`active_rms`, the
20 ms frames within 35 dB of the loudest, a P.56-like level) against the RMS of what is added.
Random material (noise, room responses) is drawn from a seed recorded in params, so apply is pure.

  noise        additive white / pink noise, or babble (other sources' speech), at a graded SNR
  clipping     overdriven recording: a graded fraction of samples hard-clipped
  codec        low-bitrate mp3 (8-32 kbps) or opus (6-12 kbps) through the ffmpeg binary
  band_limit   band-pass (telephone 300-3400 Hz at level 4)
  reverb       synthetic room impulse response (exponential noise tail, graded RT60)
  dropout      packet-loss gaps (20-200 ms of silence)
  hum          mains hum (50 / 60 Hz and harmonics) at a graded level
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..clip import Clip
from ..media import run_ffmpeg
from .base import ConfigError, Operator, OperatorContext, check_list, check_number, check_severity, register
from .voice import DrawsFromDonors, active_rms, donor_audio, donor_duration, donor_segment, peak_limit, rms

# SNR (dB) per severity level for additive noise; 0 dB at level 5 is as loud as the speech
NOISE_SNR_BANDS: dict[int, tuple[float, float]] = {1: (24.0, 30.0), 2: (18.0, 24.0), 3: (12.0, 18.0),
                                                   4: (6.0, 12.0), 5: (0.0, 6.0)}
NOISE_KINDS = ("white", "pink", "babble")
# share of hard-clipped samples per level
CLIP_FRACTION_BANDS: dict[int, tuple[float, float]] = {1: (0.002, 0.005), 2: (0.005, 0.01), 3: (0.01, 0.03),
                                                       4: (0.03, 0.08), 5: (0.08, 0.2)}
# bitrate (kbps) per level; libmp3lame at 16 kHz (MPEG-2 layer III) and libopus both accept these
CODEC_KBPS: dict[str, dict[int, int]] = {"mp3": {1: 32, 2: 24, 3: 16, 4: 12, 5: 8},
                                         "opus": {1: 12, 2: 10, 3: 8, 4: 7, 5: 6}}
_CODEC_ARGS = {"mp3": (["-c:a", "libmp3lame"], ".mp3"), "opus": (["-c:a", "libopus", "-application", "voip"], ".ogg")}
# (low, high) cut-offs in Hz per level; level 4 is the telephone band
BAND_EDGES: dict[int, tuple[float, float]] = {1: (120.0, 6000.0), 2: (200.0, 5000.0), 3: (250.0, 4000.0),
                                              4: (300.0, 3400.0), 5: (500.0, 2500.0)}
FULL_BAND = (50.0, 8000.0)
# RT60 (s) per level
RT60_BANDS: dict[int, tuple[float, float]] = {1: (0.2, 0.35), 2: (0.35, 0.55), 3: (0.55, 0.85),
                                              4: (0.85, 1.3), 5: (1.3, 2.0)}
# (number of gaps, (min, max) gap length in ms) per level
DROPOUT_BANDS: dict[int, tuple[int, tuple[float, float]]] = {1: (1, (20.0, 50.0)), 2: (2, (20.0, 80.0)),
                                                            3: (3, (40.0, 120.0)), 4: (4, (60.0, 160.0)),
                                                            5: (6, (80.0, 200.0))}
# hum-to-speech SNR (dB) per level
HUM_SNR_BANDS: dict[int, tuple[float, float]] = {1: (30.0, 36.0), 2: (24.0, 30.0), 3: (18.0, 24.0),
                                                 4: (12.0, 18.0), 5: (6.0, 12.0)}
HUM_HARMONICS = (1.0, 0.5, 0.3, 0.2)  # relative amplitudes of f, 2f, 3f, 4f (rectifier buzz)
_MAX_SEED = 2**31 - 1


def _uniform(rng: np.random.Generator, band: tuple[float, float], digits: int = 3) -> float:
    return round(float(rng.uniform(*band)), digits)


def speech_level(x: np.ndarray, sr: int) -> float:
    """Active speech level (RMS of the active 20 ms frames), the reference of every SNR here."""
    return active_rms(np.asarray(x, dtype=np.float32), sr)


def _at_speech_level_of(y: np.ndarray, x: np.ndarray, sr: int) -> np.ndarray:
    """y scaled to x's speech level (y as it is when it has no active level), peak-limited."""
    level_x, level_y = speech_level(x, sr), speech_level(y, sr)
    return peak_limit(y * (level_x / level_y) if level_y > 0 else y)


def mix_at_snr(x: np.ndarray, noise: np.ndarray, snr_db: float, sr: int) -> np.ndarray:
    """x + noise scaled so speech_level(x) / rms(noise) = snr_db (peak-limited as a whole)."""
    level, n_rms = speech_level(x, sr), rms(noise)
    if level <= 0 or n_rms <= 0:  # silent window: noise at its own level relative to full scale 0.1
        level, n_rms = 0.1, max(n_rms, 1e-12)
    gain = level / n_rms * 10.0 ** (-float(snr_db) / 20.0)
    return peak_limit(np.asarray(x, dtype=np.float64) + gain * noise)


def white_noise(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n)


def pink_noise(n: int, seed: int) -> np.ndarray:
    """1/f power spectrum (-3 dB per octave): white noise shaped in the frequency domain."""
    spec = np.fft.rfft(np.random.default_rng(seed).standard_normal(max(n, 2)))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    y = np.fft.irfft(spec / np.sqrt(f), max(n, 2))[:n]
    return y - y.mean()


# ------------------------------------------------------------------------------------- noise
@register("noise")
class AdditiveNoise(DrawsFromDonors, Operator):
    """Background noise at a graded SNR: white, pink, or babble (a mix of other speakers).

    params {"kind": "white"|"pink", "snr_db", "seed"} or {"kind": "babble", "snr_db",
    "donors": [{"path", "start"}, ...]}. Babble sums `babble_talkers` segments of other sources'
    speech (each at the same active level), then scales the sum to the SNR.

    Keywords (sampling only):
        kinds: noise kinds drawn from, among white, pink, babble. Default all three.
        babble_talkers: (lo, hi) number of babble voices. Default (3, 6).
        donors: files babble is made of; None (default) takes the context's donor pool.
        p: probability of applying. Default 1.0.
    Without usable donors babble is replaced by pink noise.
    """

    modifies = "audio"

    def __init__(self, *, kinds: Sequence[str] = NOISE_KINDS, babble_talkers: Sequence[int] = (3, 6),
                 donors: Sequence[str] | None = None, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.kinds = tuple(check_list(self.name, "kinds", kinds, min_length=1))
        bad = [k for k in self.kinds if k not in NOISE_KINDS]
        if bad:
            raise ConfigError(f"{self.name}: kinds must be among {NOISE_KINDS}, got {bad}")
        lo, hi = check_list(self.name, "babble_talkers", babble_talkers, length=2)
        lo = int(check_number(self.name, "babble_talkers[0]", lo, 1, 16))
        self.babble_talkers = (lo, int(check_number(self.name, "babble_talkers[1]", hi, lo, 16)))
        self.donors = None if donors is None else tuple(map(str, check_list(self.name, "donors", donors)))

    def sample_params(self, rng: np.random.Generator, severity: int) -> dict[str, Any]:
        """A kind, an SNR in NOISE_SNR_BANDS[severity], and a noise seed or babble donors."""
        snr = _uniform(rng, NOISE_SNR_BANDS[check_severity(severity)])
        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        donors = self.usable_donors()
        if kind == "babble" and donors:
            k = int(rng.integers(self.babble_talkers[0], self.babble_talkers[1] + 1))
            picks = [donors[int(i)] for i in rng.integers(len(donors), size=k)]
            return {"kind": "babble", "snr_db": snr,
                    "donors": [{"path": d, "start": round(float(rng.uniform(0.0, max(0.0, donor_duration(d) - 1.0))), 3)}
                               for d in picks]}
        return {"kind": "pink" if kind == "babble" else kind, "snr_db": snr, "seed": int(rng.integers(_MAX_SEED))}

    @staticmethod
    def noise_signal(params: dict[str, Any], n: int, sr: int) -> np.ndarray:
        """The noise of `params` before scaling (n samples)."""
        kind = params["kind"]
        if kind == "white":
            return white_noise(n, int(params["seed"]))
        if kind == "pink":
            return pink_noise(n, int(params["seed"]))
        if kind == "babble":
            out = np.zeros(n, dtype=np.float64)
            for d in params["donors"]:
                seg = donor_segment(donor_audio(str(d["path"]), sr), sr, float(d["start"]), n).astype(np.float64)
                level = active_rms(seg.astype(np.float32), sr)
                if level > 0:
                    out += seg / level
            return out
        raise ValueError(f"noise: unknown kind {kind!r}")

    def apply(self, clip: Clip, params: dict[str, Any]) -> Clip:
        x = np.asarray(clip.audio, dtype=np.float32)
        return clip.with_audio(mix_at_snr(x, self.noise_signal(params, len(x), clip.sr), params["snr_db"], clip.sr))

    def defect_size(self, params: dict[str, Any]) -> float:
        """40 dB minus the SNR (larger = noisier)."""
        return 40.0 - float(params["snr_db"])


# ----------------------------------------------------------------------------------- clipping
def hard_clip(x: np.ndarray, fraction: float) -> np.ndarray:
    """Overdrive: clip at the (1 - fraction) quantile of |x|, then bring the clip level to full scale
    (0.98), as a recorder driven too hot writes it. Silence stays silence."""
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x)
    if not len(x) or a.max() <= 0:
        return x.astype(np.float32)
    t = float(np.quantile(a, 1.0 - float(fraction)))
    t = t if t > 0 else float(a[a > 0].min())
    return (np.clip(x, -t, t) * (0.98 / t)).astype(np.float32)


@register("clipping")
class Clipping(Operator):
    """Hard clipping of a graded share of the samples: params {"fraction"} (0.002-0.2).

    Keywords: p, probability of applying (default 1.0).
    """

    modifies = "audio"

    def sample_params(self, rng: np.random.Generator, severity: int) -> dict[str, Any]:
        return {"fraction": _uniform(rng, CLIP_FRACTION_BANDS[check_severity(severity)], 4)}

    def apply(self, clip: Clip, params: dict[str, Any]) -> Clip:
        return clip.with_audio(hard_clip(clip.audio, float(params["fraction"])))

    def defect_size(self, params: dict[str, Any]) -> float:
        """Share of clipped samples, in percent."""
        return 100.0 * float(params["fraction"])


# --------------------------------------------------------------------------------------- codec
def codec_roundtrip(x: np.ndarray, sr: int, codec: str, kbps: int) -> tuple[np.ndarray, int]:
    """Encode x with `codec` at `kbps` through ffmpeg and decode it back: (decoded audio of len(x)
    samples, size of the encoded file in bytes). The encoded file is written to disk, not piped, so
    the encoder can write its header (LAME's gapless info, Ogg's pre-skip): decoding then removes the
    encoder delay and the decoded audio lines up with x."""
    if codec not in _CODEC_ARGS:
        raise ValueError(f"codec must be one of {sorted(_CODEC_ARGS)}, got {codec!r}")
    args, suffix = _CODEC_ARGS[codec]
    raw = np.ascontiguousarray(np.clip(x, -1.0, 1.0), dtype="<f4").tobytes()
    with tempfile.TemporaryDirectory(prefix="avbench_codec_") as tmp:
        enc = str(Path(tmp) / f"enc{suffix}")
        run_ffmpeg(["-f", "f32le", "-ar", str(sr), "-ac", "1", "-i", "pipe:0", *args, "-b:a", f"{int(kbps)}k",
                    "-ar", str(sr), "-ac", "1", "-y", enc], input_bytes=raw)
        size = Path(enc).stat().st_size
        out = run_ffmpeg(["-i", enc, "-f", "f32le", "-ar", str(sr), "-ac", "1", "pipe:1"])
    y = np.frombuffer(out, dtype="<f4").astype(np.float32)
    y = y[:len(x)] if len(y) >= len(x) else np.concatenate([y, np.zeros(len(x) - len(y), np.float32)])
    return peak_limit(y), size


@register("codec")
class LowBitrateCodec(Operator):
    """A low-bitrate lossy codec round trip: params {"codec": "mp3"|"opus", "kbps"}.

    mp3 (libmp3lame) 32 / 24 / 16 / 12 / 8 kbps and opus (libopus, voip) 12 / 10 / 8 / 7 / 6 kbps
    for levels 1..5 (CODEC_KBPS).

    Keywords:
        codecs: codecs drawn from, among mp3, opus. Default both.
        p: probability of applying. Default 1.0.
    """

    modifies = "audio"

    def __init__(self, *, codecs: Sequence[str] = ("mp3", "opus"), p: float = 1.0) -> None:
        super().__init__(p=p)
        self.codecs = tuple(check_list(self.name, "codecs", codecs, min_length=1))
        bad = [c for c in self.codecs if c not in CODEC_KBPS]
        if bad:
            raise ConfigError(f"{self.name}: codecs must be among {sorted(CODEC_KBPS)}, got {bad}")

    def sample_params(self, rng: np.random.Generator, severity: int) -> dict[str, Any]:
        codec = self.codecs[int(rng.integers(len(self.codecs)))]
        return {"codec": codec, "kbps": CODEC_KBPS[codec][check_severity(severity)]}

    def apply(self, clip: Clip, params: dict[str, Any]) -> Clip:
        return clip.with_audio(codec_roundtrip(clip.audio, clip.sr, str(params["codec"]), int(params["kbps"]))[0])

    def defect_size(self, params: dict[str, Any]) -> float:
        """The severity level of the bitrate (1..5) within its codec's ladder."""
        ladder = CODEC_KBPS[str(params["codec"])]
        return float(next((lvl for lvl in sorted(ladder) if ladder[lvl] <= int(params["kbps"])), 5))


# ----------------------------------------------------------------------------------- band limit
def band_pass(x: np.ndarray, sr: int, low_hz: float, high_hz: float, order: int = 6) -> np.ndarray:
    """Zero-phase Butterworth band-pass (forward-backward: twice the order's roll-off)."""
    from scipy.signal import butter, sosfiltfilt

    nyq = sr / 2.0
    sos = butter(order, [float(low_hz) / nyq, min(float(high_hz), 0.99 * nyq) / nyq], btype="bandpass", output="sos")
    x = np.asarray(x, dtype=np.float64)
    if len(x) <= 3 * (2 * len(sos) + 1):
        return x.astype(np.float32)
    return sosfiltfilt(sos, x).astype(np.float32)


@register("band_limit")
class BandLimit(Operator):
    """Narrow-band channel: band-pass between params {"low_hz", "high_hz"} (level 4 = telephone
    300-3400 Hz; BAND_EDGES), level matched to the original's speech level.

    Keywords: p, probability of applying (default 1.0).
    """

    modifies = "audio"

    def sample_params(self, rng: np.random.Generator, severity: int) -> dict[str, Any]:
        lo, hi = BAND_EDGES[check_severity(severity)]
        jitter = float(rng.uniform(0.9, 1.1))  # a little spread around the nominal edges
        return {"low_hz": round(lo * jitter, 1), "high_hz": round(hi / jitter, 1)}

    def apply(self, clip: Clip, params: dict[str, Any]) -> Clip:
        x = np.asarray(clip.audio, dtype=np.float32)
        y = band_pass(x, clip.sr, params["low_hz"], params["high_hz"])
        return clip.with_audio(_at_speech_level_of(y, x, clip.sr))

    def defect_size(self, params: dict[str, Any]) -> float:
        """Octaves cut from the full 50-8000 Hz band."""
        return float(np.log2(float(params["low_hz"]) / FULL_BAND[0]) + np.log2(FULL_BAND[1] / float(params["high_hz"])))


# --------------------------------------------------------------------------------------- reverb
def room_impulse_response(sr: int, rt60: float, drr_db: float, seed: int) -> np.ndarray:
    """A synthetic room impulse response: a unit direct path, then (after a 2-5 ms pre-delay)
    Gaussian noise decaying by 60 dB in rt60 seconds, scaled so the direct-to-reverberant energy
    ratio is drr_db; 1.2 * rt60 long."""
    rng = np.random.default_rng(seed)
    n = max(2, int(1.2 * rt60 * sr))
    t = np.arange(n) / sr
    tail = rng.standard_normal(n) * np.exp(-6.907755 * t / rt60)  # 10**(-60/20) at t = rt60 (amplitude)
    tail[: int(rng.uniform(0.002, 0.005) * sr)] = 0.0
    tail *= np.sqrt(10.0 ** (-drr_db / 10.0) / max(np.sum(tail * tail), 1e-12))
    tail[0] += 1.0
    return tail


@register("reverb")
class Reverb(Operator):
    """Room reverberation: the audio convolved with room_impulse_response(rt60, drr_db, seed),
    level matched to the original's speech level. params {"rt60", "drr_db", "seed"}; RT60 in
    RT60_BANDS, direct-to-reverberant ratio from +6 dB (level 1) down to -6 dB (level 5).

    Keywords: p, probability of applying (default 1.0).
    """

    modifies = "audio"

    def sample_params(self, rng: np.random.Generator, severity: int) -> dict[str, Any]:
        severity = check_severity(severity)
        drr_hi = 9.0 - 3.0 * severity
        return {"rt60": _uniform(rng, RT60_BANDS[severity]), "drr_db": _uniform(rng, (drr_hi - 3.0, drr_hi), 2),
                "seed": int(rng.integers(_MAX_SEED))}

    def apply(self, clip: Clip, params: dict[str, Any]) -> Clip:
        from scipy.signal import fftconvolve

        x = np.asarray(clip.audio, dtype=np.float64)
        rir = room_impulse_response(clip.sr, float(params["rt60"]), float(params["drr_db"]), int(params["seed"]))
        y = fftconvolve(x, rir)[: len(x)].astype(np.float32)
        return clip.with_audio(_at_speech_level_of(y, x, clip.sr))

    def defect_size(self, params: dict[str, Any]) -> float:
        """RT60 in seconds plus the reverberant share (1 / (1 + DRR as a power ratio))."""
        return float(params["rt60"]) + 1.0 / (1.0 + 10.0 ** (float(params["drr_db"]) / 10.0))


# -------------------------------------------------------------------------------------- dropout
def dropout_gaps(n: int, sr: int, gaps: list[dict[str, float]]) -> list[tuple[int, int]]:
    """(start, end) sample ranges of the gaps {"at": fraction of the window, "ms": length}, clamped."""
    out = []
    for g in gaps:
        a = int(round(float(g["at"]) * n))
        out.append((min(a, n), min(n, a + int(round(float(g["ms"]) * sr / 1000.0)))))
    return out


@register("dropout")
class Dropout(Operator):
    """Packet-loss gaps: params {"gaps": [{"at", "ms"}, ...]}, each `ms` (20-200) of silence starting
    at fraction `at` of the window. Level k drops DROPOUT_BANDS[k] gaps, one per equal slot of the
    window so they do not overlap on windows of a second or more.

    Keywords: p, probability of applying (default 1.0).
    """

    modifies = "audio"

    def sample_params(self, rng: np.random.Generator, severity: int) -> dict[str, Any]:
        k, band = DROPOUT_BANDS[check_severity(severity)]
        gaps = []
        for i in range(k):
            ms = _uniform(rng, band, 1)
            gaps.append({"at": round((i + float(rng.uniform(0.05, 0.6))) / k, 4), "ms": ms})
        return {"gaps": gaps}

    def apply(self, clip: Clip, params: dict[str, Any]) -> Clip:
        y = np.array(clip.audio, dtype=np.float32)
        for a, b in dropout_gaps(len(y), clip.sr, params["gaps"]):
            y[a:b] = 0.0
        if np.array_equal(y, clip.audio) and len(y):  # a gap over silence still drops a packet
            y[min(len(y) - 1, int(round(float(params["gaps"][0]["at"]) * len(y))))] = 0.0
        return clip.with_audio(y)

    def defect_size(self, params: dict[str, Any]) -> float:
        """Total gap length in milliseconds."""
        return float(sum(float(g["ms"]) for g in params["gaps"]))


# ------------------------------------------------------------------------------------------ hum
def hum_signal(n: int, sr: int, freq_hz: float, phase: float) -> np.ndarray:
    """Mains hum: freq_hz and its harmonics (HUM_HARMONICS), unit RMS."""
    t = np.arange(n) / sr
    y = sum(a * np.sin(2 * np.pi * (k + 1) * freq_hz * t + (k + 1) * phase) for k, a in enumerate(HUM_HARMONICS))
    return np.asarray(y, dtype=np.float64) / max(rms(np.asarray(y)), 1e-12)


@register("hum")
class Hum(Operator):
    """Mains hum (50 or 60 Hz with harmonics) at a graded hum-to-speech SNR: params {"freq_hz",
    "snr_db", "phase"}.

    Keywords:
        freqs: mains frequencies drawn from (Hz, each in [40, 70]). Default (50.0, 60.0).
        p: probability of applying. Default 1.0.
    """

    modifies = "audio"

    def __init__(self, *, freqs: Sequence[float] = (50.0, 60.0), p: float = 1.0) -> None:
        super().__init__(p=p)
        self.freqs = tuple(check_number(self.name, "freqs[]", f, 40.0, 70.0)
                           for f in check_list(self.name, "freqs", freqs, min_length=1))

    def sample_params(self, rng: np.random.Generator, severity: int) -> dict[str, Any]:
        return {"freq_hz": float(self.freqs[int(rng.integers(len(self.freqs)))]),
                "snr_db": _uniform(rng, HUM_SNR_BANDS[check_severity(severity)]),
                "phase": round(float(rng.uniform(0.0, 2 * np.pi)), 4)}

    def apply(self, clip: Clip, params: dict[str, Any]) -> Clip:
        x = np.asarray(clip.audio, dtype=np.float32)
        hum = hum_signal(len(x), clip.sr, float(params["freq_hz"]), float(params["phase"]))
        return clip.with_audio(mix_at_snr(x, hum, params["snr_db"], clip.sr))

    def defect_size(self, params: dict[str, Any]) -> float:
        """45 dB minus the hum SNR."""
        return 45.0 - float(params["snr_db"])
