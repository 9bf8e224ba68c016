"""Perturbation operators. Importing this package registers every built-in operator.

To add one: write a small class in a module here (or anywhere you import before building),
decorate it with @register("my_op"), set `modifies`, implement sample_params and apply.
"""
from .base import (REGISTRY, SEVERITY_LEVELS, Compose, OneOf, Operator, OperatorContext, SomeOf,
                   Transform,
                   check_severity, get_operator, modifies_video, register, replay)
from . import timing, voice, frames  # noqa: F401  (registration side effect)

__all__ = ["REGISTRY", "SEVERITY_LEVELS", "Compose", "OneOf", "Operator", "OperatorContext", "SomeOf",
           "Transform",
           "check_severity", "get_operator", "modifies_video", "register", "replay"]
