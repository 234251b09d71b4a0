"""Attentive CutMix: paste the partner's most attended grid cells, found by a feature extractor.

Walawalkar et al., "Attentive CutMix: An Enhanced Data Augmentation Approach for Deep Learning Based Image
Classification", ICASSP 2020. https://arxiv.org/abs/2003.13048

The partner image goes through a feature extractor; its last feature map, averaged over channels and pooled to a
grid x grid map (7 x 7 in the paper), ranks the cells; the top-k cells (k = 6) of the partner are pasted onto
sample i at the same place. lam is the share of sample i's pixels left, 1 - k / 49 when the image side is a
multiple of the grid. Pixel row r belongs to cell row floor(r * grid / H), so cell row j spans the rows
ceil(j * H / grid) <= r < ceil((j + 1) * H / grid) (columns likewise with W): any image size works, the cells then
differ by a pixel, and lam (the mask's mean) is exact.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from openmix.mixers import functional as F_mix
from openmix.mixers._base import PairMixer, check_network
from openmix.mixers._registry import register_mixer


def feature_map(extractor: nn.Module, images: Tensor) -> Tensor:
    """(n, C', h, w) feature map: ``forward_features`` when the module has it (timm models), else its output."""
    features = extractor.forward_features(images) if hasattr(extractor, "forward_features") else extractor(images)
    if not isinstance(features, Tensor) or features.dim() != 4:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"the extractor must return a (n, C, h, w) feature map, got {shape}")
    return features


def cell_mask(top_cells: Tensor, grid: int, height: int, width: int) -> Tensor:
    """(n, 1, H, W) float32 mask, 0 on the selected cells, 1 elsewhere.

    ``top_cells`` (n, m) holds indices into the grid x grid raster; the value grid * grid means "no cell", so rows
    may select different numbers of cells.
    """
    n = top_cells.shape[0]
    cells = grid * grid
    selected = torch.zeros(n, cells + 1, device=top_cells.device).scatter_(1, top_cells, 1.0)[:, :cells]
    # pixel row r lies in cell row floor(r * grid / H), so cell row j starts at row ceil(j * H / grid)
    cell_row = (torch.arange(height, device=top_cells.device) * grid) // height
    cell_col = (torch.arange(width, device=top_cells.device) * grid) // width
    cell_of_pixel = cell_row.view(-1, 1) * grid + cell_col.view(1, -1)  # (H, W)
    return 1.0 - selected[:, cell_of_pixel].unsqueeze(1)


