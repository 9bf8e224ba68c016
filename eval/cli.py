"""`python -m eval score` and `python -m eval filter`: exported judges applied to video files.

score: one JSON line per video on stdout (and in --out: .jsonl, or .csv with columns path, one per
dimension, status, error):
    {"path": "a.mp4", "scores": {"lip_sync": 0.91}, "status": {"lip_sync": "ok"},
     "offset": {"lip_sync": {"ms": 0.0, "confidence": 0.41}}}
    {"path": "long.mp4", "scores": {...}, "status": {...}, "windows": {"lip_sync": [{"start": 0.0, "end": 5.0, "score": 0.8}, ...]}}
    {"path": "bad.mp4", "scores": {}, "status": {"lip_sync": "unreadable"}, "error": "unreadable media: ..."}
"status" says whether the judge could judge the file: ok | no_audio | too_short | no_face (eval/scorer.py)
| unreadable. "offset" is the estimated audio offset (positive: the audio lags the picture) and its
confidence, for judges that compare audio and picture over offsets. "windows" is present for videos
longer than one window, or always with --windows. A file that cannot be read or scored gives a line
with "error" and the batch goes on. Exit status: 0 when at least one video was scored (or none was
given), 1 when every video failed.

filter: scores the videos (files, or folders searched recursively for video extensions), keeps
those whose score is >= --min on every dimension and whose status is ok (or listed in
--keep-status), and writes OUT_DIR/kept.txt and OUT_DIR/rejected.txt: one line per video,
tab-separated: path, then dim=score for each dimension, then status=... when it is not ok (and
error=... for a file that failed, which is rejected). `cut -f1 kept.txt` gives the paths.
--min is a number for every dimension, or DIM=NUMBER (repeatable) per dimension.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from perturb.media import VIDEO_EXTS  # the shared media layer


def load_scorers(dirs: Sequence[str], device: str | None = None, batch_size: int = 8) -> list:
    from .scorer import Scorer

    try:  # keep stderr readable: no "Loading weights" bar per judge
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover
        pass
    scorers, seen = [], {}
    for d in dirs:
        try:
            s = Scorer.from_pretrained(d, device=device, batch_size=batch_size)
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


def _windows_of_all(scorers: Sequence, path: str) -> dict[str, Any]:
    """{config key: the video's windows for that config, or the exception that stopped them}.

    One decode (and one face search per window, where the configs agree on it) serves every config
    that cuts the same windows (train.preprocess.same_windows_key); judges with another frame rate or
    window length get a decode of their own."""
    from train.preprocess import same_windows_key, windows_for_configs

    configs: dict[str, Any] = {}
    for s in scorers:
        configs.setdefault(_cfg_key(s.cfg), s.cfg)
    groups: dict[Any, list[str]] = {}
    for key, cfg in configs.items():
        groups.setdefault(same_windows_key(cfg), []).append(key)
    out: dict[str, Any] = {}
    for keys in groups.values():
        try:
            for key, wins in zip(keys, windows_for_configs(path, [configs[k] for k in keys], return_info=True)):
                out[key] = wins if wins else ValueError(f"no window could be cut from {path}")
        except Exception as exc:  # a bad file must not stop the batch: every judge of the group says so
            out.update({k: exc for k in keys})
    return out


def score_video(scorers: Sequence, path: str, always_windows: bool = False) -> dict[str, Any]:
    """One output record for one video; decodes once per distinct window geometry (_windows_of_all)."""
    rec: dict[str, Any] = {"path": path, "scores": {}, "status": {}}
    windows_out: dict[str, list] = {}
    offsets: dict[str, dict[str, float]] = {}
    windows = _windows_of_all(scorers, path)
    errors = []
    for s in scorers:
        try:
            wins = windows[_cfg_key(s.cfg)]
            if isinstance(wins, Exception):
                raise wins
            r = s.score_file(path, windows=wins)
            rec["scores"][s.dim] = r["score"]
            rec["status"][s.dim] = r.get("status", "ok")
            if "offset_ms" in r:
                offsets[s.dim] = {"ms": r["offset_ms"], "confidence": round(r["offset_confidence"], 4)}
            if always_windows or len(r["windows"]) > 1:
                windows_out[s.dim] = r["windows"]
        except Exception as exc:  # a bad file must not stop the batch
            msg = " ".join(str(exc).split()) or type(exc).__name__
            errors.append(f"{type(exc).__name__}: {msg}")
            rec["status"][s.dim] = "unreadable"
    if offsets:
        rec["offset"] = offsets
    if windows_out:
        rec["windows"] = windows_out
    if errors:
        rec["error"] = errors[0] if len(set(errors)) == 1 else "; ".join(dict.fromkeys(errors))
    return rec


def default_workers() -> int:
    """Worker processes for score / filter: one per CPU core this process may use."""
    from train.device import usable_cores

    return usable_cores()


_WORKER_JOB: dict[str, Any] = {}  # the judges of this worker process (inherited through fork, or loaded)


def _worker_start(dirs: list[str], batch_size: int, always_windows: bool, plugins: Sequence[str],
                  next_core: Any = None) -> None:
    import torch

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
        _WORKER_JOB["scorers"] = load_scorers(dirs, batch_size=batch_size)
    _WORKER_JOB["always_windows"] = always_windows


def _score_in_worker(path: str) -> dict[str, Any]:
    return score_video(_WORKER_JOB["scorers"], path, always_windows=_WORKER_JOB["always_windows"])


def score_videos(scorers: Sequence, paths: Sequence[str], workers: int = 1, always_windows: bool = False,
                 plugins: Sequence[str] = (), pin_cores: bool = True) -> Iterator[dict[str, Any]]:
    """score_video for each path, yielded in the order of `paths`.

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
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from train.landmarks import used_in_this_process

    workers = max(1, min(int(workers), len(paths)))
    dirs = [s.path for s in scorers]
    if workers > 1 and used_in_this_process() and None in dirs:
        print("warning: judges without an export folder cannot be loaded by spawned workers; scoring in "
              "one process", file=sys.stderr)
        workers = 1
    if workers == 1:
        for p in paths:
            yield score_video(scorers, p, always_windows=always_windows)
        return
    context = multiprocessing.get_context("spawn" if used_in_this_process() else "fork")
    _WORKER_JOB["scorers"] = scorers if context.get_start_method() == "fork" else None
    batch_size = scorers[0].batch_size if scorers else 8
    from train.device import usable_cores

    next_core = context.Value("i", 0) if pin_cores and hasattr(os, "sched_setaffinity") and \
        workers >= usable_cores() else None
    try:
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_start,
                                 initargs=(dirs, batch_size, always_windows, tuple(plugins), next_core)) as pool:
            futures = [pool.submit(_score_in_worker, p) for p in paths]
            for p, fut in zip(paths, futures):
                try:
                    yield fut.result()
                except Exception as exc:  # a worker died (killed, out of memory): report, go on
                    yield {"path": p, "scores": {}, "status": {s.dim: "unreadable" for s in scorers},
                           "error": f"{type(exc).__name__}: {' '.join(str(exc).split()) or 'worker died'}"}
    finally:
        _WORKER_JOB.clear()


