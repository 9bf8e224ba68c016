"""Feature shards and shard locations are untrusted input: checked before training, one line each.

Feature shards are written here directly (train.data.write_entry + features.json, random tensors of
the shapes the tiny preprocessing gives), so no video is decoded: tensors of the wrong dtype / shape
/ count, NaN and inf rows, non-finite margins, entry names that are paths, malformed or oversized
features.json / metas.json. Then `python -m train` itself: a non-finite loss stops it before a
checkpoint, a NaN checkpoint is never resumed, an unreachable --shards creates nothing.

Errors are asserted as ShardFormatError (train.data.ShardReadError derives from it, so every reader
that already turns a bad shard into one line does the same for these).
"""
from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from perturb.shard_format import ShardFormatError
from tests.train_fixtures import TINY_PREPROCESS, write_fixture_shards, write_tiny_config
from train.data import TooManyBadSamples, features_manifest, load_split, write_entry
from train.preprocess import PreprocessConfig

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
PRE = PreprocessConfig(**TINY_PREPROCESS)
NAMES = ("chosen.video", "chosen.audio", "rejected.video", "rejected.audio")


def _quiet(*a, **k):
    pass


def entry_name(split: str) -> str:
    return f"{split}-000000-{'0' * 16}-{PRE.fingerprint()}"


def make_features(root: Path, n: dict[str, int] | None = None, seed: int = 0) -> Path:
    """Feature shards of `n` pairs per split (random tensors, well-formed metas) + features.json."""
    n = n or {"train": 8, "val": 4}
    video, audio = PRE.input_shapes()
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for split, count in n.items():
        tensors = {k: torch.randn(count, *(video if k.endswith("video") else audio), generator=gen) for k in NAMES}
        keys = [f"{split}_{i:03d}" for i in range(count)]
        metas = [{"source_id": f"{split}{i}", "split": split, "window": [0.0, 2.0], "severity": 1 + i % 3,
                  "chosen_severity": 0, "margin": float(1 + i % 3), "operator": "audio_shift",
                  "kind": "original_vs_perturbed", "question": "Is the speech in sync with the lips?"}
                 for i in range(count)]
        shard = {"file": f"{split}-000000.tar", "sha256": "0" * 64, "split": split}
        write_entry(root / entry_name(split), tensors, shard, keys, metas, [{} for _ in keys], PRE)
        rows.append({"split": split, "entry": entry_name(split), "shard": shard["file"], "sha256": "0" * 64,
                     "count": count})
    (root / "features.json").write_text(json.dumps(features_manifest(PRE, rows, "synthetic")))
    return root


def _metas_path(root: Path, split: str = "train") -> Path:
    return root / entry_name(split) / "metas.json"


def _edit_metas(root: Path, edit, split: str = "train") -> None:
    p = _metas_path(root, split)
    m = json.loads(p.read_text())
    edit(m)
    p.write_text(json.dumps(m))


def _edit_tensors(root: Path, edit, split: str = "train") -> None:
    p = root / entry_name(split) / "tensors.safetensors"
    t = load_file(str(p))
    edit(t)
    save_file({k: v.contiguous() for k, v in t.items()}, str(p))


def _refused(root: Path, *words: str, split: str = "train") -> str:
    with pytest.raises(ShardFormatError) as err:
        load_split(root, split, PRE, log=_quiet)
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    return msg


# --------------------------------------------------------------------------- tensors vs record

def test_well_formed_feature_shards_load(tmp_path):
    ds = load_split(make_features(tmp_path), "train", PRE, log=_quiet)
    assert len(ds) == 8 and ds.bad == [] and ds.tensors["chosen.video"].shape[1:] == PRE.input_shapes()[0]


@pytest.mark.parametrize("case,words", [
    ("int_dtype", ("chosen.video", "int32", "not floating point")),
    ("bool_dtype", ("rejected.audio", "bool", "not floating point")),
    ("wrong_shape", ("chosen.video", "shape", "expected")),
    ("fewer_rows", ("rejected.video", "shape", "8 pairs")),
    ("missing_tensor", ("rejected.audio", "missing")),
    ("extra_tensor", ("chosen.pyd",)),
])
def test_tensors_are_checked_against_the_record(tmp_path, case, words):
    root = make_features(tmp_path)

    def edit(t):
        if case == "int_dtype":
            t["chosen.video"] = t["chosen.video"].to(torch.int32)
        elif case == "bool_dtype":
            t["rejected.audio"] = t["rejected.audio"] > 0
        elif case == "wrong_shape":
            t["chosen.video"] = t["chosen.video"][..., :-1]
        elif case == "fewer_rows":
            t["rejected.video"] = t["rejected.video"][:5]
        elif case == "missing_tensor":
            del t["rejected.audio"]
        else:
            t["chosen.pyd"] = torch.zeros(1)

    _edit_tensors(root, edit)
    _refused(root, entry_name("train"), "tensors.safetensors", *words)


