"""Pictures of what mixers do: one row per mixer, one column per mixed sample.

Used by ``openmix show`` and ``tools/visualize_mixers.py``. Each panel is titled with the lambda the mixer reports
(the share of the sample's own image) and the two classes (own / partner); a red line marks the edge of the region
taken from the partner. Every mixer gets its own ``torch.Generator`` seeded with ``seed``, so a row is the same in
every figure it appears in. Mixers that need a network get :class:`BrightnessFeatures`, so Attentive CutMix moves
the partner's brightest cells.
"""

from __future__ import annotations

import inspect
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

ATTENTION_NOTE = "attentivemix: extractor = the image average-pooled to the grid, so the brightest partner cells move"


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


def build_mixer(name: str, mode: str | None) -> nn.Module:
    """The registered mixer with its paper defaults and ``mode`` (``None``: the mixer's own default); an extractor
    is supplied where one is needed."""
    entry = openmix.get_mixer_entry(name)
    kwargs: dict[str, object] = {} if mode is None else {"mode": mode}
    if takes_extractor(name):
        kwargs["extractor"] = BrightnessFeatures(entry.defaults.get("grid", 7))
    return openmix.create_mixer(name, **kwargs)


def mix_with(name: str, images: Tensor, labels: Tensor, mode: str | None, seed: int) -> openmix.MixOutput:
    """One call of mixer ``name`` on the batch, with a generator seeded by ``seed`` (same picture every run)."""
    mixer = build_mixer(name, mode)
    context = {"model": BrightnessFeatures()} if "model" in getattr(mixer, "requires", ()) else {}
    generator = torch.Generator().manual_seed(seed)
    return mixer(images, labels, generator=generator, **context)


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
    if any(takes_extractor(name) for name in mixer_names):
        caption += "\n" + ATTENTION_NOTE
    fig.supxlabel(caption, fontsize=8)
    return fig
