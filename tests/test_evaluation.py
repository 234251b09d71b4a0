"""Evaluation beyond top-1 (openmix.evaluation): every metric against a direct computation (scikit-learn, SciPy,
NumPy), the corruption suite's determinism and severities, the OOD readers on small files in their real on-disk
formats, `trainer.test` producing the metrics, and the report's columns and reliability diagram."""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import statistics
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage, special
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassCalibrationError

from openmix.bench.report import load_runs, read_evaluation, report, summarise
from openmix.data.readers import (
    DataFileError,
    read_digits_csv,
    read_idx,
    read_ood_images,
    read_svhn_mat,
    sklearn_digits_path,
)
from openmix.evaluation import (
    CORRUPTIONS,
    RELIABILITY_BINS,
    SEVERITY_TABLES,
    CorruptionSuite,
    Evaluation,
    ReliabilityBins,
    calibration_error,
    corrupt,
    energy_score,
    fit_images,
    is_detail,
    msp_score,
    ood_detection,
    quantise,
)
from openmix.lightning import MixClassifier

sklearn_metrics = pytest.importorskip("sklearn.metrics")

TINY = {"backbone": "resnet10t", "backbone_kwargs": {"channels": (8, 8, 8, 8), "stem_width": 8}, "cifar_stem": True}


