"""openmix: the mixup / CutMix family of data augmentations as a library, a Lightning trainer and a benchmark.

The public names are imported on first use (PEP 562), so that ``import openmix.cli`` and the command's verbs that
need no tensors (``--help``, ``report``) start without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "Mixer": "openmix.mixers",
    "PairMixer": "openmix.mixers",
    "MixOutput": "openmix.mixers",
    "create_mixer": "openmix.mixers",
    "get_mixer_entry": "openmix.mixers",
    "list_mixers": "openmix.mixers",
    "register_mixer": "openmix.mixers",
    "losses": "openmix.losses",
    "targets": "openmix.targets",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'openmix' has no attribute {name!r}")
    module = importlib.import_module(_PUBLIC[name])
    value = module if name in ("losses", "targets") else getattr(module, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