def _write_out(records: list[dict[str, Any]], out: str, dims: list[str]) -> None:
    out_p = Path(out)
    out_p.parent.mkdir(parents=True, exist_ok=True)
    if out_p.suffix.lower() == ".csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["path", *dims, "status", "error"])
        for r in records:
            odd = sorted({st for st in r.get("status", {}).values() if st != "ok"})
            w.writerow([r["path"], *[("" if r["scores"].get(d) is None else f"{r['scores'][d]:.6f}")
                                     for d in dims], ",".join(odd) or "ok", r.get("error", "")])
        out_p.write_text(buf.getvalue())
    else:
        out_p.write_text("".join(json.dumps(r) + "\n" for r in records))


def _on_gpu(args) -> bool:
    return str(args.device or "cpu").startswith("cuda")


def _workers(args) -> int:
    """--workers, or one per core; 1 on a GPU (the judge batches there; CUDA does not survive a fork)."""
    if _on_gpu(args):
        return 1
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


def cmd_score(args) -> int:
    with _one_torch_thread_on_cpu(args):
        return _cmd_score(args)


def _cmd_score(args) -> int:
    import time

    from train.device import describe_device

    scorers = load_scorers(args.scorer, device=args.device, batch_size=args.batch_size)
    dims = [s.dim for s in scorers]
    workers = max(1, min(_workers(args), len(args.videos)))
    # the header and the summary go to stderr: stdout stays one JSON line per video
    print(f"# eval score: {', '.join(dims)} on {describe_device(args.device or 'cpu')}, {len(args.videos)} videos, "
          f"{workers} worker process{'es' if workers > 1 else ''}, batch size {args.batch_size}"
          f"{_landmark_note(scorers)}", file=sys.stderr)
    records, seconds, t0 = [], 0.0, time.perf_counter()
    for rec in score_videos(scorers, args.videos, workers=workers, always_windows=True, plugins=args.plugin):
        wins = rec.get("windows", {})
        seconds += max((w[-1]["end"] for w in wins.values() if w), default=0.0)  # the span that was scored
        if not args.windows and all(len(w) <= 1 for w in wins.values()):
            rec.pop("windows", None)  # one window: its score is the clip's score (--windows keeps it)
        records.append(rec)
        sys.stdout.write(json.dumps(rec) + "\n")
        sys.stdout.flush()
    wall = time.perf_counter() - t0
    print(f"# scored {len(records)} videos, {seconds:.1f} s of video in {wall:.1f} s: "
          f"{seconds / max(wall, 1e-9):.1f}x real time, {len(records) / max(wall, 1e-9):.2f} videos/s", file=sys.stderr)
    if args.out:
        _write_out(records, args.out, dims)
    n_ok = sum(1 for r in records if "error" not in r)
    if records and n_ok == 0:
        print(f"all {len(records)} videos failed", file=sys.stderr)
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
    """Per-dimension thresholds: default 0.5; a plain number sets all; DIM=X overrides one."""
    thr = {d: 0.5 for d in dims}
    for v in values or []:
        if "=" not in v:
            thr = {d: float(v) for d in dims}
    for v in values or []:
        if "=" in v:
            d, x = v.split("=", 1)
            if d not in thr:
                raise ValueError(f"--min {v}: unknown dimension {d!r} (have {list(dims)})")
            thr[d] = float(x)
    return thr


