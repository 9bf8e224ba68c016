"""Hostile shards: nothing outside the pair format is decoded, no key becomes a path outside --out.

Each shard is built here, in a temp dir: a pickle member whose unpickling would create a marker
file, keys that climb out of the output folder, absolute keys, links, huge declared sizes.
"""
from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from perturb.shard_format import BadSample, ShardFormatError, check_sample, check_shard

ROOT = Path(__file__).resolve().parents[1]


class _Touch:
    """Unpickling this creates `path`: proof that a reader ran code from the shard."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _member(tar: tarfile.TarFile, name: str, payload: bytes, **fields) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    for k, v in fields.items():
        setattr(info, k, v)
    tar.addfile(info, io.BytesIO(payload))


def _sample(tar: tarfile.TarFile, key: str, split: str = "train") -> None:
    meta = {"source_id": key, "split": split, "window": [0, 2], "severity": 1, "chosen_severity": 0,
            "operator": "audio_shift", "ops": [], "chosen_ops": []}
    _member(tar, f"{key}.chosen.mp4", b"not really an mp4")
    _member(tar, f"{key}.json", json.dumps(meta).encode())
    _member(tar, f"{key}.rejected.mp4", b"not really an mp4")


def write_shard(path: Path, extra=(), split: str = "train") -> Path:
    """A shard with one well-formed sample, then the `extra` (name, payload, fields) members."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        _sample(tar, "good_w000", split)
        for name, payload, fields in extra:
            _member(tar, name, payload, **fields)
    return path


def pickle_member(marker: Path, ext: str = "pyd") -> tuple[str, bytes, dict]:
    return (f"good_w000.{ext}", pickle.dumps(_Touch(marker)), {})


# --------------------------------------------------------------------------- the format check

@pytest.mark.parametrize("name,fields,why", [
    ("good_w000.pyd", {}, "not part of the pair format"),
    ("good_w000.pickle", {}, "not part of the pair format"),
    ("good_w000.pth", {}, "not part of the pair format"),
    ("../../escape.chosen.mp4", {}, "invalid sample key"),
    ("/tmp/escape.chosen.mp4", {}, "invalid sample key"),
    ("sub/dir.chosen.mp4", {}, "invalid sample key"),
    ("link.chosen.mp4", {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, "not a regular file"),
    ("huge.chosen.mp4", {"size": 1 << 40}, "byte limit"),
])
def test_check_shard_refuses_members_outside_the_format(tmp_path, name, fields, why):
    payload = b"" if fields else b"x"
    written = {k: v for k, v in fields.items() if k != "size"}
    shard = write_shard(tmp_path / "train-000000.tar", [(name, payload, written)])
    if "size" in fields:  # a header that lies about its size: rewrite the header only
        raw = bytearray(shard.read_bytes())
        with tarfile.open(shard) as tar:
            info = tar.getmember(name)
        hdr = tarfile.TarInfo(name)
        hdr.size = fields["size"]
        block = hdr.tobuf(format=tarfile.GNU_FORMAT)[:512]
        raw[info.offset: info.offset + 512] = block
        shard.write_bytes(bytes(raw))
    with pytest.raises(ShardFormatError) as err:
        check_shard(shard)
    msg = str(err.value)
    assert why in msg and "train-000000.tar" in msg and "\n" not in msg


def test_check_shard_accepts_the_format(tmp_path):
    assert check_shard(write_shard(tmp_path / "train-000000.tar")) == 1


def test_check_sample_streaming_twin():
    ok = {"__key__": "k1", "__url__": "/x/train-000001.tar", "json": b"{}", "chosen.mp4": b"",
          "rejected.mp4": b""}
    assert check_sample(dict(ok)) == ok
    with pytest.raises(ShardFormatError, match="train-000001.tar.*pyd"):
        check_sample(dict(ok, pyd=b"\x80"))
    with pytest.raises(BadSample, match="lacks rejected.mp4"):  # broken, not hostile: skipped by readers
        check_sample({k: v for k, v in ok.items() if k != "rejected.mp4"})
    with pytest.raises(ShardFormatError, match="invalid sample key"):
        check_sample(dict(ok, __key__="../up"))


# --------------------------------------------------------------------------- end to end, CLIs

def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(cwd)})


@pytest.mark.parametrize("ext", ["pyd", "pickle"])
def test_train_refuses_a_pickle_member_and_unpickles_nothing(tmp_path, ext):
    marker = tmp_path / "pwned"
    shards = tmp_path / "shards"
    write_shard(shards / "train-000000.tar", [pickle_member(marker, ext)])
    write_shard(shards / "val-000000.tar", split="val")
    conf = tmp_path / "c.yaml"
    conf.write_text("preprocess: {window_seconds: 2.0}\n")
    proc = _run(["-m", "train", "--dim", "lip_sync", "--shards", str(shards), "--run", str(tmp_path / "run"),
                 "--config", str(conf), "--cache-dir", str(tmp_path / "cache"), "--workers", "0"], tmp_path)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "train-000000.tar" in last and f"good_w000.{ext}" in last, proc.stderr[-2000:]
    assert not marker.exists()


def test_eval_refuses_a_pickle_member_and_unpickles_nothing(tmp_path):
    from tests.eval_fixtures import make_export

    marker = tmp_path / "pwned"
    shards = tmp_path / "shards"
    write_shard(shards / "val-000000.tar", [pickle_member(marker)], split="val")
    write_shard(shards / "test-000000.tar", split="test")
    run = tmp_path / "run"
    make_export(run / "model")
    proc = _run(["-m", "eval", "evaluate", "--dim", "lip_sync", "--shards", str(shards), "--run", str(run),
                 "--export", str(tmp_path / "export"), "--report", str(tmp_path / "report"),
                 "--cache-dir", str(tmp_path / "cache"), "--workers", "0", "--no-progress"], tmp_path)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "val-000000.tar" in last and "good_w000.pyd" in last, proc.stderr[-2000:]
    assert not marker.exists()


@pytest.mark.parametrize("name", ["../../escape.chosen.mp4", "ESCAPE_ABS"])
def test_perturb_samples_never_writes_outside_out(tmp_path, name):
    outside = tmp_path / "a" / "escape.chosen.mp4"
    if name == "ESCAPE_ABS":
        name = str(tmp_path / "abs_escape.chosen.mp4")
        outside = Path(name)
    shards = tmp_path / "a" / "b" / "shards"
    write_shard(shards / "test-000000.tar", [(name, b"payload", {})], split="test")
    out = tmp_path / "a" / "b" / "out"
    proc = _run(["-m", "perturb", "samples", "--shards", str(shards), "--split", "test", "--n", "5",
                 "--out", str(out)], tmp_path)
    assert proc.returncode == 2 and "invalid sample key" in proc.stderr
    assert not outside.exists()
    assert all(p.resolve().is_relative_to(out.resolve()) for p in tmp_path.rglob("*escape*"))
