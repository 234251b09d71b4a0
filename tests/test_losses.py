"""Tests for :mod:`openmix.losses`: targets, losses and mixing objectives.

Every formula is checked against a direct computation written out here (Python loops over samples and classes in
float64 with ``math.exp`` / ``math.log``), never against the implementation itself.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import openmix
from openmix import losses

NUM_CLASSES = 5


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_logits(batch_size: int, num_classes: int = NUM_CLASSES, seed: int = 0, scale: float = 2.0) -> torch.Tensor:
    """(B, K) float32 logits drawn from N(0, scale^2) with a seeded generator."""
    return torch.randn(batch_size, num_classes, generator=_generator(seed)) * scale


def _random_distributions(batch_size: int, num_classes: int = NUM_CLASSES, seed: int = 1) -> torch.Tensor:
    """(B, K) float32 rows of positive numbers that sum to 1 (soft targets)."""
    weights = torch.rand(batch_size, num_classes, generator=_generator(seed)) + 0.05
    return weights / weights.sum(dim=1, keepdim=True)


def _direct_target_row(label: int | list[float], num_classes: int, smoothing: float) -> list[float]:
    """One sample's target ``t * (1 - s) + s / K`` where t is the one-hot of a class id or the given soft row."""
    if isinstance(label, int):
        row = [1.0 if k == label else 0.0 for k in range(num_classes)]
    else:
        row = [float(value) for value in label]
    return [value * (1.0 - smoothing) + smoothing / num_classes for value in row]


def _direct_mixed_rows(y_a: list, y_b: list, lam: list[float], num_classes: int, smoothing: float) -> list[list[float]]:
    """Rows ``lam_i * t(y_a[i]) + (1 - lam_i) * t(y_b[i])`` computed one sample and one class at a time."""
    rows = []
    for label_a, label_b, share in zip(y_a, y_b, lam):
        target_a = _direct_target_row(label_a, num_classes, smoothing)
        target_b = _direct_target_row(label_b, num_classes, smoothing)
        rows.append([share * target_a[k] + (1.0 - share) * target_b[k] for k in range(num_classes)])
    return rows


def _direct_cross_entropy(logits: list[list[float]], targets: list[list[float]]) -> list[float]:
    """Per-sample ``-sum_k t_k log(exp(z_k) / sum_c exp(z_c))``, with the max subtracted for stability."""
    per_sample = []
    for row, target in zip(logits, targets):
        shift = max(row)
        log_normaliser = shift + math.log(sum(math.exp(z - shift) for z in row))
        per_sample.append(-sum(t * (z - log_normaliser) for z, t in zip(row, target)))
    return per_sample


def _direct_binary_cross_entropy(logits: list[list[float]], targets: list[list[float]]) -> list[float]:
    """Per-sample mean over classes of ``-(t log sigmoid(z) + (1 - t) log(1 - sigmoid(z)))``."""
    per_sample = []
    for row, target in zip(logits, targets):
        terms = []
        for z, t in zip(row, target):
            probability = 1.0 / (1.0 + math.exp(-z))
            terms.append(-(t * math.log(probability) + (1.0 - t) * math.log(1.0 - probability)))
        per_sample.append(sum(terms) / len(terms))
    return per_sample


def _direct_decoupled(
    logits: list[list[float]], y_a: list[int], y_b: list[int], lam: list[float], lam_weighted: bool
) -> list[float]:
    """Per-sample DM term: each mixed class scored by a softmax that leaves out the competing mixed class."""
    per_sample = []
    for row, class_a, class_b, share in zip(logits, y_a, y_b, lam):
        if class_a == class_b:
            per_sample.append(0.0)
            continue
        weight_a, weight_b = (share, 1.0 - share) if lam_weighted else (1.0, 1.0)
        without_b = sum(math.exp(z) for c, z in enumerate(row) if c != class_b)
        without_a = sum(math.exp(z) for c, z in enumerate(row) if c != class_a)
        term_a = -math.log(math.exp(row[class_a]) / without_b)
        term_b = -math.log(math.exp(row[class_b]) / without_a)
        per_sample.append(weight_a * term_a + weight_b * term_b)
    return per_sample


def _as_tensor(values: list) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _assert_close(actual: torch.Tensor, expected: list | float, atol: float = 1e-5, rtol: float = 1e-5) -> None:
    expected_tensor = torch.as_tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(actual.double(), expected_tensor, atol=atol, rtol=rtol)


