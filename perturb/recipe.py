"""Recipes: one YAML file per dimension, naming operators, severities and pair rules.

A recipe's `transform` is a tree: a leaf `{op: NAME, p: .., weight: .., **operator_keywords}`, or a
node `{one_of: [...]}`, `{some_of: [...], n: [1, 2]}`, `{compose: [...]}` (each with optional p;
`weight` only on the children of a one_of). Adding a dimension = adding a file to perturb/recipes/
(or passing a path); no pipeline edit. Every key is checked: a typo is an error naming the key and
the valid ones, never a silently ignored setting. `plugins: [MODULE, ...]` names modules to import
before the transform is built (operators of your own; the build's workers import them too).
`single_speaker: true` (default false) makes the build skip sources whose manifest `faces` is above 1:
a pair whose "original" shows several faces does not say which one the voice belongs to.

Every number has a range (RANGES: key -> (lo, hi, why)), checked at load, so a typo cannot ask for
a billion pairs or a nanosecond window; real recipes sit far inside them:
    window_seconds     0.2 .. 30    seconds per window (default 5)
    pairs_per_window   1 .. 50      integer (default 2)
    graded_pairs       0 .. 1       share of the pairs (default 0)
    severity.weights   0 .. 1000    relative weights of severity.levels (levels are among 1..5)
    splits.<split>     0 .. 1000    relative shares of train / val / test (not all zero)
    weight             0 .. 1000    relative weight of a one_of child
    p                  0 .. 1       probability of applying a node
The command-line overrides of `perturb build` are checked against the same table (check_build_values):
--window as window_seconds, --pairs-per-window, --splits, and hop_seconds 0.1 .. 3600 (--hop),
max_windows 0 .. 1000000 (--max-windows, 0 = all), max_side 32 .. 2048 (--max-side). Operator
keywords are range-checked by each operator (perturb/operators). The file itself is read by
perturb.shard_format.read_config_text / parse_config_yaml: at most 1 MB, no YAML aliases.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .operators import (PLUGIN_HINT, REGISTRY, SEVERITY_LEVELS, Compose, ConfigError, OneOf, PluginError, SomeOf,
                        Transform, check_keys, check_list, check_number, import_plugins, operator_keywords)
from .shard_format import parse_config_yaml, read_config_text

RECIPES_DIR = Path(__file__).parent / "recipes"
SPLITS = ("train", "val", "test")
DEFAULT_SPLITS = {"train": 0.7, "val": 0.15, "test": 0.15}
RECIPE_KEYS = ("dim", "question", "transform", "window_seconds", "pairs_per_window", "severity",
               "graded_pairs", "splits", "plugins", "single_speaker")
SEVERITY_KEYS = ("levels", "weights")
# keys a group node may have besides its children; `weight` is added under a one_of
_GROUP_KEYS = {"one_of": ("p",), "some_of": ("n", "p"), "compose": ("p",)}
# The range of every number of a recipe and of perturb build's overrides: (lo, hi, why). Integer
# bounds mean the value must be an integer. Generous for real use, small enough that a typo cannot
# exhaust memory (pairs and windows are planned as lists before any is made).
RANGES: dict[str, tuple[float, float, str]] = {
    "window_seconds": (0.2, 30.0, "seconds per window"),
    "hop_seconds": (0.1, 3600.0, "seconds between window starts: a source gives duration / hop windows"),
    "pairs_per_window": (1, 50, "pairs drawn from each window"),
    "max_windows": (0, 1_000_000, "windows per source at most, 0 = all"),
    "max_side": (32, 2048, "canonical longest side in pixels"),
    "graded_pairs": (0.0, 1.0, "a share of the pairs"),
    "severity.weights": (0.0, 1000.0, "relative weights"),
    "splits": (0.0, 1000.0, "relative shares of the sources"),
    "weight": (0.0, 1000.0, "relative weight of a one_of child"),
}


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
    splits: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SPLITS))
    source_text: str = ""
    plugins: list[str] = field(default_factory=list)  # modules imported before the transform is built
    single_speaker: bool = False  # skip sources with several faces (manifest column faces)

    def build_transform(self) -> Transform:
        """Instantiate the transform tree (ConfigError naming the node for any bad key or value)."""
        return _build(self.transform_spec, f"recipe {self.name}", "transform", in_one_of=False)

    def sample_severity(self, rng: np.random.Generator) -> int:
        w = np.asarray(self.severity_weights, dtype=float)
        return int(self.severity_levels[int(rng.choice(len(w), p=w / w.sum()))])

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.source_text.encode()).hexdigest()[:16]


def _build(spec: Any, where: str, at: str, in_one_of: bool) -> Transform:
    """The Transform of the recipe node `spec` found at `at` (a path like transform.one_of[1])."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: {at} must be a mapping like {{op: NAME}}, got {spec!r}")
    kinds = [k for k in ("op", *_GROUP_KEYS) if k in spec]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: {at} needs exactly one of op/{'/'.join(_GROUP_KEYS)}, has {sorted(map(str, spec))}")
    kind = kinds[0]
    weight = ("weight",) if in_one_of else ()  # the one_of above reads it; anywhere else it would do nothing
    if kind == "op":
        name = spec["op"]
        if name not in REGISTRY:
            raise ConfigError(f"{where}: unknown operator {name!r} at {at}; registered: {', '.join(sorted(REGISTRY))}; "
                              f"{PLUGIN_HINT}")
        cls = REGISTRY[name]
        check_keys(f"{where}: {at} (op: {name})", spec, ["op", *weight, *operator_keywords(cls)])
        keywords = {k: v for k, v in spec.items() if k not in ("op", "weight")}
        try:
            return cls(**keywords)
        except ConfigError as err:
            raise ConfigError(f"{where}: {at}: {err}") from None
    check_keys(f"{where}: {at} ({kind})", spec, [kind, *_GROUP_KEYS[kind], *weight])
    child_specs = check_list(f"{where}: {at}", kind, spec[kind], min_length=1)
    children = [_build(c, where, f"{at}.{kind}[{i}]", in_one_of=kind == "one_of")
                for i, c in enumerate(child_specs)]
    try:
        if kind == "one_of":
            weights = [check_value(f"{at}.one_of[{i}]", "weight", c.get("weight", 1.0))
                       for i, c in enumerate(child_specs)]
            return OneOf(children, weights=weights, p=spec.get("p", 1.0))
        if kind == "some_of":
            n = spec.get("n", 1)
            n = _check_int(at, "n", n, 0) if not isinstance(n, (list, tuple)) else \
                tuple(_check_int(at, "n", v, 0) for v in check_list(at, "n", n, length=2))
            return SomeOf(children, n=n, p=spec.get("p", 1.0))
        return Compose(children, p=spec.get("p", 1.0))
    except ConfigError as err:
        raise ConfigError(f"{where}: {at}: {err}") from None


