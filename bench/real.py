"""`make real DIM=<dim>`: the real-footage recipe of BENCHMARKS.md, end to end, for one dimension.

    python -m bench.real --dim video_quality [--src ../shared/realvids/clips ../shared/realvids/clips-more]
                         [--extra ../shared/realvids/clips-extra]
                         [--work real/video_quality] [--seeds 1] [--dry] [--config YAML] [--donors DIR]

Stages (each a subprocess with an argument list, run from the repository root, writing into WORK):
    shards        python -m perturb build --src SRC... --out WORK/shards (manifest, 2 s windows, hop 1 s, 4 pairs, 0.6/0.2/0.2;
                  recipes with train_extra_manifest / train_voices: --train-extra EXTRA ... --train-voices)
    pretrain      python -m train.pretrain --src SRC... --src EXTRA ... --run WORK/pretrain   (recipes with pretrain)
    train seedN   python -m train ... --seed N --run WORK/runs/seedN [--init WORK/pretrain]
    eval shards   recipes with eval_window: the same build with that window, --out WORK/eval_shards
    eval seedN    python -m eval evaluate ... --report WORK/reports/seedN --export WORK/export (first seed;
                  the others export to WORK/runs/seedN/export); on WORK/eval_shards with --whole-clips
                  for recipes with eval_window
    sync_offsets  python bench/sync_offsets.py --scorer WORK/export ... (recipes with sync_offsets)
then prints the test table (pairwise accuracy per severity / offset bucket, per operator and variant, AUC,
ECE of each calibrator, Spearman(score, defect)); mean +- sd over seeds when there are several. The
table is also written to WORK/table.md.

Resume: a stage is skipped when its outputs exist and WORK/.stages/<stage>.json says it finished with
the same arguments and inputs (config, recipe, shard checksums, model weights). The stamp is removed
before a stage starts and written after it succeeds, so a run killed anywhere finishes when re-run;
the stages themselves resume their own partial work (perturb staging, train checkpoints). Files are
written aside (`.<name>.tmp<PID>`) and renamed into place; the ones a killed run left behind are
removed when the next run starts (remove_stale_temporaries).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Pattern, Sequence

ROOT = Path(__file__).resolve().parents[1]
REAL = "../shared/realvids"  # beside the repository (DEVELOPERS.md "Real data")
# clips and clips-more are pair sources, split by the one manifest below; clips-extra is training-only
# material (pretraining, audio_quality's extra train sources; its own manifest)
DEFAULT_SRC = (f"{REAL}/clips", f"{REAL}/clips-more")
DEFAULT_EXTRA = f"{REAL}/clips-extra"

# The build flags of docs/benchmarks/training.md: 2 s windows so the 3 s GRID clips count, 1 s hop,
# 4 pairs per window, splits by speaker group, every source pinned by the manifest (its `split`).
REAL_SHARD_FLAGS = ("--manifest", "data_cards/manifests/realvids_clips.csv", "--window", "2", "--hop", "1",
                    "--pairs-per-window", "4", "--splits", "0.6,0.2,0.2")

# audio_shift offsets of the lip_sync recipe's severity levels (perturb/recipes/lip_sync.yaml)
OFFSET_BUCKETS = {1: "40-80 ms", 2: "80-160 ms", 3: "160-320 ms", 4: "320-640 ms", 5: "640-1000 ms"}


@dataclass(frozen=True)
class Recipe:
    """How one dimension's real-footage row is made."""

    dim: str
    config: str                               # training config, relative to the repository root
    pretrain: bool = False                    # self-supervised sync pretraining (train.pretrain) on SRC... + EXTRA, then --init
    donors: str | None = None                 # --donors of the build (relative to the repository root)
    sync_offsets: bool = False                # bench/sync_offsets.py on the export's held-out clips
    shard_flags: tuple[str, ...] = REAL_SHARD_FLAGS
    objective: str = "reward"
    severity_labels: dict[int, str] = field(default_factory=dict)  # column names of the severity buckets
    operator_severity_table: bool = False     # also print pairwise accuracy / ECE per operator x severity
    # more training material (build --train-extra EXTRA --train-extra-manifest this; val / test pairs unchanged)
    train_extra_manifest: str | None = None
    train_voices: bool = False                # build --train-voices: the train split's donor recordings as train sources
    # evaluate on pair clips of this many seconds instead (a second build, WORK/eval_shards, same sources and
    # splits, pinned by the manifest), each clip scored whole as `eval score` scores a video (--whole-clips)
    eval_window: float | None = None