@register_mixer(
    "attentivemix",
    paper="Attentive CutMix: An Enhanced Data Augmentation Approach for Deep Learning Based Image Classification "
    "(Walawalkar et al., ICASSP 2020)",
    url="https://arxiv.org/abs/2003.13048",
)
class AttentiveMix(PairMixer):
    """Attentive CutMix.

    Args:
        extractor: the network whose features rank the cells: a timm model name (built with ``pretrained``),
            an ``nn.Module`` (used as is, frozen), or ``None`` to use the training network, which the caller then
            passes as ``model=`` at call time (``requires == ("model",)``).
        grid: cells per side of the attention grid.
        top_k: cells pasted; ``None`` draws lam ~ Beta(alpha, alpha) and pastes round((1 - lam) * grid^2) cells
            (OpenMixup's "AttentiveMix+"), one count per batch or per sample with ``mode``.
        alpha: Beta concentration when ``top_k`` is ``None``.
        pretrained: load pretrained weights for an extractor given by name (the paper uses an ImageNet ResNet-50).
        extractor_size: resize images to this side before the extractor (``None``: as they are).
        mode, pairing, inplace: as every mixer. The masks are per sample in both modes (each comes from its
            partner's attention); ``mode`` decides whether the cell count is drawn once or per sample.
    """

    shares_batch_mask = False
    requires = ("model",)  # the training network's features rank the cells, unless an extractor is given

    def __init__(
        self,
        extractor: str | nn.Module | None = None,
        grid: int = 7,
        top_k: int | None = 6,
        alpha: float = 2.0,
        pretrained: bool = True,
        extractor_size: int | None = None,
        mode: str = "batch",
        pairing: str = "random",
        inplace: bool = False,
    ):
        super().__init__(alpha, mode, pairing, inplace)
        if not F_mix.is_int(grid) or grid < 1:
            raise ValueError(f"grid must be a positive int, got {grid!r}")
        grid = int(grid)
        if top_k is not None and (not F_mix.is_int(top_k) or not 0 <= top_k <= grid**2):
            raise ValueError(f"top_k must be an int in [0, grid**2 = {grid**2}] or None, got {top_k!r}")
        if extractor_size is not None and (not F_mix.is_int(extractor_size) or extractor_size < 1):
            raise ValueError(f"extractor_size must be a positive int or None, got {extractor_size!r}")
        pretrained = F_mix.check_bool(pretrained, "pretrained")
        if isinstance(extractor, str):
            import timm

            extractor = timm.create_model(extractor, pretrained=pretrained, num_classes=0)
        if extractor is not None and not isinstance(extractor, nn.Module):
            raise TypeError(
                f"extractor must be a timm model name, an nn.Module or None, got {type(extractor).__name__}"
            )
        if extractor is not None:
            extractor.eval().requires_grad_(False)
        self.extractor = extractor
        self.requires = ("model",) if extractor is None else ()
        self.grid = grid
        self.top_k = None if top_k is None else int(top_k)
        self.extractor_size = None if extractor_size is None else int(extractor_size)

    def train(self, mode: bool = True) -> AttentiveMix:
        super().train(mode)
        if self.extractor is not None:  # the frozen extractor always runs in eval mode
            self.extractor.eval()
        return self

    def extra_repr(self) -> str:
        return super().extra_repr() + f", grid={self.grid}, top_k={self.top_k}"

    def attention(self, images: Tensor, network: nn.Module) -> Tensor:
        """(n, grid * grid) channel-mean activation of each cell."""
        if self.extractor_size is not None:
            images = F.interpolate(images, size=(self.extractor_size,) * 2, mode="bilinear", align_corners=False)
        images = F_mix.to_network_dtype(network, images)
        was_training = network.training
        network.eval()  # no batch-norm statistics updates from the extra pass
        try:
            with torch.no_grad():
                features = feature_map(network, images)
        finally:
            network.train(was_training)
        return F.adaptive_avg_pool2d(features.float().mean(dim=1, keepdim=True), self.grid).flatten(1)

    def mix(
        self, x: Tensor, index: Tensor, lam: Tensor | None, generator: torch.Generator | None, **context: Any
    ) -> tuple[Tensor, Tensor, Tensor]:
        batch_size, _, height, width = x.shape
        network = self.extractor if self.extractor is not None else context.get("model")
        if network is None:
            raise ValueError("attentivemix built without an extractor needs the network: call it with model=...")
        check_network(network)
        cells = self.grid**2
        if lam is None and self.top_k is not None:
            counts = torch.full((batch_size,), self.top_k)
        else:
            counts = torch.round((1.0 - self.draw_lam(lam, batch_size, generator)) * cells).long()
        scores = self.attention(x.detach().index_select(0, index), network)  # the partner's attention
        ranked = scores.argsort(dim=1, descending=True)
        # top counts[i] cells of row i: rank position < counts[i]; the rest point at an extra dummy cell
        take = torch.arange(cells, device=x.device).view(1, -1) < F_mix.to_device(counts, x.device).view(-1, 1)
        top_cells = torch.where(take, ranked, torch.full_like(ranked, cells))
        mask = cell_mask(top_cells, self.grid, height, width)
        mixed = F_mix.blend(x, index, mask, self.inplace)
        return mixed, mask.double().mean(dim=(1, 2, 3)), mask
