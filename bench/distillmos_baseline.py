"""DistillMOS as a second external baseline for the audio_quality judge, beside DNSMOS, on the same pairs.

    python bench/distillmos_baseline.py --shards SHARDS/audio_quality [--split test] [--report REPORT_DIR]
                                        [--dnsmos REPORT_DIR/dnsmos.json] [--out FILE.json]

Scores both sides of every pair of SPLIT with DistillMOS (Stahl & Gamper, "Distillation and Pruning
for Scalable Self-Supervised Representation-Based Speech Quality Assessment", ICASSP 2025: a compact
CNN + transformer distilled from an XLS-R speech-quality model; MOS 1..5) and prints its pairwise
accuracy (chosen MOS > rejected MOS; ties count 1/2) overall, per operator and per severity. With
--report (a `python -m eval evaluate` report folder of the same shards, holding scores_<split>.jsonl)
also the judge's pairwise accuracy on the same pairs and Spearman(judge score, DistillMOS) over the
distinct clips of the split, with a bootstrap 95% CI; with --dnsmos (bench/dnsmos_baseline.py's
--out JSON of the same pairs) DNSMOS OVRL's pairwise accuracy beside them.

The network and its weights ship inside the `distillmos` wheel (MIT; `pip install --no-deps
distillmos==0.9.1 xls-r-sqa==0.1.0`: its other requirements are avbench's own); its weights are
read here with torch.load(weights_only=True). When the package is missing the script says so in one
line and exits 0 (a skipped baseline, not a failure). Never imported by the judge: nothing in
perturb/, train/ or eval/ imports it.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from bench.dnsmos_baseline import baseline_parser, judge_scores, read_pairs, score_pairs, show, summary  # noqa: E402

INSTALL_HINT = "pip install --no-deps distillmos==0.9.1 xls-r-sqa==0.1.0"


def available() -> bool:
    """Both packages installed (found without importing them)."""
    return all(importlib.util.find_spec(m) is not None for m in ("distillmos", "xls_r_sqa"))


class DistillMOS:
    """MOS (1..5) of 16 kHz mono float audio; a clip shorter than the model's 7.68 s input is padded
    with silence and a longer one averaged over overlapping crops, as the upstream forward does."""

    def __init__(self) -> None:
        import torch
        from distillmos import ConvTransformerSQAModel
        from distillmos.sqa import DEFAULT_WEIGHTS_CHKPT

        self.torch = torch
        self.model = ConvTransformerSQAModel(load_weights=False)
        state = torch.load(DEFAULT_WEIGHTS_CHKPT, map_location="cpu", weights_only=True)  # tensors only
        self.model.load_state_dict(state["model"])
        self.model.eval()

    def __call__(self, audio: np.ndarray) -> float:
        x = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
        if len(x) == 0:
            x = np.zeros(1600, np.float32)
        with self.torch.no_grad():
            return float(self.model(self.torch.from_numpy(x)[None]).reshape(-1)[0])


def run(shards: Path, split: str = "test", report: Path | None = None, n_boot: int = 1000,
        dnsmos: Path | None = None, model: Any = None) -> dict[str, Any]:
    """model: any callable audio -> MOS (default DistillMOS())."""
    rows, clips = score_pairs(read_pairs(shards, split), model or DistillMOS(), "mos",
                              judge_scores(report, split) if report else {})
    result = summary(rows, clips, split, "mos", "distillmos", n_boot)
    if dnsmos:
        d = json.loads(Path(dnsmos).read_text())
        if d.get("split") != split or d.get("pairs") != len(rows):
            raise SystemExit(f"DistillMOS baseline: {dnsmos} scored {d.get('pairs')} {d.get('split')} pairs, "
                             f"not these {len(rows)} {split} pairs")
        result["dnsmos_pairwise_accuracy"] = d["dnsmos_pairwise_accuracy"]
        result["dnsmos_per_operator"] = d["dnsmos_per_operator"]
    return result


def format_result(r: dict[str, Any]) -> str:
    lines = [f"DistillMOS on {r['split']}: {r['pairs']} pairs / {r['clips']} distinct clips; "
             f"mean MOS chosen {r['mean_mos']['chosen']:.2f}, rejected {r['mean_mos']['rejected']:.2f}",
             f"DistillMOS pairwise accuracy: {r['distillmos_pairwise_accuracy']:.3f}"]
    if "dnsmos_pairwise_accuracy" in r:
        lines.append(f"DNSMOS OVRL pairwise accuracy (same pairs): {r['dnsmos_pairwise_accuracy']:.3f}")
    if "judge_pairwise_accuracy" in r:
        lines.append(f"judge pairwise accuracy (same pairs): {r['judge_pairwise_accuracy']:.3f}")
        s = r["spearman_judge_distillmos"]
        lines.append(f"Spearman(judge score, DistillMOS) over {s['n_clips']} clips: {s['value']:.3f} "
                     f"(95% CI [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}])")
    cols = [("DistillMOS", r["distillmos_per_operator"]), ("DNSMOS OVRL", r.get("dnsmos_per_operator")),
            ("judge", r.get("judge_per_operator"))]
    cols = [(name, table) for name, table in cols if table]
    lines += ["", "| operator | pairs | " + " | ".join(n for n, _ in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for op, v in r["distillmos_per_operator"].items():
        cells = [f"{t[op]['accuracy']:.3f}" if op in t else "" for _, t in cols]
        lines.append(f"| {op} | {v['n']} | " + " | ".join(cells) + " |")
    lines += ["", "| severity | pairs | DistillMOS |", "|---|---|---|"]
    lines += [f"| {s} | {v['n']} | {v['accuracy']:.3f} |" for s, v in r["distillmos_per_severity"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = baseline_parser(__doc__.split("\n\n")[0])
    ap.add_argument("--dnsmos", default=None, help="bench/dnsmos_baseline.py --out JSON of the same pairs")
    args = ap.parse_args(argv)
    if not available():
        print(f"DistillMOS baseline skipped: the distillmos package is not installed ({INSTALL_HINT})")
        return 0
    dnsmos = Path(args.dnsmos) if args.dnsmos else None
    if dnsmos is not None and not dnsmos.is_file():
        raise SystemExit(f"DistillMOS baseline: no {dnsmos} (run `make dnsmos` first, or leave out --dnsmos)")
    result = run(Path(args.shards), args.split, Path(args.report) if args.report else None, args.n_boot, dnsmos)
    return show(result, format_result(result), args.out)


if __name__ == "__main__":
    raise SystemExit(main())
