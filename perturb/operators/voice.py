"""Identity defects in the soundtrack: the right words in the wrong voice (`voice_swap`).

Two modes, chosen at sampling time and recorded in params["mode"]:

identity  {"mode": "identity", "semitones": float, "formant_ratio": float}
    Same words, same timing, different-sounding speaker. The pitch moves by `semitones` (phase
    vocoder time stretch by 2**(s/12) with torch.stft + torchaudio.functional.phase_vocoder, then an
    FFT resample back to the original sample count, so the duration is exact and every spectral
    component, formants included, is scaled by 2**(s/12)). `formant_ratio` then re-places the
    spectral envelope: the output envelope becomes the input envelope stretched by formant_ratio
    along frequency (cepstral envelopes, per STFT frame). formant_ratio == 2**(s/12) is the plain
    phase-vocoder result (formants follow pitch, "chipmunk" direction); 1.0 keeps the original
    formants (same vocal tract, different pitch). Sampling draws it in between, which is what a
    different speaker of the other sex/age tends to look like (formants move less than F0).
    The output RMS is matched to the input's.

donor     {"mode": "donor", "donor_path": str, "donor_start": float, "severity": int}
    Speech of somebody else: clip.duration seconds of the donor file from donor_start (looped if the
    donor is too short), loudness matched to the original on the voiced (active) frames.
    `severity` is only recorded: the defect is the same at every level.

Donor pool (sampling configuration only): VoiceSwap(donors=None, donor_mode_prob=0.5, exclude=()).
donors None takes the pool of the context (`with_context`: in a build, the other sources of the same
split plus the --donors files of that split). Donors listed in `exclude` or whose file stem equals
the context's source_id are never drawn (so a source is not "swapped" with itself). Without usable donors the
operator always uses identity.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..clip import Clip
from ..media import decode_audio, probe
from .base import Operator, OperatorContext, check_list, check_number, check_severity, register

# |semitones| per severity level; the sign is drawn separately.
SEMITONE_BANDS: dict[int, tuple[float, float]] = {
    1: (1.0, 2.0),
    2: (2.0, 3.5),
    3: (3.5, 5.0),
    4: (5.0, 7.0),
    5: (7.0, 10.0),
}

N_FFT = 1024  # 64 ms at 16 kHz: resolves harmonics of low (male, shifted-down) voices
HOP = 256
_LIFTER_MS = 1.8  # cepstral envelope keeps quefrencies below this (under the pitch period)
_MAX_ENV_GAIN_DB = 30.0
PEAK_LIMIT = 0.999

_DONOR_CACHE_SIZE = 32
_DONOR_AUDIO: "OrderedDict[tuple[str, int], np.ndarray]" = OrderedDict()
_DONOR_DURATION: dict[str, float] = {}


# ----------------------------------------------------------------------------------------- DSP
def _stft(x: np.ndarray) -> Any:
    """Complex STFT (torch tensor, freq x frames) with the module's Hann window and hop."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return torch.stft(t, N_FFT, HOP, window=torch.hann_window(N_FFT), center=True,
                      return_complex=True)


def _istft(spec: Any, length: int) -> np.ndarray:
    """Inverse of _stft, cut / padded to `length` samples."""
    import torch

    y = torch.istft(spec, N_FFT, HOP, window=torch.hann_window(N_FFT), center=True, length=length)
    return y.numpy().astype(np.float32)


def _cepstral_envelope(mag: np.ndarray, sr: int) -> np.ndarray:
    """Smooth spectral envelope per frame (freq, frames) from low-quefrency cepstrum."""
    log_mag = np.log(np.maximum(mag, 1e-8))
    cep = np.fft.irfft(log_mag, axis=0)
    n_keep = max(2, int(round(_LIFTER_MS * sr / 1000.0)))
    lifter = np.zeros(cep.shape[0])
    lifter[:n_keep] = 1.0
    lifter[-(n_keep - 1):] = 1.0
    return np.exp(np.fft.rfft(cep * lifter[:, None], axis=0).real)


