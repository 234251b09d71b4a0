"""Training with Lightning: :class:`MixClassifier`, the services a mixer may ask for, the default optimisation.

The public names are imported on first use (PEP 562), so that :mod:`openmix.lightning.services` (plain torch) can be
used without importing Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "AdAutoMixClassifier": "openmix.lightning.adautomix",
    "AutoMixClassifier": "openmix.lightning.automix",
    "MixClassifier": "openmix.lightning.module",
    "apply_cifar_stem": "openmix.lightning.module",
    "build_backbone": "openmix.lightning.module",
    "SGD": "openmix.lightning.optim",
    "WarmupCosineLR": "openmix.lightning.optim",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'openmix.lightning' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
