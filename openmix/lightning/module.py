"""MixClassifier: a timm backbone trained with any openmix mixer and objective, as a LightningModule.

Every component is a typed ``__init__`` argument, so LightningCLI builds a checked YAML config for it, prints the
defaults with ``--print_config`` and saves the resolved config of each run. The mixer and the objective are typed
components (``mixer: {class_path: openmix.mixers.CutMix, init_args: {alpha: 1.0}}``) or registered short names.

The training step is a short recipe over the four hook points of the mixing protocol (DESIGN.md): ``inputs``
(mix the images), ``features`` (mix a hidden state at the stage the mixer draws), ``targets`` (re-weight the labels
from what the network saw) and ``loss`` (a learned mixer's own loss). What a mixer needs (``mixer.requires``) comes
from :class:`~openmix.lightning.services.StepServices`, so no code here depends on which method is used.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import resource
import sys
import time
import warnings
from typing import Any

import lightning as L
import numpy as np
import timm
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

from openmix import losses
from openmix.data.readers import check_seed
from openmix.evaluation import RELIABILITY_BINS, Evaluation, Evaluator, data_normalisation, is_detail
from openmix.lightning.distributed import PAIRING_SCOPES, mix_across_ranks
from openmix.lightning.optim import SGD, WarmupCosineLR
from openmix.lightning.services import (
    AFTER_FORWARD,
    RECORDERS,
    StepServices,
    check_services,
    check_stages,
    stage_hook,
)
from openmix.mixers import Mixer, MixOutput, create_mixer
from openmix.mixers import functional as F_mix

OBJECTIVES = {
    "ce": losses.SoftTargetCrossEntropy,
    "bce": losses.MixedBinaryCrossEntropy,
    "regmixup": losses.RegMixupLoss,
    "decoupled": losses.DecoupledMixupLoss,
}


def build_mixer(mixer: Mixer | str | None, mixer_kwargs: dict[str, Any] | None = None) -> Mixer | None:
    """The mixer component: a built :class:`~openmix.Mixer`, a registered name built with ``mixer_kwargs`` (the
    short form), or ``None``. ``mixer_kwargs`` with a built mixer is refused (its arguments are its own)."""
    if mixer is None:
        if mixer_kwargs:
            raise ValueError(f"mixer_kwargs {sorted(mixer_kwargs)} given without a mixer")
        return None
    if isinstance(mixer, str):
        return create_mixer(mixer, **(mixer_kwargs or {}))
    if not isinstance(mixer, Mixer):
        raise TypeError(f"mixer must be an openmix Mixer, a registered mixer name or None, got {type(mixer).__name__}")
    if mixer_kwargs:
        raise ValueError(
            f"mixer_kwargs {sorted(mixer_kwargs)} given with a built {type(mixer).__name__}: put its arguments in "
            "its init_args"
        )
    return mixer


def build_objective(
    objective: losses.Objective | str, objective_kwargs: dict[str, Any] | None, smoothing: float
) -> losses.Objective:
    """The objective component: a built :class:`~openmix.losses.Objective`, or a short name (``OBJECTIVES``) built
    with ``objective_kwargs`` and ``smoothing``."""
    if isinstance(objective, str):
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {sorted(OBJECTIVES)} or an Objective, got {objective!r}")
        return OBJECTIVES[objective](smoothing=smoothing, **(objective_kwargs or {}))
    if not isinstance(objective, losses.Objective):
        raise TypeError(f"objective must be an openmix.losses.Objective or a name, got {type(objective).__name__}")
    if objective_kwargs:
        raise ValueError(f"objective_kwargs {sorted(objective_kwargs)} given with a built {type(objective).__name__}")
    if smoothing and getattr(objective, "smoothing", 0.0) != smoothing:
        raise ValueError(
            f"label_smoothing={smoothing} given with a built {type(objective).__name__}: set its own smoothing"
        )
    return objective


def build_backbone(
    name: str, num_classes: int, in_chans: int = 3, pretrained: bool = False, cifar_stem: bool = False, **kwargs: Any
) -> nn.Module:
    """A timm model; ``cifar_stem`` makes its first conv 3x3 stride 1 and drops the stem's max-pool (28-32 px)."""
    model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs)
    if cifar_stem:
        apply_cifar_stem(model)
    return model


