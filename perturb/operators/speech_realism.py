"""Synthetic speech in place of the real voice (dimension `speech_realism`): audio-only operators.

  tts_replace      the window's words (offline ASR of the source) spoken again by a TTS engine, fitted
                   to where they were spoken (same span, same loudness); severity = how much of the
                   window is synthetic (one word ... every word)
  vocoder_resynth  the real voice passed through a crude vocoder (Griffin-Lim phase from the mel
                   spectrogram, or an LPC envelope over a synthetic excitation), so the judge has
                   synthetic speech that no TTS engine made

Both only change the soundtrack (`modifies = "audio"`): the writer stream-copies the picture. The
engines and the ASR are perturb/speech.py; an engine that is not installed is left out with one line.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import numpy as np

from .. import speech
from ..clip import Clip
from .base import ConfigError, Operator, OperatorContext, check_list, check_severity, register
from .voice import active_rms, peak_limit

# share of the window's words replaced per severity level (level 1: one word; level 5: all of them)
WORD_SHARE = {1: 0.0, 2: 0.25, 3: 0.5, 4: 0.75, 5: 1.0}
FADE_S = 0.01                # cross-fade at each span edge (no click where the voices meet)
MIN_SPAN_S = 0.12            # a span shorter than this (an ASR slip) is widened around its centre
FALLBACK_TEXT = "well you know what I mean"  # a window without a transcribed word (and a source without any)
_MAX_SEED = 2**31 - 1


def _active_span(x: np.ndarray, sr: int, floor_db: float = -35.0) -> tuple[float, float]:
    """First and last 20 ms frame within floor_db of the loudest one (the whole clip when silent)."""
    hop = max(1, sr // 50)
    n = len(x) // hop
    if n == 0:
        return 0.0, len(x) / sr
    e = np.mean(np.asarray(x[: n * hop], np.float64).reshape(n, hop) ** 2, axis=1)
    on = np.flatnonzero(e >= max(e.max() * 10.0 ** (floor_db / 10.0), 1e-10))
    return (float(on[0] * hop / sr), float((on[-1] + 1) * hop / sr)) if len(on) else (0.0, len(x) / sr)


def _trim(y: np.ndarray, sr: int) -> np.ndarray:
    a, b = _active_span(y, sr, floor_db=-40.0)
    return y[int(a * sr): int(b * sr)]


def fit_speech(engine: str, voice: str, text: str, n: int, seed: int, sr: int = speech.SR) -> np.ndarray:
    """`text` from the engine, n samples long: leading / trailing silence cut, the engine's own speaking
    rate set so the speech lasts about n samples, then resampled to exactly n (a residual of a few %)."""
    from scipy.signal import resample

    y = _trim(speech.synthesize(engine, voice, text, 1.0, seed), sr)
    if len(y) and n:
        speed = float(np.clip(len(y) / n, 0.5, 2.5))
        if abs(speed - 1.0) > 0.03:
            y = _trim(speech.synthesize(engine, voice, text, speed, seed), sr)
    if len(y) < 2 or n < 2:
        return np.zeros(n, np.float32)
    return resample(y.astype(np.float64), n).astype(np.float32)


def splice(x: np.ndarray, y: np.ndarray, start: int, sr: int) -> np.ndarray:
    """x with x[start:start+len(y)] replaced by y, cross-faded over FADE_S at both edges."""
    out = np.asarray(x, np.float32).copy()
    n = min(len(y), len(out) - start)
    w = np.ones(n, np.float32)
    f = min(int(FADE_S * sr), n // 2)
    if f:
        ramp = np.linspace(0.0, 1.0, f, dtype=np.float32)
        w[:f], w[n - f:] = ramp, ramp[::-1]
    out[start:start + n] = w * y[:n] + (1.0 - w) * out[start:start + n]
    return out


@register("tts_replace")
class TtsReplace(Operator):
    """The window's speech replaced by synthetic speech of the same words, fitted to the window.

    Words and their times come from Whisper tiny.en of the whole source (perturb/speech.py, cached by
    content hash); a run of consecutive words (one word at severity 1, 25 / 50 / 75 % of them at 2-4,
    all at 5) is spoken again by an engine, cut to its speech, set to the engine's speaking rate that
    fills the run's span, resampled to the span exactly and matched to the original span's active
    level. params: {"engine", "voice", "text", "spans": [[start_s, end_s]], "seed", "window_s"}.

    Keywords (sampling only):
        engines: TTS engines drawn from (perturb/speech.py ENGINES); the ones not installed are left
            out with one line. Default all of them.
        p: probability of applying. Default 1.0.
    """

    modifies = "audio"

    def __init__(self, *, engines: Sequence[str] = speech.ENGINES, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.engines = tuple(check_list(self.name, "engines", engines, min_length=1))
        bad = [e for e in self.engines if e not in speech.ENGINES]
        if bad:
            raise ConfigError(f"{self.name}: unknown engine {bad[0]!r}; valid: {', '.join(speech.ENGINES)}")
        self.words: tuple[tuple[str, float, float], ...] | None = None  # set by with_context
        self.window_s = 0.0
        self.active = (0.0, 0.0)
        self.nearby_text = FALLBACK_TEXT

    def with_context(self, context: OperatorContext) -> "TtsReplace":
        """A copy knowing the window's words (window seconds) and its active span."""
        bound = copy.copy(self)
        clip = context.clip
        if clip is None:
            return bound
        bound.window_s = clip.duration
        bound.active = _active_span(clip.audio, clip.sr)
        window = clip.meta.get("window")
        try:
            if context.source_path and window:
                from ..media import decode_audio

                offset = float(window[0])
                all_words = speech.source_words(context.source_path, decode_audio)
            else:
                offset, all_words = 0.0, speech.transcribe(clip.audio, clip.sr)
        except speech.EngineMissing as err:
            raise ConfigError(f"{self.name}: {err}") from None
        words = [(w["word"], w["start"] - offset, w["end"] - offset) for w in all_words]
        bound.words = tuple((t, max(0.0, a), min(bound.window_s, b)) for t, a, b in words
                            if a >= -0.05 and b <= bound.window_s + 0.05 and b > a)
        if all_words:  # the source's words nearest the window stand in when it has none of its own
            mid = bound.window_s / 2
            near = sorted(words, key=lambda w: abs((w[1] + w[2]) / 2 - mid))[:5]
            bound.nearby_text = " ".join(w[0] for w in sorted(near, key=lambda w: w[1]))
        return bound

    def sample_params(self, rng: np.random.Generator, severity: int) -> dict[str, Any]:
        """An installed engine and voice, a noise seed, and a run of consecutive words."""
        severity = check_severity(severity)
        engines = speech.available_engines(self.engines)
        if not engines:
            raise ValueError(f"{self.name}: none of the TTS engines {', '.join(self.engines)} is installed "
                             f"(pip install -e '.[speech]')")
        engine = engines[int(rng.integers(len(engines)))]
        voices = speech.VOICES[engine]
        voice = voices[int(rng.integers(len(voices)))]
        words = list(self.words or ())
        if not words:  # no word in the window: the nearby words over five equal slots of its active part
            a, b = self.active if self.active[1] > self.active[0] else (0.0, self.window_s or 1.0)
            tokens = self.nearby_text.split()
            edges = np.linspace(a, b, len(tokens) + 1)
            words = [(t, float(edges[i]), float(edges[i + 1])) for i, t in enumerate(tokens)]
        n = len(words)
        k = n if severity == 5 else max(1, int(round(WORD_SHARE[severity] * n)))
        i = int(rng.integers(n - k + 1))
        start, end = words[i][1], words[i + k - 1][2]
        if end - start < MIN_SPAN_S:
            mid = (start + end) / 2
            start, end = max(0.0, mid - MIN_SPAN_S / 2), mid + MIN_SPAN_S / 2
        window = self.window_s or end
        return {"engine": engine, "voice": voice, "text": " ".join(w[0] for w in words[i:i + k]),
                "spans": [[round(start, 3), round(min(end, window), 3)]],
                "seed": int(rng.integers(_MAX_SEED)), "window_s": round(window, 3)}

    def apply(self, clip: Clip, params: dict[str, Any]) -> Clip:
        """Each span's audio replaced by the fitted synthetic speech at the span's active level."""
        x = np.asarray(clip.audio, dtype=np.float32)
        out = x
        try:
            for start_s, end_s in params["spans"]:
                a = int(round(float(start_s) * clip.sr))
                b = min(len(x), int(round(float(end_s) * clip.sr)))
                if b - a < 2:
                    continue
                y = fit_speech(params["engine"], params["voice"], params["text"], b - a, int(params["seed"]), clip.sr)
                level, own = active_rms(x[a:b], clip.sr), active_rms(y, clip.sr)
                if own > 0:
                    y = y * ((level if level > 0 else 0.05) / own)
                out = splice(out, y, a, clip.sr)
        except speech.EngineMissing as err:
            raise ValueError(f"{self.name}: cannot replay, {err}") from None
        return clip.with_audio(peak_limit(out))

    def defect_size(self, params: dict[str, Any]) -> float:
        """Share of the window that is synthetic (seconds of spans / window seconds)."""
        window = float(params.get("window_s") or 1.0)
        return max(1e-3, sum(float(b) - float(a) for a, b in params["spans"]) / window)


