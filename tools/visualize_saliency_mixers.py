"""Draw the masks of the saliency-driven mixers (PuzzleMix, Co-Mixup, ...) on Fashion-MNIST next to the saliency
that made them.

The saliency needs a trained network: the tiny Fashion-MNIST ResNet of ``configs/model/resnet_tiny_fmnist.yaml`` is
trained here for a short while on the CPU (``--steps`` SGD steps of batch 64 on the training split; about 85 %
test accuracy after 300 steps), then the mixers run with the trainer's own services
(:func:`openmix.lightning.services.mixer_inputs`) on the first ``--num`` test images. The images are zero-padded
from 28 to 32 pixels (black border, Fashion-MNIST's background) so that block grids of 2, 4, 8 and 16 divide them,
as on CIFAR; each mixer runs with its class defaults except ``mean``/``std`` (where it takes them), set to the
normalisation used here.

Rows: the images, their saliency (the channel norm of the input gradient of the clean loss, normalised per image),
then for each of ``--draws`` calls (different generator seeds: different lambdas, grids and partners) the mixed
images and their masks (the share of the image's first source; for k-source mixers a colour per source).

Reproduce the pictures of docs/mixers.md (from the repository root, about a minute on 2 cores):

    PYTHONPATH=. .venv/bin/python tools/visualize_saliency_mixers.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import openmix  # noqa: E402
from openmix.data.readers import FASHION_MNIST_CLASSES, load_fashion_mnist  # noqa: E402
from openmix.lightning.module import build_backbone  # noqa: E402
from openmix.lightning.services import mixer_inputs  # noqa: E402
from openmix.mixers._registry import accepts_argument  # noqa: E402

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST's normalisation (openmix/data/modules.py FashionMNISTData)


def padded(images: np.ndarray) -> Tensor:
    """(n, 28, 28) uint8 -> (n, 1, 32, 32) float32 normalised, zero (black) border of 2 pixels."""
    x = torch.from_numpy(images.copy()).float().div_(255).unsqueeze(1)
    return (F.pad(x, (2, 2, 2, 2)) - MEAN) / STD


def train_network(root: str, steps: int, seed: int) -> nn.Module:
    """The tiny Fashion-MNIST ResNet trained for ``steps`` SGD steps (batch 64, lr 0.05, momentum 0.9)."""
    torch.manual_seed(seed)
    images, labels = load_fashion_mnist(root, train=True)
    network = build_backbone("resnet10t", 10, in_chans=1, cifar_stem=True, channels=[16, 32, 64, 128], stem_width=16)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.05, momentum=0.9)
    order = torch.randperm(len(labels))
    network.train()
    for step in range(steps):
        batch = order[(step * 64) % len(labels) :][:64].numpy()
        loss = F.cross_entropy(network(padded(images[batch])), torch.from_numpy(labels[batch].astype(np.int64)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return network


def saliency_mixers() -> list[str]:
    """Every registered mixer that needs the input saliency (read from its class, not its name)."""
    return [name for name in openmix.list_mixers() if "saliency" in openmix.get_mixer_entry(name).requires]


def show(axis, image: np.ndarray, title: str = "", cmap: str = "gray", vmin=None, vmax=None) -> None:
    axis.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    axis.set_title(title, fontsize=7)
    axis.set_xticks([])
    axis.set_yticks([])


def source_map(out: openmix.MixOutput) -> np.ndarray | None:
    """(B, H, W, 3) colours of each pixel's largest source for k-source outputs, else None."""
    masks = getattr(out, "masks", None)
    if masks is None or out.indices is None:
        return None
    palette = plt.get_cmap("tab10")
    sources = out.indices.gather(1, masks.argmax(dim=1).flatten(1)).view(masks.shape[0], *masks.shape[-2:])
    return palette(sources.numpy() % 10)[..., :3]


def render(network: nn.Module, x: Tensor, y: Tensor, names: list[str], seed: int, draws: int = 3) -> plt.Figure:
    network.eval()  # batch norm on running statistics: the saliency of each image does not depend on the others
    probe = openmix.create_mixer(names[0])
    saliency = mixer_inputs(probe, network, x, y)["saliency"]
    num = x.shape[0]
    rows = 2 + 2 * len(names) * draws
    fig, axes = plt.subplots(rows, num, figsize=(1.1 * num, 1.25 * rows), squeeze=False)
    pixels = (x[:, 0] * STD + MEAN).clamp(0, 1).numpy()
    for i in range(num):
        show(axes[0, i], pixels[i], f"{i}: {FASHION_MNIST_CLASSES[int(y[i])]}")
        heat = saliency[i] / saliency[i].max().clamp_min(1e-12)
        show(axes[1, i], heat.numpy(), "saliency", cmap="magma", vmin=0, vmax=1)
    runs = [(name, draw) for name in names for draw in range(draws)]
    for row, (name, draw) in enumerate(runs):
        scale = {"mean": [MEAN], "std": [STD]} if accepts_argument(openmix.get_mixer_entry(name).cls, "mean") else {}
        mixer = openmix.create_mixer(name, **scale)
        needs = mixer_inputs(mixer, network, x, y)
        out = mixer(x, y, generator=torch.Generator().manual_seed(seed + draw), **needs)
        mixed = (out.x[:, 0].detach() * STD + MEAN).clamp(0, 1).numpy()
        colours = source_map(out)
        for i in range(num):
            if out.indices is not None:
                shares = ", ".join(
                    f"{int(s)}:{float(w):.2f}" for s, w in zip(out.indices[i], out.weights[i]) if float(w) > 0
                )
                title = shares
            else:
                title = f"{i}+{int(out.index[i])} \u03bb {float(out.lam[i]):.2f}"
            show(axes[2 + 2 * row, i], mixed[i], title)
            if colours is not None:
                show(axes[3 + 2 * row, i], colours[i], "sources")
            else:
                show(axes[3 + 2 * row, i], out.mask[i, 0].numpy(), f"{name} mask of {i}", vmin=0, vmax=1)
    fig.tight_layout(pad=0.3)
    return fig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=DEFAULT_ROOT)
    parser.add_argument("--out-dir", default="docs/img/mixers", type=Path)
    parser.add_argument("--num", default=8, type=int, help="test images per row")
    parser.add_argument("--steps", default=300, type=int, help="training steps of the network")
    parser.add_argument("--seed", default=0, type=int)
    parser.add_argument("--draws", default=3, type=int, help="calls per mixer (generator seeds seed, seed + 1, ...)")
    parser.add_argument("--mixers", nargs="*", default=None, help="names (default: every saliency mixer)")
    args = parser.parse_args(argv)
    try:
        network = train_network(args.data_root, args.steps, args.seed)
        images, labels = load_fashion_mnist(args.data_root, train=False)
    except FileNotFoundError as error:
        sys.exit(f"error: {error}")
    x, y = padded(images[: args.num]), torch.from_numpy(labels[: args.num].astype(np.int64))
    with torch.no_grad():
        test = padded(images[:2000])
        accuracy = (network.eval()(test).argmax(1).numpy() == labels[:2000]).mean()
    print(f"network: {accuracy:.1%} on the first 2000 test images after {args.steps} steps")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in args.mixers or saliency_mixers():
        fig = render(network, x, y, [name], args.seed, args.draws)
        fig.savefig(args.out_dir / f"{name}.png", dpi=110, bbox_inches="tight", pad_inches=0.05)
        plt.close(fig)
        print(f"wrote {args.out_dir / (name + '.png')}")


if __name__ == "__main__":
    main()
