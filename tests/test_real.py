"""`make real DIM=...` (bench/real.py): refusal without footage, the command list, the test table, and
the whole recipe end to end on tiny synthetic videos (resume included). None of it needs ../shared."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bench import real

ROOT = Path(__file__).resolve().parents[1]


def _flag(argv: list[str], name: str) -> list[str]:
    """Every value given to `name` in argv."""
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == name]


def test_make_real_refuses_in_one_line_without_footage(tmp_path):
    venv = tmp_path / "venv"
    r = subprocess.run(["make", "-s", "real", "DIM=video_quality", f"SRC={tmp_path / 'absent'}", f"VENV={venv}"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no real footage" in lines[0] and str(tmp_path / "absent") in lines[0]
    assert not venv.exists()  # refused before setting anything up
    with pytest.raises(SystemExit, match="no real footage at .*absent"):
        real.main(["--dim", "lip_sync", "--src", str(tmp_path / "absent"), "--work", str(tmp_path / "w")])
    assert not (tmp_path / "w").exists()


def test_dry_lists_the_documented_commands_and_runs_nothing(tmp_path, capsys, monkeypatch):
    src, extra, donors, work = (tmp_path / n for n in ("clips", "extra", "speech", "w"))
    for d in (src, extra, donors):
        d.mkdir()
    assert real.main(["--dim", "voice_identity", "--src", str(src), "--donors", str(donors), "--work", str(work),
                      "--seeds", "2", "--dry"]) == 0
    cmds = [shlex.split(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [c[1:3] for c in cmds] == [["-m", "perturb"], ["-m", "train"], ["-m", "train"], ["-m", "eval"], ["-m", "eval"]]
    build = cmds[0]
    for name, value in (("--manifest", "data_cards/manifests/realvids_clips.csv"), ("--window", "2"), ("--hop", "1"),
                        ("--pairs-per-window", "4"), ("--splits", "0.6,0.2,0.2"), ("--donors", str(donors)),
                        ("--src", str(src)), ("--out", str(work / "shards"))):
        assert _flag(build, name) == [value], name
    assert [_flag(c, "--seed") for c in cmds[1:3]] == [["0"], ["1"]]
    assert all(_flag(c, "--config") == ["train/configs/realvids/voice_identity.yaml"] for c in cmds[1:3])
    assert [_flag(c, "--run") for c in cmds[3:]] == [[str(work / "runs/seed0")], [str(work / "runs/seed1")]]
    assert _flag(cmds[3], "--export") == [str(work / "export")]      # the first seed is the export
    assert all(_flag(c, "--cache-dir") == [str(work / "cache")] for c in cmds[1:])
    assert not work.exists()
    assert not _flag(build, "--train-extra") and "--train-voices" not in build  # only where a recipe asks

    # audio_quality trains on more material: EXTRA's listed clips and the train split's donor voices
    real.main(["--dim", "audio_quality", "--src", str(src), "--extra", str(extra), "--donors", str(donors),
               "--work", str(work), "--dry"])
    build = shlex.split(capsys.readouterr().out.strip().splitlines()[0])
    assert _flag(build, "--train-extra") == [str(extra)] and "--train-voices" in build
    assert _flag(build, "--train-extra-manifest") == ["data_cards/manifests/realvids_clips_extra_train.csv"]
    with pytest.raises(SystemExit, match="no extra training clips"):
        real.main(["--dim", "audio_quality", "--src", str(src), "--extra", str(tmp_path / "none"), "--dry"])

    # a recipe with sync pretraining: SRC and EXTRA, then every seed starts from it; lip_sync adds the offsets
    monkeypatch.setitem(real.RECIPES, "lip_sync", replace(real.RECIPES["lip_sync"], pretrain=True))
    real.main(["--dim", "lip_sync", "--src", str(src), "--extra", str(extra), "--work", str(work), "--dry"])
    cmds = [shlex.split(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert cmds[1][1:3] == ["-m", "train.pretrain"] and _flag(cmds[1], "--src") == [str(src), str(extra)]
    assert _flag(cmds[2], "--init") == [str(work / "pretrain")]
    assert cmds[-1][1] == "bench/sync_offsets.py" and _flag(cmds[-1], "--scorer") == [str(work / "export")]
    assert not _flag(cmds[0], "--donors")
    with pytest.raises(SystemExit, match="no pretraining clips"):
        real.main(["--dim", "lip_sync", "--src", str(src), "--extra", str(tmp_path / "none"), "--dry"])

    # av_consistency trains on 2 s windows and is judged on a second build's 5 s clips, whole
    real.main(["--dim", "av_consistency", "--src", str(src), "--donors", str(donors), "--work", str(work), "--dry"])
    cmds = [shlex.split(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [c[1:4] for c in cmds[:2]] == [["-m", "perturb", "build"]] * 2
    assert _flag(cmds[0], "--window") == ["2"] and _flag(cmds[1], "--window") == ["5"]
    assert _flag(cmds[1], "--out") == [str(work / "eval_shards")]
    same = list(cmds[1])
    for flag in ("--window", "--out", "--cards"):
        same[same.index(flag) + 1] = cmds[0][cmds[0].index(flag) + 1]
    assert same == cmds[0]      # otherwise the same build: sources, manifest (its pinned splits), seed, donors
    assert _flag(cmds[1], "--donors") == [str(donors)]
    trains = [c for c in cmds if c[1:3] == ["-m", "train"]]
    evals = [c for c in cmds if c[1:3] == ["-m", "eval"]]
    assert all(_flag(c, "--shards") == [str(work / "shards" / "av_consistency")] for c in trains)
    assert evals and all(_flag(c, "--shards") == [str(work / "eval_shards" / "av_consistency")] and
                         "--whole-clips" in c for c in evals)


def test_a_stage_is_done_only_when_it_finished_with_the_same_command_and_inputs(tmp_path):
    work, out, conf = tmp_path / "w", tmp_path / "out.txt", tmp_path / "conf.yaml"
    conf.write_text("a: 1\n")
    write = ["-c", f"open({str(out)!r}, 'w').write('x')"]
    stage = real.Stage("train seed0", write, [out], inputs=[conf])
    assert not real.is_done(work, stage)
    real.run_stage(work, stage)
    assert out.read_text() == "x" and real.is_done(work, stage)
    assert not real.is_done(work, real.Stage("train seed0", [*write, "--other"], [out], inputs=[conf]))
    conf.write_text("a: 2\n")                                   # an edited config trains again
    assert not real.is_done(work, stage)
    real.run_stage(work, stage)
    out.unlink()                                                 # an output gone: not done
    assert not real.is_done(work, stage)
    failing = real.Stage("train seed0", ["-c", "import sys; sys.exit(3)"], [out], inputs=[conf])
    out.write_text("stale")                                      # left by an earlier run
    with pytest.raises(SystemExit, match="stage train seed0 failed \\(exit 3\\)"):
        real.run_stage(work, failing)
    assert not real.is_done(work, failing) and not real.is_done(work, stage)  # its stamp went first


def _scored_pairs(seed: int, n: int = 60) -> list[dict]:
    """Scored frame_corruption pairs: blur is easy for this fake judge, noise is a coin toss."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        kind, sev = ("blur", "noise")[i % 2], 1 + i % 3
        meta = {"source_id": f"s{i // 6}", "window": [float(i), float(i + 2)], "kind": "original_vs_perturbed",
                "severity": sev, "chosen_severity": 0, "chosen_ops": [], "chosen_defect": 0.0,
                "ops": [{"name": "frame_corruption", "params": {"kind": kind, "strength": sev}}],
                "operator": "frame_corruption", "defect": float(sev)}
        gap = 2.0 if kind == "blur" else 0.0
        pairs.append({"meta": meta, "z_chosen": float(rng.normal(gap)), "z_rejected": float(rng.normal(0.0))})
    return pairs


