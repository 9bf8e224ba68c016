"""eval/: calibration, metrics, report building, export round trip, Scorer, CLI score/filter/align."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eval import metrics as M
from eval.calibration import (CALIBRATORS, METHODS, Calibrator, IsotonicCalibration,
                              TemperatureScaling, fit_calibrator, sigmoid)

ROOT = Path(__file__).resolve().parents[1]


def _has(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


needs_model = pytest.mark.skipif(not (_has("train.model") and _has("train.preprocess")),
                                 reason="train/model.py or train/preprocess.py not there yet")
needs_data = pytest.mark.skipif(not _has("train.data"), reason="train.data not there yet")


def synthetic_logits(n: int, seed: int, overconfidence: float = 4.0, bias: float = 0.0):
    """Labels and logits that are miscalibrated: true log-odds x, the judge says overconfidence*x + bias."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = (2 * y - 1) * 1.0 + rng.normal(0, 1, n)  # true log-odds of y=1 given x is 2x
    return overconfidence * 2 * x + bias, y


# ----------------------------------------------------------------------------- calibration
@pytest.mark.parametrize("method", ["none", *METHODS])
def test_calibrators_monotone_bounded_and_round_trip(method):
    import torch

    z, y = synthetic_logits(600, 0, bias=1.5)
    cal = fit_calibrator(method, z, y)
    grid = np.linspace(-60, 60, 4001)
    p = cal.transform(grid)
    assert np.all(np.diff(p) >= -1e-12), "calibration map must be non-decreasing"
    assert p.min() >= 0 and p.max() <= 1
    if method == "isotonic":  # continuous, never a hard 0 / 1
        assert p.min() > 0 and p.max() < 1
        assert np.max(np.abs(np.diff(p))) < 0.5
    d = json.loads(json.dumps(cal.to_dict()))
    assert d["method"] == method and d["fitted_on"] == "val" and d["n"] == 600
    again = Calibrator.from_dict(d)
    np.testing.assert_allclose(again.transform(grid), p, atol=1e-12)
    # the torch map is the same function
    tp = cal.torch_transform(torch.tensor(grid)).numpy()
    np.testing.assert_allclose(tp, p, atol=1e-9)


def test_temperature_scaling_reduces_ece_on_held_out_data():
    z_val, y_val = synthetic_logits(3000, 1)
    z_test, y_test = synthetic_logits(3000, 2)
    cal = TemperatureScaling().fit(z_val, y_val)
    assert 3.0 < cal.temperature < 5.5  # the judge is 4x overconfident
    before = M.ece(sigmoid(z_test), y_test)
    after = M.ece(cal.transform(z_test), y_test)
    assert after < 0.5 * before and after < 0.04
    assert M.brier(cal.transform(z_test), y_test) < M.brier(sigmoid(z_test), y_test)
    for method in ("platt", "isotonic"):
        c = fit_calibrator(method, z_val, y_val)
        assert M.ece(c.transform(z_test), y_test) < before


def test_calibration_on_separable_data_stays_finite():
    z = np.array([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0])
    y = np.array([0, 0, 0, 1, 1, 1])
    for m in METHODS:
        p = fit_calibrator(m, z, y).transform(z)
        assert np.all((p > 0) & (p < 1))


def test_isotonic_reward_uses_differentiable_fallback():
    z, y = synthetic_logits(500, 3)
    iso = fit_calibrator("isotonic", z, y)
    assert isinstance(iso, IsotonicCalibration)
    assert isinstance(iso.differentiable(), TemperatureScaling)
    assert iso.differentiable().n == 500
    assert set(CALIBRATORS) >= {"temperature", "platt", "isotonic"}


# ----------------------------------------------------------------------------- metrics
def test_metrics_basics():
    from scipy import stats

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 5000)
    p = rng.uniform(0, 1, 5000)
    y_cal = (rng.uniform(0, 1, 5000) < p).astype(int)
    assert M.ece(p, y_cal) < 0.03  # calibrated by construction
    assert M.ece(np.full(100, 0.9), np.zeros(100)) == pytest.approx(0.9)
    assert M.pairwise_accuracy([1, 2, 3], [0, 2, 4]) == pytest.approx(0.5)
    assert M.auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert np.isnan(M.auc([0.1, 0.2], [1, 1]))
    x, v = rng.normal(size=50), rng.normal(size=50)
    assert M.spearman(x, v) == pytest.approx(stats.spearmanr(x, v).statistic)
    assert M.kendall(x, v) == pytest.approx(stats.kendalltau(x, v).statistic)
    assert M.pearson(x, v) == pytest.approx(stats.pearsonr(x, v).statistic)
    lo, hi = M.bootstrap_ci(M.pearson, x, x + 0.5 * v, n_boot=300)
    assert lo < M.pearson(x, x + 0.5 * v) < hi
    assert len(M.reliability_bins(p, y)) == 15


