"""Sources in, preference-pair shards out.

`process_source(source, job)` turns ONE source video into its pairs and writes them to a per-source
staging tar (write, then rename). It reads nothing global, so a local process pool or Ray Data
(`backend="ray"`, `_map_sources_ray`) maps it over sources: the two backends run the same
functions and differ only in who runs them. `build()` first maps `check_source`
(probe + canonical windows, cached) over every source, assigns splits to the usable ones only,
maps process_source with a progress bar, then packs the staging tars into
`<out>/<dim>/<split>-%06d.tar` shards (capped by count and size, each written then renamed) and
writes the data card. A killed build re-run with the same command skips the sources whose staging
tar is complete and re-packs: no duplicate, no missing pair.

With `out` an fsspec URL (s3://bucket/shards), the build runs in a local work folder (staging,
canonical cache, the shards) and then publishes OUT/<dim>/'s files to the URL, manifest.json last;
the URL is checked (known protocol, writable) before any work, and a file:// URL is its local folder.

Whose fault: only a fault of the source itself (unreadable, too short, broken stream, an operator
crashing on it) rejects a source. A fault of the machine -- disk full (ENOSPC / EDQUOT), I/O error,
read-only or unwritable output, a pool worker killed -- stops the build with one line
(BuildEnvironmentError), rejects nothing, leaves no temporaries, and the same command run again
finishes the build (environment_fault; ffmpeg's failures are told apart by its message and by the
free space where it wrote). A worker that cannot run the build's code (a plugin module it cannot
import, an operator it does not know) stops it too, with the worker's traceback (worker_fault,
BuildWorkerError). One build at a time writes OUT/<dim>/: build_lock (`.build.lock`).

Plugins (modules registering operators of their own: --plugin, AVBENCH_PLUGINS, a recipe's
`plugins:`) travel in the Job and are imported at the start of every task, so spawned pool workers
and Ray tasks know the operators the recipe names.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import math
import multiprocessing
import os
import re
import shutil
import socket
import sys
import tarfile
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from . import media
from .media import VIDEO_EXTS, sha256_file
from .clip import Clip
from .operators import (PLUGIN_HINT, REGISTRY, ConfigError, OperatorContext, Transform, check_severity,
                        get_operator, import_plugins, modifies_video, replay)
from .operators.timing import shift_audio
from .recipe import RANGES, SPLITS, Recipe, check_build_values, derive_seed, load_recipe
from .shard_format import (MAX_SAMPLE_JSON_BYTES, MAX_SAMPLE_JSON_DEPTH, ShardFormatError, check_shard, parse_json,
                           split_member_name)

PIPELINE_VERSION = "4"  # 2: timing ops read the audio context around the window; 3: grain (WSOLA) keep_pitch drift
# 4: --donors files split like sources (donor_splits), recipe-sized audio context
# Timing operators shift up to 1 s (perturb/operators/timing.py OFFSET_BANDS_MS): the context covers it.
# A recipe whose operators read further (Transform.audio_context_seconds) gets more.
AUDIO_CONTEXT_SECONDS = 1.0
CANONICAL_VERSION = "2"  # bump when canonical windows change: invalidates the canonical cache
# 2: upright display size (rotation, SAR), frames.json (video frames per window) in each entry
MUX_BATCH = 32  # audio-only sides written by one ffmpeg run (media.mux_audio_tracks)
AUDIO_EXTS = {".wav", ".mp3", ".flac", ".m4a", ".aac", ".ogg", ".opus"}


class Rejected(Exception):
    """A source that cannot give pairs; the message is the reason recorded in rejects.jsonl."""


class ManifestError(ValueError):
    """A source manifest that cannot be used as written (unreadable, no file column, a row pinned to
    a split that names no source, ...): one line naming the manifest."""


class BuildError(RuntimeError):
    """A build stopped for a reason outside every source: the message is one line for the user;
    `details`, when not empty, is a traceback to show above it."""

    details: str = ""


class BuildEnvironmentError(BuildError):
    """The machine failed the build (disk full, I/O error, read-only or unwritable output, a worker
    killed): no source is rejected for it; the same command run again finishes the build."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = code


class BuildWorkerError(BuildError):
    """A worker could not run the build's code (a plugin it cannot import, an operator it does not
    know): no source is rejected for it; `details` is the worker's traceback."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


class BuildLocked(BuildError):
    """Another build holds OUT/<dim>/ (build_lock)."""


# OSError numbers that are the machine's fault, never a source's: the build stops, nothing is rejected
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EMFILE, errno.ENFILE})
# ... and these too, unless the file is the source itself (a source nobody may read is the source's fault)
ACCESS_ERRNOS = frozenset({errno.EACCES, errno.EPERM})
# how ffmpeg words them (MediaError carries its last stderr line)
FFMPEG_ENVIRONMENT_TEXT = {os.strerror(e): e for e in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)}
# ffmpeg failed writing into a folder with less free than this: the disk was full (its partial outputs
# may already be gone, and ffmpeg's last line may not say so: "Nothing was written into output file")
LOW_SPACE_BYTES = 16 << 20


def _ffmpeg_fault(err: media.MediaError) -> OSError | None:
    """The OSError an ffmpeg failure stands for when its message names the machine's fault."""
    text = str(err)
    for strerror, code in FFMPEG_ENVIRONMENT_TEXT.items():
        if strerror in text:
            return OSError(code, f"{strerror} (ffmpeg: {text})")
    if os.strerror(errno.EACCES) in text and "Error opening output" in text:  # not the source (input)
        return OSError(errno.EACCES, f"{os.strerror(errno.EACCES)} (ffmpeg: {text})")
    return None


def _low_space(folder: Path) -> OSError | None:
    """OSError(ENOSPC) when the file system of `folder` is (nearly) full, in bytes or in inodes."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    free = st.f_bavail * st.f_frsize
    if free < LOW_SPACE_BYTES or (st.f_files and not st.f_favail):
        return OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({free >> 20} MiB free)", str(folder))
    return None


@contextlib.contextmanager
def _ffmpeg_writing_to(folder: Path) -> Iterator[None]:
    """Around ffmpeg runs writing into `folder`: a MediaError that is the machine's fault (its message,
    or the folder's file system full right now, before the partial outputs are removed) is raised as
    that OSError, so it stops the build instead of rejecting the source."""
    try:
        yield
    except media.MediaError as err:
        fault = _ffmpeg_fault(err) or _low_space(folder)
        if fault is None:
            raise
        if fault.filename is None:
            fault.filename = str(folder)
        raise fault from err


def _is_source(filename: Any, source_paths: tuple[str, ...]) -> bool:
    if not filename:
        return False
    real = os.path.realpath(str(filename))
    return any(real == os.path.realpath(p) for p in source_paths)


def environment_fault(err: BaseException, source_paths: tuple[str, ...] = (),
                      source_id: str | None = None) -> BuildEnvironmentError | None:
    """The one-line BuildEnvironmentError `err` stands for when it is the machine's fault, not a
    source's; None otherwise. Reads OSError numbers (ENVIRONMENT_ERRNOS; EACCES / EPERM unless on one
    of `source_paths`), ffmpeg's messages, a dead pool worker, and what they were raised from."""
    where = f" (at source {source_id})" if source_id else ""
    seen = 0
    while err is not None and seen < 8:
        seen += 1
        if isinstance(err, BuildEnvironmentError):
            return err
        if isinstance(err, BrokenProcessPool):
            fault = BuildEnvironmentError(
                f"build stopped: a worker process died{where} (killed by a signal: out of memory?); none "
                "was rejected for it: run the same command again, with fewer --workers if memory is short, "
                "finished sources are kept")
            fault.details = _remote_traceback(err)  # only when the pool knows why (a result it could not read)
            return fault
        os_err = _ffmpeg_fault(err) if isinstance(err, media.MediaError) else err
        if isinstance(os_err, OSError) and (os_err.errno in ENVIRONMENT_ERRNOS or (
                os_err.errno in ACCESS_ERRNOS and not _is_source(os_err.filename, source_paths))):
            what = os_err.strerror or os.strerror(os_err.errno)
            path = f": {os_err.filename}" if os_err.filename else ""
            fix = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space or raise the quota",
                   errno.EIO: "check the disk", errno.EMFILE: "raise the open-file limit (ulimit -n)",
                   errno.ENFILE: "close other programs"}.get(os_err.errno, "make the output folder writable")
            return BuildEnvironmentError(" ".join(
                f"build stopped: {what}{path}{where}; not a fault of any source, so none was rejected for it: "
                f"{fix} and run the same command again (finished sources are kept)".split()), os_err.errno)
        err = err.__cause__
    return None


def _remote_traceback(err: BaseException) -> str:
    """The traceback a pool worker sent with `err` (concurrent.futures' _RemoteTraceback), or ''."""
    tb = getattr(err.__cause__, "tb", None)
    return tb.strip("\n'\"") + "\n" if isinstance(tb, str) else ""


def worker_fault(err: BaseException, source_id: str | None = None) -> BuildWorkerError | None:
    """The BuildWorkerError `err` stands for when a task failed for the code it runs, not for its
    source; None otherwise. An ImportError (a plugin or library the worker cannot import) and a
    ConfigError (the recipe, checked before any task started, names an operator the worker does not
    know: a plugin imported in the build process only) would fail every source alike."""
    if isinstance(err, BuildWorkerError):
        return err
    if not isinstance(err, (ImportError, ConfigError)):
        return None
    where = f" (at source {source_id})" if source_id else ""
    first = (str(err).strip().splitlines() or [""])[0]
    details = _remote_traceback(err) or "".join(traceback.format_exception(type(err), err, err.__traceback__))
    return BuildWorkerError(" ".join(
        f"build stopped: a worker failed{where}: {type(err).__name__}: {first}; no source was rejected for it "
        "(traceback above); every worker imports the build's plugins (--plugin, AVBENCH_PLUGINS, a recipe's "
        "plugins:), so their folder must be on PYTHONPATH there too".split()), details)


def build_lock_owner(path: Path) -> str:
    """Who holds a build lock, from what its holder wrote in it: 'pid P on HOST since TIME'."""
    try:
        owner = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        owner = {}
    if not isinstance(owner, dict) or not owner:
        return "owner unknown"
    return f"pid {owner.get('pid', '?')} on {owner.get('host', '?')} since {owner.get('since', '?')}"


