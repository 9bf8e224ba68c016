"""The local web app (eval/app): its pages and API through an HTTP client, and a real browser
(headless Chromium) that plays a pair, scores a video and rates three pairs by keyboard."""
from __future__ import annotations

import contextlib
import csv
import http.client
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from eval.app import App, Server
from eval.app.server import ANSWERS, RATINGS_COLUMNS, side_order

ROOT = Path(__file__).resolve().parents[1]
EXTRA_KEY = "extra000_w00_p0"


# ----------------------------------------------------------------------------- fixtures

def _add_extra_pair(shards: Path, videos: list[Path]) -> None:
    """A test pair of another operator (the picture blurred), in a shard of its own listed in manifest.json."""
    import webdataset as wds

    from perturb.media import run_ffmpeg

    blurred = shards.parent / "blurred.mp4"
    run_ffmpeg(["-i", str(videos[0]), "-vf", "boxblur=3", "-c:v", "libx264", "-c:a", "copy", "-y", str(blurred)])
    meta = {"dim": "lip_sync", "question": "Is the speech in sync with the lips?", "source_id": "extra000",
            "split": "test", "severity": 5, "chosen_severity": 0, "kind": "original_vs_perturbed",
            "ops": [{"name": "frame_corruption", "params": {"kind": "blur", "sigma": 2.5}}], "chosen_ops": []}
    with wds.TarWriter(str(shards / "test-000001.tar")) as w:
        w.write({"__key__": EXTRA_KEY, "chosen.mp4": videos[0].read_bytes(), "rejected.mp4": blurred.read_bytes(),
                 "json": meta})
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["shards"].append({"file": "test-000001.tar", "split": "test", "count": 1})
    (shards / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """Demo shards (4 audio_shift test pairs + 1 frame_corruption pair), a video folder with a link out
    of it, and a tiny judge that estimates timing."""
    from eval.cli import load_scorers
    from tests.eval_fixtures import make_export
    from tests.train_fixtures import write_fixture_shards, write_fixture_videos

    root = tmp_path_factory.mktemp("app_demo")
    shards = write_fixture_shards(root / "shards", sources=8, seconds=2.0, splits={"train": 0.5, "test": 0.5})
    videos = root / "videos"
    clips = write_fixture_videos(videos, sources=2, seconds=3.0)
    _add_extra_pair(shards, clips)
    long = write_fixture_videos(videos / "sub", sources=1, seconds=8.0, seed=1)[0]  # several windows
    long.rename(videos / "sub" / "long.mp4")
    outside = root / "outside.mp4"
    shutil.copy(clips[0], outside)
    (videos / "link_out.mp4").symlink_to(outside)          # leads out of the root: never served
    (videos / "link_in.mp4").symlink_to(clips[0])          # stays inside: served
    # decides on the sync profile (so it estimates timing); a sharp calibration spreads its random scores
    export = make_export(root / "export", window_seconds=2.0, use_pooled=False, calibration={
        "method": "temperature", "params": {"temperature": 0.02}, "fitted_on": "val", "n": 10, "prior": 0.5})
    scorers = load_scorers([str(export)])
    return SimpleNamespace(root=root, shards=shards, videos=videos, clips=clips, outside=outside, export=export,
                           scorers=scorers)


class Client:
    def __init__(self, server: Server):
        self.port = server.server_address[1]

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            conn.close()

    def get(self, path: str, headers: dict | None = None):
        status, _, data = self.request("GET", path, headers=headers)
        return status, data

    def json(self, path: str, expect: int = 200):
        status, data = self.get(path)
        assert status == expect, (path, status, data[:300])
        return json.loads(data)

    def post(self, path: str, obj, expect: int = 200, headers: dict | None = None):
        h = {"Content-Type": "application/json", "X-AVBench": "1", **(headers or {})}
        status, _, data = self.request("POST", path, json.dumps(obj).encode(), h)
        assert status == expect, (path, status, data[:300])
        return json.loads(data)


@contextlib.contextmanager
def serving(app: App):
    server = Server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server, Client(server)
    finally:
        server.shutdown()
        server.server_close()
        app.close()


@pytest.fixture
def served(demo, tmp_path):
    app = App(shards=[str(demo.shards)], scorers=demo.scorers, videos=demo.videos, ratings=tmp_path / "ratings.csv")
    with serving(app) as (server, client):
        yield SimpleNamespace(app=app, server=server, client=client)


def shard_sides(shards: Path, split: str = "test") -> dict[str, dict[str, bytes]]:
    from train.data import iter_raw_pairs

    return {p["key"]: {"chosen": p["chosen.mp4"], "rejected": p["rejected.mp4"]}
            for p in iter_raw_pairs(shards, split) if "bad" not in p}


# ----------------------------------------------------------------------------- server

def test_each_page_and_api_answers(served, demo):
    c = served.client
    status, headers, _ = c.request("GET", "/")
    assert status == 302 and headers["Location"] == "/pairs"
    for page in ("/pairs", "/score", "/rate"):
        status, data = c.get(page)
        assert status == 200 and b"/static/app.js" in data
    for name, kind in (("app.js", "javascript"), ("app.css", "css")):
        status, headers, _ = c.request("GET", f"/static/{name}")
        assert status == 200 and kind in headers["Content-Type"]
    cfg = c.json("/api/config")
    assert cfg["locations"][0]["splits"] == ["train", "test"]
    assert [s["dim"] for s in cfg["scorers"]] == ["lip_sync"] and cfg["scorers"][0]["estimates_timing"]
    assert sorted(c.json("/api/videos")["videos"]) == ["fixture_000.mp4", "fixture_001.mp4", "link_in.mp4",
                                                       "sub/long.mp4"]
    listing = c.json("/api/pairs?loc=0&split=test")
    assert listing["total"] == 5 and listing["bad"] == []
    pair = c.json(f"/api/pair?loc=0&split=test&key={EXTRA_KEY}")
    assert pair["meta"]["ops"][0]["params"] == {"kind": "blur", "sigma": 2.5}
    # the sides are played as they are in the shard: the same bytes
    sides = shard_sides(demo.shards)
    for side in ("chosen", "rejected"):
        status, headers, data = c.request("GET", pair["media"][side])
        assert status == 200 and headers["Content-Type"] == "video/mp4" and data == sides[EXTRA_KEY][side]
    scores = c.json(f"/api/pair_scores?loc=0&split=test&key={EXTRA_KEY}")
    assert all(0 <= scores[s]["judges"][0]["score"] <= 1 for s in ("chosen", "rejected"))
    assert c.json("/api/pairs?loc=0&split=val", expect=404)["error"] == \
        f"{demo.shards} has no 'val' shards (it has train, test)"
    assert c.get("/nothing")[0] == 404


def test_pair_filters(served):
    c = served.client

    def keys(**q):
        query = "&".join(f"{k}={v}" for k, v in {"loc": 0, "split": "test", **q}.items())
        return sorted(p["key"] for p in c.json(f"/api/pairs?{query}")["pairs"])

    everything = keys()
    assert len(everything) == 5
    facets = c.json("/api/pairs?split=test")["facets"]
    assert facets["op"] == ["audio_shift", "frame_corruption"] and facets["dim"] == ["lip_sync"]
    assert keys(op="frame_corruption") == [EXTRA_KEY]
    assert keys(op="audio_shift") == [k for k in everything if k != EXTRA_KEY]
    assert keys(severity="5") == [EXTRA_KEY]
    for source in facets["source"]:
        assert keys(source=source) == [k for k in everything if k.startswith(source)]
    sev = facets["severity"][0]
    listing = c.json(f"/api/pairs?split=test&severity={sev}&op=audio_shift")
    assert listing["matched"] == len(listing["pairs"]) >= 1
    assert all(p["severity"] == int(sev) and p["operators"] == ["audio_shift"] for p in listing["pairs"])
    assert keys(dim="voice_identity") == []


def test_media_ranges(served, demo):
    c = served.client
    key = sorted(shard_sides(demo.shards))[0]
    whole = shard_sides(demo.shards)[key]["rejected"]
    url = f"/media/pair/0/test/{key}/rejected"
    status, headers, data = c.request("GET", url, headers={"Range": "bytes=10-19"})
    assert status == 206 and data == whole[10:20] and headers["Content-Range"] == f"bytes 10-19/{len(whole)}"
    status, _, data = c.request("GET", url, headers={"Range": "bytes=-16"})
    assert status == 206 and data == whole[-16:]
    assert c.request("GET", url, headers={"Range": f"bytes={len(whole)}-"})[0] == 416
    # a video the browser cannot play is re-encoded once, to h264 mp4
    status, headers, data = c.request("GET", "/media/video/fixture_000.mp4?compat=1")
    assert status == 200 and data[4:8] == b"ftyp" and data != demo.clips[0].read_bytes()


def test_traversal_and_links_out_are_refused(served, demo):
    c = served.client
    secret = demo.outside.read_bytes()
    for path in ("/media/video/../outside.mp4", "/media/video/%2e%2e/outside.mp4", "/media/video/sub/../../outside.mp4",
                 "/media/video/%2Fetc%2Fpasswd", "/media/video//etc/passwd", "/media/video/link_out.mp4",
                 "/media/video/sub/%2e%2e/%2e%2e/outside.mp4", "/media/video/..%5coutside.mp4",
                 "/media/pair/0/test/..%2F..%2Fx/chosen", "/media/pair/0/test/x/../../../outside.mp4",
                 "/media/upload/../../outside.mp4", "/media/blind/../x", "/static/../server.py",
                 "/static/%2e%2e/server.py", "/media/video/export/config.json"):
        status, data = c.get(path)
        assert status in (403, 404), path
        assert secret not in data and b"safetensors" not in data
    assert c.get("/media/video/link_in.mp4") == (200, demo.clips[0].read_bytes())  # a link that stays inside
    assert c.get("/media/video/sub/long.mp4")[0] == 200


def test_uploads_are_size_limited_kept_in_a_temp_folder_and_scored(demo, tmp_path):
    data = demo.clips[0].read_bytes()
    app = App(scorers=demo.scorers, ratings=tmp_path / "r.csv", max_upload_bytes=len(data) + 10)
    with serving(app) as (server, c):
        h = {"X-AVBench": "1", "Content-Type": "application/octet-stream"}
        big = data + b"\0" * 11
        status, _, body = c.request("POST", "/api/upload?name=big.mp4", big, h)
        assert status == 413 and b"over the limit" in body
        assert list(app.uploads.iterdir()) == []
        assert c.request("POST", "/api/upload?name=notes.txt", b"hello", h)[0] == 415
        conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
        conn.putrequest("POST", "/api/upload?name=a.mp4")
        conn.putheader("X-AVBench", "1")
        conn.endheaders()
        assert conn.getresponse().status == 411
        conn.close()
        status, _, body = c.request("POST", "/api/upload?name=..%2F..%2Fmy%20clip.mp4", data, h)
        assert status == 200
        up = json.loads(body)
        stored = list(app.uploads.iterdir())
        assert [p.name for p in stored] == [f"{up['upload']}.mp4"] and stored[0].read_bytes() == data
        assert app.uploads.is_relative_to(app.work) and up["name"] == "my clip.mp4"
        res = c.post("/api/score", {"upload": up["upload"]})
        assert res["record"]["path"] == "my clip.mp4" and 0 <= res["judges"][0]["score"] <= 1
        assert c.get(res["media"]) == (200, data)
        assert c.post("/api/score", {"upload": "0123456789abcdef"}, expect=404)["error"].startswith("no upload")
    assert not app.work.exists()  # the temp folder goes when the app stops


def test_score_gives_eval_scores_record_with_words(served, demo):
    from eval.cli import score_video

    res = served.client.post("/api/score", {"video": "fixture_000.mp4"})
    rec = score_video(demo.scorers, str(demo.videos / "fixture_000.mp4"), always_windows=True)
    assert res["record"] == {**rec, "path": "fixture_000.mp4"}
    j = res["judges"][0]
    assert j["score"] == rec["scores"]["lip_sync"] and 0 <= j["score"] <= 1
    assert j["status"] == "ok" and j["status_words"].startswith("ok: the judge could judge")
    assert set(j["offset"]) == {"ms", "confidence"}
    assert j["offset_words"].endswith(f"(confidence {j['offset']['confidence']:.2f})")
    assert len(j["windows"]) == 2 and all(0 <= w["score"] <= 1 for w in j["windows"])  # 3 s in 2 s windows
    assert res["summary"].startswith("fixture_000.mp4: lip_sync: ")
    assert served.client.post("/api/score", {"video": "../outside.mp4"}, expect=404)
    odd = demo.root / "videos_odd"
    odd.mkdir(exist_ok=True)
    (odd / "broken.mp4").write_bytes(b"not a video")
    shutil.copy(demo.clips[0], odd / "take #1?.mp4")
    with serving(App(scorers=demo.scorers, videos=odd, ratings=demo.root / "unused.csv")) as (_, c):
        out = c.post("/api/score", {"video": "broken.mp4"})
        assert out["judges"][0]["status"] == "unreadable" and out["judges"][0]["score"] is None
        assert out["judges"][0]["status_words"].startswith("unreadable: ")
        out = c.post("/api/score", {"video": "take #1?.mp4"})
        assert c.get(out["media"]) == (200, demo.clips[0].read_bytes())  # a name that is not a plain URL


def test_requests_from_other_sites_are_refused(served):
    c = served.client
    assert c.post("/api/rate", {"token": "x", "answer": "left"}, expect=403, headers={"X-AVBench": ""})
    assert c.post("/api/rate", {"token": "x", "answer": "left"}, expect=403, headers={"Origin": "http://evil.example"})
    status, data = c.get("/api/config", headers={"Host": "evil.example:80"})
    assert status == 403 and b"Host" in data


def test_a_shard_outside_the_pair_format_is_refused_in_one_line(tmp_path, demo):
    bad = tmp_path / "hostile"
    bad.mkdir()
    with tarfile.open(bad / "test-000000.tar", "w") as tar:
        for name, data in (("k.json", b"{}"), ("k.chosen.mp4", b"x"), ("k.rejected.mp4", b"x"), ("k.pyd", b"\x80")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    app = App(shards=[str(bad)], ratings=tmp_path / "r.csv")
    with serving(app) as (_, c):
        err = c.json("/api/pairs?split=test", expect=422)["error"]
        assert err.startswith("invalid shard: test-000000.tar: member 'k.pyd': '.pyd' is not part of the pair format")
        assert "\n" not in err
        assert not list(app.media.rglob("*.mp4"))
        assert c.json("/api/rate/next?rater=r&split=test", expect=422)["error"] == err


def test_side_order_is_a_stable_draw_per_rater():
    keys = [f"src{i:03d}_w00_p0" for i in range(400)]
    lefts = [side_order("ann", k)[1] for k in keys]
    assert 0.4 < lefts.count("chosen") / len(keys) < 0.6
    assert [side_order("ann", k) for k in keys] == [side_order("ann", k) for k in keys]
    assert sorted(keys, key=lambda k: side_order("ann", k)) != sorted(keys, key=lambda k: side_order("bob", k))


def test_rating_round_trip_resume_and_eval_align(demo, tmp_path, capsys):
    from eval.__main__ import main as eval_main
    from eval.cli import score_video

    ratings = tmp_path / "ratings.csv"
    sides = shard_sides(demo.shards)
    answers = ["left", "right", "same", "skip"]
    seen = []
    pair_dir = tmp_path / "pairs"  # --media: the sides stay there for `eval score`
    with serving(App(shards=[str(demo.shards)], ratings=ratings, media=pair_dir)) as (_, c):
        nxt = c.json("/api/rate/next?rater=ann&loc=0&split=test")
        assert (nxt["rated"], nxt["total"]) == (0, 5)
        for answer in answers:
            task = nxt["task"]
            text = json.dumps(nxt)
            assert "chosen" not in text and "rejected" not in text  # blind: nothing says which side is which
            left, right = c.get(task["left"])[1], c.get(task["right"])[1]
            key = next(k for k, s in sides.items() if {left, right} == {s["chosen"], s["rejected"]})
            assert left == sides[key][side_order("ann", key)[1]]
            seen.append(key)
            nxt = c.post("/api/rate", {"token": task["token"], "answer": answer})
            assert nxt["written"] and nxt["rated"] == len(seen)
        assert c.post("/api/rate", {"token": task["token"], "answer": "left"}, expect=404)  # used up
        assert c.post("/api/rate", {"token": nxt["task"]["token"], "answer": "maybe"}, expect=400)
        assert "rater id" in c.json("/api/rate/next?rater=a,b&split=test", expect=400)["error"]
    rows = list(csv.DictReader(ratings.open()))
    assert list(rows[0]) == list(RATINGS_COLUMNS)
    assert [r["preferred"] for r in rows] == [ANSWERS[a] for a in answers] == ["a", "b", "tie", "skip"]
    for r, key in zip(rows, seen):
        left = side_order("ann", key)[1]
        right = "rejected" if left == "chosen" else "chosen"
        assert (r["path_a"], r["path_b"], r["rater"], r["split"], r["key"]) == \
            (f"{key}.{left}.mp4", f"{key}.{right}.mp4", "ann", "test", key)
        assert r["shards"] == str(demo.shards.resolve())
    # a write cut short by a crash is dropped; a restart resumes where the rater stopped
    with ratings.open("a") as fh:
        fh.write("torn,line")
    with serving(App(shards=[str(demo.shards)], ratings=ratings)) as (_, c):
        nxt = c.json("/api/rate/next?rater=ann&split=test")
        assert nxt["rated"] == 4
        last = next(k for k in sides if k not in seen)
        assert c.get(nxt["task"]["left"])[1] in (sides[last]["chosen"], sides[last]["rejected"])
        assert c.json("/api/rate/next?rater=bob&split=test")["rated"] == 0  # another rater starts afresh
        done = c.post("/api/rate", {"token": nxt["task"]["token"], "answer": "left"})
        assert done["task"] is None and done["rated"] == done["total"] == 5
    assert ratings.read_text().count("\n") == 6 and "torn" not in ratings.read_text()
    # eval align reads the file against eval score's records of the pair sides
    files = sorted((pair_dir / "0" / "test").glob("*.mp4"))
    assert sorted(f.name for f in files) == sorted(f"{k}.{side}.mp4" for k in sides for side in ("chosen", "rejected"))
    scores = tmp_path / "scores.jsonl"
    scores.write_text("".join(json.dumps(score_video(demo.scorers, str(f))) + "\n" for f in files))
    capsys.readouterr()
    assert eval_main(["align", "--scores", str(scores), "--ratings", str(ratings), "--n-boot", "50"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert (res["kind"], res["n"], res["human_ties"], res["skipped"], res["unmatched"]) == ("ab", 3, 1, 1, [])
    lo, hi = res["pairwise_agreement"]["ci95"]
    assert 0 <= lo <= res["pairwise_agreement"]["value"] <= hi <= 1


def test_command_line_faults_are_one_line(tmp_path, demo, capsys):
    from eval.app.__main__ import main

    mos = tmp_path / "mos.csv"
    mos.write_text("path,rating\na.mp4,4\n")
    for argv, words in ((["--shards", str(tmp_path / "none")], "no shards folder"),
                        (["--shards", str(tmp_path)], "no train / val / test shards at"),
                        (["--videos", str(mos)], "not a folder"),
                        (["--ratings", str(mos)], "not a ratings file of this app")):
        capsys.readouterr()
        assert main(argv + ([] if "--ratings" in argv else ["--ratings", str(tmp_path / "r.csv")])) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and words in err and err.count("\n") == 1, err


def test_one_command_prints_the_local_address(demo, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "eval.app", "--shards", str(demo.shards), "--port", "0",
                             "--ratings", str(tmp_path / "r.csv")], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("avbench app: http://127.0.0.1:"), (line, proc.stderr.read() if proc.poll() else "")
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/api/config")
        assert json.loads(conn.getresponse().read())["locations"][0]["name"] == str(demo.shards)
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_make_app_passes_its_variables():
    out = subprocess.run(["make", "-n", "-o", ".venv/.installed", "app", "SHARDS=s3://b/lip_sync", "SCORER=exports/x",
                          "VIDEOS=clips", "RATINGS=r.csv", "PORT=9000"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "-m eval.app --shards s3://b/lip_sync --scorer exports/x --videos clips --ratings r.csv --port 9000" \
        in " ".join(out.stdout.replace("\\\n", " ").split())


# ----------------------------------------------------------------------------- a real browser

@pytest.fixture(scope="session")  # session, as `demo`: fixtures of one scope start in argument order
def browser():
    """Headless Chromium through chromedriver (Selenium), or a skip in one line; asked for before the demo
    fixture, so a machine without a browser skips at once."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no chromium + chromedriver (apt-get install chromium chromium-driver; .ci/run does)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--mute-audio", "--disable-gpu",
                "--window-size=1200,1000", "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver), options=opts)
    yield driver
    driver.quit()


def _small_png(driver, path: Path) -> None:
    """A screenshot as a 256-colour PNG (a few tens of kB)."""
    from PIL import Image

    img = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def test_browser_plays_a_pair_scores_a_video_and_rates_three_pairs_by_keyboard(browser, demo, tmp_path):
    """Screenshots go to $AVBENCH_APP_SCREENSHOTS when set (docs/app/ is made so), else to tmp_path."""
    driver = browser
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    shots = Path(os.environ.get("AVBENCH_APP_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    ratings = tmp_path / "ratings.csv"
    app = App(shards=[str(demo.shards)], scorers=demo.scorers, videos=demo.videos, ratings=ratings)
    # the pages redraw parts of themselves as answers come: an element may go stale between two looks
    wait = WebDriverWait(driver, 30, ignored_exceptions=(StaleElementReferenceException, NoSuchElementException))
    with serving(app) as (server, _):
        def open_page(name: str) -> None:
            driver.get(f"{server.url}{name}")
            wait.until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))

        # pairs: both sides play together from one button, and stay together after a seek
        open_page("pairs")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#pair-detail video") and
                   d.execute_script("return [...document.querySelectorAll('video')].every(v => v.readyState >= 2)"))
        Select(driver.find_element(By.ID, "f-op")).select_by_visible_text("frame_corruption")
        wait.until(lambda d: d.find_element(By.ID, "count").text.startswith("1 of 5"))
        wait.until(lambda d: "sigma = 2.5" in d.find_element(By.ID, "ops").text)
        Select(driver.find_element(By.ID, "f-op")).select_by_visible_text("(any)")
        wait.until(lambda d: d.find_element(By.ID, "count").text.startswith("5 of 5"))
        wait.until(lambda d: d.find_element(By.ID, "pair-detail").get_attribute("data-key") == EXTRA_KEY and
                   d.execute_script("return [...document.querySelectorAll('video')].every(v => v.readyState >= 2)"))
        times = "return [...document.querySelectorAll('video')].map(v => [v.currentTime, v.paused])"
        driver.find_element(By.ID, "play").click()  # one button plays both sides
        wait.until(lambda d: all(t > 0.4 and not p for t, p in d.execute_script(times)))
        (a, _), (b, _) = driver.execute_script(times)
        assert abs(a - b) < 0.25
        driver.find_element(By.ID, "play").click()
        wait.until(lambda d: all(p for _, p in d.execute_script(times)))
        driver.execute_script("const s = document.getElementById('seek'); s.value = 250;"
                              "s.dispatchEvent(new Event('input'));")  # one seek bar moves both
        quarter = driver.execute_script("return document.querySelector('video').duration") / 4
        wait.until(lambda d: all(abs(t - quarter) < 0.05 for t, _ in d.execute_script(times)))
        wait.until(lambda d: "Scores" in d.find_element(By.ID, "pair-scores").text)
        _small_png(driver, shots / "pairs.png")
        # score a video: the score, the status in words, the offset and the per-window timeline
        open_page("score")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#video option")) > 1)
        Select(driver.find_element(By.ID, "video")).select_by_visible_text("sub/long.mp4")
        driver.find_element(By.ID, "score").click()
        wait.until(lambda d: d.find_elements(By.ID, "timeline"))
        text = driver.find_element(By.ID, "score-result").text
        assert "P(yes) 0." in text and "ok: the judge could judge this video" in text and "offset: " in text
        assert len(driver.find_elements(By.CSS_SELECTOR, "#timeline circle")) == 4  # 8 s in 2 s windows
        _small_png(driver, shots / "score.png")
        # rate three pairs by keyboard
        open_page("rate")
        driver.find_element(By.ID, "rater").send_keys("browser")
        driver.find_element(By.ID, "start").click()
        wait.until(lambda d: d.find_element(By.ID, "progress").text.startswith("0 of 5"))
        keys = ActionChains(driver)
        keys.send_keys(" ").perform()  # play
        wait.until(lambda d: any(not p for _, p in d.execute_script(times)))
        for n, key in enumerate((Keys.ARROW_LEFT, Keys.ARROW_RIGHT, Keys.ARROW_DOWN), 1):
            if n == 3:
                wait.until(lambda d: d.execute_script(
                    "return [...document.querySelectorAll('video')].every(v => v.readyState >= 2)"))
                _small_png(driver, shots / "rate.png")
            ActionChains(driver).send_keys(key).perform()
            wait.until(lambda d, n=n: d.find_element(By.ID, "progress").text.startswith(f"{n} of 5"))
    rows = list(csv.DictReader(ratings.open()))
    assert [(r["rater"], r["preferred"]) for r in rows] == [("browser", "a"), ("browser", "b"), ("browser", "tie")]
    assert len({r["key"] for r in rows}) == 3
    for name in ("pairs", "score", "rate"):
        assert (shots / f"{name}.png").stat().st_size < 400_000
