"""Perturbation operators. Importing this package registers every built-in operator.

To add one: write a small class in a module here (or in a module of your own, imported with
--plugin MODULE, AVBENCH_PLUGINS or a recipe's plugins: key), decorate it with @register("my_op"), set
`modifies`, declare its keywords in __init__ and implement sample_params, apply and defect_size
(docs/extending.md).
"""
from .base import (MODIFIES, PLUGIN_HINT, REGISTRY, SEVERITY_LEVELS, Compose, ConfigError, OneOf, Operator,
                   OperatorContext, PluginError, SomeOf, Transform, check_keys, check_list, check_number,
                   check_probability, check_severity, get_operator, import_plugins, modifies_video,
                   operator_keywords, register, replay)
from . import timing, voice, frames, audio_quality, av_consistency, speech_realism  # noqa: F401  (registration side effect)

__all__ = ["MODIFIES", "PLUGIN_HINT", "REGISTRY", "SEVERITY_LEVELS", "Compose", "ConfigError", "OneOf", "Operator",
           "OperatorContext", "PluginError", "SomeOf", "Transform", "check_keys", "check_list", "check_number",
           "check_probability", "check_severity", "get_operator", "import_plugins", "modifies_video",
           "operator_keywords", "register", "replay"]
