"""Mixers: importing this package registers every method (eager import keeps the registry complete)."""

from openmix.mixers import (  # noqa: F401  (registration side effect)
    attentivemix,
    automix,
    cutmix,
    fmix,
    mixup,
    random_choice,
    resizemix,
    saliencymix,
)
from openmix.mixers._base import Mixer, MixOutput
from openmix.mixers._registry import MixerEntry, create_mixer, get_mixer_entry, list_mixers, register_mixer
from openmix.mixers.random_choice import RandomChoiceMixer

__all__ = [
    "Mixer",
    "RandomChoiceMixer",
    "MixOutput",
    "MixerEntry",
    "create_mixer",
    "get_mixer_entry",
    "list_mixers",
    "register_mixer",
]
