"""Scale-out: the Ray backend of perturb build and train.data featurize, shards on S3.

One local Ray (2 CPUs) and one S3 server (moto, on 127.0.0.1) serve the whole module: Ray starts
in seconds, not milliseconds. Skipped when the `ray` extra is not installed.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("s3fs")
pytest.importorskip("moto")

from perturb.demo_corpus import make_demo_corpus  # noqa: E402
from perturb.pipeline import build, init_ray  # noqa: E402
from tests.media_fixtures import make_video  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WINDOW = 2.0
BUCKET = "avbench-test"


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 and the environment that points boto / s3fs at it (also Ray's workers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint, "FSSPEC_S3_ENDPOINT_URL": endpoint}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import fsspec.config

    fsspec.config.set_conf_env(fsspec.config.conf)  # FSSPEC_S3_* was read when fsspec was imported
    import s3fs

    deadline = time.time() + 60
    while True:
        try:
            s3fs.S3FileSystem(skip_instance_cache=True).mkdir(BUCKET)
            break
        except Exception:
            if time.time() > deadline or server.poll() is not None:
                raise
            time.sleep(0.3)
    yield env
    server.terminate()
    server.wait()
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="module")
def ray_address(s3_env):
    """One local Ray for the module (its workers inherit the S3 environment); its GCS address."""
    import ray

    init_ray(num_cpus=2, include_dashboard=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The demo corpus (5 talking heads) plus two sources that must be rejected."""
    src = tmp_path_factory.mktemp("demo")
    make_demo_corpus(src, n_sources=5, seconds=4.4, size=64, progress=False, n_donors=1)
    (src / "corrupt.mp4").write_bytes(b"\x00not an mp4" * 500)
    make_video(src / "silent.mp4", seconds=4.4, audio=False, seed=9)
    return src


def build_small(src: Path, out, **kw):
    return build(src, "lip_sync", out=out, seed=7, workers=1, window_seconds=WINDOW, donors=src / "speech",
                 cards_dir=kw.pop("cards_dir"), progress=False, **kw)