def textured_images(batch: int = 2, channels: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth shapes plus fine texture, in [0, 1] on the 8-bit grid: every corruption changes them visibly."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, channels, 8, 8, generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    return quantise(0.8 * smooth + 0.1 * torch.rand(batch, channels, size, size, generator=generator))


# ----------------------------------------------------------------------------------------------- OOD metrics
def reference_fpr95(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """FPR at the first ROC point whose TPR reaches 95 % (scikit-learn's ROC, every threshold kept)."""
    labels = np.r_[np.ones(len(in_scores)), np.zeros(len(out_scores))]
    fpr, tpr, _ = sklearn_metrics.roc_curve(labels, np.r_[in_scores, out_scores], drop_intermediate=False)
    return float(fpr[np.argmax(tpr >= 0.95)])


@pytest.mark.parametrize(
    "case",
    ["overlapping", "ties", "separated", "large_energies", "inverted"],
)
def test_auroc_and_fpr95_match_sklearn(case):
    rng = np.random.default_rng(0)
    in_scores, out_scores = rng.normal(1.0, 1.0, 200), rng.normal(0.0, 1.0, 150)
    if case == "ties":  # few distinct values: ties inside and across the two sets
        in_scores, out_scores = np.round(in_scores), np.round(out_scores)
    elif case == "separated":
        out_scores = out_scores - 10
    elif case == "large_energies":  # logsumexp of confident logits: a sigmoid would squash these to 1.0
        in_scores, out_scores = 40 + in_scores, 38 + out_scores
    elif case == "inverted":
        in_scores, out_scores = out_scores, in_scores
    auroc, fpr95 = ood_detection(torch.tensor(in_scores), torch.tensor(out_scores))
    labels = np.r_[np.ones(len(in_scores)), np.zeros(len(out_scores))]
    # torchmetrics computes the curve in float32: agreement to its precision
    assert float(auroc) == pytest.approx(sklearn_metrics.roc_auc_score(labels, np.r_[in_scores, out_scores]), abs=1e-6)
    assert float(fpr95) == pytest.approx(reference_fpr95(in_scores, out_scores), abs=1e-6)


def test_ood_detection_refuses_empty_or_nan_scores():
    with pytest.raises(ValueError, match="in_scores"):
        ood_detection(torch.tensor([]), torch.tensor([0.1]))
    with pytest.raises(ValueError, match="out_scores"):
        ood_detection(torch.tensor([0.5]), torch.tensor([math.nan]))


def test_msp_and_energy_scores_are_the_formulas():
    logits = torch.randn(7, 5, generator=torch.Generator().manual_seed(1)) * 4
    array = logits.double().numpy()
    torch.testing.assert_close(msp_score(logits).double(), torch.tensor(special.softmax(array, axis=1).max(axis=1)))
    torch.testing.assert_close(energy_score(logits).double(), torch.tensor(special.logsumexp(array, axis=1)))
    # temperature T: T * logsumexp(logits / T), the negative free energy of Liu et al. (2020), Eq. 1
    expected = 2.0 * special.logsumexp(array / 2.0, axis=1)
    torch.testing.assert_close(energy_score(logits, 2.0).double(), torch.tensor(expected), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------ calibration
def reference_bins(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = 15):
    """Mean confidence, accuracy and count per equal-width bin [j/n, (j+1)/n), the last bin closed at 1."""
    confidence, prediction = probabilities.max(axis=1), probabilities.argmax(axis=1)
    index = np.minimum(np.floor(confidence * n_bins).astype(int), n_bins - 1)
    count = np.bincount(index, minlength=n_bins).astype(float)
    filled = np.maximum(count, 1)
    mean_confidence = np.bincount(index, weights=confidence, minlength=n_bins) / filled
    accuracy = np.bincount(index, weights=(prediction == labels).astype(float), minlength=n_bins) / filled
    return mean_confidence, accuracy, count


def test_reliability_bins_match_a_direct_computation():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(300, 6, generator=generator) * 3
    logits[:5, 0] = 100.0  # confidences of exactly 1: the last bin
    labels = torch.randint(0, 6, (300,), generator=generator)
    metric = ReliabilityBins()
    for start in range(0, 300, 64):  # in batches, as in an epoch
        metric.update(logits[start : start + 64].softmax(dim=1), labels[start : start + 64])
    confidence, accuracy, count = metric.compute()
    expected = reference_bins(logits.softmax(dim=1).double().numpy(), labels.numpy())
    for got, want in zip((confidence, accuracy, count), expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-7)
    assert count.sum() == 300 and count[-1] >= 5


def test_ece_of_the_bins_is_torchmetrics_ece():
    """Without a confidence of exactly 1, the bins' ECE is the module's ECE (torchmetrics, 15 bins)."""
    generator = torch.Generator().manual_seed(3)
    probabilities = (torch.randn(500, 4, generator=generator) * 2).softmax(dim=1)
    labels = torch.randint(0, 4, (500,), generator=generator)
    bins = ReliabilityBins(RELIABILITY_BINS)
    bins.update(probabilities, labels)
    reference = MulticlassCalibrationError(4, n_bins=RELIABILITY_BINS, norm="l1")
    reference.update(probabilities, labels)
    torch.testing.assert_close(calibration_error(*bins.compute()).float(), reference.compute(), atol=1e-6, rtol=0)
    # and against the direct formula: sum over bins of |accuracy - confidence| weighted by the bin's share
    confidence, accuracy, count = reference_bins(probabilities.double().numpy(), labels.numpy())
    direct = float(np.sum(count / count.sum() * np.abs(accuracy - confidence)))
    assert float(calibration_error(*bins.compute())) == pytest.approx(direct, abs=1e-7)


def test_reliability_bins_refuse_bad_shapes():
    with pytest.raises(ValueError, match="probabilities"):
        ReliabilityBins().update(torch.rand(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="n_bins"):
        ReliabilityBins(0)


# ------------------------------------------------------------------------------------------------ corruptions
def test_corruptions_are_the_direct_formulas():
    x = textured_images()
    sigma = SEVERITY_TABLES["cifar"]["gaussian_noise"][2]
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    got = corrupt(x, "gaussian_noise", 3, torch.Generator().manual_seed(5))
    torch.testing.assert_close(got, quantise(x + sigma * noise))
    # blur: a sampled Gaussian reaching int(4 sigma + 0.5) pixels, mirrored borders (torch's "reflect")
    sigma = SEVERITY_TABLES["cifar"]["gaussian_blur"][4]
    reference = np.stack(
        [
            [ndimage.gaussian_filter(plane.double().numpy(), sigma, mode="mirror", radius=int(4 * sigma + 0.5))
             for plane in image]
            for image in x
        ]
    )  # fmt: skip
    got = corrupt(x, "gaussian_blur", 5)
    assert (got - quantise(torch.from_numpy(reference).float())).abs().max() <= 1.001 / 255
    # contrast: blend towards the mean grey level (ITU-R 601 luma, as torchvision's rgb_to_grayscale)
    factor = SEVERITY_TABLES["cifar"]["contrast"][1]
    grey = (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).mean(dim=(1, 2)).view(-1, 1, 1, 1)
    got = corrupt(x, "contrast", 2)
    assert (got - quantise(factor * x + (1 - factor) * grey)).abs().max() <= 1.001 / 255
    # JPEG: the same bytes as PIL's encoder at the table's quality
    quality = SEVERITY_TABLES["cifar"]["jpeg"][2]
    buffer = io.BytesIO()
    Image.fromarray((x[0] * 255).round().byte().permute(1, 2, 0).numpy()).save(buffer, "JPEG", quality=quality)
    pil = torch.from_numpy(np.array(Image.open(buffer))).permute(2, 0, 1).float() / 255
    assert (corrupt(x[:1], "jpeg", 3)[0] - pil).abs().max() <= 2.001 / 255


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("table", sorted(SEVERITY_TABLES))
def test_severities_increase_the_distortion(table, channels):
    x = textured_images(channels=channels)
    for corruption in CORRUPTIONS:
        errors = [
            (corrupt(x, corruption, s, torch.Generator().manual_seed(0), table) - x).square().mean().sqrt().item()
            for s in range(1, 6)
        ]
        assert all(a < b for a, b in zip(errors, errors[1:])), (corruption, errors)
        assert errors[0] > 0.5 / 255, corruption


def test_corruption_suite_is_deterministic_per_seed():
    x = textured_images(batch=3)
    suite = CorruptionSuite(seed=7)
    again = CorruptionSuite(["gaussian_noise"], [3], seed=7)  # a subset of the cases, built anew
    first = suite(x, "gaussian_noise", 3, batch_index=4)
    torch.testing.assert_close(first, again(x, "gaussian_noise", 3, batch_index=4), rtol=0, atol=0)
    torch.testing.assert_close(first, suite(x, "gaussian_noise", 3, batch_index=4), rtol=0, atol=0)
    assert not torch.equal(first, CorruptionSuite(seed=8)(x, "gaussian_noise", 3, batch_index=4))
    assert not torch.equal(first, suite(x, "gaussian_noise", 3, batch_index=5)), "each batch draws its own noise"
    assert not torch.equal(first, suite(x, "gaussian_noise", 3, batch_index=4, rank=1)), "each rank too"
    torch.manual_seed(0)
    state = torch.get_rng_state()
    suite(x, "gaussian_noise", 1, batch_index=0)
    assert torch.equal(state, torch.get_rng_state()), "the global RNG is left alone"
    for corruption in ("gaussian_blur", "contrast", "jpeg"):  # deterministic transforms
        torch.testing.assert_close(suite(x, corruption, 2, 0), CorruptionSuite(seed=1)(x, corruption, 2, 9))
    assert len(suite.cases) == len(CORRUPTIONS) * 5 and suite.cases[0] == ("gaussian_noise", 1)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"corruptions": ["fog"]}, ValueError, "corruption must be one of"),
        ({"corruptions": ["contrast", "contrast"]}, ValueError, "corruptions must not repeat"),
        ({"corruptions": "contrast"}, TypeError, "corruptions must be a list"),
        ({"severities": [0]}, ValueError, "severity must be one of"),
        ({"severity_table": "tiny"}, ValueError, "table must be one of"),
        ({"seed": -1}, ValueError, "seed"),
        ({"ood": 3}, TypeError, "ood must be"),
        ({"ood_limit": 0}, ValueError, "ood_limit"),
        ({"corruption_every": 0}, ValueError, "corruption_every"),
        ({"ood_batch_size": 0}, ValueError, "ood_batch_size"),
        ({"mean": (0.5,)}, ValueError, "mean and std"),
        ({"mean": (0.5,), "std": (0.0,)}, ValueError, "std > 0"),
        ({"during_fit": "yes"}, TypeError, "during_fit"),
    ],
)
def test_bad_evaluation_options_are_refused_by_name(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        Evaluation(**kwargs)


def test_corrupt_refuses_bad_images():
    with pytest.raises(ValueError, match="pixels"):
        corrupt(torch.rand(2, 4, 8, 8), "contrast", 1)
    with pytest.raises(ValueError, match="pixels"):
        corrupt(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "contrast", 1)


# ------------------------------------------------------------------------------------------------ OOD readers
def write_idx(path: Path, images: np.ndarray) -> None:
    """An MNIST-style idx file: 0x00000803, three big-endian uint32 sizes, then the uint8 pixels; gzipped."""
    header = bytes([0, 0, 0x08, images.ndim]) + np.asarray(images.shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb") as stream:
        stream.write(header + images.astype(np.uint8).tobytes())


def test_digits_reader_on_a_small_file_in_sklearns_format(tmp_path):
    pixels = np.arange(3 * 64).reshape(3, 64) % 17  # values 0..16, as the real file
    rows = [",".join(str(v) for v in [*row, label]) for row, label in zip(pixels, (4, 0, 9))]
    path = tmp_path / "digits.csv.gz"
    with gzip.open(path, "wt") as stream:
        stream.write("\n".join(rows) + "\n")
    images = read_digits_csv(path)
    assert images.dtype == np.uint8 and images.shape == (3, 8, 8)
    np.testing.assert_array_equal(images, np.rint(pixels * 255 / 16).reshape(3, 8, 8))
    (tmp_path / "bad.csv").write_text("1,2,3\n")
    with pytest.raises(DataFileError, match="bad.csv"):
        read_digits_csv(tmp_path / "bad.csv")
    (tmp_path / "range.csv").write_text(",".join(["17"] * 65) + "\n")
    with pytest.raises(DataFileError, match=r"range.csv: digit pixels lie in \[0, 16\]"):
        read_digits_csv(tmp_path / "range.csv")


def test_bundled_digits_read_as_sklearn_reads_them():
    from sklearn.datasets import load_digits

    images = read_ood_images("digits")
    reference = load_digits().images  # (1797, 8, 8) float in [0, 16]
    assert images.shape == reference.shape == (1797, 8, 8)
    np.testing.assert_array_equal(images, np.rint(reference * 255 / 16).astype(np.uint8))
    assert sklearn_digits_path().name == "digits.csv.gz"
    assert read_ood_images("digits", limit=5).shape == (5, 8, 8)


def test_svhn_reader_on_a_small_mat_file(tmp_path):
    from scipy.io import savemat

    images = np.random.default_rng(0).integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)  # SVHN's (H, W, C, N)
    savemat(tmp_path / "test_32x32.mat", {"X": images, "y": np.arange(1, 6).reshape(5, 1)})
    read = read_svhn_mat(tmp_path / "test_32x32.mat")
    assert read.shape == (5, 32, 32, 3) and read.dtype == np.uint8
    np.testing.assert_array_equal(read[2], images[:, :, :, 2])
    np.testing.assert_array_equal(read_ood_images(tmp_path / "test_32x32.mat", limit=2), read[:2])
    savemat(tmp_path / "other.mat", {"Y": images})
    with pytest.raises(DataFileError, match="other.mat: no 'X'"):
        read_svhn_mat(tmp_path / "other.mat")
    (tmp_path / "junk.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(DataFileError, match="junk.mat"):
        read_svhn_mat(tmp_path / "junk.mat")


def test_folder_and_idx_ood_sets(tmp_path):
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (10, 12), dtype=np.uint8)
    colour = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    (tmp_path / "svhn" / "b").mkdir(parents=True)
    Image.fromarray(grey).save(tmp_path / "svhn" / "a.png")
    Image.fromarray(colour).save(tmp_path / "svhn" / "b" / "c.PNG")
    (tmp_path / "svhn" / "notes.txt").write_text("not an image")
    images = read_ood_images(tmp_path / "svhn")
    assert len(images) == 2
    np.testing.assert_array_equal(images[0], grey)  # greyscale stays (H, W)
    np.testing.assert_array_equal(images[1], colour)
    idx_images = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", idx_images)
    np.testing.assert_array_equal(read_ood_images(tmp_path / "t10k-images-idx3-ubyte.gz"), idx_images)
    np.testing.assert_array_equal(read_idx(tmp_path / "t10k-images-idx3-ubyte.gz"), idx_images)
    with pytest.raises(FileNotFoundError, match="missing"):
        read_ood_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no image file"):
        read_ood_images(tmp_path / "empty")
    (tmp_path / "broken" / "x").mkdir(parents=True)
    (tmp_path / "broken" / "x" / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(DataFileError, match="bad.jpg"):
        read_ood_images(tmp_path / "broken")


def test_ood_images_are_fitted_to_the_test_images():
    grey = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8)
    fitted = fit_images(grey, (3, 16, 16))
    assert fitted.shape == (2, 3, 16, 16) and fitted.dtype == torch.uint8
    assert torch.equal(fitted[:, 0], fitted[:, 2]), "grey repeated into RGB"
    colour = [np.full((5, 7, 3), (255, 0, 0), dtype=np.uint8), np.zeros((9, 4, 3), dtype=np.uint8)]
    fitted = fit_images(colour, (1, 6, 6))
    assert fitted.shape == (2, 1, 6, 6)
    assert int(fitted[0, 0, 3, 3]) == round(0.2989 * 255)  # luma of pure red
    with pytest.raises(ValueError, match="1 or 3 channels"):
        fit_images(grey, (4, 8, 8))


# ------------------------------------------------------------------------------------------------ the module
class SmallData(L.LightningDataModule):
    """64 one-channel 12x12 images of 4 classes (the class sets the brightness), normalised with (0.5, 0.25)."""

    MEAN, STD = (0.5,), (0.25,)

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.y = torch.arange(64) % 4
        pixels = quantise(0.15 + 0.2 * self.y.view(-1, 1, 1, 1) + 0.1 * torch.rand(64, 1, 12, 12, generator=generator))
        self.x = (pixels - 0.5) / 0.25

    def loader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), batch_size=16)

    train_dataloader = val_dataloader = test_dataloader = loader


