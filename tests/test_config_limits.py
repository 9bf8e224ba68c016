"""Recipes and training configs are user input: bounded files, no YAML aliases, a range for every number,
one-line errors; and `make real` removes the temporaries of a killed run."""
from __future__ import annotations

import dataclasses
import inspect
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from perturb.recipe import RECIPES_DIR, load_recipe
from tests.test_recipes import error_of

ROOT = Path(__file__).resolve().parents[1]
TOY = {"dim": "toy", "question": "Is it fine?", "transform": {"op": "audio_shift"}}


def write_recipe(tmp_path: Path, text: str | None = None, **changes) -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text(text if text is not None else yaml.safe_dump({**TOY, **changes}))
    return path


def write_config(tmp_path: Path, text: str | None = None, **sections) -> Path:
    path = tmp_path / "conf.yaml"
    path.write_text(text if text is not None else yaml.safe_dump({"dim": "lip_sync", **sections}))
    return path




def config_error(path: Path) -> str:
    from train.config import load_config

    with pytest.raises(SystemExit) as err:
        load_config("lip_sync", str(path))
    message = str(err.value.code)
    assert "\n" not in message and str(path) in message
    return message


def alias_bomb(levels: int) -> str:
    """A recipe whose transform holds `levels` nested anchors of 10 aliases each: 10**levels leaves
    from a kB or two of YAML, all in valid places (an operator keyword)."""
    tree = "&a0 [40, 80, 40, 80, 40, 80, 40, 80, 40, 80]"
    for i in range(1, levels):
        tree = f"&a{i} [{tree}, {', '.join([f'*a{i - 1}'] * 9)}]"
    return f"dim: toy\nquestion: Is it fine?\ntransform: {{op: audio_shift, offset_range_ms: {tree}}}\n"


# ------------------------------------------------------------------------------ YAML itself

def test_recipe_with_an_alias_is_refused_in_one_line(tmp_path):
    path = write_recipe(tmp_path, "dim: toy\nquestion: Is it fine?\nwindow_seconds: &w 4.0\n"
                                  "transform: {one_of: [{op: audio_shift, weight: &x 1}, {op: lip_drift, weight: *x}]}\n")
    assert "YAML aliases (*x) are not allowed in recipes/configs" in error_of(path)


def test_an_alias_bomb_in_the_transform_fails_at_once(tmp_path):
    path = write_recipe(tmp_path, alias_bomb(25))
    assert len(path.read_bytes()) < 2000
    code = "import sys; from perturb.recipe import load_recipe; load_recipe(sys.argv[1])"
    t0 = time.monotonic()
    try:  # before aliases were refused this expanded 10**25 leaves (hung)
        out = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, capture_output=True, text=True,
                             timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("loading a 25-level alias bomb did not finish in 60 s")
    assert out.returncode != 0 and "YAML aliases (*a0) are not allowed" in out.stderr
    assert time.monotonic() - t0 < 60


def test_train_config_with_an_alias_is_refused_in_one_line(tmp_path):
    path = write_config(tmp_path, "dim: lip_sync\ntrain: {max_steps: &n 10, save_steps: *n}\n")
    assert "YAML aliases (*n) are not allowed in recipes/configs" in config_error(path)


def test_oversized_deep_or_broken_yaml_is_one_line(tmp_path):
    big = write_recipe(tmp_path, yaml.safe_dump(TOY) + "# padding\n" * 120_000)  # 1.2 MB of comments
    assert "over 1048576 bytes" in error_of(big)
    deep = write_recipe(tmp_path, yaml.safe_dump(TOY) + "extra: " + "[" * 200 + "]" * 200 + "\n")
    assert "nested deeper than 50 levels" in error_of(deep)
    broken = write_recipe(tmp_path, "dim: toy\ntransform: {op: audio_shift\n")
    assert "not valid YAML at line" in error_of(broken)
    assert "not valid YAML at line" in config_error(write_config(tmp_path, "train: [1, 2\n"))


# ------------------------------------------------------------------------------ ranges

@pytest.mark.parametrize("changes, expected", [
    ({"pairs_per_window": 10**9}, "pairs_per_window must be in [1, 50], got 1000000000"),
    ({"window_seconds": 1e-9}, "window_seconds must be in [0.2, 30], got 1e-09"),
    ({"window_seconds": 3600}, "window_seconds must be in [0.2, 30], got 3600"),
    ({"splits": {"train": 1e300, "val": 1, "test": 1}}, "splits.train must be in [0, 1000]"),
    ({"severity": {"weights": [1, 1, 1, 1, float("inf")]}}, "severity.weights[] must be in [0, 1000], got inf"),
    ({"transform": {"one_of": [{"op": "audio_shift", "weight": float("inf")}]}}, "weight must be in [0, 1000], got inf"),
])
def test_recipe_numbers_have_ranges(tmp_path, changes, expected):
    assert expected in error_of(write_recipe(tmp_path, **changes))


