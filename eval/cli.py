"""`python -m eval score` and `python -m eval filter`: exported judges applied to video files.

score: one JSON line per video on stdout (and in --out: .jsonl, or .csv with columns path, one per
dimension, status, error):
    {"path": "a.mp4", "scores": {"lip_sync": 0.91}, "status": {"lip_sync": "ok"},
     "offset": {"lip_sync": {"ms": 0.0, "confidence": 0.41}}}
    {"path": "long.mp4", "scores": {...}, "status": {...}, "windows": {"lip_sync": [{"start": 0.0, "end": 5.0, "score": 0.8}, ...]}}
    {"path": "two.mp4", "scores": {"lip_sync": 0.88}, "status": {...}, "offset": {...},
     "faces": {"lip_sync": [{"box": [412.0, 88.5, 640.2, 330.1], "score": 0.88, "offset_ms": 0.0,
                             "confidence": 0.39, "frames": 438}, {"box": [...], "score": 0.07, ...}]}}
    {"path": "bad.mp4", "scores": {}, "status": {"lip_sync": "unreadable"}, "error": "unreadable media: ..."}
"status" says whether the judge could judge the file: ok | no_audio | too_short | no_face (eval/scorer.py)
| unreadable. "offset" is the estimated audio offset (positive: the audio lags the picture) and its
confidence, for judges that estimate timing (Scorer.estimates_timing). "windows" is present for videos
longer than one window, or always with --windows. "faces" (judges that look at a face: not whole-frame
or audio-only ones) lists each face tracked in the video, up to --max-faces (default 4) per window,
most tracked first: "box" [x0, y0, x1, y1] in pixels of the upright picture (the median over the
face's windows), "score" (that face's P(yes), decided on its own windows as the clip is), "offset_ms"
and "confidence" (its offset estimate, null for a judge that estimates no timing) and "frames" (the
frames it was found on); [] when no face was found. With several faces the clip's score, offset and
windows are the speaking face's: in each window the best-synced face (eval/scorer.py), whose index
into "faces" each window then names ("face"). A one-face video's record is the one-face record plus
its single "faces" entry. A file that cannot be read or scored gives a line
with "error" and the batch goes on. stderr gets one line per file for people (summary_line:
"a.mp4: lip_sync: audio lags by 520 ms (confidence 0.08), P(yes) 0.02"); stdout stays JSON. A judge
whose calibration states no prior (an older export) gets a warning line: its 0.5 is not "equally likely". Exit status: 0 when at least one video was scored (or none was
given), 1 when every video failed, 130 / 143 when stopped by SIGINT / SIGTERM.

--out is written as the records finish, one whole line per write, and OUT.settings.json beside it
names the judges (a digest of each export's weights, config, preprocessing and calibration) and
--windows. Ctrl-C or SIGTERM stops within a moment: the queued files are cancelled, the worker
processes (and their ffmpeg) killed, and one line says how many files were scored. Running the same
command again resumes (the default, or --resume): the videos already in --out are skipped, by path as
given; a last line torn by kill -9 is cut off. Records of other judges or settings are refused with
one line, never mixed; --overwrite starts over. An --out that cannot be written fails before the
first file.

filter: scores the videos (files, or folders searched recursively for video extensions), keeps
those whose score is >= --min (default DEFAULT_MIN, 0.5) on every dimension and whose status is ok (or listed in
--keep-status), and writes OUT_DIR/kept.txt and OUT_DIR/rejected.txt: one line per video,
tab-separated: path, then dim=score for each dimension, then status=... when it is not ok (and
error=... for a file that failed, which is rejected). `cut -f1 kept.txt` gives the paths.
--min is a number for every dimension, or DIM=NUMBER (repeatable) per dimension. The two files are
written and resumed as score's --out (OUT_DIR/filter.settings.json names the judges, --min and
--keep-status); a re-run with another --min / --keep-status splits the earlier lines again from
their scores (6 decimals) instead of scoring those files again.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from perturb.media import VIDEO_EXTS  # the shared media layer

# filter's default --min: for a judge calibrated at the 50/50 prior, yes and no equally likely
DEFAULT_MIN = 0.5


def quiet_transformers() -> None:
    """No progress bars from transformers ("Loading weights", "Writing model shards") on stderr, without
    importing it: a plain judge loads without it (train/judge_core.py), and its bars start off when the
    variable is set before its first import."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def load_scorers(dirs: Sequence[str], device: str | None = None, batch_size: int = 8,
                 max_faces: int | None = None) -> list:
    from .scorer import MAX_FACES, Scorer

    if max_faces is not None and max_faces < 1:
        raise SystemExit(f"error: --max-faces must be at least 1, got {max_faces}")

    quiet_transformers()  # keep stderr readable: no "Loading weights" bar per judge
    scorers, seen = [], {}
    for d in dirs:
        try:
            s = Scorer.from_pretrained(d, device=device, batch_size=batch_size, max_faces=max_faces or MAX_FACES)
        except (ValueError, FileNotFoundError) as exc:  # a fault of the export, said in one line naming the file
            raise SystemExit(f"error: cannot load the judge in {d}: {' '.join(str(exc).split())[:500]}")
        except Exception as exc:
            raise SystemExit(f"error: cannot load the judge in {d}: {type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:300]}")
        base = s.dim
        seen[base] = seen.get(base, 0) + 1
        if seen[base] > 1:  # two judges of the same dimension: keep both, suffix the second
            s.dim = f"{base}_{seen[base]}"
        scorers.append(s)
    return scorers


