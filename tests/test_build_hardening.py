"""perturb build against the machine's faults, bad manifests, a second build and URL outputs (issue 25).

- A full disk, an I/O error or an unwritable output stops the build with one line, rejects no
  source, leaves no temporaries, and the same build run again finishes with every source ok -- in
  one process (faults injected into the build's file writes) and in a pool of workers (ffmpeg
  writing a source's canonical windows to /dev/full).
- A manifest saved with a byte-order mark is read; rows that name no video and videos it does not
  list are one line each (an error when a row pins a split).
- One build at a time writes OUT/<dim>/ (two processes); a lock a killed build left blocks nobody.
- --out file://... is that folder; another URL is checked before any work; a failed publish says so.
"""
from __future__ import annotations

import builtins
import errno
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from perturb import media, pipeline
from perturb.pipeline import (BuildEnvironmentError, BuildError, BuildLocked, ManifestError, build, build_lock,
                              environment_fault, find_sources, read_manifest, train_only_sources)
from tests.media_fixtures import make_video

ROOT = Path(__file__).resolve().parents[1]
WINDOW = 2.0
N_SOURCES = 5


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("corpus")
    for i in range(N_SOURCES):
        make_video(src / f"spk{i}.mp4", seconds=4.4, seed=i)
    return src


def build_small(src: Path, out, **kw):
    kw.setdefault("cards_dir", Path(kw.get("work_dir") or out) / "cards")
    return build(src, "lip_sync", out=out, seed=7, workers=kw.pop("workers", 1), window_seconds=WINDOW,
                 progress=False, **kw)


def shard_sums(shard_dir: Path) -> list[tuple[str, str]]:
    return [(s["file"], s["sha256"]) for s in json.loads((shard_dir / "manifest.json").read_text())["shards"]]


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> list[tuple[str, str]]:
    """The shards of an undisturbed build (same seed, window): what every finished re-run must give."""
    out = tmp_path_factory.mktemp("reference")
    result = build_small(corpus, out)
    assert not result["rejects"]
    return shard_sums(out / "lip_sync")


def leftovers(out: Path) -> list[str]:
    """Temporaries under a build's OUT: `.<name>.tmp<pid>` files, canonical `.<key>.<pid>.*` folders,
    and staged tars without their done marker."""
    found = [str(p) for p in out.rglob("*") if re.search(r"\.tmp\d+$", p.name)]
    canonical = out / ".canonical"
    if canonical.is_dir():
        found += [str(p) for p in canonical.glob(".*") if p.is_dir()]
    found += [str(t) for t in out.glob("*/.staging/*/*.tar") if not t.with_suffix(".json").is_file()]
    return found


def done_markers(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in out.glob("lip_sync/.staging/*/*.json")]


class FaultyDisk:
    """open() for perturb.pipeline that fails the way a sick disk does.

    The `nth` file whose path `matches` is where the fault starts: with `at_open`, opening it raises
    (a read-only or unwritable output); else its first `after_bytes` bytes are written and the next
    write raises (a disk that fills). From then on every file opened for writing under `root` fails
    at once (the disk stays full) until `healed`.
    """

    def __init__(self, root: Path, matches, nth: int, code: int, at_open: bool = False, after_bytes: int = 100):
        self.root, self.matches, self.nth, self.code = root, matches, nth, code
        self.at_open, self.after_bytes = at_open, after_bytes
        self.seen, self.broken, self.healed = 0, False, False

    def fail(self, path) -> OSError:
        self.broken = True
        return OSError(self.code, os.strerror(self.code), str(path))

    def __call__(self, file, mode="r", *args, **kwargs):
        path = Path(file)
        if self.healed or "w" not in mode or not path.is_relative_to(self.root):
            return builtins.open(file, mode, *args, **kwargs)
        if self.broken:
            raise self.fail(path)
        if self.matches(path):
            self.seen += 1
            if self.seen == self.nth:
                if self.at_open:
                    raise self.fail(path)
                return _FillingFile(builtins.open(file, mode, *args, **kwargs), self, path)
        return builtins.open(file, mode, *args, **kwargs)


