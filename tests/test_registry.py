"""The registry is the one source of truth: names, papers, defaults, network needs."""

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
    assert isinstance(entry.needs_network, bool)
    assert entry.cls.registry_name == name


def test_defaults_are_the_papers():
    assert openmix.get_mixer_entry("mixup").defaults["alpha"] == 1.0
    assert openmix.get_mixer_entry("fmix").defaults == {
        "alpha": 1.0,
        "decay_power": 3.0,
        "max_soft": 0.0,
        "reformulate": False,
    }
    assert openmix.get_mixer_entry("resizemix").defaults["scope"] == (0.1, 0.8)
    assert openmix.get_mixer_entry("attentivemix").defaults == {"grid": 7, "top_k": 6}
    assert openmix.get_mixer_entry("attentivemix").needs_network
    assert not openmix.get_mixer_entry("cutmix").needs_network


def test_create_mixer_applies_defaults_then_kwargs():
    mixer = openmix.create_mixer("FMix", decay_power=4.0)
    assert mixer.decay_power == 4.0 and mixer.alpha == 1.0 and mixer.max_soft == 0.0
    assert openmix.create_mixer(mixer) is mixer
    with pytest.raises(ValueError, match="already built mixer"):
        openmix.create_mixer(mixer, alpha=2.0)


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):

        @openmix.register_mixer("mixup", paper="x", url="https://example.org")
        class Again(nn.Module):
            pass


def test_registering_a_new_mixer_makes_it_available():
    @openmix.register_mixer("identitytest", paper="none", url="https://example.org", defaults={"alpha": 1.0})
    class Identity(openmix.Mixer):
        def mix(self, x, index, lam, generator):
            lam = torch.ones(x.shape[0], dtype=torch.float64)
            return x, lam, None

    try:
        assert "identitytest" in openmix.list_mixers()
        out = openmix.create_mixer("identitytest")(torch.randn(2, 1, 3, 3), torch.tensor([0, 1]))
        assert torch.all(out.lam == 1)
    finally:
        del _registry._REGISTRY["identitytest"]


def test_defaults_must_be_constructor_arguments():
    with pytest.raises(ValueError, match="not arguments"):

        @openmix.register_mixer("badtest", paper="x", url="https://example.org", defaults={"beta": 1})
        class Bad(openmix.Mixer):
            def mix(self, x, index, lam, generator):
                return x, lam, None


def test_mixer_base_class_is_abstract():
    with pytest.raises(TypeError):
        openmix.Mixer()


def test_version_and_public_api():
    assert isinstance(openmix.__version__, str) and openmix.__version__.count(".") == 2
    for name in ("create_mixer", "list_mixers", "MixOutput", "losses", "register_mixer"):
        assert hasattr(openmix, name)