def _cfg_key(cfg) -> str:
    try:
        return str(cfg.fingerprint())
    except Exception:
        try:
            return json.dumps(cfg.to_dict(), sort_keys=True, default=str)
        except Exception:
            return str(id(cfg))


def _landmark_note(scorers: Sequence) -> str:
    """", FaceMesh on litert" (or "mediapipe") when a judge reads FaceMesh landmarks: the two engines
    give landmarks a fraction of a pixel apart (train/facemesh_litert.py), so a score says which ran."""
    if not any(getattr(s.cfg, "face_detector", None) == "mediapipe" for s in scorers):
        return ""
    from train.landmarks import landmark_runtime

    return f", FaceMesh on {landmark_runtime()}"


def _windows_of_all(scorers: Sequence, path: str, ahead: Any = None) -> dict[str, Any]:
    """{config key: the video's windows for that config, or the exception that stopped them}.

    One decode (and one face search per window, where the configs agree on it) serves every config
    that cuts the same windows (train.preprocess.same_windows_key); judges with another frame rate or
    window length get a decode of their own. `ahead`: the file's decode already started
    (perturb.media.DecodeAhead), handed to the first group (windows_for_configs closes it)."""
    from train.preprocess import same_windows_key, windows_for_configs

    configs: dict[str, Any] = {}
    for s in scorers:
        configs.setdefault(_cfg_key(s.cfg), s.cfg)
    max_faces = max((getattr(s, "max_faces", 1) for s in scorers), default=1)  # each judge keeps its own
    groups: dict[Any, list[str]] = {}
    for key, cfg in configs.items():
        groups.setdefault(same_windows_key(cfg), []).append(key)
    out: dict[str, Any] = {}
    for keys in groups.values():
        handed, ahead = ahead, None  # the first group reads the decode started ahead (and closes it)
        try:
            for key, wins in zip(keys, windows_for_configs(path, [configs[k] for k in keys], return_info=True,
                                                           max_faces=max_faces, ahead=handed)):
                out[key] = wins if wins else ValueError(f"no window could be cut from {path}")
        except Exception as exc:  # a bad file must not stop the batch: every judge of the group says so
            out.update({k: exc for k in keys})
    if ahead is not None:  # no judge to decode for
        ahead.close()
    return out


def score_video(scorers: Sequence, path: str, always_windows: bool = False, ahead: Any = None,
                windows: dict[str, Any] | None = None) -> dict[str, Any]:
    """One output record for one video; decodes once per distinct window geometry (_windows_of_all),
    unless its `windows` (_windows_of_all's) are given."""
    rec: dict[str, Any] = {"path": path, "scores": {}, "status": {}}
    windows_out: dict[str, list] = {}
    offsets: dict[str, dict[str, float]] = {}
    faces: dict[str, list] = {}
    windows = _windows_of_all(scorers, path, ahead) if windows is None else windows
    errors = []
    for s in scorers:
        try:
            wins = windows[_cfg_key(s.cfg)]
            if isinstance(wins, Exception):
                raise wins
            r = s.score_file(path, windows=wins)
            rec["scores"][s.dim] = r["score"]
            rec["status"][s.dim] = r.get("status", "ok")
            if "offset" in r:
                offsets[s.dim] = {"ms": r["offset"]["ms"], "confidence": round(r["offset"]["confidence"], 4)}
            if always_windows or len(r["windows"]) > 1:
                windows_out[s.dim] = r["windows"]
            if "faces" in r:
                faces[s.dim] = [dict(f, confidence=None if f["confidence"] is None else round(f["confidence"], 4))
                                for f in r["faces"]]
        except Exception as exc:  # a bad file must not stop the batch
            msg = " ".join(str(exc).split()) or type(exc).__name__
            errors.append(f"{type(exc).__name__}: {msg}")
            rec["status"][s.dim] = "unreadable"
    if offsets:
        rec["offset"] = offsets
    if faces:
        rec["faces"] = faces
    if windows_out:
        rec["windows"] = windows_out
    if errors:
        rec["error"] = errors[0] if len(set(errors)) == 1 else "; ".join(dict.fromkeys(errors))
    return rec


def offset_phrase(ms: float) -> str:
    """'audio lags by 520 ms' (positive: the sound comes late), 'audio leads by 80 ms', 'no audio offset'."""
    if abs(ms) < 0.5:
        return "no audio offset"
    return f"audio {'lags' if ms > 0 else 'leads'} by {abs(ms):.0f} ms"


