"""`python -m eval leaderboard`: three synthetic "generators" made from the demo corpus (untouched,
mildly and strongly desynced by perturb's audio_shift) are ranked in that order by a judge that
measures sync (tests/sync_oracle.py), with non-overlapping CIs; scores are reused; the statistics,
the tables and the radar."""
from __future__ import annotations

import csv
import json
import math

import pytest

from eval.leaderboard import leaderboard, markdown, model_stats, plot

N_SOURCES = 6
OFFSETS_MS = {"untouched": 0.0, "mild": 120.0, "strong": 480.0}


@pytest.fixture(scope="module")
def generators(tmp_path_factory):
    """Three folders of videos, one per "model": the demo corpus' talking heads with their sound shifted."""
    from perturb.clip import Clip
    from perturb.demo_corpus import make_demo_corpus
    from perturb.media import mux_new_audio
    from perturb.operators.timing import AudioShift

    root = tmp_path_factory.mktemp("generators")
    sources = make_demo_corpus(root / "demo", n_sources=N_SOURCES, seconds=4.0, size=96, progress=False, n_donors=1)
    shift = AudioShift()
    for name, ms in OFFSETS_MS.items():
        (root / name).mkdir()
        for src in sources:
            mux_new_audio(src, shift.apply(Clip.from_file(src), {"offset_ms": ms}).audio, root / name / src.name)
    return root


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    from tests.sync_oracle import make_oracle_export

    return make_oracle_export(tmp_path_factory.mktemp("oracle") / "lip_sync", calibration={
        "method": "platt", "params": {"a": 0.6, "b": 1.0}, "fitted_on": "val", "n": 10, "prior": 0.5})


def test_desynced_generators_rank_below_the_untouched_one_with_separate_cis(generators, oracle, tmp_path, capsys):
    from eval.__main__ import main

    out = tmp_path / "board"
    models = [str(generators / "strong"), f"in_sync={generators / 'untouched'}", str(generators / "mild")]
    # --plugin: the worker processes import the judge's encoders as a user's plugin judge needs
    assert main(["leaderboard", "--scorer", str(oracle), "--plugin", "tests.sync_oracle", "--workers", "2",
                 "--out", str(out), *models]) == 0
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert [r["model"] for r in rows] == ["in_sync", "mild", "strong"]
    assert all(int(r["videos"]) == N_SOURCES and int(r["judged"]) + sum(int(r[k]) for k in r if k.startswith("n_"))
               == N_SOURCES for r in rows)
    assert all(int(r["judged"]) >= N_SOURCES // 2 for r in rows)  # a drawn face in profile may go unfound: no_face
    lo = [float(r["ci95_lo"]) for r in rows]
    hi = [float(r["ci95_hi"]) for r in rows]
    assert hi[1] < lo[0] and hi[2] < lo[1], rows                  # in sync > mild > strong, CIs apart
    md = (out / "leaderboard.md").read_text()
    assert md == capsys.readouterr().out and "| 1 | in_sync |" in md
    assert (out / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "leaderboard.json").read_text())["dims"] == ["lip_sync"]

    # a second run reuses every score (the judge's records in OUT/scores.jsonl), and a CSV names models too
    table = tmp_path / "videos.csv"
    with table.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "model"])
        for name in OFFSETS_MS:
            w.writerows([str(v), name] for v in sorted((generators / name).glob("*.mp4")))
    assert main(["leaderboard", "--scorer", str(oracle), "--csv", str(table), "--out", str(out),
                 "--scores", str(out / "scores.jsonl")]) == 0
    err = capsys.readouterr().err
    assert "scoring" not in err
    again = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert [r["model"] for r in again] == ["untouched", "mild", "strong"]
    assert [r["mean"] for r in again] == [r["mean"] for r in rows]


def _rec(scores: dict, status: dict | None = None, error: str | None = None) -> dict:
    rec = {"path": "x", "scores": scores, "status": status or {d: "ok" for d in scores}}
    return {**rec, "error": error} if error else rec


def test_statistics_leave_out_what_the_judge_could_not_judge_and_count_it_by_status():
    recs = [_rec({"lip_sync": v}) for v in (0.2, 0.4, 0.6, 0.9)] + [
        _rec({"lip_sync": 0.99}, {"lip_sync": "no_face"}), _rec({"lip_sync": 0.01}, {"lip_sync": "too_short"}),
        _rec({}, {"lip_sync": "unreadable"}, error="MediaError: unreadable media")]
    row = model_stats(recs, "lip_sync", n_boot=200)
    assert (row["videos"], row["judged"], row["n_no_face"], row["n_too_short"], row["n_unreadable"],
            row["n_no_audio"]) == (7, 4, 1, 1, 1, 0)
    assert row["mean"] == pytest.approx(0.525) and row["share_ge_0.5"] == 0.5
    assert (row["min"], row["max"]) == (0.2, 0.9) and row["std"] == pytest.approx(0.298608, abs=1e-6)
    assert row["ci95_lo"] < 0.525 < row["ci95_hi"] and 0.2 <= row["ci95_lo"] and row["ci95_hi"] <= 0.9
    nothing = model_stats([recs[-1]], "lip_sync")
    assert nothing["judged"] == 0 and math.isnan(nothing["mean"])


def test_models_are_ranked_by_their_mean_over_dimensions_and_plotted_as_a_radar(tmp_path):
    dims = ["lip_sync", "av_consistency", "audio_quality"]
    means = {"a": (0.9, 0.2, 0.4), "b": (0.6, 0.7, 0.8), "c": (0.1, 0.1, 0.1)}
    records, pairs = {}, []
    for m, mu in means.items():
        for i in range(5):
            path = f"{m}/{i}.mp4"
            records[path] = {"path": path, "scores": {d: mu[j] + 0.01 * i for j, d in enumerate(dims)},
                             "status": {d: "ok" for d in dims}}
            pairs.append((m, path))
    rows = leaderboard(pairs, records, dims, n_boot=100)
    assert [r["model"] for r in rows[::3]] == ["b", "a", "c"]            # 0.70 > 0.50 > 0.10
    md = markdown(rows, dims)
    assert "| 1 | b | 0.620 [" in md and "| rank | model | lip_sync | av_consistency | audio_quality |" in md
    plot(rows, dims, tmp_path / "radar.png")
    from PIL import Image

    img = Image.open(tmp_path / "radar.png")
    assert img.size[0] > 300 and len(set(img.convert("RGB").getdata())) > 20


def test_no_model_and_a_clash_of_names_are_one_line_errors(tmp_path, oracle):
    from eval.__main__ import main

    for args, words in (([], "no model given"), ([str(tmp_path)], "no video found"),
                        ([f"x={tmp_path}", f"x={tmp_path}"], "two models are named 'x'")):
        with pytest.raises(SystemExit, match=words):
            main(["leaderboard", "--scorer", str(oracle), "--out", str(tmp_path / "o"), *args])
