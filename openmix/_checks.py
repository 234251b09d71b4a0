"""Type checks of scalar arguments shared by the mixers and the losses (which cannot import each other's modules
at import time: ``openmix.mixers`` imports ``openmix.losses``)."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np


def is_real(value: Any) -> bool:
    """A real number: a Python int or float or a NumPy integer or floating scalar (``numbers.Real``), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def is_int(value: Any) -> bool:
    """An integer: a Python int or a NumPy integer scalar (``numbers.Integral``), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_bool(value: Any, name: str) -> bool:
    """``value`` as a bool (Python or NumPy), else a ``TypeError`` naming ``name``."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)