def summary_line(rec: dict[str, Any]) -> str:
    """One human-readable line for a score record (stderr), e.g.
    'a.mp4: lip_sync: audio lags by 520 ms (confidence 0.08), P(yes) 0.02'."""
    if "error" in rec and not rec.get("scores"):
        return f"{rec['path']}: error: {rec['error']}"
    parts = []
    for dim, score in rec.get("scores", {}).items():
        bits = []
        st = rec.get("status", {}).get(dim, "ok")
        if st != "ok":
            bits.append(f"status {st}")
        off = rec.get("offset", {}).get(dim)
        if off is not None:
            bits.append(f"{offset_phrase(off['ms'])} (confidence {off['confidence']:.2f})")
        bits.append(f"P(yes) {score:.2f}")
        n_faces = len(rec.get("faces", {}).get(dim) or [])
        if n_faces > 1:
            bits.append(f"speaking face of {n_faces}")
        parts.append(f"{dim}: {', '.join(bits)}")
    failed = [d for d, st in rec.get("status", {}).items() if st == "unreadable"]
    parts += [f"{d}: unreadable" for d in failed]
    return f"{rec['path']}: {'; '.join(parts)}"


def prior_warnings(scorers: Sequence) -> list[str]:
    """A line for each judge whose calibration states no prior: its 0.5 is not 'equally likely'."""
    out = []
    for s in scorers:
        if getattr(s.calibrator, "prior", None) is None:
            out.append(f"warning: {s.dim}: {s.path or 'its export'} has no calibration prior (calibration.json "
                       f"without \"prior\", or none): a score of 0.5 does not mean yes and no are equally likely; "
                       f"re-run `python -m eval evaluate` to calibrate it at 0.5")
    return out


def demo_warnings(scorers: Sequence, videos: Sequence[str]) -> list[str]:
    """A line for each judge trained on the demo corpus that is asked to score other files."""
    out = []
    for s in scorers:
        if getattr(s, "trained_on_demo_corpus", False):
            outside = [v for v in videos if not s.from_training_data(v)]
            if outside:
                out.append(f"warning: {s.dim}: {s.path or 'this judge'} was trained on the synthetic demo corpus, for "
                           f"checking the pipeline, not for real footage ({len(outside)} of {len(videos)} files come "
                           f"from elsewhere); score real videos with a real judge: --scorer {s.dim} (packaged) or "
                           f"`make real DIM={s.dim}`")
    return out


def default_workers() -> int:
    """Worker processes for score / filter: one per CPU core this process may use."""
    from train.device import usable_cores

    return usable_cores()


_WORKER_JOB: dict[str, Any] = {}  # the judges of this worker process (inherited through fork, or loaded)


def _die_with_parent(parent: int | None) -> None:
    """Linux: this process gets SIGKILL when the process that started it dies (even by kill -9), so
    no worker outlives an `eval score` killed outright; elsewhere nothing."""
    if parent is None or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - no prctl: the parent's stop still kills us
        return
    if os.getppid() != parent:  # it died before the line above took effect
        os._exit(1)


def _worker_start(dirs: list[str], batch_size: int, always_windows: bool, plugins: Sequence[str],
                  next_core: Any = None, parent: int | None = None, max_faces: int | None = None) -> None:
    import torch

    # The main process alone decides when to stop (Ctrl-C, SIGTERM) and then kills each worker's process
    # group: a worker leads its own group, so a Ctrl-C at the terminal does not reach it or its ffmpeg
    # (a decode cut short there would come back as an error record and be kept), and it does not run
    # the main process's handler it inherited through fork.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(os, "setpgrp"):
        os.setpgrp()
    _die_with_parent(parent)
    torch.set_num_threads(1)  # the workers are the parallelism; torch's own threads would only compete
    # (not cv2.setNumThreads: in a process forked after OpenCV's thread pool ran, it never returns)
    if next_core is not None:  # one worker per core: this one takes the next core (its ffmpeg children too)
        with next_core.get_lock():
            slot = next_core.value
            next_core.value += 1
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cores[slot % len(cores)]})
    if not _WORKER_JOB.get("scorers"):  # spawned: load the judges again (a forked worker has them)
        if plugins:
            from train.encoders import import_plugins

            import_plugins(list(plugins))
        _WORKER_JOB["scorers"] = load_scorers(dirs, batch_size=batch_size, max_faces=max_faces)
    _WORKER_JOB["always_windows"] = always_windows


def _score_in_worker(path: str) -> dict[str, Any]:
    return score_video(_WORKER_JOB["scorers"], path, always_windows=_WORKER_JOB["always_windows"])


def _windows_in_worker(path: str) -> tuple[str, dict[str, Any]]:
    """(path, _windows_of_all) in a worker that only decodes and finds faces (score_videos, batch_files);
    an exception that would not survive the trip back is sent as a RuntimeError saying the same."""
    import pickle

    out = _windows_of_all(_WORKER_JOB["scorers"], path)
    for key, wins in out.items():
        if isinstance(wins, Exception):
            try:
                pickle.loads(pickle.dumps(wins))
            except Exception:
                out[key] = RuntimeError(f"{type(wins).__name__}: {wins}")
    return path, out


def _judge_files(scorers: Sequence, files: list[tuple[str, dict[str, Any]]], always_windows: bool
                 ) -> Iterator[dict[str, Any]]:
    """The records of several files whose windows are cut (_windows_of_all): each judge runs once on
    the windows of all of them, batch_size windows at a time (Scorer.precompute), then each file's
    record is made as score_video makes it."""
    for s in scorers:
        key = _cfg_key(s.cfg)
        s.precompute([w[2] for _, wins in files if isinstance(wins.get(key), list) for w in wins[key]])
    try:
        for path, wins in files:
            yield score_video(scorers, path, always_windows=always_windows, windows=wins)
    finally:
        for s in scorers:
            s.precompute([])


