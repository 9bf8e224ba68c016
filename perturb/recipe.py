"""Recipes: one YAML file per dimension, naming operators, severities and pair rules.

A recipe's `transform` is a tree: a leaf `{op: NAME, p: .., weight: .., **sampling_config}`, or a node
`{one_of: [...]}`, `{some_of: [...], n: [1, 2]}`, `{compose: [...]}` (each with optional p / weight).
Adding a dimension = adding a file to perturb/recipes/ (or passing a path); no pipeline edit.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .operators import SEVERITY_LEVELS, Compose, OneOf, SomeOf, Transform, get_operator

RECIPES_DIR = Path(__file__).parent / "recipes"
_NODE_KEYS = ("one_of", "some_of", "compose")


@dataclass
class Recipe:
    name: str
    dim: str
    question: str
    transform_spec: dict[str, Any]
    window_seconds: float = 5.0
    pairs_per_window: int = 2
    severity_levels: list[int] = field(default_factory=lambda: list(SEVERITY_LEVELS))
    severity_weights: list[float] = field(default_factory=lambda: [1.0] * len(SEVERITY_LEVELS))
    graded_pairs: float = 0.0
    splits: dict[str, float] = field(default_factory=lambda: {"train": 0.7, "val": 0.15, "test": 0.15})
    source_text: str = ""

    def build_transform(self, op_config: dict[str, dict[str, Any]] | None = None) -> Transform:
        """Instantiate the transform tree; op_config[name] adds sampling config to leaves `name`."""
        return _build(self.transform_spec, op_config or {})

    def sample_severity(self, rng: np.random.Generator) -> int:
        w = np.asarray(self.severity_weights, dtype=float)
        return int(self.severity_levels[int(rng.choice(len(w), p=w / w.sum()))])

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.source_text.encode()).hexdigest()[:16]


def _build(spec: dict[str, Any], op_config: dict[str, dict[str, Any]]) -> Transform:
    spec = dict(spec)
    spec.pop("weight", None)
    p = float(spec.pop("p", 1.0))
    if "op" in spec:
        name = spec.pop("op")
        cls = get_operator(name)
        return cls(p=p, **{**spec, **op_config.get(name, {})})
    kind = [k for k in _NODE_KEYS if k in spec]
    if len(kind) != 1:
        raise ValueError(f"recipe node needs exactly one of op/{'/'.join(_NODE_KEYS)}: {spec}")
    children_specs = spec[kind[0]]
    children = [_build(c, op_config) for c in children_specs]
    if kind[0] == "one_of":
        return OneOf(children, weights=[float(c.get("weight", 1.0)) for c in children_specs], p=p)
    if kind[0] == "some_of":
        n = spec.get("n", 1)
        return SomeOf(children, n=n if isinstance(n, int) else tuple(n), p=p)
    return Compose(children, p=p)


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A recipe by name (perturb/recipes/<name>.yaml) or by path to a YAML file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no recipe {name_or_path!r}; built-in recipes: {known}")
    text = path.read_text()
    raw = yaml.safe_load(text)
    missing = [k for k in ("dim", "question", "transform") if k not in raw]
    if missing:
        raise ValueError(f"recipe {path} lacks {missing}")
    sev = raw.get("severity", {})
    levels = [int(x) for x in sev.get("levels", SEVERITY_LEVELS)]
    recipe = Recipe(
        name=path.stem, dim=raw["dim"], question=raw["question"], transform_spec=raw["transform"],
        window_seconds=float(raw.get("window_seconds", 5.0)),
        pairs_per_window=int(raw.get("pairs_per_window", 2)),
        severity_levels=levels,
        severity_weights=[float(x) for x in sev.get("weights", [1.0] * len(levels))],
        graded_pairs=float(raw.get("graded_pairs", 0.0)),
        splits={k: float(v) for k, v in raw.get("splits", {"train": 0.7, "val": 0.15, "test": 0.15}).items()},
        source_text=text,
    )
    recipe.build_transform()  # fail early on unknown operators or bad nodes
    return recipe


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from (global seed, source id, recipe, window, pair...): stable across runs/machines."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
