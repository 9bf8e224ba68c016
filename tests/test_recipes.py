"""Recipes: every key checked, so a typo is a one-line error naming it and the valid keys."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from perturb.__main__ import main
from perturb.operators import ConfigError, OneOf
from perturb.operators.timing import AudioShift, LipDrift
from perturb.recipe import RECIPE_KEYS, RECIPES_DIR, load_recipe

BASE = {"dim": "toy", "question": "Is it in sync?",
        "transform": {"one_of": [{"op": "audio_shift", "weight": 0.6},
                                 {"op": "lip_drift", "weight": 0.4, "keep_pitch": True}]}}


def write_recipe(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump({**BASE, **changes}, sort_keys=False))
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


@pytest.mark.parametrize("name", sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
def test_builtin_recipes_load(name):
    recipe = load_recipe(name)
    assert recipe.dim == name and recipe.build_transform().leaves()


def test_builtin_lip_sync_recipe_values():
    recipe = load_recipe("lip_sync")
    assert (recipe.pairs_per_window, recipe.graded_pairs, recipe.window_seconds) == (3, 0.2, 5.0)
    assert recipe.splits == {"train": 0.7, "val": 0.15, "test": 0.15}
    tree = recipe.build_transform()
    assert isinstance(tree, OneOf) and list(tree.weights) == pytest.approx([0.6, 0.4])
    shift, drift = tree.children
    assert isinstance(shift, AudioShift) and isinstance(drift, LipDrift) and drift.keep_pitch is True


def test_recipe_key_typo(tmp_path):
    """`pair_per_window: 7` used to load with pairs_per_window = 2."""
    message = error_of(write_recipe(tmp_path, pair_per_window=7))
    assert "unknown key 'pair_per_window' (did you mean 'pairs_per_window'?)" in message
    assert message.endswith("valid: " + ", ".join(sorted(RECIPE_KEYS)))


def test_node_key_typo(tmp_path):
    """`wieght: 3` on a one_of child used to be dropped silently."""
    transform = {"one_of": [{"op": "audio_shift", "wieght": 3}, {"op": "lip_drift"}]}
    message = error_of(write_recipe(tmp_path, transform=transform))
    assert "transform.one_of[0] (op: audio_shift): unknown key 'wieght' (did you mean 'weight'?)" in message
    assert message.endswith("valid: offset_range_ms, op, p, weight")
    nested = {"one_of": [{"compose": [{"op": "audio_shift"}], "wieght": 3}, {"op": "lip_drift"}]}
    message = error_of(write_recipe(tmp_path, transform=nested))
    assert "transform.one_of[0] (compose): unknown key 'wieght'" in message
    assert message.endswith("valid: compose, p, weight")


def test_operator_keyword_typo_in_a_recipe(tmp_path):
    transform = {"one_of": [{"op": "audio_shift"}, {"op": "lip_drift", "keep_pich": True}]}
    message = error_of(write_recipe(tmp_path, transform=transform))
    assert "transform.one_of[1] (op: lip_drift): unknown key 'keep_pich' (did you mean 'keep_pitch'?)" in message
    assert message.endswith("valid: keep_pitch, op, p, weight")


def test_weight_outside_one_of_is_refused(tmp_path):
    """A weight under compose / some_of / the root would do nothing."""
    transform = {"compose": [{"op": "audio_shift", "weight": 2}]}
    message = error_of(write_recipe(tmp_path, transform=transform))
    assert "transform.compose[0] (op: audio_shift): unknown key 'weight'" in message
    assert message.endswith("valid: offset_range_ms, op, p")


@pytest.mark.parametrize("changes,expected", [
    ({"severity": {"levles": [1, 2]}}, "severity: unknown key 'levles' (did you mean 'levels'?); valid: levels, weights"),
    ({"splits": {"tarin": 0.7, "val": 0.3}}, "splits: unknown key 'tarin' (did you mean 'train'?); valid: test, train, val"),
    ({"pairs_per_window": 0}, "pairs_per_window must be in [1, 50], got 0"),
    ({"pairs_per_window": 2.5}, "pairs_per_window must be an integer in [1, 50]"),
    ({"graded_pairs": 1.5}, "graded_pairs must be in [0, 1], got 1.5"),
    ({"window_seconds": 0}, "window_seconds must be in [0.2, 30], got 0"),
    ({"severity": {"levels": [1, 6]}}, "severity.levels must be among [1, 2, 3, 4, 5], got [1, 6]"),
    ({"severity": {"levels": [1, 2], "weights": [1]}}, "severity.weights must be a list of 2 items"),
    ({"severity": {"weights": [0, 0, 0, 0, 0]}}, "severity.weights must not all be zero"),
    ({"splits": {"train": -0.1, "val": 1}}, "splits.train must be in [0, 1000], got -0.1"),
    ({"dim": ""}, "dim must be a non-empty string"),
    ({"transform": {"op": "lip_drfit"}}, "unknown operator 'lip_drfit' at transform; registered: audio_shift,"),
    ({"transform": {"op": "audio_shift", "one_of": []}}, "transform needs exactly one of op/one_of/some_of/compose"),
    ({"transform": {"op": "voice_swap", "donor_mode_prob": 2}},
     "transform: voice_swap: donor_mode_prob must be in [0, 1], got 2"),
    ({"transform": {"op": "audio_shift", "p": 1.5}}, "transform: audio_shift: p must be in [0, 1], got 1.5"),
    ({"transform": {"some_of": [{"op": "audio_shift"}], "n": [1, 3]}}, "transform: SomeOf n=(1, 3) does not fit 1 children"),
    ({"transform": {"one_of": [{"op": "audio_shift", "weight": -1}]}}, "transform.one_of[0]: weight must be in [0, 1000]"),
    ({"transform": {"compose": []}}, "compose must be a list of at least 1 item(s)"),
    ({"transform": ["audio_shift"]}, "transform must be a mapping like {op: NAME}"),
])
def test_bad_values_name_the_key(tmp_path, changes, expected):
    assert expected in error_of(write_recipe(tmp_path, **changes))


def test_build_cli_reports_a_bad_recipe_in_one_line(tmp_path, capsys):
    bad = write_recipe(tmp_path, pair_per_window=7)
    code = main(["build", "--src", str(tmp_path), "--dim", "toy", "--recipe", str(bad),
                 "--out", str(tmp_path / "out"), "--cards", str(tmp_path / "cards")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: recipe ")
    assert "'pair_per_window'" in err and "pairs_per_window" in err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_single_speaker_is_a_checked_flag_set_for_the_recipes_that_judge_one_speaker(tmp_path):
    assert load_recipe(write_recipe(tmp_path, single_speaker=True)).single_speaker is True
    assert load_recipe(write_recipe(tmp_path)).single_speaker is False
    message = error_of(write_recipe(tmp_path, single_speaker="yes"))
    assert "single_speaker must be true or false, got 'yes'" in message
    assert {name: load_recipe(name).single_speaker for name in
            sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))} == {
        "audio_quality": False, "av_consistency": True, "lip_sync": True, "speech_realism": False,
        "video_quality": False, "voice_identity": True}
