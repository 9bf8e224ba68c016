"""eval/scale.py without Ray: the record store (whole shards, resume, refusals) and URL inputs (file://)."""
from __future__ import annotations

import json
import os

import pytest

from eval.scale import RecordStore, list_videos, local_copies, local_copy, read_records

SETTINGS = {"judges": [{"dim": "lip_sync", "sha256": "a" * 64}], "windows": False}


def rec(i: int) -> dict:
    return {"path": f"v{i}.mp4", "scores": {"lip_sync": i / 10}, "status": {"lip_sync": "ok"}}


def test_records_go_out_in_whole_shards_and_a_reopened_store_resumes(tmp_path):
    out = tmp_path / "store"
    store = RecordStore(str(out), SETTINGS, shard_records=2)
    assert json.loads((out / "manifest.json").read_text())["records"] == 0  # written before any shard
    for i in range(3):
        store.add(rec(i))
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "scores-000000.jsonl"]  # 2 written, 1 waits
    again = RecordStore(str(out), SETTINGS)                  # a kill now loses the third record only
    assert set(again.records) == {"v0.mp4", "v1.mp4"} and again.resumed == 2
    store.flush(complete=True, n_videos=3)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["records"] == manifest["videos"] == 3
    assert [s["records"] for s in manifest["shards"]] == [2, 1]
    third = RecordStore(str(out), SETTINGS)
    assert third.records == {r["path"]: r for r in map(rec, range(3))} == read_records(str(out))
    third.add(rec(9))
    third.flush()
    assert (out / "scores-000002.jsonl").is_file()          # never over an earlier shard
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no scratch file left


def test_a_store_of_other_judges_or_settings_or_a_single_file_is_refused_in_one_line(tmp_path):
    out = tmp_path / "store"
    RecordStore(str(out), SETTINGS).add(rec(0))
    RecordStore(str(out), SETTINGS).flush()
    with pytest.raises(SystemExit, match="other judges or exports"):
        RecordStore(str(out), {**SETTINGS, "judges": [{"dim": "lip_sync", "sha256": "b" * 64}]})
    with pytest.raises(SystemExit, match="without --windows"):
        RecordStore(str(out), {**SETTINGS, "windows": True})
    fresh = RecordStore(str(out), {**SETTINGS, "windows": True}, overwrite=True)
    assert fresh.records == {} and not list(out.glob("scores-*"))
    with pytest.raises(SystemExit, match="not one file"):
        RecordStore(str(tmp_path / "scores.jsonl"), SETTINGS)


def test_folders_and_url_prefixes_list_their_videos_and_urls_are_fetched(tmp_path):
    (tmp_path / "v" / "sub").mkdir(parents=True)
    for name in ("b.mp4", "a.MOV", "sub/c.mkv", "notes.txt"):
        (tmp_path / "v" / name).write_bytes(name.encode())
    url = f"file://{tmp_path}/v"
    assert list_videos([str(tmp_path / "v")]) == [(str(tmp_path / "v" / n), n) for n in ("a.MOV", "b.mp4", "sub/c.mkv")]
    assert list_videos([url + "/"]) == [(f"{url}/{n}", n) for n in ("a.MOV", "b.mp4", "sub/c.mkv")]
    assert list_videos([f"{url}/b.mp4"]) == [(f"{url}/b.mp4", "b.mp4")]
    with pytest.raises(ValueError, match="no such object or prefix"):
        list_videos([f"{url}/missing/"])
    with local_copy(f"{url}/sub/c.mkv") as local:
        assert local.endswith(".mkv") and open(local, "rb").read() == b"sub/c.mkv"
    assert not os.path.exists(local)                          # the scratch copy is gone afterwards
    with local_copies([f"{url}/b.mp4", str(tmp_path / "v" / "a.MOV"), f"{url}/gone.mp4"]) as local:
        assert open(local[f"{url}/b.mp4"], "rb").read() == b"b.mp4"
        assert local[str(tmp_path / "v" / "a.MOV")] == str(tmp_path / "v" / "a.MOV")
        assert not os.path.exists(local[f"{url}/gone.mp4"]) and "unreadable" in local[f"{url}/gone.mp4"]


def test_the_local_filter_copies_its_kept_videos_and_drops_the_copies_a_new_min_rejects(tmp_path, capsys):
    from eval.__main__ import main
    from tests.eval_fixtures import make_export, make_video

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    make_video(src / "a.mp4", 2.0, seed=0)
    make_video(src / "sub" / "b.mp4", 2.0, seed=1)
    export = make_export(tmp_path / "export", window_seconds=2.0, calibration={
        "method": "temperature", "params": {"temperature": 1.0}, "fitted_on": "val", "n": 10, "prior": 0.5})
    kept_to, out = tmp_path / "kept", tmp_path / "out"
    base = ["filter", "--scorer", str(export), "--workers", "1", "--out-dir", str(out), "--kept-to", str(kept_to)]
    assert main([*base, "--min", "0", str(src)]) == 0
    assert sorted(p.relative_to(kept_to).as_posix() for p in kept_to.rglob("*.mp4")) == ["a.mp4", "sub/b.mp4"]
    assert (kept_to / "sub" / "b.mp4").read_bytes() == (src / "sub" / "b.mp4").read_bytes()
    assert "copied 2 kept videos" in capsys.readouterr().err
    assert main([*base, "--min", "1.1", str(src)]) == 0             # nothing passes now: both copies go
    assert list(kept_to.rglob("*.mp4")) == [] and list(src.rglob("*.mp4"))  # the sources stay
    assert "copied 0 kept videos to" in capsys.readouterr().err
