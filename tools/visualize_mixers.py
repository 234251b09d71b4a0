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
import gzip
import inspect
import sys
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor, nn

import openmix

matplotlib.use("Agg")  # files only, no display needed

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
ATTENTION_NOTE = "attentivemix: extractor = the image average-pooled to the grid, so the brightest partner cells move"


def read_idx(path: Path, count: int) -> np.ndarray:
    """The first ``count`` items of a gzipped idx file (big-endian header: 0, 0, dtype code, ndim; then dims)."""
    with gzip.open(path, "rb") as stream:
        magic = stream.read(4)
        if len(magic) != 4 or magic[:2] != b"\x00\x00" or magic[2] != 0x08:
            raise ValueError(f"{path} is not an unsigned-byte idx file (header {magic!r})")
        dims = np.frombuffer(stream.read(4 * magic[3]), dtype=">i4").tolist()
        count = min(count, dims[0])
        item_size = int(np.prod(dims[1:], dtype=np.int64))
        data = np.frombuffer(stream.read(count * item_size), dtype=np.uint8)
    return data.reshape(count, *dims[1:])


def load_fashion_mnist(root: str | Path, n: int, split: str = "t10k") -> tuple[Tensor, Tensor]:
    """The first ``n`` images of a split as ((n, 1, 28, 28) float32 in [0, 1], (n,) int64 labels)."""
    if split not in ("train", "t10k"):
        raise ValueError(f"split must be 'train' or 't10k', got {split!r}")
    root = Path(root)
    paths = [root / f"{split}-images-idx3-ubyte.gz", root / f"{split}-labels-idx1-ubyte.gz"]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files not found: {', '.join(missing)}. Pass --data-root with the original idx .gz files "
            "(the Debian package dataset-fashion-mnist installs them in /usr/share/datasets/fashion-mnist)."
        )
    images = torch.from_numpy(read_idx(paths[0], n).copy()).float().div_(255).unsqueeze(1)  # (n, 1, 28, 28)
    labels = torch.from_numpy(read_idx(paths[1], n).astype(np.int64))  # (n,)
    return images, labels


def upsample(images: Tensor, size: int, interpolation: str = "nearest") -> Tensor:
    """(n, C, size, size) images resized with torch (nearest keeps the pixels sharp)."""
    if size == images.shape[-1] and size == images.shape[-2]:
        return images
    align = False if interpolation == "bilinear" else None
    return F.interpolate(images, size=(size, size), mode=interpolation, align_corners=align).clamp_(0, 1)


class BrightnessFeatures(nn.Module):
    """A fixed "feature extractor" for Attentive CutMix: the image average-pooled to ``grid`` x ``grid``."""

    def __init__(self, grid: int = 7):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(grid)

    def forward(self, images: Tensor) -> Tensor:
        return self.pool(images)  # (n, C, grid, grid): a bright cell gets a high attention score


def takes_extractor(name: str) -> bool:
    """Whether mixer ``name`` is built with a feature extractor (Attentive CutMix)."""
    return "extractor" in inspect.signature(openmix.get_mixer_entry(name).cls.__init__).parameters


def build_mixer(name: str, mode: str) -> nn.Module:
    """The registered mixer with its paper defaults and ``mode``; an extractor is supplied where one is needed."""
    entry = openmix.get_mixer_entry(name)
    kwargs: dict[str, object] = {"mode": mode}
    if takes_extractor(name):
        kwargs["extractor"] = BrightnessFeatures(entry.defaults.get("grid", 7))
    return openmix.create_mixer(name, **kwargs)


def mix_with(name: str, images: Tensor, labels: Tensor, mode: str, seed: int) -> openmix.MixOutput:
    """One call of mixer ``name`` on the batch, with a generator seeded by ``seed`` (same picture every run)."""
    mixer = build_mixer(name, mode)
    context = {"model": BrightnessFeatures()} if "model" in getattr(mixer, "requires", ()) else {}
    generator = torch.Generator().manual_seed(seed)
    return mixer(images, labels, generator=generator, **context)


def draw_panel(ax: plt.Axes, out: openmix.MixOutput, i: int, outline: bool) -> None:
    """Sample i of a mix: image, title (lambda, own / partner class) and the partner region's outline."""
    image = out.x[i].float().clamp(0, 1)  # (C, H, W)
    image = image[0] if image.shape[0] == 1 else image.permute(1, 2, 0)  # grey (H, W) or RGB (H, W, C)
    ax.imshow(image.numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    own, partner = CLASS_NAMES[int(out.y_a[i])], CLASS_NAMES[int(out.y_b[i])]
    ax.set_title(f"lam={float(out.lam[i]):.2f}\n{own} / {partner}", fontsize=7)
    if outline and out.mask is not None:
        mask = out.mask[i if out.mask.shape[0] > 1 else 0, 0].float()  # (H, W), 0 where the partner shows
        if mask.min() < 0.5:
            # a one-pixel border of "own" pixels closes the outline of regions that touch the image edge
            padded = F.pad(mask, (1, 1, 1, 1), value=1.0).numpy()
            rows, cols = np.arange(-1, mask.shape[0] + 1), np.arange(-1, mask.shape[1] + 1)
            ax.contour(cols, rows, padded, levels=[0.5], colors="red", linewidths=0.8)
            ax.set_xlim(-0.5, mask.shape[1] - 0.5)  # the padded grid must not widen the view
            ax.set_ylim(mask.shape[0] - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])


def render_grid(
    images: Tensor,
    labels: Tensor,
    mixer_names: list[str],
    mode: str = "elem",
    seed: int = 0,
    outline: bool = True,
) -> Figure:
    """A figure with one row per mixer and one column per sample of ``images`` (n, C, H, W) in [0, 1].

    ``labels`` are (n,) int64 Fashion-MNIST class ids; ``mode`` and ``seed`` are those of every mixer call.
    """
    rows, cols = len(mixer_names), images.shape[0]
    fig, axes = plt.subplots(rows, cols, figsize=(1.45 * cols, 1.75 * rows + 0.4), squeeze=False, layout="constrained")
    for row, name in enumerate(mixer_names):
        out = mix_with(name, images, labels, mode, seed)
        for col in range(cols):
            draw_panel(axes[row, col], out, col, outline)
        note = " (global blend)" if out.mask is None else ""
        axes[row, 0].set_ylabel(name + note, fontsize=9)
    caption = f"mode={mode}, seed={seed}; title: lam (share of the sample itself), own / partner class"
    if outline:
        caption += "; red: edge of the partner's region"
    if any(takes_extractor(name) for name in mixer_names):
        caption += "\n" + ATTENTION_NOTE
    fig.supxlabel(caption, fontsize=8)
    return fig


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
        images, labels = load_fashion_mnist(args.data_root, args.num, args.split)
    except FileNotFoundError as error:
        sys.exit(f"error: {error}")
    images = upsample(images, args.size, args.interpolation)
    names = args.mixers or openmix.list_mixers()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    options = {"mode": args.mode, "seed": args.seed, "outline": not args.no_outline}
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
