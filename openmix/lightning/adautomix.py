"""AdAutoMixClassifier: AutoMix's momentum pipeline with AdAutoMix's adversarial generator (Qin et al., ICLR 2024),
for any mixer whose ``trained_by`` names this class (``adautomix``).

Each mixed training step, as the authors' ``AdAutoMix.forward_train`` (JinXins/Adversarial-AutoMixup
``openmixup/models/classifiers/AdAutoMix.py:218-306``; Westlake-AI/openmixup ``classifiers/adautomix.py:225-313``):

1. one pass of the EMA teacher (the momentum network) over the clean batch: the generator's input features and, in
   an adversarial step, the teacher's outputs on every source for the cosine similarity;
2. the generator's ("block") draw: k sources mixed by the generator's masks go through the frozen teacher; its loss
   reaches the generator only, through the masks. Every ``adversarial_interval``-th step (the first included) is
   adversarial, ``-beta L_T -/+ (1 - beta) S`` (see :mod:`openmix.mixers.adautomix`), the others cooperative,
   ``L_T``;
3. the classifier's draw (its own shares and partners) with the masks detached trains the online network, plus the
   objective on the clean batch; with k > 2 sources the clean term becomes ``(1 - mixup_ratio) CE(clean) +
   mixup_ratio CE(plain k-source mixup of the same sources)`` (AdAutoMix.py:380-401).

All terms are summed and taken by one optimiser step, as the authors do: the sign of the adversarial term makes the
generator ascend the teacher's loss while every other parameter descends its own losses, since no term reaches
both (the teacher is frozen, the classifier's mix is detached). After every batch the teacher follows the online
network with AutoMix's momentum schedule. Choose it in YAML with ``model: {class_path:
openmix.lightning.AdAutoMixClassifier}``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from openmix.lightning.automix import AutoMixClassifier
from openmix.lightning.module import MixClassifier
from openmix.mixers import MixOutput
from openmix.mixers import functional as F_mix
from openmix.mixers.adautomix import AdAutoMix
from openmix.mixers.automix import intermediate_features

DEFAULT_GENERATOR = "adautomix"
CHECKPOINT_KEY = "openmix_adautomix"


def drop_mask_loss_weight(kwargs: dict[str, Any]) -> None:
    """Remove ``mask_loss_weight`` and ``block_loss_prob`` from ``kwargs``: a checkpoint's hyperparameters repeat
    AutoMixClassifier's, which are always 0 and 1 here (the generator has no mask loss and no block loss); any other
    value is refused."""
    weight = kwargs.pop("mask_loss_weight", 0.0)
    if weight:
        raise ValueError(f"AdAutoMix's generator has no mask loss: mask_loss_weight must be 0, got {weight!r}")
    block_loss_prob = kwargs.pop("block_loss_prob", 1.0)
    if not F_mix.is_real(block_loss_prob) or block_loss_prob != 1.0:
        raise ValueError(
            f"AdAutoMix trains its generator on alternating steps (adversarial_interval), not with AutoMix's block "
            f"loss: block_loss_prob must be 1, got {block_loss_prob!r}"
        )


class AdAutoMixClassifier(AutoMixClassifier):
    """MixClassifier trained with AdAutoMix's generator, an EMA teacher and alternating adversarial steps.

    Args:
        mix_block: the registered name of the generator (a mixer built on
            :class:`openmix.mixers.adautomix.AdAutoMix`); ``None``: ``"adautomix"``. Configure it with
            ``mixer_kwargs`` (``num_sources``, ``adversarial_weight``, ``cosine_sign``, ...).
        momentum, momentum_end, momentum_hold, momentum_bn: the teacher's EMA schedule, as
            :class:`~openmix.lightning.AutoMixClassifier` (the authors' AdAutoMix.py:34 and ``CosineScheduleHook``).
        adversarial_interval: every this many mixed steps, starting with the first, the generator's step is
            adversarial; the others are cooperative (Westlake-AI/openmixup adautomix.py:39, 301 ``adv_interval=2``;
            JinXins AdAutoMix.py:294 ``iter % 2``). 1: every step adversarial.
        mixup_ratio: with k > 2 sources, the share of plain k-source mixup in the classifier's clean term
            (AdAutoMix.py:37 ``mixup_radio=0.5``, :400).
        generator_loss_weight: weight of the generator's loss (the authors' ``head_mix_k`` weight, 1).
        clean_loss_weight: weight of the classifier's clean term (the authors' ``head_one_q`` weight, 1); 0 skips
            the clean and the plain-mixup passes.
        clean_forward: ``"separate"`` (the clean batch, the plain mix and the generator's mix through the online
            network one after the other, as ``forward_q``) or ``"joint"`` (one pass).
        mix_block_lr: learning rate of the generator's parameter group (``None``: the optimizer's).
        mixer_kwargs: arguments of the generator.
        **kwargs: every other :class:`~openmix.lightning.MixClassifier` argument (``pairing_scope`` must stay
            ``local``: k-source mixes are not drawn across ranks).
    """

    def __init__(
        self,
        mix_block: str | None = None,
        momentum: float = 0.999,
        momentum_end: float = 0.999999,
        momentum_hold: float = 0.1,
        momentum_bn: str = "train",
        adversarial_interval: int = 2,
        mixup_ratio: float = 0.5,
        generator_loss_weight: float = 1.0,
        clean_loss_weight: float = 1.0,
        clean_forward: str = "separate",
        mix_block_lr: float | None = None,
        mixer_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        drop_mask_loss_weight(kwargs)
        if not F_mix.is_int(adversarial_interval) or adversarial_interval < 1:
            raise ValueError(f"adversarial_interval must be a positive int, got {adversarial_interval!r}")
        if not F_mix.is_real(mixup_ratio) or not 0.0 <= mixup_ratio <= 1.0:
            raise ValueError(f"mixup_ratio must lie in [0, 1], got {mixup_ratio!r}")
        if not F_mix.is_real(generator_loss_weight) or not generator_loss_weight >= 0:
            raise ValueError(f"generator_loss_weight must be a number >= 0, got {generator_loss_weight!r}")
        super().__init__(
            mix_block=DEFAULT_GENERATOR if mix_block is None and kwargs.get("mixer") is None else mix_block,
            momentum=momentum,
            momentum_end=momentum_end,
            momentum_hold=momentum_hold,
            momentum_bn=momentum_bn,
            mask_loss_weight=0.0,
            clean_loss_weight=clean_loss_weight,
            clean_forward=clean_forward,
            mix_block_lr=mix_block_lr,
            mixer_kwargs=mixer_kwargs,
            **kwargs,
        )
        if not isinstance(self.mixer, AdAutoMix):
            raise ValueError(
                f"AdAutoMixClassifier trains AdAutoMix's generator (a mixer built on "
                f"openmix.mixers.adautomix.AdAutoMix, such as 'adautomix'), got {type(self.mixer).__name__}"
            )
        if self.hparams.pairing_scope != "local":
            raise ValueError(
                "AdAutoMixClassifier mixes k sources per image, which pairing_scope 'global' does not support: use "
                "pairing_scope 'local'"
            )
        self.generator_steps = 0  # mixed steps taken: the phase of the adversarial / cooperative alternation

    # ----- the EMA teacher --------------------------------------------------------------------------------------------
    def teacher_pass(self, x: Tensor, with_logits: bool = True) -> tuple[Tensor, Tensor | None]:
        """The teacher's intermediate features of the clean batch (float32, the generator's input) and, when
        ``with_logits``, its logits on it (the sources of the cosine similarity), without gradients: one pass
        through a timm network (``forward_intermediates`` then ``forward_head``), else a feature pass and a forward
        pass. The teacher's logits on a source ``x[j]`` are those of the batch at row j: a permutation of a batch
        leaves its batch-norm statistics unchanged, so the authors' one pass per source gives the same."""
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        network, stage = self.ema_network, self.mixer.feature_stage
        with torch.no_grad():
            images = F_mix.to_network_dtype(network, x.detach())
            if not with_logits:
                return intermediate_features(network, images, stage).float(), None
            if hasattr(network, "forward_intermediates") and hasattr(network, "forward_head"):
                final, stages = network.forward_intermediates(images, indices=[stage], stop_early=False)
                return stages[0].float(), network.forward_head(final).float()
            return intermediate_features(network, images, stage).float(), network(images).float()

    def is_adversarial_step(self) -> bool:
        """Whether the next mixed step trains the generator adversarially (the first one does)."""
        return self.generator_steps % self.hparams.adversarial_interval == 0

    # ----- the losses ---------------------------------------------------------------------------------------------
    def generator_losses(
        self,
        x: Tensor,
        y: Tensor,
        features: Tensor,
        source_logits: Tensor | None,
        adversarial: bool,
        lam: float | Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None, MixOutput]:
        """The generator's draw through the frozen teacher: returns (the generator's loss, the teacher's mixed loss,
        the cosine similarity or ``None`` without ``source_logits``, the mix). Gradients reach the generator only,
        through the masks."""
        block = self.draw(x, y, features, "block", lam)
        logits = self.ema_forward(block.x)
        teacher_loss = self.mixer.block_loss(logits, block, self.objective)
        similarity = None if source_logits is None else self.mixer.source_similarity(logits, source_logits, block)
        return self.mixer.generator_loss(teacher_loss, similarity, adversarial), teacher_loss, similarity, block

    def online_losses(self, x: Tensor, y: Tensor, features: Tensor | None = None) -> tuple[Tensor, Tensor, MixOutput]:
        """The classifier's loss on its draw (masks detached), plus ``clean_loss_weight`` times the clean term (with
        k > 2 sources ``(1 - mixup_ratio) CE(clean) + mixup_ratio CE(plain mixup of the draw's sources)``);
        returns (loss, logits of the generator's mix, that mix)."""
        features = self.teacher_pass(x, with_logits=False)[0] if features is None else features
        with torch.no_grad():
            online = self.draw(x, y, features, "classifier")
        online = replace(online, x=online.x.detach(), mask=online.mask.detach(), masks=online.masks.detach())
        clean_weight = self.hparams.clean_loss_weight
        ratio = self.hparams.mixup_ratio
        plain = None
        if clean_weight > 0 and self.mixer.num_sources > 2 and ratio > 0:
            plain = self.mixer.plain_mix(x, online)
        batches = ([x] if clean_weight > 0 else []) + ([plain.x] if plain is not None else []) + [online.x]
        if self.hparams.clean_forward == "separate" or len(batches) == 1:  # in the order of forward_q (:372-408)
            logits = [self(batch) for batch in batches]
        else:
            logits = list(self(torch.cat(batches)).split([batch.shape[0] for batch in batches]))
        mixed_logits = logits[-1]
        loss = self.objective(mixed_logits, online)
        if clean_weight > 0:
            clean = self.clean_loss(logits[0], y)
            if plain is not None:
                clean = (1 - ratio) * clean + ratio * self.objective(logits[1], plain)
            loss = loss + clean_weight * clean
        return loss, mixed_logits, online

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        self.current_momentum = self.momentum_at(self.global_step)  # the EMA update after this batch uses it
        if not self.should_mix(batch_idx):  # mix_prob / mix_off_epoch: a plain step, the generator rests
            return MixClassifier.training_step(self, batch, batch_idx)
        adversarial = self.is_adversarial_step()
        features, source_logits = self.teacher_pass(x, with_logits=adversarial)  # once per step, for both draws
        generator_loss, teacher_loss, similarity, _ = self.generator_losses(x, y, features, source_logits, adversarial)
        online_loss, mixed_logits, online = self.online_losses(x, y, features)
        loss = online_loss + self.hparams.generator_loss_weight * generator_loss
        self.generator_steps += 1
        batch_size = x.shape[0]
        self.log_train("train/loss", loss, batch_size, on_step=True)
        self.log_train("train/top1", self.mixed_accuracy(mixed_logits, online), batch_size)
        self.log_train("train/generator_loss", generator_loss, batch_size)
        self.log_train("train/teacher_loss", teacher_loss, batch_size)
        if similarity is not None:
            self.log_train("train/similarity", similarity, batch_size)
        self.log_train("train/adversarial", float(adversarial), batch_size)
        self.log_train("train/momentum", self.current_momentum, batch_size)
        self.train_lams.append(online.lam.detach())
        self._epoch_images += batch_size
        return loss

    # ----- checkpoints: the phase of the alternation ---------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[CHECKPOINT_KEY] = {"generator_steps": self.generator_steps}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.generator_steps = int(checkpoint.get(CHECKPOINT_KEY, {}).get("generator_steps", 0))
