"""Media I/O through ffmpeg, always with argument lists.

The ffmpeg binary is the static one shipped by the imageio-ffmpeg wheel, so a fresh machine needs
nothing from apt. ffmpeg-python, pydub and moviepy are pointed at the same binary on import.

Canonical form (what every pair is made of): constant 25 fps, H.264 (yuv420p, even sizes, longest
side capped), AAC audio at 16 kHz mono. Analysis audio is float32 mono at 16 kHz.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

# file extensions searched for videos when a folder is given (perturb's sources, eval's filter, train's pretraining)
VIDEO_EXTS = frozenset({".mp4", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".m4v", ".flv", ".ts",
                        ".wmv", ".3gp"})

CANONICAL_FPS = 25
CANONICAL_SR = 16000
CANONICAL_MAX_SIDE = 512


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary (env AVBENCH_FFMPEG overrides imageio-ffmpeg's static build)."""
    exe = os.environ.get("AVBENCH_FFMPEG")
    if exe:
        return exe
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _point_libraries_at_ffmpeg() -> None:
    """pydub and moviepy look for ffmpeg on PATH / their own env var; give them ours.

    pydub searches PATH for a program named `ffmpeg` when it is imported, so a symlink of that name
    goes into a private folder put first on PATH.
    """
    exe = ffmpeg_exe()
    os.environ.setdefault("IMAGEIO_FFMPEG_EXE", exe)
    bin_dir = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "avbench" / "bin"
    link = bin_dir / "ffmpeg"
    try:
        if not (link.is_symlink() and os.readlink(link) == exe):
            bin_dir.mkdir(parents=True, exist_ok=True)
            tmp = bin_dir / f".ffmpeg.{os.getpid()}"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(exe)
            os.replace(tmp, link)
        if str(bin_dir) not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    except OSError:  # read-only home: pydub then only warns, we never call it through PATH
        pass
    try:  # pydub is optional at import time: only set it when present
        from pydub import AudioSegment

        AudioSegment.converter = exe
    except ImportError:
        pass


_point_libraries_at_ffmpeg()


class MediaError(RuntimeError):
    """A file ffmpeg cannot read or write; the message is a one-line reason for rejects.jsonl."""


# a write failure of the machine (disk full, quota, read-only): ffmpeg's last line may only say
# "Nothing was written into output file", so the line naming the cause is the reason given
_MACHINE_FAULTS = tuple(os.strerror(e) for e in (errno.ENOSPC, errno.EDQUOT, errno.EROFS))


def ffmpeg_failure(stderr: str, returncode: int) -> MediaError:
    """The MediaError of a failed ffmpeg run: the line naming a machine fault if any, else the last line."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    named = [ln for ln in lines if any(fault in ln for fault in _MACHINE_FAULTS)]
    return MediaError(named[-1] if named else lines[-1] if lines else f"ffmpeg exited with {returncode}")


def run_ffmpeg(args: list[str], input_bytes: bytes | None = None) -> bytes:
    """Run ffmpeg with an argument list; return stdout, raise MediaError with stderr's last line."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", *args]
    proc = subprocess.run(cmd, input=input_bytes, capture_output=True)
    if proc.returncode != 0:
        raise ffmpeg_failure(proc.stderr.decode("utf-8", "replace"), proc.returncode)
    return proc.stdout


@dataclass
class StreamInfo:
    """What a probe learned about a file (ffmpeg 9 static has no ffprobe: we parse `ffmpeg -i`)."""

    path: str
    duration: float | None
    has_video: bool
    has_audio: bool
    width: int | None = None   # DISPLAY size: rotation and sample aspect ratio applied (what ffmpeg
    height: int | None = None  # outputs upright once scaled to it; see display_size)
    fps: float | None = None
    video_codec: str | None = None
    audio_codec: str | None = None
    sample_rate: int | None = None
    channels: int | None = None
    container: str | None = None
    coded_width: int | None = None   # the size the frames are stored at
    coded_height: int | None = None
    rotation: int = 0                # display rotation, degrees counter-clockwise (display matrix / rotate tag)
    sar: float = 1.0                 # sample (pixel) aspect ratio: anamorphic sources are != 1
    raw: dict[str, Any] = field(default_factory=dict)