RECIPES: dict[str, Recipe] = {
    "lip_sync": Recipe(
        "lip_sync",
        config="train/configs/realvids/lip_sync.yaml",
        pretrain=False,       # sync pretraining lost on val (docs/benchmarks/lip_sync.md "Ablation")
        sync_offsets=True,
        severity_labels=OFFSET_BUCKETS),
    "voice_identity": Recipe(
        "voice_identity",
        config="train/configs/realvids/voice_identity.yaml",
        donors=f"{REAL}/speech"),
    "video_quality": Recipe(
        "video_quality",
        config="train/configs/realvids/video_quality.yaml"),
    "audio_quality": Recipe(
        "audio_quality",
        config="train/configs/realvids/audio_quality.yaml",
        donors=f"{REAL}/speech",      # babble voices besides the other sources of the split
        # 19 train sources were few (docs/benchmarks/audio_quality.md): EXTRA's LRS2 clips and the train
        # split's donor recordings join training; val / test pairs are byte-identical to a build without
        train_extra_manifest="data_cards/manifests/realvids_clips_extra_train.csv",
        train_voices=True),
    # synthetic speech in place of the real voice (perturb/speech.py's engines; words from Whisper tiny.en);
    # EXTRA's LRS2 clips and the train split's donor recordings are more real voices to train on (val / test
    # pairs unchanged)
    "speech_realism": Recipe(
        "speech_realism",
        config="train/configs/realvids/speech_realism.yaml",
        donors=f"{REAL}/speech",
        train_extra_manifest="data_cards/manifests/realvids_clips_extra_train.csv",
        train_voices=True),
    # mismatch donors are the other sources of the same split (no --donors needed)
    # trained on 2 s windows (every speaker counts, the 3 s GRID clips too), judged on the recipe's 5 s
    # clips the way `eval score` judges a video: one decision over the clip's windows (docs/benchmarks/
    # av_consistency.md: 5 s training windows lost the short clips' speakers and did no better)
    "av_consistency": Recipe(
        "av_consistency",
        config="train/configs/realvids/av_consistency.yaml",
        operator_severity_table=True,
        eval_window=5.0),
}


@dataclass
class Stage:
    name: str
    argv: list[str]                           # without the interpreter
    outputs: list[Path]                       # all present = the command finished (with the stamp)
    inputs: list[Path] = field(default_factory=list)  # files whose contents go into the stamp
    stdout_to: Path | None = None             # keep the command's stdout here (it is the result)


# ----------------------------------------------------------------------------- paths and stamps
def _abs(path: str | Path) -> Path:
    """A user path: relative to the caller's folder (the repository root under make)."""
    return Path(os.path.abspath(path))


def _arg(path: Path) -> str:
    """How a path is passed to a stage (stages run from the repository root)."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def _sha(path: Path) -> str:
    if not path.is_file():
        return "missing"
    if path.name == "manifest.json":  # a build's shard checksums, not its wall time: an unchanged rebuild keeps the runs
        return hashlib.sha256(json.dumps(json.loads(path.read_text()).get("shards"), sort_keys=True).encode()).hexdigest()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _stamp_file(work: Path, stage: Stage) -> Path:
    return work / ".stages" / (stage.name.replace(" ", "_") + ".json")


def _stamp(stage: Stage) -> dict[str, Any]:
    return {"argv": stage.argv, "inputs": {_arg(p): _sha(p) for p in stage.inputs}}


def is_done(work: Path, stage: Stage) -> bool:
    """Outputs present and finished by the same command on the same inputs."""
    f = _stamp_file(work, stage)
    if not (f.is_file() and all(p.exists() for p in stage.outputs)):
        return False
    try:
        return json.loads(f.read_text()) == _stamp(stage)
    except json.JSONDecodeError:  # a stamp cut short by a kill
        return False


# ----------------------------------------------------------------------------- the plan
def eval_shards_of(recipe: Recipe, work: Path) -> Path:
    """The shards the recipe's judges are evaluated on: WORK/shards/<dim>, or with eval_window the
    second build's WORK/eval_shards/<dim>."""
    return work / ("eval_shards" if recipe.eval_window else "shards") / recipe.dim