def read_samples(shard_dir: Path) -> dict[str, bytes]:
    """{member name: bytes} of every shard; a member seen twice fails."""
    found: dict[str, bytes] = {}
    for shard in sorted(shard_dir.glob("*-[0-9]*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                assert m.name not in found, f"duplicate {m.name}"
                found[m.name] = tar.extractfile(m).read()
    return found


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """The local tensor cache, shared by the tests that read the S3 shards."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def local_build(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local")
    build_small(corpus, out, cards_dir=out / "cards")
    return out / "lip_sync"


@pytest.fixture(scope="module")
def s3_build(corpus, ray_address, tmp_path_factory) -> tuple[Path, str]:
    """The same build on Ray, to s3://; (its local work folder, its URL)."""
    work = tmp_path_factory.mktemp("work")
    result = build_small(corpus, f"s3://{BUCKET}/shards", backend="ray", work_dir=work, cards_dir=work / "cards")
    return work / "lip_sync", result["out_url"]


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    from tests.train_fixtures import write_tiny_config

    return write_tiny_config(tmp_path_factory.mktemp("config") / "tiny.yaml")


@pytest.fixture(scope="module")
def features(s3_build, ray_address, tiny_config):
    """Feature shards of the S3 build's train and val, made on Ray from S3 to S3 with the preprocessing
    `python -m train --config tiny_config` asks for; (their URL, that PreprocessConfig, featurize's stats)."""
    from train.config import load_config, resolve_preprocess
    from train.data import featurize
    from train.preprocess import PreprocessConfig

    cfg = PreprocessConfig.from_dict(resolve_preprocess(load_config("lip_sync", str(tiny_config)), []))
    url = f"s3://{BUCKET}/features/lip_sync"
    stats = featurize(s3_build[1], url, cfg, splits=("train", "val"), backend="ray", log=lambda *a: None)
    return url, cfg, stats


def test_ray_and_local_backends_give_identical_pairs_and_rejects(local_build, s3_build):
    ray_dir, url = s3_build
    local, on_ray = read_samples(local_build), read_samples(ray_dir)
    assert len(local) >= 3 * 8 and local.keys() == on_ray.keys()
    assert [k for k in local if local[k] != on_ray[k]] == []  # keys, json and media bytes
    rejects = (local_build / "rejects.jsonl").read_text()
    assert {json.loads(r)["source_id"] for r in rejects.splitlines()} == {"corrupt", "silent"}
    assert (ray_dir / "rejects.jsonl").read_text() == rejects
    shards = lambda d: [(s["file"], s["sha256"]) for s in json.loads((d / "manifest.json").read_text())["shards"]]
    assert shards(ray_dir) == shards(local_build)
    # what was published is what was built
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    for f in ("manifest.json", "rejects.jsonl", *(name for name, _ in shards(local_build))):
        assert fs.cat_file(f"{root}/{f}") == (ray_dir / f).read_bytes(), f


def test_a_killed_ray_build_resumes_without_duplicates(corpus, local_build, ray_address, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "perturb", "build", "--src", str(corpus), "--dim", "lip_sync", "--out", str(out),
           "--seed", "7", "--window", str(WINDOW), "--donors", str(corpus / "speech"), "--cards", str(out / "cards"),
           "--backend", "ray", "--ray-address", ray_address]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    staging = out / "lip_sync" / ".staging"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not list(staging.glob("*/*.json")):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(staging.glob("*/*.json")))
    assert 1 <= done_before < 5, "the kill should land mid-build"
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert read_samples(out / "lip_sync") == read_samples(local_build)
    assert not list((out / "lip_sync").rglob(".*.tmp*"))


def test_feature_shards_hold_the_cached_tensors(s3_build, features, cache_dir):
    """load_split from the feature shards (S3) gives the pairs and tensors of the tensor cache of the
    pair shards (S3, streamed; the cache local)."""
    import torch

    from train.data import load_split
    from train.preprocess import PreprocessConfig

    url, cfg, stats = features
    assert stats["pairs"] > 0
    for split in ("train", "val"):
        cached = load_split(s3_build[1], split, cfg, cache_dir=cache_dir, num_workers=0, log=lambda *a: None)
        streamed = load_split(url, split, cfg, log=lambda *a: None)
        assert streamed.keys == cached.keys and streamed.shards == cached.shards
        assert all(torch.equal(streamed.tensors[k], cached.tensors[k]) for k in cached.tensors)
    with pytest.raises(ValueError, match="featurize"):  # other preprocessing: refused, not silently reused
        load_split(url, "train", PreprocessConfig.from_dict({**cfg.to_dict(), "n_mels": cfg.n_mels // 2}))


def test_a_build_on_s3_round_trips_through_train_and_eval(s3_build, features, s3_env, tiny_config, cache_dir,
                                                          tmp_path):
    """build (Ray) -> s3:// -> featurize (Ray) -> python -m train from the feature shards on s3 ->
    python -m eval evaluate streaming the pair shards from s3."""
    _, url = s3_build
    env = {**os.environ, **s3_env, "PYTHONPATH": str(ROOT)}
    run, cache = tmp_path / "run", cache_dir
    proc = subprocess.run([sys.executable, "-m", "train", "--dim", "lip_sync", "--shards", features[0], "--run", str(run),
                           "--config", str(tiny_config), "--cache-dir", str(cache),
                           "--workers", "0", "--max-steps", "4"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["data_card"]["pairs"] > 0
    proc = subprocess.run([sys.executable, "-m", "eval", "evaluate", "--dim", "lip_sync", "--shards", url,
                           "--run", str(run), "--export", str(tmp_path / "export"), "--report", str(tmp_path / "report"),
                           "--cache-dir", str(cache), "--workers", "0", "--n-boot", "20", "--no-progress"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["shards"] == url and report["test"]["n_pairs"] > 0
    assert any(p.name.startswith("test-") for p in cache.iterdir()), "the tensor cache stays local"
    assert (tmp_path / "export" / "model.safetensors").is_file()


def test_hostile_shard_behind_a_url_is_refused_before_decoding(s3_env, tmp_path):
    import fsspec

    from perturb.shard_format import ShardFormatError
    from tests.test_untrusted_shards import pickle_member, write_shard
    from train.data import list_shards

    marker = tmp_path / "pwned"
    local = write_shard(tmp_path / "train-000000.tar", [pickle_member(marker)])
    url = f"s3://{BUCKET}/hostile"
    fs, root = fsspec.core.url_to_fs(url)
    fs.put_file(str(local), f"{root}/train-000000.tar")
    with pytest.raises(ShardFormatError, match=r"train-000000\.tar.*good_w000\.pyd"):
        list_shards(url, "train")
    assert not marker.exists()
