"""openmix: the mixup / CutMix family of data augmentations as a library, a Lightning trainer and a benchmark."""

from openmix import losses
from openmix.mixers import Mixer, MixOutput, create_mixer, get_mixer_entry, list_mixers, register_mixer

__version__ = "0.1.0"

__all__ = [
    "Mixer",
    "MixOutput",
    "__version__",
    "create_mixer",
    "get_mixer_entry",
    "list_mixers",
    "losses",
    "register_mixer",
]