def _batched(scorers: Sequence, files: Iterator[tuple[str, dict[str, Any]]], always_windows: bool
             ) -> Iterator[dict[str, Any]]:
    """Records of (path, windows) pairs, the judges run on the windows of as many files as fill their
    largest batch_size (and on what is left at the end)."""
    target = max((s.batch_size for s in scorers), default=1)
    pending: list[tuple[str, dict[str, Any]]] = []
    for item in files:
        pending.append(item)
        if sum(len(w) for _, wins in pending for w in wins.values() if isinstance(w, list)) >= target:
            yield from _judge_files(scorers, pending, always_windows)
            pending = []
    yield from _judge_files(scorers, pending, always_windows)


def score_videos(scorers: Sequence, paths: Sequence[str], workers: int = 1, always_windows: bool = False,
                 plugins: Sequence[str] = (), pin_cores: bool = True, ahead: Any = None,
                 batch_files: bool | None = None) -> Iterator[dict[str, Any]]:
    """score_video for each path, yielded in the order of `paths`. `ahead`: the decode of one of them
    already started (perturb.media.DecodeAhead), read when it is scored in this process, else closed.

    batch_files (default: when a judge is on a GPU): this process runs the judges on the windows of
    several files at once (their batch_size windows: one GPU batch, not one per file), and the
    workers only decode and find faces; they are spawned, as CUDA does not survive a fork. A file's
    logits may then differ from the one-file batches' in the last bits of a float (another batch
    shape); nothing else changes.

    workers > 1: whole files are spread over that many worker processes, each decoding and running
    its own face tracker and judge. They are forked (the loaded judges are inherited), unless this
    process has already run MediaPipe, which does not survive a fork: then they are spawned and load
    the judges from their export folders (after importing `plugins`). A file is scored the same way
    in any worker, so the records do not depend on `workers`; a worker that dies gives its file (and
    the files still waiting) an error record instead of stopping the batch.

    pin_cores: when there are at least as many workers as usable cores, each worker (and the ffmpeg
    it starts) stays on one core: a frame handed between threads (ffmpeg's, MediaPipe's graph's) stays
    in that core's cache, and a worker no longer competes with the other workers' threads
    (BENCHMARKS.md, scoring throughput).
    """
    from train.landmarks import used_in_this_process

    workers = max(1, min(int(workers), len(paths)))
    dirs = [s.path for s in scorers]
    if workers > 1 and used_in_this_process() and None in dirs:
        print("warning: judges without an export folder cannot be loaded by spawned workers; scoring in "
              "one process", file=sys.stderr)
        workers = 1
    if batch_files is None:
        batch_files = any(str(getattr(s, "device", "cpu")).startswith("cuda") for s in scorers)
    if batch_files and None in dirs and workers > 1:
        workers = 1  # spawned workers load the judges' preprocessing from their export folders
    if workers == 1:
        def windows_here() -> Iterator[tuple[str, dict[str, Any]]]:
            nonlocal ahead
            for p in paths:
                mine, ahead = (ahead, None) if ahead is not None and p == ahead.path else (None, ahead)
                yield p, _windows_of_all(scorers, p, mine)
        try:
            if batch_files:
                yield from _batched(scorers, windows_here(), always_windows)
            else:
                for p, wins in windows_here():
                    yield score_video(scorers, p, always_windows=always_windows, windows=wins)
        finally:
            if ahead is not None:
                ahead.close()
        return
    if ahead is not None:
        ahead.close()
    if batch_files:
        yield from _batched(scorers, _pool_items(scorers, paths, workers, always_windows, plugins, pin_cores,
                                                 _windows_in_worker), always_windows)
    else:
        yield from _pool_items(scorers, paths, workers, always_windows, plugins, pin_cores, _score_in_worker)


