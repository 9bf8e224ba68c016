"""The app's state and its HTTP server: pair shards, judges, a video folder, a ratings file.

Everything is served by the standard library's ThreadingHTTPServer: three page addresses that all
give static/index.html (its script draws the page), the static files, a JSON API under /api/ and
the videos under /media/. What a request names is looked up, never joined onto a path as given:
a pair by (location, split, key) in the index built from the shards, a blind rating side by a
random token, an upload by its id, and a video of --videos by a relative path that must resolve
(links followed) to a file inside that folder.

Pair shards are read by train.data.iter_raw_pairs, with the checks of training: a shard that breaks
the pair format (perturb.shard_format) is refused with one line and nothing of it is shown; a
broken sample is skipped and counted. The pair sides are written, as they are in the shard, to the
media folder (`<location>/<split>/<key>.<side>.mp4`, the names `perturb samples` writes) and played
from there; a side the browser cannot play is re-encoded to h264/aac once, on request (?compat=1).
"""
from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import math
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import parse_qs, quote, unquote, urlsplit

from perturb.media import VIDEO_EXTS, MediaError, run_ffmpeg  # the shared media layer
from perturb.shard_format import KEY_PATTERN, ShardFormatError, is_url, location_name  # the shard contract

STATIC = Path(__file__).resolve().parent / "static"
PAGES = ("pairs", "score", "rate")
SPLITS = ("train", "val", "test")
SIDES = ("chosen", "rejected")
DEFAULT_MAX_UPLOAD_MB = 200
KEEP_UPLOADS = 16          # older uploads are deleted: the temp folder does not grow without bound
MAX_LISTED_VIDEOS = 5000
MAX_JSON_BODY = 64 << 10   # the API's POST bodies are a few short fields
# the columns `python -m eval align` reads (path_a, path_b, preferred), then what resuming needs
RATINGS_COLUMNS = ("path_a", "path_b", "preferred", "rater", "shards", "split", "key", "time")
ANSWERS = {"left": "a", "right": "b", "same": "tie", "skip": "skip"}
# a rater id goes into the CSV: a short plain name, so no spreadsheet reads it as a formula
RATER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
STATUS_WORDS = {
    "ok": "ok: the judge could judge this video",
    "no_audio": "no audio: the file has no sound track, so the judge had no sound to compare with the picture "
                "(the score means little)",
    "too_short": "too short: under 0.5 s of picture or sound, too little to judge (the score means little)",
    "no_face": "no face: no face was found in any window, so the judge looked at a fixed framing "
               "(the score may be about the wrong part of the picture)",
    "unreadable": "unreadable: the file could not be read or scored (see the error); no score",
}
CONTENT_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime", ".webm": "video/webm",
                 ".mkv": "video/x-matroska", ".ogv": "video/ogg"}
STATIC_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
                "app.css": "text/css; charset=utf-8"}


class AppError(ValueError):
    """A request or a start-up setting that cannot be served; the message is the one line to show."""

    def __init__(self, message: str, status: int = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = int(status)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:500] or type(err).__name__


