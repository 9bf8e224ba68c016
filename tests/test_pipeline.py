"""Pairs and shards: format, splits, stream copy, determinism, resume after kill -9, bad inputs."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from perturb import media
from perturb.pipeline import build
from tests.media_fixtures import make_video

ROOT = Path(__file__).resolve().parents[1]
WINDOW = 2.0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("corpus")
    for i in range(5):
        make_video(src / f"spk{i}.mp4", seconds=4.4, seed=i)
    return src


def read_samples(shard_dir: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted(shard_dir.glob("*-[0-9]*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                assert ext not in samples.setdefault(key, {}), f"duplicate {m.name}"
                samples[key][ext] = tar.extractfile(m).read()
    return samples


def decode_bytes(payload: bytes, tmp: Path) -> tuple[np.ndarray, np.ndarray]:
    path = tmp / "x.mp4"
    path.write_bytes(payload)
    return media.decode_frames(path), media.decode_audio(path)


def lag_ms(a: np.ndarray, b: np.ndarray, sr: int = 16000) -> float:
    """Lag of b relative to a (positive: b is delayed), by cross-correlation peak."""
    from scipy.signal import correlate

    c = correlate(b, a, mode="full", method="fft")
    return (int(np.argmax(c)) - (len(a) - 1)) / sr * 1000


def build_small(src: Path, out: Path, dim: str = "lip_sync", **kw):
    return build(src, dim, out=out, seed=kw.pop("seed", 7), workers=kw.pop("workers", 1),
                 window_seconds=WINDOW, cards_dir=out / "cards", progress=False, **kw)


def build_with_toy_operator(corpus: Path, tmp_path: Path, dim: str, question: str, op_name: str, op_class):
    """build_small with a one-operator recipe for `op_class`, registered as `op_name` for the build only."""
    import yaml

    from perturb.operators import REGISTRY, register

    recipe = tmp_path / f"{dim}.yaml"
    recipe.write_text(yaml.safe_dump({
        "dim": dim, "question": question, "pairs_per_window": 1, "transform": {"op": op_name},
        "splits": {"train": 0.6, "val": 0.4}}))
    register(op_name)(op_class)
    try:
        return build_small(corpus, tmp_path / "out", dim=dim, recipe=recipe)
    finally:
        del REGISTRY[op_name]


@pytest.fixture(scope="module")
def lip_build(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    return build_small(corpus, out), out


def test_shard_format_and_card(lip_build, tmp_path):
    result, out = lip_build
    shard_dir = out / "lip_sync"
    samples = read_samples(shard_dir)
    # 5 sources x 2 windows x 3 pairs per window
    assert len(samples) == 5 * 2 * 3
    required = {"dim", "recipe", "source_id", "split", "window", "seed", "severity", "ops"}
    for key, files in samples.items():
        assert set(files) == {"chosen.mp4", "rejected.mp4", "json"}
        meta = json.loads(files["json"])
        assert required <= set(meta)
        assert meta["ops"] and all({"name", "params"} <= set(op) for op in meta["ops"])
        assert meta["window"][1] - meta["window"][0] == pytest.approx(WINDOW)
    names = sorted(p.name for p in shard_dir.glob("*.tar"))
    assert all(n.split("-")[0] in ("train", "val", "test") for n in names)
    card = json.loads((out / "cards" / "lip_sync.json").read_text())
    assert card["pairs"] == len(samples)
    assert sum(card["counts_per_operator"].values()) == len(samples)
    assert (out / "cards" / "lip_sync.md").read_text().startswith("# Data card")
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    from perturb.pipeline import sha256_file
    for s in manifest["shards"]:
        assert sha256_file(shard_dir / s["file"]) == s["sha256"]


def test_loads_with_webdataset_and_datasets(lip_build):
    import webdataset as wds
    from datasets import load_dataset

    _, out = lip_build
    shards = sorted(str(p) for p in (out / "lip_sync").glob("*-[0-9]*.tar"))
    n_wds = sum(1 for s in wds.WebDataset(shards, shardshuffle=False) if "chosen.mp4" in s)
    ds = load_dataset("webdataset", data_files={"pairs": shards}, split="pairs")
    assert n_wds == len(ds) == 30
    assert {"chosen.mp4", "rejected.mp4", "json"} <= set(ds.column_names)


def test_splits_are_disjoint_by_source(lip_build):
    _, out = lip_build
    by_split: dict[str, set[str]] = {}
    for files in read_samples(out / "lip_sync").values():
        meta = json.loads(files["json"])
        by_split.setdefault(meta["split"], set()).add(meta["source_id"])
    assert set(by_split) == {"train", "val", "test"}
    splits = list(by_split.values())
    for i in range(len(splits)):
        for j in range(i + 1, len(splits)):
            assert not splits[i] & splits[j]


def test_groups_never_straddle_splits(tmp_path):
    from perturb.pipeline import Source, assign_splits

    sources = [Source(f"s{i}", f"/x/s{i}.mp4", group=f"g{i // 3}") for i in range(30)]
    out = assign_splits(sources, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=1)
    split_of_group: dict[str, set[str]] = {}
    for s in out:
        split_of_group.setdefault(s.group, set()).add(s.split)
    assert all(len(v) == 1 for v in split_of_group.values())
    assert {s.split for s in out} == {"train", "val", "test"}


def test_splits_follow_material_share_not_file_count():
    """Long sources weigh more: each split's share of the total duration is near its target."""
    from perturb.pipeline import Source, assign_splits

    rng = np.random.default_rng(0)
    sources = [Source(f"s{i}", f"/x/s{i}.mp4", group=f"s{i}") for i in range(40)]
    durations = {s.source_id: float(d) for s, d in zip(sources, rng.choice([3.0, 3.0, 3.0, 20.0], size=40))}
    fractions = {"train": 0.6, "val": 0.2, "test": 0.2}
    out = assign_splits(sources, fractions, seed=3, weights=durations)
    total = sum(durations.values())
    for split, frac in fractions.items():
        share = sum(durations[s.source_id] for s in out if s.split == split)
        assert abs(share - frac * total) <= max(durations.values()), (split, share, frac * total)