def _pool_items(scorers: Sequence, paths: Sequence[str], workers: int, always_windows: bool,
                plugins: Sequence[str], pin_cores: bool, task: Any) -> Iterator[Any]:
    """task(path) for each path in `workers` worker processes, in the order of `paths` (score_videos)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from train.landmarks import used_in_this_process

    dirs = [s.path for s in scorers]
    spawn = used_in_this_process() or task is _windows_in_worker
    context = multiprocessing.get_context("spawn" if spawn else "fork")
    _WORKER_JOB["scorers"] = scorers if context.get_start_method() == "fork" else None
    batch_size = scorers[0].batch_size if scorers else 8
    from train.device import usable_cores

    next_core = context.Value("i", 0) if pin_cores and hasattr(os, "sched_setaffinity") and \
        workers >= usable_cores() else None
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_start,
                               initargs=(dirs, batch_size, always_windows, tuple(plugins), next_core, os.getpid(),
                                         getattr(scorers[0], "max_faces", None) if scorers else None))
    futures: list = []
    handed = 0        # records yielded, in the order of `paths`
    finished = False  # every record yielded: the workers are shut down normally
    try:
        futures = [pool.submit(task, p) for p in paths]
        for p, fut in zip(paths, futures):
            try:
                rec = fut.result()
            except Exception as exc:  # a worker died (killed, out of memory): report, go on
                rec = {"path": p, "scores": {}, "status": {s.dim: "unreadable" for s in scorers},
                       "error": f"{type(exc).__name__}: {' '.join(str(exc).split()) or 'worker died'}"} \
                    if task is _score_in_worker else (p, {_cfg_key(s.cfg): exc for s in scorers})
            handed += 1
            yield rec
        finished = True
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM (Interrupted) while waiting for a file
        # stop now: no queued file starts, the workers and their ffmpeg are killed; the files already
        # finished out of order are still handed over (they are done work), then the interrupt goes on
        _stop_pool(pool)
        for fut in futures[handed:]:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                yield fut.result()
        raise
    finally:
        if finished:
            pool.shutdown(wait=True)
        else:  # interrupted, or the caller stopped early (an error, a closed generator): nothing must linger
            _stop_pool(pool)
        _WORKER_JOB.clear()


def _stop_pool(pool) -> None:
    """Cancel the pool's queued files and kill its workers with their process groups (their ffmpeg)
    at once; ProcessPoolExecutor.shutdown alone would wait for every running file."""
    # _processes (pid -> Process) is the executor's only handle on its workers (CPython since 3.2)
    procs = list((getattr(pool, "_processes", None) or {}).values())
    manager = getattr(pool, "_executor_manager_thread", None)
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        if proc.pid is None:
            continue
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the group the worker leads (_worker_start)
        except OSError:  # not (yet) a group leader, or gone
            with contextlib.suppress(OSError):
                os.kill(proc.pid, signal.SIGKILL)
    for proc in procs:
        proc.join(timeout=5)
    if manager is not None:
        # the executor's thread sees its workers gone and ends; let it finish now: left running into
        # interpreter exit, it races concurrent.futures' exit hook (EBADF on its closed wake-up pipe)
        manager.join(timeout=5)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM during `score` / `filter`: the records finished so far are kept."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.exit_code = 128 + signum  # what a shell reports for a process stopped by that signal


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise Interrupted in the main thread (SIGTERM would otherwise end this process
    at once, leaving the workers running and the output unsaid); a second signal while stopping is
    ignored, so the clean-up is not cut short. The previous handlers are restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(signum)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h if h is not None else signal.SIG_DFL)


# ----------------------------------------------------------------------------- resumable outputs
SETTINGS_SUFFIX = ".settings.json"   # score --out OUT: OUT.settings.json says which judges wrote OUT
FILTER_SETTINGS = "filter.settings.json"


class _LineFile:
    """A text file that records are appended to as they finish, one whole line per os.write on an
    O_APPEND descriptor: a kill leaves whole lines only (a line torn by kill -9 or a full disk is
    cut off when the file is read back, _read_lines)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)

    def write(self, text: str) -> None:
        data = text.encode("utf-8", "surrogateescape")
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError as err:
            raise SystemExit(f"error: cannot write {self.path}: {err.strerror or err}; the records written "
                             f"before are kept, re-run the same command to resume") from None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _check_writable(path: Path, what: str) -> None:
    """Fail before the first file (not after all of them) when `path` cannot be appended to."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        existed = path.exists()
        if path.is_dir():
            raise IsADirectoryError(21, "is a directory")
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666))
        if not existed:  # only a probe: the real file is made once the judges have loaded
            path.unlink()
    except OSError as err:
        raise SystemExit(f"error: cannot write {what} {path}: {err.strerror or err}") from None


def _read_lines(path: Path) -> list[str]:
    """The whole lines of a file written by _LineFile; a torn last line is cut off the file."""
    if not path.is_file():
        return []
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        keep = raw.rfind(b"\n") + 1
        print(f"# {path}: dropped an unfinished last line (the run writing it was killed)", file=sys.stderr)
        os.truncate(path, keep)
        raw = raw[:keep]
    return [ln.rstrip("\r") for ln in raw.decode("utf-8", "surrogateescape").split("\n")[:-1]]


def _judge_ids(scorers: Sequence) -> list[dict[str, str]]:
    """Who wrote a record: each judge's dimension and a digest of the export files that decide its
    scores (weights, config, preprocessing, calibration)."""
    out = []
    for s in scorers:
        h = hashlib.sha256()
        folder = Path(s.path) if s.path else None
        names = sorted(f.name for f in folder.iterdir() if f.is_file() and (
            f.name in ("config.json", "preprocessing.json", "calibration.json") or ".safetensors" in f.name)) \
            if folder and folder.is_dir() else []
        for name in names:
            h.update(name.encode() + b"\0")
            with open(folder / name, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        out.append({"dim": s.dim, "sha256": h.hexdigest() if names else "unknown"})
    return sorted(out, key=lambda d: d["dim"])


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _read_settings(path: Path) -> dict[str, Any] | None:
    try:
        d = json.loads(path.read_text())
        return d if isinstance(d, dict) else None
    except (OSError, ValueError, RecursionError):
        return None


def _refuse_other_judges(out: str, n: int, settings_file: Path, settings: dict[str, Any] | None,
                         judges: list[dict[str, str]]) -> None:
    """Records of other judges are never mixed with these: one line, and how to start over."""
    if settings is None:
        why = f"no readable {settings_file.name} beside it says which judges wrote them"
    elif settings.get("judges") != judges:
        theirs = [j.get("dim", "?") for j in settings.get("judges") or [] if isinstance(j, dict)]
        why = (f"other exports of {', '.join(theirs)} (other weights, preprocessing or calibration) wrote them"
               if theirs == [j["dim"] for j in judges] else f"other judges ({', '.join(theirs) or '?'}) wrote them")
    else:
        return
    raise SystemExit(f"error: {out} already holds {n} record{'s' if n != 1 else ''}, but {why}: use another "
                     f"output, or --overwrite to start over")


def _csv_row(rec: dict[str, Any], dims: list[str]) -> str:
    buf = io.StringIO()
    odd = sorted({st for st in rec.get("status", {}).values() if st != "ok"})
    csv.writer(buf).writerow([rec["path"], *[("" if rec["scores"].get(d) is None else f"{rec['scores'][d]:.6f}")
                                             for d in dims], ",".join(odd) or "ok", rec.get("error", "")])
    return buf.getvalue()


def _open_score_out(args, scorers: Sequence, dims: list[str]) -> tuple[_LineFile, dict[str, bool]]:
    """(--out opened for appending, {path: scored ok} of the records it already holds).

    By default a run resumes: the records already in --out (written by the same judges, with the same
    --windows) are kept and their files skipped; --overwrite starts over."""
    out = Path(args.out)
    is_csv = out.suffix.lower() == ".csv"
    settings_file = out.with_name(out.name + SETTINGS_SUFFIX)
    settings = {"command": "score", "judges": _judge_ids(scorers),
                "format": "csv" if is_csv else "jsonl", **({} if is_csv else {"windows": bool(args.windows)})}
    header = io.StringIO()
    csv.writer(header).writerow(["path", *dims, "status", "error"])
    done: dict[str, bool] = {}
    lines = [] if args.overwrite else _read_lines(out)
    if lines and not (is_csv and lines == [header.getvalue().rstrip("\r\n")]):
        theirs = _read_settings(settings_file)
        _refuse_other_judges(args.out, len(lines) - is_csv, settings_file, theirs, settings["judges"])
        if theirs != settings:
            what = (f"{'without' if args.windows else 'with'} --windows"
                    if theirs.get("windows") != settings.get("windows")
                    else ", ".join(f"{k}={theirs.get(k)!r}" for k in settings if theirs.get(k) != settings[k]))
            raise SystemExit(f"error: {args.out} was written with other settings ({what}, says {settings_file.name}): "
                             f"run it as it was, use another output, or --overwrite to start over")
        try:
            if is_csv:
                rows = list(csv.reader(lines))
                if rows[0] != ["path", *dims, "status", "error"]:
                    raise ValueError(f"its columns {rows[0]} are not {['path', *dims, 'status', 'error']}")
                done = {r[0]: not r[-1] for r in rows[1:] if r}
            else:
                for ln in lines:
                    rec = json.loads(ln)
                    if not isinstance(rec, dict) or not isinstance(rec.get("path"), str):
                        raise ValueError(f"a line is not a record: {ln[:80]!r}")
                    done[rec["path"]] = "error" not in rec
        except (ValueError, IndexError, RecursionError, csv.Error) as err:
            raise SystemExit(f"error: {args.out} is not an output of `eval score` ({err}): use another "
                             f"output, or --overwrite to start over") from None
        return _LineFile(out), done
    with open(out, "w", encoding="utf-8", newline="") as fh:  # new, empty or --overwrite: start over
        fh.write(header.getvalue() if is_csv else "")
    _write_json_atomic(settings_file, settings)
    return _LineFile(out), done


def _on_gpu(args) -> bool:
    return str(args.device or "cpu").startswith("cuda")


def _workers(args) -> int:
    """--workers, or one per core. With the judges on a GPU the workers only decode and find faces and
    the judges run in this process on the windows of several files at once (score_videos)."""
    return args.workers if args.workers else default_workers()


@contextlib.contextmanager
def _one_torch_thread_on_cpu(args) -> Iterator[None]:
    """On CPU every process, this one included, runs the judge with one torch thread: the judges are
    small, the worker processes are the parallelism, and torch's threads spin-wait for a core when
    the machine is busy (a 2 s window took 300 ms instead of 3 ms on a loaded 2-core machine).
    The caller's setting is restored afterwards."""
    import torch

    before = torch.get_num_threads()
    if not _on_gpu(args):
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _until_stopped(command, args) -> int:
    """Run a scoring command (one torch thread on CPU) until it ends or a signal stops it."""
    try:
        with _one_torch_thread_on_cpu(args), _stop_on_signals():
            return command(args)
    except Interrupted as stop:  # before the first file (loading the judges): nothing to keep
        print("interrupted: no file was scored", file=sys.stderr)
        return stop.exit_code