class _FillingFile:
    def __init__(self, fh, disk: FaultyDisk, path: Path):
        self._fh, self._disk, self._path, self._left = fh, disk, path, disk.after_bytes

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self._left:
            self._fh.write(data[:self._left])
            self._left = 0
            raise self._disk.fail(self._path)
        self._left -= len(data)
        return self._fh.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()

    def __getattr__(self, name):
        return getattr(self._fh, name)


STAGED_TAR = lambda p: ".staging" in p.parts and ".tar.tmp" in p.name  # noqa: E731
DONE_MARKER = lambda p: ".staging" in p.parts and ".json.tmp" in p.name  # noqa: E731
PROBE_MEMO = lambda p: "probes" in p.parts  # noqa: E731
SHARD = lambda p: re.match(r"\.(train|val|test)-\d{6}\.tar\.tmp", p.name) is not None  # noqa: E731


@pytest.mark.parametrize("matches, nth, code, at_open, done_before", [
    (STAGED_TAR, 3, errno.ENOSPC, False, 2),   # the disk fills while the third source's pairs are staged
    (PROBE_MEMO, 3, errno.EDQUOT, False, 0),   # ... while checking sources (pass 1): quota exceeded
    (SHARD, 1, errno.EIO, False, N_SOURCES),   # an I/O error while packing, every source done
    (DONE_MARKER, 2, errno.EROFS, True, 1),    # the output turns read-only between a tar and its marker
    (STAGED_TAR, 1, errno.EACCES, True, 0),    # the output folder cannot be written at all
], ids=["enospc-staging", "edquot-probe", "eio-packing", "erofs-marker", "eacces-output"])
def test_a_machine_fault_stops_the_build_rejects_nothing_and_a_rerun_finishes(
        corpus, reference, tmp_path, monkeypatch, matches, nth, code, at_open, done_before):
    out = tmp_path / "out"
    sys_tmp = tmp_path / "sys_tmp"
    sys_tmp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(sys_tmp))  # the build's own scratch folders, watched too
    disk = FaultyDisk(out, matches, nth, code, at_open=at_open)
    monkeypatch.setattr(pipeline, "open", disk, raising=False)  # _write_atomically: every file the build writes

    with pytest.raises(BuildEnvironmentError) as stopped:
        build_small(corpus, out)
    message = str(stopped.value)
    assert disk.broken and stopped.value.errno == code
    assert "\n" not in message and message.startswith("build stopped: " + os.strerror(code))
    assert "none was rejected" in message and "run the same command again" in message
    assert not (out / "lip_sync" / "rejects.jsonl").exists()     # no source recorded as rejected
    markers = done_markers(out)
    assert len(markers) == done_before and all(m["status"] == "ok" for m in markers)
    assert leftovers(out) == [] and list(sys_tmp.iterdir()) == []

    disk.healed = True  # space freed / the output writable again: the same build finishes
    result = build_small(corpus, out)
    assert result["rejects"] == [] and all(s["status"] == "ok" for s in result["summaries"])
    assert len(result["summaries"]) == N_SOURCES
    assert shard_sums(out / "lip_sync") == reference
    assert leftovers(out) == []


def test_the_command_line_says_a_machine_fault_in_one_line(corpus, tmp_path, monkeypatch, capsys):
    from perturb.__main__ import main

    out = tmp_path / "out"
    monkeypatch.setattr(pipeline, "open", FaultyDisk(out, STAGED_TAR, 1, errno.ENOSPC), raising=False)
    rc = main(["build", "--src", str(corpus), "--out", str(out), "--workers", "1", "--window", str(WINDOW),
               "--seed", "7", "--cards", str(tmp_path / "cards")])
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc == 1 and "Traceback" not in err
    assert len(errors) == 1 and errors[0].startswith("error: build stopped: No space left on device")