# ----------------------------------------------------------------------------- report building
def _fake_pairs(n_sources: int, seed: int, split: str, shift: float = 0.0):
    """Scored pairs: originals score high, perturbed lower with growing defect (audio_shift ladder)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for s in range(n_sources):
        z_orig = 3.0 + rng.normal(0, 1.5) + shift
        for sev in range(1, 6):
            for op, unit in (("audio_shift", 120.0), ("voice_swap", 1.0)):
                meta = {"source_id": f"{split}{s}", "window": [0.0, 5.0], "split": split,
                        "kind": "original_vs_perturbed", "severity": sev, "chosen_severity": 0,
                        "ops": [{"name": op, "params": {"k": sev * unit}}], "chosen_ops": [],
                        "operator": op, "defect": sev * unit, "chosen_defect": 0.0,
                        "question": "Is the speech in sync with the lips?"}
                pairs.append({"meta": meta, "z_chosen": z_orig,
                              "z_rejected": 3.0 - 1.6 * sev + rng.normal(0, 1.5) + shift})
        # one graded pair: milder perturbed chosen vs stronger rejected
        meta = {"source_id": f"{split}{s}", "window": [0.0, 5.0], "split": split, "kind": "graded",
                "severity": 4, "chosen_severity": 1,
                "ops": [{"name": "audio_shift", "params": {"k": 480.0}}],
                "chosen_ops": [{"name": "audio_shift", "params": {"k": 120.0}}],
                "operator": "audio_shift", "defect": 480.0, "chosen_defect": 120.0}
        pairs.append({"meta": meta, "z_chosen": 1.0 + shift, "z_rejected": -3.0 + shift})
    return pairs


def test_build_report_fits_calibration_on_val_only():
    from eval.evaluate import build_report, clip_records

    val = _fake_pairs(12, 0, "val")
    test = _fake_pairs(10, 1, "test")
    report, cals = build_report(val, test, dim="lip_sync", n_boot=100)
    n_val_clips = len(clip_records(val))
    # 12 originals + 12*10 perturbed; both sides of the graded pair (audio_shift k=120 / k=480)
    # repeat ladder clips (same source, window and ops), so they are counted once
    assert n_val_clips == 12 + 12 * 10
    for m in METHODS:
        assert cals[m].n == n_val_clips and cals[m].fitted_on == "val"
        assert report["calibration"]["test"][m]["n_fit"] == n_val_clips
    # different test data -> same calibrators
    test2 = _fake_pairs(10, 99, "test", shift=-2.0)
    _, cals2 = build_report(val, test2, dim="lip_sync", n_boot=20)
    for m in METHODS:
        assert cals2[m].to_dict() == cals[m].to_dict()
    # ... and different val data -> different calibrators
    _, cals3 = build_report(_fake_pairs(12, 5, "val", shift=1.0), test, n_boot=20)
    assert cals3["temperature"].to_dict() != cals["temperature"].to_dict()

    t = report["test"]
    assert t["n_pairs"] == len(test)
    assert 0.8 < t["pairwise_accuracy"]["value"] <= 1.0
    lo, hi = t["pairwise_accuracy"]["ci95"]
    assert lo <= t["pairwise_accuracy"]["value"] <= hi
    assert t["auc"]["value"] > 0.8
    assert {r["operator"] for r in report["per_operator"]} == {"audio_shift", "voice_swap"}
    assert [r["severity"] for r in report["per_severity"]] == [0, 1, 2, 3, 4, 5]
    # ECE per operator / operator x severity: over the clips (originals and perturbed) of its pairs
    cal = cals[report["calibration"]["default"]]
    for row in report["per_operator"] + report["per_operator_severity"]:
        group = [p for p in test if p["meta"]["operator"] == row["operator"]
                 and ("severity" not in row or p["meta"]["severity"] == row["severity"])]
        clips = clip_records(group)
        assert row["n_pairs"] == len(group)
        assert row["ece"] == pytest.approx(M.ece(cal.transform(np.array([c["z"] for c in clips])),
                                                 np.array([c["label"] for c in clips])))
    means = [r["mean_score"] for r in report["per_severity"]]
    assert means[0] > means[-1]
    for op, row in report["ladder"].items():
        assert row["spearman_defect"] < -0.5 and row["falls_with_defect"] is True
        assert row["n_originals"] == 10
    # 1 original per 10 perturbed clips: a base-rate shift that only maps with a bias can fix
    ct = report["calibration"]["test"]
    assert min(ct["platt"]["ece"], ct["isotonic"]["ece"]) < ct["none"]["ece"]


def test_report_markdown_and_plots(tmp_path):
    from eval.evaluate import build_report, clip_records, make_plots, report_markdown

    val, test = _fake_pairs(6, 0, "val"), _fake_pairs(6, 1, "test")
    report, cals = build_report(val, test, dim="lip_sync", n_boot=20)
    clips = clip_records(test)
    for r in clips:
        r["score"] = float(cals["temperature"].transform([r["z"]])[0])
    plots = make_plots(tmp_path, clips, cals, "temperature")
    assert set(plots) == {"reliability.png", "score_hist.png", "score_vs_severity.png"}
    for p in plots:
        assert (tmp_path / p).stat().st_size > 1000
    md = report_markdown(report, plots)
    for needle in ("pairwise accuracy", "AUC", "ECE", "audio_shift", "Spearman", "isotonic", "platt"):
        assert needle in md


def test_single_class_val_falls_back_to_uncalibrated():
    from eval.evaluate import build_report

    val = [p for p in _fake_pairs(3, 0, "val")]
    for p in val:  # only perturbed clips in val: make every chosen perturbed too
        p["meta"] = dict(p["meta"], chosen_severity=1, chosen_ops=[{"name": "x", "params": {}}])
    report, cals = build_report(val, _fake_pairs(3, 1, "test"), n_boot=10)
    assert report["calibration"]["warning"] and report["calibration"]["default"] == "none"


# ----------------------------------------------------------------------------- align
def test_align_mos_matches_scipy(tmp_path):
    from scipy import stats

    from eval.__main__ import main

    rng = np.random.default_rng(0)
    paths = [f"clips/v{i}.mp4" for i in range(40)]
    s = rng.uniform(0, 1, 40)
    mos = 1 + 4 * s + rng.normal(0, 0.8, 40)
    with open(tmp_path / "scores.jsonl", "w") as fh:
        for p, v in zip(paths, s):
            fh.write(json.dumps({"path": p, "scores": {"lip_sync": float(v)}}) + "\n")
        fh.write(json.dumps({"path": "clips/bad.mp4", "scores": {}, "error": "boom"}) + "\n")
    with open(tmp_path / "ratings.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "rating"])
        for p, r in zip(paths, mos):
            w.writerow([p, r])
    out = tmp_path / "align.json"
    assert main(["align", "--scores", str(tmp_path / "scores.jsonl"), "--ratings",
                 str(tmp_path / "ratings.csv"), "--n-boot", "300", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["kind"] == "mos" and res["n"] == 40 and res["dim"] == "lip_sync"
    assert res["srcc"]["value"] == pytest.approx(stats.spearmanr(s, mos).statistic)
    assert res["plcc"]["value"] == pytest.approx(stats.pearsonr(s, mos).statistic)
    assert res["krcc"]["value"] == pytest.approx(stats.kendalltau(s, mos).statistic)
    for k in ("srcc", "plcc", "krcc"):
        lo, hi = res[k]["ci95"]
        assert lo < res[k]["value"] < hi


def test_align_ab_pairwise_agreement(tmp_path):
    from eval.align import align

    scores = {"a.mp4": 0.9, "b.mp4": 0.2, "c.mp4": 0.5, "d.mp4": 0.5}
    (tmp_path / "s.csv").write_text("path,lip_sync,error\n" + "".join(
        f"/data/{p},{v},\n" for p, v in scores.items()))
    rows = [("a.mp4", "b.mp4", "a"), ("b.mp4", "c.mp4", "a"), ("c.mp4", "a.mp4", "b"),
            ("c.mp4", "d.mp4", "a"), ("a.mp4", "c.mp4", "tie")]
    (tmp_path / "r.csv").write_text("path_a,path_b,preferred\n" + "".join(f"{a},{b},{p}\n" for a, b, p in rows))
    res = align(tmp_path / "s.csv", tmp_path / "r.csv", n_boot=200)  # matched by file name
    assert res["kind"] == "ab" and res["n"] == 4 and res["human_ties"] == 1
    # a>b agrees, b preferred over c disagrees, a preferred over c agrees, c = d is a half
    assert res["pairwise_agreement"]["value"] == pytest.approx((1 + 0 + 1 + 0.5) / 4)


# ----------------------------------------------------------------------------- judge, export, CLI
@pytest.fixture(scope="module")
def media(tmp_path_factory):
    if not (_has("train.model") and _has("train.preprocess")):
        pytest.skip("train/model.py or train/preprocess.py not there yet")
    from tests.eval_fixtures import make_export, make_video

    d = tmp_path_factory.mktemp("eval_media")
    good = make_video(d / "good.mp4", 3.0, seed=0)
    long = make_video(d / "long.mp4", 7.0, seed=1)  # > one 5 s window: two windows
    bad = d / "corrupt.mp4"
    bad.write_bytes(np.random.default_rng(0).bytes(4000))
    exp = make_export(d / "export")
    return {"dir": d, "good": good, "long": long, "bad": bad, "export": exp}


@needs_model
def test_export_then_load_gives_identical_scores(media, tmp_path):
    import torch

    from eval.evaluate import export
    from eval.scorer import Scorer
    from train.model import AVJudge
    from train.preprocess import PreprocessConfig, windows_for

    src = media["export"]
    model = AVJudge.from_pretrained(str(src)).eval()
    cfg = PreprocessConfig.load(src / "preprocessing.json")
    z_val, y_val = synthetic_logits(200, 4, overconfidence=0.3, bias=0.5)
    cal = fit_calibrator("platt", z_val, y_val)
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    cfg.save(run / "model" / "preprocessing.json")
    report = {"dim": "lip_sync", "question": "Is the speech in sync with the lips?",
              "calibration": {"test": {"platt": {"ece": 0.01, "brier": 0.1}}},
              "test": {"n_pairs": 3, "n_clips": 4, "pairwise_accuracy": {"value": 1.0, "ci95": [1, 1]}},
              "window_seconds": cfg.window_seconds}
    out = tmp_path / "exported"
    export(run, out, model, cfg, cal, report, {"recipe": "r", "sources": 3}, {"best": 1})
    for f in ("model.safetensors", "config.json", "preprocessing.json", "calibration.json",
              "README.md", "metrics.json"):
        assert (out / f).is_file(), f
    readme = (out / "README.md").read_text()
    assert 'Scorer.from_pretrained("' in readme and "Is the speech in sync" in readme
    assert json.loads((out / "calibration.json").read_text())["method"] == "platt"

    scorer = Scorer.from_pretrained(out)
    assert scorer.dim == "lip_sync" and scorer.calibrator.method == "platt"
    wins = windows_for(str(media["long"]), cfg)
    with torch.no_grad():
        z = model.decision_logit(torch.stack([w[2]["video"] for w in wins]),
                                 torch.stack([w[2]["audio"] for w in wins])).numpy()
    expected = cal.transform([z.mean()])[0]
    assert scorer.score(media["long"]) == pytest.approx(expected, abs=1e-6)
    ws = scorer.score_windows(media["long"])
    assert [(w["start"], w["end"]) for w in ws] == [(0.0, 5.0), (2.0, 7.0)]
    np.testing.assert_allclose([w["score"] for w in ws], cal.transform(z), atol=1e-6)
    # the same weights loaded twice score identically
    assert Scorer.from_pretrained(out).score_batch([media["good"]]) == scorer.score_batch([media["good"]])


@needs_model
def test_reward_is_differentiable(media):
    import torch

    from eval.scorer import Scorer
    from train.preprocess import windows_for

    for cal in (None, "isotonic"):
        scorer = Scorer.from_pretrained(media["export"])
        if cal == "isotonic":
            z, y = synthetic_logits(300, 0, overconfidence=0.2)
            scorer.calibrator = fit_calibrator("isotonic", z, y)
        inputs = windows_for(str(media["good"]), scorer.cfg)[0][2]
        video = inputs["video"].clone().requires_grad_(True)
        audio = inputs["audio"].clone().requires_grad_(True)
        r = scorer.reward(video, audio)  # unbatched input -> (1,)
        assert r.shape == (1,) and 0 < float(r.detach()) < 1
        r.sum().backward()
        assert video.grad is not None and float(video.grad.abs().sum()) > 0
        assert audio.grad is not None and float(audio.grad.abs().sum()) > 0
        if cal is None:  # reward equals the calibrated score of that window
            assert float(r.detach()) == pytest.approx(scorer.score_windows(media["good"])[0]["score"], abs=1e-5)
    batch = scorer.reward(torch.stack([inputs["video"]] * 2), torch.stack([inputs["audio"]] * 2))
    assert batch.shape == (2,)


@needs_model
def test_cli_score_survives_a_corrupt_file(media, capsys, tmp_path):
    from eval.__main__ import main

    out = tmp_path / "scores.csv"
    rc = main(["score", "--scorer", str(media["export"]), str(media["good"]), str(media["bad"]),
               str(media["long"]), "--out", str(out)])
    assert rc == 0
    captured = capsys.readouterr()
    lines = [json.loads(ln) for ln in captured.out.strip().splitlines()]
    assert len(lines) == 3
    assert [ln["path"] for ln in lines] == [str(media["good"]), str(media["bad"]), str(media["long"])]
    # stderr: what it ran on, then the throughput over the 3 s + 7 s that could be read
    header, summary = [ln for ln in captured.err.splitlines() if ln.startswith("# ")][-2:]
    assert header.startswith("# eval score: lip_sync on ") and "(cpu)" in header and "3 videos" in header
    assert "3 videos, 10.0 s of video in " in summary and "x real time" in summary
    assert "error" in lines[1] and lines[1]["scores"] == {}
    for ln in (lines[0], lines[2]):
        assert "error" not in ln
        assert 0 <= ln["scores"]["lip_sync"] <= 1
    assert "windows" not in lines[0]  # 3 s: one window
    assert len(lines[2]["windows"]["lip_sync"]) == 2  # 7 s with 5 s windows
    rows = list(csv.DictReader(out.open()))
    assert [r["error"] != "" for r in rows] == [False, True, False]
    # every video failing -> exit status 1
    assert main(["score", "--scorer", str(media["export"]), str(media["bad"])]) == 1
    capsys.readouterr()


@needs_model
def test_cli_filter_splits_by_threshold(media, tmp_path, capsys):
    from eval.__main__ import main
    from eval.scorer import Scorer

    scorer = Scorer.from_pretrained(media["export"])
    sg, sl = scorer.score(media["good"]), scorer.score(media["long"])
    assert sg != sl
    thr = (sg + sl) / 2
    src = tmp_path / "src"
    src.mkdir()
    for k in ("good", "long", "bad"):
        os.symlink(media[k], src / media[k].name)
    out = tmp_path / "out"
    assert main(["filter", "--scorer", str(media["export"]), "--min", f"{thr}", str(src),
                 "--out-dir", str(out)]) == 0
    capsys.readouterr()
    kept = [ln.split("\t") for ln in (out / "kept.txt").read_text().splitlines()]
    rejected = [ln.split("\t") for ln in (out / "rejected.txt").read_text().splitlines()]
    hi, lo = ("good", "long") if sg > sl else ("long", "good")
    assert [Path(r[0]).name for r in kept] == [media[hi].name]
    assert sorted(Path(r[0]).name for r in rejected) == sorted([media[lo].name, "corrupt.mp4"])
    assert float(kept[0][1].split("=")[1]) == pytest.approx(max(sg, sl), abs=1e-5)
    assert any(c.startswith("error=") for r in rejected for c in r)


def test_cli_help_is_fast_and_documents_formats():
    res = subprocess.run([sys.executable, "-m", "eval", "align", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    assert "path,rating" in res.stdout and "path_a,path_b,preferred" in res.stdout
    res = subprocess.run([sys.executable, "-c", "import eval, sys; print('torch' in sys.modules)"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "False"


# ----------------------------------------------------------------------------- end to end
@needs_model
@needs_data
def test_evaluate_end_to_end(tmp_path):
    from eval.__main__ import main
    from eval.scorer import Scorer
    from tests.eval_fixtures import make_export
    from tests.train_fixtures import write_fixture_shards

    shards = write_fixture_shards(tmp_path / "shards", sources=4, seconds=2.0, pairs_per_window=2,
                                  splits={"val": 0.5, "test": 0.5})
    run = tmp_path / "run"
    make_export(run / "model")
    (run / "metrics.json").write_text(json.dumps({"best_val_pairwise_accuracy": 0.5}))
    exp, rep = tmp_path / "export", tmp_path / "report"
    rc = main(["evaluate", "--dim", "lip_sync", "--shards", str(shards), "--run", str(run),
               "--export", str(exp), "--report", str(rep), "--n-boot", "50", "--no-progress",
               "--cache-dir", str(tmp_path / "cache"), "--workers", "0"])
    assert rc == 0
    report = json.loads((rep / "report.json").read_text())
    assert (rep / "report.md").is_file() and (rep / "reliability.png").is_file()
    n_val_clips = report["calibration"]["n_val_clips"]
    assert n_val_clips == report["val"]["n_clips"] == 2 + 4  # 2 originals + 2x2 shifted
    cal = json.loads((exp / "calibration.json").read_text())
    assert cal["method"] == "platt" and cal["fitted_on"] == "val" and cal["n"] == n_val_clips
    assert report["test"]["n_pairs"] == 4
    for m in ("none", "temperature", "platt", "isotonic"):
        assert m in report["calibration"]["test"]
    scorer = Scorer.from_pretrained(exp)
    assert scorer.calibrator.method == "platt"
    assert "eval_data_card" not in json.loads((exp / "metrics.json").read_text())  # trained and tested on one build


def test_evaluate_whole_clips_scores_each_pair_clip_as_eval_score_does(tmp_path):
    """--whole-clips: a 2 s pair clip judged by a 0.8 s judge gets the clip logit `eval score` gives
    the same file (its windows, one decision), not its first window's; calibration is fitted
    on those clip logits."""
    import tarfile

    from eval.__main__ import main
    from eval.scorer import Scorer
    from tests.eval_fixtures import make_export
    from tests.train_fixtures import write_fixture_shards

    shards = write_fixture_shards(tmp_path / "shards", sources=4, seconds=2.0, pairs_per_window=2,
                                  splits={"val": 0.5, "test": 0.5})
    run = tmp_path / "run"
    make_export(run / "model", window_seconds=0.8, use_pooled=True)  # pooled: the clip logit is the windows' mean
    train_card = {"dim": "lip_sync", "recipe": "lip_sync", "window_seconds": 0.8, "command": "the training build"}
    (run / "metrics.json").write_text(json.dumps({"data_card": train_card}))
    rep = {mode: tmp_path / f"report_{mode}" for mode in ("whole", "window")}
    for mode, flags in (("whole", ["--whole-clips"]), ("window", ["--cache-dir", str(tmp_path / "cache")])):
        assert main(["evaluate", "--dim", "lip_sync", "--shards", str(shards), "--run", str(run), "--export",
                     str(tmp_path / f"export_{mode}"), "--report", str(rep[mode]), "--n-boot", "20",
                     "--no-progress", "--workers", "0", *flags]) == 0
    report = json.loads((rep["whole"] / "report.json").read_text())
    assert report["whole_clips"] is True and report["test"]["n_pairs"] == 4
    scorer = Scorer.from_pretrained(run / "model")
    with tarfile.open(shards / "test-000000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    whole = [json.loads(line) for line in (rep["whole"] / "scores_test.jsonl").read_text().splitlines()]
    window = {r["meta"]["key"]: r for r in (json.loads(line) for line in
                                            (rep["window"] / "scores_test.jsonl").read_text().splitlines())}
    differs = 0
    for r in whole:
        for side in ("chosen", "rejected"):
            clip = tmp_path / f"{side}.mp4"
            clip.write_bytes(members[f"{r['meta']['key']}.{side}.mp4"])
            rec = scorer.score_file(clip)
            assert len(rec["windows"]) >= 2
            assert r[f"z_{side}"] == pytest.approx(rec["logit"], abs=1e-4)
            differs += abs(r[f"z_{side}"] - window[r["meta"]["key"]][f"z_{side}"]) > 1e-3
    assert differs  # the window mode judged the first 0.8 s only
    cal = json.loads((tmp_path / "export_whole" / "calibration.json").read_text())
    assert cal["fitted_on"] == "val" and cal["n"] == report["calibration"]["n_val_clips"]
    # the export says what the judge was trained on, and that its test pairs came from another build
    metrics = json.loads((tmp_path / "export_whole" / "metrics.json").read_text())
    assert metrics["data_card"] == train_card
    assert metrics["eval_data_card"] == json.loads((shards / "card.json").read_text())
    readme = (tmp_path / "export_whole" / "README.md").read_text()
    assert readme.index("`the training build`") < readme.index("## Evaluation data") < readme.index("scored whole")


# ----------------------------------------------------------------------------- status, offset, clip decision

def _silent_copy(src: Path, out: Path) -> Path:
    from perturb.media import run_ffmpeg

    run_ffmpeg(["-y", "-i", str(src), "-an", "-c:v", "copy", str(out)])
    return out


@needs_model
def test_status_says_when_the_judge_cannot_judge(media, tmp_path, capsys):
    """no audio stream -> no_audio; 0.3 s -> too_short; a face judge on a faceless picture -> no_face;
    filter drops those unless --keep-status names them."""
    from eval.__main__ import main
    from eval.scorer import Scorer
    from tests.eval_fixtures import make_export, make_video

    full = Scorer.from_pretrained(media["export"])              # crop "full": needs no face
    assert full.score_file(media["good"])["status"] == "ok"
    silent = _silent_copy(media["good"], tmp_path / "silent.mp4")
    assert full.score_file(silent)["status"] == "no_audio"
    short = make_video(tmp_path / "short.mp4", 0.3, seed=2)
    assert full.score_file(short)["status"] == "too_short"
    mouth = make_export(tmp_path / "mouth_export", crop="mouth")  # the fixture picture has no face
    assert Scorer.from_pretrained(mouth).score_file(media["good"])["status"] == "no_face"

    src = tmp_path / "src"
    src.mkdir()
    for p in (media["good"], silent, short):
        os.symlink(p, src / p.name)
    out = tmp_path / "out"
    assert main(["filter", "--scorer", str(media["export"]), "--min", "0", str(src), "--out-dir", str(out)]) == 0
    kept = sorted(Path(ln.split("\t")[0]).name for ln in (out / "kept.txt").read_text().splitlines())
    rejected = (out / "rejected.txt").read_text()
    assert kept == ["good.mp4"] and "status=no_audio" in rejected and "status=too_short" in rejected
    assert main(["filter", "--scorer", str(media["export"]), "--min", "0", "--keep-status", "no_audio",
                 str(src), "--out-dir", str(out)]) == 0
    kept = sorted(Path(ln.split("\t")[0]).name for ln in (out / "kept.txt").read_text().splitlines())
    assert kept == ["good.mp4", "silent.mp4"]
    capsys.readouterr()


@needs_model
def test_clip_decision_and_offset_read_the_evidence_of_all_windows(media, tmp_path, monkeypatch):
    """Window profiles are averaged, the head decides on the mean profile, and the mean profile's
    peak is the offset (40 ms per frame at 25 fps) with its height over the median as confidence."""
    import torch

    from eval.scorer import Scorer
    from tests.eval_fixtures import make_export

    exp = make_export(tmp_path / "profile_export", use_pooled=False, head="monotone")
    scorer = Scorer.from_pretrained(exp)
    k = scorer.model.config.max_offset_frames                   # 2: offsets -2..2
    prof = np.zeros((3, 1, 2 * k + 1))
    prof[0, 0] = [0.0, 0.1, 0.2, 0.9, 0.0]                      # a clear peak at +1 frame
    prof[1, 0] = [0.1, 0.1, 0.1, 0.1, 0.1]                      # a quiet window: no evidence
    prof[2, 0] = [0.0, 0.0, 0.3, 0.4, 0.0]
    monkeypatch.setattr(scorer, "outputs", lambda inputs: (np.array([-3.0, 0.0, 1.0]), prof))
    wins = [(0.0, 5.0, {}, {"has_audio": True, "frames": 125, "audio_s": 5.0})] * 3
    rec = scorer.score_file("unused.mp4", windows=wins)
    mean = prof.mean(axis=0)
    assert rec["offset_ms"] == pytest.approx(40.0)
    assert rec["offset_confidence"] == pytest.approx(mean[0].max() - np.median(mean[0]))
    with torch.no_grad():
        z = float(scorer.model.decision_from_profile(torch.tensor(mean[None], dtype=torch.float32))[0])
    assert rec["logit"] == pytest.approx(z, abs=1e-6) and rec["logit"] != pytest.approx(np.mean([-3.0, 0.0, 1.0]))
    assert rec["score"] == pytest.approx(float(scorer.calibrate([z])[0]))


# ----------------------------------------------------------------------------- scoring speed paths
@needs_model
def test_windows_from_one_streamed_decode_equal_per_window_decodes(media, monkeypatch):
    """windows_for decodes the picture once and cuts the windows out of the stream: each window holds
    the frames a decode of that window alone gives (same count, same pixels) and the same sound."""
    import train.preprocess as pre

    cfg = pre.PreprocessConfig(window_seconds=2.0, crop="full", crop_size=(16, 16))
    seen = []

    def keep(frames, audio, cfg, return_info=False, faces=None, max_faces=1):
        seen.append((frames.copy(), np.asarray(audio).copy()))
        return {"video": None, "audio": None}, {}

    monkeypatch.setattr(pre, "make_inputs", keep)
    # 7 s: overlapping windows every 1.6 s (40 frames); windows every 2 s then a tail window ending at
    # the end; windows every 2.4 s (the frames between them are read past)
    for hop, expected in ((1.6, [0.0, 1.6, 3.2, 4.8]), (2.0, [0.0, 2.0, 4.0, 5.0]), (2.4, [0.0, 2.4, 4.8])):
        seen.clear()
        wins = pre.windows_for(str(media["long"]), cfg, hop_seconds=hop, return_info=True)
        assert [w[0] for w in wins] == expected
        for s, (frames, audio), w in zip(expected, seen, wins):
            alone_f, alone_a = pre.load_media(str(media["long"]), cfg, start=s, duration=2.0)
            assert frames.shape == alone_f.shape and w[3]["frames"] == len(alone_f)
            assert np.array_equal(frames, alone_f)
            n = min(len(audio), len(alone_a))
            assert abs(len(audio) - len(alone_a)) <= 16   # within 1 ms at 16 kHz
            # a decode that starts mid-stream re-primes the AAC decoder: compare beyond its first frame
            assert np.abs(audio[2048:n] - alone_a[2048:n]).max() < 1e-3


def test_frame_stream_reads_the_frames_of_one_decode_into_the_callers_arrays(media):
    """FrameStream.read_into, in chunks of any size, gives the frames of a whole-file decode (one
    frame per 1/fps, a short count only at the end); a file ffmpeg cannot read raises MediaError;
    closing early stops ffmpeg."""
    from perturb.media import FrameStream, MediaError, probe, run_ffmpeg, stream_frames

    path = str(media["long"])
    info = probe(path)
    w, h = info.width // 2, info.height // 2
    raw = run_ffmpeg(["-i", path, "-map", "0:v:0", "-vf", f"fps=25,scale={w}:{h}:flags=area",
                      "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
    whole = np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)
    assert len(whole) == 175                                   # 7 s at 25 fps
    with FrameStream(path, w, h, 25) as stream:
        got, chunks = [], [1, 7, 0, 50, 200, 3]
        for n in chunks:
            block = np.zeros((n, h, w, 3), np.uint8)
            k = stream.read_into(block)
            got.append(block[:k])
        assert [len(g) for g in got] == [1, 7, 0, 50, 117, 0]
    assert np.array_equal(np.concatenate(got), whole)
    assert np.array_equal(np.stack(list(stream_frames(path, w, h, 25))), whole)
    with FrameStream(path, w, h, 25) as stream, pytest.raises(ValueError, match="C-contiguous"):
        stream.read_into(np.zeros((2, h, w + 1, 3), np.uint8))
    with pytest.raises(MediaError):
        with FrameStream(str(media["bad"]), w, h, 25) as stream:
            stream.read_into(np.zeros((4, h, w, 3), np.uint8))
    stream = FrameStream(path, w, h, 25)
    stream.read_into(np.zeros((2, h, w, 3), np.uint8))
    stream.close()
    assert stream._proc.returncode is not None                 # ffmpeg is gone, not left decoding


def test_probe_and_decode_audio_in_one_run_equal_probe_and_decode_audio(media, tmp_path):
    """One ffmpeg run gives what probe() and decode_audio() give apart; no audio stream -> None;
    a file ffmpeg cannot read -> MediaError."""
    from perturb.media import MediaError, decode_audio, probe, probe_and_decode_audio, run_ffmpeg

    path = str(media["long"])
    info, audio = probe_and_decode_audio(path, 16000)
    assert info == probe(path) and info.has_audio and info.duration == pytest.approx(7.0, abs=0.1)
    assert np.array_equal(audio, decode_audio(path, 16000))
    info, span = probe_and_decode_audio(path, 16000, start=2.5, duration=2.0)   # a window's span
    assert info == probe(path) and np.array_equal(span, decode_audio(path, 16000, start=2.5, duration=2.0))
    assert len(span) == pytest.approx(2.0 * 16000, abs=16)
    silent = tmp_path / "silent.mp4"
    run_ffmpeg(["-i", path, "-an", "-c:v", "copy", str(silent)])
    info, audio = probe_and_decode_audio(silent, 16000)
    assert audio is None and info == probe(silent) and info.has_video and not info.has_audio
    with pytest.raises(MediaError):
        probe_and_decode_audio(media["bad"], 16000)


@needs_model
def test_ab_score_compares_a_revision_with_this_checkout(media, capsys):
    """bench/ab_score.py scores the same videos from a git worktree of a revision and from this
    checkout and says whether the records agree (HEAD against the tree: the same code path)."""
    root = Path(__file__).resolve().parents[1]
    if subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    sys.path.insert(0, str(root / "bench"))
    try:
        import ab_score
    finally:
        sys.path.remove(str(root / "bench"))
    assert ab_score.main(["--rev", "HEAD", "--scorer", str(media["export"]), "--rounds", "1",
                          str(media["good"]), str(media["long"])]) == 0
    out = capsys.readouterr().out
    assert "| HEAD |" in out and "| this checkout |" in out and "records identical: True" in out
    worktrees = subprocess.run(["git", "-C", str(root), "worktree", "list"], capture_output=True, text=True).stdout
    assert "avbench_ab_" not in worktrees                     # the temporary worktree is removed


@needs_model
def test_several_configs_share_one_decode_and_one_face_search_per_window(media, monkeypatch):
    """windows_for_configs gives each config the windows windows_for gives it alone, from one decode
    of the picture and of the sound; configs that find the face the same way search it once per window."""
    import train.preprocess as pre

    haar = pre.PreprocessConfig(window_seconds=2.0, crop="face", crop_size=(16, 16), face_detector="haar")
    haar_sound = pre.PreprocessConfig(window_seconds=2.0, crop="mouth", crop_size=(8, 12), face_detector="haar",
                                      audio_norm="global", n_mels=32)     # same face search, other inputs
    haar_strict = pre.PreprocessConfig(window_seconds=2.0, crop="face", crop_size=(16, 16), face_detector="haar",
                                       detect_min_neighbors=6)            # another face search
    cfgs = [haar, haar_sound, haar_strict]
    path = str(media["long"])
    alone = [pre.windows_for(path, c, return_info=True) for c in cfgs]
    calls = {"FrameStream": 0, "probe_and_decode_audio": 0, "_find_face": 0}
    for name in calls:
        real = getattr(pre, name)

        def counted(*a, _real=real, _name=name, **k):
            calls[_name] += 1
            return _real(*a, **k)
        monkeypatch.setattr(pre, name, counted)
    together = pre.windows_for_configs(path, cfgs, return_info=True)
    n_windows = len(alone[0])
    assert n_windows == 4 and calls["FrameStream"] == 1 and calls["probe_and_decode_audio"] == 1
    assert calls["_find_face"] == 2 * n_windows
    for mine, ref in zip(together, alone):
        assert [w[:2] for w in mine] == [w[:2] for w in ref]
        for (_, _, x, info), (_, _, y, ref_info) in zip(mine, ref):
            assert info == ref_info
            assert all(torch_equal(x[k], y[k]) for k in ("video", "audio"))
    assert together[1][0][2]["audio"].shape[0] == 32 and together[1][0][2]["video"].shape[-2:] == (8, 12)
    with pytest.raises(ValueError, match="same fps"):
        pre.windows_for_configs(path, [haar, pre.PreprocessConfig(window_seconds=2.0, fps=10)])


def test_score_header_says_which_engine_ran_facemesh(monkeypatch):
    from types import SimpleNamespace

    from eval.cli import _landmark_note

    haar, mesh = (SimpleNamespace(cfg=SimpleNamespace(face_detector=d)) for d in ("haar", "mediapipe"))
    assert _landmark_note([haar]) == ""
    for runtime in ("litert", "mediapipe"):
        monkeypatch.setenv("AVBENCH_FACEMESH", runtime)
        assert _landmark_note([haar, mesh]) == f", FaceMesh on {runtime}"
    monkeypatch.setenv("AVBENCH_FACEMESH", "dlib")
    with pytest.raises(ValueError, match="AVBENCH_FACEMESH"):
        _landmark_note([mesh])


def torch_equal(a, b) -> bool:
    return tuple(a.shape) == tuple(b.shape) and bool((a == b).all())


@needs_model
def test_judges_scoring_one_file_together_score_it_as_alone(media, monkeypatch):
    """score_video with several judges (same windows, other configs; another frame rate) gives each the
    record it gets alone, with one decode per window geometry."""
    import copy

    import train.preprocess as pre
    from eval.cli import load_scorers, score_video

    base = load_scorers([str(media["export"])])[0]
    other_sound = copy.copy(base)
    other_sound.cfg = pre.PreprocessConfig.from_dict({**base.cfg.to_dict(), "audio_norm": "global"})
    other_sound.dim = "lip_sync_2"
    other_rate = copy.copy(base)
    other_rate.cfg = pre.PreprocessConfig.from_dict({**base.cfg.to_dict(), "fps": 20})
    other_rate.dim = "lip_sync_3"
    path = str(media["long"])
    alone = {s.dim: score_video([s], path) for s in (base, other_sound, other_rate)}
    decodes = []
    real = pre.FrameStream
    monkeypatch.setattr(pre, "FrameStream", lambda *a, **k: decodes.append(a[3]) or real(*a, **k))
    together = score_video([base, other_sound, other_rate], path, always_windows=True)
    assert sorted(decodes) == [20, 25]                     # one decode per frame rate
    for dim, rec in alone.items():
        assert together["scores"][dim] == pytest.approx(rec["scores"][dim], abs=1e-6)
        assert together["status"][dim] == rec["status"][dim]


@needs_model
def test_score_records_do_not_depend_on_the_number_of_workers(media):
    """Files spread over worker processes come back in input order with the scores, windows and
    error records of one process."""
    from eval.cli import load_scorers, score_videos

    scorers = load_scorers([str(media["export"])])
    paths = [str(media[k]) for k in ("long", "bad", "good")]
    one = list(score_videos(scorers, paths, workers=1))
    two = list(score_videos(scorers, paths, workers=2))
    assert [r["path"] for r in two] == paths
    assert ["error" in r for r in two] == ["error" in r for r in one] == [False, True, False]
    for a, b in zip(one, two):
        assert a.keys() == b.keys() and a["status"] == b["status"]
        assert b["scores"] == pytest.approx(a["scores"], abs=1e-6)
    assert [w["score"] for w in two[0]["windows"]["lip_sync"]] == pytest.approx(
        [w["score"] for w in one[0]["windows"]["lip_sync"]], abs=1e-6)


def _affinity_after_worker_start(next_core, out) -> None:
    from eval import cli

    cli._WORKER_JOB["scorers"] = ["loaded"]      # as a forked worker inherits them: nothing to load
    cli._worker_start([], 8, False, (), next_core)
    out.put(sorted(os.sched_getaffinity(0)))


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_each_scoring_worker_is_pinned_to_its_own_core():
    """With one worker per core, worker k runs on the k-th usable core only (its ffmpeg children
    inherit it), so the workers together cover every core once."""
    import multiprocessing

    cores = sorted(os.sched_getaffinity(0))
    ctx = multiprocessing.get_context("fork")
    next_core, out = ctx.Value("i", 0), ctx.Queue()
    workers = [ctx.Process(target=_affinity_after_worker_start, args=(next_core, out)) for _ in cores]
    for w in workers:
        w.start()
    got = sorted(out.get(timeout=60) for _ in workers)
    for w in workers:
        w.join(timeout=60)
    assert got == [[c] for c in cores]
    assert sorted(os.sched_getaffinity(0)) == cores   # this process is left as it was


_SCORE_AFTER_MEDIAPIPE = """
import json, sys
import numpy as np
from eval.cli import load_scorers, score_videos
from train.landmarks import face_landmarks, used_in_this_process

