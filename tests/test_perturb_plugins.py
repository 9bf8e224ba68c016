"""Operators of one's own in perturb (--plugin, AVBENCH_PLUGINS, a recipe's plugins:, imported by the
spawned workers too), a worker that cannot run the build's code stopping the build, and looking at
one operator: `perturb apply` on one file, `perturb samples --op --severity --random`."""
from __future__ import annotations

import inspect
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from perturb import media
from tests.media_fixtures import make_video
from tests.test_operator_contract import ToyGain
from tests.test_pipeline import lag_ms

ROOT = Path(__file__).resolve().parents[1]
WINDOW = "2"

# a plugin module registering the docs' example operator as plug_gain
PLUGIN = ("from perturb.operators import Operator, check_number, register\n\n\n"
          + inspect.getsource(ToyGain) + '\n\nregister("plug_gain")(ToyGain)\n')
# imports in the build process, fails in its pool workers (a library missing on the workers' side)
WORKER_FAILS = textwrap.dedent('''
    import multiprocessing

    import plugmod  # noqa: F401

    if multiprocessing.parent_process() is not None:
        raise ImportError("libfoo.so: cannot open shared object file")
''')
# imports in the build process, fails in Ray's workers (they run no __main__.py)
RAY_WORKER_FAILS = textwrap.dedent('''
    import sys

    import plugmod  # noqa: F401

    if not sys.argv[0].endswith("__main__.py"):
        raise ImportError("libfoo.so: cannot open shared object file")
''')
# an operator that kills the worker process running it (as the kernel's OOM killer would)
KILLER = textwrap.dedent('''
    import os
    import signal

    import plugmod

    from perturb.operators import register


    @register("killer_gain")
    class KillerGain(plugmod.ToyGain):
        """Quieter audio, after killing its own process. Keywords: step_db, p (as ToyGain)."""

        def sample_params(self, rng, severity):
            os.kill(os.getpid(), signal.SIGKILL)
''')
RECIPE = {"dim": "plug_dim", "question": "Is the loudness natural?", "pairs_per_window": 2,
          "transform": {"op": "plug_gain"}, "splits": {"train": 1, "val": 1, "test": 1}}


def _run(args: list[str], cwd: Path, plugin_dir: Path | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """python -m perturb ARGS with the plugin folder on PYTHONPATH (spawned workers read it too)."""
    full_env = {k: v for k, v in os.environ.items() if k != "AVBENCH_PLUGINS"}
    full_env["PYTHONPATH"] = os.pathsep.join([*([str(plugin_dir)] if plugin_dir else []), str(ROOT)])
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "perturb", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("plug_corpus")
    for i in range(3):
        make_video(src / f"spk{i}.mp4", seconds=4.4, seed=i)
    return src


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory) -> Path:
    """plugmod.py (registers plug_gain), its failing variants, and recipes using plug_gain."""
    import yaml

    folder = tmp_path_factory.mktemp("plugins")
    (folder / "plugmod.py").write_text(PLUGIN)
    (folder / "workerfail.py").write_text(WORKER_FAILS)
    (folder / "rayfail.py").write_text(RAY_WORKER_FAILS)
    (folder / "killer.py").write_text(KILLER)
    (folder / "killer.yaml").write_text(yaml.safe_dump({**RECIPE, "transform": {"op": "killer_gain"}}))
    (folder / "boomplug.py").write_text('raise RuntimeError("plugin boom")\n')
    (folder / "plug_dim.yaml").write_text(yaml.safe_dump(RECIPE))
    (folder / "plug_keyed.yaml").write_text(yaml.safe_dump({**RECIPE, "plugins": ["plugmod"]}))
    return folder