def display_size(coded_width: int, coded_height: int, sar: float = 1.0, rotation: int = 0) -> tuple[int, int]:
    """The upright, square-pixel size of a picture: (width, height) after SAR and rotation.

    An anamorphic picture is stretched along the side its pixels are long in (never shrunk), and
    a quarter-turn swaps the sides, as ffmpeg's autorotation (on by default) does to the frames.
    """
    w, h = float(coded_width), float(coded_height)
    if sar > 1:
        w *= sar
    elif 0 < sar < 1:
        h /= sar
    if rotation % 180 == 90:
        w, h = h, w
    return max(1, int(round(w))), max(1, int(round(h)))


def _rotation(degrees: float) -> int:
    """Degrees counter-clockwise -> 0 / 90 / 180 / 270, or the rounded angle when it is no quarter-turn."""
    quarter = round(degrees / 90.0) * 90
    return int(quarter % 360) if abs(degrees - quarter) < 1.0 else int(round(degrees)) % 360


def probe(path: str | Path) -> StreamInfo:
    """Probe a file by parsing `ffmpeg -i` (the static build ships no ffprobe).

    width / height are the DISPLAY size: the display matrix (phone footage stores portrait video
    as landscape frames plus a rotation) and the sample aspect ratio are applied; the stored size
    is coded_width / coded_height.
    """
    path = _existing(path)
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", path], capture_output=True)
    return _parse_input_dump(path, proc.stderr.decode("utf-8", "replace"))


def probe_and_decode_audio(path: str | Path, sr: int = CANONICAL_SR, start: float = 0.0,
                           duration: float | None = None) -> tuple[StreamInfo, np.ndarray | None]:
    """(probe(path), decode_audio(path, sr, start, duration), or None without an audio stream) from
    ONE ffmpeg run: the decode prints the same input dump a probe parses, which saves a process and a
    demux per file (scoring many short clips, caching many shard sides)."""
    path = _existing(path)
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats",
                           *_audio_decode_args(path, sr, start, duration, optional=True)], capture_output=True)
    text = proc.stderr.decode("utf-8", "replace")
    info = _parse_input_dump(path, text.split("\nStream mapping:")[0].split("\nOutput #0")[0])
    if not info.has_audio:
        return info, None
    if proc.returncode != 0:
        raise ffmpeg_failure(text, proc.returncode)
    return info, np.frombuffer(proc.stdout, dtype=np.float32).copy()


def _existing(path: str | Path) -> str:
    path = str(path)
    if not Path(path).is_file():
        raise MediaError(f"no such file: {path}")
    if Path(path).stat().st_size == 0:
        raise MediaError("empty file (0 bytes)")
    return path


def _parse_input_dump(path: str, text: str) -> StreamInfo:
    """StreamInfo from the input dump ffmpeg prints to stderr (`ffmpeg -i FILE`)."""
    import re

    if "Invalid data found" in text or "Stream #" not in text:
        last = [ln for ln in text.splitlines() if ln.strip()]
        raise MediaError(f"unreadable media: {last[-1].strip() if last else 'no streams'}")
    info = StreamInfo(path=path, duration=None, has_video=False, has_audio=False)
    m = re.search(r"Input #0, ([^,\s]+)", text)
    info.container = m.group(1) if m else None
    m = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", text)
    if m:
        info.duration = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    in_video = False  # inside the block (metadata, side data) of the video stream we use
    for line in text.splitlines():
        if "Stream #" not in line:
            if in_video:
                m = re.search(r"(?i)display ?matrix: rotation of (-?[\d.]+) degrees", line)
                if m:
                    info.rotation = _rotation(float(m.group(1)))
                m = re.match(r"\s*rotate\s*: (-?\d+)", line)  # older muxers: a clockwise tag
                if m and not info.rotation:
                    info.rotation = _rotation(-float(m.group(1)))
            continue
        in_video = False
        if "Video:" in line and not info.has_video and "attached pic" not in line:
            info.has_video = in_video = True
            m = re.search(r"Video: (\w+)", line)
            info.video_codec = m.group(1) if m else None
            m = re.search(r", (\d{2,5})x(\d{2,5})", line)
            if m:
                info.coded_width, info.coded_height = int(m.group(1)), int(m.group(2))
            m = re.search(r"\[SAR (\d+):(\d+) DAR", line)
            if m and int(m.group(1)) and int(m.group(2)):
                info.sar = int(m.group(1)) / int(m.group(2))
            m = re.search(r"([\d.]+) (?:fps|tbr)", line)
            if m:
                info.fps = float(m.group(1))
        elif "Audio:" in line and not info.has_audio:
            info.has_audio = True
            m = re.search(r"Audio: (\w+)", line)
            info.audio_codec = m.group(1) if m else None
            m = re.search(r"(\d+) Hz", line)
            info.sample_rate = int(m.group(1)) if m else None
            if "mono" in line:
                info.channels = 1
            elif "stereo" in line:
                info.channels = 2
            else:
                m = re.search(r"(\d+) channels", line)
                info.channels = int(m.group(1)) if m else None
    if info.coded_width and info.coded_height:
        info.width, info.height = display_size(info.coded_width, info.coded_height, info.sar, info.rotation)
    return info