def test_pinned_splits_hold_and_fill_their_share_first(tmp_path):
    """A manifest `split` pins a source and its whole group; the unpinned groups fill what is left of
    each split's share, and with every group pinned the assignment is exactly the pins -- whatever
    the weights, so a build with longer windows (other durations, fewer sources) keeps its test sources."""
    from perturb.pipeline import Source, assign_splits, find_sources

    fractions = {"train": 0.6, "val": 0.2, "test": 0.2}
    sources = [Source(f"s{i}", f"/x/s{i}.mp4", group=f"g{i // 2}") for i in range(20)]
    free = {s.source_id: s.split for s in assign_splits(sources, fractions, seed=0)}
    # pin group g0 to a split it would not get, and one source of g1 (its partner follows it)
    away = next(x for x in ("train", "val", "test") if x != free["s0"])
    pinned = [replace(s, split=away) if s.source_id in ("s0", "s1") else
              replace(s, split="test") if s.source_id == "s2" else s for s in sources]
    out = {s.source_id: s.split for s in assign_splits(pinned, fractions, seed=0)}
    assert out["s0"] == out["s1"] == away and out["s2"] == out["s3"] == "test"
    for split, frac in fractions.items():    # the pins count towards the shares: still near the targets
        assert abs(sum(v == split for v in out.values()) - frac * 20) <= 2, (split, out)
    all_pinned = [replace(s, split=free[s.source_id]) for s in sources]
    weights = {s.source_id: float(i % 7 + 1) for i, s in enumerate(sources)}
    assert {s.source_id: s.split for s in assign_splits(all_pinned, fractions, seed=5, weights=weights)} == free

    with pytest.raises(ValueError, match="pinned to two splits"):
        assign_splits([replace(sources[0], split="val"), replace(sources[1], split="test")], fractions, seed=0)
    with pytest.raises(ValueError, match="the split fractions give no share"):
        assign_splits([replace(sources[0], split="test")], {"train": 0.8, "val": 0.2}, seed=0)

    (tmp_path / "a.mp4").write_bytes(b"")
    (tmp_path / "b.mp4").write_bytes(b"")
    (tmp_path / "m.csv").write_text("file,split\na.mp4,test\nb.mp4,\n")
    assert {s.source_id: s.split for s in find_sources(tmp_path, tmp_path / "m.csv")} == {"a": "test", "b": ""}
    (tmp_path / "m.csv").write_text("file,split\na.mp4,holdout\n")
    with pytest.raises(ValueError, match="split of 'a.mp4' must be one of train, val, test"):
        find_sources(tmp_path, tmp_path / "m.csv")


def test_manifest_faces_and_sync_check_are_checked_in_one_line(tmp_path):
    """faces: a whole number >= 1 (empty: 1); sync_check pass / fail / empty, and a source that failed it
    is training material only: pinned anywhere but train it is refused."""
    from perturb.pipeline import ManifestError, find_sources

    for name in ("a.mp4", "b.mp4", "c.mp4"):
        (tmp_path / name).write_bytes(b"")
    m = tmp_path / "m.csv"
    m.write_text("file,faces,sync_check,split\na.mp4,2,,test\nb.mp4,,fail,train\nc.mp4,1,pass,val\n")
    assert {s.source_id: (s.faces, s.split) for s in find_sources(tmp_path, m)} == \
        {"a": (2, "test"), "b": (1, "train"), "c": (1, "val")}
    for rows, match in ((("b.mp4,,fail,val",), "'b.mp4' failed the sync check .* pin it to train .*val"),
                        (("b.mp4,,fail,",), "'b.mp4' failed the sync check .*empty"),
                        (("b.mp4,,maybe,train",), "sync_check of 'b.mp4' must be pass, fail or empty"),
                        (("b.mp4,0,,train",), "faces of 'b.mp4' must be a whole number from 1"),
                        (("b.mp4,two,,train",), "faces of 'b.mp4' must be a whole number from 1")):
        m.write_text("file,faces,sync_check,split\na.mp4,,,train\nc.mp4,,,val\n" + "\n".join(rows) + "\n")
        with pytest.raises(ManifestError, match=match):
            find_sources(tmp_path, m)