def plan(recipe: Recipe, src: Path | Sequence[Path], extra: Path, work: Path, seeds: int, config: str | None = None,
         donors: Path | None = None, workers: int = 2) -> list[Stage]:
    """The stages of one dimension's recipe, in order; src: the folder of the pair sources, or several."""
    dim = recipe.dim
    srcs = [src] if isinstance(src, Path) else list(src)
    conf = _abs(config) if config else ROOT / recipe.config
    shards = work / "shards" / dim
    cache = ["--cache-dir", _arg(work / "cache")]
    stages = []

    def build_argv(out: str, cards: str, flags: Sequence[str]) -> list[str]:
        """perturb build of SRC into WORK/<out>, its cards in WORK/<cards>; with the donors, which every
        split's pairs draw on."""
        argv = ["-m", "perturb", "build", "--src", *map(_arg, srcs), "--dim", dim, "--out", _arg(work / out),
                "--workers", str(workers), "--seed", "0", *flags, "--cards", _arg(work / cards)]
        return argv + (["--donors", _arg(donors)] if donors is not None else [])

    build = build_argv("shards", "cards", recipe.shard_flags)
    if recipe.train_extra_manifest:
        build += ["--train-extra", _arg(extra), "--train-extra-manifest", recipe.train_extra_manifest]
    if recipe.train_voices:
        build += ["--train-voices"]
    manifest = recipe.shard_flags[recipe.shard_flags.index("--manifest") + 1] if "--manifest" in recipe.shard_flags else None
    manifests = [ROOT / m for m in (manifest, recipe.train_extra_manifest) if m]
    recipe_inputs = [ROOT / "perturb" / "recipes" / f"{dim}.yaml", *manifests]
    stages.append(Stage("shards", build, [shards / "card.json", shards / "manifest.json"], inputs=recipe_inputs))
    eval_shards = eval_shards_of(recipe, work)
    whole = ["--whole-clips"] if recipe.eval_window else []
    if recipe.eval_window:
        # the same build with the evaluation window (train-only material left out: it is in no test pair)
        flags = list(recipe.shard_flags)
        flags[flags.index("--window") + 1] = f"{recipe.eval_window:g}"
        stages.append(Stage("eval shards", build_argv("eval_shards", "eval_cards", flags),
                            [eval_shards / "card.json", eval_shards / "manifest.json"], inputs=recipe_inputs))
    init: list[str] = []
    if recipe.pretrain:
        pre = work / "pretrain"
        stages.append(Stage("pretrain", ["-m", "train.pretrain", "--dim", dim,
                                         *[a for s in [*srcs, extra] for a in ("--src", _arg(s))],
                                         "--shards", _arg(shards), "--run", _arg(pre), "--config", _arg(conf), *cache],
                            [pre / "metrics.json", pre / "model" / "model.safetensors"],
                            inputs=[conf, shards / "manifest.json"]))
        init = ["--init", _arg(pre)]
    for i in range(seeds):
        run = work / "runs" / f"seed{i}"
        stages.append(Stage(f"train seed{i}", ["-m", "train", "--dim", dim, "--objective", recipe.objective,
                                                "--shards", _arg(shards), "--run", _arg(run), "--config", _arg(conf),
                                                "--seed", str(i), *cache, *init],
                            [run / "metrics.json", run / "model" / "model.safetensors"],
                            inputs=[conf, shards / "manifest.json",
                                    *([work / "pretrain" / "model" / "model.safetensors"] if init else [])]))
    for i in range(seeds):
        run, report = work / "runs" / f"seed{i}", work / "reports" / f"seed{i}"
        export = work / "export" if i == 0 else run / "export"
        stages.append(Stage(f"eval seed{i}", ["-m", "eval", "evaluate", "--dim", dim, "--shards", _arg(eval_shards),
                                               "--run", _arg(run), "--export", _arg(export), "--report", _arg(report),
                                               *cache, *whole, "--no-progress"],
                            [report / "report.json", export / "README.md"],  # the export's README is written last
                            inputs=[eval_shards / "manifest.json", run / "model" / "model.safetensors"]))
    if recipe.sync_offsets:
        out = work / "sync_offsets.md"
        stages.append(Stage("sync_offsets", [_arg(ROOT / "bench" / "sync_offsets.py"), "--scorer", _arg(work / "export"),
                                             "--shards", _arg(shards), "--split", "test",
                                             "--out", _arg(work / "sync_offsets.jsonl")],
                            [out], inputs=[work / "export" / "model.safetensors"], stdout_to=out))
    return stages


