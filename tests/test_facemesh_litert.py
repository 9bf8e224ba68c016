"""FaceMesh on LiteRT (train/facemesh_litert.py) against MediaPipe's own graph, and its geometry."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from train import facemesh_litert as fl

REAL_FACE = Path(__file__).resolve().parents[2] / "shared/realvids/clips/Talking-Face_PC-AVS__misc_Audio_Source_00015.mp4"
needs_litert = pytest.mark.skipif(not fl.available(), reason="ai-edge-litert or mediapipe is not installed")


def test_ssd_anchors_are_blazeface_short_range_grid():
    """896 anchors: a 16 x 16 grid (stride 8) with 2 per cell, then the three stride-16 layers
    sharing one 8 x 8 grid with 6 per cell, each cell's centre, row by row."""
    anchors = fl._ssd_anchors()
    assert anchors.shape == (896, 2)
    fine, coarse = anchors[:512], anchors[512:]
    assert np.allclose(fine[0], [0.5 / 16, 0.5 / 16]) and np.allclose(fine[2], [1.5 / 16, 0.5 / 16])
    assert np.array_equal(fine[0], fine[1])
    assert np.allclose(coarse[0], [0.5 / 8, 0.5 / 8]) and np.allclose(coarse[6], [1.5 / 8, 0.5 / 8])
    assert (coarse[:6] == coarse[0]).all()
    assert np.allclose(coarse[-1], [7.5 / 8, 7.5 / 8])


@pytest.mark.parametrize("angle_deg", [0.0, 20.0, -35.0])
def test_roi_is_the_box_squared_scaled_and_turned_by_the_eyes(angle_deg):
    """The ROI is centred on the box, square in pixels on its long side times 1.5, and turned so
    that the eye line becomes horizontal (a head rolled by +a gives rotation -a in image axes)."""
    width, height = 400, 200
    box = (0.25, 0.3, 0.2, 0.3)                      # 80 x 60 px
    a = math.radians(angle_deg)
    centre = np.array([0.35 * width, 0.45 * height])
    eyes_px = np.stack([centre - 20 * np.array([math.cos(a), -math.sin(a)]),
                        centre + 20 * np.array([math.cos(a), -math.sin(a)])])  # image y points down
    cx, cy, w, h, rotation = fl._roi(box, eyes_px / (width, height), width, height)
    assert (cx, cy) == pytest.approx((0.35, 0.45))
    assert w * width == pytest.approx(1.5 * 80) and h * height == pytest.approx(1.5 * 80)
    assert rotation == pytest.approx(-a)


def test_weighted_nms_averages_the_boxes_that_overlap_the_best():
    boxes = np.array([[0.1, 0.1, 0.5, 0.5], [0.12, 0.1, 0.52, 0.5], [0.6, 0.6, 0.9, 0.9]])
    keypoints = np.zeros((3, 6, 2))
    keypoints[:, :, 0] = [[0.2], [0.4], [0.9]]
    scores = np.array([0.9, 0.6, 0.35])
    box, eyes = fl._weighted_nms_best(boxes, keypoints, scores)
    w = np.array([0.9, 0.6]) / 1.5
    assert np.allclose(box, w @ boxes[:2])             # the far box is not averaged in
    assert np.allclose(eyes[:, 0], w @ [0.2, 0.4]) and eyes.shape == (2, 2)


def _mesh_of_both(frames: np.ndarray, monkeypatch) -> tuple:
    from train.landmarks import face_landmarks

    monkeypatch.setenv("AVBENCH_FACEMESH", "litert")
    lite, lite_info = face_landmarks(frames)
    monkeypatch.setenv("AVBENCH_FACEMESH", "mediapipe")
    graph, graph_info = face_landmarks(frames)
    return lite, lite_info, graph, graph_info