def test_table_reads_the_report_with_variants_and_mean_sd_over_seeds():
    from eval.evaluate import build_report

    reports = []
    for seed in (1, 2):
        test = _scored_pairs(seed)
        rep, _ = build_report(_scored_pairs(seed + 10), test, dim="video_quality", n_boot=10)
        rows = {r["variant"]: r for r in rep["per_variant"]}
        for kind in ("blur", "noise"):  # the per-variant hook of eval: pairs of that kind only
            ps = [p for p in test if p["meta"]["ops"][0]["params"]["kind"] == kind]
            assert rows[kind]["n_pairs"] == len(ps)
            assert rows[kind]["pairwise_accuracy"] == pytest.approx(np.mean([p["z_chosen"] > p["z_rejected"] for p in ps]))
        reports.append(json.loads(json.dumps(rep, default=float)))
    table = real.results_table(reports, real.RECIPES["video_quality"], n_sources=3).splitlines()
    header = [c.strip() for c in table[2].strip("|").split("|")]
    assert header == ["seed", "sev 1", "sev 2", "sev 3", "frame_corruption", "blur", "noise", "all", "AUC"]
    rows = {r[0]: r for r in ([c.strip() for c in line.strip("|").split("|")] for line in table[4:7])}
    blur = [next(r["pairwise_accuracy"] for r in rep["per_variant"] if r["variant"] == "blur") for rep in reports]
    assert rows["0"][5] == f"{blur[0]:.3f}" and rows["1"][5] == f"{blur[1]:.3f}"
    assert rows["mean +- sd"][5] == f"{np.mean(blur):.3f} +- {np.std(blur, ddof=1):.3f}"
    alls = [rep["test"]["pairwise_accuracy"]["value"] for rep in reports]
    assert rows["mean +- sd"][7] == f"{np.mean(alls):.3f} +- {np.std(alls, ddof=1):.3f}"
    text = "\n".join(table)
    assert "3 sources" in text and "frame_corruption" in text.split("Spearman(score, defect):")[1]
    ece = reports[0]["calibration"]["test"]["platt"]["ece"]
    assert f"{ece:.3f}" in next(line for line in table if line.startswith("| 0 |") and "/" in line)


