"""AttentiveMix's grid cells: where their edges fall for image sides that are not multiples of the grid, and that
the documentation states the same rule as the code."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import openmix
from openmix.mixers import attentivemix
from openmix.mixers.attentivemix import cell_mask

ROOT = Path(__file__).resolve().parents[1]


def direct_cell_edges(side: int, grid: int) -> list[int]:
    """First pixel of each cell along one axis, and the side itself: ceil(j * side / grid) for j = 0 .. grid."""
    return [math.ceil(j * side / grid) for j in range(grid + 1)]


def direct_cell_of_pixel(position: int, side: int, grid: int) -> int:
    """The cell holding a pixel, by searching the edges (no floor division): edges[j] <= position < edges[j + 1]."""
    edges = direct_cell_edges(side, grid)
    return next(j for j in range(grid) if edges[j] <= position < edges[j + 1])


def test_the_edges_of_a_non_divisible_side_are_the_ceilings():
    # 30 px, 7 cells: j * 30 / 7 = 0, 4.29, 8.57, 12.86, 17.14, 21.43, 25.71 -> cells start at 0, 5, 9, 13, 18, 22, 26
    assert direct_cell_edges(30, 7) == [0, 5, 9, 13, 18, 22, 26, 30]
    assert [math.floor(j * 30 / 7) for j in range(8)] != direct_cell_edges(30, 7)  # the floors would be off by one


@pytest.mark.parametrize(("height", "width", "grid"), [(30, 30, 7), (30, 17, 7), (32, 32, 7), (28, 28, 7), (9, 13, 4)])
def test_each_cell_of_the_mask_covers_exactly_the_pixels_between_its_ceiling_edges(height, width, grid):
    cells = grid * grid
    rows, cols = direct_cell_edges(height, grid), direct_cell_edges(width, grid)
    # one row of top_cells per cell: that cell selected, the rest padded with the "no cell" index grid * grid
    top_cells = torch.full((cells, 2), cells, dtype=torch.int64)
    top_cells[:, 0] = torch.arange(cells)
    masks = cell_mask(top_cells, grid, height, width)
    assert masks.shape == (cells, 1, height, width)
    for cell in range(cells):
        row, col = divmod(cell, grid)
        expected = torch.ones(height, width)
        expected[rows[row] : rows[row + 1], cols[col] : cols[col + 1]] = 0.0
        assert torch.equal(masks[cell, 0], expected), f"cell {cell} of a {height}x{width} image, grid {grid}"


@pytest.mark.parametrize(("height", "width"), [(30, 30), (30, 17)])
def test_every_pixel_lies_in_the_cell_the_edges_give(height, width):
    grid = 7
    cells = grid * grid
    all_cells = torch.arange(cells).view(1, -1)  # every cell selected: then the mask is 0 everywhere
    assert torch.equal(cell_mask(all_cells, grid, height, width), torch.zeros(1, 1, height, width))
    # select the cells one row of cells at a time and check which pixel rows turned to 0
    for cell_row in range(grid):
        selected = torch.arange(cell_row * grid, (cell_row + 1) * grid).view(1, -1)
        mask = cell_mask(selected, grid, height, width)[0, 0]
        pasted_rows = [r for r in range(height) if bool((mask[r] == 0).all())]
        assert pasted_rows == [r for r in range(height) if direct_cell_of_pixel(r, height, grid) == cell_row]


class CellScores(nn.Module):
    """A stand-in extractor whose 7 x 7 "feature map" ranks cell 0 first, then 1, 2, ... (channel mean)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = torch.arange(49, 0, -1, dtype=torch.float32).view(1, 1, 7, 7)
        return scores.expand(x.shape[0], 2, 7, 7).to(x.device)


def test_the_mixer_pastes_the_ceiling_cells_and_reports_their_share():
    mixer = openmix.create_mixer("attentivemix", extractor=CellScores(), grid=7, top_k=3)
    x = torch.rand(4, 3, 30, 30, generator=torch.Generator().manual_seed(0))
    out = mixer(x, torch.arange(4), generator=torch.Generator().manual_seed(1))
    edges = direct_cell_edges(30, 7)
    expected_mask = torch.ones(30, 30)
    expected_mask[edges[0] : edges[1], edges[0] : edges[3]] = 0.0  # cells 0, 1, 2: the first three of row 0
    for i in range(4):
        assert torch.equal(out.mask[i, 0], expected_mask)
        assert out.lam[i].item() == pytest.approx(1.0 - 5 * 13 / 900)  # rows 0-4, columns 0-12
        blended = expected_mask * x[i] + (1 - expected_mask) * x[out.index[i]]
        assert torch.equal(out.x[i], blended)


def test_the_documentation_states_the_edges_the_code_uses():
    docs = (ROOT / "docs" / "mixers.md").read_text()
    section = docs[docs.index("## attentivemix") : docs.index("## automix")]
    for text in (section, attentivemix.__doc__):
        assert "floor(r * grid / H)" in text and "ceil(j * H / grid)" in text
        assert "edges are at `floor(j * H / grid)`" not in text and "Cell edges are floor(j * H / grid)" not in text
