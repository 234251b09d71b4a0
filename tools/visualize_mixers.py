"""Draw what every registered mixer does to a few Fashion-MNIST images.

One row per mixer, one column per mixed sample; each panel is titled with the lambda the mixer reports (the share
of the sample's own image) and the two classes (own / partner). A red line marks the edge of the region taken from
the partner, which matters on Fashion-MNIST's black backgrounds. Every mixer gets its own ``torch.Generator``
seeded with ``--seed``, so a row is the same in its own PNG and in the overview.

Attentive CutMix needs a feature extractor; here it is a fixed module whose feature map is the image itself,
average-pooled to the attention grid, so the cells pasted from the partner are its brightest ones.

Reproduce the pictures of docs/mixers.md (from the repository root):

    PYTHONPATH=. .venv/bin/python tools/visualize_mixers.py --size 56
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import Tensor

import openmix
from openmix.data.readers import FASHION_MNIST_CLASSES, load_fashion_mnist
from openmix.viz import render_grid

matplotlib.use("Agg")  # files only, no display needed

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"


def load_images(root: str | Path, n: int, split: str = "t10k") -> tuple[Tensor, Tensor]:
    """The first ``n`` images of a split as ((n, 1, 28, 28) float32 in [0, 1], (n,) int64 labels)."""
    if split not in ("train", "t10k"):
        raise ValueError(f"split must be 'train' or 't10k', got {split!r}")
    images, labels = load_fashion_mnist(root, train=split == "train")
    return torch.from_numpy(images[:n].copy()).float().div_(255).unsqueeze(1), torch.from_numpy(labels[:n].copy())


def upsample(images: Tensor, size: int, interpolation: str = "nearest") -> Tensor:
    """(n, C, size, size) images resized with torch (nearest keeps the pixels sharp)."""
    if size == images.shape[-1] and size == images.shape[-2]:
        return images
    align = False if interpolation == "bilinear" else None
    return F.interpolate(images, size=(size, size), mode=interpolation, align_corners=align).clamp_(0, 1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=DEFAULT_ROOT, help="folder with the Fashion-MNIST idx .gz files")
    parser.add_argument("--split", default="t10k", choices=("t10k", "train"))
    parser.add_argument("--out-dir", default="docs/img/mixers", type=Path)
    parser.add_argument("--mode", default="elem", choices=("batch", "elem"), help="elem: one lam per sample")
    parser.add_argument("--num", default=8, type=int, help="images per row")
    parser.add_argument("--size", default=28, type=int, help="side the images are upsampled to before mixing")
    parser.add_argument("--interpolation", default="nearest", choices=("nearest", "bilinear"))
    parser.add_argument("--seed", default=0, type=int)
    parser.add_argument("--no-outline", action="store_true", help="do not outline the partner's region")
    parser.add_argument("--mixers", nargs="*", default=None, help="names to draw (default: every registered one)")
    args = parser.parse_args(argv)
    if args.num < 1 or args.size < 1:
        parser.error(f"--num and --size must be positive, got {args.num} and {args.size}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        images, labels = load_images(args.data_root, args.num, args.split)
    except FileNotFoundError as error:
        sys.exit(f"error: {error}")
    images = upsample(images, args.size, args.interpolation)
    # learned mixers (AutoMix) draw nothing meaningful untrained: they are left out unless named
    names = args.mixers or [n for n in openmix.list_mixers() if not openmix.get_mixer_entry(n).learned]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    options = {
        "mode": args.mode,
        "seed": args.seed,
        "outline": not args.no_outline,
        "class_names": FASHION_MNIST_CLASSES,
    }
    for name in names:
        fig = render_grid(images, labels, [name], **options)
        fig.savefig(args.out_dir / f"{name}.png", dpi=110, bbox_inches="tight", pad_inches=0.05)
        plt.close(fig)
    fig = render_grid(images, labels, names, **options)
    fig.savefig(args.out_dir / "all.png", dpi=110, bbox_inches="tight", pad_inches=0.05)
    plt.close(fig)
    print(f"wrote {len(names) + 1} PNGs to {args.out_dir}")


if __name__ == "__main__":
    main()
