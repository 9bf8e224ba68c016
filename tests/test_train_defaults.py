"""A dimension without a training config of its own trains from a default chosen by what its recipe's
operators modify, and training refuses an augmentation that imitates one of those operators."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from perturb.operators import get_operator
from perturb.recipe import load_recipe
from train.config import (AUGMENT_IMITATES, CONFIG_DIR, DEFAULTS_DIR, check_augment_against_recipe, default_config,
                          load_config)

from .train_fixtures import write_fixture_shards


def card_of(ops: dict[str, str]) -> dict:
    return {"question": "Is it right?", "counts_per_operator": {op: 3 for op in ops}, "operator_modifies": ops}


@pytest.mark.parametrize("ops, kind", [
    ({"my_gain": "audio"}, "audio"),
    ({"my_blur": "video"}, "video"),
    ({"my_gain": "audio", "my_blur": "video"}, "both"),
    ({"my_dub": "both"}, "both"),
    ({}, "both"),                      # a card that does not record what its operators modify
])
def test_a_dimension_without_a_config_gets_the_default_for_what_its_operators_modify(ops, kind):
    lines: list[str] = []
    conf = load_config("my_new_dim", None, card_of(ops) if ops else {}, log=lines.append)
    assert conf["_path"] == str(DEFAULTS_DIR / f"{kind}.yaml")
    assert conf["dim"] == "my_new_dim"
    assert len(lines) == 1 and f"defaults/{kind}.yaml" in lines[0] and "my_new_dim.yaml" in lines[0]
    for op, what in ops.items():
        assert f"{op} ({what})" in lines[0]
    if ops:
        assert conf["question"] == "Is it right?"


def test_a_dimension_with_a_config_or_an_explicit_one_ignores_the_defaults():
    lines: list[str] = []
    assert load_config("lip_sync", None, card_of({"x": "video"}), log=lines.append)["_path"] == \
        str(CONFIG_DIR / "lip_sync.yaml")
    assert not lines
    with pytest.raises(SystemExit, match="no training config"):
        load_config("my_new_dim", "missing.yaml", card_of({"x": "video"}))


def test_default_config_names_its_reason():
    path, why = default_config("dub", card_of({"tts": "audio"}))
    assert path == DEFAULTS_DIR / "audio.yaml" and "tts (audio)" in why and "--config" in why


@pytest.mark.parametrize("augment, ops, refused", [
    (True, {"frame_corruption": "video"}, "flicker"),            # augment: true switches flicker on
    ({"flicker": 0.0}, {"frame_corruption": "video"}, "video_noise"),
    ({"flicker": 0.0, "video_noise": 0.0}, {"frame_corruption": "video"}, None),
    (True, {"snr_noise": "audio"}, "audio_noise"),
    ({"audio_noise": 0.0, "freq_mask": 4}, {"band_limit": "audio"}, "freq_mask"),
    ({"time_warp": 0.1}, {"tempo_change": "audio"}, "time_warp"),
    (True, {"audio_shift": "audio"}, None),
    (False, {"frame_corruption": "video"}, None),
])
def test_an_augmentation_that_imitates_a_recipe_operator_is_refused_in_one_line(augment, ops, refused):
    if refused is None:
        check_augment_against_recipe("conf.yaml", augment, card_of(ops))
        return
    with pytest.raises(SystemExit) as err:
        check_augment_against_recipe("conf.yaml", augment, card_of(ops))
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"conf.yaml: augment {refused}:") and next(iter(ops)) in message


def _recipe_operators(spec) -> set[str]:
    if isinstance(spec, dict):
        found = {spec["op"]} if "op" in spec else set()
        return found.union(*(_recipe_operators(v) for v in spec.values() if isinstance(v, (dict, list))))
    if isinstance(spec, list):
        return set().union(*(_recipe_operators(v) for v in spec))
    return set()


@pytest.mark.parametrize("config", sorted(p for p in CONFIG_DIR.rglob("*.yaml") if p.parent.name != "defaults"),
                         ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_shipped_configs_never_augment_like_their_recipe_defects(config):
    """Each shipped config against its dimension's recipe, as python -m train checks it."""
    conf = load_config("", str(config))
    recipe = load_recipe(conf["dim"])
    ops = {op: get_operator(op).modifies for op in _recipe_operators(recipe.transform_spec)}
    assert ops, recipe.name
    for section in [conf.get("train") or {}, *((conf.get("objectives") or {}).values())]:
        if "augment" in (section or {}):
            check_augment_against_recipe(str(config), section["augment"], card_of(ops))
    check_augment_against_recipe(str(config), (conf.get("train") or {}).get("augment", True), card_of(ops))


def test_the_defaults_cover_every_kind_and_augment_framing_only():
    assert {p.stem for p in DEFAULTS_DIR.glob("*.yaml")} == {"audio", "video", "both"}
    every_op = {op: "both" for ops in AUGMENT_IMITATES.values() for op in ops}
    for kind in ("audio", "video", "both"):
        conf = load_config("", str(DEFAULTS_DIR / f"{kind}.yaml"))
        check_augment_against_recipe(kind, conf["train"]["augment"], card_of(every_op))


def test_train_cli_says_which_default_it_used_and_trains(tmp_path, capsys):
    """python -m train for a dimension with no config: one line naming the default, then a judge."""
    from train.__main__ import main

    shards = tmp_path / "shards"
    write_fixture_shards(shards, sources=4, seconds=2.0)
    card = json.loads((shards / "card.json").read_text())
    card.update(counts_per_operator={"audio_shift": 4}, operator_modifies={"audio_shift": "audio"},
                question="Is the speech in sync?")
    (shards / "card.json").write_text(json.dumps(card))
    metrics = main(["--dim", "my_sync", "--shards", str(shards), "--run", str(tmp_path / "run"),
                    "--cache-dir", str(tmp_path / "cache"), "--max-steps", "1"])
    captured = capsys.readouterr()
    out = captured.out
    assert f"using {DEFAULTS_DIR / 'audio.yaml'}" in out and "audio_shift (audio)" in out
    assert "Writing model shards" not in captured.err  # a bar that says nothing useful
    assert metrics["steps"] == 1 and metrics["config"] == str(DEFAULTS_DIR / "audio.yaml")
    saved = yaml.safe_load(Path(json.loads((tmp_path / "run" / "metrics.json").read_text())["config"]).read_text())
    assert saved["model"]["frame_encoder"] == "grid"
    assert json.loads((tmp_path / "run" / "model" / "config.json").read_text())["question"] == "Is the speech in sync?"



def test_the_data_card_records_what_each_operator_modifies():
    from perturb.cards import _operator_modifies

    records = [{"operator": "audio_shift", "ops": [{"name": "audio_shift", "params": {}}]},
               {"operator": "compose", "ops": [{"name": "frame_corruption", "params": {}},
                                                {"name": "voice_swap", "params": {}}]}]
    assert _operator_modifies([r for r in records if r["operator"] != "compose"]) == {"audio_shift": "audio"}
    assert _operator_modifies([{**r, "operator": r["ops"][0]["name"]} for r in records]) == {
        "audio_shift": "audio", "frame_corruption": "video", "voice_swap": "audio"}