@needs_litert
def test_litert_tracker_gives_mediapipe_graphs_landmarks_on_demo_faces(tmp_path, monkeypatch):
    """On the demo corpus's faces (no ../shared needed): the same frames with a face, landmarks within
    a pixel of the graph's everywhere and within a tenth of a pixel typically."""
    from perturb.demo_corpus import make_demo_corpus
    from perturb.media import probe, stream_frames

    video = make_demo_corpus(tmp_path, n_sources=1, seconds=2.0, progress=False, n_donors=1)[0]
    info = probe(video)
    frames = np.stack(list(stream_frames(video, info.width, info.height, 25)))
    lite, lite_info, graph, graph_info = _mesh_of_both(frames, monkeypatch)
    assert lite_info["landmark_runtime"] == "litert" and graph_info["landmark_runtime"] == "mediapipe"
    assert lite_info["detected"] == graph_info["detected"] == len(frames)
    diff = np.abs(lite - graph).max(axis=(1, 2))       # worst point per frame, pixels
    assert diff.max() < 1.0 and np.median(diff) < 0.25


@needs_litert
def test_litert_tracker_gives_mediapipe_graphs_landmarks_on_a_real_face(monkeypatch):
    if not REAL_FACE.is_file():
        pytest.skip("../shared/realvids is absent")
    from train.preprocess import PreprocessConfig, load_media

    frames = load_media(str(REAL_FACE), PreprocessConfig())[0][:100]
    lite, lite_info, graph, graph_info = _mesh_of_both(frames, monkeypatch)
    assert lite_info["detected"] == graph_info["detected"] == len(frames)
    diff = np.abs(lite - graph).max(axis=(1, 2))
    assert diff.max() < 1.0 and np.median(diff) < 0.25


@needs_litert
def test_litert_tracker_finds_no_face_in_a_blank_picture_and_restarts_per_clip(tmp_path):
    from perturb.demo_corpus import make_demo_corpus
    from perturb.media import probe, stream_frames

    tracker = fl.FaceMeshTracker()
    assert tracker.process(np.full((96, 96, 3), 128, np.uint8)) is None
    video = make_demo_corpus(tmp_path, n_sources=1, seconds=1.0, progress=False, n_donors=1)[0]
    info = probe(video)
    frames = list(stream_frames(video, info.width, info.height, 25))
    first = [tracker.process(f) for f in frames]
    tracker.reset()
    again = [tracker.process(f) for f in frames]
    assert all(a is not None and np.array_equal(a, b) for a, b in zip(first, again))


_GRAPH_THEN_LITERT = """
import os
import numpy as np
from train.landmarks import face_landmarks, used_in_this_process

frames = np.full((2, 64, 64, 3), 128, np.uint8)
os.environ["AVBENCH_FACEMESH"] = "litert"
face_landmarks(frames)
before = used_in_this_process()
os.environ["AVBENCH_FACEMESH"] = "mediapipe"
face_landmarks(frames)
os.environ["AVBENCH_FACEMESH"] = "litert"
face_landmarks(frames)
print(before, used_in_this_process())
"""


@needs_litert
def test_a_process_that_ran_mediapipes_graph_stays_unsafe_to_fork():
    """LiteRT survives a fork, MediaPipe's graph does not, even once closed: switching back to
    LiteRT must not make score_videos fork workers from this process."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _GRAPH_THEN_LITERT], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "True"]


@needs_litert
def test_runtime_comparison_benchmark_runs_on_the_demo_corpus():
    """bench/facemesh_runtimes.py without videos: one row per demo clip, both runtimes find the
    faces in every frame and agree within a pixel."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "bench/facemesh_runtimes.py"), "--frames", "25"],
                         capture_output=True, text=True, cwd=root, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [ln.split("|")[1:-1] for ln in out.stdout.splitlines() if ln.startswith("| demo_")]
    assert len(rows) == 4
    for _, frames, found, compared, median, worst, _ in rows:
        assert found.split("/")[0].strip() == found.split("/")[1].strip() == frames.strip() == compared.strip()
        assert float(median) < 0.25 and float(worst) < 1.0