def check_value(where: str, name: str, value: Any, key: str | None = None) -> int | float:
    """`value` if it is a number in RANGES[key or name] (an integer where the bounds are integers);
    else ConfigError naming where, name, the value and the range."""
    lo, hi, why = RANGES[key or name]
    if isinstance(lo, int) and isinstance(hi, int):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ConfigError(f"{where}: {name} must be an integer in [{lo}, {hi}] ({why}), got {value!r}")
    try:
        x = check_number(where, name, value, lo, hi)
    except ConfigError as err:
        raise ConfigError(f"{err} ({why})") from None
    return int(x) if isinstance(lo, int) and isinstance(hi, int) else x


def check_build_values(window_seconds: Any = None, hop_seconds: Any = None, pairs_per_window: Any = None,
                       max_windows: Any = 0, max_side: Any = None, splits: Any = None) -> None:
    """perturb build's overrides of the recipe (--window, --hop, ...; None = not given) against RANGES;
    ConfigError naming the flag, the value and the range."""
    for flag, key, value in (("--window", "window_seconds", window_seconds), ("--hop", "hop_seconds", hop_seconds),
                             ("--pairs-per-window", "pairs_per_window", pairs_per_window),
                             ("--max-windows", "max_windows", max_windows), ("--max-side", "max_side", max_side)):
        if value is not None:
            check_value("perturb build", flag, value, key)
    if splits is not None:
        _check_splits("perturb build: --splits", splits)