def test_single_speaker_recipes_skip_multi_face_sources_from_several_folders(tmp_path):
    """Two folders, one manifest: a source showing 2 faces gives no pairs in a single_speaker recipe
    (rejects.jsonl says why) and pairs in another; the card names each file below the folders' common
    parent, and lists the corrected sound lag with its evidence."""
    import yaml

    clips, more = tmp_path / "real" / "clips", tmp_path / "real" / "more"
    for folder, names in ((clips, ("solo", "pair")), (more, ("late", "other"))):
        folder.mkdir(parents=True)
        for i, name in enumerate(names):
            make_video(folder / f"{name}.mp4", seconds=2.2, seed=40 + len(name) + i)
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,group,faces,av_offset_ms,av_offset_evidence,split\n"
                        "solo.mp4,g1,,,,train\npair.mp4,g2,2,,,train\n"
                        "late.mp4,g3,1,80,\"peak r 0.50, r at 0 0.10, bootstrap 99%, 4 windows\",train\n"
                        "other.mp4,g4,,,,val\n")
    results = {}
    for single in (True, False):
        recipe = tmp_path / f"single_{single}.yaml"
        recipe.write_text(yaml.safe_dump({"dim": "lip_sync", "question": "Is the speech in sync with the lips?",
                                          "single_speaker": single, "pairs_per_window": 1,
                                          "transform": {"op": "audio_shift"}, "splits": {"train": 0.8, "val": 0.2}}))
        results[single] = build_small([clips, more], tmp_path / f"out_{single}", recipe=recipe, manifest=manifest)
    rejects = [json.loads(line) for line in (results[True]["out_dir"] / "rejects.jsonl").read_text().splitlines()]
    assert [(Path(r["path"]).name, r["reason"]) for r in rejects] == [("pair.mp4", "2 faces: not a single-speaker source")]
    pairs = {s["source_id"]: s["pairs"] for s in results[True]["summaries"]}
    assert "pair" not in pairs and all(pairs[s] > 0 for s in ("solo", "late", "other"))
    assert {s["source_id"]: s["pairs"] for s in results[False]["summaries"]}["pair"] > 0
    assert not (results[False]["out_dir"] / "rejects.jsonl").read_text().strip()

    card = json.loads((results[True]["out_dir"] / "card.json").read_text())
    assert Path(card["src"]) == tmp_path / "real"
    assert sorted(s["file"] for s in card["sources"]) == ["clips/solo.mp4", "more/late.mp4", "more/other.mp4"]
    assert all((Path(card["src"]) / s["file"]).is_file() for s in card["sources"])
    assert "- sound lag corrected (manifest av_offset_ms; > 0: the sound came late): more/late.mp4 +80 ms " \
           "(peak r 0.50, r at 0 0.10, bootstrap 99%, 4 windows)" in (results[True]["out_dir"] / "card.md").read_text()
    assert "2 faces: not a single-speaker source" in (results[True]["out_dir"] / "card.md").read_text()


def test_audio_only_pairs_copy_video_and_shift_audio(lip_build, tmp_path):
    _, out = lip_build
    checked = 0
    for files in read_samples(out / "lip_sync").values():
        meta = json.loads(files["json"])
        if meta["kind"] != "original_vs_perturbed" or meta["operator"] != "audio_shift":
            continue
        assert meta["video_copied"]
        f_c, a_c = decode_bytes(files["chosen.mp4"], tmp_path)
        f_r, a_r = decode_bytes(files["rejected.mp4"], tmp_path)
        assert np.array_equal(f_c, f_r), "audio-only operator must leave the picture bit-identical"
        offset = meta["ops"][0]["params"]["offset_ms"]
        if abs(offset) < 0.4 * WINDOW * 1000:  # enough overlap for a clean correlation peak
            assert lag_ms(a_c, a_r) == pytest.approx(offset, abs=1.0)
            checked += 1
    assert checked >= 3


