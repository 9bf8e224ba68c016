"""The demo judge says what it is: its model card, and one warning line when it scores other files."""
from __future__ import annotations

import json
import shutil

from eval.scorer import trained_on_demo_corpus

from .eval_fixtures import make_export, make_video

DEMO_CARD = {"src": "demo_corpus", "command": "python -m perturb build --dim lip_sync --out shards --demo",
             "sources": [{"source_id": "demo_00"}, {"source_id": "demo_01"}]}


def test_a_demo_build_is_recognised_by_its_card():
    assert trained_on_demo_corpus(DEMO_CARD)
    assert trained_on_demo_corpus({"src": "/x/demo_corpus", "command": "python -m perturb build --src /x/demo_corpus"})
    assert not trained_on_demo_corpus({"src": "../shared/realvids/clips", "command": "python -m perturb build --demo_x"})
    assert not trained_on_demo_corpus(None)


def test_the_demo_model_card_says_it_is_for_checking_the_pipeline():
    from eval.calibration import TemperatureScaling
    from eval.evaluate import model_card

    report = {"test": {}, "calibration": {"test": {}}}
    cal = TemperatureScaling()
    demo = model_card("lip_sync", "Is it in sync?", report, DEMO_CARD, "exports/lip_sync", cal)
    real = model_card("lip_sync", "Is it in sync?", report, {"src": "../shared/realvids/clips"}, "exports/x", cal)
    sentence = "Trained on the synthetic demo corpus: for checking the pipeline, not for real footage."
    assert sentence in demo and sentence not in real


def test_score_warns_once_when_the_demo_judge_scores_files_from_elsewhere(tmp_path, capsys):
    from eval.__main__ import main

    export = make_export(tmp_path / "export")
    metrics = json.loads((export / "metrics.json").read_text())
    (export / "metrics.json").write_text(json.dumps({**metrics, "data_card": DEMO_CARD}))
    own = make_video(tmp_path / "demo_00__w000__p00.chosen.mp4", 3.0)   # a clip cut from a demo source
    other = tmp_path / "talk.mp4"
    shutil.copy(own, other)

    assert main(["score", "--scorer", str(export), "--workers", "1", str(own)]) == 0
    assert "demo corpus" not in capsys.readouterr().err
    assert main(["score", "--scorer", str(export), "--workers", "1", str(own), str(other)]) == 0
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if "demo corpus" in ln]
    assert len(warnings) == 1 and warnings[0].startswith("warning: lip_sync:")
    assert "not for real footage (1 of 2 files come from elsewhere)" in warnings[0]

    real = make_export(tmp_path / "real")
    assert main(["score", "--scorer", str(real), "--workers", "1", str(other)]) == 0
    assert "demo corpus" not in capsys.readouterr().err