def test_ffmpeg_on_a_full_disk_in_a_pool_worker_stops_the_build(corpus, reference, tmp_path, monkeypatch):
    """workers=2 (spawned processes): ffmpeg canonicalising one source writes to /dev/full (ENOSPC,
    told in its stderr); the worker's MediaError reaches the build as the machine's fault, not as a
    reject of that source."""
    victim = str((corpus / "spk3.mp4").resolve())
    wrapper = tmp_path / "ffmpeg"
    wrapper.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        # ffmpeg whose outputs for one source land on a full disk
        import os, sys
        real, victim = {media.ffmpeg_exe()!r}, {victim!r}
        args = sys.argv[1:]
        if victim in args and "-y" in args:
            full = []
            for a in args:
                if full and full[-1] == "-y":
                    if a.endswith(".mp4"):
                        full[-1:] = ["-f", "mp4", "-y"]
                    a = "/dev/full"
                full.append(a)
            args = full
        os.execv(real, [real, *args])
        """))
    wrapper.chmod(0o755)
    monkeypatch.setenv("AVBENCH_FFMPEG", str(wrapper))           # read by the workers too (spawned after this)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # where media links `ffmpeg` for pydub
    out = tmp_path / "out"
    with pytest.raises(BuildEnvironmentError) as stopped:
        build_small(corpus, out, workers=2)
    assert stopped.value.errno == errno.ENOSPC and "(at source spk3)" in str(stopped.value)
    assert "No space left on device" in str(stopped.value) and "\n" not in str(stopped.value)
    assert not (out / "lip_sync" / "rejects.jsonl").exists()
    assert all(m["status"] == "ok" for m in done_markers(out)) and leftovers(out) == []

    monkeypatch.delenv("AVBENCH_FFMPEG")
    result = build_small(corpus, out, workers=2)
    assert result["rejects"] == [] and shard_sums(out / "lip_sync") == reference


def test_what_is_the_machine_s_fault_and_what_the_source_s(tmp_path, monkeypatch):
    from concurrent.futures.process import BrokenProcessPool

    from perturb.pipeline import Source, _ffmpeg_writing_to, _internal_error

    src = "/data/clips/a.mp4"
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS):
        assert environment_fault(OSError(code, os.strerror(code), "/out/x"), (src,)).errno == code
    assert environment_fault(PermissionError(errno.EACCES, "Permission denied", "/out/x"), (src,))
    assert environment_fault(PermissionError(errno.EACCES, "Permission denied", src), (src,)) is None
    assert environment_fault(FileNotFoundError(errno.ENOENT, "No such file", src), (src,)) is None
    assert environment_fault(ValueError("no donor in the context's pool")) is None
    assert environment_fault(BrokenProcessPool("a worker died")) is not None
    # ffmpeg: its last stderr line, when it names the cause
    assert environment_fault(media.MediaError("[out#2/f32le @ 0x1] Error closing file: No space left on device"))
    assert environment_fault(media.MediaError("Error opening output files: Read-only file system"))
    assert environment_fault(media.MediaError("Error opening output files: Permission denied"))
    assert environment_fault(media.MediaError(f"unreadable media: {src}: Permission denied")) is None
    assert environment_fault(media.MediaError("Invalid data found when processing input")) is None
    # a source nobody may read is that source's reject; an unreadable output stops the build
    source = Source("a", src, "a")
    assert _internal_error(source, PermissionError(errno.EACCES, "Permission denied", src))["reason"] == \
        "cannot read the file: Permission denied"
    with pytest.raises(BuildEnvironmentError):
        _internal_error(source, PermissionError(errno.EACCES, "Permission denied", "/out/lip_sync/.staging"))

    # ffmpeg's last line need not say it ("Nothing was written into output file"): a MediaError raised
    # while the folder it wrote into is full is the disk's fault, with space free it is the source's
    nothing = media.MediaError("[out#0/mp4 @ 0x1] Nothing was written into output file, because at least one "
                               "of its streams received no packets.")

    class Fs:
        f_frsize, f_files, f_favail = 4096, 1000, 1000

        def __init__(self, free):
            self.f_bavail = free // 4096

    for free, fault in ((1 << 20, True), (10 << 30, False)):
        monkeypatch.setattr(os, "statvfs", lambda _, free=free: Fs(free))
        with pytest.raises(OSError if fault else media.MediaError) as raised:
            with _ffmpeg_writing_to(tmp_path):
                raise nothing
        assert isinstance(raised.value, OSError) == fault
        assert (environment_fault(raised.value) is not None) == fault


# ----------------------------------------------------------------------------- manifests

def _videos(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


def test_a_manifest_saved_with_a_byte_order_mark_is_read(tmp_path):
    src = _videos(tmp_path / "src", "a.mp4", "b.mp4")
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("File, Split ,licence\r\na.mp4,test,CC-BY\r\nb.mp4,,\r\n,,\r\n", encoding="utf-8-sig")  # Excel
    assert csv_path.read_bytes().startswith(b"\xef\xbb\xbf")
    got = {s.source_id: (s.split, s.licence) for s in find_sources(src, csv_path)}
    assert got == {"a": ("test", "CC-BY"), "b": ("", "unknown")}
    json_path = tmp_path / "m.json"
    json_path.write_text(json.dumps([{"file": "a.mp4", "split": "val"}, {"path": "clips\\b.mp4"}]),
                         encoding="utf-8-sig")
    assert {s.source_id: s.split for s in find_sources(src, json_path)} == {"a": "val", "b": ""}


def test_manifest_rows_that_name_no_video_are_an_error_when_pinned_and_a_warning_else(tmp_path, capsys):
    src = _videos(tmp_path / "src", "a.mp4", "b.mp4", "c.mp4", "d.mp4", "e.mp4")
    m = tmp_path / "m.csv"
    m.write_text("file,split\nA.mov,test\na.mp4,\n")   # the file is a.mp4: the test pin would be lost
    with pytest.raises(ManifestError) as err:
        find_sources(src, m)
    assert "\n" not in str(err.value) and "1 rows pinned to a split name no video" in str(err.value)
    assert "A.mov (test)" in str(err.value)

    m.write_text("file,split\nx1.mp4,\nx2.mp4,\nx3.mp4,\nx4.mp4,\na.mp4,\n")
    sources = find_sources(src, m)
    assert {s.source_id: s.split for s in sources} == {"a": "", "b": "", "c": "", "d": "", "e": ""}
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(ln.startswith("warning: ") for ln in lines)
    assert "4 of its 5 rows name no video" in lines[0] and "x1.mp4, x2.mp4, x3.mp4 and 1 more" in lines[0]
    assert "4 of the 5 videos" in lines[1] and "are not listed" in lines[1]
    assert "b.mp4, c.mp4, d.mp4 and 1 more" in lines[1]

    m.write_text("file,split\na.mp4,train\nb.mp4,\n")  # pins splits, misses c, d, e: their split is not the build's to pick
    with pytest.raises(ManifestError) as err:
        find_sources(src, m)
    assert "\n" not in str(err.value) and "pins splits but does not list 3 of the 5 videos" in str(err.value)
    assert "c.mp4, d.mp4, e.mp4" in str(err.value)

    m.write_text("file\na.mp4\nb.mp4\nc.mp4\nd.mp4\ne.mp4\n")  # every video, no stray row: silent
    find_sources(src, m)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("text, says", [
    ("name,split\na.mp4,test\n", "no 'file' or 'path' column"),
    ("file,spilt\na.mp4,test\n", "unknown column 'spilt': did you mean 'split'?"),
    ("file,split\na.mp4,test\na.mp4,val\n", "a.mp4 is listed twice (rows 1 and 2)"),
    ("file,split\n,test\n", "row 1 names no file"),
    ("file,split\na.mp4,holdout\n", "split of 'a.mp4' must be one of train, val, test"),
])
def test_a_manifest_that_cannot_be_used_is_one_clear_line(tmp_path, text, says):
    src = _videos(tmp_path / "src", "a.mp4")
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(ManifestError) as err:
        find_sources(src, tmp_path / "m.csv")
    assert says in str(err.value) and "\n" not in str(err.value) and str(tmp_path / "m.csv") in str(err.value)


def test_a_manifest_that_is_not_utf8_is_one_clear_line(tmp_path):
    (tmp_path / "m.csv").write_bytes("file,licence\na.mp4,Société\n".encode("cp1252"))  # Excel's "CSV"
    with pytest.raises(ManifestError, match="not UTF-8 text .*CSV UTF-8"):
        read_manifest(tmp_path / "m.csv")


def test_train_extra_manifests_keep_their_rules(tmp_path, capsys):
    src = _videos(tmp_path / "extra", "a.mp4", "b.mp4", "c.mp4")
    m = tmp_path / "extra.csv"
    m.write_text("file\na.mp4\nb.mp4\nghost.mp4\n")
    extra = train_only_sources(src, m, taken=set())
    assert [(s.source_id, s.split) for s in extra] == [("a", "train"), ("b", "train")]
    lines = capsys.readouterr().err.splitlines()   # c.mp4 is left out on purpose: no warning for it
    assert len(lines) == 1 and "1 of its 3 rows name no video" in lines[0] and "ghost.mp4" in lines[0]
    m.write_text("file,split\na.mp4,test\nb.mp4,\n")  # a train-extra source cannot be a test source
    with pytest.raises(ManifestError, match="pinned to another split: a.mp4 \\(test\\)"):
        train_only_sources(src, m, taken=set())


def test_a_bom_manifest_pins_its_source_in_a_build(corpus, tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("file,split\nspk0.mp4,\nspk1.mp4,test\nspk2.mp4,test\nspk3.mp4,\nspk4.mp4,\n", encoding="utf-8-sig")
    result = build_small(corpus, tmp_path / "out", manifest=m)
    split = {s.source_id: s.split for s in result["sources"]}
    assert split["spk1"] == split["spk2"] == "test"


def test_the_command_line_says_a_bad_manifest_in_one_line(corpus, tmp_path, capsys):
    from perturb.__main__ import main

    (tmp_path / "m.csv").write_text("file,split\nspk9.mp4,test\n")
    rc = main(["build", "--src", str(corpus), "--out", str(tmp_path / "out"), "--manifest", str(tmp_path / "m.csv"),
               "--workers", "1", "--cards", str(tmp_path / "cards")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: ") and "spk9.mp4 (test)" in err
    assert not (tmp_path / "out").exists()  # refused before anything is made (no lock, no staging)


# ----------------------------------------------------------------------------- one build at a time

HOLD_LOCK = """
import sys
from pathlib import Path
from perturb.pipeline import build_lock
with build_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.read()
"""


def _hold_lock(out_dir: Path) -> subprocess.Popen:
    """Another process holding the build lock of out_dir (until its stdin closes or it is killed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out_dir)], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_build_into_the_same_out_stops_naming_the_owner(corpus, tmp_path, capsys):
    import socket

    from perturb.__main__ import main

    out = tmp_path / "out"
    owner = _hold_lock(out / "lip_sync")
    try:
        with pytest.raises(BuildLocked) as locked:
            build_small(corpus, out)
        message = str(locked.value)
        assert f"pid {owner.pid} on {socket.gethostname()} since " in message
        assert str(out / "lip_sync" / ".build.lock") in message and "\n" not in message
        assert [p.name for p in (out / "lip_sync").iterdir()] == [".build.lock"]  # nothing else was touched
        rc = main(["build", "--src", str(corpus), "--out", str(out), "--workers", "1", "--cards", str(tmp_path / "c")])
        err = capsys.readouterr().err
        assert rc == 1 and err.count("\n") == 1 and f"pid {owner.pid}" in err
    finally:
        owner.kill()  # killed, as a crashed build: its lock file stays, its lock goes with it
        owner.wait()
    assert (out / "lip_sync" / ".build.lock").is_file()
    result = build_small(corpus, out)
    assert result["card"]["pairs"] > 0


