"""Real-footage judges shipped in the package: resolvable by name, each with a model card that names
its training data, licences and the command that regenerates it, byte for byte (slow check)."""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from eval.scorer import PACKAGED_JUDGES, Scorer, packaged_judges, resolve_export

from .eval_fixtures import make_export, make_video

ROOT = Path(__file__).resolve().parents[1]
REALVIDS = ROOT.parent / "shared" / "realvids" / "clips"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_judge_name_resolves_to_the_packaged_judge_and_a_path_wins(tmp_path, monkeypatch):
    import eval.scorer as scorer_mod

    make_export(tmp_path / "judges" / "lip_sync")
    monkeypatch.setattr(scorer_mod, "PACKAGED_JUDGES", tmp_path / "judges")
    assert resolve_export("lip_sync") == tmp_path / "judges" / "lip_sync"
    assert scorer_mod.packaged_judges() == ["lip_sync"]
    local = make_export(tmp_path / "here" / "lip_sync")
    monkeypatch.chdir(tmp_path / "here")
    assert resolve_export("lip_sync") == Path("lip_sync")          # a folder of that name here comes first
    assert resolve_export(str(local)) == local
    with pytest.raises(FileNotFoundError) as err:
        resolve_export("lip_sink")
    assert "no packaged judge of that name (packaged: lip_sync)" in str(err.value)
    monkeypatch.chdir(tmp_path)
    assert Scorer.from_pretrained("lip_sync").path == str(tmp_path / "judges" / "lip_sync")


def test_package_judge_writes_the_export_and_a_card(tmp_path):
    from bench.package_judge import package

    work = tmp_path / "work"
    export = make_export(work / "export")
    metrics = json.loads((export / "metrics.json").read_text())
    card = {"command": "python -m perturb build --src ../shared/realvids/clips ...",
            "sources": [{"licence": "CC BY-NC-SA 4.0", "group": "a", "split": "train"},
                        {"licence": "MIT", "group": "b", "split": "test"},
                        {"licence": "CC BY-NC-SA 4.0", "group": "a", "split": "train"}]}
    (export / "metrics.json").write_text(json.dumps({**metrics, "data_card": card}))
    (export / "README.md").write_text("# avbench judge\n\nexport card\n")
    (work / "table.md").write_text("| seed | all |\n|---|---|\n| 0 | 0.760 |\n")
    dest = package("lip_sync", work, cv="0.818 -> 0.857", dest_root=tmp_path / "judges")
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        ["README.md", "calibration.json", "config.json", "metrics.json", "model.safetensors", "preprocessing.json"])
    text = (dest / "README.md").read_text()
    assert "Research use only" in text and "CC BY-NC-SA 4.0 (2), MIT (1)" in text and "| 0 | 0.760 |" in text
    assert "0.818 -> 0.857" in text and f"make real DIM=lip_sync WORK={work}" in text
    assert _sha(dest / "model.safetensors") in text
    assert not list((tmp_path / "judges").glob(".*"))  # written aside, then renamed


@pytest.mark.parametrize("name", packaged_judges() or [pytest.param("none", marks=pytest.mark.skip("no packaged judge"))])
def test_each_packaged_judge_is_small_scores_and_its_card_names_its_weights(name, tmp_path, capsys):
    from eval.__main__ import main

    folder = PACKAGED_JUDGES / name
    assert sum(p.stat().st_size for p in folder.iterdir()) < 2 << 20
    card = (folder / "README.md").read_text()
    assert f"make real DIM={name}" in card and "Research use only" in card and "licences:" in card
    assert _sha(folder / "model.safetensors") in card
    assert json.loads((folder / "calibration.json").read_text()).get("prior") == 0.5
    video = make_video(tmp_path / "talk.mp4", 3.0)
    assert main(["score", "--scorer", name, "--workers", "1", str(video)]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= rec["scores"][name] <= 1.0


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("name", packaged_judges() or [pytest.param("none", marks=pytest.mark.skip("no packaged judge"))])
def test_make_real_regenerates_each_packaged_judge_byte_for_byte(name, tmp_path):
    """The card's command rebuilds the same weights (deterministic build, from nothing)."""
    if not REALVIDS.is_dir():
        pytest.skip("no ../shared/realvids")
    card = (PACKAGED_JUDGES / name / "README.md").read_text()
    want = re.search(r"model.safetensors sha256: `([0-9a-f]{64})`", card).group(1)
    subprocess.run([sys.executable, "-m", "bench.real", "--dim", name, "--work", str(tmp_path / "work")],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    assert _sha(tmp_path / "work" / "export" / "model.safetensors") == want
