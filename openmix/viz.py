"""Pictures of what mixers do: one row per mixer, one column per mixed sample.

Used by ``openmix show`` and ``tools/visualize_mixers.py``. Each panel is titled with the lambda the mixer reports
(the share of the sample's own image) and the two classes (own / partner); a red line marks the edge of the region
taken from the partner. Every mixer gets its own ``torch.Generator`` seeded with ``seed``, so a row is the same in
every figure it appears in. Mixers that need a network get their needs from :class:`BrightnessNetwork` through
:func:`openmix.lightning.services.mixer_inputs` (the trainer's own services), so Attentive CutMix moves the partner's
brightest cells and a class activation map is the image's brightness.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display needed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import openmix  # noqa: E402
from openmix.lightning.services import mixer_inputs  # noqa: E402
from openmix.mixers._registry import accepts_argument  # noqa: E402

NETWORK_NOTE = (
    "mixers that need a network see the image's brightness as its features (the brightest partner cells move)"
)


class BrightnessNetwork(nn.Module):
    """A fixed stand-in network: its features are the image average-pooled to ``grid`` x ``grid`` (a bright cell
    scores high), its classifier a linear layer after global average pooling whose weights are all 1 (so the class
    activation map of every class is the brightness)."""

    def __init__(self, channels: int, num_classes: int, grid: int = 7):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.head = nn.Linear(channels, num_classes)
        nn.init.ones_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward_features(self, images: Tensor) -> Tensor:
        return self.pool(images)

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.forward_features(images).mean(dim=(2, 3)))


def needs_network(name: str) -> bool:
    """Whether mixer ``name`` needs something a network computes (its class's ``requires``)."""
    return bool(openmix.get_mixer_entry(name).requires)


def mix_with(name: str, images: Tensor, labels: Tensor, mode: str | None, seed: int) -> openmix.MixOutput:
    """One call of mixer ``name`` (paper defaults, ``mode`` unless ``None`` or the mixer has none) on the batch,
    with a generator seeded by ``seed`` (same picture every run) and its needs computed with
    :class:`BrightnessNetwork`."""
    takes_mode = mode is not None and accepts_argument(openmix.get_mixer_entry(name).cls, "mode")
    mixer = openmix.create_mixer(name, **({"mode": mode} if takes_mode else {}))  # Co-Mixup has no mode
    num_classes = int(labels.max()) + 1 if labels.dim() == 1 else labels.shape[1]
    network = BrightnessNetwork(images.shape[1], max(num_classes, 10), getattr(mixer, "grid", 7))
    generator = torch.Generator().manual_seed(seed)
    return mixer(images, labels, generator=generator, **mixer_inputs(mixer, network, images, labels))


def class_name(class_names: Sequence[str] | None, label: Tensor) -> str:
    """The name of class id ``label`` (its arg-max for soft labels), or the id itself without names."""
    index = int(label.argmax()) if label.dim() else int(label)
    return class_names[index] if class_names else str(index)


def draw_panel(
    ax: plt.Axes,
    out: openmix.MixOutput,
    i: int,
    outline: bool,
    class_names: Sequence[str] | None = None,
    rescale: bool = False,
) -> None:
    """Sample i of a mix: image, title (lambda, own / partner class) and the partner region's outline."""
    image = out.x[i].float()  # (C, H, W)
    image = (image - image.min()) / (image.max() - image.min()).clamp(min=1e-12) if rescale else image.clamp(0, 1)
    image = image[0] if image.shape[0] == 1 else image.permute(1, 2, 0)  # grey (H, W) or RGB (H, W, C)
    ax.imshow(image.numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    own, partner = (class_name(class_names, label) for label in (out.y_a[i], out.y_b[i]))
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
    mode: str | None = "elem",
    seed: int = 0,
    outline: bool = True,
    class_names: Sequence[str] | None = None,
    rescale: bool = False,
) -> Figure:
    """A figure with one row per mixer and one column per sample of ``images`` (n, C, H, W).

    ``labels`` are (n,) int64 class ids named by ``class_names``; ``mode`` and ``seed`` are those of every mixer
    call. Images are shown on [0, 1], or each min-max scaled when ``rescale`` (normalised data).
    """
    rows, cols = len(mixer_names), images.shape[0]
    fig, axes = plt.subplots(rows, cols, figsize=(1.45 * cols, 1.75 * rows + 0.4), squeeze=False, layout="constrained")
    for row, name in enumerate(mixer_names):
        out = mix_with(name, images, labels, mode, seed)
        for col in range(cols):
            draw_panel(axes[row, col], out, col, outline, class_names, rescale)
        note = " (global blend)" if out.mask is None else ""
        axes[row, 0].set_ylabel(name + note, fontsize=9)
    shown_mode = mode or "each mixer's default"
    caption = f"mode={shown_mode}, seed={seed}; title: lam (share of the sample itself), own / partner class"
    if outline:
        caption += "; red: edge of the partner's region"
    if any(needs_network(name) for name in mixer_names):
        caption += "\n" + NETWORK_NOTE
    fig.supxlabel(caption, fontsize=8)
    return fig
