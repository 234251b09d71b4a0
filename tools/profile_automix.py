"""Where an AutoMix training step spends its time, in units of a mixup step measured in the same process.

Calls ``AutoMixClassifier``'s parts directly (no Trainer) on the CNN of ``tools/bench_train.py`` (timm resnet18,
CIFAR stem, channels 32/64/128/256), batch 64 x 3 x 32 x 32, one thread: the whole step with its backward, the
momentum features of the batch, the Mix Block's loss pass through the momentum network (forward and backward to the
mask), the online network's two passes (clean and mixed batch), the Mix Block's draw, and one forward and backward
of the network alone. Each is the median of 5 calls after one warm-up. The figures are in docs/benchmarks/train.md.

Reproduce (from the repository root)::

    PYTHONPATH=. .venv/bin/python tools/profile_automix.py
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import torch

from openmix.lightning import AutoMixClassifier, MixClassifier

CNN = {"backbone": "resnet18", "cifar_stem": True, "backbone_kwargs": {"channels": (32, 64, 128, 256)}}


def median_seconds(fn: Callable[[], object], calls: int = 5) -> float:
    fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[calls // 2]


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # self.log outside a Trainer
    torch.manual_seed(0)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    automix = AutoMixClassifier(num_classes=10, in_chans=3, **CNN)
    mixup = MixClassifier(mixer="mixup", num_classes=10, in_chans=3, **CNN)
    features = automix.mixing_features(automix.batch_features(x))

    def block() -> None:
        block_loss, mask_loss, _ = automix.block_losses(x, y, features)
        (block_loss + mask_loss).backward()

    def draw() -> None:
        with torch.no_grad():
            automix.draw(x, y, features, "classifier")

    def features_only() -> None:
        with torch.no_grad():
            automix.mixing_features(automix.batch_features(x))

    parts = {
        "automix step": lambda: automix.training_step((x, y), 0).backward(),
        "momentum features": features_only,
        "Mix Block loss pass (momentum network)": block,
        "online passes (clean + mixed)": lambda: automix.online_losses(x, y, features)[0].backward(),
        "Mix Block draw": draw,
        "network forward + backward": lambda: mixup.network(x).sum().backward(),
    }
    reference = median_seconds(lambda: mixup.training_step((x, y), 0).backward())
    print(f"mixup step: {reference * 1000:.1f} ms")
    for name, fn in parts.items():
        seconds = median_seconds(fn)
        print(f"{name:40s} {seconds * 1000:8.1f} ms  {seconds / reference:5.2f}x a mixup step")


if __name__ == "__main__":
    main()
