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


def make_marked_video(path: Path, display: tuple[int, int] = (64, 96), seconds: float = 2.4,
                      rotation: int = 0, sar: tuple[int, int] = (1, 1)) -> Path:
    """A clip whose UPRIGHT picture (display width x height) is a tall white bar left of centre
    and a grey square in the top-left corner, with a tone soundtrack.

    rotation=90: the frames are stored turned a quarter clockwise (coded height x width) with a
    display matrix that turns them back, as phones write portrait video. sar=(n, d): stored with
    anamorphic pixels n/d wide, so the coded picture is display width * d / n wide.
    """
    path = Path(path)
    w, h = display
    coded_w = w * sar[1] // sar[0]
    bar = f"drawbox=x={w * 3 // 8}:y={h // 5}:w={w // 4}:h={h * 3 // 5}:color=white:t=fill"
    dot = f"drawbox=x={w // 16}:y={h // 24}:w={w // 8}:h={w // 8}:color=gray:t=fill"
    vf = [bar, dot]
    if rotation == 90:
        vf.append("transpose=1")  # stored clockwise; the display matrix below turns it back
    if sar != (1, 1):
        vf += [f"scale={coded_w}:{h}", f"setsar={sar[0]}/{sar[1]}"]
    tmp = path.with_name(f".{path.stem}.stored.mp4")
    run_ffmpeg(["-f", "lavfi", "-i", f"color=c=black:s={w}x{h}:d={seconds}:r=25",
                "-f", "lavfi", "-i", f"sine=f=300:d={seconds}:r=16000",
                "-vf", ",".join(vf), "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-y", str(tmp)])
    if rotation:
        run_ffmpeg(["-display_rotation", str(rotation), "-i", str(tmp), "-c", "copy", "-y", str(path)])
        tmp.unlink()
    else:
        tmp.replace(path)
    return path


def marks(frame: np.ndarray) -> dict[str, float]:
    """Where make_marked_video's marks are in an RGB frame: the white bar's height / width ratio,
    the frame's width / height ratio, and whether the grey square is above-left of the bar."""
    gray = frame.astype(np.float32).mean(-1)
    ys, xs = np.nonzero(gray > 200)
    gy, gx = np.nonzero((gray > 80) & (gray < 180))
    return {"bar_h_over_w": (ys.max() - ys.min() + 1) / (xs.max() - xs.min() + 1),
            "frame_w_over_h": frame.shape[1] / frame.shape[0],
            "dot_above_left": float(gy.mean() < ys.min() and gx.mean() < xs.min())}
