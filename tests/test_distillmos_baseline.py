"""bench/distillmos_baseline.py: DistillMOS beside DNSMOS on the judge's test pairs (a stub model here;
the wheel's network when installed), and a clean skip without the package."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

from bench import distillmos_baseline as dm
from bench.dnsmos_baseline import decode_bytes, read_pairs
from tests.train_fixtures import write_fixture_shards


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    """Tiny shards (2 test pairs) and a judge report that ranks the first pair right, the second wrong."""
    tmp = tmp_path_factory.mktemp("dm")
    shards = write_fixture_shards(tmp / "shards", sources=3, splits={"train": 0.34, "test": 0.66})
    report = tmp / "report"
    report.mkdir()
    keys = sorted(p["key"] for p in read_pairs(shards, "test"))
    assert len(keys) == 2
    z = {keys[0]: (2.0, -1.0), keys[1]: (-3.0, 0.5)}
    (report / "scores_test.jsonl").write_text("".join(
        json.dumps({"meta": {"key": k}, "z_chosen": c, "z_rejected": r}) + "\n" for k, (c, r) in z.items()))
    return shards, report


class Loudness:
    """A stub MOS: the clip's mean |x| (counts its calls)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, audio: np.ndarray) -> float:
        self.calls += 1
        return float(np.abs(audio).mean())


def test_scores_every_clip_once_beside_the_judge_and_dnsmos(judged, tmp_path):
    shards, report = judged
    stub = Loudness()
    r = dm.run(shards, "test", report, n_boot=50, model=stub)
    assert r["pairs"] == 2 and r["clips"] == 4 and stub.calls == 4
    assert r["judge_pairs"] == 2 and r["judge_pairwise_accuracy"] == 0.5
    assert r["spearman_judge_distillmos"]["n_clips"] == 4
    assert set(r["distillmos_per_operator"]) == {"audio_shift"}
    with tempfile.TemporaryDirectory() as tmp:  # the same pairs through the stub by hand
        mos = [[Loudness()(decode_bytes(p[s], Path(tmp))) for s in ("chosen", "rejected")]
               for p in read_pairs(shards, "test")]
    assert r["distillmos_pairwise_accuracy"] == np.mean([1.0 if c > j else 0.5 if c == j else 0.0 for c, j in mos])
    dn = tmp_path / "dnsmos.json"
    dn.write_text(json.dumps({"split": "test", "pairs": 2, "dnsmos_pairwise_accuracy": 1.0,
                              "dnsmos_per_operator": {"audio_shift": {"n": 2, "accuracy": 1.0}}}))
    r = dm.run(shards, "test", report, n_boot=50, dnsmos=dn, model=Loudness())
    text = dm.format_result(r)
    assert "DistillMOS pairwise accuracy" in text and "DNSMOS OVRL pairwise accuracy (same pairs): 1.000" in text
    assert "| operator | pairs | DistillMOS | DNSMOS OVRL | judge |" in text
    dn.write_text(json.dumps({"split": "test", "pairs": 5}))
    with pytest.raises(SystemExit, match="not these 2 test pairs"):
        dm.run(shards, "test", report, dnsmos=dn, model=Loudness())


def test_without_the_package_the_baseline_is_skipped_in_one_line(judged, monkeypatch, capsys):
    shards, report = judged
    monkeypatch.setattr(dm, "available", lambda: False)
    assert dm.main(["--shards", str(shards), "--report", str(report)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "skipped" in out[0] and "pip install --no-deps distillmos" in out[0]


@pytest.mark.slow
@pytest.mark.skipif(not dm.available(), reason="needs the distillmos wheel")
def test_distillmos_rates_noisy_speech_lower():
    from tests.fixtures_ops import synth_voice

    model = dm.DistillMOS()
    clean = synth_voice(3.0, f0=140.0, seed=2).astype(np.float32)
    clean = 0.1 * clean / np.sqrt(np.mean(clean ** 2))
    noisy = clean + 0.3 * np.random.default_rng(0).standard_normal(len(clean)).astype(np.float32)  # -10 dB
    assert 1.0 <= model(noisy) < model(clean) <= 5.0
