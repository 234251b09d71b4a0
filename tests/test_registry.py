"""The registry is the one source of truth: names, papers, defaults, and the capabilities the classes declare."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

import openmix
from openmix.mixers import _registry

EXPECTED = {"attentivemix", "cutmix", "fmix", "mixup", "randomchoice", "resizemix", "saliencymix"}


def test_list_mixers_is_sorted_and_complete():
    names = openmix.list_mixers()
    assert names == sorted(names)
    assert EXPECTED <= set(names)
    assert openmix.list_mixers("*mix") == [n for n in names if n.endswith("mix")]
    assert openmix.list_mixers("CUT*") == ["cutmix"]


@pytest.mark.parametrize("name", openmix.list_mixers())
def test_entries_carry_paper_link_and_valid_defaults(name):
    entry = openmix.get_mixer_entry(name)
    assert entry.name == name and entry.paper and entry.url.startswith("https://")
    parameters = inspect.signature(entry.cls.__init__).parameters
    assert set(entry.defaults) <= set(parameters)
    assert entry.hooks and set(entry.hooks) <= set(openmix.mixers.HOOKS)
    assert set(entry.requires) <= set(openmix.mixers.NEEDS)
    assert entry.cls.registry_name == name


def test_defaults_are_the_papers():
    assert openmix.get_mixer_entry("mixup").defaults["alpha"] == 1.0
    fmix = openmix.get_mixer_entry("fmix").defaults
    assert {key: fmix[key] for key in ("alpha", "decay_power", "max_soft", "reformulate")} == {
        "alpha": 1.0,
        "decay_power": 3.0,
        "max_soft": 0.0,
        "reformulate": False,
    }
    assert openmix.get_mixer_entry("resizemix").defaults["scope"] == (0.1, 0.8)
    attentive = openmix.get_mixer_entry("attentivemix").defaults
    assert (attentive["grid"], attentive["top_k"]) == (7, 6)
    assert openmix.get_mixer_entry("attentivemix").requires == ("model",)
    assert openmix.get_mixer_entry("cutmix").requires == () and openmix.get_mixer_entry("cutmix").hooks == ("inputs",)


@pytest.mark.parametrize("name", openmix.list_mixers())
def test_registry_defaults_are_the_signature(name):
    """One source of defaults: the entry reports exactly the constructor's signature defaults."""
    entry = openmix.get_mixer_entry(name)
    parameters = inspect.signature(entry.cls.__init__).parameters
    expected = {key: p.default for key, p in parameters.items() if p.default is not inspect.Parameter.empty}
    assert entry.defaults == expected
    assert (entry.hooks, entry.requires, entry.learned) == (entry.cls.hooks, entry.cls.requires, entry.cls.learned)


def _description(module: nn.Module) -> tuple:
    """What a mixer was built with: its class, repr and public plain attributes (children included via repr)."""
    plain = {k: v for k, v in vars(module).items() if not k.startswith("_") and not isinstance(v, (nn.Module,))}
    return type(module), repr(module), sorted((k, repr(v)) for k, v in plain.items())


@pytest.mark.parametrize("name", openmix.list_mixers())
@pytest.mark.parametrize("arguments", [{}, {"mode": "elem"}], ids=["defaults", "elem"])
def test_create_mixer_builds_what_the_constructor_builds(name, arguments):
    entry = openmix.get_mixer_entry(name)
    if "mode" in arguments and not _registry.accepts_argument(entry.cls, "mode"):
        pytest.skip(f"{name} has no mode argument (Co-Mixup, AdaMixUp): the defaults case covers it")
    if "extractor" in entry.defaults:
        arguments = {**arguments, "extractor": nn.Identity()}
    assert _description(openmix.create_mixer(name, **arguments)) == _description(entry.cls(**arguments))


def test_randomchoice_probs_default_to_uniform_over_any_number_of_children():
    """Regression: the registry once merged DeiT's (0.5, 0.5) over probs=None, so three children failed."""
    mixer = openmix.create_mixer("randomchoice", mixers=["mixup", "cutmix", "fmix"])
    assert mixer.probs == pytest.approx([1 / 3] * 3)
    assert openmix.create_mixer("randomchoice").probs == pytest.approx([0.5, 0.5])  # DeiT's switch


def test_create_mixer_applies_defaults_then_kwargs():
    mixer = openmix.create_mixer("FMix", decay_power=4.0)
    assert mixer.decay_power == 4.0 and mixer.alpha == 1.0 and mixer.max_soft == 0.0
    assert openmix.create_mixer(mixer) is mixer
    with pytest.raises(ValueError, match="already built mixer"):
        openmix.create_mixer(mixer, alpha=2.0)


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):

        @openmix.register_mixer("mixup", paper="x", url="https://example.org")
        class Again(openmix.Mixer):
            pass


def test_only_mixers_with_capabilities_from_the_vocabulary_register():
    with pytest.raises(TypeError, match="subclasses of openmix.Mixer"):
        openmix.register_mixer("plainmodule", paper="x", url="https://example.org")(nn.Identity)
    with pytest.raises(ValueError, match=r"Pixels.hooks must be a non-empty tuple from \('inputs'"):

        class Pixels(openmix.Mixer):
            hooks = ("pixels",)

    with pytest.raises(ValueError, match=r"Needy.requires must be a tuple from \('model'"):

        class Needy(openmix.Mixer):
            requires = ("gradients",)


def test_registering_a_new_mixer_makes_it_available():
    @openmix.register_mixer("identitytest", paper="none", url="https://example.org")
    class Identity(openmix.PairMixer):
        def mix(self, x, index, lam, generator):
            lam = torch.ones(x.shape[0], dtype=torch.float64)
            return x, lam, None

    try:
        assert "identitytest" in openmix.list_mixers()
        out = openmix.create_mixer("identitytest")(torch.randn(2, 1, 3, 3), torch.tensor([0, 1]))
        assert torch.all(out.lam == 1)
    finally:
        del _registry._REGISTRY["identitytest"]


def test_registration_takes_no_second_list_of_defaults():
    with pytest.raises(TypeError):
        openmix.register_mixer("badtest", paper="x", url="https://example.org", defaults={"alpha": 1})


def test_mixer_base_class_is_abstract():
    with pytest.raises(TypeError):
        openmix.Mixer()


def test_version_and_public_api():
    assert isinstance(openmix.__version__, str) and openmix.__version__.count(".") == 2
    for name in ("create_mixer", "list_mixers", "MixOutput", "losses", "register_mixer"):
        assert hasattr(openmix, name)


def test_a_misspelt_class_path_is_named_with_the_closest_classes():
    with pytest.raises(ValueError, match=r"no mixer class of that path; did you mean openmix.mixers.GridMix"):
        openmix.get_mixer_entry("openmix.mixers.GridMixx")
