"""Operator base class, registry, composition (Compose / OneOf / SomeOf) and the operator contract.

An operator is a small class with two pure methods:
  sample_params(rng, severity) -> dict   draws the parameters for a severity level (1 = mildest)
  apply(clip, params) -> Clip            deterministic given params
plus defect_size(params) -> float (how big the defect is) and `modifies` ("audio", "video", "both").
Its constructor keywords are named arguments with defaults (sampling configuration only, checked on
construction); an unknown keyword is refused with the list of valid ones. `register()` checks the
contract when the class is defined, so a broken operator fails at import, not in the middle of a build.
Parameters are sampled first and then recorded, so any perturbation can be replayed from its JSON
with `replay(clip, [{"name": ..., "params": ...}, ...])`.
"""
from __future__ import annotations

import copy
import difflib
import functools
import inspect
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable

import numpy as np

from ..clip import Clip
from ..plugins import PluginError, import_plugins  # noqa: F401  (part of the operators API)

SEVERITY_LEVELS = (1, 2, 3, 4, 5)
MODIFIES = ("audio", "video", "both")  # what apply may change; "audio" keeps the video stream copyable
RESERVED_KEYWORDS = ("op", "weight")  # recipe leaf keys, so no operator keyword may be called so
_NAME = re.compile(r"[a-z][a-z0-9_]*")

REGISTRY: dict[str, type["Operator"]] = {}
# how an operator defined outside avbench gets registered (said wherever a name is unknown)
PLUGIN_HINT = ("an operator of your own is imported with --plugin MODULE, AVBENCH_PLUGINS=MODULE "
               "or the recipe's plugins: [MODULE]")


class ConfigError(ValueError):
    """A recipe or operator configuration that cannot be right: unknown key, value out of range."""