def _build(corpus: Path, plugin_dir: Path, out: Path, *extra: str, recipe: str = "plug_dim.yaml",
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return _run(["build", "--src", str(corpus), "--dim", "plug_dim", "--recipe", str(plugin_dir / recipe),
                 "--out", str(out), "--cards", str(out / "cards"), "--window", WINDOW, "--workers", "2", *extra],
                out.parent, plugin_dir, env)


def _card(out: Path) -> dict:
    return json.loads((out / "plug_dim" / "card.json").read_text())


def _assert_built_by_the_plugin(proc: subprocess.CompletedProcess, out: Path) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = _card(out)
    assert card["counts_per_operator"] == {"plug_gain": 12}, card["counts_per_operator"]  # 3 sources x 2 windows x 2
    assert card["rejected"] == [] and (out / "plug_dim" / "rejects.jsonl").read_text() == ""
    assert card["plugins"] == ["plugmod"]
    return card


@pytest.fixture(scope="module")
def plugin_build(corpus, plugin_dir, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("plug_build") / "shards"
    return _build(corpus, plugin_dir, out, "--plugin", "plugmod"), out


# ----------------------------------------------------------------------------- plugins

def test_a_plugin_given_with_plugin_registers_its_operator_in_the_pool_workers(plugin_build):
    proc, out = plugin_build
    _assert_built_by_the_plugin(proc, out)


def test_the_cards_rebuild_command_names_the_plugin_and_rebuilds_the_same_shards(plugin_build, plugin_dir):
    proc, out = plugin_build
    card = _assert_built_by_the_plugin(proc, out)
    argv = shlex.split(card["command"])
    assert argv[:3] == ["python", "-m", "perturb"] and "--plugin plugmod" in card["command"]
    assert "operators of plugin modules: `plugmod`" in (out / "cards" / "plug_dim.md").read_text()
    again = _run(argv[3:], out.parent, plugin_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _card(out)["shards"] == card["shards"]  # same files, same sha256


def test_avbench_plugins_reaches_the_workers_and_the_cards_command(corpus, plugin_dir, tmp_path):
    out = tmp_path / "shards"
    card = _assert_built_by_the_plugin(_build(corpus, plugin_dir, out, env={"AVBENCH_PLUGINS": "plugmod"}), out)
    assert card["command"].endswith(" --plugin plugmod"), card["command"]  # rebuilds without the variable


def test_a_recipes_plugins_key_imports_its_module_in_the_workers(corpus, plugin_dir, tmp_path):
    out = tmp_path / "shards"
    card = _assert_built_by_the_plugin(_build(corpus, plugin_dir, out, recipe="plug_keyed.yaml"), out)
    assert "--plugin" not in card["command"]  # the recipe the command names imports it


def test_a_plugin_failing_in_the_workers_stops_the_build_with_its_traceback(corpus, plugin_dir, tmp_path):
    out = tmp_path / "shards"
    proc = _build(corpus, plugin_dir, out, "--plugin", "workerfail")
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" in proc.stderr and "workerfail.py" in proc.stderr and "libfoo.so" in proc.stderr
    assert lines[-1].startswith("error: build stopped: a worker failed") and "no source was rejected" in lines[-1]
    assert "cannot import plugin module 'workerfail'" in lines[-1]
    rejects = out / "plug_dim" / "rejects.jsonl"
    assert not rejects.exists() or rejects.read_text() == ""
    assert not list((out / "plug_dim").glob("*.tar"))


def test_a_killed_pool_worker_stops_the_build_rejecting_no_source(corpus, plugin_dir, tmp_path):
    out = tmp_path / "shards"
    proc = _build(corpus, plugin_dir, out, "--plugin", "killer", recipe="killer.yaml")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: build stopped: a worker process died")
    assert (out / "plug_dim" / "rejects.jsonl").exists() is False and not list((out / "plug_dim").glob("*.tar"))


def test_what_stops_a_build_as_a_worker_fault_and_what_rejects_a_source():
    from perturb.operators import ConfigError, PluginError
    from perturb.pipeline import BuildWorkerError, Source, _internal_error, worker_fault

    for err in (ModuleNotFoundError("No module named 'torchaudio'", name="torchaudio"),
                PluginError("cannot import plugin module 'x': ImportError: libfoo.so"),
                ConfigError("recipe r.yaml: unknown operator 'mine' at transform")):
        fault = worker_fault(err, "a")
        assert isinstance(fault, BuildWorkerError)
        assert type(err).__name__ in str(fault) and "(at source a)" in str(fault)
        assert "Traceback" not in str(fault) and "\n" not in str(fault)
    assert worker_fault(ValueError("no donor in the context's pool")) is None
    source = Source("a", "/data/a.mp4", "a")
    with pytest.raises(BuildWorkerError):
        _internal_error(source, ModuleNotFoundError("No module named 'plugmod'", name="plugmod"))
    assert _internal_error(source, ValueError("no donor"))["status"] == "rejected"


@pytest.mark.slow
def test_ray_tasks_import_the_plugins_and_a_failing_one_stops_the_build(corpus, plugin_dir, tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "shards"
    _assert_built_by_the_plugin(_build(corpus, plugin_dir, out, "--plugin", "plugmod", "--backend", "ray"), out)
    out = tmp_path / "failed"
    proc = _build(corpus, plugin_dir, out, "--plugin", "rayfail", "--backend", "ray")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "rayfail.py" in proc.stderr and "libfoo.so" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: build stopped: a worker failed")
    assert not list((out / "plug_dim").glob("*.tar")) and not (out / "plug_dim" / "rejects.jsonl").exists()


def test_a_plugin_raising_on_import_stops_before_anything_is_built(corpus, plugin_dir, tmp_path):
    out = tmp_path / "shards"
    proc = _build(corpus, plugin_dir, out, "--plugin", "boomplug")
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "boomplug.py" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == \
        "error: cannot import plugin module 'boomplug': RuntimeError: plugin boom"
    assert not (out / "plug_dim").exists()


def test_a_plugin_module_not_found_is_one_line(tmp_path):
    for args in (["build", "--src", str(tmp_path), "--dim", "lip_sync", "--out", str(tmp_path / "o")],
                 ["samples", "--shards", str(tmp_path), "--out", str(tmp_path / "s")]):
        proc = _run([*args, "--plugin", "no_such_plugin_mod"], tmp_path)
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines() == [
            "error: cannot import plugin module 'no_such_plugin_mod': No module named 'no_such_plugin_mod' "
            "(is its folder on PYTHONPATH?)"]


def test_an_unknown_operator_names_the_three_ways_to_import_one(tmp_path):
    import yaml

    from perturb.operators import ConfigError, get_operator
    from perturb.recipe import load_recipe

    recipe = tmp_path / "mine.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "transform": {"op": "not_imported_gain"}}))
    with pytest.raises(ConfigError) as err:
        load_recipe(recipe)
    with pytest.raises(KeyError) as key_err:
        get_operator("not_imported_gain")
    for text in (str(err.value), str(key_err.value)):
        assert "not_imported_gain" in text and "--plugin MODULE" in text and "AVBENCH_PLUGINS" in text
        assert "plugins: [MODULE]" in text


@pytest.mark.parametrize("plugins", ["plugmod", [3], [""]])
def test_a_recipes_plugins_key_is_a_list_of_module_names(tmp_path, plugins):
    import yaml

    from perturb.operators import ConfigError
    from perturb.recipe import load_recipe

    recipe = tmp_path / "mine.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "plugins": plugins}))
    with pytest.raises(ConfigError, match="plugins must be a list"):
        load_recipe(recipe)


def test_an_operator_registered_in_this_process_only_stops_a_pooled_build(corpus, tmp_path):
    """The Python API with workers: the spawned workers do not know an operator registered here
    (not through a plugin module), so every task fails alike; the build stops, rejecting no source."""
    import yaml

    from perturb.operators import REGISTRY, Operator, register
    from perturb.pipeline import BuildWorkerError, build

    class LocalGain(Operator):
        """Quieter audio. Keywords: p."""

        modifies = "audio"

        def sample_params(self, rng, severity):
            return {"gain": 0.5}

        def apply(self, clip, params):
            return clip.with_audio(clip.audio * params["gain"])

        def defect_size(self, params):
            return 1.0

    recipe = tmp_path / "local_dim.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "dim": "local_dim", "transform": {"op": "local_only_gain"}}))
    register("local_only_gain")(LocalGain)
    try:
        with pytest.raises(BuildWorkerError, match="unknown operator 'local_only_gain'") as err:
            build(corpus, "local_dim", out=tmp_path / "out", recipe=recipe, workers=2, window_seconds=2.0,
                  cards_dir=None, progress=False)
    finally:
        del REGISTRY["local_only_gain"]
    assert "Traceback" in err.value.details and "load_recipe" in err.value.details
    rejects = tmp_path / "out" / "local_dim" / "rejects.jsonl"
    assert not rejects.exists() or rejects.read_text() == ""


# ----------------------------------------------------------------------------- perturb samples

def _records(shard_dir: Path, split: str) -> dict[str, dict]:
    records = {}
    for shard in sorted(shard_dir.glob(f"{split}-*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    records[m.name.split(".")[0]] = json.loads(tar.extractfile(m).read())
    return records


def test_samples_filter_by_op_and_severity_and_print_one_line_per_pair(plugin_build, tmp_path):
    _, out = plugin_build
    records = _records(out / "plug_dim", "train")
    severity = records[sorted(records)[0]]["severity"]
    expected = {k for k, r in records.items() if r["severity"] == severity}
    proc = _run(["samples", "--shards", str(out / "plug_dim"), "--split", "train", "--n", "10", "--op", "plug_gain",
                 "--severity", str(severity), "--out", str(tmp_path / "s")], tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    pattern = re.compile(rf"(\S+): plug_gain\(gain_db=([0-9.]+)\) severity {severity} -> (\S+) (\S+)")
    matched = [pattern.fullmatch(line) for line in lines]
    assert all(matched), lines
    assert {m.group(1) for m in matched} == expected
    for m in matched:
        assert float(m.group(2)) == records[m.group(1)]["ops"][0]["params"]["gain_db"]
        assert Path(m.group(3)).is_file() and Path(m.group(4)).is_file()


def test_samples_random_picks_are_seeded_and_vary(plugin_build, tmp_path):
    _, out = plugin_build
    keys = set(_records(out / "plug_dim", "train"))

    def pick(seed: int) -> str:
        proc = _run(["samples", "--shards", str(out / "plug_dim"), "--split", "train", "--n", "1", "--random",
                     "--seed", str(seed), "--out", str(tmp_path / f"s{seed}")], tmp_path)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split(":")[0]

    picks = [pick(seed) for seed in range(6)]
    assert set(picks) <= keys and len(set(picks)) > 1
    assert pick(3) == picks[3]


def test_samples_of_an_operator_no_pair_has_say_so_in_one_line(plugin_build, tmp_path):
    _, out = plugin_build
    proc = _run(["samples", "--shards", str(out / "plug_dim"), "--op", "not_imported_gain",
                 "--out", str(tmp_path / "s")], tmp_path)
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert "no pair of split test" in line and "unknown operator 'not_imported_gain'" in line and "--plugin" in line


# ----------------------------------------------------------------------------- perturb apply

def _apply(args: list[str], tmp_path: Path, plugin_dir: Path | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    proc = _run(["apply", *args], tmp_path, plugin_dir)
    return proc, json.loads(proc.stdout) if proc.returncode == 0 else {}


def _canonical(src: Path, start: float, end: float, tmp: Path) -> Path:
    info = media.probe(src)
    (window,), _ = media.canonicalise_windows(src, tmp, [(start, end)], media.canonical_size(info.width, info.height))
    return window


def test_apply_shifts_the_sound_of_a_part_and_copies_its_picture(corpus, tmp_path):
    out = tmp_path / "shifted.mp4"
    proc, result = _apply(["--op", "audio_shift", "--severity", "5", "--seed", "1", "--param",
                           "offset_range_ms=[200, 400]", "--start", "1", "--duration", "2",
                           str(corpus / "spk0.mp4"), str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    offset = result["params"]["offset_ms"]
    assert 200 <= abs(offset) <= 400 and result["window"] == [1.0, 3.0] and result["video_copied"]
    window = _canonical(corpus / "spk0.mp4", 1.0, 3.0, tmp_path / "canon")
    assert np.array_equal(media.decode_frames(out), media.decode_frames(window)), "picture must be the window's"
    assert lag_ms(media.decode_audio(window), media.decode_audio(out)) == pytest.approx(offset, abs=1.0)


def test_apply_runs_a_plugins_operator_with_keywords(corpus, plugin_dir, tmp_path):
    out = tmp_path / "quiet.mp4"
    proc, result = _apply(["--plugin", "plugmod", "--op", "plug_gain", "--param", "step_db=6", "--severity", "2",
                           str(corpus / "spk1.mp4"), str(out)], tmp_path, plugin_dir)
    assert proc.returncode == 0, proc.stderr
    gain_db = result["params"]["gain_db"]
    assert 6 <= gain_db <= 12
    original = media.decode_audio(_canonical(corpus / "spk1.mp4", 0.0, media.probe(corpus / "spk1.mp4").duration,
                                             tmp_path / "canon"))
    measured_db = 20 * np.log10(np.sqrt(np.mean(original ** 2)) / np.sqrt(np.mean(media.decode_audio(out) ** 2)))
    assert measured_db == pytest.approx(gain_db, abs=0.3)


def test_apply_checks_keywords_and_asks_for_donors(corpus, tmp_path):
    proc, _ = _apply(["--op", "audio_shift", "--param", "offset_rnage_ms=[1, 2]", str(corpus / "spk0.mp4"),
                      str(tmp_path / "a.mp4")], tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: audio_shift: unknown keyword 'offset_rnage_ms' (did you mean 'offset_range_ms'?); valid: "
        "offset_range_ms, p"]
    proc, _ = _apply(["--op", "soundtrack_swap", str(corpus / "spk0.mp4"), str(tmp_path / "b.mp4")], tmp_path)
    [line] = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "--donor FILE" in line and not (tmp_path / "b.mp4").exists()
    proc, result = _apply(["--op", "soundtrack_swap", "--donor", str(corpus / "spk1.mp4"), str(corpus / "spk0.mp4"),
                           str(tmp_path / "b.mp4")], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert result["params"]["donor_id"] == "spk1" and (tmp_path / "b.mp4").is_file()


def test_apply_refuses_a_file_longer_than_a_window_unless_given_a_part(tmp_path):
    src = tmp_path / "long.mp4"
    media.run_ffmpeg(["-f", "lavfi", "-i", "color=c=gray:s=32x32:d=31:r=25", "-f", "lavfi",
                      "-i", "sine=f=300:d=31:r=16000", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
                      "-y", str(src)])
    proc, _ = _apply(["--op", "audio_shift", str(src), str(tmp_path / "o.mp4")], tmp_path)
    [line] = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "longer than 30 s" in line and "--start S --duration D" in line
    proc, result = _apply(["--op", "audio_shift", "--start", "10", "--duration", "3", str(src),
                           str(tmp_path / "o.mp4")], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert result["window"] == [10.0, 13.0] and media.probe(tmp_path / "o.mp4").duration == pytest.approx(3.0, abs=0.1)