if __name__ == "__main__":
    face_landmarks(np.full((3, 64, 64, 3), 128, np.uint8))  # MediaPipe has run in this process
    assert used_in_this_process()
    print(json.dumps(list(score_videos(load_scorers([sys.argv[1]]), sys.argv[2:], workers=2))))
"""


@needs_model
def test_workers_are_spawned_once_mediapipe_has_run_here(media):
    """A process forked after MediaPipe's first graph hangs in its own: score_videos spawns its
    workers then (they load the judges from the export) and the records are the same."""
    pytest.importorskip("mediapipe")
    from eval.cli import load_scorers, score_videos

    paths = [str(media["good"]), str(media["long"])]
    out = subprocess.run([sys.executable, "-c", _SCORE_AFTER_MEDIAPIPE, str(media["export"]), *paths],
                         capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={**os.environ, "AVBENCH_FACEMESH": "mediapipe"})  # LiteRT survives a fork
    assert out.returncode == 0, out.stderr[-2000:]
    spawned = json.loads(out.stdout)
    here = list(score_videos(load_scorers([str(media["export"])]), paths, workers=1))
    assert [r["path"] for r in spawned] == paths
    for a, b in zip(here, spawned):
        assert "error" not in b and b["scores"] == pytest.approx(a["scores"], abs=1e-6)
