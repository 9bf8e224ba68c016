"""Soundtracks that do not belong to their video (av_consistency, the AVBench paper's negatives).

soundtrack_swap  {"donor_path", "donor_id", "donor_start", "distance_st", "severity"}
    The soundtrack of another source of the same split (random mismatch).
semantic_swap    the same params: the soundtrack of a SIMILAR source (semantic mismatch): a donor
    from the closer half of the pool by voice descriptor, so pitch / register give nothing away.
tempo_change     {"rate"}: the soundtrack plays faster or slower (pitch kept, length kept).
pitch_change     {"semitones"}: the voice moves up or down (tempo kept, length kept).
snr_noise        {"snr_db", "noise_seed"}: white noise at a signal-to-noise ratio.
band_filter      {"kind", "low_hz", "high_hz", "octaves"}: low-, high- or band-pass.
The time shift (>= 1 s) is audio_shift with offset_range_ms (perturb/recipes/av_consistency.yaml).

Voice descriptor (`voice_descriptor`): median F0 (frame autocorrelation) over the loud voiced frames,
in semitones re 100 Hz. Donors are ranked by |descriptor difference| to the window being perturbed
(to the source file's when the window is unvoiced); severity s draws from the s-th fifth of that
ranking (soundtrack_swap: of every donor, so the mix over severities is a uniformly random donor;
semantic_swap: of the closer half), so a stronger severity is a more different voice, and
defect_size = 1 + distance in semitones.
Donors come from the OperatorContext's pool (the other sources of the same split plus the build's
--donors files of that split, see perturb.pipeline.donor_splits); `donor_id` is the donor file's stem
(a source id for the sources of a build).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..clip import Clip
from ..media import MediaError
from .base import Operator, OperatorContext, check_severity, register
from .timing import drift_audio_keep_pitch
from .voice import (DrawsFromDonors, _match_level, active_rms, donor_audio, donor_duration, donor_segment,
                    pitch_shift, rms)

DESCRIPTOR_SECONDS = 30.0  # of a donor file: enough voiced frames for a stable median F0
_DESCRIPTORS: dict[tuple[str, int], float] = {}


# ----------------------------------------------------------------------------- voice descriptor
def voice_descriptor(audio: np.ndarray, sr: int, floor_db: float = -25.0) -> float:
    """Median F0 in semitones re 100 Hz over voiced frames within floor_db of the loudest (NaN when
    nothing is voiced). Cheap: one FFT autocorrelation per 40 ms frame (10 ms hop); the biased
    autocorrelation favours the shortest period, so sub-harmonics (F0 / 2, F0 / 3) are not picked,
    which torchaudio's NCCF detect_pitch_frequency does on loud harmonic frames."""
    x = np.asarray(audio, dtype=np.float64)
    frame, hop = int(0.04 * sr), int(0.01 * sr)
    lag_lo, lag_hi = int(sr / 400), int(sr / 60)
    if len(x) < frame + hop:
        return float("nan")
    frames = np.lib.stride_tricks.sliding_window_view(x, frame)[::hop]
    frames = frames - frames.mean(axis=1, keepdims=True)
    energy = np.mean(frames * frames, axis=1)
    nfft = 1 << int(np.ceil(np.log2(2 * frame)))
    ac = np.fft.irfft(np.abs(np.fft.rfft(frames * np.hanning(frame), nfft)) ** 2, nfft)[:, : lag_hi + 2]
    ac = ac / np.maximum(ac[:, :1], 1e-12)
    lag = lag_lo + np.argmax(ac[:, lag_lo:lag_hi + 1], axis=1)
    peak = ac[np.arange(len(ac)), lag]
    a, b, c = ac[np.arange(len(ac)), lag - 1], peak, ac[np.arange(len(ac)), lag + 1]
    den = a - 2 * b + c
    exact = lag + np.where(den < 0, 0.5 * (a - c) / np.where(den < 0, den, -1.0), 0.0)
    voiced = (peak > 0.4) & (energy >= energy.max() * 10 ** (floor_db / 10)) & (energy > 0)
    if not voiced.any():
        return float("nan")
    return float(12.0 * np.log2(np.median(sr / exact[voiced]) / 100.0))