def test_sound_in_sync_moves_the_sound_by_whole_samples_and_keeps_its_length():
    from perturb.pipeline import sound_in_sync

    track = np.arange(1, 11, dtype=np.float32)                             # 10 samples at 1 kHz
    assert sound_in_sync(track, 3.0, sr=1000).tolist() == [4, 5, 6, 7, 8, 9, 10, 0, 0, 0]
    assert sound_in_sync(track, -2.0, sr=1000).tolist() == [0, 0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert not sound_in_sync(track, 50.0, sr=1000).any()                  # longer than the track: silence
    assert not sound_in_sync(track, -50.0, sr=1000).any()


def test_a_sources_own_sound_lag_is_corrected_from_its_manifest(corpus, lip_build, tmp_path):
    """Manifest av_offset_ms: 120 (the source's sound comes 120 ms late) moves that source's soundtrack
    120 ms earlier in its canonical windows -- the pairs' originals -- and in what its perturbed sides
    and rebuild_pair start from; the picture and every other source stay as they were."""
    from perturb.pipeline import find_sources, rebuild_pair

    _, plain_out = lip_build
    (tmp_path / "manifest.csv").write_text("file,av_offset_ms\nspk0.mp4,120\nspk1.mp4,\n")
    build_small(corpus, tmp_path / "out", manifest=tmp_path / "manifest.csv")
    plain, fixed = read_samples(plain_out / "lip_sync"), read_samples(tmp_path / "out" / "lip_sync")
    assert plain.keys() == fixed.keys()
    corrected = 0
    for key, files in fixed.items():
        meta = json.loads(files["json"])
        f_fixed, a_fixed = decode_bytes(files["chosen.mp4"], tmp_path)
        f_plain, a_plain = decode_bytes(plain[key]["chosen.mp4"], tmp_path)
        assert np.array_equal(f_fixed, f_plain)                       # the picture is untouched
        if meta["source_id"] != "spk0":
            assert "source_av_offset_ms" not in meta and np.array_equal(a_fixed, a_plain)
            continue
        assert meta["source_av_offset_ms"] == 120.0
        assert lag_ms(a_plain, a_fixed) == pytest.approx(-120.0, abs=1.0)   # heard 120 ms earlier
        if meta["operator"] == "audio_shift" and meta["kind"] == "original_vs_perturbed":
            _, a_rej = decode_bytes(files["rejected.mp4"], tmp_path)
            offset = meta["ops"][0]["params"]["offset_ms"]
            if abs(offset) < 0.4 * WINDOW * 1000:                        # shifted from the corrected track
                assert lag_ms(a_fixed, a_rej) == pytest.approx(offset, abs=1.0)
        chosen, _ = rebuild_pair(meta, corpus / "spk0.mp4")
        n = min(len(chosen.audio), len(a_fixed))
        assert np.corrcoef(chosen.audio[:n], a_fixed[:n])[0, 1] > 0.95
        corrected += 1
    assert corrected >= 2
    card = json.loads((tmp_path / "out" / "cards" / "lip_sync.json").read_text())
    offsets = {s["source_id"]: s.get("av_offset_ms") for s in card["sources"]}
    assert offsets["spk0"] == 120.0 and offsets["spk1"] is None
    assert "spk0.mp4 +120 ms" in (tmp_path / "out" / "cards" / "lip_sync.md").read_text()
    (tmp_path / "bad.csv").write_text("file,av_offset_ms\nspk0.mp4,late\n")
    with pytest.raises(ValueError, match="av_offset_ms of 'spk0.mp4' is not a number"):
        find_sources(corpus, tmp_path / "bad.csv")


def test_pair_rebuilds_from_its_json(corpus, lip_build, tmp_path):
    """rebuild_pair(json, source) reproduces both soundtracks of a pair, context included: checked
    on shifted pairs from windows with speech before them (which a window-only replay would fill
    with silence)."""
    from perturb.pipeline import rebuild_pair

    _, out = lip_build
    checked = 0
    for files in read_samples(out / "lip_sync").values():
        meta = json.loads(files["json"])
        if meta["kind"] != "original_vs_perturbed" or meta["audio_context_s"][0] < 0.5 or checked == 3:
            continue
        chosen, rejected = rebuild_pair(meta, Path(corpus) / f"{meta['source_id']}.mp4")
        for clip, side in ((chosen, "chosen.mp4"), (rejected, "rejected.mp4")):
            _, written = decode_bytes(files[side], tmp_path)
            n = min(len(clip.audio), len(written))
            assert np.corrcoef(clip.audio[:n], written[:n])[0, 1] > 0.95
        checked += 1
    assert checked == 3


def test_same_seed_same_pairs(corpus, lip_build, tmp_path):
    _, out_a = lip_build
    build_small(corpus, tmp_path / "b")
    a, b = read_samples(out_a / "lip_sync"), read_samples(tmp_path / "b" / "lip_sync")
    assert a.keys() == b.keys()
    for key in sorted(a)[:6]:
        assert a[key]["json"] == b[key]["json"]
        for side in ("chosen.mp4", "rejected.mp4"):
            fa, aa = decode_bytes(a[key][side], tmp_path)
            fb, ab = decode_bytes(b[key][side], tmp_path)
            assert np.array_equal(fa, fb) and np.array_equal(aa, ab)
    other = build_small(corpus, tmp_path / "c", seed=8)
    c = read_samples(tmp_path / "c" / "lip_sync")
    assert any(a[k]["json"] != c[k]["json"] for k in a)
    assert other["card"]["pairs"] == len(a)


def test_resume_after_kill(corpus, lip_build, tmp_path):
    """kill -9 mid-build, then the same command again: same pairs, no duplicate, none missing."""
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "perturb", "build", "--src", str(corpus), "--dim", "lip_sync",
           "--out", str(out), "--seed", "7", "--workers", "1", "--window", str(WINDOW),
           "--cards", str(out / "cards")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    staging = out / "lip_sync" / ".staging"
    deadline = time.time() + 120
    while time.time() < deadline and not list(staging.glob("*/*.json")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(staging.glob("*/*.json")))
    assert 1 <= done_before < 5, "the kill should land mid-build"
    assert subprocess.run(cmd, cwd=ROOT, capture_output=True).returncode == 0
    resumed, clean = read_samples(out / "lip_sync"), read_samples(lip_build[1] / "lip_sync")
    assert resumed.keys() == clean.keys()
    assert all(resumed[k]["json"] == clean[k]["json"] for k in clean)
    assert not list((out / "lip_sync").glob(".*.tmp*"))


def test_bad_inputs_are_skipped_with_reasons_and_odd_inputs_work(tmp_path):
    src = tmp_path / "mixed"
    src.mkdir()
    make_video(src / "good.mp4", seconds=2.4, seed=1)
    make_video(src / "odd_size_48k_stereo.mkv", seconds=2.4, width=63, height=47, sr=48000, channels=2,
               vcodec=["-c:v", "libx264", "-pix_fmt", "yuv444p"], acodec=["-c:a", "libopus"], seed=2)
    make_video(src / "mpeg_ps_mp2.mpg", seconds=2.4, width=64, height=48, sr=44100, channels=2,
               vcodec=["-c:v", "mpeg1video"], acodec=["-c:a", "mp2"], fmt=["-f", "mpeg"], seed=3)
    make_video(src / "hevc_8k.mp4", seconds=2.4, sr=8000,
               vcodec=["-c:v", "libx265", "-pix_fmt", "yuv420p", "-x265-params", "log-level=none"], seed=4)
    make_video(src / "vfr.mp4", seconds=2.4, seed=5, 
               fmt=["-vf", "setpts=(N+0.4*mod(N\\,3))/25/TB", "-fps_mode", "vfr"])
    make_video(src / "no_audio.mp4", seconds=2.4, audio=False, seed=6)
    make_video(src / "no_video.mp4", seconds=2.4, video=False, seed=7)
    make_video(src / "too_short.mp4", seconds=1.0, seed=8)
    (src / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(20000))
    truncated = (src / "good.mp4").read_bytes()
    (src / "truncated.mp4").write_bytes(truncated[: len(truncated) // 3])

    result = build_small(src, tmp_path / "out", workers=2)
    reasons = {Path(r["path"]).stem: r["reason"] for r in result["rejects"]}
    assert set(reasons) == {"no_audio", "no_video", "too_short", "corrupt", "truncated"}
    assert "audio" in reasons["no_audio"] and "video" in reasons["no_video"]
    assert "shorter" in reasons["too_short"]
    rejects_file = (tmp_path / "out" / "lip_sync" / "rejects.jsonl").read_text().splitlines()
    assert len(rejects_file) == 5
    ok = {s["source_id"] for s in result["summaries"] if s["status"] == "ok"}
    assert ok == {"good", "odd_size_48k_stereo", "mpeg_ps_mp2", "hevc_8k", "vfr"}
    for files in read_samples(tmp_path / "out" / "lip_sync").values():
        frames, audio = decode_bytes(files["rejected.mp4"], tmp_path)
        assert frames.shape[1] % 2 == 0 and frames.shape[2] % 2 == 0
        assert len(frames) == pytest.approx(WINDOW * 25, abs=1)
        assert len(audio) == pytest.approx(WINDOW * 16000, rel=0.02)
    card = (tmp_path / "out" / "cards" / "lip_sync.md").read_text()
    assert "corrupt.mp4" in card and "no audio stream" in card


REALVIDS = ROOT.parent / "shared" / "realvids" / "clips"


@pytest.mark.realdata
@pytest.mark.skipif(not REALVIDS.is_dir(), reason="../shared/realvids is not present")
def test_real_clips_of_every_container_give_pairs(tmp_path):
    """MPEG-PS/mp2, HEVC 1080x1920 and h264 crops from the real folder all become canonical pairs."""
    src = tmp_path / "real"
    src.mkdir()
    picks = ["LipNet__evaluation_samples_GRID_bbaf2n.mpg", "LatentSync__assets_demo1_video.mp4",
             "Talking-Face_PC-AVS__misc_Audio_Source_00086.mp4"]
    for name in picks:
        (src / name).symlink_to(REALVIDS / name)
    result = build_small(src, tmp_path / "out", max_windows=1)
    assert not result["rejects"]
    samples = read_samples(tmp_path / "out" / "lip_sync")
    assert len({json.loads(f["json"])["source_id"] for f in samples.values()}) == 3
    for files in list(samples.values())[::3]:
        frames, audio = decode_bytes(files["rejected.mp4"], tmp_path)
        assert max(frames.shape[1:3]) <= 512 and len(frames) == pytest.approx(WINDOW * 25, abs=1)


def test_window_clip_context_stops_at_source_edges():
    """The audio context is the track around the window, cut at the track's ends."""
    from perturb.media import CANONICAL_SR as sr
    from perturb.pipeline import window_clip

    track = np.arange(5 * sr, dtype=np.float32)
    first = window_clip(track, 0.0, 2.0, "w.mp4", {}, context_seconds=1.0)
    assert len(first.context_before) == 0 and np.array_equal(first.context_after, track[2 * sr:3 * sr])
    middle = window_clip(track, 2.0, 4.0, "w.mp4", {}, context_seconds=1.0)
    assert np.array_equal(middle.context_before, track[sr:2 * sr])
    assert np.array_equal(middle.audio, track[2 * sr:4 * sr])
    last = window_clip(track, 3.0, 5.0, "w.mp4", {}, context_seconds=1.0)
    assert len(last.context_after) == 0 and len(last.audio) == 2 * sr


def test_operators_get_the_source_context_without_pipeline_edits(corpus, tmp_path):
    """A mismatch operator (another source's soundtrack, as av_consistency needs) registered here,
    outside perturb/, gets source id, split, donor pool and window clip through with_context."""
    import copy

    from perturb.operators import Operator

    class OtherSourceAudio(Operator):
        """The window's audio replaced by another source's (same split). Keywords: p."""

        modifies = "audio"

        def with_context(self, context):
            bound = copy.copy(self)
            bound.context = context
            return bound

        def sample_params(self, rng, severity):
            ctx = self.context
            return {"donor": ctx.donor_pool[int(rng.integers(len(ctx.donor_pool)))], "severity": severity,
                    "seen": {"source_id": ctx.source_id, "split": ctx.split, "path": ctx.source_path,
                             "window": ctx.clip.meta["window"], "samples": len(ctx.clip.audio)}}

        def apply(self, clip, params):
            donor = media.decode_audio(params["donor"])[:len(clip.audio)]
            return clip.with_audio(np.pad(donor, (0, len(clip.audio) - len(donor))))

        def defect_size(self, params):
            return float(params["severity"])

    result = build_with_toy_operator(corpus, tmp_path, "toy_mismatch", "Is this the speaker's own voice?",
                                     "toy_other_source_audio", OtherSourceAudio)
    split_of = {s.source_id: s.split for s in result["sources"]}
    path_of = {s.source_id: s.path for s in result["sources"]}
    samples = read_samples(tmp_path / "out" / "toy_mismatch")
    assert len(samples) == result["card"]["pairs"] >= 5
    for files in samples.values():
        meta = json.loads(files["json"])
        params = meta["ops"][0]["params"]
        assert params["seen"] == {"source_id": meta["source_id"], "split": meta["split"],
                                  "path": path_of[meta["source_id"]], "window": meta["window"],
                                  "samples": int(WINDOW * media.CANONICAL_SR)}
        donor_id = Path(params["donor"]).stem
        assert donor_id != meta["source_id"] and split_of[donor_id] == meta["split"]
        assert meta["video_copied"]


# ----------------------------------------------------------------------------- splits of usable sources

def _split_of(result) -> dict[str, str]:
    return {s.source_id: s.split for s in result["sources"] if s.split}


def test_a_broken_file_beside_good_ones_changes_no_split(corpus, lip_build, tmp_path):
    """Splits go to the sources that passed the checks: the good clips' splits are the same with
    and without broken files in the folder, and the broken ones take none."""
    src = tmp_path / "with_broken"
    src.mkdir()
    for clip in corpus.glob("*.mp4"):
        (src / clip.name).symlink_to(clip)
    make_video(src / "aa_no_audio.mp4", seconds=4.4, audio=False, seed=11)
    make_video(src / "zz_no_audio.mp4", seconds=4.4, audio=False, seed=12)
    (src / "mm_corrupt.mp4").write_bytes(np.random.default_rng(1).bytes(5000))
    result = build_small(src, tmp_path / "out")
    clean = _split_of(lip_build[0])
    assert _split_of(result) == clean
    assert {r["source_id"] for r in result["rejects"]} == {"aa_no_audio", "zz_no_audio", "mm_corrupt"}
    assert all(s.split == "" for s in result["sources"] if s.source_id in {"aa_no_audio", "zz_no_audio"})


def test_train_extra_sources_join_train_only_and_leave_val_and_test_byte_identical(corpus, tmp_path):
    """build(train_extra=...): the extra clips (those its manifest lists) make train pairs only; the
    val and test shards are the same bytes as a build without them, and no val / test pair's babble
    voice is a train source (more training data without moving the goalpost)."""
    import hashlib

    import yaml

    from .fixtures_ops import synth_voice, write_wav

    extra = tmp_path / "extra"
    extra.mkdir()
    for i in range(2):
        make_video(extra / f"more{i}.mp4", seconds=4.4, seed=30 + i)
    listed = tmp_path / "extra.csv"
    listed.write_text("file,group,licence\nmore0.mp4,prog,test licence\n")  # more1.mp4 is left out
    donors = tmp_path / "voices"  # babble voices for every split (one source each in val and test)
    donors.mkdir()
    for i in range(8):
        write_wav(donors / f"voice{i}.wav", synth_voice(3.0, f0=110.0 + 15 * i, seed=40 + i))
    fractions = {"train": 0.6, "val": 0.2, "test": 0.2}
    recipe = tmp_path / "babble.yaml"  # every pair draws voices
    recipe.write_text(yaml.safe_dump({"dim": "audio_quality", "question": "Is this speech recorded cleanly?",
                                      "pairs_per_window": 2, "transform": {"op": "noise", "kinds": ["babble"]},
                                      "splits": fractions}))
    kw = {"dim": "audio_quality", "recipe": recipe, "splits": fractions, "donors": donors}
    plain = build_small(corpus, tmp_path / "plain", **kw)
    more = build_small(corpus, tmp_path / "more", train_extra=extra, train_extra_manifest=listed, **kw)

    def sha(result, split: str) -> str:
        return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(Path(result["out_dir"]).glob(f"{split}-*.tar")))).hexdigest()

    for split in ("val", "test"):
        assert sha(plain, split) == sha(more, split)
    assert sha(plain, "train") != sha(more, "train")
    assert _split_of(more) == {**_split_of(plain), "more0": "train"}
    records = [json.loads(f["json"]) for f in read_samples(Path(more["out_dir"])).values()]
    assert {r["split"] for r in records if r["source_id"] == "more0"} == {"train"}
    per_source = {s["source_id"]: s["pairs"] for s in more["summaries"]}
    assert per_source["more0"] == per_source["spk0"] > 0  # as many pairs as a main clip of its length
    assert sum(r["source_id"] == "more0" for r in records) == per_source["more0"]
    train_files = {s.path for s in more["sources"] if s.split == "train"}
    voices = [(r["split"], d["path"]) for r in records for op in r["ops"] for d in op["params"].get("donors", [])]
    assert any(split == "train" for split, _ in voices) and any(split != "train" for split, _ in voices)
    assert not [v for split, v in voices if split != "train" and v in train_files]
    card = json.loads((tmp_path / "more" / "cards" / "audio_quality.json").read_text())
    assert card["train_extra"] == str(extra) and "train_extra" not in json.loads(
        (tmp_path / "plain" / "cards" / "audio_quality.json").read_text())
    (extra / "spk0.mp4").symlink_to(corpus / "spk0.mp4")  # an id of the main sources: refused
    with pytest.raises(ValueError, match="spk0"):
        build_small(corpus, tmp_path / "clash", train_extra=extra, **kw)


def test_train_voices_are_the_train_split_s_donor_recordings_only(corpus, tmp_path):
    """build(train_voices=True): the --donors files donor_splits gives train (and only those) become
    train sources under a still picture, their sound kept; val and test shards unchanged."""
    import hashlib

    import yaml

    from perturb.pipeline import donor_splits

    from .fixtures_ops import synth_voice, write_wav

    donors = tmp_path / "voices"
    donors.mkdir()
    for i in range(6):
        write_wav(donors / f"voice{i}.wav", synth_voice(2.5, f0=110.0 + 15 * i, seed=50 + i))
    fractions = {"train": 0.6, "val": 0.2, "test": 0.2}
    recipe = tmp_path / "hum.yaml"  # no donors drawn: the pairs depend on the sources alone
    recipe.write_text(yaml.safe_dump({"dim": "audio_quality", "question": "Is this speech recorded cleanly?",
                                      "pairs_per_window": 1, "transform": {"op": "hum"}, "splits": fractions}))
    kw = {"dim": "audio_quality", "recipe": recipe, "splits": fractions, "donors": donors}
    plain = build_small(corpus, tmp_path / "plain", **kw)
    more = build_small(corpus, tmp_path / "more", train_voices=True, **kw)

    def sha(result, split: str) -> str:
        return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(Path(result["out_dir"]).glob(f"{split}-*.tar")))).hexdigest()

    for split in ("val", "test"):
        assert sha(plain, split) == sha(more, split)
    train_voices = donor_splits(sorted(str(p.resolve()) for p in donors.glob("*.wav")), fractions, seed=7)["train"]
    assert 0 < len(train_voices) < 6
    assert sorted(more["train_voices"]) == sorted(f"voice_{Path(p).stem}" for p in train_voices)
    assert _split_of(more) == {**_split_of(plain), **{v: "train" for v in more["train_voices"]}}
    assert all(s["pairs"] > 0 for s in more["summaries"] if s["source_id"] in more["train_voices"])
    # the sound is the recording's (FLAC under the picture): same samples at 16 kHz
    first = Path(train_voices[0])
    wrapped = next(s.path for s in more["sources"] if s.source_id == f"voice_{first.stem}")
    a, b = media.decode_audio(first), media.decode_audio(wrapped)
    n = min(len(a), len(b))
    assert abs(len(a) - len(b)) <= 0.05 * media.CANONICAL_SR and np.abs(a[:n] - b[:n]).max() < 1e-3
    assert media.probe(wrapped).duration == pytest.approx(media.probe(first).duration, abs=0.05)
    again = build_small(corpus, tmp_path / "again", train_voices=True, **kw)  # another folder: same wrapper bytes
    assert [Path(s.path).read_bytes() for s in again["sources"] if s.source_id in more["train_voices"]] == \
        [Path(s.path).read_bytes() for s in more["sources"] if s.source_id in more["train_voices"]]
    with pytest.raises(ValueError, match="donors"):
        build_small(corpus, tmp_path / "none", dim="audio_quality", recipe=recipe, splits=fractions, train_voices=True)