def _finite(obj: Any) -> Any:
    """obj with every non-finite float as None: the page parses strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _facet_sorted(values: set[str]) -> list[str]:
    def key(v: str):
        try:
            return (0, float(v), v)
        except ValueError:
            return (1, 0.0, v)
    return sorted(values, key=key)


# ----------------------------------------------------------------------------- pairs

class PairSet:
    """The pairs of one shard location and split, indexed by key; their sides written to `media`."""

    def __init__(self, location: str, split: str, media: Path):
        from train.data import iter_raw_pairs  # the readers (and checks) of training

        self.location, self.split, self.media = location, split, media
        self.pairs: list[dict[str, Any]] = []
        self.by_key: dict[str, dict[str, Any]] = {}
        self.bad: list[dict[str, Any]] = []
        media.mkdir(parents=True, exist_ok=True)  # may be the user's --media: files are overwritten, none removed
        written: list[Path] = []
        try:
            for item in iter_raw_pairs(location, split):
                if "bad" in item:
                    self.bad.append(item["bad"])
                    continue
                key = item["key"]
                if key in self.by_key:
                    self.bad.append({"shard": location_name(item["url"]), "key": key, "reason": "duplicate key"})
                    continue
                for side in SIDES:  # the key passed the shard contract: a flat name, never a path
                    written.append(media / f"{key}.{side}.mp4")
                    written[-1].write_bytes(item[f"{side}.mp4"])
                pair = {"key": key, "shard": location_name(item["url"]), "meta": item["meta"]}
                self.pairs.append(pair)
                self.by_key[key] = pair
        except BaseException:  # nothing of a shard that is refused stays
            for f in written:
                f.unlink(missing_ok=True)
            raise

    def file(self, key: str, side: str) -> Path:
        if side not in SIDES or key not in self.by_key:
            raise AppError(f"no pair {key!r} side {side!r} in {self.location} {self.split}", HTTPStatus.NOT_FOUND)
        return self.media / f"{key}.{side}.mp4"


def facets_of(meta: dict[str, Any]) -> dict[str, Any]:
    """What the pairs page filters on, from a sample's json (untrusted: every value read defensively)."""
    ops = meta.get("ops") if isinstance(meta.get("ops"), list) else []
    names = [str(o.get("name")) for o in ops if isinstance(o, dict) and o.get("name") is not None]
    return {"dim": str(meta.get("dim", "")), "op": names, "severity": str(meta.get("severity", "")),
            "source": str(meta.get("source_id", ""))}


def pair_summary(pair: dict[str, Any]) -> dict[str, Any]:
    meta = pair["meta"]
    f = facets_of(meta)
    ops = meta.get("ops") if isinstance(meta.get("ops"), list) else []
    return {"key": pair["key"], "dim": f["dim"], "severity": meta.get("severity"), "source": f["source"],
            "operators": f["op"], "ops": ops}


def filter_pairs(pairs: Sequence[dict[str, Any]], dim: str = "", op: str = "", severity: str = "",
                 source: str = "") -> list[dict[str, Any]]:
    """The pairs whose json matches every filter given (empty: any); op: one of the rejected side's ops."""
    out = []
    for p in pairs:
        f = facets_of(p["meta"])
        if (dim and f["dim"] != dim) or (severity and f["severity"] != severity) or \
                (source and f["source"] != source) or (op and op not in f["op"]):
            continue
        out.append(p)
    return out


# ----------------------------------------------------------------------------- ratings

def side_order(rater: str, key: str) -> tuple[int, str]:
    """(rank, left side) of a pair for a rater: each rater sees the pairs in an order and the sides on
    the left / right as a hash draws them, the same after a restart."""
    h = hashlib.sha256(f"{rater}\0{key}".encode()).digest()
    return int.from_bytes(h[:8], "big"), SIDES[h[8] & 1]


class RatingsFile:
    """The A/B ratings CSV: one whole line per answer, appended under an exclusive lock (flock, so
    two apps may share a file) in one write to an O_APPEND descriptor and fsynced; a torn last line
    (a crash mid-write) is cut off when the file is opened."""

    def __init__(self, path: str | Path):
        from ..cli import _check_writable, _read_lines

        self.path = Path(path)
        self.lock = threading.Lock()
        try:
            _check_writable(self.path, "the ratings file")
        except SystemExit as err:  # its one line, as this app's error
            raise AppError(str(err.code).removeprefix("error: ")) from None
        lines = _read_lines(self.path)
        self.done: dict[str, set[tuple[str, str, str]]] = {}
        if not lines:
            return
        reader = csv.DictReader(lines)
        missing = [c for c in RATINGS_COLUMNS[:7] if c not in (reader.fieldnames or [])]
        if missing:
            raise AppError(f"{self.path}: not a ratings file of this app (no column {', '.join(missing)}); "
                           f"give another --ratings")
        for row in reader:
            self.done.setdefault(row["rater"], set()).add((row["shards"], row["split"], row["key"]))

    def rated(self, rater: str, shards: str, split: str) -> set[str]:
        return {k for s, sp, k in self.done.get(rater, ()) if s == shards and sp == split}

    def append(self, row: dict[str, str]) -> bool:
        """Write the row; False (nothing written) when the rater already answered this pair."""
        mark = (row["shards"], row["split"], row["key"])
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow([row.get(c, "") for c in RATINGS_COLUMNS])
        with self.lock:
            if mark in self.done.get(row["rater"], ()):
                return False
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                data = buf.getvalue().encode()
                if os.fstat(fd).st_size == 0:
                    data = (",".join(RATINGS_COLUMNS) + "\n").encode() + data
                while data:
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            finally:
                os.close(fd)  # also releases the lock
            self.done.setdefault(row["rater"], set()).add(mark)
        return True


