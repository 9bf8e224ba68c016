"""Several faces in one clip: each face tracked and judged, the clip's score and offset the speaking
face's (eval/scorer.py, train/landmarks.face_landmarks_multi, train/preprocess.find_face_tracks)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from eval.scorer import Scorer
from train import facemesh_litert as fl

from .multiface_fixtures import FPS, MouthEnergyJudge, landmark_config, two_heads

needs_litert = pytest.mark.skipif(not fl.available(), reason="ai-edge-litert or mediapipe is not installed")
SHIFT = 4  # frames the soundtrack lags the left head's mouth: +160 ms


def _scorer(max_faces: int = 4) -> Scorer:
    cfg = landmark_config()
    return Scorer(MouthEnergyJudge(cfg), cfg, max_faces=max_faces)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("multiface")
    return {"two": two_heads(d / "two.mp4", shift_frames=SHIFT),
            "leaving": two_heads(d / "leaving.mp4", leave=True),
            "one": two_heads(d / "one.mp4", heads=1, shift_frames=SHIFT)}


@needs_litert
def test_two_heads_the_speaking_face_and_its_offset(clips):
    """Two demo heads, the soundtrack the left one's speech 160 ms late: both faces are reported, the
    left one is the speaking face (the clip's score and offset are its own) at +160 ms."""
    rec = _scorer().score_file(clips["two"])
    faces = rec["faces"]
    assert len(faces) == 2
    left, right = sorted(faces, key=lambda f: f["box"][0])
    assert left["box"][2] <= 128 + 8 < right["box"][0] + 8  # boxes in picture pixels, one head each
    assert left["offset_ms"] == pytest.approx(SHIFT * 1000 / FPS)
    assert left["confidence"] > right["confidence"] + 0.2
    assert rec["offset"]["ms"] == pytest.approx(SHIFT * 1000 / FPS)
    assert rec["score"] == pytest.approx(left["score"])
    assert {w["face"] for w in rec["windows"]} == {faces.index(left)}
    assert all(f["frames"] >= 90 for f in faces)  # tracked on (nearly) all 100 frames
    one = _scorer(max_faces=1).score_file(clips["two"])  # one-face tracking: one of the heads
    assert len(one["faces"]) == 1


@needs_litert
def test_a_face_leaving_the_picture_is_tracked_while_it_is_there(clips):
    rec = _scorer().score_file(clips["leaving"])
    assert rec["status"] == "ok"
    frames = sorted(f["frames"] for f in rec["faces"])
    assert frames[-1] >= 90                      # the left head stays
    assert len(frames) == 1 or frames[0] < 90    # the right one, while it is there
    assert rec["offset"]["ms"] == 0.0            # the left head speaks, in sync


@needs_litert
def test_one_face_gives_the_one_face_record_plus_its_face(clips):
    """max_faces 4 on a one-face clip: the record of one-face tracking (max_faces 1: the tracking the
    judges were trained with, unchanged), plus the face's entry, which is the clip's own evidence."""
    four, one = _scorer(4).score_file(clips["one"]), _scorer(1).score_file(clips["one"])
    faces = four.pop("faces")
    one.pop("faces")
    assert json.dumps(four, sort_keys=True) == json.dumps(one, sort_keys=True)
    assert len(faces) == 1
    (face,) = faces
    assert face["score"] == four["score"] and face["offset_ms"] == four["offset"]["ms"] == SHIFT * 1000 / FPS
    assert face["frames"] == 100 and 0 <= face["box"][0] < face["box"][2] <= 128


@needs_litert
def test_one_face_windows_are_prepared_as_with_one_face_tracking(clips):
    from train.preprocess import windows_for

    cfg = landmark_config()
    many = windows_for(str(clips["one"]), cfg, return_info=True, max_faces=4)
    single = windows_for(str(clips["one"]), cfg, return_info=True)
    assert len(many) == len(single) == 2
    for a, b in zip(many, single):
        assert "faces" not in a[3]
        assert np.array_equal(a[2]["video"].numpy(), b[2]["video"].numpy())
        assert np.array_equal(a[2]["audio"].numpy(), b[2]["audio"].numpy())


def test_weighted_nms_keeps_each_face_best_first():
    boxes = np.array([[0.1, 0.1, 0.3, 0.3], [0.11, 0.1, 0.31, 0.3], [0.6, 0.6, 0.8, 0.8], [0.61, 0.6, 0.8, 0.8]])
    keypoints = np.zeros((4, 6, 2))
    scores = np.array([0.7, 0.6, 0.9, 0.55])
    out = fl._weighted_nms(boxes, keypoints, scores, max_faces=4)
    assert len(out) == 2
    best_box, _ = fl._weighted_nms_best(boxes, keypoints, scores)
    assert np.array_equal(out[0][0], best_box) and out[0][0][0] > 0.5
    assert out[1][0][0] == pytest.approx((0.1 * 0.7 + 0.11 * 0.6) / 1.3)
    assert len(fl._weighted_nms(boxes, keypoints, scores, max_faces=1)) == 1


def test_haar_detections_join_into_tracks_by_where_they_are():
    from train.preprocess import haar_tracks

    left, right, blip = (10, 10, 50, 50), (100, 10, 140, 50), (60, 80, 70, 90)
    seen = [(0, [left, right]), (10, [(12, 10, 52, 50), right, blip]), (20, [(101, 11, 141, 51)]), (30, [left])]
    tracks = haar_tracks(seen, max_faces=4)
    assert [len(t) for t in tracks] == [3, 3]      # the one-off box is no face
    assert {t[0][1][0] for t in tracks} == {10, 100}
    assert len(haar_tracks(seen, max_faces=1)) == 1


@needs_litert
def test_the_record_and_its_line_name_the_faces(clips):
    from eval.cli import score_video, summary_line

    scorer = _scorer()
    scorer.dim = "lip_sync"
    rec = score_video([scorer], str(clips["two"]))
    assert [sorted(f) for f in rec["faces"]["lip_sync"]] == [["box", "confidence", "frames", "offset_ms", "score"]] * 2
    assert "speaking face of 2" in summary_line(rec)
    json.dumps(rec)  # plain JSON


def test_score_refuses_max_faces_below_one():
    from eval.cli import load_scorers

    with pytest.raises(SystemExit, match="--max-faces must be at least 1"):
        load_scorers(["unused"], max_faces=0)
