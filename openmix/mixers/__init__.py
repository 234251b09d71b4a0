"""Mixers: importing this package registers every method.

Each method is one module of this package that registers its class with :func:`register_mixer`; the modules are
found and imported here (every module whose name does not start with ``_`` and is not ``functional``), so adding
a method is adding one file, and ``list_mixers()`` is complete as soon as ``openmix`` is imported.
"""

import importlib
import pkgutil

from openmix.mixers._base import HOOKS, NEEDS, Mixer, MixOutput, PairMixer
from openmix.mixers._registry import MixerEntry, create_mixer, get_mixer_entry, list_mixers, register_mixer

_HELPER_MODULES = {"functional"}  # modules of this package that hold no method


def _import_methods() -> None:
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not module.name.startswith("_") and module.name not in _HELPER_MODULES:
            importlib.import_module(f"{__name__}.{module.name}")


_import_methods()

# every registered class by its own name, so configs can say `class_path: openmix.mixers.CutMix`
_METHOD_CLASSES = {get_mixer_entry(name).cls.__name__: get_mixer_entry(name).cls for name in list_mixers()}
globals().update(_METHOD_CLASSES)

__all__ = [
    "HOOKS",
    "NEEDS",
    "Mixer",
    "MixOutput",
    "PairMixer",
    "MixerEntry",
    "create_mixer",
    "get_mixer_entry",
    "list_mixers",
    "register_mixer",
]
__all__ += sorted(_METHOD_CLASSES)