# ----------------------------------------------------------------------------- the app

class App:
    """What the server serves. `shards`: folders or URLs of pair shards; `scorers`: loaded judges
    (eval.cli.load_scorers); `videos`: the folder whose videos the score page lists; `ratings`: the
    CSV the rate page appends to; `media`: where pair sides are written (default: a temp folder)."""

    def __init__(self, shards: Sequence[str] = (), scorers: Sequence = (), videos: str | Path | None = None,
                 ratings: str | Path = "ratings.csv", media: str | Path | None = None,
                 max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB << 20, split: str = "test", verbose: bool = False):
        from train.data import ShardReadError, check_location

        self.locations: list[dict[str, Any]] = []
        for loc in shards:
            loc = str(loc)
            try:
                splits = check_location(loc, SPLITS)
            except ShardReadError as err:
                raise AppError(str(err)) from None
            if not splits:
                raise AppError(f"no train / val / test shards at {loc}")
            # the ratings name a location the same way whatever folder the app was started from
            name = loc if is_url(loc) else str(Path(loc).resolve())
            self.locations.append({"id": len(self.locations), "name": loc, "key": name, "splits": splits})
        self.videos = Path(os.path.realpath(videos)) if videos else None
        if self.videos is not None and not self.videos.is_dir():
            raise AppError(f"--videos {videos}: not a folder")
        self.scorers = list(scorers)
        self.ratings = RatingsFile(ratings)
        self.split = split
        self.max_upload_bytes = int(max_upload_bytes)
        self.verbose = verbose
        self.work = Path(tempfile.mkdtemp(prefix="avbench_app_"))
        self.media = Path(media).resolve() if media else self.work / "pairs"
        self.uploads = self.work / "uploads"
        self.uploads.mkdir()
        self.compat = self.work / "compat"
        self.compat.mkdir()
        self._sets: dict[tuple[int, str], PairSet | AppError] = {}
        self._set_locks: dict[tuple[int, str], threading.Lock] = {}
        self._lock = threading.Lock()
        self._score_lock = threading.Lock()  # one judge run at a time: the models are not thread-safe
        self._scores: dict[tuple[str, int, int], dict[str, Any]] = {}
        self._tokens: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._upload_names: dict[str, str] = {}

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    # ---------------------------------------------------------------- config
    def config(self) -> dict[str, Any]:
        return {"locations": [{k: loc[k] for k in ("id", "name", "splits")} for loc in self.locations],
                "split": self.split,
                "scorers": [{"dim": s.dim, "question": s.question, "path": s.path,
                             "estimates_timing": bool(s.estimates_timing),
                             "demo": bool(getattr(s, "trained_on_demo_corpus", False))} for s in self.scorers],
                "videos": str(self.videos) if self.videos else None,
                "max_upload_bytes": self.max_upload_bytes, "ratings": str(self.ratings.path),
                "answers": list(ANSWERS)}

    # ---------------------------------------------------------------- pairs
    def location(self, loc: Any) -> dict[str, Any]:
        try:
            return self.locations[int(loc)]
        except (TypeError, ValueError, IndexError):
            raise AppError(f"no shard location {loc!r} (start the app with --shards)", HTTPStatus.NOT_FOUND) from None

    def pair_set(self, loc: Any, split: str) -> PairSet:
        """The split's pairs, read from the shards on first use (checked as training checks them)."""
        where = self.location(loc)
        if split not in where["splits"]:
            raise AppError(f"{where['name']} has no {split!r} shards (it has {', '.join(where['splits'])})",
                           HTTPStatus.NOT_FOUND)
        k = (where["id"], split)
        with self._lock:
            lock = self._set_locks.setdefault(k, threading.Lock())
        with lock:
            if k not in self._sets:
                try:
                    self._sets[k] = PairSet(where["name"], split, self.media / str(where["id"]) / split)
                except ShardFormatError as err:  # the shard itself: refused until the app restarts
                    self._sets[k] = AppError(f"invalid shard: {_one_line(err)}", HTTPStatus.UNPROCESSABLE_ENTITY)
                except (OSError, ValueError) as err:  # maybe passing (a host that did not answer): tried again
                    raise AppError(f"cannot read {where['name']} {split}: {_one_line(err)}",
                                   HTTPStatus.UNPROCESSABLE_ENTITY) from None
            got = self._sets[k]
        if isinstance(got, AppError):
            raise got
        return got

    def pairs(self, loc: Any, split: str, dim: str = "", op: str = "", severity: str = "", source: str = "",
              limit: int = 1000) -> dict[str, Any]:
        ps = self.pair_set(loc, split)
        facets: dict[str, set[str]] = {"dim": set(), "op": set(), "severity": set(), "source": set()}
        for p in ps.pairs:
            f = facets_of(p["meta"])
            for name in ("dim", "severity", "source"):
                facets[name].add(f[name])
            facets["op"].update(f["op"])
        chosen = filter_pairs(ps.pairs, dim, op, severity, source)
        return {"location": self.location(loc)["name"], "split": split, "total": len(ps.pairs),
                "matched": len(chosen), "bad": ps.bad,
                "facets": {k: _facet_sorted(v - {""}) for k, v in facets.items()},
                "pairs": [pair_summary(p) for p in chosen[:max(0, limit)]]}

    def pair(self, loc: Any, split: str, key: str) -> dict[str, Any]:
        ps = self.pair_set(loc, split)
        if key not in ps.by_key:
            raise AppError(f"no pair {key!r} in {ps.location} {split}", HTTPStatus.NOT_FOUND)
        p = ps.by_key[key]
        lid = self.location(loc)["id"]
        return {**pair_summary(p), "shard": p["shard"], "meta": p["meta"],
                "media": {side: f"/media/pair/{lid}/{split}/{key}/{side}" for side in SIDES}}

    def pair_scores(self, loc: Any, split: str, key: str) -> dict[str, Any]:
        ps = self.pair_set(loc, split)
        if not self.scorers:
            raise AppError("no judge loaded: start the app with --scorer EXPORT", HTTPStatus.NOT_FOUND)
        return {side: self.score_path(ps.file(key, side), f"{key}.{side}.mp4") for side in SIDES}

    # ---------------------------------------------------------------- scoring
    def score_path(self, path: Path, label: str) -> dict[str, Any]:
        """eval score's record of one file (windows always) plus its judges' results in words."""
        from ..cli import demo_warnings, offset_phrase, score_video, summary_line

        if not self.scorers:
            raise AppError("no judge loaded: start the app with --scorer EXPORT (make app SCORER=...)",
                           HTTPStatus.NOT_FOUND)
        st = path.stat()
        cache_key = (str(path), st.st_mtime_ns, st.st_size)
        with self._score_lock:
            if cache_key not in self._scores:
                rec = score_video(self.scorers, str(path), always_windows=True)
                rec["path"] = label
                judges = []
                for s in self.scorers:
                    status = rec["status"].get(s.dim, "unreadable")
                    off = (rec.get("offset") or {}).get(s.dim)
                    judges.append({
                        "dim": s.dim, "question": s.question, "score": rec["scores"].get(s.dim), "status": status,
                        "status_words": STATUS_WORDS.get(status, status),
                        "offset": off,
                        "offset_words": (f"{offset_phrase(off['ms'])} (confidence {off['confidence']:.2f})"
                                         if off else None),
                        "windows": (rec.get("windows") or {}).get(s.dim, [])})
                self._scores[cache_key] = _finite({
                    "record": rec, "judges": judges, "summary": summary_line(rec),
                    "warnings": demo_warnings(self.scorers, [str(path)])})
            return self._scores[cache_key]

    def video_list(self) -> list[str]:
        """Videos inside --videos (relative, '/'-separated); links that lead out of it are left out."""
        if self.videos is None:
            return []
        out = []
        for dirpath, dirnames, files in os.walk(self.videos):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(files):
                if Path(f).suffix.lower() in VIDEO_EXTS and not f.startswith("."):
                    rel = Path(dirpath, f).relative_to(self.videos).as_posix()
                    if self.video_file(rel, quiet=True) is not None:
                        out.append(rel)
                        if len(out) >= MAX_LISTED_VIDEOS:
                            return out
        return out

    def video_file(self, rel: str, quiet: bool = False) -> Path | None:
        """The file `rel` names inside --videos, or AppError 404 (None with quiet): no absolute path, no
        '..', no link or folder leading outside, a video extension only."""
        def refuse() -> None:
            if quiet:
                return None
            raise AppError(f"no video {rel!r} inside the videos folder", HTTPStatus.NOT_FOUND)
        if self.videos is None or not isinstance(rel, str) or not rel or "\x00" in rel or "\\" in rel \
                or rel.startswith("/") or any(p in ("", ".", "..") for p in rel.split("/")):
            return refuse()
        real = Path(os.path.realpath(self.videos / rel))
        if not real.is_relative_to(self.videos) or not real.is_file() or real.suffix.lower() not in VIDEO_EXTS:
            return refuse()
        return real

    def upload_file(self, upload_id: str) -> Path:
        if not isinstance(upload_id, str) or not re.fullmatch(r"[0-9a-f]{16}", upload_id) \
                or upload_id not in self._upload_names:
            raise AppError(f"no upload {upload_id!r}", HTTPStatus.NOT_FOUND)
        found = list(self.uploads.glob(f"{upload_id}.*"))
        if not found:
            raise AppError(f"no upload {upload_id!r}", HTTPStatus.NOT_FOUND)
        return found[0]

    def save_upload(self, name: str, length: int, stream) -> dict[str, Any]:
        """Copy `length` bytes of `stream` into the temp folder under a new id; the size was checked."""
        ext = Path(name).suffix.lower()
        if ext not in VIDEO_EXTS:
            raise AppError(f"{name!r}: not a video file name ({', '.join(sorted(VIDEO_EXTS))})",
                           HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
        upload_id = secrets.token_hex(8)
        path = self.uploads / f"{upload_id}{ext}"
        left = length
        with open(path, "wb") as fh:
            while left:
                chunk = stream.read(min(left, 1 << 20))
                if not chunk:
                    break
                fh.write(chunk)
                left -= len(chunk)
        if left:
            path.unlink(missing_ok=True)
            raise AppError(f"upload cut short: {length - left} of {length} bytes came")
        with self._lock:
            self._upload_names[upload_id] = Path(name).name[:200]
            old = sorted(self.uploads.iterdir(), key=lambda p: p.stat().st_mtime_ns)[:-KEEP_UPLOADS]
            for p in old:
                self._upload_names.pop(p.stem, None)
                p.unlink(missing_ok=True)
        return {"upload": upload_id, "name": self._upload_names[upload_id], "bytes": length,
                "media": f"/media/upload/{upload_id}"}

    def score(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("video") is not None:
            rel = str(body["video"])
            return {**self.score_path(self.video_file(rel), rel), "media": f"/media/video/{quote(rel)}"}
        if body.get("upload") is not None:
            path = self.upload_file(str(body["upload"]))
            return {**self.score_path(path, self._upload_names[path.stem]), "media": f"/media/upload/{path.stem}"}
        raise AppError("say which video: {\"video\": PATH inside the videos folder} or {\"upload\": ID}")

    def compat_file(self, src: Path) -> Path:
        """src re-encoded to h264/aac mp4, once: for a video the browser cannot play as it is."""
        out = self.compat / (hashlib.sha256(str(src).encode()).hexdigest()[:24] + ".mp4")
        with self._lock:
            if not out.is_file():
                tmp = out.with_suffix(".tmp.mp4")
                try:
                    run_ffmpeg(["-i", str(src), "-map", "0:v:0?", "-map", "0:a:0?", "-c:v", "libx264",
                                "-preset", "veryfast", "-pix_fmt", "yuv420p",
                                "-vf", "scale=trunc(iw/2)*2:trunc(ih/2)*2", "-c:a", "aac",
                                "-movflags", "+faststart", "-y", str(tmp)])
                except MediaError as err:
                    tmp.unlink(missing_ok=True)
                    raise AppError(f"cannot re-encode {src.name}: {_one_line(err)}",
                                   HTTPStatus.UNPROCESSABLE_ENTITY) from None
                os.replace(tmp, out)
        return out

    # ---------------------------------------------------------------- rating
    def next_task(self, rater: str, loc: Any, split: str) -> dict[str, Any]:
        """The rater's next unrated pair of the split, blind: the sides as opaque media addresses."""
        if not isinstance(rater, str) or not RATER.fullmatch(rater):
            raise AppError("rater id: 1-64 letters, digits, and . _ @ - (starting with a letter or digit)")
        ps = self.pair_set(loc, split)
        where = self.location(loc)
        done = self.ratings.rated(rater, where["key"], split) & set(ps.by_key)
        todo = sorted((side_order(rater, k)[0], k) for k in ps.by_key if k not in done)
        out: dict[str, Any] = {"rater": rater, "rated": len(done), "total": len(ps.by_key), "task": None,
                               "ratings": str(self.ratings.path)}
        if todo:
            key = todo[0][1]
            left = side_order(rater, key)[1]
            token = secrets.token_urlsafe(12)
            with self._lock:
                self._tokens[token] = {"rater": rater, "loc": where["id"], "split": split, "key": key, "left": left}
                while len(self._tokens) > 4096:
                    self._tokens.popitem(last=False)
            meta = ps.by_key[key]["meta"]
            out["task"] = {"token": token, "question": meta.get("question") if isinstance(meta.get("question"), str)
                           else None, "left": f"/media/blind/{token}/left", "right": f"/media/blind/{token}/right"}
        return out

    def _task(self, token: Any) -> dict[str, Any]:
        with self._lock:
            task = self._tokens.get(token) if isinstance(token, str) else None
        if task is None:
            raise AppError("unknown or expired rating task: reload the page", HTTPStatus.NOT_FOUND)
        return task

    def blind_file(self, token: str, position: str) -> Path:
        task = self._task(token)
        if position not in ("left", "right"):
            raise AppError(f"no side {position!r}", HTTPStatus.NOT_FOUND)
        side = task["left"] if position == "left" else SIDES[1 - SIDES.index(task["left"])]
        return self.pair_set(task["loc"], task["split"]).file(task["key"], side)

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        """Append the answer (left / right / same / skip) to the ratings file; the rater's next task."""
        task = self._task(body.get("token"))
        answer = body.get("answer")
        if answer not in ANSWERS:
            raise AppError(f"answer must be one of {', '.join(ANSWERS)}, got {answer!r}")
        right = SIDES[1 - SIDES.index(task["left"])]
        key = task["key"]
        written = self.ratings.append({
            "path_a": f"{key}.{task['left']}.mp4", "path_b": f"{key}.{right}.mp4", "preferred": ANSWERS[answer],
            "rater": task["rater"], "shards": self.location(task["loc"])["key"], "split": task["split"],
            "key": key, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        with self._lock:
            self._tokens.pop(body.get("token"), None)
        return {"written": written, **self.next_task(task["rater"], task["loc"], task["split"])}


# ----------------------------------------------------------------------------- HTTP

class Handler(BaseHTTPRequestHandler):
    server_version = "avbench-app"
    protocol_version = "HTTP/1.1"

    @property
    def app(self) -> App:
        return self.server.app  # type: ignore[attr-defined]

    def log_message(self, fmt: str, *args: Any) -> None:
        if self.app.verbose:
            sys.stderr.write(f"[app] {self.address_string()} {fmt % args}\n")

    # ---------------------------------------------------------------- responses
    def _headers(self, status: int, ctype: str, length: int, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; "
                         "media-src 'self' blob:; frame-ancestors 'none'")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()

    def send_json(self, obj: Any, status: int = HTTPStatus.OK) -> None:
        data = json.dumps(_finite(obj), allow_nan=False).encode()
        self._headers(status, "application/json", len(data))
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_error_json(self, status: int, message: str) -> None:
        self.send_json({"error": message}, status)

    def send_static(self, name: str) -> None:
        data = (STATIC / name).read_bytes()
        self._headers(HTTPStatus.OK, STATIC_FILES[name], len(data))
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_file(self, path: Path) -> None:
        """A video with HTTP range support (the browser seeks with ranges)."""
        size = path.stat().st_size
        ctype = CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")
        start, end, status, extra = 0, size - 1, HTTPStatus.OK, {"Accept-Ranges": "bytes"}
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", (self.headers.get("Range") or "").strip())
        if m and (m[1] or m[2]):
            if m[1]:
                start, end = int(m[1]), min(int(m[2]) if m[2] else size - 1, size - 1)
            else:  # the last N bytes
                start = max(0, size - int(m[2]))
            if start >= size or start > end:
                self._headers(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, "text/plain", 0,
                              {"Content-Range": f"bytes */{size}"})
                return
            status = HTTPStatus.PARTIAL_CONTENT
            extra["Content-Range"] = f"bytes {start}-{end}/{size}"
        self._headers(status, ctype, end - start + 1, extra)
        if self.command == "HEAD":
            return
        with open(path, "rb") as fh:
            fh.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = fh.read(min(left, 1 << 16))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)

    # ---------------------------------------------------------------- checks
    def _host_ok(self) -> bool:
        """Only our own addresses in Host: a page elsewhere that resolves its name to 127.0.0.1 (DNS
        rebinding) cannot read the API. Bound to all interfaces on purpose (--host 0.0.0.0): any."""
        host, port = self.server.server_address[:2]
        if host in ("0.0.0.0", "::"):
            return True
        names = {"127.0.0.1", "localhost", "[::1]", host, f"[{host}]"}
        return (self.headers.get("Host") or "") in {f"{n}:{port}" for n in names}

    def _post_ok(self) -> bool:
        """POSTs come from our page: it sends X-AVBench, which a page of another site cannot send
        without a CORS preflight, which this server never grants."""
        if self.headers.get("X-AVBench") != "1":
            return False
        origin = self.headers.get("Origin")
        return origin is None or origin == f"http://{self.headers.get('Host')}"

    def _json_body(self) -> dict[str, Any]:
        length = self._length()
        if length > MAX_JSON_BODY:
            self.close_connection = True
            raise AppError(f"request body over {MAX_JSON_BODY} bytes", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            raise AppError("request body is not JSON") from None
        if not isinstance(body, dict):
            raise AppError("request body must be a JSON object")
        return body

    def _length(self) -> int:
        try:
            length = int(self.headers.get("Content-Length") or "")
        except ValueError:
            self.close_connection = True
            raise AppError("Content-Length required", HTTPStatus.LENGTH_REQUIRED) from None
        if length < 0:
            self.close_connection = True
            raise AppError("bad Content-Length")
        return length

    # ---------------------------------------------------------------- routes
    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self._dispatch(self._get)

    def do_POST(self) -> None:
        self._dispatch(self._post)

    def _dispatch(self, route) -> None:
        try:
            if not self._host_ok():
                self.close_connection = True
                raise AppError("unexpected Host header", HTTPStatus.FORBIDDEN)
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            route(url.path, query)
        except AppError as err:
            self.send_error_json(err.status, str(err))
        except (BrokenPipeError, ConnectionResetError):  # the browser dropped a media request it no longer needs
            self.close_connection = True
        except Exception as err:  # one line to the page and to stderr, no traceback
            sys.stderr.write(f"[app] {self.command} {self.path}: {type(err).__name__}: {_one_line(err)}\n")
            try:
                self.send_error_json(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(err).__name__}: {_one_line(err)}")
            except OSError:
                self.close_connection = True

    def _get(self, path: str, q: dict[str, str]) -> None:
        app = self.app
        if path == "/":
            self._headers(HTTPStatus.FOUND, "text/plain", 0, {"Location": "/pairs"})
            return
        if path.strip("/") in PAGES:
            return self.send_static("index.html")
        if path.startswith("/static/"):
            name = path[len("/static/"):]
            if name not in STATIC_FILES:
                raise AppError(f"no static file {name!r}", HTTPStatus.NOT_FOUND)
            return self.send_static(name)
        if path == "/api/config":
            return self.send_json(app.config())
        if path == "/api/pairs":
            try:
                limit = int(q.get("limit", "1000"))
            except ValueError:
                raise AppError("limit must be a whole number") from None
            return self.send_json(app.pairs(q.get("loc", "0"), q.get("split", app.split), q.get("dim", ""),
                                            q.get("op", ""), q.get("severity", ""), q.get("source", ""), limit))
        if path == "/api/pair":
            return self.send_json(app.pair(q.get("loc", "0"), q.get("split", app.split), q.get("key", "")))
        if path == "/api/pair_scores":
            return self.send_json(app.pair_scores(q.get("loc", "0"), q.get("split", app.split), q.get("key", "")))
        if path == "/api/videos":
            return self.send_json({"root": str(app.videos) if app.videos else None, "videos": app.video_list()})
        if path == "/api/rate/next":
            return self.send_json(app.next_task(q.get("rater", ""), q.get("loc", "0"), q.get("split", app.split)))
        if path.startswith("/media/"):
            return self._media(path[len("/media/"):], q)
        raise AppError(f"no page {path!r}", HTTPStatus.NOT_FOUND)

    def _media(self, rest: str, q: dict[str, str]) -> None:
        app = self.app
        kind, _, tail = rest.partition("/")
        parts = tail.split("/")
        if kind == "pair" and len(parts) == 4 and KEY_PATTERN.fullmatch(parts[2]):
            loc, split, key, side = parts
            file = app.pair_set(loc, split).file(key, side)
        elif kind == "blind" and len(parts) == 2:
            file = app.blind_file(parts[0], parts[1])
        elif kind == "upload" and len(parts) == 1:
            file = app.upload_file(parts[0])
        elif kind == "video":
            file = app.video_file(unquote(tail))
        else:
            raise AppError(f"no media {rest!r}", HTTPStatus.NOT_FOUND)
        self.send_file(app.compat_file(file) if q.get("compat") == "1" else file)

    def _post(self, path: str, q: dict[str, str]) -> None:
        if not self._post_ok():
            self.close_connection = True
            raise AppError("cross-site request refused (POSTs come from the app's own page)", HTTPStatus.FORBIDDEN)
        app = self.app
        if path == "/api/upload":
            length = self._length()
            if length > app.max_upload_bytes:
                self.close_connection = True  # the body is not read
                raise AppError(f"upload of {length} bytes is over the limit of {app.max_upload_bytes} bytes "
                               f"(--max-upload-mb)", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            return self.send_json(app.save_upload(q.get("name", ""), length, self.rfile))
        body = self._json_body()
        if path == "/api/score":
            return self.send_json(app.score(body))
        if path == "/api/rate":
            return self.send_json(app.answer(body))
        raise AppError(f"no API {path!r}", HTTPStatus.NOT_FOUND)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, app: App, host: str = "127.0.0.1", port: int = 0):
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.app = app
        super().__init__((host, port), Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = "127.0.0.1" if host == "0.0.0.0" else host
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