def parse_splits(text: str) -> dict[str, float]:
    """--splits "0.6,0.2,0.2" -> {train: 0.6, val: 0.2, test: 0.2} (ranged by check_build_values)."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != len(SPLITS):
        raise ConfigError(f"perturb build: --splits {text!r}: give three numbers, train,val,test (e.g. 0.6,0.2,0.2)")
    return dict(zip(SPLITS, values))


def _check_splits(where: str, splits: Any) -> dict[str, float]:
    """The split fractions of a mapping of train / val / test (each in RANGES["splits"], not all zero)."""
    fractions = {k: check_value(where, f"splits.{k}", v, "splits")
                 for k, v in _check_mapping(where, "splits", splits, SPLITS).items()}
    if sum(fractions.values()) <= 0:
        raise ConfigError(f"{where}: splits must not all be zero")
    return fractions


def _check_int(where: str, name: str, value: Any, lo: int) -> int:
    """`value` if it is an integer >= lo; else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: {name} must be an integer, got {value!r}")
    return int(check_number(where, name, value, lo))


def _check_mapping(where: str, name: str, value: Any, valid: tuple[str, ...]) -> dict[str, Any]:
    """`value` if it is a mapping whose keys are all in `valid`; else ConfigError."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {name} must be a mapping of {', '.join(valid)}, got {value!r}")
    check_keys(f"{where}: {name}", value, valid)
    return value


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A recipe by name (perturb/recipes/<name>.yaml) or by path to a YAML file.

    Every key and value is checked (ConfigError, one line naming the key and the valid ones), and the
    transform is built once so an unknown operator or keyword fails here, not in a worker.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no recipe {name_or_path!r}; built-in recipes: {known}")
    where = f"recipe {path}"
    try:  # at most 1 MB, no aliases (shard_format: perturb and train read their YAMLs alike)
        text = read_config_text(path)
        raw = parse_config_yaml(text, where)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of {', '.join(RECIPE_KEYS)}, got {raw!r}")
    check_keys(where, raw, RECIPE_KEYS)
    missing = [k for k in ("dim", "question", "transform") if k not in raw]
    if missing:
        raise ConfigError(f"{where} lacks {missing}")
    for key in ("dim", "question"):
        if not isinstance(raw[key], str) or not raw[key]:
            raise ConfigError(f"{where}: {key} must be a non-empty string, got {raw[key]!r}")
    sev = _check_mapping(where, "severity", raw.get("severity", {}), SEVERITY_KEYS)
    levels = [_check_int(where, "severity.levels[]", x, 1) for x in
              check_list(where, "severity.levels", sev.get("levels", SEVERITY_LEVELS), min_length=1)]
    if any(x not in SEVERITY_LEVELS for x in levels):
        raise ConfigError(f"{where}: severity.levels must be among {list(SEVERITY_LEVELS)}, got {levels}")
    weights = [check_value(where, "severity.weights[]", x, "severity.weights") for x in
               check_list(where, "severity.weights", sev.get("weights", [1.0] * len(levels)), length=len(levels))]
    if sum(weights) <= 0:
        raise ConfigError(f"{where}: severity.weights must not all be zero")
    fractions = _check_splits(where, raw.get("splits", DEFAULT_SPLITS))
    single_speaker = raw.get("single_speaker", False)
    if not isinstance(single_speaker, bool):
        raise ConfigError(f"{where}: single_speaker must be true or false, got {single_speaker!r}")
    plugins = list(check_list(where, "plugins", raw.get("plugins", [])))
    if not all(isinstance(m, str) and m.strip() for m in plugins):
        raise ConfigError(f"{where}: plugins must be a list of module names, got {plugins!r}")
    try:  # before the transform is built: they register its operators
        import_plugins(plugins, environ=False)
    except PluginError as err:
        raise PluginError(f"{where}: {err}", err.details) from err
    recipe = Recipe(
        name=path.stem, dim=raw["dim"], question=raw["question"], transform_spec=raw["transform"],
        window_seconds=check_value(where, "window_seconds", raw.get("window_seconds", 5.0)),
        pairs_per_window=check_value(where, "pairs_per_window", raw.get("pairs_per_window", 2)),
        severity_levels=levels,
        severity_weights=weights,
        graded_pairs=check_value(where, "graded_pairs", raw.get("graded_pairs", 0.0)),
        splits=fractions,
        source_text=text,
        plugins=plugins,
        single_speaker=single_speaker,
    )
    _build(recipe.transform_spec, where, "transform", in_one_of=False)  # fail early, naming the file
    return recipe


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from (global seed, source id, recipe, window, pair...): stable across runs/machines."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
