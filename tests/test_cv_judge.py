"""bench/cv_judge.py: source-grouped cross-validation over the train + val pairs (test never read)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import cv_judge  # noqa: E402

from tests.train_fixtures import write_fixture_shards, write_tiny_config  # noqa: E402


def test_folds_keep_groups_whole_and_balance_pairs():
    pairs = {"a": 40, "b": 30, "c": 20, "d": 20, "e": 10, "f": 8, "g": 4}
    fold = cv_judge.assign_folds(pairs, 3)
    assert set(fold) == set(pairs) and set(fold.values()) == {0, 1, 2}
    load = [sum(n for g, n in pairs.items() if fold[g] == k) for k in range(3)]
    assert max(load) - min(load) <= max(pairs.values())
    assert cv_judge.assign_folds(dict(reversed(list(pairs.items()))), 3) == fold  # order-free
    with pytest.raises(SystemExit, match="cannot make 3 folds"):
        cv_judge.assign_folds({"a": 1, "b": 1}, 3)


def test_each_train_and_val_pair_is_held_out_once_and_never_trained_on_with_its_group(tmp_path):
    shards = write_fixture_shards(tmp_path / "shards", sources=7, seconds=2.0, pairs_per_window=2,
                                  splits={"train": 0.58, "val": 0.28, "test": 0.14})
    card = json.loads((shards / "card.json").read_text())
    # two sources of one speaker: they must land in the same fold
    card["sources"] = [{"source_id": f"fixture{s:03d}", "group": "speakerA" if s in (0, 1) else f"g{s}"}
                       for s in range(7)]
    (shards / "card.json").write_text(json.dumps(card))
    config = write_tiny_config(tmp_path / "tiny.yaml", max_steps=2)
    work = tmp_path / "cv"
    result = cv_judge.main(["--dim", "lip_sync", "--shards", str(shards), "--config", str(config),
                            "--work", str(work), "--folds", "3", "--seeds", "0",
                            "--cache-dir", str(tmp_path / "cache"), "--", "--max-steps", "2"])

    from train.data import load_entry
    held_out, trained_splits, digests = [], set(), set()
    for k in range(3):
        manifest = json.loads((work / "folds" / str(k) / "features.json").read_text())
        digests |= {row["sha256"] for row in manifest["entries"]}
        sources = {"train": set(), "val": set()}
        for row in manifest["entries"]:
            _, entry = load_entry(work / "folds" / str(k) / row["entry"])
            sources[row["split"]] |= {m["source_id"] for m in entry["metas"]}
            if row["split"] == "val":
                held_out += entry["keys"]
            else:
                trained_splits |= {m["split"] for m in entry["metas"]}
        assert sources["val"] and not sources["val"] & sources["train"]
        speaker_a = {"fixture000", "fixture001"}
        assert speaker_a <= sources["val"] or not speaker_a & sources["val"]
    assert len(held_out) == len(set(held_out)) == 12  # 6 train + val sources x 2 pairs, each once
    assert len(digests) == 6  # every fold's train and val entry named by its own content (caches key on it)
    assert trained_splits == {"train", "val"}          # the test split is never read
    seed = result["seeds"][0]
    assert sum(seed["fold_pairs"]) == 12 and 0 <= seed["pooled"] <= 1
    saved = json.loads((work / "cv.json").read_text())
    assert saved["pooled_mean"] == pytest.approx(seed["pooled"])
    # the per-source table re-scores the held-out pairs with each fold's saved judge: it must agree
    # with the accuracy training measured on them
    by_group = saved["by_group"]
    assert sum(r["pair_judgements"] for r in by_group.values()) == 12 and "speakerA" in by_group
    rescored = sum(r["accuracy"] * r["pair_judgements"] for r in by_group.values()) / 12
    assert rescored == pytest.approx(seed["pooled"])
    rows = [json.loads(line) for line in (work / "held_out_scores.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in rows) == sorted(held_out)
    assert np.mean([(r["z_chosen"] > r["z_rejected"]) + 0.5 * (r["z_chosen"] == r["z_rejected"]) for r in rows]) \
        == pytest.approx(seed["pooled"])


def test_pretraining_per_fold_sees_only_the_other_folds_sources(tmp_path):
    import argparse

    import yaml

    from tests.train_fixtures import write_fixture_videos

    videos = write_fixture_videos(tmp_path / "videos", sources=4, seconds=3.0)
    shards = tmp_path / "shards"
    shards.mkdir()
    splits = ["train", "train", "val", "test"]
    # the card of a build of several folders: src holds them, each file is named below it
    (shards / "card.json").write_text(json.dumps({"src": str(tmp_path), "sources": [
        {"source_id": v.stem, "file": f"videos/{v.name}", "group": "speakerA" if i < 2 else v.stem, "split": splits[i]}
        for i, v in enumerate(videos)]}))
    config = write_tiny_config(tmp_path / "tiny.yaml")
    conf = yaml.safe_load(config.read_text())
    conf["pretrain"] = {"max_steps": 2, "batch_size": 2, "hop_seconds": 1.0, "save_steps": 2}
    config.write_text(yaml.safe_dump(conf))
    args = argparse.Namespace(dim="lip_sync", shards=str(shards), config=str(config), pretrain_src=[],
                              cache_dir=str(tmp_path / "cache"))
    # held-out fold = speakerA: pretraining may use the val source only (the test source never)
    run = cv_judge.pretrain_fold(args, tmp_path / "pre", ["fixture_002", "fixture_003"])
    assert sorted(p.name for p in (tmp_path / "pre" / "src").iterdir()) == ["fixture_002.mp4"]
    used = json.loads((run / "metrics.json").read_text())["pretrain_sources"]
    assert [s["file"] for s in used] == ["fixture_002.mp4"]
    assert (run / "model" / "model.safetensors").is_file()
