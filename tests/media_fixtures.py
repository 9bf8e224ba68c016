"""Small generated talking-head videos for tests: a mouth box whose height follows a bursty tone."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from perturb.media import run_ffmpeg


def talking_signal(seconds: float, sr: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Speech-like audio (syllable bursts with pauses) and its envelope at 25 fps."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    frames = int(round(seconds * 25))
    env_f = np.zeros(frames)
    i = 0
    while i < frames:
        length = int(rng.integers(3, 8))
        env_f[i:i + length] = np.sin(np.linspace(0, np.pi, min(length, frames - i))) * rng.uniform(0.5, 1)
        i += length + int(rng.integers(1, 6))
    env = np.interp(t, np.arange(frames) / 25.0, env_f)
    f0 = rng.uniform(100, 220)
    voice = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 8))
    noise = rng.normal(0, 1, n)
    audio = (0.3 * env * (voice / 3 + 0.2 * noise) + 0.003 * rng.normal(0, 1, n)).astype(np.float32)
    return audio, env_f


def talking_frames(env_f: np.ndarray, width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([(xx * 255 / width), (yy * 255 / height), np.full_like(xx, rng.integers(40, 200))], -1)
    base = (base * 0.5 + rng.integers(0, 60, (height, width, 3))).astype(np.uint8)
    frames = np.repeat(base[None], len(env_f), axis=0)
    cx, cy = width // 2, int(height * 0.7)
    mw = max(2, width // 5)
    for k, e in enumerate(env_f):
        mh = max(1, int(e * height * 0.2))
        frames[k, cy - mh:cy + mh, cx - mw:cx + mw] = (20, 10, 10)
    return frames


def make_video(path: Path, seconds: float = 3.0, width: int = 64, height: int = 64, sr: int = 16000,
               channels: int = 1, seed: int = 0, vcodec: list[str] | None = None,
               acodec: list[str] | None = None, audio: bool = True, video: bool = True,
               fmt: list[str] | None = None) -> Path:
    """Encode a generated clip with any codecs / container (arguments passed straight to ffmpeg)."""
    path = Path(path)
    audio_sig, env_f = talking_signal(seconds, sr, seed)
    frames = talking_frames(env_f, width, height, seed)
    raw_audio = path.with_suffix(".f32")
    stereo = np.repeat(audio_sig[:, None], channels, axis=1)
    raw_audio.write_bytes(stereo.astype(np.float32).tobytes())
    args = []
    if video:
        args += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", "25", "-i", "pipe:0"]
    if audio:
        args += ["-f", "f32le", "-ar", str(sr), "-ac", str(channels), "-i", str(raw_audio)]
    if video:
        args += vcodec or ["-c:v", "libx264", "-pix_fmt", "yuv420p"]
    if audio:
        args += acodec or ["-c:a", "aac"]
    args += (fmt or []) + ["-y", str(path)]
    run_ffmpeg(args, input_bytes=frames.tobytes() if video else None)
    raw_audio.unlink()
    return path
