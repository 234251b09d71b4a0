"""Training with Lightning: :class:`MixClassifier`, the data modules and the default optimisation."""

from openmix.lightning.automix import AutoMixClassifier
from openmix.lightning.module import MixClassifier, apply_cifar_stem, build_backbone
from openmix.lightning.optim import SGD, WarmupCosineLR

__all__ = ["SGD", "AutoMixClassifier", "MixClassifier", "WarmupCosineLR", "apply_cifar_stem", "build_backbone"]
