"""Leave-one-engine-out for speech_realism: train without engine E, test on E's pairs.

    python bench/speech_realism_loeo.py --shards real/speech_realism/shards/speech_realism \\
        --work real/speech_realism/loeo --engines hibari piper [--config YAML] [--cache-dir DIR] [--seed 0]

For each held-out engine E: the train and val shards of SHARDS are copied without the pairs whose
tts_replace engine is E (every other member byte for byte, in order; a new manifest.json), the test
shard unchanged, so the test pairs are those of `make real DIM=speech_realism`. Then a judge is trained
(`python -m train`, the recipe's config) and evaluated (`python -m eval evaluate`) on them; the row of E
is its pairwise accuracy on E's test pairs (report.json per_variant), beside the accuracy on all test
pairs. Each stage is a subprocess with an argument list; a finished engine (its report.json there) is
skipped, so a killed run resumes. The table goes to stdout and WORK/loeo.md.
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from perturb.media import sha256_file  # noqa: E402
from perturb.shard_format import check_member, check_shard  # noqa: E402

DIM = "speech_realism"
CONFIG = "train/configs/realvids/speech_realism.yaml"


def pair_engine(meta: dict[str, Any]) -> str | None:
    """The TTS engine of a pair's rejected side (None for other operators)."""
    for op in meta.get("ops") or []:
        engine = (op.get("params") or {}).get("engine")
        if isinstance(engine, str):
            return engine
    return None


def filter_shard(src: Path, dst: Path, drop_engine: str) -> tuple[int, int]:
    """Copy the tar `src` to `dst` without the samples whose json names `drop_engine`; (kept, dropped)."""
    check_shard(src)
    samples: dict[str, list[tuple[tarfile.TarInfo, bytes]]] = {}
    order: list[str] = []
    with tarfile.open(src) as tar:
        fmt = tar.format  # the writer's (long member names need PAX headers)
        for info in tar:
            key, _ = check_member(info, src)
            if key not in samples:
                samples[key], _ = [], order.append(key)
            samples[key].append((info, tar.extractfile(info).read()))
    kept = dropped = 0
    tmp = dst.with_name(f".{dst.name}.tmp")
    with tarfile.open(tmp, "w", format=fmt) as out:
        for key in order:
            meta = next((json.loads(data) for info, data in samples[key] if info.name.endswith(".json")), {})
            if pair_engine(meta) == drop_engine:
                dropped += 1
                continue
            kept += 1
            for info, data in samples[key]:
                out.addfile(info, io.BytesIO(data))
    tmp.replace(dst)
    return kept, dropped


def holdout_shards(shards: Path, out: Path, engine: str) -> dict[str, int]:
    """SHARDS without `engine` in train / val, test unchanged, at OUT (manifest.json, card.json)."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((shards / "manifest.json").read_text())
    rows, counts = [], {"train_kept": 0, "train_dropped": 0, "val_kept": 0, "val_dropped": 0}
    for row in manifest["shards"]:
        src, dst = shards / row["file"], out / row["file"]
        if row["split"] == "test":
            shutil.copyfile(src, dst)
            n = row["count"]
        else:
            n, dropped = filter_shard(src, dst, engine)
            counts[f"{row['split']}_kept"] += n
            counts[f"{row['split']}_dropped"] += dropped
        rows.append({**row, "count": n, "bytes": dst.stat().st_size, "sha256": sha256_file(dst)})
    (out / "manifest.json").write_text(json.dumps({**manifest, "shards": rows, "held_out_engine": engine}, indent=1))
    card = json.loads((shards / "card.json").read_text())
    card["held_out_engine"] = engine
    (out / "card.json").write_text(json.dumps(card, indent=1))
    return counts


def run_engine(engine: str, shards: Path, work: Path, config: str, cache: Path, seed: int) -> dict[str, Any]:
    base = work / engine
    report = base / "report" / "report.json"
    if not report.is_file():
        data = base / "shards" / DIM
        counts = holdout_shards(shards, data, engine)
        (base / "counts.json").write_text(json.dumps(counts))
        py = sys.executable
        for argv in (["-m", "train", "--dim", DIM, "--objective", "reward", "--shards", str(data), "--run",
                      str(base / "run"), "--config", config, "--seed", str(seed), "--cache-dir", str(cache)],
                     ["-m", "eval", "evaluate", "--dim", DIM, "--shards", str(data), "--run", str(base / "run"),
                      "--export", str(base / "export"), "--report", str(base / "report"), "--cache-dir", str(cache),
                      "--no-progress"]):
            print(f"[loeo {engine}] python {' '.join(argv)}", flush=True)
            rc = subprocess.run([py, *argv], cwd=ROOT).returncode
            if rc != 0:
                raise SystemExit(f"loeo: {engine}: python {' '.join(argv)} failed (exit {rc})")
    rep = json.loads(report.read_text())
    counts = json.loads((base / "counts.json").read_text())
    row = next((r for r in rep.get("per_variant", []) if r.get("variant") == engine), {})
    acc = lambda v: (v or {}).get("value") if isinstance(v, dict) else v
    return {"engine": engine, **counts, "test_pairs": row.get("n_pairs"),
            "held_out_accuracy": acc(row.get("pairwise_accuracy")),
            "all_test_accuracy": acc(rep["test"]["pairwise_accuracy"])}


def table(rows: list[dict[str, Any]]) -> str:
    fmt = lambda x: "-" if x is None else f"{x:.3f}"
    lines = ["| held-out engine | train pairs (dropped) | its test pairs | pairwise accuracy on it | all test pairs |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['engine']} | {r['train_kept']} ({r['train_dropped']}) | {r['test_pairs']} | "
              f"{fmt(r['held_out_accuracy'])} | {fmt(r['all_test_accuracy'])} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", required=True, help=f"the {DIM} build (make real's WORK/shards/{DIM})")
    ap.add_argument("--work", required=True)
    ap.add_argument("--engines", nargs="+", required=True)
    ap.add_argument("--config", default=CONFIG)
    ap.add_argument("--cache-dir", default=None, help="preprocessing cache (default WORK/cache)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    shards, work = Path(args.shards).resolve(), Path(args.work).resolve()
    if not (shards / "manifest.json").is_file():
        raise SystemExit(f"loeo: no build at {args.shards} (run make real DIM={DIM} first)")
    cache = Path(args.cache_dir).resolve() if args.cache_dir else work / "cache"
    rows = [run_engine(e, shards, work, args.config, cache, args.seed) for e in args.engines]
    text = table(rows)
    (work / "loeo.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
