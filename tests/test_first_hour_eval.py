"""eval/: scores calibrated to a stated prior, a filter threshold that means "equally likely", every
output field under the same name in JSON and Python, a summary line per file, honest small-sample
reports (Wilson intervals, warnings, a remark on the calibrator)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from eval import metrics as M
from eval.calibration import METHODS, Calibrator, fit_calibrator, load_calibrator


def prior_weights(y, prior):
    from eval.calibration import prior_weights as weights  # imported here: each test fails on its own

    return weights(y, prior)


def _has(module: str) -> bool:
    try:
        __import__(module)
        return True
    except Exception:
        return False


needs_model = pytest.mark.skipif(not (_has("train.model") and _has("train.preprocess")),
                                 reason="train.model / train.preprocess not importable")


def imbalanced_logits(n_pos: int = 200, n_neg: int = 1000, seed: int = 0, offset: float = -3.0):
    """A judge whose logits for "yes" clips are N(1.5 + offset, 1) and for "no" clips N(-1.5 + offset, 1):
    the two classes are equally likely at z = offset, where a 50/50 calibration must give 0.5.
    The offset stands for the arbitrary level of a Bradley-Terry reward."""
    rng = np.random.default_rng(seed)
    z = np.concatenate([rng.normal(1.5, 1, n_pos), rng.normal(-1.5, 1, n_neg)]) + offset
    y = np.concatenate([np.ones(n_pos), np.zeros(n_neg)])
    return z, y


# ----------------------------------------------------------------------------- calibration at a prior
@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_a_50_50_calibration_puts_0_5_where_the_classes_are_equally_likely(method):
    """1 "yes" clip in 6 (val's share of untouched clips): fitted at prior 0.5 the map crosses 0.5 at the
    logit where both classes are equally likely, so as many "yes" clips pass 0.5 as "no" clips fail it;
    fitted at the sample's own balance it sends most "yes" clips below 0.5."""
    z, y = imbalanced_logits()
    cal = fit_calibrator(method, z, y, prior=0.5)
    assert cal.prior == 0.5
    crossing = z[np.argmin(np.abs(cal.transform(z) - 0.5))]
    assert abs(crossing - (-3.0)) < 0.5
    zt, yt = imbalanced_logits(seed=1)
    p = cal.transform(zt)
    passed, failed = np.mean(p[yt == 1] >= 0.5), np.mean(p[yt == 0] < 0.5)
    assert passed > 0.9 and failed > 0.9
    natural = fit_calibrator(method, z, y)  # prior None: the sample's own share of "yes"
    assert natural.prior is None
    assert np.mean(natural.transform(zt)[yt == 1] >= 0.5) < passed - 0.05


def test_prior_weights_give_each_class_its_share():
    y = np.array([1, 0, 0, 0, 0, 0])
    w = prior_weights(y, 0.5)
    assert w[y == 1].sum() == pytest.approx(w[y == 0].sum()) and w.mean() == pytest.approx(1.0)
    assert w[y == 1].sum() / w.sum() == pytest.approx(0.5)
    assert prior_weights(y, 0.2)[0] / len(y) == pytest.approx(0.2)
    assert np.all(prior_weights(y, None) == 1) and np.all(prior_weights(np.ones(4), 0.5) == 1)


def test_the_prior_is_kept_in_calibration_json_and_old_files_still_load(tmp_path):
    z, y = imbalanced_logits()
    for method in METHODS:
        cal = fit_calibrator(method, z, y, prior=0.5)
        cal.save(tmp_path / "calibration.json")
        d = json.loads((tmp_path / "calibration.json").read_text())
        assert d["prior"] == 0.5
        again = load_calibrator(tmp_path / "calibration.json")
        assert again.prior == 0.5
        np.testing.assert_allclose(again.transform(z), cal.transform(z))
    old = {"method": "temperature", "params": {"temperature": 2.0}, "fitted_on": "val", "n": 10}
    assert Calibrator.from_dict(old).prior is None
    for bad in (0.0, 1.0, 1.5, -0.1, "0.5", True, float("nan")):
        with pytest.raises(ValueError, match="prior"):
            Calibrator.from_dict({**old, "prior": bad})


def test_platt_is_the_default_because_temperature_cannot_move_its_0_5_point():
    from eval.calibration import DEFAULT_METHOD

    z, y = imbalanced_logits()
    temp = fit_calibrator("temperature", z, y, prior=0.5)
    assert temp.transform([0.0])[0] == pytest.approx(0.5)  # sigmoid(z / T) is 0.5 at z = 0, whatever T
    assert DEFAULT_METHOD == "platt"


# ----------------------------------------------------------------------------- metrics
def test_weighted_metrics_equal_the_metrics_of_the_reweighted_sample():
    rng = np.random.default_rng(0)
    p, y = rng.uniform(0, 1, 50), rng.integers(0, 2, 50).astype(float)
    w = rng.integers(1, 4, 50)
    rep = np.repeat(np.arange(50), w)
    for f in (M.ece, M.brier, M.nll, M.accuracy):
        assert f(p, y, w=w) == pytest.approx(f(p[rep], y[rep]))


def test_intervals_stay_open_at_100_percent():
    lo, hi = M.wilson(20, 20)
    assert hi == 1.0 and 0.8 < lo < 0.86
    lo, hi = M.wilson(0, 20)
    assert lo == 0.0 and 0.14 < hi < 0.2
    pa = M.pairwise_accuracy_with_ci(np.ones(20), np.zeros(20))
    assert pa["value"] == 1.0 and pa["ci95"][0] < 0.86 and pa["ci95"][1] == 1.0
    auc = M.auc_with_ci(np.r_[np.ones(8), np.zeros(8)], np.r_[np.ones(8), np.zeros(8)], n_boot=50)
    assert auc["value"] == 1.0 and auc["ci95"][0] < 0.8
    acc = M.accuracy_with_ci(np.r_[np.ones(8), np.zeros(2)], np.r_[np.ones(8), np.zeros(2)],
                             w=prior_weights(np.r_[np.ones(8), np.zeros(2)], 0.5))
    assert acc["value"] == 1.0 and acc["ci95"][0] < 0.8  # the effective n of 10 reweighted clips is < 10


# ----------------------------------------------------------------------------- the report
def _pairs(n_sources: int, split: str, seed: int, offset: float = -3.0, perturbed: int = 5):
    """Scored pairs of a judge with an arbitrary logit level `offset`: each source's original
    (~N(1.5, 1) + offset) against `perturbed` audio_shift copies (~N(-1.5, 1) + offset)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for s in range(n_sources):
        z_orig = 1.5 + rng.normal() + offset
        for sev in range(1, perturbed + 1):
            meta = {"source_id": f"{split}{s}", "window": [0.0, 2.0], "kind": "original_vs_perturbed",
                    "severity": sev, "chosen_severity": 0, "ops": [{"name": "audio_shift", "params": {"k": sev}}],
                    "chosen_ops": [], "operator": "audio_shift", "defect": 80.0 * sev, "chosen_defect": 0.0}
            pairs.append({"meta": meta, "z_chosen": z_orig, "z_rejected": -1.5 + rng.normal() + offset})
    return pairs


def test_report_is_calibrated_and_measured_at_the_stated_prior():
    from eval.evaluate import build_report, clip_records

    val, test = _pairs(60, "val", 0), _pairs(60, "test", 1)
    report, cals = build_report(val, test, dim="lip_sync", n_boot=50)
    cal = report["calibration"]
    assert cal["prior"] == 0.5 and cal["default"] == "platt" and cals["platt"].prior == 0.5
    clips = clip_records(test)
    z = np.array([c["z"] for c in clips])
    y = np.array([c["label"] for c in clips])
    p = cals["platt"].transform(z)
    w = prior_weights(y, 0.5)
    assert cal["test"]["platt"]["ece"] == pytest.approx(M.ece(p, y, w=w))
    assert cal["test"]["platt"]["brier"] == pytest.approx(M.brier(p, y, w=w))
    # untouched clips pass 0.5 as often as perturbed ones fail it (1 original in 6, an arbitrary logit level)
    passed = np.mean(p[y == 1] >= 0.5)
    assert passed > 0.85 and np.mean(p[y == 0] < 0.5) > 0.85
    assert report["test"]["accuracy_at_0.5"]["value"] == pytest.approx(M.accuracy(p, y, w=w))
    assert report["warnings"] == []  # 300 pairs, 60 untouched clips
    # at the pairs' own prior (the old behaviour) the same judge sends more originals below 0.5
    _, natural = build_report(val, test, dim="lip_sync", n_boot=20, prior=None)
    assert np.mean(natural["platt"].transform(z)[y == 1] >= 0.5) < passed - 0.05


def test_small_tests_warn_and_the_card_says_so():
    from eval.evaluate import build_report, model_card, report_markdown

    report, cals = build_report(_pairs(20, "val", 0), _pairs(4, "test", 1), dim="lip_sync", n_boot=20)
    warnings = report["warnings"]
    assert any("20 pairs (< 50)" in w for w in warnings) and any("4 untouched clips (< 10)" in w for w in warnings)
    md = report_markdown(report, [])
    card = model_card("lip_sync", "Is the speech in sync with the lips?", report, None, "exports/x", cals["platt"])
    for text in (md, card):
        assert all(w in text for w in warnings)
        assert "prior P(yes) = 0.5" in text


def test_a_better_calibrator_on_val_is_remarked():
    """Temperature cannot correct an arbitrary logit level; cross-validated on val, Platt beats it,
    and the report says so when temperature is exported."""
    from eval.evaluate import build_report, calibration_remark, cross_validated_nll, report_markdown

    val = _pairs(30, "val", 0)
    report, _ = build_report(val, _pairs(30, "test", 1), dim="lip_sync", n_boot=20, default_method="temperature")
    cv = report["calibration"]["val_cv_nll"]
    assert set(cv) == set(METHODS) and cv["platt"] < cv["temperature"]
    remark = report["calibration"]["remark"]
    assert remark and "platt" in remark and "--calibration platt" in remark
    assert remark in report_markdown(report, [])
    assert calibration_remark(cv, min(cv, key=cv.get)) is None
    from eval.evaluate import clip_records

    assert cross_validated_nll(clip_records(_pairs(1, "val", 0))) is None  # one source: nothing to cross


# ----------------------------------------------------------------------------- the command line
def test_filter_documents_its_default_threshold_and_evaluate_takes_a_prior():
    from eval.__main__ import build_parser
    from eval.cli import DEFAULT_MIN, parse_min

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "cmd").choices
    text = " ".join(sub["filter"].format_help().split())
    assert "Default 0.5" in text and "equally likely" in text
    assert parse_min(None, ["lip_sync"]) == {"lip_sync": DEFAULT_MIN} and DEFAULT_MIN == 0.5
    args = parser.parse_args(["evaluate", "--dim", "d", "--shards", "s", "--run", "r", "--export", "e",
                              "--report", "p", "--prior", "0.3"])
    assert args.prior == 0.3 and args.calibration == "platt"
    assert parser.parse_args(["evaluate", "--dim", "d", "--shards", "s", "--run", "r", "--export", "e",
                              "--report", "p"]).prior == 0.5
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "--dim", "d", "--shards", "s", "--run", "r", "--export", "e",
                           "--report", "p", "--prior", "1.5"])


def test_summary_line_reads_like_a_sentence():
    from eval.cli import summary_line

    rec = {"path": "a.mp4", "scores": {"lip_sync": 0.0213}, "status": {"lip_sync": "ok"},
           "offset": {"lip_sync": {"ms": 520.0, "confidence": 0.0812}}}
    assert summary_line(rec) == "a.mp4: lip_sync: audio lags by 520 ms (confidence 0.08), P(yes) 0.02"
    rec = {"path": "b.mp4", "scores": {"lip_sync": 0.9, "video_quality": 0.4},
           "status": {"lip_sync": "ok", "video_quality": "no_face"},
           "offset": {"lip_sync": {"ms": -80.0, "confidence": 0.3}}}
    assert summary_line(rec) == ("b.mp4: lip_sync: audio leads by 80 ms (confidence 0.30), P(yes) 0.90; "
                                 "video_quality: status no_face, P(yes) 0.40")
    rec = {"path": "c.mp4", "scores": {"lip_sync": 0.7}, "status": {"lip_sync": "ok"},
           "offset": {"lip_sync": {"ms": 0.0, "confidence": 0.2}}}
    assert "no audio offset" in summary_line(rec)
    assert summary_line({"path": "d.mp4", "scores": {}, "status": {"lip_sync": "unreadable"},
                         "error": "MediaError: unreadable media"}) == "d.mp4: error: MediaError: unreadable media"


def test_exports_without_a_prior_are_flagged():
    from types import SimpleNamespace

    from eval.calibration import PlattScaling
    from eval.cli import prior_warnings

    old = SimpleNamespace(dim="lip_sync", path="exports/old", calibrator=load_calibrator(
        {"method": "temperature", "params": {"temperature": 2.0}}))
    new = SimpleNamespace(dim="lip_sync", path="exports/new",
                          calibrator=PlattScaling().fit(*imbalanced_logits(), prior=0.5))
    lines = prior_warnings([old, new])
    assert len(lines) == 1 and "exports/old" in lines[0] and "\n" not in lines[0]


# ----------------------------------------------------------------------------- same names in Python and JSON
@needs_model
@pytest.mark.parametrize("timing", [True, False])
def test_python_and_json_records_share_field_names(tmp_path, monkeypatch, timing):
    """Scorer.score_file gives one judge's part of the `eval score` record under the same names;
    "offset" only for a judge that estimates timing (a pooled judge without the sync loss does not)."""
    from eval import cli
    from eval.scorer import Scorer
    from tests.eval_fixtures import make_export

    model = dict(use_pooled=False, head="monotone") if timing else dict(use_pooled=True)
    scorer = Scorer.from_pretrained(make_export(tmp_path / "export", **model))
    assert scorer.estimates_timing is timing
    k = scorer.model.config.max_offset_frames
    prof = np.zeros((2, 1, 2 * k + 1))
    prof[:, 0, k + 1] = 0.9  # a peak at +1 frame: the audio lags by 40 ms
    monkeypatch.setattr(scorer, "outputs", lambda inputs: (np.array([0.5, 1.0]), prof))
    wins = [(0.0, 5.0, {}, {"has_audio": True, "frames": 125, "audio_s": 5.0})] * 2
    rec = scorer.score_file("v.mp4", windows=wins)
    monkeypatch.setattr(cli, "_windows_of_all", lambda scorers, path, ahead=None: {cli._cfg_key(scorer.cfg): wins})
    line = json.loads(json.dumps(cli.score_video([scorer], "v.mp4")))
    dim = scorer.dim
    assert line["scores"][dim] == rec["score"] and line["status"][dim] == rec["status"]
    assert line["windows"][dim] == rec["windows"]
    if timing:
        assert rec["offset"] == {"ms": 40.0, "confidence": pytest.approx(0.9 - np.median(prof[0, 0]))}
        assert line["offset"][dim]["ms"] == rec["offset"]["ms"]
        assert line["offset"][dim]["confidence"] == round(rec["offset"]["confidence"], 4)
    else:
        assert "offset" not in rec and "offset" not in line


@needs_model
def test_score_prints_one_summary_line_per_file_on_stderr_and_only_json_on_stdout(tmp_path, capsys):
    from eval.__main__ import main
    from tests.eval_fixtures import make_export, make_video

    exp = make_export(tmp_path / "export", window_seconds=1.0, use_pooled=False, head="monotone")
    videos = [str(make_video(tmp_path / f"v{i}.mp4", 1.2, seed=i)) for i in range(2)]
    assert main(["score", "--scorer", str(exp), *videos, "--workers", "1"]) == 0
    out, err = capsys.readouterr()
    records = [json.loads(ln) for ln in out.splitlines()]  # every stdout line is JSON
    assert [r["path"] for r in records] == videos
    for r in records:
        line = next(ln for ln in err.splitlines() if ln.startswith(r["path"] + ": "))
        assert f"P(yes) {r['scores']['lip_sync']:.2f}" in line and "confidence" in line
    assert "has no calibration prior" in err  # the fixture's calibration.json states none
    assert not math.isnan(records[0]["scores"]["lip_sync"])


# ----------------------------------------------------------------------------- the measurement
def test_sync_offsets_counts_what_filter_keeps_and_rejects():
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "bench"))
    try:
        import sync_offsets
    finally:
        sys.path.remove(str(root / "bench"))
    recs = [{"file": f, "true_ms": t, "score": s, "status": st} for f, t, s, st in [
        ("a", 0.0, 0.9, "ok"), ("b", 0.0, 0.4, "ok"), ("c", 0.0, 0.8, "no_face"),
        ("a", 400.0, 0.1, "ok"), ("a", -400.0, 0.6, "ok"), ("b", 400.0, 0.2, "ok"), ("b", -400.0, 0.3, "ok")]]
    swaps = [{"file": "a", "soundtrack_of": "b", "score": 0.2, "status": "ok"}]
    head, _, row = sync_offsets.filter_table(recs, 0.5, swaps)
    assert "untouched kept" in head and "400 ms copies rejected" in head and "swaps" in head
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1].startswith("0.33 (1/3)")  # b scores under 0.5, c is not ok: only a is kept
    assert cells[2].startswith("0.75 (3/4)") and cells[3].startswith("1.00 (1/1)")
    lo, hi = (float(v) for v in cells[3].split("[")[1].rstrip("]").split(","))
    assert hi == 1.0 and lo < 0.3  # Wilson: one swap says little