def decode_audio(path: str | Path, sr: int = CANONICAL_SR, start: float = 0.0,
                 duration: float | None = None) -> np.ndarray:
    """Decode (a span of) the first audio stream to float32 mono at `sr` (downmixed)."""
    return np.frombuffer(run_ffmpeg(_audio_decode_args(path, sr, start, duration)), dtype=np.float32).copy()


def _audio_decode_args(path: str | Path, sr: int, start: float, duration: float | None,
                       optional: bool = False) -> list[str]:
    """ffmpeg arguments that write (a span of) the first audio stream to stdout as float32 mono at sr;
    optional: a file without one is no error (ffmpeg then writes nothing)."""
    seek = ["-ss", f"{start:.6f}"] if start else []
    span = ["-t", f"{duration:.6f}"] if duration is not None else []
    return [*seek, "-i", str(path), *span, "-map", "0:a:0?" if optional else "0:a:0", "-ac", "1", "-ar", str(sr),
            "-f", "f32le", "-acodec", "pcm_f32le", "-"]


def decode_frames(path: str | Path, fps: float | None = None,
                  size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode the first video stream to RGB uint8 frames, shape (T, H, W, 3), upright.

    `size` is (width, height); without it the stream's display size is kept (ffmpeg applies the
    rotation itself; anamorphic pixels are scaled square).
    """
    info = probe(path)
    if not info.has_video:
        raise MediaError(f"no video stream: {path}")
    w, h = size if size else (info.width, info.height)
    vf = []
    if fps:
        vf.append(f"fps={fps}")
    if size or info.sar != 1.0:
        vf.append(f"scale={w}:{h}")
    args = ["-i", str(path), "-map", "0:v:0"]
    if vf:
        args += ["-vf", ",".join(vf)]
    args += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    raw = run_ffmpeg(args)
    frame_bytes = w * h * 3
    n = len(raw) // frame_bytes
    return np.frombuffer(raw[: n * frame_bytes], dtype=np.uint8).reshape(n, h, w, 3).copy()


class FrameStream:
    """The first video stream (or `duration` s of it from `start`) decoded by one ffmpeg process into
    RGB uint8 frames (height, width, 3) at constant `fps`, read straight into the caller's arrays.

    One process for the whole file (no per-window seek and re-decode from the previous keyframe);
    ffmpeg decodes ahead on its own while the caller works. read_into fills an array the caller
    keeps (a window buffer reused window after window), so a frame is copied once, by the pipe.
    Raises MediaError when ffmpeg fails; close() (or leaving the `with`) stops ffmpeg early.
    """

    def __init__(self, path: str | Path, width: int, height: int, fps: float, scale_flags: str = "area",
                 start: float | None = None, duration: float | None = None) -> None:
        import tempfile

        seek = ["-ss", f"{start:.6f}"] if start else []
        span = ["-t", f"{duration:.6f}"] if duration is not None else []
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", *seek, "-i", str(path), *span,
               "-map", "0:v:0", "-vf", f"fps={fps},scale={width}:{height}:flags={scale_flags}",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
        self.frame_shape = (height, width, 3)
        self._frame_bytes = height * width * 3
        self._err = tempfile.TemporaryFile()  # a file, not a pipe: a chatty ffmpeg cannot block on it
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._err)
        self._ended = False

    def read_into(self, out: np.ndarray) -> int:
        """Fill out[0], out[1], ... (uint8, C-contiguous, shape (n, *frame_shape)) with the next frames;
        returns how many were filled: fewer than n only at the end of the stream."""
        if out.shape[1:] != self.frame_shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
            raise ValueError(f"read_into needs a C-contiguous uint8 array of shape (n, {self.frame_shape})")
        if not len(out):  # a full window buffer (memoryview cannot cast an empty array)
            return 0
        view, filled = memoryview(out).cast("B"), 0
        while filled < len(view) and not self._ended:
            got = self._proc.stdout.readinto(view[filled:])
            if not got:
                self._end()
            filled += got or 0
        return filled // self._frame_bytes

    def _end(self) -> None:
        self._ended = True
        self._proc.stdout.close()
        if self._proc.wait() != 0:
            self._err.seek(0)
            raise ffmpeg_failure(self._err.read().decode("utf-8", "replace"), self._proc.returncode)

    def close(self) -> None:
        """Stop ffmpeg if it is still decoding (the caller needs no more frames)."""
        if not self._proc.stdout.closed:
            self._proc.stdout.close()
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._err.close()

    def __enter__(self) -> "FrameStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DecodeAhead:
    """A file's probe, soundtrack (at `sr`) and first `frames` frames (at `fps`, the longest side at
    most `max_side`) decoded in a background thread from the moment it is made; then read like a
    FrameStream (read_into, frame_shape, close), the frames decoded ahead first.

    Why: a command that scores one short file spends a second or more importing torch on one core;
    ffmpeg decodes on the other meanwhile (`eval score`, train.preprocess.windows_for_configs).
    probed() waits and returns (StreamInfo, audio or None), raising what the decode raised."""

    def __init__(self, path: str | Path, sr: int, fps: float, max_side: int = CANONICAL_MAX_SIDE,
                 frames: int = 50) -> None:
        import threading

        self.path, self.sr, self.fps, self.max_side = str(path), int(sr), fps, max_side
        self.frame_shape: tuple[int, ...] = ()
        self._stream: FrameStream | None = None
        self._ahead = np.empty((0, 0, 0, 3), np.uint8)
        self._closed = False
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, args=(max(0, int(frames)),), daemon=True)
        self._thread.start()

    def _run(self, frames: int) -> None:
        try:
            self._probed = probe_and_decode_audio(self.path, self.sr)
            info = self._probed[0]
            if not info.has_video or info.duration is None:
                return  # the caller decodes such a file its own way
            w, h = info.width, info.height
            if max(w, h) > self.max_side:
                w, h = canonical_size(w, h, self.max_side)
            with self._lock:
                if self._closed:
                    return
                self._stream = FrameStream(self.path, w, h, self.fps)
            self.frame_shape = self._stream.frame_shape
            ahead = np.empty((frames, *self.frame_shape), np.uint8)
            self._ahead = ahead[: self._stream.read_into(ahead)]
        except BaseException as err:  # handed to the caller by probed() / read_into()
            self._error = err

    def probed(self) -> tuple[StreamInfo, np.ndarray | None]:
        self._thread.join()
        if self._error is not None and not hasattr(self, "_probed"):
            raise self._error
        return self._probed

    def read_into(self, out: np.ndarray) -> int:
        self._thread.join()
        if self._error is not None:
            raise self._error
        n = min(len(out), len(self._ahead))
        out[:n] = self._ahead[:n]
        self._ahead = self._ahead[n:]
        return n + (self._stream.read_into(out[n:]) if n < len(out) and self._stream is not None else 0)

    def close(self) -> None:
        """Stop the decode (whether or not it was read)."""
        with self._lock:
            self._closed = True  # a decode still probing opens no stream
        self._thread.join()      # the read ahead is bounded: `frames` frames
        if self._stream is not None:
            self._stream.close()


def stream_frames(path: str | Path, width: int, height: int, fps: float, scale_flags: str = "area",
                  start: float | None = None, duration: float | None = None) -> Iterator[np.ndarray]:
    """FrameStream's frames one at a time: RGB uint8 (height, width, 3), only one in memory at a time.
    Raises MediaError when ffmpeg fails (after the frames it gave); stopping early (closing the
    generator) stops ffmpeg."""
    with FrameStream(path, width, height, fps, scale_flags, start, duration) as stream:
        while True:
            frame = np.empty((1, height, width, 3), np.uint8)
            if not stream.read_into(frame):
                return
            yield frame[0]


def canonical_size(width: int, height: int, max_side: int = CANONICAL_MAX_SIDE) -> tuple[int, int]:
    """Scale so the longest side is at most max_side; both sides even (yuv420p needs it)."""
    scale = min(1.0, max_side / max(width, height))
    w = max(2, int(round(width * scale / 2)) * 2)
    h = max(2, int(round(height * scale / 2)) * 2)
    return w, h


H264_ARGS = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p"]
AAC_ARGS = ["-c:a", "aac", "-b:a", "64k", "-ar", str(CANONICAL_SR), "-ac", "1"]


def canonicalise_windows(src: str | Path, out_dir: str | Path, windows: list[tuple[float, float]],
                         size: tuple[int, int], fps: int = CANONICAL_FPS,
                         sr: int = CANONICAL_SR, source_fps: float | None = None) -> tuple[list[Path], np.ndarray]:
    """Cut `windows` [(start, end)] out of `src` as canonical mp4s, in ONE ffmpeg run.

    One decode of the source serves every window (the expensive part for HEVC / large inputs);
    the fps filter resamples variable frame rate input to constant. The same run also writes the
    whole soundtrack as float32 mono at `sr` (returned), so perturbed audio starts from PCM, not
    from a decoded AAC window.

    A source below `fps` (`source_fps`, probed when not given) with more than two windows is cut
    one window per run instead, each seeking its input: ffmpeg's one run, whose fps filters must
    add frames for several outputs at once, deadlocks there (all threads waiting, no CPU).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outs = [out_dir / f"window_{i:04d}.mp4" for i in range(len(windows))]
    pcm = out_dir / "audio.f32"
    pcm_args = ["-map", "0:a:0", "-ac", "1", "-ar", str(sr), "-f", "f32le", "-acodec", "pcm_f32le", "-y", str(pcm)]

    def window_args(out: Path) -> list[str]:
        return ["-map", "0:v:0", "-map", "0:a:0",
                "-vf", f"fps={fps},scale={size[0]}:{size[1]}:flags=area,setsar=1",
                # apad: a soundtrack that ends before the picture is padded with silence, not cut short
                "-af", "apad", *H264_ARGS, "-g", str(fps), *AAC_ARGS, "-movflags", "+faststart", "-y", str(out)]

    if len(windows) > 2:
        source_fps = source_fps if source_fps is not None else probe(str(src)).fps
    if len(windows) > 2 and source_fps and source_fps < fps - 0.01:
        for out, (start, end) in zip(outs, windows):
            # seek the input to a second before the window (cheap), then cut exactly as the one run
            # does: the fps filter sees frames before the window, so it starts with a full frame
            lead = min(start, 1.0)
            run_ffmpeg(["-ss", f"{start - lead:.6f}", "-i", str(src),
                        "-ss", f"{lead:.6f}", "-t", f"{end - start:.6f}", *window_args(out)])
        run_ffmpeg(["-i", str(src), *pcm_args])
        return outs, np.fromfile(pcm, dtype=np.float32)
    args = ["-i", str(src)]
    for out, (start, end) in zip(outs, windows):
        args += ["-ss", f"{start:.6f}", "-t", f"{end - start:.6f}", *window_args(out)]
    run_ffmpeg(args + pcm_args)
    return outs, np.fromfile(pcm, dtype=np.float32)