def test_the_lock_is_held_for_the_whole_build(corpus, tmp_path, monkeypatch):
    """While one build packs its shards (its last step), another process cannot take OUT/<dim>/."""
    try_lock = ("import sys; from pathlib import Path; from perturb.pipeline import build_lock, BuildLocked\n"
                "try:\n    with build_lock(Path(sys.argv[1])): print('free')\n"
                "except BuildLocked as err: print(err)\n")
    seen = []
    pack = pipeline.pack_shards

    def pack_and_look(summaries, staging, out_dir, **kw):
        seen.append(subprocess.run([sys.executable, "-c", try_lock, str(out_dir)], cwd=ROOT, capture_output=True,
                                   text=True, check=True).stdout.strip())
        return pack(summaries, staging, out_dir, **kw)

    monkeypatch.setattr(pipeline, "pack_shards", pack_and_look)
    build_small(corpus, tmp_path / "out")
    assert len(seen) == 1 and seen[0].startswith("another build is writing") and f"pid {os.getpid()} " in seen[0]
    with build_lock(tmp_path / "out" / "lip_sync"):  # released when the build returned
        pass


# ----------------------------------------------------------------------------- URL outputs

def test_a_file_url_out_is_that_folder(corpus, reference, tmp_path):
    result = build_small(corpus, f"file://{tmp_path}/shards", cards_dir=tmp_path / "cards")
    assert result["out_dir"] == tmp_path / "shards" / "lip_sync" and "out_url" not in result
    assert shard_sums(tmp_path / "shards" / "lip_sync") == reference