def _hand_mix_output(
    y_a: torch.Tensor, index: list[int], lam: list[float], image_size: int = 4, seed: int = 3
) -> openmix.MixOutput:
    """A MixOutput built by hand for a mixup of a random batch: x = lam * x + (1 - lam) * x[index]."""
    batch_size = y_a.shape[0]
    images = torch.rand(batch_size, 3, image_size, image_size, generator=_generator(seed))
    partner_index = torch.tensor(index, dtype=torch.int64)
    shares = torch.tensor(lam, dtype=torch.float32)
    mixed = shares.view(-1, 1, 1, 1) * images + (1.0 - shares.view(-1, 1, 1, 1)) * images[partner_index]
    return openmix.MixOutput(mixed, partner_index, shares, y_a, y_a[partner_index], None)


# ---------------------------------------------------------------------------------------------------------------------
# one_hot_targets
# ---------------------------------------------------------------------------------------------------------------------


def test_one_hot_targets_class_ids_without_smoothing_is_exact_one_hot():
    labels = [0, 3, 1, 3, 4]
    targets = losses.one_hot_targets(torch.tensor(labels), NUM_CLASSES)
    assert targets.dtype == torch.float32
    assert targets.shape == (len(labels), NUM_CLASSES)
    for i, label in enumerate(labels):
        for k in range(NUM_CLASSES):
            assert targets[i, k].item() == (1.0 if k == label else 0.0)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.25, 0.9])
def test_one_hot_targets_class_ids_with_smoothing_moves_mass_to_uniform(smoothing):
    labels = [2, 0, 4, 4, 1, 3]
    targets = losses.one_hot_targets(torch.tensor(labels), NUM_CLASSES, smoothing=smoothing)
    expected = [_direct_target_row(label, NUM_CLASSES, smoothing) for label in labels]
    _assert_close(targets, expected, atol=1e-7, rtol=0)
    # the true class keeps 1 - s + s/K, every other class gets s/K
    on_value, off_value = 1.0 - smoothing + smoothing / NUM_CLASSES, smoothing / NUM_CLASSES
    assert targets[0, 2].item() == pytest.approx(on_value)
    assert targets[0, 1].item() == pytest.approx(off_value)
    _assert_close(targets.sum(dim=1), [1.0] * len(labels), atol=1e-6, rtol=0)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_one_hot_targets_soft_inputs_are_smoothed_the_same_way(smoothing):
    soft = _random_distributions(4)
    targets = losses.one_hot_targets(soft, NUM_CLASSES, smoothing=smoothing)
    assert targets.dtype == torch.float32
    expected = [_direct_target_row(row, NUM_CLASSES, smoothing) for row in soft.double().tolist()]
    _assert_close(targets, expected, atol=1e-6, rtol=0)
    _assert_close(targets.sum(dim=1), [1.0] * 4, atol=1e-6, rtol=0)


def test_one_hot_targets_float64_soft_input_comes_back_float32():
    soft = _random_distributions(3).double()
    targets = losses.one_hot_targets(soft, NUM_CLASSES, smoothing=0.1)
    assert targets.dtype == torch.float32
    _assert_close(targets, [_direct_target_row(row, NUM_CLASSES, 0.1) for row in soft.tolist()], atol=1e-6)