def cmd_score(args) -> int:
    return _until_stopped(_cmd_score, args)


def _decode_ahead(args) -> Any:
    """The first video's decode started now (perturb.media.DecodeAhead), before the judges load, when
    this process will score it: loading (torch's import) keeps one core busy for a second or more and
    ffmpeg decodes on another meanwhile. None when workers will score it, or the first judge's
    preprocessing cannot be read here (loading it says why)."""
    if not args.videos or min(_workers(args), len(args.videos)) != 1:
        return None
    from perturb.media import DecodeAhead

    from .calibration import read_json
    from .scorer import resolve_export

    try:
        pre = read_json(resolve_export(args.scorer[0]) / "preprocessing.json")
        sr, fps = pre["sr"], pre["fps"]
    except Exception:
        return None
    # an export is untrusted until loaded: decode only at rates its checks allow (PREPROCESS_RANGES)
    if not (isinstance(sr, int) and 8000 <= sr <= 48000 and isinstance(fps, int) and 1 <= fps <= 60):
        return None
    return DecodeAhead(args.videos[0], sr, fps)


def _cmd_score(args) -> int:
    import time

    from train.device import describe_device

    if args.out:
        _check_writable(Path(args.out), "--out")
    ahead = _decode_ahead(args)
    try:
        scorers = load_scorers(args.scorer, device=args.device, batch_size=args.batch_size,
                               max_faces=getattr(args, "max_faces", None))
        dims = [s.dim for s in scorers]
        out, done = _open_score_out(args, scorers, dims) if args.out else (None, {})
    except BaseException:
        if ahead is not None:
            ahead.close()
        raise
    todo = [v for v in args.videos if v not in done]
    workers = max(1, min(_workers(args), len(todo)))
    # the header and the summary go to stderr: stdout stays one JSON line per video
    print(f"# eval score: {', '.join(dims)} on {describe_device(args.device or 'cpu')}, {len(args.videos)} videos, "
          f"{workers} worker process{'es' if workers > 1 else ''}, batch size {args.batch_size}"
          f"{_landmark_note(scorers)}", file=sys.stderr)
    for line in prior_warnings(scorers) + demo_warnings(scorers, args.videos):
        print(line, file=sys.stderr)
    if len(todo) < len(args.videos):
        print(f"# resuming: {len(args.videos) - len(todo)} of {len(args.videos)} videos already in {args.out} "
              f"are skipped (--overwrite starts over)", file=sys.stderr)
    oks = [done[v] for v in args.videos if v in done]  # whether each video's record is a score, not an error
    n_new, seconds, t0 = 0, 0.0, time.perf_counter()
    try:
        with contextlib.closing(score_videos(scorers, todo, workers=workers, always_windows=True,
                                            plugins=args.plugin, ahead=ahead)) as records:
            for rec in records:
                wins = rec.get("windows", {})
                seconds += max((w[-1]["end"] for w in wins.values() if w), default=0.0)  # the span scored
                if not args.windows and all(len(w) <= 1 for w in wins.values()):
                    rec.pop("windows", None)  # one window: its score is the clip's score (--windows keeps it)
                line = json.dumps(rec) + "\n"
                if out is not None:  # first: a record on disk survives whatever stops this run next
                    out.write(_csv_row(rec, dims) if args.out.lower().endswith(".csv") else line)
                n_new += 1
                oks.append("error" not in rec)
                sys.stdout.write(line)
                sys.stdout.flush()
                print(summary_line(rec), file=sys.stderr, flush=True)  # for people; stdout stays JSON
    except Interrupted as stop:
        where = f", records in {args.out}; re-run the same command to resume" if out is not None else ""
        print(f"interrupted: {len(oks)} of {len(args.videos)} files scored{where}", file=sys.stderr)
        return stop.exit_code
    finally:
        if out is not None:
            out.close()
    wall = time.perf_counter() - t0
    print(f"# scored {n_new} videos, {seconds:.1f} s of video in {wall:.1f} s: "
          f"{seconds / max(wall, 1e-9):.1f}x real time, {n_new / max(wall, 1e-9):.2f} videos/s", file=sys.stderr)
    if oks and not any(oks):
        print(f"all {len(oks)} videos failed", file=sys.stderr)
        return 1
    return 0


