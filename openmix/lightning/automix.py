"""AutoMixClassifier: MixClassifier with AutoMix's momentum pipeline (Liu et al., ECCV 2022), which also trains
SAMix's Mix Block (Li et al., arXiv 2111.15454): any mixer whose ``trained_by`` names this class.

Each training step, as the authors' ``AutoMixup.forward_train`` (Westlake-AI/openmixup
``openmixup/models/classifiers/automix.py:296-360``):

1. the momentum (EMA) network's features of the clean batch, computed once for both draws;
2. the *block* draw (its own lambda and partners) trains the Mix Block: the mixed batch goes through the frozen
   momentum network, and the block's loss on it plus the mask loss reach the block through the mask. The block is
   trained for every lambda, also within ``lam_margin`` of 0 or 1;
3. the *classifier* draw (a second lambda and permutation) trains the online network on the mixed batch, with the
   mask detached (plain mixup within ``lam_margin``), plus the objective on the clean batch.

Both mixed losses label the mix with the *sampled* lambda (``MixOutput.label_weights``). A batch skipped by
``mix_prob`` (or after ``mix_off_epoch``) is a plain step on the clean batch: nothing trains the Mix Block then.
With ``block_loss_prob`` < 1 the momentum network's pass of step 2 runs on that share of the mixed steps only (the
authors' ``switch_off``, "for fast training"); the block's draw and its mask loss still run on every mixed step.

After every training batch the momentum network's parameters follow the online ones with a momentum held at
``momentum`` for the first ``momentum_hold`` of the run, then on a cosine towards ``momentum_end``. Choose it in YAML
with ``model: {class_path: openmix.lightning.AutoMixClassifier, init_args: {mix_block: samix}}``; every
MixClassifier argument applies.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from openmix.lightning.distributed import gather_batches, mix_across_ranks
from openmix.lightning.module import MixClassifier
from openmix.mixers import MixOutput, get_mixer_entry
from openmix.mixers import functional as F_mix
from openmix.mixers.automix import AutoMix, intermediate_features

DEFAULT_MIX_BLOCK = "automix"
CLEAN_FORWARDS = ("separate", "joint")
BLOCK_LOSS_STREAM = 0xB10C  # the last entropy entry of the block_loss_prob draws


def resolve_mix_block(mix_block: str | None, kwargs: dict[str, Any]) -> str:
    """The registered name of the Mix Block to train: ``mix_block``, else a ``mixer`` in ``kwargs`` (a checkpoint's
    hparams repeat it; it is removed from ``kwargs``), else ``"automix"``. Both given must agree."""
    mixer = kwargs.pop("mixer", None)
    for name, value in (("mix_block", mix_block), ("mixer", mixer)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be the registered name of a Mix Block, got {type(value).__name__}")
    if mix_block is not None and mixer is not None and mix_block != mixer:
        raise ValueError(f"mix_block {mix_block!r} and mixer {mixer!r} disagree: give one of them")
    return mix_block or mixer or DEFAULT_MIX_BLOCK


class AutoMixClassifier(MixClassifier):
    """MixClassifier trained with a learned Mix Block and a momentum network.

    Args:
        mix_block: the registered name of the Mix Block to train (``"automix"``, ``"samix"``: a mixer whose
            ``trained_by`` names this class); ``None``: ``"automix"``. Configure it with ``mixer_kwargs``. The
            class takes no ``mixer`` of its own (``mixer=`` is accepted as the same name, as checkpoints store it);
            keeping ``mixer`` out of the signature keeps ``--model openmix.lightning.AutoMixClassifier`` from
            inheriting ``MixClassifier``'s default mixer, which jsonargparse carries over when the class changes.
        momentum: EMA momentum at the start of training.
        momentum_end: EMA momentum at the end (cosine schedule in between).
        momentum_hold: share of the run's steps during which the momentum stays at ``momentum`` before the
            cosine takes over (the authors' ``CosineScheduleHook(adjust_scope=[0.1, 1.0], warming_up="constant")``;
            the cosine keeps its phase: step k > hold uses cos(pi k / total)).
        momentum_bn: batch norm of the momentum network: ``"train"`` (batch statistics in its forward passes, its
            own running statistics; as the authors run it: ``backbone_k`` is in the model's train mode and
            ``momentum_update`` moves parameters only) or ``"eval"`` (the online network's running statistics,
            copied after every step).
        mask_loss_weight: weight of the Mix Block's mask loss.
        clean_loss_weight: weight of the objective on the clean batch for the online network (0 skips its forward
            pass). It replaces objectives that take the clean batch themselves (``regmixup``), which are refused.
        clean_forward: ``"separate"`` (the authors': the clean batch and the mixed one go through the online
            network one after the other, so batch norm normalises each with its own statistics) or ``"joint"``
            (one forward pass of both, batch norm sees them together).
        block_loss_prob: probability that a mixed step trains the Mix Block through the momentum network (its
            block loss: a forward pass of the block's mix and a backward pass to the mask, about 0.7x a mixup step
            on a CNN); on the other mixed steps the block learns from its mask loss alone. 1.0 (default): every
            step, as the paper. The authors' ``switch_off`` (automix.py:58-59, :438-443, with their
            ``cos_annealing`` left at 1); their ImageNet configs for transformers use 0.8. The draw is the same on
            every rank (from the seed, the epoch and the batch index), so data-parallel ranks skip together.
        mix_block_lr: learning rate of the Mix Block's parameter group (``None``: the optimizer's).
        mixer_kwargs: arguments of the Mix Block (e.g. ``{alpha: 2.0}``).
        **kwargs: every other :class:`~openmix.lightning.MixClassifier` argument.
    """

    def __init__(
        self,
        mix_block: str | None = None,
        momentum: float = 0.999,
        momentum_end: float = 0.999999,
        momentum_hold: float = 0.1,
        momentum_bn: str = "train",
        mask_loss_weight: float = 0.1,
        clean_loss_weight: float = 1.0,
        clean_forward: str = "separate",
        block_loss_prob: float = 1.0,
        mix_block_lr: float | None = None,
        mixer_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        name = resolve_mix_block(mix_block, kwargs)
        entry = get_mixer_entry(name)
        if not (isinstance(entry.cls, type) and issubclass(entry.cls, AutoMix)):
            raise ValueError(
                f"AutoMixClassifier trains a Mix Block (a mixer built on openmix.mixers.automix.AutoMix, such as "
                f"'automix' or 'samix'), got {name!r}"
            )
        super().__init__(mixer=name, mixer_kwargs=mixer_kwargs, **kwargs)
        if not 0.0 <= momentum <= momentum_end <= 1.0:
            raise ValueError(f"need 0 <= momentum <= momentum_end <= 1, got {momentum} and {momentum_end}")
        if not 0.0 <= momentum_hold < 1.0:
            raise ValueError(f"momentum_hold must lie in [0, 1), got {momentum_hold}")
        if mask_loss_weight < 0 or clean_loss_weight < 0:
            raise ValueError("mask_loss_weight and clean_loss_weight must be >= 0")
        if momentum_bn not in ("train", "eval"):
            raise ValueError(f"momentum_bn must be 'train' or 'eval', got {momentum_bn!r}")
        if clean_forward not in CLEAN_FORWARDS:
            raise ValueError(f"clean_forward must be one of {CLEAN_FORWARDS}, got {clean_forward!r}")
        if not F_mix.is_real(block_loss_prob):
            raise TypeError(f"block_loss_prob must be a number in [0, 1], got {type(block_loss_prob).__name__}")
        block_loss_prob = float(block_loss_prob)
        if not 0.0 <= block_loss_prob <= 1.0:
            raise ValueError(f"block_loss_prob must lie in [0, 1], got {block_loss_prob}")
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

    # ----- the momentum network -------------------------------------------------------------------------------------
    def ema_forward(self, x: Tensor) -> Tensor:
        """The momentum network's logits (in the memory format the online network runs in)."""
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.ema_network(x)

    def batch_features(self, x: Tensor) -> Tensor:
        """The momentum network's features of the batch, computed once per step for both draws."""
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.mixer.features(x, self.ema_network)

    # ----- the two draws --------------------------------------------------------------------------------------------
    def pairs_across_ranks(self) -> bool:
        return self.hparams.pairing_scope == "global" and dist.is_available() and dist.is_initialized()

    def mixing_features(self, features: Tensor) -> Tensor:
        """The features the Mix Block mixes from: this rank's, or, when partners are drawn across ranks, every
        rank's in rank order (the global batch ``mix_across_ranks`` hands the mixer)."""
        if self.pairs_across_ranks() and dist.get_world_size() > 1:
            return gather_batches(features.contiguous())[0]
        return features

    def draw(self, x: Tensor, y: Tensor, features: Tensor, draw: str, lam: float | Tensor | None = None) -> MixOutput:
        """One draw of the Mix Block (``"block"`` or ``"classifier"``) on this rank's batch; ``features`` as
        :meth:`mixing_features` returns them. Under ``pairing_scope: global`` the partners come from every rank."""
        context: dict[str, Any] = {"features": features, "draw": draw}
        if lam is not None:
            context["lam"] = lam
        scope = self.hparams.pairing_scope
        return mix_across_ranks(self.mixer, x, y, self.mixing_generator, scope, **context)

    # ----- the losses ---------------------------------------------------------------------------------------------
    def block_losses(
        self,
        x: Tensor,
        y: Tensor,
        features: Tensor | None = None,
        lam: float | Tensor | None = None,
        with_block_loss: bool = True,
    ) -> tuple[Tensor | None, Tensor, MixOutput]:
        """The Mix Block's loss on its own draw through the momentum network (targets weighted by the sampled
        lambda), and its mask loss; gradients reach the block through the mask only (the momentum network is
        frozen). ``features``: :meth:`mixing_features` of the batch (computed here when ``None``). With
        ``with_block_loss=False`` the momentum network's pass is skipped and the block loss is ``None``."""
        features = self.mixing_features(self.batch_features(x)) if features is None else features
        block = self.draw(x, y, features, "block", lam)
        block_loss = None
        if with_block_loss:
            block_loss = self.mixer.block_loss(self.ema_forward(block.x), block, self.objective)
        return block_loss, self.mixer.mask_loss(block.mask, block.target_lam), block

    def trains_block_loss(self, batch_idx: int) -> bool:
        """Whether this mixed step runs the block loss (``block_loss_prob``): a uniform draw from (seed, epoch,
        batch index), without the rank, below ``block_loss_prob``; no draw at 0 or 1."""
        prob = self.hparams.block_loss_prob
        if prob >= 1.0 or prob <= 0.0:
            return prob >= 1.0
        # the mixing streams use (seed, epoch, batch, rank); a fifth entry gives this one a stream of its own
        entropy = [int(self.hparams.seed), int(self.current_epoch), int(batch_idx), 0, BLOCK_LOSS_STREAM]
        return bool(np.random.default_rng(np.random.SeedSequence(entropy)).random() < prob)

    def clean_loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """The objective on the unmixed batch (softmax CE, BCE, ... as configured, with its label smoothing)."""
        return self.objective(logits, MixOutput.identity(logits, y))

    def online_losses(self, x: Tensor, y: Tensor, features: Tensor | None = None) -> tuple[Tensor, Tensor, MixOutput]:
        """The online network's mixed loss on the classifier's draw with the mask detached, plus the clean one-hot
        loss; returns (loss, mixed logits, mix)."""
        features = self.mixing_features(self.batch_features(x)) if features is None else features
        with torch.no_grad():
            online = self.draw(x, y, features, "classifier")
        online = replace(online, x=online.x.detach(), mask=None if online.mask is None else online.mask.detach())
        clean_weight = self.hparams.clean_loss_weight
        if clean_weight <= 0:
            mixed_logits, clean_logits = self(online.x), None
        elif self.hparams.clean_forward == "separate":  # the clean batch first, as forward_q (automix.py:408, :422)
            clean_logits = self(x)
            mixed_logits = self(online.x)
        else:
            clean_logits, mixed_logits = self(torch.cat([x, online.x])).split([x.shape[0], online.x.shape[0]])
        loss = self.objective(mixed_logits, online)
        if clean_logits is not None:
            loss = loss + clean_weight * self.clean_loss(clean_logits, y)
        return loss, mixed_logits, online

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        self.current_momentum = self.momentum_at(self.global_step)  # the EMA update after this batch uses it
        if not self.should_mix(batch_idx):  # mix_prob / mix_off_epoch: the parent's step, which draws the same
            return super().training_step(batch, batch_idx)  # decision again and trains on the clean batch
        features = self.mixing_features(self.batch_features(x))  # once per step, for both draws
        with_block_loss = self.trains_block_loss(batch_idx)
        block_loss, mask_loss, _ = self.block_losses(x, y, features, with_block_loss=with_block_loss)  # 1. the block
        online_loss, mixed_logits, online = self.online_losses(x, y, features)  # 2. trains the online network
        loss = online_loss + self.hparams.mask_loss_weight * mask_loss
        if block_loss is not None:
            loss = loss + block_loss
        batch_size = x.shape[0]
        self.log_train("train/loss", loss, batch_size, on_step=True)
        self.log_train("train/top1", self.mixed_accuracy(mixed_logits, online), batch_size)
        self.log_train("train/mask_loss", mask_loss, batch_size)
        if block_loss is not None:  # the epoch mean is over the steps that ran it
            self.log_train("train/block_loss", block_loss, batch_size)
        self.log_train("train/momentum", self.current_momentum, batch_size)
        self.train_lams.append(online.lam.detach())
        self._epoch_images += batch_size
        return loss

    # ----- optimisation and the momentum update --------------------------------------------------------------------
    def parameter_groups(self) -> list[dict[str, Any]]:
        """The network's parameters, and the Mix Block's as their own group (with ``mix_block_lr`` if set)."""
        block = {"params": list(self.mixer.parameters())}
        if self.hparams.mix_block_lr is not None:
            block["lr"] = self.hparams.mix_block_lr
        return [{"params": [p for p in self.network.parameters() if p.requires_grad]}, block]

    def momentum_at(self, step: int) -> float:
        """The momentum of training step ``step`` (0-based) of ``total``: ``momentum`` while step < momentum_hold *
        total, then ``end - (end - start) (cos(pi step / total) + 1) / 2`` (classifiers' CosineScheduleHook,
        core/hooks/momentum_hook.py:235-265)."""
        start, end = self.hparams.momentum, self.hparams.momentum_end
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer else 1
        if step < int(total * self.hparams.momentum_hold):
            return start
        progress = min(1.0, step / total)
        return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2

    @torch.no_grad()
    def update_ema(self, momentum: float) -> None:
        """ema = momentum * ema + (1 - momentum) * online for parameters; with ``momentum_bn="eval"`` the buffers
        (BN statistics) are copied, with ``"train"`` the momentum network keeps its own."""
        ema_params = list(self.ema_network.parameters())
        online_params = [p.detach() for p in self.network.parameters()]
        if all(p.dtype in (torch.float32, torch.float64) for p in ema_params):
            # the multi-tensor kernels (as timm's ModelEmaV3): a few launches on CUDA instead of two per tensor
            torch._foreach_mul_(ema_params, momentum)
            torch._foreach_add_(ema_params, online_params, alpha=1 - momentum)
        else:  # half-precision weights: _foreach_mul_ would round the momentum to their dtype first
            for ema, online in zip(ema_params, online_params):
                ema.mul_(momentum).add_(online, alpha=1 - momentum)
        if self.hparams.momentum_bn == "eval":
            for ema, online in zip(self.ema_network.buffers(), self.network.buffers()):
                ema.copy_(online)

    def on_train_start(self) -> None:
        super().on_train_start()
        self.current_momentum = self.momentum_at(self.global_step)  # a resumed run continues the schedule

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.update_ema(self.current_momentum)  # the momentum of the step just taken (set in training_step)
