"""Scoring at scale: `eval score` / `eval filter` with `--backend ray`, inputs and outputs behind URLs.

Inputs (`score VIDEO...`, `filter SRC...`, `leaderboard`): video files, folders (searched recursively
for video extensions) and fsspec URLs (s3://bucket/videos/: every video under that prefix; or one
object). A URL video is copied to a scratch file on the node that scores it and its record names
it by its URL.

Outputs (`--out` of score, `--out-dir` of filter on Ray): a folder or a URL prefix holding a record
store: `scores-NNNNNN.jsonl` shards (the JSON lines `eval score` prints, in whatever order the
files finish) and `manifest.json` (the judges' digests, --windows, the shards and their record
counts, and whether the run got to the end). A shard is written whole (a rename on a folder, one
PUT on an object store) every SHARD_RECORDS records or FLUSH_SECONDS seconds, so a killed job loses
at most the records of the shard being filled; the same command resumes: the files whose records
are in the shards already are skipped. A store written by other judges or settings is refused in one
line (--overwrite starts over). `eval filter --backend ray --out-dir X` reads the store `eval score
--backend ray --out X` wrote (without --windows) instead of scoring again.

On Ray, one scorer actor per CPU of the cluster (per GPU with --device cuda; --workers N sets it)
loads the exports once, from bytes the driver ships (nodes need not see the export folders), and
scores whole files with the same code as the local backend (eval.cli.score_video), so a file gets
the same record on both. An actor lost with its node is restarted and its file retried once; a file
that still fails gets an error record, as a dead worker's file does locally.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from perturb.media import VIDEO_EXTS  # the shared media layer
from perturb.shard_format import is_url, list_location, location_name

MANIFEST = "manifest.json"
SHARD_PREFIX = "scores-"
SHARD_RECORDS = 1000   # records per shard
FLUSH_SECONDS = 60.0   # ... or fewer, once a shard has waited this long: a kill loses at most this much work
KEPT, REJECTED = "kept.txt", "rejected.txt"


# ----------------------------------------------------------------------------- inputs
def list_videos(sources: Iterable[str]) -> list[tuple[str, str]]:
    """[(video, its name relative to the source it was found under)] for files, folders (searched
    recursively for video extensions) and URLs (a prefix: every video under it; else one object),
    in the order given, each folder / prefix sorted. A source that does not exist: ValueError."""
    out: list[tuple[str, str]] = []
    for src in sources:
        if is_url(src):
            import fsspec

            fs, root = fsspec.core.url_to_fs(src)
            root = root.rstrip("/")
            if fs.isdir(root):
                found = sorted(f for f in fs.find(root) if Path(f).suffix.lower() in VIDEO_EXTS)
                out += [(fs.unstrip_protocol(f), f[len(root) + 1:]) for f in found]
            elif fs.isfile(root):
                out.append((src, location_name(src)))
            else:
                raise ValueError(f"{src}: no such object or prefix")
        elif Path(src).is_dir():
            found = sorted(f for f in Path(src).rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_EXTS)
            out += [(str(f), f.relative_to(src).as_posix()) for f in found]
        else:  # a file, or a path that fails as the local backend's does: an error record
            out.append((src, Path(src).name))
    return out


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """A local path of `path`: itself, or for a URL a scratch copy removed afterwards (ffmpeg reads
    files by path). A URL that cannot be read gives a path that does not exist, so the file gets the
    error record a missing local file gets."""
    if not is_url(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="avbench_fetch_") as tmp:
        yield _fetch(path, os.path.join(tmp, "video"))


def _fetch(url: str, stem: str) -> str:
    """Copy `url` to stem + its extension; a failure gives a path that does not exist, naming why."""
    import fsspec

    local = stem + Path(url.split("?")[0]).suffix.lower()
    try:
        fs, remote = fsspec.core.url_to_fs(url)
        fs.get_file(remote, local)
    except Exception as err:  # said in the record's error, as an unreadable local file is
        return f"{stem} unreadable ({type(err).__name__}: {' '.join(str(err).split())[:200]})"
    return local


def score_record(scorers: Sequence, path: str, windows: bool) -> tuple[dict[str, Any], float]:
    """(the record `eval score` writes for `path`, seconds of video scored): eval.cli.score_video on
    a local copy, named by `path`; "windows" kept as `eval score` keeps them (--windows, or more than
    one window)."""
    from .cli import score_video

    with local_copy(path) as local:
        rec = rename(score_video(scorers, local, always_windows=True), local, path)
    return rec, trim_windows(rec, windows)


def rename(rec: dict[str, Any], local: str, path: str) -> dict[str, Any]:
    """The record of a scratch copy `local`, named by the file it copies (`path`)."""
    if local != path:
        rec["path"] = path
        if "error" in rec:
            rec["error"] = rec["error"].replace(local, path)
    return rec


def trim_windows(rec: dict[str, Any], windows: bool) -> float:
    """Drop the record's "windows" as `eval score` does (kept with --windows, or for a video of more
    than one window); returns the seconds of video scored."""
    wins = rec.get("windows", {})
    seconds = max((w[-1]["end"] for w in wins.values() if w), default=0.0)
    if not windows and all(len(w) <= 1 for w in wins.values()):
        rec.pop("windows", None)
    return seconds


@contextlib.contextmanager
def local_copies(paths: Sequence[str]) -> Iterator[dict[str, str]]:
    """{path: a local path of it} for many files at once: the URLs fetched by a pool of threads into
    one scratch folder, removed afterwards (an unreadable URL maps to a path that does not exist)."""
    from concurrent.futures import ThreadPoolExecutor

    urls = [p for p in dict.fromkeys(paths) if is_url(p)]
    with tempfile.TemporaryDirectory(prefix="avbench_fetch_") as tmp:
        def fetch(item: tuple[int, str]) -> str:
            i, url = item
            return _fetch(url, os.path.join(tmp, f"{i:07d}"))

        with ThreadPoolExecutor(16) as pool:  # object stores: a GET is a round trip, not work
            copies = list(pool.map(fetch, enumerate(urls)))
        yield {**{p: p for p in paths}, **dict(zip(urls, copies))}


# ----------------------------------------------------------------------------- the record store
def _fs_of(location: str):
    import fsspec

    fs, root = fsspec.core.url_to_fs(location)
    return fs, root.rstrip("/")


def write_whole(location: str, name: str, data: bytes) -> None:
    """location/name written whole: a scratch file renamed (a folder) or one PUT (an object store)."""
    if is_url(location):
        fs, root = _fs_of(location)
        fs.pipe_file(f"{root}/{name}", data)
        return
    folder = Path(location)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp{os.getpid()}"
    tmp.write_bytes(data)
    os.replace(tmp, folder / name)


def read_bytes(location: str, name: str) -> bytes | None:
    if is_url(location):
        fs, root = _fs_of(location)
        return fs.cat_file(f"{root}/{name}") if fs.isfile(f"{root}/{name}") else None
    f = Path(location) / name
    return f.read_bytes() if f.is_file() else None


def remove(location: str, names: Iterable[str]) -> None:
    for name in names:
        if is_url(location):
            fs, root = _fs_of(location)
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(f"{root}/{name}")
        else:
            with contextlib.suppress(FileNotFoundError):
                (Path(location) / name).unlink()


class RecordStore:
    """The records of a scoring job under a folder or URL (module docstring): read back on resume,
    added as files finish, written in whole shards."""

    def __init__(self, location: str, settings: dict[str, Any], overwrite: bool = False,
                 shard_records: int = SHARD_RECORDS, flush_seconds: float = FLUSH_SECONDS) -> None:
        self.location = location.rstrip("/") if is_url(location) else location
        if location.lower().rstrip("/").endswith((".jsonl", ".csv")) or \
                (not is_url(location) and Path(location).exists() and not Path(location).is_dir()):
            raise SystemExit(f"error: {location}: Ray writes a folder or URL prefix of record shards, not one file; "
                             f"name a folder (e.g. {location.rsplit('.', 1)[0]}/)")
        self.settings = settings
        self.shard_records, self.flush_seconds = shard_records, flush_seconds
        self.records: dict[str, dict[str, Any]] = {}
        self.shards: list[dict[str, Any]] = []
        self.buffer: list[dict[str, Any]] = []
        self.since = time.monotonic()
        names = [location_name(s) for s in list_location(self.location, f"{SHARD_PREFIX}*.jsonl")] \
            if self._exists() else []
        raw = read_bytes(self.location, MANIFEST) if self._exists() else None
        if overwrite:
            remove(self.location, [*names, MANIFEST])
            names, raw = [], None
        if names or raw is not None:
            self._check(raw, len(names))
        for name in names:
            lines = (read_bytes(self.location, name) or b"").decode("utf-8", "surrogateescape").splitlines()
            try:
                recs = [json.loads(ln) for ln in lines if ln.strip()]
                if not all(isinstance(r, dict) and isinstance(r.get("path"), str) for r in recs):
                    raise ValueError("a line is not a record")
            except (ValueError, RecursionError) as err:
                raise SystemExit(f"error: {self.location}/{name} is not a shard of `eval score` records ({err}): "
                                 f"use another output, or --overwrite to start over") from None
            self.records.update((r["path"], r) for r in recs)
            self.shards.append({"file": name, "records": len(recs)})
        self.next_index = 1 + max((int(n[len(SHARD_PREFIX):-len(".jsonl")]) for n in names
                                   if n[len(SHARD_PREFIX):-len(".jsonl")].isdigit()), default=-1)
        self.resumed = len(self.records)
        try:  # the manifest first: a shard is never without one, and an output that cannot be written fails now
            self.flush()
        except OSError as err:
            raise SystemExit(f"error: cannot write {self.location}: {type(err).__name__}: {err}") from None

    def _exists(self) -> bool:
        if is_url(self.location):
            fs, root = _fs_of(self.location)
            return fs.exists(root)
        return Path(self.location).is_dir()

    def _check(self, raw: bytes | None, n_shards: int) -> None:
        """Records of other judges or settings are never mixed with these: one line, and how to start over."""
        try:
            theirs = json.loads(raw) if raw is not None else None
        except ValueError:
            theirs = None
        if not isinstance(theirs, dict):
            why = f"no readable {MANIFEST} says which judges wrote its {n_shards} shard(s)"
        elif theirs.get("judges") != self.settings["judges"]:
            dims = [j.get("dim", "?") for j in theirs.get("judges") or [] if isinstance(j, dict)]
            why = f"other judges or exports ({', '.join(dims) or '?'}) wrote its records"
        elif theirs.get("windows") != self.settings["windows"]:
            why = f"it was written {'with' if theirs.get('windows') else 'without'} --windows"
        else:
            return
        raise SystemExit(f"error: {self.location} holds scoring records, but {why}: use another output, or "
                         f"--overwrite to start over")

    def add(self, rec: dict[str, Any]) -> None:
        self.records[rec["path"]] = rec
        self.buffer.append(rec)
        if len(self.buffer) >= self.shard_records or time.monotonic() - self.since >= self.flush_seconds:
            self.flush()

    def flush(self, complete: bool = False, n_videos: int | None = None) -> None:
        """Write the buffered records as a shard, then the manifest."""
        if self.buffer:
            name = f"{SHARD_PREFIX}{self.next_index:06d}.jsonl"
            write_whole(self.location, name, "".join(json.dumps(r) + "\n" for r in self.buffer)
                        .encode("utf-8", "surrogateescape"))
            self.shards.append({"file": name, "records": len(self.buffer)})
            self.next_index += 1
            self.buffer = []
        self.since = time.monotonic()
        manifest = {**self.settings, "shards": self.shards, "records": sum(s["records"] for s in self.shards),
                    "complete": complete, **({} if n_videos is None else {"videos": n_videos})}
        write_whole(self.location, MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())


def read_records(location: str) -> dict[str, dict[str, Any]]:
    """{path: record} of a record store (a folder or URL with manifest.json and scores-*.jsonl shards)
    or of a JSONL file written by `eval score --out` (the last record of a path wins)."""
    if not is_url(location) and Path(location).is_file():
        out = {}
        for ln in Path(location).read_text(encoding="utf-8", errors="surrogateescape").splitlines():
            rec = json.loads(ln) if ln.strip() else None
            if isinstance(rec, dict) and isinstance(rec.get("path"), str):
                out[rec["path"]] = rec
        return out
    out = {}
    for shard in list_location(location, f"{SHARD_PREFIX}*.jsonl"):
        for ln in (read_bytes(str(location).rstrip("/"), location_name(shard)) or b"").decode().splitlines():
            if ln.strip():
                rec = json.loads(ln)
                out[rec["path"]] = rec
    return out


# ----------------------------------------------------------------------------- Ray
def start_ray(address: str | None = None, **kw: Any) -> None:
    """Connect to the Ray cluster at `address` (None: RAY_ADDRESS, else a local Ray); a local Ray's
    workers get this checkout first on their path (on a cluster, `ray job submit --working-dir .`)."""
    try:
        import ray
    except ImportError:
        raise SystemExit("error: --backend ray needs Ray: pip install -e .[ray]") from None

    if ray.is_initialized():
        return
    if address is None and "RAY_ADDRESS" not in os.environ:
        paths = [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
        kw.setdefault("runtime_env", {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}})
    ray.init(address=address, log_to_driver=False, **kw)


def export_payload(dirs: Sequence[str]) -> list[dict[str, bytes]]:
    """Each export folder's files as {name: bytes}: shipped to the actors, which need not see the folders."""
    from .scorer import resolve_export

    out = []
    for d in dirs:
        folder = resolve_export(d)
        out.append({f.name: f.read_bytes() for f in sorted(folder.iterdir()) if f.is_file()})
    return out


