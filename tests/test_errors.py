"""Bad input gets a ValueError / TypeError whose message names the offending argument."""

from __future__ import annotations

import pytest
import torch
from conftest import build_mixer

import openmix

X = torch.randn(4, 3, 8, 8)
Y = torch.arange(4)

CALL_ERRORS = [
    # (description, x, y, call kwargs, exception, message pattern)
    ("x not a tensor", X.numpy(), Y, {}, TypeError, "x must be a torch.Tensor"),
    ("x of rank 1", X[0, 0, 0], Y[:1], {}, ValueError, r"x must have shape "),
    ("x of rank 5", X[None], Y[:1], {}, ValueError, r"x must have shape "),
    ("x of integers", X.long(), Y, {}, TypeError, "x must be a floating point"),
    ("x empty batch", X[:0], Y[:0], {}, ValueError, "x must hold at least one"),
    ("x empty image", torch.randn(4, 3, 0, 8), Y, {}, ValueError, "x must hold at least one"),
    ("y not a tensor", X, [0, 1, 2, 3], {}, TypeError, "y must be a torch.Tensor"),
    ("y wrong batch", X, Y[:3], {}, ValueError, "y must have batch size 4"),
    ("y float class ids", X, Y.float(), {}, TypeError, "y with shape"),
    ("y int32 class ids", X, Y.int(), {}, TypeError, "y with shape"),
    ("y negative", X, torch.tensor([0, -1, 2, 3]), {}, ValueError, "y holds negative"),
    # y on another device than x (meta stands in for CUDA on a CPU-only machine)
    ("y on another device", X, Y.to("meta"), {}, ValueError, "y is on meta but x is on cpu"),
    ("y rank 3", X, torch.zeros(4, 2, 2), {}, ValueError, r"y must have shape \(B,\) or \(B, K\)"),
    ("y integer soft", X, torch.zeros(4, 5, dtype=torch.int64), {}, TypeError, "floating point target"),
    ("lam NaN", X, Y, {"lam": float("nan")}, ValueError, "lam must not be NaN"),
    ("lam above 1", X, Y, {"lam": 1.5}, ValueError, r"lam must lie in \[0, 1\]"),
    ("lam below 0", X, Y, {"lam": -0.1}, ValueError, r"lam must lie in \[0, 1\]"),
    ("lam wrong length", X, Y, {"lam": torch.rand(3)}, ValueError, "lam must be a scalar or a"),
    ("lam a string", X, Y, {"lam": "0.5"}, TypeError, "lam must be a number"),
    ("lam a bool", X, Y, {"lam": True}, TypeError, "lam must be a number"),
    ("generator not a generator", X, Y, {"generator": 3}, TypeError, "generator must be"),
    ("unexpected call argument", X, Y, {"featurs": 1}, ValueError, "unexpected call arguments"),
]


@pytest.mark.parametrize("name", openmix.list_mixers())
@pytest.mark.parametrize("case, x, y, kwargs, error, pattern", CALL_ERRORS, ids=[case[0] for case in CALL_ERRORS])
def test_bad_call_arguments(name, case, x, y, kwargs, error, pattern):
    mixer = build_mixer(name)
    with pytest.raises(error, match=pattern):
        mixer(x, y, **kwargs)


@pytest.mark.parametrize("name", openmix.list_mixers())
def test_the_rank_error_names_the_shapes_a_mixer_takes(name):
    """Image mixers take (B, C, H, W) only; feature-level ones also take hidden states of the ranks they declare."""
    mixer = build_mixer(name)
    ranks = mixer.input_ranks
    wrong = next(rank for rank in (3, 2, 5) if rank not in ranks)
    shape = (4, 3, 8, 8, 2)[:wrong]
    expected = (
        r"\(B, C, H, W\)" if ranks == (4,) else rf"one of {ranks} dimensions".replace("(", r"\(").replace(")", r"\)")
    )
    with pytest.raises(ValueError, match=rf"x must have shape {expected}, got {wrong} dimensions"):
        mixer(torch.randn(shape), Y)


def test_per_sample_lam_in_batch_mode_is_refused():
    with pytest.raises(ValueError, match="mode='batch' takes one lam"):
        openmix.create_mixer("cutmix")(X, Y, lam=torch.tensor([0.1, 0.2, 0.3, 0.4]))