def count_video_frames(paths: list[str | Path], scratch: str | Path) -> list[int]:
    """Video frames of each file (0 without a video stream), from ONE ffmpeg run copying packets.

    Each file's streams are listed packet by packet (framecrc, no decoding) into `scratch`; the
    header says which stream is video, so a file without one counts 0 instead of failing the run.
    """
    if not paths:
        return []
    scratch = Path(scratch)
    args: list[str] = []
    for p in paths:
        args += ["-i", str(p)]
    lists = [scratch / f".frames_{i:04d}.crc" for i in range(len(paths))]
    for i, listing in enumerate(lists):
        args += ["-map", f"{i}:v?", "-map", f"{i}:a?", "-c", "copy", "-f", "framecrc", "-y", str(listing)]
    run_ffmpeg(args)
    counts = []
    for listing in lists:
        lines = listing.read_text().splitlines()
        listing.unlink()
        video = {ln.split(":")[0].split()[-1] for ln in lines if ln.startswith("#media_type") and ln.endswith("video")}
        counts.append(sum(1 for ln in lines if not ln.startswith("#") and ln.split(",")[0].strip() in video))
    return counts


def window_audio(track: np.ndarray, start: float, end: float, sr: int = CANONICAL_SR) -> np.ndarray:
    """Samples [start, end) of a soundtrack, zero-padded when the track ends early."""
    a, n = int(round(start * sr)), int(round((end - start) * sr))
    out = np.zeros(n, dtype=np.float32)
    piece = track[a:a + n]
    out[: len(piece)] = piece
    return out