def test_build_overrides_are_checked_before_anything_is_made(tmp_path, capsys):
    from perturb.__main__ import main

    out = tmp_path / "out"
    for flags, expected in ((["--pairs-per-window", "1000000000"], "--pairs-per-window must be in [1, 50]"),
                            (["--window", "1e-9"], "--window must be in [0.2, 30]"),
                            (["--hop", "1e-9"], "--hop must be in [0.1, 3600]"),
                            (["--max-side", "100000"], "--max-side must be in [32, 2048]"),
                            (["--splits", "0.6,x,0.2"], "--splits '0.6,x,0.2': give three numbers"),
                            (["--splits", "0.6,0.4"], "give three numbers"),
                            (["--splits", "0.6,0.2,inf"], "splits.test must be in [0, 1000]")):
        code = main(["build", "--src", str(tmp_path / "no_such_src"), "--dim", "lip_sync", "--out", str(out),
                     "--cards", str(tmp_path / "cards"), *flags])
        err = capsys.readouterr().err.strip()
        assert code == 2 and expected in err and "\n" not in err, (flags, err)
    assert not out.exists() and not (tmp_path / "cards").exists()
    from perturb.recipe import check_build_values

    check_build_values(window_seconds=2, hop_seconds=1, pairs_per_window=4, max_windows=0, max_side=512,
                       splits={"train": 0.6, "val": 0.2, "test": 0.2})  # make real's flags pass


@pytest.mark.parametrize("sections, expected", [
    ({"preprocess": {"hop": 0}}, "preprocess: hop must be an integer in [16, 4096]"),
    ({"preprocess": {"window_seconds": 1e-9}}, "preprocess: window_seconds must be a number in [0.2, 30]"),
    ({"preprocess": {"crop_size": [32, 100000]}}, "preprocess: crop_size[] must be an integer in [4, 1024]"),
    ({"preprocess": {"fps": "25"}}, "preprocess: fps must be an integer in [1, 60] (video frames per second), got '25'"),
    ({"model": {"emb_dim": 10**9}}, "model: emb_dim must be an integer in [1, 1024]"),
    ({"model": {"vis_widths": [16] * 1000}}, "model: vis_widths must be a list of 1 to 16 numbers"),
    ({"train": {"batch_size": 10**9}}, "train: batch_size must be an integer in [1, 4096]"),
    ({"train": {"learning_rate": float("nan")}}, "train: learning_rate must be a number in [0, 10]"),
    ({"objectives": {"dpo": {"beta": -1}}}, "objectives: dpo: beta must be a number in [0, 100]"),
    ({"pretrain": {"hop_seconds": 1e-9}}, "pretrain: hop_seconds must be a number in [0.04, 60]"),
    ({"seed": -1}, "seed: seed must be an integer in [0, 4294967295]"),
    ({"train": {"augment": {"jitter": 10**9}}}, "train: augment: jitter must be an integer in [0, 64]"),
    ({"train": {"augment": {"jiter": 3}}}, "train: augment: unknown key(s) ['jiter']"),
])
def test_train_config_numbers_have_ranges(tmp_path, sections, expected):
    assert expected in config_error(write_config(tmp_path, **sections))


def test_configs_refuse_numbers_out_of_range_when_built():
    from train.arguments import JudgeRewardConfig
    from train.model import JudgeConfig
    from train.preprocess import PreprocessConfig

    with pytest.raises(ValueError, match=r"hop must be an integer in \[16, 4096\]"):
        PreprocessConfig(hop=0)  # was a ZeroDivisionError
    with pytest.raises(ValueError, match=r"crop_size must be \[height, width\], got 32"):
        PreprocessConfig(crop_size=32)  # was a TypeError
    with pytest.raises(ValueError, match=r"emb_dim must be an integer in \[1, 1024\]"):
        JudgeConfig(emb_dim=10**9)  # also what an export's config.json is loaded with
    with pytest.raises(ValueError, match=r"use_motion must be true or false"):
        JudgeConfig(use_motion="false")
    with pytest.raises(ValueError, match=r"vis_widths must be a list, got 16"):
        JudgeConfig(vis_widths=16)  # was a TypeError
    with pytest.raises(ValueError, match=r"batch_size must be an integer in \[1, 4096\]"):
        JudgeRewardConfig(output_dir="unused", batch_size=10**9)


def test_max_steps_and_seed_flags_are_ranged(capsys):
    from train.__main__ import parse_args

    assert parse_args(["--dim", "lip_sync", "--max-steps", "20", "--seed", "3"]).max_steps == 20
    for flags in (["--max-steps", "100000000000"], ["--seed", "-5"]):
        with pytest.raises(SystemExit) as err:
            parse_args(["--dim", "lip_sync", *flags])
        assert err.value.code == 2
        assert f"argument {flags[0]}: {flags[1]!r} is not an integer in [" in capsys.readouterr().err


