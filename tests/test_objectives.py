"""Training objectives as extension points: strict training YAMLs, the knobs as
documented Config fields, one trainer constructor shape, and the check of TRL / transformers
private members."""
from __future__ import annotations

import configparser
import dataclasses
import inspect
import json
from pathlib import Path

import pytest
import torch
import transformers
import trl
import yaml

from tests.train_fixtures import TINY_MODEL, TINY_PREPROCESS, write_fixture_shards, write_tiny_config
from train import private_members
from train.config import load_config
from train.arguments import JudgeArguments, JudgeDPOConfig, JudgeRewardConfig, JudgeSFTConfig
from train.data import load_split
from train.model import AVJudge, judge_config_for
from train.preprocess import PreprocessConfig
from train.trainers import OBJECTIVES, PRETRAINING, JudgeSFTTrainer

ROOT = Path(__file__).resolve().parents[1]
PRE = PreprocessConfig(**TINY_PREPROCESS)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_fixture_shards(tmp_path_factory.mktemp("shards"), sources=4, seconds=2.0, pairs_per_window=2,
                                splits={"train": 0.75, "val": 0.25}, seed=1)


@pytest.fixture(scope="module")
def pairs(shards, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return (load_split(shards, "train", PRE, cache, num_workers=0, log=lambda *a: None),
            load_split(shards, "val", PRE, cache, num_workers=0, log=lambda *a: None))


def _yaml(tmp_path: Path, **sections) -> str:
    conf = {"dim": "lip_sync", "preprocess": PRE.to_dict(), "model": TINY_MODEL, **sections}
    path = tmp_path / "conf.yaml"
    path.write_text(yaml.safe_dump(conf))
    return str(path)


# ------------------------------------------------------------------------------ strict YAML sections

@pytest.mark.parametrize("sections, named", [
    ({"train": {"batch_sise": 8}}, ["train: unknown key(s) ['batch_sise']", "did you mean 'batch_size'",
                                     "'max_train_minutes'"]),
    ({"train": {"beta": 0.5}}, ["train: unknown key(s) ['beta']", "'beta' belongs under objectives: dpo"]),
    ({"objectives": {"rewrad": {}}}, ["objectives: unknown key(s) ['rewrad']", "['dpo', 'reward', 'sft']"]),
    ({"objectives": {"dpo": {"sft_warmup_step": 50}}},
     ["objectives: dpo: unknown key(s) ['sft_warmup_step']", "did you mean 'sft_warmup_steps'", "'beta'"]),
    ({"objectives": {"reward": {"margin_scal": 0.1}}}, ["objectives: reward: unknown", "'margin_scale'"]),
    ({"pretrain": {"hop_second": 0.5}}, ["pretrain: unknown key(s) ['hop_second']", "'hop_seconds'"]),
    ({"preprocess": {**PreprocessConfig().to_dict(), "crop_sise": [8, 8]}},
     ["preprocess: unknown key(s) ['crop_sise']", "'crop_size'"]),
])
def test_unknown_yaml_key_names_it_and_the_valid_ones(sections, named, tmp_path):
    with pytest.raises(SystemExit) as err:
        load_config("lip_sync", _yaml(tmp_path, **sections))
    message = str(err.value)
    assert "conf.yaml" in message and "valid keys" in message
    for text in named:
        assert text in message, (text, message)


def test_shipped_training_configs_are_valid():
    paths = sorted((ROOT / "train" / "configs").rglob("*.yaml"))
    assert len(paths) >= 3
    for path in paths:
        conf = load_config("unused", str(path))
        for name, (_, config_cls) in OBJECTIVES.items():
            kw = config_cls.section_kwargs(conf, ("objectives", name), {"output_dir": "unused"})
            assert set(kw) <= {f.name for f in dataclasses.fields(config_cls)}, path


def test_cli_typo_in_objectives_stops_before_loading_data(shards, tmp_path):
    from train.__main__ import main

    conf = _yaml(tmp_path, objectives={"sft": {"los_type": "nll"}})
    with pytest.raises(SystemExit, match=r"objectives: sft: unknown key\(s\) \['los_type'\].*'loss_type'"):
        main(["--dim", "lip_sync", "--objective", "reward", "--shards", str(shards), "--run", str(tmp_path / "r"),
              "--config", conf])
    assert not (tmp_path / "r").exists()
    with pytest.raises(SystemExit, match=r"--objective 'rm': unknown; registered: \['dpo', 'reward', 'sft'\]"):
        main(["--dim", "lip_sync", "--objective", "rm", "--shards", str(shards), "--run", str(tmp_path / "r"),
              "--config", conf])


# ------------------------------------------------------------------------------ knobs as Config fields

def test_yaml_knobs_are_config_fields(tmp_path):
    conf = {"train": {"batch_size": 12, "max_train_minutes": 3, "learning_rate": 0.01},
            "objectives": {"dpo": {"sft_warmup_steps": 7, "beta": 0.3},
                           "sft": {"label_smoothing_factor": 0.2, "learning_rate": 0.02}}}
    reward = JudgeRewardConfig.from_sections(conf, ("objectives", "reward"), output_dir=str(tmp_path), seed=5)
    assert (reward.batch_size, reward.per_device_train_batch_size) == (12, 12)  # one process
    assert reward.max_train_minutes == 3 and reward.learning_rate == 0.01 and reward.seed == 5
    dpo = JudgeDPOConfig.from_sections(conf, ("objectives", "dpo"), output_dir=str(tmp_path), seed=5, max_steps=9)
    assert dpo.sft_warmup_steps == 7 and dpo.beta == 0.3 and dpo.max_steps == 9
    warm = dpo.sft_warmup_config()  # the warm start reads train: + objectives: sft:, not dpo's section
    assert isinstance(warm, JudgeSFTConfig)
    assert (warm.max_steps, warm.label_smoothing_factor, warm.learning_rate, warm.batch_size, warm.seed) == \
        (7, 0.2, 0.02, 12, 5)
    assert warm.save_strategy == "no" and warm.eval_strategy == "no" and warm.max_train_minutes is None
    assert warm.output_dir == str(tmp_path / "sft_warmup")
    # built without a YAML: the warm start takes the DPO config's shared fields
    bare = JudgeDPOConfig(output_dir=str(tmp_path), sft_warmup_steps=4, batch_size=6, learning_rate=0.05)
    assert (bare.sft_warmup_config().batch_size, bare.sft_warmup_config().learning_rate) == (6, 0.05)
    # without batch_size, per_device_train_batch_size stands and gives the global batch
    assert JudgeSFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=6).batch_size == 6


