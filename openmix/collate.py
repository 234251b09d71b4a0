"""Collate-time mixing: a DataLoader ``collate_fn`` that mixes each batch in the loader's worker processes.

:class:`MixCollate` stacks the (image, label) samples of a batch, mixes them with an openmix mixer that needs
nothing from the network (hook ``inputs`` only, no ``requires``, not learned) and returns the mixed images with
their (B, K) soft targets, so the training step receives a batch that is already mixed. uint8 images stay uint8: the
mix is computed in float32 and rounded back, as timm's ``FastCollateMixup`` does (timm/data/mixup.py, class
``FastCollateMixup``), which keeps the batch that travels from the workers to the GPU four times smaller than a
float32 one.

Two ways to mix, chosen from the mixer, never from the data:

- a mixer that declares ``reads_pixels = False`` (mixup, CutMix, FMix, GridMix, SmoothMix, and a random choice of
  them) draws its partners, lambdas and masks from the batch size, the image size and the generator alone; its
  output is the mask-weighted sum of a sample and its unmoved partner (DESIGN.md, pixel/label consistency). The
  collate asks such a mixer for its mix on a one-channel stand-in of the batch (zeros, float16) and applies the
  returned ``index`` / ``lam`` / ``mask`` to the real pixels itself: a rectangle (CutMix) is copied as uint8,
  another binary mask picks each pixel from one source, a soft mask or a global lambda (mixup) is blended in float32
  a few samples at a time, so the float work stays in the CPU's cache. A mixer that also declares
  ``pastes_boxes`` (CutMix) is not called: the collate draws its partners and then its boxes
  (``mixer.draw_boxes``) from the same generator, in the same order as its call, and copies each sample and its
  partner's box into the output, as timm does, without the stand-in or a full-size mask (hooks registered on the
  mixer module do not run then);
- every other eligible mixer (SaliencyMix reads the pixels, ResizeMix moves its partner) mixes the real batch,
  converted to float32, and its output is rounded.

Both ways give the pixels the mixer's own call would give, up to the float32 rounding of a blend (a rounded uint8
pixel may then differ by 1 where the float value is within a few ulps of a half); ``tests/test_collate.py`` checks
the claim for every registered mixer that makes it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import get_worker_info

from openmix._checks import check_bool, is_int, is_real
from openmix.data.readers import check_seed
from openmix.mixers import Mixer, MixOutput, create_mixer, get_mixer_entry
from openmix.mixers import functional as F_mix
from openmix.mixers._base import check_call
from openmix.mixers._registry import accepts_argument
from openmix.targets import check_smoothing

NUMPY_LAYOUTS = ("auto", "chw", "hwc")
CHUNK_ELEMENTS = 1 << 18  # float32 elements blended per step (1 MiB per buffer): the work stays in the L2 cache
GATHER_BYTES = 1 << 21  # a CutMix box of at most 2 MiB over the batch is gathered in one op, not sample by sample
NUMPY_DTYPES = (torch.uint8, torch.float16, torch.float32, torch.float64)  # image dtypes NumPy has
BIT_TYPES = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}  # an integer dtype of each size


class MixRecord(NamedTuple):
    """What a researcher needs to check a collated mix (the third element of a :class:`MixCollate` batch when
    ``return_record=True``).

    Attributes:
        index: (B,) int64; output image i mixes input sample i with input sample ``index[i]`` (positions in the
            list the collate received).
        lam: (B,) float32 in [0, 1]; the share of sample i's own pixels in output image i (for cut mixers the
            share of pixels actually pasted, after clipping) and the weight of its own label in the targets.
        labels: the unmixed labels, (B,) int64 class ids or (B, K) float32 soft targets.
        seed: the seed of the batch's ``torch.Generator``: ``collate.mix_batch(images, labels,
            torch.Generator().manual_seed(seed))`` on the unmixed batch repeats the mix (with its mask).
    """

    index: Tensor
    lam: Tensor
    labels: Tensor
    seed: int


def draws_ignore_pixels(mixer: Mixer) -> bool:
    """Whether ``mixer``'s partners, lambdas and masks do not depend on the pixels and its output is the
    mask-weighted sum of a sample and its unmoved partner: it declares ``reads_pixels = False`` and moves neither
    source (``Mixer`` class attributes)."""
    return not (getattr(mixer, "reads_pixels", True) or mixer.moves_partner or mixer.moves_own)


def check_collate_mixer(
    mixer: Mixer | str | Mapping[str, Any], mixer_kwargs: Mapping[str, Any] | None = None, name: str = "mixer"
) -> Mixer:
    """The mixer a collate function can run: built from a registered name (with ``mixer_kwargs``), a mapping
    ``{"name": ..., **kwargs}`` or given built, and refused when it needs the network (``requires``), acts elsewhere
    than on the inputs (``hooks``) or is learned. Errors name the argument as ``name`` (the data modules say
    ``collate_mixer``). A mixer built here mixes in place (``inplace=True``) unless ``mixer_kwargs`` say otherwise:
    a collate hands it only scratch tensors of its own.

    Raises:
        TypeError: ``mixer`` is none of the three forms.
        ValueError: an unknown name or argument (from :func:`openmix.create_mixer`), ``mixer_kwargs`` with a built
            mixer or a mapping, or a mixer that cannot run without the network.
    """
    if isinstance(mixer, str):
        built = _build_in_place(mixer, dict(mixer_kwargs or {}), name)
    elif isinstance(mixer, Mapping):
        if mixer_kwargs:
            raise ValueError(
                f"mixer_kwargs {sorted(mixer_kwargs)} given with a {name} mapping: put them in the mapping"
            )
        if "name" not in mixer:
            raise ValueError(f"{name} given as a mapping needs a 'name' key, got keys {sorted(mixer)}")
        built = _build_in_place(mixer["name"], {key: value for key, value in mixer.items() if key != "name"}, name)
    elif isinstance(mixer, Mixer):
        if mixer_kwargs:
            raise ValueError(f"mixer_kwargs {sorted(mixer_kwargs)} given with a built {type(mixer).__name__}")
        built = mixer
    else:
        raise TypeError(
            f"{name} must be an openmix Mixer, a registered mixer name or a mapping {{'name': ..., **kwargs}}, got "
            f"{type(mixer).__name__}"
        )
    owner = f"{name} {type(built).__name__}"
    if built.learned:
        raise ValueError(f"{owner} is learned during training: it cannot mix in a collate_fn; mix it in the model")
    if built.requires:
        raise ValueError(
            f"{owner} requires {tuple(built.requires)} from the network, which a collate_fn does not have: mix it in "
            "the model (MixClassifier's mixer)"
        )
    if tuple(built.hooks) != ("inputs",):
        raise ValueError(
            f"{owner} acts at the hooks {tuple(built.hooks)}; a collate_fn can only mix the inputs (hooks "
            "('inputs',)): mix it in the model (MixClassifier's mixer)"
        )
    return built


def _build_in_place(mixer_name: Any, kwargs: dict[str, Any], name: str) -> Mixer:
    """``create_mixer(mixer_name, **kwargs)``, in place unless ``kwargs`` say otherwise (a collate only ever hands a
    mixer its own scratch batch: the stand-in, or a float copy of the pixels); its errors are prefixed with
    ``name``."""
    try:
        if "inplace" not in kwargs and accepts_argument(get_mixer_entry(mixer_name).cls, "inplace"):
            kwargs = {**kwargs, "inplace": True}
        return create_mixer(mixer_name, **kwargs)
    except (TypeError, ValueError) as error:
        raise (TypeError if isinstance(error, TypeError) else ValueError)(f"{name}: {error}") from error


class MixCollate:
    """A DataLoader ``collate_fn`` that stacks (image, label) samples and mixes the batch with an openmix mixer.

    Use it as ``DataLoader(dataset, batch_size, collate_fn=MixCollate("cutmix", num_classes=10), num_workers=4)``:
    each batch is mixed where it is collated, in the worker processes when ``num_workers > 0``. Reference: timm's
    ``FastCollateMixup`` (timm/data/mixup.py), which mixes uint8 samples while collating them for mixup and CutMix.
    Unlike it, any mixer of :func:`check_collate_mixer` works; the partner is the mixer's (``pairing="random"`` by
    default, ``"flip"`` pairs i with B-1-i as timm does); any batch size works (timm needs an even one); every batch
    draws from its own seeded ``torch.Generator`` instead of NumPy's global RNG.

    Args:
        mixer: a registered name (``"cutmix"``), a mapping ``{"name": "cutmix", "alpha": 1.0}`` or a built
            :class:`~openmix.Mixer`; it must need nothing from the network (see :func:`check_collate_mixer`).
        num_classes: K, the number of classes of the soft targets.
        smoothing: label smoothing of each one-hot target before mixing, in [0, 1) (leave it 0 when the objective
            smooths: a trainer's ``label_smoothing`` applies to these targets too).
        seed: an int in [0, 2**63 - 1] mixed into every batch's seed; ``None``: torch's initial seed
            (``torch.initial_seed()``, the ``torch.manual_seed`` of the process, or of the worker).
        mean, std: per-channel statistics of ``pixel / 255`` (length C, std > 0), both or neither; given, uint8
            images come out as float32 ``(mixed / 255 - mean) / std`` (computed from the unrounded mix), the data
            modules' normalisation. Refused for float images.
        return_record: return a third element, a :class:`MixRecord` (partner index, lam, unmixed labels, seed).
        numpy_layout: layout of 3-d NumPy images: ``"chw"`` (timm's ``ToNumpy``), ``"hwc"`` (``np.asarray`` of a
            PIL image) or ``"auto"``: CHW when the first axis has 1, 3 or 4 entries and the last does not, HWC in the
            opposite case, a ``ValueError`` when both or neither do. Tensors are always (C, H, W) or (H, W).
        mixer_kwargs: constructor arguments of a mixer given by name.

    Input, a list of B samples ``(image, label)``:
        image: a uint8 or floating point tensor (C, H, W) or (H, W), or a NumPy array (C, H, W), (H, W, C) or (H, W);
            every sample of the batch with the same shape and dtype. uint8 is in pixel units 0-255; floating point
            images are mixed as they are (already normalised images stay normalised: the mix commutes with a
            per-channel affine normalisation).
        label: a class id (int, NumPy integer or 0-d integer tensor) in [0, num_classes), or a (K,) soft target.

    Returns:
        ``(images, targets)``, or ``(images, targets, record)`` with ``return_record``:

        - images: (B, C, H, W) mixed; uint8 for uint8 input (the float32 mix rounded half to even, as timm's
          ``np.rint``), float32 when ``mean`` / ``std`` are given, else the input's floating point dtype. In a worker
          the batch is allocated in shared memory, as ``default_collate`` does.
        - targets: (B, K) float32 ``MixOutput.soft_targets(num_classes, smoothing)``: rows
          ``lam * t(y_i) + (1 - lam) * t(y_index[i])``.
        - record: :class:`MixRecord`.

    Reproducibility: the b-th call of a collate object in a process seeds its generator with ``SeedSequence([s,
    b])`` in the main process and ``SeedSequence([s, w, b])`` in a worker, where ``s`` is ``seed`` (or torch's
    initial seed) and ``w`` is ``torch.utils.data.get_worker_info().seed`` (the DataLoader's base seed plus the
    worker id, drawn from the DataLoader's ``generator`` or torch's global RNG). The same seeds therefore give the
    same mixed batches, run after run, with ``num_workers=0`` as with ``num_workers=2``; a different number of
    workers gives different (equally reproducible) draws, as for any randomness in workers. Fresh worker processes
    (``persistent_workers=False``) get a new base seed each epoch, persistent ones keep counting, so epochs differ.

    Raises:
        TypeError: a ``mixer`` of the wrong kind; a sample that is not an (image, label) pair; an image that is not a
            tensor or array, or neither uint8 nor floating point; a non-integer ``num_classes``.
        ValueError: a mixer that needs the network; ``num_classes`` < 1; ``smoothing`` outside [0, 1); a ``seed``
            outside [0, 2**63 - 1]; ``mean`` without ``std`` or of the wrong length; an empty batch; images of
            different shapes or dtypes; an image of rank other than 2 or 3; an ambiguous NumPy layout; a class id
            outside [0, num_classes); ``mean`` / ``std`` with float images.
    """

    def __init__(
        self,
        mixer: Mixer | str | Mapping[str, Any],
        num_classes: int,
        smoothing: float = 0.0,
        seed: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        return_record: bool = False,
        numpy_layout: Literal["auto", "chw", "hwc"] = "auto",
        mixer_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.mixer = check_collate_mixer(mixer, mixer_kwargs)
        if not is_int(num_classes):
            raise TypeError(f"num_classes must be an int >= 1, got {type(num_classes).__name__} {num_classes!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.smoothing = check_smoothing(smoothing)
        self.seed = None if seed is None else check_seed(seed)
        self.mean, self.std = _check_statistics(mean, std)
        self.return_record = check_bool(return_record, "return_record")
        if numpy_layout not in NUMPY_LAYOUTS:
            raise ValueError(f"numpy_layout must be one of {NUMPY_LAYOUTS}, got {numpy_layout!r}")
        self.numpy_layout = numpy_layout
        self.applies_mask = draws_ignore_pixels(self.mixer)  # mix a stand-in, apply its mask to the pixels
        # its boxes drawn and its pixels pasted here: only for a mixer whose draws ignore the pixels (a subclass that
        # reads them, or moves its partner, is called)
        self.draws_boxes = self.applies_mask and bool(getattr(self.mixer, "pastes_boxes", False))
        self.calls = 0  # collate calls made by this object in this process (the last entry of each batch's seed)
        self._stand_in_cache: Tensor | None = None  # (B, 1, H, W) zeros, kept between calls of the same shape

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(mixer={self.mixer!r}, num_classes={self.num_classes}, "
            f"smoothing={self.smoothing}, seed={self.seed}, normalise={self.mean is not None})"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_stand_in_cache"] = None  # a cache: not sent to spawned workers
        return state

    # ----- the collate_fn -----------------------------------------------------------------------------------------
    def __call__(self, batch: Sequence[Any]) -> tuple[Tensor, ...]:
        images, labels = self.split(batch)
        seed = self.next_seed()
        shape = torch.Size((len(images), *images[0].shape))
        generator = torch.Generator().manual_seed(seed)
        mixed, targets, mix = self._mix(images, shape, images[0].dtype, labels, generator, with_mask=False)
        if self.return_record:
            return mixed, targets, MixRecord(mix.index, mix.lam, labels, seed)
        return mixed, targets

    def next_seed(self) -> int:
        """The seed of the next batch's generator (see the class docstring), and count the call."""
        base = self.seed if self.seed is not None else torch.initial_seed()
        worker = get_worker_info()
        entropy = [base, self.calls] if worker is None else [base, worker.seed, self.calls]
        self.calls += 1
        # SeedSequence mixes any non-negative ints into one 64-bit state, which torch's manual_seed takes whole
        return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])

    def stack(self, batch: Sequence[Any]) -> tuple[Tensor, Tensor]:
        """The unmixed batch: (B, C, H, W) images and (B,) int64 or (B, K) float32 labels."""
        images, labels = self.split(batch)
        return torch.stack(images), labels

    def split(self, batch: Sequence[Any]) -> tuple[list[Tensor], Tensor]:
        """B (C, H, W) image tensors (views of the samples' images where possible) and the labels as in
        :meth:`stack`, checked: a list of (image, label) pairs whose images share one shape and dtype."""
        if isinstance(batch, (str, bytes, Mapping)) or not isinstance(batch, Sequence):
            raise TypeError(f"batch must be a list of (image, label) samples, got {type(batch).__name__}")
        if len(batch) == 0:
            raise ValueError("batch is empty: a collate_fn needs at least one (image, label) sample")
        for position, sample in enumerate(batch):
            if not isinstance(sample, (tuple, list)) or len(sample) != 2:
                raise TypeError(f"batch[{position}] must be an (image, label) pair, got {type(sample).__name__}")
        images = [self.image_tensor(sample[0], position) for position, sample in enumerate(batch)]
        first = images[0]
        for position, image in enumerate(images):
            if image.shape != first.shape or image.dtype != first.dtype:
                raise ValueError(
                    f"batch[{position}] holds a {image.dtype} image of shape {tuple(image.shape)}, but batch[0] a "
                    f"{first.dtype} one of shape {tuple(first.shape)}: every image of a batch needs the same shape "
                    "and dtype"
                )
        return images, self.label_tensor([sample[1] for sample in batch])

    def image_tensor(self, image: Any, position: int = 0) -> Tensor:
        """One sample's image as a (C, H, W) uint8 or floating point tensor (a view where possible)."""
        name = f"batch[{position}][0]"
        if isinstance(image, np.ndarray):
            image = self._from_numpy(image, name)
        elif not isinstance(image, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or a NumPy array, got {type(image).__name__}")
        elif image.dim() == 2:
            image = image.unsqueeze(0)
        if image.dim() != 3:
            raise ValueError(f"{name} must have shape (C, H, W) or (H, W), got {tuple(image.shape)}")
        if image.dtype != torch.uint8 and not image.is_floating_point():
            raise TypeError(f"{name} must be uint8 or floating point, got {image.dtype}")
        return image

    def _from_numpy(self, array: np.ndarray, name: str) -> Tensor:
        if array.ndim == 2:
            array = array[None]
        elif array.ndim == 3:
            layout = self.numpy_layout
            if layout == "auto":
                leading, trailing = array.shape[0] in (1, 3, 4), array.shape[2] in (1, 3, 4)
                if leading == trailing:
                    raise ValueError(
                        f"{name} has shape {array.shape}, which may be (C, H, W) or (H, W, C): set numpy_layout to "
                        "'chw' or 'hwc'"
                    )
                layout = "chw" if leading else "hwc"
            if layout == "hwc":
                array = array.transpose(2, 0, 1)
        else:
            raise ValueError(f"{name} must have shape (C, H, W), (H, W, C) or (H, W), got {array.shape}")
        if array.dtype != np.uint8 and not np.issubdtype(array.dtype, np.floating):
            raise TypeError(f"{name} must be uint8 or floating point, got {array.dtype}")
        if not array.flags.writeable:  # read-only (np.asarray of a PIL image): torch warns, but only reads it here
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                return torch.from_numpy(array)
        return torch.from_numpy(array)

    def label_tensor(self, labels: Sequence[Any]) -> Tensor:
        """(B,) int64 class ids, checked against ``num_classes``, or (B, K) float32 soft targets."""
        values = [item.item() if isinstance(item, (Tensor, np.ndarray)) and item.ndim == 0 else item for item in labels]
        if all(type(value) is int or is_int(value) for value in values):  # the first test is the quick one
            ids = torch.tensor([int(value) for value in values], dtype=torch.int64)
            if int(ids.min()) < 0 or int(ids.max()) >= self.num_classes:
                raise ValueError(
                    f"labels hold class ids outside [0, {self.num_classes}) (num_classes): min {int(ids.min())}, max "
                    f"{int(ids.max())}"
                )
            return ids
        try:
            targets = torch.stack([torch.as_tensor(value, dtype=torch.float32) for value in values])
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"labels must be class ids or (K,) soft targets of one size, got {values[:3]!r}") from error
        if targets.dim() != 2:
            raise ValueError(f"soft labels must each have shape (K,), got a batch of shape {tuple(targets.shape)}")
        return targets

    # ----- the mix ------------------------------------------------------------------------------------------------
    def mix_batch(
        self, images: Tensor, labels: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, MixOutput]:
        """Mix a stacked batch: what one collate call does after stacking and seeding.

        Args:
            images: (B, C, H, W) uint8 (0-255) or floating point images.
            labels: (B,) int64 class ids or (B, K) float soft targets.
            generator: the ``torch.Generator`` of the draws; the global torch RNG if ``None``.

        Returns:
            (mixed images, (B, K) float32 soft targets, the mixer's :class:`~openmix.MixOutput` with ``x`` replaced
            by the mixed images, its ``index``, ``lam`` and ``mask`` describing them; for a CutMix the output its
            call would return, built by the collate from the same draws).
        """
        if not isinstance(images, Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.dim() != 4:
            raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")
        return self._mix(images, images.shape, images.dtype, labels, generator)

    def _mix(
        self,
        images: Sequence[Tensor],
        shape: torch.Size,
        dtype: torch.dtype,
        labels: Tensor,
        generator: torch.Generator | None,
        with_mask: bool = True,
    ) -> tuple[Tensor, Tensor, MixOutput]:
        """Mix B images of ``shape`` (B, C, H, W) and ``dtype``, given stacked or as a list of (C, H, W) tensors (a
        collate call mixes the samples where they are, without stacking them first). ``with_mask=False``: the
        returned ``MixOutput`` of a CutMix holds ``mask=None`` (a collate call does not return it; an elem-mode mask
        is a (B, 1, H, W) float32 tensor that would cost more than the mix)."""
        is_uint8 = dtype == torch.uint8
        if self.mean is not None:
            if not is_uint8:
                raise ValueError(f"mean and std normalise uint8 images, but the images are {dtype} already")
            if self.mean.shape[0] != shape[1]:
                raise ValueError(f"mean and std have {self.mean.shape[0]} values for {shape[1]} channels")
        out = _output_buffer(shape, torch.float32 if self.mean is not None else dtype)
        with torch.no_grad():
            if self.draws_boxes:
                mix, boxes = self._draw_boxes(shape, labels, generator, with_mask)
                _paste_boxes(images, mix.index.tolist(), boxes, self._store, out)
            elif self.applies_mask:
                mix = self.mixer(self._stand_in(shape), labels, generator=generator)
                _apply_mix(images, mix.index, mix.lam, mix.mask, self._store, out)
            else:
                stacked = images if isinstance(images, Tensor) else torch.stack(list(images))
                # the mixer mixes a float32 copy of uint8 pixels (0-255); float images as they are (a copy when
                # the mixer writes in place: the caller's images stay unmixed)
                source = stacked.to(torch.float32) if is_uint8 else stacked.clone() if self.mixer.inplace else stacked
                mix = self.mixer(source, labels, generator=generator)
                # a resize or a blur of the partner (ResizeMix) may overshoot [0, 255] before rounding
                self._store(mix.x.clamp_(0, 255) if is_uint8 else mix.x, out)
            targets = mix.soft_targets(self.num_classes, self.smoothing)
        return out, targets, replace(mix, x=out)

    def _draw_boxes(
        self, shape: torch.Size, labels: Tensor, generator: torch.Generator | None, with_mask: bool
    ) -> tuple[MixOutput, list[list[int]]]:
        """A ``pastes_boxes`` mixer's draws for a (B, C, H, W) batch, made without mixing anything: the ``MixOutput``
        its call would return, with ``x`` a (B, 1, H, W) float16 stand-in of no memory (the caller puts the mixed
        images there), and the boxes ``[top, bottom, left, right]`` it pastes (one, or B in elem mode).

        The draws are those of its call, in its order (``PairMixer.forward``: the partner index, then
        ``mixer.draw_boxes``), all from ``generator``, so the generator ends in the same state and the boxes,
        ``index`` and ``lam`` are the ones the mixer would give; the call is checked as the mixer checks it.
        ``mask``: the mixer's (1 or B, 1, H, W) float32 keep mask (``functional.box_keep_mask``), or ``None`` without
        ``with_mask``.
        """
        mixer = self.mixer
        batch_size, _, height, width = shape
        blank = torch.zeros((), dtype=torch.float16).expand(batch_size, 1, height, width)  # no memory: checks only
        check_call(mixer, blank, labels, generator, {})
        index = F_mix.partner_index(batch_size, mixer.pairing, generator)
        boxes = mixer.draw_boxes(batch_size, height, width, None, generator)
        lam = F_mix.box_lam(boxes, height, width).expand(batch_size)
        mask = F_mix.box_keep_mask(boxes, height, width) if with_mask else None
        return mixer.output(blank, index, lam, labels, mask), boxes.tolist()

    def _stand_in(self, shape: torch.Size) -> Tensor:
        """(B, 1, H, W) float16 zeros: what a pixel-blind mixer mixes to give its draws (values never read; half the
        memory traffic of float32; the mask and lam it returns are float32 whatever the images' dtype)."""
        stand_in_shape = (shape[0], 1, shape[2], shape[3])
        if self._stand_in_cache is None or self._stand_in_cache.shape != stand_in_shape:
            self._stand_in_cache = torch.zeros(stand_in_shape, dtype=torch.float16)
        return self._stand_in_cache

    def _store(self, mixed: Tensor, out: Tensor) -> None:
        """Write mixed pixels (float32, or the input's dtype for copied pixels) into ``out``: normalised when
        ``mean`` / ``std`` are given, rounded half to even into uint8, or copied."""
        if self.mean is not None:  # the data modules' formula: (pixel / 255 - mean) / std
            out.copy_(mixed).div_(255).sub_(self.mean).div_(self.std)
        elif out.dtype == torch.uint8 and mixed.is_floating_point():
            # mixed is a scratch buffer of ours, its values in [0, 255]; NumPy converts float32 to uint8 several
            # times faster than torch's copy_ on the CPU
            np.copyto(out.numpy(), mixed.round_().numpy(), casting="unsafe")
        else:
            out.copy_(mixed)


def _check_statistics(mean: Any, std: Any) -> tuple[Tensor | None, Tensor | None]:
    """``mean`` and ``std`` as (C, 1, 1) float32 tensors (both or neither), else a ``ValueError`` / ``TypeError``."""
    if mean is None and std is None:
        return None, None
    if mean is None or std is None:
        raise ValueError(f"mean and std must be given together, got mean={mean!r}, std={std!r}")
    for name, values in (("mean", mean), ("std", std)):
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise TypeError(f"{name} must be a non-empty sequence of numbers (one per channel), got {values!r}")
        if not all(is_real(value) and math.isfinite(value) for value in values):
            raise ValueError(f"{name} must hold finite numbers, got {list(values)!r}")
    if len(mean) != len(std) or min(std) <= 0:
        raise ValueError(f"mean and std need the same number of values (std > 0), got mean={mean}, std={std}")
    as_tensor = lambda values: torch.tensor([float(v) for v in values], dtype=torch.float32).view(-1, 1, 1)  # noqa: E731
    return as_tensor(mean), as_tensor(std)


def _output_buffer(shape: torch.Size, dtype: torch.dtype) -> Tensor:
    """An empty (B, C, H, W) tensor; in a DataLoader worker in shared memory (as ``default_collate`` allocates it),
    so sending the batch to the main process costs no extra copy."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    template = torch.empty(0, dtype=dtype)
    storage = template._typed_storage()._new_shared(math.prod(shape), device="cpu")
    return template.new(storage).resize_(shape)


Store = Callable[[Tensor, Tensor], None]


def _apply_mix(
    images: Sequence[Tensor], index: Tensor, lam: Tensor, mask: Tensor | None, store: Store, out: Tensor
) -> None:
    """Write ``m * images[i] + (1 - m) * images[index[i]]`` into ``out`` (through ``store``), with ``m`` the mask
    ((1 or B, 1, H, W) float32) or, without one, ``lam`` ((B,) float32). ``images``: a (B, C, H, W) tensor or a
    list of B (C, H, W) tensors."""
    partners = index.tolist()
    if mask is None:
        if bool((lam == 1).all()):  # unmixed (a composite's no-mix branch): the images themselves
            store(_stacked(images), out)
            return
        _blend_rows(images, partners, lam.float().cpu().view(-1, 1, 1, 1), store, out)
        return
    mask = mask.cpu().float()
    boxes = _partner_boxes(mask)
    if boxes is not None:  # CutMix: copy the partner's box
        _paste_boxes(images, partners, boxes, store, out)
    elif not bool(mask.frac().any()):  # another binary mask (GridMix, binary FMix): pick each pixel from one source
        _pick_pixels(images, partners, mask == 1, store, out)
    else:
        _blend_rows(images, partners, mask, store, out)


def _stacked(images: Sequence[Tensor]) -> Tensor:
    return images if isinstance(images, Tensor) else torch.stack(list(images))


def _runs(images: Sequence[Tensor]) -> list[range]:
    """The sample positions in runs of about ``CHUNK_ELEMENTS`` elements each (one sample per run for large
    images)."""
    step = max(1, CHUNK_ELEMENTS // max(1, images[0].numel()))
    return [range(start, min(start + step, len(images))) for start in range(0, len(images), step)]


def _take(images: Sequence[Tensor], positions: Sequence[int], scratch: Tensor) -> Tensor:
    """(n, C, H, W) images at ``positions``: a view when they are one sample or a slice of a stacked batch, else
    copied into ``scratch``."""
    if len(positions) == 1:
        return images[positions[0]].unsqueeze(0)
    if isinstance(images, Tensor) and isinstance(positions, range):
        return images[positions.start : positions.stop]
    return torch.stack([images[position] for position in positions], out=scratch[: len(positions)])


def _blend_rows(images: Sequence[Tensor], partners: list[int], weight: Tensor, store: Store, out: Tensor) -> None:
    """Soft weights ((1 or B, 1, H or 1, W or 1) float32): ``own * w + partner * (1 - w)``, each product and the sum
    rounded to float32, one run of samples at a time into buffers reused from run to run (they stay in the cache).
    With w in [0, 1] the sum of two pixels in [0, 255] stays below 255.5, so rounding needs no clamp."""
    complement = 1.0 - weight
    shared = weight.shape[0] == 1
    runs = _runs(images)
    run_shape = (len(runs[0]), *images[0].shape)
    scratch = torch.empty(run_shape, dtype=images[0].dtype)  # gathered samples, in the images' dtype
    own_part, partner_part = torch.empty(run_shape), torch.empty(run_shape)  # float32
    for run in runs:
        rows = slice(run.start, run.stop)
        own, partner = own_part[: len(run)], partner_part[: len(run)]
        # a copy then an in-place product: faster on the CPU than one product of mixed dtypes
        own.copy_(_take(images, run, scratch)).mul_(weight if shared else weight[rows])
        partner.copy_(_take(images, partners[rows], scratch)).mul_(complement if shared else complement[rows])
        store(own.add_(partner), out[rows])


def _pick_pixels(images: Sequence[Tensor], partners: list[int], keep: Tensor, store: Store, out: Tensor) -> None:
    """Binary masks (``keep``: (1 or B, 1, H, W) bool, True where sample i keeps its own pixel): each pixel copied
    from its source, a run of samples at a time."""
    shared = keep.shape[0] == 1
    runs = _runs(images)
    own_scratch = torch.empty((len(runs[0]), *images[0].shape), dtype=images[0].dtype)
    partner_scratch = torch.empty_like(own_scratch)
    for run in runs:
        rows = slice(run.start, run.stop)
        own, partner = _take(images, run, own_scratch), _take(images, partners[rows], partner_scratch)
        store(torch.where(keep if shared else keep[rows], own, partner), out[rows])


def _paste_boxes(
    images: Sequence[Tensor], partners: list[int], boxes: list[list[int]], store: Store, out: Tensor
) -> None:
    """Sample i keeps its pixels outside ``boxes[i]`` (``[top, bottom, left, right]``, one box for the whole batch or
    one per sample) and takes its partner's inside: only the boxes are copied from the partners.

    Each sample is copied into the output, then its partner's box over it (timm's ``FastCollateMixup`` loop), as
    NumPy slice assignments (a fraction of a torch op's overhead), with no temporary tensor (but the batch in the
    pixels' dtype when ``out`` is a normalised float32 one). One box whose copies total at most ``GATHER_BYTES``
    (small images, where the loop's overhead would dominate) is pasted in two torch ops instead: the batch stacked
    into the output, then the partners' boxes gathered from it.
    """
    # the pixels, before any normalisation: written into the output itself when it has their dtype
    target = out if out.dtype == images[0].dtype else torch.empty(out.shape, dtype=images[0].dtype)
    top, bottom, left, right = boxes[0]
    box_elements = len(partners) * target.shape[1] * max(bottom - top, 0) * max(right - left, 0)
    box_bytes = box_elements * target.element_size()
    if len(boxes) == 1 and box_bytes <= GATHER_BYTES:
        if isinstance(images, Tensor):
            target.copy_(images)
        else:
            torch.stack(list(images), out=target)
        if box_bytes:  # the partners' boxes, all read before any is written
            region = target[:, :, top:bottom, left:right]
            region.copy_(region.index_select(0, torch.tensor(partners)))
    else:
        pixels = _host_array(target)
        sources = _host_array(images) if isinstance(images, Tensor) else [_host_array(image) for image in images]
        for row, partner in enumerate(partners):
            if len(boxes) > 1:
                top, bottom, left, right = boxes[row]
            pixels[row] = sources[row]
            if bottom > top and right > left:
                pixels[row, :, top:bottom, left:right] = sources[partner][:, top:bottom, left:right]
    if target is not out:
        store(target, out)


def _host_array(tensor: Tensor) -> np.ndarray:
    """A NumPy view of a tensor's elements (a copy on the host for a tensor elsewhere), of a NumPy dtype decided by
    the tensor's dtype alone: its own, or for a dtype NumPy lacks (bfloat16, float8) integers of its size (its bits:
    copying them copies the values)."""
    if tensor.dtype not in NUMPY_DTYPES:
        tensor = tensor.view(BIT_TYPES[tensor.element_size()])
    try:
        return tensor.numpy()
    except (RuntimeError, TypeError):  # it requires grad, or it is not on the host
        return tensor.detach().cpu().numpy()


def _partner_boxes(mask: Tensor) -> list[list[int]] | None:
    """``[top, bottom, left, right]`` of the pixels each mask ((n, 1, H, W) float32 in [0, 1], the weight of sample
    i itself) takes from the partner, when the mask is 0 on exactly that box and 1 elsewhere (a CutMix box; a mask of
    ones gives an empty box); ``None`` when any mask is not such a box."""
    count, _, height, width = mask.shape
    rows = mask.amin(dim=3).view(count, height) < 1  # (n, H): rows holding a pixel of the partner
    cols = mask.amin(dim=2).view(count, width) < 1  # (n, W)
    top, left = rows.byte().argmax(dim=1), cols.byte().argmax(dim=1)  # first such row / column
    bottom = height - rows.flip(1).byte().argmax(dim=1)  # one past the last
    right = width - cols.flip(1).byte().argmax(dim=1)
    empty = ~rows.any(dim=1)
    area = ((bottom - top) * (right - left)).masked_fill_(empty, 0)
    # every weight is <= 1 and the bounding box holds every weight < 1, so the partner's share (1 - m) sums to the
    # box's area exactly when it is 1 on the whole box (0/1 weights sum exactly in float64; a weight below 1 leaves
    # a deficit of at least 2**-24, far above the rounding of a float64 sum)
    partner_share = height * width - mask.sum(dim=(1, 2, 3), dtype=torch.float64)
    if not torch.equal(partner_share, area.double()):
        return None
    return torch.stack([top, bottom, left, right], dim=1).masked_fill_(empty[:, None], 0).tolist()