def test_an_empty_split_fails_the_build_with_a_clear_line(tmp_path):
    src = tmp_path / "two_good"
    src.mkdir()
    for i in range(2):
        make_video(src / f"good{i}.mp4", seconds=2.4, seed=i)
    make_video(src / "silent.mp4", seconds=2.4, audio=False, seed=5)
    with pytest.raises(SystemExit) as err:
        build_small(src, tmp_path / "out")
    msg = str(err.value)
    assert "no usable source for split" in msg and "2 of 3 sources usable" in msg and "\n" not in msg
    rejects = (tmp_path / "out" / "lip_sync" / "rejects.jsonl").read_text()
    assert "silent.mp4" in rejects and "no audio stream" in rejects
    # a split set to 0 is not asked for: the same two sources build
    assert build_small(src, tmp_path / "out", splits={"train": 0.5, "val": 0.5, "test": 0})["shards"]


# ----------------------------------------------------------------------------- odd files, leftovers, workers

def _one_frame_clip(path: Path, audio_seconds: float) -> Path:
    media.run_ffmpeg(["-f", "lavfi", "-i", "color=c=gray:s=64x64:d=0.04:r=25",
                      "-f", "lavfi", "-i", f"sine=f=300:d={audio_seconds}:r=16000",
                      "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-y", str(path)])
    return path


