"""The mixer registry: names and papers; defaults and needs come from the classes themselves.

Every mixer module registers its class with :func:`register_mixer` at import time; ``openmix.mixers`` imports
all of them eagerly, so ``list_mixers()`` is complete as soon as ``openmix`` is imported. Tests, the benchmark
script and the CLI all iterate over this registry instead of keeping their own lists.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass(frozen=True)
class MixerEntry:
    """What the registry knows about one mixer.

    Attributes:
        name: registry name, lower case (``"cutmix"``).
        cls: the ``nn.Module`` class that implements it.
        paper: paper title.
        url: link to the paper.

    The defaults and the capabilities are read from the class (its signature and its ``hooks`` / ``requires`` /
    ``learned`` attributes), so they cannot disagree with what ``cls(...)`` builds.
    """

    name: str
    cls: type[nn.Module]
    paper: str
    url: str

    @property
    def defaults(self) -> dict[str, Any]:
        """The default of every keyword argument of the class, from its signature (the one source of defaults)."""
        return signature_defaults(self.cls)

    @property
    def hooks(self) -> tuple[str, ...]:
        """The hook points of a training step the mixer acts at (``openmix.mixers._base.HOOKS``)."""
        return tuple(getattr(self.cls, "hooks", ("inputs",)))

    @property
    def requires(self) -> tuple[str, ...]:
        """What the mixer may need from the trainer (``openmix.mixers._base.NEEDS``): the class's ``requires``
        (an instance may need less, e.g. AttentiveMix given its own extractor)."""
        return tuple(getattr(self.cls, "requires", ()))

    @property
    def learned(self) -> bool:
        """Whether its parameters are trained during training."""
        return bool(getattr(self.cls, "learned", False))


def signature_defaults(cls: type) -> dict[str, Any]:
    """``{argument: default}`` of ``cls.__init__``, in signature order (arguments without a default left out)."""
    parameters = inspect.signature(cls.__init__).parameters
    return {
        name: p.default
        for name, p in parameters.items()
        if name != "self" and p.default is not inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD
    }


def accepts_argument(cls: type, name: str) -> bool:
    """Whether ``cls(...)`` takes the keyword argument ``name`` (by name or through ``**kwargs``). Callers that hand
    the two-source options (``mode``, ``pairing``) to any mixer use it to leave them out for a method without them
    (Co-Mixup)."""
    parameters = inspect.signature(cls.__init__).parameters
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


_REGISTRY: dict[str, MixerEntry] = {}


def register_mixer(name: str, *, paper: str, url: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator that adds a mixer to the registry.

    The paper's default hyperparameters are the defaults of the class's signature; there is no second list.

    Args:
        name: registry name; must be new (a duplicate raises ``ValueError``).
        paper: paper title.
        url: link to the paper.
    """
    key = name.lower()

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        from openmix.mixers._base import Mixer

        if not (isinstance(cls, type) and issubclass(cls, Mixer)):
            raise TypeError(f"register_mixer decorates subclasses of openmix.Mixer, got {cls!r}")
        if key in _REGISTRY:
            raise ValueError(f"mixer name {key!r} is already registered by {_REGISTRY[key].cls.__qualname__}")
        _REGISTRY[key] = MixerEntry(key, cls, paper, url)
        cls.registry_name = key
        return cls

    return decorator


def list_mixers(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered mixers, optionally filtered by a shell-style ``pattern`` (``"*mix"``)."""
    names = sorted(_REGISTRY)
    if pattern is not None:
        names = [name for name in names if fnmatch.fnmatch(name, pattern.lower())]
    return names


def get_mixer_entry(name: str) -> MixerEntry:
    """The registry entry of ``name``; an unknown name raises ``ValueError`` listing close matches."""
    if not isinstance(name, str):
        raise TypeError(f"mixer name must be a str, got {type(name).__name__}")
    key = name.lower()
    if key not in _REGISTRY and "." in name:  # a class path that did not resolve to a class
        classes = {entry.cls.__name__: entry.cls for entry in _REGISTRY.values()}
        close = difflib.get_close_matches(name.rpartition(".")[2], list(classes), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(f'openmix.mixers.{c}' for c in close)}?" if close else ""
        raise ValueError(
            f"unknown mixer {name!r}: no mixer class of that path{hint} Registered mixers: {', '.join(list_mixers())}"
        )
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown mixer {name!r}{hint} Registered mixers: {', '.join(list_mixers())}")
    return _REGISTRY[key]


def create_mixer(name_or_module: str | nn.Module, **kwargs: Any) -> nn.Module:
    """Build a mixer by registry name (``cls(**kwargs)``: the signature's defaults are the paper's), or pass a
    module through.

    Args:
        name_or_module: a registered name (case-insensitive) or an already built mixer module.
        **kwargs: constructor arguments; an unknown keyword raises ``ValueError`` naming it.

    Returns:
        The mixer, an ``nn.Module`` whose call returns a :class:`~openmix.MixOutput`.
    """
    if isinstance(name_or_module, nn.Module):
        if kwargs:
            raise ValueError(f"keyword arguments {sorted(kwargs)} given with an already built mixer module")
        return name_or_module
    entry = get_mixer_entry(name_or_module)
    params = inspect.signature(entry.cls.__init__).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    allowed = [p for p in params if p != "self"]
    unknown = [key for key in kwargs if key not in params]
    if unknown and not accepts_any:
        suggestions = {key: difflib.get_close_matches(key, allowed, n=1) for key in unknown}
        detail = ", ".join(f"{key!r}" + (f" (did you mean {s[0]!r}?)" if s else "") for key, s in suggestions.items())
        raise ValueError(f"unknown argument(s) for mixer {entry.name!r}: {detail}. Allowed: {', '.join(allowed)}")
    return entry.cls(**kwargs)
