"""DNSMOS OVRL as an external baseline for the audio_quality judge, on the same test pairs.

    python bench/dnsmos_baseline.py --shards SHARDS/audio_quality [--split test] [--report REPORT_DIR]
                                    [--calibration EXPORT/calibration.json] [--out FILE.json]

Scores both sides of every pair of SPLIT with DNSMOS (Microsoft's P.835 model, the ONNX file that
the `speechmos` wheel ships, run with onnxruntime: `pip install -e ".[dnsmos]"`) and prints its pairwise
accuracy (chosen OVRL > rejected OVRL; ties count 1/2) overall, per operator and per severity.
With --report (a `python -m eval evaluate` report folder of the same shards, which holds
scores_<split>.jsonl), it also prints the judge's pairwise accuracy on the same pairs and
Spearman(judge score, DNSMOS OVRL) over the distinct clips of the split, with a bootstrap 95% CI.
With --calibration (the export's calibration.json, fitted on val), it adds the judge's pairwise
accuracy and ECE (calibrated P(clean): originals are 1, perturbed clips 0) per operator and severity.

DNSMOS is a baseline here, never a dependency of the judge: nothing in perturb/, train/ or eval/
imports it. Its 9.01 s input is filled by repeating a shorter clip, as speechmos does.
Shards are read as the pair format only (perturb.shard_format): json parsed with json.loads,
mp4 sides decoded by ffmpeg.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from eval.calibration import Calibrator  # noqa: E402
from eval.metrics import bootstrap_ci, ece, pairwise_accuracy, spearman  # noqa: E402
from perturb.media import decode_audio  # noqa: E402
from perturb.shard_format import check_member, check_shard  # noqa: E402

SR = 16000
SIDES = ("chosen", "rejected")
INPUT_SECONDS = 9.01  # DNSMOS's fixed input length
OVRL_POLY = (-0.06766283, 1.11546468, 0.04602535)  # raw -> MOS polynomial of DNSMOS (non-personalised)
SIG_POLY = (-0.08397278, 1.22083953, 0.0052439)
BAK_POLY = (-0.13166888, 1.60915514, -0.39604546)


def dnsmos_model_path() -> Path:
    """sig_bak_ovr.onnx inside the installed speechmos package (found without importing it: its
    module imports librosa, which the baseline does not need)."""
    spec = importlib.util.find_spec("speechmos")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("DNSMOS baseline: the speechmos package is not installed (pip install -e \".[dnsmos]\")")
    path = Path(list(spec.submodule_search_locations)[0]) / "dnsmos_models" / "sig_bak_ovr.onnx"
    if not path.is_file():
        raise SystemExit(f"DNSMOS baseline: {path} missing from the speechmos package")
    return path


class DNSMOS:
    """P.835 DNSMOS (SIG, BAK, OVRL) of 16 kHz mono float audio."""

    def __init__(self, model_path: Path | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_path or dnsmos_model_path()), opts,
                                            providers=["CPUExecutionProvider"])

    def __call__(self, audio: np.ndarray) -> dict[str, float]:
        x = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
        n = int(INPUT_SECONDS * SR)
        if len(x) == 0:
            x = np.zeros(n, np.float32)
        if len(x) < n:  # a short clip is repeated to fill the input (speechmos doubles it until it
            x = np.resize(x, n)  # fits, then scores every 1 s hop of the copies: the same content, 7x the work)
        hops = int(np.floor(len(x) / SR - INPUT_SECONDS)) + 1
        raw = np.stack([self.session.run(None, {"input_1": x[i * SR: i * SR + n][None]})[0][0]
                        for i in range(hops)])
        sig, bak, ovrl = (np.polyval(p, raw[:, k]).mean() for k, p in enumerate((SIG_POLY, BAK_POLY, OVRL_POLY)))
        return {"sig": float(sig), "bak": float(bak), "ovrl": float(ovrl)}


def read_pairs(shards: Path, split: str) -> list[dict[str, Any]]:
    """[{key, json, chosen, rejected}] of every pair of SPLIT (mp4 sides as bytes)."""
    pairs: dict[str, dict[str, Any]] = {}
    files = sorted(shards.glob(f"{split}-*.tar"))
    if not files:
        raise SystemExit(f"DNSMOS baseline: no {split}-*.tar in {shards}")
    for shard in files:
        check_shard(shard)
        with tarfile.open(shard) as tar:
            for info in tar:
                key, ext = check_member(info, shard)
                data = tar.extractfile(info).read()
                rec = pairs.setdefault(key, {"key": key})
                rec[{"json": "json", "chosen.mp4": "chosen", "rejected.mp4": "rejected"}[ext]] = \
                    json.loads(data) if ext == "json" else data
    return [p for p in pairs.values() if {"json", "chosen", "rejected"} <= set(p)]


def decode_bytes(data: bytes, tmp: Path) -> np.ndarray:
    path = tmp / "clip.mp4"
    path.write_bytes(data)
    return decode_audio(path, sr=SR)


def judge_scores(report: Path, split: str) -> dict[str, tuple[float, float]]:
    """key -> (z_chosen, z_rejected) from eval's scores_<split>.jsonl."""
    out = {}
    for line in (report / f"scores_{split}.jsonl").read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            out[r["meta"]["key"]] = (float(r["z_chosen"]), float(r["z_rejected"]))
    return out


