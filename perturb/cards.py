"""Data cards: what a built dataset holds, where it came from, and how to rebuild it."""
from __future__ import annotations

import json
import tarfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

LICENCE_NOTE = ("Pairs are derived from the listed sources and inherit their licences; "
                "respect each source's terms (research-only sources stay research-only).")


def _pair_records(out_dir: Path, shards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    records = []
    for shard in shards:
        with tarfile.open(out_dir / shard["file"]) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    records.append(json.loads(tar.extractfile(m).read()))
    return records


def _operator_modifies(records: list[dict[str, Any]]) -> dict[str, str]:
    """{operator: "audio" | "video" | "both"} of every operator the pairs applied."""
    from .operators import get_operator

    names = {r["operator"] for r in records} | {op["name"] for r in records for op in r.get("ops") or []}
    return {name: get_operator(name).modifies for name in sorted(names)}


def _param_ranges(records: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Min / max of every numeric parameter, per operator (rejected and graded-chosen sides)."""
    ranges: dict[str, dict[str, list[float]]] = defaultdict(dict)
    for r in records:
        for rec in r["ops"] + r["chosen_ops"]:
            for k, v in rec["params"].items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "seed":
                    lo_hi = ranges[rec["name"]].setdefault(k, [float(v), float(v)])
                    lo_hi[0], lo_hi[1] = min(lo_hi[0], v), max(lo_hi[1], v)
    return {op: dict(sorted(p.items())) for op, p in sorted(ranges.items())}


def card_dict(result: dict[str, Any]) -> dict[str, Any]:
    """The card as data: the JSON twin of the markdown card."""
    recipe = result["recipe"]
    records = _pair_records(result["out_dir"], result["shards"])
    per_split = Counter(r["split"] for r in records)
    per_op = Counter(r["operator"] for r in records)
    per_op_sev: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        per_op_sev[r["operator"]][str(r["severity"])] += 1
    summaries = {s["source_id"]: s for s in result["summaries"]}
    files = result.get("card_files") or {}  # a build of several folders names files below the card's src
    sources = []
    for s in result["sources"]:
        summ = summaries.get(s.source_id, {})
        sources.append({"source_id": s.source_id, "file": files.get(s.source_id) or Path(s.path).name,
                        "split": s.split, "group": s.group, "licence": s.licence, "status": summ.get("status"),
                        "pairs": summ.get("pairs", 0), "windows": summ.get("windows", 0),
                        "duration_s": summ.get("duration"),
                        # only when set, so the cards of sources without them are unchanged
                        **({"av_offset_ms": s.av_offset_ms} if s.av_offset_ms else {}),
                        **({"av_offset_evidence": s.av_offset_evidence}
                           if s.av_offset_ms and s.av_offset_evidence else {}),
                        **({"faces": s.faces} if s.faces != 1 else {})})
    return {
        "dim": result["dim"], "recipe": recipe.name, "recipe_sha": recipe.fingerprint,
        "question": recipe.question, "src": result["src"], "seed": result["seed"],
        "window_seconds": result["window_seconds"], "hop_seconds": result["hop_seconds"],
        "pairs_per_window": result["pairs_per_window"], "max_side": result["max_side"],
        "donors": result["donors"], "command": " ".join(result["command"]),
        "pairs": len(records), "counts_per_split": dict(sorted(per_split.items())),
        "counts_per_operator": dict(sorted(per_op.items())),
        "counts_per_operator_severity": {k: dict(sorted(v.items())) for k, v in sorted(per_op_sev.items())},
        # what each operator changes: python -m train picks a default config for a new dimension by it
        "operator_modifies": _operator_modifies(records),
        "graded_pairs": sum(r["kind"] == "graded" for r in records),
        "video_stream_copied": sum(bool(r.get("video_copied")) for r in records),
        "parameter_ranges": _param_ranges(records),
        "sources": sources, "rejected": result["rejects"], "shards": result["shards"],
        "licence_note": LICENCE_NOTE,  # no build time: a card is the same for the same data
        # only when used, so cards of builds without it are unchanged
        **({"train_extra": result["train_extra"]} if result.get("train_extra") else {}),
        **({"train_voices": result["train_voices"]} if result.get("train_voices") else {}),
        **({"plugins": result["plugins"]} if result.get("plugins") else {}),
    }


def card_markdown(card: dict[str, Any]) -> str:
    lines = [f"# Data card: `{card['dim']}`", "",
             f"Question: **{card['question']}**", "",
             f"- recipe: `{card['recipe']}` (sha {card['recipe_sha']}), window {card['window_seconds']} s "
             f"every {card['hop_seconds']} s, {card['pairs_per_window']} pairs per window, "
             f"seed {card['seed']}, canonical 25 fps / 16 kHz mono, longest side <= {card['max_side']} px",
             f"- sources from `{card['src']}`; donors: {card['donors'] or 'other sources of the same split'}",
             *([f"- train-only sources from `{card['train_extra']}` (split train; val / test as without them)"]
               if card.get("train_extra") else []),
             *([f"- train-only sources: the {len(card['train_voices'])} donor recordings of the train split "
                f"(still black picture; val / test as without them)"] if card.get("train_voices") else []),
             *([f"- sound lag corrected (manifest av_offset_ms; > 0: the sound came late): " + ", ".join(
                 f"{s['file']} {s['av_offset_ms']:+g} ms"
                 + (f" ({s['av_offset_evidence']})" if s.get("av_offset_evidence") else "")
                 for s in card["sources"] if s.get("av_offset_ms"))]
               if any(s.get("av_offset_ms") for s in card["sources"]) else []),
             *([f"- operators of plugin modules: {', '.join(f'`{m}`' for m in card['plugins'])} (the rebuild command "
                f"imports them; their folder must be on PYTHONPATH)"] if card.get("plugins") else []),
             f"- rebuild: `{card['command']}`",
             f"- pairs: {card['pairs']} ({card['graded_pairs']} graded milder-vs-stronger; "
             f"{card['video_stream_copied']} with the video stream copied, not re-encoded)", "",
             "## Counts per split", "", "| split | pairs |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in card["counts_per_split"].items()]
    lines += ["", "## Counts per operator and severity", "",
              "| operator | " + " | ".join(f"sev {i}" for i in range(1, 6)) + " | total |",
              "|---|" + "---|" * 6]
    for op, sev in card["counts_per_operator_severity"].items():
        lines.append(f"| {op} | " + " | ".join(str(sev.get(str(i), 0)) for i in range(1, 6))
                     + f" | {card['counts_per_operator'][op]} |")
    lines += ["", "## Parameter ranges", "", "| operator | parameter | min | max |", "|---|---|---|---|"]
    for op, params in card["parameter_ranges"].items():
        lines += [f"| {op} | {k} | {lo:g} | {hi:g} |" for k, (lo, hi) in params.items()]
    lines += ["", "## Sources", "", "| source | split | licence | windows | pairs | status |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {s['file']} | {s['split']} | {s['licence']} | {s['windows']} | {s['pairs']} | {s['status']} |"
              for s in card["sources"]]
    lines += ["", f"Licence note: {card['licence_note']}", "", "## Rejected inputs", ""]
    lines += [f"- `{Path(r['path']).name}`: {r['reason']}" for r in card["rejected"]] or ["none"]
    lines += ["", "## Shards", "", "| file | split | pairs | bytes | sha256 |", "|---|---|---|---|---|"]
    lines += [f"| {s['file']} | {s['split']} | {s['count']} | {s['bytes']} | `{s['sha256']}` |"
              for s in card["shards"]]
    return "\n".join(lines) + "\n"


def write_card(result: dict[str, Any], cards_dir: Path | None) -> dict[str, Any]:
    """Write card.json / card.md beside the shards and data_cards/<dim>.{md,json}."""
    card = card_dict(result)
    targets = [(result["out_dir"], "card")]
    if cards_dir is not None:
        cards_dir.mkdir(parents=True, exist_ok=True)
        targets.append((cards_dir, card["dim"]))
    for folder, stem in targets:
        (folder / f"{stem}.json").write_text(json.dumps(card, indent=1, sort_keys=True) + "\n")
        (folder / f"{stem}.md").write_text(card_markdown(card))
    return card
