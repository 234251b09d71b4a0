"""AlignMix: align the partner's feature map to sample i's by optimal transport, then interpolate.

Venkataramanan, Kijak, Amsaleg, Avrithis, "AlignMixup: Improving Representations By Interpolating Aligned
Features", CVPR 2022. https://arxiv.org/abs/2103.15375

A feature map (C, h, w) is a set of r = h * w vectors (its columns A, c x r); ViT tokens (N, D) are r = N vectors.
With A the map of sample i and A' its partner's:

    M_jk = ||a_j - a'_k||^2                                  cost between positions (r x r)
    P* = argmin_{P 1 = 1/r, P^T 1 = 1/r} <P, M> - eps H(P)   entropic transport plan (Sinkhorn-Knopp)
    R = r P*                                                 assignment matrix: rows and columns sum to 1
    A~ = A' R^T     (column j: sum_k R_jk a'_k)              the partner moved onto sample i's positions
    A~' = A R       (column k: sum_j R_jk a_j)               sample i moved onto the partner's positions
    direction "to_sample":   h~_i = lam * A + (1 - lam) * A~       (geometry of i, appearance of the partner)
    direction "to_partner":  h~_i = lam * A~' + (1 - lam) * A'     (geometry of the partner, appearance of i)

and the targets are lam * y_i + (1 - lam) * y_partner in both directions (``lam`` is sample i's share either way).
The paper's Figure 2 shows both alignments ("symmetrically, we can align A' to A"); the authors' code draws one of
the two with probability 1/2 per batch (``direction="random"``).

Defaults, with their sources (shashankvkt/AlignMixup_CVPR22 unless said otherwise):

- ``alpha = 2.0``: README.md:37, 46, 59, 68, 82, 94, 104 (``--alpha 2.0`` on every data set) and
  cifar10_100/main.py:26; one lambda per batch, main.py:161 (imagenet/main.py:171 likewise). OpenMixup
  (Westlake-AI/openmixup) uses 2 as well: configs/classification/cifar100/mixups/basic/r18_alignmix_CE_none.py:5.
- ``layers = (0, 4)``: cifar10_100/models/resnet18_classifier.py:62 draws ``layer_mix = random.randint(0,1)``:
  0 is plain mixup of the images (:64-65, ``mixup_process``: no alignment), 1 is AlignMix on the output of layer4
  (:67-74), openmix's stage 4 for a ResNet; imagenet/models/resnet50_classifier.py:64-72 and
  tiny_imgnet/models/resnet18_classifier.py:62-74 likewise. So at stage 0 this mixer interpolates without
  alignment unless ``align_input=True``.
- ``epsilon = 0.1``, ``iterations = 100``: resnet18_classifier.py:27 ``SinkhornDistance(eps=0.1, max_iter=100)``
  (imagenet/models/resnet50_classifier.py:29, tiny_imgnet/models/resnet18_classifier.py:27; OpenMixup
  openmixup/models/classifiers/mixup_classification.py:102 ``alignmix=dict(eps=0.1, max_iter=100)``).
- the cost is the squared Euclidean distance of the raw features (no normalisation): cifar10_100/utils/OT.py:75-80
  ``_cost_matrix`` with p=2; uniform marginals 1/r, OT.py:38-41; log-domain updates OT.py:52-55 and the plan
  ``exp((-M + u + v) / eps)``, OT.py:64 and :69-72, which this module computes in the same form.
- ``R = r P*``: resnet18_classifier.py:30; A~ = A' R^T and the mix lam A + (1 - lam) A~: :34-37; A~' = A R and
  lam A~' + (1 - lam) A': :39-42; the plan carries no gradient (``.detach()``, :28), the features do.

Differences from the authors' code (kept on purpose): the Sinkhorn loop always runs ``iterations`` times (the code
also stops once the mean L1 change of the row potential drops below 0.1, OT.py:49 and :56-59, which reads the
value on the host every iteration); it runs in float32 whatever the input dtype; the direction is drawn per sample
in ``mode="elem"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from openmix.mixers import functional as F_mix
from openmix.mixers._base import PairMixer, check_choice, check_positive
from openmix.mixers._registry import register_mixer
from openmix.mixers.manifoldmix import check_layers, draw_layer

DIRECTIONS = ("random", "to_sample", "to_partner")


def squared_distances(points: Tensor, others: Tensor) -> Tensor:
    """(B, r, s) float32 ``||points[b, j] - others[b, k]||^2`` for (B, r, c) and (B, s, c) sets of vectors."""
    points, others = points.float(), others.float()
    norms = points.square().sum(-1, keepdim=True) + others.square().sum(-1).unsqueeze(1)  # (B, r, s)
    # |a|^2 + |a'|^2 - 2 a.a' in one batched product; rounding can make an exact match slightly negative
    return torch.baddbmm(norms, points, others.transpose(1, 2), alpha=-2.0).clamp_(min=0.0)


def sinkhorn_plan(cost: Tensor, epsilon: float = 0.1, iterations: int = 100) -> Tensor:
    """(B, r, s) float32 entropic optimal transport plans between uniform weights 1/r and 1/s, for (B, r, s) costs.

    Sinkhorn-Knopp in the log domain (stable for costs far larger than ``epsilon``), batched, with a fixed number of
    iterations (no host synchronisation): with potentials f (B, r) and g (B, s), starting from g = 0,

        f_j = eps * (log(1/r) - logsumexp_k((g_k - M_jk) / eps))
        g_k = eps * (log(1/s) - logsumexp_j((f_j - M_jk) / eps))
        P_jk = exp((f_j + g_k - M_jk) / eps)

    The last update is g's, so the columns sum to 1/s exactly (to rounding) and the rows to 1/r once converged.
    """
    cost = cost.float()
    _, rows, cols = cost.shape
    # a constant per row leaves the plan unchanged (f absorbs it); taking each row's minimum out keeps the float32
    # log-kernel near 0 where the plan's mass is, whatever the scale of the features
    log_kernel = (cost - cost.amin(dim=2, keepdim=True)) / -epsilon  # (B, r, s)
    row_potential = cost.new_zeros(cost.shape[0], rows)  # f / eps
    col_potential = cost.new_zeros(cost.shape[0], cols)  # g / eps
    for _ in range(iterations):
        row_potential = -math.log(rows) - torch.logsumexp(log_kernel + col_potential.unsqueeze(1), dim=2)
        col_potential = -math.log(cols) - torch.logsumexp(log_kernel + row_potential.unsqueeze(2), dim=1)
    return torch.exp(log_kernel + row_potential.unsqueeze(2) + col_potential.unsqueeze(1))


def as_point_sets(h: Tensor) -> Tensor:
    """(B, r, c) rows = positions: a (B, C, h, w) map as its r = h * w vectors, (B, N, D) tokens as they are."""
    return h.flatten(2).transpose(1, 2) if h.dim() == 4 else h


def from_point_sets(points: Tensor, like: Tensor) -> Tensor:
    """The inverse of :func:`as_point_sets`: (B, r, c) back to the shape of ``like``."""
    return points.transpose(1, 2).reshape(like.shape) if like.dim() == 4 else points


@register_mixer(
    "alignmix",
    paper="AlignMixup: Improving Representations By Interpolating Aligned Features (Venkataramanan et al., CVPR 2022)",
    url="https://arxiv.org/abs/2103.15375",
)
class AlignMix(PairMixer):
    """AlignMix: interpolate a feature map with its partner's after aligning them by entropic optimal transport.

    Args:
        alpha: Beta(alpha, alpha) concentration (2.0, the authors' setting on every data set).
        layers: the eligible stages, drawn uniformly: 0 = the input, k = the output of the k-th feature stage. Default
            (0, 4): the input (plain mixup) or the last stage of a ResNet; for a ViT with 12 blocks use (0, 12).
        epsilon: entropic regularisation of the transport (in the units of the squared feature distances).
        iterations: Sinkhorn iterations (a fixed count).
        direction: ``"to_sample"`` aligns the partner to sample i (``lam h_i + (1 - lam) h_partner R^T``),
            ``"to_partner"`` aligns sample i to the partner (``lam h_i R + (1 - lam) h_partner``), ``"random"``
            draws one of the two with probability 1/2 (per batch, or per sample in elem mode), as the authors' code.
        align_input: at stage 0 (the image), align too (r = H * W positions: an r x r plan per sample); ``False``
            mixes the images plainly, as the authors' code does.
        mode: ``"batch"`` (one lambda) or ``"elem"`` (one per sample).
        pairing: ``"random"`` or ``"flip"``.
        inplace: write the mix into ``x`` (4-d inputs only).

    The stage a call mixes at is the one the last :meth:`draw_stage` returned (``last_stage``); a call without a
    draw aligns.
    """

    hooks = ("features",)
    input_ranks = (3, 4)
    moves_partner = True  # the partner (or, direction "to_partner", sample i) is transported before the blend

    def __init__(
        self,
        alpha: float = 2.0,
        layers: Sequence[int] = (0, 4),
        epsilon: float = 0.1,
        iterations: int = 100,
        direction: str = "random",
        align_input: bool = False,
        mode: str = "batch",
        pairing: str = "random",
        inplace: bool = False,
    ):
        super().__init__(alpha, mode, pairing, inplace)
        self.layers = check_layers(layers)
        self.epsilon = check_positive(epsilon, "epsilon")
        if not F_mix.is_int(iterations) or iterations < 1:
            raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")
        self.iterations = int(iterations)
        self.direction = check_choice(direction, DIRECTIONS, "direction")
        self.align_input = F_mix.check_bool(align_input, "align_input")
        self.last_stage: int | None = None

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, layers={self.layers}, epsilon={self.epsilon}, iterations={self.iterations}, "
            f"direction={self.direction!r}, align_input={self.align_input}"
        )

    def draw_stage(self, num_stages: int, generator: torch.Generator | None = None) -> int:
        """A stage drawn uniformly from ``layers``; the next call mixes at it (plainly at 0 unless ``align_input``)."""
        self.last_stage = draw_layer(self.layers, num_stages, generator, "layers")
        return self.last_stage

    def max_stage(self) -> int:
        return max(self.layers)

    def transport_plan(self, h: Tensor, index: Tensor) -> Tensor:
        """(B, r, r) float32 plan between the positions of ``h[i]`` (rows) and of ``h[index[i]]`` (columns)."""
        with torch.no_grad():  # the plan is a constant of the step, as in the authors' code (.detach())
            points = as_point_sets(h.detach())
            cost = squared_distances(points, points.index_select(0, index))
            return sinkhorn_plan(cost, self.epsilon, self.iterations)

    def mix(
        self, x: Tensor, index: Tensor, lam: Tensor | None, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, None]:
        lam = self.draw_lam(lam, x.shape[0], generator)  # (B,) float64 CPU
        weight = F_mix.lam_to_weight(lam, self.mode, x)
        if self.last_stage == 0 and not self.align_input:  # the authors mix the images without alignment
            return F_mix.blend(x, index, weight, self.inplace), lam, None
        to_sample = self.draw_directions(x.shape[0], generator)  # (1,) or (B,) bool CPU
        plan = self.transport_plan(x, index)
        assignment = plan * plan.shape[1]  # R = r P*: columns sum to 1, rows too once Sinkhorn has converged
        points = as_point_sets(x).float()  # (B, r, c)
        partners = points.index_select(0, index)
        if bool(to_sample.all()):
            start, end = torch.bmm(assignment, partners), points  # A~ = A' R^T, rows j: sum_k R_jk a'_k
        elif not bool(to_sample.any()):
            start, end = partners, torch.bmm(assignment.transpose(1, 2), points)  # A~' = A R, rows k: sum_j R_jk a_j
        else:  # elem mode, both directions in the batch
            choose = to_sample.to(x.device, non_blocking=True).view(-1, 1, 1)
            start = torch.where(choose, torch.bmm(assignment, partners), partners)
            end = torch.where(choose, points, torch.bmm(assignment.transpose(1, 2), points))
        if isinstance(weight, Tensor):
            weight = weight.float().view(-1, 1, 1)
        mixed = from_point_sets(torch.lerp(start, end, weight), x).to(x.dtype)  # lam * end + (1 - lam) * start
        if self.inplace:
            return x.copy_(mixed), lam, None
        return mixed.contiguous(memory_format=F_mix.memory_format_of(x)), lam, None

    def draw_directions(self, batch_size: int, generator: torch.Generator | None) -> Tensor:
        """(1,) or (B,) bool CPU: True where the partner is aligned to sample i (``"to_sample"``)."""
        count = 1 if self.mode == "batch" else batch_size
        if self.direction != "random":
            return torch.full((count,), self.direction == "to_sample")
        return F_mix.sample_uniform(0.0, 1.0, count, generator) < 0.5