def donor_descriptor(path: str, sr: int) -> float:
    """voice_descriptor of a donor file's first DESCRIPTOR_SECONDS, computed once per path."""
    key = (str(path), int(sr))
    if key not in _DESCRIPTORS:
        _DESCRIPTORS[key] = voice_descriptor(donor_audio(path, sr)[: int(DESCRIPTOR_SECONDS * sr)], sr)
    return _DESCRIPTORS[key]


def severity_slice(n: int, severity: int) -> tuple[int, int]:
    """[lo, hi) of the s-th fifth of n ranked items (never empty when n > 0)."""
    lo = min((check_severity(severity) - 1) * n // 5, n - 1)
    return lo, max(severity * n // 5, lo + 1)


# ----------------------------------------------------------------------------- mismatch
class _DonorSoundtrack(DrawsFromDonors, Operator):
    """Shared by the two mismatch operators: the pool, the ranking and apply (not registered)."""

    modifies = "audio"
    closer_share = 1.0  # share of the ranked pool the severities spread over

    def __init__(self, *, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.ranked: tuple[tuple[float, str], ...] = ()  # (distance in semitones, donor path), set by with_context
        self.window_s = 0.0  # the window's length (with_context): a donor segment should not loop

    def with_context(self, context: OperatorContext) -> "_DonorSoundtrack":
        """A copy holding the context's donors (never the source's own file) ranked by voice
        descriptor distance to the window."""
        bound = super().with_context(context)  # DrawsFromDonors: the pool and the source
        sr = context.clip.sr if context.clip is not None else 16000
        own = voice_descriptor(context.clip.extended_audio(), sr) if context.clip is not None else float("nan")
        if not np.isfinite(own) and context.source_path and Path(context.source_path).is_file():
            try:  # an unvoiced window (a pause): the source's voice over its first seconds instead
                own = donor_descriptor(context.source_path, sr)
            except (MediaError, ValueError):
                pass
        ranked = []
        for path in bound.usable_donors():
            d = donor_descriptor(path, sr)
            dist = abs(d - own) if np.isfinite(d) and np.isfinite(own) else 24.0  # unknown: far
            ranked.append((round(float(dist), 3), str(path)))
        bound.ranked = tuple(sorted(ranked))
        bound.window_s = context.clip.duration if context.clip is not None else 0.0
        return bound

    def sample_params(self, rng: np.random.Generator, severity: int) -> dict[str, Any]:
        """A donor from the severity's fifth of the ranking (closest first) and a start in it."""
        if not self.ranked:
            raise ValueError(f"{self.name}: no donor in the context's pool (needs other sources in the split)")
        m = max(min(len(self.ranked), 2), int(np.ceil(len(self.ranked) * self.closer_share)))
        lo, hi = severity_slice(m, severity)
        dist, path = self.ranked[int(rng.integers(lo, hi))]
        # start so the window's length fits in the donor (no loop splice, itself a cue) when it can
        room = max(0.0, donor_duration(path) - self.window_s - 0.05)
        return {"donor_path": path, "donor_id": Path(path).stem, "distance_st": dist,
                "donor_start": round(float(rng.uniform(0.0, room)), 3), "severity": int(severity)}

    def apply(self, clip: Clip, params: dict[str, Any]) -> Clip:
        """The donor's soundtrack from donor_start (looped if short), at the window's loudness."""
        x = np.asarray(clip.audio, dtype=np.float32)
        y = donor_segment(donor_audio(str(params["donor_path"]), clip.sr), clip.sr,
                          float(params["donor_start"]), len(x))
        target = active_rms(x, clip.sr)
        if target <= 0:
            return clip.with_audio(_match_level(y, 0.0, rms))
        return clip.with_audio(_match_level(y, target, lambda a: active_rms(a, clip.sr)))

    def defect_size(self, params: dict[str, Any]) -> float:
        """1 + voice-descriptor distance in semitones (another soundtrack is a defect even at equal pitch)."""
        return 1.0 + float(params["distance_st"])


@register("soundtrack_swap")
class SoundtrackSwap(_DonorSoundtrack):
    """Random mismatch: the soundtrack of another source of the same split.

    Severity s draws the donor from the s-th fifth of the pool ranked by voice-descriptor distance
    (so over all severities the donor is uniformly random). Params: donor_path, donor_id,
    donor_start, distance_st, severity.

    Keywords: p, probability of applying. Default 1.0.
    """

    closer_share = 1.0


@register("semantic_swap")
class SemanticSwap(_DonorSoundtrack):
    """Semantic mismatch: the soundtrack of a similar source (close median F0), same split.

    Severity s draws from the s-th fifth of the closer half of the ranked pool (at least two
    donors), so the pitch and register cues of a random swap are gone. Params as soundtrack_swap.

    Keywords: p, probability of applying. Default 1.0.
    """

    closer_share = 0.5


# ----------------------------------------------------------------------------- signal changes
# |ln rate| per severity: 1.111x .. 1.33x faster or 0.9x .. 0.752x slower
_LN_RATE = (float(np.log(1 / 0.9)), float(np.log(1.33)))


@register("tempo_change")
class TempoChange(Operator):
    """The soundtrack plays at `rate` x its tempo (pitch and length kept): params {"rate"}.

    rate is 0.75-0.9 (slower) or 1.1-1.33 (faster); |ln rate| spread over five severity bands.
    The time axis is scaled about the window's centre with WSOLA grains (timing.drift_audio_keep_pitch),
    reading the soundtrack around the window for a faster one.

    Keywords: p, probability of applying. Default 1.0.
    """

    modifies = "audio"

    def audio_context_seconds(self) -> float:
        """A 1.33x rate reads 0.165 s per second of window beyond each end (1 s covers 6 s windows)."""
        return 1.0

    def sample_params(self, rng: np.random.Generator, severity: int) -> dict[str, Any]:
        lo, hi = _LN_RATE
        step = (hi - lo) / 5
        m = float(rng.uniform(lo + (check_severity(severity) - 1) * step, lo + severity * step))
        return {"rate": round(float(np.exp(m if rng.random() < 0.5 else -m)), 4)}

    def apply(self, clip: Clip, params: dict[str, Any]) -> Clip:
        # out(t) = in(c + rate (t - c)), c the centre: a delay d(t) = (1 - rate)(t - c), linear in t
        rate = float(params["rate"])
        half_ms = 1000.0 * (len(clip.audio) - 1) / clip.sr / 2
        y = drift_audio_keep_pitch(np.asarray(clip.audio, np.float32), clip.sr, -(1 - rate) * half_ms,
                                   (1 - rate) * half_ms, context=(clip.context_before, clip.context_after),
                                   tolerance_ms=8.0)
        return clip.with_audio(y)

    def defect_size(self, params: dict[str, Any]) -> float:
        """|ln rate|."""
        return abs(float(np.log(float(params["rate"]))))


@register("pitch_change")
class PitchChange(Operator):
    """The voice moves by +-2..6 semitones, tempo and length kept: params {"semitones"}.

    Phase vocoder then resampling (voice.pitch_shift; formants move with the pitch), RMS kept.
    |semitones| spread over five severity bands from 2 to 6.

    Keywords: p, probability of applying. Default 1.0.
    """

    modifies = "audio"

    def sample_params(self, rng: np.random.Generator, severity: int) -> dict[str, Any]:
        s = check_severity(severity)
        magnitude = float(rng.uniform(2.0 + 0.8 * (s - 1), 2.0 + 0.8 * s))
        return {"semitones": round(magnitude if rng.random() < 0.5 else -magnitude, 3)}

    def apply(self, clip: Clip, params: dict[str, Any]) -> Clip:
        x = np.asarray(clip.audio, dtype=np.float32)
        return clip.with_audio(_match_level(pitch_shift(x, clip.sr, float(params["semitones"])), rms(x), rms))

    def defect_size(self, params: dict[str, Any]) -> float:
        """|semitones|."""
        return abs(float(params["semitones"]))


@register("snr_noise")
class SnrNoise(Operator):
    """White noise added at snr_db (0-15 dB, 3 dB per severity band) of the window's power.

    Params {"snr_db", "noise_seed"}: the noise is drawn from noise_seed, so replay needs nothing else.

    Keywords: p, probability of applying. Default 1.0.
    """

    modifies = "audio"

    def sample_params(self, rng: np.random.Generator, severity: int) -> dict[str, Any]:
        s = check_severity(severity)
        return {"snr_db": round(float(rng.uniform(15.0 - 3.0 * s, 18.0 - 3.0 * s)), 3),
                "noise_seed": int(rng.integers(2**31))}

    def apply(self, clip: Clip, params: dict[str, Any]) -> Clip:
        x = np.asarray(clip.audio, dtype=np.float64)
        noise = np.random.default_rng(int(params["noise_seed"])).standard_normal(len(x))
        power = max(float(np.mean(x * x)), 1e-10)  # a silent window still gets audible noise
        noise *= np.sqrt(power / 10 ** (float(params["snr_db"]) / 10) / np.mean(noise * noise))
        return clip.with_audio(np.clip(x + noise, -1.0, 1.0))

    def defect_size(self, params: dict[str, Any]) -> float:
        """Noise-to-signal power ratio."""
        return float(10 ** (-float(params["snr_db"]) / 10))


FILTER_KINDS = ("lowpass", "highpass", "bandpass")
_SPEECH_BAND = (100.0, 8000.0)


@register("band_filter")
class BandFilter(Operator):
    """Low-, high- or band-pass (Butterworth order 4, zero phase): params {"kind", "low_hz", "high_hz", "octaves"}.

    Severity s removes 0.5 s .. 0.5 s + 0.5 octaves of the 100-8000 Hz speech band: from the top
    (lowpass, cut-off high_hz), the bottom (highpass, low_hz) or half from each (bandpass).
    RMS is not restored (a filtered soundtrack is also quieter).

    Keywords: p, probability of applying. Default 1.0.
    """

    modifies = "audio"

    def sample_params(self, rng: np.random.Generator, severity: int) -> dict[str, Any]:
        s = check_severity(severity)
        octaves = float(rng.uniform(0.5 * s, 0.5 * s + 0.5))
        kind = FILTER_KINDS[int(rng.integers(len(FILTER_KINDS)))]
        low_oct = {"lowpass": 0.0, "highpass": octaves, "bandpass": octaves / 2}[kind]
        return {"kind": kind, "octaves": round(octaves, 4),
                "low_hz": round(_SPEECH_BAND[0] * 2 ** low_oct, 2) if kind != "lowpass" else 0.0,
                "high_hz": round(_SPEECH_BAND[1] / 2 ** (octaves - low_oct), 2) if kind != "highpass" else 0.0}

    def apply(self, clip: Clip, params: dict[str, Any]) -> Clip:
        from scipy.signal import butter, sosfiltfilt

        kind, lo, hi = params["kind"], float(params["low_hz"]), float(params["high_hz"])
        wn = {"lowpass": hi, "highpass": lo, "bandpass": [lo, hi]}[kind]
        sos = butter(4, wn, btype=kind, fs=clip.sr, output="sos")
        x = np.asarray(clip.audio, dtype=np.float64)
        if len(x) <= 3 * 2 * len(sos):  # too short for filtfilt's padding
            return clip.with_audio(np.zeros_like(x))
        return clip.with_audio(sosfiltfilt(sos, x))

    def defect_size(self, params: dict[str, Any]) -> float:
        """Octaves of the speech band removed."""
        return float(params["octaves"])
