"""Count, on the CPU, the operations of a training step that would make the host wait for a CUDA device.

On CUDA a few operations read device memory from the host and so block the CPU until the GPU has caught up: scalar
reads (``Tensor.item``, ``int(t)``, ``float(t)``, ``bool(t)``, ``.tolist()``: the aten op
``_local_scalar_dense``), ``nonzero`` (and what uses it: boolean indexing, ``masked_select``), ``equal``,
``is_nonzero`` and ``unique``. A tensor made from Python data (``torch.tensor([...])``, the aten op ``lift_fresh``)
is a host-to-device copy once it is moved to the GPU. The same ops run on the CPU, where they cost nothing special,
so counting them in a CPU training step predicts the synchronisations of the same step on a GPU, without a GPU.
A boolean index (``x[mask]``, ``x[mask] = v``) is counted as a ``nonzero``. Not seen on the CPU: a tensor drawn on
the CPU (``torch.randperm`` with a CPU generator) and then moved with ``.to(device)``, which is a copy only on a GPU;
the count is a lower bound there.

``count_sync_ops(fn)`` runs ``fn`` under a ``TorchDispatchMode`` that records every aten op of those kinds.
``main`` counts them in one ``MixClassifier.training_step`` per registered image mixer (batch and elem mode) on a
tiny CNN, next to the step without a mixer, and prints a table: the baseline the "no host synchronisation in a
training step" work starts from (a bare training step counts 0).

Reproduce (from the repository root)::

    PYTHONPATH=. .venv/bin/python tools/count_syncs.py
"""

from __future__ import annotations

import argparse
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from openmix.mixers.functional import making_host_tensor

SYNC_OPS = {
    "_local_scalar_dense": "scalar read (item, int, float, bool, tolist)",
    "nonzero": "nonzero (boolean indexing, masked_select)",
    "equal": "equal",
    "is_nonzero": "is_nonzero",
    "masked_select": "masked_select",
    "_unique2": "unique",
    "unique_dim": "unique",
    "unique_consecutive": "unique",
    "lift_fresh": "tensor from Python data (a host-to-device copy on CUDA)",
}


BOOLEAN_INDEXING = ("index", "index_put", "index_put_", "_index_put_impl_")


def _has_boolean_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    return any(isinstance(index, torch.Tensor) and index.dtype == torch.bool for index in indices)


class SyncCounter(TorchDispatchMode):
    """Counts the aten ops of :data:`SYNC_OPS` run while it is active (``counts``: op name -> number)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = func.overloadpacket.__name__
        if name == "lift_fresh" and making_host_tensor():
            pass  # a host tensor of draws (functional.host_tensor): it reaches a device through to_device
        elif name in SYNC_OPS:
            self.counts[name] += 1
        elif name in BOOLEAN_INDEXING and _has_boolean_index(args):
            self.counts["nonzero"] += 1  # a boolean index is a nonzero on the device (inside the kernel on the CPU)
        return func(*args, **(kwargs or {}))


def count_sync_ops(fn: Callable[[], Any]) -> Counter[str]:
    """The sync-like aten ops ``fn()`` runs, by name (an empty counter when there are none)."""
    with SyncCounter() as counter:
        fn()
    return counter.counts


def tiny_model(mixer: str | None, mode: str | None, objective: str = "ce", **kwargs: Any) -> Any:
    """The module that trains ``mixer`` (``MixClassifier``, or the class its ``trained_by`` names: AutoMix's, ...) on a
    tiny CNN (resnet10t, CIFAR stem, 8 channels) for 10 classes of 3 x 32 x 32."""
    import openmix
    from openmix.lightning import MixClassifier
    from openmix.lightning.module import import_class

    trained_by = openmix.get_mixer_entry(mixer).cls.trained_by if mixer is not None else None
    module_class = import_class(trained_by) if trained_by else MixClassifier
    mixer_kwargs = {} if mode is None else {"mixer_kwargs": {"mode": mode}}
    return module_class(
        backbone="resnet10t",
        num_classes=10,
        in_chans=3,
        cifar_stem=True,
        backbone_kwargs={"channels": [8, 8, 8, 8], "stem_width": 8},
        mixer=mixer,
        objective=objective,
        **mixer_kwargs,
        **kwargs,
    )


def step_counts(mixer: str | None, mode: str | None, seed: int = 0, objective: str = "ce") -> Counter[str]:
    """The sync-like ops of one training step (forward, loss, logging) of a tiny CNN with ``mixer``."""
    torch.manual_seed(seed)
    model = tiny_model(mixer, mode, objective)
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    y = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(seed + 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        model.training_step((x, y), 0)  # warm-up: lazy initialisation is not part of a step
        return count_sync_ops(lambda: model.training_step((x, y), 1).backward())


def host_synced_mixers() -> list[str]:
    """The mixers that synchronise by design: their per-call solver runs on the CPU (``Mixer.solves_on_host``)."""
    import openmix

    return [name for name in openmix.list_mixers() if openmix.get_mixer_entry(name).cls.solves_on_host]


def step_cases(names: list[str] | None = None) -> list[tuple[str | None, str | None]]:
    """(mixer, mode) pairs: the step without a mixer, then each of ``names`` (default: every mixer trained on CNN
    images, by ``MixClassifier`` or by its own module, that needs no ViT attention) in batch and elem mode where it
    has modes (a learned mixer in its default mode)."""
    import openmix
    from openmix.mixers._registry import accepts_argument

    names = names or [
        name for name in openmix.list_mixers() if "attention" not in openmix.get_mixer_entry(name).requires
    ]
    cases: list[tuple[str | None, str | None]] = [(None, None)]
    for name in names:
        entry = openmix.get_mixer_entry(name)
        modes = ("batch", "elem") if accepts_argument(entry.cls, "mode") and not entry.cls.trained_by else (None,)
        cases += [(name, mode) for mode in modes]
    return cases


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mixers", nargs="*", help="names (default: every mixer MixClassifier trains on images)")
    parser.add_argument("--objective", default="ce", help="the objective's short name (default ce)")
    args = parser.parse_args(argv)
    print("| mixer | mode | sync-like ops per training step | by op |")
    print("|---|---|---:|---|")
    for name, mode in step_cases(args.mixers):
        counts = step_counts(name, mode, objective=args.objective)
        detail = ", ".join(f"{op} {n}" for op, n in sorted(counts.items())) or "-"
        print(f"| {name or 'none (plain step)'} | {mode or '-'} | {sum(counts.values())} | {detail} |")


if __name__ == "__main__":
    main()