def test_every_number_has_a_documented_range():
    from train.model import MODEL_RANGES, JudgeConfig
    from train.preprocess import PREPROCESS_RANGES, PreprocessConfig

    numeric = (int, float, tuple, list)
    pre = {f.name for f in dataclasses.fields(PreprocessConfig)
           if isinstance(f.default, numeric) and not isinstance(f.default, bool)} | {"crop_size"}
    assert pre <= set(PREPROCESS_RANGES), pre - set(PREPROCESS_RANGES)
    model = {p.name for p in inspect.signature(JudgeConfig.__init__).parameters.values()
             if isinstance(p.default, numeric) and not isinstance(p.default, bool) and p.name != "plugins"}
    assert model <= set(MODEL_RANGES), model - set(MODEL_RANGES)
    from train.arguments import AUGMENT_RANGES, TRAIN_RANGES
    from train.data import Augment

    assert set(AUGMENT_RANGES) == {f.name for f in dataclasses.fields(Augment)}
    for table in (PREPROCESS_RANGES, MODEL_RANGES, TRAIN_RANGES, AUGMENT_RANGES):
        assert all(lo <= hi and why for lo, hi, why in table.values())


def test_every_shipped_recipe_and_config_is_inside_the_ranges():
    from train.config import load_config

    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        load_recipe(path)
    configs = sorted((ROOT / "train" / "configs").rglob("*.yaml"))
    assert len(configs) >= 10
    for path in configs:
        load_config("", str(path))


# ------------------------------------------------------------------------------ malformed files

@pytest.mark.parametrize("text", [
    "- a list\n- not a recipe\n",
    "dim: toy\nquestion: q\ntransform: 5\n",
    "dim: {a: 1}\nquestion: q\ntransform: {op: audio_shift}\n",
    "dim: toy\nquestion: q\nseverity: [1, 2]\ntransform: {op: audio_shift}\n",
    "dim: toy\nquestion: q\nsplits: [0.7, 0.3]\ntransform: {op: audio_shift}\n",
    "dim: toy\nquestion: q\ntransform: {op: audio_shift, offset_range_ms: {a: 1}}\n",
    "dim: toy\nquestion: q\ntransform: {some_of: [{op: audio_shift}], n: [a, b]}\n",
    "dim: toy\nquestion: q\n1: 2\ntransform: {op: audio_shift}\n",
    "\xff\xfe not text",
])
def test_malformed_recipes_are_one_line(tmp_path, text):
    path = tmp_path / "toy.yaml"
    path.write_bytes(text.encode("latin-1"))
    error_of(path)


@pytest.mark.parametrize("text", [
    "- a list\n",
    "dim: lip_sync\nmodel: [1, 2]\n",
    "dim: lip_sync\npreprocess: {crop_size: [32, a]}\n",
    "dim: lip_sync\ntrain: {learning_rate: fast}\n",
    "dim: lip_sync\ntrain: [1]\n",
    "dim: lip_sync\nplugins: 5\n",
    "dim: lip_sync\nquestion: [a, b]\n",
    "dim: lip_sync\ntrain: {augment: 5}\n",
    "dim: lip_sync\n1: 2\n",
])
def test_malformed_train_configs_are_one_line(tmp_path, text):
    config_error(write_config(tmp_path, text))


# ------------------------------------------------------------------------------ make real's temporaries

def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the PID names no process now
    return proc.pid


def test_make_real_removes_the_temporaries_a_killed_run_left(tmp_path, monkeypatch):
    from bench import real

    src, work = tmp_path / "src", tmp_path / "work"
    src.mkdir()
    (work / ".stages").mkdir(parents=True)
    pid = dead_pid()
    stale = [work / f".sync_offsets.md.tmp{pid}", work / f".sync_offsets.jsonl.tmp{pid}",
             work / ".stages" / f".sync_offsets.json.tmp{pid}"]
    old = work / ".stages" / f".shards.json.tmp{os.getppid()}"  # a PID that runs, but a day old: reused
    running = work / f".table.md.tmp{os.getpid()}"  # a writer that runs keeps its file
    for path in (*stale, old, running):
        path.write_text("partial")
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    seen = {}

    def first_stage(w, stage):  # stop at the first stage: what is left then is what a re-run keeps
        seen["left"] = sorted(p.name for p in (*stale, old, running) if p.exists())
        raise SystemExit("stopped")

    monkeypatch.setattr(real, "run_stage", first_stage)
    with pytest.raises(SystemExit, match="stopped"):
        real.main(["--dim", "lip_sync", "--src", str(src), "--work", str(work)])
    assert seen["left"] == [running.name]


def test_sync_offsets_writes_its_copies_where_a_later_run_removes_them(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # a script, run as python bench/sync_offsets.py
    import sync_offsets

    left = tmp_path / f"{sync_offsets.TMP_PREFIX}{dead_pid()}.abc"
    left.mkdir()
    (left / "clip_+60.mp4").write_bytes(b"x")
    mine = tmp_path / f"{sync_offsets.TMP_PREFIX}{os.getpid()}.def"
    mine.mkdir()
    from bench.real import remove_stale_temporaries

    assert remove_stale_temporaries([tmp_path], sync_offsets.TMP_NAME) == [left]
    assert not left.exists() and mine.exists()