@contextlib.contextmanager
def build_lock(out_dir: Path) -> Iterator[Path]:
    """Hold `<out_dir>/.build.lock` (flock, exclusive) while building into out_dir; BuildLocked, naming
    the holder (pid, host, start) and the lock, when another build holds it. The kernel drops the
    lock when its holder dies, so the file a killed build leaves behind blocks nobody."""
    path = Path(out_dir) / ".build.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BuildLocked(f"another build is writing {out_dir} ({build_lock_owner(path)}; lock {path}): "
                              "wait for it to finish, or stop it, and run again") from None
        owner = {"pid": os.getpid(), "host": socket.gethostname(),
                 "since": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": sys.argv}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


@dataclass(frozen=True)
class Source:
    source_id: str
    path: str
    group: str  # sources of one group (speaker) always land in the same split
    licence: str = "unknown"
    split: str = ""
    # the source's own sound lag in ms (manifest column av_offset_ms; > 0: the sound comes late):
    # corrected when its canonical windows are cut, so its "original" sides are in sync
    av_offset_ms: float = 0.0
    av_offset_evidence: str = ""  # what measured it (manifest column; the card prints it beside the correction)
    faces: int = 1  # faces in the picture (manifest column faces): single-speaker recipes skip faces > 1


@dataclass(frozen=True)
class Job:
    """Everything process_source needs, as plain data (picklable, shippable to a cluster)."""

    recipe_path: str
    seed: int
    window_seconds: float
    staging_dir: str
    max_side: int = media.CANONICAL_MAX_SIDE
    max_windows: int = 0  # 0 = every full window of the source
    hop_seconds: float = 0.0  # 0 = window_seconds (no overlap)
    pairs_per_window: int = 0  # 0 = the recipe's
    canonical_dir: str = ""  # cache of canonical windows, shared by every recipe built into one OUT
    # split -> media files operators may draw other people's material from (OperatorContext.donor_pool)
    donors: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # modules registering operators of their own: imported by every task first (a spawned worker or a
    # Ray node starts with the built-in operators only)
    plugins: tuple[str, ...] = ()


def safe_id(text: str) -> str:
    """Ids become tar member prefixes: WebDataset splits keys at the first dot, so no dots."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "source"


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    # fixed metadata so the same pairs give byte-identical tars
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid = size, 0, 0o644, 0, 0
    info.uname = info.gname = ""
    return info


def _write_atomically(path: Path, write) -> None:
    """Write `path` through a temporary beside it, then rename; a failed write (a full disk) leaves
    neither a partial `path` nor the temporary."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _write_json_atomically(path: Path, obj: Any) -> None:
    _write_atomically(path, lambda fh: fh.write(json.dumps(obj, indent=1, sort_keys=True).encode()))


def defect_size(ops: list[dict[str, Any]]) -> float:
    """How big the defect of a list of applied ops is (the largest of its operators' sizes)."""
    return max((float(get_operator(r["name"])().defect_size(r["params"])) for r in ops), default=0.0)


def plan_windows(duration: float, window: float, max_windows: int = 0,
                 hop: float | None = None) -> list[tuple[float, float]]:
    """Full windows from t=0, one every `hop` s (default: window, no overlap); a short tail is dropped."""
    hop = hop or window
    n = int(np.floor((duration - window) / hop + 1e-6)) + 1 if duration + 1e-6 >= window else 0
    if max_windows:
        n = min(n, max_windows)
    return [(round(i * hop, 6), round(i * hop + window, 6)) for i in range(n)]


def window_clip(track: np.ndarray, start: float, end: float, video_path: str, meta: dict[str, Any],
                context_seconds: float | tuple[float, float] = AUDIO_CONTEXT_SECONDS) -> Clip:
    """The original Clip of a window, with the soundtrack around it as audio context (see Clip).

    context_seconds: the same before and after, or (before, after); cut at the track's ends.
    """
    sr = media.CANONICAL_SR
    before, after = (context_seconds, context_seconds) if np.isscalar(context_seconds) else context_seconds
    a, b = int(round(start * sr)), int(round(end * sr))
    return Clip(audio=media.window_audio(track, start, end), video_path=video_path, meta=meta,
                context_before=np.asarray(track[max(0, a - int(round(before * sr))):a], np.float32),
                context_after=np.asarray(track[b:b + int(round(after * sr))], np.float32))


def rebuild_pair(record: dict[str, Any], source_path: str | Path) -> tuple[Clip, Clip]:
    """(chosen, rejected) Clips of a pair, rebuilt from its json record and its source video.

    The window's soundtrack and the audio context the timing operators read (record
    "audio_context_s") are decoded from the source again, its sound lag corrected as the build did
    (record "source_av_offset_ms"); the picture stays lazy (video_path is the source). Audio matches
    the shard's up to the AAC coding of the written mp4s.
    """
    start, end = (float(t) for t in record["window"])
    context = tuple(float(c) for c in record.get("audio_context_s", (0.0, 0.0)))
    track = sound_in_sync(media.decode_audio(source_path), float(record.get("source_av_offset_ms") or 0.0))
    original = window_clip(track, start, end, str(source_path),
                           meta={"source_id": record["source_id"], "window": [start, end]},
                           context_seconds=context)
    return replay(original, record.get("chosen_ops", [])), replay(original, record["ops"])


def _file_state(path: str) -> list[int]:
    """What tells a rewritten file from the one seen before without reading it: size and mtime (the
    check make and git's index rely on; both survive a mount at another path on a cluster node)."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def _done_marker(source: Source, job: Job) -> Path:
    """Where process_source stages a source's summary once its pairs are written."""
    return Path(job.staging_dir) / f"{source.source_id}.json"


def _done_summary(source: Source, job: Job) -> dict[str, Any] | None:
    """The summary an earlier run of this build staged for `source`, unless the file changed since."""
    marker = _done_marker(source, job)
    if not marker.is_file():
        return None
    done = json.loads(marker.read_text())
    return done if done.get("file_state") == _file_state(source.path) else None


def probe_source(source: Source, cache_root: Path) -> tuple[media.StreamInfo, str]:
    """media.probe() of a source and its content sha256, remembered in the canonical cache.

    Both passes of every build probe every source (an ffmpeg start each) and hash it (the canonical
    cache key): ~15% of a warm audio-only build. The memo is keyed by the file's path, size and
    mtime (_file_state: a file rewritten in place with the same size and mtime would be missed).
    Unreadable files are not remembered: they raise.
    """
    key = hashlib.sha256(json.dumps([CANONICAL_VERSION, os.path.realpath(source.path),
                                     *_file_state(source.path)]).encode()).hexdigest()[:20]
    memo = cache_root / "probes" / f"{key}.json"
    try:
        record = json.loads(memo.read_text())
        return media.StreamInfo(**record["probe"]), record["sha256"]
    except (OSError, ValueError, TypeError, KeyError):  # absent or damaged: probe again
        pass
    info = media.probe(source.path)
    digest = sha256_file(Path(source.path))
    memo.parent.mkdir(parents=True, exist_ok=True)
    _write_json_atomically(memo, {"probe": json.loads(media.probe_json(info)), "sha256": digest})
    return info, digest


def canonical_windows(source: Source, windows: list[tuple[float, float]], size: tuple[int, int],
                      cache_root: Path, source_sha256: str,
                      source_fps: float | None = None) -> tuple[list[Path], np.ndarray, list[int]]:
    """The source's canonical window files, 16 kHz soundtrack and video frames per window, cached by content.

    Canonicalising (decode + h264 encode) is the expensive step; every recipe built from the same
    source, window and size reuses it, so an audio-only recipe built after another one only pays
    its per-pair remux. The cache entry is a folder made under a temporary name (with the writer's
    PID, so a later build can tell a dead writer's leftovers), then renamed. source_sha256: the
    source file's content hash (probe_source), part of the cache key.
    """
    # an uncorrected source keeps the key it had before sources could be corrected
    key_parts = [CANONICAL_VERSION, source_sha256, windows, size] + ([source.av_offset_ms] if source.av_offset_ms else [])
    key = hashlib.sha256(json.dumps(key_parts).encode()).hexdigest()[:20]
    entry = cache_root / key
    files = [entry / f"window_{i:04d}.mp4" for i in range(len(windows))]
    if not (entry / "frames.json").is_file():
        cache_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.{os.getpid()}.", dir=cache_root))
        try:
            with _ffmpeg_writing_to(tmp):
                outs, track = media.canonicalise_windows(source.path, tmp, windows, size, source_fps=source_fps)
                if source.av_offset_ms:
                    _correct_sound_lag(outs, windows, track, source.av_offset_ms, tmp)
                frames = media.count_video_frames([o for o in outs if o.is_file()], tmp)
            # frames.json is written last: its presence marks a complete entry
            (tmp / "frames.json").write_text(json.dumps(
                [frames.pop(0) if o.is_file() else 0 for o in outs]))
            try:
                os.rename(tmp, entry)
            except OSError:  # another worker finished the same entry first: keep theirs
                if not (entry / "frames.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    frames = json.loads((entry / "frames.json").read_text())
    return files, np.fromfile(entry / "audio.f32", dtype=np.float32), frames


def sound_in_sync(track: np.ndarray, av_offset_ms: float, sr: int = media.CANONICAL_SR) -> np.ndarray:
    """The soundtrack of a source whose sound lags its picture by av_offset_ms (earlier when negative)
    moved into sync: what was heard at t + d is heard at t; same length, the gap silent."""
    return shift_audio(track, -int(round(av_offset_ms * sr / 1000.0)))


def _correct_sound_lag(outs: list[Path], windows: list[tuple[float, float]], track: np.ndarray,
                       offset_ms: float, folder: Path) -> None:
    """Bring a source whose sound lags its picture by offset_ms into sync, in its canonical windows
    (their picture stream copied, the sound encoded again from the moved soundtrack) and in the
    soundtrack the operators start from (folder/audio.f32)."""
    track = sound_in_sync(track, offset_ms)
    track.tofile(folder / "audio.f32")
    synced = [(out, media.window_audio(track, start, end), out.with_suffix(".synced.mp4"))
              for out, (start, end) in zip(outs, windows) if out.is_file()]
    media.mux_audio_tracks(synced)
    for out, _, fixed in synced:
        os.replace(fixed, out)


def _canonical_source(source: Source, job: Job) -> tuple[media.StreamInfo, list[tuple[float, float]], list[Path], np.ndarray]:
    """Probe and canonicalise a source (cached), or Rejected with the one reason it cannot give pairs.

    Depends on neither the split nor the recipe, so build() runs it on every source before splits
    are assigned, and every dimension rejects a source for the same reason.
    """
    info, digest = probe_source(source, Path(job.canonical_dir))
    if not info.has_video:
        raise Rejected("no video stream")
    if not info.has_audio:
        raise Rejected("no audio stream")
    if not info.duration or info.duration < job.window_seconds:
        raise Rejected(f"shorter than one window ({info.duration or 0:.2f} s < {job.window_seconds} s)")
    if not info.width or not info.height:
        raise Rejected("video size unknown")
    windows = plan_windows(info.duration, job.window_seconds, job.max_windows, job.hop_seconds or None)
    size = media.canonical_size(info.width, info.height, job.max_side)
    window_files, track, frames = canonical_windows(source, windows, size, Path(job.canonical_dir), digest, info.fps)
    if len(track) < 0.9 * windows[-1][1] * media.CANONICAL_SR:
        raise Rejected(f"audio decodes to {len(track) / media.CANONICAL_SR:.2f} s of "
                       f"{info.duration:.2f} s: broken or truncated stream")
    for wi, (window_file, n, (start, end)) in enumerate(zip(window_files, frames, windows)):
        if not window_file.is_file() or window_file.stat().st_size == 0:
            raise Rejected(f"window {wi} could not be decoded: broken stream")
        expected = int(round((end - start) * media.CANONICAL_FPS))
        if n < 0.9 * expected:  # a still image or a video stream that stops before the soundtrack
            raise Rejected(f"picture ends early: window {wi} ({start:g}-{end:g} s) has {n} of {expected} "
                           f"video frames ({info.duration:.2f} s of media)")
    return info, windows, window_files, track


def check_source(source: Source, job: Job) -> dict[str, Any]:
    """Can this source give pairs? {"source_id", "path", "status": "ok" | "rejected", "reason" | "duration"}.

    The first pass of build(): probes and canonicalises (so the second pass finds the cache
    warm); a source already done in an earlier run of the same build, and unchanged since, is not
    probed again.
    """
    import_plugins(job.plugins, environ=False)
    result: dict[str, Any] = {"source_id": source.source_id, "path": source.path}
    done = _done_summary(source, job)
    if done:
        return {**result, "status": "ok", "duration": done.get("duration")}
    try:
        info = _canonical_source(source, job)[0]
    except (Rejected, media.MediaError) as err:
        if environment_fault(err, (source.path,)):
            raise  # the machine's fault: the build stops, the source is not rejected
        return {**result, "status": "rejected", "reason": str(err)}
    return {**result, "status": "ok", "duration": info.duration}


def process_source(source: Source, job: Job) -> dict[str, Any]:
    """Turn one source video into its pairs, written to `<staging>/<source_id>.tar` (+ .json summary).

    Returns the summary: {"source_id", "status": "ok" | "rejected", "reason", "pairs", ...}.
    """
    import_plugins(job.plugins, environ=False)
    staging = Path(job.staging_dir)
    done = _done_summary(source, job)  # finished in an earlier (possibly killed) run
    if done and done.get("split") == source.split:  # else the usable sources changed since: redo
        return done
    recipe = load_recipe(job.recipe_path)
    summary: dict[str, Any] = {"source_id": source.source_id, "path": source.path, "split": source.split,
                               "file_state": _file_state(source.path)}
    try:
        info, windows, window_files, track = _canonical_source(source, job)
        donor_pool = tuple(d for d in job.donors.get(source.split, ())
                           if Path(d).resolve() != Path(source.path).resolve())
        transform = recipe.build_transform()
        context_seconds = max(AUDIO_CONTEXT_SECONDS, transform.audio_context_seconds())
        samples = []
        audio_only: list[tuple[Path, np.ndarray, Path]] = []  # sides of every window, muxed together
        with tempfile.TemporaryDirectory(prefix="avbench_") as tmp, _ffmpeg_writing_to(Path(tmp)):
            for wi, (window_file, (start, end)) in enumerate(zip(window_files, windows)):
                original = window_clip(track, start, end, str(window_file),
                                       meta={"source_id": source.source_id, "window": [start, end]},
                                       context_seconds=context_seconds)
                context = OperatorContext(source_id=source.source_id, split=source.split,
                                          donor_pool=donor_pool, clip=original, source_path=source.path)
                bound = transform.with_context(context)
                pairs = [_plan_pair(recipe, bound, job, source, wi, pi, original)
                         for pi in range(job.pairs_per_window or recipe.pairs_per_window)]
                samples += _render_window(window_file, pairs, Path(tmp) / f"w{wi}", audio_only)
                if len(audio_only) >= MUX_BATCH or wi == len(windows) - 1:  # bounded memory on long sources
                    media.mux_audio_tracks(audio_only, outputs_per_run=MUX_BATCH)
                    audio_only.clear()
            samples = [(key, [(name, data if isinstance(data, bytes) else data.read_bytes()) for name, data in files])
                       for key, files in samples]
        shard_path = staging / f"{source.source_id}.tar"

        def write(fh):
            with tarfile.open(fileobj=fh, mode="w") as tar:
                for key, files in samples:
                    for ext, payload in files:
                        tar.addfile(_tarinfo(f"{key}.{ext}", len(payload)), io.BytesIO(payload))

        _write_atomically(shard_path, write)
        summary.update(status="ok", pairs=len(samples), windows=len(windows), duration=info.duration,
                       probe=json.loads(media.probe_json(info)))
    except (Rejected, media.MediaError) as err:
        if environment_fault(err, (source.path,)):
            raise  # the machine's fault: the build stops, the source is neither rejected nor done
        summary.update(status="rejected", reason=str(err), pairs=0)
        return summary  # not marked done: a rejected source is re-checked (cheaply) on re-runs
    try:
        _write_json_atomically(_done_marker(source, job), summary)
    except BaseException:  # (a full disk) not done: no tar without its marker is left behind
        with contextlib.suppress(OSError):
            (staging / f"{source.source_id}.tar").unlink()
        raise
    return summary


def _render_window(window_file: Path, pairs: list[dict[str, Any]], tmp: Path,
                   audio_only: list[tuple[Path, np.ndarray, Path]]) -> list[tuple[str, list[tuple[str, Path | bytes]]]]:
    """Every side of a window's pairs, re-encoding only what the ops changed: [(key, [(member, file
    or bytes)])].

    Untouched sides are the canonical window itself; sides whose picture changed are encoded here,
    one by one; audio-only sides are appended to `audio_only` as (window_file, audio, out), for the
    caller to write with ONE media.mux_audio_tracks run over all windows of the source (video copied).
    """
    tmp.mkdir(parents=True, exist_ok=True)
    outputs = {(n, side): _render_side(*pair[side], window_file, tmp / f"{n}.{side}.mp4", audio_only)
               for n, pair in enumerate(pairs) for side in ("chosen", "rejected")}
    return [(pair["record"]["key"], [(f"{side}.mp4", outputs[(n, side)]) for side in ("chosen", "rejected")]
             + [("json", json.dumps(pair["record"], sort_keys=True).encode())])
            for n, pair in enumerate(pairs)]


def _render_side(clip: Clip, ops: list[dict[str, Any]], window_file: Path, out: Path,
                 audio_only: list[tuple[Path, np.ndarray, Path]]) -> Path:
    """The file of one side `clip` (`window_file` perturbed by `ops`): the window itself when untouched;
    an audio-only side is appended to `audio_only` for the caller to mux (video stream copied);
    a new picture is encoded into `out` here, the sound copied when the ops left it alone."""
    if not ops:
        return window_file
    if not modifies_video(ops):
        audio_only.append((window_file, clip.audio, out))
    elif not any(get_operator(r["name"]).modifies in ("audio", "both") for r in ops):
        media.encode_frames_copy_audio(clip.load_frames(), window_file, out, fps=clip.fps)
    else:
        media.encode_clip(clip.load_frames(), clip.audio, out, fps=clip.fps, sr=clip.sr)
    return out


def _plan_pair(recipe: Recipe, transform: Transform, job: Job, source: Source, wi: int, pi: int,
               original: Clip) -> dict[str, Any]:
    """One (chosen, rejected) pair: its clips, ops and JSON record.

    Its seed is derived from (global seed, source, recipe, window, pair), so it can be rebuilt alone.
    """
    seed = derive_seed(job.seed, source.source_id, recipe.name, wi, pi)
    rng = np.random.default_rng(seed)
    graded = recipe.graded_pairs > 0 and rng.random() < recipe.graded_pairs and len(recipe.severity_levels) > 1
    if graded:
        # milder vs stronger severity of the same operator
        leaves = transform.leaves()
        op = leaves[int(rng.integers(len(leaves)))]
        lo, hi = sorted(rng.choice(recipe.severity_levels, size=2, replace=False).tolist())
        chosen_ops = [{"name": op.name, "params": op.sample_params(rng, int(lo))}]
        ops = [{"name": op.name, "params": op.sample_params(rng, int(hi))}]
        chosen_sev, severity = int(lo), int(hi)
    else:
        severity = recipe.sample_severity(rng)
        ops = []
        for _ in range(100):  # operators with p < 1 may sample nothing: a rejected must differ
            ops = transform.sample(rng, severity)
            if ops:
                break
        if not ops:
            raise Rejected(f"recipe {recipe.name} sampled no operator in 100 draws (all p too low?)")
        chosen_ops, chosen_sev = [], 0
    key = f"{source.source_id}__w{wi:03d}__p{pi:02d}"
    record = {
        "key": key, "dim": recipe.dim, "recipe": recipe.name, "recipe_sha": recipe.fingerprint,
        "question": recipe.question, "source_id": source.source_id, "split": source.split,
        "window": list(original.meta["window"]), "window_index": wi, "pair_index": pi,
        "seed": seed, "global_seed": job.seed,
        "kind": "graded" if graded else "original_vs_perturbed",
        "severity": severity, "chosen_severity": chosen_sev,
        "ops": ops, "chosen_ops": chosen_ops, "operator": "+".join(r["name"] for r in ops),
        "defect": defect_size(ops), "chosen_defect": defect_size(chosen_ops),
        "margin": float(severity - chosen_sev),
        "video_copied": not modifies_video(ops),
        "canonical": {"fps": media.CANONICAL_FPS, "sr": media.CANONICAL_SR, "max_side": job.max_side},
        # seconds of source soundtrack the timing operators could read before / after the window
        "audio_context_s": [round(len(original.context_before) / original.sr, 6),
                            round(len(original.context_after) / original.sr, 6)],
        "pipeline_version": PIPELINE_VERSION,
    }
    if source.av_offset_ms:
        record["source_av_offset_ms"] = source.av_offset_ms  # corrected in both sides (Source.av_offset_ms)
    return {"record": record,
            "chosen": (replay(original, chosen_ops), chosen_ops),
            "rejected": (replay(original, ops), ops)}


# ----------------------------------------------------------------------------- planning

MANIFEST_COLUMNS = ("file", "path", "licence", "license", "group", "speaker", "source_id", "av_offset_ms",
                    "av_offset_evidence", "faces", "sync_check", "split")
MAX_FACES = 100


def _examples(names: list[str], k: int = 3) -> str:
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


def _warn(message: str) -> None:
    """A warning the user should see: one line on stderr."""
    print(" ".join(f"warning: {message}".split()), file=sys.stderr, flush=True)


def read_manifest(manifest: str | Path) -> dict[str, dict[str, Any]]:
    """A source manifest (JSON list, or CSV with a header) as {file name: row}; rows name their
    file by `file` or `path` and may carry licence, group / speaker, source_id, av_offset_ms and split.

    UTF-8 with or without a byte-order mark (Excel's "CSV UTF-8"); column names are matched without
    case and surrounding spaces, other columns (notes) are allowed. ManifestError in one line for a
    file that is not UTF-8 or does not parse, no file / path column, a column that looks like a
    misspelt known one ('spilt'), a row naming no file, a file listed twice.
    """
    import difflib

    manifest = Path(manifest)
    try:
        text = manifest.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ManifestError(f"{manifest}: not UTF-8 text (byte {err.start}): save it as UTF-8 "
                            "(in Excel: CSV UTF-8)") from None
    if manifest.suffix.lower() == ".csv":
        import csv

        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            entries: Any = list(reader)
        except csv.Error as err:
            raise ManifestError(f"{manifest}: not a readable CSV file ({err})") from None
        columns = [c for c in reader.fieldnames or [] if c is not None]
    else:
        try:
            entries = json.loads(text)
        except ValueError as err:
            raise ManifestError(f"{manifest}: not valid JSON ({err})") from None
        if not isinstance(entries, list) or not all(isinstance(r, dict) for r in entries):
            raise ManifestError(f"{manifest}: a JSON manifest is a list of objects, one per file")
        columns = list(dict.fromkeys(k for r in entries for k in r))
    names = {str(c).strip().lower() for c in columns}
    if columns and not names & {"file", "path"}:
        raise ManifestError(f"{manifest}: no 'file' or 'path' column to name each row's video (columns: "
                            f"{', '.join(repr(c) for c in columns)}; known: {', '.join(MANIFEST_COLUMNS)})")
    for name in sorted(names - set(MANIFEST_COLUMNS)):
        close = difflib.get_close_matches(name, MANIFEST_COLUMNS, n=1, cutoff=0.8)
        if close:
            raise ManifestError(f"{manifest}: unknown column {name!r}: did you mean {close[0]!r}? "
                                f"(known: {', '.join(MANIFEST_COLUMNS)})")
    rows: dict[str, dict[str, Any]] = {}
    row_of: dict[str, int] = {}
    for i, entry in enumerate(entries, 1):
        row = {str(k).strip().lower(): v.strip() if isinstance(v, str) else v
               for k, v in entry.items() if k is not None}
        if all(v in (None, "") for v in row.values()):  # a spreadsheet's empty row (",,,")
            continue
        # matched by file name; a Windows path names its file after the last backslash
        name = re.split(r"[\\/]", str(row.get("file") or row.get("path") or ""))[-1]
        if not name:
            raise ManifestError(f"{manifest}: row {i} names no file (empty 'file' / 'path')")
        if name in rows:
            raise ManifestError(f"{manifest}: {name} is listed twice (rows {row_of[name]} and {i}); "
                                "a manifest matches files by name")
        rows[name], row_of[name] = row, i
    return rows


def _av_offset(row: dict[str, Any], manifest: Path | None) -> float:
    """A manifest row's av_offset_ms (empty: 0), or ManifestError naming the file."""
    value = str(row.get("av_offset_ms") or "").strip()
    try:
        offset = float(value) if value else 0.0
    except ValueError:
        raise ManifestError(f"{manifest}: av_offset_ms of {row.get('file') or row.get('path')!r} is not a number: "
                         f"{value!r}") from None
    if not math.isfinite(offset) or abs(offset) > 2000:
        raise ManifestError(f"{manifest}: av_offset_ms of {row.get('file') or row.get('path')!r} must be within "
                         f"+-2000 ms, got {value!r}")
    return offset


def _pinned_split(row: dict[str, Any], manifest: Path | None) -> str:
    """A manifest row's split ('' when empty: assign_splits chooses), or ManifestError naming the file.
    A row whose sync_check is fail (bench/source_offsets.py --propose) must be pinned to train: its
    original may not be in sync, so it is training material only, never a val / test original."""
    split = str(row.get("split") or "").strip()
    name = row.get("file") or row.get("path")
    if split and split not in SPLITS:
        raise ManifestError(f"{manifest}: split of {name!r} must be one of "
                         f"{', '.join(SPLITS)} or empty, got {split!r}")
    check = str(row.get("sync_check") or "").strip().lower()
    if check not in ("", "pass", "fail"):
        raise ManifestError(f"{manifest}: sync_check of {name!r} must be pass, fail or empty, got {check!r}")
    if check == "fail" and split != "train":
        raise ManifestError(f"{manifest}: {name!r} failed the sync check (sync_check fail): training only, "
                            f"pin it to train (its split is {split or 'empty'})")
    return split


def _faces(row: dict[str, Any], manifest: Path | None) -> int:
    """A manifest row's faces (empty: 1), or ManifestError naming the file."""
    value = str(row.get("faces") or "").strip()
    try:
        faces = int(value) if value else 1
    except ValueError:
        faces = 0
    if not 1 <= faces <= MAX_FACES:
        raise ManifestError(f"{manifest}: faces of {row.get('file') or row.get('path')!r} must be a whole number "
                            f"from 1 to {MAX_FACES} (empty: 1), got {value!r}")
    return faces


def source_folders(src: str | Path | Sequence[str | Path]) -> list[Path]:
    """build's `src`: one folder or several (e.g. clips and clips-more), as a list."""
    folders = [Path(src)] if isinstance(src, (str, Path)) else [Path(f) for f in src]
    if not folders:
        raise FileNotFoundError("no source folder given")
    return folders


def source_root(src: str | Path | Sequence[str | Path]) -> str:
    """The card's `src`: the folder, or for several the folder holding them all (card_file then names
    each source by its path below it, so Path(src) / file finds it either way)."""
    folders = source_folders(src)
    if len(folders) == 1:
        return str(folders[0])
    try:  # relative as given when they all are (a card does not name this machine's folders)
        return os.path.commonpath([os.path.normpath(f) for f in folders])
    except ValueError:  # relative and absolute mixed
        return os.path.commonpath([os.path.abspath(f) for f in folders])


def card_file(path: str | Path, src: str | Path | Sequence[str | Path]) -> str:
    """How the card names a source's file: its name, or with several folders its path below source_root."""
    if len(source_folders(src)) == 1:
        return Path(path).name
    rel = os.path.relpath(os.path.realpath(path), os.path.realpath(source_root(src)))
    return Path(path).name if rel.startswith("..") else rel


def find_sources(src: str | Path | Sequence[str | Path], manifest: str | Path | None = None,
                 warn_unlisted: bool = True) -> list[Source]:
    """Video files under `src` (one folder or several; recursive), with licence / group from a manifest.

    The manifest (JSON list, or CSV with a header) has rows {file|path, licence, group|speaker, source_id,
    av_offset_ms, av_offset_evidence, faces, sync_check, split}: av_offset_ms is the source's own sound lag
    (> 0: the sound comes late), measured e.g. with bench/source_offsets.py --propose (which writes
    av_offset_evidence); its canonical windows are cut in sync. faces (empty: 1) is how many faces the
    picture shows: single-speaker recipes skip sources with more. split pins the source (and its group)
    to train / val / test, so builds with other windows keep the same held-out sources; empty:
    assign_splits chooses; sync_check fail requires train. Rows match files by name: a row pinned to a
    split that names no video is a ManifestError (one line); other rows naming no video, and
    (warn_unlisted) videos the manifest does not list, are one warning line each, with the count and a
    few names. With several folders, one manifest covers them all (the default: the first folder's
    manifest.json).
    """
    folders = source_folders(src)
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"source folder not found: {folder}")
    where = " and ".join(map(str, folders))  # named in messages
    default = folders[0] / "manifest.json"
    manifest = Path(manifest) if manifest else (default if default.is_file() else None)
    rows = read_manifest(manifest) if manifest else {}
    located = [(folder, p) for folder in folders for p in sorted(folder.rglob("*"))
               if p.is_file() and p.suffix.lower() in VIDEO_EXTS]
    files = [p for _, p in located]
    if manifest:
        found = {p.name for p in files}
        unmatched = [name for name in rows if name not in found]
        pinned = [f"{name} ({_pinned_split(rows[name], manifest)})" for name in unmatched
                  if _pinned_split(rows[name], manifest)]
        if pinned:
            raise ManifestError(f"{manifest}: {len(pinned)} rows pinned to a split name no video under {where}: "
                                f"{_examples(pinned)}; rows match files by name (extension included): fix the "
                                "names or remove the rows")
        if unmatched:
            _warn(f"{manifest}: {len(unmatched)} of its {len(rows)} rows name no video under {where} "
                  f"({_examples(unmatched)}); they are ignored")
        unlisted = [str(p.relative_to(folder)) for folder, p in located if p.name not in rows]
        if unlisted and warn_unlisted:
            if any(_pinned_split(row, manifest) for row in rows.values()):
                # a manifest that pins splits decides where every source goes: one it misses could
                # take a split its author kept for others
                raise ManifestError(f"{manifest} pins splits but does not list {len(unlisted)} of the {len(files)} "
                                    f"videos under {where} ({_examples(unlisted)}): add them (an empty split lets "
                                    "the build choose) or move them out of the folder")
            _warn(f"{manifest}: {len(unlisted)} of the {len(files)} videos under {where} are not listed "
                  f"({_examples(unlisted)}): licence unknown, split chosen by the build")
    sources, seen = [], set()
    for folder, path in located:
        row = rows.get(path.name, {})
        sid = safe_id(row.get("source_id") or str(path.relative_to(folder).with_suffix("")))
        while sid in seen:
            sid += "_"
        seen.add(sid)
        sources.append(Source(source_id=sid, path=str(path.resolve()),
                              group=str(row.get("group") or row.get("speaker") or sid),
                              licence=str(row.get("licence") or row.get("license") or "unknown"),
                              av_offset_ms=_av_offset(row, manifest), split=_pinned_split(row, manifest),
                              av_offset_evidence=str(row.get("av_offset_evidence") or ""),
                              faces=_faces(row, manifest)))
    return sources


def single_speaker_sources(sources: list[Source]) -> tuple[list[Source], list[dict[str, Any]]]:
    """(the sources showing one face, a rejects.jsonl record for each of the others)."""
    return ([s for s in sources if s.faces <= 1],
            [{"source_id": s.source_id, "path": s.path, "reason": f"{s.faces} faces: not a single-speaker source"}
             for s in sources if s.faces > 1])


def skipped_files(src: str | Path | Sequence[str | Path]) -> list[dict[str, Any]]:
    """Files under `src` (one folder or several) that look like media but cannot be sources, each with
    its reason: audio-only files (no picture to judge) and links that lead nowhere (loops, missing targets)."""
    skipped = []
    for path in (p for folder in source_folders(src) for p in sorted(folder.rglob("*"))):
        suffix = path.suffix.lower()
        if path.is_symlink() and not path.exists():
            try:
                path.resolve(strict=True)
                reason = "unreadable link"
            except RuntimeError:  # Python < 3.13 reports a loop as RuntimeError
                reason = "symlink loop"
            except OSError as err:
                reason = "symlink loop" if err.errno == 40 else "broken symlink (target missing)"
            skipped.append({"source_id": None, "path": str(path), "reason": reason})
        elif suffix in AUDIO_EXTS and suffix not in VIDEO_EXTS and path.is_file():
            skipped.append({"source_id": None, "path": str(path),
                            "reason": f"audio-only file ({suffix}): no video stream"})
    return skipped


def assign_splits(sources: list[Source], fractions: dict[str, float], seed: int,
                  weights: dict[str, float] | None = None) -> list[Source]:
    """Split by group (speaker/source), so no source -- and no speaker -- is in two splits.

    Groups are taken in a seeded-hash order and each goes to the split that is furthest below its
    target share of the total weight (`weights[source_id]`, e.g. duration; 1 per source by
    default), so splits get their share of the material, not just of the files. With >= 3 groups
    every split gets at least one. A source that comes with a split (the manifest's `split` column)
    keeps it, and so does its whole group; those groups count towards their split's share first.
    """
    weights = weights or {}
    group_weight: dict[str, float] = {}
    for s in sources:
        group_weight[s.group] = group_weight.get(s.group, 0.0) + max(float(weights.get(s.source_id, 1.0)), 1e-3)
    groups = sorted(group_weight, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    names = [s for s in SPLITS if fractions.get(s, 0) > 0]
    total = sum(fractions[s] for s in names)
    target = {s: fractions[s] / total * sum(group_weight.values()) for s in names}
    filled = {s: 0.0 for s in names}
    split_of: dict[str, str] = {}
    for s in sources:
        if not s.split:
            continue
        if split_of.get(s.group, s.split) != s.split:
            raise ManifestError(f"group {s.group!r} is pinned to two splits ({split_of[s.group]}, {s.split}); "
                             f"a speaker's sources must share one")
        if s.split not in names:
            raise ManifestError(f"{s.source_id} is pinned to {s.split}, which the split fractions give no share")
        split_of[s.group] = s.split
    for g, split in split_of.items():
        filled[split] += group_weight[g]
    for g in groups:
        if g in split_of:
            continue
        split = max(names, key=lambda s: (target[s] - filled[s]) / target[s])
        split_of[g] = split
        filled[split] += group_weight[g]
    return [Source(**{**asdict(src), "split": split_of[src.group]}) for src in sources]


def train_only_sources(folder: str | Path, manifest: str | Path | None, taken: set[str]) -> list[Source]:
    """Sources that join the train split only (build's `train_extra`): they take no part in
    assign_splits, so the val / test sources, their pairs and their donor pools are what a build
    without them makes. With a manifest only the files it lists are used (the way to leave out a clip
    whose speaker may be in val or test). Their ids must differ from the main sources' ids."""
    found = find_sources(folder, manifest, warn_unlisted=not manifest)  # with one: the unlisted are left out
    if manifest:
        listed = read_manifest(manifest)
        found = [s for s in found if Path(s.path).name in listed]
    elsewhere = [f"{Path(s.path).name} ({s.split})" for s in found if s.split not in ("", "train")]
    if elsewhere:
        raise ManifestError(f"{manifest or Path(folder) / 'manifest.json'}: {len(elsewhere)} train-extra sources "
                            f"are pinned to another split: {_examples(elsewhere)}; --train-extra sources are train "
                            "only: remove their split or list them in --manifest")
    clash = sorted({s.source_id for s in found} & taken)
    if clash:
        raise ManifestError(f"train_extra: source ids also in the main sources: {', '.join(clash)}")
    return [replace(s, split="train") for s in found]


def voice_sources(paths: tuple[str, ...], folder: Path) -> list[Source]:
    """Audio-only recordings as train sources (build's `train_voices`): each becomes `folder/voice_<stem>.mkv`,
    its sound (FLAC, not re-coded lossily) under a still black 64x64 picture, written once (then renamed);
    the pipeline needs a picture to copy, the audio_quality judge never looks at it. Cut at the
    recording's probed duration (-shortest let the picture run on by a varying amount, which moved
    babble segments drawn from it) and bit-exact, so a rebuild writes the same bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for path in paths:
        sid = safe_id(f"voice_{Path(path).stem}")
        video = folder / f"{sid}.mkv"
        if not video.is_file():
            # named like _write_atomically's temporaries, so clean_stale_temporaries finds a killed writer's
            tmp = folder / f".{video.name}.tmp{os.getpid()}"
            seconds = media.probe(path).duration
            if not seconds:
                raise ValueError(f"train_voices: no duration for {path}")
            try:
                with _ffmpeg_writing_to(folder):
                    media.run_ffmpeg(["-y", "-f", "lavfi", "-i", "color=c=black:s=64x64:r=25", "-i", str(path),
                                      "-map", "0:v", "-map", "1:a", "-t", f"{seconds:.3f}", "-c:v", "libx264",
                                      "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "flac",
                                      "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact",
                                      "-map_metadata", "-1", "-f", "matroska", str(tmp)])
                tmp.rename(video)
            except BaseException:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
        out.append(Source(source_id=sid, path=str(video.resolve()), group=sid,
                          licence=f"see the donors folder ({Path(path).name})", split="train"))
    return out


def donor_splits(paths: list[str], fractions: dict[str, float], seed: int) -> dict[str, tuple[str, ...]]:
    """The --donors files split like sources (assign_splits, one group per file stem): each file
    lands in one split only, so a voice heard in a test pair's rejected side was never a training
    negative. Splits without a share get none."""
    found = [Source(source_id=Path(p).stem, path=p, group=Path(p).stem) for p in paths]
    assigned = assign_splits(found, fractions, seed) if found else []
    return {split: tuple(sorted(s.path for s in assigned if s.split == split)) for split in SPLITS}


# ----------------------------------------------------------------------------- packing

def _iter_samples(tar_path: Path) -> Iterator[tuple[str, list[tarfile.TarInfo], tarfile.TarFile]]:
    with tarfile.open(tar_path) as tar:
        members = tar.getmembers()
        by_key: dict[str, list[tarfile.TarInfo]] = {}
        for m in members:
            by_key.setdefault(m.name.split(".", 1)[0], []).append(m)
        for key in sorted(by_key):
            yield key, by_key[key], tar


def _worker_init(parent_pid: int) -> None:
    """Pool worker set-up: one thread, and exit when the build process is gone.

    One source per process: intra-op threads (torch DSP) would only fight the other workers;
    torch reads OMP_NUM_THREADS when it is first imported (by voice / pitch operators, if at all).
    A worker whose parent was killed (kill -9 leaves no time to stop the pool) would otherwise wait
    on its task queue forever: a watchdog thread notices the new parent, kills the worker's own
    children (ffmpeg) and exits.
    """
    import threading

    os.environ["OMP_NUM_THREADS"] = "1"

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        for children in Path("/proc/self/task").glob("*/children"):  # Linux; elsewhere ffmpeg finishes alone
            for pid in children.read_text().split():
                try:
                    os.kill(int(pid), 9)
                except OSError:
                    pass
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watchdog").start()


STALE_AGE_S = 24 * 3600  # a temporary older than this is stale whatever its PID says (PIDs get reused)


def pid_running(pid: int) -> bool:
    """Whether process `pid` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def clean_stale_temporaries(out_dir: Path, canonical_dir: Path) -> list[Path]:
    """Remove what killed builds left behind; returns what was removed.

    `.<name>.tmp<PID>` files (shards, staging tars, manifests, probe memos; _write_atomically) under
    `out_dir` and the canonical cache's probes/, and `.<key>.<PID>.*` folders in the canonical cache
    (canonical_windows) are stale when their writer is no longer running on this machine or when
    they are older than a day; a folder from before the PID was in the name counts by age only. A
    running build's temporaries stay.
    """
    now = time.time()
    found = [(p, re.fullmatch(r"\..+\.tmp(\d+)", p.name))
             for folder in (out_dir, canonical_dir / "probes") for p in folder.rglob(".*.tmp*") if p.is_file()]
    if canonical_dir.is_dir():
        found += [(p, re.fullmatch(r"\.[0-9a-f]+\.(\d+)\..+", p.name)) for p in canonical_dir.glob(".*") if p.is_dir()]
    removed = []
    for path, m in found:
        try:
            old = now - path.stat().st_mtime > STALE_AGE_S
        except OSError:
            continue
        if old or (m is not None and not pid_running(int(m.group(1)))):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def write_samples(shard_dir: str | Path, split: str, n: int, out: str | Path, op: str | None = None,
                  severity: int | None = None, pick_random: bool = False,
                  seed: int | None = None) -> list[dict[str, Any]]:
    """Pairs of `split` as `<key>.chosen.mp4` / `<key>.rejected.mp4` (+ .json) files in `out`: the first
    `n`, or (pick_random) `n` drawn with `seed` (None: another draw each time), among the pairs whose
    rejected side's recorded ops include `op` and whose severity is `severity` (None: any).

    Returns [{"key", "record", "chosen", "rejected"}] in shard order.
    """
    matches: list[tuple[Path, str, dict[str, Any]]] = []
    for shard in sorted(Path(shard_dir).glob(f"{split}-[0-9]*.tar")):
        if len(matches) >= n and not pick_random:
            break
        check_shard(shard)  # shards may come from anyone: a key like ../x or /x must not become a path
        for key, members, tar in _iter_samples(shard):
            if len(matches) >= n and not pick_random:
                break
            meta = next((m for m in members if split_member_name(m.name, shard.name)[1] == "json"), None)
            try:
                record = parse_json(tar.extractfile(meta).read(), MAX_SAMPLE_JSON_BYTES,
                                    MAX_SAMPLE_JSON_DEPTH) if meta else {}
            except ValueError as err:
                raise ShardFormatError(f"{shard.name}: {key}.json: {err}") from None
            ops = record.get("ops") if isinstance(record, dict) else None
            if not isinstance(ops, list):
                raise ShardFormatError(f"{shard.name}: {key}: no json record with the list of ops applied")
            if (op is None or op in [r.get("name") for r in ops if isinstance(r, dict)]) and \
                    (severity is None or record.get("severity") == severity):
                matches.append((shard, key, record))
    if pick_random:
        picked = np.random.default_rng(seed).choice(len(matches), size=min(n, len(matches)), replace=False)
        matches = [matches[i] for i in sorted(picked.tolist())]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for shard in dict.fromkeys(shard for shard, _, _ in matches):
        wanted = {key: record for s, key, record in matches if s == shard}
        for key, members, tar in _iter_samples(shard):
            if key in wanted:
                for m in members:
                    (out / ".".join(split_member_name(m.name, shard.name))).write_bytes(tar.extractfile(m).read())
                written.append({"key": key, "record": wanted[key], "chosen": out / f"{key}.chosen.mp4",
                                "rejected": out / f"{key}.rejected.mp4"})
    return written


def describe_ops(ops: list[dict[str, Any]]) -> str:
    """Recorded ops as one line: `audio_shift(offset_ms=-240) + noise(kind=pink, snr_db=12.5)`;
    file paths in params shortened to their names."""
    def value(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:g}"
        if isinstance(v, str):
            return Path(v).name if os.sep in v else v
        return v if isinstance(v, (int, type(None))) else json.dumps(v, separators=(",", ":"))

    return " + ".join(f"{r.get('name')}({', '.join(f'{k}={value(v)}' for k, v in (r.get('params') or {}).items())})"
                      for r in ops) or "(none)"


# ----------------------------------------------------------------------------- one operator, one file

APPLY_MAX_SECONDS = RANGES["window_seconds"][1]  # the longest window a recipe may cut


def apply_operator(src: str | Path, out: str | Path, op: str, severity: int = 3, seed: int = 0,
                   keywords: dict[str, Any] | None = None, donors: tuple[str, ...] | list[str] = (),
                   start: float = 0.0, duration: float | None = None,
                   max_side: int = media.CANONICAL_MAX_SIDE) -> dict[str, Any]:
    """Perturb the video `src` with the operator `op` as a build perturbs one window; write `out` (mp4).

    [start, start + duration) of src (default: start to the end, at most APPLY_MAX_SECONDS) becomes
    one canonical window (25 fps, 16 kHz mono, longest side <= max_side) with the soundtrack around
    it as audio context, as build() cuts them. The operator is built with its defaults and `keywords`
    (checked by the operator itself), bound to an OperatorContext whose donor pool is `donors`, and
    its params are drawn at `severity` with `seed`; it always applies (its `p` is for recipes). `out`
    copies the window's video stream when the operator changes audio only.

    Returns {"op", "severity", "seed", "params", "window", "video_copied"}; ConfigError in one line
    for an unknown operator or keyword, a part too long, or an operator that draws donor material
    and was given none.
    """
    if op not in REGISTRY:
        raise ConfigError(f"unknown operator {op!r}; registered: {', '.join(sorted(REGISTRY))}; {PLUGIN_HINT}")
    operator = REGISTRY[op](**(keywords or {}))
    severity = check_severity(severity)
    info = media.probe(src)
    if not info.has_video or not info.has_audio:
        raise ConfigError(f"{src}: no {'video' if not info.has_video else 'audio'} stream (operators perturb a "
                          "picture with its soundtrack)")
    total = float(info.duration or 0.0)
    if not 0 <= start < total:
        raise ConfigError(f"{src}: --start {start:g} is outside its {total:.2f} s")
    end = min(total, start + duration) if duration else total
    if end - start > APPLY_MAX_SECONDS:
        raise ConfigError(f"{src}: {end - start:.1f} s from {start:g} s is longer than {APPLY_MAX_SECONDS:g} s, the "
                          "longest window a build cuts: choose a part with --start S --duration D")
    source_id = safe_id(Path(src).stem)
    with tempfile.TemporaryDirectory(prefix="avbench_apply_") as tmp:
        (window_file,), track = media.canonicalise_windows(src, tmp, [(start, end)],
                                                           media.canonical_size(info.width, info.height, max_side))
        original = window_clip(track, start, end, str(window_file),
                               meta={"source_id": source_id, "window": [start, end]},
                               context_seconds=max(AUDIO_CONTEXT_SECONDS, operator.audio_context_seconds()))
        context = OperatorContext(source_id=source_id, donor_pool=tuple(str(Path(d).resolve()) for d in donors),
                                  clip=original, source_path=str(Path(src).resolve()))
        try:
            params = operator.with_context(context).sample_params(np.random.default_rng(seed), severity)
        except ConfigError:
            raise
        except ValueError:  # a donor-drawing operator with an empty pool (a build gives it the split's)
            if donors or type(operator).with_context is Transform.with_context:
                raise
            raise ConfigError(f"{op} draws material from other recordings (a donor pool) and was given none: "
                              "pass --donor FILE (repeatable)") from None
        ops = [{"name": op, "params": json.loads(json.dumps(params))}]  # as recorded in a pair's json
        audio_only: list[tuple[Path, np.ndarray, Path]] = []
        written = _render_side(replay(original, ops), ops, window_file, Path(tmp) / "out.mp4", audio_only)
        media.mux_audio_tracks(audio_only)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(written, out)
    return {"op": op, "severity": severity, "seed": seed, "params": ops[0]["params"], "window": [start, end],
            "video_copied": not modifies_video(ops)}


def pack_shards(summaries: list[dict[str, Any]], staging: Path, out_dir: Path,
                max_count: int = 500, max_bytes: int = 512 << 20) -> list[dict[str, Any]]:
    """Pack staging tars into `<split>-%06d.tar` shards, sources in id order; write then rename."""
    shards = []
    for split in SPLITS:
        ids = sorted(s["source_id"] for s in summaries if s["status"] == "ok" and s["split"] == split)
        buffer: list[tuple[str, bytes]] = []
        count = size = 0

        def flush():
            nonlocal buffer, count, size
            if not count:
                return
            path = out_dir / f"{split}-{len([s for s in shards if s['split'] == split]):06d}.tar"

            def write(fh):
                with tarfile.open(fileobj=fh, mode="w") as tar:
                    for name, payload in buffer:
                        tar.addfile(_tarinfo(name, len(payload)), io.BytesIO(payload))

            _write_atomically(path, write)
            shards.append({"file": path.name, "split": split, "count": count, "bytes": path.stat().st_size,
                           "sha256": sha256_file(path)})
            buffer, count, size = [], 0, 0

        for sid in ids:
            for key, members, tar in _iter_samples(staging / f"{sid}.tar"):
                payloads = [(m.name, tar.extractfile(m).read()) for m in members]
                sample_bytes = sum(len(p) for _, p in payloads)
                if count and (count + 1 > max_count or size + sample_bytes > max_bytes):
                    flush()
                buffer.extend(payloads)
                count += 1
                size += sample_bytes
        flush()
    keep = {s["file"] for s in shards}
    for stale in out_dir.glob("*-[0-9][0-9][0-9][0-9][0-9][0-9].tar"):
        if stale.name not in keep:  # left by an earlier build with more shards
            stale.unlink()
    return shards


# ----------------------------------------------------------------------------- build

def _map_sources(fn, sources: list[Source], job: Job, pool: ProcessPoolExecutor | str | None,
                 desc: str, progress: bool) -> dict[str, dict[str, Any]]:
    """{source_id: fn(source, job)} over a process pool, Ray (pool "ray") or here (None), with a progress bar."""
    from tqdm import tqdm

    if pool == "ray":
        return _map_sources_ray(fn, sources, job, desc, progress)
    results: dict[str, dict[str, Any]] = {}
    with tqdm(total=len(sources), desc=desc, unit="src", disable=not progress) as bar:
        if pool is None:  # as in the pool: a crash in one source rejects it, the build goes on
            for s in sources:
                try:
                    results[s.source_id] = fn(s, job)
                except Exception as err:
                    results[s.source_id] = _internal_error(s, err)
                bar.update()
            return results
        futures = {pool.submit(fn, s, job): s for s in sources}
        try:
            for fut in as_completed(futures):
                s = futures[fut]
                try:
                    results[s.source_id] = fut.result()
                except Exception as err:
                    results[s.source_id] = _internal_error(s, err)
                bar.update()
        except BaseException:  # the build stops: start no other source (build() waits for the running ones)
            for fut in futures:
                fut.cancel()
            raise
    return results


def _internal_error(source: Source, err: Exception) -> dict[str, Any]:
    """The summary of a source whose task crashed: a crash in one source must not stop the build.

    A fault of the machine (environment_fault: disk full, I/O error, unwritable output, a killed
    worker) is no crash of the source: it is raised as BuildEnvironmentError, which stops the build;
    so is a worker that cannot run the build's code (worker_fault: BuildWorkerError).
    """
    fault = environment_fault(err, (source.path,), source.source_id) or worker_fault(err, source.source_id)
    if fault is not None:
        raise fault from err
    if isinstance(err, OSError) and _is_source(err.filename, (source.path,)):
        reason = f"cannot read the file: {err.strerror or err}"
    else:
        reason = f"internal error: {err!r}"
    return {"source_id": source.source_id, "path": source.path, "status": "rejected", "reason": reason}


def _run_in_scratch(row: dict[str, Any], fn, job: Job) -> dict[str, Any]:
    """Ray Data map: run fn(source, job) on a cluster node with a scratch staging folder, and return
    what it staged (summary, tar and done marker as bytes) for the driver to write into its own."""
    source = Source(**json.loads(row["source"]))
    with tempfile.TemporaryDirectory(prefix="avbench_stage_") as tmp:
        try:
            summary = fn(source, replace(job, staging_dir=tmp))
        except Exception as err:
            try:
                summary = _internal_error(source, err)
            except BuildError as fault:  # the node's fault: the driver stops the build
                return {"summary": json.dumps({"source_id": source.source_id}), "marker": b"", "tar": b"",
                        "stop": json.dumps([type(fault).__name__, str(fault), getattr(fault, "errno", None),
                                            fault.details])}
        marker, tar = Path(tmp) / f"{source.source_id}.json", Path(tmp) / f"{source.source_id}.tar"
        done = marker.is_file()
        return {"summary": json.dumps(summary), "marker": marker.read_bytes() if done else b"",
                "tar": tar.read_bytes() if done and tar.is_file() else b"", "stop": ""}


def _map_sources_ray(fn, sources: list[Source], job: Job, desc: str, progress: bool) -> dict[str, dict[str, Any]]:
    """_map_sources on Ray Data: one row per source, one CPU per task; the driver stages the results.

    Sources staged by an earlier run are answered here (fn reads their done marker); the others go
    to the cluster. Each result is written to the driver's staging folder as it arrives (tar, then
    done marker, as process_source does), so a killed driver loses only the sources in flight.
    """
    import ray
    import ray.data
    from tqdm import tqdm

    staging = Path(job.staging_dir)
    results = {s.source_id: fn(s, job) for s in sources if (staging / f"{s.source_id}.json").is_file()}
    todo = [s for s in sources if s.source_id not in results]
    if not todo:
        return results
    rows = ray.data.from_items([{"source": json.dumps(asdict(s))} for s in todo], override_num_blocks=len(todo))
    rows = rows.map(_run_in_scratch, fn_kwargs={"fn": fn, "job": job}, num_cpus=1)
    with tqdm(total=len(todo), desc=desc, unit="src", disable=not progress) as bar:
        for row in rows.iter_rows():
            if row["stop"]:
                kind, message, code, details = json.loads(row["stop"])
                worker = kind == BuildWorkerError.__name__
                fault = BuildWorkerError(message) if worker else BuildEnvironmentError(message, code)
                fault.details = details
                raise fault
            summary = json.loads(row["summary"])
            if row["marker"]:
                if row["tar"]:
                    _write_atomically(staging / f"{summary['source_id']}.tar", lambda fh: fh.write(row["tar"]))
                _write_atomically(staging / f"{summary['source_id']}.json", lambda fh: fh.write(row["marker"]))
            results[summary["source_id"]] = summary
            bar.update()
    return results


def init_ray(address: str | None = None, **kw: Any) -> None:
    """Connect to the Ray cluster at `address` (None: RAY_ADDRESS, else a local Ray); no-op when connected.

    A local Ray's workers get this checkout first on their path, so they run the code the driver
    runs; on a cluster the code is installed or shipped by `ray job submit --working-dir`.
    """
    import logging

    import ray
    import ray.data

    if ray.is_initialized():
        return
    if address is None and "RAY_ADDRESS" not in os.environ:
        here = str(Path(__file__).resolve().parents[1])
        kw.setdefault("runtime_env", {"env_vars": {
            "PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)}})
    ray.init(address=address, log_to_driver=False, **kw)
    ray.data.DataContext.get_current().enable_progress_bars = False  # ours (tqdm) counts sources
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def publish(local_dir: Path, url: str) -> None:
    """Copy a build's files (shards, rejects.jsonl, card, manifest.json last) to a URL; drop stale shards there.

    A publish that fails part-way is finished by publishing again (build() says so)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    root = root.rstrip("/")
    fs.makedirs(root, exist_ok=True)  # object stores: nothing; folder-like stores need the folder
    files = sorted((p for p in local_dir.iterdir() if p.is_file() and not p.name.startswith(".")),
                   key=lambda p: p.name == "manifest.json")
    for f in files:
        fs.put_file(str(f), f"{root}/{f.name}")
    names = {f.name for f in files}
    for stale in fs.glob(f"{root}/*-[0-9][0-9][0-9][0-9][0-9][0-9].tar"):
        if stale.rsplit("/", 1)[-1] not in names:
            fs.rm_file(stale)


def _write_rejects(out_dir: Path, rejects: list[dict[str, Any]]) -> None:
    _write_atomically(out_dir / "rejects.jsonl",
                      lambda fh: fh.write("".join(json.dumps(r) + "\n" for r in rejects).encode()))


def _fail_on_empty_splits(split_sources: list[Source], fractions: dict[str, float], n_found: int,
                          rejects: list[dict[str, Any]], out_dir: Path) -> None:
    """Stop the build (rejects.jsonl written) when a split asked for got no usable source.

    Failing here, not warning: `python -m train` needs val and `eval` needs val and test, and would
    only fail later, far from the cause. The canonical cache keeps the work done so far.
    """
    empty = [s for s in SPLITS if fractions.get(s, 0) > 0 and not any(x.split == s for x in split_sources)]
    if not empty:
        return
    _write_rejects(out_dir, rejects)
    asked = ",".join(f"{fractions.get(s, 0):g}" for s in SPLITS)
    raise SystemExit(
        f"error: no usable source for split {', '.join(empty)}: {len({x.source_id for x in split_sources})} of "
        f"{n_found} sources usable ({len(rejects)} files rejected, see {out_dir / 'rejects.jsonl'}), "
        f"--splits {asked} (train,val,test); add sources or set an unwanted split to 0")


def build(src: str | Path | Sequence[str | Path], dim: str, out: str | Path = "shards", seed: int = 0,
          workers: int = 2,
          recipe: str | Path | None = None, window_seconds: float | None = None,
          max_windows: int = 0, max_side: int = media.CANONICAL_MAX_SIDE,
          hop_seconds: float | None = None, pairs_per_window: int | None = None,
          splits: dict[str, float] | None = None,
          donors: str | Path | None = None, manifest: str | Path | None = None,
          train_extra: str | Path | None = None, train_extra_manifest: str | Path | None = None,
          train_voices: bool = False, cards_dir: str | Path | None = "data_cards", max_count: int = 500,
          max_bytes: int = 512 << 20, progress: bool = True, command: list[str] | None = None,
          backend: str = "local", ray_address: str | None = None, work_dir: str | Path | None = None,
          plugins: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Build `<out>/<dim>/` shards from the videos under `src` (a folder or several) with recipe `recipe`
    (default: dim). A recipe with single_speaker: true skips sources whose manifest `faces` is above 1
    (rejects.jsonl says so); they take no split.

    backend: "local" (a process pool of `workers`) or "ray" (Ray Data on the cluster at ray_address).
    train_extra: a folder of more sources for the train split only (train_only_sources; optional
    train_extra_manifest lists which of its files); val / test pairs stay those of a build without it.
    train_voices: the --donors files that donor_splits gives the train split are also train sources
    (voice_sources; audio-only recordings for the audio-only recipes); val / test unchanged likewise.
    out: a folder or an fsspec URL; for a URL the build happens in `work_dir` (default
    cache/build/<url as a name>, kept for resuming) and is then published there.
    plugins: modules registering operators of their own, imported here and in every worker with
    those of $AVBENCH_PLUGINS and the recipe's `plugins:` (PluginError when one cannot be imported);
    the data card's rebuild command names them.
    """
    check_build_values(window_seconds, hop_seconds, pairs_per_window, max_windows, max_side, splits)  # before anything is made
    plugins = import_plugins(plugins)  # before the recipe: they register the operators it names
    recipe_obj = load_recipe(recipe or dim)  # a bad recipe is refused before anything is written
    root, url = resolve_out(out, dim, work_dir)  # a URL: checked (protocol, writable) before any work
    sources = find_sources(src, manifest)  # a manifest that cannot be used is refused before anything is made
    try:
        out_dir = root / dim
        out_dir.mkdir(parents=True, exist_ok=True)
        with build_lock(out_dir):  # held until published: a second build into OUT stops at once
            result = _build_locked(src, sources, dim, root, recipe_obj, seed=seed, workers=workers, recipe=recipe,
                                   window_seconds=window_seconds, max_windows=max_windows, max_side=max_side,
                                   hop_seconds=hop_seconds, pairs_per_window=pairs_per_window, splits=splits,
                                   donors=donors, manifest=manifest, train_extra=train_extra,
                                   train_extra_manifest=train_extra_manifest, train_voices=train_voices,
                                   cards_dir=cards_dir, max_count=max_count, max_bytes=max_bytes, progress=progress,
                                   command=command, backend=backend, ray_address=ray_address, plugins=plugins)
            if url is None:
                return result
            try:
                publish(result["out_dir"], f"{url}/{dim}")
            except Exception as err:  # the network or the store, after the whole build: keep it, say so
                raise BuildError(" ".join(
                    f"publishing to {url}/{dim} failed: {type(err).__name__}: {err}; the build itself is "
                    f"complete in {out_dir}: run the same command again to publish it".split())) from err
            return {**result, "out_url": f"{url}/{dim}"}
    except OSError as err:  # the machine's fault outside any source (out unwritable, disk full while packing)
        fault = environment_fault(err)
        if fault is None:
            raise
        raise fault from err


def rebuild_command(command: list[str], plugins: list[str]) -> list[str]:
    """`command` with `--plugin M` added for each of `plugins` it does not name (those that came from
    AVBENCH_PLUGINS), so the data card's command rebuilds the same pairs without that variable."""
    named = {b for a, b in zip(command, command[1:]) if a == "--plugin"}
    named |= {a.split("=", 1)[1] for a in command if a.startswith("--plugin=")}
    return [*command, *(arg for m in plugins if m not in named for arg in ("--plugin", m))]


def resolve_out(out: str | Path, dim: str, work_dir: str | Path | None = None) -> tuple[Path, str | None]:
    """(local folder the build writes OUT/<dim>/ into, URL it then publishes to or None).

    A folder is itself; file:///abs/path is that folder. Any other URL must name a protocol fsspec
    knows and be writable (a small object is written and removed under URL/<dim>), or BuildError in
    one line before any work; its build happens in `work_dir` (default cache/build/<url as a name>).
    """
    if not (isinstance(out, str) and "://" in out):
        return Path(out), None
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    url = out.rstrip("/")
    try:
        fs, root = fsspec.core.url_to_fs(url)
    except Exception as err:  # an unknown protocol (ValueError), its package missing (ImportError), ...
        raise BuildError(" ".join(f"--out {out}: {type(err).__name__}: {err}".split())) from err
    if isinstance(fs, LocalFileSystem):
        return Path(root), None
    target = f"{root.rstrip('/')}/{dim}"
    check = f"{target}/.avbench-write-check-{socket.gethostname()}-{os.getpid()}"
    try:
        fs.makedirs(target, exist_ok=True)
        fs.pipe_file(check, b"avbench write check\n")
        fs.rm_file(check)
    except Exception as err:  # unreachable, no credentials, no bucket, read-only
        raise BuildError(" ".join(f"--out {out}: cannot write to {url}/{dim} ({type(err).__name__}: {err}); "
                                  "nothing was built".split())) from err
    return Path(work_dir or Path(__file__).resolve().parents[1] / "cache" / "build" / safe_id(out)), url


def _build_locked(src: str | Path | Sequence[str | Path], sources: list[Source], dim: str, out: Path,
                  recipe_obj: Recipe, seed: int, workers: int,
                  recipe: str | Path | None,
                  window_seconds: float | None, max_windows: int, max_side: int, hop_seconds: float | None,
                  pairs_per_window: int | None, splits: dict[str, float] | None, donors: str | Path | None,
                  manifest: str | Path | None, train_extra: str | Path | None,
                  train_extra_manifest: str | Path | None, train_voices: bool, cards_dir: str | Path | None,
                  max_count: int, max_bytes: int, progress: bool, command: list[str] | None, backend: str,
                  ray_address: str | None, plugins: list[str]) -> dict[str, Any]:
    """build() into the local folder `out`, whose OUT/<dim>/ build() has locked; `sources` are those of
    `src` (find_sources, with the manifest)."""
    from .cards import write_card

    t0 = time.time()
    recipe_path = str(Path(recipe) if recipe and Path(recipe).suffix else Path(__file__).parent / "recipes" / f"{recipe or dim}.yaml")
    window = float(window_seconds or recipe_obj.window_seconds)
    out_dir = Path(out) / dim
    out_dir.mkdir(parents=True, exist_ok=True)
    fractions = splits or recipe_obj.splits
    key_parts = [PIPELINE_VERSION, recipe_obj.source_text, seed, window, max_windows, max_side, hop_seconds or 0,
                 pairs_per_window or 0, fractions, str(Path(donors).resolve()) if donors else ""]
    if train_extra:  # only then: a build without it keeps its key (and its staged pairs)
        key_parts += [str(Path(train_extra).resolve()),  # (not UTF-8: read_manifest says so in one line)
                      Path(train_extra_manifest).read_text(errors="surrogateescape") if train_extra_manifest else ""]
    if train_voices:
        key_parts.append("train_voices")
    all_plugins = tuple(dict.fromkeys([*plugins, *recipe_obj.plugins]))
    if all_plugins:  # their operators' code makes the pairs; a build without them keeps its key
        key_parts.append(["plugins", list(all_plugins)])
    config_key = hashlib.sha256(json.dumps(key_parts).encode()).hexdigest()[:12]
    staging = out_dir.resolve() / ".staging" / config_key  # a changed config never reuses old pairs
    staging.mkdir(parents=True, exist_ok=True)

    canonical_dir = Path(out).resolve() / ".canonical"  # absolute: Ray workers run elsewhere
    clean_stale_temporaries(out_dir, canonical_dir)
    donors_dir = Path(os.path.realpath(donors)) if donors else None  # the demo keeps its donor voices under src
    skipped = [r for r in skipped_files(src)
               if not (donors_dir and Path(os.path.realpath(r["path"])).is_relative_to(donors_dir))]
    if recipe_obj.single_speaker:  # a pair's "original" must be one speaker's face and voice
        sources, several = single_speaker_sources(sources)
        skipped += several
    if not sources:
        _write_rejects(out_dir, skipped)
        where = " and ".join(map(str, source_folders(src)))
        raise SystemExit(f"no video files ({', '.join(sorted(VIDEO_EXTS))}) under {where}"
                         + (f" ({len(skipped)} other files skipped, see {out_dir / 'rejects.jsonl'})" if skipped else ""))
    # media files only: a donor folder may hold a manifest or notes (e.g. the demo's donors.json)
    external = sorted(str(p.resolve()) for p in Path(donors).rglob("*")
                      if p.is_file() and p.suffix.lower() in AUDIO_EXTS | VIDEO_EXTS) if donors else []
    external_split = donor_splits(external, fractions, seed)
    extra_sources = (train_only_sources(train_extra, train_extra_manifest, {s.source_id for s in sources})
                     if train_extra else [])
    if recipe_obj.single_speaker:
        extra_sources, several = single_speaker_sources(extra_sources)
        skipped += several
    if train_voices and not donors:
        raise ValueError("train_voices needs donors: the train split's --donors files are the voices")
    voices = voice_sources(external_split["train"], out_dir / ".train_voices") if train_voices else []
    extra_sources += voices
    job = Job(recipe_path=str(Path(recipe_path).resolve()), seed=seed, window_seconds=window, staging_dir=str(staging),
              max_side=max_side, max_windows=max_windows,
              hop_seconds=float(hop_seconds or 0), pairs_per_window=int(pairs_per_window or 0),
              canonical_dir=str(canonical_dir), plugins=all_plugins)

    pool: ProcessPoolExecutor | str | None = None
    if backend == "ray":
        init_ray(ray_address)
        pool = "ray"
    elif workers > 1:
        # spawn, not fork: a parent that already ran torch (OpenMP pool) deadlocks forked children
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_worker_init, initargs=(os.getpid(),))
    try:
        # pass 1: probe + canonicalise every source, so only usable ones take a split and a rejected
        # file never moves a good source to another split
        checks = _map_sources(check_source, sources + extra_sources, job, pool, f"{dim}: checking sources", progress)
        usable = [s for s in sources if checks[s.source_id]["status"] == "ok"]
        split_sources = assign_splits(usable, fractions, seed,
                                      weights={s.source_id: checks[s.source_id]["duration"] or 0.0 for s in usable})
        split_sources += [s for s in extra_sources if checks[s.source_id]["status"] == "ok"]
        rejects = skipped + [{"source_id": s.source_id, "path": s.path, "reason": checks[s.source_id]["reason"]}
                             for s in sources + extra_sources if checks[s.source_id]["status"] != "ok"]
        _fail_on_empty_splits(split_sources, fractions, len(sources), rejects, out_dir)
        # a voice made a train source is in the pool once, as that source (its own pairs then never
        # babble with the same recording)
        wrapped = set(external_split["train"]) if voices else set()
        job = replace(job, donors={split: tuple(sorted(s.path for s in split_sources if s.split == split))
                                   + tuple(d for d in external_split[split] if d not in wrapped) for split in SPLITS})
        # pass 2: pairs
        done = _map_sources(process_source, split_sources, job, pool, f"{dim}: sources", progress)
    except BaseException:
        if isinstance(pool, ProcessPoolExecutor):  # the sources running finish (or fail) first
            pool.shutdown(cancel_futures=True)
        with contextlib.suppress(OSError):
            clean_stale_temporaries(out_dir, canonical_dir)  # what the stopped workers were writing
        raise
    finally:
        if isinstance(pool, ProcessPoolExecutor):
            pool.shutdown()
    summaries = sorted([{**done[s.source_id], "split": s.split, "pairs": done[s.source_id].get("pairs", 0)}
                        for s in split_sources]
                       + [{**c, "split": "", "pairs": 0} for c in checks.values() if c["status"] != "ok"],
                       key=lambda s: s["source_id"])
    rejects = skipped + [{"source_id": s["source_id"], "path": s["path"], "reason": s["reason"]}
                         for s in summaries if s["status"] != "ok"]
    _fail_on_empty_splits([s for s in split_sources if done[s.source_id]["status"] == "ok"], fractions,
                          len(sources), rejects, out_dir)
    split_of = {s.source_id: s.split for s in split_sources}
    sources = [replace(s, split=split_of.get(s.source_id, "")) for s in sources + extra_sources]

    t_sources = time.time() - t0
    shards = pack_shards(summaries, staging, out_dir, max_count=max_count, max_bytes=max_bytes)
    _write_rejects(out_dir, rejects)
    _write_json_atomically(out_dir / "manifest.json", {"dim": dim, "config_key": config_key, "shards": shards,
                                                       "build_wall_s": round(time.time() - t0, 2)})
    result = {
        "dim": dim, "recipe": recipe_obj, "sources": sources, "summaries": summaries, "shards": shards,
        "rejects": rejects, "seed": seed, "window_seconds": window, "out_dir": out_dir,
        "hop_seconds": hop_seconds or window, "pairs_per_window": pairs_per_window or recipe_obj.pairs_per_window,
        "command": rebuild_command(command or sys.argv, plugins), "wall_s": time.time() - t0, "src": source_root(src),
        "plugins": list(all_plugins),
        "max_side": max_side, "donors": str(donors) if donors else None,
        "train_extra": str(train_extra) if train_extra else None,
        "train_voices": [v.source_id for v in voices],
        "card_files": {s.source_id: card_file(s.path, src) for s in sources},
    }
    t_pack = time.time() - t0 - t_sources
    card = write_card(result, cards_dir=Path(cards_dir) if cards_dir else None)
    result["card"] = card
    result["phase_s"] = {"sources": t_sources, "pack": t_pack, "card": time.time() - t0 - t_sources - t_pack}
    return result
