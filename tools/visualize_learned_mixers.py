"""Draw what a learned mixer does early and late in a short Fashion-MNIST run (AutoMix, SAMix, AdaMixUp, SUMix, ...).

Each method is trained from scratch with its Fashion-MNIST config (``configs/mixers/fashion_mnist/<name>.yaml`` on
the tiny ResNet of ``configs/model/resnet_tiny_fmnist.yaml``) for ``--steps`` steps of batch 64 on the first
``--train-images`` training images, through ``Trainer.fit`` as a user runs it. After ``--early`` steps and at the
end, one training step is run on eight fixed test images (the same draws both times: the mixing generator is
reseeded from the same batch index, the first that mixes visibly) and the :class:`~openmix.MixOutput` its
objective receives is drawn: the mixed images, titled with the label weights the loss uses, and the mask of each
image's first source.

Reproduce the pictures of docs/mixers.md (from the repository root; a few minutes on 2 cores):

    PYTHONPATH=. .venv/bin/python tools/visualize_learned_mixers.py --mixers sumix adamixup
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only

import lightning as L  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import openmix  # noqa: E402
from openmix.data.readers import FASHION_MNIST_CLASSES, load_fashion_mnist  # noqa: E402
from openmix.lightning.cli import run_lightning  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST's normalisation (openmix/data/modules.py FashionMNISTData)


def normalised(images: np.ndarray) -> Tensor:
    return (torch.from_numpy(images.copy()).float().div_(255).unsqueeze(1) - MEAN) / STD


def captured_mix(module: L.LightningModule, x: Tensor, y: Tensor, batch_idx: int = 0) -> openmix.MixOutput:
    """The MixOutput of images the objective receives in one training step on (x, y): the last one with a spatial
    mask (the classifier's draw for modules that mix more than once, as AutoMix and AdAutoMix), without an
    optimiser step; ``batch_idx`` seeds the step's draws."""
    seen: list[openmix.MixOutput] = []
    forward = module.objective.forward

    def spy(logits: Tensor, mix: openmix.MixOutput, *rest: Any) -> Tensor:
        if mix.x.dim() == 4:  # a batch of images (AutoMix's clean loss passes the logits as an unmixed "batch")
            seen.append(mix)
        return forward(logits, mix, *rest)

    module.objective.forward = spy
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # self.log outside the loop's logging points
            module.training_step((x, y), batch_idx)
    finally:
        module.objective.forward = forward
    learned = [mix for mix in seen if mix.mask is not None and float(mix.mask.detach().float().std()) > 1e-6]
    return (learned or seen)[-1]  # the last mix with a spatial mask (not AdAutoMix's plain-mixup term), else the last


def mixes_visibly(out: openmix.MixOutput) -> bool:
    """Whether a draw mixes enough to be seen: the mean share of the sources other than the first is over 10 %."""
    return float((1.0 - out.lam).clamp(0, 1).mean()) > 0.1


class Snapshots(L.Callback):
    """Keeps the captured MixOutput on the fixed images after the given global steps. The draws are seeded by a batch
    index, the first of 0..19 whose draw mixes visibly at the first snapshot (a Beta(0.2, 0.2) draw is often near 0
    or 1), and the same index again later, so both snapshots use the same draws."""

    def __init__(self, x: Tensor, y: Tensor, steps: set[int]):
        self.x, self.y, self.steps = x, y, steps
        self.taken: dict[int, openmix.MixOutput] = {}
        self.batch_idx: int | None = None

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step not in self.steps:
            return
        if self.batch_idx is None:
            for index in range(20):
                out = captured_mix(module, self.x, self.y, index)
                if mixes_visibly(out):
                    break
            self.batch_idx = index
        self.taken[trainer.global_step] = captured_mix(module, self.x, self.y, self.batch_idx)


def build_module(name: str) -> L.LightningModule:
    """The module of ``configs/mixers/fashion_mnist/<name>.yaml`` on the tiny Fashion-MNIST ResNet, built by the
    command line's own parser (the configs as a user runs them)."""
    configs = ["data/fashion_mnist.yaml", "model/resnet_tiny_fmnist.yaml", f"mixers/fashion_mnist/{name}.yaml"]
    args = [f"--config={ROOT / 'configs' / config}" for config in configs] + ["--trainer.logger=false"]
    return run_lightning(args, run=False).model


def draw(outs: dict[int, openmix.MixOutput], labels: Tensor, name: str) -> plt.Figure:
    rows = 2 * len(outs)
    num = labels.shape[0]
    fig, axes = plt.subplots(rows, num, figsize=(1.15 * num, 1.6 * rows), squeeze=False)
    for row, (step, out) in enumerate(sorted(outs.items())):
        weights = out.label_weight_matrix()
        pixels = (out.x[:, 0].detach().float() * STD + MEAN).clamp(0, 1).numpy()
        sources = out.indices if out.indices is not None else torch.stack([torch.arange(num), out.index], dim=1)
        for i in range(num):
            parts = [
                f"{FASHION_MNIST_CLASSES[int(labels[int(s)])][:5]} {float(w):.2f}"
                for s, w in zip(sources[i], weights[i])
                if float(w) > 0.005
            ]
            axis = axes[2 * row, i]
            axis.imshow(pixels[i], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            axis.set_title("\n".join(parts) or "-", fontsize=6)
            mask = out.mask[i if out.mask.shape[0] > 1 else 0, 0] if out.mask is not None else None
            below = axes[2 * row + 1, i]
            if mask is None:
                below.imshow(np.full((28, 28), float(out.lam[i])), cmap="gray", vmin=0, vmax=1)
            else:
                below.imshow(mask.detach().float().numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            below.set_title(f"step {step}: mask, \u03bb {float(out.lam[i]):.2f}", fontsize=6)
            for a in (axis, below):
                a.set_xticks([])
                a.set_yticks([])
    fig.suptitle(f"{name}: early and late in a short Fashion-MNIST run", fontsize=9)
    fig.tight_layout(pad=0.3)
    return fig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mixers", nargs="+", required=True)
    parser.add_argument("--data-root", default=DEFAULT_DATA)
    parser.add_argument("--out-dir", default="docs/img/mixers", type=Path)
    parser.add_argument("--steps", default=300, type=int, help="training steps (batch 64)")
    parser.add_argument("--early", default=5, type=int, help="the early snapshot's step")
    parser.add_argument("--train-images", default=19200, type=int)
    parser.add_argument("--num", default=8, type=int)
    parser.add_argument("--seed", default=0, type=int)
    args = parser.parse_args(argv)
    try:
        train_images, train_labels = load_fashion_mnist(args.data_root, train=True)
        test_images, test_labels = load_fashion_mnist(args.data_root, train=False)
    except FileNotFoundError as error:
        sys.exit(f"error: {error}")
    x_train = normalised(train_images[: args.train_images])
    y_train = torch.from_numpy(train_labels[: args.train_images].astype(np.int64))
    x, y = normalised(test_images[: args.num]), torch.from_numpy(test_labels[: args.num].astype(np.int64))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in args.mixers:
        L.seed_everything(args.seed, verbose=False)
        module = build_module(name)
        snapshots = Snapshots(x, y, {args.early, args.steps})
        loader = DataLoader(TensorDataset(x_train, y_train), batch_size=64, shuffle=True, drop_last=True)
        trainer = L.Trainer(
            max_steps=args.steps,
            max_epochs=-1,
            callbacks=[snapshots],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(module, loader)
        fig = draw(snapshots.taken, y, name)
        fig.savefig(args.out_dir / f"{name}_early_late.png", dpi=110, bbox_inches="tight", pad_inches=0.05)
        plt.close(fig)
        print(f"wrote {args.out_dir / (name + '_early_late.png')}")


if __name__ == "__main__":
    main()
