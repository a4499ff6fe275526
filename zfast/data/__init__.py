"""Data side of zfast: SED libraries, instruments and noise, and the on-the-fly augmentation pipeline."""

from .augment import AugmentedSpectra, split_by_sed
from .instrument import Instrument, NoiseModel, normalise
from .sed_library import SEDLibrary

__all__ = ["AugmentedSpectra", "Instrument", "NoiseModel", "SEDLibrary", "normalise", "split_by_sed"]