def expand_sources(srcs: Iterable[str]) -> list[str]:
    out = []
    for s in srcs:
        p = Path(s)
        if p.is_dir():
            out += sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_EXTS)
        else:
            out.append(s)
    return out


def parse_min(values: Sequence[str] | None, dims: Sequence[str]) -> dict[str, float]:
    """Per-dimension thresholds: default DEFAULT_MIN; a plain number sets all; DIM=X overrides one."""
    def number(v: str, x: str) -> float:
        try:
            f = float(x)
        except ValueError:
            raise ValueError(f"--min {v}: {x!r} is not a number") from None
        if f != f:  # NaN: every comparison false, every video rejected without a word
            raise ValueError(f"--min {v}: not a number")
        return f

    thr = {d: DEFAULT_MIN for d in dims}
    for v in values or []:
        if "=" not in v:
            thr = {d: number(v, v) for d in dims}
    for v in values or []:
        if "=" in v:
            d, x = v.split("=", 1)
            if d not in thr:
                raise ValueError(f"--min {v}: unknown dimension {d!r} (have {list(dims)})")
            thr[d] = number(v, x)
    return thr


def cmd_filter(args) -> int:
    return _until_stopped(_cmd_filter, args)


def _filter_line(line: str, dims: Sequence[str]) -> tuple[str, dict[str, float], list[str], bool]:
    """(path, scores, statuses other than ok, failed) of a kept.txt / rejected.txt line."""
    cols = line.split("\t")
    prefixes = tuple(f"{d}=" for d in dims) + ("status=", "error=")
    j = len(cols)
    while j > 1 and cols[j - 1].startswith(prefixes):
        j -= 1
    scores, odd, failed = {}, [], False
    for c in cols[j:]:
        key, _, val = c.partition("=")
        if key == "status":
            odd = [st for st in val.split(",") if st]
        elif key == "error":
            failed = True
        else:
            scores[key] = float(val)
    return "\t".join(cols[:j]), scores, odd, failed