def test_one_hot_targets_multi_hot_input_keeps_its_mass_per_row():
    multi_hot = torch.tensor([[1.0, 0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0, 0.0]])
    smoothing = 0.1
    targets = losses.one_hot_targets(multi_hot, NUM_CLASSES, smoothing=smoothing)
    expected = [_direct_target_row(row, NUM_CLASSES, smoothing) for row in multi_hot.tolist()]
    _assert_close(targets, expected, atol=1e-7, rtol=0)
    # a row with m positives holds m * (1 - s) + s in total
    _assert_close(targets.sum(dim=1), [2 * 0.9 + 0.1, 3 * 0.9 + 0.1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("labels", [[0, 5, 1], [0, -1, 2], [17]])
def test_one_hot_targets_rejects_class_ids_out_of_range(labels):
    with pytest.raises(ValueError, match=r"\by\b"):
        losses.one_hot_targets(torch.tensor(labels), NUM_CLASSES)


@pytest.mark.parametrize("smoothing", [-0.1, 1.0, 1.5, float("nan")])
def test_one_hot_targets_rejects_smoothing_outside_unit_interval(smoothing):
    with pytest.raises(ValueError, match="smoothing"):
        losses.one_hot_targets(torch.tensor([0, 1]), NUM_CLASSES, smoothing=smoothing)


@pytest.mark.parametrize("smoothing", [True, False, "0.1", None])
def test_one_hot_targets_rejects_smoothing_that_is_not_a_number(smoothing):
    with pytest.raises(TypeError, match="smoothing"):
        losses.one_hot_targets(torch.tensor([0, 1]), NUM_CLASSES, smoothing=smoothing)


def test_one_hot_targets_rejects_soft_input_with_other_class_count():
    with pytest.raises(ValueError, match="num_classes"):
        losses.one_hot_targets(_random_distributions(2, num_classes=4), NUM_CLASSES)


@pytest.mark.parametrize("shape", [(), (2, NUM_CLASSES, 1), (1, 2, 3, NUM_CLASSES)])
def test_one_hot_targets_rejects_wrong_rank(shape):
    labels = torch.zeros(shape, dtype=torch.int64 if len(shape) == 0 else torch.float32)
    with pytest.raises(ValueError, match=r"\by\b"):
        losses.one_hot_targets(labels, NUM_CLASSES)


def test_one_hot_targets_rejects_float_class_ids():
    with pytest.raises(TypeError, match="int64"):
        losses.one_hot_targets(torch.tensor([0.0, 1.0]), NUM_CLASSES)


@pytest.mark.parametrize("num_classes", [0, -3, True, 2.0])
def test_one_hot_targets_rejects_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        losses.one_hot_targets(torch.tensor([0, 1]), num_classes)


# ---------------------------------------------------------------------------------------------------------------------
# mix_targets and MixOutput.soft_targets
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mix_targets_interpolates_the_smoothed_one_hots(smoothing):
    y_a, y_b = [0, 1, 2, 3, 4, 2], [4, 1, 0, 0, 2, 3]
    lam = torch.rand(6, generator=_generator(5))
    mixed = losses.mix_targets(torch.tensor(y_a), torch.tensor(y_b), lam, NUM_CLASSES, smoothing)
    assert mixed.dtype == torch.float32
    expected = _direct_mixed_rows(y_a, y_b, lam.double().tolist(), NUM_CLASSES, smoothing)
    _assert_close(mixed, expected, atol=1e-6, rtol=0)
    _assert_close(mixed.sum(dim=1), [1.0] * 6, atol=1e-6, rtol=0)


def test_mix_targets_endpoints_give_each_sample_own_or_partner_target():
    y_a, y_b = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 0])
    only_a = losses.mix_targets(y_a, y_b, torch.ones(3), NUM_CLASSES, smoothing=0.1)
    only_b = losses.mix_targets(y_a, y_b, torch.zeros(3), NUM_CLASSES, smoothing=0.1)
    _assert_close(only_a, [_direct_target_row(label, NUM_CLASSES, 0.1) for label in [0, 1, 2]], atol=1e-7)
    _assert_close(only_b, [_direct_target_row(label, NUM_CLASSES, 0.1) for label in [3, 4, 0]], atol=1e-7)