CONSTRUCTOR_ERRORS = [
    ("mixup", {"alpha": 0}, ValueError, "alpha must be a finite number > 0"),
    ("mixup", {"alpha": -1.0}, ValueError, "alpha must be a finite number > 0"),
    ("mixup", {"alpha": float("nan")}, ValueError, "alpha"),
    ("mixup", {"alpha": float("inf")}, ValueError, "alpha"),
    ("mixup", {"alpha": "1"}, TypeError, "alpha must be a number"),
    ("mixup", {"mode": "pair"}, ValueError, "mode must be one of"),
    ("mixup", {"pairing": "roll"}, ValueError, "pairing must be one of"),
    ("mixup", {"inplace": 1}, TypeError, "inplace must be a bool"),
    ("mixup", {"alpah": 1.0}, ValueError, r"unknown argument\(s\) for mixer 'mixup': 'alpah' \(did you mean 'alpha'"),
    ("cutmix", {"minmax": (0.6, 0.2)}, ValueError, "minmax must be"),
    ("cutmix", {"minmax": (0.2,)}, ValueError, "minmax must be"),
    ("fmix", {"decay_power": 0}, ValueError, "decay_power must be"),
    ("fmix", {"max_soft": 0.7}, ValueError, "max_soft must lie"),
    ("saliencymix", {"backend": "skimage"}, ValueError, "backend must be one of"),
    ("saliencymix", {"max_saliency_size": 2}, ValueError, "max_saliency_size"),
    ("resizemix", {"scope": (0.0, 0.5)}, ValueError, "scope must be"),
    ("resizemix", {"scope": (0.8, 0.1)}, ValueError, "scope must be"),
    ("resizemix", {"interpolation": "cubic"}, ValueError, "interpolation must be"),
    ("resizemix", {"interpolation": "bilinear", "mode": "elem"}, ValueError, "interpolation='bilinear'"),
    ("attentivemix", {"grid": 0}, ValueError, "grid must be a positive int"),
    ("attentivemix", {"top_k": 50}, ValueError, "top_k must be"),
    ("attentivemix", {"extractor": 3}, TypeError, "extractor must be"),
    ("attentivemix", {"extractor_size": 0}, ValueError, "extractor_size"),
    ("randomchoice", {"mixers": ()}, ValueError, "mixers must be a non-empty"),
    ("randomchoice", {"mixers": ("mixup",), "probs": (0.5, 0.5)}, ValueError, "probs has 2 entries for 1 mixers"),
    ("randomchoice", {"probs": (-1.0, 1.0)}, ValueError, "probs must be finite"),
    ("randomchoice", {"no_mix_prob": 1.5}, ValueError, "no_mix_prob"),
    ("randomchoice", {"mixers": ("mixup", {"alpha": 1.0})}, ValueError, "needs a 'name' key"),
    ("randomchoice", {"mixers": ("mixup", 3)}, TypeError, "mixers must hold"),
    ("randomchoice", {"mixers": ("mixup", "mixpu")}, ValueError, "did you mean 'mixup'"),
]


@pytest.mark.parametrize(
    "name, kwargs, error, pattern", CONSTRUCTOR_ERRORS, ids=[f"{c[0]}-{sorted(c[1])[0]}" for c in CONSTRUCTOR_ERRORS]
)
def test_bad_constructor_arguments(name, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        build_mixer(name, **kwargs)


def test_soft_targets_reject_labels_out_of_range():
    out = openmix.create_mixer("mixup")(X, torch.tensor([0, 1, 2, 9]))
    with pytest.raises(ValueError, match=r"y holds class ids outside \[0, 5\)"):
        out.soft_targets(5)
    with pytest.raises(ValueError, match="smoothing must lie"):
        out.soft_targets(10, smoothing=1.0)


def test_unknown_mixer_names_close_matches():
    with pytest.raises(ValueError, match="unknown mixer 'cutmx'; did you mean 'cutmix'"):
        openmix.create_mixer("cutmx")
    with pytest.raises(TypeError, match="mixer name must be a str"):
        openmix.create_mixer(3)