def _claim_core() -> int | None:
    """Pin this process (and the ffmpeg it starts) to a core no other scorer actor of this node holds,
    as the local backend pins its workers (a frame handed between ffmpeg's and the landmarker's threads
    stays in one core's cache; BENCHMARKS.md, scoring throughput). The claim is a lock on a file per
    core, held for the life of the process (the kernel drops it when the process dies); None when
    every core is held (more actors than cores) or the OS cannot pin."""
    import fcntl

    if not hasattr(os, "sched_setaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    for core in cores:
        fd = os.open(os.path.join(tempfile.gettempdir(), f"avbench_scorer_core{core}.lock"), os.O_RDWR | os.O_CREAT,
                     0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        os.sched_setaffinity(0, {core})  # fd stays open: the lock is this process's while it lives
        return core
    return None


class ScorerActor:
    """One Ray actor: the judges loaded once (from shipped export bytes), then whole files scored."""

    def __init__(self, exports: list, device: str, batch_size: int, plugins: Sequence[str], windows: bool,
                 max_faces: int | None = None) -> None:
        import ray
        import torch

        # [the object ref of the exports' bytes]: fetched here, so a restarted actor fetches it again
        exports = ray.get(exports[0])

        if not str(device).startswith("cuda"):
            torch.set_num_threads(1)  # the actors are the parallelism (eval.cli._one_torch_thread_on_cpu)
            self.core = _claim_core()
        if plugins:
            from train.encoders import import_plugins

            import_plugins(list(plugins))
        from .cli import load_scorers

        self.tmp = tempfile.mkdtemp(prefix="avbench_exports_")
        dirs = []
        for i, files in enumerate(exports):
            folder = Path(self.tmp) / f"judge{i}"
            folder.mkdir()
            for name, data in files.items():
                (folder / name).write_bytes(data)
            dirs.append(str(folder))
        self.scorers = load_scorers(dirs, device=device, batch_size=batch_size, max_faces=max_faces)
        self.windows = windows

    def score(self, path: str) -> tuple[dict[str, Any], float]:
        return score_record(self.scorers, path, self.windows)


def start_actors(dirs: Sequence[str], n_videos: int, windows: bool, args) -> list:
    """Connect to Ray (start_ray) and start the scorer actors: one per CPU of the cluster (per GPU on
    cuda) unless --workers says, at most one per video. They import and load the judges while the
    caller goes on (the driver loads its own copy meanwhile)."""
    import ray

    start_ray(args.ray_address)
    device = args.device or "cpu"
    gpu = str(device).startswith("cuda")
    workers = args.workers or int(ray.cluster_resources().get("GPU" if gpu else "CPU", 1)) or 1
    payload = ray.put(export_payload(dirs))
    actor_cls = ray.remote(num_cpus=1, num_gpus=1 if gpu else 0, max_restarts=-1,
                           max_task_retries=1)(ScorerActor)
    return [actor_cls.remote([payload], device, args.batch_size, tuple(args.plugin), windows,
                             getattr(args, "max_faces", None)) for _ in range(max(1, min(workers, n_videos)))]


def early_actors(dirs: Sequence[str], out: str, n_videos: int, windows: bool, args) -> list | None:
    """start_actors before the driver loads the judges, unless the store at `out` says it holds every
    video already (nothing to score: no actor started); None when starting fails here (the driver's
    own load then says why in one line)."""
    try:
        raw = read_bytes(out, MANIFEST) if not args.overwrite else None
        manifest = json.loads(raw) if raw else {}
        if manifest.get("complete") and manifest.get("records", 0) >= n_videos:
            return None
        return start_actors(dirs, n_videos, windows, args)
    except SystemExit:
        raise
    except Exception:  # e.g. an export that is not there: load_scorers says it in one line next
        return None


def score_on_ray(scorers: Sequence, paths: Sequence[str], actors: list) -> Iterator[tuple[dict[str, Any], float]]:
    """(record, seconds) of each path as it finishes, from the scorer actors (start_actors), two files
    queued each (one scoring, one waiting, so an actor never idles for a round trip)."""
    import ray

    queue = deque(paths)
    in_flight: dict[Any, tuple[Any, str]] = {}

    def submit(actor) -> None:
        if queue:
            p = queue.popleft()
            in_flight[actor.score.remote(p)] = (actor, p)

    try:
        for actor in actors:
            submit(actor)
            submit(actor)
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            actor, p = in_flight.pop(ready[0])
            try:
                yield ray.get(ready[0])
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as exc:  # lost twice: say so, go on
                msg = " ".join(str(exc).split())[:300] or "worker died"
                yield ({"path": p, "scores": {}, "status": {s.dim: "unreadable" for s in scorers},
                        "error": f"{type(exc).__name__}: {msg}"}, 0.0)
            submit(actor)
    finally:
        for ref in in_flight:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)


# ----------------------------------------------------------------------------- the commands
def _settings(scorers: Sequence, windows: bool) -> dict[str, Any]:
    from .cli import _judge_ids

    return {"judges": _judge_ids(scorers), "windows": bool(windows)}


def run_store(scorers: Sequence, videos: Sequence[str], out: str, windows: bool, args,
              on_record: Callable[[dict[str, Any]], None] | None = None,
              actors: list | None = None) -> tuple[RecordStore, int, float, float]:
    """Score on Ray into the record store at `out`, resuming it: (store, files scored now, seconds of
    video, wall seconds). Ctrl-C / SIGTERM (eval.cli.Interrupted) writes what finished, then goes on up."""
    from tqdm import tqdm

    from .cli import Interrupted, demo_warnings, prior_warnings

    for line in prior_warnings(scorers) + demo_warnings(scorers, videos):  # as the local backend says them
        print(line, file=sys.stderr)
    store = RecordStore(out, _settings(scorers, windows), overwrite=args.overwrite,
                        shard_records=max(1, getattr(args, "shard_records", SHARD_RECORDS)))
    todo = [v for v in dict.fromkeys(videos) if v not in store.records]
    if store.resumed:
        print(f"# resuming: {len(videos) - len(todo)} of {len(videos)} videos already in {out} are skipped "
              f"(--overwrite starts over)", file=sys.stderr)
    n_new, seconds, t0 = 0, 0.0, time.perf_counter()
    if todo and not actors:
        actors = start_actors([s.path for s in scorers], len(todo), windows, args)
    try:
        with tqdm(total=len(todo), desc="scoring", unit="video", disable=not sys.stderr.isatty()) as bar, \
                contextlib.closing(score_on_ray(scorers, todo, actors or [])) as records:  # closed: actors killed
            for rec, sec in records:
                store.add(rec)
                n_new += 1
                seconds += sec
                if on_record is not None:
                    on_record(rec)
                bar.update()
    except Interrupted:
        store.flush(n_videos=len(videos))
        print(f"interrupted: {len(store.records)} of {len(videos)} files scored, records in {out}; re-run the "
              f"same command to resume", file=sys.stderr)
        raise
    store.flush(complete=True, n_videos=len(videos))
    return store, n_new, seconds, time.perf_counter() - t0


def _inputs(sources: Sequence[str]) -> list[tuple[str, str]]:
    try:
        return list_videos(sources)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    except (ImportError, OSError) as err:  # a protocol without its fsspec package, no credentials, ...
        raise SystemExit(f"error: cannot list the inputs: {type(err).__name__}: {err}") from None


def cmd_score_ray(args) -> int:
    """`eval score --backend ray`: the records go to the store at --out, and to stdout as `eval score` prints them."""
    from .cli import load_scorers

    if not args.out:
        raise SystemExit("error: --backend ray needs --out (a folder or URL prefix for the record shards)")
    videos = [v for v, _ in _inputs(args.videos)]
    actors = early_actors(args.scorer, args.out, len(videos), args.windows, args)
    scorers = load_scorers(args.scorer, device=args.device, batch_size=args.batch_size,
                           max_faces=getattr(args, "max_faces", None))

    def show(rec: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(rec) + "\n")
        sys.stdout.flush()

    store, n_new, seconds, wall = run_store(scorers, videos, args.out, args.windows, args, on_record=show,
                                            actors=actors)
    print(f"# scored {n_new} videos on Ray, {seconds:.1f} s of video in {wall:.1f} s: "
          f"{seconds / max(wall, 1e-9):.1f}x real time; {len(store.records)} records in {args.out}", file=sys.stderr)
    recs = [store.records[v] for v in videos if v in store.records]
    if recs and all("error" in r for r in recs):
        print(f"all {len(recs)} videos failed", file=sys.stderr)
        return 1
    return 0


def copy_file(src: str, dst: str) -> None:
    """src to dst, either a path or a URL (a server-side copy within one object store); skipped when
    dst already holds a file of src's size."""
    import shutil

    import fsspec

    fs_src, a = fsspec.core.url_to_fs(src)
    fs_dst, b = fsspec.core.url_to_fs(dst)
    with contextlib.suppress(OSError):
        if fs_dst.isfile(b) and fs_dst.size(b) == fs_src.size(a):
            return
    if fs_src is fs_dst or (is_url(src) and is_url(dst) and type(fs_src) is type(fs_dst)):
        fs_dst.makedirs(b.rsplit("/", 1)[0], exist_ok=True)
        fs_src.copy(a, b)
        return
    fs_dst.makedirs(b.rsplit("/", 1)[0], exist_ok=True)
    with fs_src.open(a, "rb") as fin, fs_dst.open(b, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


COPIED = "copied.txt"  # what --kept-to holds from this output: "video<TAB>copy" per line


def publish_kept(out: str, inputs: Sequence[tuple[str, str]], kept_to: str) -> dict[str, Any]:
    """Copy the videos of OUT/kept.txt to `kept_to`, each under its path relative to the source it
    was found under; the copies an earlier run made (OUT/copied.txt) that are no longer kept (another
    --min) are removed. Either backend; inputs and `kept_to` may be URLs."""
    from concurrent.futures import ThreadPoolExecutor

    rel = dict(inputs)
    kept = [ln.split("\t")[0] for ln in (read_bytes(out, KEPT) or b"").decode("utf-8", "surrogateescape").splitlines() if ln]
    dest = {v: (f"{kept_to.rstrip('/')}/{rel.get(v, Path(v).name)}" if is_url(kept_to)
                else str(Path(kept_to) / rel.get(v, Path(v).name))) for v in kept}
    earlier = dict(ln.split("\t", 1) for ln in (read_bytes(out, COPIED) or b"").decode("utf-8", "surrogateescape")
                   .splitlines() if "\t" in ln)
    with ThreadPoolExecutor(16) as pool:  # object stores: a copy is a round trip, not work
        list(pool.map(lambda v: copy_file(v, dest[v]), kept))
    stale = [d for v, d in earlier.items() if dest.get(v) != d]
    for d in stale:
        fs, p = _fs_of(d)
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(p)
    write_whole(out, COPIED, "".join(f"{v}\t{d}\n" for v, d in dest.items()).encode("utf-8", "surrogateescape"))
    return {"copied_to": kept_to, "copied": len(kept), "removed": len(stale)}


def publish_kept_line(args) -> str:
    """publish_kept after the local `eval filter` (its kept.txt in --out-dir), said in one line."""
    done = publish_kept(str(args.out_dir), list_videos(args.src), args.kept_to)
    return f"# copied {done['copied']} kept videos to {args.kept_to} ({done['removed']} no longer kept removed)"


def _filter_rule(args, dims: Sequence[str]) -> tuple[dict[str, float], set[str]]:
    """(--min per dimension, --keep-status) as the local filter reads them."""
    from .cli import parse_min

    try:
        return parse_min(args.min, dims), {st.strip() for v in (args.keep_status or []) for st in v.split(",")
                                           if st.strip()}
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None


def cmd_filter_ray(args) -> int:
    """`eval filter --backend ray`: score into the store at --out-dir (resumed; a store `eval score
    --backend ray` wrote is read, not scored again), then write kept.txt / rejected.txt there in the
    order of the inputs (the lines the local backend writes) and, with --kept-to, copy the kept videos
    there (publish_kept)."""
    from .cli import filter_verdict, load_scorers

    out = args.out_dir
    inputs = _inputs(args.src)
    actors = early_actors(args.scorer, out, len(inputs), False, args)
    scorers = load_scorers(args.scorer, device=args.device, batch_size=args.batch_size,
                           max_faces=getattr(args, "max_faces", None))
    dims = [s.dim for s in scorers]
    thr, keep_status = _filter_rule(args, dims)
    store, n_new, seconds, wall = run_store(scorers, [v for v, _ in inputs], out, False, args, actors=actors)
    lines: dict[bool, list[str]] = {True: [], False: []}
    for v, _ in inputs:
        ok, line = filter_verdict(store.records[v], dims, thr, keep_status)
        lines[ok].append(line)
    for name, ok in ((KEPT, True), (REJECTED, False)):
        write_whole(out, name, "".join(ln + "\n" for ln in lines[ok]).encode("utf-8", "surrogateescape"))
    summary = {"kept": len(lines[True]), "rejected": len(lines[False]), "min": thr, "resumed": store.resumed,
               "scored": n_new, "kept_file": f"{out.rstrip('/')}/{KEPT}", "rejected_file": f"{out.rstrip('/')}/{REJECTED}"}
    if args.kept_to:
        summary.update(publish_kept(out, inputs, args.kept_to))
    print(f"# scored {n_new} videos on Ray, {seconds:.1f} s of video in {wall:.1f} s", file=sys.stderr)
    print(json.dumps(summary))
    return 0