@pytest.mark.parametrize("edit,words", [
    (lambda m: m["metas"].pop(), ("7 metas for 8 keys",)),
    (lambda m: m["keys"].append("extra"), ("8 metas for 9 keys",)),
    (lambda m: m.update(keys="train_000"), ("keys is not a list",)),
    (lambda m: m["metas"].__setitem__(0, [1]), ("metas is not a list of objects",)),
    (lambda m: m.update(fingerprint="0123abcd"), ("preprocessing '0123abcd'",)),
    (lambda m: m.update(bad=[{"key": 1}]), ("bad is not a list",)),
])
def test_metas_are_checked_against_the_tensors(tmp_path, edit, words):
    root = make_features(tmp_path)
    _edit_metas(root, edit)
    _refused(root, str(_metas_path(root)), *words)


def test_train_refuses_a_bad_feature_tensor_before_training_in_one_line(tmp_path):
    root = make_features(tmp_path / "features")
    _edit_tensors(root, lambda t: t.update({"chosen.audio": t["chosen.audio"].to(torch.int16)}), split="val")
    proc = subprocess.run(
        [sys.executable, "-m", "train", "--dim", "lip_sync", "--shards", str(root), "--run", str(tmp_path / "run"),
         "--config", str(write_tiny_config(tmp_path / "tiny.yaml")), "--cache-dir", str(tmp_path / "cache"),
         "--max-steps", "2"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and entry_name("val") in last and "chosen.audio" in last, last
    assert not (tmp_path / "run" / "checkpoints" / "reward").is_dir() or \
        not list((tmp_path / "run" / "checkpoints" / "reward").glob("checkpoint-*"))


# --------------------------------------------------------------------------- non-finite inputs

def _poison(root: Path) -> dict[str, str]:
    """NaN / inf in four train rows' tensors or margins; returns {key: what the reason names}."""
    def tensors(t):
        t["chosen.video"][1, 3, 0, 2, 2] = math.nan
        t["rejected.audio"][2, 5, 7] = math.inf

    def metas(m):
        m["metas"][4]["margin"] = math.nan  # json.dumps writes NaN, json.loads reads it back
        m["metas"][5]["margin"] = "a lot"

    _edit_tensors(root, tensors)
    _edit_metas(root, metas)
    return {"train_001": "chosen.video", "train_002": "rejected.audio", "train_004": "margin", "train_005": "margin"}


def test_nonfinite_rows_and_margins_are_bad_samples(tmp_path):
    root = make_features(tmp_path, {"train": 20, "val": 4})
    poisoned = _poison(root)
    ds = load_split(root, "train", PRE, log=_quiet, max_bad_fraction=0.5)
    assert len(ds) == 16 and not set(poisoned) & set(ds.keys)
    assert {b["key"]: b["split"] for b in ds.bad} == {k: "train" for k in poisoned}
    for b in ds.bad:
        assert b["shard"] == "train-000000.tar" and poisoned[b["key"]] in b["reason"], b
    assert all(bool(torch.isfinite(t).all()) for t in ds.tensors.values())
    assert len(ds.metas) == len(ds.keys) == len(ds.info) == len(ds.tensors["chosen.video"])
    with pytest.raises(TooManyBadSamples) as err:  # counted against the limit like any broken sample
        load_split(root, "train", PRE, log=_quiet, max_bad_fraction=0.1)
    assert "4 of 20" in str(err.value)


def test_train_skips_nonfinite_rows_lists_them_and_keeps_finite_weights(tmp_path):
    from train.__main__ import main

    root = make_features(tmp_path / "features", {"train": 20, "val": 4})
    poisoned = _poison(root)
    run = tmp_path / "run"
    metrics = main(["--dim", "lip_sync", "--shards", str(root), "--run", str(run), "--config",
                    str(write_tiny_config(tmp_path / "tiny.yaml")), "--cache-dir", str(tmp_path / "cache"),
                    "--max-steps", "3", "--max-bad-fraction", "0.5"])
    assert metrics["bad_samples"] == {"train": 4, "val": 0} and metrics["n_train_pairs"] == 16
    assert math.isfinite(metrics["val_pairwise_accuracy"]) and math.isfinite(metrics["train_loss"])
    listed = [json.loads(line) for line in (run / "bad_samples.jsonl").read_text().splitlines()]
    assert sorted(b["key"] for b in listed) == sorted(poisoned)
    assert all(bool(torch.isfinite(t).all()) for t in load_file(str(run / "model" / "model.safetensors")).values())


def test_nonfinite_values_in_pair_shards_are_bad_samples_of_the_cache_path(tmp_path):
    """Pair shards -> tensor cache: a NaN margin in a sample's json is skipped and listed too, and a
    json nested 200k deep is a bad sample with a reason, not a RecursionError."""
    shards = write_fixture_shards(tmp_path / "shards", sources=3, seconds=2.0, pairs_per_window=2,
                                  splits={"train": 0.67, "val": 0.33}, seed=5)
    shard = shards / "train-000000.tar"
    with tarfile.open(shard) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    key = sorted(n.split(".")[0] for n in members)[0]
    meta = json.loads(members[f"{key}.json"])
    jsons = {"zz_nan_margin": json.dumps(dict(meta, margin=math.nan)).encode(),
             "zz_deep": ('{"a": ' + "[" * 200_000 + "]" * 200_000 + "}").encode(),
             "zz_deep_small": ('{"a": ' + "[" * 900 + "]" * 900 + "}").encode()}
    with tarfile.open(shard, "a") as tar:
        for k, js in jsons.items():
            for ext, payload in (("chosen.mp4", members[f"{key}.chosen.mp4"]),
                                 ("rejected.mp4", members[f"{key}.rejected.mp4"]), ("json", js)):
                info = tarfile.TarInfo(f"{k}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    (shards / "manifest.json").unlink()  # the shard was rewritten
    ds = load_split(shards, "train", PRE, tmp_path / "cache", num_workers=0, log=_quiet, max_bad_fraction=1)
    reasons = {b["key"]: b["reason"] for b in ds.bad}
    assert set(reasons) == set(jsons) and len(ds) == 4, reasons
    assert "margin nan is not finite" in reasons["zz_nan_margin"]
    assert "byte limit" in reasons["zz_deep"] and "nested deeper than" in reasons["zz_deep_small"]


# --------------------------------------------------------------------------- non-finite loss, resume

def test_a_nonfinite_loss_stops_training_in_one_line_before_a_checkpoint(tmp_path, monkeypatch):
    from train.__main__ import main
    from train.runs import torn_reason
    from train.trainers import JudgeRewardTrainer

    compute_loss = JudgeRewardTrainer.compute_loss

    def nan_from_step_3(self, model, inputs, *a, **k):  # what a poisoned batch or a blown-up step gives
        loss = compute_loss(self, model, inputs, *a, **k)
        return loss * math.nan if self.model.training and self.state.global_step >= 2 else loss

    monkeypatch.setattr(JudgeRewardTrainer, "compute_loss", nan_from_step_3)
    root = make_features(tmp_path / "features")
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as err:
        main(["--dim", "lip_sync", "--shards", str(root), "--run", str(run), "--config",
              str(write_tiny_config(tmp_path / "tiny.yaml", save_steps=1)), "--cache-dir", str(tmp_path / "cache"),
              "--max-steps", "5"])
    msg = str(err.value)
    assert "loss is nan at step 3" in msg and "\n" not in msg, msg
    ckpts = sorted(p.name for p in (run / "checkpoints" / "reward").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-1", "checkpoint-2"]  # written before the NaN; none after it
    assert all(torn_reason(run / "checkpoints" / "reward" / c) is None for c in ckpts)
    assert not (run / "model").exists()


def _checkpoint(path: Path, step: int, weight: float) -> Path:
    path.mkdir(parents=True)
    for f in ("config.json", "optimizer.pt", "scheduler.pt"):
        (path / f).write_bytes(b"{}")
    save_file({"head.weight": torch.full((3, 3), weight)}, str(path / "model.safetensors"))
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


def test_a_checkpoint_with_nonfinite_weights_is_never_resumed(tmp_path):
    from train.runs import last_complete_checkpoint

    ckpt = tmp_path / "checkpoints"
    good = _checkpoint(ckpt / "checkpoint-2", 2, 0.5)
    nan = _checkpoint(ckpt / "checkpoint-4", 4, math.nan)
    inf = _checkpoint(ckpt / "checkpoint-6", 6, math.inf)
    logged = []
    assert last_complete_checkpoint(ckpt, logged.append) == str(good)
    assert not nan.exists() and not inf.exists()
    assert sum("non-finite weights" in line for line in logged) == 2, logged


# --------------------------------------------------------------------------- names, malformed files

@pytest.mark.parametrize("escape", ["../../outside", "ABSOLUTE", "sub/../../../outside"])
def test_features_json_entries_are_names_inside_the_folder(tmp_path, escape):
    outside = make_features(tmp_path / "elsewhere")  # a valid entry old readers would load
    target = tmp_path / "outside"
    (outside / entry_name("train")).rename(target)
    root = make_features(tmp_path / "a" / "features")
    (root / "sub").mkdir()  # so that the OS follows sub/.. as well
    entry = str(target) if escape == "ABSOLUTE" else escape
    assert (root / entry).resolve() == target.resolve()
    feats = json.loads((root / "features.json").read_text())
    feats["entries"][0]["entry"] = entry
    (root / "features.json").write_text(json.dumps(feats))
    _refused(root, "features.json", "entries[0]", "not a folder name")


@pytest.mark.parametrize("which,content,words", [
    ("features", "{not json", ("invalid json",)),
    ("features", "[1, 2]", ("not a features manifest",)),
    ("features", '{"fingerprint": "x"}', ("not a features manifest",)),
    ("features", '{"fingerprint": "x", "entries": [7]}', ("entries[0]",)),
    ("features", "[" * 200_000 + "]" * 200_000, ("nested deeper than",)),
    ("metas", "{not json", ("invalid json",)),
    ("metas", '"just a string"', ("not an object",)),
    ("metas", '{"a": ' + "[" * 200_000 + "]" * 200_000 + "}", ("nested deeper than",)),
])
def test_malformed_features_and_metas_json_are_one_line_naming_the_file(tmp_path, which, content, words):
    root = make_features(tmp_path)
    path = root / "features.json" if which == "features" else _metas_path(root)
    path.write_text(content)
    _refused(root, str(path), *words)


def test_an_oversized_metas_json_is_refused_naming_the_limit(tmp_path):
    limit = 64 << 20  # perturb.shard_format.MAX_JSON_FILE_BYTES, the documented limit
    root = make_features(tmp_path)
    _edit_metas(root, lambda m: m["metas"][0].update(padding="x" * limit))
    _refused(root, str(_metas_path(root)), f"{limit} byte limit")


# --------------------------------------------------------------------------- locations

@pytest.mark.parametrize("shards", ["http://127.0.0.1:1/shards", "nosuchprotocol://bucket/shards", "MISSING", "EMPTY"])
def test_an_unusable_shards_location_is_one_line_and_creates_nothing(tmp_path, shards):
    from train.__main__ import main

    if shards in ("MISSING", "EMPTY"):
        shards = str(tmp_path / shards.lower())
        if shards.endswith("empty"):
            Path(shards).mkdir()
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as err:
        main(["--dim", "lip_sync", "--shards", shards, "--run", str(run), "--config",
              str(write_tiny_config(tmp_path / "tiny.yaml")), "--cache-dir", str(tmp_path / "cache")])
    msg = str(err.value)
    assert msg.startswith("error:") and shards in msg and "\n" not in msg, msg
    assert not run.exists() and not (tmp_path / "cache").exists()


@pytest.mark.slow  # a python -m train start (~10 s); the in-process test above covers the same in make test
def test_train_cli_on_an_unreachable_url_is_one_line(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "train", "--dim", "lip_sync", "--shards", "http://127.0.0.1:1/", "--run", str(run),
         "--config", str(write_tiny_config(tmp_path / "tiny.yaml"))], cwd=tmp_path, capture_output=True, text=True,
        timeout=600, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "http://127.0.0.1:1/" in proc.stderr.strip().splitlines()[-1]
    assert not run.exists()


def test_featurize_from_an_unreachable_url_is_one_line_and_writes_nothing(tmp_path):
    from train.data import featurize

    out = tmp_path / "features"
    with pytest.raises(ShardFormatError) as err:
        featurize("http://127.0.0.1:1/shards", out, PRE, log=_quiet)
    assert "http://127.0.0.1:1/shards" in str(err.value) and "\n" not in str(err.value)
    assert not out.exists()