def test_mix_targets_of_same_class_is_that_class():
    mixed = losses.mix_targets(torch.tensor([3, 1]), torch.tensor([3, 1]), torch.tensor([0.3, 0.8]), NUM_CLASSES)
    _assert_close(mixed, [_direct_target_row(3, NUM_CLASSES, 0.0), _direct_target_row(1, NUM_CLASSES, 0.0)])


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_mix_targets_works_for_soft_and_multi_hot_inputs(smoothing):
    soft = _random_distributions(3)
    multi_hot = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0, 1.0]])
    lam = torch.tensor([0.25, 0.5, 0.9])
    mixed = losses.mix_targets(soft, multi_hot, lam, NUM_CLASSES, smoothing)
    expected = _direct_mixed_rows(soft.double().tolist(), multi_hot.tolist(), lam.tolist(), NUM_CLASSES, smoothing)
    _assert_close(mixed, expected, atol=1e-6, rtol=0)
    # mixing two distributions gives a distribution
    other_soft = _random_distributions(3, seed=9)
    _assert_close(losses.mix_targets(soft, other_soft, lam, NUM_CLASSES, smoothing).sum(dim=1), [1.0] * 3, atol=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mix_output_soft_targets_are_the_mixed_rows(smoothing):
    y = torch.tensor([0, 1, 2, 3, 4])
    index, lam = [2, 0, 1, 4, 3], [0.7, 0.2, 1.0, 0.45, 0.0]
    mix = _hand_mix_output(y, index, lam)
    soft_targets = mix.soft_targets(NUM_CLASSES, smoothing=smoothing)
    partner_labels = [y.tolist()[j] for j in index]
    expected = _direct_mixed_rows(y.tolist(), partner_labels, lam, NUM_CLASSES, smoothing)
    _assert_close(soft_targets, expected, atol=1e-6, rtol=0)
    _assert_close(soft_targets.sum(dim=1), [1.0] * 5, atol=1e-6, rtol=0)


def test_mix_output_soft_targets_work_for_soft_labels():
    soft = _random_distributions(4)
    index, lam = [1, 2, 3, 0], [0.6, 0.3, 0.5, 0.95]
    mix = _hand_mix_output(soft, index, lam)
    rows = soft.double().tolist()
    expected = _direct_mixed_rows(rows, [rows[j] for j in index], lam, NUM_CLASSES, 0.1)
    _assert_close(mix.soft_targets(NUM_CLASSES, smoothing=0.1), expected, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------------------------
# soft_target_cross_entropy
# ---------------------------------------------------------------------------------------------------------------------


def test_soft_target_cross_entropy_equals_direct_formula_for_every_reduction():
    logits, targets = _random_logits(6), _random_distributions(6)
    per_sample = _direct_cross_entropy(logits.double().tolist(), targets.double().tolist())
    _assert_close(losses.soft_target_cross_entropy(logits, targets, reduction="none"), per_sample)
    _assert_close(losses.soft_target_cross_entropy(logits, targets, reduction="sum"), sum(per_sample))
    _assert_close(losses.soft_target_cross_entropy(logits, targets, reduction="mean"), sum(per_sample) / 6)
    _assert_close(losses.soft_target_cross_entropy(logits, targets), sum(per_sample) / 6)


def test_soft_target_cross_entropy_is_stable_for_large_logits():
    logits = _random_logits(4, scale=300.0)
    targets = _random_distributions(4)
    loss = losses.soft_target_cross_entropy(logits, targets, reduction="none")
    assert torch.isfinite(loss).all()
    _assert_close(loss, _direct_cross_entropy(logits.double().tolist(), targets.double().tolist()), rtol=1e-5)


def test_soft_target_cross_entropy_with_one_hot_targets_equals_cross_entropy():
    logits, labels = _random_logits(7), torch.tensor([0, 4, 2, 2, 1, 3, 0])
    targets = losses.one_hot_targets(labels, NUM_CLASSES)
    for reduction in ("mean", "sum", "none"):
        expected = F.cross_entropy(logits.double(), labels, reduction=reduction)
        _assert_close(losses.soft_target_cross_entropy(logits, targets, reduction=reduction), expected.tolist())


@pytest.mark.parametrize("smoothing", [0.05, 0.1, 0.4])
def test_soft_target_cross_entropy_with_smoothed_targets_equals_label_smoothing(smoothing):
    logits, labels = _random_logits(7, seed=4), torch.tensor([1, 1, 3, 0, 4, 2, 0])
    targets = losses.one_hot_targets(labels, NUM_CLASSES, smoothing=smoothing)
    expected = F.cross_entropy(logits.double(), labels, label_smoothing=smoothing, reduction="none")
    _assert_close(losses.soft_target_cross_entropy(logits, targets, reduction="none"), expected.tolist())


def test_soft_target_cross_entropy_rejects_unknown_reduction():
    with pytest.raises(ValueError, match="reduction"):
        losses.soft_target_cross_entropy(_random_logits(2), _random_distributions(2), reduction="average")


def test_soft_target_cross_entropy_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        losses.soft_target_cross_entropy(_random_logits(3), _random_distributions(3, num_classes=4))
    with pytest.raises(ValueError, match="shape"):
        losses.soft_target_cross_entropy(_random_logits(3), _random_distributions(2))


def test_soft_target_cross_entropy_gradient_is_softmax_minus_target():
    logits = _random_logits(3).double().requires_grad_(True)
    targets = _random_distributions(3).double()
    losses.soft_target_cross_entropy(logits, targets, reduction="sum").backward()
    rows = logits.detach().tolist()
    expected = []
    for row, target in zip(rows, targets.tolist()):
        normaliser = sum(math.exp(z) for z in row)
        expected.append([math.exp(z) / normaliser - t for z, t in zip(row, target)])
    _assert_close(logits.grad, expected)


# ---------------------------------------------------------------------------------------------------------------------
# binary_cross_entropy
# ---------------------------------------------------------------------------------------------------------------------


def test_binary_cross_entropy_equals_direct_formula_for_every_reduction():
    logits = _random_logits(5, seed=7)
    targets = losses.mix_targets(
        torch.tensor([0, 1, 2, 3, 4]), torch.tensor([1, 1, 4, 0, 2]), torch.rand(5, generator=_generator(8)), 5
    )
    per_sample = _direct_binary_cross_entropy(logits.double().tolist(), targets.double().tolist())
    _assert_close(losses.binary_cross_entropy(logits, targets, reduction="none"), per_sample)
    _assert_close(losses.binary_cross_entropy(logits, targets, reduction="sum"), sum(per_sample))
    _assert_close(losses.binary_cross_entropy(logits, targets), sum(per_sample) / 5)


@pytest.mark.parametrize(
    ("threshold", "binary_rows"),
    [
        # shares are 0.75 / 0.25 (exact in float32), so the threshold decides which mixed classes count as positive
        (0.2, [[1.0, 0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0, 1.0]]),
        (0.25, [[1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]]),  # strict: 0.25 > 0.25 is false
        (0.8, [[0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]]),
    ],
)
def test_binary_cross_entropy_target_threshold_binarises_strictly(threshold, binary_rows):
    logits = _random_logits(2, seed=11)
    targets = losses.mix_targets(torch.tensor([0, 4]), torch.tensor([2, 1]), torch.tensor([0.75, 0.75]), 5)
    per_sample = _direct_binary_cross_entropy(logits.double().tolist(), binary_rows)
    loss = losses.binary_cross_entropy(logits, targets, target_threshold=threshold, reduction="none")
    _assert_close(loss, per_sample)


def test_binary_cross_entropy_rejects_shape_mismatch_and_bad_reduction():
    with pytest.raises(ValueError, match="shape"):
        losses.binary_cross_entropy(_random_logits(2), _random_distributions(2, num_classes=3))
    with pytest.raises(ValueError, match="reduction"):
        losses.binary_cross_entropy(_random_logits(2), _random_distributions(2), reduction="max")


# ---------------------------------------------------------------------------------------------------------------------
# decoupled_regularizer
# ---------------------------------------------------------------------------------------------------------------------

# samples 2 and 5 mix a class with itself and must carry no decoupled term
DM_Y_A = [0, 1, 2, 3, 4, 4, 2]
DM_Y_B = [1, 3, 2, 0, 2, 4, 0]
DM_LAM = [0.7, 0.1, 0.5, 1.0, 0.0, 0.35, 0.5]


@pytest.mark.parametrize("lam_weighted", [True, False])
def test_decoupled_regularizer_equals_direct_per_sample_formula(lam_weighted):
    logits = _random_logits(len(DM_Y_A), seed=12)
    y_a, y_b, lam = torch.tensor(DM_Y_A), torch.tensor(DM_Y_B), torch.tensor(DM_LAM)
    lam_float32 = lam.double().tolist()
    per_sample = _direct_decoupled(logits.double().tolist(), DM_Y_A, DM_Y_B, lam_float32, lam_weighted)
    assert per_sample[2] == 0.0 and per_sample[5] == 0.0
    loss = losses.decoupled_regularizer(logits, y_a, y_b, lam, lam_weighted=lam_weighted, reduction="none")
    _assert_close(loss, per_sample)
    assert loss[2].item() == 0.0 and loss[5].item() == 0.0
    _assert_close(losses.decoupled_regularizer(logits, y_a, y_b, lam, lam_weighted, "sum"), sum(per_sample))
    # the mean runs over the whole batch, same-class samples counted as 0
    _assert_close(losses.decoupled_regularizer(logits, y_a, y_b, lam, lam_weighted), sum(per_sample) / len(DM_Y_A))


def test_decoupled_regularizer_default_is_lam_weighted():
    logits = _random_logits(len(DM_Y_A), seed=13)
    y_a, y_b, lam = torch.tensor(DM_Y_A), torch.tensor(DM_Y_B), torch.tensor(DM_LAM)
    expected = _direct_decoupled(logits.double().tolist(), DM_Y_A, DM_Y_B, lam.double().tolist(), True)
    _assert_close(losses.decoupled_regularizer(logits, y_a, y_b, lam), sum(expected) / len(expected))


def test_decoupled_regularizer_with_two_classes_is_zero():
    # with K = 2 each decoupled softmax holds only the scored class itself: log(e^z / e^z) = 0
    logits = _random_logits(3, num_classes=2, seed=14)
    loss = losses.decoupled_regularizer(
        logits, torch.tensor([0, 1, 0]), torch.tensor([1, 0, 1]), torch.tensor([0.3, 0.6, 0.9]), reduction="none"
    )
    _assert_close(loss, [0.0, 0.0, 0.0], atol=1e-7)


def test_decoupled_regularizer_a_term_gradient_ignores_the_competitor():
    # lam = 1 with lam weighting keeps only the a-term: -log(e^{z_a} / sum_{c != b} e^{z_c})
    y_a, y_b = [0, 3, 2], [2, 1, 4]
    logits = _random_logits(3, seed=15).double().requires_grad_(True)
    loss = losses.decoupled_regularizer(logits, torch.tensor(y_a), torch.tensor(y_b), torch.ones(3), reduction="sum")
    loss.backward()
    gradient = logits.grad
    for i, (class_a, class_b) in enumerate(zip(y_a, y_b)):
        assert gradient[i, class_b].item() == 0.0  # decoupling: exactly zero, not just small
        row = logits.detach()[i].tolist()
        normaliser = sum(math.exp(z) for c, z in enumerate(row) if c != class_b)
        for c in range(NUM_CLASSES):
            if c == class_b:
                continue
            expected = math.exp(row[c]) / normaliser - (1.0 if c == class_a else 0.0)
            assert gradient[i, c].item() == pytest.approx(expected, abs=1e-6)
    # the ordinary cross entropy to class a does push the competitor's logit down
    coupled = logits.detach().clone().requires_grad_(True)
    F.cross_entropy(coupled, torch.tensor(y_a), reduction="sum").backward()
    assert all(coupled.grad[i, class_b].item() > 0 for i, class_b in enumerate(y_b))


def test_decoupled_regularizer_b_term_gradient_ignores_the_competitor():
    # lam = 0 with lam weighting keeps only the b-term, whose softmax leaves out class a
    y_a, y_b = [1, 4], [0, 2]
    logits = _random_logits(2, seed=16).requires_grad_(True)
    loss = losses.decoupled_regularizer(logits, torch.tensor(y_a), torch.tensor(y_b), torch.zeros(2), reduction="sum")
    loss.backward()
    assert logits.grad[0, 1].item() == 0.0 and logits.grad[1, 4].item() == 0.0
    assert logits.grad[0, 0].item() < 0 and logits.grad[1, 2].item() < 0


def test_decoupled_regularizer_same_class_samples_have_finite_zero_gradient():
    logits = _random_logits(3, seed=17).requires_grad_(True)
    y = torch.tensor([1, 2, 3])
    for lam_weighted in (True, False):
        logits.grad = None
        loss = losses.decoupled_regularizer(logits, y, y.clone(), torch.tensor([0.0, 0.4, 1.0]), lam_weighted)
        loss.backward()
        assert loss.item() == 0.0
        assert torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("which", ["y_a", "y_b"])
def test_decoupled_regularizer_rejects_soft_labels(which):
    hard, soft = torch.tensor([0, 1]), _random_distributions(2)
    y_a, y_b = (soft, hard) if which == "y_a" else (hard, soft)
    with pytest.raises(TypeError, match=which):
        losses.decoupled_regularizer(_random_logits(2), y_a, y_b, torch.tensor([0.5, 0.5]))


# ---------------------------------------------------------------------------------------------------------------------
# DecoupledMixupLoss and RegMixupLoss
# ---------------------------------------------------------------------------------------------------------------------

MIX_LABELS = torch.tensor([0, 1, 2, 3, 4, 1])
MIX_INDEX = [3, 5, 2, 0, 1, 4]  # sample 2 is its own partner
MIX_LAM = [0.6, 0.25, 0.8, 0.5, 0.95, 0.1]
MIX_LAM_F32 = torch.tensor(MIX_LAM, dtype=torch.float32).double().tolist()  # the lambdas as the loss sees them


def _direct_mixed_cross_entropy_mean(logits: torch.Tensor, smoothing: float) -> float:
    labels = MIX_LABELS.tolist()
    targets = _direct_mixed_rows(labels, [labels[j] for j in MIX_INDEX], MIX_LAM_F32, NUM_CLASSES, smoothing)
    per_sample = _direct_cross_entropy(logits.double().tolist(), targets)
    return sum(per_sample) / len(per_sample)


@pytest.mark.parametrize(("eta", "smoothing", "lam_weighted"), [(0.1, 0.0, True), (1.0, 0.1, False), (2.5, 0.2, True)])
def test_decoupled_mixup_loss_is_mixed_cross_entropy_plus_eta_dm(eta, smoothing, lam_weighted):
    mix = _hand_mix_output(MIX_LABELS, MIX_INDEX, MIX_LAM)
    logits = _random_logits(len(MIX_INDEX), seed=20)
    objective = losses.DecoupledMixupLoss(eta=eta, smoothing=smoothing, lam_weighted=lam_weighted)
    labels = MIX_LABELS.tolist()
    decoupled = _direct_decoupled(
        logits.double().tolist(), labels, [labels[j] for j in MIX_INDEX], MIX_LAM_F32, lam_weighted
    )
    expected = _direct_mixed_cross_entropy_mean(logits, smoothing) + eta * sum(decoupled) / len(decoupled)
    _assert_close(objective(logits, mix), expected)


def test_decoupled_mixup_loss_with_zero_eta_is_mixed_cross_entropy():
    mix = _hand_mix_output(MIX_LABELS, MIX_INDEX, MIX_LAM)
    logits = _random_logits(len(MIX_INDEX), seed=21)
    _assert_close(losses.DecoupledMixupLoss(eta=0.0)(logits, mix), _direct_mixed_cross_entropy_mean(logits, 0.0))
    _assert_close(losses.DecoupledMixupLoss(eta=0)(logits, mix), losses.SoftTargetCrossEntropy()(logits, mix).item())


@pytest.mark.parametrize("eta", [-0.1, float("nan"), float("inf"), True])
@pytest.mark.parametrize("objective", [losses.DecoupledMixupLoss, losses.RegMixupLoss])
def test_objectives_reject_bad_eta(objective, eta):
    with pytest.raises(ValueError, match="eta"):
        objective(eta=eta)


@pytest.mark.parametrize("objective", [losses.DecoupledMixupLoss, losses.RegMixupLoss, losses.SoftTargetCrossEntropy])
def test_objectives_reject_bad_smoothing(objective):
    with pytest.raises(ValueError, match="smoothing"):
        objective(smoothing=1.0)


@pytest.mark.parametrize(("eta", "smoothing"), [(1.0, 0.0), (0.5, 0.1), (0.0, 0.2)])
def test_regmixup_loss_is_clean_cross_entropy_plus_eta_mixed_cross_entropy(eta, smoothing):
    mix = _hand_mix_output(MIX_LABELS, MIX_INDEX, MIX_LAM)
    batch_size = len(MIX_INDEX)
    logits = _random_logits(batch_size, seed=22)
    clean_logits = _random_logits(batch_size, seed=23)
    clean_targets = [_direct_target_row(label, NUM_CLASSES, smoothing) for label in MIX_LABELS.tolist()]
    clean = sum(_direct_cross_entropy(clean_logits.double().tolist(), clean_targets)) / batch_size
    expected = clean + eta * _direct_mixed_cross_entropy_mean(logits, smoothing)
    objective = losses.RegMixupLoss(eta=eta, smoothing=smoothing)
    _assert_close(objective(logits, mix, clean_logits), expected)


def test_regmixup_loss_clean_term_uses_the_clean_logits_only():
    mix = _hand_mix_output(MIX_LABELS, MIX_INDEX, MIX_LAM)
    logits = _random_logits(len(MIX_INDEX), seed=24).requires_grad_(True)
    clean_logits = _random_logits(len(MIX_INDEX), seed=25).requires_grad_(True)
    losses.RegMixupLoss(eta=0.0)(logits, mix, clean_logits).backward()
    assert logits.grad is None or torch.count_nonzero(logits.grad) == 0
    assert torch.count_nonzero(clean_logits.grad) > 0


def test_regmixup_functional_rejects_negative_eta():
    logits, targets = _random_logits(2), _random_distributions(2)
    with pytest.raises(ValueError, match="eta"):
        losses.regmixup_loss(logits, targets, logits, targets, eta=-1.0)


def test_only_regmixup_uses_the_clean_batch():
    assert losses.RegMixupLoss.uses_clean_batch is True
    assert losses.RegMixupLoss().uses_clean_batch is True
    for objective in (losses.SoftTargetCrossEntropy, losses.MixedBinaryCrossEntropy, losses.DecoupledMixupLoss):
        assert objective.uses_clean_batch is False
        assert objective().uses_clean_batch is False


# ---------------------------------------------------------------------------------------------------------------------
# SoftTargetCrossEntropy and MixedBinaryCrossEntropy on mixer outputs
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_soft_target_cross_entropy_module_on_hand_built_mix_output(smoothing):
    mix = _hand_mix_output(MIX_LABELS, MIX_INDEX, MIX_LAM)
    logits = _random_logits(len(MIX_INDEX), seed=30)
    loss = losses.SoftTargetCrossEntropy(smoothing=smoothing)(logits, mix)
    assert loss.dim() == 0
    _assert_close(loss, _direct_mixed_cross_entropy_mean(logits, smoothing))


@pytest.mark.parametrize(("smoothing", "threshold"), [(0.0, None), (0.1, None), (0.0, 0.2), (0.1, 0.5)])
def test_mixed_binary_cross_entropy_module_on_hand_built_mix_output(smoothing, threshold):
    mix = _hand_mix_output(MIX_LABELS, MIX_INDEX, MIX_LAM)
    logits = _random_logits(len(MIX_INDEX), seed=31)
    labels = MIX_LABELS.tolist()
    targets = _direct_mixed_rows(labels, [labels[j] for j in MIX_INDEX], MIX_LAM_F32, NUM_CLASSES, smoothing)
    if threshold is not None:
        targets = [[1.0 if t > threshold else 0.0 for t in row] for row in targets]
    per_sample = _direct_binary_cross_entropy(logits.double().tolist(), targets)
    objective = losses.MixedBinaryCrossEntropy(smoothing=smoothing, target_threshold=threshold)
    _assert_close(objective(logits, mix), sum(per_sample) / len(per_sample))


@pytest.mark.parametrize("threshold", [-0.1, 1.0, 2.0])
def test_mixed_binary_cross_entropy_rejects_threshold_outside_unit_interval(threshold):
    with pytest.raises(ValueError, match="target_threshold"):
        losses.MixedBinaryCrossEntropy(target_threshold=threshold)


@pytest.fixture
def real_mixup_output() -> tuple[openmix.MixOutput, torch.Tensor]:
    """A real mixup of a small batch in ``elem`` mode (one lambda per sample), and its input labels."""
    mixer = openmix.create_mixer("mixup", alpha=1.0, mode="elem")
    generator = _generator(40)
    images = torch.rand(6, 3, 8, 8, generator=generator)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    return mixer(images, labels, generator=generator), labels


def _direct_targets_of(mix: openmix.MixOutput, labels: torch.Tensor, smoothing: float) -> list[list[float]]:
    """Mixed target rows written out from the mixer's own index and lambdas."""
    label_list = labels.tolist()
    partner_labels = [label_list[j] for j in mix.index.tolist()]
    return _direct_mixed_rows(label_list, partner_labels, mix.lam.double().tolist(), NUM_CLASSES, smoothing)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_soft_target_cross_entropy_module_on_real_mixup_output(real_mixup_output, smoothing):
    mix, labels = real_mixup_output
    assert torch.equal(mix.y_b, labels[mix.index])
    assert not torch.all(mix.lam == mix.lam[0])  # elem mode: the lambdas differ, so per-sample weights matter
    logits = _random_logits(6, seed=41)
    per_sample = _direct_cross_entropy(logits.double().tolist(), _direct_targets_of(mix, labels, smoothing))
    _assert_close(losses.SoftTargetCrossEntropy(smoothing)(logits, mix), sum(per_sample) / len(per_sample))


@pytest.mark.parametrize(("smoothing", "threshold"), [(0.0, None), (0.1, 0.3)])
def test_mixed_binary_cross_entropy_module_on_real_mixup_output(real_mixup_output, smoothing, threshold):
    mix, labels = real_mixup_output
    logits = _random_logits(6, seed=42)
    targets = _direct_targets_of(mix, labels, smoothing)
    if threshold is not None:
        targets = [[1.0 if t > threshold else 0.0 for t in row] for row in targets]
    per_sample = _direct_binary_cross_entropy(logits.double().tolist(), targets)
    objective = losses.MixedBinaryCrossEntropy(smoothing=smoothing, target_threshold=threshold)
    _assert_close(objective(logits, mix), sum(per_sample) / len(per_sample))


def test_objectives_on_real_mixup_output_backpropagate_finite_gradients(real_mixup_output):
    mix, _ = real_mixup_output
    objectives = (losses.SoftTargetCrossEntropy(0.1), losses.MixedBinaryCrossEntropy(), losses.DecoupledMixupLoss())
    for objective in objectives:
        logits = _random_logits(6, seed=43).requires_grad_(True)
        objective(logits, mix).backward()
        assert torch.isfinite(logits.grad).all()
        assert torch.count_nonzero(logits.grad) > 0
