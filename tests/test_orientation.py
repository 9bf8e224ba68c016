"""Rotated (display matrix) and anamorphic (SAR != 1) sources come out upright, with their aspect.

Each clip is a tall white bar with a grey square above-left of it, in its UPRIGHT picture
(tests/media_fixtures.make_marked_video); stored turned a quarter (phone portrait video) or with
non-square pixels. Shards (perturb) and the scoring path (train.preprocess.load_media) must both
show the bar tall, the square above-left of it and the frame at the display aspect.
"""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from perturb import media
from perturb.pipeline import build
from tests.media_fixtures import make_marked_video, marks
from train.preprocess import PreprocessConfig, load_media

# (display size, make_marked_video kwargs): the bar is 3.6x taller than wide in the 64x96 picture,
# 1.2x in the 128x64 one (whose pixels are stored 2x narrower)
CLIPS = {
    "portrait_rot90": ((64, 96), {"rotation": 90}),
    "anamorphic_sar2": ((128, 64), {"sar": (2, 1)}),
}
BAR = {"portrait_rot90": 3.6, "anamorphic_sar2": 1.2}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("oriented")
    for name, (display, kw) in CLIPS.items():
        make_marked_video(src / f"{name}.mp4", display=display, **kw)
    return src


def _assert_upright(frame, name: str) -> None:
    (w, h), _ = CLIPS[name]
    m = marks(frame)
    assert m["frame_w_over_h"] == pytest.approx(w / h, rel=0.05), (name, frame.shape)
    assert m["bar_h_over_w"] == pytest.approx(BAR[name], rel=0.15), (name, m)
    assert m["dot_above_left"] == 1.0, (name, m)


def test_probe_reports_the_display_size(clips):
    rot = media.probe(clips / "portrait_rot90.mp4")
    assert (rot.width, rot.height, rot.coded_width, rot.coded_height, rot.rotation) == (64, 96, 96, 64, 90)
    ana = media.probe(clips / "anamorphic_sar2.mp4")
    assert (ana.width, ana.height, ana.coded_width, ana.coded_height, ana.sar) == (128, 64, 64, 64, 2.0)
    assert media.canonical_size(rot.width, rot.height) == (64, 96)


def test_shards_of_rotated_and_anamorphic_sources_are_upright(clips, tmp_path):
    result = build(clips, "lip_sync", out=tmp_path / "out", seed=0, workers=1, window_seconds=2.0,
                   splits={"train": 1.0}, cards_dir=None, progress=False)
    assert not result["rejects"]
    seen = set()
    with tarfile.open(tmp_path / "out" / "lip_sync" / "train-000000.tar") as tar:
        for m in tar.getmembers():
            if not m.name.endswith(".json"):
                continue
            meta = json.loads(tar.extractfile(m).read())
            key = m.name.split(".")[0]
            if meta["source_id"] in seen:
                continue
            seen.add(meta["source_id"])
            video = tmp_path / f"{key}.mp4"
            video.write_bytes(tar.extractfile(f"{key}.chosen.mp4").read())
            _assert_upright(media.decode_frames(video)[5], meta["source_id"])
    assert seen == set(CLIPS)


@pytest.mark.parametrize("name", sorted(CLIPS))
def test_scoring_path_decodes_upright(clips, name):
    path = clips / f"{name}.mp4"
    cfg = PreprocessConfig(window_seconds=2.0)
    for src in (path, path.read_bytes()):
        frames, audio = load_media(src, cfg)
        assert len(frames) >= 50 and len(audio) > 0
        _assert_upright(frames[5], name)