def test_an_operator_crash_rejects_its_source_and_the_build_goes_on(corpus, tmp_path):
    """An operator that raises on one source (as a mismatch operator does when its split has no
    donor) costs that source, with an 'internal error' line in rejects.jsonl, in one process as in a
    pool of workers; the other sources give their pairs."""
    import copy

    from perturb.operators import Operator

    victim = sorted(p.name for p in corpus.iterdir() if p.suffix == ".mp4")[0]

    class FailsOnOneSource(Operator):
        """Silences the window's audio; raises for the source named `victim`. Keywords: p."""

        modifies = "audio"

        def with_context(self, context):
            bound = copy.copy(self)
            bound.source_name = Path(context.source_path).name
            return bound

        def sample_params(self, rng, severity):
            if self.source_name == victim:
                raise ValueError("no donor in the context's pool")
            return {"severity": severity}

        def apply(self, clip, params):
            return clip.with_audio(np.zeros_like(clip.audio))

        def defect_size(self, params):
            return float(params["severity"])

    result = build_with_toy_operator(corpus, tmp_path, "toy_crash", "Is there sound?", "toy_fails_on_one_source",
                                     FailsOnOneSource)  # build_small runs it in this process (workers=1)
    rejected = {Path(r["path"]).name: r["reason"] for r in result["rejects"]}
    assert list(rejected) == [victim]
    assert rejected[victim].startswith("internal error") and "no donor in the context's pool" in rejected[victim]
    written = [json.loads(ln) for ln in (tmp_path / "out" / "toy_crash" / "rejects.jsonl").read_text().splitlines()]
    assert [Path(r["path"]).name for r in written] == [victim]
    assert result["card"]["pairs"] > 0