def _memory_store():
    """An in-memory fsspec store class to derive test stores from (each with its protocol and objects)."""
    from fsspec.implementations.memory import MemoryFileSystem

    class Store(MemoryFileSystem):
        @classmethod
        def _strip_protocol(cls, path):
            return super()._strip_protocol(str(path).removeprefix(f"{cls.protocol}://"))

    return Store


def test_an_unknown_or_unwritable_url_is_refused_before_any_work(tmp_path, capsys):
    import fsspec

    from perturb.__main__ import main

    Store = _memory_store()

    class ReadOnlyStore(Store):
        protocol = "avbenchro"
        store, pseudo_dirs = {}, [""]

        def pipe_file(self, path, value, **kw):
            raise PermissionError(errno.EACCES, "read-only store", path)

    fsspec.register_implementation("avbenchro", ReadOnlyStore, clobber=True)
    work = tmp_path / "work"
    missing = tmp_path / "no_such_src"  # would fail later (FileNotFoundError): the URL is checked first
    for url, says in (("nosuch://bucket/shards", "Protocol not known: nosuch"),
                      ("avbenchro://bucket/shards", "cannot write to avbenchro://bucket/shards/lip_sync")):
        with pytest.raises(BuildError) as err:
            build_small(missing, url, work_dir=work)
        assert says in str(err.value) and "\n" not in str(err.value)
        assert not work.exists()
        rc = main(["build", "--src", str(missing), "--out", url, "--work", str(work)])
        printed = capsys.readouterr().err
        assert rc == 1 and printed.count("\n") == 1 and says in printed