def cmd_filter(args) -> int:
    with _one_torch_thread_on_cpu(args):
        return _cmd_filter(args)


def _cmd_filter(args) -> int:
    scorers = load_scorers(args.scorer, device=args.device, batch_size=args.batch_size)
    dims = [s.dim for s in scorers]
    thr = parse_min(args.min, dims)
    keep_status = {st.strip() for v in (args.keep_status or []) for st in v.split(",") if st.strip()}
    videos = expand_sources(args.src)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kept, rejected = [], []
    for rec in score_videos(scorers, videos, workers=_workers(args), plugins=args.plugin):
        p = rec["path"]
        cols = [f"{d}={rec['scores'][d]:.6f}" for d in dims if d in rec["scores"]]
        odd = sorted({st for st in rec["status"].values() if st != "ok"})
        cols += [f"status={','.join(odd)}"] if odd else []
        if "error" in rec:
            rejected.append("\t".join([p, *cols, "error=" + rec["error"].replace("\t", " ")]))
            continue
        ok = all(rec["scores"][d] >= thr[d] for d in dims) and all(st in keep_status for st in odd)
        (kept if ok else rejected).append("\t".join([p, *cols]))
    (out_dir / "kept.txt").write_text("".join(line + "\n" for line in kept))
    (out_dir / "rejected.txt").write_text("".join(line + "\n" for line in rejected))
    print(json.dumps({"kept": len(kept), "rejected": len(rejected), "min": thr,
                      "kept_file": str(out_dir / "kept.txt"),
                      "rejected_file": str(out_dir / "rejected.txt")}))
    return 0


def cmd_align(args) -> int:
    from .align import align

    res = align(args.scores, args.ratings, dim=args.dim, n_boot=args.n_boot, seed=args.seed)
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0