def test_odd_files_get_one_clear_reason_each(tmp_path):
    """A 1-frame clip with 5 s of audio: the same reason for every dimension, no cache path in it;
    a zero-byte file: 'empty file'; .m4a files and symlink loops: a line in rejects.jsonl."""
    src = tmp_path / "odd"
    src.mkdir()
    make_video(src / "good.mp4", seconds=2.4, seed=1)
    _one_frame_clip(src / "one_frame.mp4", 5.0)
    (src / "empty.mp4").write_bytes(b"")
    make_video(src / "voice.m4a", seconds=2.4, video=False, seed=2)
    (src / "loop_a.mp4").symlink_to(src / "loop_b.mp4")
    (src / "loop_b.mp4").symlink_to(src / "loop_a.mp4")
    (src / "dangling.mp4").symlink_to(src / "gone.mp4")
    reasons = {}
    for dim in ("lip_sync", "video_quality"):
        result = build_small(src, tmp_path / "out", dim=dim, splits={"train": 1.0})
        reasons[dim] = {Path(r["path"]).name: r["reason"] for r in result["rejects"]}
        written = [json.loads(line) for line in (tmp_path / "out" / dim / "rejects.jsonl").read_text().splitlines()]
        assert {Path(r["path"]).name: r["reason"] for r in written} == reasons[dim]
    assert reasons["lip_sync"] == reasons["video_quality"]
    r = reasons["lip_sync"]
    assert set(r) == {"one_frame.mp4", "empty.mp4", "voice.m4a", "loop_a.mp4", "loop_b.mp4", "dangling.mp4"}
    assert "picture ends early" in r["one_frame.mp4"] and "1 of 50 video frames" in r["one_frame.mp4"]
    assert ".canonical" not in r["one_frame.mp4"] and str(tmp_path) not in r["one_frame.mp4"]
    assert r["empty.mp4"] == "empty file (0 bytes)"
    assert "audio-only" in r["voice.m4a"]
    assert r["loop_a.mp4"] == r["loop_b.mp4"] == "symlink loop"
    assert "broken symlink" in r["dangling.mp4"]


