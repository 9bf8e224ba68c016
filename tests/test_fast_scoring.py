"""Scoring's fast path: an export loaded without transformers (train/judge_core.py) gives the judge
transformers' loader gives, the first file decodes while the judges load (perturb.media.DecodeAhead),
and windows of several files batched to the judge (the GPU path, run here on the CPU) give the records
of one file at a time."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.eval_fixtures import make_export, make_video

ROOT = Path(__file__).resolve().parents[1]
# a judge whose clip decision reads the mean sync profile (decision_from_profile), as lip_sync's does
PROFILE_JUDGE = dict(head="monotone", use_pooled=False, sync_aux_weight=1.0)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("fast_scoring")
    return [str(make_video(d / "a.mp4", 3.0, seed=0)), str(make_video(d / "b.mp4", 7.0, seed=1)),
            str(make_video(d / "c.mp4", 4.0, seed=2))]


@pytest.mark.parametrize("model", [{}, PROFILE_JUDGE], ids=["mlp", "monotone"])
def test_the_plain_loader_gives_the_judge_transformers_loads(tmp_path, clips, model):
    from eval.scorer import Scorer
    from train.judge_core import JudgeNet, load_plain
    from train.model import AVJudge, load_weights

    export = make_export(tmp_path / "export", window_seconds=2.0, **model)
    plain, full = load_plain(export), load_weights(export)
    assert isinstance(plain, JudgeNet) and isinstance(full, AVJudge)
    a, b = plain.state_dict(), full.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    scorer = Scorer.from_pretrained(export)
    assert isinstance(scorer.model, JudgeNet)
    records = [scorer.score_file(c) for c in clips]
    scorer.model = full
    assert [scorer.score_file(c) for c in clips] == records  # every score, window and offset, bit for bit


def test_the_judge_fields_are_judge_configs_arguments():
    import inspect

    from train.judge_core import JUDGE_FIELDS
    from train.model import JudgeConfig

    assert JUDGE_FIELDS == tuple(p for p in inspect.signature(JudgeConfig.__init__).parameters
                                 if p not in ("self", "kwargs"))


def _edit_config(export: Path, **changes) -> None:
    cfg = json.loads((export / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k)
        else:
            cfg[k] = v
    (export / "config.json").write_text(json.dumps(cfg))


def test_an_export_the_plain_loader_does_not_know_goes_through_transformers(tmp_path):
    from safetensors.torch import load_file, save_file

    from eval.scorer import Scorer
    from train.judge_core import load_plain
    from train.model import AVJudge

    old = make_export(tmp_path / "old")
    _edit_config(old, sync_aux_weight=None)  # written before a field existed: its default applies
    assert load_plain(old) is None and isinstance(Scorer.from_pretrained(old).model, AVJudge)
    odd = make_export(tmp_path / "odd")
    _edit_config(odd, not_a_field=3)
    assert load_plain(odd) is None
    with pytest.raises(ValueError, match="unknown judge config field"):  # transformers' loader says what is wrong
        Scorer.from_pretrained(odd)
    bad = make_export(tmp_path / "bad")
    _edit_config(bad, emb_dim=10**9)
    with pytest.raises(ValueError, match="emb_dim"):
        load_plain(bad)
    extra = make_export(tmp_path / "extra")
    weights = load_file(extra / "model.safetensors")
    save_file({**weights, "stray": torch.zeros(2)}, extra / "model.safetensors", metadata={"format": "pt"})
    assert load_plain(extra) is None
    with pytest.raises(RuntimeError, match="do not fit"):
        Scorer.from_pretrained(extra)


def test_scoring_imports_neither_transformers_nor_trl(tmp_path, clips):
    export = make_export(tmp_path / "export", window_seconds=2.0, **PROFILE_JUDGE)
    code = ("import sys, io, contextlib\nfrom eval.__main__ import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    rc = main(['score', '--scorer', {str(export)!r}, '--workers', '1', {clips[0]!r}])\n"
            "print(rc, sorted(m for m in ('transformers', 'trl', 'train.model', 'train.trainers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.stdout.split("\n")[-2] == "0 []", out.stdout + out.stderr


def test_a_decode_started_ahead_cuts_the_same_windows(clips):
    from perturb.media import DecodeAhead, MediaError
    from train.preprocess import PreprocessConfig, windows_for_configs

    cfg = PreprocessConfig(window_seconds=2.0, crop="full", crop_size=(16, 16), n_mels=16)
    for clip in clips[:2]:
        [plain] = windows_for_configs(clip, [cfg], return_info=True)
        for ahead in (DecodeAhead(clip, cfg.sr, cfg.fps, frames=7),       # fewer frames ahead than a window
                      DecodeAhead(clip, cfg.sr, cfg.fps, frames=1000),    # the whole file ahead
                      DecodeAhead(clip, 8000, cfg.fps)):                  # decoded for another rate: not used
            [got] = windows_for_configs(clip, [cfg], return_info=True, ahead=ahead)
            assert ahead._closed and len(got) == len(plain)
            for (s0, e0, x0, i0), (s1, e1, x1, i1) in zip(plain, got):
                assert (s0, e0, i0) == (s1, e1, i1)
                assert all(torch.equal(x0[k], x1[k]) for k in ("video", "audio"))
    with pytest.raises(MediaError, match="no such file"):
        windows_for_configs("/no/such.mp4", [cfg], ahead=DecodeAhead("/no/such.mp4", cfg.sr, cfg.fps))


def test_eval_score_decodes_its_one_file_while_the_judge_loads(tmp_path, clips, monkeypatch, capsys):
    import train.preprocess as pre
    from eval.__main__ import main

    export = make_export(tmp_path / "export", window_seconds=2.0)
    handed = []
    real = pre.windows_for_configs

    def spy(path, cfgs, **kw):
        handed.append(kw.get("ahead") is not None)
        return real(path, cfgs, **kw)

    monkeypatch.setattr(pre, "windows_for_configs", spy)
    assert main(["score", "--scorer", str(export), clips[1]]) == 0
    ahead_record = json.loads(capsys.readouterr().out)
    assert handed == [True]
    monkeypatch.setattr("eval.cli._decode_ahead", lambda args: None)
    assert main(["score", "--scorer", str(export), clips[1]]) == 0
    assert json.loads(capsys.readouterr().out) == ahead_record and handed == [True, False]


def test_medfilt_is_scipys():
    from scipy.signal import medfilt

    from train.landmarks import _medfilt

    rng = np.random.default_rng(0)
    for n, k in ((1, 1), (5, 5), (13, 13), (40, 13), (41, 3)):
        for dtype in (np.float32, np.float64):
            x = rng.normal(100, 30, n).astype(dtype)
            want, got = medfilt(x, k), _medfilt(x, k)
            assert got.dtype == want.dtype and np.array_equal(got, want)


def _flat(records):
    return np.array([r["scores"]["lip_sync"] for r in records] +
                    [w["score"] for r in records for w in r["windows"]["lip_sync"]])


def test_precomputed_outputs_are_the_judges(tmp_path, clips):
    from eval.scorer import Scorer

    scorer = Scorer.from_pretrained(make_export(tmp_path / "export", window_seconds=2.0, **PROFILE_JUDGE))
    inputs = [w[2] for c in clips for w in scorer.windows(c)]
    z, prof = scorer.outputs(inputs)
    scorer.precompute(inputs)
    scorer.model = None  # the judge is not run again
    z2, prof2 = scorer.outputs(inputs[2:5])
    np.testing.assert_allclose(z2, z[2:5], rtol=0, atol=1e-6)
    np.testing.assert_allclose(prof2, prof[2:5], rtol=0, atol=1e-6)
    scorer.precompute([])
    with pytest.raises(TypeError):  # forgotten: the (absent) judge would be asked
        scorer.outputs(inputs[:1])


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_windows_of_several_files_batched_give_the_records_of_one_file_at_a_time(tmp_path, clips, workers):
    from eval.cli import load_scorers, score_videos

    export = make_export(tmp_path / "export", window_seconds=2.0, **PROFILE_JUDGE)
    scorers = load_scorers([str(export)], batch_size=4)  # several files' windows per batch, and one cut across
    paths = [*clips, str(tmp_path / "missing.mp4")]
    one = list(score_videos(scorers, paths, workers=1, always_windows=True))
    batched = list(score_videos(scorers, paths, workers=workers, always_windows=True, batch_files=True))
    assert [r["path"] for r in batched] == paths and [r["status"] for r in batched] == [r["status"] for r in one]
    assert batched[-1]["error"] == one[-1]["error"]
    # another batch shape may move a logit in the last bits of a float, nothing more
    np.testing.assert_allclose(_flat(batched[:-1]), _flat(one[:-1]), rtol=0, atol=1e-6)