def mux_audio_tracks(tracks: list[tuple[str | Path, np.ndarray, str | Path]], sr: int = CANONICAL_SR,
                     outputs_per_run: int = 32) -> None:
    """For each (video_src, audio, out): copy the video stream of `video_src` and encode `audio` as AAC.

    The outputs come from as few ffmpeg processes as possible (each video read once per run, at
    most `outputs_per_run` outputs each) instead of one process per pair: process start-up and
    demuxing are most of a stream-copy remux's cost.
    """
    import tempfile

    for first in range(0, len(tracks), outputs_per_run):
        batch = tracks[first:first + outputs_per_run]
        videos = list(dict.fromkeys(str(v) for v, _, _ in batch))  # inputs 0..len(videos)-1, in order
        with tempfile.TemporaryDirectory(prefix="avbench_mux_") as tmp:
            args = [a for v in videos for a in ("-i", v)]
            for k, (_, audio, _) in enumerate(batch):
                raw = Path(tmp) / f"{k}.f32"
                np.ascontiguousarray(audio, dtype=np.float32).tofile(raw)
                args += ["-f", "f32le", "-ar", str(sr), "-ac", "1", "-i", str(raw)]
            for k, (video, _, out) in enumerate(batch):
                # no -shortest: it can drop the last video packets; both streams are one window long
                args += ["-map", f"{videos.index(str(video))}:v:0", "-map", f"{len(videos) + k}:a:0",
                         "-c:v", "copy", *AAC_ARGS, "-movflags", "+faststart", "-y", str(out)]
            run_ffmpeg(args)