def test_a_url_build_publishes_and_a_failed_publish_says_how_to_finish(corpus, tmp_path):
    import fsspec

    Store = _memory_store()

    class FlakyStore(Store):
        protocol = "avbenchflaky"
        store, pseudo_dirs = {}, [""]
        fail_after = None  # put_file calls that succeed before the network drops

        def put_file(self, lpath, rpath, **kw):
            if FlakyStore.fail_after is not None:
                if FlakyStore.fail_after == 0:
                    raise ConnectionError("connection reset by peer")
                FlakyStore.fail_after -= 1
            return super().put_file(lpath, rpath, **kw)

    fsspec.register_implementation("avbenchflaky", FlakyStore, clobber=True)
    url = "avbenchflaky://bucket/shards"
    FlakyStore.fail_after = 1
    with pytest.raises(BuildError) as err:
        build_small(corpus, url, work_dir=tmp_path / "work")
    assert "publishing to avbenchflaky://bucket/shards/lip_sync failed" in str(err.value)
    assert "run the same command again to publish it" in str(err.value) and "\n" not in str(err.value)
    fs = fsspec.filesystem("avbenchflaky")
    assert not fs.exists("bucket/shards/lip_sync/manifest.json")   # written last: never before the shards
    FlakyStore.fail_after = None
    result = build_small(corpus, url, work_dir=tmp_path / "work")
    assert result["out_url"] == f"{url}/lip_sync"
    published = json.loads(fs.cat_file("bucket/shards/lip_sync/manifest.json"))
    assert [s["file"] for s in published["shards"]] == [f for f, _ in shard_sums(tmp_path / "work" / "lip_sync")]
    assert all(fs.exists(f"bucket/shards/lip_sync/{s['file']}") for s in published["shards"])
    assert not fs.glob("bucket/shards/lip_sync/.avbench-write-check*")