def _show(argv: Sequence[str]) -> str:
    """The command as run from the repository root."""
    return shlex.join([_arg(Path(sys.executable)), *argv])


TMP_NAME = re.compile(r"\..+\.tmp(\d+)")  # what run_stage writes aside: .<name>.tmp<PID>
def remove_stale_temporaries(folders: Sequence[Path], pattern: Pattern[str] = TMP_NAME) -> list[Path]:
    """Remove the temporaries in `folders` (names matching `pattern`, whose group 1 is the writer's
    PID) that a killed run left: their writer is no longer running, or they are older than a day. A
    running writer's own stay. Returns what was removed."""
    from perturb.pipeline import STALE_AGE_S, pid_running

    removed = []
    for folder in folders:
        for path in folder.iterdir() if folder.is_dir() else ():
            m = pattern.fullmatch(path.name)
            if m is None:
                continue
            try:
                old = time.time() - path.lstat().st_mtime > STALE_AGE_S
            except OSError:
                continue
            if old or not pid_running(int(m.group(1))):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() and not path.is_symlink() \
                    else path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def run_stage(work: Path, stage: Stage) -> None:
    stamp = _stamp_file(work, stage)
    stamp.unlink(missing_ok=True)
    print(f"[real] {stage.name}: {_show(stage.argv)}", flush=True)
    argv = [sys.executable, *stage.argv]
    if stage.stdout_to is None:
        rc = subprocess.run(argv, cwd=ROOT).returncode
    else:
        tmp = stage.stdout_to.with_name(f".{stage.stdout_to.name}.tmp{os.getpid()}")
        with open(tmp, "w") as out:
            rc = subprocess.run(argv, cwd=ROOT, stdout=out).returncode
        if rc == 0:
            os.replace(tmp, stage.stdout_to)
        else:
            tmp.unlink(missing_ok=True)
    if rc != 0:
        raise SystemExit(f"make real: stage {stage.name} failed (exit {rc}): {_show(stage.argv)}")
    missing = [_arg(p) for p in stage.outputs if not p.exists()]
    if missing:
        raise SystemExit(f"make real: stage {stage.name} finished without writing {', '.join(missing)}")
    stamp.parent.mkdir(parents=True, exist_ok=True)
    tmp = stamp.with_name(f".{stamp.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(_stamp(stage), indent=1))
    os.replace(tmp, stamp)


# ----------------------------------------------------------------------------- the table
def _num(v: Any) -> float | None:
    if isinstance(v, dict):
        v = v.get("value")
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _cell(values: Sequence[float | None], digits: int = 3) -> str:
    """One seed's value, or mean +- sd (sample sd) over seeds."""
    xs = [x for x in values if x is not None]
    if not xs:
        return "-"
    if len(values) == 1:
        return f"{xs[0]:.{digits}f}"
    mean = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return f"{mean:.{digits}f} +- {sd:.{digits}f}"


def _md(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


CALIBRATIONS = ("none", "temperature", "platt", "isotonic")


def results_table(reports: Sequence[dict[str, Any]], recipe: Recipe, n_sources: int | None = None) -> str:
    """BENCHMARKS.md's test table for one dimension from the report.json of each seed (seed i = reports[i])."""
    sevs = sorted({int(r["severity"]) for rep in reports for r in rep.get("per_severity", [])
                   if r.get("n_pairs") and int(r["severity"]) > 0})
    ops = sorted({r["operator"] for rep in reports for r in rep.get("per_operator", []) if r.get("n_pairs")})
    variants = sorted({(r["operator"], r["variant"]) for rep in reports for r in rep.get("per_variant", [])})

    def pair_acc(rep, table, match):
        return next((_num(r.get("pairwise_accuracy")) for r in rep.get(table, []) if match(r)), None)

    columns: list[tuple[str, Any]] = []
    for s in sevs:
        label = recipe.severity_labels.get(s)
        columns.append((f"{label} (sev {s})" if label else f"sev {s}",
                        lambda rep, s=s: pair_acc(rep, "per_severity", lambda r: int(r["severity"]) == s)))
    for op in ops:
        columns.append((op, lambda rep, op=op: pair_acc(rep, "per_operator", lambda r: r["operator"] == op)))
    for op, v in variants:
        columns.append((v if len(ops) == 1 else f"{op} {v}", lambda rep, op=op, v=v: pair_acc(
            rep, "per_variant", lambda r: (r["operator"], r["variant"]) == (op, v))))
    columns.append(("all", lambda rep: _num(rep["test"]["pairwise_accuracy"])))
    columns.append(("AUC", lambda rep: _num(rep["test"]["auc"])))

    ladder_ops = sorted({op for rep in reports for op in (rep.get("ladder") or {})})
    cal_cols = [(c, lambda rep, c=c: _num(rep["calibration"]["test"].get(c, {}).get("ece"))) for c in CALIBRATIONS]
    sp_cols = [(op, lambda rep, op=op: _num((rep.get("ladder") or {}).get(op, {}).get("spearman_defect")))
               for op in ladder_ops]

    first = reports[0]["test"]
    where = f"{first.get('n_pairs')} pairs / {first.get('n_clips')} clips" + \
        (f", {n_sources} sources" if n_sources is not None else "")
    seeds = len(reports)
    lines = [f"{recipe.dim}: test split ({where}); pairwise accuracy, "
             f"{'one seed' if seeds == 1 else f'mean +- sd over {seeds} seeds'}", ""]
    rows = [[str(i), *[_cell([f(rep)]) for _, f in columns]] for i, rep in enumerate(reports)]
    if seeds > 1:
        rows.append(["mean +- sd", *[_cell([f(rep) for rep in reports]) for _, f in columns]])
    lines += _md(["seed", *[c for c, _ in columns]], rows)
    lines += ["", "calibration (fitted on val) and score vs defect size, test:", ""]
    header = ["seed", "ECE none / temperature / Platt / isotonic",
              "Spearman(score, defect): " + ", ".join(ladder_ops) if ladder_ops else "Spearman(score, defect)"]

    def row(label, reps):
        ece = " / ".join(_cell([f(r) for r in reps]) for _, f in cal_cols)
        sp = ", ".join(_cell([f(r) for r in reps], digits=2) for _, f in sp_cols) or "-"
        return [label, ece, sp]

    rows = [row(str(i), [rep]) for i, rep in enumerate(reports)]
    if seeds > 1:
        rows.append(row("mean +- sd", reports))
    lines += _md(header, rows)
    if recipe.operator_severity_table:
        lines += ["", "pairwise accuracy / ECE (default calibrator, over each group's pairs' clips) per operator "
                  "and severity, test" + ("" if seeds == 1 else ", mean over seeds") + ":", ""]
        lines += operator_severity_table(reports, ops, sevs)
    return "\n".join(lines)


def operator_severity_table(reports: Sequence[dict[str, Any]], ops: Sequence[str], sevs: Sequence[int]) -> list[str]:
    """Rows: operators, then "all"; columns: severities, then "all"; cells "accuracy / ECE (n pairs)"."""

    def cell(rows_of, match) -> str:
        found = [next((r for r in rows_of(rep) if match(r)), None) for rep in reports]
        found = [r for r in found if r and r.get("n_pairs")]
        if not found:
            return "-"
        acc = [_num(r.get("pairwise_accuracy")) for r in found]
        ece = [_num(r.get("ece")) for r in found]
        mean = lambda xs: sum(x for x in xs if x is not None) / max(1, sum(x is not None for x in xs))
        return f"{mean(acc):.3f} / {mean(ece):.3f} ({found[0]['n_pairs']})"

    rows = []
    for op in ops:
        rows.append([op, *[cell(lambda rep: rep.get("per_operator_severity", []),
                                lambda r, op=op, s=s: r["operator"] == op and int(r["severity"]) == s) for s in sevs],
                     cell(lambda rep: rep.get("per_operator", []), lambda r, op=op: r["operator"] == op)])
    rows.append(["all", *[cell(lambda rep: rep.get("per_severity", []), lambda r, s=s: int(r["severity"]) == s)
                          for s in sevs], "-"])
    return _md(["operator", *[f"sev {s}" for s in sevs], "all"], rows)


# ----------------------------------------------------------------------------- driver
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.real", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", required=True, choices=sorted(RECIPES))
    ap.add_argument("--src", nargs="+", default=None,
                    help=f"folders of real clips, one manifest for all (default {' '.join(DEFAULT_SRC)})")
    ap.add_argument("--extra", default=None, help=f"more clips for pretraining or training only (default {DEFAULT_EXTRA})")
    ap.add_argument("--work", default=None, help="where everything goes (default real/<dim>)")
    ap.add_argument("--seeds", type=int, default=1, help="train and evaluate seeds 0..N-1; export seed 0")
    ap.add_argument("--config", default=None, help="training config instead of the recipe's")
    ap.add_argument("--donors", default=None, help="donor voices instead of the recipe's")
    ap.add_argument("--workers", type=int, default=2, help="shard-building processes")
    ap.add_argument("--dry", action="store_true", help="print the commands, run nothing")
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error("--seeds must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    recipe = RECIPES[args.dim]
    src = [_abs(s) for s in args.src] if args.src else [ROOT / s for s in DEFAULT_SRC]
    for given, folder in zip(args.src or DEFAULT_SRC, src):
        if not folder.is_dir():
            raise SystemExit(f"make real: no real footage at {given} (SRC); it lives outside the repository, "
                             f"see DEVELOPERS.md \"Real data\"")
    extra = _abs(args.extra) if args.extra else ROOT / DEFAULT_EXTRA
    if (recipe.pretrain or recipe.train_extra_manifest) and not extra.is_dir():
        raise SystemExit(f"make real: no {'pretraining' if recipe.pretrain else 'extra training'} clips at "
                         f"{args.extra or DEFAULT_EXTRA} (EXTRA)")
    donors = _abs(args.donors) if args.donors else (ROOT / recipe.donors if recipe.donors else None)
    if donors is not None and not donors.is_dir():
        raise SystemExit(f"make real: no donor voices at {args.donors or recipe.donors} (DONORS)")
    work = _abs(args.work) if args.work else ROOT / "real" / args.dim

    stages = plan(recipe, src, extra, work, args.seeds, config=args.config, donors=donors, workers=args.workers)
    if args.dry:  # a dry run writes nothing and removes nothing
        for st in stages:
            done = "  # done, would be skipped" if is_done(work, st) else ""
            print(_show(st.argv) + (f" > {_arg(st.stdout_to)}" if st.stdout_to else "") + done)
        return 0
    # what a killed run wrote aside: stage stdout (.sync_offsets.md.tmp<PID>), stamps, sync_offsets' --out
    remove_stale_temporaries(sorted({work, work / ".stages", *(st.stdout_to.parent for st in stages if st.stdout_to)}))
    for st in stages:
        if is_done(work, st):
            print(f"[real] {st.name}: done, skipped", flush=True)
        else:
            run_stage(work, st)

    reports = [json.loads((work / "reports" / f"seed{i}" / "report.json").read_text()) for i in range(args.seeds)]
    card = json.loads((eval_shards_of(recipe, work) / "card.json").read_text())
    n_sources = sum(1 for s in card.get("sources", []) if s.get("split") == "test") or None
    table = results_table(reports, recipe, n_sources)
    (work / "table.md").write_text(table + "\n")
    export = _arg(work / "export")
    print("\n" + table)
    if recipe.sync_offsets and (work / "sync_offsets.md").is_file():
        print("\nclip-level offsets of the export on whole test clips (bench/sync_offsets.py):\n")
        print((work / "sync_offsets.md").read_text().strip())
    print(f"\nexport (seed 0): {export}\nscore with: python -m eval score --scorer {export} FILE...")
    print(f"reports: {_arg(work / 'reports')}/seed*/report.md; table: {_arg(work / 'table.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
