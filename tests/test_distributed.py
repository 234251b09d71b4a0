"""Mixing under data parallelism, with 2 CPU processes (gloo)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import openmix
from openmix.lightning.distributed import gather_batches, mix_across_ranks

BATCH_SIZES = (3, 5)  # unequal on purpose: the last batch of an epoch may differ between ranks


def _rank_batch(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(BATCH_SIZES[rank], 2, 10, 10, generator=generator)
    y = torch.arange(BATCH_SIZES[rank]) + 10 * rank  # labels tell ranks apart
    return x, y


def _worker(rank: int, world: int, init_file: str, scope: str, mixer_name: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x, y = _rank_batch(rank)
        options = {"transport": False, "grids": (2, 5)} if mixer_name == "puzzlemix" else {}
        mixer = openmix.create_mixer(mixer_name, mode="elem", **options)
        generator = torch.Generator().manual_seed(7 if scope == "global" else 7 + rank)
        context = {}
        if "saliency" in mixer.requires:  # a per-sample need: each rank's own, gathered with the batch
            context["saliency"] = torch.rand(x.shape[0], 10, 10, generator=torch.Generator().manual_seed(rank)) ** 4
        out = mix_across_ranks(mixer, x, y, generator, scope, **context)
        x_all, _ = gather_batches(x)
        torch.save({"out": out, "x": x, "y": y, "x_all": x_all}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _run(tmp_path, scope: str, mixer_name: str) -> list[dict]:
    init_file = str(tmp_path / "init")
    mp.spawn(_worker, args=(2, init_file, scope, mixer_name, str(tmp_path)), nprocs=2, join=True)
    return [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(2)]


@pytest.mark.parametrize("mixer_name", ["cutmix", "mixup", "puzzlemix"])
def test_global_pairing_keeps_the_invariant_across_ranks(tmp_path, mixer_name):
    results = _run(tmp_path, "global", mixer_name)
    x_global = torch.cat([result["x"] for result in results])
    y_global = torch.cat([result["y"] for result in results])
    partners_elsewhere = 0
    for rank, result in enumerate(results):
        out, x = result["out"], result["x"]
        assert torch.equal(result["x_all"], x_global)
        assert out.x.shape == x.shape and out.index.shape == (x.shape[0],)
        weight = out.mask if out.mask is not None else out.lam.view(-1, 1, 1, 1)
        expected = weight * x + (1 - weight) * x_global[out.index]
        torch.testing.assert_close(out.x, expected)
        torch.testing.assert_close(out.lam, weight.expand(x.shape[0], 1, 10, 10).mean(dim=(1, 2, 3)))
        assert torch.equal(out.y_b, y_global[out.index]) and torch.equal(out.y_a, result["y"])
        start = sum(BATCH_SIZES[:rank])
        partners_elsewhere += int(((out.index < start) | (out.index >= start + x.shape[0])).sum())
    assert partners_elsewhere > 0, "global pairing must draw some partners from the other rank"
    # both ranks drew from one global permutation
    assert sorted(torch.cat([r["out"].index for r in results]).tolist()) == list(range(sum(BATCH_SIZES)))


def test_local_pairing_stays_on_each_rank(tmp_path):
    results = _run(tmp_path, "local", "cutmix")
    for result in results:
        out, x = result["out"], result["x"]
        assert sorted(out.index.tolist()) == list(range(x.shape[0]))
        expected = out.mask * x + (1 - out.mask) * x[out.index]
        torch.testing.assert_close(out.x, expected)
