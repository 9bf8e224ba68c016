"""`eval score` / `eval filter` under signals and resumes, and exports as untrusted input:
calibration.json, config.json / preprocessing.json / metrics.json faults, pickled weights."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
N_VIDEOS = 8
SLOW_S = 2.0  # seconds each file takes in the slow runs below: several files are still queued at the signal


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    from tests.eval_fixtures import make_export, make_video

    d = tmp_path_factory.mktemp("hardening")
    first = make_video(d / "v0.mp4", 1.0, seed=0)
    videos = [first] + [shutil.copyfile(first, d / f"v{i}.mp4") for i in range(1, N_VIDEOS)]
    return {"dir": d, "videos": [str(v) for v in videos], "export": make_export(d / "export"),
            "other": make_export(d / "other_export", seed=1)}


def _copy_export(media, tmp_path: Path) -> Path:
    out = tmp_path / "export"
    shutil.copytree(media["export"], out)
    return out


# ----------------------------------------------------------------------------- signals and resume
# the CLI with every file taking SLOW_S seconds more (forked workers inherit the patch)
_SLOW_CLI = """
import os, sys, time
import eval.cli as cli
from eval.__main__ import main

_score_video = cli.score_video

def slow(scorers, path, **kw):
    time.sleep(float(os.environ["SLOW_SCORE_S"]))
    return _score_video(scorers, path, **kw)