def test_defaults_that_differ_from_training_arguments_are_documented():
    ours = {f.name: f.default for f in dataclasses.fields(JudgeArguments)}
    theirs = {f.name: f.default for f in dataclasses.fields(transformers.TrainingArguments)}
    differing = [k for k, v in ours.items() if k in theirs and v != theirs[k]]
    assert differing, "JudgeArguments overrides no TrainingArguments default?"
    documented = JudgeArguments.__doc__.split("Defaults that differ from transformers' TrainingArguments")[1]
    missing = [k for k in differing if k not in documented]
    assert not missing, f"JudgeArguments defaults differing from TrainingArguments, undocumented: {missing}"
    for name in ("batch_size", "max_train_minutes"):
        assert f"{name} (`" in JudgeArguments.__doc__, name
    assert "sft_warmup_steps (`" in JudgeDPOConfig.__doc__


def test_time_budget_field_stops_training(pairs, tmp_path):
    train, val = pairs
    args = JudgeSFTConfig(output_dir=str(tmp_path), max_steps=50, batch_size=4, eval_strategy="no",
                          save_strategy="no", max_train_minutes=1e-6, augment=False, disable_tqdm=True)
    torch.manual_seed(0)
    trainer = JudgeSFTTrainer(AVJudge(judge_config_for(PRE, **TINY_MODEL)), args, train, val)
    trainer.train()
    assert trainer.state.global_step == 1


# ------------------------------------------------------------------------------ one constructor shape

def test_every_trainer_has_one_constructor_shape():
    for trainer_cls, config_cls in [*OBJECTIVES.values(), PRETRAINING]:
        params = list(inspect.signature(trainer_cls.__init__).parameters)
        assert params == ["self", "model", "args", "train_data", "val_pairs", "callbacks"], trainer_cls
        assert issubclass(config_cls, JudgeArguments)