def test_a_warm_build_probes_no_source_and_a_changed_source_is_redone(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(2):
        make_video(src / f"spk{i}.mp4", seconds=2.4, seed=i)
    probed: list[str] = []
    real_probe = media.probe
    monkeypatch.setattr(media, "probe", lambda path: probed.append(Path(path).name) or real_probe(path))
    out = tmp_path / "out"
    first = build_small(src, out, splits={"train": 1.0})
    assert sorted(set(probed)) == ["spk0.mp4", "spk1.mp4"]

    probed.clear()  # another seed over the same sources: every probe comes from the memo
    second = build_small(src, out, splits={"train": 1.0}, seed=8)
    assert probed == [] and second["card"]["pairs"] == first["card"]["pairs"]

    # spk1 rewritten (new content, size and mtime), the same build again: spk1 is probed again and
    # its pairs are remade from the new picture (the staged ones are stale), spk0's are reused
    make_video(src / "spk1.mp4", seconds=3.2, seed=5)
    probed.clear()
    build_small(src, out, splits={"train": 1.0}, seed=8)
    assert sorted(set(probed)) == ["spk1.mp4"]
    samples = read_samples(out / "lip_sync")
    key = next(k for k in samples if k.startswith("spk1"))
    shard_frames, _ = decode_bytes(samples[key]["chosen.mp4"], tmp_path)
    new_frames = media.decode_frames(src / "spk1.mp4")
    assert abs(float(shard_frames[0].mean()) - float(new_frames[0].mean())) < 3.0

    for memo in (out / ".canonical" / "probes").glob("*.json"):  # damaged memos: probed again, no error
        memo.write_text("{not json")
    probed.clear()
    build_small(src, out, splits={"train": 1.0}, seed=10)
    assert sorted(set(probed)) == ["spk0.mp4", "spk1.mp4"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_killed_builds_are_cleaned_when_their_writer_is_gone(tmp_path):
    src = tmp_path / "one"
    src.mkdir()
    make_video(src / "good.mp4", seconds=2.4, seed=1)
    out = tmp_path / "out"
    dead, alive = _dead_pid(), os.getpid()
    stale = [out / "lip_sync" / f".train-000000.tar.tmp{dead}",
             out / "lip_sync" / ".staging" / "0123abcd" / f".good.tar.tmp{dead}",
             out / ".canonical" / f".{'a' * 20}.{dead}.x1y2" / "window_0000.mp4",
             out / ".canonical" / f".{'b' * 20}.old_fmt" / "window_0000.mp4",  # no PID: by age
             out / ".canonical" / "probes" / f".{'d' * 20}.json.tmp{dead}"]
    running = [out / "lip_sync" / f".val-000000.tar.tmp{alive}",
               out / ".canonical" / f".{'c' * 20}.{alive}.x1y2" / "window_0000.mp4"]
    for f in stale + running:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"partial")
    two_days_ago = time.time() - 2 * 86400
    os.utime(stale[3].parent, (two_days_ago, two_days_ago))
    build_small(src, out, splits={"train": 1.0})
    assert not [f for f in stale if f.exists()]
    assert not (out / ".canonical" / f".{'a' * 20}.{dead}.x1y2").exists()
    assert all(f.exists() for f in running)


def _children(pid: int) -> set[int]:
    kids = set()
    for f in Path(f"/proc/{pid}/task").glob("*/children"):
        kids |= {int(p) for p in f.read_text().split()}
    return kids


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_pool_workers_exit_when_the_build_process_is_killed(corpus, tmp_path):
    out = tmp_path / "orphans"
    cmd = [sys.executable, "-m", "perturb", "build", "--src", str(corpus), "--dim", "lip_sync",
           "--out", str(out), "--workers", "2", "--window", str(WINDOW), "--cards", str(out / "cards")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(workers) < 2:
            workers = {p for p in _children(proc.pid)
                       if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()} if proc.poll() is None else set()
            time.sleep(0.05)
        assert len(workers) == 2, "the build should have started its two workers"
        os.kill(proc.pid, signal.SIGKILL)  # the main process only, as a user's kill -9 <pid> does
        proc.wait()
        deadline = time.time() + 30
        while time.time() < deadline and any(_running(p) for p in workers):
            time.sleep(0.1)
        assert not [p for p in workers if _running(p)], "pool workers outlived the killed build"
    finally:
        for p in workers:
            if _running(p):
                os.kill(p, signal.SIGKILL)
