"""Ship a real-footage judge inside the package: `make real DIM=<dim>`'s export, with a model card.

    python bench/package_judge.py --dim lip_sync --work real/lip_sync [--cv "0.818 -> 0.857 (3 seeds)"]

Copies WORK/export (weights, preprocessing, calibration, metrics) to eval/judges/<dim>/, where
`Scorer.from_pretrained("<dim>")` and `python -m eval score --scorer <dim>` find it, and writes its
README.md: what it was trained on and under which licences, the measured test table of WORK/table.md,
cross-validated numbers when given, the limits, and the command that regenerates it with the sha256
of its weights (the build is deterministic; tests/test_packaged_judges.py checks it, slow).
Only weights and numbers are copied: never a clip or anything cut from one.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval.scorer import PACKAGED_JUDGES  # noqa: E402

EXPORT_FILES = ("config.json", "model.safetensors", "preprocessing.json", "calibration.json", "metrics.json")
MAX_BYTES = 2 << 20  # a packaged judge stays small: the package is installed everywhere


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def relative_to_checkout(text: str) -> str:
    """Paths under this checkout written relative to it: a card read elsewhere names no build machine."""
    return text.replace(json.dumps(str(ROOT) + "/")[1:-1], "").replace(str(ROOT) + "/", "")


def model_card(dim: str, export: Path, table: str, cv: str | None, command: str) -> str:
    metrics = json.loads((export / "metrics.json").read_text())
    card = metrics.get("data_card") or {}
    eval_card = metrics.get("eval_data_card")
    sources = card.get("sources") or []
    licences = Counter(str(s.get("licence") or "unknown") for s in sources)
    groups = {s.get("group") for s in sources if s.get("split")}
    export_card = (export / "README.md").read_text().split("\n", 1)[1] if (export / "README.md").is_file() else ""
    lines = [
        f"# avbench packaged judge: `{dim}`", "",
        f"Trained by `make real DIM={dim}` on real talking-head footage (`../shared/realvids`, outside the "
        "repository: never in it or in the package). **Research use only**: the clips come from public "
        "research repositories under the licences below, several of them non-commercial, and the weights "
        "inherit that restriction.", "",
        "```python", "from eval import Scorer", f'Scorer.from_pretrained("{dim}").score("video.mp4")', "```", "",
        f"Command line: `python -m eval score --scorer {dim} video.mp4`.", "",
        "## Training data", "",
        f"- {len(sources)} source clips, {len(groups)} speaker groups, split by group into train / val / test "
        "(the data card is in metrics.json, \"data_card\").",
        "- licences: " + ", ".join(f"{name} ({n})" for name, n in licences.most_common()),
        f"- rebuild of the pairs: `{card.get('command', '?')}`",
        *([f"- tested on a second build: `{eval_card.get('command', '?')}`"] if eval_card else []), "",
        "## Measured (test split, unseen speakers)", "", table.strip(), "",
        "Cross-validation over the train and val sources (`bench/cv_judge.py`): "
        + (cv if cv else "not run for this build."), "",
        "## Limits", "",
        f"- Few speakers ({len(groups)} groups): faces, cameras, languages and codecs unlike these clips may "
        "score differently; rankings transfer better than absolute probabilities.",
        "- Judges the defects its recipe simulates (perturb/recipes), at the recipe's severities.",
        "- Needs a visible face and speech (status `no_face` / `no_audio` / `too_short` otherwise).", "",
        "## Regenerate", "",
        "```", command, "```", "",
        f"model.safetensors sha256: `{sha256(export / 'model.safetensors')}`", "",
        "## Export's own model card", "", export_card.strip(), ""]
    return "\n".join(lines)


def package(dim: str, work: Path, cv: str | None = None, dest_root: Path = PACKAGED_JUDGES) -> Path:
    export = work / "export"
    missing = [f for f in EXPORT_FILES if not (export / f).is_file()]
    if missing:
        raise SystemExit(f"{export}: no {', '.join(missing)} (run `make real DIM={dim} WORK={work}` first)")
    size = sum((export / f).stat().st_size for f in EXPORT_FILES)
    if size > MAX_BYTES:
        raise SystemExit(f"{export}: {size} bytes, over the {MAX_BYTES} byte limit of a packaged judge")
    table = (work / "table.md").read_text() if (work / "table.md").is_file() else "(no WORK/table.md)"
    dest = dest_root / dim
    tmp = dest.with_name(f".{dim}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in EXPORT_FILES:
        shutil.copyfile(export / f, tmp / f)
    command = f"make real DIM={dim} WORK={work}\npython bench/package_judge.py --dim {dim} --work {work}"
    (tmp / "README.md").write_text(model_card(dim, export, table, cv, command))
    for f in ("README.md", "metrics.json"):  # the build's commands name this checkout: say them from its root
        (tmp / f).write_text(relative_to_checkout((tmp / f).read_text()))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", required=True)
    ap.add_argument("--work", required=True, help="make real's WORK folder (its export/ and table.md)")
    ap.add_argument("--cv", default=None, help="cross-validated numbers to state in the card (bench/cv_judge.py)")
    args = ap.parse_args(argv)
    dest = package(args.dim, Path(args.work), args.cv)
    print(f"packaged {dest} (model.safetensors sha256 {sha256(dest / 'model.safetensors')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