def _kept(scores: dict[str, float], odd: Sequence[str], failed: bool, thr: dict[str, float],
          keep_status: set[str]) -> bool:
    return not failed and all(d in scores and scores[d] >= thr[d] for d in thr) and \
        all(st in keep_status for st in odd)


def filter_verdict(rec: dict[str, Any], dims: Sequence[str], thr: dict[str, float],
                   keep_status: set[str]) -> tuple[bool, str]:
    """(kept, its kept.txt / rejected.txt line) of a score record: path, dim=score per dimension,
    status=... when not ok, error=... for a file that failed."""
    cols = [f"{d}={rec['scores'][d]:.6f}" for d in dims if d in rec["scores"]]
    odd = sorted({st for st in rec["status"].values() if st != "ok"})
    cols += [f"status={','.join(odd)}"] if odd else []
    if "error" in rec:
        cols.append("error=" + rec["error"].replace("\t", " ").replace("\n", " "))
    return _kept(rec["scores"], odd, "error" in rec, thr, keep_status), "\t".join([rec["path"], *cols])


def _cmd_filter(args) -> int:
    out_dir = Path(args.out_dir)
    kept_file, rejected_file = out_dir / "kept.txt", out_dir / "rejected.txt"
    for f in (kept_file, rejected_file):
        _check_writable(f, "--out-dir")
    scorers = load_scorers(args.scorer, device=args.device, batch_size=args.batch_size,
                           max_faces=getattr(args, "max_faces", None))
    dims = [s.dim for s in scorers]
    try:
        thr = parse_min(args.min, dims)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    keep_status = {st.strip() for v in (args.keep_status or []) for st in v.split(",") if st.strip()}
    videos = expand_sources(args.src)
    for line in prior_warnings(scorers) + demo_warnings(scorers, videos):
        print(line, file=sys.stderr)
    settings_file = out_dir / FILTER_SETTINGS
    settings = {"command": "filter", "judges": _judge_ids(scorers), "min": thr, "keep_status": sorted(keep_status)}
    earlier = [] if args.overwrite else [ln for f in (kept_file, rejected_file) for ln in _read_lines(f) if ln]
    done: set[str] = set()
    if earlier:  # resume: the files already decided are skipped
        theirs = _read_settings(settings_file)
        _refuse_other_judges(str(out_dir), len(earlier), settings_file, theirs, settings["judges"])
        try:
            parsed = [(ln, *_filter_line(ln, dims)) for ln in earlier]
        except ValueError as err:
            raise SystemExit(f"error: {out_dir} holds lines that are not `eval filter` output ({err}): use "
                             f"another --out-dir, or --overwrite to start over") from None
        done = {p for _, p, *_ in parsed}
        if theirs != settings:  # another --min / --keep-status: the earlier files are split again
            keep = [ln for ln, _, sc, odd, failed in parsed if _kept(sc, odd, failed, thr, keep_status)]
            drop = [ln for ln, _, sc, odd, failed in parsed if not _kept(sc, odd, failed, thr, keep_status)]
            for f, lines in ((kept_file, keep), (rejected_file, drop)):
                tmp = f.with_name(f".{f.name}.tmp{os.getpid()}")
                tmp.write_bytes("".join(ln + "\n" for ln in lines).encode("utf-8", "surrogateescape"))
                os.replace(tmp, f)
            print(f"# {len(earlier)} earlier records split again for the new --min / --keep-status", file=sys.stderr)
    else:
        for f in (kept_file, rejected_file):
            f.write_bytes(b"")
    _write_json_atomic(settings_file, settings)
    todo = [v for v in videos if v not in done]
    if done:
        print(f"# resuming: {len(videos) - len(todo)} of {len(videos)} videos already in {kept_file.name} / "
              f"{rejected_file.name} are skipped (--overwrite starts over)", file=sys.stderr)
    kept, rejected = _LineFile(kept_file), _LineFile(rejected_file)
    n_done = len(videos) - len(todo)
    try:
        with contextlib.closing(score_videos(scorers, todo, workers=_workers(args), plugins=args.plugin)) as records:
            for rec in records:
                ok, line = filter_verdict(rec, dims, thr, keep_status)
                (kept if ok else rejected).write(line + "\n")
                n_done += 1
    except Interrupted as stop:
        print(f"interrupted: {n_done} of {len(videos)} files scored, records in {kept_file} and "
              f"{rejected_file}; re-run the same command to resume", file=sys.stderr)
        return stop.exit_code
    finally:
        kept.close()
        rejected.close()
    n_kept, n_rejected = (sum(1 for ln in _read_lines(f) if ln) for f in (kept_file, rejected_file))
    print(json.dumps({"kept": n_kept, "rejected": n_rejected, "min": thr, "resumed": len(videos) - len(todo),
                      "kept_file": str(kept_file), "rejected_file": str(rejected_file)}))
    return 0


def cmd_align(args) -> int:
    from .align import align

    res = align(args.scores, args.ratings, dim=args.dim, n_boot=args.n_boot, seed=args.seed)
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0