# ------------------------------------------------------------------------------------ vocoders
N_FFT, HOP = 512, 128
# per severity: (mel bands, Griffin-Lim iterations) and (LPC order, pitch-track smoothing) - fewer
# bands / iterations and a lower order sound more synthetic
GL_LEVELS = {1: (80, 32), 2: (64, 24), 3: (48, 16), 4: (32, 8), 5: (24, 4)}
LPC_ORDERS = {1: 24, 2: 20, 3: 16, 4: 12, 5: 8}
VOCODERS = ("griffin_lim", "lpc")


def griffin_lim_resynth(x: np.ndarray, sr: int, n_mels: int, n_iter: int) -> np.ndarray:
    """Magnitude mel spectrogram -> linear (pseudo-inverse of the filterbank, clamped at 0) ->
    Griffin-Lim phase from a fixed start (so apply is pure)."""
    import torch
    import torchaudio.functional as AF
    import torchaudio.transforms as T

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    spec = T.Spectrogram(n_fft=N_FFT, hop_length=HOP, power=1.0)(t)              # (freqs, frames)
    fb = AF.melscale_fbanks(N_FFT // 2 + 1, 0.0, sr / 2, n_mels, sr)              # (freqs, mels)
    lin = (torch.linalg.pinv(fb.T) @ (fb.T @ spec)).clamp(min=0.0)
    gl = T.GriffinLim(n_fft=N_FFT, hop_length=HOP, n_iter=n_iter, power=1.0, rand_init=False)
    y = gl(lin).numpy().astype(np.float32)
    return np.pad(y, (0, max(0, len(x) - len(y))))[: len(x)]


def lpc_resynth(x: np.ndarray, sr: int, order: int) -> np.ndarray:
    """Per 32 ms frame (hop 8 ms): LPC envelope of the real voice over a pulse train at the frame's
    autocorrelation pitch (voiced) or white noise of a fixed seed (unvoiced); overlap-add."""
    from scipy.linalg import solve_toeplitz
    from scipy.signal import lfilter

    x = np.asarray(x, np.float64)
    win, hop = int(0.032 * sr), int(0.008 * sr)
    w = np.hanning(win)
    out = np.zeros(len(x) + win)
    noise = np.random.default_rng(0).standard_normal(len(x) + win)
    phase = 0.0
    for s in range(0, max(1, len(x) - win + 1), hop):
        fr = x[s:s + win] * w
        r = np.correlate(fr, fr, "full")[win - 1:]
        if r[0] <= 1e-9:
            continue
        a = solve_toeplitz(r[:order] + 1e-9 * r[0] * np.eye(order)[0], r[1:order + 1])
        gain = np.sqrt(max(r[0] - np.dot(a, r[1:order + 1]), 1e-12))
        lo, hi = int(sr / 400), int(sr / 70)
        lag = lo + int(np.argmax(r[lo:hi]))
        if r[lag] > 0.35 * r[0]:
            exc = np.zeros(win)
            pos = np.arange(-phase, win, lag)
            pos = pos[pos >= 0].astype(int)
            exc[pos] = np.sqrt(lag)
            phase = (pos[-1] + lag - hop) if len(pos) else max(0.0, phase - hop)
        else:
            exc = noise[s:s + win]
        y = lfilter([1.0], np.concatenate([[1.0], -a]), exc) * gain / np.sqrt(win)
        out[s:s + win] += y * w
    return out[: len(x)].astype(np.float32)


@register("vocoder_resynth")
class VocoderResynth(Operator):
    """The same real voice through a crude vocoder: Griffin-Lim from the mel spectrogram, or LPC.

    params: {"vocoder": "griffin_lim", "n_mels", "n_iter"} or {"vocoder": "lpc", "order"}; plus
    "severity". Fewer mel bands / iterations and lower LPC orders as severity rises; the output's
    active level is matched to the input's.

    Keywords (sampling only):
        vocoders: vocoders drawn from, among griffin_lim and lpc. Default both.
        p: probability of applying. Default 1.0.
    """

    modifies = "audio"

    def __init__(self, *, vocoders: Sequence[str] = VOCODERS, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.vocoders = tuple(check_list(self.name, "vocoders", vocoders, min_length=1))
        bad = [v for v in self.vocoders if v not in VOCODERS]
        if bad:
            raise ConfigError(f"{self.name}: unknown vocoder {bad[0]!r}; valid: {', '.join(VOCODERS)}")

    def sample_params(self, rng: np.random.Generator, severity: int) -> dict[str, Any]:
        severity = check_severity(severity)
        vocoder = self.vocoders[int(rng.integers(len(self.vocoders)))]
        if vocoder == "griffin_lim":
            n_mels, n_iter = GL_LEVELS[severity]
            return {"vocoder": vocoder, "n_mels": n_mels, "n_iter": n_iter, "severity": severity}
        return {"vocoder": vocoder, "order": LPC_ORDERS[severity], "severity": severity}

    def apply(self, clip: Clip, params: dict[str, Any]) -> Clip:
        x = np.asarray(clip.audio, dtype=np.float32)
        if params["vocoder"] == "griffin_lim":
            y = griffin_lim_resynth(x, clip.sr, int(params["n_mels"]), int(params["n_iter"]))
        elif params["vocoder"] == "lpc":
            y = lpc_resynth(x, clip.sr, int(params["order"]))
        else:
            raise ValueError(f"{self.name}: unknown vocoder {params['vocoder']!r}")
        level, own = active_rms(x, clip.sr), active_rms(y, clip.sr)
        return clip.with_audio(peak_limit(y * (level / own) if own > 0 and level > 0 else y))

    def defect_size(self, params: dict[str, Any]) -> float:
        """The severity level the params were drawn at (the vocoder's coarseness)."""
        return float(params["severity"])