def test_ffmpeg_failure_names_the_machine_fault_not_its_last_line(tmp_path):
    """ffmpeg writing to a full disk ends with "Nothing was written into output file": the reason kept
    is the line that names the cause, so the build can tell a full disk from a broken source."""
    from perturb import media
    from perturb.pipeline import environment_fault

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    # -f null would never fail; writing raw audio into /dev/full fails with ENOSPC
    with pytest.raises(media.MediaError) as info:
        media.run_ffmpeg(["-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-f", "s16le", "-y", "/dev/full"])
    assert "No space left on device" in str(info.value)
    fault = environment_fault(info.value)
    assert fault is not None and "No space left on device" in str(fault)
    err = media.ffmpeg_failure("a\n[out] av_interleaved_write_frame(): No space left on device\n"
                               "Nothing was written into output file\n", 1)
    assert "No space left on device" in str(err)
    assert str(media.ffmpeg_failure("x\nInvalid data found when processing input\n", 1)) == \
        "Invalid data found when processing input"


def test_a_source_below_25_fps_with_many_windows_is_cut_without_hanging(tmp_path):
    """ffmpeg's one multi-output run deadlocks when its fps filters must add frames for 3+ windows;
    such a source is cut one window per run: every window complete, 25 fps, in sync with the sound."""
    import multiprocessing

    from perturb import media

    src = tmp_path / "low.mp4"
    subprocess.run([media.ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=160x120:rate=22.13:duration=7", "-f", "lavfi", "-i", "sine=frequency=300:duration=7",
                    "-c:v", "libx264", "-c:a", "aac", "-shortest", str(src)], check=True)
    windows = [(0.0, 2.0), (1.0, 3.0), (2.0, 4.0), (3.0, 5.0), (4.0, 6.0)]
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=media.canonicalise_windows, args=(str(src), str(tmp_path / "out"), windows, (64, 48)))
    proc.start()
    proc.join(60)
    hung = proc.is_alive()
    if hung:
        proc.kill()
        subprocess.run(["pkill", "-f", str(src)], check=False)
    assert not hung, "canonicalise_windows hung on a 22 fps source with 5 windows"
    assert proc.exitcode == 0
    outs = [tmp_path / "out" / f"window_{i:04d}.mp4" for i in range(len(windows))]
    assert media.count_video_frames(outs, tmp_path) == [50] * len(windows)
    for out in outs:
        info = media.probe(str(out))
        assert abs(info.fps - 25) < 0.01 and abs(info.duration - 2.0) < 0.1 and info.has_audio