def check_keys(where: str, given: Iterable[str], valid: Iterable[str], what: str = "key") -> None:
    """Refuse keys not in `valid`, in one line naming them (with a close match) and the valid ones."""
    valid = sorted(valid, key=str)
    unknown = [k for k in given if k not in valid]
    if not unknown:
        return
    close = difflib.get_close_matches(str(unknown[0]), [str(v) for v in valid], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    plural = "s" if len(unknown) > 1 else ""
    raise ConfigError(f"{where}: unknown {what}{plural} {', '.join(map(repr, unknown))}{hint}; "
                      f"valid: {', '.join(map(str, valid)) or '(none)'}")


def check_number(where: str, name: str, value: Any, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False) -> float:
    """`value` as a float if it is a number in [lo, hi] (or (lo, hi] with lo_open); else ConfigError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{where}: {name} must be a number, got {value!r}")
    x = float(value)
    below = lo is not None and (x <= lo if lo_open else x < lo)
    if below or (hi is not None and x > hi) or x != x:
        left = "(-inf" if lo is None else f"({lo:g}" if lo_open else f"[{lo:g}"
        right = "inf)" if hi is None else f"{hi:g}]"
        raise ConfigError(f"{where}: {name} must be in {left}, {right}, got {value!r}")
    return x


def check_list(where: str, name: str, value: Any, length: int | None = None, min_length: int = 0) -> tuple:
    """`value` as a tuple if it is a list or tuple (not a string) of the right length; else ConfigError."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) \
            or (length is not None and len(value) != length) or len(value) < min_length:
        size = f"{length} items" if length is not None else f"at least {min_length} item(s)" if min_length else "items"
        raise ConfigError(f"{where}: {name} must be a list of {size}, got {value!r}")
    return tuple(value)


def check_probability(where: str, p: Any) -> float:
    """A probability `p` in [0, 1], as a float."""
    return check_number(where, "p", p, 0.0, 1.0)


@functools.lru_cache(maxsize=None)
def operator_keywords(cls: type) -> dict[str, Any]:
    """An operator class's constructor keywords and their defaults, read from its __init__."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # skip self
    return {prm.name: prm.default for prm in params
            if prm.kind in (prm.POSITIONAL_OR_KEYWORD, prm.KEYWORD_ONLY)}


def _check_contract(name: str, cls: Any) -> None:
    """Refuse, in one line, an operator class that would fail (or silently misbehave) in a build."""
    if not (isinstance(cls, type) and issubclass(cls, Operator)):
        raise TypeError(f"cannot register {cls!r} as {name!r}: operators subclass perturb.operators.Operator")
    where = f"cannot register {cls.__qualname__} as {name!r}"
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{where}: names are lower-case letters, digits and '_', starting with a letter")
    if cls.modifies not in MODIFIES:
        raise TypeError(f"{where}: modifies must be one of {MODIFIES}, got {cls.modifies!r}")
    for method in ("sample_params", "apply", "defect_size"):
        if getattr(cls, method) is getattr(Operator, method):
            raise TypeError(f"{where}: it does not define {method}() (see perturb.operators.Operator)")
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    for prm in params:
        if prm.kind in (prm.VAR_POSITIONAL, prm.VAR_KEYWORD):
            raise TypeError(f"{where}: __init__ takes {prm}; declare each keyword by name with a default")
        if prm.default is prm.empty:
            raise TypeError(f"{where}: keyword {prm.name!r} has no default (an operator builds with defaults)")
        if prm.name in RESERVED_KEYWORDS:
            raise TypeError(f"{where}: keyword {prm.name!r} is reserved for recipe leaves")
    keywords = operator_keywords(cls)
    if "p" not in keywords:
        raise TypeError(f"{where}: __init__ lacks the keyword p (probability of applying)")
    try:
        check_probability(where, keywords["p"])
    except ConfigError as err:
        raise TypeError(f"{err} (default of p)") from None


def register(name: str):
    """Class decorator: make an operator available to recipes and replay under `name`.

    The operator contract is checked here (see _check_contract): a subclass of Operator defining
    sample_params, apply and defect_size, `modifies` one of MODIFIES, constructor keywords named
    with defaults (p among them, default in [0, 1]); a class that breaks it is refused.
    """

    def wrap(cls: type["Operator"]) -> type["Operator"]:
        _check_contract(name, cls)
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"operator name {name!r} is already registered by {REGISTRY[name]}")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return wrap


def get_operator(name: str) -> type["Operator"]:
    if name not in REGISTRY:
        raise KeyError(f"unknown operator {name!r}; registered: {sorted(REGISTRY)}; {PLUGIN_HINT}")
    return REGISTRY[name]


@dataclass(frozen=True)
class OperatorContext:
    """What an operator may know about the pair it samples for, besides rng and severity.

    The pipeline builds one per window and hands it to `Transform.with_context` before sampling, so
    an operator that draws material from elsewhere (a donor voice, another source's soundtrack, a
    noise bank) needs no pipeline edit. apply never sees it: params alone decide the result.

    source_id: the source's id.  split: "train" / "val" / "test" of the source.
    donor_pool: media files (video or audio) other people's material may come from: the other
      sources of the same split plus the build's --donors files of that split (each file is in one split,
      pipeline.donor_splits); never the source's own file.
    clip: the original window being perturbed (audio, lazy frames, audio context).
    source_path: the source file.
    """

    source_id: str = ""
    split: str = ""
    donor_pool: tuple[str, ...] = ()
    clip: Clip | None = None
    source_path: str = ""


class Transform:
    """Anything a recipe can hold: samples a list of leaf applications {name, params}."""

    p: float = 1.0

    def sample(self, rng: np.random.Generator, severity: int) -> list[dict[str, Any]]:
        raise NotImplementedError

    def leaves(self) -> list["Operator"]:
        raise NotImplementedError

    def with_context(self, context: OperatorContext) -> "Transform":
        """This transform configured for one source window (see OperatorContext); default: itself."""
        return self

    def audio_context_seconds(self) -> float:
        """Seconds of the source's soundtrack before / after the window that apply may read (Clip
        context); the pipeline cuts at least this much. Default 0: the window alone."""
        return max((leaf.audio_context_seconds() for leaf in self.leaves() if leaf is not self), default=0.0)

    def __call__(self, clip: Clip, rng: np.random.Generator, severity: int) -> tuple[Clip, list[dict]]:
        """Sample, then apply; returns the new clip and the record of what was applied."""
        ops = self.sample(rng, severity)
        return replay(clip, ops, operators={op.name: op for op in self.leaves()}), ops


class Operator(Transform):
    """One perturbation: subclass, declare the keywords, implement the three methods, register().

    `modifies` is one of MODIFIES: what `apply` may change ("audio" keeps the video stream
    copyable; the writer re-encodes the picture only for "video" / "both").
    Constructor keywords are sampling configuration (ranges, donor pools), named arguments with
    defaults, each stored as the attribute of the same name and range-checked in __init__; they
    never change what `apply` does with a given params dict. `p` is the probability of applying.
    """

    name: ClassVar[str] = "operator"
    modifies: ClassVar[str] = "both"

    def __new__(cls, *args: Any, **keywords: Any) -> "Operator":
        # here rather than in __init__: a subclass's __init__ would reject a typo with a bare TypeError
        check_keys(cls.__dict__.get("name", cls.__qualname__), keywords, operator_keywords(cls), "keyword")
        return super().__new__(cls)

    def __init__(self, *, p: float = 1.0) -> None:
        self.p = check_probability(self.name, p)

    def sample_params(self, rng: np.random.Generator, severity: int) -> dict[str, Any]:
        """Draw the params of one application at `severity` (1..5); JSON-serialisable."""
        raise NotImplementedError

    def apply(self, clip: Clip, params: dict[str, Any]) -> Clip:
        """The perturbed clip; pure: the same clip and params always give the same result."""
        raise NotImplementedError

    def defect_size(self, params: dict[str, Any]) -> float:
        """How big the defect that `params` make is (> 0, growing with severity), in the operator's
        own unit; recorded per pair as `defect` / `chosen_defect`."""
        raise NotImplementedError

    @property
    def config(self) -> dict[str, Any]:
        """The constructor keywords (without p) as this operator holds them."""
        return {k: getattr(self, k) for k in operator_keywords(type(self)) if k != "p"}

    def sample(self, rng: np.random.Generator, severity: int) -> list[dict[str, Any]]:
        if self.p < 1.0 and rng.random() >= self.p:
            return []
        return [{"name": self.name, "params": self.sample_params(rng, severity)}]

    def leaves(self) -> list["Operator"]:
        return [self]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, {self.config})"


class _Group(Transform):
    """A transform over child transforms (Compose, OneOf, SomeOf)."""

    def __init__(self, children: list[Transform], p: float) -> None:
        self.children = list(children)
        self.p = check_probability(type(self).__name__, p)

    def leaves(self) -> list["Operator"]:
        return [leaf for child in self.children for leaf in child.leaves()]

    def with_context(self, context: OperatorContext) -> "Transform":
        children = [child.with_context(context) for child in self.children]
        if all(a is b for a, b in zip(children, self.children)):
            return self
        bound = copy.copy(self)
        bound.children = children
        return bound


class Compose(_Group):
    """Apply every child in order (each with its own probability)."""

    def __init__(self, children: list[Transform], p: float = 1.0) -> None:
        super().__init__(children, p)

    def sample(self, rng: np.random.Generator, severity: int) -> list[dict[str, Any]]:
        if self.p < 1.0 and rng.random() >= self.p:
            return []
        return [rec for child in self.children for rec in child.sample(rng, severity)]


class OneOf(_Group):
    """Apply exactly one child, chosen with `weights` (uniform by default)."""

    def __init__(self, children: list[Transform], weights: list[float] | None = None, p: float = 1.0):
        super().__init__(children, p)
        w = np.asarray(weights if weights is not None else [1.0] * len(self.children), dtype=float)
        if len(w) != len(self.children) or (w < 0).any() or w.sum() <= 0:
            raise ConfigError("OneOf weights must be non-negative, one per child, not all zero")
        self.weights = w / w.sum()

    def sample(self, rng: np.random.Generator, severity: int) -> list[dict[str, Any]]:
        if self.p < 1.0 and rng.random() >= self.p:
            return []
        child = self.children[int(rng.choice(len(self.children), p=self.weights))]
        return child.sample(rng, severity)


class SomeOf(_Group):
    """Apply n distinct children (n drawn from [n_min, n_max]) in their listed order."""

    def __init__(self, children: list[Transform], n: int | tuple[int, int] = 1, p: float = 1.0):
        super().__init__(children, p)
        self.n_range = (n, n) if isinstance(n, int) else (int(n[0]), int(n[1]))
        if not 0 <= self.n_range[0] <= self.n_range[1] <= len(self.children):
            raise ConfigError(f"SomeOf n={n} does not fit {len(self.children)} children")

    def sample(self, rng: np.random.Generator, severity: int) -> list[dict[str, Any]]:
        if self.p < 1.0 and rng.random() >= self.p:
            return []
        n = int(rng.integers(self.n_range[0], self.n_range[1] + 1))
        picked = sorted(rng.choice(len(self.children), size=n, replace=False).tolist())
        return [rec for i in picked for rec in self.children[i].sample(rng, severity)]


def replay(clip: Clip, ops: list[dict[str, Any]],
           operators: dict[str, Operator] | None = None) -> Clip:
    """Apply recorded {name, params} in order. Params alone decide the result (pure operators)."""
    operators = operators or {}
    for rec in ops:
        op = operators.get(rec["name"]) or get_operator(rec["name"])()
        clip = op.apply(clip, rec["params"])
    return clip


def modifies_video(ops: list[dict[str, Any]]) -> bool:
    """Whether applying `ops` changes the picture (then the writer must re-encode the video)."""
    return any(get_operator(rec["name"]).modifies in ("video", "both") for rec in ops)


def check_severity(severity: int) -> int:
    if severity not in SEVERITY_LEVELS:
        raise ValueError(f"severity must be one of {SEVERITY_LEVELS}, got {severity!r}")
    return int(severity)