@pytest.mark.slow
def test_make_real_end_to_end_on_fixture_videos_resumes_and_prints_the_table(tmp_path, capfd, monkeypatch):
    """The lip_sync recipe with pretraining and the offsets step, a tiny judge, 5 synthetic 3 s clips."""
    import yaml

    from tests.train_fixtures import write_fixture_videos, write_tiny_config

    src = tmp_path / "clips"
    videos = write_fixture_videos(src, sources=5, seconds=3.0, seed=1)
    extra = tmp_path / "extra"
    for i, v in enumerate(write_fixture_videos(tmp_path / "extra_raw", sources=2, seconds=3.0, seed=2)):
        extra.mkdir(exist_ok=True)
        v.rename(extra / f"extra_{i}.mp4")  # other names: pretraining leaves out held-out sources by name
    conf = write_tiny_config(tmp_path / "tiny.yaml", max_steps=4)
    c = yaml.safe_load(conf.read_text())
    c["pretrain"] = {"max_steps": 3, "hop_seconds": 1.0, "batch_size": 4}
    conf.write_text(yaml.safe_dump(c))
    monkeypatch.setitem(real.RECIPES, "lip_sync", replace(real.RECIPES["lip_sync"], pretrain=True, sync_offsets=True))
    work = tmp_path / "work"
    argv = ["--dim", "lip_sync", "--src", str(src), "--extra", str(extra), "--work", str(work),
            "--config", str(conf), "--workers", "1"]

    assert real.main(argv) == 0
    out = capfd.readouterr().out
    stages = ["shards", "pretrain", "train seed0", "eval seed0", "sync_offsets"]
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("[real] ")] == \
        [f"[real] {s}" for s in stages]
    report = json.loads((work / "reports/seed0/report.json").read_text())
    table = (work / "table.md").read_text().strip()
    assert table in out
    row = [c.strip() for c in next(line for line in table.splitlines() if line.startswith("| 0 |")).strip("|").split("|")]
    assert row[-2:] == [f"{report['test']['pairwise_accuracy']['value']:.3f}", f"{report['test']['auc']['value']:.3f}"]
    assert "audio_shift" in table.splitlines()[2] and "(sev " in table.splitlines()[2]
    assert "untouched clips with |estimate| <= 1 frame" in out          # bench/sync_offsets.py's summary
    assert f"python -m eval score --scorer {work / 'export'} FILE" in out
    train_metrics = json.loads((work / "runs/seed0/metrics.json").read_text())
    assert train_metrics["init_tensors"] > 0                            # trained from the pretraining run

    # a second run re-runs nothing and rewrites no output
    before = {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file() and p.name != "table.md"}
    assert real.main(argv) == 0
    out = capfd.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("[real] ")] == \
        [f"[real] {s}: done, skipped" for s in stages]
    assert {p: p.stat().st_mtime_ns for p in before} == before

    # an evaluation killed before its report: only it runs again
    (work / "reports/seed0/report.json").unlink()
    assert real.main(argv) == 0
    ran = [line.split(":")[0] for line in capfd.readouterr().out.splitlines()
           if line.startswith("[real] ") and "skipped" not in line]
    assert ran[0] == "[real] eval seed0" and "[real] train seed0" not in ran

    # the export scores files
    r = subprocess.run([sys.executable, "-m", "eval", "score", "--scorer", str(work / "export"), str(videos[0])],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 0.0 <= json.loads(r.stdout.splitlines()[-1])["scores"]["lip_sync"] <= 1.0


def test_make_real_builds_from_several_folders_with_one_manifest(tmp_path, capsys, monkeypatch):
    """SRC is clips and clips-more by default: every build takes them all (one --manifest pins them),
    pretraining reads them and EXTRA."""
    clips, more, extra = (tmp_path / n for n in ("clips", "clips-more", "extra"))
    for d in (clips, more, extra):
        d.mkdir()
    assert [Path(s).name for s in real.DEFAULT_SRC] == ["clips", "clips-more"]
    monkeypatch.setitem(real.RECIPES, "lip_sync", replace(real.RECIPES["lip_sync"], pretrain=True))
    real.main(["--dim", "lip_sync", "--src", str(clips), str(more), "--extra", str(extra),
               "--work", str(tmp_path / "w"), "--dry"])
    cmds = [shlex.split(line) for line in capsys.readouterr().out.strip().splitlines()]
    build = cmds[0]
    assert build[build.index("--src") + 1: build.index("--dim")] == [str(clips), str(more)]
    assert _flag(build, "--manifest") == ["data_cards/manifests/realvids_clips.csv"]
    assert _flag(cmds[1], "--src") == [str(clips), str(more), str(extra)]
    with pytest.raises(SystemExit, match="no real footage at .*absent"):
        real.main(["--dim", "lip_sync", "--src", str(clips), str(tmp_path / "absent"), "--dry"])


def test_the_realvids_manifest_pins_eight_speaker_groups_in_val_and_test():
    """The pins every make real build uses (no footage needed): >= 8 single-speaker groups in val and in
    test, no group in two splits, today's test sources still in test, the multi-face clips marked, the
    sources that failed the sync check in train, every correction with its evidence."""
    from perturb.pipeline import _faces, _pinned_split, read_manifest

    manifest = ROOT / "data_cards/manifests/realvids_clips.csv"
    rows = read_manifest(manifest)
    split = {name: _pinned_split(row, manifest) for name, row in rows.items()}
    faces = {name: _faces(row, manifest) for name, row in rows.items()}
    assert all(split.values())                                          # every source pinned
    groups: dict[str, set[str]] = {}
    for name, row in rows.items():
        groups.setdefault(row["group"], set()).add(split[name])
    assert all(len(s) == 1 for s in groups.values())
    for held_out in ("val", "test"):
        single = {rows[n]["group"] for n in rows if split[n] == held_out and faces[n] == 1}
        assert len(single) >= 8, (held_out, sorted(single))
    assert {n: faces[n] for n in faces if faces[n] > 1} == {
        "VisualVoice__test_videos_interview.mp4": 2, "avobjects__media_demo.mp4": 4,
        "avobjects__media_trump_biden_debate.mp4": 2}
    for name in ("LatentSync__assets_demo2_video.mp4", "LipNet__evaluation_samples_GRID_sbwe5n.mpg",
                 "SadTalker__examples_ref_video_WDA_AlexandriaOcasioCortez_000.mp4",
                 "Talking-Face_PC-AVS__misc_Audio_Source_00015.mp4", "VisualVoice__test_videos_interview.mp4"):
        assert split[name] == "test", name
    assert {n for n, r in rows.items() if r.get("sync_check") == "fail"} and \
        all(split[n] == "train" for n, r in rows.items() if r.get("sync_check") == "fail")
    corrected = {n: r for n, r in rows.items() if r.get("av_offset_ms")}
    assert corrected and all(r["av_offset_evidence"].startswith("peak r ") for r in corrected.values())
    flagged = [n for n, r in rows.items() if r.get("sync_confidence")]
    assert flagged and all(rows[n].get("sync_check") in ("pass", "fail") for n in flagged)
