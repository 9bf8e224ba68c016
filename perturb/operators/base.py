"""Operator base class, registry and composition (Compose / OneOf / SomeOf).

An operator is a small class with two pure methods:
  sample_params(rng, severity) -> dict   draws the parameters for a severity level (1 = mildest)
  apply(clip, params) -> Clip            deterministic given params
Parameters are sampled first and then recorded, so any perturbation can be replayed from its JSON
with `replay(clip, [{"name": ..., "params": ...}, ...])`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..clip import Clip

SEVERITY_LEVELS = (1, 2, 3, 4, 5)

REGISTRY: dict[str, type["Operator"]] = {}


def register(name: str):
    """Class decorator: make an operator available to recipes and replay under `name`."""

    def wrap(cls: type["Operator"]) -> type["Operator"]:
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"operator name {name!r} is already registered by {REGISTRY[name]}")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return wrap


def get_operator(name: str) -> type["Operator"]:
    if name not in REGISTRY:
        raise KeyError(f"unknown operator {name!r}; registered: {sorted(REGISTRY)}")
    return REGISTRY[name]


@dataclass(frozen=True)
class OperatorContext:
    """What an operator may know about the pair it samples for, besides rng and severity.

    The pipeline builds one per window and hands it to `Transform.with_context` before sampling, so
    an operator that draws material from elsewhere (a donor voice, another source's soundtrack, a
    noise bank) needs no pipeline edit. apply never sees it: params alone decide the result.

    source_id: the source's id.  split: "train" / "val" / "test" of the source.
    donor_pool: media files (video or audio) other people's material may come from: the other
      sources of the same split plus the build's --donors files; never the source's own file.
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

    def __call__(self, clip: Clip, rng: np.random.Generator, severity: int) -> tuple[Clip, list[dict]]:
        """Sample, then apply; returns the new clip and the record of what was applied."""
        ops = self.sample(rng, severity)
        return replay(clip, ops, operators={op.name: op for op in self.leaves()}), ops


class Operator(Transform):
    """One perturbation. Subclasses set `modifies` and implement sample_params / apply.

    `modifies` is "audio", "video" or "both": audio-only operators keep the video stream copyable.
    Constructor keywords are sampling configuration (ranges, donor pools); they never change what
    `apply` does with a given params dict.
    """

    name: ClassVar[str] = "operator"
    modifies: ClassVar[str] = "both"

    def __init__(self, p: float = 1.0, **config: Any) -> None:
        self.p = p
        self.config = config

    def sample_params(self, rng: np.random.Generator, severity: int) -> dict[str, Any]:
        raise NotImplementedError

    def apply(self, clip: Clip, params: dict[str, Any]) -> Clip:
        raise NotImplementedError

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
        self.children, self.p = list(children), p

    def sample(self, rng: np.random.Generator, severity: int) -> list[dict[str, Any]]:
        if self.p < 1.0 and rng.random() >= self.p:
            return []
        return [rec for child in self.children for rec in child.sample(rng, severity)]


class OneOf(_Group):
    """Apply exactly one child, chosen with `weights` (uniform by default)."""

    def __init__(self, children: list[Transform], weights: list[float] | None = None, p: float = 1.0):
        self.children, self.p = list(children), p
        w = np.asarray(weights if weights is not None else [1.0] * len(self.children), dtype=float)
        if len(w) != len(self.children) or (w < 0).any() or w.sum() <= 0:
            raise ValueError("OneOf weights must be non-negative, one per child, not all zero")
        self.weights = w / w.sum()

    def sample(self, rng: np.random.Generator, severity: int) -> list[dict[str, Any]]:
        if self.p < 1.0 and rng.random() >= self.p:
            return []
        child = self.children[int(rng.choice(len(self.children), p=self.weights))]
        return child.sample(rng, severity)


class SomeOf(_Group):
    """Apply n distinct children (n drawn from [n_min, n_max]) in their listed order."""

    def __init__(self, children: list[Transform], n: int | tuple[int, int] = 1, p: float = 1.0):
        self.children, self.p = list(children), p
        self.n_range = (n, n) if isinstance(n, int) else (int(n[0]), int(n[1]))
        if not 0 <= self.n_range[0] <= self.n_range[1] <= len(self.children):
            raise ValueError(f"SomeOf n={n} does not fit {len(self.children)} children")

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
