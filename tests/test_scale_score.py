"""`eval score` / `eval filter` on Ray (eval/scale.py): the local backend's records from a folder and
from S3, a killed job resumed without rescoring or duplicates, kept videos copied to another prefix.

The local Ray (2 CPUs) and the moto S3 server are the scale-out tests' module fixtures.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")
pytest.importorskip("s3fs")
pytest.importorskip("moto")

from tests import test_scale_out  # noqa: E402
from tests.test_scale_out import BUCKET, ROOT  # noqa: E402

# the scale-out tests' module fixtures, used here too: one local Ray, one moto S3 server
s3_env, ray_address = test_scale_out.s3_env, test_scale_out.ray_address

N_CLIPS = 5
# a sharp calibration spreads the tiny random judge's scores over (0, 1)
SHARP = {"method": "temperature", "params": {"temperature": 0.02}, "fitted_on": "val", "n": 10, "prior": 0.5}


@pytest.fixture(scope="module")
def media(s3_env, tmp_path_factory):
    """A folder of videos (short clips, one of two windows in a subfolder, a corrupt file), a tiny judge,
    the local backend's records of them, and the folder's copy on S3."""
    import fsspec

    from eval.__main__ import main
    from tests.eval_fixtures import make_export, make_video

    root = tmp_path_factory.mktemp("scale_score")
    videos = root / "videos"
    (videos / "sub").mkdir(parents=True)
    for i in range(N_CLIPS - 2):
        make_video(videos / f"clip{i}.mp4", 2.0, seed=i)
    make_video(videos / "sub" / "long.mp4", 3.5, seed=7)           # two 2 s windows
    (videos / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    export = make_export(root / "export", window_seconds=2.0, calibration=SHARP)
    files = sorted(str(f) for f in videos.rglob("*.mp4"))
    assert len(files) == N_CLIPS
    local = root / "local.jsonl"
    assert main(["score", "--scorer", str(export), "--workers", "1", "--out", str(local), *files]) == 0
    records = {r["path"]: r for r in map(json.loads, local.read_text().splitlines())}
    fs, _ = fsspec.core.url_to_fs(f"s3://{BUCKET}")
    url = f"s3://{BUCKET}/videos"
    for f in files:
        fs.put_file(f, f"{BUCKET}/videos/{Path(f).relative_to(videos).as_posix()}")
    return {"root": root, "videos": videos, "export": export, "files": files, "local": records, "url": url}


def as_url(rec: dict, media) -> dict:
    """A local record as the same file behind the S3 URL gives it: every mention of the path rewritten."""
    return json.loads(json.dumps(rec).replace(str(media["videos"]), media["url"]))


def store_shards(store: Path) -> list[list[dict]]:
    return [[json.loads(ln) for ln in f.read_text().splitlines()] for f in sorted(store.glob("scores-*.jsonl"))]


def test_ray_score_of_a_folder_and_of_its_s3_copy_gives_the_local_records(media, ray_address, tmp_path, capsys):
    from eval.__main__ import main
    from eval.scale import read_records

    store = tmp_path / "store"
    assert main(["score", "--backend", "ray", "--ray-address", ray_address, "--scorer", str(media["export"]),
                 "--out", str(store), str(media["videos"])]) == 0
    printed = {r["path"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert printed == media["local"] == read_records(str(store))
    assert sum(1 for r in media["local"].values() if "error" in r) == 1 and \
        len(media["local"][str(media["videos"] / "sub" / "long.mp4")]["windows"]["lip_sync"]) == 2
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["complete"] and manifest["records"] == manifest["videos"] == N_CLIPS

    out = f"s3://{BUCKET}/scored"
    assert main(["score", "--backend", "ray", "--ray-address", ray_address, "--scorer", str(media["export"]),
                 "--out", out, media["url"] + "/"]) == 0
    on_s3 = read_records(out)
    assert on_s3 == {as_url(r, media)["path"]: as_url(r, media) for r in media["local"].values()}
    # the same store again: nothing is scored twice
    assert main(["score", "--backend", "ray", "--ray-address", ray_address, "--scorer", str(media["export"]),
                 "--out", out, media["url"]]) == 0
    err = capsys.readouterr().err
    assert f"resuming: {N_CLIPS} of {N_CLIPS} videos" in err and "scored 0 videos" in err
    # another judge's records are never mixed in
    from tests.eval_fixtures import make_export

    other = make_export(tmp_path / "other", window_seconds=2.0, seed=1, calibration=SHARP)
    with pytest.raises(SystemExit, match="other judges or exports"):
        main(["score", "--backend", "ray", "--ray-address", ray_address, "--scorer", str(other), "--out", out,
              media["url"]])


@pytest.mark.slow  # ~40 s: two CLI processes, each starting its actors
def test_a_killed_ray_score_resumes_without_rescoring_or_duplicates(media, ray_address, s3_env, tmp_path):
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "eval", "score", "--backend", "ray", "--ray-address", ray_address, "--scorer",
           str(media["export"]), "--out", str(store), "--shard-records", "1", str(media["videos"])]
    env = {**os.environ, **s3_env, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not list(store.glob("scores-*.jsonl")):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = store_shards(store)
    assert 1 <= sum(map(len, before)) < N_CLIPS, "the kill should land mid-run"
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    n_before = sum(map(len, before))
    assert f"resuming: {n_before} of {N_CLIPS} videos" in again.stderr
    after = store_shards(store)
    assert after[:len(before)] == before                      # the first run's shards are kept as they were
    paths = [r["path"] for shard in after for r in shard]
    assert len(paths) == len(set(paths)) == N_CLIPS           # every file once
    assert {r["path"]: r for shard in after for r in shard} == media["local"]


def test_ray_filter_from_s3_keeps_as_the_local_filter_and_copies_the_kept_videos(media, ray_address, tmp_path,
                                                                                capsys):
    import fsspec

    from eval.__main__ import main

    scores = sorted(r["scores"]["lip_sync"] for r in media["local"].values() if "error" not in r)
    threshold = f"{(scores[1] + scores[2]) / 2:.6f}"          # two of the four readable files fall below
    local_out = tmp_path / "local"
    assert main(["filter", "--scorer", str(media["export"]), "--workers", "1", "--min", threshold,
                 "--out-dir", str(local_out), str(media["videos"])]) == 0
    out, kept_to = f"s3://{BUCKET}/filtered", f"s3://{BUCKET}/kept"
    capsys.readouterr()
    assert main(["filter", "--backend", "ray", "--ray-address", ray_address, "--scorer", str(media["export"]),
                 "--min", threshold, "--out-dir", out, "--kept-to", kept_to, media["url"]]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["kept"], summary["rejected"], summary["copied"]) == (2, 3, 2)
    fs, _ = fsspec.core.url_to_fs(out)
    for name in ("kept.txt", "rejected.txt"):
        local_lines = (local_out / name).read_text().replace(str(media["videos"]), media["url"])
        assert fs.cat_file(f"{BUCKET}/filtered/{name}").decode() == local_lines
    kept_rel = sorted(Path(ln.split("\t")[0]).relative_to(media["videos"]).as_posix()
                      for ln in (local_out / "kept.txt").read_text().splitlines())
    assert sorted(f[len(f"{BUCKET}/kept/"):] for f in fs.find(f"{BUCKET}/kept")) == kept_rel
    for rel in kept_rel:
        assert fs.cat_file(f"{BUCKET}/kept/{rel}") == (media["videos"] / rel).read_bytes()
    # another --min: split again from the records, nothing scored, the copies no longer kept removed
    assert main(["filter", "--backend", "ray", "--ray-address", ray_address, "--scorer", str(media["export"]),
                 "--min", "1.1", "--out-dir", out, "--kept-to", kept_to, media["url"]]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["kept"], summary["scored"], summary["removed"]) == (0, 0, 2)
    assert fs.find(f"{BUCKET}/kept") == []
