"""Plugin modules: code of the user's own (operators, encoders) imported by name, from --plugin,
AVBENCH_PLUGINS or a recipe's / config's `plugins:` list. Shared by perturb and train (train may
import this module, the media layer and the shard contract of perturb, nothing else)."""
from __future__ import annotations

import importlib
import os
import traceback
from typing import Iterable


class PluginError(ImportError):
    """A plugin module that cannot be imported. The message is one line; `details` is the traceback
    of what the module raised while importing ('' when the module itself was not found)."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


def import_plugins(modules: Iterable[str] | str | None = None, environ: bool = True) -> list[str]:
    """Import modules that register operators or encoders of their own: `modules` and (environ) those of
    $AVBENCH_PLUGINS, comma-separated; returns their names in order, each once.

    PluginError (an ImportError) when one cannot be imported: one line when the module is not found,
    with the traceback as `details` when it raised.
    """
    names = [modules] if isinstance(modules, str) else list(modules or [])
    if environ:
        names += os.environ.get("AVBENCH_PLUGINS", "").split(",")
    done = []
    for name in dict.fromkeys(n.strip() for n in names if n.strip()):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is None or not (name == err.name or name.startswith(f"{err.name}.")):
                raise PluginError(f"cannot import plugin module {name!r}: {type(err).__name__}: {err}",
                                  traceback.format_exc()) from err
            raise PluginError(f"cannot import plugin module {name!r}: {err} (is its folder on "
                              "PYTHONPATH?)") from None
        except Exception as err:  # raised by the module's own code: its traceback is what to fix
            raise PluginError(f"cannot import plugin module {name!r}: {type(err).__name__}: {err}",
                              traceback.format_exc()) from err
        done.append(name)
    return done