def apply_cifar_stem(model: nn.Module) -> None:
    """Replace the first convolution by a 3x3 stride-1 one and the first max-pool by the identity, in place."""
    conv_name = next((name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if conv_name is None:
        raise ValueError("cifar_stem needs a convolutional backbone (no nn.Conv2d found)")
    first = model.get_submodule(conv_name)
    stem = nn.Conv2d(first.in_channels, first.out_channels, 3, stride=1, padding=1, bias=first.bias is not None)
    _replace(model, conv_name, stem)
    pool_name = next((name for name, m in model.named_modules() if isinstance(m, nn.MaxPool2d)), None)
    if pool_name is not None:
        _replace(model, pool_name, nn.Identity())


def _replace(model: nn.Module, dotted: str, module: nn.Module) -> None:
    parent, _, child = dotted.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def import_class(path: str) -> type:
    """The class a dotted path names (a mixer's ``trained_by``), else a ``ValueError`` naming the path."""
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"trained_by names {path!r}, which is not an importable class") from None


def names_on_every_rank(names: list[str]) -> list[str]:
    """The training values to reduce at the end of an epoch, the same list in the same order on every rank: the
    union of every rank's ``names`` in sorted order under ``torch.distributed`` (a value logged on some steps only,
    such as AutoMix's ``train/block_loss``, may be missing on a rank, or first seen in another order), ``names`` as
    they are in a single process. One ``all_gather_object`` of the names per epoch."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return names
    if torch.distributed.get_world_size() == 1:
        return names
    gathered: list[list[str] | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, names)
    return sorted({name for rank_names in gathered for name in rank_names or []})


class MixClassifier(L.LightningModule):
    """Image classifier trained on mixed batches.

    Args:
        backbone: timm model name.
        num_classes: number of classes.
        in_chans: input channels (1 for Fashion-MNIST).
        pretrained: load timm's pretrained weights (downloads; off by default).
        cifar_stem: 3x3 stride-1 first conv and no stem max-pool, for 28-32 px inputs.
        backbone_kwargs: more keyword arguments of ``timm.create_model`` (e.g. ``channels`` of a ResNet).
        mixer: the mixer: a :class:`~openmix.Mixer` (in a config ``{class_path: openmix.mixers.CutMix, init_args:
            {alpha: 1.0}}``, checked when the config is parsed), a registered name (``openmix list``) built with its
            paper defaults, or ``None`` for no mixing. A mixer that needs what the backbone cannot give (class
            activation maps, class-token attention, enough feature stages) is refused here.
        mixer_kwargs: constructor arguments for a mixer given by name (the short form; not with a built mixer).
        mix_prob: probability that a training batch is mixed.
        mix_off_epoch: from this epoch on, batches are no longer mixed (``None``: never stop).
        objective: an :class:`~openmix.losses.Objective` (``{class_path: openmix.losses.RegMixupLoss, init_args:
            {eta: 1.0}}``), or a name: ``ce`` (mixed soft-target cross entropy), ``bce``, ``regmixup``, ``decoupled``.
        objective_kwargs: its arguments when given by name (``eta``, ``target_threshold``, ...).
        label_smoothing: smoothing of each one-hot target before mixing (for an objective given by name).
        optimizer: optimizer factory (default SGD lr 0.1, momentum 0.9, weight decay 5e-4).
        scheduler: learning-rate scheduler factory, stepped every step (default warm-up + cosine).
        channels_last: run the network in channels-last memory format.
        pairing_scope: ``local`` (each rank mixes its own batch) or ``global`` (partners drawn across all ranks).
        seed: seed of the mixing RNG, an int in [0, 2**63 - 1]; every training batch reseeds it from (seed, epoch,
            batch index), so each batch (each batch of a gradient-accumulation window too) gets its own draws, and a
            resumed run mixes the same way.
        evaluation: what ``test`` and ``validate`` measure beyond top-1 / top-5 / NLL / ECE (an
            :class:`~openmix.evaluation.Evaluation`: corruption accuracy, OOD detection, reliability bins; by default
            not in ``fit``'s validation epochs), or ``None`` for none of it.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        num_classes: int = 10,
        in_chans: int = 3,
        pretrained: bool = False,
        cifar_stem: bool = False,
        backbone_kwargs: dict[str, Any] | None = None,
        mixer: Mixer | str | None = "mixup",
        mixer_kwargs: dict[str, Any] | None = None,
        mix_prob: float = 1.0,
        mix_off_epoch: int | None = None,
        objective: losses.Objective | str = "ce",
        objective_kwargs: dict[str, Any] | None = None,
        label_smoothing: float = 0.0,
        optimizer: OptimizerCallable = SGD,
        scheduler: LRSchedulerCallable = WarmupCosineLR,
        channels_last: bool = False,
        pairing_scope: str = "local",
        seed: int = 0,
        evaluation: Evaluation | None = Evaluation(),  # noqa: B008 (frozen: one shared default is safe)
    ):
        super().__init__()
        # A config's class_path form of the mixer / objective is what LightningCLI hands save_hyperparameters, so
        # load_from_checkpoint rebuilds them; a component built in Python is pickled into the checkpoint's hparams
        # (load it with weights_only=False). Lightning's advice to leave modules out would lose the mixer.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*is an instance of `nn.Module` and is already saved")
            # evaluation: how a checkpoint is evaluated, not what it learned; left out of the checkpoint, so that
            # `openmix test --ckpt_path ...` takes it from its own config and command line (LightningCLI lets a
            # checkpoint's hyperparameters override both)
            self.save_hyperparameters(ignore=["evaluation"])
        if not 0.0 <= mix_prob <= 1.0:
            raise ValueError(f"mix_prob must lie in [0, 1], got {mix_prob}")
        if pairing_scope not in PAIRING_SCOPES:
            raise ValueError(f"pairing_scope must be one of {PAIRING_SCOPES}, got {pairing_scope!r}")
        check_seed(seed)  # at construction, not at the first step's reseed
        self.network = build_backbone(
            backbone, num_classes, in_chans, pretrained, cifar_stem, **(backbone_kwargs or {})
        )
        if channels_last:  # weights too: a channels-last input meeting contiguous weights costs reorders
            self.network = self.network.to(memory_format=torch.channels_last)
        self.mixer = build_mixer(mixer, mixer_kwargs)
        trained_by = getattr(self.mixer, "trained_by", None)
        if trained_by is not None and not isinstance(self, import_class(trained_by)):
            raise ValueError(f"mixer {mixer!r} is learned during training: use the model class {trained_by}")
        self.objective = build_objective(objective, objective_kwargs, label_smoothing)
        self.feature_stages = self.check_mixer_needs()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.mixing_generator = torch.Generator()
        top_k = min(5, num_classes)
        self.val_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_top5 = MulticlassAccuracy(num_classes, top_k=top_k, average="micro")
        self.val_nll = MeanMetric()
        self.val_ece = MulticlassCalibrationError(num_classes, n_bins=RELIABILITY_BINS, norm="l1")
        self.evaluator = self.build_evaluator(evaluation, num_classes)
        self._evaluating = False  # whether the current evaluation epoch runs the evaluator
        self.train_lams: list[Tensor] = []
        self._epoch_images = 0
        self._epoch_start = 0.0
        self._validation_seconds = 0.0  # validation inside the current training epoch, left out of images/s
        self._validation_start: float | None = None
        self._epoch_sums: dict[str, tuple[Tensor | float, int]] = {}  # name -> (weighted sum, count) this epoch
        self._wall_time_before = 0.0  # training time of the run's earlier segments (restored from a checkpoint)
        self._segment_start: float | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.network(x)

    # ----- mixing: what the mixer needs, and the hook points ------------------------------------------------------
    def check_mixer_needs(self) -> list[str]:
        """Refuse, at construction, a mixer whose needs this module or its backbone cannot give; returns the
        backbone's feature stages (module names) that the ``features`` hook may mix at."""
        if self.mixer is None:
            return []
        owner = f"mixer {type(self.mixer).__name__}"
        if "momentum_model" in self.mixer.requires and self.momentum_network() is None:
            raise ValueError(f"{owner} needs a momentum network, which {type(self).__name__} does not keep")
        check_services(self.network, self.mixer.requires, owner)
        self.mixer.check_network(self.network)
        if "features" not in self.mixer.hooks:
            return []
        if getattr(self.mixer, "inplace", False):
            raise ValueError(f"{owner} mixes hidden states, which are mixed out of place: build it with inplace=False")
        if self.hparams.pairing_scope != "local":
            raise ValueError(f"{owner} mixes hidden states, which pairing_scope 'global' does not support")
        return check_stages(self.network, self.mixer.max_stage(), owner)

    def momentum_network(self) -> nn.Module | None:
        """The momentum copy of the network, for trainers that keep one (``momentum_model``); none here."""
        return None

    def step_services(self, x: Tensor, y: Tensor) -> StepServices:
        """What the mixer may ask for in this step (each computed once, on demand)."""
        return StepServices(self.network, x, y, momentum_model=self.momentum_network())

    def mixer_context(self, services: StepServices) -> dict[str, Any]:
        """The needs the mixer takes before the forward pass, from the step's services (or the services themselves,
        for a mixer that asks for its needs once it knows them: ``takes_services``)."""
        return services.mixer_inputs(self.mixer)

    def mixing_active(self) -> bool:
        off_epoch = self.hparams.mix_off_epoch
        return self.mixer is not None and (off_epoch is None or self.current_epoch < off_epoch)

    def reseed_mixing(self, batch_idx: int) -> None:
        """Reseed the mixing RNG from (seed, epoch, batch index), and the rank unless partners are drawn across
        ranks. Every training batch gets its own stream (optimizer steps would repeat draws within a
        gradient-accumulation window), and a resumed run, which restores epoch and batch index, mixes exactly as an
        uninterrupted one."""
        rank = 0 if self.hparams.pairing_scope == "global" else self.global_rank
        # SeedSequence mixes any non-negative ints (the seed up to 2**63 - 1) into one 64-bit state, which
        # torch's manual_seed takes whole (it accepts up to 2**64 - 1)
        entropy = [int(self.hparams.seed), int(self.current_epoch), int(batch_idx), int(rank)]
        self.mixing_generator.manual_seed(int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]))

    def should_mix(self, batch_idx: int) -> bool:
        """Reseed the mixing RNG for this batch and draw whether it is mixed (``mix_prob``, ``mix_off_epoch``)."""
        self.reseed_mixing(batch_idx)
        # drawn even when off; the generator is a CPU one, read through NumPy: no device is waited for
        draw = float(F_mix.host_values(torch.rand((), generator=self.mixing_generator)))
        return self.mixing_active() and draw < self.hparams.mix_prob

    @property
    def needs_clean_batch(self) -> bool:
        """Whether the step reads the clean batch after mixing it (then an in-place mixer works on a copy)."""
        return bool(self.objective.uses_clean_batch)

    def mix(self, x: Tensor, y: Tensor, batch_idx: int = 0, services: StepServices | None = None) -> MixOutput:
        """Hook ``inputs``: mix a training batch, or return it unmixed (lam = 1) when mixing is off or skipped for
        this batch.

        ``x`` itself is never overwritten when the step needs the clean batch afterwards, even by a mixer built with
        ``inplace=True`` (it then mixes a copy)."""
        if not self.should_mix(batch_idx):
            return MixOutput.identity(x, y)
        return self.mix_inputs(x, y, services or self.step_services(x, y))

    def mix_inputs(self, x: Tensor, y: Tensor, services: StepServices) -> MixOutput:
        context = self.mixer_context(services)  # saliency, CAMs ...: computed on the clean batch, before mixing
        if self.needs_clean_batch and getattr(self.mixer, "inplace", False):
            x = x.clone()
        return mix_across_ranks(self.mixer, x, y, self.mixing_generator, self.hparams.pairing_scope, **context)

    def forward_batches(self, x: Tensor, mixed: Tensor, with_clean: bool) -> tuple[Tensor, Tensor | None]:
        """Logits of the mixed batch, and of the clean one when ``with_clean``: then both go through the network
        together (RegMixup's recipe: one forward, batch norm sees both)."""
        if not with_clean:
            return self(mixed), None
        clean_logits, logits = self(torch.cat([x, mixed])).split([x.shape[0], mixed.shape[0]])
        return logits, clean_logits

    def forward_mixed(
        self, x: Tensor, y: Tensor, services: StepServices, with_clean: bool = False
    ) -> tuple[Tensor, Tensor | None, MixOutput]:
        """Hooks ``inputs`` and ``features``: the logits of the mixed batch (and of the clean one when
        ``with_clean``) and its :class:`MixOutput`. A feature-level mixer draws its stage; stage 0 mixes the input,
        stage k the output of the k-th feature stage (replaced during this forward pass by the mixed hidden state;
        with the clean batch alongside, only the mixed half is mixed)."""
        stage = 0
        if "features" in self.mixer.hooks:
            stage = self.mixer.draw_stage(len(self.feature_stages), self.mixing_generator)
        if stage == 0:
            mix = self.mix_inputs(x, y, services)
            return (*self.forward_batches(x, mix.x, with_clean), mix)
        mixed: list[MixOutput] = []
        context = self.mixer_context(services)
        clean_count = x.shape[0] if with_clean else 0

        def mix_hidden(hidden: Tensor) -> Tensor:
            clean, hidden = hidden.split([clean_count, hidden.shape[0] - clean_count])
            mixed.append(self.mixer(hidden, y, generator=self.mixing_generator, **context))
            return torch.cat([clean, mixed[-1].x]) if with_clean else mixed[-1].x

        with stage_hook(self.network, self.feature_stages[stage - 1], mix_hidden):
            logits, clean_logits = self.forward_batches(x, x, with_clean)
        return logits, clean_logits, mixed[0]

    def forward_recorders(self, hooks: tuple[str, ...]) -> dict[str, Any]:
        """The recorders of the needs the mixer reads from the step's forward pass (``AFTER_FORWARD``: attention,
        embedding), when a hook after the forward pass (``targets``, ``loss``) will use them."""
        if not ({"targets", "loss"} & set(hooks)):
            return {}
        return {need: RECORDERS[need](self.network) for need in self.mixer.requires if need in AFTER_FORWARD}

    def refine_targets(self, mix: MixOutput, services: StepServices) -> MixOutput:
        """Hook ``targets``: the mixer re-weights the labels from what the network saw (attention, ...); it gets
        its needs known by then (recorded during the forward pass, or computed for its call: the network, ...)."""
        return self.mixer.refine_targets(mix, **services.after_forward(self.mixer.requires))

    # ----- steps --------------------------------------------------------------------------------------------------
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        services = self.step_services(x, y)
        mixing = self.should_mix(batch_idx)
        hooks = self.mixer.hooks if mixing else ()
        recorders = self.forward_recorders(hooks)  # what the mixer reads from the forward pass, recorded if used
        with_clean = self.objective.uses_clean_batch  # RegMixup: the clean batch's loss too
        with contextlib.ExitStack() as stack:  # 1-2. inputs / features: the mixed batch through the network
            for recorder in recorders.values():
                stack.enter_context(recorder)
            if mixing:
                logits, clean_logits, mix = self.forward_mixed(x, y, services, with_clean)
            else:
                mix = MixOutput.identity(x, y)
                logits, clean_logits = self.forward_batches(x, x, with_clean)
        for need, recorder in recorders.items():
            services.record(need, recorder.mixed_part(x.shape[0]))
        if "targets" in hooks:  # 3. targets: labels re-weighted from what the network saw
            mix = self.refine_targets(mix, services)
        loss = self.objective(logits, mix, clean_logits) if with_clean else self.objective(logits, mix)
        if "loss" in hooks:  # 4. the mixer's own loss (learned mixers)
            loss = loss + self.mixer.own_loss(mix, **services.provide(self.mixer.requires))
        self.log_step(loss, logits, mix, x.shape[0])
        return loss

    def log_step(self, loss: Tensor, logits: Tensor, mix: MixOutput, batch_size: int) -> None:
        """The step's loss, mixed accuracy and lambdas for the logs and the epoch summary."""
        self.log_train("train/loss", loss, batch_size, on_step=True)
        self.log_train("train/top1", self.mixed_accuracy(logits, mix), batch_size)
        self.train_lams.append(mix.lam.detach())  # kept where it is: read once at the epoch's end
        self._epoch_images += batch_size

    @staticmethod
    def mixed_accuracy(logits: Tensor, mix: MixOutput) -> Tensor:
        """Top-1 against every source's label, weighted by the label weights normalised per row (class ids; soft
        labels use their arg-max)."""
        prediction = logits.argmax(dim=-1)
        weights = mix.label_weight_matrix()
        weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1e-12)
        hits = torch.zeros_like(weights[:, 0])
        for column, labels in enumerate(mix.source_labels()):
            labels = labels if labels.dim() == 1 else labels.argmax(dim=-1)
            hits = hits + weights[:, column] * (prediction == labels).float()
        return hits.mean()

    def evaluate(self, batch: tuple[Tensor, Tensor], stage: str, batch_idx: int = 0) -> None:
        x, y = batch
        logits = self(x).float()
        self.val_top1.update(logits, y)
        self.val_top5.update(logits, y)
        self.val_nll.update(F.cross_entropy(logits, y, reduction="none"))
        self.val_ece.update(logits.softmax(dim=-1), y)
        metrics = {"top1": self.val_top1, "top5": self.val_top5, "nll": self.val_nll, "ece": self.val_ece}
        for name, metric in metrics.items():
            self.log(f"{stage}/{name}", metric, on_epoch=True, prog_bar=name == "top1", batch_size=x.shape[0])
        if self._evaluating:  # corrupted copies of the batch, OOD scores, reliability bins
            self.evaluator.update(self, x, y, logits, batch_idx, self.global_rank)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.evaluate(batch, "val", batch_idx)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.evaluate(batch, "test", batch_idx)

    # ----- evaluation beyond top-1 (openmix.evaluation) ---------------------------------------------------------
    @staticmethod
    def build_evaluator(evaluation: Evaluation | dict | None, num_classes: int) -> Evaluator | None:
        """The evaluator of ``evaluation`` (an :class:`~openmix.evaluation.Evaluation`, or its fields as a dict)."""
        if evaluation is None:
            return None
        if isinstance(evaluation, dict):
            evaluation = Evaluation(**evaluation)
        if not isinstance(evaluation, Evaluation):
            raise TypeError(
                f"evaluation must be an openmix.evaluation.Evaluation or None, got {type(evaluation).__name__}"
            )
        return Evaluator(evaluation, num_classes)

    def evaluation_runs(self) -> bool:
        """Whether this evaluation epoch runs the evaluator: in ``test`` and ``validate``, in ``fit``'s validation only
        with ``evaluation.during_fit``, never in the sanity check."""
        if self.evaluator is None or self._trainer is None or self.trainer.sanity_checking:
            return False
        return self.trainer.state.fn != "fit" or self.evaluator.config.during_fit

    def begin_evaluation(self) -> None:
        self._evaluating = self.evaluation_runs()
        if self._evaluating:
            config = self.evaluator.config
            normalisation = (config.mean, config.std) if config.mean else data_normalisation(self.trainer.datamodule)
            self.evaluator.begin(*normalisation)

    def end_evaluation(self, stage: str) -> None:
        """Score the OOD set and log the evaluator's values as ``<stage>/<name>`` (already reduced over ranks): the
        headline values through ``self.log``, the details (:func:`~openmix.evaluation.is_detail`) straight to the
        loggers, so that the printed results stay short."""
        if not self._evaluating:
            return
        self._evaluating = False
        precision = self.trainer.precision_plugin

        def forward(images: Tensor) -> Tensor:  # as in a test step: the run's precision (autocast, bf16 ...)
            with precision.forward_context():
                return self(precision.convert_input(images))

        with torch.no_grad():
            results = self.evaluator.compute(forward, self.device, self.global_rank, self.trainer.world_size)
        self.evaluator.reset()
        details = {f"{stage}/{name}": value for name, value in results.items() if is_detail(name)}
        for name, value in results.items():  # the headline values: also in the results Lightning prints
            if not is_detail(name):
                self.log(f"{stage}/{name}", value, on_epoch=True, sync_dist=False)
        for logger in self.loggers if details else ():  # per-severity accuracies, reliability bins: logs only
            logger.log_metrics({**details, "epoch": self.current_epoch}, step=self.global_step)  # (rank 0)

    def on_test_epoch_start(self) -> None:
        self.begin_evaluation()

    def on_test_epoch_end(self) -> None:
        self.end_evaluation("test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).softmax(dim=-1)

    # ----- run bookkeeping: resumable logs, wall time, memory ------------------------------------------------
    def on_train_start(self) -> None:
        # Training starts (or resumes) at current_epoch: rows a killed run logged for this epoch or later are
        # repeated exactly by this run, so loggers that can drop them do (RunLogger); every epoch is logged once.
        for logger in self.loggers:
            discard = getattr(logger, "discard_from", None)
            if callable(discard):
                discard(self.current_epoch, self.global_step)
        self._segment_start = time.perf_counter()

    def run_wall_time(self) -> float:
        """Seconds of training so far over all segments of the run (a resumed run adds its earlier segments; the
        partial epoch a killed run lost is not counted, as it is trained again)."""
        running = 0.0 if self._segment_start is None else time.perf_counter() - self._segment_start
        return self._wall_time_before + running

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["openmix_run"] = {"wall_time_s": self.run_wall_time()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._wall_time_before = float(checkpoint.get("openmix_run", {}).get("wall_time_s", 0.0))

    @staticmethod
    def peak_memory_mb() -> float:
        """Peak resident memory of this process so far, in MiB (max RSS; macOS reports bytes, Linux KiB)."""
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024

    def on_validation_epoch_start(self) -> None:
        self._validation_start = time.perf_counter()
        self.begin_evaluation()

    def on_validation_epoch_end(self) -> None:
        self.end_evaluation("val")
        if self._validation_start is not None and not self.trainer.sanity_checking:
            self._validation_seconds += time.perf_counter() - self._validation_start
        self._validation_start = None

    # ----- epoch bookkeeping: throughput and the lambda histogram ---------------------------------------------
    def on_train_epoch_start(self) -> None:
        self._epoch_sums = {}
        self._epoch_images = 0
        self._epoch_start = time.perf_counter()
        self._validation_seconds = 0.0
        self.train_lams = []

    def log_train(self, name: str, value: Tensor | float, batch_size: int, on_step: bool = False) -> None:
        """Log a training value: every ``log_every_n_steps`` steps when ``on_step`` (as ``self.log``), and its
        batch-weighted mean over the epoch as ``<name>_epoch`` in the epoch's summary row."""
        if on_step:
            self.log(name, value, on_step=True, on_epoch=False, prog_bar=name == "train/loss", batch_size=batch_size)
        if isinstance(value, Tensor):  # stays where it is: no host sync
            value = value.detach().to(torch.float64)
        total, count = self._epoch_sums.get(name, (0.0, 0))  # a Python number (a momentum) stays on the host
        self._epoch_sums[name] = (total + value * batch_size, count + batch_size)

    def epoch_summary(self) -> dict[str, float]:
        """The epoch's training statistics, reduced over ranks: means of what :meth:`log_train` saw, images/s
        (summed over ranks, training time only), cumulative wall time, peak memory (largest rank), mean lambda."""
        # training time only: the validation that Lightning runs inside the epoch is subtracted
        elapsed = max(time.perf_counter() - self._epoch_start - self._validation_seconds, 1e-9)
        summary: dict[str, Tensor] = {}
        counts: dict[str, Tensor] = {}
        for name in names_on_every_rank(list(self._epoch_sums)):
            total, count = self._epoch_sums.get(name, (0.0, 0))  # a name this rank never logged: nothing to add
            totals = self.all_gather(
                torch.stack(
                    [
                        torch.as_tensor(total, dtype=torch.float64, device=self.device),
                        torch.tensor(float(count), dtype=torch.float64, device=self.device),
                    ]
                )
            )
            totals = totals.reshape(-1, 2).sum(dim=0)  # (world, 2) summed; a single process gives (2,)
            summary[f"{name}_epoch"] = totals[0] / totals[1].clamp(min=1)
            counts[f"{name}_epoch"] = totals[1]
        rate = torch.tensor(self._epoch_images / elapsed, dtype=torch.float64, device=self.device)
        summary["train/images_per_sec"] = self.all_gather(rate).sum()
        memory = torch.tensor(self.peak_memory_mb(), dtype=torch.float64, device=self.device)
        summary["train/peak_rss_mb"] = self.all_gather(memory).max()
        summary["train/wall_time_s"] = torch.tensor(self.run_wall_time())  # cumulative over resumes
        if self.train_lams:
            summary["train/lam_mean"] = torch.cat(self.train_lams).double().mean()
        # one host read per epoch; a value no rank logged this epoch is left out, not reported as 0
        return {name: float(value) for name, value in summary.items() if name not in counts or float(counts[name]) > 0}

    def on_train_epoch_end(self) -> None:
        summary = self.epoch_summary()
        self._epoch_sums = {}
        for name, value in summary.items():  # for callbacks and the progress bar; the loggers get one row below
            self.log(name, value, logger=False)
        # The row goes to the loggers now, before the epoch's checkpoint (RunCheckpoint runs after this hook):
        # Lightning would log it after the checkpoint, and a kill in between would lose it for good.
        step = getattr(self.trainer.fit_loop.epoch_loop, "_batches_that_stepped", self.global_step) - 1
        for logger in self.loggers:
            logger.log_metrics({**summary, "epoch": self.current_epoch}, step=max(step, 0))
            logger.save()
        if not self.train_lams:
            return
        lams = torch.cat(self.train_lams).float().cpu()
        for logger in self.loggers:  # histograms where the logger has them (TensorBoard, wandb)
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_histogram"):
                experiment.add_histogram("train/lam", lams, self.current_epoch)
            elif hasattr(experiment, "log") and type(logger).__name__ == "WandbLogger":
                import wandb

                experiment.log({"train/lam": wandb.Histogram(lams.numpy()), "epoch": self.current_epoch})

    # ----- optimisation -------------------------------------------------------------------------------------------
    def parameter_groups(self) -> list[dict[str, Any]]:
        """What the optimizer trains (subclasses add groups, e.g. AutoMix's Mix Block with its own rate)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def configure_optimizers(self) -> dict[str, Any]:
        """The optimizer and its per-step schedule. A schedule that needs the run's length (``set_total_steps``,
        e.g. :class:`~openmix.lightning.WarmupCosineLR`) gets the trainer's number of optimizer steps and of steps per
        epoch; an unbounded run (``max_epochs: -1`` without ``max_steps``) has no length, so it is refused with a
        ``ValueError`` that says which trainer options to set."""
        optimizer = self.optimizer_factory(self.parameter_groups())
        scheduler = self.scheduler_factory(optimizer)
        if hasattr(scheduler, "set_total_steps"):  # schedules that need the run's length get it from the trainer
            trainer = self.trainer
            total = trainer.estimated_stepping_batches  # inf for max_epochs=-1; max_steps (-1 if unset) for iterables
            if not math.isfinite(total) or total < 1:
                raise ValueError(
                    f"the learning-rate schedule {type(scheduler).__name__} needs the run's length, but "
                    f"trainer.max_epochs={trainer.max_epochs} and trainer.max_steps={trainer.max_steps} leave it "
                    "unbounded: set trainer.max_epochs to a positive number of epochs or trainer.max_steps to a "
                    "positive number of steps, or choose a scheduler that does not need the length"
                )
            if trainer.train_dataloader is None:  # not loaded when max_epochs=-1 (Lightning returns max_steps)
                trainer.fit_loop.setup_data()
            batches = trainer.num_training_batches
            if math.isfinite(batches) and batches > 0:
                per_epoch = math.ceil(batches / trainer.accumulate_grad_batches)
            else:  # an iterable dataset without a length: spread the epochs of the run evenly
                epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 1
                per_epoch = int(total) // epochs
            scheduler.set_total_steps(int(total), max(1, per_epoch))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