def mux_new_audio(video_src: str | Path, audio: np.ndarray, out: str | Path,
                  sr: int = CANONICAL_SR) -> None:
    """Copy the video stream of `video_src` (no re-encode) and encode `audio` (float32 mono) as AAC."""
    mux_audio_tracks([(video_src, audio, out)], sr=sr)


def encode_clip(frames: np.ndarray, audio: np.ndarray, out: str | Path, fps: float = CANONICAL_FPS,
                sr: int = CANONICAL_SR) -> None:
    """Encode RGB frames (T, H, W, 3) and float32 mono audio to an h264 + aac mp4.

    Frames go through stdin; audio through a temporary raw file (two pipes would need threads).
    """
    import tempfile

    t, h, w, _ = frames.shape
    with tempfile.NamedTemporaryFile(suffix=".f32") as tmp:
        tmp.write(np.ascontiguousarray(audio, dtype=np.float32).tobytes())
        tmp.flush()
        run_ffmpeg(
            [
                "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "pipe:0",
                "-f", "f32le", "-ar", str(sr), "-ac", "1", "-i", tmp.name,
                "-map", "0:v:0", "-map", "1:a:0", *H264_ARGS, "-g", str(int(round(fps))), *AAC_ARGS,
                "-movflags", "+faststart", "-y", str(out),
            ],
            input_bytes=np.ascontiguousarray(frames, dtype=np.uint8).tobytes(),
        )


def encode_frames_copy_audio(frames: np.ndarray, audio_src: str | Path, out: str | Path,
                             fps: float = CANONICAL_FPS) -> None:
    """Encode new frames as h264 and copy the audio stream of `audio_src` untouched."""
    t, h, w, _ = frames.shape
    run_ffmpeg(
        [
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "pipe:0",
            "-i", str(audio_src), "-map", "0:v:0", "-map", "1:a:0",
            *H264_ARGS, "-g", str(int(round(fps))), "-c:a", "copy",
            "-movflags", "+faststart", "-y", str(out),
        ],
        input_bytes=np.ascontiguousarray(frames, dtype=np.uint8).tobytes(),
    )


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (shard checksums, cache keys)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def probe_json(info: StreamInfo) -> str:
    """A StreamInfo as JSON (for cards and rejects)."""
    d = dict(info.__dict__)
    d.pop("raw", None)
    return json.dumps(d, sort_keys=True)