def _group_acc(rows: list[dict[str, Any]], field: str, a: str, b: str) -> dict[str, dict[str, float]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(str(r[field]), []).append(r)
    return {g: {"n": len(v), "accuracy": pairwise_accuracy([x[a] for x in v], [x[b] for x in v])}
            for g, v in sorted(groups.items())}


def judge_by_operator_severity(rows: list[dict[str, Any]], calibrator: Calibrator) -> list[dict[str, Any]]:
    """Per (operator, severity) and per operator: pairs, judge pairwise accuracy, ECE of the calibrated
    score over the group's clips (each original once, labelled 1; perturbed clips 0)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["operator"], str(r["severity"])), []).append(r)
        groups.setdefault((r["operator"], "all"), []).append(r)
    out = []
    for (op, sev), rs in sorted(groups.items()):
        clips = {r["chosen_sha"]: (r["judge_chosen"], 1) for r in rs} | {r["rejected_sha"]: (r["judge_rejected"], 0) for r in rs}
        z, y = (np.array(v, dtype=float) for v in zip(*clips.values()))
        out.append({"operator": op, "severity": sev, "pairs": len(rs),
                    "pairwise_accuracy": pairwise_accuracy([r["judge_chosen"] for r in rs], [r["judge_rejected"] for r in rs]),
                    "dnsmos_pairwise_accuracy": pairwise_accuracy([r["ovrl_chosen"] for r in rs], [r["ovrl_rejected"] for r in rs]),
                    "ece": ece(calibrator.transform(z), y), "clips": len(z)})
    return out


def score_pairs(pairs: list[dict[str, Any]], score: Callable[[np.ndarray], float], field: str,
                judge: dict[str, tuple[float, float]]) -> tuple[list[dict[str, Any]], dict[str, tuple[float, float]]]:
    """Score both sides of every pair (each distinct clip once) with score(16 kHz audio): rows with
    {field}_chosen / {field}_rejected (and judge_* for pairs in `judge`), and sha -> (judge z, score)
    of the judged clips. Also the loop of bench/distillmos_baseline.py."""
    cache: dict[str, float] = {}
    rows, clips = [], {}
    with tempfile.TemporaryDirectory(prefix="mos_") as tmp:
        for p in sorted(pairs, key=lambda p: p["key"]):
            row = {"key": p["key"], "operator": (p["json"].get("ops") or [{}])[-1].get("name", "none"),
                   "severity": p["json"].get("severity"), "kind": p["json"].get("kind", "")}
            for side in SIDES:
                h = hashlib.sha256(p[side]).hexdigest()
                if h not in cache:
                    cache[h] = score(decode_bytes(p[side], Path(tmp)))
                row[f"{field}_{side}"] = cache[h]
                row[f"{side}_sha"] = h
                if p["key"] in judge:
                    row[f"judge_{side}"] = judge[p["key"]][0 if side == "chosen" else 1]
                    clips[h] = (row[f"judge_{side}"], cache[h])
            rows.append(row)
    return rows, clips


def summary(rows: list[dict[str, Any]], clips: dict[str, tuple[float, float]], split: str, field: str, name: str,
            n_boot: int) -> dict[str, Any]:
    """score_pairs' rows and clips -> the baseline's pairwise accuracy ({name}_pairwise_accuracy, per
    operator, per severity; mean_{field}) and, for the pairs the judge scored, the judge's pairwise
    accuracy and Spearman(judge score, the baseline's score) over the distinct clips with a bootstrap CI."""
    a, b = f"{field}_chosen", f"{field}_rejected"
    out: dict[str, Any] = {
        "split": split, "pairs": len(rows), "clips": len({r[f"{s}_sha"] for r in rows for s in SIDES}),
        f"{name}_pairwise_accuracy": pairwise_accuracy([r[a] for r in rows], [r[b] for r in rows]),
        f"{name}_per_operator": _group_acc(rows, "operator", a, b),
        f"{name}_per_severity": _group_acc(rows, "severity", a, b),
        f"mean_{field}": {s: float(np.mean([r[f"{field}_{s}"] for r in rows])) for s in SIDES},
    }
    judged = [r for r in rows if "judge_chosen" in r]
    if judged:
        z, mos = (np.array(v) for v in zip(*clips.values()))
        out.update({"judge_pairs": len(judged),
                    "judge_pairwise_accuracy": pairwise_accuracy([r["judge_chosen"] for r in judged],
                                                                 [r["judge_rejected"] for r in judged]),
                    "judge_per_operator": _group_acc(judged, "operator", "judge_chosen", "judge_rejected"),
                    f"spearman_judge_{name}": {"value": spearman(z, mos), "n_clips": len(z),
                                               "ci95": list(bootstrap_ci(spearman, z, mos, n_boot=n_boot))}})
    return out


def run(shards: Path, split: str = "test", report: Path | None = None, n_boot: int = 1000,
        calibration: Path | None = None) -> dict[str, Any]:
    model = DNSMOS()
    rows, clips = score_pairs(read_pairs(shards, split), lambda audio: model(audio)["ovrl"], "ovrl",
                              judge_scores(report, split) if report else {})
    result = summary(rows, clips, split, "ovrl", "dnsmos", n_boot)
    judged = [r for r in rows if "judge_chosen" in r]
    if judged:
        if calibration:
            result["judge_per_operator_severity"] = judge_by_operator_severity(judged, Calibrator.load(calibration))
    return result


def format_result(r: dict[str, Any]) -> str:
    lines = [f"DNSMOS OVRL on {r['split']}: {r['pairs']} pairs / {r['clips']} distinct clips; "
             f"mean OVRL chosen {r['mean_ovrl']['chosen']:.2f}, rejected {r['mean_ovrl']['rejected']:.2f}",
             f"DNSMOS OVRL pairwise accuracy: {r['dnsmos_pairwise_accuracy']:.3f}"]
    if "judge_pairwise_accuracy" in r:
        lines.append(f"judge pairwise accuracy (same pairs): {r['judge_pairwise_accuracy']:.3f}")
        s = r["spearman_judge_dnsmos"]
        lines.append(f"Spearman(judge score, DNSMOS OVRL) over {s['n_clips']} clips: {s['value']:.3f} "
                     f"(95% CI [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}])")
    lines += ["", "| operator | pairs | DNSMOS OVRL | judge |", "|---|---|---|---|"]
    for op, v in r["dnsmos_per_operator"].items():
        j = r.get("judge_per_operator", {}).get(op, {}).get("accuracy")
        lines.append(f"| {op} | {v['n']} | {v['accuracy']:.3f} | {'' if j is None else f'{j:.3f}'} |")
    lines += ["", "| severity | pairs | DNSMOS OVRL |", "|---|---|---|"]
    lines += [f"| {s} | {v['n']} | {v['accuracy']:.3f} |" for s, v in r["dnsmos_per_severity"].items()]
    if "judge_per_operator_severity" in r:
        lines += ["", "| operator | severity | pairs | judge pairwise | judge ECE (calibrated) | DNSMOS OVRL pairwise |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {g['operator']} | {g['severity']} | {g['pairs']} | {g['pairwise_accuracy']:.3f} | {g['ece']:.3f} | "
                  f"{g['dnsmos_pairwise_accuracy']:.3f} |" for g in r["judge_per_operator_severity"]]
    return "\n".join(lines)


def baseline_parser(description: str) -> argparse.ArgumentParser:
    """The options of every MOS baseline here (also bench/distillmos_baseline.py's)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--shards", required=True, help="folder with SPLIT-*.tar (e.g. shards/audio_quality)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--report", default=None, help="python -m eval evaluate report folder (scores_SPLIT.jsonl)")
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    ap.add_argument("--n-boot", type=int, default=1000)
    return ap


def show(result: dict[str, Any], text: str, out: str | None) -> int:
    """Print the table; the result as JSON to `out` when given."""
    print(text)
    if out:
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = baseline_parser(__doc__.split("\n\n")[0])
    ap.add_argument("--calibration", default=None, help="the judge export's calibration.json (needs --report)")
    args = ap.parse_args(argv)
    result = run(Path(args.shards), args.split, Path(args.report) if args.report else None, args.n_boot,
                 Path(args.calibration) if args.calibration else None)
    return show(result, format_result(result), args.out)


if __name__ == "__main__":
    raise SystemExit(main())