def test_a_registered_objective_trains_through_the_cli_unedited(shards, tmp_path, monkeypatch):
    """python -m train builds whatever OBJECTIVES names, from its YAML section, with no code of its own."""
    from train.__main__ import main

    class HalfSmoothedSFT(JudgeSFTTrainer):
        pass

    monkeypatch.setitem(OBJECTIVES, "sft_smooth", (HalfSmoothedSFT, JudgeSFTConfig))
    conf = write_tiny_config(tmp_path / "tiny.yaml")
    data = yaml.safe_load(conf.read_text())
    data["objectives"]["sft_smooth"] = {"label_smoothing_factor": 0.5}
    conf.write_text(yaml.safe_dump(data))
    m = main(["--dim", "lip_sync", "--objective", "sft_smooth", "--shards", str(shards), "--run",
              str(tmp_path / "run"), "--config", str(conf), "--cache-dir", str(tmp_path / "cache"), "--max-steps", "2"])
    assert m["objective"] == "sft_smooth" and m["steps"] == 2
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())["training_args"]
    assert saved["label_smoothing_factor"] == 0.5 and saved["batch_size"] == 4


def test_dpo_warm_start_and_reference_resume_through_the_cli(shards, tmp_path, capsys):
    from train.__main__ import main

    conf = write_tiny_config(tmp_path / "tiny.yaml")
    data = yaml.safe_load(conf.read_text())
    data["objectives"]["dpo"] = {"sft_warmup_steps": 3, "beta": 0.5}
    conf.write_text(yaml.safe_dump(data))
    run = tmp_path / "run"
    common = ["--dim", "lip_sync", "--objective", "dpo", "--shards", str(shards), "--run", str(run),
              "--config", str(conf), "--cache-dir", str(tmp_path / "cache")]
    m = main([*common, "--max-steps", "4"])
    assert m["sft_warmup_steps"] == 3 and m["steps"] == 4
    reference = run / "checkpoints" / "dpo" / "dpo_reference" / "model.safetensors"
    assert reference.is_file()
    assert "SFT warm start: 3 steps" in capsys.readouterr().out
    before = reference.read_bytes()
    m = main([*common, "--max-steps", "6"])  # resumed: no warm start, the same reference read back
    out = capsys.readouterr().out
    assert m["resumed_from"].endswith("checkpoint-4") and m["sft_warmup_steps"] == 0 and m["steps"] == 6
    assert "DPO reference from" in out and "SFT warm start" not in out
    assert reference.read_bytes() == before


# ------------------------------------------------------------------------------ private members

def test_private_members_are_where_the_trainers_expect_them():
    assert private_members.private_member_problems() == []


@pytest.mark.parametrize("owner, name, replacement, expected", [
    (trl.trainer.base_trainer._BaseTrainer, "_send_telemetry", None,
     "trl.trainer.base_trainer._BaseTrainer._send_telemetry: not found"),
    (trl.RewardTrainer, "log", transformers.Trainer.log, "trl.RewardTrainer.log: no longer uses self._metrics"),
    (transformers.Trainer, "_save_checkpoint", lambda self, model: None,
     "transformers.Trainer._save_checkpoint: parameters are now ('model',)"),
])
def test_a_moved_private_member_stops_trainer_construction_naming_it(owner, name, replacement, expected, pairs,
                                                                     tmp_path, monkeypatch):
    if replacement is None:
        monkeypatch.delattr(owner, name)
    else:
        monkeypatch.setattr(owner, name, replacement)
    assert any(p.startswith(expected) for p in private_members.private_member_problems()), expected
    train, val = pairs
    trainer_cls, config_cls = OBJECTIVES["reward"]
    args = config_cls(output_dir=str(tmp_path), max_steps=1, disable_tqdm=True)
    with pytest.raises(RuntimeError, match="moved private members") as err:
        trainer_cls(AVJudge(judge_config_for(PRE, **TINY_MODEL)), args, train, val)
    assert expected in str(err.value) and "setup.cfg" in str(err.value)


def test_setup_cfg_pins_the_tested_trl_and_transformers():
    from packaging.requirements import Requirement

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = [line.strip() for line in cfg["options"]["install_requires"].splitlines()]
    reqs = {r.name: r for r in map(Requirement, filter(None, lines))}
    for module in (trl, transformers):
        spec = reqs[module.__name__].specifier
        assert any(s.operator == "<" for s in spec), f"{module.__name__}: no upper bound in setup.cfg"
        assert spec.contains(module.__version__), f"installed {module.__name__} {module.__version__} outside {spec}"