def pitch_shift(audio: np.ndarray, sr: int, semitones: float,
                formant_ratio: float | None = None) -> np.ndarray:
    """Shift pitch by `semitones` keeping the sample count; optionally re-place formants.

    formant_ratio None (or equal to 2**(semitones/12)) leaves the formants where the plain phase
    vocoder puts them (moved with the pitch).
    """
    import torch
    import torchaudio.functional as AF
    from scipy.signal import resample

    x = np.asarray(audio, dtype=np.float32)
    n = len(x)
    if n < N_FFT or semitones == 0.0 and formant_ratio in (None, 1.0):
        return x.copy()
    ratio = 2.0 ** (float(semitones) / 12.0)
    spec = _stft(x)
    phase_advance = torch.linspace(0, np.pi * HOP, spec.shape[-2])[..., None]
    stretched = AF.phase_vocoder(spec, rate=1.0 / ratio, phase_advance=phase_advance)
    m = max(1, int(round(n * ratio)))
    y = _istft(stretched, m)
    y = resample(y.astype(np.float64), n).astype(np.float32)  # ideal low-pass, no aliasing

    if formant_ratio is not None and abs(float(formant_ratio) - ratio) > 1e-6:
        sx, sy = _stft(x).numpy(), _stft(y).numpy()
        env_x = _cepstral_envelope(np.abs(sx), sr)
        env_y = _cepstral_envelope(np.abs(sy), sr)
        bins = np.arange(env_x.shape[0], dtype=np.float64)
        src_bins = bins / float(formant_ratio)  # target(f) = env_x(f / formant_ratio)
        target = np.empty_like(env_x)
        for j in range(env_x.shape[1]):
            target[:, j] = np.interp(src_bins, bins, env_x[:, j])
        lim = 10.0 ** (_MAX_ENV_GAIN_DB / 20.0)
        gain = np.clip(target / np.maximum(env_y, 1e-8), 1.0 / lim, lim)
        y = _istft(torch.from_numpy((sy * gain).astype(np.complex64)), n)
    return y


def rms(x: np.ndarray) -> float:
    """Root mean square over the whole signal (0 for an empty one)."""
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def active_rms(x: np.ndarray, sr: int, frame_ms: float = 20.0, floor_db: float = -35.0) -> float:
    """RMS over the active (voiced / non-silent) 20 ms frames: within floor_db of the loudest one."""
    hop = max(1, int(sr * frame_ms / 1000.0))
    n_frames = len(x) // hop
    if n_frames == 0:
        return rms(x)
    fr = np.asarray(x[: n_frames * hop], dtype=np.float64).reshape(n_frames, hop)
    e = np.mean(fr * fr, axis=1)
    thresh = max(e.max() * 10.0 ** (floor_db / 10.0), 1e-10)
    act = e[e >= thresh]
    return float(np.sqrt(act.mean())) if len(act) else 0.0


def peak_limit(y: np.ndarray) -> np.ndarray:
    """y as float32, scaled down only when its peak would clip (above PEAK_LIMIT): the writer's AAC
    would clip it otherwise."""
    peak = float(np.max(np.abs(y))) if len(y) else 0.0
    return (y * (PEAK_LIMIT / peak) if peak > PEAK_LIMIT else y).astype(np.float32)


def _match_level(y: np.ndarray, target_level: float,
                 level_fn: Callable[[np.ndarray], float]) -> np.ndarray:
    """Scale y so level_fn(y) == target_level, then scale down only if the peak would clip."""
    cur = level_fn(y)
    if cur > 0 and target_level > 0:
        y = y * (target_level / cur)
    return peak_limit(y)


# --------------------------------------------------------------------------------------- donors
def donor_audio(path: str, sr: int) -> np.ndarray:
    """Whole donor decoded at `sr` (bounded LRU cache: caching never changes results)."""
    key = (str(path), int(sr))
    if key in _DONOR_AUDIO:
        _DONOR_AUDIO.move_to_end(key)
        return _DONOR_AUDIO[key]
    audio = decode_audio(path, sr=sr)
    _DONOR_AUDIO[key] = audio
    while len(_DONOR_AUDIO) > _DONOR_CACHE_SIZE:
        _DONOR_AUDIO.popitem(last=False)
    return audio


def donor_duration(path: str) -> float:
    """Donor length in seconds, probed once per path."""
    path = str(path)
    if path not in _DONOR_DURATION:
        info = probe(path)
        if not info.has_audio:
            raise ValueError(f"donor has no audio stream: {path}")
        _DONOR_DURATION[path] = float(info.duration or 0.0)
    return _DONOR_DURATION[path]


def donor_segment(donor: np.ndarray, sr: int, start_s: float, n: int) -> np.ndarray:
    """n samples of donor from start_s, wrapping around (looping) when the donor is too short."""
    if len(donor) == 0:
        raise ValueError("empty donor audio")
    start = int(round(start_s * sr)) % len(donor)
    idx = (start + np.arange(n)) % len(donor)
    return donor[idx].astype(np.float32)