def quick_trainer(tmp_path: Path) -> L.Trainer:
    return L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=L.pytorch.loggers.CSVLogger(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )


@pytest.mark.parametrize("every", [1, 3])
def test_trainer_test_logs_every_metric_and_they_match_a_direct_computation(tmp_path, every):
    idx_images = np.random.default_rng(2).integers(0, 256, (40, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "ood-images-idx3-ubyte.gz", idx_images)
    evaluation = Evaluation(
        severities=(1, 5),
        seed=3,
        ood=str(tmp_path / "ood-images-idx3-ubyte.gz"),
        ood_batch_size=16,
        corruption_every=every,
    )
    model = MixClassifier(**TINY, num_classes=4, in_chans=1, mixer=None, evaluation=evaluation)
    data = SmallData()
    trainer = quick_trainer(tmp_path)
    trainer.fit(model, data)
    assert not any("corruption" in key for key in trainer.callback_metrics), "off in fit's validation by default"
    results = trainer.test(model, data, verbose=False)[0]
    model.eval()
    with torch.no_grad():
        logits = model(data.x)
        suite = evaluation.corruption_suite()
        for corruption in evaluation.corruptions:  # each batch corrupted with its own seeded draws, then scored
            for severity in (1, 5):
                correct = seen = 0
                for batch_index, start in enumerate(range(0, 64, 16)):
                    if batch_index % every:  # corruption_every: only batches 0, k, 2k, ...
                        continue
                    pixels = quantise(data.x[start : start + 16] * 0.25 + 0.5)
                    corrupted = (suite(pixels, corruption, severity, batch_index) - 0.5) / 0.25
                    correct += int((model(corrupted).argmax(dim=1) == data.y[start : start + 16]).sum())
                    seen += 16
                assert seen == (64 if every == 1 else 32)
                logged = read_logged(tmp_path, f"test/corruption/{corruption}/{severity}")
                assert logged == pytest.approx(correct / seen, abs=1e-6), (corruption, severity)
            severities = [read_logged(tmp_path, f"test/corruption/{corruption}/{s}") for s in (1, 5)]
            assert results[f"test/corruption/{corruption}"] == pytest.approx(statistics.fmean(severities), abs=1e-6)
        ood = (fit_images(idx_images, (1, 12, 12)).float() / 255 - 0.5) / 0.25
        ood_logits = model(ood)
    means = [read_logged(tmp_path, f"test/corruption/{c}/{s}") for c in evaluation.corruptions for s in (1, 5)]
    assert results["test/corruption_mean"] == pytest.approx(statistics.fmean(means), abs=1e-6)
    labels = np.r_[np.ones(64), np.zeros(40)]
    for name, score in (("msp", msp_score), ("energy", energy_score)):
        scores = torch.cat([score(logits), score(ood_logits)]).numpy()
        auroc = sklearn_metrics.roc_auc_score(labels, scores)
        assert results[f"test/ood_auroc_{name}"] == pytest.approx(auroc, abs=1e-5)
        fpr95 = reference_fpr95(scores[:64], scores[64:])
        assert results[f"test/ood_fpr95_{name}"] == pytest.approx(fpr95, abs=1e-6)
    expected = reference_bins(logits.softmax(dim=1).double().numpy(), data.y.numpy())
    for field, values in zip(("confidence", "accuracy", "count"), expected):
        logged = [read_logged(tmp_path, f"test/reliability/{field}_{j:02d}") for j in range(RELIABILITY_BINS)]
        np.testing.assert_allclose(logged, values, atol=1e-5)
    assert "test/ece" in results and "test/reliability/count_00" not in results, "bins go to the logs only"


def read_logged(tmp_path: Path, key: str) -> float:
    """The last value of ``key`` in the test run's metrics.csv (the CSV logger's newest version)."""
    folder = max((tmp_path / "lightning_logs").iterdir(), key=lambda p: int(p.name.split("_")[1]))
    with open(folder / "metrics.csv", newline="") as stream:
        values = [row[key] for row in csv.DictReader(stream) if row.get(key)]
    return float(values[-1])


def test_evaluation_during_fit_and_none(tmp_path):
    evaluation = Evaluation(corruptions=("contrast",), severities=(2,), ood=None, during_fit=True)
    model = MixClassifier(**TINY, num_classes=4, in_chans=1, mixer=None, evaluation=evaluation)
    trainer = quick_trainer(tmp_path)
    trainer.fit(model, SmallData())
    assert "val/corruption/contrast" in trainer.callback_metrics and "val/ood_auroc_msp" not in trainer.callback_metrics
    model = MixClassifier(**TINY, num_classes=4, in_chans=1, mixer=None, evaluation=None)
    results = quick_trainer(tmp_path).test(model, SmallData(), verbose=False)[0]
    assert set(results) == {"test/top1", "test/top5", "test/nll", "test/ece"}


def test_evaluation_given_as_saved_hyperparameters_and_refused_when_wrong():
    model = MixClassifier(**TINY, num_classes=4, in_chans=1, mixer=None, evaluation={"corruptions": ["jpeg"]})
    assert model.evaluator.suite.corruptions == ("jpeg",)
    with pytest.raises(TypeError, match="evaluation must be"):
        MixClassifier(**TINY, num_classes=4, in_chans=1, mixer=None, evaluation="all")
    assert not any("evaluator" in key for key in model.state_dict()), "checkpoints keep no evaluation state"
    assert "evaluation" not in model.hparams, "how to evaluate comes from the command, not from the checkpoint"


def test_evaluation_needs_the_inputs_normalisation(tmp_path):
    model = MixClassifier(**TINY, num_classes=4, in_chans=1, mixer=None, evaluation=Evaluation(ood=None))
    with pytest.raises(ValueError, match="set evaluation.mean and evaluation.std"):
        quick_trainer(tmp_path).test(model, SmallData().loader(), verbose=False)  # plain loaders: no statistics


def test_detail_values_are_told_apart():
    assert is_detail("reliability/count_03") and is_detail("corruption/jpeg/3")
    assert not is_detail("corruption/jpeg") and not is_detail("corruption_mean") and not is_detail("ood_auroc_msp")


# ------------------------------------------------------------------------------------------------ the report
def fake_evaluated_run(root: Path, labels: dict, top1: float, evaluation: dict[str, float] | None) -> Path:
    """A finished run folder (metrics.csv + run.json, as tests/test_bench.py) and, with ``evaluation``, the log of
    an ``openmix test`` beside it (``test/version_0/metrics.csv``, one row as the CSV logger writes it)."""
    directory = root / ",".join(f"{k}={v}" for k, v in labels.items())
    directory.mkdir(parents=True)
    lines = ["epoch,step,val/top1,val/top5,val/nll,val/ece,train/images_per_sec", f"0,9,{top1},0.99,0.5,0.05,100.0"]
    (directory / "metrics.csv").write_text("\n".join(lines) + "\n")
    record = {"status": "done", "labels": labels, "wall_time_s": 60.0, "peak_rss_mb": 800.0}
    (directory / "run.json").write_text(json.dumps(record))
    if evaluation is not None:
        (directory / "test" / "version_0").mkdir(parents=True)
        keys = sorted(evaluation)
        rows = [
            "epoch,step," + ",".join(f"test/{k}" for k in keys),
            "0,9," + ",".join(str(evaluation[k]) for k in keys),
        ]
        (directory / "test" / "version_0" / "metrics.csv").write_text("\n".join(rows) + "\n")
    return directory


def evaluation_values(shift: float) -> dict[str, float]:
    values = {"ece": 0.04 + shift, "corruption_mean": 0.6 + shift, "ood_auroc_msp": 0.8 + shift}
    values |= {"corruption/contrast": 0.7 + shift, "corruption/jpeg": 0.5 + shift, "corruption/jpeg/1": 0.6}
    values |= {"ood_fpr95_msp": 0.5 - shift, "ood_auroc_energy": 0.85, "ood_fpr95_energy": 0.4}
    for j in range(RELIABILITY_BINS):
        values |= {f"reliability/confidence_{j:02d}": (j + 0.5) / 15, f"reliability/accuracy_{j:02d}": j / 15}
        values[f"reliability/count_{j:02d}"] = 10.0 * (j % 3)
    return values


def test_report_shows_the_evaluation_columns_and_reliability_diagrams(tmp_path):
    shifts = {("mixup", 0): 0.0, ("mixup", 1): 0.02, ("vanilla", 0): -0.1, ("vanilla", 1): -0.08}
    for (mixer, seed), shift in shifts.items():
        fake_evaluated_run(tmp_path, {"mixer": mixer, "seed": seed}, 0.9 + shift, evaluation_values(shift))
    fake_evaluated_run(tmp_path, {"mixer": "cutmix", "seed": 0}, 0.91, None)  # never evaluated
    rows = {row["method"]: row for row in summarise(load_runs(tmp_path), {"mixer": "vanilla"})}
    mixup = [evaluation_values(shift) for (mixer, _), shift in shifts.items() if mixer == "mixup"]
    for key in ("corruption_mean", "corruption/jpeg", "ood_auroc_msp", "ood_fpr95_msp", "ece"):
        values = [100 * v[key] for v in mixup]
        assert rows["mixup"][f"eval/{key}"] == pytest.approx(statistics.fmean(values)), key
        assert rows["mixup"][f"eval/{key}_std"] == pytest.approx(statistics.stdev(values)), key
    assert math.isnan(rows["cutmix"]["eval/corruption_mean"])
    assert "eval/corruption/jpeg/1" not in rows["mixup"], "per-severity values stay out of the table"
    table = report(tmp_path, tmp_path / "out", last=1)
    assert "corruption acc., mean (%)" in table and "OOD AUROC, MSP (%)" in table and "jpeg (%)" in table
    assert "| mixup | 61.00 ± 1.41 |" in table  # corruption mean of 60 % and 62 %
    assert (tmp_path / "out" / "reliability.png").is_file()
    with open(tmp_path / "out" / "results.csv", newline="") as stream:
        header = next(csv.reader(stream))
    assert "eval/ood_fpr95_energy" in header and "eval/corruption/contrast" in header


def test_report_without_evaluations_is_unchanged(tmp_path):
    fake_evaluated_run(tmp_path, {"mixer": "mixup"}, 0.9, None)
    table = report(tmp_path, tmp_path / "out", last=1)
    assert "corruption" not in table and not (tmp_path / "out" / "reliability.png").exists()


def test_evaluations_are_read_newest_test_first_then_validation(tmp_path):
    folder = fake_evaluated_run(tmp_path, {"mixer": "a"}, 0.9, {"corruption_mean": 0.3})
    (folder / "test" / "version_1").mkdir()
    (folder / "test" / "version_1" / "metrics.csv").write_text("epoch,step,test/corruption_mean\n0,9,0.4\n")
    (folder / "test" / "version_2").mkdir()  # a test without evaluation (evaluation: null) is passed over
    (folder / "test" / "version_2" / "metrics.csv").write_text("epoch,step,test/top1\n0,9,0.9\n")
    assert read_evaluation(folder)["corruption_mean"] == 0.4
    other = fake_evaluated_run(tmp_path, {"mixer": "b"}, 0.9, None)
    (other / "validate" / "version_0").mkdir(parents=True)
    (other / "validate" / "version_0" / "metrics.csv").write_text("epoch,step,val/ood_auroc_msp\n0,9,0.7\n")
    assert read_evaluation(other) == {"ood_auroc_msp": 0.7}
    # a fit that evaluated its validation epochs (during_fit): the final epoch's values
    curves = {"val/top1": [0.5, 0.6], "val/corruption_mean": [0.2, 0.25]}
    assert read_evaluation(tmp_path / "none", curves)["corruption_mean"] == 0.25
