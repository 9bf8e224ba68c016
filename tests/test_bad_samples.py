"""Broken samples in well-formed shards are skipped and reported, not fatal.

Tiny real shards (tests/train_fixtures.py) get three broken samples appended to one split: json
that does not parse, a sample without its rejected side, an mp4 that is noise. Training and
evaluation go on without them, count them and list them (split, shard, key, reason); more than
the allowed share stops the run with one line naming shard and key. Hostile members (pickles,
path keys) stay fatal: tests/test_untrusted_shards.py.
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.train_fixtures import TINY_PREPROCESS, write_fixture_shards, write_tiny_config
from train import data as tdata
from train.data import TooManyBadSamples, load_split
from train.preprocess import PreprocessConfig

torch.set_num_threads(1)

PRE = PreprocessConfig(**TINY_PREPROCESS)
BROKEN = {"broken_json": "invalid json", "broken_noside": "lacks rejected.mp4",
          "broken_noise": "chosen.mp4: unreadable media"}


def add_broken_samples(shard: Path) -> None:
    """Append the three BROKEN samples (keys sort after the fixture's) to a shard."""
    with tarfile.open(shard) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    key = sorted(n.split(".")[0] for n in members)[0]
    good = {ext: members[f"{key}.{ext}"] for ext in ("chosen.mp4", "rejected.mp4", "json")}
    samples = {
        "broken_json": {**good, "json": b'{"source_id": "x", '},
        "broken_noside": {"chosen.mp4": good["chosen.mp4"], "json": good["json"]},
        "broken_noise": {**good, "chosen.mp4": np.random.default_rng(0).bytes(4000)},
    }
    with tarfile.open(shard, "a") as tar:
        for k, files in samples.items():
            for ext, payload in files.items():
                info = tarfile.TarInfo(f"{k}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = write_fixture_shards(tmp_path_factory.mktemp("shards"), sources=4, seconds=2.0, pairs_per_window=2,
                               splits={"train": 0.5, "val": 0.25, "test": 0.25}, seed=3)
    add_broken_samples(out / "train-000000.tar")
    add_broken_samples(out / "test-000000.tar")
    return out


def _quiet(*a, **k):
    pass


def _check_listed(bad: list[dict], split: str, shard: str) -> None:
    assert {b["key"]: b["split"] for b in bad} == {k: split for k in BROKEN}
    for b in bad:
        assert b["shard"] == shard and BROKEN[b["key"]] in b["reason"], b
        assert "\n" not in b["reason"] and "/dev/shm" not in b["reason"] and "/tmp" not in b["reason"]


def test_load_split_skips_lists_and_caches_bad_samples(shards, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    ds = load_split(shards, "train", PRE, cache, num_workers=2, log=_quiet, max_bad_fraction=0.5)
    assert len(ds) == 4 and all(not k.startswith("broken") for k in ds.keys)
    _check_listed(ds.bad, "train", "train-000000.tar")

    def no_decode(*a, **k):
        raise AssertionError("decoded although the cache entry is valid")

    monkeypatch.setattr(tdata, "preprocess_clip", no_decode)
    again = load_split(shards, "train", PRE, cache, num_workers=0, log=_quiet, max_bad_fraction=0.5)
    assert again.bad == ds.bad and again.keys == ds.keys  # the cache remembers what was bad
    with pytest.raises(TooManyBadSamples) as err:
        load_split(shards, "train", PRE, cache, num_workers=0, log=_quiet, max_bad_fraction=0.1)
    msg = str(err.value)
    assert "3 of 7" in msg and "train-000000.tar broken_" in msg and "\n" not in msg


def test_too_many_bad_samples_write_no_cache_entry(shards, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(TooManyBadSamples):
        load_split(shards, "train", PRE, cache, num_workers=0, log=_quiet, max_bad_fraction=0.1)
    assert not list(cache.glob("train-*/metas.json"))


def test_train_skips_and_reports_bad_samples_or_stops_in_one_line(shards, tmp_path):
    from train.__main__ import main

    run = tmp_path / "run"
    common = ["--dim", "lip_sync", "--shards", str(shards), "--run", str(run), "--config", str(write_tiny_config(tmp_path / "tiny.yaml")),
              "--cache-dir", str(tmp_path / "cache"), "--workers", "0", "--max-steps", "2"]
    with pytest.raises(SystemExit) as err:  # default limit: 5% of a split
        main(common)
    msg = str(err.value)
    assert "too many bad samples" in msg and "train-000000.tar broken_" in msg and "\n" not in msg
    assert len((run / "bad_samples.jsonl").read_text().splitlines()) == 3
    metrics = main(common + ["--max-bad-fraction", "0.5"])
    assert metrics["bad_samples"] == {"train": 3, "val": 0} and metrics["n_train_pairs"] == 4
    assert json.loads((run / "metrics.json").read_text())["bad_samples"] == {"train": 3, "val": 0}
    _check_listed([json.loads(line) for line in (run / "bad_samples.jsonl").read_text().splitlines()],
                  "train", "train-000000.tar")


def test_evaluate_skips_and_reports_bad_samples_or_stops_in_one_line(shards, tmp_path, capsys):
    from eval.__main__ import main
    from tests.eval_fixtures import make_export

    run = tmp_path / "run"
    make_export(run / "model")
    rep = tmp_path / "report"
    common = ["evaluate", "--dim", "lip_sync", "--shards", str(shards), "--run", str(run),
              "--export", str(tmp_path / "export"), "--report", str(rep), "--n-boot", "20", "--no-progress",
              "--cache-dir", str(tmp_path / "cache"), "--workers", "0"]
    capsys.readouterr()
    assert main(common) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: too many bad samples") and "test-000000.tar broken_" in last
    assert main(common + ["--max-bad-fraction", "1"]) == 0  # 1: never stop
    report = json.loads((rep / "report.json").read_text())
    assert report["bad_samples"] == {"val": 0, "test": 3} and report["test"]["n_pairs"] == 2
    _check_listed([json.loads(line) for line in (rep / "bad_samples.jsonl").read_text().splitlines()],
                  "test", "test-000000.tar")
    assert "Broken samples left out" in (rep / "report.md").read_text()
    # whole clips read the samples themselves: the same three are left out and listed the same way
    assert main(common + ["--max-bad-fraction", "1", "--whole-clips"]) == 0
    report = json.loads((rep / "report.json").read_text())
    assert report["bad_samples"] == {"val": 0, "test": 3} and report["test"]["n_pairs"] == 2
    _check_listed([json.loads(line) for line in (rep / "bad_samples.jsonl").read_text().splitlines()],
                  "test", "test-000000.tar")