# ------------------------------------------------------------------------------------- operator
class DrawsFromDonors:
    """For operators with a `donors` keyword (None: the context's donor pool) and optionally `exclude`:
    with_context binds the pool and the source; usable_donors leaves out the excluded files and those
    named like the source (its own recording is never a donor)."""

    donors: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    source_id: str | None = None  # set by with_context

    def with_context(self, context: OperatorContext):
        """A copy that draws from the context's donor pool (unless `donors` was given) and knows the
        context's source."""
        bound = copy.copy(self)
        bound.source_id = context.source_id or None
        if self.donors is None:
            bound.donors = tuple(str(d) for d in context.donor_pool)
        return bound

    def usable_donors(self) -> list[str]:
        """Donors minus the excluded paths and those named like the current source."""
        exclude = set(self.exclude)
        own = None if self.source_id is None else str(self.source_id)
        return [d for d in self.donors or () if d not in exclude and Path(d).stem != own]


@register("voice_swap")
class VoiceSwap(DrawsFromDonors, Operator):
    """Different voice, same picture: pitch/formant "identity" shift or a donor speaker.

    Keywords (sampling only):
        donors: donor files to draw from; None (default) takes the context's donor pool.
        donor_mode_prob: probability of a donor voice when donors are usable. Default 0.5.
        exclude: donor files never drawn. Default ().
        clip_duration: seconds of donor to leave after donor_start when the donor is long enough.
            Default 5.0.
        formant_follow: (lo, hi) within [0, 1]: formant_ratio = 2**(a * semitones / 12), a ~ U(lo, hi).
            Default (0.3, 1.0).
        p: probability of applying. Default 1.0.
    """

    modifies = "audio"

    def __init__(self, *, donors: Sequence[str] | None = None, donor_mode_prob: float = 0.5,
                 exclude: Sequence[str] = (), clip_duration: float = 5.0,
                 formant_follow: Sequence[float] = (0.3, 1.0), p: float = 1.0) -> None:
        super().__init__(p=p)
        self.donors = None if donors is None else tuple(map(str, check_list(self.name, "donors", donors)))
        self.exclude = tuple(map(str, check_list(self.name, "exclude", exclude)))
        self.donor_mode_prob = check_number(self.name, "donor_mode_prob", donor_mode_prob, 0.0, 1.0)
        self.clip_duration = check_number(self.name, "clip_duration", clip_duration, 0.0, lo_open=True)
        lo, hi = check_list(self.name, "formant_follow", formant_follow, length=2)
        lo = check_number(self.name, "formant_follow[0]", lo, 0.0, 1.0)
        self.formant_follow = (lo, check_number(self.name, "formant_follow[1]", hi, lo, 1.0))

    def sample_params(self, rng: np.random.Generator, severity: int) -> dict[str, Any]:
        """Donor mode with probability donor_mode_prob when donors are usable, else identity."""
        severity = check_severity(severity)
        donors = self.usable_donors()
        use_donor = rng.random() < self.donor_mode_prob
        if donors and use_donor:
            path = donors[int(rng.integers(len(donors)))]
            dur = donor_duration(path)
            room = max(0.0, dur - self.clip_duration)
            return {"mode": "donor", "donor_path": path,
                    "donor_start": round(float(rng.uniform(0.0, room)) if room > 0 else 0.0, 3),
                    "severity": severity}
        lo, hi = SEMITONE_BANDS[severity]
        semis = float(rng.uniform(lo, hi)) * (1.0 if rng.random() < 0.5 else -1.0)
        f_lo, f_hi = self.formant_follow
        follow = float(rng.uniform(f_lo, f_hi))
        return {"mode": "identity", "semitones": round(semis, 3),
                "formant_ratio": round(2.0 ** (follow * semis / 12.0), 4)}

    def apply(self, clip: Clip, params: dict[str, Any]) -> Clip:
        """Replace the voice; the duration is kept exactly and the loudness matched."""
        x = np.asarray(clip.audio, dtype=np.float32)
        mode = params.get("mode", "identity")
        if mode == "identity":
            fr = params.get("formant_ratio")
            y = pitch_shift(x, clip.sr, float(params["semitones"]),
                            None if fr is None else float(fr))
            return clip.with_audio(_match_level(y, rms(x), rms))
        if mode == "donor":
            donor = donor_audio(str(params["donor_path"]), clip.sr)
            y = donor_segment(donor, clip.sr, float(params["donor_start"]), len(x))
            target = active_rms(x, clip.sr)
            if target <= 0:  # silent original: keep the donor's own level
                return clip.with_audio(_match_level(y, 0.0, rms))
            return clip.with_audio(_match_level(y, target, lambda a: active_rms(a, clip.sr)))
        raise ValueError(f"voice_swap: unknown mode {mode!r}")

    def defect_size(self, params: dict[str, Any]) -> float:
        """|semitones| in identity mode, 1.0 for a donor voice."""
        if params.get("mode", "identity") == "donor":
            return 1.0
        return abs(float(params["semitones"]))
