"""Type checks of scalar arguments shared by the mixers and the losses (which cannot import each other's modules
at import time: ``openmix.mixers`` imports ``openmix.losses``)."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch


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


def check_class_ids(y: Any, num_classes: int | None = None, name: str = "y") -> None:
    """Check that the int64 class ids ``y`` lie in ``[0, num_classes)`` (``[0, inf)`` when ``num_classes`` is
    ``None``) without making the host wait for a device.

    On the host (a CPU tensor) the ids are read through NumPy and a bad one raises a ``ValueError`` naming
    ``name``. On a device, reading them would stall the host until the device catches up (a host synchronisation
    every training step), so the check is queued on the device instead (``torch._assert_async``): a bad id makes the
    device's next synchronisation fail with a ``RuntimeError`` carrying the same message. The data modules check the
    labels where they are read, on the host, so this only catches ids made on the device.
    """
    if y.numel() == 0:
        return
    if num_classes is None:
        message = f"{name} holds negative class ids"
    else:
        message = f"{name} holds class ids outside [0, {num_classes})"
    if y.device.type == "cpu":
        values = y.detach().numpy()
        low, high = values.min(), values.max()
        if low < 0 or (num_classes is not None and high >= num_classes):
            raise ValueError(f"{message}: min {int(low)}, max {int(high)}")
        return
    inside = y >= 0 if num_classes is None else (y >= 0) & (y < num_classes)
    torch._assert_async(inside.all(), message)