cli.score_video = slow
sys.exit(main(sys.argv[1:]))
"""


def _descendants(pid: int) -> set[int]:
    """Every living process below pid (from /proc)."""
    parent = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        kids = {c for c, pp in parent.items() if pp == p}
        todo += list(kids - out)
        out |= kids
    return out


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _left_running(pids: set[int], timeout: float = 5.0) -> list[int]:
    """The pids still running after up to `timeout` seconds (a death signal takes a moment); they
    are killed, so that no stray process outlives the test whatever its outcome."""
    deadline = time.monotonic() + timeout
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [p for p in pids if _running(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    return left


def _start_slow(args: list[str], tmp_path: Path, stdout: Path) -> subprocess.Popen:
    env = {**os.environ, "SLOW_SCORE_S": str(SLOW_S), "PYTHONPATH": str(ROOT)}
    with stdout.open("w") as fh:
        return subprocess.Popen([sys.executable, "-c", _SLOW_CLI, *args], cwd=tmp_path, env=env,
                                stdout=fh, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _lines(*files: Path) -> list[str]:
    return [ln for f in files if f.exists() for ln in f.read_text().splitlines() if ln]


def _stop_after_first_record(runs: list[tuple[subprocess.Popen, list[Path], int, bool]]) -> list[tuple]:
    """For each (process, files it writes a line to as a file finishes, signal, to its group): wait for
    its first finished file, then send the signal at once (to the process group, as Ctrl-C at a
    terminal does, or to the process alone, as `kill` does). Returns (seconds to exit, worker pids
    seen, stderr) per run; whatever is still running at the end is killed."""
    deadline = time.monotonic() + 300
    sent: dict[int, tuple[float, set[int]]] = {}
    exited: dict[int, float] = {}
    try:
        while len(sent) < len(runs):
            for k, (proc, files, sig, group) in enumerate(runs):
                if k in sent:
                    continue
                assert proc.poll() is None, proc.communicate()[1][-2000:]
                if _lines(*files):
                    workers = _descendants(proc.pid)
                    (os.killpg if group else os.kill)(proc.pid, sig)
                    sent[k] = (time.monotonic(), workers)
            assert time.monotonic() < deadline, "no record was written"
            time.sleep(0.05)
        deadline = time.monotonic() + 60
        while len(exited) < len(runs) and time.monotonic() < deadline:
            exited.update({k: time.monotonic() for k, (proc, *_) in enumerate(runs) if k not in exited and
                           proc.poll() is not None})
            time.sleep(0.05)
    finally:  # nothing of these runs outlives the test: their process groups, and the workers seen
        for proc, *_ in runs:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
        if len(exited) < len(runs):
            _left_running({p for _, workers in sent.values() for p in workers}, timeout=0.0)
    out = []
    for k, (proc, *_) in enumerate(runs):
        _, err = proc.communicate(timeout=60)
        assert k in exited, f"still running 60 s after the signal: {err[-2000:]}"
        t0, workers = sent[k]
        assert workers, "no worker process was running when the first file was finished"
        out.append((exited[k] - t0, workers, err))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_ctrl_c_and_sigterm_stop_score_at_once_keep_the_records_and_a_rerun_resumes(media, tmp_path):
    """SIGINT (to the whole process group, as Ctrl-C) and SIGTERM (to the main process alone) stop
    `eval score` within seconds with 130 / 143 and one line, kill every worker, leave --out with the
    finished records as whole lines; the same command then scores only the rest. After a kill -9 of
    the main process too, no worker is left and the re-run resumes."""
    from eval.__main__ import main

    videos = media["videos"]
    outs = {signal.SIGINT: tmp_path / "int.jsonl", signal.SIGTERM: tmp_path / "term.csv",
            signal.SIGKILL: tmp_path / "kill.jsonl"}
    stdouts = {sig: out.with_suffix(".stdout") for sig, out in outs.items()}
    procs = {sig: _start_slow(["score", "--scorer", str(media["export"]), *videos, "--out", str(out),
                               "--workers", "2"], tmp_path, stdouts[sig]) for sig, out in outs.items()}
    # the first record printed: more files are queued or running when the signal comes
    stopped = _stop_after_first_record([(proc, [stdouts[sig]], sig, sig == signal.SIGINT)
                                        for sig, proc in procs.items()])
    for (sig, proc), (seconds, workers, err) in zip(procs.items(), stopped):
        left = _left_running(workers, timeout=5.0 if sig == signal.SIGKILL else 0.0)
        assert not left, f"{signal.Signals(sig).name}: worker processes still running: {left}"
        assert "Traceback" not in err
        lines = _lines(outs[sig])
        if sig == signal.SIGKILL:
            assert proc.returncode == -sig
            n_done = len(lines)
        else:
            assert proc.returncode == 128 + sig, err[-2000:]
            assert seconds < 10, f"{signal.Signals(sig).name}: took {seconds:.1f} s to stop"
            last = err.strip().splitlines()[-1]
            assert last.startswith("interrupted: ") and f"of {N_VIDEOS} files scored, records in {outs[sig]}" in last
            assert "re-run the same command to resume" in last
            n_done = int(last.split()[1])
        if outs[sig].suffix == ".csv":
            assert lines[0].startswith("path,lip_sync,status,error")
            paths = [ln.split(",")[0] for ln in lines[1:]]
        else:
            paths = [json.loads(ln)["path"] for ln in lines]  # whole lines only
        assert 1 <= len(paths) == n_done < N_VIDEOS and len(set(paths)) == len(paths)

        # the same command again: the finished files are skipped, the rest scored, nothing twice
        rc = main(["score", "--scorer", str(media["export"]), *videos, "--out", str(outs[sig]), "--workers", "1"])
        assert rc == 0
        lines = _lines(outs[sig])
        again = [ln.split(",")[0] for ln in lines[1:]] if outs[sig].suffix == ".csv" else \
            [json.loads(ln)["path"] for ln in lines]
        assert again[:n_done] == paths and sorted(again) == sorted(videos)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_sigterm_stops_filter_at_once_and_a_rerun_resumes(media, tmp_path, capsys):
    from eval.__main__ import main

    out = tmp_path / "filtered"
    args = ["filter", "--scorer", str(media["export"]), "--min", "0.3", *media["videos"], "--out-dir", str(out)]
    proc = _start_slow([*args, "--workers", "2"], tmp_path, tmp_path / "filter.stdout")
    files = [out / "kept.txt", out / "rejected.txt"]
    [(seconds, workers, err)] = _stop_after_first_record([(proc, files, signal.SIGTERM, False)])
    assert proc.returncode == 143 and seconds < 10, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("interrupted: ")
    assert not _left_running(workers, timeout=0.0)
    n_done = len(_lines(*files))
    assert 1 <= n_done < N_VIDEOS
    assert main([*args, "--workers", "1"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["resumed"] == n_done and summary["kept"] + summary["rejected"] == N_VIDEOS
    assert sorted(ln.split("\t")[0] for ln in _lines(*files)) == sorted(media["videos"])


def test_an_out_that_cannot_be_written_fails_before_any_work(media, tmp_path):
    """The check comes before the judges load: a missing judge is not even reached."""
    from eval.__main__ import main

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for out in (tmp_path, a_file / "scores.jsonl"):  # a folder; a path under a file (root can't write either)
        with pytest.raises(SystemExit) as err:
            main(["score", "--scorer", str(tmp_path / "no_such_export"), media["videos"][0], "--out", str(out)])
        assert str(err.value).startswith(f"error: cannot write --out {out}")
    with pytest.raises(SystemExit) as err:
        main(["filter", "--scorer", str(tmp_path / "no_such_export"), media["videos"][0], "--out-dir", str(a_file)])
    assert str(err.value).startswith("error: cannot write --out-dir")


def test_resume_skips_scored_files_refuses_other_judges_and_overwrite_starts_over(media, tmp_path, capsys, monkeypatch):
    from eval import cli
    from eval.__main__ import main

    videos, out = media["videos"][:3], tmp_path / "scores.jsonl"
    assert main(["score", "--scorer", str(media["export"]), *videos[:2], "--out", str(out), "--workers", "1"]) == 0
    first = out.read_text()
    with out.open("a") as fh:
        fh.write('{"path": "torn')  # a line cut short by kill -9
    scored = []
    real = cli.score_videos

    def counting(scorers, paths, **kw):  # which files a run scores
        scored.extend(paths)
        return real(scorers, paths, **kw)

    monkeypatch.setattr(cli, "score_videos", counting)
    assert main(["score", "--scorer", str(media["export"]), *videos, "--out", str(out), "--workers", "1"]) == 0
    assert scored == videos[2:]
    err = capsys.readouterr().err
    assert "resuming: 2 of 3 videos already in" in err and "unfinished last line" in err
    text = out.read_text()
    assert text.startswith(first) and [json.loads(ln)["path"] for ln in text.splitlines()] == videos

    # other judges, or other settings, are never mixed into the same file
    for other in (["--scorer", str(media["other"])], ["--scorer", str(media["export"]), "--windows"]):
        with pytest.raises(SystemExit) as exc:
            main(["score", *other, *videos, "--out", str(out)])
        assert "--overwrite" in str(exc.value) and "\n" not in str(exc.value)
    assert out.read_text() == text
    # records with no settings beside them are not trusted either
    (tmp_path / "scores.jsonl.settings.json").unlink()
    with pytest.raises(SystemExit, match="which judges wrote them"):
        main(["score", "--scorer", str(media["export"]), *videos, "--out", str(out)])

    scored.clear()
    assert main(["score", "--scorer", str(media["other"]), *videos[:1], "--out", str(out), "--overwrite",
                 "--workers", "1"]) == 0
    assert scored == videos[:1] and len(out.read_text().splitlines()) == 1


def test_filter_resumes_and_splits_earlier_lines_again_for_a_new_threshold(media, tmp_path, capsys, monkeypatch):
    from eval import cli
    from eval.__main__ import main

    videos, out = media["videos"][:2], tmp_path / "f"
    assert main(["filter", "--scorer", str(media["export"]), "--min", "0", *videos, "--out-dir", str(out),
                 "--workers", "1"]) == 0
    assert len((out / "kept.txt").read_text().splitlines()) == 2

    def no_scoring(scorers, paths, **kw):  # a new threshold needs no file scored again
        assert not paths, f"scored again: {paths}"
        yield from ()

    monkeypatch.setattr(cli, "score_videos", no_scoring)
    assert main(["filter", "--scorer", str(media["export"]), "--min", "1", *videos, "--out-dir", str(out)]) == 0
    assert (out / "kept.txt").read_text() == "" and len((out / "rejected.txt").read_text().splitlines()) == 2
    capsys.readouterr()
    for bad in ("nan", "lip_sync=abc"):
        with pytest.raises(SystemExit, match="--min"):
            main(["filter", "--scorer", str(media["export"]), "--min", bad, *videos, "--out-dir", str(out)])


# ----------------------------------------------------------------------------- calibration.json
BAD_CALIBRATIONS = {
    "nan temperature": {"method": "temperature", "params": {"temperature": float("nan")}},
    "inf temperature": {"method": "temperature", "params": {"temperature": float("inf")}},
    "string temperature": {"method": "temperature", "params": {"temperature": "2"}},
    "no temperature": {"method": "temperature", "params": {}},
    "nan platt slope": {"method": "platt", "params": {"a": float("nan"), "b": 0.0}},
    "inf platt bias": {"method": "platt", "params": {"a": 1.0, "b": float("-inf")}},
    "no platt bias": {"method": "platt", "params": {"a": 1.0}},
    "nan isotonic x": {"method": "isotonic", "params": {"x": [0.0, float("nan")], "y": [0.1, 0.9]}},
    "inf isotonic y": {"method": "isotonic", "params": {"x": [0.0, 1.0], "y": [0.1, float("inf")]}},
    "unequal isotonic": {"method": "isotonic", "params": {"x": [0.0, 0.5, 1.0], "y": [0.1, 0.9]}},
    "non-monotone x": {"method": "isotonic", "params": {"x": [0.0, 0.7, 0.5], "y": [0.1, 0.5, 0.9]}},
    "isotonic x not a list": {"method": "isotonic", "params": {"x": "0,1", "y": [0.1, 0.9]}},
    "nan fallback": {"method": "isotonic", "params": {"x": [0.0, 1.0], "y": [0.1, 0.9], "fallback": {
        "method": "temperature", "params": {"temperature": float("nan")}}}},
    "unknown method": {"method": "beta", "params": {}},
    "no method": {"params": {"temperature": 1.0}},
    "params a list": {"method": "temperature", "params": [1.0]},
    "n a string": {"method": "temperature", "params": {"temperature": 1.0}, "n": "ten"},
    "a list": [1, 2],
}


@pytest.mark.parametrize("case", sorted(BAD_CALIBRATIONS))
def test_a_calibration_that_is_not_finite_or_malformed_is_refused_naming_the_file(media, tmp_path, case):
    from eval.scorer import Scorer

    export = _copy_export(media, tmp_path)
    (export / "calibration.json").write_text(json.dumps(BAD_CALIBRATIONS[case]))  # NaN / Infinity as Python writes them
    with pytest.raises(ValueError) as err:
        Scorer.from_pretrained(export)
    msg = str(err.value)
    assert msg.startswith(f"{export / 'calibration.json'}: ") and "\n" not in msg


def test_a_nan_calibration_stops_score_with_one_line(media, tmp_path):
    from eval.__main__ import main

    export = _copy_export(media, tmp_path)
    (export / "calibration.json").write_text('{"method": "platt", "params": {"a": NaN, "b": 0}}')
    with pytest.raises(SystemExit) as err:
        main(["score", "--scorer", str(export), media["videos"][0]])
    assert str(err.value) == (f"error: cannot load the judge in {export}: {export / 'calibration.json'}: "
                              f"platt calibration: params.a must be finite, got nan")


def test_fitted_calibrations_still_load(media, tmp_path):
    import numpy as np

    from eval.calibration import fit_calibrator
    from eval.scorer import Scorer

    rng = np.random.default_rng(0)
    z, y = rng.normal(0, 2, 200), rng.integers(0, 2, 200)
    export = _copy_export(media, tmp_path)
    for method in ("temperature", "platt", "isotonic", "none"):
        fit_calibrator(method, z, y).save(export / "calibration.json")
        assert Scorer.from_pretrained(export).calibrator.method == method


# ----------------------------------------------------------------------------- JSON files of an export
def _deep(path: Path) -> None:
    path.write_text("[" * 200_000 + "]" * 200_000)


def _huge(path: Path) -> None:
    path.write_text('{"pad": "' + "x" * (17 * 1024 * 1024) + '"}')


@pytest.mark.parametrize("name", ["config.json", "preprocessing.json", "metrics.json", "calibration.json"])
@pytest.mark.parametrize("fault", ["deep", "huge", "not json", "not utf-8", "a list"])
def test_malformed_json_of_an_export_is_one_line_naming_the_file(media, tmp_path, name, fault):
    from eval.scorer import Scorer

    export = _copy_export(media, tmp_path)
    f = export / name
    {"deep": _deep, "huge": _huge, "not json": lambda p: p.write_text('{"a":'),
     "not utf-8": lambda p: p.write_bytes(b'{"a": "\xff"}'), "a list": lambda p: p.write_text("[1, 2]")}[fault](f)
    with pytest.raises(ValueError) as err:
        Scorer.from_pretrained(export)
    msg = str(err.value)
    assert msg.startswith(f"{f}: ") and "\n" not in msg and len(msg) < 400
    if fault == "huge":
        assert "16 MB" in msg


# ----------------------------------------------------------------------------- safetensors only
def test_an_export_with_pickled_weights_only_is_refused_and_nothing_is_unpickled(media, tmp_path, monkeypatch, capsys):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel

    from eval.__main__ import main
    from eval.scorer import Scorer
    from train.model import AVJudge, load_weights

    export = _copy_export(media, tmp_path)
    torch.save(load_file(str(export / "model.safetensors")), export / "pytorch_model.bin")
    (export / "model.safetensors").unlink()

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load was called on an untrusted export")

    monkeypatch.setattr(torch, "load", no_unpickling)
    expected = f"{export} has pytorch_model.bin but no model.safetensors: only safetensors weights are loaded"
    for load in (Scorer.from_pretrained, AVJudge.from_pretrained, AutoModel.from_pretrained, load_weights):
        with pytest.raises(ValueError) as err:
            load(export)
        assert str(err.value) == expected, load
    with pytest.raises(SystemExit) as err:
        main(["score", "--scorer", str(export), media["videos"][0]])
    assert str(err.value) == f"error: cannot load the judge in {export}: {expected}"
    # eval evaluate on a run whose model/ holds pickled weights: one line, exit status 2
    run = tmp_path / "run"
    shutil.copytree(export, run / "model")
    (tmp_path / "shards").mkdir()
    rc = main(["evaluate", "--dim", "lip_sync", "--shards", str(tmp_path / "shards"), "--run", str(run),
               "--export", str(tmp_path / "exp"), "--report", str(tmp_path / "rep"), "--device", "cpu"])
    assert rc == 2 and capsys.readouterr().err.strip() == f"error: {run / 'model'} has pytorch_model.bin but no " \
        "model.safetensors: only safetensors weights are loaded"


def test_evaluate_on_an_unreachable_url_is_one_line_and_creates_nothing(media, tmp_path, capsys):
    from eval.__main__ import main

    run = tmp_path / "run"
    shutil.copytree(_copy_export(media, tmp_path), run / "model")
    rc = main(["evaluate", "--dim", "lip_sync", "--shards", "http://127.0.0.1:1/", "--run", str(run),
               "--export", str(tmp_path / "exp"), "--report", str(tmp_path / "rep"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("error: cannot read shards at http://127.0.0.1:1/")
    assert not (tmp_path / "exp").exists() and not (tmp_path / "rep").exists()
