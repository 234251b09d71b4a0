"""Shared helpers: building any registered mixer for tests, and an independent partner reference."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import openmix
from openmix.lightning.services import mixer_inputs

# Fashion-MNIST from Debian's dataset-fashion-mnist, and the overrides that make a grid's runs tiny and fast (the
# harness and cluster tests)
ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(
    not (FMNIST / "train-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST (dataset-fashion-mnist) not installed"
)
TINY_ARGS = {
    "model.init_args.backbone": "resnet10t",
    "model.init_args.backbone_kwargs": {"channels": [8, 8, 8, 8], "stem_width": 8},
    "model.init_args.cifar_stem": True,
    "data.init_args.limit_train": 128,
    "data.init_args.limit_val": 64,
    "data.init_args.batch_size": 32,
    "trainer.max_epochs": 1,
}


class TinyExtractor(nn.Module):
    """A small fixed stand-in network for mixers that need one (any channel count): a conv as ``forward_features``
    and a linear classifier after global average pooling, so saliency and class activation maps exist too."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4, num_classes)
        with torch.no_grad():
            for parameter in self.parameters():  # every weight and bias from the seeded generator
                parameter.copy_(torch.randn(parameter.shape, generator=generator))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.float().mean(dim=1, keepdim=True))

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x).mean(dim=(2, 3)))


class WithNeeds(nn.Module):
    """A mixer called with what it needs, computed by the trainer's own function (``mixer_inputs``) from
    :class:`TinyExtractor` on the batch; attributes are the mixer's."""

    def __init__(self, mixer: nn.Module):
        super().__init__()
        self.mixer = mixer

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("mixer"), name)

    def forward(self, x, y, generator=None, lam=None, **context):
        try:  # bad input: no needs, so that the mixer's own check reports it
            classes = int(y.max()) + 1 if y.dim() == 1 else y.shape[1]
            network = TinyExtractor(max(classes, 10) if y.dim() == 1 else classes).to(x.device)
            needs = mixer_inputs(self.mixer, network, x, y)
        except Exception:
            needs = {}
        return self.mixer(x, y, generator=generator, lam=lam, **{**needs, **context})


TWO_SOURCE_OPTIONS = ("mode", "pairing")  # contract-test options that a k-source method may lack (Co-Mixup)


def takes_option(name: str, option: str) -> bool:
    """Whether mixer ``name``'s class takes the constructor argument ``option``."""
    from openmix.mixers._registry import accepts_argument

    return accepts_argument(openmix.get_mixer_entry(name).cls, option)


def build_mixer(name: str, **kwargs) -> nn.Module:
    """``create_mixer``, called with what the mixer needs (see :class:`WithNeeds`) when it needs anything.

    The contract tests mix images: a hidden-state mixer is set to its stage 0 (the input) as the trainer would after
    drawing it; what it does on hidden states is tested in its own file and in test_protocol.py. ``mode`` and
    ``pairing`` are left out for a class that has no such argument (the tests about them skip it); any other
    argument goes through, so a misspelt one is still an error."""
    entry = openmix.get_mixer_entry(name)
    for option in TWO_SOURCE_OPTIONS:
        if option in kwargs and not takes_option(name, option):
            del kwargs[option]
    if "features" in entry.hooks and "layers" in entry.defaults:
        kwargs.setdefault("layers", (0,))
    mixer = openmix.create_mixer(name, **kwargs)
    if "features" in mixer.hooks:
        assert mixer.draw_stage(0) == 0
    return WithNeeds(mixer) if mixer.requires else mixer


def box_of(mask_row: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) bounding box of the zeros of an (H, W) mask, None when there are none."""
    rows, cols = torch.nonzero(mask_row < 0.5, as_tuple=True)
    if rows.numel() == 0:
        return None
    return int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1


def partner_pixels(mixer: nn.Module, x: torch.Tensor, out: openmix.MixOutput) -> torch.Tensor | None:
    """What the (1 - mask) part of ``out.x`` must hold: the partner ``x[index]``, or ``None`` for mixers that move
    the partner's content first (``moves_partner``: resized, cropped or aligned; their own tests check it) and for
    k-source outputs (``out.indices`` set: the (1 - mask) part holds several sources, which the k-source branch of
    test_mixers.assert_pixel_label_consistency checks with ``out.masks``)."""
    if getattr(mixer, "moves_partner", False) or out.indices is not None:
        return None
    return x[out.index].float()


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


# the model config each dataset family's mixer configs stack onto: a ViT for methods that need class-token attention
MODEL_CONFIGS = {
    "cifar": ("model/cifar_resnet18.yaml", "model/cifar_deit_tiny.yaml"),
    "imagenet": ("model/imagenet_resnet50.yaml", "model/imagenet_deit_small.yaml"),
    "fashion_mnist": ("model/resnet_tiny_fmnist.yaml", "model/vit_tiny_fmnist.yaml"),
    "tiny_imagenet": ("model/tiny_imagenet_resnet18.yaml", None),
}


def mixer_class_of(config) -> type | None:
    """The mixer class a config file sets (a class_path or a registered name), or None."""
    import importlib

    import yaml

    spec = ((yaml.safe_load(open(config)) or {}).get("model") or {}).get("init_args", {}).get("mixer")
    if isinstance(spec, str):
        return openmix.get_mixer_entry(spec).cls
    if isinstance(spec, dict):
        module, _, name = spec["class_path"].rpartition(".")
        return getattr(importlib.import_module(module), name)
    return None


def model_config_for(config) -> str:
    """The model config (relative to configs/) a mixer config of ``configs/mixers/<family>/`` is meant for: chosen
    by what the mixer needs, never by its name."""
    from pathlib import Path

    cnn, vit = MODEL_CONFIGS[Path(config).parent.name]
    cls = mixer_class_of(config)
    return vit if cls is not None and "attention" in cls.requires else cnn


def run_openmix(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m openmix.cli ARGS`` in a subprocess with one OpenMP thread, this checkout and tests/ importable."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    return subprocess.run(
        [sys.executable, "-m", "openmix.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )
