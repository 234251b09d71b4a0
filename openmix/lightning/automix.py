"""AutoMixClassifier: MixClassifier with AutoMix's momentum pipeline (Liu et al., ECCV 2022).

Each training step draws two (lambda, permutation) pairs from the Mix Block:

1. the *block* pair trains the Mix Block through the momentum (EMA) copy of the network: the mixed batch goes
   through the frozen EMA network, its mixed loss plus the mask loss reach the block through the mask;
2. the *online* pair trains the online network on the mixed batch with the mask detached, plus the objective on
   the clean batch; draws within ``lam_margin`` of 0 or 1 fall back to plain mixup (the Mix Block does that itself).

Both mixed losses label the mix with the *sampled* lambda (``MixOutput.label_weights``), as the paper and the authors'
code do; the mask's mean (the output's ``lam``) is pulled towards it by the mask loss. A batch skipped by
``mix_prob`` (or after ``mix_off_epoch``) is a plain step on the clean batch: nothing trains the Mix Block then.

After every optimiser step the EMA network follows the online one with a momentum that rises on a cosine from
``momentum`` to ``momentum_end`` over the run. Choose it in YAML with
``model: {class_path: openmix.lightning.AutoMixClassifier}``; every MixClassifier argument applies.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from openmix.lightning.module import MixClassifier
from openmix.mixers import MixOutput
from openmix.mixers.automix import intermediate_features


def without_fixed_mixer(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` without ``mixer``, which may only repeat the fixed ``"automix"`` (as a checkpoint's hparams do)."""
    mixer = kwargs.get("mixer", "automix")
    if mixer != "automix":
        raise ValueError(
            f"AutoMixClassifier always trains the 'automix' Mix Block (configure it with mixer_kwargs), got {mixer!r}"
        )
    return {key: value for key, value in kwargs.items() if key != "mixer"}


class AutoMixClassifier(MixClassifier):
    """MixClassifier trained with a learned Mix Block and a momentum network.

    Args:
        momentum: EMA momentum at the start of training.
        momentum_end: EMA momentum at the end (cosine schedule in between).
        momentum_bn: batch norm of the momentum network: ``"train"`` (batch statistics in its forward passes, its
            own running statistics; as the authors run it: OpenMixup's ``AutoMixup`` keeps ``backbone_k`` in train
            mode and its momentum update moves parameters only) or ``"eval"`` (the online network's running
            statistics, copied after every step).
        mask_loss_weight: weight of the Mix Block's mask loss (its mean must track lambda).
        clean_loss_weight: weight of the objective on the clean batch for the online network (0 skips its forward
            pass). It replaces objectives that take the clean batch themselves (``regmixup``), which are refused.
        mix_block_lr: learning rate of the Mix Block's parameter group (``None``: the optimizer's). The block is a
            few 1x1 convolutions fed by one loss term, so it can take a larger rate than the network.
        mixer_kwargs: arguments of the ``automix`` Mix Block (e.g. ``{alpha: 2.0}``). The class always trains that
            mixer, so it takes no ``mixer`` argument of its own: ``mixer="automix"`` is accepted (checkpoints store
            it), anything else is a ``ValueError``. Keeping ``mixer`` out of the signature also keeps
            ``--model openmix.lightning.AutoMixClassifier`` from inheriting ``MixClassifier``'s default mixer, which
            jsonargparse carries over when the class changes.
        **kwargs: every other :class:`~openmix.lightning.MixClassifier` argument.
    """

    trains_learned_mixers = True

    def __init__(
        self,
        momentum: float = 0.999,
        momentum_end: float = 0.999999,
        momentum_bn: str = "train",
        mask_loss_weight: float = 0.1,
        clean_loss_weight: float = 1.0,
        mix_block_lr: float | None = None,
        mixer_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        kwargs = without_fixed_mixer(kwargs)
        super().__init__(mixer="automix", mixer_kwargs=mixer_kwargs, **kwargs)
        if not 0.0 <= momentum <= momentum_end <= 1.0:
            raise ValueError(f"need 0 <= momentum <= momentum_end <= 1, got {momentum} and {momentum_end}")
        if mask_loss_weight < 0 or clean_loss_weight < 0:
            raise ValueError("mask_loss_weight and clean_loss_weight must be >= 0")
        if momentum_bn not in ("train", "eval"):
            raise ValueError(f"momentum_bn must be 'train' or 'eval', got {momentum_bn!r}")
        if self.objective.uses_clean_batch:
            raise ValueError(
                f"objective {kwargs.get('objective')!r} takes the clean batch itself; AutoMixClassifier adds its own "
                "clean loss (clean_loss_weight): use objective 'ce', 'bce' or 'decoupled'"
            )
        if self.mixer.inplace:
            raise ValueError(
                "mixer inplace=True cannot train the Mix Block (an in-place mix carries no gradient to the mask, and "
                "the step mixes the clean batch twice): use inplace=False with AutoMixClassifier"
            )
        if self.hparams.pairing_scope != "local":
            raise ValueError("AutoMixClassifier mixes each rank's own batch: pairing_scope must be 'local'")
        self.ema_network = copy.deepcopy(self.network).requires_grad_(False)
        self.ema_network.train(momentum_bn == "train")
        self.build_mix_block()
        self.current_momentum = momentum

    def build_mix_block(self) -> None:
        """Create the Mix Block's weights now (their size comes from the network's features), before the optimiser."""
        if self.mixer.built:
            return
        probe = torch.zeros(1, self.hparams.in_chans, 64, 64)
        training = self.ema_network.training
        with torch.no_grad():  # in eval mode: the probe must not touch batch-norm statistics
            features = intermediate_features(self.ema_network.eval(), probe, self.mixer.feature_stage)
        self.ema_network.train(training)
        self.mixer.build(features.shape[1])

    def train(self, mode: bool = True) -> AutoMixClassifier:
        super().train(mode)
        if self.hparams.momentum_bn == "eval":  # batch norm uses the (copied) running statistics of the online one
            self.ema_network.eval()
        return self

    @property
    def needs_clean_batch(self) -> bool:
        return True  # two draws from the same batch, and the clean loss

    def momentum_network(self) -> nn.Module | None:
        return getattr(self, "ema_network", None)  # the Mix Block reads the momentum network's features

    def batch_features(self, x: Tensor) -> Tensor:
        """The momentum network's features of the batch, computed once per step for both draws."""
        return self.mixer.features(x, self.ema_network)

    def block_losses(
        self, x: Tensor, y: Tensor, features: Tensor | None = None, lam: float | Tensor | None = None
    ) -> tuple[Tensor, Tensor, MixOutput]:
        """The Mix Block's mixed loss through the momentum network (targets weighted by the sampled lambda), and
        its mask loss (gradients reach the block through the mask only: the momentum network is frozen)."""
        features = self.batch_features(x) if features is None else features
        block = self.mixer(x, y, generator=self.mixing_generator, lam=lam, features=features)
        return self.objective(self.ema_network(block.x), block), self.mixer.mask_loss(block.mask), block

    def clean_loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """The objective on the unmixed batch (softmax CE, BCE, ... as configured, with its label smoothing)."""
        return self.objective(logits, MixOutput.identity(logits, y))

    def online_losses(self, x: Tensor, y: Tensor, features: Tensor | None = None) -> tuple[Tensor, Tensor, MixOutput]:
        """The online network's mixed loss on a second draw with the mask detached, plus the clean one-hot loss;
        returns (loss, mixed logits, mix)."""
        features = self.batch_features(x) if features is None else features
        with torch.no_grad():
            online = self.mixer(x, y, generator=self.mixing_generator, features=features)
        online = replace(online, x=online.x.detach(), mask=online.mask.detach())
        clean_weight = self.hparams.clean_loss_weight
        logits = self(torch.cat([x, online.x]) if clean_weight > 0 else online.x)
        mixed_logits = logits[-x.shape[0] :]
        loss = self.objective(mixed_logits, online)
        if clean_weight > 0:
            loss = loss + clean_weight * self.clean_loss(logits[: x.shape[0]], y)
        return loss, mixed_logits, online

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        if not self.should_mix(batch_idx):  # mix_prob / mix_off_epoch: the parent's step, which draws the same
            return super().training_step(batch, batch_idx)  # decision again and trains on the clean batch
        features = self.batch_features(x)
        block_loss, mask_loss, _ = self.block_losses(x, y, features)  # 1. trains the Mix Block
        online_loss, mixed_logits, online = self.online_losses(x, y, features)  # 2. trains the online network
        loss = online_loss + block_loss + self.hparams.mask_loss_weight * mask_loss
        batch_size = x.shape[0]
        self.log_train("train/loss", loss, batch_size, on_step=True)
        self.log_train("train/top1", self.mixed_accuracy(mixed_logits, online), batch_size)
        self.log_train("train/mask_loss", mask_loss, batch_size)
        self.log_train("train/block_loss", block_loss, batch_size)
        self.log_train("train/momentum", self.current_momentum, batch_size)
        self.train_lams.append(online.lam.detach().cpu())
        self._epoch_images += batch_size
        return loss

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The network's parameters, and the Mix Block's as their own group (with ``mix_block_lr`` if set)."""
        block = {"params": list(self.mixer.parameters())}
        if self.hparams.mix_block_lr is not None:
            block["lr"] = self.hparams.mix_block_lr
        return [{"params": [p for p in self.network.parameters() if p.requires_grad]}, block]

    def momentum_at(self, step: int) -> float:
        """Cosine rise from ``momentum`` (step 0) to ``momentum_end`` (last step)."""
        start, end = self.hparams.momentum, self.hparams.momentum_end
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer else 1
        progress = min(1.0, step / total)
        return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2

    @torch.no_grad()
    def update_ema(self, momentum: float) -> None:
        """ema = momentum * ema + (1 - momentum) * online for parameters; with ``momentum_bn="eval"`` the buffers
        (BN statistics) are copied, with ``"train"`` the momentum network keeps its own."""
        for ema, online in zip(self.ema_network.parameters(), self.network.parameters()):
            ema.mul_(momentum).add_(online.detach(), alpha=1 - momentum)
        if self.hparams.momentum_bn == "eval":
            for ema, online in zip(self.ema_network.buffers(), self.network.buffers()):
                ema.copy_(online)

    def on_train_start(self) -> None:
        super().on_train_start()
        self.current_momentum = self.momentum_at(self.global_step)  # a resumed run continues the schedule

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.current_momentum = self.momentum_at(self.global_step)
        self.update_ema(self.current_momentum)
